//! The disk alarm: free space on the data directory's file system, against the configured
//! `disk_free_limit_bytes`, as RabbitMQ's `disk_free_limit`. Below it, connections that have
//! published persistent messages are blocked (they stop being read and, if they asked for it,
//! get connection.blocked "low on disk") until space returns; transient traffic goes on.
//! Keeping this headroom is what lets acks, deletes and compaction still be written, and so
//! give space back: a store that runs out completely cannot even record a purge.
//!
//! The check runs on a thread of its own (statvfs is a system call, kept off async workers),
//! every `disk_check_interval_ms`; the thread ends when the monitor is dropped.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::watch;

pub struct DiskMonitor {
    alarm: Arc<watch::Sender<bool>>,
    /// Dropping it stops the thread.
    _stop: mpsc::Sender<()>,
}

/// Bytes available to unprivileged writers on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

impl DiskMonitor {
    /// `limit` 0 disables the alarm (no thread).
    pub fn start(dir: &Path, limit: u64, interval: Duration) -> DiskMonitor {
        let alarm = Arc::new(watch::Sender::new(false));
        let (stop, stopped) = mpsc::channel();
        if limit > 0 {
            let dir = dir.to_path_buf();
            let tx = alarm.clone();
            // Decide once before serving anyone: a broker started on a full disk starts alarmed.
            check(&dir, limit, &tx);
            let spawned = std::thread::Builder::new()
                .name("warren-disk".into())
                .spawn(move || {
                    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval)
                    {
                        check(&dir, limit, &tx);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start the disk monitor: {e}");
            }
        }
        DiskMonitor { alarm, _stop: stop }
    }

    /// Watch the alarm: true while persistent publishers must be blocked.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.alarm.subscribe()
    }
}

fn check(dir: &Path, limit: u64, alarm: &watch::Sender<bool>) {
    let free = match free_bytes(dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot read free disk space: {e}");
            return;
        }
    };
    let low = free < limit;
    alarm.send_if_modified(|on| {
        if *on == low {
            return false;
        }
        if low {
            tracing::warn!(
                free,
                limit,
                "disk free space below disk_free_limit: blocking persistent publishers"
            );
        } else {
            tracing::info!(free, limit, "disk alarm cleared: unblocking publishers");
        }
        *on = low;
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_follows_free_space_against_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let tx = watch::Sender::new(false);
        check(dir.path(), free * 2, &tx);
        assert!(
            *tx.borrow(),
            "a limit above the free space raises the alarm"
        );
        check(dir.path(), 1, &tx);
        assert!(!*tx.borrow(), "a limit below it clears it");
        let off = DiskMonitor::start(dir.path(), 0, Duration::from_secs(1));
        assert!(!*off.subscribe().borrow());
        let on = DiskMonitor::start(dir.path(), u64::MAX, Duration::from_secs(3600));
        assert!(
            *on.subscribe().borrow(),
            "decided before the first interval"
        );
    }
}
