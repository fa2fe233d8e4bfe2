//! Delivery credit for a quorum queue's no-ack consumers, in the log. A no-ack consumer
//! has no unacked deliveries for a prefetch to count, so without credit the state would
//! hand it the whole ready backlog at once: every body read back into memory, and all of
//! it settled, lost if its connection goes before writing it out. Its delivery limit is
//! therefore replicated: the checkout carries the first one (`QOp::Checkout`'s prefetch,
//! for a no-ack consumer), and the node that serves the consumer logs a higher one
//! (`QOp::Credit`) as the consumer's connection writes deliveries out (its `ConsumerFlow`).
//!
//! The logged limit runs `AHEAD` of the flow's: a credit that came back through the log
//! only once the connection had written nearly all of the last one would hold deliveries
//! to one window per commit. A no-ack consumer thus has up to `WINDOW` deliveries on their
//! way (as many as an ack-mode consumer without a prefetch, `DEFAULT_PREFETCH`).
//!
//! Invariant: a limit logged for a consumer is its flow's limit less the `base` it had at
//! the checkout, plus `AHEAD`, so it starts at `WINDOW` at most and only grows; every
//! replica applies the same limits, in log order.

use super::{DEFAULT_PREFETCH, QOp, Replica, Waiter};
use crate::broker::consumer::CONSUMER_CREDIT;
use crate::broker::ids::ConsumerId;
use crate::broker::queue::ConsumerSpec;

/// Deliveries a no-ack consumer may have on their way.
const WINDOW: u64 = DEFAULT_PREFETCH as u64;
/// How far the logged limit runs ahead of the connection's.
const AHEAD: u64 = WINDOW - CONSUMER_CREDIT as u64;

/// A no-ack consumer this node serves.
#[derive(Debug)]
pub(super) struct Credited {
    /// Its flow's limit at the checkout, less the first credit.
    base: u64,
    /// The last limit logged.
    logged: u64,
    /// The state ran it out of credit with messages ready: log more as soon as there is.
    starved: bool,
}

/// A no-ack consumer's first delivery limit (carried by its checkout), and its record.
pub(super) fn first(spec: &ConsumerSpec) -> (u32, Credited) {
    let limit = spec.flow.limit();
    let base = limit.saturating_sub(u64::from(CONSUMER_CREDIT));
    let first = (limit - base + AHEAD) as u32;
    let c = Credited {
        base,
        logged: u64::from(first),
        starved: false,
    };
    (first, c)
}

impl Replica {
    /// The state ran a consumer out of credit: its flow wakes this replica when its
    /// connection grants more (and the grant may have come already).
    pub(super) fn starved(&mut self, consumer: &ConsumerId) {
        if let (Some(c), Some(spec)) = (
            self.credited.get_mut(consumer),
            self.consumers.get(consumer),
        ) {
            spec.flow.starve();
            c.starved = true;
        }
    }

    /// Log the credit this node's no-ack consumers were granted: for one that ran out, as
    /// soon as any came; else once a quarter of a window came, so that deliveries do not
    /// wait.
    pub(super) async fn grant_credit(&mut self) {
        let consumers = &self.consumers;
        let mut due = Vec::new();
        self.credited.retain(|id, c| {
            let Some(spec) = consumers.get(id) else {
                return false;
            };
            let limit = spec.flow.limit().saturating_sub(c.base) + AHEAD;
            if limit > c.logged && (c.starved || limit >= c.logged + WINDOW / 4) {
                c.logged = limit;
                c.starved = false;
                due.push((id.clone(), limit));
            }
            true
        });
        for (consumer, limit) in due {
            self.propose_op(QOp::Credit { consumer, limit }, Waiter::Nothing)
                .await;
        }
    }
}
