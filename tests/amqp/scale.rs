//! Limits a hostile or merely big client reaches: 10,000 connections, 2047 channels on one
//! connection, the longest topic keys and patterns. Each ends with a bystander connection,
//! opened before, still served.

use std::time::Duration;

use lapin::options::*;
use lapin::types::FieldTable;
use warren::protocol::{AMQPClass, basic, channel as wchannel};

use crate::common::*;

/// File descriptors this process may open, raised to the hard limit (the broker binary does
/// the same for itself).
fn fd_limit() -> u64 {
    warren::server::raise_fd_limit().unwrap_or(u64::MAX)
}

/// 10,000 logged-in connections, each with a channel, against the real binary (its own file
/// descriptors): all served, and a bystander from before still publishes and gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_are_served() {
    const N: usize = 10_000;
    assert!(
        fd_limit() >= N as u64 + 2_000,
        "this test needs {} file descriptors (ulimit -n)",
        N + 2_000
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("warren.toml");
    std::fs::write(&config, "max_connections = 10100\n").unwrap();
    let mut r = spawn_binary(
        warren()
            .env("WARREN_LISTEN", "127.0.0.1:0")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data")),
    );
    let b = TestBroker {
        server: None,
        port: r.port,
        dir: None,
        config: warren::Config::default(),
    };
    let (_bc, bch) = channel(&b).await;
    declare(&bch, "bystander").await;
    // Handshakes 200 at a time (the default bound on pending handshakes is 1024).
    let mut conns = Vec::with_capacity(N);
    while conns.len() < N {
        let batch: Vec<_> = (0..200)
            .map(|_| {
                let port = b.port;
                tokio::spawn(async move {
                    let b = TestBroker {
                        server: None,
                        port,
                        dir: None,
                        config: warren::Config::default(),
                    };
                    let mut raw = Raw::connect(&b).await;
                    raw.open(4096, 0).await;
                    raw.open_channel(1).await;
                    raw
                })
            })
            .collect();
        for h in batch {
            conns.push(h.await.expect("a connection opens"));
        }
    }
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", r.child.id()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    eprintln!("broker RSS with {N} connections: {} MiB", rss_kib >> 10);
    // The last one opened and the bystander both still work.
    let last = conns.last_mut().unwrap();
    last.declare(1, "last").await;
    publish(&bch, "", "bystander", b"still here").await;
    assert_eq!(
        get_body(&bch, "bystander").await.as_deref(),
        Some(&b"still here"[..])
    );
    drop(conns);
    let (_c, ch) = channel(&b).await;
    declare(&ch, "after").await;
    let _ = r.child.kill();
    let _ = r.child.wait();
}

/// The negotiated maximum of 2047 channels on one connection, all open at once, each usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_and_forty_seven_channels_on_one_connection() {
    let b = start().await;
    let (_bc, bch) = channel(&b).await;
    declare(&bch, "bystander").await;
    let mut raw = Raw::connect(&b).await;
    raw.open(131_072, 0).await;
    for ch in 1..=2047u16 {
        raw.method(
            ch,
            AMQPClass::Channel(wchannel::AMQPMethod::Open(wchannel::Open {})),
        )
        .await;
    }
    let mut open = std::collections::BTreeSet::new();
    while open.len() < 2047 {
        match raw.next_method().await.expect("open-ok") {
            (ch, AMQPClass::Channel(wchannel::AMQPMethod::OpenOk(_))) => {
                assert!(open.insert(ch), "channel {ch} opened twice");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for ch in [1, 1024, 2047] {
        raw.declare(ch, &format!("q{ch}")).await;
        raw.publish(ch, "", &format!("q{ch}"), &[0, 0], b"m").await;
        match raw
            .call(
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                    queue: format!("q{ch}").into(),
                    no_ack: true,
                })),
            )
            .await
        {
            AMQPClass::Basic(basic::AMQPMethod::GetOk(_)) => {}
            other => panic!("channel {ch}: {other:?}"),
        }
    }
    publish(&bch, "", "bystander", b"ok").await;
    assert_eq!(
        get_body(&bch, "bystander").await.as_deref(),
        Some(&b"ok"[..])
    );
    b.stop().await;
}

