//! Disk faults, on a small tmpfs as the data directory (the tests mount one, so they run as
//! root, as CI does): the disk alarm blocks persistent publishers and clears by itself when
//! space returns, transient traffic goes on meanwhile; a store that cannot write (a full
//! disk, or syncs failing with EIO under the real binary through an LD_PRELOAD shim) stops
//! the broker, and nothing it confirmed is lost.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use warren::protocol::{
    AMQPClass, FieldTable as WFieldTable, basic, confirm, connection, queue as wqueue,
};
use warren::{Config, Server};

use crate::common::*;

/// A tmpfs of `mib` MiB, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u32) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        Tmpfs::run(
            &["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"],
            &dir,
        );
        Tmpfs { dir }
    }

    fn resize(&self, mib: u32) {
        Tmpfs::run(&["-o", &format!("remount,size={mib}m")], &self.dir);
    }

    fn run(args: &[&str], dir: &tempfile::TempDir) {
        let ok = Command::new("mount")
            .args(args)
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "disk-fault tests mount a tmpfs: they need root (CI runs as root)"
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn start_on(fs: &Tmpfs, config: Config) -> TestBroker {
    let config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: fs.dir.path().join("data"),
        ..config
    };
    let server = Server::start(config.clone()).await.expect("broker starts");
    TestBroker {
        port: server.local_addr.port(),
        server: Some(server),
        dir: None,
        config,
    }
}

const PERSISTENT: [u8; 3] = [0x10, 0, 2];

/// A raw client that says it understands connection.blocked, with channel 1 in confirm mode
/// and the durable queue "d" declared.
async fn blocked_aware_publisher(b: &TestBroker) -> Raw {
    let mut raw = Raw::connect(b).await;
    raw.open_blocked_aware().await;
    raw.open_channel(1).await;
    let ok = raw
        .call(
            1,
            AMQPClass::Queue(wqueue::AMQPMethod::Declare(wqueue::Declare {
                queue: "d".into(),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: WFieldTable::default(),
            })),
        )
        .await;
    assert!(format!("{ok:?}").contains("DeclareOk"), "{ok:?}");
    let ok = raw
        .call(
            1,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )
        .await;
    assert!(format!("{ok:?}").contains("SelectOk"), "{ok:?}");
    raw
}

enum Heard {
    Acked(u64),
    Blocked,
    Unblocked,
}

