//! Reading the content-header properties that the broker itself needs, without rebuilding
//! them: the raw bytes are what consumers receive.

use amq_protocol::protocol::basic::parse_properties;

use super::FieldTable;

/// Whether the raw properties parse; a message that does not would break every consumer.
pub fn valid(raw: &[u8]) -> bool {
    matches!(parse_properties(raw), Ok((rest, _)) if rest.is_empty())
}

pub fn headers(raw: &[u8]) -> Option<FieldTable> {
    parse_properties(raw).ok()?.1.headers().clone()
}

pub fn delivery_mode(raw: &[u8]) -> Option<u8> {
    *parse_properties(raw).ok()?.1.delivery_mode()
}
