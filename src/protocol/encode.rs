//! Outbound frames, written straight into a connection's write buffer. Deliveries, get-ok,
//! returns and confirms are encoded by hand (hot path); other methods use amq-protocol's
//! generators. Bodies are split into frames of at most frame_max bytes.

use amq_protocol::frame::WriteContext;
use bytes::{BufMut, BytesMut};

use super::{AMQPClass, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD};

pub fn heartbeat(buf: &mut BytesMut) {
    buf.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Start a frame whose size is patched by `end_frame`; returns the size field's offset.
fn begin_frame(buf: &mut BytesMut, kind: u8, channel: u16) -> usize {
    buf.put_u8(kind);
    buf.put_u16(channel);
    let at = buf.len();
    buf.put_u32(0);
    at
}

fn end_frame(buf: &mut BytesMut, at: usize) {
    let size = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

/// Any method, through amq-protocol's generator (control methods, not the hot path).
pub fn method(buf: &mut BytesMut, channel: u16, class: &AMQPClass) {
    let at = begin_frame(buf, FRAME_METHOD, channel);
    let ctx = WriteContext::from(Vec::with_capacity(64));
    match amq_protocol::protocol::gen_class(class)(ctx) {
        Ok(ctx) => buf.put_slice(&ctx.write),
        // Generation only fails on a string over 255 bytes, which we never build.
        Err(e) => tracing::error!("cannot encode {class:?}: {e}"),
    }
    end_frame(buf, at);
}

fn short_str(buf: &mut BytesMut, s: &[u8]) {
    let len = s.len().min(255);
    buf.put_u8(len as u8);
    buf.put_slice(&s[..len]);
}

pub fn deliver(
    buf: &mut BytesMut,
    channel: u16,
    consumer_tag: &[u8],
    delivery_tag: u64,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
) {
    let at = begin_frame(buf, FRAME_METHOD, channel);
    buf.put_u16(60);
    buf.put_u16(60);
    short_str(buf, consumer_tag);
    buf.put_u64(delivery_tag);
    buf.put_u8(redelivered as u8);
    short_str(buf, exchange);
    short_str(buf, routing_key);
    end_frame(buf, at);
}

pub fn get_ok(
    buf: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
    message_count: u32,
) {
    let at = begin_frame(buf, FRAME_METHOD, channel);
    buf.put_u16(60);
    buf.put_u16(71);
    buf.put_u64(delivery_tag);
    buf.put_u8(redelivered as u8);
    short_str(buf, exchange);
    short_str(buf, routing_key);
    buf.put_u32(message_count);
    end_frame(buf, at);
}

pub fn basic_return(
    buf: &mut BytesMut,
    channel: u16,
    reply_code: u16,
    reply_text: &str,
    exchange: &[u8],
    routing_key: &[u8],
) {
    let at = begin_frame(buf, FRAME_METHOD, channel);
    buf.put_u16(60);
    buf.put_u16(50);
    buf.put_u16(reply_code);
    short_str(buf, reply_text.as_bytes());
    short_str(buf, exchange);
    short_str(buf, routing_key);
    end_frame(buf, at);
}

/// basic.ack (nack = false) or basic.nack from the broker, for publisher confirms.
pub fn confirm(buf: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool, nack: bool) {
    let at = begin_frame(buf, FRAME_METHOD, channel);
    buf.put_u16(60);
    if nack {
        buf.put_u16(120);
        buf.put_u64(delivery_tag);
        buf.put_u8(multiple as u8); // requeue bit stays 0
    } else {
        buf.put_u16(80);
        buf.put_u64(delivery_tag);
        buf.put_u8(multiple as u8);
    }
    end_frame(buf, at);
}

pub fn body_frame(buf: &mut BytesMut, channel: u16, data: &[u8]) {
    let at = begin_frame(buf, FRAME_BODY, channel);
    buf.put_slice(data);
    end_frame(buf, at);
}

/// A content header (raw, byte-exact properties) and the body split by `frame_max`.
pub fn content(buf: &mut BytesMut, channel: u16, properties: &[u8], body: &[u8], frame_max: u32) {
    let at = begin_frame(buf, FRAME_HEADER, channel);
    buf.put_u16(60);
    buf.put_u16(0);
    buf.put_u64(body.len() as u64);
    buf.put_slice(properties);
    end_frame(buf, at);
    let chunk = (frame_max as usize)
        .saturating_sub(super::FRAME_OVERHEAD)
        .max(1);
    buf.reserve(body.len() + (body.len() / chunk + 1) * super::FRAME_OVERHEAD);
    for part in body.chunks(chunk) {
        body_frame(buf, channel, part);
    }
}
