//! Quorum queues (`x-queue-type: quorum`) on a single node: a Raft group of one, with
//! RabbitMQ's declare rules, confirms once the entry is committed and applied, and
//! everything recovered from the group's log after a restart.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

use crate::common::{channel, code, durable, persistent, start};

fn quorum_args() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    t
}

pub(crate) async fn declare_quorum(ch: &Channel, name: &str) {
    ch.queue_declare(name.into(), durable(), quorum_args())
        .await
        .expect("quorum queue declared");
}

/// Publish `n` persistent messages with confirms (bodies `m{from}` on); the acks received.
pub(crate) async fn publish_confirmed(ch: &Channel, queue: &str, from: usize, n: usize) -> usize {
    crate::cluster::publish_confirmed_from(ch, queue, from, n)
        .await
        .0
}

async fn refused(ch: &Channel, opts: QueueDeclareOptions, args: FieldTable) -> (u16, String) {
    let e = ch
        .queue_declare("bad".into(), opts, args)
        .await
        .unwrap_err();
    (code(&e).unwrap(), e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_must_be_durable_shared_and_named() {
    let b = start().await;
    let c = crate::common::connect(&b).await;
    let cases = [
        (
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            quorum_args(),
            "invalid property 'auto-delete' for queue 'bad' in vhost '/'",
        ),
        (
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            quorum_args(),
            "invalid property 'exclusive-owner' for queue 'bad' in vhost '/'",
        ),
        (
            QueueDeclareOptions::default(),
            quorum_args(),
            "invalid property 'non-durable' for queue 'bad' in vhost '/'",
        ),
        (
            durable(),
            {
                let mut t = quorum_args();
                t.insert("x-max-priority".into(), AMQPValue::LongInt(5));
                t
            },
            "invalid arg 'x-max-priority' for queue 'bad' in vhost '/' of queue type rabbit_quorum_queue",
        ),
        (
            durable(),
            {
                let mut t = FieldTable::default();
                t.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("nonsense".into()),
                );
                t
            },
            "unsupported queue type 'nonsense'",
        ),
    ];
    for (opts, args, words) in cases {
        let ch = c.create_channel().await.unwrap();
        let (code, text) = refused(&ch, opts, args).await;
        assert_eq!(code, 406, "{text}");
        assert!(text.contains(words), "{text}");
    }
    // A server-named quorum queue is refused too; a classic queue of the name is not a
    // quorum one (406 on the type).
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .queue_declare("".into(), durable(), quorum_args())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare("plain".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let e = ch
        .queue_declare("plain".into(), durable(), quorum_args())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    // A global prefetch is not supported by quorum queues: 540 on consume, as RabbitMQ.
    let (_c2, ch) = channel(&b).await;
    declare_quorum(&ch, "gq").await;
    ch.basic_qos(5, BasicQosOptions { global: true })
        .await
        .unwrap();
    let e = ch
        .basic_consume(
            "gq".into(),
            "g".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(540), "{e}");
    assert!(e.to_string().contains("does not support global qos"), "{e}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_confirms_delivers_and_recovers_after_a_restart() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare_quorum(&ch, "qq").await;
    assert_eq!(publish_confirmed(&ch, "qq", 0, 100).await, 100);
    assert_eq!(crate::common::count(&ch, "qq").await, 100);
    // basic.get with ack and with reject-requeue: the rejected one comes back redelivered.
    let (_c2, ch2) = channel(&b).await;
    let m = ch2
        .basic_get("qq".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(
        (m.delivery.data.as_slice(), m.message_count),
        (&b"m0"[..], 99)
    );
    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    let m = ch2
        .basic_get("qq".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(m.delivery.data, b"m1");
    m.delivery
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    // A consumer with a prefetch, in order; the requeued m1 went to the tail (a quorum
    // queue without a delivery limit requeues there, as RabbitMQ's).
    ch2.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = crate::common::consume(&ch2, "qq", "c", false).await;
    for i in 2..51 {
        let d = consumer.next().await.expect("a delivery").unwrap();
        assert_eq!(d.data, format!("m{i}").as_bytes());
        assert!(!d.redelivered, "m{i}");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    // Closing the channel returns what the consumer held unacked (the prefetch).
    ch2.close(200, "bye".into()).await.unwrap();
    drop(consumer);
    assert_eq!(crate::common::count(&ch, "qq").await, 50);
    // A clean restart: the queue and its 50 messages are back, from the group's log.
    let b = b.restart().await;
    let (_c, ch) = channel(&b).await;
    assert_eq!(crate::common::count(&ch, "qq").await, 50);
    let m = ch
        .basic_get("qq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(m.delivery.data, b"m51");
    // Purge, then delete (if-unused is not supported on quorum queues: 540).
    let purged = ch
        .queue_purge("qq".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(purged, 49);
    assert_eq!(publish_confirmed(&ch, "qq", 0, 3).await, 3);
    let (_c3, ch3) = channel(&b).await;
    let e = ch3
        .queue_delete(
            "qq".into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(540), "{e}");
    let (_c4, ch4) = channel(&b).await;
    let deleted = ch4
        .queue_delete("qq".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(deleted, 3);
    assert_eq!(
        crate::common::passive_queue_code(&_c4, "qq").await,
        Some(404)
    );
    let _ = BasicProperties::default();
    b.stop().await;
}

/// A 3-node cluster: the queue is declared on node 1 (its first leader), published to from
/// node 2 and consumed from node 3, each node delivering from its own replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_is_used_from_every_node_of_a_cluster() {
    let cluster = crate::cluster::TestCluster::start(3, "");
    let (_c1, ch1) = cluster.channel(0).await;
    declare_quorum(&ch1, "rq").await;
    let (_c2, ch2) = cluster.channel(1).await;
    assert_eq!(publish_confirmed(&ch2, "rq", 0, 200).await, 200);
    let (_c3, ch3) = cluster.channel(2).await;
    assert_eq!(crate::common::count(&ch3, "rq").await, 200);
    ch3.basic_qos(20, BasicQosOptions::default()).await.unwrap();
    let mut consumer = crate::common::consume(&ch3, "rq", "far", false).await;
    for i in 0..200 {
        let d = consumer.next().await.expect("a delivery").unwrap();
        assert_eq!(d.data, format!("m{i}").as_bytes());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(crate::common::count(&ch1, "rq").await, 0);
}

/// A quorum queue deleted and declared again at once, from a member and from the leader's
/// node: delete-ok comes once this node's metadata has forgotten the queue (as RabbitMQ's
/// delete waits for its metadata removal), so the new declare makes a new queue, which takes
/// a confirmed publish. Before, delete-ok came as soon as the queue's own group applied the
/// delete, and the declare right after it often got 541 "no placement".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_quorum_queue_can_be_declared_again_at_once() {
    let cluster = crate::cluster::TestCluster::start(3, "");
    for node in [1, 0] {
        let (_c, ch) = cluster.channel(node).await;
        ch.confirm_select(Default::default()).await.unwrap();
        for round in 0..10 {
            ch.queue_delete("again".into(), QueueDeleteOptions::default())
                .await
                .unwrap();
            declare_quorum(&ch, "again").await;
            let confirm = ch
                .basic_publish(
                    "".into(),
                    "again".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    b"one",
                    persistent(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack(), "node {node} round {round}");
            assert!(confirm.take_message().is_none(), "returned unroutable");
            assert_eq!(
                crate::common::count(&ch, "again").await,
                1,
                "node {node} round {round}"
            );
        }
    }
}

/// kill -9 of the leader while a publisher on another node publishes with confirms and a
/// consumer on the third consumes with acks: a new leader takes over and both carry on; once
/// the publisher stops, every confirmed message is consumed (lost = 0) and nothing
/// unpublished arrives; duplicates (redeliveries of unacked ones) are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_confirmed_message() {
    let settings = "cluster_command_timeout_ms = 3000\n";
    let mut cluster = crate::cluster::TestCluster::start(3, settings);
    let (_c1, ch1) = cluster.channel(0).await;
    declare_quorum(&ch1, "jq").await;
    let (c2, ch2) = cluster.channel(1).await;
    let (_c3, ch3) = cluster.channel(2).await;
    ch3.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut consumer = crate::common::consume(&ch3, "jq", "checker", false).await;
    let publisher = crate::cluster::Publisher::start(ch2, "jq", Some(c2)).await;
    let mut received = Vec::new();
    // The nemesis strikes mid-stream: the leader (node 1, where it was declared) dies.
    while received.len() < 300 {
        received.push(crate::cluster::take_acked(&mut consumer).await);
    }
    let before = publisher.published();
    cluster.kill9(0);
    // Both sides carry on with the survivors: messages published after the kill arrive.
    while received.len() < before + 300 {
        received.push(crate::cluster::take_acked(&mut consumer).await);
    }
    let outcome = publisher.finish().await;
    crate::cluster::check_total_queue(&mut consumer, received, outcome, before).await;
}

/// Two queues led on two nodes, each taking 48 messages of 4 MiB as fast as its publisher
/// sends them: both leaders' appends cross the link between them at once. Every message is
/// confirmed (none nacked) and counted on the third node. Before, a replica took every
/// publish at once and, after a second, proposed again all that had not applied yet: the
/// copies added to the disk's load, and publishes were nacked at the command timeout (2 to
/// 37 of 48 confirmed). Now it takes no new commands while `quorum_max_pending_bytes` wait,
/// and proposes again only what was lost, or what waits while none of its proposals apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_leaders_replicating_large_messages_to_each_other_keep_up() {
    const N: usize = 48;
    let cluster = crate::cluster::TestCluster::start(3, "");
    let mut args = quorum_args();
    args.insert(
        "x-queue-leader-locator".into(),
        AMQPValue::LongString("client-local".into()),
    );
    let mut publishers = Vec::new();
    for (node, queue) in [(0, "big1"), (1, "big2")] {
        let (c, ch) = cluster.channel(node).await;
        ch.queue_declare(queue.into(), durable(), args.clone())
            .await
            .unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publishers.push(tokio::spawn(async move {
            let body = vec![b'x'; 4 << 20];
            let mut confirms = Vec::new();
            for _ in 0..N {
                let p = ch
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        &body,
                        persistent(),
                    )
                    .await
                    .unwrap();
                confirms.push(p);
            }
            let mut acked = 0;
            for p in confirms {
                acked += usize::from(p.await.unwrap().is_ack());
            }
            drop(c);
            acked
        }));
    }
    for p in publishers {
        assert_eq!(p.await.unwrap(), N, "every message confirmed");
    }
    let (_c3, ch3) = cluster.channel(2).await;
    for queue in ["big1", "big2"] {
        assert_eq!(crate::common::count(&ch3, queue).await, N as u32);
    }
}

/// The header of a delivery's properties, if any.
fn header(d: &lapin::message::Delivery, key: &str) -> Option<AMQPValue> {
    d.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key).cloned())
}

/// x-delivery-count counts the times a message came back (nack or reject with requeue, its
/// channel closing); basic.get always carries it; with x-delivery-limit a message is
/// dropped once it has come back more often than the limit (RabbitMQ 3.10 without
/// dead-lettering).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_counted_and_limited() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    let mut args = quorum_args();
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(2));
    ch.queue_declare("dl".into(), durable(), args)
        .await
        .unwrap();
    assert_eq!(publish_confirmed(&ch, "dl", 0, 1).await, 1);
    let get = async |ch: &Channel| {
        ch.basic_get("dl".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .map(|m| m.delivery)
    };
    let count = |d: &lapin::message::Delivery| match header(d, "x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => n,
        other => panic!("x-delivery-count {other:?}"),
    };
    // Three deliveries (the limit is 2 returns), the count 0, 1, 2; then it is gone.
    for want in 0..3 {
        let d = get(&ch).await.expect("the message");
        assert_eq!((count(&d), d.redelivered), (want, want > 0));
        d.nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert!(get(&ch).await.is_none(), "dropped past the delivery limit");
    // A consumer sees no header on a first delivery, and the count after a channel close.
    assert_eq!(publish_confirmed(&ch, "dl", 1, 1).await, 1);
    let ch2 = c.create_channel().await.unwrap();
    let mut consumer = crate::common::consume(&ch2, "dl", "c", false).await;
    let first = consumer.next().await.expect("a delivery").unwrap();
    assert_eq!(header(&first, "x-delivery-count"), None);
    ch2.close(200, "bye".into()).await.unwrap();
    let ch3 = c.create_channel().await.unwrap();
    let mut consumer = crate::common::consume(&ch3, "dl", "c", false).await;
    let again = consumer.next().await.expect("a delivery").unwrap();
    assert_eq!((count(&again), again.redelivered), (1, true));
    assert_eq!(again.data, b"m1");
    b.stop().await;
}

/// SIGSTOP of the leader (a hung node): the two others elect a leader and go on (what a
/// publisher on node 2 sends is confirmed and consumed on node 3); after SIGCONT the old
/// leader follows and has caught up (counts read on it see the latest publishes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_replaced_and_catches_up() {
    let cluster = crate::cluster::TestCluster::start(3, "");
    let (_c1, ch1) = cluster.channel(0).await;
    declare_quorum(&ch1, "sq").await;
    let (_c2, ch2) = cluster.channel(1).await;
    assert_eq!(publish_confirmed(&ch2, "sq", 0, 100).await, 100);
    let (_c3, ch3) = cluster.channel(2).await;
    crate::cluster::signal(&cluster, 0, "-STOP");
    assert_eq!(publish_confirmed(&ch2, "sq", 100, 100).await, 100);
    let mut consumer = crate::common::consume(&ch3, "sq", "c", false).await;
    for i in 0..200 {
        let d = consumer.next().await.expect("a delivery").unwrap();
        assert_eq!(d.data, format!("m{i}").as_bytes());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    crate::cluster::signal(&cluster, 0, "-CONT");
    ch3.basic_cancel("c".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    assert_eq!(publish_confirmed(&ch2, "sq", 200, 10).await, 10);
    // Node 1's connection from before the pause may have timed out: a new one.
    let (_c, ch) = cluster.channel(0).await;
    assert_eq!(crate::common::count(&ch, "sq").await, 10);
    let m = ch
        .basic_get("sq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(m.delivery.data, b"m200");
}

/// A quorum queue's messages count against the memory alarm: past the watermark its
/// publishers are blocked, and purging it unblocks them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_counts_against_the_memory_alarm() {
    let b = crate::common::start_with(warren::Config {
        memory_high_watermark_bytes: Some(1 << 20),
        ..warren::Config::default()
    })
    .await;
    let publisher = crate::common::connect(&b).await;
    let mut events = publisher.events_listener();
    let pch = publisher.create_channel().await.unwrap();
    declare_quorum(&pch, "mq").await;
    // Confirmed one at a time, so that once the filler is done every message is in the
    // queue, for the last purge to count.
    pch.confirm_select(Default::default()).await.unwrap();
    const SENT: u32 = 20;
    let mut filling = {
        let pch = pch.clone();
        tokio::spawn(async move {
            let body = vec![1u8; 64 * 1024];
            for _ in 0..SENT {
                let confirm = pch
                    .basic_publish(
                        "".into(),
                        "mq".into(),
                        Default::default(),
                        &body,
                        Default::default(),
                    )
                    .await
                    .unwrap();
                assert!(confirm.await.unwrap().is_ack());
            }
        })
    };
    let blocked = crate::common::until_blocked(&mut events).await;
    assert_eq!(blocked, "low on memory");
    let (_c, ch) = channel(&b).await;
    let purge = || async {
        ch.queue_purge("mq".into(), QueuePurgeOptions::default())
            .await
            .unwrap()
    };
    // Each message counts in the state and in the Raft log in memory (and while in
    // flight), so the 1 MiB alarm goes off with about 8 of the 64 KiB messages queued; it clears once they are purged and the
    // log behind them is compacted. What the publisher sends after that may set it off
    // again: purge each time until every publish is in.
    let first = purge().await;
    assert!(first >= 4, "{first}");
    let mut purged = first;
    let mut rounds = 1;
    loop {
        crate::common::until_unblocked(&mut events).await;
        tokio::select! {
            done = &mut filling => {
                done.unwrap();
                break;
            }
            reason = crate::common::until_blocked(&mut events) => {
                assert_eq!(reason, "low on memory");
                assert!(rounds < SENT, "blocked more often than there are messages");
                rounds += 1;
                purged += purge().await;
            }
        }
    }
    purged += purge().await;
    assert_eq!(purged, SENT, "every publish reached the queue once");
    b.stop().await;
}

async fn declare_durable(ch: &Channel, name: &str) {
    ch.queue_declare(name.into(), durable(), FieldTable::default())
        .await
        .expect("durable queue declared");
}

fn text_arg(key: &str, value: &str) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(key.into(), AMQPValue::LongString(value.into()));
    t
}

/// The type the status API gives a queue.
async fn http_type(b: &crate::common::TestBroker, name: &str) -> String {
    let addr = b.server.as_ref().unwrap().http_addr.expect("HTTP API on");
    let q = crate::common::http_queue(addr, name).await;
    q["type"].as_str().unwrap().to_string()
}

fn with_http(mut config: warren::Config) -> warren::Config {
    config.http_listen = "127.0.0.1:0".into();
    config
}

/// `default_queue_type = "quorum"`: a durable, shared queue declared without x-queue-type is
/// a quorum queue (and redeclaring it the same way is no 406); transient, exclusive and
/// auto-delete ones stay classic, and so does a classic queue declared before the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_queue_type_makes_durable_shared_queues_quorum() {
    let b = crate::common::start_with(with_http(warren::Config::default())).await;
    {
        let (_c, ch) = channel(&b).await;
        declare_durable(&ch, "before").await;
    }
    assert_eq!(http_type(&b, "before").await, "classic");
    let mut b = b;
    b.config.default_queue_type = "quorum".into();
    let b = b.restart().await;
    let (c, ch) = channel(&b).await;
    declare_durable(&ch, "before").await;
    assert_eq!(http_type(&b, "before").await, "classic");
    declare_durable(&ch, "dq").await;
    assert_eq!(http_type(&b, "dq").await, "quorum");
    declare_durable(&ch, "dq").await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare("dq".into(), passive, FieldTable::default())
        .await
        .unwrap();
    let e = ch
        .queue_declare("dq".into(), durable(), text_arg("x-queue-type", "classic"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    assert!(
        e.to_string().contains("inequivalent arg 'x-queue-type'"),
        "{e}"
    );
    let ch = c.create_channel().await.unwrap();
    for (name, opts) in [
        ("transient", QueueDeclareOptions::default()),
        (
            "exclusive",
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
        ),
        (
            "auto-delete",
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
        ),
    ] {
        ch.queue_declare(name.into(), opts, FieldTable::default())
            .await
            .unwrap();
        assert_eq!(http_type(&b, name).await, "classic", "{name}");
    }
    assert_eq!(publish_confirmed(&ch, "dq", 0, 20).await, 20);
    assert_eq!(crate::common::count(&ch, "dq").await, 20);
    b.stop().await;
}

/// RabbitMQ's rule: x-queue-type "classic" and no x-queue-type are the same type, so either
/// redeclares the other; quorum is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_and_no_queue_type_are_equivalent() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    declare_durable(&ch, "plain").await;
    ch.queue_declare(
        "plain".into(),
        durable(),
        text_arg("x-queue-type", "classic"),
    )
    .await
    .expect("classic redeclares a queue declared without a type");
    ch.queue_declare(
        "named".into(),
        durable(),
        text_arg("x-queue-type", "classic"),
    )
    .await
    .unwrap();
    declare_durable(&ch, "named").await;
    let e = ch
        .queue_declare("plain".into(), durable(), quorum_args())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    let ch = c.create_channel().await.unwrap();
    declare_quorum(&ch, "qq").await;
    let e = ch
        .queue_declare("qq".into(), durable(), FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    b.stop().await;
}

/// x-queue-leader-locator takes RabbitMQ's values, is refused otherwise (406), and must be
/// equivalent on redeclare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_locator_argument_is_checked() {
    let b = start().await;
    let c = crate::common::connect(&b).await;
    let with_locator = |locator: &str| {
        let mut t = quorum_args();
        t.insert(
            "x-queue-leader-locator".into(),
            AMQPValue::LongString(locator.into()),
        );
        t
    };
    let ch = c.create_channel().await.unwrap();
    let (status, text) = refused(&ch, durable(), with_locator("nearby")).await;
    assert_eq!(status, 406);
    assert!(
        text.contains("invalid arg 'x-queue-leader-locator' for queue 'bad' in vhost '/'"),
        "{text}"
    );
    let ch = c.create_channel().await.unwrap();
    for (name, locator) in [("local", "client-local"), ("spread", "balanced")] {
        ch.queue_declare(name.into(), durable(), with_locator(locator))
            .await
            .unwrap();
    }
    let e = ch
        .queue_declare("local".into(), durable(), with_locator("balanced"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    b.stop().await;
}

/// The status API: basic auth as the broker's user (401 otherwise), 404 for a queue that is
/// not there, every queue listed with its type, and a single node's quorum queue led by
/// node 0 with its Raft indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_api_shows_queues_to_the_broker_user() {
    use crate::common::http_get;
    let b = crate::common::start_with(with_http(warren::Config::default())).await;
    let addr = b.server.as_ref().unwrap().http_addr.unwrap();
    let (_c, ch) = channel(&b).await;
    declare_quorum(&ch, "qq").await;
    declare_durable(&ch, "cq").await;
    assert_eq!(publish_confirmed(&ch, "qq", 0, 5).await, 5);
    let guest = Some(("guest", "guest"));
    for auth in [None, Some(("guest", "wrong")), Some(("nobody", "guest"))] {
        let (status, body) = http_get(addr, "/api/queues", auth).await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert_eq!(body["error"], "not_authorised");
    }
    let (status, _) = http_get(addr, "/api/queues/%2F/none", guest).await;
    assert_eq!(status, 404);
    let (status, _) = http_get(addr, "/api/queues/other/qq", guest).await;
    assert_eq!(status, 404);
    let (status, list) = http_get(addr, "/api/queues", guest).await;
    assert_eq!(status, 200);
    let kinds: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["name"].as_str().unwrap().into(),
                q["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("cq".into(), "classic".into()),
            ("qq".into(), "quorum".into())
        ]
    );
    let q = crate::common::http_queue(addr, "qq").await;
    assert_eq!(q["messages"], 5, "{q}");
    assert_eq!(q["members"], serde_json::json!([0]), "{q}");
    assert_eq!(q["online"], serde_json::json!([0]), "{q}");
    assert_eq!(q["leader"], 0, "{q}");
    let raft = &q["raft"];
    assert!(raft["commit_index"].as_u64().unwrap() >= 1, "{q}");
    assert_eq!(raft["commit_index"], raft["applied_index"], "{q}");
    assert_eq!(
        raft["lag"],
        serde_json::json!([{"node": 0, "raft_id": 1, "entries": 0}]),
        "{q}"
    );
    let c = crate::common::http_queue(addr, "cq").await;
    assert_eq!(c["messages"], 0, "{c}");
    assert!(c.get("raft").is_none(), "{c}");
    let put = |path: &'static str| crate::common::http_call(addr, "PUT", path, guest);
    let (status, body) = put("/api/queues/%2F/cq/leader/0").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("not a quorum queue"),
        "{body}"
    );
    let (status, body) = put("/api/queues/%2F/qq/leader/0").await;
    assert_eq!(
        (status, &body["leader"]),
        (200, &serde_json::json!(0)),
        "{body}"
    );
    b.stop().await;
}

/// Poll node `api`'s status API until `check` holds for the queue, at most 30 s; the queue
/// as it was then.
pub(crate) async fn until_status(
    api: std::net::SocketAddr,
    name: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let q = crate::common::http_queue(api, name).await;
        if check(&q) {
            return q;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: never {what}: {q}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Leaders spread over the nodes (`balanced`, the default: the node leading the fewest),
/// `client-local` keeps the leader on the declaring node, leadership is handed to another
/// member on request (`PUT .../leader/{node}`), and the status API shows each
/// queue's members, which are online and, on the leader, each member's lag; a killed node
/// goes offline and falls behind, and the queue it led gets a new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_spread_and_the_status_api_shows_members_and_lag() {
    let mut cluster = crate::cluster::TestCluster::start(3, "");
    let (_c1, ch1) = cluster.channel(0).await;
    let api = cluster.http(0).await;
    // Placement counts only nodes node 1 has a link to: wait for both.
    for peer in [2, 3] {
        cluster
            .until_said(0, &format!("node link up peer={peer} "), 0)
            .await;
    }
    // One leader per node, the declaring node first (each placed node leads: if another
    // wins the first election, the placed one asks for the lead).
    for (name, leader) in [("s1", 1), ("s2", 2), ("s3", 3)] {
        declare_quorum(&ch1, name).await;
        until_led_by(api, name, &[leader]).await;
    }
    let mut local = quorum_args();
    local.insert(
        "x-queue-leader-locator".into(),
        AMQPValue::LongString("client-local".into()),
    );
    ch1.queue_declare("s4".into(), durable(), local)
        .await
        .unwrap();
    until_led_by(api, "s4", &[1]).await; // client-local
    declare_quorum(&ch1, "s5").await;
    until_led_by(api, "s5", &[2]).await; // the fewest leaders, the lowest id on a tie

    // Leadership handed over through a node that does not lead (raft-rs forwards it).
    let api3 = cluster.http(2).await;
    let guest = Some(("guest", "guest"));
    let put = |path: &'static str| crate::common::http_call(api3, "PUT", path, guest);
    let (status, moved) = put("/api/queues/%2F/s2/leader/1").await;
    assert_eq!(
        (status, &moved["leader"]),
        (200, &serde_json::json!(1)),
        "{moved}"
    );
    until_led_by(api, "s2", &[1]).await;
    assert_eq!(publish_confirmed(&ch1, "s2", 0, 10).await, 10);
    for (path, want) in [
        ("/api/queues/%2F/s2/leader/7", 400),
        ("/api/queues/%2F/none/leader/1", 404),
    ] {
        let (status, body) = put(path).await;
        assert_eq!(status, want, "{path}: {body}");
    }
    let (status, _) =
        crate::common::http_call(api3, "PUT", "/api/queues/%2F/s2/leader/2", None).await;
    assert_eq!(status, 401);

    let q = crate::common::http_queue(api, "s1").await;
    assert_eq!(q["members"], serde_json::json!([1, 2, 3]), "{q}");
    assert_eq!(q["online"], serde_json::json!([1, 2, 3]), "{q}");
    assert_eq!(publish_confirmed(&ch1, "s1", 0, 100).await, 100);
    let lags = |q: &serde_json::Value| -> Vec<(u64, u64)> {
        q["raft"]["lag"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|m| (m["node"].as_u64().unwrap(), m["entries"].as_u64().unwrap()))
                    .collect()
            })
            .unwrap_or_default()
    };
    until_status(api, "s1", "caught up everywhere", |q| {
        lags(q) == [(1, 0), (2, 0), (3, 0)]
    })
    .await;

    cluster.kill9(2);
    assert_eq!(publish_confirmed(&ch1, "s1", 100, 30).await, 30);
    let q = until_status(api, "s1", "without node 3", |q| {
        q["online"] == serde_json::json!([1, 2])
    })
    .await;
    let l = lags(&q);
    assert_eq!(l.len(), 3, "{q}");
    assert_eq!(&l[..2], [(1, 0), (2, 0)], "{q}");
    assert!(l[2].0 == 3 && l[2].1 > 0, "node 3 falls behind: {q}");
    let led = until_led_by(api, "s3", &[1, 2]).await;
    assert!([1, 2].contains(&led), "{led}");
    assert_eq!(crate::common::count(&ch1, "s1").await, 130);
}

pub(crate) async fn until_led_by(api: std::net::SocketAddr, name: &str, nodes: &[u64]) -> u64 {
    let q = until_status(api, name, "led by a survivor", |q| {
        q["leader"].as_u64().is_some_and(|l| nodes.contains(&l))
    })
    .await;
    q["leader"].as_u64().unwrap()
}

/// A transaction's part for a quorum queue is one log entry: invisible until commit, then
/// all there, and its acks take effect at commit. Without a majority the part cannot
/// commit, and tx.commit fails with RabbitMQ's 406 "partial tx completion" (before, it
/// answered commit-ok for a publish the queue never took).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_on_a_quorum_queue_commits_whole_or_fails() {
    let cluster = crate::cluster::TestCluster::start(3, "cluster_command_timeout_ms = 2000\n");
    let (c1, ch1) = cluster.channel(0).await;
    declare_quorum(&ch1, "tq").await;
    declare_durable(&ch1, "tc").await;
    let tch = c1.create_channel().await.unwrap();
    tch.tx_select().await.unwrap();
    for (queue, body) in [("tq", "a"), ("tq", "b"), ("tq", "c"), ("tc", "d")] {
        tch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            persistent(),
        )
        .await
        .unwrap();
    }
    assert_eq!(crate::common::count(&ch1, "tq").await, 0);
    tch.tx_commit().await.unwrap();
    // Read on another node: the committed part is replicated.
    let (_c2, ch2) = cluster.channel(1).await;
    assert_eq!(crate::common::count(&ch2, "tq").await, 3);
    assert_eq!(crate::common::count(&ch2, "tc").await, 1);

    for body in ["a", "b"] {
        let m = tch
            .basic_get("tq".into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("a message");
        assert_eq!(m.delivery.data, body.as_bytes());
        tch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
            .await
            .unwrap();
    }
    tch.tx_commit().await.unwrap();
    // Committed acks stay: closing the channel requeues nothing.
    tch.close(200, "OK".into()).await.unwrap();
    assert_eq!(crate::common::count(&ch2, "tq").await, 1);

    // Two of three nodes hung: the quorum queue's part cannot commit.
    let tch = tx_channel_with(&c1, b"e").await;
    crate::cluster::signal(&cluster, 1, "-STOP");
    crate::cluster::signal(&cluster, 2, "-STOP");
    let e = tch.tx_commit().await.unwrap_err();
    crate::cluster::signal(&cluster, 1, "-CONT");
    crate::cluster::signal(&cluster, 2, "-CONT");
    assert_eq!(crate::common::code(&e), Some(406), "{e}");
    assert!(e.to_string().contains("partial tx completion"), "{e}");
    // The connection carries on: once the majority is back, a commit goes through.
    // (Wait for the leader, wherever it is now, to see every member caught up.)
    let mut apis = Vec::new();
    for i in 0..3 {
        apis.push(cluster.http(i).await);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    'caught_up: loop {
        for api in &apis {
            let q = crate::common::http_queue(*api, "tq").await;
            let lag = q["raft"]["lag"].as_array().cloned().unwrap_or_default();
            if lag.len() == 3 && lag.iter().all(|m| m["entries"] == 0) {
                break 'caught_up;
            }
        }
        assert!(std::time::Instant::now() < deadline, "tq never caught up");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let tch = tx_channel_with(&c1, b"f").await;
    tch.tx_commit().await.unwrap();
    let n = crate::common::count(&ch1, "tq").await;
    assert!((2..=3).contains(&n), "c, f and perhaps e: {n}");
}

/// A transaction's part for a quorum queue, its publishes and its acks, is one log entry,
/// applied whole (before, the acks were a second entry, proposed after commit-ok). Counted
/// on a single node's group through the status API: a commit of a publish and an ack
/// moves the log by exactly one entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactions_publishes_and_acks_on_a_quorum_queue_are_one_log_entry() {
    let b = crate::common::start_with(with_http(warren::Config::default())).await;
    let api = b.server.as_ref().unwrap().http_addr.unwrap();
    let (c, ch) = channel(&b).await;
    declare_quorum(&ch, "tq").await;
    assert_eq!(publish_confirmed(&ch, "tq", 0, 2).await, 2);
    let tch = c.create_channel().await.unwrap();
    tch.tx_select().await.unwrap();
    let (before, after) = crate::common::tx_publish_and_ack(&tch, &ch, api, "tq").await;
    assert_eq!(
        after,
        before + 1,
        "one log entry for the publish and the ack"
    );
    // The ack holds: closing the channel requeues nothing.
    tch.close(200, "OK".into()).await.unwrap();
    assert_eq!(crate::common::count(&ch, "tq").await, 2);
    b.stop().await;
}

/// A new channel in tx mode with one persistent publish to "tq" staged.
async fn tx_channel_with(c: &lapin::Connection, body: &[u8]) -> Channel {
    let tch = c.create_channel().await.unwrap();
    tch.tx_select().await.unwrap();
    tch.basic_publish(
        "".into(),
        "tq".into(),
        BasicPublishOptions::default(),
        body,
        persistent(),
    )
    .await
    .unwrap();
    tch
}
