//! Queue declare/delete/purge semantics: server names, passive, exclusive, auto-delete.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};

use crate::common::*;

fn opts(passive: bool, durable: bool, exclusive: bool, auto_delete: bool) -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive,
        durable,
        exclusive,
        auto_delete,
        nowait: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_named_passive_and_redeclare() {
    let b = start().await;
    let c = connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            opts(false, false, true, false),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(q.name().as_str().starts_with("amq.gen-"), "{}", q.name());
    assert_eq!(q.name().as_str().len(), "amq.gen-".len() + 22);
    let again = ch
        .queue_declare(
            q.name().clone(),
            opts(true, false, false, false),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(again.name(), q.name());

    let mut ttl = FieldTable::default();
    ttl.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
    ch.queue_declare("rq".into(), opts(false, true, false, false), ttl.clone())
        .await
        .unwrap();
    ch.queue_declare("rq".into(), opts(false, true, false, false), ttl.clone())
        .await
        .unwrap();
    let cases: Vec<(&str, QueueDeclareOptions, FieldTable, u16)> = vec![
        ("rq", opts(false, false, false, false), ttl.clone(), 406),
        ("rq", opts(false, true, false, true), ttl.clone(), 406),
        (
            "rq",
            opts(false, true, false, false),
            FieldTable::default(),
            406,
        ),
        (
            "absent",
            opts(true, false, false, false),
            FieldTable::default(),
            404,
        ),
        (
            "amq.mine",
            opts(false, false, false, false),
            FieldTable::default(),
            403,
        ),
    ];
    for (name, o, args, want) in cases {
        let ch = c.create_channel().await.unwrap();
        let err = ch.queue_declare(name.into(), o, args).await.unwrap_err();
        assert_eq!(code(&err), Some(want), "{name} {o:?}: {err:?}");
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_belongs_to_its_connection() {
    let b = start().await;
    let (owner, ch) = channel(&b).await;
    ch.queue_declare(
        "ex".into(),
        opts(false, false, true, false),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "", "ex", b"mine").await;
    let other = connect(&b).await;
    for attempt in 0..4 {
        let och = other.create_channel().await.unwrap();
        let err = match attempt {
            0 => och
                .queue_declare(
                    "ex".into(),
                    opts(true, false, false, false),
                    FieldTable::default(),
                )
                .await
                .unwrap_err(),
            1 => och
                .basic_get("ex".into(), BasicGetOptions::default())
                .await
                .unwrap_err(),
            2 => och
                .basic_consume(
                    "ex".into(),
                    "".into(),
                    Default::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap_err(),
            _ => och
                .queue_delete("ex".into(), Default::default())
                .await
                .unwrap_err(),
        };
        assert_eq!(code(&err), Some(405), "attempt {attempt}: {err:?}");
    }
    // Publishing to it from elsewhere is fine (as in RabbitMQ).
    let och = other.create_channel().await.unwrap();
    och.confirm_select(Default::default()).await.unwrap();
    let confirm = och
        .basic_publish(
            "".into(),
            "ex".into(),
            Default::default(),
            b"theirs",
            Default::default(),
        )
        .await
        .unwrap();
    assert!(confirm.await.unwrap().is_ack());
    assert_eq!(count(&ch, "ex").await, 2);
    owner.close(200, "OK".into()).await.unwrap();
    // Gone with its connection.
    assert_eq!(passive_queue_code(&other, "ex").await, Some(404));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_after_last_consumer_only() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    ch.queue_declare(
        "ad".into(),
        opts(false, false, false, true),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Never consumed: stays.
    assert_eq!(count(&ch, "ad").await, 0);
    let c1 = ch
        .basic_consume(
            "ad".into(),
            "one".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let c2 = ch
        .basic_consume(
            "ad".into(),
            "two".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.basic_cancel(c1.tag(), Default::default()).await.unwrap();
    assert_eq!(count(&ch, "ad").await, 0);
    ch.basic_cancel(c2.tag(), Default::default()).await.unwrap();
    assert_eq!(passive_queue_code(&c, "ad").await, Some(404));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_delete_with_counts_and_conditions() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    declare(&ch, "pd").await;
    for _ in 0..5 {
        publish(&ch, "", "pd", b"x").await;
    }
    assert_eq!(
        ch.queue_purge("pd".into(), Default::default())
            .await
            .unwrap(),
        5
    );
    for _ in 0..3 {
        publish(&ch, "", "pd", b"x").await;
    }
    let err = ch
        .queue_delete(
            "pd".into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(406));
    let ch = c.create_channel().await.unwrap();
    let _consumer = ch
        .basic_consume(
            "pd".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: false,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ch2 = c.create_channel().await.unwrap();
    let err = ch2
        .queue_delete(
            "pd".into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(406));
    let ch3 = c.create_channel().await.unwrap();
    declare(&ch3, "pd2").await;
    for _ in 0..4 {
        publish(&ch3, "", "pd2", b"x").await;
    }
    assert_eq!(
        ch3.queue_delete("pd2".into(), Default::default())
            .await
            .unwrap(),
        4
    );
    // Deleting a missing queue succeeds with 0; purging one is 404.
    assert_eq!(
        ch3.queue_delete("pd2".into(), Default::default())
            .await
            .unwrap(),
        0
    );
    let err = ch3
        .queue_purge("pd2".into(), Default::default())
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(404));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_cancels_its_consumers() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    declare(&ch, "gone").await;
    let mut consumer = ch
        .basic_consume(
            "gone".into(),
            "watch".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let other = c.create_channel().await.unwrap();
    other
        .queue_delete("gone".into(), Default::default())
        .await
        .unwrap();
    // lapin ends the consumer stream when the server sends basic.cancel.
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
        .await
        .expect("cancel arrives");
    assert!(next.is_none(), "{next:?}");
    // The channel is still usable.
    declare(&ch, "after").await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_queue_name_means_last_declared_on_the_channel() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    let q = ch
        .queue_declare(
            "".into(),
            opts(false, false, true, false),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish(&ch, "", q.name().as_str(), b"m").await;
    let got = ch
        .basic_get("".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.delivery.data, b"m");
    assert_eq!(
        ch.queue_purge("".into(), Default::default()).await.unwrap(),
        0
    );
    b.stop().await;
}
