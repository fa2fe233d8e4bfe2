//! A hostile client never takes the broker down: each attack gets its close, and a bystander
//! connection opened before it, with messages queued, carries on; a new connection can still
//! publish and consume afterwards.

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use warren::Config;
use warren::protocol::table::build::nested;
use warren::protocol::{AMQPClass, FieldTable as WFieldTable, connection};

use crate::common::*;

fn frame(kind: u8, ch: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&ch.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.push(0xCE);
    v
}

fn short(s: &str) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

fn long(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

/// A publish whose headers table is `table` (raw), with a one-byte body.
fn publish_with_headers(ch: u16, table: &[u8]) -> Vec<u8> {
    let mut method = vec![0, 60, 0, 40, 0, 0];
    method.extend(short(""));
    method.extend(short("victim"));
    method.push(0);
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&1u64.to_be_bytes());
    header.extend_from_slice(&(1u16 << 13).to_be_bytes());
    header.extend_from_slice(table);
    [
        frame(1, ch, &method),
        frame(2, ch, &header),
        frame(3, ch, b"x"),
    ]
    .concat()
}

/// Method frames on channel 1 whose arguments carry `table`.
fn methods_with_table(table: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let args = |ids: [u8; 4], before: Vec<u8>| {
        let mut p = ids.to_vec();
        p.extend(before);
        p.extend_from_slice(table);
        frame(1, 1, &p)
    };
    vec![
        (
            "queue.declare arguments",
            args([0, 50, 0, 10], [vec![0, 0], short("q"), vec![0]].concat()),
        ),
        (
            "exchange.declare arguments",
            args(
                [0, 40, 0, 10],
                [vec![0, 0], short("e"), short("headers"), vec![0]].concat(),
            ),
        ),
        (
            "queue.bind arguments",
            args(
                [0, 50, 0, 20],
                [
                    vec![0, 0],
                    short("q"),
                    short("amq.headers"),
                    short(""),
                    vec![0],
                ]
                .concat(),
            ),
        ),
        (
            "basic.consume arguments",
            args(
                [0, 60, 0, 20],
                [vec![0, 0], short("q"), short("c"), vec![0]].concat(),
            ),
        ),
        ("message headers", publish_with_headers(1, table)),
    ]
}

/// A bystander that published before the attack: its queue still holds every message, its
/// consumer still gets new ones, and a brand-new connection can publish and get.
struct Bystander {
    _conn: lapin::Connection,
    ch: Channel,
    consumer: lapin::Consumer,
    sent: u32,
}

impl Bystander {
    async fn new(b: &TestBroker) -> Bystander {
        let (conn, ch) = channel(b).await;
        declare(&ch, "held").await;
        declare(&ch, "live").await;
        for i in 0..100 {
            publish(&ch, "", "held", format!("{i}").as_bytes()).await;
        }
        let consumer = consume(&ch, "live", "bystander", true).await;
        Bystander {
            _conn: conn,
            ch,
            consumer,
            sent: 0,
        }
    }

    async fn still_served(&mut self, b: &TestBroker, what: &str) {
        self.connection_served(what).await;
        let (_c, fresh) = channel(b).await;
        declare(&fresh, "fresh").await;
        publish(&fresh, "", "fresh", what.as_bytes()).await;
        assert_eq!(
            get_body(&fresh, "fresh").await.as_deref(),
            Some(what.as_bytes()),
            "{what}: a new connection cannot publish and get"
        );
    }

    /// The bystander's own connection, opened before the attack, is served.
    async fn connection_served(&mut self, what: &str) {
        use futures_lite::StreamExt;
        self.sent += 1;
        publish(&self.ch, "", "live", what.as_bytes()).await;
        let d = tokio::time::timeout(std::time::Duration::from_secs(10), self.consumer.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: bystander's consumer starved"))
            .expect("consumer open")
            .expect("delivery");
        assert_eq!(d.data, what.as_bytes(), "{what}");
        assert_eq!(
            count(&self.ch, "held").await,
            100,
            "{what}: queued messages lost"
        );
    }
}

/// The crash this issue opened with: headers nested ~1,000 deep overflowed a worker's stack
/// and aborted the process. Now every table in every place is refused with 501 before it is
/// decoded, however deep (20,000 levels fit in one 128 KiB frame).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_tables_are_501_and_harm_no_one() {
    let b = start().await;
    let mut bystander = Bystander::new(&b).await;
    for depth in [129, 1_000, 20_000] {
        let table = nested(depth);
        for (what, bytes) in methods_with_table(&table) {
            let what = format!("{what} nested {depth} deep");
            let mut raw = Raw::connect(&b).await;
            raw.open(131_072, 0).await;
            raw.open_channel(1).await;
            raw.send(&bytes).await;
            raw.expect_close(501).await;
            assert!(raw.frame().await.is_none(), "{what}: socket left open");
            bystander.still_served(&b, &what).await;
        }
    }
    b.stop().await;
}

