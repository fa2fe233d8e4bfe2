//! Queues used from a node other than their home, over the node links. On the using node a
//! queue homed elsewhere has a handle like any queue's, served by a stub task (`stub.rs`)
//! that forwards each command to the home node. On the home node the `Forwarder` carries
//! forwarded commands out on the real queue (`home.rs`) and sends the answers back.
//!
//! Sessions: forwarded work belongs to one connection of the link to a peer. When it ends,
//! requests waiting for an answer over it are dropped (a publish is then nacked, a get
//! answers as if the queue had gone), and the home node requeues what the peer's channels
//! held from basic.get; a settlement sent on an earlier session is not applied.
//!
//! Consumers: the using node keeps its consumers of a stub's queue here (`Consuming`), and
//! hands deliveries from the home node to their connections as a local queue would; the
//! credit their connections grant goes back to the home node. When the session ends, they
//! are cancelled (basic.cancel, as RabbitMQ does when a queue's node goes down) and the home
//! node requeues what they held.

mod home;
mod stub;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::oneshot;

use super::ids::{ConsumerId, NodeId};
use super::queue::{ConnEvent, ConnSender, QueueHandle};
use super::vhost::VHost;
use crate::cluster::Cluster;
use crate::cluster::link::{Frame, Inbound, Session};
use wire::Fwd;

pub use stub::spawn_stub;

/// An answer awaited: from which peer, on which session.
struct Waiter {
    peer: NodeId,
    session: Session,
    tx: oneshot::Sender<Fwd>,
}

/// A consumer on this node of a queue homed on another.
struct Consuming {
    home: NodeId,
    session: Session,
    events: ConnSender,
    /// The stub.
    queue: QueueHandle,
    /// The stub's messages held unacked, with their session.
    held: Held,
}

/// Messages held unacked through a stub, by seq, with the session they came on.
type Held = Arc<Mutex<HashMap<u64, Session>>>;

/// This node's forwarding, both ways.
pub struct Forwarder {
    consumers: Mutex<HashMap<ConsumerId, Consuming>>,
    cluster: OnceLock<Arc<Cluster>>,
    vhosts: OnceLock<HashMap<String, Arc<VHost>>>,
    next_req: AtomicU64,
    waiting: Mutex<HashMap<u64, Waiter>>,
}

impl Forwarder {
    pub fn new() -> Arc<Forwarder> {
        Arc::new(Forwarder {
            consumers: Mutex::new(HashMap::new()),
            cluster: OnceLock::new(),
            vhosts: OnceLock::new(),
            next_req: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        })
    }

    /// Start serving forwarded work, once the cluster runs (before any client is served).
    pub fn start(self: &Arc<Self>, cluster: Arc<Cluster>, vhosts: HashMap<String, Arc<VHost>>) {
        let Some(rx) = cluster.take_forwarded() else {
            return;
        };
        let _ = self.vhosts.set(vhosts);
        let _ = self.cluster.set(cluster);
        tokio::spawn(home::serve(self.clone(), rx));
    }

    fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// The session of the link to `peer`: waiting up to the peer timeout for a link that
    /// is down (it may be reconnecting), then None.
    async fn session(&self, peer: NodeId) -> Option<Session> {
        let cluster = self.cluster()?;
        let mut up = cluster.links_up();
        let wait = up.wait_for(|m| m.get(&peer).copied().flatten().is_some());
        let got = tokio::time::timeout(cluster.config.peer_timeout, wait).await;
        *got.ok()?.ok()?.get(&peer)?
    }

    /// Send `msg` on `session` to `peer` (waiting for room on the link).
    async fn send(&self, peer: NodeId, session: Session, msg: &Fwd) {
        if let Some(c) = self.cluster() {
            c.forward(peer, session, msg.encode()).await;
        }
    }

    /// A request number, and where its answer will come (dropped if the session ends).
    fn expect(&self, peer: NodeId, session: Session) -> (u64, oneshot::Receiver<Fwd>) {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req, Waiter { peer, session, tx });
        (req, rx)
    }

    fn answer(&self, from: NodeId, req: u64, msg: Fwd) {
        let w = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&req);
        if let Some(w) = w
            && w.peer == from
        {
            let _ = w.tx.send(msg);
        }
    }

    /// Sessions that ended: their waiters are dropped (the requests failed) and their
    /// consumers cancelled.
    fn sessions_changed(&self, now: &BTreeMap<NodeId, Option<Session>>) {
        let live =
            |peer: &NodeId, session: Session| now.get(peer).copied().flatten() == Some(session);
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, w| live(&w.peer, w.session));
        let mut consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        consumers.retain(|id, c| {
            let keep = live(&c.home, c.session);
            if !keep {
                let _ = c.events.send(ConnEvent::Cancelled(id.clone()));
            }
            keep
        });
    }

    fn add_consumer(&self, id: ConsumerId, c: Consuming) {
        self.consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, c);
    }

    fn remove_consumer(&self, id: &ConsumerId) -> Option<ConsumerId> {
        let mut consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        consumers.remove(id).map(|_| id.clone())
    }

    /// Deliveries from the home node for a consumer here; false if it is not (any more) a
    /// consumer of that session, and the entries must go back.
    fn deliver(
        &self,
        from: NodeId,
        session: Session,
        consumer: ConsumerId,
        no_ack: bool,
        entries: Vec<super::queue::Entry>,
    ) -> Result<(), (ConsumerId, Vec<super::queue::Entry>)> {
        let consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = consumers
            .get(&consumer)
            .filter(|c| c.home == from && c.session == session)
        else {
            return Err((consumer, entries));
        };
        if !no_ack {
            let mut held = c.held.lock().unwrap_or_else(|e| e.into_inner());
            for e in &entries {
                held.insert(e.seq, session);
            }
        }
        let ev = ConnEvent::Deliver {
            consumer,
            no_ack,
            queue: c.queue.clone(),
            entries,
        };
        let _ = c.events.send(ev);
        Ok(())
    }

    /// The home node cancelled a consumer (its queue went away).
    fn consumer_gone(&self, consumer: ConsumerId) {
        let c = self
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&consumer);
        if let Some(c) = c {
            let _ = c.events.send(ConnEvent::Cancelled(consumer));
        }
    }

    fn vhost(&self, name: &str) -> Option<&Arc<VHost>> {
        self.vhosts.get()?.get(name)
    }
}

/// An inbound forward frame's content, or None for anything else.
fn decode(m: &Inbound) -> Option<Fwd> {
    let Frame::Forward(bytes) = &m.frame else {
        return None;
    };
    match Fwd::decode(bytes) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(peer = m.from, "undecodable forwarded work dropped: {e}");
            None
        }
    }
}
