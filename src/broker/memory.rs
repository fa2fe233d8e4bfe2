//! The memory alarm: bytes of messages held by queues (and, for quorum queues, the Raft log
//! in memory and proposals in flight), against the configured high watermark.
//! Past it, connections that publish are blocked (they stop being read and, if they asked
//! for it, get connection.blocked) until consumers have drained enough, as RabbitMQ does.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;

pub struct MemoryMonitor {
    used: AtomicUsize,
    limit: usize,
    alarm: watch::Sender<bool>,
}

impl MemoryMonitor {
    /// `limit` in bytes; 0 disables the alarm.
    pub fn new(limit: usize) -> Self {
        MemoryMonitor {
            used: AtomicUsize::new(0),
            limit,
            alarm: watch::Sender::new(false),
        }
    }

    pub fn add(&self, n: usize) {
        let now = self.used.fetch_add(n, Ordering::AcqRel) + n;
        if self.limit != 0 && now > self.limit && !self.alarmed() {
            self.reconcile();
        }
    }

    pub fn sub(&self, n: usize) {
        // Saturating: a miscount must not wrap and leave the alarm on for good.
        let before = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            })
            .unwrap_or(0);
        if before.saturating_sub(n) <= self.limit && self.alarmed() {
            self.reconcile();
        }
    }

    /// Set the alarm from the count as it is now, under the watch's lock. Deciding from
    /// the value each add or sub saw left the alarm on for good when a sub that went below
    /// the limit ran between another task's add past it and that add setting the alarm:
    /// the sub saw no alarm to clear, and publishers stayed blocked with nothing to drain.
    /// Now whichever reconciles last reads both changes (the lock orders them), and an add
    /// or sub that sees the alarm already right has nothing to do.
    fn reconcile(&self) {
        self.alarm.send_if_modified(|on| {
            let used = self.used.load(Ordering::Acquire);
            let over = used > self.limit;
            if *on == over {
                return false;
            }
            match over {
                true => tracing::warn!(
                    used,
                    limit = self.limit,
                    "memory high watermark reached: blocking publishers"
                ),
                false => tracing::info!(
                    used,
                    limit = self.limit,
                    "memory alarm cleared: unblocking publishers"
                ),
            }
            *on = over;
            true
        });
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Is the alarm on now?
    pub fn alarmed(&self) -> bool {
        *self.alarm.borrow()
    }

    /// Watch the alarm: true while publishers must be blocked.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.alarm.subscribe()
    }
}

/// The Raft groups' log mirrors count against the alarm too.
impl crate::cluster::Gauge for MemoryMonitor {
    fn add(&self, n: usize) {
        MemoryMonitor::add(self, n);
    }

    fn sub(&self, n: usize) {
        MemoryMonitor::sub(self, n);
    }
}

/// Total memory of this machine, for the default watermark (a fraction of it, as RabbitMQ).
pub fn total_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_sets_past_the_limit_and_clears_below() {
        let m = MemoryMonitor::new(100);
        let rx = m.subscribe();
        m.add(60);
        assert!(!*rx.borrow());
        m.add(60);
        assert!(*rx.borrow());
        m.sub(10);
        assert!(*rx.borrow());
        m.sub(10);
        assert!(!*rx.borrow());
        assert_eq!(m.used(), 100);
    }

    /// An add past the limit on one thread and a sub back to it on another, at once: the
    /// alarm must end off (the count is at the limit), whatever the interleaving. Before
    /// the fix, a sub between the add's count and its setting the alarm left it on.
    #[test]
    fn racing_add_and_sub_leave_the_alarm_as_the_count_says() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;
        // Both threads leave each wait within a few instructions of each other (a futex
        // barrier wakes them microseconds apart, and the race is nanoseconds wide).
        fn wait(arrived: &AtomicUsize, mine: &mut usize) {
            *mine += 1;
            arrived.fetch_add(1, Ordering::AcqRel);
            while arrived.load(Ordering::Acquire) < 2 * *mine {
                std::hint::spin_loop();
                std::thread::yield_now();
            }
        }
        let m = Arc::new(MemoryMonitor::new(100));
        m.add(100);
        let rounds = 100_000;
        let arrived = Arc::new(AtomicUsize::new(0));
        let sub = {
            let (m, arrived) = (m.clone(), arrived.clone());
            std::thread::spawn(move || {
                let mut mine = 0;
                for _ in 0..rounds {
                    wait(&arrived, &mut mine);
                    m.sub(20);
                    wait(&arrived, &mut mine);
                    wait(&arrived, &mut mine);
                }
            })
        };
        let (mut mine, mut stuck) = (0, 0);
        for _ in 0..rounds {
            wait(&arrived, &mut mine);
            m.add(20);
            wait(&arrived, &mut mine);
            // Both done: 100 + 20 - 20, at the limit.
            assert_eq!(m.used(), 100);
            if m.alarmed() {
                stuck += 1;
                m.sub(1);
                m.add(1);
            }
            wait(&arrived, &mut mine);
        }
        sub.join().unwrap();
        assert_eq!(
            stuck, 0,
            "the alarm stayed on at the limit in {stuck} rounds"
        );
    }
}
