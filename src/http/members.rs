//! Growing and shrinking a quorum queue: `PUT /api/queues/{vhost}/{name}/members/{node}`
//! adds a member, `DELETE` removes one (RabbitMQ's `rabbitmq-queues add_member` and
//! `delete_member`). Asked on a member node.
//!
//! Order: the queue's Raft group changes first (one voter at a time, committed by the
//! members before it), then the metadata records the new members, which makes a node that
//! joined start its replica (it catches up from the leader, by snapshot if the log was
//! compacted) and one that left stop its own and delete its log. If the second step fails,
//! the answer says so and asking again completes it (the group's change is then a no-op).
//! A leader that is to be removed hands its lead to another member first.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};

use super::{bad_request, info, lead_to, not_a_member_here, not_found, refuse, unavailable};
use crate::broker::Broker;
use crate::broker::ids::NodeId;

/// `PUT` adds the member, `DELETE` removes it.
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
    change(&broker, &vhost, &name, node, method == Method::PUT).await
}

async fn change(broker: &Broker, vhost: &str, name: &str, node: NodeId, add: bool) -> Response {
    let Some(v) = broker.vhost(vhost) else {
        return not_found();
    };
    let Some((q, _)) = v.queue_entry(name) else {
        return not_found();
    };
    let rs = format!("queue '{name}' in vhost '{vhost}'");
    let (Some(placement), Some(cluster)) = (&q.quorum, broker.quorum_cluster()) else {
        return bad_request(format!("{rs} is not a quorum queue"));
    };
    if broker.cluster.is_none() {
        return bad_request("a single node's quorum queues have one member".into());
    }
    if let Some(r) = not_a_member_here(broker, placement, name, vhost) {
        return r;
    }
    let mut members = placement.members.clone();
    let mut ids = placement.raft_ids();
    // The node's Raft id in the group: a new one for a node that joins (derived from the
    // placement, so that asking again after a failed second step adds the same one).
    let raft = match add {
        true => placement.next_raft_id(node),
        false => placement.raft_id_of(node).unwrap_or(0),
    };
    if add {
        if members.contains(&node) {
            return bad_request(format!("node {node} is a member of {rs} already"));
        }
        if !cluster.config.peers.contains_key(&node) {
            return bad_request(format!("there is no node {node} in the cluster"));
        }
        members.push(node);
        ids.push(raft);
    } else {
        if !members.contains(&node) {
            return bad_request(format!("node {node} is not a member of {rs}"));
        }
        if members.len() == 1 {
            return bad_request(format!("node {node} is the last member of {rs}"));
        }
        members.retain(|m| *m != node);
        ids.retain(|id| *id != raft);
    }
    let timeout = cluster.config.command_timeout;
    let group = placement.group;
    // raft-rs does not step a leader down cleanly when it removes itself.
    if !add && cluster.leader_of(group) == raft {
        let live = broker.live_nodes();
        let Some(to) = members.iter().copied().find(|m| live.contains(m)) else {
            return unavailable(format!("no other member of {rs} is online to lead it"));
        };
        if !lead_to(cluster, placement, to, timeout).await {
            return unavailable(format!(
                "node {to} did not take the lead within {timeout:?}"
            ));
        }
    }
    let changed = tokio::time::timeout(timeout, cluster.change_member(group, add, raft));
    match changed.await {
        Ok(Ok(())) => {}
        _ => {
            return unavailable(format!(
                "the members of {rs} did not commit the change within {timeout:?} (a \
                 majority unreachable, or another change under way)"
            ));
        }
    }
    if let Err(e) = v.set_members(name, q.id, (members.clone(), ids)).await {
        return unavailable(format!(
            "the change is in the queue's group but not recorded yet ({}): ask again",
            e.reply_text()
        ));
    }
    tracing::info!(queue = %name, vhost = %vhost, node, add, members = ?members, "quorum queue members changed");
    match v.queue_entry(name) {
        Some((q, _)) => axum::Json(info(broker, &broker.live_nodes(), vhost, &q)).into_response(),
        None => not_found(),
    }
}
