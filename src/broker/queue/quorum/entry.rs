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
}

impl QEntry {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a queue entry encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<QEntry, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// A message as a quorum queue's state holds it: in memory (its bytes are also in the log,
/// or in the snapshot, where it is written as the log has it).
#[derive(Debug, Clone)]
pub struct QBody(pub Arc<Message>);

impl Serialize for QBody {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireMsg::of(&self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for QBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<QBody, D::Error> {
        WireMsg::deserialize(d).map(|m| QBody(Arc::new(m.into_message())))
    }
}

impl Payload for QBody {
    fn size(&self) -> u32 {
        self.0.body.len() as u32
    }

    fn weight(&self) -> usize {
        self.0.weight().max(PAGED_WEIGHT)
    }

    fn ttl_ms(&self) -> Option<u64> {
        properties::expiration_ms(&self.0.properties)
    }

    /// Not in the message store: a quorum queue's bodies are in its log.
    fn stored(&self) -> bool {
        false
    }

    fn page_out(&mut self) {}
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
                consumer,
                seqs: vec![1, 2],
            },
            QOp::NodeDown(3),
            QOp::Tick,
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
