//! The classic queue: one task that runs a `QueueState` and carries out its effects. It owns
//! the inbox, the timer, the consumers' links (connection inbox, credit cell, channel pool)
//! and the store I/O: delivery marks and dequeues (no sync needed: a lost one means a
//! redelivery, never a loss), and reading paged-out bodies back, off the async workers.
//!
//! The task never waits on anyone but its inbox and its own store reads: deliveries go out on
//! unbounded connection inboxes whose content is bounded by the credit each channel grants,
//! so one slow consumer cannot stall a queue.
//!
//! Each wake-up is a round: the commands taken from the inbox are applied one by one, then
//! fresh credit is read and applied, the timer's tick if due, and the round's deliveries
//! (merged per consumer) are sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::state::{self, Command, Delivery, Effect, Meta, QueueState, Reply};
use super::{Entry, QueueCmd, QueueHandle, QueueShared, Stat};
use crate::broker::args::QueueArgs;
use crate::broker::clock;
use crate::broker::consumer::{ChannelLimit, ConsumerFlow};
use crate::broker::ids::{ChannelId, ConnId, ConsumerId};
use crate::broker::memory::MemoryMonitor;
use crate::broker::message::{Message, Persisted};
use crate::broker::queue::{ConnEvent, ConnSender, ConsumerSpec};
use crate::protocol::FieldTable;
use crate::store::{Op, Store};

mod body;
mod credit;

pub use body::Body;

/// Called as a queue ends by deletion, before its last reply: whoever holds the queue by name
/// forgets it (the vhost).
pub type OnDeleted = Arc<dyn Fn(&QueueShared) + Send + Sync>;

/// Messages recovered for a queue, in order, each with whether it had been delivered. Their
/// bodies stay on disk until they are needed.
pub type Recovered = Vec<(Arc<Persisted>, bool)>;

pub struct QueueSpec {
    pub name: Arc<str>,
    pub id: u64,
    pub exclusive_owner: Option<ConnId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    pub inbox: usize,
    pub memory: Arc<MemoryMonitor>,
    pub store: Option<Arc<Store>>,
    pub initial: Recovered,
    pub vhost: Arc<str>,
    /// Bytes of messages kept in memory before new persistent ones are paged out.
    pub memory_budget: usize,
    pub flow_messages: usize,
    pub on_deleted: OnDeleted,
}

/// Start a queue task; it ends when the queue is deleted.
pub fn spawn(spec: QueueSpec) -> QueueHandle {
    let (tx, rx) = mpsc::channel(spec.inbox.max(1));
    let shared = Arc::new(QueueShared::new(
        spec.name,
        spec.id,
        spec.exclusive_owner,
        spec.auto_delete,
        spec.arguments,
        spec.store,
        tx,
    ));
    let args = QueueArgs::parse(&shared.arguments).unwrap_or_else(|bad| {
        // Checked at declare; only a store written by another version gets here.
        tracing::warn!(queue = %shared.name, arg = bad.key, "ignoring invalid argument: {}", bad.why);
        QueueArgs::default()
    });
    let cfg = state::Config {
        name: shared.name.clone(),
        vhost: spec.vhost,
        durable: shared.store.is_some(),
        auto_delete: shared.auto_delete,
        args,
        memory_budget: spec.memory_budget,
        // RabbitMQ's classic queues neither count deliveries nor limit them.
        delivery_limit: None,
        requeue_to_tail: false,
    };
    let meta = Meta {
        now_ms: clock::now_ms(),
    };
    let initial = spec.initial.into_iter().map(|(p, d)| (Body::Disk(p), d));
    let q = Classic {
        state: QueueState::recovered(cfg, meta, initial.collect()),
        shared: shared.clone(),
        links: HashMap::new(),
        fx: Vec::new(),
        outbox: Vec::new(),
        ops: Vec::new(),
        memory: spec.memory,
        reported: 0,
        flow_messages: spec.flow_messages,
        on_deleted: spec.on_deleted,
        again: false,
        broken: false,
    };
    tokio::spawn(q.run(rx));
    shared
}

/// How the queue reaches one consumer.
struct Link {
    events: ConnSender,
    flow: Arc<ConsumerFlow>,
    pool: Arc<ChannelLimit>,
    /// It spends its channel's pool (an ack-mode consumer).
    pooled: bool,
    /// The credit limit last applied to the state.
    applied: u64,
}

