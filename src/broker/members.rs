//! Growing and shrinking a quorum queue's members (asked through the HTTP API,
//! `http/members.rs`), and replacing those whose node's data was wiped (`repair`).
//!
//! Order: the queue's Raft group changes first (one voter at a time, committed by the
//! members before it), then the metadata records the new members, which makes a node that
//! joined start its replica (it catches up from the leader, by snapshot if the log was
//! compacted) and one that left stop its own and delete its log. If the second step fails,
//! asking again completes it (the group's change is then a no-op). A leader that is to be
//! removed hands its lead to another member first. A node that joins gets a new Raft id in
//! the group (`Quorum::next_raft_id`).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Broker;
use super::ids::NodeId;
use super::topology::Quorum;
use crate::cluster::Cluster;

/// How often each node looks for stale members in the quorum queues it leads.
const REPAIR_EVERY: Duration = Duration::from_secs(1);
/// How often a leadership transfer checks whether the new leader leads, and asks again.
const POLL: Duration = Duration::from_millis(20);
const ASK_AGAIN: Duration = Duration::from_millis(500);

/// Why a member change was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberError {
    /// No such vhost or queue.
    NotFound,
    /// The request makes no sense (a 400).
    Refused(String),
    /// A majority, the new leader or the metadata did not answer in time (a 503): asking
    /// again completes it.
    Unavailable(String),
}

/// A quorum queue whose members are to change, and how errors name it.
struct Found<'a> {
    v: Arc<super::vhost::VHost>,
    q: super::topology::QueueRecord,
    placement: Quorum,
    cluster: &'a Arc<Cluster>,
    rs: String,
}

/// Quorum queue `name` in `vhost` as of every metadata change committed before (one asked
/// on another node just now included), so that a member removed there is not picked here.
async fn find<'a>(broker: &'a Broker, vhost: &str, name: &str) -> Result<Found<'a>, MemberError> {
    let v = broker.vhost(vhost).ok_or(MemberError::NotFound)?;
    (v.caught_up().await).map_err(|e| MemberError::Unavailable(e.reply_text()))?;
    let (q, _) = v.queue_entry(name).ok_or(MemberError::NotFound)?;
    let rs = format!("queue '{name}' in vhost '{vhost}'");
    let (Some(placement), Some(cluster)) = (q.quorum.clone(), broker.quorum_cluster()) else {
        return Err(MemberError::Refused(format!("{rs} is not a quorum queue")));
    };
    Ok(Found {
        v,
        q,
        placement,
        cluster,
        rs,
    })
}

/// Add (`add`) or remove `node` as a member of quorum queue `name` in `vhost`, asked on a
/// member node (only a member runs the queue's Raft group).
pub async fn change(
    broker: &Broker,
    vhost: &str,
    name: &str,
    node: NodeId,
    add: bool,
) -> Result<(), MemberError> {
    use MemberError::{Refused, Unavailable};
    let Found {
        v,
        q,
        placement,
        cluster,
        rs,
    } = find(broker, vhost, name).await?;
    let placement = &placement;
    if broker.cluster.is_none() {
        return Err(Refused(
            "a single node's quorum queues have one member".into(),
        ));
    }
    not_a_member_here(broker, placement, name, vhost)?;
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
            return Err(Refused(format!("node {node} is a member of {rs} already")));
        }
        if !cluster.config.peers.contains_key(&node) {
            return Err(Refused(format!("there is no node {node} in the cluster")));
        }
        members.push(node);
        ids.push(raft);
    } else {
        if !members.contains(&node) {
            return Err(Refused(format!("node {node} is not a member of {rs}")));
        }
        if members.len() == 1 {
            return Err(Refused(format!("node {node} is the last member of {rs}")));
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
            return Err(Unavailable(format!(
                "no other member of {rs} is online to lead it"
            )));
        };
        if !lead_to(cluster, placement, to, timeout).await {
            return Err(Unavailable(format!(
                "node {to} did not take the lead within {timeout:?}"
            )));
        }
    }
    if !change_voter(cluster, group, add, raft).await {
        return Err(Unavailable(format!(
            "the members of {rs} did not commit the change within {timeout:?} (a majority \
             unreachable, or another change under way)"
        )));
    }
    if let Err(e) = v.set_members(name, q.id, (members.clone(), ids)).await {
        return Err(Unavailable(format!(
            "the change is in the queue's group but not recorded yet ({}): ask again",
            e.reply_text()
        )));
    }
    tracing::info!(queue = %name, vhost = %vhost, node, add, members = ?members, "quorum queue members changed");
    Ok(())
}

