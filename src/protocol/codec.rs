//! Frame decoding from a connection's read buffer. Body frames become `Bytes` slices of that
//! buffer (no copy); `basic.publish`, the hottest method, is parsed by hand so its exchange and
//! routing key are slices too. Everything else goes through amq-protocol's generated parsers.

use bytes::{Buf, Bytes, BytesMut};

use super::table::{self, TableError};
use super::{
    AMQPClass, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_OVERHEAD,
};
use crate::error::{Error, code};

/// What a peer may send: the negotiated frame size and how deep its field tables may nest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, header and end octet included.
    pub frame_max: u32,
    /// Deepest nesting of tables and arrays in method arguments and message headers.
    pub table_depth: usize,
}

/// `basic.publish`, with its names as slices of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub mandatory: bool,
    pub immediate: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Publish(Publish),
    Other(AMQPClass),
}

impl Method {
    pub fn ids(&self) -> (u16, u16) {
        match self {
            Method::Publish(_) => (60, 40),
            Method::Other(c) => super::method_ids(c),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Method(u16, Method),
    /// A content header: class id, body size and the raw property flags + list, kept
    /// byte-exact so that they pass through to consumers unchanged.
    Header {
        channel: u16,
        class_id: u16,
        body_size: u64,
        properties: Bytes,
    },
    Body(u16, Bytes),
    Heartbeat(u16),
}

impl Frame {
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method(c, _) | Frame::Body(c, _) | Frame::Heartbeat(c) => *c,
            Frame::Header { channel, .. } => *channel,
        }
    }
}

fn frame_error(text: impl Into<String>) -> Error {
    Error::connection(code::FRAME_ERROR, text)
}

/// Split one whole frame sent by a client off the front of `buf`, or `Ok(None)` if more bytes
/// are needed.
pub fn decode(buf: &mut BytesMut, limits: Limits) -> Result<Option<Frame>, Error> {
    decode_from(buf, limits, true)
}

/// As `decode`, for frames a server sends (test clients read the broker with this).
pub fn decode_server_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, Error> {
    let limits = Limits {
        frame_max,
        table_depth: table::DEPTH_CAP,
    };
    decode_from(buf, limits, false)
}

fn too_deep(e: TableError) -> Error {
    match e {
        TableError::TooDeep(max) => frame_error(format!(
            "field table nested deeper than {max} levels (max_table_depth)"
        )),
        TableError::Malformed => frame_error("malformed field table"),
    }
}

fn decode_from(buf: &mut BytesMut, limits: Limits, client: bool) -> Result<Option<Frame>, Error> {
    let frame_max = limits.frame_max;
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if size + FRAME_OVERHEAD > frame_max as usize {
        return Err(frame_error(format!(
            "frame size {} exceeds frame_max {}",
            size + FRAME_OVERHEAD,
            frame_max
        )));
    }
    if buf.len() < size + FRAME_OVERHEAD {
        buf.reserve(size + FRAME_OVERHEAD - buf.len());
        return Ok(None);
    }
    if buf[7 + size] != FRAME_END {
        return Err(frame_error(format!(
            "bad frame end octet 0x{:02x}",
            buf[7 + size]
        )));
    }
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    match kind {
        FRAME_METHOD => Ok(Some(Frame::Method(
            channel,
            parse_method(payload, client, limits.table_depth)?,
        ))),
        FRAME_HEADER => {
            let mut p = payload;
            if p.len() < 14 {
                return Err(frame_error("content header too short"));
            }
            let class_id = p.get_u16();
            let _weight = p.get_u16();
            let body_size = p.get_u64();
            super::properties::check_depth(&p, limits.table_depth)
                .map_err(|e| too_deep(e).during(60, 40))?;
            Ok(Some(Frame::Header {
                channel,
                class_id,
                body_size,
                properties: p,
            }))
        }
        FRAME_BODY => Ok(Some(Frame::Body(channel, payload))),
        FRAME_HEARTBEAT => Ok(Some(Frame::Heartbeat(channel))),
        other => Err(frame_error(format!("unknown frame type {other}"))),
    }
}

/// Methods a client may send; anything else is 503 COMMAND_INVALID.
fn client_method(class: u16, method: u16) -> bool {
    matches!(
        (class, method),
        (10, 11 | 21 | 31 | 40 | 50 | 51 | 71)
            | (20, 10 | 20 | 21 | 40 | 41)
            | (30, 10)
            | (40, 10 | 20 | 30 | 40)
            | (50, 10 | 20 | 30 | 40 | 50)
            | (60, 10 | 20 | 30 | 40 | 70 | 80 | 90 | 100 | 110 | 120)
            | (85, 10)
            | (90, 10 | 20 | 30)
    )
}

