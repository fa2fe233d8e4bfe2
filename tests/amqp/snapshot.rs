//! Quorum queue snapshots: a replica snapshots its state and compacts its log, restarts
//! from the snapshot and the entries after it, and a follower too far behind catches up
//! from the leader's snapshot. `quorum_snapshot_bytes` is small here so that a few hundred
//! KiB of messages make several snapshots.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer};

use crate::common::{channel, persistent};

fn quorum_args() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    t
}

/// Message `i`: 1 KiB, starting with "m{i};".
fn body(i: usize) -> Vec<u8> {
    let mut b = format!("m{i};").into_bytes();
    b.resize(1024, b'.');
    b
}

/// Publish messages `from..to` one at a time, each confirmed before the next (so each is
/// an entry of its own in the queue's log).
async fn publish_one_by_one(ch: &Channel, queue: &str, from: usize, to: usize) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in from..to {
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body(i),
                persistent(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "m{i} nacked");
    }
}

/// The next delivery of `consumer`, which must be message `i`, whole.
async fn next_is(consumer: &mut Consumer, i: usize) -> lapin::message::Delivery {
    let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .unwrap_or_else(|_| panic!("m{i} delivered"))
        .expect("a delivery")
        .unwrap();
    let want = format!("m{i};");
    assert!(
        d.data.starts_with(want.as_bytes()) && d.data.len() == 1024,
        "expected {want}, got {:?}",
        String::from_utf8_lossy(&d.data[..12])
    );
    d
}

/// Take messages `from..to` in order from `consumer`, acking each.
async fn take_in_order(consumer: &mut Consumer, from: usize, to: usize) {
    for i in from..to {
        let d = next_is(consumer, i).await;
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
}

/// A single node with `config`, and quorum queue `queue` declared on a channel of it.
async fn node_with_queue(
    config: warren::Config,
    queue: &str,
) -> (crate::common::TestBroker, lapin::Connection, Channel) {
    let b = crate::common::start_with(config).await;
    let (c, ch) = channel(&b).await;
    ch.queue_declare(queue.into(), crate::common::durable(), quorum_args())
        .await
        .unwrap();
    (b, c, ch)
}

/// Shut the broker down and read its one quorum queue's Raft log from the store (closed
/// again, so the broker can restart on it).
async fn stopped_queue_log(b: &mut crate::common::TestBroker) -> (u64, warren::store::RaftLog) {
    if let Some(s) = b.server.take() {
        s.shutdown().await;
    }
    let dir = b.dir.as_ref().unwrap().path().to_path_buf();
    let (store, recovered) = warren::store::Store::open(&dir).unwrap();
    let (group, log) = recovered
        .raft
        .into_iter()
        .next()
        .expect("the queue's raft group");
    store.close();
    (group, log)
}

/// A single node: after 400 publishes and 250 acks the queue's log on disk starts after a
/// snapshot (it was compacted), and a restart rebuilds the queue from the snapshot and the
/// entries after it: the 150 messages left, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_compacts_its_log_and_restarts_from_its_snapshot() {
    let config = warren::Config {
        quorum_snapshot_bytes: 16 << 10,
        ..warren::Config::default()
    };
    let (mut b, _c, ch) = node_with_queue(config, "sq").await;
    publish_one_by_one(&ch, "sq", 0, 400).await;
    let (_c2, ch2) = channel(&b).await;
    ch2.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = crate::common::consume(&ch2, "sq", "c", false).await;
    take_in_order(&mut consumer, 0, 250).await;
    // What the closed channel held goes back to its place.
    ch2.close(200, "bye".into()).await.unwrap();
    assert_eq!(crate::common::count(&ch, "sq").await, 150);

    let (group, log) = stopped_queue_log(&mut b).await;
    assert!(log.snapshot.is_some(), "group {group} has a snapshot");
    // Over 650 entries were logged (400 publishes, 250 acks): most are gone.
    assert!(
        log.first > 1 && log.entries.len() < 400,
        "group {group}: the log before the snapshot is compacted (first entry {}, {} kept)",
        log.first,
        log.entries.len()
    );
    let b = b.restart().await;
    let (_c, ch) = channel(&b).await;
    assert_eq!(crate::common::count(&ch, "sq").await, 150);
    let mut consumer = crate::common::consume(&ch, "sq", "after", false).await;
    take_in_order(&mut consumer, 250, 400).await;
    b.stop().await;
}

