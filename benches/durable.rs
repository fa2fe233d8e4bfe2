//! Durable-storage benchmark: publishes persistent messages with confirms to a durable queue
//! of a real `warren` process, then reports confirmed msg/s, group-commit batch sizes and
//! syncs/s (from the store's debug log), bytes the process wrote to disk per message
//! (/proc/PID/io), RSS with the backlog, and the time to recover it after SIGKILL.
//!
//!     cargo bench --bench durable -- [MESSAGES] [BODY_BYTES] [PUBLISHERS]
//!     cargo bench --bench durable -- tx [TRANSACTIONS] [CHANNELS]   (1-message transactions/s,
//!                                          CHANNELS committing at once, one connection each)
//!
//! Defaults: 1000000 messages of 16 bytes, 1 publisher, 1000 confirms outstanding each.
//! With AMQP_URL set, the same load runs against that broker instead (e.g. RabbitMQ).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const WINDOW: usize = 1000;

/// What the broker logged about group commits and recovery.
#[derive(Default)]
struct Log {
    commits: u64,
    synced_commits: u64,
    requests: u64,
    recovered_at: Option<Instant>,
}

struct Broker {
    child: Child,
    port: u16,
    log: Arc<Mutex<Log>>,
}

fn binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/durable-HASH -> target/release/warren
    exe.parent().unwrap().parent().unwrap().join("warren")
}

fn start(dir: &std::path::Path, port: u16) -> Broker {
    let mut child = Command::new(binary())
        .env("WARREN_LOG", "info,warren::store=debug")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run target/release/warren (cargo build --release first)");
    let log = Arc::new(Mutex::new(Log::default()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let port = loop {
        let line = lines.next().expect("broker starts").unwrap();
        if line.contains("recovery complete") {
            log.lock().unwrap().recovered_at = Some(Instant::now());
        }
        if let Some(rest) = line.split("listening for AMQP on ").nth(1) {
            break rest.trim().rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    let l = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.contains("group commit") {
                let mut l = l.lock().unwrap();
                l.commits += 1;
                if line.contains("sync=true") {
                    l.synced_commits += 1;
                }
                if let Some(n) = line
                    .split("requests=")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                {
                    l.requests += n.parse::<u64>().unwrap_or(0);
                }
            }
        }
    });
    Broker { child, port, log }
}

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Only the publish numbers, against any broker (e.g. RabbitMQ): AMQP_URL=amqp://...
async fn against(url: &str, messages: usize, body: usize, publishers: usize) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let _ = ch
        .queue_delete("bench-durable".into(), Default::default())
        .await;
    declare_durable(&ch, "bench-durable").await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..publishers)
        .map(|_| tokio::spawn(publish_to(url.to_string(), messages / publishers, body)))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let total = (messages / publishers) * publishers;
    println!("{url}: {total} x {body} B persistent, {publishers} publisher(s), window {WINDOW}");
    println!(
        "  confirmed msg/s:        {:.0}",
        total as f64 / started.elapsed().as_secs_f64()
    );
    let _ = ch
        .queue_delete("bench-durable".into(), Default::default())
        .await;
}

async fn declare_durable(ch: &lapin::Channel, name: &str) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
}

async fn publish(port: u16, count: usize, body: usize) {
    publish_to(
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        count,
        body,
    )
    .await
}

async fn publish_to(url: String, count: usize, body: usize) {
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let payload = vec![0x5au8; body];
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut window = std::collections::VecDeque::with_capacity(WINDOW);
    for _ in 0..count {
        if window.len() == WINDOW {
            let c: lapin::PublisherConfirm = window.pop_front().unwrap();
            assert!(c.await.unwrap().is_ack());
        }
        window.push_back(
            ch.basic_publish(
                "".into(),
                "bench-durable".into(),
                Default::default(),
                &payload,
                props.clone(),
            )
            .await
            .unwrap(),
        );
    }
    for c in window {
        assert!(c.await.unwrap().is_ack());
    }
}

