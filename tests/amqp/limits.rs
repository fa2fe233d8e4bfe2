//! Queue length limits (x-max-length, x-max-length-bytes, x-overflow) and the confirms they
//! give: drop-head keeps the newest messages; reject-publish nacks what does not fit.

use bytes::BytesMut;
use lapin::Confirmation;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use warren::protocol::{AMQPClass, FieldTable as WFieldTable, basic, confirm, encode, queue};

use crate::common::*;

fn limits(max_length: Option<i64>, max_bytes: Option<i64>, overflow: Option<&str>) -> FieldTable {
    let mut t = FieldTable::default();
    if let Some(n) = max_length {
        t.insert("x-max-length".into(), AMQPValue::LongLongInt(n));
    }
    if let Some(n) = max_bytes {
        t.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(n));
    }
    if let Some(o) = overflow {
        t.insert("x-overflow".into(), AMQPValue::LongString(o.into()));
    }
    t
}

async fn declare_with(ch: &Channel, name: &str, durable: bool, args: FieldTable) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("queue.declare");
}

/// Publish each body on a confirm channel and wait for every confirm: true for an ack.
async fn confirmed(ch: &Channel, queue: &str, bodies: &[&[u8]], persistent: bool) -> Vec<bool> {
    let props = if persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let mut waits = Vec::new();
    for body in bodies {
        waits.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                props.clone(),
            )
            .await
            .expect("publish"),
        );
    }
    let mut acks = Vec::new();
    for w in waits {
        match w.await.expect("confirm") {
            Confirmation::Ack(_) => acks.push(true),
            Confirmation::Nack(_) => acks.push(false),
            Confirmation::NotRequested => panic!("not in confirm mode"),
        }
    }
    acks
}

