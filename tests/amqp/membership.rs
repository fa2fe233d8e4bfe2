//! Quorum queue membership: a queue is replicated on `x-quorum-initial-group-size` nodes
//! (3 by default), and a node that is not a member uses it through one: publishes,
//! consumers, gets, counts, purges and deletes all work from there, and its consumers carry
//! on through another member when the one they used dies.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};

use crate::cluster::{
    Publisher, TestCluster, check_total_queue, publish_confirmed_from, take_acked,
};
use crate::common::{code, count, durable};

fn quorum_args(size: Option<i32>) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    t.insert(
        "x-queue-leader-locator".into(),
        AMQPValue::LongString("client-local".into()),
    );
    if let Some(n) = size {
        t.insert("x-quorum-initial-group-size".into(), AMQPValue::LongInt(n));
    }
    t
}

async fn members(api: std::net::SocketAddr, name: &str) -> serde_json::Value {
    crate::common::http_queue(api, name).await["members"].clone()
}

/// No-ack consumers on a member that does not lead and on a node that is not a member take
/// many times their logged credit (`quorum/credit.rs`): each in order, every
/// message once, and both take a good share, as the credit their connections grant comes
/// through the log (for the non-member, relayed by the member it uses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_consumers_on_other_nodes_get_past_their_first_credit() {
    // A quarter of it is past a consumer's first window (2,000).
    const N: usize = 12_000;
    let cluster = TestCluster::start(3, "");
    let (_c1, ch1) = cluster.channel(0).await;
    ch1.queue_declare("na".into(), durable(), quorum_args(Some(2)))
        .await
        .unwrap();
    let mut consumers = Vec::new();
    for node in [1, 2] {
        let (c, ch) = cluster.channel(node).await;
        let opts = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let consumer = ch
            .basic_consume("na".into(), "n".into(), opts, FieldTable::default())
            .await
            .unwrap();
        consumers.push((c, ch, consumer));
    }
    let publishing = tokio::spawn(async move { publish_confirmed_from(&ch1, "na", 0, N).await });
    let mut seen = BTreeSet::new();
    let (mut last, mut got) = ([None, None], [0, 0]);
    let [(_ca, _, mut a), (_cb, _, mut b)] = <[_; 2]>::try_from(consumers).ok().unwrap();
    while seen.len() < N {
        let next = async {
            tokio::select! {
                d = a.next() => (0, d),
                d = b.next() => (1, d),
            }
        };
        let (k, d) = tokio::time::timeout(Duration::from_secs(30), next)
            .await
            .unwrap_or_else(|_| panic!("stalled after {} of {N}", seen.len()));
        let i = crate::cluster::body_number(&d.expect("a delivery").unwrap().data);
        assert!(last[k] < Some(i), "m{i} after m{:?}", last[k]);
        last[k] = Some(i);
        got[k] += 1;
        assert!(seen.insert(i), "m{i} twice");
    }
    assert!(got.iter().all(|&g| g >= N / 4), "shares {got:?}");
    assert_eq!(publishing.await.unwrap(), (N, 0));
    assert_eq!(seen.len(), N);
}

