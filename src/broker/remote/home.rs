//! The home node's side of forwarding: forwarded commands carried out on its queues, and
//! the answers sent back on the session they came on. Commands that came on a session that
//! has ended are not carried out (their sender gave up on them); when a session ends, the
//! channels that held messages from basic.get over it are closed on their queues, which
//! requeues those messages (`redelivered`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc, oneshot};

use super::wire::{Fwd, QueueRef, WireEntry};
use super::{Forwarder, decode};
use crate::broker::consumer::{ChannelLimit, ConsumerFlow};
use crate::broker::durable::Batch;
use crate::broker::ids::{ChannelId, ConsumerId, NodeId};
use crate::broker::queue::receipt::{ConfirmTag, Receipt, ReceiptTag};
use crate::broker::queue::{
    ConnEvent, ConnSender, ConsumerSpec, GetReply, QueueCmd, QueueHandle, Settles, Stat,
};
use crate::cluster::link::{Inbound, Session};

/// Channels of a peer's session that hold messages got from (or consume) a queue here.
type Held = HashMap<(NodeId, Session), HashMap<(u64, ChannelId), QueueHandle>>;

/// A peer's consumer of a queue here: its credit cell, and where its deliveries go.
struct Serving {
    peer: NodeId,
    session: Session,
    queue: QueueRef,
    handle: QueueHandle,
    flow: Arc<ConsumerFlow>,
}

type Servings = Arc<Mutex<HashMap<ConsumerId, Serving>>>;

/// The stand-in pool of a peer's channel with a global prefetch (see `super`), and its
/// counts at the last idle check.
struct Proxy {
    pool: Arc<ChannelLimit>,
    seen: (u64, u64),
}

/// What the serve loop keeps.
struct Home {
    held: Held,
    serving: Servings,
    /// Where queues send the deliveries of peers' consumers.
    events: ConnSender,
    proxies: HashMap<(NodeId, Session, ChannelId), Proxy>,
    /// Told when a stand-in pool falls short.
    asks: Arc<Notify>,
}

/// Pool credit unused for this long goes back to the channel's node.
const IDLE_POOL: std::time::Duration = std::time::Duration::from_millis(200);

pub(super) async fn serve(fwd: Arc<Forwarder>, mut rx: mpsc::UnboundedReceiver<Inbound>) {
    let Some(cluster) = fwd.cluster().cloned() else {
        return;
    };
    let mut up = cluster.links_up();
    let mut last: BTreeMap<NodeId, Option<Session>> = up.borrow_and_update().clone();
    let (events, deliveries) = mpsc::unbounded_channel();
    let mut home = Home {
        held: Held::new(),
        serving: Servings::default(),
        events,
        proxies: HashMap::new(),
        asks: Arc::new(Notify::new()),
    };
    let asks = home.asks.clone();
    let mut idle = tokio::time::interval(IDLE_POOL);
    tokio::spawn(send_deliveries(
        fwd.clone(),
        deliveries,
        home.serving.clone(),
    ));
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { return };
                // The link publishes a session before it reads a frame of it.
                let live = up.borrow().get(&m.from).copied().flatten() == Some(m.session);
                // A peer's old session ends before its new one is served: what the old one
                // held goes back before new consumers of the same ids arrive.
                if live && last.get(&m.from).copied().flatten() != Some(m.session) {
                    let now = up.borrow().clone();
                    end_sessions(&fwd, &mut home, &mut last, now).await;
                }
                if let Some(f) = decode(&m) {
                    handle(&fwd, &mut home, m.from, m.session, live, f).await;
                }
            }
            r = up.changed() => {
                if r.is_err() {
                    return;
                }
                let now = up.borrow_and_update().clone();
                end_sessions(&fwd, &mut home, &mut last, now).await;
            }
            _ = asks.notified() => {
                for ((peer, session, channel), p) in &home.proxies {
                    let want = p.pool.take_want();
                    if want > 0 {
                        fwd.send(*peer, *session, &Fwd::PoolWant { channel: *channel, want }).await;
                    }
                }
            }
            _ = idle.tick() => return_idle(&fwd, &mut home).await,
        }
    }
}

