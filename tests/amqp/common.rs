//! Test harness: a real broker on 127.0.0.1:0 per test, lapin clients, and a raw frame client
//! for the cases lapin cannot produce (bad frames, odd handshakes).

use std::time::Duration;

use bytes::BytesMut;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::protocol::codec::{self, Frame, Method};
use warren::protocol::{
    AMQPClass, FieldTable as WFieldTable, basic, channel, connection, encode, queue,
};
use warren::{Config, Server};

pub struct TestBroker {
    pub server: Option<Server>,
    pub port: u16,
    /// The broker's data directory, removed when the test ends.
    pub dir: Option<tempfile::TempDir>,
    pub config: Config,
}

impl TestBroker {
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    /// Clean shutdown, then a new broker on the same data directory (and port).
    pub async fn restart(mut self) -> TestBroker {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        let mut config = self.config.clone();
        config.listen = format!("127.0.0.1:{}", self.port);
        let server = Server::start(config).await.expect("broker restarts");
        TestBroker {
            port: server.local_addr.port(),
            server: Some(server),
            dir: self.dir.take(),
            config: self.config.clone(),
        }
    }
}

pub async fn start() -> TestBroker {
    start_with(Config::default()).await
}

pub async fn start_with(mut config: Config) -> TestBroker {
    let dir = tempfile::tempdir().expect("temp dir");
    config.listen = "127.0.0.1:0".into();
    config.data_dir = dir.path().to_path_buf();
    let server = Server::start(config.clone()).await.expect("broker starts");
    TestBroker {
        port: server.local_addr.port(),
        server: Some(server),
        dir: Some(dir),
        config,
    }
}

pub async fn connect(b: &TestBroker) -> Connection {
    Connection::connect(&b.url(), ConnectionProperties::default())
        .await
        .expect("connect")
}

pub async fn channel(b: &TestBroker) -> (Connection, Channel) {
    let c = connect(b).await;
    let ch = c.create_channel().await.expect("channel");
    (c, ch)
}

/// The AMQP reply code of a lapin error, if the broker sent one.
pub fn code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

pub fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

pub fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

pub async fn declare(ch: &Channel, name: &str) -> lapin::Queue {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare")
}

pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("publish");
}

/// Ready messages in a queue, by passive declare (a round trip: earlier publishes on the same
/// connection have reached the queue by then).
/// A broker whose memory alarm (512 KiB) is far below what a test publishes, with a 64 KiB
/// paging budget per queue; a confirm-mode channel, and the durable queue `name`.
pub async fn paging_broker(name: &str) -> (TestBroker, Connection, Channel) {
    let b = start_with(warren::Config {
        memory_high_watermark_bytes: Some(512 << 10),
        queue_memory_budget_bytes: 64 << 10,
        ..warren::Config::default()
    })
    .await;
    let (c, ch) = channel(&b).await;
    ch.confirm_select(Default::default()).await.unwrap();
    ch.queue_declare(name.into(), durable(), FieldTable::default())
        .await
        .unwrap();
    (b, c, ch)
}

pub async fn count(ch: &Channel, name: &str) -> u32 {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare")
    .message_count()
}

/// The reply code of a passive queue.declare on a fresh channel of `c`: Some(404) when the
/// queue is gone; None when it exists.
pub async fn passive_queue_code(c: &Connection, name: &str) -> Option<u16> {
    let ch = c.create_channel().await.expect("channel");
    match ch
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    {
        Ok(_) => None,
        Err(e) => Some(code(&e).expect("a reply code")),
    }
}

/// basic.consume with the given tag ("" for a server-named one) and ack mode.
pub async fn consume(ch: &Channel, queue: &str, tag: &str, no_ack: bool) -> lapin::Consumer {
    ch.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("basic.consume")
}

pub async fn get_body(ch: &Channel, queue: &str) -> Option<Vec<u8>> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .map(|m| m.delivery.data.clone())
}

/// Publish on a fresh confirm-mode channel and return the reply code of the channel error the
/// publish causes (lapin fails the pending confirm with it).
pub async fn publish_refused(
    c: &Connection,
    exchange: &str,
    key: &str,
    body: &[u8],
) -> Option<u16> {
    let ch = c.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .expect("publish sent");
    match confirm.await {
        Ok(c) => panic!("publish was confirmed: {c:?}"),
        Err(e) => code(&e),
    }
}

/// The real `warren` binary, running.
pub struct Running {
    pub child: std::process::Child,
    pub port: u16,
}

impl Running {
    /// A lapin connection to the running binary, as guest.
    pub async fn connect(&self) -> lapin::Connection {
        lapin::Connection::connect(
            &format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port),
            lapin::ConnectionProperties::default(),
        )
        .await
        .unwrap()
    }
}

