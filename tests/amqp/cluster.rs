//! A cluster of real `warren` processes on one host: each node on its own loopback address
//! (127.0.0.2, .3, .4) with its own data directory, so that nodes can be killed with SIGKILL
//! and restarted. Metadata goes through the Raft group: a declare on one node is seen on
//! every node, 404/405/406/403 hold across nodes, the leader's death does not stop changes,
//! a restarted node catches up before it serves, and a minority refuses changes in bounded
//! time.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::watch;

use warren::protocol::{AMQPClass, AMQPValue, connection};

use crate::common::code;

/// How long a test waits for a node to serve (start, election, catch-up).
const READY: Duration = Duration::from_secs(30);

pub(crate) struct Node {
    id: u64,
    pub(crate) ip: Ipv4Addr,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    /// The AMQP port once the node serves (None while it waits for a majority).
    amqp: watch::Receiver<Option<u16>>,
    /// Every log line, for what the node says about leadership.
    log: Arc<Mutex<Vec<String>>>,
    /// The HTTP status API's port once it listens.
    http: watch::Receiver<Option<u16>>,
}

pub(crate) struct TestCluster {
    pub(crate) nodes: Vec<Node>,
    peers: Vec<String>,
    config: std::path::PathBuf,
    _config_dir: tempfile::TempDir,
}

fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind(SocketAddr::from((ip, 0)))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestCluster {
    /// `n` nodes, all started; `settings` goes into every node's config file.
    pub(crate) fn start(n: usize, settings: &str) -> TestCluster {
        let ips: Vec<Ipv4Addr> = (0..n)
            .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
            .collect();
        let peers = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("{}={ip}:{}", i + 1, free_port(*ip)))
            .collect();
        let config_dir = tempfile::tempdir().unwrap();
        let config = config_dir.path().join("warren.toml");
        std::fs::write(&config, settings).unwrap();
        let mut c = TestCluster {
            nodes: Vec::new(),
            peers,
            config,
            _config_dir: config_dir,
        };
        for (i, ip) in ips.into_iter().enumerate() {
            let (_, rx) = watch::channel(None);
            c.nodes.push(Node {
                id: i as u64 + 1,
                ip,
                dir: tempfile::tempdir().unwrap(),
                child: None,
                amqp: rx,
                log: Arc::default(),
                http: watch::channel(None).1,
            });
            c.spawn(i);
        }
        c
    }

    pub(crate) fn spawn(&mut self, i: usize) {
        self.spawn_with(i, &[]);
    }

    /// Start node `i` with `extra` command-line arguments.
    pub(crate) fn spawn_with(&mut self, i: usize, extra: &[&str]) {
        let node = &mut self.nodes[i];
        let own = &self.peers[i];
        let cluster_listen = own.split_once('=').unwrap().1;
        let mut cmd = crate::common::warren();
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--node-id")
            .arg(node.id.to_string())
            .arg("--listen")
            .arg(format!("{}:0", node.ip))
            .arg("--cluster-listen")
            .arg(cluster_listen)
            .arg("--data-dir")
            .arg(node.dir.path())
            .arg("--http-listen")
            .arg(format!("{}:0", node.ip));
        for p in &self.peers {
            cmd.arg("--peer").arg(p);
        }
        cmd.args(extra);
        let mut child = cmd
            .env("WARREN_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = watch::channel(None);
        let (http_tx, http_rx) = watch::channel(None);
        let log = node.log.clone();
        std::thread::spawn(move || {
            let port = |rest: &str| rest.trim().rsplit(':').next().unwrap().parse().ok();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening for AMQP on ").nth(1) {
                    let _ = tx.send(port(rest));
                }
                if let Some(rest) = line.split("HTTP status API on ").nth(1) {
                    let _ = http_tx.send(port(rest));
                }
                log.lock().unwrap().push(line);
            }
        });
        node.child = Some(child);
        node.amqp = rx;
        node.http = http_rx;
    }

    /// Node `i`'s HTTP status API address, once it serves AMQP (it listens before).
    pub(crate) async fn http(&self, i: usize) -> SocketAddr {
        self.url(i).await;
        let port = self.nodes[i].http.borrow().expect("the HTTP API listens");
        SocketAddr::from((self.nodes[i].ip, port))
    }

    /// The node's AMQP URL once it serves.
    pub(crate) async fn url(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let mut rx = node.amqp.clone();
        let port = tokio::time::timeout(READY, rx.wait_for(Option::is_some))
            .await
            .unwrap_or_else(|_| panic!("node {} serves within {READY:?}", node.id))
            .expect("node log open")
            .expect("port");
        format!("amqp://guest:guest@{}:{port}/%2f", node.ip)
    }

    /// The node's AMQP address once it serves (for raw clients).
    pub(crate) async fn addr(&self, i: usize) -> SocketAddr {
        self.url(i).await; // waits, bounded, until it serves
        let port = self.nodes[i].amqp.borrow().expect("port");
        SocketAddr::from((self.nodes[i].ip, port))
    }

    pub(crate) async fn connect(&self, i: usize) -> Connection {
        Connection::connect(&self.url(i).await, ConnectionProperties::default())
            .await
            .expect("connect")
    }

    pub(crate) async fn channel(&self, i: usize) -> (Connection, Channel) {
        let c = self.connect(i).await;
        let ch = c.create_channel().await.unwrap();
        (c, ch)
    }

    pub(crate) fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Empty node `i`'s data directory (the node must be stopped).
    pub(crate) fn wipe(&mut self, i: usize) {
        let dir = self.nodes[i].dir.path().to_path_buf();
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
    }

    /// How many of node `i`'s log lines contain `needle`.
    pub(crate) fn said(&self, i: usize, needle: &str) -> usize {
        let log = self.nodes[i].log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).count()
    }

    /// Wait until node `i` has said `needle` more than `before` times (its log is the only
    /// place a link coming up shows).
    pub(crate) async fn until_said(&self, i: usize, needle: &str, before: usize) {
        let deadline = std::time::Instant::now() + READY;
        while self.said(i, needle) <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "node {} never said {needle:?}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The index of the node that says last that it leads the metadata group.
    pub(crate) fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.child.is_none() {
                continue;
            }
            for line in n.log.lock().unwrap().iter() {
                if !line.contains("leads the metadata group") || !line.contains("this node") {
                    continue;
                }
                let term = line
                    .split("term=")
                    .nth(1)
                    .and_then(|t| t.split_whitespace().next())
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                if best.is_none_or(|(t, _)| term >= t) {
                    best = Some((term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn passive_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// The reply code of a passive exchange.declare on a fresh channel (None: it exists).
pub(crate) async fn exchange_code(c: &Connection, name: &str) -> Option<u16> {
    let ch = c.create_channel().await.unwrap();
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Topic,
        passive_exchange(),
        FieldTable::default(),
    )
    .await
    .err()
    .map(|e| code(&e).expect("a reply code"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declares_on_one_node_hold_on_every_node() {
    let cluster = TestCluster::start(3, "");
    let (c1, ch1) = cluster.channel(0).await;
    let c2 = cluster.connect(1).await;
    let c3 = cluster.connect(2).await;
    ch1.exchange_declare(
        "x".into(),
        ExchangeKind::Topic,
        durable_exchange(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // The -ok means a majority committed it; a passive declare on any node sees every
    // change committed before it.
    for c in [&c1, &c2, &c3] {
        assert_eq!(
            exchange_code(c, "x").await,
            None,
            "every node knows exchange x"
        );
    }
    // Redeclaring with another type on another node: 406 from the same rules.
    let ch2 = c2.create_channel().await.unwrap();
    let e = ch2
        .exchange_declare(
            "x".into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    let ch3 = c3.create_channel().await.unwrap();
    let e = ch3
        .exchange_declare(
            "amq.mine".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(403));
    // An exclusive queue is its connection's on every node.
    ch1.queue_declare(
        "mine".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let ch3 = c3.create_channel().await.unwrap();
    let refused = declare_refused(&ch3, "mine", QueueDeclareOptions::default()).await;
    assert_eq!(refused, Some(405));
    // A delete on one node is seen on the others.
    let ch3 = c3.create_channel().await.unwrap();
    ch3.exchange_delete("x".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(exchange_code(&c1, "x").await, Some(404));
    // connection.start names the cluster, the same on every node.
    let mut names = Vec::new();
    for i in 0..3 {
        let addr = cluster.addr(i).await;
        let mut raw = crate::common::Raw::over(tokio::net::TcpStream::connect(addr).await.unwrap());
        raw.send(b"AMQP\x00\x00\x09\x01").await;
        let Some((0, AMQPClass::Connection(connection::AMQPMethod::Start(s)))) =
            raw.next_method().await
        else {
            panic!("connection.start expected");
        };
        match s.server_properties.inner().get("cluster_name") {
            Some(AMQPValue::LongString(name)) => names.push(name.to_string()),
            other => panic!("cluster_name {other:?}"),
        }
    }
    assert!(names[0].starts_with("warren-"), "{names:?}");
    assert!(names.iter().all(|n| *n == names[0]), "{names:?}");
}

pub(crate) async fn declare_exchange(ch: &Channel, name: &str) -> Result<(), lapin::Error> {
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Direct,
        durable_exchange(),
        FieldTable::default(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_metadata_leader_does_not_stop_declares() {
    let mut cluster = TestCluster::start(3, "");
    for i in 0..3 {
        cluster.url(i).await;
    }
    let leader = cluster.leader().expect("a node says it leads");
    let client = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let (_c, ch) = cluster.channel(client).await;
    for n in 0..20 {
        declare_exchange(&ch, &format!("before-{n}")).await.unwrap();
    }
    cluster.kill9(leader);
    // Every declare gets its -ok: the survivors elect a new leader well within the
    // command timeout, and a proposal lost with the old leader is made again.
    for n in 0..20 {
        declare_exchange(&ch, &format!("after-{n}")).await.unwrap();
    }
    let c = cluster.connect(other).await;
    for n in 0..20 {
        for name in [format!("before-{n}"), format!("after-{n}")] {
            assert_eq!(
                exchange_code(&c, &name).await,
                None,
                "{name} on the other survivor"
            );
        }
    }
    let new_leader = cluster.leader().expect("a new leader");
    assert_ne!(new_leader, leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_before_it_serves() {
    let mut cluster = TestCluster::start(3, "");
    let (_c, ch) = cluster.channel(0).await;
    declare_exchange(&ch, "early").await.unwrap();
    cluster.url(2).await;
    cluster.kill9(2);
    for n in 0..30 {
        declare_exchange(&ch, &format!("missed-{n}")).await.unwrap();
    }
    ch.exchange_delete("early".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    cluster.spawn(2);
    let c3 = cluster.connect(2).await;
    for n in 0..30 {
        assert_eq!(exchange_code(&c3, &format!("missed-{n}")).await, None);
    }
    assert_eq!(exchange_code(&c3, "early").await, Some(404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_refuses_changes_in_bounded_time_then_recovers() {
    let mut cluster = TestCluster::start(3, "cluster_command_timeout_ms = 2000\n");
    let (_c, ch) = cluster.channel(0).await;
    declare_exchange(&ch, "with-majority").await.unwrap();
    cluster.url(1).await;
    cluster.url(2).await;
    cluster.kill9(1);
    cluster.kill9(2);
    let started = std::time::Instant::now();
    let e = declare_exchange(&ch, "alone").await.unwrap_err();
    assert_eq!(code(&e), Some(541), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Half-applied it is not: once a majority is back, the change is either there or not,
    // and new changes go through.
    cluster.spawn(1);
    let (_c2, ch2) = cluster.channel(1).await;
    declare_exchange(&ch2, "back").await.unwrap();
    let c1 = cluster.connect(0).await;
    assert_eq!(exchange_code(&c1, "back").await, None);
    assert_eq!(exchange_code(&c1, "with-majority").await, None);
}

#[test]
fn bad_cluster_settings_exit_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let peers = ["--peer", "1=127.0.0.2:1", "--peer", "2=127.0.0.3:1"];
    let cases: [(&[&str], &str); 3] = [
        (
            &["--node-id", "3", "--cluster-listen", "127.0.0.2:1"],
            "not in the peer list",
        ),
        (
            &["--node-id", "1"],
            "needs node_id, cluster_listen and peers",
        ),
        (
            &["--node-id", "1", "--cluster-listen", "127.0.0.9:1"],
            "not this node's peer entry",
        ),
    ];
    for (args, why) in cases {
        let out = crate::common::warren()
            .args(args)
            .args(peers)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(why), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_another_cluster_is_refused() {
    let mut cluster = TestCluster::start(3, "");
    cluster.url(0).await;
    cluster.kill9(0);
    // The same data dir under another peer list.
    let out = crate::common::warren()
        .args(["--node-id", "1", "--cluster-listen", "127.0.0.2:1"])
        .args(["--peer", "1=127.0.0.2:1", "--peer", "2=127.0.0.3:1"])
        .arg("--data-dir")
        .arg(cluster.nodes[0].dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("another cluster"), "{err}");
    // And as a single node.
    let out = crate::common::warren()
        .args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(cluster.nodes[0].dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("belongs to a cluster node"), "{err}");
}

/// The reply code of a queue.declare that must fail.
async fn declare_refused(ch: &Channel, name: &str, opts: QueueDeclareOptions) -> Option<u16> {
    let r = ch
        .queue_declare(name.into(), opts, FieldTable::default())
        .await;
    code(&r.expect_err("queue.declare refused"))
}

async fn declare_queue(ch: &Channel, name: &str, opts: QueueDeclareOptions) {
    ch.queue_declare(name.into(), opts, FieldTable::default())
        .await
        .unwrap();
}

/// The reply code of a passive queue.declare from a fresh connection (None: found).
pub(crate) async fn queue_code(cluster: &TestCluster, node: usize, name: &str) -> Option<u16> {
    let c = cluster.connect(node).await;
    let ch = c.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let r = ch
        .queue_declare(name.into(), passive, FieldTable::default())
        .await;
    r.err().map(|e| code(&e).expect("a reply code"))
}

/// Node 3's queues: one exclusive to a connection, one transient, one durable.
pub(crate) async fn declare_three(ch: &Channel) {
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    declare_queue(ch, "ex", exclusive).await;
    declare_queue(ch, "tq", QueueDeclareOptions::default()).await;
    declare_queue(ch, "dq", crate::common::durable()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nodes_exclusive_and_transient_queues_are_gone() {
    let mut cluster = TestCluster::start(3, "");
    let (_c3, ch3) = cluster.channel(2).await;
    declare_three(&ch3).await;
    let (_c1, ch1) = cluster.channel(0).await;
    let refused = declare_refused(&ch1, "ex", QueueDeclareOptions::default()).await;
    assert_eq!(refused, Some(405), "exclusive to a connection of node 3");
    cluster.kill9(2);
    cluster.spawn(2);
    // Node 3 serves only once its restart is committed: its connections' exclusive queues
    // and its transient queues are gone everywhere; its durable queue is back on it.
    assert_eq!(queue_code(&cluster, 2, "ex").await, Some(404));
    assert_eq!(queue_code(&cluster, 2, "tq").await, Some(404));
    assert_eq!(queue_code(&cluster, 0, "ex").await, Some(404));
    assert_eq!(queue_code(&cluster, 2, "dq").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_exclusive_and_transient_queues_go_with_it() {
    let mut cluster = TestCluster::start(3, "cluster_peer_timeout_ms = 200\n");
    let (_c3, ch3) = cluster.channel(2).await;
    declare_three(&ch3).await;
    cluster.url(0).await;
    cluster.url(1).await;
    cluster.kill9(2);
    // The leader takes node 3 as down once its link has been down for 5 peer timeouts
    // (1 s here), and commits that; until then the queues are still there.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (ex, tq) = (
            queue_code(&cluster, 0, "ex").await,
            queue_code(&cluster, 1, "tq").await,
        );
        if ex == Some(404) && tq == Some(404) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 3 never taken as down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its durable queue stays (it lives on node 3 and comes back with it): redeclaring it
    // otherwise is still inequivalent. Used while its node is down, it answers 404, as
    // RabbitMQ does for a durable queue whose home node is down.
    let (_c, ch) = cluster.channel(0).await;
    let refused = declare_refused(&ch, "dq", QueueDeclareOptions::default()).await;
    assert_eq!(refused, Some(406));
    assert_eq!(queue_code(&cluster, 0, "dq").await, Some(404));
    // With RabbitMQ's words, for a get as for a consume.
    let down = "home node 'node 3' of durable queue 'dq' in vhost '/' is down or inaccessible";
    let (c, ch) = cluster.channel(1).await;
    let e = ch
        .basic_get("dq".into(), BasicGetOptions::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(404));
    assert!(e.to_string().contains(down), "{e}");
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .basic_consume(
            "dq".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains(down), "{e}");
}

pub(crate) fn signal(cluster: &TestCluster, i: usize, sig: &str) {
    let pid = cluster.nodes[i].child.as_ref().unwrap().id();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_catches_up_once_it_runs_again() {
    let cluster = TestCluster::start(3, "");
    let (_c, ch) = cluster.channel(0).await;
    cluster.url(2).await;
    signal(&cluster, 2, "-STOP");
    // The two others are a majority: changes go on without the hung node.
    for n in 0..10 {
        declare_exchange(&ch, &format!("while-paused-{n}"))
            .await
            .unwrap();
    }
    signal(&cluster, 2, "-CONT");
    let c3 = cluster.connect(2).await;
    for n in 0..10 {
        assert_eq!(exchange_code(&c3, &format!("while-paused-{n}")).await, None);
    }
}

/// Publish `n` persistent messages on a confirm-mode channel; the acks and nacks received.
pub(crate) async fn publish_confirmed(ch: &Channel, queue: &str, n: usize) -> (usize, usize) {
    publish_confirmed_from(ch, queue, 0, n).await
}

/// The same with bodies `m{from}` on.
pub(crate) async fn publish_confirmed_from(
    ch: &Channel,
    queue: &str,
    from: usize,
    n: usize,
) -> (usize, usize) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in from..from + n {
        let c = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                crate::common::persistent(),
            )
            .await
            .unwrap();
        confirms.push(c);
    }
    let (mut acked, mut nacked) = (0, 0);
    for c in confirms {
        if c.await.unwrap().is_ack() {
            acked += 1;
        } else {
            nacked += 1;
        }
    }
    (acked, nacked)
}

pub(crate) async fn count(cluster: &TestCluster, node: usize, queue: &str) -> u32 {
    let (_c, ch) = cluster.channel(node).await;
    crate::common::count(&ch, queue).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_is_used_from_any_node() {
    let mut cluster = TestCluster::start(3, "");
    let (_c1, ch1) = cluster.channel(0).await;
    declare_queue(&ch1, "far", crate::common::durable()).await;
    // Publish from node 2 to the queue on node 1: confirmed once node 1 has it on disk.
    let (_c2, ch2) = cluster.channel(1).await;
    assert_eq!(publish_confirmed(&ch2, "far", 100).await, (100, 0));
    assert_eq!(count(&cluster, 2, "far").await, 100);
    // Get and ack from node 3, in order.
    let (c3, ch3) = cluster.channel(2).await;
    for i in 0..10 {
        let m = ch3
            .basic_get("far".into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("a message");
        assert_eq!(m.delivery.data, format!("m{i}").as_bytes());
        assert!(!m.delivery.redelivered);
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    // One held unacked when its connection closes: back, redelivered, at the head.
    let held = ch3
        .basic_get("far".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(held.delivery.data, b"m10");
    c3.close(200, "bye".into()).await.unwrap();
    assert_eq!(count(&cluster, 1, "far").await, 90);
    // The home node dies: what was confirmed is back with it. (Killed before any get
    // without ack: like RabbitMQ, a dequeue still being written when the node dies may be
    // undone, which would make the count below depend on timing.)
    cluster.kill9(0);
    let (_c, ch) = cluster.channel(1).await;
    let (acked, nacked) = publish_confirmed(&ch, "far", 5).await;
    assert_eq!(
        (acked, nacked),
        (0, 5),
        "nothing confirmed while its home is down"
    );
    // Once node 2's link to the restarted home is up again, the queue is there for it.
    let links = cluster.said(1, "node link up peer=1 ");
    cluster.spawn(0);
    cluster.url(0).await;
    cluster.until_said(1, "node link up peer=1 ", links).await;
    assert_eq!(count(&cluster, 1, "far").await, 90);
    let (_c1, ch1) = cluster.channel(0).await;
    let again = ch1
        .basic_get("far".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(again.delivery.data, b"m10");
    assert!(again.delivery.redelivered);
    // Purge and delete from other nodes.
    let (_c, ch) = cluster.channel(2).await;
    let purged = ch
        .queue_purge("far".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(purged, 89);
    ch.queue_delete("far".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(queue_code(&cluster, 0, "far").await, Some(404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_on_another_node_gets_every_message_in_order() {
    use futures_lite::StreamExt;
    let mut cluster = TestCluster::start(3, "");
    let (_c1, ch1) = cluster.channel(0).await;
    declare_queue(&ch1, "work", crate::common::durable()).await;
    let (_c2, ch2) = cluster.channel(1).await;
    assert_eq!(publish_confirmed(&ch2, "work", 1000).await, (1000, 0));
    // A consumer on node 3 with a prefetch: every message, in order, acked one by one.
    let (c3, ch3) = cluster.channel(2).await;
    ch3.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut consumer = crate::common::consume(&ch3, "work", "far-away", false).await;
    for i in 0..600 {
        let d = consumer.next().await.expect("a delivery").unwrap();
        assert_eq!(d.data, format!("m{i}").as_bytes());
        assert!(!d.redelivered);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    // The next 50 arrive unacked (the prefetch); then its node dies: they come back,
    // redelivered, to a consumer on a surviving node, and nothing is lost or doubled.
    let mut unacked = Vec::new();
    for _ in 0..50 {
        unacked.push(consumer.next().await.expect("a delivery").unwrap());
    }
    drop(c3);
    cluster.kill9(2);
    let (_c, ch) = cluster.channel(1).await;
    let mut rest = crate::common::consume(&ch, "work", "survivor", false).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 600..1000 {
        let d = rest.next().await.expect("a delivery").unwrap();
        let n: usize = std::str::from_utf8(&d.data).unwrap()[1..].parse().unwrap();
        assert_eq!(d.redelivered, n < 650, "m{n}");
        assert!(seen.insert(n), "m{n} twice");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(seen.len(), 400);
    assert_eq!(seen.first(), Some(&600));
    assert_eq!(seen.last(), Some(&999));
    assert_eq!(unacked.len(), 50);
}

/// basic.qos global=true holds across nodes: a channel on node 2 consuming from queues
/// homed on nodes 1, 2 and 3 has at most its limit unacked in all, acks free room for any of
/// them, and credit a queue left unused moves on (every message arrives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_prefetch_spans_queues_on_every_node() {
    use futures_lite::StreamExt;
    let cluster = TestCluster::start(3, "");
    let queues = ["g1", "g2", "g3"];
    let mut conns = Vec::new();
    for (node, q) in queues.iter().enumerate() {
        let (c, ch) = cluster.channel(node).await;
        declare_queue(&ch, q, QueueDeclareOptions::default()).await;
        assert_eq!(publish_confirmed(&ch, q, 5).await, (5, 0));
        conns.push(c);
    }
    let ready = async || {
        let mut n = 0;
        for q in queues {
            n += count(&cluster, 1, q).await;
        }
        n
    };
    let (_c, ch) = cluster.channel(1).await;
    ch.basic_qos(3, BasicQosOptions { global: true })
        .await
        .unwrap();
    let mut each = Vec::new();
    for q in queues {
        each.push(crate::common::consume(&ch, q, q, false).await);
    }
    let (c3, c2, c1) = (
        each.pop().unwrap(),
        each.pop().unwrap(),
        each.pop().unwrap(),
    );
    let mut all = c1.or(c2).or(c3);
    let mut next = async || {
        tokio::time::timeout(READY, all.next())
            .await
            .expect("a delivery")
            .unwrap()
            .unwrap()
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next().await);
    }
    assert_eq!(ready().await, 12, "three out, on a limit of three");
    held.remove(0)
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    held.push(next().await);
    assert_eq!(ready().await, 11, "one acked, one more out");
    // Acked as they come, every message arrives: credit held by a queue that ran dry goes
    // back to the others.
    for d in held {
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    for _ in 4..15 {
        next().await.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(ready().await, 0);
}

/// Alarms are cluster-wide, as in RabbitMQ: node 1 over its memory watermark blocks a
/// publisher on node 2 that publishes only to a queue on node 2; draining node 1's queue
/// unblocks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_on_one_node_blocks_publishers_on_every_node() {
    let cluster = TestCluster::start(3, "memory_high_watermark_bytes = 1048576\n");
    let p2 = cluster.connect(1).await;
    let mut events = p2.events_listener();
    let ch2 = p2.create_channel().await.unwrap();
    declare_queue(&ch2, "near", QueueDeclareOptions::default()).await;
    assert_eq!(publish_confirmed(&ch2, "near", 1).await, (1, 0));

    let (_c1, ch1) = cluster.channel(0).await;
    declare_queue(&ch1, "far", QueueDeclareOptions::default()).await;
    // Node 1's own publisher stalls once its node stops reading it: on a task of its own.
    let filling = tokio::spawn(async move {
        let body = vec![1u8; 64 * 1024];
        for _ in 0..20 {
            crate::common::publish(&ch1, "", "far", &body).await;
        }
        ch1
    });
    let blocked = crate::common::until_blocked(&mut events).await;
    assert_eq!(blocked, "low on memory");

    let (_c3, ch3) = cluster.channel(2).await;
    let purged = ch3
        .queue_purge("far".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert!(purged >= 15, "{purged}");
    crate::common::until_unblocked(&mut events).await;
    assert_eq!(publish_confirmed(&ch2, "near", 1).await, (1, 0));
    assert_eq!(count(&cluster, 1, "near").await, 2);
    let ch1 = filling.await.unwrap();
    assert_eq!(purged + crate::common::count(&ch1, "far").await, 20);
}

/// Settling, recovering and cancelling from another node follow the single-node rules: a
/// queue on node 1, its consumer on node 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_from_another_node_follows_the_single_node_rules() {
    use futures_lite::StreamExt;
    let cluster = TestCluster::start(3, "");
    let (_c1, ch1) = cluster.channel(0).await;
    let auto_delete = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    declare_queue(&ch1, "settle", auto_delete).await;
    assert_eq!(publish_confirmed(&ch1, "settle", 4).await, (4, 0));
    let (_c2, ch2) = cluster.channel(1).await;
    let mut consumer = crate::common::consume(&ch2, "settle", "far", false).await;
    let mut next = async || {
        tokio::time::timeout(READY, consumer.next())
            .await
            .expect("a delivery")
            .unwrap()
            .unwrap()
    };
    let body = |d: &lapin::message::Delivery| String::from_utf8(d.data.clone()).unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next().await);
    }
    let got: Vec<_> = seen.iter().map(|d| (body(d), d.redelivered)).collect();
    assert_eq!(got[0], ("m0".into(), false));
    // nack with requeue: back, redelivered; reject without requeue: gone.
    seen[0]
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    seen[1]
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let again = next().await;
    assert_eq!((body(&again), again.redelivered), ("m0".into(), true));
    again.ack(BasicAckOptions::default()).await.unwrap();
    // basic.recover requeues the rest (m2, m3), redelivered, in order.
    ch2.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    for want in ["m2", "m3"] {
        let d = next().await;
        assert_eq!((body(&d), d.redelivered), (want.into(), true));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(count(&cluster, 2, "settle").await, 0);
    // An exclusive consumer on node 2 keeps node 3's consumer out (403).
    declare_queue(&ch1, "solo", QueueDeclareOptions::default()).await;
    let (_c2b, ch2b) = cluster.channel(1).await;
    let exclusive = BasicConsumeOptions {
        exclusive: true,
        ..Default::default()
    };
    let _only = ch2b
        .basic_consume(
            "solo".into(),
            "only".into(),
            exclusive,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (_c3, ch3) = cluster.channel(2).await;
    let e = ch3
        .basic_consume(
            "solo".into(),
            "another".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(403), "{e}");
    // Cancelling the last consumer of an auto-delete queue deletes it, on every node.
    ch2.basic_cancel("far".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    for node in 0..3 {
        assert_eq!(
            queue_code(&cluster, node, "settle").await,
            Some(404),
            "node {node}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_consumer_is_cancelled_when_its_queue_goes() {
    use futures_lite::StreamExt;
    let cluster = TestCluster::start(3, "");
    let (_c1, ch1) = cluster.channel(0).await;
    declare_queue(&ch1, "brief", QueueDeclareOptions::default()).await;
    let (_c2, ch2) = cluster.channel(1).await;
    let mut consumer = crate::common::consume(&ch2, "brief", "c", true).await;
    ch1.basic_publish(
        "".into(),
        "brief".into(),
        BasicPublishOptions::default(),
        b"one",
        lapin::BasicProperties::default(),
    )
    .await
    .unwrap();
    let d = consumer.next().await.expect("a delivery").unwrap();
    assert_eq!(d.data, b"one");
    ch1.queue_delete("brief".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    // The server-sent basic.cancel ends the consumer's stream.
    assert!(consumer.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_committed_to_a_queue_on_another_node_is_on_its_disk() {
    let mut cluster = TestCluster::start(3, "");
    let (_c1, ch1) = cluster.channel(0).await;
    declare_queue(&ch1, "txq", crate::common::durable()).await;
    let (_c2, ch2) = cluster.channel(1).await;
    ch2.tx_select().await.unwrap();
    for i in 0..20 {
        ch2.basic_publish(
            "".into(),
            "txq".into(),
            BasicPublishOptions::default(),
            format!("t{i}").as_bytes(),
            crate::common::persistent(),
        )
        .await
        .unwrap();
    }
    ch2.tx_commit().await.unwrap();
    // commit-ok came after the home node wrote them: killing it at once loses none.
    cluster.kill9(0);
    let links = cluster.said(1, "node link up peer=1 ");
    cluster.spawn(0);
    cluster.url(0).await;
    cluster.until_said(1, "node link up peer=1 ", links).await;
    assert_eq!(count(&cluster, 1, "txq").await, 20);
}

/// A consumer on `node` that never reads its socket after consume-ok (auto-ack).
async fn stuck_consumer(cluster: &TestCluster, node: usize, queue: &str) -> crate::common::Raw {
    use warren::protocol::basic;
    let addr = cluster.addr(node).await;
    let mut stuck = crate::common::Raw::over(tokio::net::TcpStream::connect(addr).await.unwrap());
    stuck.open(0, 0).await;
    stuck.open_channel(1).await;
    let consume = basic::Consume {
        queue: queue.into(),
        consumer_tag: "stuck".into(),
        no_local: false,
        no_ack: true,
        exclusive: false,
        nowait: false,
        arguments: Default::default(),
    };
    let ok = stuck
        .call(1, AMQPClass::Basic(basic::AMQPMethod::Consume(consume)))
        .await;
    assert!(
        matches!(ok, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))),
        "{ok:?}"
    );
    stuck
}

/// Flow control across nodes: a publisher on another node than a queue whose consumer is
/// stuck is paused once the queue passes `queue_flow_messages`, as a local one is, instead of
/// growing the queue on the home node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_publisher_outrunning_a_stuck_consumer_is_paused() {
    const TOTAL: usize = 40_000;
    let cluster = TestCluster::start(
        3,
        "queue_flow_messages = 500\nwriter_buffer_bytes = 65536\n",
    );
    let (_c1, ch1) = cluster.channel(0).await;
    declare_queue(&ch1, "fq", QueueDeclareOptions::default()).await;
    let stuck = stuck_consumer(&cluster, 0, "fq").await;
    let (_c2, pch) = cluster.channel(1).await;
    pch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut publishing = tokio::spawn(async move {
        let body = vec![3u8; 1024];
        let mut confirms = Vec::with_capacity(TOTAL);
        for _ in 0..TOTAL {
            let c = pch
                .basic_publish(
                    "".into(),
                    "fq".into(),
                    BasicPublishOptions::default(),
                    &body,
                    lapin::BasicProperties::default(),
                )
                .await
                .unwrap();
            confirms.push(c);
        }
        for c in confirms {
            assert!(c.await.unwrap().is_ack());
        }
    });
    // Without flow control the 40 MB would be taken in well under this.
    let early = tokio::time::timeout(Duration::from_secs(3), &mut publishing).await;
    assert!(early.is_err(), "the remote publisher was never paused");
    let held = crate::common::count(&ch1, "fq").await as usize;
    assert!(
        held < 12_000,
        "the queue grew to {held} despite flow control"
    );
    drop(stuck);
    tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .expect("the publisher finishes once the consumer is gone")
        .unwrap();
}

/// A node restarted on a wiped data directory (its Raft state lost while its peers remember
/// it) must not rejoin as the same node: it stops with the reason instead of voting again
/// or crashing its Raft task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_wiped_data_dir_stops_with_a_reason() {
    let mut cluster = TestCluster::start(3, "");
    let (_c, ch) = cluster.channel(0).await;
    declare_exchange(&ch, "before-the-wipe").await.unwrap();
    // The wiped node is a follower the leader knows has the change (a new leader would
    // know nothing of what it had, and could not tell it was wiped).
    let leader = cluster.leader().expect("a node says it leads");
    let (_c, ch) = cluster.channel(leader).await;
    let w = (0..3).find(|i| *i != leader).unwrap();
    let cw = cluster.connect(w).await;
    assert_eq!(exchange_code(&cw, "before-the-wipe").await, None);
    cluster.kill9(w);
    cluster.wipe(w);
    cluster.spawn(w);
    let mut child = cluster.nodes[w].child.take().unwrap();
    // Polled, not waited on a blocking thread: a node that never stops fails the test
    // (and is killed) instead of holding the runtime's shutdown forever.
    let deadline = std::time::Instant::now() + READY;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            let log = cluster.nodes[w].log.lock().unwrap().join("\n");
            panic!("the wiped node did not stop within {READY:?}; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(2));
    cluster
        .until_said(w, "cannot rejoin as the same node", 0)
        .await;
    // The others go on.
    declare_exchange(&ch, "after-the-wipe").await.unwrap();
}

/// A publisher with confirms for a checker like Jepsen's total-queue: it publishes bodies
/// `m0`, `m1`, … in batches of 50 and waits for each batch's confirms, until stopped.
pub(crate) struct Publisher {
    stop: Arc<std::sync::atomic::AtomicBool>,
    published: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<(std::collections::BTreeSet<usize>, usize)>,
}

impl Publisher {
    /// Start on `ch` (put in confirm mode here); `keep` (its connection) lives as long.
    pub(crate) async fn start(ch: Channel, queue: &str, keep: Option<Connection>) -> Publisher {
        use std::sync::atomic::Ordering;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let published = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, p, queue) = (stop.clone(), published.clone(), queue.to_string());
        let task = tokio::spawn(async move {
            let mut confirmed = std::collections::BTreeSet::new();
            let mut next = 0;
            while !s.load(Ordering::Relaxed) {
                let mut pending = Vec::new();
                for i in next..next + 50 {
                    let c = ch
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions::default(),
                            format!("m{i}").as_bytes(),
                            crate::common::persistent(),
                        )
                        .await
                        .unwrap();
                    pending.push((i, c));
                }
                next += 50;
                p.store(next, Ordering::Relaxed);
                for (i, c) in pending {
                    if c.await.unwrap().is_ack() {
                        confirmed.insert(i);
                    }
                }
            }
            drop(keep);
            (confirmed, next)
        });
        Publisher {
            stop,
            published,
            task,
        }
    }

    /// How many it has published so far.
    pub(crate) fn published(&self) -> usize {
        self.published.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stop after the batch under way: the numbers confirmed, and how many were published.
    pub(crate) async fn finish(self) -> (std::collections::BTreeSet<usize>, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// The number in a `Publisher`'s body.
pub(crate) fn body_number(data: &[u8]) -> usize {
    std::str::from_utf8(data)
        .unwrap()
        .trim_start_matches('m')
        .parse()
        .unwrap()
}

/// The next delivery's number (see `Publisher`), acked; it must come within 30 s.
pub(crate) async fn take_acked(consumer: &mut lapin::Consumer) -> usize {
    use futures_lite::StreamExt;
    let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("deliveries go on")
        .expect("the consumer is not cancelled")
        .unwrap();
    d.ack(BasicAckOptions::default()).await.unwrap();
    body_number(&d.data)
}

/// The total-queue check once the publisher stopped: deliveries are taken until every
/// confirmed number has come (a lost one fails), none may be one never published, and the
/// counts are printed (duplicates are redeliveries of what was unacked at the fault).
pub(crate) async fn check_total_queue(
    consumer: &mut lapin::Consumer,
    mut received: Vec<usize>,
    (confirmed, n): (std::collections::BTreeSet<usize>, usize),
    before: usize,
) {
    assert!(
        confirmed.len() > before,
        "confirmed {} of {n}",
        confirmed.len()
    );
    let mut seen: std::collections::BTreeSet<usize> = received.iter().copied().collect();
    while !confirmed.is_subset(&seen) {
        let m = tokio::time::timeout(Duration::from_secs(30), take_acked(consumer))
            .await
            .unwrap_or_else(|_| {
                let lost: Vec<_> = confirmed.difference(&seen).take(10).collect();
                panic!("lost confirmed messages, e.g. {lost:?}")
            });
        received.push(m);
        seen.insert(m);
    }
    let unexpected: Vec<_> = seen.iter().filter(|m| **m >= n).collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    eprintln!(
        "published {n} ({before} before the fault), confirmed {}, received {} ({} distinct, \
         {} duplicates), lost 0, unexpected 0",
        confirmed.len(),
        received.len(),
        seen.len(),
        received.len() - seen.len()
    );
}
