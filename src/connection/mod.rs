//! One task per client socket. It reads frames in batches (every whole frame in the buffer
//! before the next read), drives the channels' state, talks to the broker, and queues encoded
//! output for the writer task. It also receives deliveries from queues on its inbox, assigns
//! delivery tags in the order it writes them, and sends and checks heartbeats.
//!
//! Flow control: waiting on a full queue inbox or a full writer queue stops this task from
//! reading its socket, which is what slows down a publisher or a client that does not read.

mod act;
mod basic;
mod close;
mod confirm;
mod deliver;
mod exchange;
mod handshake;
mod methods;
mod publish;
mod queue;
mod tx;
mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, watch};

use crate::broker::Broker;
use crate::broker::ids::{ChannelId, ConnId};
use crate::broker::queue::QueueHandle;
use crate::broker::queue::{ConnEvent, ConnSender};
use crate::broker::vhost::VHost;
use crate::channel::{Channel, State};
use crate::error::{Error, code};
use crate::protocol::codec::{self, Frame, Method};
use crate::protocol::{AMQPClass, channel, connection, encode};

/// Flush the output buffer to the writer once it holds this much.
const FLUSH_AT: usize = 64 * 1024;
/// How long to wait for close-ok after we close a connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// How a connection ends.
#[derive(Debug)]
pub(crate) enum End {
    /// Orderly close (both sides agreed) or the socket went away: nothing more to send.
    Quiet,
    /// A hard error or a shutdown: send connection.close and wait for close-ok.
    Close(Error),
}

impl From<Error> for End {
    fn from(e: Error) -> Self {
        End::Close(e)
    }
}

/// What the client said it understands (client-properties capabilities).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ClientCaps {
    pub consumer_cancel_notify: bool,
    pub connection_blocked: bool,
}