/// Every command works from a node that is not a member; the members are as asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_on_fewer_nodes_is_used_from_the_others() {
    let cluster = TestCluster::start(3, "");
    let (_c1, ch1) = cluster.channel(0).await;
    let api = cluster.http(0).await;
    ch1.queue_declare("g2".into(), durable(), quorum_args(Some(2)))
        .await
        .unwrap();
    ch1.queue_declare("g1".into(), durable(), quorum_args(Some(1)))
        .await
        .unwrap();
    ch1.queue_declare("g3".into(), durable(), quorum_args(None))
        .await
        .unwrap();
    assert_eq!(members(api, "g2").await, serde_json::json!([1, 2]));
    assert_eq!(members(api, "g1").await, serde_json::json!([1]));
    assert_eq!(members(api, "g3").await, serde_json::json!([1, 2, 3]));
    // Redeclaring from a non-member is equivalent; a different size is not.
    let (c3, ch3) = cluster.channel(2).await;
    ch3.queue_declare("g2".into(), durable(), quorum_args(Some(2)))
        .await
        .unwrap();
    let bad = c3.create_channel().await.unwrap();
    let e = bad
        .queue_declare("g2".into(), durable(), quorum_args(Some(3)))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");

    for q in ["g2", "g1"] {
        let (acked, nacked) = publish_confirmed_from(&ch3, q, 0, 100).await;
        assert_eq!((acked, nacked), (100, 0), "{q}");
        assert_eq!(count(&ch3, q).await, 100, "{q}");
        assert_eq!(count(&ch1, q).await, 100, "{q}");
    }
    // A consumer on the non-member: in order, with its prefetch; acks take effect.
    let cch = c3.create_channel().await.unwrap();
    cch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = crate::common::consume(&cch, "g2", "c", false).await;
    for want in 0..50 {
        assert_eq!(take_acked(&mut consumer).await, want);
    }
    // Unacked deliveries of a channel that closes come back, redelivered: the ten the
    // consumer had beyond the 50 it acked, and one got.
    cch.close(200, "OK".into()).await.unwrap();
    let gch = c3.create_channel().await.unwrap();
    let got = gch
        .basic_get("g2".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    gch.close(200, "OK".into()).await.unwrap();
    assert_eq!(count(&ch3, "g2").await, 50);
    let (mut bodies, mut redelivered) = (BTreeSet::new(), 0);
    while let Some(m) = ch3
        .basic_get("g2".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        redelivered += usize::from(m.delivery.redelivered);
        bodies.insert(String::from_utf8(m.delivery.data).unwrap());
    }
    let want: BTreeSet<String> = (50..100).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, want);
    assert!(redelivered >= 1, "{redelivered}");
    assert!(bodies.contains(std::str::from_utf8(&got.delivery.data).unwrap()));
    assert_eq!(publish_confirmed_from(&ch3, "g2", 100, 20).await, (20, 0));
    // Purge and delete through a member.
    let purged = ch3
        .queue_purge("g2".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(purged, 20);
    ch3.queue_delete("g1".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        crate::common::passive_queue_code(&cluster.connect(0).await, "g1").await,
        Some(404)
    );
    // Leadership is handed over by a member's API, not a non-member's.
    let api3 = cluster.http(2).await;
    let guest = Some(("guest", "guest"));
    let (status, body) =
        crate::common::http_call(api3, "PUT", "/api/queues/%2F/g2/leader/2", guest).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(members(api3, "g2").await, serde_json::json!([1, 2]));
}

/// A consumer and a publisher on a node outside the group, using it through a member that
/// is killed (it also leads): the publisher's unconfirmed publishes are nacked, the consumer
/// is not cancelled but moves to another member, and every confirmed message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_carries_on_when_its_member_dies() {
    let mut cluster = TestCluster::start(4, "cluster_command_timeout_ms = 3000\n");
    let (_c1, ch1) = cluster.channel(0).await;
    let api = cluster.http(0).await;
    ch1.queue_declare("far".into(), durable(), quorum_args(Some(3)))
        .await
        .unwrap();
    assert_eq!(members(api, "far").await, serde_json::json!([1, 2, 3]));
    let (c4, ch4) = cluster.channel(3).await;
    ch4.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut consumer = crate::common::consume(&ch4, "far", "checker", false).await;
    let pch = c4.create_channel().await.unwrap();
    let publisher = Publisher::start(pch, "far", None).await;
    let mut received = Vec::new();
    while received.len() < 300 {
        received.push(take_acked(&mut consumer).await);
    }
    // Node 4 uses the queue through node 1 (the first member), which also leads it.
    let before = publisher.published();
    cluster.kill9(0);
    while received.len() < before + 300 {
        received.push(take_acked(&mut consumer).await);
    }
    let outcome = publisher.finish().await;
    check_total_queue(&mut consumer, received, outcome, before).await;
    assert!(
        cluster.said(3, "quorum queue used through another member") > 0,
        "node 4 moved to another member"
    );
}

