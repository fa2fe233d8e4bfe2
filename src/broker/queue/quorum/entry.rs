//! What a quorum queue's Raft log holds: one `QEntry` per command, plain data encoded with
//! postcard. Every replica applies the same entries in the same order to its `QueueState`,
//! so an entry carries everything the state reads: the proposer's clock (`at_ms`) and whole
//! messages (the log is where their bodies are kept).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::broker::ids::{ChannelId, ConsumerId, NodeId};
use crate::broker::message::Message;
use crate::broker::queue::state::{PAGED_WEIGHT, Payload};
use crate::broker::remote::wire::WireMsg;
use crate::protocol::properties;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QEntry {
    /// The proposing node and its request number: an entry proposed again after a leader
    /// change is applied once (req 0: applying it twice is harmless, never skipped).
    pub origin: NodeId,
    pub req: u64,
    /// The proposer's wall clock, the only time the state sees.
    pub at_ms: u64,
    pub op: QOp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QOp {
    /// Publishes of one replica run (`run`: random per replica start), numbered from 1 in
    /// the order they were made: applied only in that order, so a batch lost and proposed
    /// again never lands after a later one (a later one that arrives first is dropped, and
    /// proposed again after it).
    Enqueue {
        run: u64,
        seq: u64,
        msgs: Vec<WireMsg>,
    },
    /// `prefetch`: an ack-mode consumer's; a no-ack one's first delivery limit (`credit`).
    Checkout {
        consumer: ConsumerId,
        no_ack: bool,
        prefetch: u32,
    },
    Cancel(ConsumerId),
    Get {
        channel: ChannelId,
        no_ack: bool,
    },
    Ack(Vec<u64>),
    Requeue(Vec<u64>),
    Discard(Vec<u64>),
    /// Deliveries a connection could not hand out, back unchanged.
    Return {
        consumer: ConsumerId,
        seqs: Vec<u64>,
    },
    ChannelDown(ChannelId),
    /// A node is gone: its consumers go and what they held is requeued.
    NodeDown(NodeId),
    Purge,
    Delete,
    /// Time passed (proposed by the leader): TTLs and x-expires.
    Tick,
    /// A transaction's part: its publishes (numbered in the replica run's publish order, as
    /// `Enqueue`) and its settlements, applied together. Last, so that older logs decode.
    Commit {
        run: u64,
        seq: u64,
        msgs: Vec<WireMsg>,
        settles: crate::broker::queue::Settles,
    },
    /// A channel is used through the proposer from now on (its node left the members, or
    /// moved to another): what it had through the old route ends as if it had closed.
    Move(ChannelId),
    /// A no-ack consumer may be sent deliveries while fewer than `limit` were sent to it
    /// since its checkout (`credit`).
    Credit {
        consumer: ConsumerId,
        limit: u64,
    },
}

impl QEntry {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a queue entry encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<QEntry, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// Where a message's body is: the log entry that enqueued it, and its place in the entry's
/// batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct At {
    pub index: u64,
    pub pos: u32,
}

/// A message as a quorum queue's state holds it: where it is in the log, and what the state
/// reads of it (size, expiry). The message itself is held in memory while the queue is
/// within its memory budget; past it, and after a snapshot is restored, it is read back
/// from the log when delivered (the log keeps the entry while the message lives: a body is
/// stored once per node). A snapshot holds the position only.
#[derive(Debug, Clone)]
pub struct QBody {
    pub at: At,
    size: u32,
    ttl_ms: Option<u64>,
    pub msg: Option<Arc<Message>>,
}

impl QBody {
    pub fn new(at: At, msg: Message) -> QBody {
        QBody {
            at,
            size: msg.body.len() as u32,
            ttl_ms: properties::expiration_ms(&msg.properties),
            msg: Some(Arc::new(msg)),
        }
    }
}

/// What a snapshot holds of a message.
#[derive(Serialize, Deserialize)]
struct Placed {
    at: At,
    size: u32,
    ttl_ms: Option<u64>,
}

impl Serialize for QBody {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (at, size, ttl_ms) = (self.at, self.size, self.ttl_ms);
        Placed { at, size, ttl_ms }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for QBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<QBody, D::Error> {
        let p = Placed::deserialize(d)?;
        Ok(QBody {
            at: p.at,
            size: p.size,
            ttl_ms: p.ttl_ms,
            msg: None,
        })
    }
}

impl Payload for QBody {
    fn size(&self) -> u32 {
        self.size
    }

    fn weight(&self) -> usize {
        self.msg
            .as_ref()
            .map_or(PAGED_WEIGHT, |m| m.weight().max(PAGED_WEIGHT))
    }

    fn ttl_ms(&self) -> Option<u64> {
        self.ttl_ms
    }

    /// In the log, which keeps it while the message lives.
    fn stored(&self) -> bool {
        true
    }

    fn page_out(&mut self) {
        self.msg = None;
    }
}

/// The messages a stored entry's data enqueues (None: it enqueues none).
pub fn messages_of(data: &[u8]) -> Option<Vec<WireMsg>> {
    match QEntry::decode(data).ok()?.op {
        QOp::Enqueue { msgs, .. } | QOp::Commit { msgs, .. } => Some(msgs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::ids::ConnId;
    use bytes::Bytes;

    #[test]
    fn entries_round_trip() {
        let channel = ChannelId {
            conn: ConnId { node: 3, seq: 8 },
            channel: 2,
        };
        let consumer = ConsumerId {
            channel,
            tag: "c".into(),
            serial: 1,
        };
        let msg = WireMsg {
            exchange: Bytes::new(),
            routing_key: Bytes::from_static(b"q"),
            properties: Bytes::from_static(b"\x00\x00"),
            body: Bytes::from_static(b"hello"),
            persistent: true,
        };
        for op in [
            QOp::Enqueue {
                run: 5,
                seq: 1,
                msgs: vec![msg],
            },
            QOp::Checkout {
                consumer: consumer.clone(),
                no_ack: false,
                prefetch: 10,
            },
            QOp::Return {
                consumer: consumer.clone(),
                seqs: vec![1, 2],
            },
            QOp::Credit {
                consumer,
                limit: 1 << 40,
            },
            QOp::NodeDown(3),
            QOp::Tick,
            QOp::Move(channel),
        ] {
            let e = QEntry {
                origin: 2,
                req: 7,
                at_ms: 99,
                op,
            };
            assert_eq!(QEntry::decode(&e.encode()).unwrap(), e);
        }
    }
}
