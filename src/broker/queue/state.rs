//! `QueueState`: everything a queue decides, as a pure state machine. `apply(meta, cmd)`
//! changes the state and returns a reply to the command; what must happen outside (deliveries,
//! store rows, released messages, the queue's own deletion) is pushed onto `fx` as data. No
//! clock (time is `meta.now_ms`), no tokio, no store, no shared atomics: the same commands in
//! the same order give the same state and effects on every node, which is what a replicated
//! queue applies from its log.
//!
//! Invariants:
//! - `ready` is sorted by `seq`, so a requeued message goes back to where it was;
//! - every message is in exactly one of `ready` and `unacked`, and `weight` is the sum of
//!   what they were counted at;
//! - a consumer is sent at most `limit - sent` more deliveries (credit its channel grants),
//!   holds at most `prefetch` unacked ones, and a pooled consumer also spends its channel's
//!   pool (the channel's count, bounded by basic.qos global): credit is changed only by
//!   commands.

use std::collections::{HashMap, VecDeque};

use super::super::args::Overflow;
use crate::broker::ids::{ChannelId, ConsumerId};
use crate::error::Error;

mod check;
mod command;
mod dispatch;
mod image;

pub use command::*;
pub use image::Image;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Msg<B> {
    seq: u64,
    body: B,
    redelivered: bool,
    expires_ms: Option<u64>,
    /// What it was counted at in `weight`.
    weight: u32,
    /// Times it came back from a consumer (requeued, or its channel went).
    returns: u32,
}

