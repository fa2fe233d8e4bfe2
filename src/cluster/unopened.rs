//! Raft messages for groups not open on this node yet, kept a short while and stepped once
//! the group opens. A new quorum queue's first member campaigns (then appends) as soon as it
//! has applied the queue's metadata and opened its group, which is often before the other
//! members have done the same. Dropped, those messages cost the new group an election
//! timeout (a second) or a heartbeat round before its first commit, and its declare-ok waits
//! for that; kept, the group has a leader and a first commit within a few round trips.
//!
//! Invariants: bounded (groups, messages per group, bytes, age); a message is stepped at most
//! once, and only if the link session it came on is still that peer's (as `node.rs` drops
//! messages from a link that went down). Raft takes late or lost messages in its stride, so
//! stepping one late or never is safe.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::link::Session;

/// Groups with messages kept at once: more are dropped, as before.
const GROUPS: usize = 1024;
/// Messages kept per group: a campaign and the first appends and heartbeats.
const PER_GROUP: usize = 32;
/// How long messages wait for their group (a deleted group's never comes).
const KEPT_FOR: Duration = Duration::from_secs(3);
/// Larger messages (appends with many entries, snapshots) are not kept: the leader sends
/// them again once the group answers.
const MESSAGE_BYTES: usize = 64 << 10;
/// Bytes kept in all.
const BYTES: usize = 16 << 20;

/// A message as it arrived: its sender and the link session it came on.
#[derive(Debug, Clone, PartialEq)]
pub struct Early {
    pub from: u64,
    pub session: Session,
    pub msg: Bytes,
}

#[derive(Default)]
pub struct Unopened {
    groups: HashMap<u64, (Instant, Vec<Early>)>,
    bytes: usize,
}

impl Unopened {
    /// Keep a message for `group`, unless the bounds are reached.
    pub fn keep(&mut self, group: u64, early: Early, now: Instant) {
        let size = early.msg.len();
        if size > MESSAGE_BYTES
            || self.bytes + size > BYTES
            || (self.groups.len() >= GROUPS && !self.groups.contains_key(&group))
        {
            return;
        }
        let (_, kept) = self
            .groups
            .entry(group)
            .or_insert_with(|| (now, Vec::new()));
        if kept.len() < PER_GROUP {
            kept.push(early);
            self.bytes += size;
        }
    }

    /// What was kept for `group`, in arrival order (it opened).
    pub fn take(&mut self, group: u64) -> Vec<Early> {
        let kept = self
            .groups
            .remove(&group)
            .map(|(_, kept)| kept)
            .unwrap_or_default();
        self.bytes -= kept.iter().map(|e| e.msg.len()).sum::<usize>();
        kept
    }

    /// Forget groups whose first message is older than `KEPT_FOR`.
    pub fn expire(&mut self, now: Instant) {
        let bytes = &mut self.bytes;
        self.groups.retain(|_, (since, kept)| {
            let keep = now.duration_since(*since) < KEPT_FOR;
            if !keep {
                *bytes -= kept.iter().map(|e| e.msg.len()).sum::<usize>();
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn early(n: u8) -> Early {
        Early {
            from: 2,
            session: 1,
            msg: Bytes::from(vec![n]),
        }
    }

    #[test]
    fn kept_in_order_taken_once_and_bounded() {
        let t0 = Instant::now();
        let mut u = Unopened::default();
        for n in 0..40 {
            u.keep(7, early(n), t0);
        }
        let kept = u.take(7);
        assert_eq!(kept.len(), PER_GROUP);
        assert!(kept.iter().enumerate().all(|(i, e)| e.msg[0] == i as u8));
        assert!(u.take(7).is_empty(), "taken once");

        for g in 0..GROUPS as u64 + 5 {
            u.keep(g, early(0), t0);
        }
        assert_eq!(u.groups.len(), GROUPS);
        assert!(
            u.take(GROUPS as u64 + 1).is_empty(),
            "over the bound: dropped"
        );
    }

    #[test]
    fn large_messages_and_bytes_past_the_bound_are_not_kept() {
        let t0 = Instant::now();
        let mut u = Unopened::default();
        let big = |len: usize| Early {
            from: 2,
            session: 1,
            msg: Bytes::from(vec![0; len]),
        };
        u.keep(1, big(MESSAGE_BYTES + 1), t0);
        assert!(u.take(1).is_empty(), "a snapshot-sized message is not kept");
        let n = BYTES / MESSAGE_BYTES;
        for g in 0..n as u64 + 3 {
            u.keep(g, big(MESSAGE_BYTES), t0);
        }
        assert_eq!(u.bytes, n * MESSAGE_BYTES);
        assert!(u.take(n as u64).is_empty(), "past the byte bound: dropped");
        assert_eq!(u.take(0).len(), 1);
        assert_eq!(
            u.bytes,
            (n - 1) * MESSAGE_BYTES,
            "taking gives the bytes back"
        );
        u.expire(t0 + KEPT_FOR);
        assert_eq!(u.bytes, 0, "expiring gives the bytes back");
    }

    #[test]
    fn old_groups_expire() {
        let t0 = Instant::now();
        let mut u = Unopened::default();
        u.keep(1, early(1), t0);
        u.keep(2, early(2), t0 + Duration::from_secs(2));
        u.expire(t0 + KEPT_FOR);
        assert!(u.take(1).is_empty());
        assert_eq!(u.take(2), vec![early(2)]);
    }
}