async fn drain(ch: &Channel, queue: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(body) = get_body(ch, queue).await {
        out.push(body);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_head_keeps_the_newest_messages_by_count_and_by_bytes() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare_with(&ch, "by-count", false, limits(Some(3), None, None)).await;
    declare_with(
        &ch,
        "by-bytes",
        false,
        limits(None, Some(25), Some("drop-head")),
    )
    .await;
    ch.confirm_select(Default::default()).await.unwrap();
    let bodies: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10]).collect();
    let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_slice()).collect();
    // drop-head never refuses a publish.
    assert_eq!(confirmed(&ch, "by-count", &refs, false).await, [true; 5]);
    assert_eq!(confirmed(&ch, "by-bytes", &refs, false).await, [true; 5]);
    assert_eq!(count(&ch, "by-count").await, 3);
    assert_eq!(drain(&ch, "by-count").await, bodies[2..]);
    // 25 bytes hold two 10-byte bodies.
    assert_eq!(drain(&ch, "by-bytes").await, bodies[3..]);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_nacks_what_does_not_fit_and_unacked_messages_do_not_count() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    declare_with(
        &ch,
        "rp",
        false,
        limits(Some(2), None, Some("reject-publish")),
    )
    .await;
    ch.confirm_select(Default::default()).await.unwrap();
    let got = confirmed(&ch, "rp", &[b"a", b"b", b"c", b"d"], false).await;
    assert_eq!(got, [true, true, false, false]);
    assert_eq!(count(&ch, "rp").await, 2);
    // A delivered, unacked message no longer counts against the limit.
    let consumer = c.create_channel().await.unwrap();
    let held = consumer
        .basic_get("rp".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(held.delivery.data, b"a");
    assert_eq!(
        confirmed(&ch, "rp", &[b"e", b"f"], false).await,
        [true, false]
    );
    // reject-publish-dlx refuses the same way (there is no dead-letter exchange to use).
    declare_with(
        &ch,
        "rpd",
        false,
        limits(Some(1), None, Some("reject-publish-dlx")),
    )
    .await;
    assert_eq!(
        confirmed(&ch, "rpd", &[b"x", b"y"], false).await,
        [true, false]
    );
    // Publishes without confirms are dropped silently; the channel stays open.
    let plain = c.create_channel().await.unwrap();
    publish(&plain, "", "rpd", b"z").await;
    assert_eq!(count(&plain, "rpd").await, 1);
    assert_eq!(drain(&ch, "rp").await, [b"b".to_vec(), b"e".to_vec()]);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_limit_refuses_a_body_that_would_not_fit() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare_with(
        &ch,
        "rb",
        false,
        limits(None, Some(10), Some("reject-publish")),
    )
    .await;
    ch.confirm_select(Default::default()).await.unwrap();
    let got = confirmed(&ch, "rb", &[&[1; 6], &[2; 5], &[3; 4], &[]], false).await;
    assert_eq!(got, [true, false, true, true]);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_persistent_messages_leave_nothing_behind_across_a_restart() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    declare_with(
        &ch,
        "drp",
        true,
        limits(Some(2), None, Some("reject-publish")),
    )
    .await;
    declare_with(&ch, "ddh", true, limits(Some(2), None, None)).await;
    ch.confirm_select(Default::default()).await.unwrap();
    let bodies: [&[u8]; 4] = [b"1", b"2", b"3", b"4"];
    assert_eq!(
        confirmed(&ch, "drp", &bodies, true).await,
        [true, true, false, false]
    );
    assert_eq!(confirmed(&ch, "ddh", &bodies, true).await, [true; 4]);
    drop(c);
    let b = b.restart().await;
    let (_c, ch) = channel(&b).await;
    assert_eq!(drain(&ch, "drp").await, [b"1".to_vec(), b"2".to_vec()]);
    assert_eq!(drain(&ch, "ddh").await, [b"3".to_vec(), b"4".to_vec()]);
    // The limit is part of the recovered queue.
    ch.confirm_select(Default::default()).await.unwrap();
    let got = confirmed(&ch, "drp", &[b"5", b"6", b"7"], true).await;
    assert_eq!(got, [true, true, false]);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_limit_counts_paged_out_messages_after_a_restart() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    declare_with(
        &ch,
        "pb",
        true,
        limits(None, Some(1000), Some("reject-publish")),
    )
    .await;
    ch.confirm_select(Default::default()).await.unwrap();
    let body = [7u8; 300];
    let got = confirmed(&ch, "pb", &[&body, &body, &body, &body], true).await;
    assert_eq!(got, [true, true, true, false]);
    drop(c);
    // After the restart the bodies are only on disk; their sizes still count.
    let b = b.restart().await;
    let (_c, ch) = channel(&b).await;
    ch.confirm_select(Default::default()).await.unwrap();
    assert_eq!(
        confirmed(&ch, "pb", &[&body, &[1; 100]], true).await,
        [false, true]
    );
    assert_eq!(count(&ch, "pb").await, 4);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_limit_arguments_are_406() {
    let b = start().await;
    let c = connect(&b).await;
    for args in [
        limits(Some(-1), None, None),
        limits(None, Some(-5), None),
        limits(Some(1), None, Some("drop-tail")),
    ] {
        let ch = c.create_channel().await.unwrap();
        let err = ch
            .queue_declare("bad".into(), QueueDeclareOptions::default(), args)
            .await
            .unwrap_err();
        assert_eq!(code(&err), Some(406), "{err}");
    }
    assert_eq!(passive_queue_code(&c, "bad").await, Some(404));
    b.stop().await;
}

/// One read with four publishes to a queue that takes two: the wire shows one `multiple`
/// ack for the first two (when they share a flush) and a nack of its own for each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_of_a_partly_refused_batch_cover_each_tag_exactly_once() {
    let b = start().await;
    let mut raw = Raw::connect(&b).await;
    raw.open(0, 0).await;
    raw.open_channel(1).await;
    let mut args = WFieldTable::default();
    args.insert(
        "x-max-length".into(),
        warren::protocol::AMQPValue::LongInt(2),
    );
    args.insert(
        "x-overflow".into(),
        warren::protocol::AMQPValue::LongString("reject-publish".into()),
    );
    let ok = raw
        .call(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "wire".into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: args,
            })),
        )
        .await;
    assert!(matches!(
        ok,
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))
    ));
    let ok = raw
        .call(
            1,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )
        .await;
    assert!(matches!(
        ok,
        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))
    ));
    let mut out = BytesMut::new();
    for i in 0..4u8 {
        encode::method(
            &mut out,
            1,
            &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "wire".into(),
                mandatory: false,
                immediate: false,
            })),
        );
        encode::content(&mut out, 1, &[0, 0], &[i], 1 << 20);
    }
    raw.send(&out).await;
    // Expand `multiple` the way a client does: it covers every open tag up to its own.
    let mut open: Vec<u64> = vec![1, 2, 3, 4];
    let (mut acked, mut nacked) = (Vec::new(), Vec::new());
    while !open.is_empty() {
        let (ch, m) = raw.next_method().await.expect("a confirm");
        assert_eq!(ch, 1);
        let (tag, multiple, into) = match m {
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => (a.delivery_tag, a.multiple, &mut acked),
            AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => {
                (n.delivery_tag, n.multiple, &mut nacked)
            }
            other => panic!("unexpected {other:?}"),
        };
        assert!(open.contains(&tag), "tag {tag} confirmed twice");
        let covered: Vec<u64> = open
            .iter()
            .copied()
            .filter(|t| *t == tag || (multiple && *t < tag))
            .collect();
        open.retain(|t| !covered.contains(t));
        into.extend(covered);
    }
    assert_eq!(acked, [1, 2]);
    assert_eq!(nacked, [3, 4]);
    b.stop().await;
}