/// The handshake's tables: client properties in start-ok and an AMQPLAIN response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_handshake_tables_are_501() {
    let b = start().await;
    let mut bystander = Bystander::new(&b).await;
    let deep = nested(5_000);
    let cases = [
        (
            "client properties",
            [
                vec![0, 10, 0, 11],
                deep.clone(),
                short("PLAIN"),
                long(b"\0guest\0guest"),
                short("en_US"),
            ]
            .concat(),
        ),
        (
            "AMQPLAIN response",
            [
                vec![0, 10, 0, 11],
                vec![0, 0, 0, 0],
                short("AMQPLAIN"),
                long(&deep[4..]),
                short("en_US"),
            ]
            .concat(),
        ),
    ];
    for (what, start_ok) in cases {
        let mut raw = Raw::connect(&b).await;
        raw.send(b"AMQP\x00\x00\x09\x01").await;
        raw.next_method().await.expect("connection.start");
        raw.send(&frame(1, 0, &start_ok)).await;
        raw.expect_close(501).await;
        bystander.still_served(&b, what).await;
    }
    b.stop().await;
}

/// Tables up to the limit pass through byte-exact; the limit is the configured one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_up_to_the_limit_are_delivered_and_the_limit_is_configurable() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "victim").await;
    let mut raw = Raw::connect(&b).await;
    raw.open(131_072, 0).await;
    raw.open_channel(1).await;
    raw.send(&publish_with_headers(1, &nested(128))).await;
    // A round trip on the publisher's socket: its publish has reached the queue by then.
    raw.declare(1, "victim").await;
    let got = ch
        .basic_get("victim".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the publish at the limit is queued");
    let headers = got.properties.headers().clone().expect("headers kept");
    assert_eq!(headers.inner().len(), 1);
    b.stop().await;

    let b = start_with(Config {
        max_table_depth: 4,
        ..Config::default()
    })
    .await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "victim").await;
    let mut nested4 = FieldTable::default();
    let mut level = FieldTable::default();
    for _ in 0..2 {
        let mut outer = FieldTable::default();
        outer.insert("n".into(), lapin::types::AMQPValue::FieldTable(level));
        level = outer;
    }
    nested4.insert("n".into(), lapin::types::AMQPValue::FieldTable(level));
    ch.basic_publish(
        "".into(),
        "victim".into(),
        BasicPublishOptions::default(),
        b"ok",
        BasicProperties::default().with_headers(nested4),
    )
    .await
    .unwrap();
    assert_eq!(
        count(&ch, "victim").await,
        1,
        "depth 4 is within a limit of 4"
    );
    let mut raw = Raw::connect(&b).await;
    raw.open(131_072, 0).await;
    raw.open_channel(1).await;
    raw.send(&publish_with_headers(1, &nested(5))).await;
    raw.expect_close(501).await;
    assert_eq!(count(&ch, "victim").await, 1);
    b.stop().await;
}