async fn hear(raw: &mut Raw) -> Heard {
    match raw.next_method().await.expect("broker still there") {
        (1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => Heard::Acked(a.delivery_tag),
        (0, AMQPClass::Connection(connection::AMQPMethod::Blocked(b))) => {
            assert_eq!(b.reason.as_str(), "low on disk");
            Heard::Blocked
        }
        (0, AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))) => Heard::Unblocked,
        other => panic!("unexpected {other:?} (a nack means a confirm was refused)"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_alarm_blocks_persistent_publishers_and_clears_when_space_returns() {
    let fs = Tmpfs::mount(64);
    let b = start_on(
        &fs,
        Config {
            disk_free_limit_bytes: 40 << 20,
            disk_check_interval_ms: 20,
            ..Config::default()
        },
    )
    .await;
    // A transient bystander, consuming, from before the alarm.
    let (_bc, bch) = channel(&b).await;
    declare(&bch, "t").await;
    let mut consumer = consume(&bch, "t", "c", true).await;
    let mut raw = blocked_aware_publisher(&b).await;
    let body = vec![7u8; 64 << 10];
    let (mut sent, mut acked, mut blocked) = (0u64, 0u64, false);
    // 64 KiB at a time until the alarm: at most the whole disk, so it must come.
    while !blocked && sent < 1024 {
        raw.publish(1, "", "d", &PERSISTENT, &body).await;
        sent += 1;
        while acked < sent && !blocked {
            match hear(&mut raw).await {
                Heard::Acked(tag) => acked = acked.max(tag),
                Heard::Blocked => blocked = true,
                Heard::Unblocked => panic!("unblocked before blocked"),
            }
        }
    }
    assert!(blocked, "no disk alarm after {sent} persistent publishes");
    assert!(
        warren::broker::disk::free_bytes(fs.dir.path()).unwrap() > 8 << 20,
        "the alarm keeps headroom"
    );
    // Transient traffic goes on: the bystander and a new connection publish and consume.
    for what in ["bystander", "new connection"] {
        let (_c, ch) = channel(&b).await;
        let ch = if what == "bystander" { &bch } else { &ch };
        publish(ch, "", "t", what.as_bytes()).await;
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("transient delivery during the disk alarm")
            .unwrap()
            .unwrap();
        assert_eq!(d.data, what.as_bytes());
    }
    // Consumers give the space back; the alarm clears by itself.
    let (_c, ch) = channel(&b).await;
    let purged = ch
        .queue_purge("d".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    // The publishes sent just before the alarm may still be unread in the blocked
    // connection's socket (the broker stops reading it): they reach the queue after the
    // unblock, so the purge takes at most all of them, and the rest are counted below.
    assert!(purged as u64 <= sent, "purged {purged} of {sent}");
    // Acks still owed may come before or after the unblock. (The alarm may also flicker:
    // RocksDB preallocates its log with fallocate, which takes space for a moment.)
    let mut unblocked = false;
    while !unblocked || acked < sent {
        match tokio::time::timeout(Duration::from_secs(30), hear(&mut raw)).await {
            Ok(Heard::Unblocked) => unblocked = true,
            Ok(Heard::Acked(tag)) => acked = acked.max(tag),
            Ok(Heard::Blocked) => unblocked = false,
            Err(_) => panic!("no unblock (or ack) after the purge: acked {acked} of {sent}"),
        }
    }
    assert_eq!(
        acked, sent,
        "every persistent publish confirmed, none refused"
    );
    let (_c2, ch2) = channel(&b).await;
    let rest = crate::common::count(&ch2, "d").await;
    assert_eq!(
        purged as u64 + u64::from(rest),
        sent,
        "every publish was taken"
    );
    raw.publish(1, "", "d", &PERSISTENT, b"after").await;
    loop {
        match hear(&mut raw).await {
            Heard::Acked(t) => {
                assert_eq!(t, sent + 1);
                break;
            }
            Heard::Blocked | Heard::Unblocked => continue,
        }
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_stops_the_broker_and_loses_nothing_confirmed() {
    let fs = Tmpfs::mount(24);
    // No alarm: the disk really fills up and a write fails.
    let config = Config {
        disk_free_limit_bytes: 0,
        ..Config::default()
    };
    let mut b = start_on(&fs, config.clone()).await;
    let (_c, ch) = channel(&b).await;
    confirming_into_d(&ch).await;
    let mut confirmed = BTreeSet::new();
    let (mut refused, mut last) = (0, 0);
    for i in 0u32..1024 {
        last = i;
        let mut body = i.to_be_bytes().to_vec();
        body.resize(64 << 10, 0);
        let sent = ch
            .basic_publish(
                "".into(),
                "d".into(),
                BasicPublishOptions::default(),
                &body,
                persistent(),
            )
            .await;
        match sent {
            Ok(c) => match c.await {
                Ok(c) if c.is_ack() => {
                    confirmed.insert(i);
                }
                _ => refused += 1,
            },
            Err(_) => refused += 1,
        }
        if refused > 0 {
            break;
        }
    }
    assert!(refused > 0, "24 MiB took 64 MiB of messages");
    let server = b.server.take().unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(30), server.failed())
        .await
        .expect("the broker stops by itself when its store cannot write");
    assert!(
        matches!(
            reason,
            warren::error::Fatal::Store(warren::store::StoreError::Write(_))
        ),
        "{reason}"
    );
    server.shutdown().await;

    // Room again: a new broker on the same directory has every confirmed message, once.
    fs.resize(128);
    let b = start_on(&fs, config).await;
    let (_c, ch) = channel(&b).await;
    drain_and_check(&ch, &confirmed, last + 1).await;
    b.stop().await;
}

/// Confirm mode on `ch`, and the durable queue "d" the disk-fault tests publish to.
async fn confirming_into_d(ch: &lapin::Channel) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare("d".into(), durable(), FieldTable::default())
        .await
        .unwrap();
}

/// Get everything in queue "d" (bodies start with the publish's number, below `sent`):
/// every confirmed message is there, once, and nothing never published.
async fn drain_and_check(ch: &lapin::Channel, confirmed: &BTreeSet<u32>, sent: u32) {
    let mut got = Vec::new();
    while let Some(m) = ch
        .basic_get("d".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        got.push(u32::from_be_bytes(m.data[..4].try_into().unwrap()));
    }
    let unique: BTreeSet<u32> = got.iter().copied().collect();
    let lost = confirmed.difference(&unique).count();
    let unexpected = unique.iter().filter(|i| **i >= sent).count();
    assert_eq!(
        (lost, unexpected, got.len() - unique.len()),
        (0, 0, 0),
        "lost, unexpected, duplicated of {} confirmed",
        confirmed.len()
    );
}

/// tests/faults/failsync.c, built into a preloadable library in `dir`.
fn fail_sync_shim(dir: &std::path::Path) -> std::path::PathBuf {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/faults/failsync.c");
    let lib = dir.join("libfailsync.so");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(src)
        .arg("-ldl")
        .status()
        .is_ok_and(|s| s.success());
    assert!(built, "the fsync fault shim builds with cc");
    lib
}

/// A disk whose syncs fail (EIO) under the running broker: the broker confirms nothing it
/// could not sync, stops by itself (exit 1, not a crash), and once the disk is good again a
/// restart on the same directory has every confirmed message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fsync_stops_the_broker_and_loses_nothing_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let shim = fail_sync_shim(dir.path());
    let trigger = dir.path().join("fail-sync");
    let data = dir.path().join("data");
    let start = || {
        spawn_binary(
            warren()
                .arg("--listen")
                .arg("127.0.0.1:0")
                .arg("--data-dir")
                .arg(&data)
                .env("LD_PRELOAD", &shim)
                .env("WARREN_FAIL_SYNC", &trigger),
        )
    };
    let node = start();
    let conn = node.connect().await;
    let ch = conn.create_channel().await.unwrap();
    confirming_into_d(&ch).await;

    // Windows of 50 confirmed publishes; the disk starts failing after the fourth.
    const WINDOW: u32 = 50;
    let (mut confirmed, mut refused, mut sent) = (BTreeSet::new(), 0, 0u32);
    for round in 0..100 {
        if round == 4 {
            std::fs::write(&trigger, b"").unwrap();
        }
        let mut window = Vec::new();
        for _ in 0..WINDOW {
            let i = sent;
            sent += 1;
            let sent = ch
                .basic_publish(
                    "".into(),
                    "d".into(),
                    BasicPublishOptions::default(),
                    &i.to_be_bytes(),
                    persistent(),
                )
                .await;
            match sent {
                Ok(c) => window.push((i, c)),
                Err(_) => refused += 1,
            }
        }
        for (i, c) in window {
            match c.await {
                Ok(c) if c.is_ack() => {
                    confirmed.insert(i);
                }
                _ => refused += 1,
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(
        refused > 0,
        "every publish was confirmed on a disk that cannot sync"
    );
    assert!(
        confirmed.len() >= 4 * WINDOW as usize,
        "{}",
        confirmed.len()
    );
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            let mut node = node;
            node.child.wait().unwrap()
        }),
    )
    .await
    .expect("the broker stops by itself when its store cannot sync")
    .unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "a clean stop with a reason: {status}"
    );

    // The disk is good again: a restart has every confirmed message, once.
    std::fs::remove_file(&trigger).unwrap();
    let mut node = start();
    let conn = node.connect().await;
    let ch = conn.create_channel().await.unwrap();
    drain_and_check(&ch, &confirmed, sent).await;
    node.child.kill().unwrap();
    node.child.wait().unwrap();
}
