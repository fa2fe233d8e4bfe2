//! The data `QueueState` takes and gives: commands, replies and effects, plain values (with
//! the message handle `B` the runtime chooses), so they can be logged and replayed.

use std::sync::Arc;

use super::super::super::args::QueueArgs;
use crate::broker::ids::{ChannelId, ConsumerId};
use crate::error::Error;

/// A message handle as the state holds it: the state reads these facts, never the bytes.
pub trait Payload: Clone + std::fmt::Debug {
    /// Body bytes, for x-max-length-bytes; known even when the body is paged out.
    fn size(&self) -> u32;
    /// What holding it costs in memory (for the memory alarm and the paging budget).
    fn weight(&self) -> usize;
    /// Its own TTL (the expiration property), in milliseconds.
    fn ttl_ms(&self) -> Option<u64>;
    /// It has a row in the store (persistent), so it can be paged out.
    fn stored(&self) -> bool;
    /// Drop the in-memory body, keeping what is needed to read it back.
    fn page_out(&mut self);
}

/// What a paged-out message costs in memory (its slot and handle).
pub const PAGED_WEIGHT: usize = 64;

/// Facts every command is applied with, stamped by whoever issued it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    /// Wall-clock milliseconds.
    pub now_ms: u64,
}

/// A queue's fixed properties.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: Arc<str>,
    pub vhost: Arc<str>,
    /// Durable: stored messages have index rows to maintain, and may be paged out.
    pub durable: bool,
    pub auto_delete: bool,
    pub args: QueueArgs,
    /// Weight held in memory before newly enqueued stored messages are paged out.
    pub memory_budget: usize,
    /// A message that has come back from consumers more often than this is dropped
    /// (x-delivery-limit: quorum queues).
    pub delivery_limit: Option<u32>,
    /// An explicit requeue goes to the tail, not back to its place (quorum queues without a
    /// delivery limit, as RabbitMQ's).
    pub requeue_to_tail: bool,
}

/// A new consumer. Its id is used for this checkout only (channels number their consumers):
/// deliveries still on their way to an earlier consumer must never count as this one's.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub consumer: ConsumerId,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Unacked deliveries it may hold (basic.qos global=false); 0 = unlimited.
    pub prefetch: u32,
    /// Deliveries it may be sent before its channel grants more.
    pub limit: u64,
    /// It also spends its channel's pool (which counts the channel's unacked deliveries and
    /// holds basic.qos global=true); ack-mode consumers only.
    pub pooled: bool,
}

/// Credit granted by channels, applied at once so that one dispatch sees all of it.
#[derive(Debug, Clone, Default)]
pub struct Credit {
    /// New delivery limits: the consumer may be sent deliveries while `sent < limit`.
    pub consumers: Vec<(ConsumerId, u64)>,
    /// Channels' pools: deliveries their pooled consumers here may take, all together (a
    /// pool never granted is empty).
    pub pools: Vec<(ChannelId, u32)>,
}

/// A message as handed out (to a consumer, a basic.get, or back to the queue).
#[derive(Debug, Clone)]
pub struct Delivery<B> {
    pub seq: u64,
    pub body: B,
    pub redelivered: bool,
    /// Its deadline, kept in case it comes back (a no-ack delivery never handed over).
    pub expires_ms: Option<u64>,
    /// Times it came back from consumers before (x-delivery-count).
    pub returns: u32,
}

#[derive(Debug, Clone)]
pub enum Command<B> {
    Enqueue(Vec<B>),
    Checkout(Checkout),
    Cancel(ConsumerId),
    Get {
        channel: ChannelId,
        no_ack: bool,
    },
    Ack(Vec<u64>),
    /// Settled without delivery (nack/reject without requeue).
    Discard(Vec<u64>),
    /// Back to its place, marked redelivered (nack/reject requeue, recover).
    Requeue(Vec<u64>),
    /// Deliveries that never reached their consumer (cancelled, channel gone): back unchanged.
    /// Only those the consumer still holds: its channel may have been closed and the message
    /// handed to someone else meanwhile.
    Return {
        consumer: ConsumerId,
        seqs: Vec<u64>,
    },
    /// No-ack deliveries that never reached their consumer: the queue takes them back.
    Reinstate(Vec<Delivery<B>>),
    Credit(Credit),
    /// The channel closed: its consumers go and what it held is requeued.
    ChannelDown(ChannelId),
    Stat,
    Purge,
    Delete {
        if_unused: bool,
        if_empty: bool,
    },
    /// Time passed: expire messages, and the queue itself (x-expires).
    Tick,
}

impl<B> Command<B> {
    /// The command for a settlement of `seqs`.
    pub fn settle(how: crate::broker::queue::Settle, seqs: Vec<u64>) -> Self {
        use crate::broker::queue::Settle;
        match how {
            Settle::Ack => Command::Ack(seqs),
            Settle::Requeue => Command::Requeue(seqs),
            Settle::Discard => Command::Discard(seqs),
        }
    }
}

#[derive(Debug)]
pub enum Reply<B> {
    None,
    /// Positions in the batch refused (reject-publish), ascending.
    Enqueued {
        refused: Vec<u32>,
    },
    CheckedOut(Result<(), Error>),
    Got(Option<(Delivery<B>, u32)>),
    Stat {
        messages: u32,
        consumers: u32,
    },
    Purged(u32),
    Deleted(Result<u32, Error>),
}

#[derive(Debug)]
pub enum Effect<B> {
    Deliver {
        consumer: ConsumerId,
        no_ack: bool,
        msgs: Vec<Delivery<B>>,
    },
    /// The consumer has messages waiting but no delivery credit left.
    Starved(ConsumerId),
    /// The queue dropped the consumer (deleted under it): a server-sent cancel.
    Cancelled(ConsumerId),
    /// Store effects, for messages with rows in a durable queue's store only:
    /// first delivery of one: persist it, so it comes back redelivered.
    MarkDelivered(B),
    /// The queue let go of it (acked, dropped, expired, purged, sent without ack).
    Release(B),
    /// The queue took back one it had let go of.
    Reacquire(B),
    /// The queue is gone; nothing more is applied.
    Deleted,
}

/// Commands that count as using the queue (x-expires).
pub(super) fn touches<B>(cmd: &Command<B>) -> bool {
    !matches!(
        cmd,
        Command::Enqueue(_)
            | Command::Ack(_)
            | Command::Requeue(_)
            | Command::Discard(_)
            | Command::Credit(_)
            | Command::Tick
    )
}