/// Where the one field table of a method's arguments starts, for the methods that have one:
/// the fields before it are skipped as amq-protocol's generated parsers read them.
fn table_offset(class: u16, method: u16, args: &[u8]) -> Option<Option<usize>> {
    #[derive(Clone, Copy)]
    enum F {
        Short,
        Octet,
        ShortStr,
    }
    use F::*;
    let before: &[F] = match (class, method) {
        (10, 11) => &[],                                                // start-ok
        (40, 10) => &[Short, ShortStr, ShortStr, Octet],                // exchange.declare
        (40, 30 | 40) => &[Short, ShortStr, ShortStr, ShortStr, Octet], // exchange.(un)bind
        (50, 10) => &[Short, ShortStr, Octet],                          // queue.declare
        (50, 20) => &[Short, ShortStr, ShortStr, ShortStr, Octet],      // queue.bind
        (50, 50) => &[Short, ShortStr, ShortStr, ShortStr],             // queue.unbind
        (60, 20) => &[Short, ShortStr, ShortStr, Octet],                // basic.consume
        _ => return Some(None),
    };
    let mut at = 0;
    for f in before {
        at += match f {
            Short => 2,
            Octet => 1,
            ShortStr => 1 + *args.get(at)? as usize,
        };
    }
    Some(Some(at))
}

fn check_tables(class: u16, method: u16, args: &[u8], max_depth: usize) -> Result<(), TableError> {
    match table_offset(class, method, args) {
        None => Err(TableError::Malformed),
        Some(None) => Ok(()),
        Some(Some(at)) => {
            let table = args.get(at..).ok_or(TableError::Malformed)?;
            table::check_depth(table, max_depth).map(|_| ())
        }
    }
}

fn parse_method(payload: Bytes, client: bool, max_depth: usize) -> Result<Method, Error> {
    if payload.len() < 4 {
        return Err(frame_error("method frame too short"));
    }
    let class = u16::from_be_bytes([payload[0], payload[1]]);
    let method = u16::from_be_bytes([payload[2], payload[3]]);
    if client && !client_method(class, method) {
        return Err(Error::connection(
            code::COMMAND_INVALID,
            format!("unknown method {class}.{method}"),
        )
        .during(class, method));
    }
    // amq-protocol drops basic.qos prefetch_size; RabbitMQ refuses any non-zero value.
    if (class, method) == (60, 10) && payload.len() >= 8 {
        let size = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        if size != 0 {
            return Err(Error::connection(
                code::NOT_IMPLEMENTED,
                format!("prefetch_size!=0 ({size})"),
            )
            .during(60, 10));
        }
    }
    if (class, method) == (60, 40) {
        return parse_publish(payload.slice(4..))
            .map(Method::Publish)
            .ok_or_else(|| frame_error("malformed basic.publish").during(60, 40));
    }
    check_tables(class, method, &payload[4..], max_depth)
        .map_err(|e| too_deep(e).during(class, method))?;
    match amq_protocol::protocol::parse_class(&payload[..]) {
        Ok((_, c)) => Ok(Method::Other(c)),
        Err(_) => Err(
            frame_error(format!("malformed arguments for method {class}.{method}"))
                .during(class, method),
        ),
    }
}