/// Read until the broker closes the socket; true if it did within 10 s.
async fn closed_by_broker(sock: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let deadline = std::time::Duration::from_secs(10);
    loop {
        match tokio::time::timeout(deadline, sock.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A socket that connects and says nothing, or stops halfway through the handshake, is closed
/// once the handshake timeout passes; logged-in clients are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_stalled_handshakes_time_out() {
    let b = start_with(Config {
        handshake_timeout_ms: 300,
        ..Config::default()
    })
    .await;
    let mut bystander = Bystander::new(&b).await;
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", b.port))
        .await
        .unwrap();
    let mut stalled = Raw::connect(&b).await;
    let tune = stalled.start("guest", "guest").await;
    assert!(format!("{tune:?}").contains("Tune"), "{tune:?}");
    assert!(
        closed_by_broker(&mut silent).await,
        "silent socket kept open"
    );
    assert!(
        closed_by_broker(&mut stalled.sock).await,
        "stalled handshake kept open"
    );
    bystander.still_served(&b, "after the timeouts").await;
    b.stop().await;
}

/// Sockets still in the handshake are bounded: past `max_pending_handshakes`, a new socket is
/// closed at once, and once one of them logs in there is room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_handshakes_are_bounded() {
    let b = start_with(Config {
        max_pending_handshakes: 4,
        ..Config::default()
    })
    .await;
    let mut bystander = Bystander::new(&b).await;
    let mut pending = Vec::new();
    for _ in 0..4 {
        let mut raw = Raw::connect(&b).await;
        raw.send(b"AMQP\x00\x00\x09\x01").await;
        raw.next_method().await.expect("connection.start");
        pending.push(raw);
    }
    let mut refused = tokio::net::TcpStream::connect(("127.0.0.1", b.port))
        .await
        .unwrap();
    assert!(
        closed_by_broker(&mut refused).await,
        "fifth pending socket kept"
    );
    bystander
        .connection_served("while the handshakes are full")
        .await;
    // One of them logs in: its place is given back before open-ok.
    let mut first = pending.remove(0);
    let conn = |m| AMQPClass::Connection(m);
    first
        .method(
            0,
            conn(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: WFieldTable::default(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
        )
        .await;
    first.next_method().await.expect("tune");
    first
        .method(
            0,
            conn(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 0,
                frame_max: 4096,
                heartbeat: 0,
            })),
        )
        .await;
    first
        .method(
            0,
            conn(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        )
        .await;
    let (_, ok) = first.next_method().await.expect("open-ok");
    assert!(format!("{ok:?}").contains("OpenOk"), "{ok:?}");
    bystander.still_served(&b, "room again").await;
    b.stop().await;
}

/// Before tune-ok a frame may be at most 4096 bytes (RabbitMQ's rule), so a client that has
/// not logged in cannot make the broker buffer a 128 KiB frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_before_tune_are_at_most_4096_bytes() {
    let b = start().await;
    let mut raw = Raw::connect(&b).await;
    raw.send(b"AMQP\x00\x00\x09\x01").await;
    raw.next_method().await.expect("connection.start");
    let mut start_ok = vec![0, 10, 0, 11];
    let mut props = Vec::new();
    props.extend(short("pad"));
    props.push(b'S');
    props.extend(long(&[b'x'; 5000]));
    start_ok.extend(long(&props));
    start_ok.extend(short("PLAIN"));
    start_ok.extend(long(b"\0guest\0guest"));
    start_ok.extend(short("en_US"));
    raw.send(&frame(1, 0, &start_ok)).await;
    raw.expect_close(501).await;
    b.stop().await;
}

/// Bodies still being assembled count against the memory alarm: a client streaming a huge
/// message (under max_message_size) is blocked once the watermark is passed, other
/// publishers with it, and everything clears when it goes away (a blocked connection is not
/// read, but it notices its socket close and gives back what it held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_being_streamed_counts_against_the_memory_alarm() {
    let b = start_with(Config {
        memory_high_watermark_bytes: Some(1 << 20),
        ..Config::default()
    })
    .await;
    let blocked = |m: Option<(u16, AMQPClass)>| match m {
        Some((0, AMQPClass::Connection(connection::AMQPMethod::Blocked(b)))) => {
            assert_eq!(b.reason.as_str(), "low on memory");
        }
        other => panic!("expected connection.blocked, got {other:?}"),
    };
    // A publisher from before, which the alarm will block too.
    let mut bystander = Raw::connect(&b).await;
    bystander.open_blocked_aware().await;
    bystander.open_channel(1).await;
    bystander.declare(1, "after").await;
    bystander.publish(1, "", "after", &[0, 0], b"before").await;
    let mut attacker = Raw::connect(&b).await;
    attacker.open_blocked_aware().await;
    attacker.open_channel(1).await;
    // A publish announcing 100 MiB, then just over 1 MiB of it in 128 KiB frames (no more:
    // once blocked the broker stops reading, and the socket buffers would fill).
    let mut method = vec![0, 60, 0, 40, 0, 0];
    method.extend(short(""));
    method.extend(short("victim"));
    method.push(0);
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&(100u64 << 20).to_be_bytes());
    header.extend_from_slice(&[0, 0]);
    attacker
        .send(&[frame(1, 1, &method), frame(2, 1, &header)].concat())
        .await;
    let chunk = frame(3, 1, &vec![0u8; 131_064]);
    for _ in 0..9 {
        attacker.send(&chunk).await;
    }
    blocked(attacker.next_method().await);
    blocked(bystander.next_method().await);
    drop(attacker);
    match bystander.next_method().await {
        Some((0, AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)))) => {}
        other => panic!("expected connection.unblocked, got {other:?}"),
    }
    bystander.publish(1, "", "after", &[0, 0], b"after").await;
    let (_c, ch) = channel(&b).await;
    bystander.declare(1, "after").await;
    assert_eq!(count(&ch, "after").await, 2);
    b.stop().await;
}

/// The HTTP API serves at most `http_max_connections` at once and closes a connection idle
/// for `http_idle_timeout_ms`: two silent sockets hold both slots, so a request on a third
/// is answered only once the broker has closed one of them for idleness (not before the
/// idle timeout), and the AMQP side is untouched throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_are_bounded_and_idle_ones_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let idle = std::time::Duration::from_millis(700);
    let b = start_with(Config {
        http_listen: "127.0.0.1:0".into(),
        http_max_connections: 2,
        http_idle_timeout_ms: idle.as_millis() as u64,
        ..Config::default()
    })
    .await;
    let addr = b.server.as_ref().unwrap().http_addr.expect("HTTP API on");
    let mut bystander = Bystander::new(&b).await;
    let opened = std::time::Instant::now();
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /api/queues HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        third.read_to_end(&mut answer),
    )
    .await
    .expect("the third connection is answered once a slot is free")
    .unwrap();
    let answered = opened.elapsed();
    // Unauthenticated: 401, but answered, and only after an idle socket was closed.
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 401"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        answered >= idle,
        "answered after {answered:?}, before a slot was free"
    );
    for mut s in silent {
        assert!(
            closed_by_broker(&mut s).await,
            "an idle HTTP connection kept open"
        );
    }
    let (status, _) = http_get(addr, "/api/queues", Some(("guest", "guest"))).await;
    assert_eq!(status, 200);
    bystander
        .still_served(&b, "after the HTTP connections")
        .await;
    b.stop().await;
}
