//! The HTTP status API (`http_listen`; off unless set), in the shape of RabbitMQ's
//! management API so that its users know where to look: `GET /api/queues` lists every
//! queue of this node's vhosts with its type, and for a quorum queue its members, which of
//! them are online and its leader; `GET /api/queues/{vhost}/{name}` adds the message and
//! consumer counts and, for a quorum queue, its Raft state on this node: term, commit and
//! applied indexes and, on the leader, each member's lag in entries.
//! `PUT /api/queues/{vhost}/{name}/leader/{node}` hands a quorum queue's leadership to
//! another member (for maintenance, or to even out where leaders are);
//! `PUT` and `DELETE /api/queues/{vhost}/{name}/members/{node}` add and remove a member,
//! and `POST /api/queues/{vhost}/{name}/force-shrink` recovers a queue that lost a majority
//! of its members (`members`).
//!
//! Connections are limited in number and closed when idle (`limits`). Every request needs
//! HTTP basic auth with the broker's user, who (as over AMQP) may be
//! limited to loopback. Reads go to the routing snapshot, to queues (counts, as
//! `queue.declare passive` does) and to the Raft runtime; a transfer asks raft-rs.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::serve::ListenerExt as _;
use base64::Engine;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

mod limits;
mod members;

use crate::broker::Broker;
use crate::broker::ids::NodeId;
use crate::broker::members::{self as changes, MemberError};
use crate::broker::queue::{QueueCmd, QueueHandle};
use crate::broker::topology::QueueRecord;

/// A queue as the API shows it.
#[derive(Debug, Serialize)]
struct QueueInfo {
    name: String,
    vhost: String,
    #[serde(rename = "type")]
    kind: &'static str,
    durable: bool,
    auto_delete: bool,
    exclusive: bool,
    /// The node that runs a classic queue; for a quorum queue, the one that declared it.
    node: NodeId,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<Vec<NodeId>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    online: Option<Vec<NodeId>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raft: Option<RaftInfo>,
}

/// A quorum queue's Raft group as this node sees it (members by node id).
#[derive(Debug, Serialize)]
struct RaftInfo {
    group: u64,
    term: u64,
    commit_index: u64,
    applied_index: u64,
    last_index: u64,
    snapshot_index: u64,
    /// Idle: this node's replica has stopped ticking (no heartbeats) until something
    /// happens in the queue.
    quiet: bool,
    /// On the leader: per member, how many entries its log lacks.
    lag: Vec<MemberLag>,
}

#[derive(Debug, Serialize)]
struct MemberLag {
    node: NodeId,
    /// Its Raft id in the group: a node that left and joined again has a new one.
    raft_id: u64,
    entries: u64,
}

/// Serve the API on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let broker_config = broker.config.clone();
    let app = Router::new()
        .route("/api/queues", get(list_queues))
        .route("/api/queues/{vhost}/{name}", get(one_queue))
        .route("/api/queues/{vhost}/{name}/leader/{node}", put(transfer))
        .route(
            "/api/queues/{vhost}/{name}/members/{node}",
            put(members::handle).delete(members::handle),
        )
        .route(
            "/api/queues/{vhost}/{name}/force-shrink",
            post(members::force_shrink),
        )
        .with_state(broker);
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    let listener = limits::Limited::new(
        listener,
        broker_config.http_max_connections,
        std::time::Duration::from_millis(broker_config.http_idle_timeout_ms),
    )
    // `tap_io` only so that handlers get the peer's address (axum's ConnectInfo).
    .tap_io(|_| {});
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, service)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!("the HTTP API stopped: {e}");
    }
}

async fn list_queues(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refuse(&broker, peer, &headers) {
        return r;
    }
    let live = broker.live_nodes();
    let mut out = Vec::new();
    for vhost in broker.vhosts() {
        for (q, _) in vhost.queue_list() {
            out.push(info(&broker, &live, &vhost.name, &q));
        }
    }
    out.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    axum::Json(out).into_response()
}

