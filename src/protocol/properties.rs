//! Reading the content-header properties that the broker itself needs, without rebuilding
//! them: the raw bytes are what consumers receive. The headers table's nesting is checked
//! (`check_depth`) before amq-protocol's recursive parser sees it.

use amq_protocol::protocol::basic::{AMQPProperties, parse_properties};

use super::FieldTable;
use super::table::{self, DEPTH_CAP, TableError};

/// Check the nesting of the headers table, if the properties carry one. Anything else wrong
/// with them is left to the parser.
pub fn check_depth(raw: &[u8], max_depth: usize) -> Result<(), TableError> {
    let Some(flags) = raw.get(..2) else {
        return Ok(());
    };
    let flags = u16::from_be_bytes([flags[0], flags[1]]);
    if flags & (1 << 13) == 0 {
        return Ok(());
    }
    // content-type and content-encoding, short strings, come before the headers.
    let mut at = 2;
    for bit in [15, 14] {
        if flags & (1 << bit) != 0 {
            at += 1 + *raw.get(at).ok_or(TableError::Malformed)? as usize;
        }
    }
    table::check_depth(raw.get(at..).ok_or(TableError::Malformed)?, max_depth).map(|_| ())
}

/// The full parse, on properties checked at publish or written by the broker itself: only the
/// hard cap applies here.
fn parse(raw: &[u8]) -> Option<(&[u8], AMQPProperties)> {
    check_depth(raw, DEPTH_CAP).ok()?;
    parse_properties(raw).ok()
}

/// Parse the raw properties once: None if they are malformed (such a message would break
/// every consumer), else the delivery mode they carry.
pub fn checked_delivery_mode(raw: &[u8]) -> Option<Option<u8>> {
    if let Some(fast) = walk_without_headers(raw) {
        return fast;
    }
    match parse(raw) {
        Some((&[], props)) => Some(*props.delivery_mode()),
        _ => None,
    }
}

/// The common case, checked by hand without building the property struct: no headers
/// table and one flag word, so every field is a short string, an octet or a timestamp.
/// None means "not this case" (the full parser decides).
fn walk_without_headers(raw: &[u8]) -> Option<Option<Option<u8>>> {
    let flags = u16::from_be_bytes(raw.get(..2)?.try_into().ok()?);
    // Bit 13: headers; bit 0: another flag word follows; bits 1: reserved.
    if flags & (1 << 13 | 0b11) != 0 {
        return None;
    }
    let mut at = 2;
    let mut mode = None;
    for bit in (2..16).rev() {
        if flags & (1 << bit) == 0 {
            continue;
        }
        let len = match bit {
            12 | 11 => 1, // delivery-mode, priority
            6 => 8,       // timestamp
            _ => match raw.get(at) {
                Some(&n) => 1 + n as usize, // short strings
                None => return Some(None),
            },
        };
        let Some(field) = raw.get(at..at + len) else {
            return Some(None);
        };
        // Short strings must be UTF-8, as for the parser (and for clients that parse them).
        let text = !matches!(bit, 12 | 11 | 6);
        if text && std::str::from_utf8(&field[1..]).is_err() {
            return Some(None);
        }
        if bit == 12 {
            mode = Some(field[0]);
        }
        at += len;
    }
    Some((at == raw.len()).then_some(mode))
}

/// The per-message TTL (the expiration property, in milliseconds), if it is set and valid.
pub fn expiration_ms(raw: &[u8]) -> Option<u64> {
    let flags = u16::from_be_bytes(raw.get(..2)?.try_into().ok()?);
    if flags & (1 << 8) == 0 {
        return None; // the common case: no parse at all
    }
    let (_, props) = parse(raw)?;
    props.expiration().as_ref()?.as_str().parse().ok()
}

pub fn headers(raw: &[u8]) -> Option<FieldTable> {
    parse(raw)?.1.headers().clone()
}

/// The properties with header `key` set to `value` (replacing one of that name), encoded
/// again; None if they do not parse. For headers the broker adds (x-delivery-count).
pub fn with_header(raw: &[u8], key: &str, value: super::AMQPValue) -> Option<Vec<u8>> {
    use amq_protocol::frame::WriteContext;
    use amq_protocol::protocol::basic::gen_properties;
    let (rest, props) = parse(raw)?;
    if !rest.is_empty() {
        return None;
    }
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(key.into(), value);
    let props = props.with_headers(headers);
    gen_properties(&props)(WriteContext::from(Vec::new()))
        .ok()
        .map(|w| w.write)
}

#[cfg(test)]
mod tests {
    use amq_protocol::frame::WriteContext;
    use amq_protocol::protocol::basic::{AMQPProperties, gen_properties};

