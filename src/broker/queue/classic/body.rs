//! The classic queue's message handle: the message in memory, or (paged out, or recovered
//! and not read yet) only the handle of its store row; what `QueueState` reads of it.

use std::sync::Arc;

use crate::broker::message::{Message, Persisted};
use crate::broker::queue::state::{PAGED_WEIGHT, Payload};
use crate::protocol::properties;

/// A message as a classic queue holds it: in memory, or only the handle of its store row.
#[derive(Debug, Clone)]
pub enum Body {
    Mem(Arc<Message>),
    Disk(Arc<Persisted>),
}

impl Body {
    pub(super) fn persisted(&self) -> Option<&Arc<Persisted>> {
        match self {
            Body::Mem(m) => m.stored.as_ref(),
            Body::Disk(p) => Some(p),
        }
    }
}

impl Payload for Body {
    fn size(&self) -> u32 {
        match self {
            Body::Mem(m) => m.body.len() as u32,
            Body::Disk(p) => p.size,
        }
    }

    fn weight(&self) -> usize {
        match self {
            Body::Mem(m) => m.weight(),
            Body::Disk(_) => PAGED_WEIGHT,
        }
    }

    fn ttl_ms(&self) -> Option<u64> {
        match self {
            Body::Mem(m) => properties::expiration_ms(&m.properties),
            Body::Disk(_) => None,
        }
    }

    fn stored(&self) -> bool {
        self.persisted().is_some()
    }

    fn page_out(&mut self) {
        if let Some(p) = self.persisted().cloned() {
            *self = Body::Disk(p);
        }
    }
}