/// `warren` with no configuration from the test's environment.
pub fn warren() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_warren"));
    c.env_remove("WARREN_LISTEN").env_remove("WARREN_CONFIG");
    c
}

/// Start the binary and read its AMQP port back from its log (so port 0 works).
pub fn spawn_binary(cmd: &mut std::process::Command) -> Running {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .env("WARREN_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let port = loop {
        let line = lines.next().expect("broker logs its address").unwrap();
        if let Some(rest) = line.split("listening for AMQP on ").nth(1) {
            break rest.trim().rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    // Keep draining the log so the broker never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Running { child, port }
}

/// Wait (up to 10 s) for connection.blocked on a connection's events; its reason.
pub async fn until_blocked(
    events: &mut (impl futures_lite::Stream<Item = lapin::Event> + Unpin),
) -> String {
    use futures_lite::StreamExt;
    let blocked = async {
        while let Some(ev) = events.next().await {
            if let lapin::Event::ConnectionBlocked(reason) = ev {
                return reason;
            }
        }
        panic!("events ended");
    };
    tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("connection.blocked arrives")
}

/// Wait (up to 10 s) for connection.unblocked on a connection's events.
pub async fn until_unblocked(
    events: &mut (impl futures_lite::Stream<Item = lapin::Event> + Unpin),
) {
    use futures_lite::StreamExt;
    let unblocked = async {
        while let Some(ev) = events.next().await {
            if matches!(ev, lapin::Event::ConnectionUnblocked) {
                return;
            }
        }
        panic!("events ended");
    };
    tokio::time::timeout(Duration::from_secs(10), unblocked)
        .await
        .expect("connection.unblocked arrives")
}

/// A minimal client speaking raw frames, for protocol-level tests.
pub struct Raw {
    pub sock: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub async fn connect(b: &TestBroker) -> Raw {
        Raw::over(TcpStream::connect(("127.0.0.1", b.port)).await.unwrap())
    }

    pub fn over(sock: TcpStream) -> Raw {
        Raw {
            sock,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }

    pub async fn method(&mut self, ch: u16, m: AMQPClass) {
        let mut out = BytesMut::new();
        encode::method(&mut out, ch, &m);
        self.send(&out).await;
    }

    /// The next frame, or None when the broker closed the socket.
    pub async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) =
                codec::decode_server_frame(&mut self.buf, 1 << 20).expect("broker frames decode")
            {
                return Some(f);
            }
            let n =
                tokio::time::timeout(Duration::from_secs(10), self.sock.read_buf(&mut self.buf))
                    .await
                    .expect("broker answers within 10s")
                    .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Read raw bytes until the socket closes.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut v = self.buf.to_vec();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.sock.read_to_end(&mut v)).await;
        v
    }

    /// Next method frame (heartbeats and content frames skipped).
    pub async fn next_method(&mut self) -> Option<(u16, AMQPClass)> {
        loop {
            match self.frame().await? {
                Frame::Method(ch, Method::Other(m)) => return Some((ch, m)),
                Frame::Method(_, Method::Publish(p)) => panic!("server sent publish {p:?}"),
                Frame::Heartbeat(_) | Frame::Header { .. } | Frame::Body(..) => continue,
            }
        }
    }

    /// Header, start-ok with PLAIN guest/guest, then expect tune.
    pub async fn start(&mut self, user: &str, pass: &str) -> AMQPClass {
        self.send(b"AMQP\x00\x00\x09\x01").await;
        let (_, start) = self.next_method().await.unwrap();
        assert!(matches!(
            start,
            AMQPClass::Connection(connection::AMQPMethod::Start(_))
        ));
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: WFieldTable::default(),
                mechanism: "PLAIN".into(),
                response: format!("\0{user}\0{pass}").into(),
                locale: "en_US".into(),
            })),
        )
        .await;
        self.next_method().await.unwrap().1
    }

    /// A full handshake with the given tune-ok values.
    pub async fn open(&mut self, frame_max: u32, heartbeat: u16) {
        let tune = self.start("guest", "guest").await;
        assert!(matches!(
            tune,
            AMQPClass::Connection(connection::AMQPMethod::Tune(_))
        ));
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 0,
                frame_max,
                heartbeat,
            })),
        )
        .await;
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        )
        .await;
        let (_, ok) = self.next_method().await.unwrap();
        assert!(matches!(
            ok,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))
        ));
    }

    /// A full handshake as a client that understands connection.blocked (so the broker tells
    /// it when an alarm stops reading it).
    pub async fn open_blocked_aware(&mut self) {
        let conn = AMQPClass::Connection;
        self.send(b"AMQP\x00\x00\x09\x01").await;
        self.next_method().await.expect("start");
        let mut caps = WFieldTable::default();
        caps.insert(
            "connection.blocked".into(),
            warren::protocol::AMQPValue::Boolean(true),
        );
        let mut props = WFieldTable::default();
        props.insert(
            "capabilities".into(),
            warren::protocol::AMQPValue::FieldTable(caps),
        );
        self.method(
            0,
            conn(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
        )
        .await;
        self.next_method().await.expect("tune");
        self.method(
            0,
            conn(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 0,
                frame_max: 131_072,
                heartbeat: 0,
            })),
        )
        .await;
        self.method(
            0,
            conn(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        )
        .await;
        self.next_method().await.expect("open-ok");
    }

    /// channel.open and wait for open-ok.
    pub async fn open_channel(&mut self, ch: u16) {
        let ok = self
            .call(
                ch,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            )
            .await;
        assert!(
            matches!(ok, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))),
            "{ok:?}"
        );
    }

    /// Send a method and return the next method the broker sends.
    pub async fn call(&mut self, ch: u16, m: AMQPClass) -> AMQPClass {
        self.method(ch, m).await;
        self.next_method().await.expect("a reply").1
    }

    pub async fn declare(&mut self, ch: u16, queue: &str) {
        let ok = self
            .call(
                ch,
                AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                    queue: queue.into(),
                    passive: false,
                    durable: false,
                    exclusive: false,
                    auto_delete: false,
                    nowait: false,
                    arguments: WFieldTable::default(),
                })),
            )
            .await;
        assert!(
            matches!(ok, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
            "{ok:?}"
        );
    }

    /// basic.publish + content header (raw property bytes) + one body frame.
    pub async fn publish(&mut self, ch: u16, exchange: &str, key: &str, props: &[u8], body: &[u8]) {
        let mut out = BytesMut::new();
        encode::method(
            &mut out,
            ch,
            &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: key.into(),
                mandatory: false,
                immediate: false,
            })),
        );
        encode::content(&mut out, ch, props, body, 1 << 20);
        self.send(&out).await;
    }

    /// Expect channel.close with `code` on `ch`, answer close-ok.
    pub async fn expect_channel_close(&mut self, ch: u16, want: u16) {
        match self.next_method().await {
            Some((c, AMQPClass::Channel(channel::AMQPMethod::Close(close)))) if c == ch => {
                assert_eq!(close.reply_code, want, "close text: {}", close.reply_text);
                self.method(
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                )
                .await;
            }
            other => panic!("expected channel.close {want} on {ch}, got {other:?}"),
        }
    }

    /// Expect connection.close with `code`, answer close-ok.
    pub async fn expect_close(&mut self, want: u16) {
        loop {
            match self.next_method().await {
                Some((0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => {
                    assert_eq!(c.reply_code, want, "close text: {}", c.reply_text);
                    self.method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    )
                    .await;
                    return;
                }
                Some(_) => continue,
                None => panic!("socket closed without connection.close {want}"),
            }
        }
    }
}