/// Disaster recovery for quorum queue `name` in `vhost` that lost a majority of its
/// members for good (RabbitMQ's `rabbitmq-queues force_shrink_member_to_current_member`),
/// asked on a surviving member: this node becomes the queue's only member and leads it
/// with what its replica has. Messages confirmed by the lost members alone are lost, so it
/// is refused while a majority of the members is online (remove members one by one then).
/// The group changes here alone first (`Cluster::force_alone`), then logs the removal of
/// the others (so that a restart's replay ends the same), then the metadata records the
/// one member, which makes the others, if they come back, drop their replicas and use the
/// queue through this node. Asking again completes a change whose later step failed.
pub async fn force_shrink(broker: &Broker, vhost: &str, name: &str) -> Result<(), MemberError> {
    use MemberError::{NotFound, Refused, Unavailable};
    let Found {
        v,
        q,
        placement,
        cluster,
        rs,
    } = find(broker, vhost, name).await?;
    let placement = &placement;
    not_a_member_here(broker, placement, name, vhost)?;
    let live = broker.live_nodes();
    let online = placement
        .members
        .iter()
        .filter(|m| live.contains(m))
        .count();
    if placement.members.len() > 1 && online * 2 > placement.members.len() {
        return Err(Refused(format!(
            "a majority of the members of {rs} is online ({online} of {:?}): remove members \
             one at a time instead",
            placement.members
        )));
    }
    let me = broker.node_id();
    let Some(raft) = placement.raft_id_of(me) else {
        return Err(NotFound);
    };
    let group = placement.group;
    let timeout = cluster.config.command_timeout;
    tracing::warn!(queue = %name, vhost = %vhost, members = ?placement.members, "forcing a quorum queue down to this node alone (disaster recovery)");
    let dropped = cluster
        .force_alone(group)
        .await
        .map_err(|e| Unavailable(format!("the group of {rs} was not changed: {e}")))?;
    let deadline = tokio::time::Instant::now() + timeout;
    while cluster.leader_of(group) != raft {
        if tokio::time::Instant::now() >= deadline {
            return Err(Unavailable(format!(
                "this node did not take the lead of {rs} within {timeout:?}"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    // Also those of the metadata's members: a retry after a failed step finds them
    // dropped already, and removing one absent changes nothing.
    let mut gone: Vec<u64> = placement
        .raft_ids()
        .into_iter()
        .filter(|id| *id != raft)
        .collect();
    gone.extend(dropped);
    gone.sort_unstable();
    gone.dedup();
    for id in gone {
        if !change_voter(cluster, group, false, id).await {
            return Err(Unavailable(format!(
                "the removal of Raft id {id:#x} from {rs} was not logged within {timeout:?}"
            )));
        }
    }
    if let Err(e) = v.set_members(name, q.id, (vec![me], vec![raft])).await {
        return Err(Unavailable(format!(
            "{rs} has this node alone, but the metadata did not record it ({}): ask again",
            e.reply_text()
        )));
    }
    tracing::warn!(queue = %name, vhost = %vhost, "quorum queue forced down to this node alone");
    Ok(())
}

/// A voter added to (or removed from) `group`, within the command timeout: false if no
/// majority committed it by then.
async fn change_voter(cluster: &Cluster, group: u64, add: bool, raft: u64) -> bool {
    let timeout = cluster.config.command_timeout;
    let changed = tokio::time::timeout(timeout, cluster.change_member(group, add, raft));
    matches!(changed.await, Ok(Ok(())))
}

/// On a node that is not one of a quorum queue's members (it has no Raft group for it):
/// the refusal that names the members to ask.
pub fn not_a_member_here(
    broker: &Broker,
    placement: &Quorum,
    name: &str,
    vhost: &str,
) -> Result<(), MemberError> {
    match placement.members.contains(&broker.node_id()) {
        true => Ok(()),
        false => Err(MemberError::Refused(format!(
            "this node is not a member of queue '{name}' in vhost '{vhost}': ask one of {:?}",
            placement.members
        ))),
    }
}

/// Hand a quorum queue's lead to its member `node`: true once it leads, false if not
/// within `timeout`.
pub async fn lead_to(
    cluster: &Cluster,
    placement: &Quorum,
    node: NodeId,
    timeout: Duration,
) -> bool {
    let group = placement.group;
    let Some(to) = placement.raft_id_of(node) else {
        return false;
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut asked = None;
    while cluster.leader_of(group) != to {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        // Asked again now and then: a transfer is dropped if the leader changes meanwhile.
        if asked.is_none_or(|at| now - at >= ASK_AGAIN) {
            cluster.transfer_leader(group, to).await;
            asked = Some(now);
        }
        tokio::time::sleep(POLL).await;
    }
    true
}

/// Runs on every cluster node while its broker lives: the quorum queues this node leads
/// that have stale members (their node rejoined with a wiped data dir, `Cmd::NodeWiped`)
/// get them back as new members: the old Raft id leaves the group, then the node joins
/// under a new one (`change`) and catches up from the leader. Tried again every
/// `REPAIR_EVERY` until done (a majority may be out of reach for a while). A vhost whose
/// topology has not changed since a look found nothing stale is not looked at again, so
/// that an idle node does not scan every queue's record each second.
pub async fn repair(broker: Weak<Broker>) {
    // By vhost: its topology's changes when last looked at, if nothing was stale then.
    let mut clean: HashMap<String, u64> = HashMap::new();
    loop {
        tokio::time::sleep(REPAIR_EVERY).await;
        let Some(b) = broker.upgrade() else { return };
        let Some(cluster) = b.cluster.clone() else {
            return;
        };
        for v in b.vhosts().cloned().collect::<Vec<_>>() {
            let changes = v.changes();
            if clean.get(v.name.as_str()) == Some(&changes) {
                continue;
            }
            let stale = v.stale_queues();
            match stale.is_empty() {
                true => clean.insert(v.name.to_string(), changes),
                false => clean.remove(v.name.as_str()),
            };
            for q in stale {
                let Some(p) = &q.quorum else { continue };
                let here = p.raft_id_of(b.node_id());
                if here.is_none_or(|id| cluster.leader_of(p.group) != id) {
                    continue;
                }
                for (node, old) in &p.stale {
                    let voters = cluster.group_status(p.group).await.map(|s| s.voters);
                    let gone = voters.is_some_and(|v| !v.contains(old))
                        || change_voter(&cluster, p.group, false, *old).await;
                    let added = match gone {
                        true => change(&b, v.name.as_str(), &q.name, *node, true).await,
                        false => Err(MemberError::Unavailable("not committed".into())),
                    };
                    match added {
                        Ok(()) => tracing::info!(
                            queue = %q.name,
                            vhost = v.name.as_str(),
                            node,
                            "a wiped node is a member of the quorum queue again"
                        ),
                        Err(e) => tracing::warn!(
                            queue = %q.name,
                            vhost = v.name.as_str(),
                            node,
                            "a wiped node is not a member of the quorum queue again yet: \
                             {e:?}; trying again"
                        ),
                    }
                }
            }
        }
    }
}

/// Start `repair` for a cluster node's broker.
pub fn start_repair(broker: &Arc<Broker>) {
    if broker.cluster.is_some() {
        tokio::spawn(repair(Arc::downgrade(broker)));
    }
}
