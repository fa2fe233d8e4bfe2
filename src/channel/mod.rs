//! The state of one AMQP channel, without I/O: delivery tags and the unacked map, consumers
//! and the credit granted to them, qos, publisher-confirm sequence numbers, transaction
//! staging, the queue most recently declared, and content assembly. The connection task
//! drives it and carries out what it decides; one file per AMQP class it handles.
//!
//! Invariants: delivery tags count from 1 in the order deliveries are written; an unacked
//! tag is settled at most once; confirm mode and transactions exclude each other.

mod basic;
mod confirm;
mod tx;

pub use basic::{Grant, QueueSettle, Settled, by_queue};
pub use tx::{Tx, TxPublish, TxSettle};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::broker::consumer::{ChannelLimit, ConsumerFlow};
use crate::broker::queue::{Entry, QueueHandle};
use crate::protocol::content::Assembler;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    /// We sent channel.close and wait for close-ok; everything else is dropped.
    Closing,
}

/// A delivery the client has not settled yet.
#[derive(Debug, Clone)]
pub struct Unacked {
    pub queue: QueueHandle,
    pub seq: u64,
    /// The message's store id, if it was written (for transactions, whose acks of it in a
    /// durable queue are written with their publishes).
    pub stored: Option<u64>,
    /// Counted against the channel's global prefetch (consumer deliveries, not basic.get).
    pub limited: bool,
}

#[derive(Debug)]
pub struct ConsumerInfo {
    pub queue: QueueHandle,
    pub no_ack: bool,
    /// Which consumer of this tag it is (see `ConsumerId::serial`).
    pub serial: u64,
    /// The credit cell its queue reads.
    pub flow: Arc<ConsumerFlow>,
    /// Deliveries written out (or given back): the credit limit is this plus the window.
    pub written: u64,
}

/// Deliveries held back while the client has paused the channel with channel.flow.
#[derive(Debug)]
pub struct Parked {
    pub consumer: crate::broker::ids::ConsumerId,
    pub no_ack: bool,
    pub queue: QueueHandle,
    pub entries: Vec<Entry>,
}

#[derive(Debug)]
pub struct Channel {
    pub state: State,
    pub assembler: Assembler,
    next_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    pub consumers: HashMap<Arc<str>, ConsumerInfo>,
    /// basic.qos global=false: the prefetch given to consumers created from now on.
    pub consumer_prefetch: u32,
    pub limit: Arc<ChannelLimit>,
    /// Queues this channel consumed from or got from, told when the channel closes.
    pub touched: HashMap<u64, QueueHandle>,
    pub last_queue: Option<String>,
    pub active: bool,
    pub parked: Vec<Parked>,
    /// Publisher confirms: the sequence number of the next publish, once confirm.select ran.
    confirm_next: Option<u64>,
    /// Set by tx.select: what the current transaction will do at commit.
    tx: Option<Tx>,
    /// Consumers created on this channel's connection before this one (see `ConsumerId`).
    next_serial: u64,
}

/// What to do with settled deliveries.
#[derive(Debug, Clone, Copy)]
pub enum Settle {
    Ack,
    Requeue,
    Discard,
}

impl Default for Channel {
    fn default() -> Self {
        Channel {
            state: State::Open,
            assembler: Assembler::default(),
            next_tag: 1,
            unacked: BTreeMap::new(),
            consumers: HashMap::new(),
            consumer_prefetch: 0,
            limit: Arc::default(),
            touched: HashMap::new(),
            last_queue: None,
            active: true,
            parked: Vec::new(),
            confirm_next: None,
            tx: None,
            next_serial: 0,
        }
    }
}

#[cfg(test)]
mod tests;