/// The longest key (255 octets, 128 words) against the patterns that made matching
/// exponential: delivered once, at once, and the publisher's connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_topic_keys_route_in_time() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "t").await;
    let hashes = vec!["#"; 128].join(".");
    let alternating = vec!["#.a"; 64].join(".");
    for pattern in [
        &hashes,
        &alternating,
        &format!("{}.b", vec!["#"; 127].join(".")),
    ] {
        assert!(pattern.len() <= 255);
        ch.queue_bind(
            "t".into(),
            "amq.topic".into(),
            pattern.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let key = vec!["a"; 128].join(".");
    assert_eq!(key.len(), 255);
    for _ in 0..3 {
        publish(&ch, "amq.topic", &key, b"long").await;
    }
    let got = tokio::time::timeout(Duration::from_secs(10), count(&ch, "t"))
        .await
        .expect("routing the longest key finishes");
    assert_eq!(got, 3, "each message once, though three patterns match");
    b.stop().await;
}
/// Frames for `n` nowait methods made by `m(i)`, sent in chunks (one write per chunk).
async fn pipelined(raw: &mut Raw, n: usize, m: impl Fn(usize) -> AMQPClass) {
    let mut out = bytes::BytesMut::new();
    for i in 0..n {
        warren::protocol::encode::method(&mut out, 1, &m(i));
        if out.len() > 256 << 10 || i + 1 == n {
            raw.send(&out).await;
            out.clear();
        }
    }
}

/// A passive declare of the last queue: every method sent before it has been handled.
async fn round_trip(raw: &mut Raw, n: usize) -> AMQPClass {
    use warren::protocol::{FieldTable as WFieldTable, queue as wqueue};
    let probe = AMQPClass::Queue(wqueue::AMQPMethod::Declare(wqueue::Declare {
        queue: format!("q{}", n - 1).into(),
        passive: true,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: WFieldTable::default(),
    }));
    raw.call(1, probe).await
}

/// 100,000 queues, each bound to a topic exchange (100,000 bindings), routed to, then deleted
/// with their bindings: every step in time proportional to its size, and a bystander is
/// served throughout. The times are printed (benchmarks measure; tests only bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_queues_and_bindings() {
    use warren::protocol::{FieldTable as WFieldTable, queue as wqueue};
    const N: usize = 100_000;
    let b = start().await;
    let (bc, bch) = channel(&b).await;
    declare(&bch, "bystander").await;
    let mut raw = Raw::connect(&b).await;
    raw.open(131_072, 0).await;
    raw.open_channel(1).await;
    let t = std::time::Instant::now();
    pipelined(&mut raw, N, |i| {
        AMQPClass::Queue(wqueue::AMQPMethod::Declare(wqueue::Declare {
            queue: format!("q{i}").into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: true,
            arguments: WFieldTable::default(),
        }))
    })
    .await;
    let ok = round_trip(&mut raw, N).await;
    assert!(format!("{ok:?}").contains("DeclareOk"), "{ok:?}");
    let declared = t.elapsed();
    let t = std::time::Instant::now();
    pipelined(&mut raw, N, |i| {
        AMQPClass::Queue(wqueue::AMQPMethod::Bind(wqueue::Bind {
            queue: format!("q{i}").into(),
            exchange: "amq.topic".into(),
            routing_key: format!("k.{i}.#").into(),
            nowait: true,
            arguments: WFieldTable::default(),
        }))
    })
    .await;
    round_trip(&mut raw, N).await;
    let bound = t.elapsed();
    let t = std::time::Instant::now();
    for i in [0, N / 2, N - 1] {
        publish(&bch, "amq.topic", &format!("k.{i}.x"), b"routed").await;
        assert_eq!(count(&bch, &format!("q{i}")).await, 1, "q{i}");
    }
    let routed = t.elapsed();
    publish(&bch, "", "bystander", b"ok").await;
    assert_eq!(
        get_body(&bch, "bystander").await.as_deref(),
        Some(&b"ok"[..])
    );
    let t = std::time::Instant::now();
    pipelined(&mut raw, N, |i| {
        AMQPClass::Queue(wqueue::AMQPMethod::Delete(wqueue::Delete {
            queue: format!("q{i}").into(),
            if_unused: false,
            if_empty: false,
            nowait: true,
        }))
    })
    .await;
    raw.declare(1, "after").await;
    let deleted = t.elapsed();
    assert_eq!(passive_queue_code(&bc, "q7").await, Some(404));
    eprintln!(
        "{N} queues declared in {declared:?}, bound in {bound:?}, 3 routed in {routed:?}, \
         deleted in {deleted:?}"
    );
    b.stop().await;
}
