//! Quorum queues (`x-queue-type: quorum`) on a single node: a Raft group of one, with
//! RabbitMQ's declare rules, confirms once the entry is committed and applied, and
//! everything recovered from the group's log after a restart.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

use crate::common::{channel, code, durable, persistent, start};

fn quorum_args() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    t
}

async fn declare_quorum(ch: &Channel, name: &str) {
    ch.queue_declare(name.into(), durable(), quorum_args())
        .await
        .expect("quorum queue declared");
}

/// Publish `n` persistent messages with confirms; the acks received.
async fn publish_confirmed(ch: &Channel, queue: &str, from: usize, n: usize) -> usize {
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
                persistent(),
            )
            .await
            .unwrap();
        confirms.push(c);
    }
    let mut acked = 0;
    for c in confirms {
        acked += usize::from(c.await.unwrap().is_ack());
    }
    acked
}

async fn refused(ch: &Channel, opts: QueueDeclareOptions, args: FieldTable) -> (u16, String) {
    let e = ch
        .queue_declare("bad".into(), opts, args)
        .await
        .unwrap_err();
    (code(&e).unwrap(), e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_must_be_durable_shared_and_named() {
    let b = start().await;
    let c = crate::common::connect(&b).await;
    let cases = [
        (
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            quorum_args(),
            "invalid property 'auto-delete' for queue 'bad' in vhost '/'",
        ),
        (
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            quorum_args(),
            "invalid property 'exclusive-owner' for queue 'bad' in vhost '/'",
        ),
        (
            QueueDeclareOptions::default(),
            quorum_args(),
            "invalid property 'non-durable' for queue 'bad' in vhost '/'",
        ),
        (
            durable(),
            {
                let mut t = quorum_args();
                t.insert("x-max-priority".into(), AMQPValue::LongInt(5));
                t
            },
            "invalid arg 'x-max-priority' for queue 'bad' in vhost '/' of queue type rabbit_quorum_queue",
        ),
        (
            durable(),
            {
                let mut t = FieldTable::default();
                t.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("nonsense".into()),
                );
                t
            },
            "unsupported queue type 'nonsense'",
        ),
    ];
    for (opts, args, words) in cases {
        let ch = c.create_channel().await.unwrap();
        let (code, text) = refused(&ch, opts, args).await;
        assert_eq!(code, 406, "{text}");
        assert!(text.contains(words), "{text}");
    }
    // A server-named quorum queue is refused too; a classic queue of the name is not a
    // quorum one (406 on the type).
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .queue_declare("".into(), durable(), quorum_args())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare("plain".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let e = ch
        .queue_declare("plain".into(), durable(), quorum_args())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_confirms_delivers_and_recovers_after_a_restart() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare_quorum(&ch, "qq").await;
    assert_eq!(publish_confirmed(&ch, "qq", 0, 100).await, 100);
    assert_eq!(crate::common::count(&ch, "qq").await, 100);
    // basic.get with ack and with reject-requeue: the rejected one comes back redelivered.
    let (_c2, ch2) = channel(&b).await;
    let m = ch2
        .basic_get("qq".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(
        (m.delivery.data.as_slice(), m.message_count),
        (&b"m0"[..], 99)
    );
    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    let m = ch2
        .basic_get("qq".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(m.delivery.data, b"m1");
    m.delivery
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    // A consumer with a prefetch: in order, m1 again first (redelivered).
    ch2.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = crate::common::consume(&ch2, "qq", "c", false).await;
    for i in 1..50 {
        let d = consumer.next().await.expect("a delivery").unwrap();
        assert_eq!(d.data, format!("m{i}").as_bytes());
        assert_eq!(d.redelivered, i == 1, "m{i}");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    // Closing the channel returns what the consumer held unacked (the prefetch).
    ch2.close(200, "bye".into()).await.unwrap();
    drop(consumer);
    assert_eq!(crate::common::count(&ch, "qq").await, 50);
    // A clean restart: the queue and its 50 messages are back, from the group's log.
    let b = b.restart().await;
    let (_c, ch) = channel(&b).await;
    assert_eq!(crate::common::count(&ch, "qq").await, 50);
    let m = ch
        .basic_get("qq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(m.delivery.data, b"m50");
    // Purge, then delete (if-unused is not supported on quorum queues: 540).
    let purged = ch
        .queue_purge("qq".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(purged, 49);
    assert_eq!(publish_confirmed(&ch, "qq", 0, 3).await, 3);
    let (_c3, ch3) = channel(&b).await;
    let e = ch3
        .queue_delete(
            "qq".into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(540), "{e}");
    let (_c4, ch4) = channel(&b).await;
    let deleted = ch4
        .queue_delete("qq".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(deleted, 3);
    assert_eq!(
        crate::common::passive_queue_code(&_c4, "qq").await,
        Some(404)
    );
    let _ = BasicProperties::default();
    b.stop().await;
}
