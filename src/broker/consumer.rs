//! The credit cells between a channel and the queues it consumes from: what a consumer may
//! still be sent (so a consumer that stops reading stops receiving, instead of growing the
//! broker's memory), and the pool of a channel's global prefetch. The channel writes them,
//! queue runtimes read them into commands.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Deliveries a queue may have handed to a connection that it has not yet encoded.
pub const CONSUMER_CREDIT: u32 = 512;

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

/// A channel's count of unacked consumer deliveries, and the limit basic.qos global=true
/// puts on it (0: none); every ack-mode delivery is counted, so a limit set later holds.
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