    use super::*;

    fn raw(p: &AMQPProperties) -> Vec<u8> {
        gen_properties(p)(WriteContext::from(Vec::new()))
            .unwrap()
            .write
    }

    /// The hand walk agrees with the full parser, on good and on cut-short input.
    #[test]
    fn the_fast_walk_agrees_with_the_parser() {
        let samples = [
            AMQPProperties::default(),
            AMQPProperties::default().with_delivery_mode(2),
            AMQPProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(1)
                .with_priority(3)
                .with_correlation_id("c-1".into())
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_expiration("60000".into())
                .with_message_id("m".into())
                .with_timestamp(1_700_000_000)
                .with_type("t".into())
                .with_user_id("guest".into())
                .with_app_id("app".into()),
        ];
        for p in &samples {
            let bytes = raw(p);
            let full = match parse_properties(&bytes[..]) {
                Ok((&[], props)) => Some(*props.delivery_mode()),
                _ => None,
            };
            assert_eq!(walk_without_headers(&bytes), Some(full), "{p:?}");
            assert_eq!(checked_delivery_mode(&bytes), full);
            for cut in 0..bytes.len() {
                assert_eq!(
                    checked_delivery_mode(&bytes[..cut]),
                    None,
                    "{p:?} cut at {cut}"
                );
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(checked_delivery_mode(&long), None);
        }
        let with_headers = raw(&AMQPProperties::default().with_headers(FieldTable::default()));
        assert_eq!(walk_without_headers(&with_headers), None);
        assert_eq!(checked_delivery_mode(&with_headers), Some(None));
    }

    /// The headers table is found behind content-type and content-encoding, and its nesting
    /// is checked before the recursive parser runs.
    #[test]
    fn deep_headers_are_refused_before_parsing() {
        let props = |depth: usize| {
            let mut raw = (1u16 << 15 | 1 << 14 | 1 << 13 | 1 << 12)
                .to_be_bytes()
                .to_vec();
            raw.extend_from_slice(b"\x04text\x04gzip");
            raw.extend_from_slice(&table::build::nested(depth));
            raw.push(2);
            raw
        };
        assert_eq!(check_depth(&props(8), 8), Ok(()));
        assert_eq!(checked_delivery_mode(&props(8)), Some(Some(2)));
        assert_eq!(check_depth(&props(9), 8), Err(TableError::TooDeep(8)));
        let hostile = props(50_000);
        assert_eq!(
            check_depth(&hostile, DEPTH_CAP),
            Err(TableError::TooDeep(DEPTH_CAP))
        );
        assert_eq!(checked_delivery_mode(&hostile), None);
        assert_eq!(headers(&hostile), None);
        // Cut inside the strings before the table: malformed, not a panic.
        assert_eq!(check_depth(&props(2)[..4], 8), Err(TableError::Malformed));
        assert_eq!(check_depth(&[0x20], 8), Ok(()));
    }

    #[test]
    fn a_header_is_added_and_the_rest_kept() {
        use crate::protocol::AMQPValue;
        let p = AMQPProperties::default()
            .with_delivery_mode(2)
            .with_correlation_id("c".into());
        let out = with_header(&raw(&p), "x-delivery-count", AMQPValue::LongLongInt(2)).unwrap();
        let (_, back) = parse_properties(&out[..]).unwrap();
        assert_eq!(*back.delivery_mode(), Some(2));
        assert_eq!(back.correlation_id().as_ref().unwrap().as_str(), "c");
        let h = back.headers().clone().unwrap();
        assert_eq!(
            h.inner().get("x-delivery-count"),
            Some(&AMQPValue::LongLongInt(2))
        );
        // Set again: replaced, not doubled.
        let again = with_header(&out, "x-delivery-count", AMQPValue::LongLongInt(3)).unwrap();
        let h = headers(&again).unwrap();
        assert_eq!(h.inner().len(), 1);
        assert_eq!(with_header(&[0xff], "x", AMQPValue::Boolean(true)), None);
    }

    /// Found by the properties fuzz target: a reply-to that is not UTF-8 passed the fast walk
    /// (and would have reached consumers whose clients refuse it) while the parser refused it.
    #[test]
    fn short_strings_that_are_not_utf8_are_malformed() {
        let raw = [0x06, 0x00, 0x00, 0x02, b't', 0xff];
        assert_eq!(checked_delivery_mode(&raw), None);
        let good = [0x06, 0x00, 0x00, 0x02, b't', b'o'];
        assert_eq!(checked_delivery_mode(&good), Some(None));
    }
}