struct Classic {
    shared: QueueHandle,
    state: QueueState<Body>,
    links: HashMap<ConsumerId, Link>,
    /// Reused effect buffer.
    fx: Vec<Effect<Body>>,
    /// This round's deliveries, merged per consumer.
    outbox: Vec<(ConsumerId, bool, Vec<Delivery<Body>>)>,
    /// This round's store writes, submitted together.
    ops: Vec<Op>,
    memory: Arc<MemoryMonitor>,
    /// The state's weight as last added to the memory monitor.
    reported: usize,
    flow_messages: usize,
    on_deleted: OnDeleted,
    /// A consumer ran out of credit while its channel was granting more: look again.
    again: bool,
    /// The store could not give back a body: the queue stops (its messages stay on disk).
    broken: bool,
}

/// Commands taken from the inbox per wake-up, so publishes arrive in batches.
const BATCH: usize = 64;

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Classic {
    async fn run(mut self, mut rx: mpsc::Receiver<QueueCmd>) {
        let shared = self.shared.clone();
        let mut cmds = Vec::with_capacity(BATCH);
        while !self.state.is_deleted() && !self.broken {
            let timer = self.state.next_deadline_ms().map(clock::instant_at);
            tokio::select! {
                n = rx.recv_many(&mut cmds, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    for cmd in cmds.drain(..) {
                        self.handle(cmd).await;
                        if self.state.is_deleted() || self.broken {
                            break;
                        }
                    }
                    cmds.clear();
                }
                _ = shared.wake.notified() => {}
                _ = sleep_until(timer), if timer.is_some() => {}
            }
            self.round_end().await;
        }
        // Deleted, broken, or every handle gone: write what is left, release publishers.
        self.flush_ops();
        self.memory.sub(std::mem::take(&mut self.reported));
        self.shared.set_busy(false);
    }

    fn apply(&mut self, cmd: Command<Body>) -> Reply<Body> {
        let meta = Meta {
            now_ms: clock::now_ms(),
        };
        let mut fx = std::mem::take(&mut self.fx);
        let reply = self.state.apply(meta, cmd, &mut fx);
        for e in fx.drain(..) {
            self.carry(e);
        }
        self.fx = fx;
        reply
    }

    async fn handle(&mut self, cmd: QueueCmd) {
        match cmd {
            QueueCmd::Publish(msgs, receipt) => {
                let bodies = msgs.into_iter().map(Body::Mem).collect();
                if let Reply::Enqueued { refused } = self.apply(Command::Enqueue(bodies))
                    && let Some(r) = receipt
                {
                    r.answer(&refused);
                }
            }
            // The store has the whole transaction already (one synced write): its parts
            // are applied in turn.
            QueueCmd::Commit {
                msgs,
                settles,
                receipt,
            } => {
                let bodies = msgs.into_iter().map(Body::Mem).collect();
                if let Reply::Enqueued { refused } = self.apply(Command::Enqueue(bodies)) {
                    receipt.answer(&refused);
                }
                for (how, seqs) in settles {
                    self.apply(Command::settle(how, seqs));
                }
            }
            QueueCmd::Consume(spec, reply) => {
                let _ = reply.send(self.consume(spec));
            }
            QueueCmd::Cancel { consumer, reply } => {
                self.links.remove(&consumer);
                self.apply(Command::Cancel(consumer));
                let _ = reply.send(());
            }
            QueueCmd::Get {
                channel,
                no_ack,
                reply,
            } => {
                let got = self.get(channel, no_ack).await;
                let _ = reply.send(got);
            }
            QueueCmd::Ack(seqs) => _ = self.apply(Command::Ack(seqs)),
            QueueCmd::Requeue(seqs) => _ = self.apply(Command::Requeue(seqs)),
            QueueCmd::Discard(seqs) => _ = self.apply(Command::Discard(seqs)),
            QueueCmd::Return {
                consumer,
                entries,
                no_ack,
            } => self.give_back_deliveries(consumer, entries, no_ack),
            QueueCmd::ChannelClosed(ch) => {
                self.links.retain(|id, _| id.channel != ch);
                self.apply(Command::ChannelDown(ch));
            }
            QueueCmd::Stat(reply) => {
                if let Reply::Stat {
                    messages,
                    consumers,
                } = self.apply(Command::Stat)
                {
                    let _ = reply.send(Stat {
                        messages,
                        consumers,
                    });
                }
            }
            QueueCmd::Purge(reply) => {
                if let Reply::Purged(n) = self.apply(Command::Purge) {
                    let _ = reply.send(n);
                }
            }
            QueueCmd::Delete {
                if_unused,
                if_empty,
                reply,
            } => {
                if let Reply::Deleted(r) = self.apply(Command::Delete {
                    if_unused,
                    if_empty,
                }) {
                    let _ = reply.send(r);
                }
            }
            QueueCmd::NodeDown(_)
            | QueueCmd::Members(_)
            | QueueCmd::Leave(_)
            | QueueCmd::Move(_) => {}
            QueueCmd::Stop => {
                for (consumer, link) in self.links.drain() {
                    let _ = link.events.send(ConnEvent::Cancelled(consumer));
                }
                self.broken = true;
            }
        }
    }

    fn consume(&mut self, spec: ConsumerSpec) -> Result<(), crate::error::Error> {
        let limit = spec.flow.limit();
        let id = spec.id.clone();
        let checkout = state::Checkout {
            consumer: id.clone(),
            no_ack: spec.no_ack,
            exclusive: spec.exclusive,
            prefetch: spec.prefetch,
            limit,
            pooled: !spec.no_ack,
        };
        // The link first: applying the checkout may already starve the consumer, and the
        // mark must reach its credit cell. A current id keeps its link (the state refuses it).
        let fresh = !self.links.contains_key(&id);
        if fresh {
            let link = Link {
                events: spec.events,
                flow: spec.flow,
                pool: spec.channel_limit,
                pooled: !spec.no_ack,
                applied: limit,
            };
            self.links.insert(id.clone(), link);
        }
        let Reply::CheckedOut(r) = self.apply(Command::Checkout(checkout)) else {
            unreachable!("checkout answers with CheckedOut")
        };
        if r.is_err() && fresh {
            self.links.remove(&id);
        }
        r
    }

    /// basic.get: the head message, its body read back first if it was paged out.
    async fn get(&mut self, channel: ChannelId, no_ack: bool) -> super::GetReply {
        loop {
            let Reply::Got(Some((d, remaining))) = self.apply(Command::Get { channel, no_ack })
            else {
                return None;
            };
            match self.load(vec![d]).await {
                Some(mut entries) if !entries.is_empty() => {
                    return entries.pop().map(|e| (e, remaining));
                }
                // Its row was missing (settled by `load`): try the next one.
                Some(_) => {}
                None => return None,
            }
        }
    }

    fn carry(&mut self, e: Effect<Body>) {
        match e {
            Effect::Deliver {
                consumer,
                no_ack,
                msgs,
            } => match self.outbox.iter_mut().find(|(c, _, _)| *c == consumer) {
                Some((_, _, batch)) => batch.extend(msgs),
                None => self.outbox.push((consumer, no_ack, msgs)),
            },
            Effect::Starved(c) => {
                if let Some(l) = self.links.get(&c) {
                    l.flow.starve();
                    // Re-check: the connection may have granted between our read and now.
                    self.again |= l.flow.limit() != l.applied;
                }
            }
            Effect::Cancelled(c) => {
                if let Some(l) = self.links.remove(&c) {
                    let _ = l.events.send(ConnEvent::Cancelled(c));
                }
            }
            Effect::MarkDelivered(b) => {
                if self.shared.store.is_some()
                    && let Some(p) = b.persisted()
                {
                    self.ops.push(Op::Delivered {
                        queue: self.shared.id,
                        msg: p.id,
                        size: p.size,
                    });
                }
            }
            Effect::Release(b) => self.release(&b),
            Effect::Reacquire(b) => self.reacquire(&b),
            Effect::Deleted => {
                if self.shared.store.is_some() {
                    // The whole index goes with the queue's row: per-message deletes are redundant.
                    self.ops.retain(|op| !matches!(op, Op::Dequeue { .. }));
                    let cfg = self.state.config();
                    self.ops.push(Op::DeleteQueue {
                        vhost: cfg.vhost.to_string(),
                        name: cfg.name.to_string(),
                        id: self.shared.id,
                    });
                }
                (self.on_deleted)(&self.shared);
            }
        }
    }

    /// This durable queue no longer holds a stored message: drop its index entry, and the
    /// row itself if no other queue holds it.
    fn release(&mut self, b: &Body) {
        let (true, Some(p)) = (self.shared.store.is_some(), b.persisted()) else {
            return;
        };
        self.ops.push(Op::Dequeue {
            queue: self.shared.id,
            msg: p.id,
        });
        if p.release() {
            let size = match b {
                Body::Mem(m) => m.weight(),
                Body::Disk(_) => 0,
            };
            self.ops.push(Op::DeleteMessage { id: p.id, size });
        }
    }

    /// Undo `release` for a no-ack delivery that never reached its consumer.
    fn reacquire(&mut self, b: &Body) {
        let (true, Some(p)) = (self.shared.store.is_some(), b.persisted()) else {
            return;
        };
        if p.acquire()
            && let Body::Mem(m) = b
        {
            // Its row was deleted after the last release: write it again, in order.
            self.ops.push(Op::PutMessage {
                id: p.id,
                msg: m.to_stored(),
            });
        }
        self.ops.push(Op::Enqueue {
            queue: self.shared.id,
            msg: p.id,
            size: p.size,
        });
    }

    async fn round_end(&mut self) {
        self.refresh_credit();
        if self
            .state
            .next_deadline_ms()
            .is_some_and(|at| at <= clock::now_ms())
        {
            self.apply(Command::Tick);
        }
        self.send_deliveries().await;
        self.update_busy();
        let w = self.state.weight();
        if w > self.reported {
            self.memory.add(w - self.reported);
        } else {
            self.memory.sub(self.reported - w);
        }
        self.reported = w;
        self.flush_ops();
        if self.again {
            // A grant crossed our starved mark: go round again rather than wait for a wake.
            self.shared.wake();
        }
    }

    /// Send the round's deliveries, bodies read back first where they were paged out. What
    /// cannot be sent (consumer or connection gone) goes back to the queue, which may hand it
    /// to someone else: hence the loop.
    async fn send_deliveries(&mut self) {
        while !self.outbox.is_empty() && !self.broken {
            for (id, no_ack, msgs) in std::mem::take(&mut self.outbox) {
                let Some(entries) = self.load(msgs).await else {
                    return;
                };
                let ev = ConnEvent::Deliver {
                    consumer: id.clone(),
                    no_ack,
                    queue: self.shared.clone(),
                    entries,
                };
                let ev = match self.links.get(&id) {
                    Some(l) => match l.events.send(ev) {
                        Ok(()) => continue,
                        Err(mpsc::error::SendError(ev)) => ev,
                    },
                    None => ev,
                };
                // Never delivered: the consumer went in this round, or its connection did.
                if self.links.remove(&id).is_some() {
                    self.apply(Command::Cancel(id.clone()));
                }
                if let ConnEvent::Deliver { entries, .. } = ev {
                    self.give_back_deliveries(id, entries, no_ack);
                }
            }
        }
    }

    fn give_back_deliveries(&mut self, consumer: ConsumerId, entries: Vec<Entry>, no_ack: bool) {
        self.apply(if no_ack {
            Command::Reinstate(entries.into_iter().map(delivery).collect())
        } else {
            Command::Return {
                consumer,
                seqs: entries.iter().map(|e| e.seq).collect(),
            }
        });
    }

    /// Deliveries as connections get them, with paged-out bodies read back (off the async
    /// workers). A body whose row is missing (its publish never completed, so it was never
    /// confirmed) is dropped; None if the store cannot be read, and the queue stops.
    async fn load(&mut self, msgs: Vec<Delivery<Body>>) -> Option<Vec<Entry>> {
        let ids: Vec<u64> = msgs
            .iter()
            .filter_map(|d| match &d.body {
                Body::Disk(p) => Some(p.id),
                Body::Mem(_) => None,
            })
            .collect();
        let mut rows = Vec::new().into_iter();
        if !ids.is_empty() {
            let store = self.shared.store.clone()?;
            let read = tokio::task::spawn_blocking(move || store.read_messages(&ids)).await;
            let Ok(Ok(got)) = read else {
                tracing::error!(queue = %self.shared.name, "cannot read messages back from the store; queue stopped");
                self.broken = true;
                return None;
            };
            rows = got.into_iter();
        }
        let mut out = Vec::with_capacity(msgs.len());
        let mut missing = Vec::new();
        for d in msgs {
            let msg = match d.body {
                Body::Mem(m) => m,
                Body::Disk(p) => match rows.next().flatten() {
                    Some(row) => Arc::new(Message::from_stored(row, Some(p))),
                    None => {
                        tracing::warn!(queue = %self.shared.name, id = p.id, "stored message missing; dropped");
                        missing.push(d.seq);
                        continue;
                    }
                },
            };
            out.push(Entry {
                seq: d.seq,
                msg,
                redelivered: d.redelivered,
                expires_ms: d.expires_ms,
            });
        }
        if !missing.is_empty() {
            // Settled as if acked (a no-ack one is released already, and Ack ignores it).
            self.apply(Command::Ack(missing));
        }
        Some(out)
    }

    /// Flow control on (past the threshold) while a consumer's connection is behind on
    /// deliveries; off again under half, or once no consumer is behind (consumers held back
    /// by prefetch or acks never count: the backlog is then theirs to absorb).
    fn update_busy(&self) {
        let len = self.state.ready_len();
        let busy = if self.shared.is_busy() {
            len > self.flow_messages / 2
        } else {
            len > self.flow_messages
        } && self.state.any_starved();
        self.shared.set_busy(busy);
    }

    fn flush_ops(&mut self) {
        if let Some(store) = &self.shared.store
            && !self.ops.is_empty()
        {
            store.submit(std::mem::take(&mut self.ops), false, None);
        }
    }
}

fn delivery(e: Entry) -> Delivery<Body> {
    Delivery {
        seq: e.seq,
        body: Body::Mem(e.msg),
        redelivered: e.redelivered,
        expires_ms: e.expires_ms,
        returns: 0,
    }
}
