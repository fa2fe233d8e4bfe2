//! Routing: each exchange type compiles its bindings into an immutable matcher that publishers
//! read without locks (the vhost swaps in a new one on every topology change).

pub mod direct;
pub mod fanout;
pub mod headers;
pub mod topic;

use std::sync::Arc;

use crate::broker::queue::QueueHandle;

/// Where a binding sends a message: a queue (resolved to its handle when the matcher is built,
/// so publishing needs no lookup) or another exchange (exchange-to-exchange bindings).
#[derive(Clone, Debug)]
pub enum Dest {
    Queue(QueueHandle),
    Exchange(Arc<str>),
}
