//! What makes publishes and acks on classic queues durable, decided here and not by the
//! connection: a persistent message routed to durable queues is written once and referenced
//! by each durable queue's index entry (the queues share it by reference count); an ack in a
//! transaction deletes its index entry in the same write as the transaction's publishes. A
//! `Batch` gathers the rows of one flush, or of one transaction, for one synced request.

use std::sync::Arc;

use super::message::{Message, Persisted};
use super::queue::QueueHandle;
use crate::store::{Done, Op, Store};

#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    /// Make `msg` durable in the durable queues among `targets`, if it is persistent.
    pub fn publish(&mut self, store: &Store, msg: &mut Message, targets: &[QueueHandle]) {
        let durable = targets.iter().filter(|q| q.store.is_some()).count() as u32;
        if durable == 0 || !msg.persistent {
            return;
        }
        let id = store.next_message_id();
        let size = msg.body.len() as u32;
        self.ops.push(Op::PutMessage {
            id,
            msg: msg.to_stored(),
        });
        for q in targets.iter().filter(|q| q.store.is_some()) {
            self.ops.push(Op::Enqueue {
                queue: q.id,
                msg: id,
                size,
            });
        }
        msg.stored = Some(Arc::new(Persisted::new(id, size, durable)));
    }

    /// A delivery of message `stored` (its store id) from `queue`, settled in a transaction.
    pub fn settle(&mut self, queue: &QueueHandle, stored: Option<u64>) {
        if let (Some(id), true) = (stored, queue.store.is_some()) {
            self.ops.push(Op::Dequeue {
                queue: queue.id,
                msg: id,
            });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Submit the rows as one synced write; `done` runs once they are on disk (or not).
    pub fn submit(&mut self, store: &Store, done: Done) {
        store.submit(std::mem::take(&mut self.ops), true, Some(done));
    }
}
