//! Reading the content-header properties that the broker itself needs, without rebuilding
//! them: the raw bytes are what consumers receive.

use amq_protocol::protocol::basic::parse_properties;

use super::FieldTable;

/// Parse the raw properties once: None if they are malformed (such a message would break
/// every consumer), else the delivery mode they carry.
pub fn checked_delivery_mode(raw: &[u8]) -> Option<Option<u8>> {
    match parse_properties(raw) {
        Ok((&[], props)) => Some(*props.delivery_mode()),
        _ => None,
    }
}

pub fn headers(raw: &[u8]) -> Option<FieldTable> {
    parse_properties(raw).ok()?.1.headers().clone()
}
