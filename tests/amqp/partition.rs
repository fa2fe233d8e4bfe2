//! Partitions of a 3-node cluster. Each test runs on a thread of its own that moves into a
//! private network namespace (`unshare(CLONE_NEWNET)`, then `ip link set lo up`); the
//! runtime, the nodes and their links are started from it and so live there too. Each node
//! has its own loopback address, and nftables drops the traffic between two addresses. The
//! namespace and its rules vanish with the thread. Clients reach every node throughout (they
//! connect from 127.0.0.1, which no rule names).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use crate::cluster::{
    TestCluster, count, declare_exchange, declare_three, exchange_code, publish_confirmed,
    queue_code,
};
use crate::common::{Raw, code};

/// Run `test` on a new thread inside a private network namespace, on a runtime made there.
fn in_private_network<F: Future<Output = ()>>(test: impl FnOnce() -> F + Send + 'static) {
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; it moves only the calling thread (a network
        // namespace may be unshared by one thread of a multithreaded process).
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) needs root: {}",
            std::io::Error::last_os_error()
        );
        run("ip", &["link", "set", "lo", "up"], "");
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(test());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

fn run(program: &str, args: &[&str], stdin: &str) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (apt-get install nftables iproute2)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "{program} {args:?} failed");
}

/// Drop every packet between `alone` and `others`, both ways.
fn cut_off(alone: Ipv4Addr, others: &[Ipv4Addr]) {
    let others = others
        .iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let rules = format!(
        "table inet partition {{
           chain out {{
             type filter hook output priority 0; policy accept;
             ip saddr {alone} ip daddr {{ {others} }} drop
             ip daddr {alone} ip saddr {{ {others} }} drop
           }}
         }}"
    );
    run("nft", &["-f", "-"], &rules);
}

fn heal() {
    run("nft", &["delete", "table", "inet", "partition"], "");
}

/// A client connection to node `i` that only waits: raw, so that the close it gets is seen.
async fn idle_connection(cluster: &TestCluster, i: usize) -> Raw {
    let sock = tokio::net::TcpStream::connect(cluster.addr(i).await)
        .await
        .unwrap();
    let mut raw = Raw::over(sock);
    raw.open(131_072, 0).await;
    raw
}

/// The metadata leader is cut off from the two others while clients still reach every node.
/// Its side refuses changes in bounded time; the majority elects another leader, goes on
/// with changes and takes the cut-off node as down. Once healed, the cut-off node has
/// exactly the majority's changes, none of its own refused ones; its exclusive and transient
/// queues are gone, its durable queue is back with every confirmed message, and the
/// connections it had are closed with 320 (their exclusive queues are gone everywhere).
#[test]
fn a_cut_off_node_refuses_changes_and_converges_once_healed() {
    in_private_network(|| async {
        let settings = "cluster_peer_timeout_ms = 300\ncluster_command_timeout_ms = 3000\n";
        let cluster = TestCluster::start(3, settings);
        for i in 0..3 {
            cluster.url(i).await;
        }
        let cut = cluster.leader().expect("a metadata leader");
        let (a, b) = ((cut + 1) % 3, (cut + 2) % 3);
        let ips: Vec<Ipv4Addr> = cluster.nodes.iter().map(|n| n.ip).collect();

        let (c_cut, ch_cut) = cluster.channel(cut).await;
        declare_three(&ch_cut).await;
        assert_eq!(publish_confirmed(&ch_cut, "dq", 10).await, (10, 0));
        let mut idle = idle_connection(&cluster, cut).await;
        let leaders_seen = cluster.said(a, "leads the metadata group");
        let downs_seen = cluster.said(a, "node down or restarted");
        let links_seen = [cut, a, b].map(|i| cluster.said(i, "node link up"));

        cut_off(ips[cut], &[ips[a], ips[b]]);

        // The cut-off side: a change fails within the command timeout, and so does a check
        // (it cannot know it is up to date).
        let started = Instant::now();
        let refused = declare_exchange(&ch_cut, "minority-side")
            .await
            .unwrap_err();
        assert_eq!(code(&refused), Some(541), "{refused}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(exchange_code(&c_cut, "anything").await, Some(541));

        // The majority side: a new leader, then changes go on, and the cut-off node is taken
        // as down (its exclusive and transient queues go; its durable queue is out of reach).
        cluster
            .until_said(a, "leads the metadata group", leaders_seen)
            .await;
        let (_c_a, ch_a) = cluster.channel(a).await;
        declare_exchange(&ch_a, "majority-side").await.unwrap();
        cluster
            .until_said(a, "node down or restarted", downs_seen)
            .await;
        for q in ["ex", "tq", "dq"] {
            assert_eq!(queue_code(&cluster, b, q).await, Some(404), "{q}");
        }

        heal();
        cluster
            .until_said(cut, "node link up", links_seen[0] + 1)
            .await;
        cluster.until_said(a, "node link up", links_seen[1]).await;
        cluster.until_said(b, "node link up", links_seen[2]).await;

        idle.expect_close(320).await;
        for i in [cut, a, b] {
            let c = cluster.connect(i).await;
            assert_eq!(exchange_code(&c, "majority-side").await, None, "node {i}");
            assert_eq!(
                exchange_code(&c, "minority-side").await,
                Some(404),
                "node {i}"
            );
        }
        assert_eq!(queue_code(&cluster, cut, "ex").await, Some(404));
        assert_eq!(queue_code(&cluster, cut, "tq").await, Some(404));
        assert_eq!(count(&cluster, cut, "dq").await, 10);
        assert_eq!(count(&cluster, a, "dq").await, 10);
        // And the healed node takes changes again, seen everywhere.
        let (_c, ch) = cluster.channel(cut).await;
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        };
        ch.queue_declare("ex".into(), exclusive, FieldTable::default())
            .await
            .unwrap();
        let c_b = cluster.connect(b).await;
        assert_eq!(exchange_code(&c_b, "majority-side").await, None);
        assert_eq!(queue_code(&cluster, b, "ex").await, Some(405));
    });
}

