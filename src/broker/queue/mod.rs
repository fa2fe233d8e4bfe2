//! A queue is one task that owns its ready messages, its unacked set and its consumers; other
//! tasks talk to it through a bounded inbox (publishers wait when it is full: that is the
//! back-pressure that slows a publisher faster than its queue). The task itself never waits on
//! anyone but its inbox: deliveries go out with `send` on unbounded connection inboxes whose
//! content is bounded by consumer credit, so one slow consumer cannot stall a queue.
//!
//! Invariant: `ready` is sorted by `seq`, so a requeued message goes back to where it was.
//!
//! Paging: once a durable queue holds more than its memory budget, newly enqueued persistent
//! messages (already in the store) keep only their id in memory (`Slot::Disk`); they are read
//! back in batches when they reach the head. A backlog far larger than memory costs a few
//! dozen bytes per message.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use self::ttl::sleep_until;
use super::args::{Limits, Overflow, QueueArgs};
use super::consumer::{ConnEvent, ConsumerSpec};
use super::memory::MemoryMonitor;
use super::message::{Message, Persisted};
use super::receipt::Receipt;
use super::vhost::VHost;
use crate::error::Error;
use crate::protocol::FieldTable;
use crate::store::{Op, Store};

mod ttl;

pub type ConnId = u64;

/// A channel of a connection: the owner of consumers and unacked deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    pub conn: ConnId,
    pub channel: u16,
}

/// A message in a queue, with the position it was enqueued at.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub msg: Arc<Message>,
    pub redelivered: bool,
    /// When its TTL runs out (x-message-ttl or the expiration property), if it has one.
    pub expires: Option<Instant>,
}

/// Messages recovered for a queue, in order, each with whether it had been delivered. Their
/// bodies stay on disk until they are needed.
pub type Recovered = Vec<(Arc<Persisted>, bool)>;

/// A ready message: in memory, or only its id (its body is in the store).
#[derive(Debug)]
enum Slot {
    Mem(Entry),
    Disk {
        seq: u64,
        stored: Arc<Persisted>,
        redelivered: bool,
        expires: Option<Instant>,
    },
}

impl Slot {
    fn seq(&self) -> u64 {
        match self {
            Slot::Mem(e) => e.seq,
            Slot::Disk { seq, .. } => *seq,
        }
    }

    fn expires(&self) -> Option<Instant> {
        match self {
            Slot::Mem(e) => e.expires,
            Slot::Disk { expires, .. } => *expires,
        }
    }

    /// Body bytes, for the queue's byte limit.
    fn body_len(&self) -> u64 {
        match self {
            Slot::Mem(e) => e.msg.body.len() as u64,
            Slot::Disk { stored, .. } => u64::from(stored.size),
        }
    }
}

/// What a paged-out message costs in memory (its slot and shared refcount).
const DISK_SLOT_WEIGHT: usize = 64;
/// Paged-out messages read back at most at once when they reach the head: by count, and by
/// bytes (big bodies), in store reads of PAGE_IN_CHUNK.
const PAGE_IN_BATCH: usize = 256;
const PAGE_IN_BYTES: usize = 4 << 20;
const PAGE_IN_CHUNK: usize = 16;

/// What a `basic.get` returns: the message and how many are left ready.
pub type GetReply = Option<(Entry, u32)>;

#[derive(Debug)]
pub enum QueueCmd {
    /// Messages to enqueue; the receipt (for confirm-mode publishes) says which were taken.
    Publish(Vec<Arc<Message>>, Option<Receipt>),
    Consume(ConsumerSpec, oneshot::Sender<Result<(), Error>>),
    Cancel {
        owner: ChannelKey,
        tag: Arc<str>,
        reply: oneshot::Sender<()>,
    },
    Get {
        owner: ChannelKey,
        no_ack: bool,
        reply: oneshot::Sender<GetReply>,
    },
    Ack(Vec<u64>),
    /// Back to its place, marked redelivered (nack/reject requeue, recover).
    Requeue(Vec<u64>),
    /// Settled without delivery (nack/reject without requeue).
    Discard(Vec<u64>),
    /// Deliveries a connection could not hand to a consumer (cancelled or channel gone):
    /// back to their place unchanged. `no_ack` ones were forgotten by the queue already.
    Return {
        entries: Vec<Entry>,
        no_ack: bool,
    },
    /// The channel closed: drop its consumers and requeue everything it held.
    ChannelClosed(ChannelKey),
    /// (ready messages, consumers)
    Stat(oneshot::Sender<(u32, u32)>),
    Purge(oneshot::Sender<u32>),
    Delete {
        if_unused: bool,
        if_empty: bool,
        reply: oneshot::Sender<Result<u32, Error>>,
    },
}

