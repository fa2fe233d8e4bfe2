//! Applying a quorum queue's committed entries: the same on every replica (dedup, the
//! publish order per replica run, the `QueueState` transition), then this node's share of
//! the effects (deliveries to its consumers) and the answers to its own proposals.

use std::sync::Arc;
use std::time::Duration;

use super::entry::At;
use super::loader::To;
use super::{QBody, QEntry, QOp, Replica, Waiter};
use crate::broker::ids::{ChannelId, ConsumerId, NodeId};
use crate::broker::queue::state::{Checkout, Command, Credit, Delivery, Effect, Meta, Reply};
use crate::broker::queue::{ConnEvent, Entry, Stat};
use crate::error::{Error, code};
use crate::protocol::properties;

impl Replica {
    /// Apply a committed entry: the same on every replica; then this node's share of the
    /// effects, and the answer if it proposed it.
    pub(super) fn apply(&mut self, index: u64, data: &[u8]) {
        self.applied = index;
        self.snapshots.applied(data.len());
        if self.done || data.is_empty() {
            return;
        }
        let e = match QEntry::decode(data) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(queue = %self.shared.name, index, "undecodable queue entry skipped: {e}");
                return;
            }
        };
        if e.origin == self.me
            && let Some(p) = self.pending.get(&e.req)
        {
            // Applied, or skipped as out of order: either way it got through.
            self.newest_applied = self.newest_applied.max(Some(p.proposed));
        }
        if let QOp::Enqueue { run, seq, .. } | QOp::Commit { run, seq, .. } = &e.op {
            // In order per (origin, run): a duplicate or a publish after a gap is skipped
            // (the gap's own is proposed again, then this one).
            let last = self.enqueues.entry((e.origin, *run)).or_insert(0);
            if *seq != *last + 1 {
                return;
            }
            *last = *seq;
        } else if e.req != 0 && !self.applied_reqs.first_time((e.origin, e.req)) {
            return;
        }
        let waiter = match e.origin == self.me {
            true => self.take_pending(e.req).map(|p| p.waiter),
            false => None,
        };
        if waiter.is_some() {
            self.progress = tokio::time::Instant::now();
        }
        let meta = Meta { now_ms: e.at_ms };
        let mut fx = Vec::new();
        let reply = match e.op {
            QOp::NodeDown(node) => {
                let mut chs = self.state.channels_of(node);
                chs.extend(
                    self.relays
                        .iter()
                        .filter(|(_, v)| **v == node)
                        .map(|(c, _)| *c),
                );
                chs.sort_unstable();
                chs.dedup();
                for ch in chs {
                    self.relays.remove(&ch);
                    self.state.apply(meta, Command::ChannelDown(ch), &mut fx);
                }
                Reply::None
            }
            QOp::Commit { msgs, settles, .. } => {
                let reply =
                    (self.state).apply(meta, Command::Enqueue(bodies(msgs, index)), &mut fx);
                for (how, seqs) in settles {
                    self.state.apply(meta, Command::settle(how, seqs), &mut fx);
                }
                reply
            }
            op if !self.route(&op, e.origin, meta, &mut fx) => Reply::None,
            // Moved by `route`: nothing else to do.
            QOp::Move(_) => Reply::None,
            op => {
                match &op {
                    QOp::Cancel(c) => _ = self.consumers.remove(c),
                    QOp::Tick if e.origin == self.me => self.ticked = None,
                    _ => {}
                }
                self.state.apply(meta, command(op, index), &mut fx)
            }
        };
        // Effects first: a deleted queue is forgotten before its delete-ok goes.
        for f in fx {
            self.carry(f);
        }
        if let Some(w) = waiter {
            self.answer(w, reply);
        }
    }

    /// The member a channel's commands come through: its connection's node, unless it is
    /// a non-member's channel relayed by a member.
    pub(super) fn via(&self, ch: &ChannelId) -> NodeId {
        self.relays.get(ch).copied().unwrap_or(ch.conn.node)
    }

    /// A channel is used through one member at a time (the same on every replica, from the
    /// log alone). A consume, get or move through another member moves it there: what it had
    /// through the old one ends first, as if that channel had closed (its deliveries come
    /// back, redelivered; its consumers are registered again by the new one). A command
    /// for the channel through a member it has left is late, and skipped (false).
    fn route(&mut self, op: &QOp, origin: NodeId, meta: Meta, fx: &mut Vec<Effect<QBody>>) -> bool {
        let ch = match op {
            QOp::Checkout { consumer, .. } => consumer.channel,
            QOp::Get { channel, .. } | QOp::Move(channel) => *channel,
            QOp::Cancel(c) | QOp::Return { consumer: c, .. } | QOp::Credit { consumer: c, .. } => {
                c.channel
            }
            QOp::ChannelDown(ch) => {
                if self.via(ch) != origin {
                    return false;
                }
                self.relays.remove(ch);
                return true;
            }
            _ => return true,
        };
        if self.via(&ch) == origin {
            return true;
        }
        if !matches!(op, QOp::Checkout { .. } | QOp::Get { .. } | QOp::Move(_)) {
            return false;
        }
        self.state.apply(meta, Command::ChannelDown(ch), fx);
        if origin == ch.conn.node {
            self.relays.remove(&ch);
        } else {
            self.relays.insert(ch, origin);
        }
        // This replica's registrations for the channel were for the old route. Each is told
        // it is gone: a consumer moved to another member with its channel is registered
        // there already (its node ignores a cancel from the member it left), and one the new
        // route does not carry (a node that became a member serves the channel's new
        // consumers itself) must not wait for deliveries that never come.
        if origin != self.me {
            let gone: Vec<ConsumerId> = (self.consumers.keys())
                .filter(|id| id.channel == ch)
                .cloned()
                .collect();
            for id in gone {
                if let Some(l) = self.consumers.remove(&id) {
                    let _ = l.events.send(ConnEvent::Cancelled(id));
                }
            }
        }
        true
    }

    fn answer(&mut self, waiter: Waiter, reply: Reply<QBody>) {
        match (waiter, reply) {
            (Waiter::Publish(Some(r)), Reply::Enqueued { refused }) => r.answer(&refused),
            (Waiter::Consume(id, tx), Reply::CheckedOut(result)) => {
                if result.is_err() {
                    self.consumers.remove(&id);
                }
                let _ = tx.send(result);
            }
            (Waiter::Cancel(tx), _) => {
                let _ = tx.send(());
            }
            (Waiter::Get(reply), Reply::Got(Some((d, left)))) => {
                self.loader.deliver(vec![d], To::Get { reply, left });
            }
            (Waiter::Get(tx), Reply::Got(None)) => {
                let _ = tx.send(None);
            }
            (Waiter::Purge(tx), Reply::Purged(n)) => {
                let _ = tx.send(n);
            }
            (Waiter::Delete(tx), Reply::Deleted(r)) => {
                let _ = tx.send(r);
            }
            // A consume refused drops its local registration with its waiter.
            _ => {}
        }
    }

    fn carry(&mut self, f: Effect<QBody>) {
        match f {
            Effect::Deliver {
                consumer,
                no_ack,
                msgs,
            } => {
                if self.via(&consumer.channel) != self.me {
                    return;
                }
                if let Some(c) = self.consumers.get(&consumer) {
                    if !no_ack {
                        c.channel_limit.force(msgs.len() as u32);
                    }
                    let to = To::Consumer {
                        events: c.events.clone(),
                        consumer,
                        no_ack,
                        queue: self.shared.clone(),
                    };
                    self.loader.deliver(msgs, to);
                }
            }
            Effect::Cancelled(c) => {
                if let Some(l) = self.consumers.remove(&c) {
                    let _ = l.events.send(ConnEvent::Cancelled(c));
                }
            }
            Effect::Deleted => {
                self.done = true;
                (self.on_deleted)(&self.shared);
            }
            Effect::Starved(c) => self.starved(&c),
            // No store rows: the log is the store.
            Effect::MarkDelivered(_) | Effect::Release(_) | Effect::Reacquire(_) => {}
        }
    }

    pub(super) fn answer_reads(&mut self) {
        let applied = self.applied;
        let oldest = self.pending.keys().next().copied().unwrap_or(u64::MAX);
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads)
            .into_iter()
            .partition(|(index, after, _)| *index <= applied && oldest > *after);
        self.reads = waiting;
        for (_, _, tx) in ready {
            let _ = tx.send(Stat {
                messages: self.state.ready_len() as u32,
                consumers: self.state.consumer_count() as u32,
            });
        }
    }
}

