//! Growing and shrinking a quorum queue: `PUT /api/queues/{vhost}/{name}/members/{node}`
//! adds a member, `DELETE` removes one (RabbitMQ's `rabbitmq-queues add_member` and
//! `delete_member`). Asked on a member node; the change is `broker::members::change`'s.
//! `POST /api/queues/{vhost}/{name}/force-shrink`, on a surviving member of a queue that
//! lost a majority of its members for good, makes that node its only member
//! (`broker::members::force_shrink`, RabbitMQ's `force_shrink_member_to_current_member`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};

use super::{changes, info, member_error, not_found, refuse};
use crate::broker::Broker;
use crate::broker::ids::NodeId;

/// `PUT` adds the member, `DELETE` removes it; the answer is the queue as `GET` shows it.
pub(super) async fn handle(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    Path((vhost, name, node)): Path<(String, String, NodeId)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refuse(&broker, peer, &headers) {
        return r;
    }
    let add = method == Method::PUT;
    if let Err(e) = changes::change(&broker, &vhost, &name, node, add).await {
        return member_error(e);
    }
    answer(&broker, &vhost, &name)
}

/// `POST .../force-shrink`: this node becomes the queue's only member.
pub(super) async fn force_shrink(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((vhost, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refuse(&broker, peer, &headers) {
        return r;
    }
    if let Err(e) = changes::force_shrink(&broker, &vhost, &name).await {
        return member_error(e);
    }
    answer(&broker, &vhost, &name)
}

/// The queue as `GET` shows it.
fn answer(broker: &Broker, vhost: &str, name: &str) -> Response {
    match broker.vhost(vhost).and_then(|v| v.queue_entry(name)) {
        Some((q, _)) => axum::Json(info(broker, &broker.live_nodes(), vhost, &q)).into_response(),
        None => not_found(),
    }
}