/// Give back pool credit that no queue here took since the last check.
async fn return_idle(fwd: &Forwarder, home: &mut Home) {
    for ((peer, session, channel), p) in home.proxies.iter_mut() {
        let now = p.pool.counts();
        if now == p.seen && now.0 > now.1 {
            let n = p
                .pool
                .take_back((now.0 - now.1).min(u64::from(u32::MAX)) as u32);
            if n > 0 {
                let msg = Fwd::PoolReturn {
                    channel: *channel,
                    n,
                };
                fwd.send(*peer, *session, &msg).await;
            }
        }
        p.seen = p.pool.counts();
    }
}

/// Sessions in `last` that are not in `now` have ended: fail their requests, forget their
/// consumers, and close their channels on the queues (requeueing what they held).
async fn end_sessions(
    fwd: &Forwarder,
    home: &mut Home,
    last: &mut BTreeMap<NodeId, Option<Session>>,
    now: BTreeMap<NodeId, Option<Session>>,
) {
    fwd.sessions_changed(&now);
    let live = |p: &NodeId, s: Session| now.get(p).copied().flatten() == Some(s);
    home.serving
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|_, c| live(&c.peer, c.session));
    home.proxies
        .retain(|(peer, session, _), _| live(peer, *session));
    for (peer, was) in last.iter() {
        if let Some(old) = *was
            && !live(peer, old)
        {
            let held = home.held.remove(&(*peer, old)).unwrap_or_default();
            for ((_, channel), q) in held {
                q.send(QueueCmd::ChannelClosed(channel)).await;
            }
        }
    }
    *last = now;
}

/// The queue a peer names, if it runs here (same id: not a namesake declared since).
fn local(fwd: &Forwarder, q: &QueueRef) -> Option<QueueHandle> {
    fwd.vhost(&q.vhost)?.home_queue(&q.name, q.id)
}

/// Deliveries to peers' consumers, each on the session it consumes over; what cannot go
/// (the consumer or its session is gone) goes back to its queue.
async fn send_deliveries(
    fwd: Arc<Forwarder>,
    mut events: mpsc::UnboundedReceiver<ConnEvent>,
    serving: Servings,
) {
    while let Some(ev) = events.recv().await {
        match ev {
            ConnEvent::Deliver {
                consumer,
                no_ack,
                queue,
                entries,
            } => {
                let to = serving
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&consumer)
                    .map(|c| (c.peer, c.session, c.queue.clone()));
                let Some((peer, session, q)) = to else {
                    let back = QueueCmd::Return {
                        consumer,
                        entries,
                        no_ack,
                    };
                    queue.send(back).await;
                    continue;
                };
                let msg = Fwd::Deliver {
                    queue: q,
                    consumer,
                    no_ack,
                    entries: entries.iter().map(WireEntry::of).collect(),
                };
                fwd.send(peer, session, &msg).await;
            }
            ConnEvent::Cancelled(consumer) => {
                let c = serving
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&consumer);
                if let Some(c) = c {
                    let msg = Fwd::ConsumerGone { consumer };
                    fwd.send(c.peer, c.session, &msg).await;
                }
            }
            // A stand-in pool's queues are woken by grants from the channel's node
            // (`PoolGrant`), not by give-backs here.
            _ => {}
        }
    }
}

