//! A message as queues hold it: the names it was published with, its raw (byte-exact)
//! properties and its body, all `Bytes` that share the publisher's read buffer. One `Arc` is
//! shared by every queue it was routed to.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;

use crate::protocol::FieldTable;
use crate::store::StoredMessage;

#[derive(Debug, Clone, Default)]
pub struct Message {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    /// Property flags and property list exactly as the publisher sent them.
    pub properties: Bytes,
    pub body: Bytes,
    /// delivery_mode 2: the publisher asked for the message to be written to disk.
    pub persistent: bool,
    /// Set when the message was written to the store (persistent, to durable queues).
    pub stored: Option<Arc<Persisted>>,
}

/// A message row in the store, shared by the durable queues that hold it: the last queue to
/// let go of it deletes the row.
#[derive(Debug)]
pub struct Persisted {
    pub id: u64,
    /// Body size, for queue byte limits while the body is only on disk.
    pub size: u32,
    refs: AtomicU32,
}

impl Persisted {
    pub fn new(id: u64, size: u32, refs: u32) -> Self {
        Persisted {
            id,
            size,
            refs: AtomicU32::new(refs),
        }
    }

    /// A queue takes the message again; true if no queue held it (its row is being deleted).
    pub fn acquire(&self) -> bool {
        self.refs.fetch_add(1, Ordering::AcqRel) == 0
    }

    /// One queue is done with the message; true if it was the last.
    pub fn release(&self) -> bool {
        self.refs.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

impl Message {
    /// The header table, parsed on demand (only headers exchanges need it).
    pub fn headers(&self) -> Option<FieldTable> {
        crate::protocol::properties::headers(&self.properties)
    }

    pub fn from_stored(m: StoredMessage, stored: Option<Arc<Persisted>>) -> Self {
        Message {
            exchange: m.exchange,
            routing_key: m.routing_key,
            properties: m.properties,
            body: m.body,
            // Only persistent messages are ever stored.
            persistent: true,
            stored,
        }
    }

    pub fn to_stored(&self) -> StoredMessage {
        StoredMessage {
            exchange: self.exchange.clone(),
            routing_key: self.routing_key.clone(),
            properties: self.properties.clone(),
            body: self.body.clone(),
        }
    }

    /// Bytes this message accounts for in a queue (for the memory alarm): its buffers plus a
    /// fixed allowance for the bookkeeping around them.
    pub fn weight(&self) -> usize {
        self.body.len() + self.properties.len() + self.routing_key.len() + self.exchange.len() + 128
    }
}