/// The leader's view of each member's lag, by node, from whichever node leads now.
async fn lags(apis: &[std::net::SocketAddr], name: &str) -> Vec<(u64, u64)> {
    let mut l: Vec<(u64, u64)> = lag_entries(apis, name)
        .await
        .iter()
        .map(|m| (m["node"].as_u64().unwrap(), m["entries"].as_u64().unwrap()))
        .collect();
    l.sort_unstable();
    l
}

async fn lag_entries(apis: &[std::net::SocketAddr], name: &str) -> Vec<serde_json::Value> {
    for api in apis {
        let q = crate::common::http_queue(*api, name).await;
        if let Some(l) = q["raft"]["lag"].as_array().filter(|l| !l.is_empty()) {
            return l.clone();
        }
    }
    Vec::new()
}

/// A member's Raft id in the queue's group, as the leader shows it.
async fn raft_id(apis: &[std::net::SocketAddr], name: &str, node: u64) -> u64 {
    let entries = lag_entries(apis, name).await;
    let m = entries.iter().find(|m| m["node"] == node);
    m.and_then(|m| m["raft_id"].as_u64())
        .unwrap_or_else(|| panic!("node {node} is not a member: {entries:?}"))
}

async fn until_lags(apis: &[std::net::SocketAddr], name: &str, want: &[(u64, u64)]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = lags(apis, name).await;
        if now == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: lags {now:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A queue grows onto a node, which catches up and serves it from its own replica, and
/// shrinks off its leader, which hands the lead over first and then uses the queue as any
/// other node that is not a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_and_removed_over_the_api() {
    let cluster = TestCluster::start(3, "");
    let (_c1, ch1) = cluster.channel(0).await;
    let mut apis = Vec::new();
    for i in 0..3 {
        apis.push(cluster.http(i).await);
    }
    ch1.queue_declare("grown".into(), durable(), quorum_args(Some(2)))
        .await
        .unwrap();
    assert_eq!(members(apis[0], "grown").await, serde_json::json!([1, 2]));
    assert_eq!(
        publish_confirmed_from(&ch1, "grown", 0, 100).await,
        (100, 0)
    );
    let guest = Some(("guest", "guest"));
    let call = |i: usize, method: &'static str, path: &'static str| {
        crate::common::http_call(apis[i], method, path, guest)
    };
    for (i, method, path, want) in [
        (2, "PUT", "/api/queues/%2F/grown/members/3", 400), // node 3 is not a member
        (0, "PUT", "/api/queues/%2F/grown/members/2", 400), // a member already
        (0, "PUT", "/api/queues/%2F/grown/members/7", 400), // no such node
        (0, "DELETE", "/api/queues/%2F/grown/members/3", 400), // not a member
        (0, "PUT", "/api/queues/%2F/none/members/3", 404),
    ] {
        let (status, body) = call(i, method, path).await;
        assert_eq!(status, want, "{method} {path}: {body}");
    }
    let (status, _) =
        crate::common::http_call(apis[0], "PUT", "/api/queues/%2F/grown/members/3", None).await;
    assert_eq!(status, 401);

    let (status, body) = call(0, "PUT", "/api/queues/%2F/grown/members/3").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["members"], serde_json::json!([1, 2, 3]), "{body}");
    // The new member is a voter and catches up (from the log: it was not compacted).
    until_lags(&apis, "grown", &[(1, 0), (2, 0), (3, 0)]).await;
    let (_c3, ch3) = cluster.channel(2).await;
    assert_eq!(count(&ch3, "grown").await, 100);
    let q3 = crate::common::http_queue(apis[2], "grown").await;
    assert!(q3["raft"]["applied_index"].as_u64() > Some(0), "{q3}");

    // Node 1 leads (client-local): removed, it hands the lead to a member first.
    let (status, body) = call(1, "DELETE", "/api/queues/%2F/grown/members/1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["members"], serde_json::json!([2, 3]), "{body}");
    until_lags(&apis[1..], "grown", &[(2, 0), (3, 0)]).await;
    // Node 1 has left the group (no Raft state for it there) and uses the queue through a
    // member now.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !crate::common::http_queue(apis[0], "grown").await["raft"].is_null() {
        assert!(
            std::time::Instant::now() < deadline,
            "node 1 still has the group"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_c1b, ch1b) = cluster.channel(0).await;
    assert_eq!(
        publish_confirmed_from(&ch1b, "grown", 100, 50).await,
        (50, 0)
    );
    assert_eq!(count(&ch3, "grown").await, 150);
    // Node 1 joins again as a new member: a Raft id of its own, not its old one, so that
    // nothing it voted or acknowledged before counts for the new replica. It catches up.
    let (status, body) = call(1, "PUT", "/api/queues/%2F/grown/members/1").await;
    assert_eq!(status, 200, "{body}");
    until_lags(&apis, "grown", &[(1, 0), (2, 0), (3, 0)]).await;
    let again = raft_id(&apis, "grown", 1).await;
    assert!(again != 1 && again & 0xFFFF_FFFF == 1, "{again:#x}");
    let grown = raft_id(&apis, "grown", 3).await;
    assert!(grown != 3 && grown != again, "{grown:#x}");

    for (i, path) in [
        (1, "/api/queues/%2F/grown/members/2"),
        (2, "/api/queues/%2F/grown/members/3"),
    ] {
        let (status, body) = call(i, "DELETE", path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, body) = call(0, "DELETE", "/api/queues/%2F/grown/members/1").await;
    assert_eq!(status, 400, "the last member: {body}");
    // Node 1, the one member left, has every message in its new replica.
    assert_eq!(count(&ch1b, "grown").await, 150);
}

/// A transaction from a node that is not a member: its part for the queue (a publish and
/// an ack) travels to the member as one command and is one log entry there; the ack holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_from_a_non_member_is_one_log_entry_on_the_member() {
    let cluster = TestCluster::start(3, "");
    let (_c1, ch1) = cluster.channel(0).await;
    let api = cluster.http(0).await;
    ch1.queue_declare("t1".into(), durable(), quorum_args(Some(1)))
        .await
        .unwrap();
    assert_eq!(members(api, "t1").await, serde_json::json!([1]));
    let (c3, ch3) = cluster.channel(2).await;
    assert_eq!(publish_confirmed_from(&ch3, "t1", 0, 2).await, (2, 0));
    let tch = c3.create_channel().await.unwrap();
    tch.tx_select().await.unwrap();
    let (before, after) = crate::common::tx_publish_and_ack(&tch, &ch1, api, "t1").await;
    assert_eq!(
        after,
        before + 1,
        "one log entry for the publish and the ack"
    );
    // The ack holds: closing the channel requeues nothing.
    tch.close(200, "OK".into()).await.unwrap();
    assert_eq!(count(&ch1, "t1").await, 2);
}

/// A node whose data directory was wiped rejoins with `--rejoin`: under a new Raft id in
/// the metadata group and in each quorum queue it was a member of, it catches up (by
/// snapshot: the logs were compacted meanwhile) and then holds a full replica: with another
/// node killed, every confirmed message is drained from it. A queue it was the only member
/// of lost its contents with the wipe, and works again, empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_rejoins_as_a_new_member_and_catches_up() {
    let settings = "metadata_snapshot_entries = 20\nquorum_snapshot_bytes = 16384\n\
                    cluster_command_timeout_ms = 3000\n";
    let mut cluster = TestCluster::start(3, settings);
    let mut apis = Vec::new();
    for i in 0..3 {
        apis.push(cluster.http(i).await);
    }
    let (_c1, ch1) = cluster.channel(0).await;
    ch1.queue_declare("kept".into(), durable(), quorum_args(None))
        .await
        .unwrap();
    let (c3, ch3) = cluster.channel(2).await;
    ch3.queue_declare("solo".into(), durable(), quorum_args(Some(1)))
        .await
        .unwrap();
    assert_eq!(members(apis[0], "solo").await, serde_json::json!([3]));
    assert_eq!(publish_confirmed_from(&ch3, "solo", 0, 10).await, (10, 0));
    drop(c3);
    for i in 0..30 {
        crate::cluster::declare_exchange(&ch1, &format!("before-{i}"))
            .await
            .unwrap();
    }
    let publisher = Publisher::start(ch1.clone(), "kept", None).await;
    let until_published = |n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let publisher = &publisher;
        async move {
            while publisher.published() < n {
                assert!(std::time::Instant::now() < deadline, "publishing stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    until_published(2000).await;
    cluster.kill9(2);
    cluster.wipe(2);
    until_published(publisher.published() + 2000).await;
    crate::cluster::declare_exchange(&ch1, "while-wiped")
        .await
        .unwrap();
    cluster.spawn_with(2, &["--rejoin"]);
    let (c3, ch3) = cluster.channel(2).await;
    // It serves once its queues took it back: consumers on it start on its own replica.
    apis[2] = cluster.http(2).await;
    assert_eq!(members(apis[2], "kept").await, serde_json::json!([1, 2, 3]));
    for x in ["before-0", "before-29", "while-wiped"] {
        assert_eq!(crate::cluster::exchange_code(&c3, x).await, None, "{x}");
    }
    // The leader replaces node 3's old Raft id in the queue's group with a new one, and the
    // new member catches up.
    let outcome = publisher.finish().await;
    until_lags(&apis, "kept", &[(1, 0), (2, 0), (3, 0)]).await;
    let id = raft_id(&apis, "kept", 3).await;
    assert!(id != 3 && id & 0xFFFF_FFFF == 3, "{id:#x}");
    assert!(
        cluster.said(2, "installed a snapshot from the leader") > 0,
        "node 3 caught up by snapshot"
    );
    assert_eq!(members(apis[0], "solo").await, serde_json::json!([3]));
    assert_eq!(count(&ch3, "solo").await, 0, "its only replica was wiped");
    assert_eq!(publish_confirmed_from(&ch3, "solo", 0, 10).await, (10, 0));

    // Node 1 (the queue's leader) goes: nodes 2 and 3 are a majority of both groups, and
    // node 3's replica has every confirmed message.
    cluster.kill9(0);
    ch3.basic_qos(100, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = crate::common::consume(&ch3, "kept", "drain", false).await;
    check_total_queue(&mut consumer, Vec::new(), outcome, 0).await;
}

/// A consumer on a node that is not a member, under a publisher: the queue grows onto its
/// node, and the consumer carries on through the member it used (new consumers there start
/// on the node's own replica) with every confirmed message. A new consumer on its channel
/// moves the channel to the node's replica: the old consumer is then cancelled
/// (basic.cancel), not left waiting for deliveries that never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_carries_on_when_its_node_joins_the_members() {
    use futures_lite::StreamExt;
    let cluster = TestCluster::start(3, "");
    let (c1, ch1) = cluster.channel(0).await;
    let api = cluster.http(0).await;
    ch1.queue_declare("joined".into(), durable(), quorum_args(Some(2)))
        .await
        .unwrap();
    assert_eq!(members(api, "joined").await, serde_json::json!([1, 2]));
    let (_c3, ch3) = cluster.channel(2).await;
    ch3.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut consumer = crate::common::consume(&ch3, "joined", "before", false).await;
    let publisher = Publisher::start(c1.create_channel().await.unwrap(), "joined", None).await;
    let mut received = Vec::new();
    while received.len() < 300 {
        received.push(take_acked(&mut consumer).await);
    }
    let before = publisher.published();
    let guest = Some(("guest", "guest"));
    let path = "/api/queues/%2F/joined/members/3";
    let (status, body) = crate::common::http_call(api, "PUT", path, guest).await;
    assert_eq!(status, 200, "{body}");
    while received.len() < before + 300 {
        received.push(take_acked(&mut consumer).await);
    }
    let outcome = publisher.finish().await;
    check_total_queue(&mut consumer, received, outcome, before).await;

    let mut after = crate::common::consume(&ch3, "joined", "after", false).await;
    let cancelled = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(d) = consumer.next().await {
            drop(d);
        }
    });
    cancelled.await.expect("the old consumer is cancelled");
    assert_eq!(
        publish_confirmed_from(&ch1, "joined", 1_000_000, 10).await,
        (10, 0)
    );
    let mut got = BTreeSet::new();
    while got.len() < 10 {
        let n = take_acked(&mut after).await;
        if n >= 1_000_000 {
            got.insert(n);
        }
    }
}

/// A consumer on a member node, under a publisher: its node leaves the queue's members, and
/// the consumer carries on (through another member) with every confirmed message, as
/// RabbitMQ's do, rather than being cancelled. A message got there and not acked yet comes
/// back, redelivered (the channel moved to another member), rather than stay held by a
/// replica that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_carries_on_when_its_node_leaves_the_members() {
    let cluster = TestCluster::start(3, "");
    let (c1, ch1) = cluster.channel(0).await;
    let api = cluster.http(0).await;
    for q in ["left", "held"] {
        ch1.queue_declare(q.into(), durable(), quorum_args(None))
            .await
            .unwrap();
    }
    assert_eq!(members(api, "left").await, serde_json::json!([1, 2, 3]));
    assert_eq!(publish_confirmed_from(&ch1, "held", 0, 1).await, (1, 0));
    let (c3, ch3) = cluster.channel(2).await;
    let got = ch3
        .basic_get("held".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    assert!(!got.delivery.redelivered);
    let consumer_ch = c3.create_channel().await.unwrap();
    consumer_ch
        .basic_qos(50, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = crate::common::consume(&consumer_ch, "left", "stays", false).await;
    let publisher = Publisher::start(c1.create_channel().await.unwrap(), "left", None).await;
    let mut received = Vec::new();
    while received.len() < 300 {
        received.push(take_acked(&mut consumer).await);
    }
    let before = publisher.published();
    let guest = Some(("guest", "guest"));
    for path in [
        "/api/queues/%2F/left/members/3",
        "/api/queues/%2F/held/members/3",
    ] {
        let (status, body) = crate::common::http_call(api, "DELETE", path, guest).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // take_acked fails if the consumer is cancelled.
    while received.len() < before + 300 {
        received.push(take_acked(&mut consumer).await);
    }
    let outcome = publisher.finish().await;
    check_total_queue(&mut consumer, received, outcome, before).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = (ch1.queue_declare("left".into(), passive, FieldTable::default()))
        .await
        .unwrap();
    assert_eq!(
        declared.consumer_count(),
        1,
        "the consumer is registered again"
    );

    // The message got on node 3 is back in the queue, redelivered.
    let m = got_again(&ch1, "held").await;
    assert!(m.delivery.redelivered);
    assert_eq!(m.delivery.data, got.delivery.data);
}

/// A queue on nodes 1 and 2 loses node 2 for good: no majority, nothing is committed. On
/// node 1 `force-shrink` makes it the only member (refused on a non-member and on a queue
/// with a majority online); it takes publishes again, from any node, keeps that after a
/// restart (which replays the removal logged after snapshots with two voters), and node 2,
/// back, uses it through node 1 with every message there, having deleted its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_lost_a_majority_is_forced_down_to_a_survivor() {
    let settings = "quorum_snapshot_bytes = 4096\ncluster_command_timeout_ms = 3000\n";
    let mut cluster = TestCluster::start(3, settings);
    let apis = [cluster.http(0).await, cluster.http(2).await];
    let (_c1, ch1) = cluster.channel(0).await;
    ch1.queue_declare("lost".into(), durable(), quorum_args(Some(2)))
        .await
        .unwrap();
    ch1.queue_declare("fine".into(), durable(), quorum_args(None))
        .await
        .unwrap();
    assert_eq!(members(apis[0], "lost").await, serde_json::json!([1, 2]));
    assert_eq!(publish_confirmed_from(&ch1, "lost", 0, 100).await, (100, 0));
    let guest = Some(("guest", "guest"));
    let force = |api, path| crate::common::http_call(api, "POST", path, guest);
    let (status, body) = force(apis[0], "/api/queues/%2F/fine/force-shrink").await;
    assert_eq!(status, 400, "a majority of its members is online: {body}");

    cluster.kill9(1);
    let (status, body) = force(apis[1], "/api/queues/%2F/lost/force-shrink").await;
    assert_eq!(status, 400, "node 3 is not a member: {body}");
    let (status, body) = force(apis[0], "/api/queues/%2F/lost/force-shrink").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["members"], serde_json::json!([1]), "{body}");
    assert_eq!(publish_confirmed_from(&ch1, "lost", 100, 50).await, (50, 0));
    let (_c3, ch3) = cluster.channel(2).await;
    assert_eq!(publish_confirmed_from(&ch3, "lost", 150, 50).await, (50, 0));
    assert_eq!(count(&ch3, "lost").await, 200);

    // A restart replays the log past the old snapshot: node 1 leads alone again.
    cluster.kill9(0);
    cluster.spawn(0);
    let (_c1, ch1) = cluster.channel(0).await;
    assert_eq!(publish_confirmed_from(&ch1, "lost", 200, 10).await, (10, 0));
    assert_eq!(count(&ch1, "lost").await, 210);

    // Node 2 comes back: not a member any more, it uses the queue through node 1.
    cluster.spawn(1);
    let (_c2, ch2) = cluster.channel(1).await;
    assert_eq!(
        members(cluster.http(1).await, "lost").await,
        serde_json::json!([1])
    );
    assert_eq!(count(&ch2, "lost").await, 210);
    ch2.basic_qos(100, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = crate::common::consume(&ch2, "lost", "drain", false).await;
    let mut got = BTreeSet::new();
    while got.len() < 210 {
        got.insert(take_acked(&mut consumer).await);
    }
    assert_eq!(got, (0..210).collect::<BTreeSet<usize>>());

    // Node 2 deleted the log of the group it left: its next start reads two groups' logs
    // (the metadata's and "fine"'s), not three.
    cluster.kill9(1);
    let (read, two) = (
        cluster.said(1, "store read"),
        cluster.said(1, "raft_groups=2"),
    );
    cluster.spawn(1);
    cluster.until_said(1, "store read", read).await;
    assert_eq!(cluster.said(1, "raft_groups=2"), two + 1);
}

/// A node that is not a member got a message (not acked yet) through the member it uses,
/// which then leaves the members: the node moves to the other member, and the message comes
/// back, redelivered, rather than stay held through a member that no longer serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_got_through_a_member_that_leaves_comes_back() {
    let cluster = TestCluster::start(3, "");
    let (_c1, ch1) = cluster.channel(0).await;
    let api = cluster.http(0).await;
    ch1.queue_declare("via".into(), durable(), quorum_args(Some(2)))
        .await
        .unwrap();
    assert_eq!(members(api, "via").await, serde_json::json!([1, 2]));
    assert_eq!(publish_confirmed_from(&ch1, "via", 0, 1).await, (1, 0));
    // Node 3 uses the queue through node 1 (the first member).
    let (_c3, ch3) = cluster.channel(2).await;
    let got = ch3
        .basic_get("via".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    let guest = Some(("guest", "guest"));
    let path = "/api/queues/%2F/via/members/1";
    let (status, body) = crate::common::http_call(api, "DELETE", path, guest).await;
    assert_eq!(status, 200, "{body}");
    let (_c2, ch2) = cluster.channel(1).await;
    let m = got_again(&ch2, "via").await;
    assert!(m.delivery.redelivered);
    assert_eq!(m.delivery.data, got.delivery.data);
}

/// The next message got from `queue` (no ack), within 10 s: one given back comes back
/// ready once the queue applied the change that released it.
async fn got_again(ch: &lapin::Channel, queue: &str) -> lapin::message::BasicGetMessage {
    let again = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let got = ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap();
            match got {
                Some(m) => return m,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    again.await.expect("the message held comes back")
}
