use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::FieldTable;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_get_and_consume_round_trip() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "q1").await;
    publish(&ch, "", "q1", b"hello").await;
    assert_eq!(count(&ch, "q1").await, 1);
    assert_eq!(get_body(&ch, "q1").await.as_deref(), Some(&b"hello"[..]));
    assert_eq!(get_body(&ch, "q1").await, None);

    let mut consumer = ch
        .basic_consume(
            "q1".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..10u8 {
        publish(&ch, "", "q1", &[i]).await;
    }
    for i in 0..10u8 {
        let d = consumer.next().await.unwrap().unwrap();
        assert_eq!(d.data, vec![i]);
        assert!(!d.redelivered);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let _ = BasicProperties::default();
    b.stop().await;
}

/// A lapin client across a broker restart: the old connection learns it was closed (320,
/// as RabbitMQ sends on shutdown), a new one finds the durable queue and the confirmed
/// persistent messages, and consumes them as a stream with manual acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapin_client_reconnects_after_a_broker_restart() {
    let b = start().await;
    let url = b.url();
    let c = connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare("survives".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    for i in 0..10u8 {
        let confirm = ch
            .basic_publish(
                "".into(),
                "survives".into(),
                Default::default(),
                &[i],
                persistent(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }
    let b = b.restart().await;
    // The old connection was closed by the broker: using it fails.
    let err = ch
        .queue_declare(
            "survives".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(!c.status().connected(), "old connection still up: {err}");
    let c = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("reconnects to the restarted broker");
    let ch = c.create_channel().await.unwrap();
    ch.basic_qos(3, Default::default()).await.unwrap();
    let mut stream = ch
        .basic_consume(
            "survives".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..10u8 {
        let d = stream.next().await.unwrap().unwrap();
        assert_eq!(d.data, [i]);
        assert!(!d.redelivered);
        d.ack(Default::default()).await.unwrap();
    }
    b.stop().await;
}
