//! Publish, consume, get, acknowledgements, qos and message pass-through, via lapin.

use futures_lite::StreamExt;
use lapin::Confirmation;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{BasicProperties, Consumer};
use warren::Config;
use warren::protocol::{AMQPClass, basic};

use crate::common::*;

async fn next(c: &mut Consumer) -> Delivery {
    tokio::time::timeout(std::time::Duration::from_secs(10), c.next())
        .await
        .expect("a delivery within 10s")
        .expect("consumer open")
        .expect("delivery")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_unroutable_is_returned_before_the_confirm() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    ch.confirm_select(Default::default()).await.unwrap();
    let confirm = ch
        .basic_publish(
            "amq.direct".into(),
            "nowhere".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let Confirmation::Ack(Some(ret)) = confirm else {
        panic!("expected ack with return, got {confirm:?}")
    };
    assert_eq!(ret.reply_code, 312);
    assert_eq!(ret.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(ret.delivery.data, b"lost");
    // Not mandatory: silently dropped, still acked.
    let confirm = ch
        .basic_publish(
            "amq.direct".into(),
            "nowhere".into(),
            Default::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(matches!(confirm, Confirmation::Ack(None)), "{confirm:?}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_count_from_one_and_cover_every_publish() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "cq").await;
    ch.confirm_select(Default::default()).await.unwrap();
    let mut pending = Vec::new();
    for i in 0..500u32 {
        pending.push(
            ch.basic_publish(
                "".into(),
                "cq".into(),
                Default::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        assert!(p.await.unwrap().is_ack());
    }
    assert_eq!(count(&ch, "cq").await, 500);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_is_not_implemented() {
    let b = start().await;
    let mut raw = Raw::connect(&b).await;
    raw.open(0, 0).await;
    raw.open_channel(1).await;
    raw.method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: true,
        })),
    )
    .await;
    raw.expect_close(540).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_tags_exclusive_consumers_and_reuse() {
    let b = start().await;
    let c = connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    declare(&ch, "ct").await;
    let generated = consume(&ch, "ct", "", false).await;
    assert!(
        generated.tag().as_str().starts_with("amq.ctag-"),
        "{}",
        generated.tag()
    );
    // An exclusive consumer needs the queue to itself.
    let ch2 = c.create_channel().await.unwrap();
    let err = ch2
        .basic_consume(
            "ct".into(),
            "ex".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(403));
    let ch3 = c.create_channel().await.unwrap();
    declare(&ch3, "ct2").await;
    let _ex = ch3
        .basic_consume(
            "ct2".into(),
            "ex".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ch4 = c.create_channel().await.unwrap();
    let err = ch4
        .basic_consume(
            "ct2".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(403));
    // Reusing a tag on the same channel is a hard error.
    let _a = consume(&ch3, "ct", "same", false).await;
    let err = ch3
        .basic_consume(
            "ct".into(),
            "same".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(530));
    // Consuming from a missing queue is 404.
    let c2 = connect(&b).await;
    let ch5 = c2.create_channel().await.unwrap();
    let err = ch5
        .basic_consume(
            "nonesuch".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(404));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_reports_remaining_and_get_empty() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "g").await;
    for i in 0..3u8 {
        publish(&ch, "", "g", &[i]).await;
    }
    for (i, left) in [(0u8, 2u32), (1, 1), (2, 0)] {
        let m = ch
            .basic_get("g".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.delivery.data, vec![i]);
        assert_eq!(m.message_count, left);
    }
    assert!(
        ch.basic_get("g".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .is_none()
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_and_reject_requeue_in_order_and_marked_redelivered() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "nq").await;
    for i in 0..5u8 {
        publish(&ch, "", "nq", &[i]).await;
    }
    let mut tags = Vec::new();
    for _ in 0..5 {
        tags.push(
            ch.basic_get("nq".into(), BasicGetOptions { no_ack: false })
                .await
                .unwrap()
                .unwrap()
                .delivery
                .delivery_tag,
        );
    }
    assert_eq!(tags, vec![1, 2, 3, 4, 5]);
    // nack 1..=3 with multiple and requeue; reject 5 without requeue (dropped); ack 4.
    ch.basic_nack(
        3,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    )
    .await
    .unwrap();
    ch.basic_reject(5, BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    ch.basic_ack(4, BasicAckOptions::default()).await.unwrap();
    for i in 0..3u8 {
        let m = ch
            .basic_get("nq".into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.delivery.data, vec![i]);
        assert!(m.delivery.redelivered);
        ch.basic_reject(
            m.delivery.delivery_tag,
            BasicRejectOptions { requeue: true },
        )
        .await
        .unwrap();
        let again = ch
            .basic_get("nq".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            again.delivery.data,
            vec![i],
            "a rejected message goes back to the head"
        );
    }
    assert_eq!(count(&ch, "nq").await, 0);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_repeated_delivery_tags_are_406() {
    let b = start().await;
    let mut raw = Raw::connect(&b).await;
    raw.open(0, 0).await;
    raw.open_channel(1).await;
    raw.declare(1, "tags").await;
    raw.publish(1, "", "tags", &[0, 0], b"x").await;
    let get = AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
        queue: "tags".into(),
        no_ack: false,
    }));
    let ok = raw.call(1, get.clone()).await;
    let AMQPClass::Basic(basic::AMQPMethod::GetOk(ok)) = ok else {
        panic!("{ok:?}")
    };
    assert_eq!(ok.delivery_tag, 1);
    let ack = |tag| {
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple: false,
        }))
    };
    raw.method(1, ack(1)).await;
    raw.method(1, ack(1)).await;
    raw.expect_channel_close(1, 406).await;
    // Unknown tag on a fresh channel, via nack and reject.
    for (n, m) in [
        (
            2,
            AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 99,
                multiple: false,
                requeue: true,
            })),
        ),
        (
            3,
            AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag: 5,
                requeue: false,
            })),
        ),
        (
            4,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 7,
                multiple: true,
            })),
        ),
    ] {
        raw.open_channel(n).await;
        raw.method(n, m).await;
        raw.expect_channel_close(n, 406).await;
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_across_consumers() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    declare(&ch, "rr").await;
    let mut c1 = consume(&ch, "rr", "c1", true).await;
    let ch2 = c.create_channel().await.unwrap();
    let mut c2 = consume(&ch2, "rr", "c2", true).await;
    for i in 0..10u8 {
        publish(&ch, "", "rr", &[i]).await;
    }
    for i in 0..5u8 {
        assert_eq!(next(&mut c1).await.data, vec![2 * i]);
        assert_eq!(next(&mut c2).await.data, vec![2 * i + 1]);
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_consumer_prefetch_limits_unacked() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "pf").await;
    ch.basic_qos(2, BasicQosOptions { global: false })
        .await
        .unwrap();
    let mut cons = consume(&ch, "pf", "", false).await;
    for i in 0..5u8 {
        publish(&ch, "", "pf", &[i]).await;
    }
    let d0 = next(&mut cons).await;
    let d1 = next(&mut cons).await;
    assert_eq!((d0.data[0], d1.data[0]), (0, 1));
    // Two unacked: the other three stay ready.
    assert_eq!(count(&ch, "pf").await, 3);
    d0.ack(BasicAckOptions::default()).await.unwrap();
    assert_eq!(next(&mut cons).await.data, vec![2]);
    assert_eq!(count(&ch, "pf").await, 2);
    d1.ack(BasicAckOptions { multiple: true }).await.unwrap();
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_prefetch_is_shared_by_the_channel() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "ga").await;
    declare(&ch, "gb").await;
    ch.basic_qos(3, BasicQosOptions { global: true })
        .await
        .unwrap();
    let a = consume(&ch, "ga", "a", false).await;
    let bb = consume(&ch, "gb", "b", false).await;
    for i in 0..5u8 {
        publish(&ch, "", "ga", &[i]).await;
        publish(&ch, "", "gb", &[i]).await;
    }
    let mut both = a.or(bb);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            tokio::time::timeout(std::time::Duration::from_secs(10), both.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(count(&ch, "ga").await + count(&ch, "gb").await, 7);
    got.remove(0).ack(BasicAckOptions::default()).await.unwrap();
    got.push(
        tokio::time::timeout(std::time::Duration::from_secs(10), both.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
    );
    assert_eq!(count(&ch, "ga").await + count(&ch, "gb").await, 6);
    b.stop().await;
}

/// A global prefetch set while deliveries are outstanding counts them, as RabbitMQ's limiter
/// does: nothing more arrives until acks bring the channel under the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_prefetch_set_later_counts_what_is_unacked() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "gl").await;
    let mut cons = consume(&ch, "gl", "c", false).await;
    for i in 0..5u8 {
        publish(&ch, "", "gl", &[i]).await;
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next(&mut cons).await);
    }
    ch.basic_qos(3, BasicQosOptions { global: true })
        .await
        .unwrap();
    for i in 5..10u8 {
        publish(&ch, "", "gl", &[i]).await;
    }
    // Five unacked against a limit of three; acking three leaves room for one.
    got[2]
        .ack(BasicAckOptions { multiple: true })
        .await
        .unwrap();
    assert_eq!(next(&mut cons).await.data, vec![5]);
    assert_eq!(count(&ch, "gl").await, 4);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_return_when_the_channel_or_connection_closes() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "uq").await;
    for i in 0..4u8 {
        publish(&ch, "", "uq", &[i]).await;
    }
    let c2 = connect(&b).await;
    let ch2 = c2.create_channel().await.unwrap();
    let mut cons = consume(&ch2, "uq", "", false).await;
    let first = next(&mut cons).await;
    for _ in 1..4 {
        next(&mut cons).await;
    }
    first.ack(BasicAckOptions::default()).await.unwrap();
    ch2.close(200, "OK".into()).await.unwrap();
    assert_eq!(count(&ch, "uq").await, 3);
    for i in 1..4u8 {
        let m = ch
            .basic_get("uq".into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.delivery.data, vec![i]);
        assert!(m.delivery.redelivered);
    }
    // This time the whole connection goes.
    let c3 = connect(&b).await;
    let ch3 = c3.create_channel().await.unwrap();
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    let mut cons3 = consume(&ch3, "uq", "", false).await;
    for i in 1..4u8 {
        assert_eq!(next(&mut cons3).await.data, vec![i]);
    }
    c3.close(200, "OK".into()).await.unwrap();
    assert_eq!(count(&ch, "uq").await, 3);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_and_nested_headers_pass_through() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "props").await;
    let mut inner = FieldTable::default();
    inner.insert("deep".into(), AMQPValue::LongLongInt(-7));
    let mut headers = FieldTable::default();
    headers.insert("s".into(), AMQPValue::LongString("text".into()));
    headers.insert("i8".into(), AMQPValue::ShortShortInt(-3));
    headers.insert("u16".into(), AMQPValue::ShortUInt(65000));
    headers.insert("i32".into(), AMQPValue::LongInt(-100000));
    headers.insert("f".into(), AMQPValue::Float(1.5));
    headers.insert("d".into(), AMQPValue::Double(2.25));
    headers.insert("b".into(), AMQPValue::Boolean(true));
    headers.insert("t".into(), AMQPValue::Timestamp(1_700_000_000));
    headers.insert("v".into(), AMQPValue::Void);
    headers.insert(
        "bytes".into(),
        AMQPValue::ByteArray(vec![0u8, 255, 1].into()),
    );
    headers.insert("table".into(), AMQPValue::FieldTable(inner.clone()));
    headers.insert(
        "array".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongInt(1),
            AMQPValue::FieldTable(inner),
            AMQPValue::LongString("x".into()),
        ])),
    );
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(5)
        .with_correlation_id("corr".into())
        .with_reply_to("replies".into())
        .with_expiration("60000".into())
        .with_message_id("id-1".into())
        .with_timestamp(1_600_000_000)
        .with_type("kind".into())
        .with_user_id("guest".into())
        .with_app_id("app".into())
        .with_cluster_id("cl".into());
    ch.basic_publish(
        "".into(),
        "props".into(),
        Default::default(),
        b"{}",
        props.clone(),
    )
    .await
    .unwrap();
    let m = ch
        .basic_get("props".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.properties, props);
    assert_eq!(m.delivery.routing_key.as_str(), "props");
    assert_eq!(m.delivery.exchange.as_str(), "");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_round_trip_split_by_frame_max() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "big").await;
    let body: Vec<u8> = (0..(3 * 1024 * 1024 + 7))
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    publish(&ch, "", "big", &body).await;
    publish(&ch, "", "big", b"").await;
    let mut cons = consume(&ch, "big", "", true).await;
    assert_eq!(next(&mut cons).await.data, body);
    assert!(next(&mut cons).await.data.is_empty());
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_refused_with_406() {
    let b = start_with(Config {
        max_message_size: 1000,
        ..Config::default()
    })
    .await;
    let (c, ch) = channel(&b).await;
    declare(&ch, "limit").await;
    publish(&ch, "", "limit", &[0u8; 1000]).await;
    assert_eq!(
        publish_refused(&c, "", "limit", &[0u8; 1001]).await,
        Some(406)
    );
    assert_eq!(count(&ch, "limit").await, 1);
    b.stop().await;
}
