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
//! node requeues what they held; a quorum queue's consumers move to another member instead
//! (`stub.rs`).
//!
//! Global prefetch: the pool of a channel with basic.qos global=true stays on the channel's
//! node. A queue elsewhere draws on a stand-in pool its home node keeps for the channel
//! (`ChannelLimit::granted`), holding only what the channel's node granted from the real
//! pool; short of credit it asks (`PoolWant`), and it gives back what it leaves idle
//! (`PoolReturn`). Deliveries spend the grant; their acks free the real pool as a local
//! queue's would. Credit granted over a session that ends goes back to the pool.

pub mod alarms;
mod home;
mod stub;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::oneshot;

use super::consumer::ChannelLimit;
use super::ids::{ChannelId, ConsumerId, NodeId};
use super::queue::{ConnEvent, ConnSender, QueueHandle};
use super::vhost::VHost;
use crate::cluster::Cluster;
use crate::cluster::link::{Frame, Inbound, Session};
use wire::Fwd;

pub use stub::{TakeOver, spawn_stub, take_over};

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
    /// Its channel's pool, and whether the home node draws on grants from it (the channel
    /// had a global prefetch when it consumed); otherwise deliveries are counted as they come.
    pool: Arc<ChannelLimit>,
    pooled: bool,
    /// The stub.
    queue: QueueHandle,
    /// The stub's messages held unacked, with their session.
    held: Held,
    /// Through a quorum queue's member: when the session ends the stub registers it on
    /// another member (it is not cancelled).
    moves: bool,
}

/// Messages held unacked through a stub, by seq, with the node and session they came on
/// (session numbers are per link) and the channel that holds them.
type Held = Arc<Mutex<HashMap<u64, (NodeId, Session, ChannelId)>>>;

/// A channel's pool as lent to one home node over one session.
struct Lent {
    pool: Arc<ChannelLimit>,
    /// Where to wake the channel's consumers when credit comes back.
    events: ConnSender,
    /// Granted and not yet spent by a delivery or given back.
    outstanding: u64,
    /// Asked for and not granted yet (the pool was short).
    wanted: u32,
}

type LentKey = (NodeId, Session, ChannelId);

/// This node's forwarding, both ways.
pub struct Forwarder {
    consumers: Mutex<HashMap<ConsumerId, Consuming>>,
    lent: Mutex<HashMap<LentKey, Lent>>,
    cluster: OnceLock<Arc<Cluster>>,
    vhosts: OnceLock<HashMap<String, Arc<VHost>>>,
    alarms: OnceLock<Arc<alarms::Alarms>>,
    next_req: AtomicU64,
    waiting: Mutex<HashMap<u64, Waiter>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Forwarder")
    }
}

impl Forwarder {
    pub fn new() -> Arc<Forwarder> {
        Arc::new(Forwarder {
            consumers: Mutex::new(HashMap::new()),
            lent: Mutex::new(HashMap::new()),
            cluster: OnceLock::new(),
            vhosts: OnceLock::new(),
            alarms: OnceLock::new(),
            next_req: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        })
    }