async fn one_queue(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((vhost, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refuse(&broker, peer, &headers) {
        return r;
    }
    let Some((q, handle)) = broker.vhost(&vhost).and_then(|v| v.queue_entry(&name)) else {
        return not_found();
    };
    let mut i = info(&broker, &broker.live_nodes(), &vhost, &q);
    if let Some(h) = handle {
        stat(&broker, &h, &mut i).await;
    }
    if let (Some(placement), Some(cluster)) = (&q.quorum, broker.quorum_cluster())
        && let Some(status) = cluster.group_status(placement.group).await
    {
        i.leader = node_of(&broker, status.leader);
        let lag = status
            .matched
            .iter()
            .map(|(raft, matched)| MemberLag {
                node: node_of(&broker, *raft).unwrap_or(0),
                raft_id: *raft,
                entries: status.last_index.saturating_sub(*matched),
            })
            .collect();
        i.raft = Some(RaftInfo {
            group: placement.group,
            term: status.term,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            last_index: status.last_index,
            snapshot_index: status.snapshot_index,
            quiet: status.quiet,
            lag,
        });
    }
    axum::Json(i).into_response()
}

/// `PUT /api/queues/{vhost}/{name}/leader/{node}`: hand a quorum queue's leadership to
/// one of its members; answers once that node leads (200, the queue as `GET` shows it), or
/// 503 if it did not within the command timeout (it may be down, or far behind).
async fn transfer(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((vhost, name, node)): Path<(String, String, NodeId)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refuse(&broker, peer, &headers) {
        return r;
    }
    let Some(v) = broker.vhost(&vhost) else {
        return not_found();
    };
    if let Err(e) = v.caught_up().await {
        return unavailable(e.reply_text().to_string());
    }
    let Some((q, _)) = v.queue_entry(&name) else {
        return not_found();
    };
    let (Some(placement), Some(cluster)) = (&q.quorum, broker.quorum_cluster()) else {
        return bad_request(format!(
            "queue '{name}' in vhost '{vhost}' is not a quorum queue"
        ));
    };
    if !placement.members.contains(&node) {
        return bad_request(format!(
            "node {node} is not a member of queue '{name}' in vhost '{vhost}'"
        ));
    }
    // Only a member's Raft runtime has the group (and forwards the request to its leader).
    if let Err(e) = changes::not_a_member_here(&broker, placement, &name, &vhost) {
        return member_error(e);
    }
    let timeout = std::time::Duration::from_millis(broker.config.cluster_command_timeout_ms);
    if !changes::lead_to(cluster, placement, node, timeout).await {
        return unavailable(format!(
            "node {node} did not take the lead within {timeout:?}"
        ));
    }
    tracing::info!(queue = %name, vhost = %vhost, leader = node, "quorum queue leadership transferred");
    axum::Json(info(&broker, &broker.live_nodes(), &vhost, &q)).into_response()
}

/// A member change's refusal as the API answers it.
fn member_error(e: MemberError) -> Response {
    match e {
        MemberError::NotFound => not_found(),
        MemberError::Refused(why) => bad_request(why),
        MemberError::Unavailable(why) => unavailable(why),
    }
}

fn unavailable(reason: String) -> Response {
    let body = axum::Json(serde_json::json!({ "error": "timeout", "reason": reason }));
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

fn bad_request(reason: String) -> Response {
    let body = axum::Json(serde_json::json!({ "error": "bad_request", "reason": reason }));
    (StatusCode::BAD_REQUEST, body).into_response()
}

/// Counts as `queue.declare passive` gives them (nothing if the queue does not answer in
/// the command timeout).
async fn stat(broker: &Broker, h: &QueueHandle, i: &mut QueueInfo) {
    let timeout = std::time::Duration::from_millis(broker.config.cluster_command_timeout_ms);
    if let Ok(Some(s)) = tokio::time::timeout(timeout, h.ask(QueueCmd::Stat)).await {
        i.messages = Some(s.messages);
        i.consumers = Some(s.consumers);
    }
}

/// A queue as the API shows it; `live`: this node and the peers it has a link to now.
fn info(broker: &Broker, live: &BTreeSet<NodeId>, vhost: &str, q: &QueueRecord) -> QueueInfo {
    let mut i = QueueInfo {
        name: q.name.to_string(),
        vhost: vhost.to_string(),
        kind: "classic",
        durable: q.durable,
        auto_delete: q.auto_delete,
        exclusive: q.exclusive_owner.is_some(),
        node: q.home,
        leader: None,
        members: None,
        online: None,
        messages: None,
        consumers: None,
        raft: None,
    };
    if let Some(placement) = &q.quorum {
        i.kind = "quorum";
        i.online = Some(
            placement
                .members
                .iter()
                .copied()
                .filter(|n| live.contains(n))
                .collect(),
        );
        i.members = Some(placement.members.clone());
        i.leader = broker
            .quorum_cluster()
            .and_then(|c| node_of(broker, c.leader_of(placement.group)));
    }
    i
}

/// A Raft id as a node id (a single node's groups have Raft id 1 and node id 0).
fn node_of(broker: &Broker, raft: u64) -> Option<NodeId> {
    match raft {
        0 => None,
        _ if broker.cluster.is_none() => Some(0),
        id => Some(crate::cluster::node_of(id)),
    }
}

/// HTTP basic auth with the broker's user (and its loopback rule): the 401 if it fails.
fn refuse(broker: &Broker, peer: SocketAddr, headers: &HeaderMap) -> Option<Response> {
    let creds = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    let cfg = &broker.config;
    let ok = creds
        .as_deref()
        .and_then(|c| c.split_once(':'))
        .is_some_and(|(u, p)| {
            u == cfg.default_user
                && p == cfg.default_pass
                && (peer.ip().is_loopback() || !cfg.loopback_users.iter().any(|l| l == u))
        });
    if ok {
        return None;
    }
    let body = axum::Json(serde_json::json!({
        "error": "not_authorised",
        "reason": "Login failed",
    }));
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"warren\"")],
            body,
        )
            .into_response(),
    )
}

fn not_found() -> Response {
    let body = axum::Json(serde_json::json!({
        "error": "Object Not Found",
        "reason": "Not Found",
    }));
    (StatusCode::NOT_FOUND, body).into_response()
}
