//! Names for the parties a queue deals with, as plain data: a connection is (node, number on
//! that node), a channel is its connection plus the channel number, and a consumer is its
//! channel plus its tag. Queue state and topology key everything by these, never by pointer
//! identity, so the same commands mean the same thing on every node.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A node of the cluster (0 on a single node).
pub type NodeId = u64;

/// A connection: unique in the cluster for its node's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnId {
    pub node: NodeId,
    /// Counts the node's connections.
    pub seq: u64,
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.node, self.seq)
    }
}

/// A channel of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChannelId {
    pub conn: ConnId,
    pub channel: u16,
}

/// One consumer: its channel and tag, and which consumer of that tag it is (a tag can be
/// reused after a cancel; deliveries still in flight to the old one must not be taken for the
/// new one's).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConsumerId {
    pub channel: ChannelId,
    pub tag: Arc<str>,
    /// Counts the consumers created on the connection.
    pub serial: u64,
}
