//! Durable topology and persistent messages across clean restarts (in-process broker on the
//! same data directory). Crashes (SIGKILL) are in crash.rs.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};

use crate::common::*;

async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let c = ch
        .basic_publish(exchange.into(), key.into(), Default::default(), body, props)
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(c.is_ack(), "{c:?}");
}

async fn exists_exchange(ch: &Channel, name: &str, kind: ExchangeKind) -> bool {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .is_ok()
}

fn durable_exchanges() -> Vec<(&'static str, ExchangeKind)> {
    vec![
        ("dx-direct", ExchangeKind::Direct),
        ("dx-fanout", ExchangeKind::Fanout),
        ("dx-topic", ExchangeKind::Topic),
        ("dx-headers", ExchangeKind::Headers),
    ]
}

/// The durable part of the topology test: declared before the restart, and redeclared with
/// the same properties (which must succeed) after it.
async fn declare_durable_topology(ch: &Channel) {
    let durable_x = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (n, k) in durable_exchanges() {
        ch.exchange_declare(n.into(), k, durable_x, FieldTable::default())
            .await
            .unwrap();
    }
    ch.exchange_declare(
        "dx-internal".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..durable_x
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(60000));
    ch.queue_declare("dq".into(), durable(), args)
        .await
        .unwrap();
    ch.queue_declare(
        "dq-auto".into(),
        QueueDeclareOptions {
            durable: true,
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_topology_survives_and_transient_does_not() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare_durable_topology(&ch).await;
    ch.exchange_declare(
        "tx".into(),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare("tq".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_declare(
        "xq".into(),
        QueueDeclareOptions {
            durable: true,
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut hargs = FieldTable::default();
    hargs.insert("x-match".into(), AMQPValue::LongString("any".into()));
    hargs.insert("k".into(), AMQPValue::LongString("v".into()));
    ch.queue_bind(
        "dq".into(),
        "dx-direct".into(),
        "red".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "dq".into(),
        "dx-topic".into(),
        "a.#".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "dq".into(),
        "dx-headers".into(),
        "".into(),
        Default::default(),
        hargs.clone(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "dq".into(),
        "amq.fanout".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_bind(
        "dx-internal".into(),
        "dx-fanout".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "dq".into(),
        "dx-internal".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // A binding to a transient queue is not kept.
    ch.queue_bind(
        "tq".into(),
        "dx-direct".into(),
        "red".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let b = b.restart().await;
    let (_c, ch) = channel(&b).await;
    for (n, k) in durable_exchanges() {
        assert!(exists_exchange(&ch, n, k).await, "{n}");
    }
    // Redeclaring with the same properties is fine.
    declare_durable_topology(&ch).await;
    let c2 = connect(&b).await;
    for q in ["tq", "xq"] {
        assert_eq!(passive_queue_code(&c2, q).await, Some(404), "{q}");
    }
    assert!(
        !exists_exchange(
            &connect(&b).await.create_channel().await.unwrap(),
            "tx",
            ExchangeKind::Fanout
        )
        .await
    );

    // Every binding routes again: direct, topic, headers, amq.fanout, and e2e via internal.
    publish(&ch, "dx-direct", "red", b"1").await;
    publish(&ch, "dx-topic", "a.b.c", b"2").await;
    let mut h = FieldTable::default();
    h.insert("k".into(), AMQPValue::LongString("v".into()));
    ch.basic_publish(
        "dx-headers".into(),
        "".into(),
        Default::default(),
        b"3",
        BasicProperties::default().with_headers(h),
    )
    .await
    .unwrap();
    publish(&ch, "amq.fanout", "", b"4").await;
    publish(&ch, "dx-fanout", "", b"5").await;
    assert_eq!(count(&ch, "dq").await, 5);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_messages_survive_in_order_transient_ones_do_not() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    ch.confirm_select(Default::default()).await.unwrap();
    ch.queue_declare("keep".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    declare(&ch, "transient-q").await;
    for i in 0..100u32 {
        let props = if i % 3 == 0 {
            BasicProperties::default()
        } else {
            persistent()
        };
        publish_confirmed(&ch, "", "keep", &i.to_be_bytes(), props).await;
    }
    publish_confirmed(&ch, "", "transient-q", b"gone", persistent()).await;

    let b = b.restart().await;
    let (_c, ch) = channel(&b).await;
    let want: Vec<u32> = (0..100).filter(|i| i % 3 != 0).collect();
    assert_eq!(count(&ch, "keep").await as usize, want.len());
    let mut got = Vec::new();
    while let Some(m) = ch
        .basic_get("keep".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        assert!(!m.delivery.redelivered);
        assert_eq!(m.delivery.properties.delivery_mode(), &Some(2));
        got.push(u32::from_be_bytes(m.delivery.data[..].try_into().unwrap()));
    }
    assert_eq!(got, want);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_purges_and_deletes_are_kept_and_unacked_come_back_redelivered() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    ch.confirm_select(Default::default()).await.unwrap();
    for q in ["acked", "purged", "deleted"] {
        ch.queue_declare(q.into(), durable(), FieldTable::default())
            .await
            .unwrap();
    }
    for i in 0..10u8 {
        publish_confirmed(&ch, "", "acked", &[i], persistent()).await;
        publish_confirmed(&ch, "", "purged", &[i], persistent()).await;
        publish_confirmed(&ch, "", "deleted", &[i], persistent()).await;
    }
    let cch = c.create_channel().await.unwrap();
    cch.basic_qos(6, Default::default()).await.unwrap();
    let mut cons = cch
        .basic_consume(
            "acked".into(),
            "c".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut last = 0;
    for _ in 0..6 {
        last = cons.next().await.unwrap().unwrap().delivery_tag;
    }
    // Cancel first so that nothing more is delivered, then ack the first four: 4 and 5 stay
    // delivered and unacked; 6..9 were never delivered.
    cch.basic_cancel("c".into(), Default::default())
        .await
        .unwrap();
    cch.basic_ack(last - 2, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    assert_eq!(
        ch.queue_purge("purged".into(), Default::default())
            .await
            .unwrap(),
        10
    );
    assert_eq!(
        ch.queue_delete("deleted".into(), Default::default())
            .await
            .unwrap(),
        10
    );
    // A synced write after the acks: everything before it in the store's queue is written.
    ch.queue_declare("barrier".into(), durable(), FieldTable::default())
        .await
        .unwrap();

    let b = b.restart().await;
    let (_c, ch) = channel(&b).await;
    assert_eq!(count(&ch, "purged").await, 0);
    assert_eq!(
        passive_queue_code(&connect(&b).await, "deleted").await,
        Some(404)
    );
    let mut got = Vec::new();
    while let Some(m) = ch
        .basic_get("acked".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        got.push((m.delivery.data[0], m.delivery.redelivered));
    }
    let want: Vec<(u8, bool)> = (4..10u8).map(|i| (i, i < 6)).collect();
    assert_eq!(got, want);
    b.stop().await;
}

/// Bytes under `path`. The store compacts while we look: a file listed may be gone by the
/// time it is measured, and counts as nothing.
fn dir_size(path: &std::path::Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else {
            continue;
        };
        total += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.len()
        };
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_routed_to_many_durable_queues_is_stored_once() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    ch.confirm_select(Default::default()).await.unwrap();
    for i in 0..5 {
        let q = format!("fan{i}");
        ch.queue_declare(q.as_str().into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_bind(
            q.as_str().into(),
            "amq.fanout".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let dir = b.dir.as_ref().unwrap().path().to_path_buf();
    let before = dir_size(&dir);
    let body = vec![5u8; 1 << 20];
    for _ in 0..16 {
        publish_confirmed(&ch, "amq.fanout", "", &body, persistent()).await;
    }
    let grown = dir_size(&dir) - before;
    // 16 MiB of bodies; five copies would be 80 MiB.
    assert!(grown < 32 << 20, "data dir grew by {grown} bytes");
    let b = b.restart().await;
    let (_c, ch) = channel(&b).await;
    for i in 0..5 {
        assert_eq!(count(&ch, &format!("fan{i}")).await, 16);
    }
    // Consumed from all but one queue: still there after another restart.
    for i in 0..4 {
        assert_eq!(
            ch.queue_purge(format!("fan{i}").as_str().into(), Default::default())
                .await
                .unwrap(),
            16
        );
    }
    ch.queue_declare("barrier".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let b = b.restart().await;
    let (_c, ch) = channel(&b).await;
    assert_eq!(count(&ch, "fan4").await, 16);
    assert_eq!(get_body(&ch, "fan4").await.unwrap(), body);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_use_returns_near_zero_after_a_1gib_backlog_drains() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    ch.confirm_select(Default::default()).await.unwrap();
    ch.queue_declare("backlog".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let body = vec![9u8; 1 << 20];
    let mut pending = Vec::new();
    for _ in 0..1024 {
        pending.push(
            ch.basic_publish(
                "".into(),
                "backlog".into(),
                Default::default(),
                &body,
                persistent(),
            )
            .await
            .unwrap(),
        );
        if pending.len() == 64 {
            for p in pending.drain(..) {
                assert!(p.await.unwrap().is_ack());
            }
        }
    }
    for p in pending.drain(..) {
        assert!(p.await.unwrap().is_ack());
    }
    let dir = b.dir.as_ref().unwrap().path().to_path_buf();
    let full = dir_size(&dir);
    assert!(full > 900 << 20, "backlog on disk: {full}");
    let cch = connect(&b).await.create_channel().await.unwrap();
    cch.basic_qos(100, Default::default()).await.unwrap();
    let mut cons = cch
        .basic_consume(
            "backlog".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..1024 {
        let d = cons.next().await.unwrap().unwrap();
        d.ack(Default::default()).await.unwrap();
    }
    assert_eq!(count(&ch, "backlog").await, 0);
    // Space comes back as the store compacts in the background: wait for it (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = dir_size(&dir);
        if now < 64 << 20 {
            break;
        }
        if std::time::Instant::now() > deadline {
            let files: Vec<String> = std::fs::read_dir(dir.join("store"))
                .unwrap()
                .flatten()
                .filter(|e| e.metadata().unwrap().len() > 1 << 20)
                .map(|e| format!("{:?}={}", e.file_name(), e.metadata().unwrap().len()))
                .collect();
            panic!("data dir still {now} bytes after draining: {files:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_memory_pages_to_disk() {
    // 2 MiB of persistent messages against a 512 KiB memory alarm: without paging the
    // publisher would be blocked for good and its confirms would never come.
    let (b, _c, ch) = paging_broker("paged").await;
    let body = |i: u32| {
        let mut v = i.to_be_bytes().to_vec();
        v.resize(1024, (i % 251) as u8);
        v
    };
    let mut pending = Vec::new();
    for i in 0..2000u32 {
        pending.push(
            ch.basic_publish(
                "".into(),
                "paged".into(),
                Default::default(),
                &body(i),
                persistent(),
            )
            .await
            .unwrap(),
        );
    }
    let all = async {
        for p in pending {
            assert!(p.await.unwrap().is_ack());
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), all)
        .await
        .expect("all confirmed without blocking");
    // Consumed in order with their bodies, before and after a restart (recovery keeps the
    // bodies on disk too).
    let mut cons = ch
        .basic_consume(
            "paged".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..1000u32 {
        assert_eq!(cons.next().await.unwrap().unwrap().data, body(i));
    }
    ch.basic_cancel(cons.tag(), Default::default())
        .await
        .unwrap();
    ch.queue_declare("barrier".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let b = b.restart().await;
    let (_c, ch) = channel(&b).await;
    let left = count(&ch, "paged").await;
    // Cancelled with deliveries in flight: those come back too (no-ack ones are gone).
    assert!(left <= 1000, "{left}");
    let first = 2000 - left;
    for i in first..2000 {
        let m = ch
            .basic_get("paged".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.delivery.data, body(i));
    }
    b.stop().await;
}