/// One forwarded message from peer `from` over `session` (`live`: that session is current).
async fn handle(
    fwd: &Arc<Forwarder>,
    home: &mut Home,
    from: NodeId,
    session: Session,
    live: bool,
    f: Fwd,
) {
    let answer = |req: u64, rx: oneshot::Receiver<Fwd>| answer(fwd, from, session, req, rx);
    match f {
        Fwd::Taken { req, .. }
        | Fwd::Got { req, .. }
        | Fwd::Counted { req, .. }
        | Fwd::Purged { req, .. }
        | Fwd::Deleted { req, .. }
        | Fwd::Consumed { req, .. }
        | Fwd::Cancelled { req }
        | Fwd::Gone { req } => fwd.answer(from, req, f),
        Fwd::Deliver {
            queue,
            consumer,
            no_ack,
            entries,
        } => deliver(fwd, from, session, queue, consumer, no_ack, entries).await,
        Fwd::ConsumerGone { consumer } => fwd.consumer_gone_from(from, consumer),
        Fwd::PoolWant { channel, want } => {
            let n = fwd.want((from, session, channel), want);
            if n > 0 {
                fwd.send(from, session, &Fwd::PoolGrant { channel, n })
                    .await;
            }
        }
        Fwd::PoolReturn { channel, n } => fwd.returned((from, session, channel), n),
        _ if !live => {}
        Fwd::Alarms { memory, disk } => {
            fwd.peer_alarms(from, session, super::alarms::NodeAlarms { memory, disk });
        }
        Fwd::PoolGrant { channel, n } => home.pool_grant((from, session, channel), n),
        f @ Fwd::Consume { .. } => {
            if let Some((req, rx)) = home.consume(fwd, (from, session), f) {
                answer(req, rx);
            }
        }
        Fwd::Credit {
            consumer, limit, ..
        } => {
            let serving = home.serving.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = serving.get(&consumer)
                && c.flow.grant(limit)
            {
                c.handle.wake();
            }
        }
        Fwd::Cancel {
            req,
            queue,
            consumer,
        } => {
            home.serving
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&consumer);
            let cancel = |reply| QueueCmd::Cancel { consumer, reply };
            let rx = ask_local(local(fwd, &queue), cancel, move |()| Fwd::Cancelled { req });
            answer(req, rx);
        }
        Fwd::Return {
            queue,
            consumer,
            entries,
            no_ack,
        } => {
            if let Some(q) = local(fwd, &queue) {
                let entries = entries.into_iter().map(WireEntry::into_entry).collect();
                q.send(QueueCmd::Return {
                    consumer,
                    entries,
                    no_ack,
                })
                .await;
            }
        }
        Fwd::Publish { req, queue, msgs } => {
            let (tx, rx) = oneshot::channel();
            publish(fwd, &queue, req, (msgs, None), tx).await;
            answer(req, rx);
        }
        Fwd::Commit {
            req,
            queue,
            msgs,
            settles,
        } => {
            let (tx, rx) = oneshot::channel();
            publish(fwd, &queue, req, (msgs, Some(settles)), tx).await;
            answer(req, rx);
        }
        Fwd::Get {
            req,
            queue,
            channel,
            no_ack,
        } => match home.get(fwd, (from, session), &queue, channel, no_ack, req) {
            Some(rx) => answer(req, rx),
            None => fwd.send(from, session, &Fwd::Gone { req }).await,
        },
        Fwd::Settle { queue, how, seqs } => {
            if let Some(q) = local(fwd, &queue) {
                q.send(how.command(seqs)).await;
            }
        }
        Fwd::ChannelClosed { queue, channel } => {
            if let Some(q) = local(fwd, &queue) {
                home.forget_channel((from, session), q.id, channel);
                q.send(QueueCmd::ChannelClosed(channel)).await;
            }
        }
        Fwd::Move { queue, channel } => {
            if let Some(q) = local(fwd, &queue) {
                // Closed on the queue if the session ends, as a channel that consumes.
                (home.held.entry((from, session)).or_default()).insert((q.id, channel), q.clone());
                q.send(QueueCmd::Move(channel)).await;
            }
        }
        Fwd::Stat { req, queue } => {
            let rx = ask_local(local(fwd, &queue), QueueCmd::Stat, move |s: Stat| {
                Fwd::Counted {
                    req,
                    messages: s.messages,
                    consumers: s.consumers,
                }
            });
            answer(req, rx);
        }
        Fwd::Purge { req, queue } => {
            let rx = ask_local(local(fwd, &queue), QueueCmd::Purge, move |messages| {
                Fwd::Purged { req, messages }
            });
            answer(req, rx);
        }
        Fwd::Delete {
            req,
            queue,
            if_unused,
            if_empty,
        } => {
            let delete = move |reply| QueueCmd::Delete {
                if_unused,
                if_empty,
                reply,
            };
            let rx = ask_local(local(fwd, &queue), delete, move |result| Fwd::Deleted {
                req,
                result,
            });
            answer(req, rx);
        }
    }
}

