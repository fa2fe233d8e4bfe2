//! A message as queues hold it: the names it was published with, its raw (byte-exact)
//! properties and its body, all `Bytes` that share the publisher's read buffer. One `Arc` is
//! shared by every queue it was routed to.

use bytes::Bytes;

use crate::protocol::FieldTable;

#[derive(Debug, Clone)]
pub struct Message {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    /// Property flags and property list exactly as the publisher sent them.
    pub properties: Bytes,
    pub body: Bytes,
}

impl Message {
    /// The header table, parsed on demand (only headers exchanges need it).
    pub fn headers(&self) -> Option<FieldTable> {
        crate::protocol::properties::headers(&self.properties)
    }

    /// delivery_mode 2: the publisher asked for the message to be written to disk.
    pub fn persistent(&self) -> bool {
        crate::protocol::properties::delivery_mode(&self.properties) == Some(2)
    }
}