fn parse_publish(mut p: Bytes) -> Option<Publish> {
    fn short_str(p: &mut Bytes) -> Option<Bytes> {
        let len = *p.first()? as usize;
        if p.len() < 1 + len {
            return None;
        }
        p.advance(1);
        Some(p.split_to(len))
    }
    if p.len() < 2 {
        return None;
    }
    p.advance(2); // reserved ticket
    let exchange = short_str(&mut p)?;
    let routing_key = short_str(&mut p)?;
    let bits = *p.first()?;
    Some(Publish {
        exchange,
        routing_key,
        mandatory: bits & 1 != 0,
        immediate: bits & 2 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode;

    const LIMITS: Limits = Limits {
        frame_max: 4096,
        table_depth: 16,
    };

    #[test]
    fn splits_frames_and_waits_for_more() {
        let mut out = BytesMut::new();
        encode::heartbeat(&mut out);
        encode::body_frame(&mut out, 3, b"hello");
        let mut half = out.split_to(10);
        assert_eq!(
            decode(&mut half, LIMITS).unwrap(),
            Some(Frame::Heartbeat(0))
        );
        assert_eq!(decode(&mut half, LIMITS).unwrap(), None);
        half.unsplit(out);
        assert_eq!(
            decode(&mut half, LIMITS).unwrap(),
            Some(Frame::Body(3, Bytes::from_static(b"hello")))
        );
        assert!(half.is_empty());
    }

    #[test]
    fn rejects_oversized_and_bad_end() {
        let mut out = BytesMut::new();
        encode::body_frame(&mut out, 1, &[0u8; 5000]);
        assert_eq!(decode(&mut out, LIMITS).unwrap_err().code(), 501);
        let mut out = BytesMut::new();
        encode::heartbeat(&mut out);
        let last = out.len() - 1;
        out[last] = 0;
        assert_eq!(decode(&mut out, LIMITS).unwrap_err().code(), 501);
    }

    #[test]
    fn parses_publish_by_hand() {
        let mut out = BytesMut::new();
        let m = AMQPClass::Basic(crate::protocol::basic::AMQPMethod::Publish(
            crate::protocol::basic::Publish {
                exchange: "ex".into(),
                routing_key: "a.b".into(),
                mandatory: true,
                immediate: false,
            },
        ));
        encode::method(&mut out, 7, &m);
        match decode(&mut out, LIMITS).unwrap() {
            Some(Frame::Method(7, Method::Publish(p))) => {
                assert_eq!(&p.exchange[..], b"ex");
                assert_eq!(&p.routing_key[..], b"a.b");
                assert!(p.mandatory && !p.immediate);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_method_is_command_invalid() {
        let mut out = BytesMut::new();
        let payload = [0u8, 60, 0, 60, 0, 0]; // basic.deliver is server-only
        out.extend_from_slice(&[1, 0, 1, 0, 0, 0, payload.len() as u8]);
        out.extend_from_slice(&payload);
        out.extend_from_slice(&[FRAME_END]);
        assert_eq!(decode(&mut out, LIMITS).unwrap_err().code(), 503);
    }

    fn method_frame(payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        out.extend_from_slice(&[1, 0, 1]);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(&[FRAME_END]);
        out
    }

    /// Each method with a table, its table nested one level past the limit, is 501 before
    /// amq-protocol's parser runs; at the limit it parses.
    #[test]
    fn tables_in_method_arguments_are_depth_checked() {
        let cases: [(&[u8], &[u8]); 8] = [
            (&[0, 10, 0, 11], b""),
            (&[0, 40, 0, 10], b"\0\0\x02ex\x06direct\0"),
            (&[0, 40, 0, 30], b"\0\0\x01d\x01s\x02rk\0"),
            (&[0, 40, 0, 40], b"\0\0\x01d\x01s\x02rk\0"),
            (&[0, 50, 0, 10], b"\0\0\x01q\0"),
            (&[0, 50, 0, 20], b"\0\0\x01q\x02ex\x02rk\0"),
            (&[0, 50, 0, 50], b"\0\0\x01q\x02ex\x02rk"),
            (&[0, 60, 0, 20], b"\0\0\x01q\x03tag\0"),
        ];
        for (ids, before) in cases {
            let frame = |depth: usize| {
                let mut payload = [ids, before].concat();
                payload.extend_from_slice(&table::build::nested(depth));
                if ids == [0, 10, 0, 11] {
                    payload.extend_from_slice(b"\x05PLAIN\0\0\0\0\x05en_US");
                }
                method_frame(&payload)
            };
            let ok = decode(&mut frame(16), LIMITS);
            assert!(
                matches!(ok, Ok(Some(Frame::Method(1, _)))),
                "{ids:?}: {ok:?}"
            );
            let err = decode(&mut frame(17), LIMITS).unwrap_err();
            assert_eq!(err.code(), 501, "{ids:?}");
            assert!(err.to_string().contains("nested deeper than 16"), "{err}");
            let err = decode(
                &mut frame(100_000),
                Limits {
                    frame_max: 1 << 20,
                    ..LIMITS
                },
            );
            assert_eq!(err.unwrap_err().code(), 501, "{ids:?}");
        }
    }

    #[test]
    fn headers_in_content_header_are_depth_checked() {
        let header = |depth: usize| {
            let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            payload.extend_from_slice(&(1u16 << 13).to_be_bytes());
            payload.extend_from_slice(&table::build::nested(depth));
            let mut out = BytesMut::new();
            out.extend_from_slice(&[2, 0, 1]);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(&payload);
            out.extend_from_slice(&[FRAME_END]);
            out
        };
        assert!(matches!(
            decode(&mut header(16), LIMITS),
            Ok(Some(Frame::Header { body_size: 1, .. }))
        ));
        assert_eq!(decode(&mut header(17), LIMITS).unwrap_err().code(), 501);
    }
}
