//! Time in queues: x-message-ttl, the per-message expiration property, and x-expires.
//! These are about time, so the tests wait for it: each one polls for the outcome with a
//! deadline rather than sleeping a fixed guess.

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};

use crate::common::*;

fn args(pairs: &[(&str, i64)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), AMQPValue::LongLongInt(*v));
    }
    t
}

async fn declare_args(ch: &Channel, name: &str, a: FieldTable) {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), a)
        .await
        .expect("queue.declare");
}

async fn publish_props(ch: &Channel, queue: &str, body: &[u8], props: BasicProperties) {
    ch.basic_publish("".into(), queue.into(), Default::default(), body, props)
        .await
        .expect("publish");
}

/// Poll `cond` every 10 ms until it holds; false after 5 s.
async fn eventually<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_expire_after_the_queue_ttl() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare_args(&ch, "ttlq", args(&[("x-message-ttl", 300)])).await;
    let started = Instant::now();
    for i in 0..3u8 {
        publish(&ch, "", "ttlq", &[i]).await;
    }
    let n = count(&ch, "ttlq").await;
    if started.elapsed() < Duration::from_millis(250) {
        assert_eq!(n, 3, "nothing expires before its TTL");
    }
    assert!(eventually(|| async { count(&ch, "ttlq").await == 0 }).await);
    // Deadlines are whole milliseconds of the broker's clock, so one stamped just before a
    // millisecond ends can pass up to 1 ms early (a CI run saw 299.x ms).
    assert!(started.elapsed() >= Duration::from_millis(299));
    // A message that is consumed in time is delivered normally.
    publish(&ch, "", "ttlq", b"fresh").await;
    assert_eq!(get_body(&ch, "ttlq").await.as_deref(), Some(&b"fresh"[..]));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiration_property_and_the_shorter_ttl_win() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "expq").await;
    declare_args(&ch, "both", args(&[("x-message-ttl", 60_000)])).await;
    let short = BasicProperties::default().with_expiration("100".into());
    publish_props(&ch, "expq", b"short", short.clone()).await;
    publish_props(&ch, "expq", b"keeps", BasicProperties::default()).await;
    publish_props(&ch, "both", b"short", short).await;
    assert!(eventually(|| async { count(&ch, "expq").await == 1 }).await);
    assert!(eventually(|| async { count(&ch, "both").await == 0 }).await);
    assert_eq!(get_body(&ch, "expq").await.as_deref(), Some(&b"keeps"[..]));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_zero_reaches_a_waiting_consumer_and_is_dropped_otherwise() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    declare_args(&ch, "zero", args(&[("x-message-ttl", 0)])).await;
    publish(&ch, "", "zero", b"nobody").await;
    assert_eq!(count(&ch, "zero").await, 0);
    let cch = c.create_channel().await.unwrap();
    let mut consumer = cch
        .basic_consume(
            "zero".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish(&ch, "", "zero", b"waited for").await;
    let d = consumer.next().await.unwrap().unwrap();
    assert_eq!(d.data, b"waited for");
    b.stop().await;
}

/// Whether the default exchange still routes to `queue` (a mandatory publish comes back
/// when it does not). Publishing does not count as using the queue for x-expires.
async fn routes_to(ch: &Channel, queue: &str) -> bool {
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"probe",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    matches!(confirm, Confirmation::Ack(None))
}

/// x-expires: an unused queue is deleted (404 after, not routed to); one with a consumer
/// is not. `declare` declares a queue with the given arguments.
async fn unused_queues_expire<F, Fut>(declare: F, args: fn(&[(&str, i64)]) -> FieldTable)
where
    F: Fn(Channel, &'static str, FieldTable) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let b = start().await;
    let (c, ch) = channel(&b).await;
    ch.confirm_select(Default::default()).await.unwrap();
    declare(ch.clone(), "gone-soon", args(&[("x-expires", 200)])).await;
    declare(ch.clone(), "consumed", args(&[("x-expires", 200)])).await;
    let cch = c.create_channel().await.unwrap();
    let _consumer = cch
        .basic_consume(
            "consumed".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    assert!(eventually(|| async { !routes_to(&ch, "gone-soon").await }).await);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(passive_queue_code(&c, "gone-soon").await, Some(404));
    // The consumed queue outlives it, however long it waits.
    assert!(routes_to(&ch, "consumed").await);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_queues_expire_and_used_ones_do_not() {
    unused_queues_expire(
        |ch, name, a| async move { declare_args(&ch, name, a).await },
        args,
    )
    .await;
}

fn quorum(pairs: &[(&str, i64)]) -> FieldTable {
    let mut t = args(pairs);
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    t
}

async fn declare_quorum_args(ch: &Channel, name: &str, a: FieldTable) {
    ch.queue_declare(name.into(), durable(), a)
        .await
        .expect("quorum queue.declare");
}

/// x-message-ttl and the expiration property on a quorum queue (RabbitMQ 3.10 has both):
/// the leader's tick, a log entry, drops what has expired on every replica; a message taken
/// in time is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queue_messages_expire() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare_quorum_args(&ch, "qttl", quorum(&[("x-message-ttl", 300)])).await;
    declare_quorum_args(&ch, "qexp", quorum(&[])).await;
    let started = Instant::now();
    for i in 0..3u8 {
        publish(&ch, "", "qttl", &[i]).await;
    }
    let short = BasicProperties::default().with_expiration("100".into());
    publish_props(&ch, "qexp", b"short", short).await;
    publish_props(&ch, "qexp", b"keeps", BasicProperties::default()).await;
    assert!(eventually(|| async { count(&ch, "qttl").await == 0 }).await);
    assert!(started.elapsed() >= Duration::from_millis(299));
    assert!(eventually(|| async { count(&ch, "qexp").await == 1 }).await);
    assert_eq!(get_body(&ch, "qexp").await.as_deref(), Some(&b"keeps"[..]));
    publish(&ch, "", "qttl", b"fresh").await;
    assert_eq!(get_body(&ch, "qttl").await.as_deref(), Some(&b"fresh"[..]));
    b.stop().await;
}

/// x-expires on a quorum queue, as on a classic one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_quorum_queues_expire() {
    let declare = |ch: Channel, name, a| async move { declare_quorum_args(&ch, name, a).await };
    unused_queues_expire(declare, quorum).await;
}