    /// Start serving forwarded work, once the cluster runs (before any client is served).
    pub fn start(
        self: &Arc<Self>,
        cluster: Arc<Cluster>,
        vhosts: HashMap<String, Arc<VHost>>,
        alarms: Arc<alarms::Alarms>,
    ) {
        let Some(rx) = cluster.take_forwarded() else {
            return;
        };
        let _ = self.vhosts.set(vhosts);
        let _ = self.cluster.set(cluster.clone());
        let _ = self.alarms.set(alarms.clone());
        tokio::spawn(home::serve(self.clone(), rx));
        tokio::spawn(alarms.tell_peers(self.clone(), cluster));
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
        if let Some(a) = self.alarms.get() {
            a.sessions_changed(now);
        }
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, w| live(&w.peer, w.session));
        let mut consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        consumers.retain(|id, c| {
            let keep = c.moves || live(&c.home, c.session);
            if !keep {
                let _ = c.events.send(ConnEvent::Cancelled(id.clone()));
            }
            keep
        });
        drop(consumers);
        let mut lent = self.lent.lock().unwrap_or_else(|e| e.into_inner());
        lent.retain(|(home, session, channel), l| {
            let keep = live(home, *session);
            if !keep {
                give_back(l, channel, l.outstanding);
            }
            keep
        });
    }

    /// A consumer of a queue on `home` whose channel has a global prefetch.
    fn lend(&self, key: LentKey, pool: Arc<ChannelLimit>, events: ConnSender) {
        self.lent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert(Lent {
                pool,
                events,
                outstanding: 0,
                wanted: 0,
            });
    }

    /// The home node asks for pool credit: what to grant now (the rest when acks free it).
    fn want(&self, key: LentKey, want: u32) -> u32 {
        let mut lent = self.lent.lock().unwrap_or_else(|e| e.into_inner());
        let Some(l) = lent.get_mut(&key) else {
            return 0;
        };
        let n = l.pool.acquire(want);
        l.outstanding += u64::from(n);
        l.wanted = want - n;
        n
    }

    /// Grants for wants of `home` that the pool could not meet before (it was woken).
    fn retry_wants(&self, home: NodeId) -> Vec<(Session, ChannelId, u32)> {
        let mut lent = self.lent.lock().unwrap_or_else(|e| e.into_inner());
        let mut grants = Vec::new();
        for ((h, session, channel), l) in lent.iter_mut() {
            if *h != home || l.wanted == 0 {
                continue;
            }
            let n = l.pool.acquire(l.wanted);
            if n > 0 {
                l.outstanding += u64::from(n);
                l.wanted -= n;
                grants.push((*session, *channel, n));
            }
        }
        grants
    }

    /// The home node gives back `n` of its grant.
    fn returned(&self, key: LentKey, n: u32) {
        let mut lent = self.lent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = lent.get_mut(&key) {
            let n = u64::from(n).min(l.outstanding);
            l.outstanding -= n;
            give_back(l, &key.2, n);
        }
    }

    /// A channel closed: its pool is lent no more.
    fn forget_lent(&self, home: NodeId, channel: ChannelId) {
        self.lent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(h, _, c), _| !(*h == home && *c == channel));
    }

    /// Deliveries from `key`'s grant arrived (`n` of them).
    fn spent(&self, key: &LentKey, n: u32) -> Option<Arc<ChannelLimit>> {
        let mut lent = self.lent.lock().unwrap_or_else(|e| e.into_inner());
        let l = lent.get_mut(key)?;
        l.outstanding = l.outstanding.saturating_sub(u64::from(n));
        Some(l.pool.clone())
    }

    fn add_consumer(&self, id: ConsumerId, c: Consuming) {
        self.consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, c);
    }

    fn has_consumer(&self, id: &ConsumerId) -> bool {
        self.consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
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
        let n = entries.len() as u32;
        let key = (from, session, consumer.channel);
        let Some(c) = consumers
            .get(&consumer)
            .filter(|c| c.home == from && c.session == session)
        else {
            // Not handed out: what they spent of a grant goes back to the pool.
            if !no_ack
                && let Some(pool) = self.spent(&key, n)
                && pool.release(n)
            {
                self.wake_channel(&key);
            }
            return Err((consumer, entries));
        };
        if !no_ack {
            // The connection counts them in its channel's pool until they are settled.
            if c.pooled {
                self.spent(&key, n);
            } else {
                c.pool.force(n);
            }
            let mut held = c.held.lock().unwrap_or_else(|e| e.into_inner());
            for e in &entries {
                held.insert(e.seq, (from, session, consumer.channel));
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

    /// The queue that `from` serves a consumer here through cancelled it: gone, unless the
    /// consumer has moved to another member since (a late word of the one it left).
    fn consumer_gone_from(&self, from: NodeId, consumer: ConsumerId) {
        let mut consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        if consumers.get(&consumer).is_none_or(|c| c.home != from) {
            return;
        }
        let c = consumers.remove(&consumer);
        drop(consumers);
        if let Some(c) = c {
            let _ = c.events.send(ConnEvent::Cancelled(consumer));
        }
    }

    /// A consumer through a stub is gone (its queue went away, or its stub ended).
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

    fn peer_alarms(&self, peer: NodeId, session: Session, said: alarms::NodeAlarms) {
        if let Some(a) = self.alarms.get() {
            a.peer_said(peer, session, said);
        }
    }

    fn wake_channel(&self, key: &LentKey) {
        let lent = self.lent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = lent.get(key) {
            let _ = l.events.send(ConnEvent::Wake {
                channel: key.2.channel,
            });
        }
    }

    fn vhost(&self, name: &str) -> Option<&Arc<VHost>> {
        self.vhosts.get()?.get(name)
    }
}

/// Put `n` of a lent pool's credit back, waking the channel's consumers if one waited.
fn give_back(l: &Lent, channel: &ChannelId, n: u64) {
    if n > 0 && l.pool.release(n.min(u64::from(u32::MAX)) as u32) {
        let _ = l.events.send(ConnEvent::Wake {
            channel: channel.channel,
        });
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