pub(crate) struct Conn {
    id: ConnId,
    broker: Arc<Broker>,
    peer: SocketAddr,
    reader: OwnedReadHalf,
    rbuf: BytesMut,
    out: BytesMut,
    writer: writer::Handle,
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    caps: ClientCaps,
    vhost: Option<Arc<VHost>>,
    /// Counted in broker.connections (past connection.open).
    counted: bool,
    channels: HashMap<u16, Channel>,
    events_tx: ConnSender,
    events_rx: mpsc::UnboundedReceiver<ConnEvent>,
    /// Exclusive queues this connection declared, deleted when it closes.
    exclusive: Vec<QueueHandle>,
    /// Publishes routed but not yet handed to their queues: one batch per queue per read.
    pending: Vec<publish::Pending>,
    /// Channels with confirm-mode publishes in `pending`.
    flushing: Vec<u16>,
    /// What makes the persistent messages in `pending` durable (the broker's rows).
    durable: crate::broker::durable::Batch,
    /// Flushes whose confirms wait for the store or the queues.
    awaiting: Vec<confirm::Flush>,
    /// What a channel decided, being carried out (kept for its allocation).
    acts: Vec<crate::channel::Action>,
    next_token: u64,
    route_buf: Vec<QueueHandle>,
    last_recv: Instant,
    /// The memory alarm; a connection that has published is not read while it is on.
    alarm: watch::Receiver<bool>,
    published: bool,
    /// The disk alarm; a connection that has published persistent messages is not read
    /// while it is on.
    disk_alarm: watch::Receiver<bool>,
    published_persistent: bool,
    /// Whether we stopped reading this connection for the alarm (and said so, if it asked).
    blocked: bool,
    /// Queues this connection published to that asked for flow control: it is not read
    /// until they are no longer busy.
    throttled: Vec<QueueHandle>,
    /// Body bytes of messages still being assembled, counted in the memory monitor.
    assembling: usize,
    /// Held from accept until the handshake ends (given back before open-ok is sent).
    unauthenticated: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Read into the buffer, or, for a blocked connection, only look: 0 once the peer has closed
/// its side (seen even with unread data before it), else 1.
async fn read_or_peek(
    reader: &mut OwnedReadHalf,
    rbuf: &mut BytesMut,
    peek: bool,
) -> std::io::Result<usize> {
    if peek {
        let ready = reader.ready(tokio::io::Interest::READABLE).await?;
        Ok(if ready.is_read_closed() { 0 } else { 1 })
    } else {
        reader.read_buf(rbuf).await
    }
}

/// Wait (a bounded while, as a safety net) for the first throttling queue to clear.
async fn first_unbusy(queues: &[QueueHandle]) {
    if let Some(q) = queues.first() {
        let _ = tokio::time::timeout(Duration::from_millis(100), q.unbusy()).await;
    }
}

/// Serve one client socket until it closes.
///
/// `unauthenticated` is this connection's place among those still in the handshake; it is
/// given back once the handshake ends, however it ends.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    unauthenticated: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let (reader, write_half) = stream.into_split();
    let (wtx, writer) = writer::spawn(write_half, broker.config.writer_buffer_bytes);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let alarm = broker.alarms.memory();
    let disk_alarm = broker.alarms.disk();
    let mut conn = Conn {
        id: broker.next_conn_id(),
        // As RabbitMQ: until tune-ok, frames are at most the protocol's minimum, so a client
        // that has not logged in cannot make the broker buffer more than that.
        frame_max: crate::protocol::FRAME_MIN_SIZE,
        channel_max: broker.config.channel_max,
        heartbeat: 0,
        broker,
        peer,
        reader,
        rbuf: BytesMut::with_capacity(64 * 1024),
        out: BytesMut::new(),
        writer: wtx,
        caps: ClientCaps::default(),
        vhost: None,
        counted: false,
        channels: HashMap::new(),
        events_tx,
        events_rx,
        exclusive: Vec::new(),
        pending: Vec::new(),
        flushing: Vec::new(),
        durable: Default::default(),
        awaiting: Vec::new(),
        acts: Vec::new(),
        next_token: 0,
        route_buf: Vec::new(),
        last_recv: Instant::now(),
        alarm,
        published: false,
        disk_alarm,
        published_persistent: false,
        blocked: false,
        throttled: Vec::new(),
        unauthenticated: Some(unauthenticated),
        assembling: 0,
    };
    let timeout = Duration::from_millis(conn.broker.config.handshake_timeout_ms);
    let handshake = tokio::time::timeout(timeout, conn.handshake()).await;
    conn.unauthenticated = None;
    let end = match handshake {
        Ok(Ok(())) => {
            let evicted = conn.broker.evicted.subscribe();
            conn.run(shutdown, evicted).await
        }
        Ok(Err(end)) => end,
        Err(_) => {
            tracing::debug!(peer = %conn.peer, "handshake timed out");
            End::Quiet
        }
    };
    if let End::Close(err) = end {
        conn.close_connection(err).await;
    }
    conn.release_all().await;
    conn.broker.memory.sub(std::mem::take(&mut conn.assembling));
    if conn.counted {
        conn.broker
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
    drop(conn);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer).await;
}

impl Conn {
    fn key(&self, channel: u16) -> ChannelId {
        ChannelId {
            conn: self.id,
            channel,
        }
    }

    /// The next whole frame in the read buffer, within this connection's limits.
    fn decode_frame(&mut self) -> Result<Option<Frame>, Error> {
        let limits = codec::Limits {
            frame_max: self.frame_max,
            table_depth: self.broker.config.max_table_depth,
        };
        codec::decode(&mut self.rbuf, limits)
    }

    fn vhost(&self) -> &Arc<VHost> {
        self.vhost
            .as_ref()
            .expect("vhost is set by connection.open")
    }

    pub(crate) fn send_method(&mut self, channel: u16, m: AMQPClass) {
        encode::method(&mut self.out, channel, &m);
    }