fn quorum_args() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    t
}

/// A 3-node cluster that takes a node as down soon, with quorum queue `queue` declared on
/// node 1 (its first leader) and ids 0..100 published there, all confirmed: the cluster,
/// the nodes' addresses, node 1's connection and channel, and the ids.
async fn quorum_queue_with_100(
    queue: &str,
) -> (
    TestCluster,
    Vec<Ipv4Addr>,
    (lapin::Connection, lapin::Channel),
    Vec<usize>,
) {
    let settings = "cluster_peer_timeout_ms = 300\ncluster_command_timeout_ms = 2000\n";
    let cluster = TestCluster::start(3, settings);
    for i in 0..3 {
        cluster.url(i).await;
    }
    let ips: Vec<Ipv4Addr> = cluster.nodes.iter().map(|n| n.ip).collect();
    let (c1, ch1) = cluster.channel(0).await;
    ch1.queue_declare(queue.into(), crate::common::durable(), quorum_args())
        .await
        .unwrap();
    let before = publish_ids(&ch1, queue, 0..100).await;
    assert_eq!(before.len(), 100);
    (cluster, ips, (c1, ch1), before)
}

/// Take every message of `queue` with no-ack gets: the ids seen, and how many came.
async fn drain_ids(ch: &lapin::Channel, queue: &str) -> (std::collections::BTreeSet<usize>, usize) {
    let mut seen = std::collections::BTreeSet::new();
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let no_ack = lapin::options::BasicGetOptions { no_ack: true };
    while let Some(m) = ch.basic_get(queue.into(), no_ack).await.unwrap() {
        let n: usize = std::str::from_utf8(&m.delivery.data)
            .unwrap()
            .parse()
            .unwrap();
        seen.insert(n);
        received += 1;
        assert!(Instant::now() < deadline);
    }
    (seen, received)
}

/// Publish `ids` persistent with confirms on `ch`; the ids acked.
async fn publish_ids(ch: &lapin::Channel, queue: &str, ids: std::ops::Range<usize>) -> Vec<usize> {
    ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut pending = Vec::new();
    for i in ids {
        let c = ch
            .basic_publish(
                "".into(),
                queue.into(),
                lapin::options::BasicPublishOptions::default(),
                i.to_string().as_bytes(),
                crate::common::persistent(),
            )
            .await
            .unwrap();
        pending.push((i, c));
    }
    let mut acked = Vec::new();
    for (i, c) in pending {
        if matches!(c.await, Ok(c) if c.is_ack()) {
            acked.push(i);
        }
    }
    acked
}