/// Send the reply to request `req` once it is ready (`Gone` if it never comes).
fn answer(
    fwd: &Arc<Forwarder>,
    from: NodeId,
    session: Session,
    req: u64,
    rx: oneshot::Receiver<Fwd>,
) {
    let fwd = fwd.clone();
    tokio::spawn(async move {
        let msg = rx.await.unwrap_or(Fwd::Gone { req });
        fwd.send(from, session, &msg).await;
    });
}

/// Deliveries from a queue on `from` to a consumer here; a consumer no longer here gets
/// them sent back unchanged.
async fn deliver(
    fwd: &Forwarder,
    from: NodeId,
    session: Session,
    queue: QueueRef,
    consumer: ConsumerId,
    no_ack: bool,
    entries: Vec<WireEntry>,
) {
    let entries = entries.into_iter().map(WireEntry::into_entry).collect();
    if let Err((consumer, entries)) = fwd.deliver(from, session, consumer, no_ack, entries) {
        let back = Fwd::Return {
            queue,
            consumer,
            entries: entries.iter().map(WireEntry::of).collect(),
            no_ack,
        };
        fwd.send(from, session, &back).await;
    }
}

impl Home {
    /// Credit from a peer channel's global-prefetch pool: its consumers here are woken
    /// whether or not they are marked starved (a queue that gave back what it drew cleared
    /// the mark, and still waits for this).
    fn pool_grant(&mut self, (from, session, channel): (NodeId, Session, ChannelId), n: u32) {
        let Some(p) = self.proxies.get(&(from, session, channel)) else {
            return;
        };
        p.pool.grant(n);
        let serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        for (id, c) in serving.iter() {
            if id.channel == channel && c.peer == from && c.session == session {
                c.handle.wake();
            }
        }
    }

    /// A peer's consumer of a queue here (`f` is a `Fwd::Consume`): its credit cell, and
    /// for a channel with a global prefetch the channel's stand-in pool; the reply is the
    /// queue's answer (none if the queue is not here).
    fn consume(
        &mut self,
        fwd: &Forwarder,
        (from, session): (NodeId, Session),
        f: Fwd,
    ) -> Option<(u64, oneshot::Receiver<Fwd>)> {
        let Fwd::Consume {
            req,
            queue,
            consumer,
            no_ack,
            exclusive,
            prefetch,
            arguments,
            limit,
            pooled,
        } = f
        else {
            return None;
        };
        let (tx, rx) = oneshot::channel();
        let Some(q) = local(fwd, &queue) else {
            return Some((req, rx));
        };
        let channel_limit = if pooled {
            let asks = self.asks.clone();
            let proxy = self
                .proxies
                .entry((from, session, consumer.channel))
                .or_insert_with(|| Proxy {
                    pool: Arc::new(ChannelLimit::granted(asks)),
                    seen: (0, 0),
                });
            proxy.pool.clone()
        } else {
            // No global prefetch: the channel's node counts deliveries as they come.
            Arc::new(ChannelLimit::default())
        };
        let flow = Arc::new(ConsumerFlow::new(limit));
        let serving = Serving {
            peer: from,
            session,
            queue,
            handle: q.clone(),
            flow: flow.clone(),
        };
        self.serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(consumer.clone(), serving);
        self.held
            .entry((from, session))
            .or_default()
            .insert((q.id, consumer.channel), q.clone());
        let spec = ConsumerSpec {
            id: consumer.clone(),
            no_ack,
            exclusive,
            prefetch,
            arguments,
            events: self.events.clone(),
            flow,
            channel_limit,
        };
        let serving = self.serving.clone();
        tokio::spawn(async move {
            let result = q
                .ask(|reply| QueueCmd::Consume(spec, reply))
                .await
                .unwrap_or_else(|| Err(crate::error::Error::not_found("queue gone")));
            if result.is_err() {
                serving
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&consumer);
            }
            let _ = tx.send(Fwd::Consumed { req, result });
        });
        Some((req, rx))
    }

    /// basic.get for a peer's channel; None if the queue is not here.
    fn get(
        &mut self,
        fwd: &Forwarder,
        peer: (NodeId, Session),
        queue: &QueueRef,
        channel: ChannelId,
        no_ack: bool,
        req: u64,
    ) -> Option<oneshot::Receiver<Fwd>> {
        let q = local(fwd, queue)?;
        if !no_ack {
            self.held
                .entry(peer)
                .or_default()
                .insert((q.id, channel), q.clone());
        }
        let get = move |reply| QueueCmd::Get {
            channel,
            no_ack,
            reply,
        };
        Some(ask_local(Some(q), get, move |got: GetReply| Fwd::Got {
            req,
            got: got.map(|(e, n)| (WireEntry::of(&e), n)),
        }))
    }

    /// A peer's channel closed on queue `queue`: it holds nothing here any more.
    fn forget_channel(&mut self, peer: (NodeId, Session), queue: u64, channel: ChannelId) {
        if let Some(h) = self.held.get_mut(&peer) {
            h.remove(&(queue, channel));
        }
        self.proxies.remove(&(peer.0, peer.1, channel));
        self.serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| id.channel != channel);
    }
}