/// A log operation (the entry at `index`) as the state's command (`NodeDown` and `Move`
/// are handled before).
fn command(op: QOp, index: u64) -> Command<QBody> {
    match op {
        // A commit's settlements are applied by `Replica::apply`, after its publishes.
        QOp::Enqueue { msgs, .. } | QOp::Commit { msgs, .. } => {
            Command::Enqueue(bodies(msgs, index))
        }
        QOp::Checkout {
            consumer,
            no_ack,
            prefetch,
        } => Command::Checkout(Checkout {
            consumer,
            no_ack,
            // RabbitMQ does not enforce an exclusive consume on a quorum queue.
            exclusive: false,
            prefetch,
            // The prefetch bounds what an ack-mode consumer has in flight; a no-ack one's
            // credit is logged (`credit`), starting from its checkout's.
            limit: if no_ack {
                u64::from(prefetch)
            } else {
                u64::MAX
            },
            pooled: false,
        }),
        QOp::Credit { consumer, limit } => Command::Credit(Credit {
            consumers: vec![(consumer, limit)],
            pools: Vec::new(),
        }),
        QOp::Cancel(c) => Command::Cancel(c),
        QOp::Get { channel, no_ack } => Command::Get { channel, no_ack },
        QOp::Ack(s) => Command::Ack(s),
        QOp::Requeue(s) => Command::Requeue(s),
        QOp::Discard(s) => Command::Discard(s),
        QOp::Return { consumer, seqs } => Command::Return { consumer, seqs },
        QOp::ChannelDown(ch) => Command::ChannelDown(ch),
        QOp::Purge => Command::Purge,
        QOp::Delete => Command::Delete {
            if_unused: false,
            if_empty: false,
        },
        QOp::Tick | QOp::NodeDown(_) | QOp::Move(_) => Command::Tick,
    }
}

