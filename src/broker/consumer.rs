//! The credit cells between a channel and the queues it consumes from: what a consumer may
//! still be sent (so a consumer that stops reading stops receiving, instead of growing the
//! broker's memory), and the pool of a channel's global prefetch. The channel writes them,
//! queue runtimes read them into commands.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use tokio::sync::Notify;

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
///
/// On a queue's home node, a channel of another node whose global limit is set has a
/// stand-in made with `granted`: its limit is then the credit that node granted from the
/// real pool (0: none yet), and a shortfall is recorded as a want and signalled, so the home
/// node asks for more (see `broker::remote`).
#[derive(Debug, Default)]
pub struct ChannelLimit {
    limit: AtomicU64,
    unacked: AtomicU64,
    starved: AtomicBool,
    granted: Option<Granted>,
}

#[derive(Debug)]
struct Granted {
    /// The largest shortfall since the last ask.
    wanted: AtomicU32,
    /// Told when a want is recorded.
    asks: Arc<Notify>,
}

impl ChannelLimit {
    /// A home node's stand-in for another node's channel (see above).
    pub fn granted(asks: Arc<Notify>) -> ChannelLimit {
        ChannelLimit {
            granted: Some(Granted {
                wanted: AtomicU32::new(0),
                asks,
            }),
            ..Default::default()
        }
    }

    pub fn set_limit(&self, limit: u32) {
        self.limit.store(u64::from(limit), Ordering::Release);
    }

    /// The limit, 0 for none.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire) as u32
    }

    /// Take up to `want` deliveries from the pool; short of it, the channel is marked starved
    /// so that the next release wakes its consumers.
    pub fn acquire(&self, want: u32) -> u32 {
        let got = self.take(u64::from(want));
        if got < u64::from(want) {
            let was = self.starved.swap(true, Ordering::AcqRel);
            if let Some(g) = &self.granted {
                g.wanted
                    .fetch_max((u64::from(want) - got) as u32, Ordering::AcqRel);
                // Asked once per shortfall: a grant or a give-back clears the mark.
                if !was {
                    g.asks.notify_one();
                }
            }
        }
        got as u32
    }

    /// Up to `want` of the room left, taken atomically (all of it if there is no limit).
    fn take(&self, want: u64) -> u64 {
        loop {
            let limit = self.limit.load(Ordering::Acquire);
            let cur = self.unacked.load(Ordering::Acquire);
            let room = if limit == 0 && self.granted.is_none() {
                want
            } else {
                limit.saturating_sub(cur).min(want)
            };
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

    /// Count `n` deliveries whatever the limit (they were sent from another node's queue
    /// without asking this pool, which then had no limit).
    pub fn force(&self, n: u32) {
        self.unacked.fetch_add(u64::from(n), Ordering::AcqRel);
    }

    /// `n` deliveries were settled (or taken and not used); true if some queue stopped on
    /// this limit and must be woken.
    pub fn release(&self, n: u32) -> bool {
        let _ = self
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(u64::from(n)))
            });
        self.starved.swap(false, Ordering::AcqRel)
    }

    /// Stand-in: more credit from the real pool; true if a queue waits for it.
    pub fn grant(&self, n: u32) -> bool {
        self.limit.fetch_add(u64::from(n), Ordering::AcqRel);
        self.starved.swap(false, Ordering::AcqRel)
    }

    /// Stand-in: the shortfall to ask for, once.
    pub fn take_want(&self) -> u32 {
        self.granted
            .as_ref()
            .map_or(0, |g| g.wanted.swap(0, Ordering::AcqRel))
    }

    /// Stand-in: (credit granted so far, credit taken so far); granted minus taken is the
    /// credit not in use, and a pair that has not moved tells idle credit from credit in use.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.limit.load(Ordering::Acquire),
            self.unacked.load(Ordering::Acquire),
        )
    }

    /// Stand-in: take back up to `n` of the unused credit (to return it), without starving.
    pub fn take_back(&self, n: u32) -> u32 {
        self.take(u64::from(n)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `asks` was told since the last look.
    async fn told(asks: &Notify) -> bool {
        tokio::select! {
            biased;
            _ = asks.notified() => true,
            _ = std::future::ready(()) => false,
        }
    }

    #[tokio::test]
    async fn a_stand_in_pool_spends_only_what_was_granted_and_asks_once_per_shortfall() {
        let asks = Arc::new(Notify::new());
        let p = ChannelLimit::granted(asks.clone());
        // Nothing granted: nothing to take (0 is no credit, not "no limit"); asked once.
        assert_eq!(p.acquire(4), 0);
        assert!(told(&asks).await);
        assert_eq!(p.acquire(6), 0);
        assert!(!told(&asks).await, "one ask per shortfall");
        assert_eq!(p.take_want(), 6);
        assert_eq!(p.take_want(), 0);
        // A grant clears the mark: the next shortfall asks again.
        assert!(p.grant(5), "a queue waited");
        assert_eq!(p.acquire(3), 3);
        assert_eq!(p.acquire(5), 2);
        assert!(told(&asks).await);
        assert_eq!(p.take_want(), 3);
        // What a dispatch left comes back; idle credit can be taken back to return it.
        p.release(2);
        assert_eq!(p.counts(), (5, 3));
        assert_eq!(p.take_back(10), 2);
        assert_eq!(p.counts(), (5, 5));
        assert_eq!(p.take_back(10), 0);
        assert!(!told(&asks).await, "taking back is not a shortfall");
    }

    #[test]
    fn a_real_pool_counts_forced_deliveries_against_a_later_limit() {
        let p = ChannelLimit::default();
        assert_eq!(p.acquire(7), 7, "no limit");
        p.release(7);
        p.force(3);
        p.set_limit(3);
        assert_eq!(p.acquire(1), 0);
        assert!(p.release(1), "the short acquire marked it starved");
        assert_eq!(p.acquire(2), 1);
    }
}
