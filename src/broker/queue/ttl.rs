//! Time in a queue: message TTLs (x-message-ttl and the expiration property; the shorter
//! wins) and queue expiry (x-expires). As in RabbitMQ, expired messages leave from the head,
//! and a requeued message keeps its deadline. Expired messages are dropped (there is no
//! dead-lettering yet).

use std::time::{Duration, Instant};

use super::{Queue, Slot};
use crate::broker::message::Message;
use crate::protocol::properties;

/// tokio's sleep for an optional deadline (never, when None; callers guard the branch).
pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Queue {
    /// The deadline of a message enqueued at `now`.
    pub(super) fn deadline(&self, msg: &Message, now: Instant) -> Option<Instant> {
        let own = properties::expiration_ms(&msg.properties);
        let ttl = match (self.args.message_ttl, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ttl.map(|ms| now + Duration::from_millis(ms))
    }

    /// Drop the expired messages at the head.
    pub(super) fn expire_head(&mut self, now: Instant) {
        while self
            .ready
            .front()
            .and_then(Slot::expires)
            .is_some_and(|at| at <= now)
        {
            let Some(slot) = self.ready.pop_front() else {
                break;
            };
            self.ready_bytes -= slot.body_len();
            self.drop_slot(slot);
        }
    }

    /// When the queue must wake by itself: the head's deadline, or x-expires running out.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        let head = self.ready.front().and_then(Slot::expires);
        let unused = self
            .args
            .expires
            .filter(|_| self.consumers.is_empty())
            .map(|ms| self.last_used + Duration::from_millis(ms));
        match (head, unused) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// x-expires: no consumer, and no get or declare, for that long.
    pub(super) fn unused_for_too_long(&self, now: Instant) -> bool {
        self.args.expires.is_some_and(|ms| {
            self.consumers.is_empty() && now >= self.last_used + Duration::from_millis(ms)
        })
    }
}
