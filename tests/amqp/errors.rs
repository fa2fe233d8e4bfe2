//! Bad input from a raw client: each gets RabbitMQ's reply code and a close, and never harms
//! other connections.

use bytes::BytesMut;
use warren::protocol::{AMQPClass, basic, channel, encode, queue};

use crate::common::*;

async fn opened(b: &TestBroker) -> Raw {
    let mut raw = Raw::connect(b).await;
    raw.open(4096, 0).await;
    raw.open_channel(1).await;
    raw
}

fn frame(kind: u8, ch: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&ch.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.push(end);
    v
}

fn publish_frame(ch: u16, key: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode::method(
        &mut out,
        ch,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: key.into(),
            mandatory: false,
            immediate: false,
        })),
    );
    out.to_vec()
}

fn header_frame(ch: u16, size: u64, props: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 60, 0, 0];
    p.extend_from_slice(&size.to_be_bytes());
    p.extend_from_slice(props);
    frame(2, ch, &p, 0xCE)
}

/// Each case: bytes sent on an open connection (channel 1 open) and the hard error code.
fn hard_cases() -> Vec<(&'static str, Vec<u8>, u16)> {
    let mut method_then_body = publish_frame(1, "q");
    method_then_body.extend(frame(3, 1, b"body", 0xCE));
    let mut publish_then_method = publish_frame(1, "q");
    publish_then_method.extend(publish_frame(1, "q"));
    let mut bad_props = publish_frame(1, "q");
    bad_props.extend(header_frame(1, 1, &[0x80, 0, 200])); // content-type longer than the frame
    let mut truncated_declare = vec![0, 50, 0, 10, 0, 0, 5, b'a'];
    truncated_declare.truncate(8);
    vec![
        ("frame over frame_max", frame(3, 1, &[0u8; 5000], 0xCE), 501),
        ("bad frame end", frame(8, 0, b"", 0x00), 501),
        ("unknown frame type", frame(5, 1, b"", 0xCE), 501),
        ("header without publish", header_frame(1, 1, &[0, 0]), 505),
        ("body without header", method_then_body, 505),
        ("method inside content", publish_then_method, 505),
        (
            "method on unopened channel",
            frame(1, 9, &[0, 50, 0, 30, 0, 0, 0, 0], 0xCE),
            504,
        ),
        (
            "second channel.open",
            frame(1, 1, &[0, 20, 0, 10, 0], 0xCE),
            504,
        ),
        ("heartbeat on channel 1", frame(8, 1, b"", 0xCE), 505),
        (
            "server-only method",
            frame(1, 1, &[0, 60, 0, 60, 0], 0xCE),
            503,
        ),
        ("unknown class", frame(1, 1, &[0, 99, 0, 10], 0xCE), 503),
        (
            "truncated arguments",
            frame(1, 1, &truncated_declare, 0xCE),
            501,
        ),
        ("malformed properties", bad_props, 501),
        ("content on channel 0", frame(3, 0, b"x", 0xCE), 505),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_closes_the_connection_with_the_right_code() {
    let b = start().await;
    let (_bystander, bch) = channel(&b).await;
    declare(&bch, "bystander").await;
    for (what, bytes, want) in hard_cases() {
        let mut raw = opened(&b).await;
        raw.send(&bytes).await;
        raw.expect_close(want).await;
        assert!(
            raw.frame().await.is_none(),
            "{what}: socket stays open after close-ok"
        );
        // Other connections never notice.
        publish(&bch, "", "bystander", what.as_bytes()).await;
        assert_eq!(
            get_body(&bch, "bystander").await.as_deref(),
            Some(what.as_bytes())
        );
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_error_ignores_frames_until_close_ok_and_spares_other_channels() {
    let b = start().await;
    let mut raw = opened(&b).await;
    raw.open_channel(2).await;
    raw.declare(2, "ok").await;
    // A publish to a missing exchange closes channel 1 (404)...
    let mut out = BytesMut::new();
    encode::method(
        &mut out,
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "missing".into(),
            routing_key: "".into(),
            mandatory: false,
            immediate: false,
        })),
    );
    encode::content(&mut out, 1, &[0, 0], b"x", 4096);
    raw.send(&out).await;
    match raw.next_method().await {
        Some((1, AMQPClass::Channel(channel::AMQPMethod::Close(c)))) => {
            assert_eq!(c.reply_code, 404)
        }
        other => panic!("expected channel.close, got {other:?}"),
    }
    // ...whose later frames are dropped until we answer close-ok.
    raw.publish(1, "", "ok", &[0, 0], b"dropped").await;
    raw.method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
    .await;
    raw.publish(2, "", "ok", &[0, 0], b"kept").await;
    let reply = raw
        .call(
            2,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "ok".into(),
                passive: true,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: Default::default(),
            })),
        )
        .await;
    let AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(ok.message_count, 1);
    // Channel 1 can be opened again.
    raw.open_channel(1).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_pass_through_byte_exact() {
    let b = start().await;
    let mut raw = opened(&b).await;
    raw.declare(1, "exact").await;
    // headers only, with keys out of sorted order and a nested array: a client that re-encoded
    // from a map would reorder them.
    let mut table = Vec::new();
    for (k, v) in [("zeta", 1u8), ("alpha", 2u8)] {
        table.push(k.len() as u8);
        table.extend_from_slice(k.as_bytes());
        table.push(b'b');
        table.push(v);
    }
    table.extend_from_slice(&[3, b'a', b'r', b'r', b'A', 0, 0, 0, 4, b'b', 1, b'b', 2]);
    let mut props = vec![0x20, 0x00];
    props.extend_from_slice(&(table.len() as u32).to_be_bytes());
    props.extend_from_slice(&table);
    raw.publish(1, "", "exact", &props, b"payload").await;
    raw.method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "exact".into(),
            no_ack: true,
        })),
    )
    .await;
    let mut saw = None;
    while let Some(f) = raw.frame().await {
        if let warren::protocol::codec::Frame::Header {
            properties,
            body_size,
            ..
        } = f
        {
            assert_eq!(body_size, 7);
            saw = Some(properties.to_vec());
            break;
        }
    }
    assert_eq!(saw.as_deref(), Some(&props[..]));
    b.stop().await;
}
