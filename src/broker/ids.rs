//! Names for the parties a queue deals with, as plain data: a channel is (node, connection,
//! channel number) and a consumer is its channel plus its tag. Queue state keys everything by
//! these, never by pointer identity, so the same commands mean the same thing on every node.

use std::sync::Arc;

/// A connection, unique within its node for the node's lifetime.
pub type ConnId = u64;

/// A channel of a connection on a node (node 0 on a single node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId {
    pub node: u32,
    pub conn: ConnId,
    pub channel: u16,
}

/// One consumer: its channel and tag, and which consumer of that tag it is (a tag can be
/// reused after a cancel; deliveries still in flight to the old one must not be taken for the
/// new one's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConsumerId {
    pub channel: ChannelId,
    pub tag: Arc<str>,
    /// Counts the consumers created on the connection.
    pub serial: u64,
}
