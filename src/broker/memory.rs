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
        if self.limit != 0 && now > self.limit {
            self.alarm.send_if_modified(|on| {
                if *on {
                    return false;
                }
                tracing::warn!(
                    used = now,
                    limit = self.limit,
                    "memory high watermark reached: blocking publishers"
                );
                *on = true;
                true
            });
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
        let now = before.saturating_sub(n);
        if now <= self.limit {
            self.alarm.send_if_modified(|on| {
                if !*on {
                    return false;
                }
                tracing::info!(
                    used = now,
                    limit = self.limit,
                    "memory alarm cleared: unblocking publishers"
                );
                *on = false;
                true
            });
        }
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
}