/// A follower down while the leader logs and compacts well past it catches up, once back,
/// from the leader's snapshot; then, with the old leader killed, it serves every message
/// from its own replica (a consumer's node delivers from its own copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_catches_up_from_a_snapshot() {
    let mut cluster = crate::cluster::TestCluster::start(3, "quorum_snapshot_bytes = 16384\n");
    let (_c1, ch1) = cluster.channel(0).await;
    ch1.queue_declare("fq".into(), crate::common::durable(), quorum_args())
        .await
        .unwrap();
    let (_c2, ch2) = cluster.channel(1).await;
    publish_one_by_one(&ch2, "fq", 0, 10).await;
    cluster.kill9(2);
    // Over a thousand entries while node 3 is down, the queue kept short (a publish, then
    // an ack), so that the leader snapshots often and compacts its log past node 3.
    ch1.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = crate::common::consume(&ch1, "fq", "c", false).await;
    for i in 10..700 {
        publish_one_by_one(&ch2, "fq", i, i + 1).await;
        take_in_order(&mut consumer, i - 10, i - 9).await;
    }
    take_in_order(&mut consumer, 690, 700).await;
    ch1.basic_cancel("c".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    publish_one_by_one(&ch2, "fq", 700, 1300).await;

    let (_c3, ch3) = caught_up_by_snapshot(&mut cluster, "fq", 600).await;
    let mut consumer = crate::common::consume(&ch3, "fq", "far", false).await;
    take_in_order(&mut consumer, 700, 1300).await;
    publish_one_by_one(&ch3, "fq", 1300, 1310).await;
    take_in_order(&mut consumer, 1300, 1310).await;
}

/// The Raft log in memory counts against the memory alarm, and under the alarm a queue
/// whose log is mostly settled messages snapshots and compacts it, so the alarm clears by
/// itself. `quorum_snapshot_bytes` is 64 MiB here (never reached): 3,000 messages of 1 KiB
/// go through in rounds of 500, each consumed before the next, so the state stays small
/// while the log passes the 2 MiB watermark; publishing goes on to the end, and the log on
/// disk ends up compacted behind a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_in_memory_counts_against_the_alarm_and_is_compacted_under_it() {
    let config = warren::Config {
        quorum_snapshot_bytes: 64 << 20,
        memory_high_watermark_bytes: Some(2 << 20),
        ..warren::Config::default()
    };
    let (mut b, _c, ch) = node_with_queue(config, "mq").await;
    let (_c2, ch2) = channel(&b).await;
    ch2.basic_qos(100, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = crate::common::consume(&ch2, "mq", "c", false).await;
    for round in 0..6 {
        let (from, to) = (round * 500, round * 500 + 500);
        tokio::time::timeout(Duration::from_secs(60), async {
            publish_one_by_one(&ch, "mq", from, to).await;
            take_in_order(&mut consumer, from, to).await;
        })
        .await
        .unwrap_or_else(|_| panic!("round {round} done within 60 s (the alarm clears)"));
    }
    let (group, log) = stopped_queue_log(&mut b).await;
    assert!(
        log.snapshot.is_some(),
        "group {group} snapshotted under the alarm"
    );
    assert!(
        log.entries.len() < 3000,
        "group {group}: compacted ({} entries kept)",
        log.entries.len()
    );
}

/// The entries kept on disk before the log's floor (bodies of live messages), by reading
/// every index before it from the stopped broker's store.
async fn kept_before_floor(b: &mut crate::common::TestBroker) -> (u64, usize) {
    let (group, log) = stopped_queue_log(b).await;
    let dir = b.dir.as_ref().unwrap().path().to_path_buf();
    let (store, _) = warren::store::Store::open(&dir).unwrap();
    let indexes: Vec<u64> = (1..log.floor).collect();
    let kept = store.read_raft_entries(group, &indexes).unwrap();
    store.close();
    (log.floor, kept.iter().filter(|e| e.is_some()).count())
}

/// Bodies are stored once, in the log: past the queue's memory budget (64 KiB here) a
/// message is held as its log position and read back when delivered; a snapshot keeps the
/// entries of live messages (and the restart reads them only as they are delivered), and
/// the first snapshot after they are settled deletes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_the_budget_are_read_back_from_the_log_and_deleted_once_settled() {
    let config = warren::Config {
        quorum_snapshot_bytes: 16 << 10,
        queue_memory_budget_bytes: 64 << 10,
        ..warren::Config::default()
    };
    let (mut b, _c, ch) = node_with_queue(config, "bq").await;
    publish_one_by_one(&ch, "bq", 0, 600).await;
    // Read back before any restart: most are past the budget.
    let (_c2, ch2) = channel(&b).await;
    ch2.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut consumer = crate::common::consume(&ch2, "bq", "c", false).await;
    take_in_order(&mut consumer, 0, 100).await;
    ch2.close(200, "bye".into()).await.unwrap();
    publish_one_by_one(&ch, "bq", 600, 700).await;

    // The 600 left were logged one entry each, and the log was compacted past most of them:
    // their entries are kept before the floor, each once.
    let (floor, kept) = kept_before_floor(&mut b).await;
    assert!(floor > 400, "compacted (floor {floor})");
    assert!(
        kept > 300 && kept <= 600,
        "live messages' entries kept before floor {floor}: {kept}"
    );
    let mut b = b.restart().await;
    let (_c, ch) = channel(&b).await;
    assert_eq!(crate::common::count(&ch, "bq").await, 600);
    ch.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut consumer = crate::common::consume(&ch, "bq", "after", false).await;
    take_in_order(&mut consumer, 100, 700).await;
    let (_c3, ch3) = channel(&b).await;
    publish_one_by_one(&ch3, "bq", 700, 760).await;
    take_in_order(&mut consumer, 700, 760).await;
    ch.basic_cancel("after".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    // Every earlier message settled, the log goes on (40 KiB, past the snapshot size): the
    // snapshots after it keep only the entries of the 40 new ones.
    publish_one_by_one(&ch3, "bq", 760, 800).await;
    let (floor, kept) = kept_before_floor(&mut b).await;
    assert!(
        kept <= 40,
        "settled messages' entries deleted: {kept} kept before {floor}"
    );
    let b = b.restart().await;
    let (_c, ch) = channel(&b).await;
    let mut consumer = crate::common::consume(&ch, "bq", "last", false).await;
    take_in_order(&mut consumer, 760, 800).await;
    b.stop().await;
}