/// Ask a queue here (if it runs here) and turn its answer into the reply to a peer; the
/// receiver is dropped unanswered if the queue is gone (the peer hears `Gone`).
fn ask_local<T: Send + 'static>(
    q: Option<QueueHandle>,
    make: impl FnOnce(oneshot::Sender<T>) -> QueueCmd + Send + 'static,
    reply: impl FnOnce(T) -> Fwd + Send + 'static,
) -> oneshot::Receiver<Fwd> {
    let (tx, rx) = oneshot::channel();
    if let Some(q) = q {
        tokio::spawn(async move {
            if let Some(answer) = q.ask(make).await {
                let _ = tx.send(reply(answer));
            }
        });
    }
    rx
}

/// Enqueue forwarded publishes as a local publisher would: persistent messages to a durable
/// queue are written (and synced) before they count as taken. `done` gets the answer.
async fn publish(
    fwd: &Forwarder,
    queue: &QueueRef,
    req: u64,
    (msgs, settles): (Vec<super::wire::WireMsg>, Option<Settles>),
    done: oneshot::Sender<Fwd>,
) {
    let n = msgs.len() as u32;
    let Some(q) = local(fwd, queue) else {
        let _ = done.send(Fwd::Taken {
            req,
            refused: (0..n).collect(),
            lost: true,
        });
        return;
    };
    let mut batch = Batch::default();
    let mut out = Vec::with_capacity(msgs.len());
    for w in msgs {
        let mut m = w.into_message();
        if let Some(store) = &q.store {
            batch.publish(store, &mut m, std::slice::from_ref(&q));
        }
        out.push(Arc::new(m));
    }
    let synced = match &q.store {
        Some(store) if !batch.is_empty() => {
            store.wait_for_space().await;
            let (tx, rx) = oneshot::channel();
            // Submitted before the queue sees the messages, so an ack's dequeue can never
            // reach the store ahead of the enqueue.
            batch.submit(
                store,
                Box::new(move |r: Result<(), _>| {
                    let _ = tx.send(r.is_ok());
                }),
            );
            Some(rx)
        }
        _ => None,
    };
    let (events, mut taken) = mpsc::unbounded_channel();
    let tags = (0..n)
        .map(|at| ReceiptTag {
            at,
            tag: ConfirmTag {
                channel: 0,
                tag: u64::from(at),
            },
        })
        .collect();
    // A queue deleted meanwhile drops the batch, and its receipt refuses it all.
    let receipt = Receipt::new(events, req, tags);
    let cmd = match settles {
        None => QueueCmd::Publish(out, Some(receipt)),
        Some(settles) => QueueCmd::Commit {
            msgs: out,
            settles,
            receipt,
        },
    };
    q.send(cmd).await;
    tokio::spawn(async move {
        let (mut refused, lost): (Vec<u32>, bool) = match taken.recv().await {
            Some(ConnEvent::Taken { nacks, lost, .. }) => {
                (nacks.iter().map(|t| t.tag as u32).collect(), lost)
            }
            _ => ((0..n).collect(), true),
        };
        // Flow control across nodes: while the queue is busy (its consumers are behind),
        // the answer waits, so the sender's window fills and its publishers pause, as a
        // local publisher to a busy queue is paused.
        q.unbusy().await;
        if let Some(rx) = synced
            && !rx.await.unwrap_or(false)
        {
            refused = (0..n).collect();
        }
        let _ = done.send(Fwd::Taken { req, refused, lost });
    });
}