/// What everyone else holds of a queue: its identity, declared properties and inbox.
#[derive(Debug)]
pub struct QueueShared {
    pub name: Arc<str>,
    pub id: u64,
    pub durable: bool,
    pub exclusive_owner: Option<ConnId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// Set for durable queues: their persistent messages are in the store.
    pub store: Option<Arc<Store>>,
    tx: mpsc::Sender<QueueCmd>,
    wake: Notify,
    /// Flow control: set while the queue has a backlog its consumers' connections cannot
    /// keep up with; publishers that sent to it pause reading until it clears.
    busy: AtomicBool,
    unbusy: Notify,
}

pub type QueueHandle = Arc<QueueShared>;

impl QueueShared {
    /// Send a command; false if the queue is gone (deleted meanwhile).
    pub async fn send(&self, cmd: QueueCmd) -> bool {
        self.tx.send(cmd).await.is_ok()
    }

    /// Ask the queue something; None if it is gone.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> QueueCmd) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        if !self.send(make(tx)).await {
            return None;
        }
        rx.await.ok()
    }

    /// A consumer regained credit: try delivering again.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Resolves once the queue is not busy (at once if it is not).
    pub async fn unbusy(&self) {
        let notified = self.unbusy.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_busy() {
            notified.await;
        }
    }

    fn set_busy(&self, busy: bool) {
        if self.busy.swap(busy, Ordering::AcqRel) && !busy {
            self.unbusy.notify_waiters();
        }
    }
}

pub struct QueueSpec {
    pub name: Arc<str>,
    pub id: u64,
    pub durable: bool,
    pub exclusive_owner: Option<ConnId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    pub inbox: usize,
    pub memory: Arc<MemoryMonitor>,
    pub store: Option<Arc<Store>>,
    pub initial: Recovered,
    pub vhost: String,
    /// Bytes of messages kept in memory before new persistent ones are paged out.
    pub memory_budget: usize,
    pub flow_messages: usize,
}

/// Start a queue task; it ends when the queue is deleted.
pub fn spawn(spec: QueueSpec, vhost: Weak<VHost>) -> QueueHandle {
    let (tx, rx) = mpsc::channel(spec.inbox.max(1));
    let shared = Arc::new(QueueShared {
        name: spec.name,
        id: spec.id,
        durable: spec.durable,
        exclusive_owner: spec.exclusive_owner,
        auto_delete: spec.auto_delete,
        arguments: spec.arguments,
        store: spec.store,
        tx,
        wake: Notify::new(),
        busy: AtomicBool::new(false),
        unbusy: Notify::new(),
    });
    let args = QueueArgs::parse(&shared.arguments).unwrap_or_else(|bad| {
        // Checked at declare; only a store written by another version gets here.
        tracing::warn!(queue = %shared.name, arg = bad.key, "ignoring invalid argument: {}", bad.why);
        QueueArgs::default()
    });
    let mut q = Queue {
        limits: args.limits,
        args,
        last_used: Instant::now(),
        flow_messages: spec.flow_messages,
        ready_bytes: 0,
        vhost_name: spec.vhost,
        budget: spec.memory_budget,
        ops: Vec::new(),
        shared: shared.clone(),
        vhost,
        ready: VecDeque::new(),
        unacked: HashMap::new(),
        consumers: Vec::new(),
        rr: 0,
        next_seq: 0,
        ever_consumed: false,
        bytes: 0,
        memory: spec.memory,
    };
    // Recovered messages stay on disk until needed; those delivered before the restart come
    // back redelivered.
    // TTLs of recovered messages count from now (their deadlines are not stored).
    let expires = q
        .args
        .message_ttl
        .map(|ms| q.last_used + Duration::from_millis(ms));
    for (stored, redelivered) in spec.initial {
        q.push_disk(stored, redelivered, expires);
    }
    tokio::spawn(q.run(rx));
    shared
}

