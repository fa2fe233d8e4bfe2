//! Exchange declare/delete/bind and routing through each exchange type, via lapin.

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};

use crate::common::*;

async fn exchange(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    opts: ExchangeDeclareOptions,
) -> Result<(), lapin::Error> {
    ch.exchange_declare(name.into(), kind, opts, FieldTable::default())
        .await
}

pub(crate) async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_passive_redeclare_and_reserved_names() {
    let b = start().await;
    let c = connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    exchange(&ch, "x1", ExchangeKind::Direct, Default::default())
        .await
        .unwrap();
    exchange(&ch, "x1", ExchangeKind::Direct, Default::default())
        .await
        .unwrap();
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    exchange(&ch, "x1", ExchangeKind::Fanout, passive)
        .await
        .unwrap();
    // The pre-declared exchanges exist and may be redeclared as they are.
    for (n, k) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        exchange(
            &ch,
            n,
            k,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }

    let cases: Vec<(&str, ExchangeKind, ExchangeDeclareOptions, u16)> = vec![
        ("x1", ExchangeKind::Fanout, Default::default(), 406),
        (
            "x1",
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            406,
        ),
        ("missing", ExchangeKind::Direct, passive, 404),
        ("amq.custom", ExchangeKind::Direct, Default::default(), 403),
        ("", ExchangeKind::Direct, Default::default(), 403),
    ];
    for (name, kind, opts, want) in cases {
        let ch = c.create_channel().await.unwrap();
        let err = exchange(&ch, name, kind, opts).await.unwrap_err();
        assert_eq!(code(&err), Some(want), "{name}: {err:?}");
    }
    // An unknown type is a hard error (503) that closes the connection.
    let ch = c.create_channel().await.unwrap();
    let err = exchange(
        &ch,
        "x2",
        ExchangeKind::Custom("x-nonesuch".into()),
        Default::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(503), "{err:?}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_unused_and_system_exchanges() {
    let b = start().await;
    let c = connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    exchange(&ch, "xd", ExchangeKind::Fanout, Default::default())
        .await
        .unwrap();
    declare(&ch, "qd").await;
    bind(&ch, "qd", "xd", "").await;
    let err = ch
        .exchange_delete(
            "xd".into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(406));
    let ch = c.create_channel().await.unwrap();
    ch.exchange_delete("xd".into(), Default::default())
        .await
        .unwrap();
    // Deleting what is not there succeeds, as in RabbitMQ.
    ch.exchange_delete("xd".into(), Default::default())
        .await
        .unwrap();
    let err = ch
        .exchange_delete("amq.direct".into(), Default::default())
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(403));
    // Publishing to it is now 404.
    assert_eq!(publish_refused(&c, "xd", "", b"x").await, Some(404));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_fanout_and_topic_routing() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    for q in ["d1", "d2", "f1", "f2", "t1", "t2", "t3"] {
        declare(&ch, q).await;
    }
    exchange(&ch, "xdirect", ExchangeKind::Direct, Default::default())
        .await
        .unwrap();
    exchange(&ch, "xfan", ExchangeKind::Fanout, Default::default())
        .await
        .unwrap();
    exchange(&ch, "xtopic", ExchangeKind::Topic, Default::default())
        .await
        .unwrap();
    bind(&ch, "d1", "xdirect", "red").await;
    bind(&ch, "d2", "xdirect", "blue").await;
    bind(&ch, "d2", "xdirect", "red").await;
    bind(&ch, "f1", "xfan", "ignored").await;
    bind(&ch, "f2", "xfan", "").await;
    bind(&ch, "t1", "xtopic", "stock.*.nyse").await;
    bind(&ch, "t2", "xtopic", "stock.#").await;
    bind(&ch, "t3", "xtopic", "#.nyse").await;
    bind(&ch, "t3", "xtopic", "stock.usd.*").await;

    publish(&ch, "xdirect", "red", b"r").await;
    publish(&ch, "xdirect", "blue", b"b").await;
    publish(&ch, "xdirect", "green", b"g").await;
    publish(&ch, "xfan", "whatever", b"f").await;
    publish(&ch, "xtopic", "stock.usd.nyse", b"1").await;
    publish(&ch, "xtopic", "stock.eur", b"2").await;
    publish(&ch, "xtopic", "bond.nyse", b"3").await;
    publish(&ch, "amq.direct", "nobody", b"4").await;

    assert_eq!(count(&ch, "d1").await, 1);
    assert_eq!(count(&ch, "d2").await, 2);
    assert_eq!(count(&ch, "f1").await, 1);
    assert_eq!(count(&ch, "f2").await, 1);
    assert_eq!(count(&ch, "t1").await, 1);
    assert_eq!(count(&ch, "t2").await, 2);
    // Matched by two bindings, delivered once.
    assert_eq!(count(&ch, "t3").await, 2);
    assert_eq!(get_body(&ch, "t3").await.unwrap(), b"1");
    assert_eq!(get_body(&ch, "t3").await.unwrap(), b"3");
    b.stop().await;
}

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_routing_all_and_any() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "hall").await;
    declare(&ch, "hany").await;
    let s = |v: &str| AMQPValue::LongString(v.into());
    ch.queue_bind(
        "hall".into(),
        "amq.headers".into(),
        "".into(),
        Default::default(),
        table(&[("format", s("pdf")), ("type", s("report"))]),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "hany".into(),
        "amq.headers".into(),
        "".into(),
        Default::default(),
        table(&[
            ("x-match", s("any")),
            ("format", s("pdf")),
            ("type", s("log")),
        ]),
    )
    .await
    .unwrap();
    let send = |h: FieldTable| {
        let ch = ch.clone();
        async move {
            ch.basic_publish(
                "amq.headers".into(),
                "".into(),
                Default::default(),
                b"m",
                BasicProperties::default().with_headers(h),
            )
            .await
            .unwrap();
        }
    };
    send(table(&[("format", s("pdf")), ("type", s("report"))])).await;
    send(table(&[("format", s("pdf"))])).await;
    send(table(&[
        ("type", s("log")),
        ("other", AMQPValue::LongInt(1)),
    ]))
    .await;
    send(table(&[("format", s("zip"))])).await;
    ch.basic_publish(
        "amq.headers".into(),
        "".into(),
        Default::default(),
        b"m",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    assert_eq!(count(&ch, "hall").await, 1);
    assert_eq!(count(&ch, "hany").await, 3);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_to_exchange_bindings_and_internal_exchanges() {
    let b = start().await;
    let c = connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    exchange(&ch, "front", ExchangeKind::Topic, Default::default())
        .await
        .unwrap();
    exchange(
        &ch,
        "back",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    declare(&ch, "e2e").await;
    bind(&ch, "e2e", "back", "").await;
    ch.exchange_bind(
        "back".into(),
        "front".into(),
        "a.#".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // A cycle must not loop or duplicate.
    ch.exchange_bind(
        "front".into(),
        "back".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "front", "a.b", b"yes").await;
    publish(&ch, "front", "b.a", b"no").await;
    assert_eq!(count(&ch, "e2e").await, 1);
    ch.exchange_unbind(
        "back".into(),
        "front".into(),
        "a.#".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "front", "a.b", b"unbound").await;
    assert_eq!(count(&ch, "e2e").await, 1);
    let err = ch
        .exchange_bind(
            "back".into(),
            "nonesuch".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(404));
    // Publishing straight to an internal exchange is refused.
    assert_eq!(publish_refused(&c, "back", "", b"x").await, Some(403));
    assert_eq!(publish_refused(&c, "nonesuch", "", b"x").await, Some(404));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let b = start().await;
    let c = connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    exchange(
        &ch,
        "xa",
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    declare(&ch, "qa").await;
    bind(&ch, "qa", "xa", "k").await;
    ch.queue_unbind("qa".into(), "xa".into(), "k".into(), FieldTable::default())
        .await
        .unwrap();
    let err = exchange(
        &ch,
        "xa",
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(404));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_to_missing_things_and_the_default_exchange() {
    let b = start().await;
    let c = connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    declare(&ch, "qb").await;
    let cases: Vec<(&str, &str, u16)> = vec![
        ("qb", "nonesuch", 404),
        ("nonesuch", "amq.direct", 404),
        ("qb", "", 403),
    ];
    for (q, x, want) in cases {
        let ch = c.create_channel().await.unwrap();
        let err = ch
            .queue_bind(
                q.into(),
                x.into(),
                "k".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(code(&err), Some(want), "{q} -> {x}");
    }
    // Unbinding what is not bound succeeds.
    let ch = c.create_channel().await.unwrap();
    ch.queue_unbind(
        "qb".into(),
        "amq.direct".into(),
        "never".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    b.stop().await;
}