/// A no-ack consumer of a backlog past the memory budget: its messages are settled as
/// they are delivered, while their bodies are still being read back, and the snapshots
/// that compact the log meanwhile (every 2 KiB logged here) must keep those entries until
/// read. Every message arrives, in order, intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_deliveries_read_back_while_the_log_compacts_lose_nothing() {
    let config = warren::Config {
        quorum_snapshot_bytes: 2 << 10,
        queue_memory_budget_bytes: 16 << 10,
        ..warren::Config::default()
    };
    let (b, _c, ch) = node_with_queue(config, "nq").await;
    publish_one_by_one(&ch, "nq", 0, 1500).await;
    let (_c2, ch2) = channel(&b).await;
    let mut consumer = crate::common::consume(&ch2, "nq", "c", true).await;
    // More publishes meanwhile keep the log growing, so snapshots come while reads wait.
    let more = tokio::spawn(async move {
        publish_one_by_one(&ch, "nq", 1500, 2000).await;
        ch
    });
    for i in 0..2000 {
        next_is(&mut consumer, i).await;
    }
    let ch = more.await.unwrap();
    assert_eq!(crate::common::count(&ch, "nq").await, 0);
    b.stop().await;
}

/// Node 3, down while the others went on, is started and installs the leader's snapshot;
/// its own replica counts `n` messages in `queue` (once it has applied what was
/// committed), and the leader (node 1) is killed, so that what follows is served from what
/// node 3 caught up with. Its connection is returned.
async fn caught_up_by_snapshot(
    cluster: &mut crate::cluster::TestCluster,
    queue: &str,
    n: u32,
) -> (lapin::Connection, Channel) {
    let before = cluster.said(2, "installed a snapshot from the leader");
    cluster.spawn(2);
    cluster
        .until_said(2, "installed a snapshot from the leader", before)
        .await;
    let (c3, ch3) = cluster.channel(2).await;
    assert_eq!(crate::common::count(&ch3, queue).await, n);
    cluster.kill9(0);
    (c3, ch3)
}

/// Message `i` of 1 MiB: "m{i};" then bytes of value `i`.
fn big_body(i: usize) -> Vec<u8> {
    let mut b = format!("m{i};").into_bytes();
    b.resize(1 << 20, i as u8);
    b
}

/// A follower far behind a queue whose live messages pass the 64 MiB link frame (80 of
/// 1 MiB, and over a thousand small ones after them, so that the leader compacts its log
/// past the follower) gets the snapshot, their entries streamed ahead of it in chunks
/// (`cluster::transfer`), installs it and, with the leader killed, serves every message
/// whole from its own replica, read from the staged entries. Before parts, the leader
/// could not send it (one frame) and the follower never caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_gets_a_snapshot_bigger_than_a_link_frame() {
    let mut cluster = crate::cluster::TestCluster::start(3, "quorum_snapshot_bytes = 16384\n");
    let (_c1, ch1) = cluster.channel(0).await;
    // Led by node 1 (client-local), so that killing node 3 leaves the leader in place.
    let mut args = quorum_args();
    args.insert(
        "x-queue-leader-locator".into(),
        AMQPValue::LongString("client-local".into()),
    );
    ch1.queue_declare("huge".into(), crate::common::durable(), args)
        .await
        .unwrap();
    let (_c2, ch2) = cluster.channel(1).await;
    publish_one_by_one(&ch2, "huge", 0, 10).await;
    cluster.kill9(2);
    // All in flight at once: 80 MiB both ways on the link from node 2 to the leader
    // (forwarded publishes one way, appends the other).
    let mut confirms = Vec::new();
    for i in 10..90 {
        let confirm = ch2
            .basic_publish(
                "".into(),
                "huge".into(),
                BasicPublishOptions::default(),
                &big_body(i),
                persistent(),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for (i, confirm) in (10..90).zip(confirms) {
        assert!(confirm.await.unwrap().is_ack(), "m{i} nacked");
    }
    publish_one_by_one(&ch2, "huge", 90, 1200).await;

    let (_c3, ch3) = caught_up_by_snapshot(&mut cluster, "huge", 1200).await;
    ch3.basic_qos(4, BasicQosOptions::default()).await.unwrap();
    let mut consumer = crate::common::consume(&ch3, "huge", "far", false).await;
    take_in_order(&mut consumer, 0, 10).await;
    for i in 10..90 {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("m{i} delivered"))
            .expect("a delivery")
            .unwrap();
        assert!(d.data == big_body(i), "m{i} whole");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    take_in_order(&mut consumer, 90, 1200).await;
}