struct Held {
    entry: Entry,
    owner: ChannelKey,
    /// None for basic.get deliveries.
    consumer: Option<Arc<str>>,
}

struct ConsumerState {
    spec: ConsumerSpec,
    unacked: u32,
}

struct Queue {
    shared: QueueHandle,
    vhost: Weak<VHost>,
    ready: VecDeque<Slot>,
    unacked: HashMap<u64, Held>,
    consumers: Vec<ConsumerState>,
    rr: usize,
    next_seq: u64,
    ever_consumed: bool,
    /// Weight of the messages held (ready + unacked), reported to the memory alarm.
    bytes: usize,
    memory: Arc<MemoryMonitor>,
    /// Store writes of this round (delivery marks, dequeues), submitted together.
    ops: Vec<Op>,
    vhost_name: String,
    budget: usize,
    limits: Limits,
    /// Body bytes of the ready messages (for x-max-length-bytes).
    ready_bytes: u64,
    flow_messages: usize,
    args: QueueArgs,
    /// Last consume, cancel, get or declare (x-expires counts from here while unused).
    last_used: Instant,
}

/// Commands taken from the inbox per wake-up, so publishes arrive in batches.
const BATCH: usize = 64;

impl Queue {
    async fn run(mut self, mut rx: mpsc::Receiver<QueueCmd>) {
        let shared = self.shared.clone();
        let mut cmds = Vec::with_capacity(BATCH);
        'run: loop {
            let timer = self.next_timer();
            tokio::select! {
                n = rx.recv_many(&mut cmds, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    for cmd in cmds.drain(..) {
                        if self.handle(cmd) {
                            break 'run; // deleted
                        }
                    }
                }
                _ = shared.wake.notified() => {}
                _ = sleep_until(timer), if timer.is_some() => {}
            }
            let now = Instant::now();
            // After the dispatch: a message with TTL 0 still reaches a waiting consumer.
            self.dispatch();
            self.expire_head(now);
            if self.unused_for_too_long(now) {
                tracing::info!(queue = %self.shared.name, "deleting queue unused for x-expires");
                self.delete();
                break;
            }
            self.drop_head();
            self.update_busy();
            self.flush_ops();
        }
        // Deleted, or every handle gone: write what is left and release waiting publishers.
        self.flush_ops();
        self.shared.set_busy(false);
    }

    /// Acks and delivery marks need no sync: a lost one means a redelivery, never a loss.
    fn flush_ops(&mut self) {
        if let Some(store) = &self.shared.store
            && !self.ops.is_empty()
        {
            store.submit(std::mem::take(&mut self.ops), false, None);
        }
    }

    fn enqueue(&mut self, msgs: Vec<Arc<Message>>, receipt: Option<Receipt>) {
        let mut refused = Vec::new();
        let now = Instant::now();
        for (i, msg) in msgs.into_iter().enumerate() {
            let size = msg.body.len() as u64;
            if self.limits.overflow == Overflow::RejectPublish
                && self
                    .limits
                    .exceeded(self.ready.len() + 1, self.ready_bytes + size)
            {
                refused.push(i as u32);
                if let Some(p) = &msg.stored {
                    self.release_stored(p, msg.weight());
                }
                continue;
            }
            if self.bytes > self.budget
                && self.shared.store.is_some()
                && let Some(stored) = &msg.stored
            {
                let expires = self.deadline(&msg, now);
                self.push_disk(stored.clone(), false, expires);
                continue;
            }
            let w = msg.weight();
            self.bytes += w;
            self.memory.add(w);
            self.ready_bytes += size;
            let seq = self.next_seq;
            self.next_seq += 1;
            let expires = self.deadline(&msg, now);
            self.ready.push_back(Slot::Mem(Entry {
                seq,
                msg,
                redelivered: false,
                expires,
            }));
        }
        if let Some(r) = receipt {
            r.answer(&refused);
        }
        // With consumers, the head may go out instead: dropped after the dispatch, if at all.
        if self.consumers.is_empty() {
            self.drop_head();
        }
    }

    /// Flow control on (past the threshold) while a consumer's connection is behind on
    /// deliveries; off again under half, or once no consumer is behind (consumers held back
    /// by prefetch or acks never count: the backlog is then theirs to absorb).
    fn update_busy(&self) {
        let len = self.ready.len();
        let busy = if self.shared.is_busy() {
            len > self.flow_messages / 2
        } else {
            len > self.flow_messages
        } && self.consumers.iter().any(|c| c.spec.flow.is_starved());
        self.shared.set_busy(busy);
    }

    /// Overflow drop-head: drop the oldest ready messages while over the limits.
    fn drop_head(&mut self) {
        if self.limits.overflow != Overflow::DropHead {
            return;
        }
        while self.limits.exceeded(self.ready.len(), self.ready_bytes) {
            let Some(slot) = self.ready.pop_front() else {
                break;
            };
            self.ready_bytes -= slot.body_len();
            self.drop_slot(slot);
        }
    }

    /// A ready message leaves the queue undelivered: release its memory and store rows.
    fn drop_slot(&mut self, slot: Slot) {
        match slot {
            Slot::Mem(e) => self.forget(&e),
            Slot::Disk { stored, .. } => {
                self.bytes = self.bytes.saturating_sub(DISK_SLOT_WEIGHT);
                self.memory.sub(DISK_SLOT_WEIGHT);
                self.release_stored(&stored, 0);
            }
        }
    }

    fn push_disk(&mut self, stored: Arc<Persisted>, redelivered: bool, expires: Option<Instant>) {
        self.bytes += DISK_SLOT_WEIGHT;
        self.memory.add(DISK_SLOT_WEIGHT);
        self.ready_bytes += u64::from(stored.size);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready.push_back(Slot::Disk {
            seq,
            stored,
            redelivered,
            expires,
        });
    }

    /// Read paged-out messages at the head back into memory, a few store reads at a time,
    /// until a batch's worth (in count or bytes) is in.
    fn page_in(&mut self) {
        let Some(store) = self.shared.store.clone() else {
            return;
        };
        let mut fresh = Vec::new();
        let mut fresh_bytes = 0;
        while fresh.len() < PAGE_IN_BATCH && fresh_bytes < PAGE_IN_BYTES {
            let ids: Vec<u64> = self
                .ready
                .iter()
                .take(PAGE_IN_CHUNK)
                .map_while(|s| match s {
                    Slot::Disk { stored, .. } => Some(stored.id),
                    Slot::Mem(_) => None,
                })
                .collect();
            if ids.is_empty() {
                break;
            }
            // Unreadable store: leave the slots as they are (nothing is lost).
            let Ok(rows) = store.read_messages(&ids) else {
                break;
            };
            for row in rows {
                let Some(Slot::Disk {
                    seq,
                    stored,
                    redelivered,
                    expires,
                }) = self.ready.pop_front()
                else {
                    break;
                };
                self.bytes = self.bytes.saturating_sub(DISK_SLOT_WEIGHT);
                self.memory.sub(DISK_SLOT_WEIGHT);
                self.ready_bytes -= u64::from(stored.size);
                let Some(row) = row else {
                    // No row: its publish never completed, so it was never confirmed.
                    tracing::warn!(queue = %self.shared.name, id = stored.id, "stored message missing; dropped");
                    self.ops.push(Op::Dequeue {
                        queue: self.shared.id,
                        msg: stored.id,
                    });
                    continue;
                };
                let msg = Arc::new(Message::from_stored(row, Some(stored)));
                self.ready_bytes += msg.body.len() as u64;
                let w = msg.weight();
                self.bytes += w;
                self.memory.add(w);
                fresh_bytes += w;
                fresh.push(Slot::Mem(Entry {
                    seq,
                    msg,
                    redelivered,
                    expires,
                }));
            }
        }
        for slot in fresh.into_iter().rev() {
            self.ready.push_front(slot);
        }
    }

    /// The next ready message, paging it in if needed.
    fn pop_ready(&mut self) -> Option<Entry> {
        loop {
            match self.ready.front()? {
                Slot::Mem(_) => {
                    let Some(Slot::Mem(e)) = self.ready.pop_front() else {
                        unreachable!("front checked")
                    };
                    self.ready_bytes -= e.msg.body.len() as u64;
                    return Some(e);
                }
                Slot::Disk { .. } => {
                    let before = self.ready.len();
                    self.page_in();
                    if self.ready.len() == before
                        && matches!(self.ready.front(), Some(Slot::Disk { .. }))
                    {
                        return None; // the store is closed: nothing can be read
                    }
                }
            }
        }
    }

    /// Drop every ready message (purge, delete), releasing memory and store rows.
    fn drain_ready(&mut self) -> u32 {
        let n = self.ready.len() as u32;
        self.ready_bytes = 0;
        for slot in std::mem::take(&mut self.ready) {
            self.drop_slot(slot);
        }
        n
    }

    /// Persist that a message went out, so it comes back redelivered after a crash.
    fn mark_delivered(&mut self, e: &Entry) {
        if self.shared.store.is_some()
            && !e.redelivered
            && let Some(p) = &e.msg.stored
        {
            self.ops.push(Op::Delivered {
                queue: self.shared.id,
                msg: p.id,
                size: p.size,
            });
        }
    }

    /// Returns true when the queue has been deleted and the task must end.
    fn handle(&mut self, cmd: QueueCmd) -> bool {
        if self.args.expires.is_some()
            && !matches!(
                cmd,
                QueueCmd::Publish(..)
                    | QueueCmd::Ack(_)
                    | QueueCmd::Requeue(_)
                    | QueueCmd::Discard(_)
            )
        {
            self.last_used = Instant::now();
        }
        match cmd {
            QueueCmd::Publish(msgs, receipt) => self.enqueue(msgs, receipt),
            QueueCmd::Consume(spec, reply) => {
                let _ = reply.send(self.add_consumer(spec));
            }
            QueueCmd::Cancel { owner, tag, reply } => {
                self.consumers
                    .retain(|c| !(c.spec.owner == owner && c.spec.tag == tag));
                let _ = reply.send(());
                return self.maybe_auto_delete();
            }
            QueueCmd::Get {
                owner,
                no_ack,
                reply,
            } => {
                self.expire_head(Instant::now());
                let got = self.pop_ready().map(|entry| {
                    if no_ack {
                        self.forget(&entry);
                    } else {
                        self.mark_delivered(&entry);
                        self.unacked.insert(
                            entry.seq,
                            Held {
                                entry: entry.clone(),
                                owner,
                                consumer: None,
                            },
                        );
                    }
                    (entry, self.ready.len() as u32)
                });
                let _ = reply.send(got);
            }
            QueueCmd::Ack(seqs) | QueueCmd::Discard(seqs) => {
                for seq in seqs {
                    if let Some(e) = self.settle(seq) {
                        self.forget(&e);
                    }
                }
            }
            QueueCmd::Requeue(seqs) => {
                for seq in seqs {
                    if let Some(mut e) = self.settle(seq) {
                        e.redelivered = true;
                        self.insert_ready(e);
                    }
                }
            }
            QueueCmd::Return { entries, no_ack } => {
                for e in entries {
                    if no_ack {
                        self.unforget(&e);
                        self.insert_ready(e);
                    } else if let Some(e) = self.settle(e.seq) {
                        self.insert_ready(e);
                    }
                }
            }
            QueueCmd::ChannelClosed(owner) => {
                self.consumers.retain(|c| c.spec.owner != owner);
                let mut held: Vec<u64> = self
                    .unacked
                    .iter()
                    .filter(|(_, h)| h.owner == owner)
                    .map(|(s, _)| *s)
                    .collect();
                held.sort_unstable();
                for seq in held {
                    if let Some(mut e) = self.settle(seq) {
                        e.redelivered = true;
                        self.insert_ready(e);
                    }
                }
                return self.maybe_auto_delete();
            }
            QueueCmd::Stat(reply) => {
                self.expire_head(Instant::now());
                let _ = reply.send((self.ready.len() as u32, self.consumers.len() as u32));
            }
            QueueCmd::Purge(reply) => {
                let n = self.drain_ready();
                let _ = reply.send(n);
            }
            QueueCmd::Delete {
                if_unused,
                if_empty,
                reply,
            } => {
                let vhost = &self.vhost_name;
                if if_unused && !self.consumers.is_empty() {
                    let _ = reply.send(Err(Error::precondition(format!(
                        "queue '{}' in vhost '{vhost}' in use",
                        self.shared.name
                    ))));
                    return false;
                }
                if if_empty && !self.ready.is_empty() {
                    let _ = reply.send(Err(Error::precondition(format!(
                        "queue '{}' in vhost '{vhost}' is not empty",
                        self.shared.name
                    ))));
                    return false;
                }
                let n = self.ready.len() as u32;
                self.delete();
                let _ = reply.send(Ok(n));
                return true;
            }
        }
        false
    }

    fn add_consumer(&mut self, spec: ConsumerSpec) -> Result<(), Error> {
        let locked = self.consumers.iter().any(|c| c.spec.exclusive)
            || (spec.exclusive && !self.consumers.is_empty());
        if locked {
            return Err(Error::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.shared.name, self.vhost_name
            )));
        }
        self.ever_consumed = true;
        self.consumers.push(ConsumerState { spec, unacked: 0 });
        Ok(())
    }

    /// Remove a delivery from the unacked set, giving its consumer back one prefetch slot.
    fn settle(&mut self, seq: u64) -> Option<Entry> {
        let held = self.unacked.remove(&seq)?;
        if let Some(tag) = &held.consumer
            && let Some(c) = self
                .consumers
                .iter_mut()
                .find(|c| c.spec.owner == held.owner && &c.spec.tag == tag)
        {
            c.unacked = c.unacked.saturating_sub(1);
        }
        Some(held.entry)
    }

    /// The queue no longer holds this message (acked, dropped, or delivered without ack).
    fn forget(&mut self, e: &Entry) {
        let w = e.msg.weight();
        self.bytes = self.bytes.saturating_sub(w);
        self.memory.sub(w);
        if let Some(p) = &e.msg.stored {
            self.release_stored(p, w);
        }
    }

    /// This durable queue no longer holds a stored message: drop its index entry, and the
    /// row itself if no other queue holds it.
    fn release_stored(&mut self, p: &Persisted, size: usize) {
        if self.shared.store.is_none() {
            return;
        }
        self.ops.push(Op::Dequeue {
            queue: self.shared.id,
            msg: p.id,
        });
        if p.release() {
            self.ops.push(Op::DeleteMessage { id: p.id, size });
        }
    }

    /// Undo `forget` for a no-ack delivery that never reached its consumer.
    fn unforget(&mut self, e: &Entry) {
        let w = e.msg.weight();
        self.bytes += w;
        self.memory.add(w);
        if self.shared.store.is_some()
            && let Some(p) = &e.msg.stored
        {
            if p.acquire() {
                // Its row was deleted after the last release: write it again, in order.
                self.ops.push(Op::PutMessage {
                    id: p.id,
                    msg: e.msg.to_stored(),
                });
            }
            self.ops.push(Op::Enqueue {
                queue: self.shared.id,
                msg: p.id,
                size: p.size,
            });
        }
    }

    fn insert_ready(&mut self, e: Entry) {
        self.ready_bytes += e.msg.body.len() as u64;
        let at = self.ready.partition_point(|r| r.seq() < e.seq);
        self.ready.insert(at, Slot::Mem(e));
    }

    /// Auto-delete queues go once their last consumer has gone (never if none ever came).
    fn maybe_auto_delete(&mut self) -> bool {
        if self.shared.auto_delete && self.ever_consumed && self.consumers.is_empty() {
            self.delete();
            return true;
        }
        false
    }

    fn delete(&mut self) {
        self.drain_ready();
        let held: Vec<Entry> = self.unacked.drain().map(|(_, h)| h.entry).collect();
        for e in held {
            self.forget(&e);
        }
        if self.shared.store.is_some() {
            // The whole index goes with the queue's row: per-message deletes are redundant.
            self.ops.retain(|op| !matches!(op, Op::Dequeue { .. }));
            self.ops.push(Op::DeleteQueue {
                vhost: self.vhost_name.clone(),
                name: self.shared.name.to_string(),
                id: self.shared.id,
            });
        }
        for c in self.consumers.drain(..) {
            let _ = c.spec.events.send(ConnEvent::Cancelled {
                channel: c.spec.owner.channel,
                consumer_tag: c.spec.tag.clone(),
            });
        }
        if let Some(v) = self.vhost.upgrade() {
            v.remove_queue(&self.shared);
        }
    }

    fn can_take(&mut self, i: usize, batched: usize) -> bool {
        let c = &self.consumers[i];
        if !c.spec.flow.has_room(batched as u32) {
            return false;
        }
        if c.spec.no_ack {
            return true;
        }
        if c.spec.prefetch != 0 && c.unacked >= c.spec.prefetch {
            return false;
        }
        c.spec.channel_limit.try_acquire()
    }

    /// Hand ready messages to consumers, one each in turn, then send each consumer its batch.
    fn dispatch(&mut self) {
        if self.ready.is_empty() || self.consumers.is_empty() {
            return;
        }
        let n = self.consumers.len();
        let mut batches: Vec<Vec<Entry>> = vec![Vec::new(); n];
        // Strict round-robin: `rr` is the consumer that gets the next message; a consumer
        // without credit is skipped, and a full turn with no taker ends the dispatch.
        let mut idle = 0;
        let mut i = self.rr % n;
        while idle < n && !self.ready.is_empty() {
            if !self.can_take(i, batches[i].len()) {
                idle += 1;
                i = (i + 1) % n;
                continue;
            }
            let Some(entry) = self.pop_ready() else {
                break;
            };
            if self.consumers[i].spec.no_ack {
                self.forget(&entry);
            } else {
                self.mark_delivered(&entry);
                let c = &mut self.consumers[i];
                c.unacked += 1;
                self.unacked.insert(
                    entry.seq,
                    Held {
                        entry: entry.clone(),
                        owner: c.spec.owner,
                        consumer: Some(c.spec.tag.clone()),
                    },
                );
            }
            batches[i].push(entry);
            idle = 0;
            i = (i + 1) % n;
            self.rr = i;
        }
        let mut gone = Vec::new();
        for (i, entries) in batches.into_iter().enumerate() {
            if entries.is_empty() {
                continue;
            }
            let c = &self.consumers[i];
            c.spec.flow.sent(entries.len() as u32);
            let ev = ConnEvent::Deliver {
                channel: c.spec.owner.channel,
                consumer_tag: c.spec.tag.clone(),
                no_ack: c.spec.no_ack,
                queue: self.shared.clone(),
                flow: c.spec.flow.clone(),
                entries,
            };
            let no_ack = c.spec.no_ack;
            if let Err(mpsc::error::SendError(ev)) = c.spec.events.send(ev) {
                // The connection is gone: the messages were never delivered.
                gone.push(i);
                if let ConnEvent::Deliver { entries, .. } = ev {
                    for e in entries {
                        if no_ack {
                            self.unforget(&e);
                            self.insert_ready(e);
                        } else if let Some(e) = self.settle(e.seq) {
                            self.insert_ready(e);
                        }
                    }
                }
            }
        }
        for i in gone.into_iter().rev() {
            self.consumers.remove(i);
        }
    }
}
