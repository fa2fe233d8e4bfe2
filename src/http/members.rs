//! Growing and shrinking a quorum queue: `PUT /api/queues/{vhost}/{name}/members/{node}`
//! adds a member, `DELETE` removes one (RabbitMQ's `rabbitmq-queues add_member` and
//! `delete_member`). Asked on a member node; the change is `broker::members::change`'s.

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
    match broker.vhost(&vhost).and_then(|v| v.queue_entry(&name)) {
        Some((q, _)) => axum::Json(info(&broker, &broker.live_nodes(), &vhost, &q)).into_response(),
        None => not_found(),
    }
}
