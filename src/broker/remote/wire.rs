//! What nodes say to each other about queues: plain data, encoded with postcard into the
//! node link's forward frames. Requests carry a number the answer repeats.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::broker::ids::{ChannelId, ConsumerId};
use crate::broker::message::Message;
use crate::broker::queue::Entry;
use crate::error::Error;
use crate::protocol::FieldTable;

/// A queue as both nodes name it: the home node checks the id, so a queue deleted and
/// declared again under the same name is not taken for the old one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueueRef {
    pub vhost: String,
    pub name: String,
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireMsg {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub properties: Bytes,
    pub body: Bytes,
    pub persistent: bool,
}

impl WireMsg {
    pub fn of(m: &Message) -> WireMsg {
        WireMsg {
            exchange: m.exchange.clone(),
            routing_key: m.routing_key.clone(),
            properties: m.properties.clone(),
            body: m.body.clone(),
            persistent: m.persistent,
        }
    }

    pub fn into_message(self) -> Message {
        Message {
            exchange: self.exchange,
            routing_key: self.routing_key,
            properties: self.properties,
            body: self.body,
            persistent: self.persistent,
            stored: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireEntry {
    pub seq: u64,
    pub redelivered: bool,
    pub expires_ms: Option<u64>,
    pub msg: WireMsg,
}

impl WireEntry {
    pub fn of(e: &Entry) -> WireEntry {
        WireEntry {
            seq: e.seq,
            redelivered: e.redelivered,
            expires_ms: e.expires_ms,
            msg: WireMsg::of(&e.msg),
        }
    }

    pub fn into_entry(self) -> Entry {
        Entry {
            seq: self.seq,
            msg: std::sync::Arc::new(self.msg.into_message()),
            redelivered: self.redelivered,
            expires_ms: self.expires_ms,
        }
    }
}

pub use crate::broker::queue::Settle;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Fwd {
    // To the queue's home node.
    /// Every publish is answered (`Taken`), confirm-mode or not: the sender counts what is
    /// in flight by it.
    Publish {
        req: u64,
        queue: QueueRef,
        msgs: Vec<WireMsg>,
    },
    Get {
        req: u64,
        queue: QueueRef,
        channel: ChannelId,
        no_ack: bool,
    },
    Settle {
        queue: QueueRef,
        how: Settle,
        seqs: Vec<u64>,
    },
    ChannelClosed {
        queue: QueueRef,
        channel: ChannelId,
    },
    Stat {
        req: u64,
        queue: QueueRef,
    },
    Purge {
        req: u64,
        queue: QueueRef,
    },
    Delete {
        req: u64,
        queue: QueueRef,
        if_unused: bool,
        if_empty: bool,
    },
    Consume {
        req: u64,
        queue: QueueRef,
        consumer: ConsumerId,
        no_ack: bool,
        exclusive: bool,
        prefetch: u32,
        arguments: FieldTable,
        /// The consumer's first credit limit (see `ConsumerFlow`).
        limit: u64,
        /// Its channel has a global prefetch: the queue draws on credit the channel's node
        /// grants (`PoolGrant`), asking for more with `PoolWant`.
        pooled: bool,
    },
    /// Credit from the pool of a channel with a global prefetch, for its consumers here.
    PoolGrant {
        channel: ChannelId,
        n: u32,
    },
    /// The consumer's connection wrote deliveries out: the queue may send up to `limit`.
    Credit {
        queue: QueueRef,
        consumer: ConsumerId,
        limit: u64,
    },
    Cancel {
        req: u64,
        queue: QueueRef,
        consumer: ConsumerId,
    },
    /// Deliveries the consumer's connection could not hand out, back unchanged.
    Return {
        queue: QueueRef,
        consumer: ConsumerId,
        entries: Vec<WireEntry>,
        no_ack: bool,
    },
    // Back from the home node.
    /// The channel's consumers here are short of this much pool credit.
    PoolWant {
        channel: ChannelId,
        want: u32,
    },
    // Either way.
    /// The sender's own memory and disk alarms (see `alarms`).
    Alarms {
        memory: bool,
        disk: bool,
    },
    /// Pool credit granted and left unused for a while, given back.
    PoolReturn {
        channel: ChannelId,
        n: u32,
    },
    Consumed {
        req: u64,
        result: Result<(), Error>,
    },
    Cancelled {
        req: u64,
    },
    Deliver {
        queue: QueueRef,
        consumer: ConsumerId,
        no_ack: bool,
        entries: Vec<WireEntry>,
    },
    /// The queue went away under the consumer (a server-sent basic.cancel).
    ConsumerGone {
        consumer: ConsumerId,
    },
    /// The publishes except those at `refused` (positions) are in the queue, and on disk
    /// where they had to be.
    /// `lost`: the queue never applied the batch (see `ConnEvent::Taken`).
    Taken {
        req: u64,
        refused: Vec<u32>,
        lost: bool,
    },
    Got {
        req: u64,
        got: Option<(WireEntry, u32)>,
    },
    Counted {
        req: u64,
        messages: u32,
        consumers: u32,
    },
    Purged {
        req: u64,
        messages: u32,
    },
    Deleted {
        req: u64,
        result: Result<u32, Error>,
    },
    /// The queue is not on the home node (deleted meanwhile): the request has no answer.
    Gone {
        req: u64,
    },
    /// A transaction's part for the queue: publishes and settlements applied together
    /// (`QueueCmd::Commit`), answered as a publish (`Taken`).
    Commit {
        req: u64,
        queue: QueueRef,
        msgs: Vec<WireMsg>,
        settles: crate::broker::queue::Settles,
    },
    /// A quorum queue's channel is used through this member from now on (`QOp::Move`).
    /// Last, so that the variants before keep their numbers on the wire.
    Move {
        queue: QueueRef,
        channel: ChannelId,
    },
}

impl Fwd {
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_stdvec(self).expect("forwarded work encodes"))
    }

    pub fn decode(bytes: &[u8]) -> Result<Fwd, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::ids::ConnId;

    #[test]
    fn forwarded_work_round_trips() {
        let queue = QueueRef {
            vhost: "/".into(),
            name: "q".into(),
            id: 7,
        };
        let msg = WireMsg {
            exchange: Bytes::from_static(b"x"),
            routing_key: Bytes::from_static(b"k"),
            properties: Bytes::from_static(b"\x80\x00\x02"),
            body: Bytes::from(vec![0u8; 3000]),
            persistent: true,
        };
        let channel = ChannelId {
            conn: ConnId { node: 2, seq: 9 },
            channel: 3,
        };
        let entry = WireEntry {
            seq: 11,
            redelivered: true,
            expires_ms: Some(5),
            msg: msg.clone(),
        };
        let all = [
            Fwd::Publish {
                req: 1,
                queue: queue.clone(),
                msgs: vec![msg.clone(), msg],
            },
            Fwd::Get {
                req: 2,
                queue: queue.clone(),
                channel,
                no_ack: false,
            },
            Fwd::Settle {
                queue: queue.clone(),
                how: Settle::Requeue,
                seqs: vec![1, 5, 9],
            },
            Fwd::ChannelClosed {
                queue: queue.clone(),
                channel,
            },
            Fwd::Move { queue, channel },
            Fwd::Taken {
                req: 1,
                refused: vec![0],
                lost: false,
            },
            Fwd::Got {
                req: 2,
                got: Some((entry, 4)),
            },
            Fwd::Deleted {
                req: 3,
                result: Err(Error::precondition("queue 'q' in vhost '/' is in use")),
            },
            Fwd::Gone { req: 4 },
            Fwd::PoolWant { channel, want: 7 },
            Fwd::PoolGrant { channel, n: 5 },
            Fwd::PoolReturn { channel, n: 2 },
            Fwd::Alarms {
                memory: true,
                disk: false,
            },
        ];
        for f in all {
            assert_eq!(Fwd::decode(&f.encode()).unwrap(), f);
        }
        assert!(Fwd::decode(b"\xff\xff").is_err());
    }
}