/// A quorum queue's member cut off from the two others while a publisher on it and one on
/// the majority side publish with confirms: the cut-off side confirms nothing; the majority
/// side goes on; once healed, every confirmed message is in the queue (lost 0), nothing
/// unpublished is, and the cut-off node serves the queue again.
#[test]
fn the_minority_side_of_a_quorum_queue_confirms_nothing_and_loses_nothing() {
    in_private_network(|| async {
        // Declared on node 1 (its first leader); node 3 is cut off.
        let (cluster, ips, (_c1, ch1), before) = quorum_queue_with_100("pq").await;
        let (_c3, ch3) = cluster.channel(2).await;
        cut_off(ips[2], &[ips[0], ips[1]]);
        let started = Instant::now();
        let minority = publish_ids(&ch3, "pq", 1000..1050).await;
        assert!(
            minority.is_empty(),
            "the cut-off side confirmed {minority:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        // A get on the cut-off side fails with 541 in bounded time (nothing was committed).
        let (_c3b, ch3b) = cluster.channel(2).await;
        let e = ch3b
            .basic_get("pq".into(), lapin::options::BasicGetOptions::default())
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(541), "{e}");
        let majority = publish_ids(&ch1, "pq", 100..200).await;
        assert_eq!(majority.len(), 100, "the majority side goes on");
        heal();
        // The majority took node 3 as down meanwhile: once it learns that, it closes the
        // connections it had; connect after.
        cluster.until_said(2, "took this node as down", 0).await;
        // Everything confirmed is there, read from the healed node's own replica.
        let (_c, ch) = cluster.channel(2).await;
        let (seen, _) = drain_ids(&ch, "pq").await;
        let lost: Vec<_> = before
            .iter()
            .chain(&majority)
            .filter(|n| !seen.contains(n))
            .collect();
        assert!(lost.is_empty(), "lost {lost:?}");
        let unexpected: Vec<_> = seen
            .iter()
            .filter(|n| !(**n < 200 || (1000..1050).contains(*n)))
            .collect();
        assert!(unexpected.is_empty(), "{unexpected:?}");
        eprintln!(
            "confirmed {} (majority side), 0 of 50 on the cut-off side; after healing {} in \
             the queue ({} of the unconfirmed ones), lost 0",
            before.len() + majority.len(),
            seen.len(),
            seen.iter().filter(|n| **n >= 1000).count()
        );
    });
}

/// One link of three cut (nodes 1 and 2 no longer reach each other; both still reach node
/// 3) under publishers with confirms on the queue's leader (node 1) and on node 3: node 2
/// cannot depose the leader (node 3 still hears it: pre-vote and check-quorum), so both
/// publishers go on; once healed every confirmed message is in the queue (lost 0) and
/// nothing unpublished is.
#[test]
fn one_cut_link_of_three_stops_no_publisher_and_loses_nothing() {
    in_private_network(|| async {
        let (cluster, ips, (_c1, ch1), before) = quorum_queue_with_100("lq").await;
        let (_c3, ch3) = cluster.channel(2).await;
        let down = cluster.said(0, "node link down peer=2");
        let campaigned = cluster.said(1, "leader's link lost: campaigning");
        cut_off(ips[0], &[ips[1]]);
        // The cut is seen, and node 2, which lost the leader's link, stands for election.
        cluster.until_said(0, "node link down peer=2", down).await;
        cluster
            .until_said(1, "leader's link lost: campaigning", campaigned)
            .await;
        let (leader_side, third) = tokio::join!(
            publish_ids(&ch1, "lq", 100..400),
            publish_ids(&ch3, "lq", 1000..1300)
        );
        assert_eq!(leader_side.len(), 300, "the leader's publisher goes on");
        assert_eq!(third.len(), 300, "node 3's publisher goes on");
        heal();
        let confirmed: Vec<usize> = (before.iter().chain(&leader_side).chain(&third))
            .copied()
            .collect();
        let (_c, ch) = cluster.channel(2).await;
        let (seen, received) = drain_ids(&ch, "lq").await;
        let lost: Vec<_> = confirmed.iter().filter(|n| !seen.contains(n)).collect();
        assert!(lost.is_empty(), "lost {lost:?}");
        let unexpected: Vec<_> = seen
            .iter()
            .filter(|n| !(**n < 400 || (1000..1300).contains(*n)))
            .collect();
        assert!(unexpected.is_empty(), "{unexpected:?}");
        eprintln!(
            "confirmed {} ({} during the cut), received {received} ({} duplicates), lost 0, \
             unexpected 0",
            confirmed.len(),
            leader_side.len() + third.len(),
            received - seen.len()
        );
    });
}
