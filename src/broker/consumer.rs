//! What a queue needs to deliver to a consumer without ever waiting on it: the consumer's
//! connection inbox, and the credit that bounds what may be in flight to that connection
//! (so a consumer that stops reading stops receiving, instead of growing the broker's memory).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::sync::mpsc;

use super::queue::{ChannelKey, Entry, QueueHandle};
use crate::protocol::FieldTable;

/// Deliveries a queue may have handed to a connection that it has not yet encoded.
pub const CONSUMER_CREDIT: u32 = 512;

/// Events queues send to a connection task. The inbox is unbounded as a channel, but what
/// flows through it is bounded by consumer credit and prefetch.
#[derive(Debug)]
pub enum ConnEvent {
    Deliver {
        channel: u16,
        consumer_tag: Arc<str>,
        no_ack: bool,
        queue: QueueHandle,
        /// Identifies the consumer instance (tags can be reused after a cancel).
        flow: Arc<ConsumerFlow>,
        entries: Vec<Entry>,
    },
    /// The queue went away under the consumer (server-sent basic.cancel).
    Cancelled {
        channel: u16,
        consumer_tag: Arc<str>,
    },
    /// The store wrote (ok) or failed to write the publishes of sync request `token`.
    Synced { token: u64, ok: bool },
    /// A queue took the confirm-mode publishes of flush `token`, except `nacks`.
    Taken {
        token: u64,
        nacks: Vec<super::receipt::Tag>,
    },
}

pub type ConnSender = mpsc::UnboundedSender<ConnEvent>;

/// In-flight deliveries between a queue and the consumer's connection task.
#[derive(Debug, Default)]
pub struct ConsumerFlow {
    pending: AtomicU32,
    starved: AtomicBool,
}

impl ConsumerFlow {
    /// Queue side: may `extra` more deliveries go out on top of what is pending? If not, the
    /// consumer is marked starved so the connection wakes the queue once it catches up.
    pub fn has_room(&self, extra: u32) -> bool {
        if self.pending.load(Ordering::Acquire) + extra < CONSUMER_CREDIT {
            return true;
        }
        self.starved.store(true, Ordering::Release);
        // Re-check: the connection may have drained between our load and the store.
        self.pending.load(Ordering::Acquire) + extra < CONSUMER_CREDIT
    }

    pub fn sent(&self, n: u32) {
        self.pending.fetch_add(n, Ordering::AcqRel);
    }

    /// The queue wanted to send more than the connection has caught up with.
    pub fn is_starved(&self) -> bool {
        self.starved.load(Ordering::Acquire)
    }

    /// Connection side: `n` deliveries were written out; true if the queue must be woken.
    pub fn done(&self, n: u32) -> bool {
        self.pending.fetch_sub(n, Ordering::AcqRel);
        self.starved.swap(false, Ordering::AcqRel)
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

    /// Count one more unacked delivery if the limit allows it.
    pub fn try_acquire(&self) -> bool {
        loop {
            let limit = self.limit.load(Ordering::Acquire);
            let cur = self.unacked.load(Ordering::Acquire);
            if limit != 0 && cur >= limit {
                self.starved.store(true, Ordering::Release);
                if self.unacked.load(Ordering::Acquire) >= limit {
                    return false;
                }
                continue;
            }
            if self
                .unacked
                .compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return true;
            }
        }
    }

    /// `n` deliveries were settled; true if some queue stopped on this limit and must be woken.
    pub fn release(&self, n: u32) -> bool {
        let _ = self
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
        self.starved.swap(false, Ordering::AcqRel)
    }
}

/// A consumer as its queue sees it.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub tag: Arc<str>,
    pub owner: ChannelKey,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Per-consumer prefetch (basic.qos global=false); 0 = unlimited.
    pub prefetch: u32,
    pub arguments: FieldTable,
    pub events: ConnSender,
    pub flow: Arc<ConsumerFlow>,
    pub channel_limit: Arc<ChannelLimit>,
}
