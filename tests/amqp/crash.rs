//! Crash safety: the real binary is killed with SIGKILL while publishers and consumers are
//! busy, restarted on the same data directory, and checked: every confirmed persistent
//! message is back, in order, exactly once; no transient message is; topology is intact.
//! Cycles: WARREN_CRASH_CYCLES (default 3; a soak run sets more).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};

use crate::common::{durable, persistent};

type Node = crate::common::Running;

fn spawn(dir: &std::path::Path, port: u16) -> Node {
    crate::common::spawn_binary(
        crate::common::warren()
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir),
    )
}

impl crate::common::Running {
    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_repeated_kill_9() {
    let cycles: usize = std::env::var("WARREN_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let mut node = spawn(dir.path(), 0);
    let port = node.port;
    {
        let c = node.connect().await;
        let ch = c.create_channel().await.unwrap();
        ch.exchange_declare(
            "crash-x".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_declare(
            "crash-q".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            "crash-q".into(),
            "crash-x".into(),
            "c.#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    // Everything the broker confirmed, in publish order (ids increase).
    let mut confirmed: Vec<u64> = Vec::new();
    // Everything consumed and acked (ack sent; it may or may not have reached the disk).
    let mut consumed: BTreeSet<u64> = BTreeSet::new();
    let mut next_id = 0u64;
    for cycle in 0..cycles {
        let c = node.connect().await;
        let ch = c.create_channel().await.unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        // Transient messages interleaved: none may come back.
        let tch = c.create_channel().await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // A consumer acking as it goes, so acks race with the crash too.
        let cc = node.connect().await;
        let cch = cc.create_channel().await.unwrap();
        cch.basic_qos(50, Default::default()).await.unwrap();
        let mut cons = cch
            .basic_consume(
                "crash-q".into(),
                "".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let consumer = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let Ok(Some(Ok(d))) =
                        tokio::time::timeout(std::time::Duration::from_millis(200), cons.next())
                            .await
                    else {
                        continue;
                    };
                    let id = u64::from_be_bytes(d.data[..8].try_into().unwrap());
                    // Take only every third message, so the queue keeps a backlog. A settle
                    // racing with the kill may never complete: bound it.
                    let limit = std::time::Duration::from_secs(1);
                    if id % 3 == 0 {
                        if let Ok(Ok(_)) =
                            tokio::time::timeout(limit, d.ack(Default::default())).await
                        {
                            seen.push(id);
                        }
                    } else {
                        let nack = d.nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        });
                        let _ = tokio::time::timeout(limit, nack).await;
                    }
                }
                seen
            })
        };
        let mut window = Vec::new();
        // Stop mid-window, so the kill lands with publishes unconfirmed and in flight.
        let target = next_id + 2000 + (cycle as u64 * 37 % 90) + 5;
        while next_id < target {
            let id = next_id;
            next_id += 1;
            let mut body = id.to_be_bytes().to_vec();
            body.extend_from_slice(&[0xAB; 200]);
            let p = ch
                .basic_publish(
                    "crash-x".into(),
                    "c.data".into(),
                    Default::default(),
                    &body,
                    persistent(),
                )
                .await
                .unwrap();
            window.push((id, p));
            let _ = tch
                .basic_publish(
                    "crash-x".into(),
                    "c.transient".into(),
                    Default::default(),
                    b"transient-marker",
                    BasicProperties::default(),
                )
                .await;
            if window.len() == 100 {
                for (id, p) in window.drain(..) {
                    if p.await.map(|c| c.is_ack()).unwrap_or(false) {
                        confirmed.push(id);
                    }
                }
            }
        }
        // Kill while the last window is still in flight.
        let unconfirmed_tail = std::mem::take(&mut window);
        node.kill9();
        stop.store(true, Ordering::Release);
        consumed.extend(consumer.await.unwrap());
        drop(unconfirmed_tail);
        node = spawn(dir.path(), port);
    }

