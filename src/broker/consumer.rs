//! What a queue needs to deliver to a consumer without ever waiting on it: the consumer's
//! connection inbox, and the credit that bounds what may be in flight to that connection
//! (so a consumer that stops reading stops receiving, instead of growing the broker's memory).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::ids::ConsumerId;
use super::queue::{Entry, QueueHandle};
use crate::protocol::FieldTable;

/// Deliveries a queue may have handed to a connection that it has not yet encoded.
pub const CONSUMER_CREDIT: u32 = 512;

/// Events queues send to a connection task. The inbox is unbounded as a channel, but what
/// flows through it is bounded by consumer credit and prefetch.
#[derive(Debug)]
pub enum ConnEvent {
    Deliver {
        consumer: ConsumerId,
        no_ack: bool,
        queue: QueueHandle,
        entries: Vec<Entry>,
    },
    /// The queue went away under the consumer (server-sent basic.cancel).
    Cancelled(ConsumerId),
    /// A queue gave back pool credit other queues of this channel were waiting for.
    Wake { channel: u16 },
    /// The store wrote (ok) or failed to write the publishes of sync request `token`.
    Synced { token: u64, ok: bool },
    /// A queue took the confirm-mode publishes of flush `token`, except `nacks`.
    Taken {
        token: u64,
        nacks: Vec<super::receipt::ConfirmTag>,
    },
}

pub type ConnSender = mpsc::UnboundedSender<ConnEvent>;

/// The delivery credit a channel grants one consumer, as the latest value: the queue may
/// send it deliveries while it has sent fewer than `limit`. The connection raises the limit
/// as it writes deliveries out (so at most CONSUMER_CREDIT are in flight); the queue's
/// runtime reads it into a `Credit` command, and marks the consumer starved when it ran out,
/// so that the next grant wakes the queue.
#[derive(Debug)]
pub struct ConsumerFlow {
    limit: AtomicU64,
    starved: AtomicBool,
}

impl ConsumerFlow {
    pub fn new(limit: u64) -> Self {
        ConsumerFlow {
            limit: AtomicU64::new(limit),
            starved: AtomicBool::new(false),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Acquire)
    }

    /// Connection side: a new limit; true if the queue ran out of credit and must be woken.
    pub fn grant(&self, limit: u64) -> bool {
        self.limit.store(limit, Ordering::Release);
        self.starved.swap(false, Ordering::AcqRel)
    }

    /// Queue side: the consumer has messages waiting and no credit.
    pub fn starve(&self) {
        self.starved.store(true, Ordering::Release);
    }
}

/// basic.qos with global=true: one prefetch limit shared by all consumers of a channel.
#[derive(Debug, Default)]
pub struct ChannelLimit {
    limit: AtomicU32,
    unacked: AtomicU32,
    starved: AtomicBool,
}

impl ChannelLimit {
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
    }

    /// The limit, 0 for none.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    /// Take up to `want` deliveries from the pool; short of it, the channel is marked starved
    /// so that the next release wakes its consumers.
    pub fn acquire(&self, want: u32) -> u32 {
        loop {
            let limit = self.limit.load(Ordering::Acquire);
            let cur = self.unacked.load(Ordering::Acquire);
            let room = if limit == 0 {
                want
            } else {
                limit.saturating_sub(cur).min(want)
            };
            if room < want {
                self.starved.store(true, Ordering::Release);
            }
            if room == 0 {
                return 0;
            }
            if self
                .unacked
                .compare_exchange(cur, cur + room, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return room;
            }
        }
    }

    /// `n` deliveries were settled (or taken and not used); true if some queue stopped on
    /// this limit and must be woken.
    pub fn release(&self, n: u32) -> bool {
        let _ = self
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
        self.starved.swap(false, Ordering::AcqRel)
    }
}

/// A consumer as its queue sees it: what it asked for, and how to reach its connection.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub id: ConsumerId,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Per-consumer prefetch (basic.qos global=false); 0 = unlimited.
    pub prefetch: u32,
    pub arguments: FieldTable,
    pub events: ConnSender,
    pub flow: Arc<ConsumerFlow>,
    /// The channel's pool (basic.qos global=true).
    pub channel_limit: Arc<ChannelLimit>,
}