/// The messages of the entry at `index`, each with its place in it.
fn bodies(msgs: Vec<crate::broker::remote::wire::WireMsg>, index: u64) -> Vec<QBody> {
    (msgs.into_iter().enumerate())
        .map(|(pos, m)| {
            QBody::new(
                At {
                    index,
                    pos: pos as u32,
                },
                m.into_message(),
            )
        })
        .collect()
}

/// A delivery as a connection takes it (None: its body is not in memory). As RabbitMQ's
/// quorum queues do, it carries `x-delivery-count` (the times it came back) once it has
/// come back, and always for a basic.get.
pub(super) fn entry(d: Delivery<QBody>, get: bool) -> Option<Entry> {
    let mut msg = d.body.msg?;
    if d.returns > 0 || get {
        let count = crate::protocol::AMQPValue::LongLongInt(i64::from(d.returns));
        if let Some(p) = properties::with_header(&msg.properties, "x-delivery-count", count) {
            let mut m = (*msg).clone();
            m.properties = bytes::Bytes::from(p);
            msg = Arc::new(m);
        }
    }
    Some(Entry {
        seq: d.seq,
        msg,
        redelivered: d.redelivered,
        expires_ms: d.expires_ms,
    })
}

/// A proposal that was not applied in time: its waiter hears of the failure.
pub(super) fn fail(waiter: Waiter, timeout: Duration) {
    let why = || {
        Error::channel(
            code::INTERNAL_ERROR,
            format!(
                "quorum queue change failed: not committed within {} ms (no majority of \
                 its members reachable)",
                timeout.as_millis()
            ),
        )
    };
    match waiter {
        // Dropped unanswered: every publish of it is nacked.
        Waiter::Publish(_) | Waiter::Nothing | Waiter::Cancel(_) | Waiter::Purge(_) => {}
        Waiter::Get(_) => {}
        Waiter::Consume(_, tx) => {
            let _ = tx.send(Err(why()));
        }
        Waiter::Delete(tx) => {
            let _ = tx.send(Err(why()));
        }
    }
}
