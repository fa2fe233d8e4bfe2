//! Memory and disk alarms across a cluster, as RabbitMQ has them: while any node's alarm is
//! on, publishers on every node are blocked. Each node tells each peer its own alarms over
//! the link (on every change, and again on each new session); what a peer said counts only
//! while its session lives, so a node that dies or is cut off blocks no one.
//!
//! Connections watch the combined alarms (`memory`, `disk`); on a single node they are the
//! node's own.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::Forwarder;
use super::wire::Fwd;
use crate::broker::ids::NodeId;
use crate::cluster::Cluster;
use crate::cluster::link::Session;

/// What one node says of its alarms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeAlarms {
    pub memory: bool,
    pub disk: bool,
}

pub struct Alarms {
    memory: watch::Sender<bool>,
    disk: watch::Sender<bool>,
    local_memory: watch::Receiver<bool>,
    local_disk: watch::Receiver<bool>,
    /// Peers' alarms, with the session they said them on.
    peers: Mutex<HashMap<NodeId, (Session, NodeAlarms)>>,
}

impl Alarms {
    /// The combined alarms over this node's own, which start as they are now (a node
    /// started on a full disk serves no publisher before the alarm is known).
    pub fn new(
        local_memory: watch::Receiver<bool>,
        local_disk: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let (memory, disk) = (*local_memory.borrow(), *local_disk.borrow());
        let a = Arc::new(Alarms {
            memory: watch::Sender::new(memory),
            disk: watch::Sender::new(disk),
            local_memory,
            local_disk,
            peers: Mutex::new(HashMap::new()),
        });
        tokio::spawn(a.clone().follow_local());
        a
    }

    /// True while publishers must be blocked for memory, on this node or another.
    pub fn memory(&self) -> watch::Receiver<bool> {
        self.memory.subscribe()
    }

    /// True while persistent publishers must be blocked for disk space, anywhere.
    pub fn disk(&self) -> watch::Receiver<bool> {
        self.disk.subscribe()
    }

    fn local(&self) -> NodeAlarms {
        NodeAlarms {
            memory: *self.local_memory.borrow(),
            disk: *self.local_disk.borrow(),
        }
    }

    fn recompute(&self) {
        let mut all = self.local();
        {
            let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            for (_, a) in peers.values() {
                all.memory |= a.memory;
                all.disk |= a.disk;
            }
        }
        self.memory
            .send_if_modified(|on| std::mem::replace(on, all.memory) != all.memory);
        self.disk
            .send_if_modified(|on| std::mem::replace(on, all.disk) != all.disk);
    }

    /// A peer told its alarms, on a live session.
    pub(super) fn peer_said(&self, peer: NodeId, session: Session, said: NodeAlarms) {
        let before = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, (session, said))
            .map(|(_, a)| a)
            .unwrap_or_default();
        if said.memory != before.memory || said.disk != before.disk {
            tracing::info!(
                peer,
                memory = said.memory,
                disk = said.disk,
                "a peer's alarms changed (publishers on every node are blocked while any is on)"
            );
        }
        self.recompute();
    }

    /// Sessions that ended: what their peers said no longer counts.
    pub(super) fn sessions_changed(&self, now: &BTreeMap<NodeId, Option<Session>>) {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|peer, (session, _)| now.get(peer).copied().flatten() == Some(*session));
        self.recompute();
    }

    async fn follow_local(self: Arc<Self>) {
        let (mut memory, mut disk) = (self.local_memory.clone(), self.local_disk.clone());
        loop {
            self.recompute();
            tokio::select! {
                r = memory.changed() => if r.is_err() { return },
                r = disk.changed() => if r.is_err() { return },
            }
        }
    }

    /// Tell every peer this node's alarms, on each new session and on each change.
    pub(super) async fn tell_peers(self: Arc<Self>, fwd: Arc<Forwarder>, cluster: Arc<Cluster>) {
        let (mut memory, mut disk) = (self.local_memory.clone(), self.local_disk.clone());
        let mut up = cluster.links_up();
        let mut told: HashMap<NodeId, (Session, NodeAlarms)> = HashMap::new();
        loop {
            memory.borrow_and_update();
            disk.borrow_and_update();
            let mine = self.local();
            let links = up.borrow_and_update().clone();
            for (peer, session) in links {
                let Some(session) = session else { continue };
                if told.get(&peer) == Some(&(session, mine)) {
                    continue;
                }
                let msg = Fwd::Alarms {
                    memory: mine.memory,
                    disk: mine.disk,
                };
                fwd.send(peer, session, &msg).await;
                told.insert(peer, (session, mine));
            }
            tokio::select! {
                r = memory.changed() => if r.is_err() { return },
                r = disk.changed() => if r.is_err() { return },
                r = up.changed() => if r.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn any_live_nodes_alarm_blocks_and_a_dead_sessions_does_not() {
        let (memory, disk) = (watch::Sender::new(false), watch::Sender::new(true));
        let a = Alarms::new(memory.subscribe(), disk.subscribe());
        let (m, d) = (a.memory(), a.disk());
        assert!(!*m.borrow() && *d.borrow(), "starts as this node is");
        let said = |memory, disk| NodeAlarms { memory, disk };
        a.peer_said(2, 7, said(true, false));
        assert!(*m.borrow());
        a.peer_said(3, 1, said(true, false));
        a.peer_said(2, 7, said(false, false));
        assert!(*m.borrow(), "node 3 is still alarmed");
        // Node 3's session ended (it died or was cut off): its alarm no longer counts.
        a.sessions_changed(&BTreeMap::from([(2, Some(7)), (3, Some(2))]));
        assert!(!*m.borrow());
        // This node's own alarms count as they change.
        disk.send_replace(false);
        let mut d = d;
        tokio::time::timeout(std::time::Duration::from_secs(5), d.wait_for(|on| !on))
            .await
            .expect("the disk alarm clears")
            .unwrap();
        memory.send_replace(true);
        let mut m = m;
        tokio::time::timeout(std::time::Duration::from_secs(5), m.wait_for(|on| *on))
            .await
            .expect("the memory alarm is on")
            .unwrap();
    }
}