/// 1-message transactions: publish one persistent message, commit, on `channels`
/// connections at once (each to its own durable queue); returns total commits/s.
async fn transactions(url: &str, count: usize, channels: usize) -> f64 {
    let mut ready = Vec::new();
    for i in 0..channels {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = format!("bench-tx-{i}");
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        declare_durable(&ch, &q).await;
        ch.tx_select().await.unwrap();
        ready.push((conn, ch, q));
    }
    let started = Instant::now();
    let loops: Vec<_> = ready
        .into_iter()
        .map(|(conn, ch, q)| {
            tokio::spawn(async move {
                let props = BasicProperties::default().with_delivery_mode(2);
                for _ in 0..count / channels {
                    ch.basic_publish(
                        "".into(),
                        q.as_str().into(),
                        Default::default(),
                        &[0x5a; 16],
                        props.clone(),
                    )
                    .await
                    .unwrap();
                    ch.tx_commit().await.unwrap();
                }
                (conn, ch, q)
            })
        })
        .collect();
    let mut done = Vec::new();
    for l in loops {
        done.push(l.await.unwrap());
    }
    let rate = (count / channels * channels) as f64 / started.elapsed().as_secs_f64();
    for (_conn, ch, q) in done {
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    }
    rate
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("tx") {
        let arg = |n: usize, default: usize| {
            std::env::args()
                .nth(n)
                .and_then(|a| a.parse().ok())
                .unwrap_or(default)
        };
        let (count, channels) = (arg(2, 5000), arg(3, 1).max(1));
        if let Ok(url) = std::env::var("AMQP_URL") {
            let rate = transactions(&url, count, channels).await;
            println!(
                "{url}: {count} one-message transactions on {channels} channel(s), {rate:.0} commits/s"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let broker = start(dir.path(), 0);
        let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.port);
        let synced_before = broker.log.lock().unwrap().synced_commits;
        let rate = transactions(&url, count, channels).await;
        let synced = broker.log.lock().unwrap().synced_commits - synced_before;
        println!(
            "warren: {count} one-message transactions on {channels} channel(s), {rate:.0} commits/s, {:.2} commits per sync",
            count as f64 / synced.max(1) as f64
        );
        let mut child = broker.child;
        child.kill().unwrap();
        child.wait().unwrap();
        return;
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let messages = args.first().copied().unwrap_or(1_000_000);
    let body = args.get(1).copied().unwrap_or(16);
    let publishers = args.get(2).copied().unwrap_or(1).max(1);
    if let Ok(url) = std::env::var("AMQP_URL") {
        return against(&url, messages, body, publishers).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 0);
    let port = broker.port;
    let pid = broker.child.id();
    {
        let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        declare_durable(&ch, "bench-durable").await;
    }
    let rss_idle = proc_field(pid, "status", "VmRSS:");
    let written_before = proc_field(pid, "io", "write_bytes:");
    let (commits_before, synced_before, requests_before) = {
        let l = broker.log.lock().unwrap();
        (l.commits, l.synced_commits, l.requests)
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..publishers)
        .map(|_| tokio::spawn(publish(port, messages / publishers, body)))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let total = (messages / publishers) * publishers;
    // Let the last unsynced writes land before reading the counters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let written = proc_field(pid, "io", "write_bytes:") - written_before;
    let rss_backlog = proc_field(pid, "status", "VmRSS:");
    let (commits, synced, requests) = {
        let l = broker.log.lock().unwrap();
        (
            l.commits - commits_before,
            l.synced_commits - synced_before,
            l.requests - requests_before,
        )
    };
    println!(
        "published+confirmed: {total} x {body} B persistent, {publishers} publisher(s), window {WINDOW}"
    );
    println!("  confirmed msg/s:        {:.0}", total as f64 / secs);
    println!(
        "  group commits:          {commits} ({synced} synced), {:.0} syncs/s",
        synced as f64 / secs
    );
    println!(
        "  avg messages per sync:  {:.1}",
        total as f64 / synced.max(1) as f64
    );
    println!(
        "  avg requests per write: {:.1}",
        requests as f64 / commits.max(1) as f64
    );
    println!(
        "  disk bytes written/msg: {:.0} (body {body} B)",
        written as f64 / total as f64
    );
    println!(
        "  RSS idle / with backlog: {} MiB / {} MiB",
        rss_idle / 1024,
        rss_backlog / 1024
    );

    // Crash and recover.
    let mut child = broker.child;
    child.kill().unwrap();
    child.wait().unwrap();
    let t0 = Instant::now();
    let restarted = start(dir.path(), port);
    let recovered = restarted
        .log
        .lock()
        .unwrap()
        .recovered_at
        .unwrap_or_else(Instant::now);
    let rss_recovered = proc_field(restarted.child.id(), "status", "VmRSS:");
    println!(
        "  recovery after SIGKILL: {:.2} s to recover {total} messages (process start to ready: {:.2} s)",
        (recovered - t0).as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    println!("  RSS after recovery:     {} MiB", rss_recovered / 1024);
    let mut child = restarted.child;
    child.kill().unwrap();
    child.wait().unwrap();
}
