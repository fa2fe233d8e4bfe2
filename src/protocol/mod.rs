//! The wire format: the only module that imports `amq_protocol`. Frames are split off the read
//! buffer without copying bodies (`codec`), method + header + body frames are assembled into a
//! publish (`content`), and outbound frames are written straight into a connection's write
//! buffer (`encode`), bodies split by the negotiated frame_max.

pub mod codec;
pub mod content;
pub mod encode;
pub mod properties;
pub mod sasl;
pub mod table;

pub use amq_protocol::protocol::{
    AMQPClass, access, basic, channel, confirm, connection, exchange, queue, tx,
};
pub use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

/// The eight bytes a 0-9-1 client opens with, and what a broker answers a wrong header with.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Smallest frame_max a peer may negotiate (AMQP 0-9-1 §4.2.1).
pub const FRAME_MIN_SIZE: u32 = 4096;

/// Frame header (type, channel, size) plus the frame-end octet.
pub const FRAME_OVERHEAD: usize = 8;

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;

/// Class and method ids of a method, for channel/connection close replies.
pub fn method_ids(class: &AMQPClass) -> (u16, u16) {
    (class.get_amqp_class_id(), class.get_amqp_method_id())
}
