//! Handshake, tuning, heartbeats, connection and channel lifecycle.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use warren::Config;
use warren::protocol::codec::Frame;
use warren::protocol::{AMQPClass, AMQPValue, FieldTable, channel, connection};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_advertises_rabbitmq_capabilities() {
    let b = start().await;
    let mut raw = Raw::connect(&b).await;
    raw.send(b"AMQP\x00\x00\x09\x01").await;
    let Some((0, AMQPClass::Connection(connection::AMQPMethod::Start(s)))) =
        raw.next_method().await
    else {
        panic!("expected connection.start");
    };
    assert_eq!((s.version_major, s.version_minor), (0, 9));
    let mechs = String::from_utf8_lossy(s.mechanisms.as_bytes()).to_string();
    assert!(mechs.split(' ').any(|m| m == "PLAIN"), "{mechs}");
    assert!(mechs.split(' ').any(|m| m == "AMQPLAIN"), "{mechs}");
    let props = s.server_properties.inner();
    assert!(props.contains_key("product") && props.contains_key("version"));
    let Some(AMQPValue::FieldTable(caps)) = props.get("capabilities") else {
        panic!("no capabilities");
    };
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "{cap}"
        );
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_header_gets_ours_back_and_a_close() {
    let b = start().await;
    let mut raw = Raw::connect(&b).await;
    raw.send(b"AMQP\x01\x01\x00\x0a").await;
    assert_eq!(raw.read_to_end().await, b"AMQP\x00\x00\x09\x01");
    let mut raw = Raw::connect(&b).await;
    raw.send(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(raw.read_to_end().await, b"AMQP\x00\x00\x09\x01");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tune_offers_defaults_and_wrong_credentials_are_refused() {
    let b = start().await;
    let mut raw = Raw::connect(&b).await;
    let AMQPClass::Connection(connection::AMQPMethod::Tune(t)) = raw.start("guest", "guest").await
    else {
        panic!("expected tune");
    };
    assert_eq!(
        (t.frame_max, t.channel_max, t.heartbeat),
        (131072, 2047, 60)
    );

    let mut raw = Raw::connect(&b).await;
    let AMQPClass::Connection(connection::AMQPMethod::Close(c)) = raw.start("guest", "nope").await
    else {
        panic!("expected close");
    };
    assert_eq!(c.reply_code, 403);
    let err = Connection::connect(
        &format!("amqp://guest:wrong@127.0.0.1:{}/%2f", b.port),
        ConnectionProperties::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(403), "{err:?}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqplain_login_and_unknown_mechanism() {
    let b = start().await;
    let mut response = Vec::new();
    for (k, v) in [("LOGIN", "guest"), ("PASSWORD", "guest")] {
        response.push(k.len() as u8);
        response.extend_from_slice(k.as_bytes());
        response.push(b'S');
        response.extend_from_slice(&(v.len() as u32).to_be_bytes());
        response.extend_from_slice(v.as_bytes());
    }
    for (mech, want_tune) in [("AMQPLAIN", true), ("EXTERNAL", false)] {
        let mut raw = Raw::connect(&b).await;
        raw.send(b"AMQP\x00\x00\x09\x01").await;
        raw.next_method().await.unwrap();
        raw.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: mech.into(),
                response: response.clone().into(),
                locale: "en_US".into(),
            })),
        )
        .await;
        match raw.next_method().await.unwrap().1 {
            AMQPClass::Connection(connection::AMQPMethod::Tune(_)) => assert!(want_tune),
            AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                assert!(!want_tune);
                assert_eq!(c.reply_code, 503);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    b.stop().await;
}

async fn tune_ok_close_code(b: &TestBroker, frame_max: u32, channel_max: u16) -> Option<u16> {
    let mut raw = Raw::connect(b).await;
    raw.start("guest", "guest").await;
    raw.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max,
            frame_max,
            heartbeat: 0,
        })),
    )
    .await;
    raw.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    )
    .await;
    match raw.next_method().await.unwrap().1 {
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => Some(c.reply_code),
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => None,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tune_ok_out_of_range_is_530() {
    let b = start().await;
    assert_eq!(tune_ok_close_code(&b, 1024, 0).await, Some(530));
    assert_eq!(tune_ok_close_code(&b, 1 << 20, 0).await, Some(530));
    assert_eq!(tune_ok_close_code(&b, 4096, 4000).await, Some(530));
    assert_eq!(tune_ok_close_code(&b, 4096, 10).await, None);
    assert_eq!(tune_ok_close_code(&b, 0, 0).await, None);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vhost_is_530() {
    let b = start().await;
    let err = Connection::connect(
        &format!("amqp://guest:guest@127.0.0.1:{}/nowhere", b.port),
        ConnectionProperties::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(530), "{err:?}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_is_530_at_open() {
    let b = start_with(Config {
        max_connections: 1,
        ..Config::default()
    })
    .await;
    let first = connect(&b).await;
    let err = Connection::connect(&b.url(), ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(530), "{err:?}");
    first.close(200, "OK".into()).await.unwrap();
    // The slot is free again once the first connection is gone.
    let mut raw = Raw::connect(&b).await;
    raw.open(0, 0).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_sent_and_a_silent_peer_is_dropped() {
    let b = start().await;
    let mut raw = Raw::connect(&b).await;
    raw.open(0, 1).await;
    // With a 1 s heartbeat the broker sends one every half second...
    match raw.frame().await {
        Some(Frame::Heartbeat(0)) => {}
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    // ...and, since we never send any, drops us after two missed intervals.
    let started = std::time::Instant::now();
    while raw.frame().await.is_some() {}
    assert!(started.elapsed() < Duration::from_secs(5));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_max_exceeded_is_530() {
    let b = start().await;
    let mut raw = Raw::connect(&b).await;
    raw.open(0, 0).await;
    raw.method(
        3000,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    raw.expect_close(530).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_open_and_close_both_ways() {
    let b = start().await;
    let c = connect(&b).await;
    let ch1 = c.create_channel().await.unwrap();
    let ch2 = c.create_channel().await.unwrap();
    ch1.close(200, "bye".into()).await.unwrap();
    // A soft error closes only its channel: the broker sends channel.close, the other
    // channel and the connection carry on.
    let err = ch2
        .queue_declare(
            "missing".into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(404));
    let ch3 = c.create_channel().await.unwrap();
    declare(&ch3, "still-works").await;
    c.close(200, "OK".into()).await.unwrap();
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_connection_forced() {
    let b = start().await;
    let mut raw = Raw::connect(&b).await;
    raw.open(0, 0).await;
    let stopping = tokio::spawn(b.stop());
    raw.expect_close(320).await;
    stopping.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_pauses_and_resumes_deliveries() {
    use futures_lite::StreamExt;
    use lapin::options::*;
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "flowq").await;
    let active = ch
        .channel_flow(ChannelFlowOptions { active: false })
        .await
        .unwrap();
    assert!(!active);
    let mut consumer = ch
        .basic_consume(
            "flowq".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..3u8 {
        publish(&ch, "", "flowq", &[i]).await;
    }
    assert!(
        ch.channel_flow(ChannelFlowOptions { active: true })
            .await
            .unwrap()
    );
    for i in 0..3u8 {
        assert_eq!(consumer.next().await.unwrap().unwrap().data, vec![i]);
    }
    b.stop().await;
}
