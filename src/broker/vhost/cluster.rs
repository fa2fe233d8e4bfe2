//! The cluster side of a vhost: a quorum queue's replica (on its members) or stub (on the
//! other nodes), where a new quorum queue is placed, what a member change does here, and a
//! queue's removal from the metadata, which on a cluster goes through the log (a delete-ok
//! waits for it, `forgotten`).

use super::{Runtime, VHost};
use crate::broker::ids::NodeId;
use crate::broker::queue::{self, QueueHandle, QueueShared, quorum};
use crate::broker::remote;
use crate::broker::topology::{self, Cmd, QueueDecl, QueueRecord, Quorum};
use crate::error::{Error, code};

impl VHost {
    /// A quorum queue's members changed: a node that joined starts its replica (it catches
    /// up from the leader; its consumers so far carry on through their stub), one that left
    /// deletes its log and its replica goes on as a stub (its consumers carry on through a
    /// member, `quorum/leave.rs`). Other nodes use the new members.
    pub(super) fn members_changed(&self, rt: &mut Runtime, q: QueueRecord, before: &Quorum) {
        let Some(p) = &q.quorum else { return };
        // This node's replica runs under its Raft id: a new one (it joined, or rejoined
        // after a wipe) needs a new replica, as does leaving (a stub instead).
        let (was, is) = (before.raft_id_of(self.node), p.raft_id_of(self.node));
        tracing::info!(queue = %q.name, members = ?p.members, "quorum queue members changed");
        if was == is {
            if let (None, Some(h)) = (is, rt.handles.get(&q.name)) {
                let (h, members) = (h.clone(), p.members.clone());
                tokio::spawn(async move { h.send(queue::QueueCmd::Members(members)).await });
            }
            return;
        }
        if let (Some(_), None, Some(h), Some(_)) =
            (was, is, rt.handles.get(&q.name), self.remote.get())
        {
            let (h, leave) = (h.clone(), queue::QueueCmd::Leave(p.members.clone()));
            tokio::spawn(async move { h.send(leave).await });
            return;
        }
        // A replica's Stop deletes its group's log (the group lives on elsewhere). A stub
        // replaced by this node's new replica is not stopped: it ends with the last
        // consumer or channel that holds it, and until then serves them through the member
        // they use (new consumers start on the replica).
        if let Some(old) = rt.handles.remove(&q.name)
            && was.is_some()
        {
            old.stop();
        }
        let name = q.name.clone();
        if let Some(h) = self.spawn_quorum(&q) {
            rt.handles.insert(name, h);
        }
    }

    /// This node's replica of a quorum queue if it is a member, else a stub that uses the
    /// queue through a member.
    pub(super) fn spawn_quorum(&self, q: &QueueRecord) -> Option<QueueHandle> {
        let placement = q.quorum.clone()?;
        if !placement.members.contains(&self.node) {
            let f = self.remote.get()?;
            return Some(remote::spawn_stub(
                q,
                &self.name,
                f.clone(),
                self.settings.inbox,
            ));
        }
        Some(quorum::spawn(quorum::QuorumSpec {
            name: q.name.clone(),
            id: q.id,
            arguments: q.arguments.clone(),
            vhost: self.name.as_str().into(),
            placement,
            me: self.node,
            runtime: self.quorum.subscribe(),
            inbox: self.settings.inbox,
            on_deleted: self.on_deleted(),
            memory: self.memory.clone(),
            memory_budget: self.settings.memory_budget,
            remote: self.remote.get().cloned(),
        }))
    }