    /// Hand buffered output to the writer, waiting while its byte budget is spent: this is
    /// the back-pressure that stops a connection whose peer does not read.
    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.writer
            .write(&mut self.out)
            .await
            .map_err(|_| End::Quiet)
    }

    async fn read_more(&mut self) -> Result<(), End> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(64 * 1024);
        }
        match self.reader.read_buf(&mut self.rbuf).await {
            Ok(0) | Err(_) => Err(End::Quiet),
            Ok(_) => {
                self.last_recv = Instant::now();
                Ok(())
            }
        }
    }

    async fn run(
        &mut self,
        mut shutdown: watch::Receiver<bool>,
        mut evicted: watch::Receiver<u64>,
    ) -> End {
        let hb = self.heartbeat;
        let period = if hb > 0 {
            Duration::from_secs(hb as u64) / 2
        } else {
            Duration::from_secs(3600)
        };
        let mut ticker = tokio::time::interval(period);
        ticker.tick().await;
        let mut events = Vec::new();
        // While an alarm blocks us we do not read, so we would not see the peer go away (and
        // whatever it holds, a half-assembled message say, would keep the alarm on). Once a
        // second a blocked connection looks at its socket: a closed peer ends it.
        let mut probe: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let mut peeking = false;
        loop {
            if self.blocked && probe.is_none() && !peeking {
                probe = Some(Box::pin(tokio::time::sleep(Duration::from_secs(1))));
            }
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(64 * 1024);
            }
            let reading = !self.blocked && self.throttled.is_empty();
            let step: Result<(), End> = tokio::select! {
                r = read_or_peek(&mut self.reader, &mut self.rbuf, !reading),
                    if reading || (peeking && self.blocked) => match r {
                    Ok(0) | Err(_) => Err(End::Quiet),
                    Ok(_) if !reading => {
                        peeking = false;
                        Ok(())
                    }
                    Ok(_) => {
                        self.last_recv = Instant::now();
                        self.process_input().await
                    }
                },
                n = self.events_rx.recv_many(&mut events, 64) => {
                    let mut r = Ok(());
                    for ev in events.drain(..n) {
                        if let Err(e) = self.on_event(ev).await {
                            r = Err(e);
                            break;
                        }
                    }
                    r
                }
                _ = first_unbusy(&self.throttled), if !self.throttled.is_empty() => {
                    self.throttled.retain(|q| q.is_busy());
                    Ok(())
                }
                _ = self.alarm.changed() => Ok(()),
                _ = self.disk_alarm.changed() => Ok(()),
                _ = async { probe.as_mut().expect("guarded").await }, if probe.is_some() => {
                    probe = None;
                    peeking = self.blocked;
                    Ok(())
                }
                _ = ticker.tick(), if hb > 0 => {
                    // While blocked we do not read, so the peer's heartbeats are not seen.
                    if reading && self.last_recv.elapsed() > Duration::from_secs(hb as u64 * 2) {
                        tracing::info!(peer = %self.peer, "missed heartbeats from client, timeout: {hb}s");
                        Err(End::Quiet)
                    } else {
                        encode::heartbeat(&mut self.out);
                        Ok(())
                    }
                }
                _ = shutdown.changed() => Err(End::Close(Error::connection(
                    code::CONNECTION_FORCED,
                    "broker forced connection closure with reason 'shutdown'",
                ))),
                _ = evicted.changed() => Err(End::Close(Error::connection(
                    code::CONNECTION_FORCED,
                    "this node was cut off from the cluster and taken as down; reconnect",
                ))),
            };
            if let Err(end) = step {
                return end;
            }
            self.update_blocked();
            if let Err(end) = self.flush_publishes().await {
                return end;
            }
            if let Err(end) = self.flush().await {
                return end;
            }
        }
    }

    /// Start or stop reading for the memory or disk alarm, telling clients that asked to know.
    fn update_blocked(&mut self) {
        let memory = *self.alarm.borrow() && self.published;
        let disk = *self.disk_alarm.borrow() && self.published_persistent;
        let want = memory || disk;
        if want == self.blocked {
            return;
        }
        self.blocked = want;
        if !want {
            self.last_recv = Instant::now();
        }
        if self.caps.connection_blocked {
            let m = if want {
                connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: if disk { "low on disk" } else { "low on memory" }.into(),
                })
            } else {
                connection::AMQPMethod::Unblocked(connection::Unblocked {})
            };
            self.send_method(0, AMQPClass::Connection(m));
        }
    }

    /// Handle every whole frame in the read buffer.
    async fn process_input(&mut self) -> Result<(), End> {
        loop {
            match self.decode_frame()? {
                None => return Ok(()),
                Some(frame) => self.on_frame(frame).await?,
            }
            if self.out.len() >= FLUSH_AT {
                self.flush_publishes().await?;
                self.flush().await?;
            }
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), End> {
        match frame {
            Frame::Heartbeat(0) => Ok(()),
            Frame::Heartbeat(_) => Err(End::Close(Error::connection(
                code::UNEXPECTED_FRAME,
                "heartbeat frame on a non-zero channel",
            ))),
            Frame::Method(0, m) => self.on_connection_method(m).await,
            Frame::Method(ch, Method::Other(AMQPClass::Connection(_))) => {
                Err(End::Close(Error::connection(
                    code::COMMAND_INVALID,
                    format!("connection method on channel {ch}"),
                )))
            }
            Frame::Method(ch, m) => {
                let ids = m.ids();
                let r = self.on_channel_frame(ch, m).await;
                self.outcome(ch, r.map_err(|e| e.during(ids.0, ids.1)))
                    .await
            }
            Frame::Header { channel: 0, .. } | Frame::Body(0, _) => Err(End::Close(
                Error::connection(code::UNEXPECTED_FRAME, "content frame on channel 0"),
            )),
            Frame::Header {
                channel,
                class_id,
                body_size,
                properties,
            } => {
                let r = self.on_header(channel, class_id, body_size, properties);
                self.outcome(channel, r).await
            }
            Frame::Body(ch, data) => {
                let r = self.on_body(ch, data);
                self.outcome(ch, r).await
            }
        }
    }

    /// Soft errors close the channel; hard ones end the connection.
    async fn outcome(&mut self, ch: u16, r: Result<(), Error>) -> Result<(), End> {
        match r {
            Ok(()) => Ok(()),
            Err(e @ Error::Channel { .. }) => {
                self.close_channel(ch, e).await?;
                Ok(())
            }
            Err(e) => Err(End::Close(e)),
        }
    }

    async fn on_connection_method(&mut self, m: Method) -> Result<(), End> {
        match m {
            Method::Other(AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                self.flush_publishes().await?;
                self.release_all().await;
                self.send_method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                self.flush().await?;
                Err(End::Quiet)
            }
            Method::Other(AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_))) => {
                self.send_method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                );
                Ok(())
            }
            other => {
                let (c, m) = other.ids();
                Err(End::Close(
                    Error::connection(
                        code::COMMAND_INVALID,
                        format!("unexpected method {c}.{m} on channel 0"),
                    )
                    .during(c, m),
                ))
            }
        }
    }

    async fn on_channel_frame(&mut self, ch: u16, m: Method) -> Result<(), Error> {
        let state = self.channels.get(&ch).map(|c| c.state);
        match (state, m) {
            (None, Method::Other(AMQPClass::Channel(channel::AMQPMethod::Open(_)))) => {
                if ch > self.channel_max {
                    return Err(Error::connection(
                        code::NOT_ALLOWED,
                        format!(
                            "channel number {ch} is above the negotiated channel_max {}",
                            self.channel_max
                        ),
                    ));
                }
                let id = self.key(ch);
                let c = Channel::new(id, self.caps.consumer_cancel_notify);
                self.channels.insert(ch, c);
                self.send_method(
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
                );
                Ok(())
            }
            (None, _) => Err(Error::connection(
                code::CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {ch}"),
            )),
            (Some(State::Closing), Method::Other(AMQPClass::Channel(m))) => {
                match m {
                    channel::AMQPMethod::CloseOk(_) => {
                        self.channels.remove(&ch);
                    }
                    // Both sides closed at once: answer, and the channel is done.
                    channel::AMQPMethod::Close(_) => {
                        self.channels.remove(&ch);
                        self.send_method(
                            ch,
                            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                        );
                    }
                    _ => {}
                }
                Ok(())
            }
            (Some(State::Closing), _) => Ok(()),
            (Some(State::Open), m) => {
                if self.channels[&ch].assembler.in_progress() {
                    return Err(Error::connection(
                        code::UNEXPECTED_FRAME,
                        "expected content header or body, got a method",
                    ));
                }
                match m {
                    Method::Publish(p) => {
                        if p.immediate {
                            return Err(Error::connection(code::NOT_IMPLEMENTED, "immediate=true"));
                        }
                        if let Some(c) = self.channels.get_mut(&ch) {
                            c.assembler.start(p);
                        }
                        // A publisher from its first frame: the alarms block it mid-message.
                        self.published = true;
                        Ok(())
                    }
                    Method::Other(m) => {
                        // Anything but a publish sees the effect of earlier publishes.
                        self.flush_publishes().await.map_err(|_| {
                            Error::connection(code::INTERNAL_ERROR, "connection is closing")
                        })?;
                        self.on_method(ch, m).await
                    }
                }
            }
        }
    }
}
