//! The queue rules of the topology: declare (exclusive ownership → 405, equivalence → 406,
//! `amq.` → 403), the store row of a durable queue, and removing a queue with every binding
//! to it (deleted, or its node taken as down).

use std::sync::Arc;

use super::{Change, Changes, QueueDecl, QueueRecord, Topology, quorum, show};
use crate::broker::exchange::DestName;
use crate::broker::ids::{ConnId, NodeId};
use crate::error::Error;
use crate::store::{Op, StoredQueue};

/// Queue arguments whose values must match on redeclare, as RabbitMQ checks them.
const EQUIVALENT_QUEUE_ARGS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-queue-leader-locator",
    "x-quorum-initial-group-size",
    "x-single-active-consumer",
];

impl Topology {
    pub(super) fn declare_queue(
        &mut self,
        d: &QueueDecl,
        conn: ConnId,
        server_named: bool,
        ch: &mut Changes,
    ) -> Result<(QueueRecord, bool), Error> {
        if let Some(q) = self.queues.get(d.name.as_str()) {
            self.check_redeclare(q, d, conn)?;
            return Ok((q.clone(), false));
        }
        if d.passive {
            return Err(self.no_queue(&d.name));
        }
        if d.name.starts_with("amq.") && !server_named {
            return Err(Error::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        let quorum = self.queue_type(d, server_named)?;
        self.next_queue_id += 1;
        let q = QueueRecord {
            name: d.name.as_str().into(),
            id: self.next_queue_id,
            durable: d.durable,
            exclusive_owner: d.exclusive.then_some(conn),
            auto_delete: d.auto_delete,
            arguments: d.arguments.clone(),
            home: conn.node,
            quorum,
        };
        if q.stored() {
            ch.ops.push(Op::PutQueue(self.stored_queue(&q)));
        }
        self.insert_queue(q.clone(), ch);
        Ok((q, true))
    }

    /// Redeclaring an existing queue: 405 if another connection's exclusive queue (or the
    /// exclusive flag differs), 406 if a property or argument differs; passive checks only
    /// the ownership.
    fn check_redeclare(&self, q: &QueueRecord, d: &QueueDecl, conn: ConnId) -> Result<(), Error> {
        if q.exclusive_owner.is_some_and(|o| o != conn) {
            return Err(self.locked(&d.name));
        }
        if d.passive {
            return Ok(());
        }
        if q.exclusive_owner.is_some() != d.exclusive {
            return Err(self.locked(&d.name));
        }
        for (arg, got, cur) in [
            ("durable", d.durable, q.durable),
            ("auto_delete", d.auto_delete, q.auto_delete),
        ] {
            if got != cur {
                return Err(self.inequivalent(
                    "queue",
                    arg,
                    &d.name,
                    &got.to_string(),
                    &cur.to_string(),
                ));
            }
        }
        for arg in EQUIVALENT_QUEUE_ARGS {
            let got = d.arguments.inner().get(*arg);
            let cur = q.arguments.inner().get(*arg);
            if got != cur && !(*arg == "x-queue-type" && quorum::same_type(got, cur)) {
                return Err(self.inequivalent("queue", arg, &d.name, &show(got), &show(cur)));
            }
        }
        Ok(())
    }

    pub(super) fn stored_queue(&self, q: &QueueRecord) -> StoredQueue {
        StoredQueue {
            vhost: self.vhost.to_string(),
            name: q.name.to_string(),
            id: q.id,
            auto_delete: q.auto_delete,
            arguments: q.arguments.clone(),
            group: q.quorum.as_ref().map(|x| x.group),
        }
    }

    pub(super) fn insert_queue(&mut self, q: QueueRecord, ch: &mut Changes) {
        self.next_queue_id = self.next_queue_id.max(q.id);
        ch.list.push(Change::QueueAdded(q.clone()));
        self.queues.insert(q.name.clone(), q);
    }

    /// A node is gone: its exclusive and transient queues go with it.
    pub(super) fn node_down(&mut self, node: NodeId, ch: &mut Changes) {
        let mut gone: Vec<(Arc<str>, u64)> = self
            .queues
            .values()
            .filter(|q| q.home == node && !q.stored())
            .map(|q| (q.name.clone(), q.id))
            .collect();
        // In id order, so that every node makes the same changes in the same order.
        gone.sort_by_key(|(_, id)| *id);
        // Where the node still runs such a queue (it was only cut off), the task ends as the
        // last handle to it goes: nothing routes to it any more.
        for (name, id) in gone {
            self.remove_queue(&name, id, ch);
        }
    }

    /// A quorum queue's new members; a stale command (another queue of that name since,
    /// a classic queue, no members) changes nothing.
    pub(super) fn set_members(
        &mut self,
        name: &str,
        id: u64,
        (members, ids): (Vec<NodeId>, Vec<u64>),
        ch: &mut Changes,
    ) {
        let Some(q) = self.queues.get_mut(name).filter(|q| q.id == id) else {
            return;
        };
        let Some(p) = q.quorum.as_mut().filter(|_| !members.is_empty()) else {
            return;
        };
        // Without ids (an entry logged before members had their own), members that stay
        // keep theirs and one that joins has its node's.
        let kept = p.raft_ids();
        let ids = match ids.len() == members.len() {
            true => ids,
            false => members
                .iter()
                .map(|m| match p.members.iter().position(|b| b == m) {
                    Some(i) => kept[i],
                    None => crate::broker::queue::quorum::raft_id(*m),
                })
                .collect(),
        };
        if p.members == members && kept == ids {
            return;
        }
        let before = p.clone();
        p.members = members;
        p.ids = ids;
        p.changes += 1;
        // A wiped node back as a member: its old id is out of the group by then.
        let members = &p.members;
        p.stale.retain(|(node, _)| !members.contains(node));
        ch.list.push(Change::QueueMembers {
            queue: q.clone(),
            before,
        });
    }

    /// A node's data was wiped (it rejoined the cluster under a new Raft id): it leaves
    /// every quorum queue it was a member of, its old Raft id kept in `Quorum::stale` for
    /// the group's leader to replace. A queue it was the only member of lost its contents
    /// with it: the node stays its member, under a new id, and the group starts again empty.
    pub(super) fn node_wiped(&mut self, node: NodeId, ch: &mut Changes) {
        let mut hit: Vec<(u64, Arc<str>)> = self
            .queues
            .values()
            .filter(|q| q.quorum.as_ref().is_some_and(|p| p.members.contains(&node)))
            .map(|q| (q.id, q.name.clone()))
            .collect();
        // In id order, so that every node makes the same changes in the same order.
        hit.sort();
        for (_, name) in hit {
            let Some(q) = self.queues.get_mut(&name) else {
                continue;
            };
            let Some(p) = q.quorum.as_mut() else { continue };
            let mut ids = p.raft_ids();
            let Some(i) = p.members.iter().position(|m| *m == node) else {
                continue;
            };
            let before = p.clone();
            if p.members.len() == 1 {
                ids[i] = p.next_raft_id(node);
            } else {
                p.stale.push((node, ids.remove(i)));
                p.members.remove(i);
            }
            p.ids = ids;
            p.changes += 1;
            ch.list.push(Change::QueueMembers {
                queue: q.clone(),
                before,
            });
        }
    }

    pub(super) fn remove_queue(&mut self, name: &str, id: u64, ch: &mut Changes) {
        if !self.has_queue_id(name, id) {
            return;
        }
        let Some((name, _)) = self.queues.remove_entry(name) else {
            return;
        };
        ch.list.push(Change::QueueRemoved(name.clone()));
        self.drop_bindings_to(&DestName::Queue(name), ch);
    }
}
