//! The metadata group's snapshots: every `metadata_snapshot_entries` entries the topology
//! is snapshotted and the log before it compacted; a node restarts from its snapshot and
//! the entries after it, and a node down while the leader compacted past it catches up
//! from the leader's snapshot, with what was made and deleted meanwhile.

use lapin::Channel;
use lapin::options::*;
use lapin::types::FieldTable;

use crate::cluster::{TestCluster, count, queue_code};
use crate::common::durable;

/// `n` queues declared and deleted on each of `channels` channels at once: 2n entries each.
async fn churn(cluster: &TestCluster, node: usize, prefix: &str, channels: usize, n: usize) {
    let mut tasks = Vec::new();
    for c in 0..channels {
        let (conn, ch) = cluster.channel(node).await;
        let prefix = format!("{prefix}{c}-");
        tasks.push(tokio::spawn(async move {
            for i in 0..n {
                let name = format!("{prefix}{i}");
                ch.queue_declare(name.as_str().into(), durable(), FieldTable::default())
                    .await
                    .unwrap();
                ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .unwrap();
            }
            drop(conn);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// An exchange with a queue bound to it by `key`.
async fn bound(ch: &Channel, exchange: &str, queue: &str, key: &str) {
    crate::cluster::declare_exchange(ch, exchange)
        .await
        .unwrap();
    ch.queue_declare(queue.into(), durable(), FieldTable::default())
        .await
        .unwrap();
    crate::exchanges::bind(ch, queue, exchange, key).await;
}

/// Publish one message through node `node` to `exchange` with `key`, confirmed.
async fn route(cluster: &TestCluster, node: usize, exchange: &str, key: &str) {
    let (_c, ch) = cluster.channel(node).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            b"routed",
            crate::common::persistent(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_log_is_compacted_and_a_node_far_behind_gets_the_snapshot() {
    let mut cluster = TestCluster::start(3, "metadata_snapshot_entries = 50\n");
    let (_c1, ch1) = cluster.channel(0).await;
    bound(&ch1, "kept-x", "kept-q", "k").await;
    churn(&cluster, 0, "a", 2, 40).await;

    // Node 3 restarts from its own snapshot and the entries after it.
    let restored = "metadata restored from a snapshot";
    let before = cluster.said(2, restored);
    cluster.kill9(2);
    cluster.spawn(2);
    cluster.until_said(2, restored, before).await;
    assert_eq!(queue_code(&cluster, 2, "kept-q").await, None);
    assert_eq!(queue_code(&cluster, 2, "a0-0").await, Some(404));
    route(&cluster, 2, "kept-x", "k").await;
    assert_eq!(count(&cluster, 0, "kept-q").await, 1);

    // Node 3 is down while more entries pass than the leader keeps for a follower behind.
    cluster.kill9(2);
    churn(&cluster, 0, "b", 4, 140).await;
    bound(&ch1, "late-x", "late-q", "l").await;
    ch1.queue_delete("kept-q".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let sent = "installed a snapshot from the leader group=0 ";
    let before = cluster.said(2, sent);
    cluster.spawn(2);
    cluster.until_said(2, sent, before).await;
    // Node 3 has what was made meanwhile, and not what was deleted.
    assert_eq!(queue_code(&cluster, 2, "late-q").await, None);
    assert_eq!(queue_code(&cluster, 2, "kept-q").await, Some(404));
    assert_eq!(queue_code(&cluster, 2, "b3-139").await, Some(404));
    route(&cluster, 2, "late-x", "l").await;
    assert_eq!(count(&cluster, 0, "late-q").await, 1);
    // And it goes on applying entries after the snapshot.
    bound(&ch1, "after-x", "after-q", "z").await;
    route(&cluster, 2, "after-x", "z").await;
    assert_eq!(count(&cluster, 2, "after-q").await, 1);
}