    /// Where a new quorum queue goes: a new group on x-quorum-initial-group-size nodes (or
    /// the default size), the first leader where the locator says.
    pub(super) fn placement(&self, d: &QueueDecl) -> Result<Option<Quorum>, Error> {
        if !topology::is_quorum(&d.arguments) || d.passive || self.lock().topo.has_queue(&d.name) {
            return Ok(None);
        }
        let rt = self.quorum.borrow();
        let Some(rt) = rt.as_ref() else {
            return Err(Error::channel(
                code::INTERNAL_ERROR,
                "quorum queues are not available yet (the node is starting)",
            ));
        };
        // An unknown locator is the topology's to refuse (406).
        let locator = quorum::Locator::of(&d.arguments).unwrap_or(self.settings.quorum.locator);
        let live = rt.cluster.live_peers();
        let (leading, memberships) = {
            let inner = self.lock();
            let groups = || inner.topo.queue_records().filter_map(|q| q.quorum.as_ref());
            (
                quorum::leading(groups(), |g| rt.cluster.leader_of(g)),
                quorum::memberships(groups()),
            )
        };
        let size = d
            .arguments
            .inner()
            .get("x-quorum-initial-group-size")
            .and_then(crate::broker::args::integer)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(self.settings.quorum.group_size);
        let load = quorum::Load {
            nodes: &rt.nodes,
            live: &live,
            leading: &leading,
            members: &memberships,
        };
        let members = quorum::place(locator, self.node, size, &load);
        // Never 0 (the metadata group), never reused (a queue's log outlives nothing).
        Ok(Some(Quorum::new(rand::random::<u64>() | 1, members)))
    }

    /// Record a quorum queue's new members (its Raft group has them already).
    pub async fn set_members(
        &self,
        name: &str,
        id: u64,
        (members, ids): (Vec<NodeId>, Vec<u64>),
    ) -> Result<(), Error> {
        let cmd = Cmd::QueueMembers {
            name: name.into(),
            id,
            members,
            ids,
        };
        self.change(cmd).await.map(drop)
    }

    /// A queue whose contents live on another node and that has no stub here (stubs are
    /// made once forwarding is set up, before the log is applied: this is a safeguard).
    pub(super) fn remote(&self, name: &str) -> Error {
        Error::connection(
            code::NOT_IMPLEMENTED,
            format!(
                "queue '{name}' in vhost '{}' lives on another node; use it there",
                self.name
            ),
        )
    }

    /// Wait until this node's metadata no longer has queue `id` as `name`. On a cluster a
    /// queue that deleted itself leaves the metadata afterwards, through the log; delete-ok
    /// waits for that, as RabbitMQ's does, so that a declare after it finds no old record.
    pub async fn forgotten(&self, name: &str, id: u64) -> Result<(), Error> {
        let Some(r) = self.replicated.get() else {
            return Ok(()); // a single node forgets it before the delete is answered
        };
        let deadline = tokio::time::Instant::now() + r.command_timeout();
        let mut applied = self.applied.subscribe();
        loop {
            let present = self.lock().topo.has_queue_id(name, id);
            if !present {
                return Ok(());
            }
            if !matches!(
                tokio::time::timeout_at(deadline, applied.changed()).await,
                Ok(Ok(()))
            ) {
                return Err(Error::connection(
                    code::INTERNAL_ERROR,
                    format!(
                        "queue '{name}' in vhost '{}' is deleted, but the metadata did not \
                         forget it in time (no majority of cluster nodes reachable)",
                        self.name
                    ),
                ));
            }
        }
    }

    /// Called by a queue task as it ends: forget the queue and every binding to it (in a
    /// cluster, through the metadata log; the queue stops being routed to here at once).
    pub fn remove_queue(&self, q: &QueueShared) {
        let cmd = Cmd::QueueDeleted {
            name: q.name.clone(),
            id: q.id,
        };
        let Some(r) = self.replicated.get().cloned() else {
            if let Ok((_, written)) = self.run(cmd) {
                drop(written);
            }
            return;
        };
        {
            let mut rt = self.lock();
            if rt.handles.get(&q.name).is_some_and(|h| h.id == q.id) {
                rt.handles.remove(&q.name);
                self.publish(&rt, &[], true);
            }
            // Already gone from the metadata (its node was taken as down): nothing to say.
            if !rt.topo.has_queue_id(&q.name, q.id) {
                return;
            }
        }
        let vhost = self.name.clone();
        tokio::spawn(async move { r.run_until_done(&vhost, cmd).await });
    }
}
