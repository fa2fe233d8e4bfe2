//! Transactions: staged publishes and acks, commit and rollback, mode conflicts, and a commit
//! that is atomic across queues in the store.

use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::FieldTable;
use warren::protocol::{AMQPClass, basic, tx};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_invisible_until_commit_and_gone_on_rollback() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    declare(&ch, "txq").await;
    let watcher = c.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    publish(&ch, "", "txq", b"one").await;
    publish(&ch, "", "txq", b"two").await;
    assert_eq!(count(&watcher, "txq").await, 0);
    ch.tx_commit().await.unwrap();
    assert_eq!(count(&watcher, "txq").await, 2);
    publish(&ch, "", "txq", b"three").await;
    ch.tx_rollback().await.unwrap();
    ch.tx_commit().await.unwrap();
    assert_eq!(count(&watcher, "txq").await, 2);
    assert_eq!(get_body(&watcher, "txq").await.unwrap(), b"one");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_take_effect_at_commit_and_rolled_back_acks_leave_messages_unacked() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    declare(&ch, "txa").await;
    for i in 0..3u8 {
        publish(&ch, "", "txa", &[i]).await;
    }
    let tch = c.create_channel().await.unwrap();
    tch.tx_select().await.unwrap();
    let mut cons = tch
        .basic_consume(
            "txa".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut tags = Vec::new();
    for _ in 0..3 {
        tags.push(cons.next().await.unwrap().unwrap().delivery_tag);
    }
    tch.basic_ack(tags[0], Default::default()).await.unwrap();
    tch.tx_rollback().await.unwrap();
    // The rolled-back ack left message 0 unacked: it can be acked again, and committed.
    tch.basic_ack(tags[1], BasicAckOptions { multiple: true })
        .await
        .unwrap();
    tch.tx_commit().await.unwrap();
    tch.basic_cancel(cons.tag(), Default::default())
        .await
        .unwrap();
    // Closing the channel requeues what is still unacked: only message 2.
    tch.close(200, "OK".into()).await.unwrap();
    assert_eq!(count(&ch, "txa").await, 1);
    assert_eq!(get_body(&ch, "txa").await.unwrap(), vec![2]);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_conflicts_and_commit_without_select_are_406() {
    let b = start().await;
    let c = connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    assert_eq!(code(&ch.tx_select().await.unwrap_err()), Some(406));
    let ch = c.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    let err = ch.confirm_select(Default::default()).await.unwrap_err();
    assert_eq!(code(&err), Some(406));
    let ch = c.create_channel().await.unwrap();
    assert_eq!(code(&ch.tx_commit().await.unwrap_err()), Some(406));
    let ch = c.create_channel().await.unwrap();
    assert_eq!(code(&ch.tx_rollback().await.unwrap_err()), Some(406));
    b.stop().await;
}

/// A commit that a queue takes only in part (reject-publish overflow) fails as in RabbitMQ
/// 3.10: channel closed with 406 "partial tx completion", what the queue took stays. Before,
/// it answered commit-ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_a_full_queue_takes_in_part_fails_with_406() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    ch.queue_declare("txfull".into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    let tch = c.create_channel().await.unwrap();
    tch.tx_select().await.unwrap();
    publish(&tch, "", "txfull", b"one").await;
    publish(&tch, "", "txfull", b"two").await;
    let e = tch.tx_commit().await.unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    assert!(e.to_string().contains("partial tx completion"), "{e}");
    assert_eq!(count(&ch, "txfull").await, 1);
    assert_eq!(get_body(&ch, "txfull").await.unwrap(), b"one");
    // A commit the queue takes whole is committed.
    let tch = c.create_channel().await.unwrap();
    tch.tx_select().await.unwrap();
    publish(&tch, "", "txfull", b"three").await;
    tch.tx_commit().await.unwrap();
    assert_eq!(count(&ch, "txfull").await, 1);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_returns_arrive_before_commit_ok() {
    let b = start().await;
    let mut raw = Raw::connect(&b).await;
    raw.open(0, 0).await;
    raw.open_channel(1).await;
    let ok = raw
        .call(1, AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})))
        .await;
    assert!(
        matches!(ok, AMQPClass::Tx(tx::AMQPMethod::SelectOk(_))),
        "{ok:?}"
    );
    let mut out = bytes::BytesMut::new();
    warren::protocol::encode::method(
        &mut out,
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "amq.direct".into(),
            routing_key: "nobody".into(),
            mandatory: true,
            immediate: false,
        })),
    );
    warren::protocol::encode::content(&mut out, 1, &[0, 0], b"x", 4096);
    raw.send(&out).await;
    raw.method(1, AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})))
        .await;
    let first = raw.next_method().await.unwrap().1;
    assert!(
        matches!(first, AMQPClass::Basic(basic::AMQPMethod::Return(ref r)) if r.reply_code == 312),
        "{first:?}"
    );
    let second = raw.next_method().await.unwrap().1;
    assert!(
        matches!(second, AMQPClass::Tx(tx::AMQPMethod::CommitOk(_))),
        "{second:?}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_move_between_durable_queues_survives_restart_whole() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for q in ["src", "dst-a", "dst-b"] {
        ch.queue_declare(q.into(), durable, FieldTable::default())
            .await
            .unwrap();
    }
    ch.confirm_select(Default::default()).await.unwrap();
    let persistent = BasicProperties::default().with_delivery_mode(2);
    for i in 0..10u8 {
        let c = ch
            .basic_publish(
                "".into(),
                "src".into(),
                Default::default(),
                &[i],
                persistent.clone(),
            )
            .await
            .unwrap();
        assert!(c.await.unwrap().is_ack());
    }
    // Move 0..5 from src to both destinations in one transaction each.
    let tch = c.create_channel().await.unwrap();
    tch.tx_select().await.unwrap();
    for _ in 0..5 {
        let m = tch
            .basic_get("src".into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .unwrap();
        for q in ["dst-a", "dst-b"] {
            tch.basic_publish(
                "".into(),
                q.into(),
                Default::default(),
                &m.delivery.data,
                persistent.clone(),
            )
            .await
            .unwrap();
        }
        tch.basic_ack(m.delivery.delivery_tag, Default::default())
            .await
            .unwrap();
        tch.tx_commit().await.unwrap();
    }
    // A sixth move is staged but never committed.
    let m = tch
        .basic_get("src".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap();
    tch.basic_publish(
        "".into(),
        "dst-a".into(),
        Default::default(),
        &m.delivery.data,
        persistent.clone(),
    )
    .await
    .unwrap();
    tch.basic_ack(m.delivery.delivery_tag, Default::default())
        .await
        .unwrap();

    let b = b.restart().await;
    let (_c, ch) = channel(&b).await;
    assert_eq!(count(&ch, "dst-a").await, 5);
    assert_eq!(count(&ch, "dst-b").await, 5);
    let mut left = Vec::new();
    while let Some(m) = ch
        .basic_get("src".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        left.push(m.delivery.data[0]);
    }
    assert_eq!(left, vec![5, 6, 7, 8, 9]);
    b.stop().await;
}