    // Drain what survived.
    let c = node.connect().await;
    let ch = c.create_channel().await.unwrap();
    // Topology is intact: the binding still routes.
    ch.exchange_declare(
        "crash-x".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut back = Vec::new();
    while let Some(m) = ch
        .basic_get("crash-q".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        assert_ne!(
            &m.delivery.data[..],
            b"transient-marker",
            "a transient message survived a crash"
        );
        back.push(u64::from_be_bytes(m.delivery.data[..8].try_into().unwrap()));
    }
    // Exactly once each...
    let unique: BTreeSet<u64> = back.iter().copied().collect();
    assert_eq!(unique.len(), back.len(), "duplicates after recovery");
    // ...every confirmed message not consumed is back (an acked one may come back too: a
    // lost unsynced ack means a redelivery, never a loss)...
    let missing: Vec<u64> = confirmed
        .iter()
        .copied()
        .filter(|id| !unique.contains(id) && !consumed.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} confirmed messages lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // ...and in publish order.
    assert!(back.windows(2).all(|w| w[0] < w[1]), "order not kept");
    assert!(
        confirmed.len() > cycles * 1000,
        "too few confirms to be meaningful: {}",
        confirmed.len()
    );
    node.kill9();
}

/// Exactly-once moves: a transactional consumer moves messages from S to A and B (publish to
/// both, ack the source, commit) while the broker is killed with SIGKILL, over
/// WARREN_CRASH_CYCLES restarts. After the last one every
/// committed move is in both A and B, none is in only one, and none is also still in S.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_moves_are_all_or_nothing_across_kill_9() {
    let cycles: usize = std::env::var("WARREN_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // Enough to keep the mover busy through every cycle.
    let n = (300 * cycles + 500) as u32;
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(dir.path(), 0);
    let port = node.port;
    {
        let c = node.connect().await;
        let ch = c.create_channel().await.unwrap();
        for q in ["tx-s", "tx-a", "tx-b"] {
            ch.queue_declare(q.into(), durable(), FieldTable::default())
                .await
                .unwrap();
        }
        ch.confirm_select(Default::default()).await.unwrap();
        let mut pending = Vec::new();
        for i in 0..n {
            pending.push(
                ch.basic_publish(
                    "".into(),
                    "tx-s".into(),
                    Default::default(),
                    &i.to_be_bytes(),
                    persistent(),
                )
                .await
                .unwrap(),
            );
        }
        for p in pending {
            assert!(p.await.unwrap().is_ack());
        }
    }
    let committed = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let mut node = node;
    for cycle in 0..cycles {
        let (progress, mut seen) = tokio::sync::watch::channel(0usize);
        let mover = {
            let committed = committed.clone();
            let c = node.connect().await;
            tokio::spawn(async move {
                let ch = c.create_channel().await.unwrap();
                ch.tx_select().await.unwrap();
                loop {
                    let Ok(Some(m)) = ch
                        .basic_get("tx-s".into(), BasicGetOptions { no_ack: false })
                        .await
                    else {
                        return;
                    };
                    let id = u32::from_be_bytes(m.delivery.data[..4].try_into().unwrap());
                    for q in ["tx-a", "tx-b"] {
                        let sent = ch
                            .basic_publish(
                                "".into(),
                                q.into(),
                                Default::default(),
                                &m.delivery.data,
                                persistent(),
                            )
                            .await;
                        if sent.is_err() {
                            return;
                        }
                    }
                    if ch
                        .basic_ack(m.delivery.delivery_tag, Default::default())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if ch.tx_commit().await.is_err() {
                        return;
                    }
                    let mut done = committed.lock().unwrap();
                    done.push(id);
                    progress.send_replace(done.len());
                }
            })
        };
        // Kill at some point mid-stream, with a transaction in flight.
        let target = 300 * (cycle + 1);
        seen.wait_for(|n| *n >= target)
            .await
            .expect("the mover makes progress");
        node.kill9();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), mover).await;
        node = spawn(dir.path(), port);
    }
    let committed: BTreeSet<u32> = committed.lock().unwrap().iter().copied().collect();

    let c = node.connect().await;
    let ch = c.create_channel().await.unwrap();
    let drain = |q: &'static str| {
        let ch = ch.clone();
        async move {
            let mut out = Vec::new();
            while let Some(m) = ch
                .basic_get(q.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                out.push(u32::from_be_bytes(m.delivery.data[..4].try_into().unwrap()));
            }
            out
        }
    };
    let (s, a, b) = (
        drain("tx-s").await,
        drain("tx-a").await,
        drain("tx-b").await,
    );
    let set = |v: &Vec<u32>| v.iter().copied().collect::<BTreeSet<u32>>();
    let (ss, sa, sb) = (set(&s), set(&a), set(&b));
    assert_eq!(sa.len(), a.len(), "duplicates in A");
    assert_eq!(sb.len(), b.len(), "duplicates in B");
    assert_eq!(sa, sb, "a move is in only one of A and B");
    assert!(
        ss.is_disjoint(&sa),
        "moved messages still in S: {:?}",
        ss.intersection(&sa).take(5).collect::<Vec<_>>()
    );
    assert!(
        committed.is_subset(&sa),
        "committed moves lost: {:?}",
        committed.difference(&sa).take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        ss.len() + sa.len(),
        n as usize,
        "messages lost: S {} + A {}",
        ss.len(),
        sa.len()
    );
    node.kill9();
}