impl<B: Clone> Msg<B> {
    fn delivery(&self) -> Delivery<B> {
        Delivery {
            seq: self.seq,
            body: self.body.clone(),
            redelivered: self.redelivered,
            expires_ms: self.expires_ms,
            returns: self.returns,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Held<B> {
    msg: Msg<B>,
    channel: ChannelId,
    /// None for basic.get deliveries.
    consumer: Option<ConsumerId>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Consumer {
    id: ConsumerId,
    no_ack: bool,
    exclusive: bool,
    prefetch: u32,
    pooled: bool,
    unacked: u32,
    sent: u64,
    limit: u64,
    /// Its last dispatch stopped for want of credit.
    starved: bool,
}

#[derive(Debug)]
pub struct QueueState<B> {
    cfg: Config,
    ready: VecDeque<Msg<B>>,
    unacked: HashMap<u64, Held<B>>,
    consumers: Vec<Consumer>,
    pools: HashMap<ChannelId, u32>,
    /// The consumer that gets the next message.
    rr: usize,
    next_seq: u64,
    ever_consumed: bool,
    weight: usize,
    /// Body bytes of the ready messages.
    ready_bytes: u64,
    /// Last consume, cancel, get or declare: x-expires counts from here while unused.
    last_used_ms: u64,
    deleted: bool,
    /// Reused by dispatch for its per-consumer batches (no state: empty between calls).
    scratch: Vec<Vec<Delivery<B>>>,
}

impl<B: Payload> QueueState<B> {
    pub fn new(cfg: Config, meta: Meta) -> Self {
        QueueState {
            cfg,
            ready: VecDeque::new(),
            unacked: HashMap::new(),
            consumers: Vec::new(),
            pools: HashMap::new(),
            rr: 0,
            next_seq: 0,
            ever_consumed: false,
            weight: 0,
            ready_bytes: 0,
            last_used_ms: meta.now_ms,
            deleted: false,
            scratch: Vec::new(),
        }
    }

    /// A queue rebuilt from the store: its messages in order, each with whether it had been
    /// delivered (those come back redelivered). Their TTLs count from now.
    pub fn recovered(cfg: Config, meta: Meta, msgs: Vec<(B, bool)>) -> Self {
        let mut q = Self::new(cfg, meta);
        let expires_ms = q
            .cfg
            .args
            .message_ttl
            .map(|t| meta.now_ms.saturating_add(t));
        for (body, redelivered) in msgs {
            q.push(body, redelivered, expires_ms);
        }
        q
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Weight of the messages held (ready and unacked).
    pub fn weight(&self) -> usize {
        self.weight
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted
    }

    /// Some consumer's last dispatch stopped on its credit (its connection is behind).
    pub fn any_starved(&self) -> bool {
        self.consumers.iter().any(|c| c.starved)
    }

    /// The channels of `node`'s connections that consume or hold messages here, in order.
    pub fn channels_of(&self, node: crate::broker::ids::NodeId) -> Vec<ChannelId> {
        let consuming = self.consumers.iter().map(|c| c.id.channel);
        let holding = self.unacked.values().map(|h| h.channel);
        let mut chs: Vec<ChannelId> = consuming
            .chain(holding)
            .filter(|ch| ch.conn.node == node)
            .collect();
        chs.sort_unstable();
        chs.dedup();
        chs
    }

    /// What is left of a channel's pool.
    pub fn pool(&self, channel: &ChannelId) -> u32 {
        self.pools.get(channel).copied().unwrap_or(0)
    }

    /// What each channel's pooled consumers here could take now, by channel (ascending):
    /// what `Credit` should offer from their pools.
    pub fn pool_demands(&self) -> Vec<(ChannelId, u32)> {
        let mut rooms: Vec<(ChannelId, u64)> = self
            .consumers
            .iter()
            .filter(|c| c.pooled)
            .map(|c| {
                let credit = c.limit.saturating_sub(c.sent);
                let prefetch = if c.prefetch == 0 {
                    u64::MAX
                } else {
                    u64::from(c.prefetch.saturating_sub(c.unacked))
                };
                (c.id.channel, credit.min(prefetch))
            })
            .collect();
        rooms.sort_unstable_by_key(|(ch, _)| *ch);
        let ready = self.ready.len() as u64;
        let mut out: Vec<(ChannelId, u32)> = Vec::with_capacity(rooms.len());
        for (ch, room) in rooms {
            match out.last_mut() {
                Some((last, sum)) if *last == ch => {
                    *sum = (u64::from(*sum).saturating_add(room)).min(ready) as u32;
                }
                _ => out.push((ch, room.min(ready) as u32)),
            }
        }
        out
    }

    /// When the queue must be ticked: the head's deadline, or x-expires running out.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let head = self.ready.front().and_then(|m| m.expires_ms);
        let unused = self
            .cfg
            .args
            .expires
            .filter(|_| self.consumers.is_empty())
            .map(|t| self.last_used_ms.saturating_add(t));
        match (head, unused) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Apply one command: the reply to it, with effects pushed onto `fx` in the order they
    /// must be carried out.
    pub fn apply(&mut self, meta: Meta, cmd: Command<B>, fx: &mut Vec<Effect<B>>) -> Reply<B> {
        if self.deleted {
            return match cmd {
                Command::Enqueue(msgs) => Reply::Enqueued {
                    refused: (0..msgs.len() as u32).collect(),
                },
                _ => Reply::None,
            };
        }
        if self.cfg.args.expires.is_some() && touches(&cmd) {
            self.last_used_ms = meta.now_ms;
        }
        let reply = self.command(meta, cmd, fx);
        if !self.deleted {
            self.dispatch(fx);
            self.drop_head(fx);
        }
        reply
    }

    fn command(&mut self, meta: Meta, cmd: Command<B>, fx: &mut Vec<Effect<B>>) -> Reply<B> {
        match cmd {
            Command::Enqueue(msgs) => self.enqueue(meta, msgs, fx),
            Command::Checkout(c) => Reply::CheckedOut(self.checkout(c)),
            Command::Cancel(id) => {
                self.consumers.retain(|c| c.id != id);
                self.maybe_auto_delete(fx);
                Reply::None
            }
            Command::Get { channel, no_ack } => self.get(meta, channel, no_ack, fx),
            Command::Ack(seqs) | Command::Discard(seqs) => {
                for seq in seqs {
                    if let Some(m) = self.settle(seq) {
                        self.release(m, fx);
                    }
                }
                Reply::None
            }
            Command::Requeue(seqs) => {
                for seq in seqs {
                    if let Some(m) = self.settle(seq) {
                        self.returned(m, true, fx);
                    }
                }
                Reply::None
            }
            Command::Return { consumer, seqs } => {
                for seq in seqs {
                    let held = self.unacked.get(&seq).and_then(|h| h.consumer.as_ref());
                    if held == Some(&consumer)
                        && let Some(m) = self.settle(seq)
                    {
                        self.insert_ready(m);
                    }
                }
                Reply::None
            }
            Command::Reinstate(ds) => {
                for d in ds {
                    self.reinstate(d, fx);
                }
                Reply::None
            }
            Command::Credit(c) => {
                self.credit(c);
                Reply::None
            }
            Command::ChannelDown(ch) => {
                self.channel_down(ch, fx);
                Reply::None
            }
            Command::Stat => {
                self.expire_head(meta, fx);
                Reply::Stat {
                    messages: self.ready.len() as u32,
                    consumers: self.consumers.len() as u32,
                }
            }
            Command::Purge => Reply::Purged(self.drain_ready(fx)),
            Command::Delete {
                if_unused,
                if_empty,
            } => Reply::Deleted(self.delete_checked(if_unused, if_empty, fx)),
            Command::Tick => {
                self.expire_head(meta, fx);
                if self.unused_for_too_long(meta) {
                    self.delete(fx);
                }
                Reply::None
            }
        }
    }

    fn enqueue(&mut self, meta: Meta, msgs: Vec<B>, fx: &mut Vec<Effect<B>>) -> Reply<B> {
        let mut refused = Vec::new();
        let limits = self.cfg.args.limits;
        for (i, mut body) in msgs.into_iter().enumerate() {
            let size = u64::from(body.size());
            if limits.overflow == Overflow::RejectPublish
                && limits.exceeded(self.ready.len() + 1, self.ready_bytes + size)
            {
                refused.push(i as u32);
                if self.stores(&body) {
                    fx.push(Effect::Release(body));
                }
                continue;
            }
            let expires_ms = self.deadline(meta, &body);
            if self.weight > self.cfg.memory_budget && self.cfg.durable && body.stored() {
                body.page_out();
            }
            self.push(body, false, expires_ms);
        }
        Reply::Enqueued { refused }
    }

    /// The deadline of a message enqueued now: the shorter of the queue's and its own TTL.
    fn deadline(&self, meta: Meta, body: &B) -> Option<u64> {
        let ttl = match (self.cfg.args.message_ttl, body.ttl_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ttl.map(|t| meta.now_ms.saturating_add(t))
    }

    fn push(&mut self, body: B, redelivered: bool, expires_ms: Option<u64>) {
        let weight = body.weight() as u32;
        self.weight += weight as usize;
        self.ready_bytes += u64::from(body.size());
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready.push_back(Msg {
            seq,
            body,
            redelivered,
            expires_ms,
            weight,
            returns: 0,
        });
    }

    fn checkout(&mut self, c: Checkout) -> Result<(), Error> {
        if self.consumers.iter().any(|k| k.id == c.consumer) {
            return Err(Error::connection(
                crate::error::code::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{}'", c.consumer.tag),
            ));
        }
        let locked = self.consumers.iter().any(|c| c.exclusive)
            || (c.exclusive && !self.consumers.is_empty());
        if locked {
            return Err(Error::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.cfg.name, self.cfg.vhost
            )));
        }
        self.ever_consumed = true;
        self.consumers.push(Consumer {
            id: c.consumer,
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch: c.prefetch,
            pooled: c.pooled && !c.no_ack,
            unacked: 0,
            sent: 0,
            limit: c.limit,
            starved: false,
        });
        Ok(())
    }

    fn get(
        &mut self,
        meta: Meta,
        channel: ChannelId,
        no_ack: bool,
        fx: &mut Vec<Effect<B>>,
    ) -> Reply<B> {
        self.expire_head(meta, fx);
        let Some(m) = self.pop_ready() else {
            return Reply::Got(None);
        };
        let d = m.delivery();
        if no_ack {
            self.release(m, fx);
        } else {
            self.hold(m, channel, None, fx);
        }
        Reply::Got(Some((d, self.ready.len() as u32)))
    }

    fn credit(&mut self, c: Credit) {
        for (id, limit) in c.consumers {
            if let Some(k) = self.consumers.iter_mut().find(|k| k.id == id) {
                k.limit = limit;
                k.starved = false;
            }
        }
        for (ch, n) in c.pools {
            self.pools.insert(ch, n);
        }
    }

    fn channel_down(&mut self, ch: ChannelId, fx: &mut Vec<Effect<B>>) {
        self.consumers.retain(|c| c.id.channel != ch);
        self.pools.remove(&ch);
        let mut held: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, h)| h.channel == ch)
            .map(|(s, _)| *s)
            .collect();
        held.sort_unstable();
        for seq in held {
            if let Some(m) = self.settle(seq) {
                self.returned(m, false, fx);
            }
        }
        self.maybe_auto_delete(fx);
    }

    fn reinstate(&mut self, d: Delivery<B>, fx: &mut Vec<Effect<B>>) {
        let weight = d.body.weight() as u32;
        self.weight += weight as usize;
        if self.stores(&d.body) {
            fx.push(Effect::Reacquire(d.body.clone()));
        }
        self.insert_ready(Msg {
            seq: d.seq,
            body: d.body,
            redelivered: d.redelivered,
            expires_ms: d.expires_ms,
            weight,
            returns: d.returns,
        });
    }

    /// Remove a delivery from the unacked set, giving its consumer back a prefetch slot.
    fn settle(&mut self, seq: u64) -> Option<Msg<B>> {
        let held = self.unacked.remove(&seq)?;
        if let Some(id) = &held.consumer
            && let Some(c) = self.consumers.iter_mut().find(|c| c.id == *id)
        {
            c.unacked = c.unacked.saturating_sub(1);
        }
        Some(held.msg)
    }

    /// The queue no longer holds the message.
    fn release(&mut self, m: Msg<B>, fx: &mut Vec<Effect<B>>) {
        self.weight = self.weight.saturating_sub(m.weight as usize);
        if self.stores(&m.body) {
            fx.push(Effect::Release(m.body));
        }
    }

    /// The message has rows in this queue's store: what happens to it is the store's
    /// business too (store effects are emitted for these only).
    fn stores(&self, body: &B) -> bool {
        self.cfg.durable && body.stored()
    }

    /// A delivery that needs an ack: unacked until settled, and marked delivered in the store
    /// the first time.
    fn hold(
        &mut self,
        m: Msg<B>,
        channel: ChannelId,
        consumer: Option<ConsumerId>,
        fx: &mut Vec<Effect<B>>,
    ) {
        self.mark_delivered(&m, fx);
        self.unacked.insert(
            m.seq,
            Held {
                msg: m,
                channel,
                consumer,
            },
        );
    }

    fn mark_delivered(&self, m: &Msg<B>, fx: &mut Vec<Effect<B>>) {
        if !m.redelivered && self.stores(&m.body) {
            fx.push(Effect::MarkDelivered(m.body.clone()));
        }
    }

    /// A delivery back from its consumer: requeued by it (`explicit`: nack, reject, recover)
    /// or because its channel went. Counted; dropped once past the delivery limit; else ready
    /// again where it was, or at the tail for an explicit requeue on a queue that does that
    /// (a quorum queue without a delivery limit, as RabbitMQ's).
    fn returned(&mut self, mut m: Msg<B>, explicit: bool, fx: &mut Vec<Effect<B>>) {
        m.redelivered = true;
        m.returns = m.returns.saturating_add(1);
        if let Some(limit) = self.cfg.delivery_limit {
            if m.returns > limit {
                self.release(m, fx);
                return;
            }
        } else if explicit && self.cfg.requeue_to_tail {
            m.seq = self.next_seq;
            self.next_seq += 1;
            self.page_if_over(&mut m);
            self.ready_bytes += u64::from(m.body.size());
            self.ready.push_back(m);
            return;
        }
        self.insert_ready(m);
    }

    /// A stored message of a durable queue past its budget is held paged out, whether it
    /// is new or back from a consumer: returned no-ack deliveries come back with their
    /// bodies read in, and holding those could keep the memory alarm on with nothing to
    /// drain it.
    fn page_if_over(&mut self, m: &mut Msg<B>) {
        if self.weight > self.cfg.memory_budget && self.cfg.durable && m.body.stored() {
            m.body.page_out();
            let weight = m.body.weight() as u32;
            self.weight = self.weight - m.weight as usize + weight as usize;
            m.weight = weight;
        }
    }

    fn insert_ready(&mut self, mut m: Msg<B>) {
        self.page_if_over(&mut m);
        self.ready_bytes += u64::from(m.body.size());
        let at = self.ready.partition_point(|r| r.seq < m.seq);
        self.ready.insert(at, m);
    }

    fn pop_ready(&mut self) -> Option<Msg<B>> {
        let m = self.ready.pop_front()?;
        self.ready_bytes -= u64::from(m.body.size());
        Some(m)
    }

    /// Drop the expired messages at the head (RabbitMQ expires from the head only).
    fn expire_head(&mut self, meta: Meta, fx: &mut Vec<Effect<B>>) {
        while self
            .ready
            .front()
            .and_then(|m| m.expires_ms)
            .is_some_and(|at| at <= meta.now_ms)
        {
            if let Some(m) = self.pop_ready() {
                self.release(m, fx);
            }
        }
    }

    /// Overflow drop-head: drop the oldest ready messages while over the limits.
    fn drop_head(&mut self, fx: &mut Vec<Effect<B>>) {
        let limits = self.cfg.args.limits;
        if limits.overflow != Overflow::DropHead {
            return;
        }
        while limits.exceeded(self.ready.len(), self.ready_bytes) {
            let Some(m) = self.pop_ready() else {
                break;
            };
            self.release(m, fx);
        }
    }

    fn drain_ready(&mut self, fx: &mut Vec<Effect<B>>) -> u32 {
        let n = self.ready.len() as u32;
        while let Some(m) = self.pop_ready() {
            self.release(m, fx);
        }
        n
    }

    fn unused_for_too_long(&self, meta: Meta) -> bool {
        self.cfg.args.expires.is_some_and(|t| {
            self.consumers.is_empty() && meta.now_ms >= self.last_used_ms.saturating_add(t)
        })
    }

    /// Auto-delete queues go once their last consumer has gone (never if none ever came).
    fn maybe_auto_delete(&mut self, fx: &mut Vec<Effect<B>>) {
        if self.cfg.auto_delete && self.ever_consumed && self.consumers.is_empty() {
            self.delete(fx);
        }
    }

    fn delete_checked(
        &mut self,
        if_unused: bool,
        if_empty: bool,
        fx: &mut Vec<Effect<B>>,
    ) -> Result<u32, Error> {
        let (name, vhost) = (&self.cfg.name, &self.cfg.vhost);
        if if_unused && !self.consumers.is_empty() {
            return Err(Error::precondition(format!(
                "queue '{name}' in vhost '{vhost}' in use"
            )));
        }
        if if_empty && !self.ready.is_empty() {
            return Err(Error::precondition(format!(
                "queue '{name}' in vhost '{vhost}' is not empty"
            )));
        }
        let n = self.ready.len() as u32;
        self.delete(fx);
        Ok(n)
    }

    fn delete(&mut self, fx: &mut Vec<Effect<B>>) {
        self.drain_ready(fx);
        let mut held: Vec<Held<B>> = self.unacked.drain().map(|(_, h)| h).collect();
        held.sort_unstable_by_key(|h| h.msg.seq);
        for h in held {
            self.release(h.msg, fx);
        }
        for c in self.consumers.drain(..) {
            fx.push(Effect::Cancelled(c.id));
        }
        self.pools.clear();
        self.deleted = true;
        fx.push(Effect::Deleted);
    }
}

#[cfg(test)]
mod model;
#[cfg(test)]
mod returns_tests;
#[cfg(test)]
mod tests;