/// `GET path` on the HTTP status API at `addr` with basic auth (None: without); the status
/// code and the body parsed as JSON (Null if it is not JSON).
pub async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    auth: Option<(&str, &str)>,
) -> (u16, serde_json::Value) {
    http_call(addr, "GET", path, auth).await
}

/// `method path` (no body) on the HTTP status API; as `http_get`.
pub async fn http_call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
) -> (u16, serde_json::Value) {
    use base64::Engine;
    let mut s = TcpStream::connect(addr).await.expect("HTTP API reachable");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    if let Some((user, pass)) = auth {
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        req.push_str(&format!("Authorization: Basic {creds}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("HTTP answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// A queue as node `addr`'s status API shows it (panics unless 200).
pub async fn http_queue(addr: std::net::SocketAddr, name: &str) -> serde_json::Value {
    let (status, q) = http_get(
        addr,
        &format!("/api/queues/%2F/{name}"),
        Some(("guest", "guest")),
    )
    .await;
    assert_eq!(status, 200, "{q}");
    q
}

/// On transactional channel `tch`: get a message of `queue` with ack, then publish one
/// and ack the one got, and commit. Returns the queue's Raft `last_index` (from the status
/// API at `api`) before the publish and after the commit; `counter`'s passive declares see
/// the state before each reading (1 ready before, 2 after).
pub async fn tx_publish_and_ack(
    tch: &Channel,
    counter: &Channel,
    api: std::net::SocketAddr,
    queue: &str,
) -> (u64, u64) {
    let got = tch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    let last_index = |q: serde_json::Value| q["raft"]["last_index"].as_u64().unwrap();
    assert_eq!(count(counter, queue).await, 1);
    let before = last_index(http_queue(api, queue).await);
    tch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        b"new",
        persistent(),
    )
    .await
    .unwrap();
    tch.basic_ack(got.delivery.delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    tch.tx_commit().await.unwrap();
    assert_eq!(count(counter, queue).await, 2);
    (before, last_index(http_queue(api, queue).await))
}
