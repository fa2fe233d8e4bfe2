//! Node links: one TCP connection per node pair, carrying length-prefixed frames that
//! multiplex every Raft group's messages and forwarded queue work, with a node-level
//! heartbeat for failure detection.
//!
//! The node with the lower id dials; the higher one accepts. Outgoing connections are opened
//! from this node's cluster address, so a peer (or a firewall rule) can tell nodes apart by
//! source address. Each side opens with a `Hello` naming its node and the cluster's identity
//! (a hash of the peer list): a node with another peer list is refused.
//!
//! Raft frames are best effort: frames queued while a link is down, or past its bounded
//! queue, are dropped (Raft re-sends what matters). Forwarded work belongs to a session: each
//! connection of a link is one, numbered (`Session`); a forward frame is sent only on the
//! session it was meant for, in order, and waits for room in the queue; a frame received is
//! tagged with its session. A link that carries nothing for the peer timeout is closed and
//! redialed, which ends its session.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use super::ClusterConfig;
use super::parts::{Kind, Parts};

/// Frames bigger than this close the link (a Raft batch is bounded far below it, and a
/// bigger message goes in parts, `parts`).
pub const MAX_FRAME: usize = 64 << 20;
/// Frames queued for one peer; past it, new ones are dropped until the link drains.
const PEER_QUEUE: usize = 4096;
/// Bytes gathered into one write.
const WRITE_BATCH: usize = 256 << 10;
/// How often an idle link says it is alive.
const HEARTBEAT: Duration = Duration::from_millis(100);
/// Incoming connections waiting for their hello at once.
const PENDING_HELLOS: usize = 64;
/// Pause between failed dials.
const REDIAL: Duration = Duration::from_millis(200);

const HELLO: u8 = 1;
const HEARTBEAT_FRAME: u8 = 2;
const RAFT: u8 = 3;
const FORWARD: u8 = 4;
const REJOIN: u8 = 5;
const RAFT_PART: u8 = 6;
const KEPT: u8 = 7;
const KEPT_ACK: u8 = 8;

/// One connection of a link, numbered from 1 on each node (the two ends number alike only
/// by chance: a session number is meaningful to its own node).
pub type Session = u64;

/// One frame on a link.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Hello {
        cluster: u64,
        node: u64,
    },
    Heartbeat,
    /// An encoded Raft message of a group.
    Raft {
        group: u64,
        msg: Bytes,
    },
    /// Forwarded queue work (encoded by the broker).
    Forward(Bytes),
    /// A chunk of the kept entries of a snapshot for the receiver (`transfer::Chunk`).
    Kept {
        group: u64,
        msg: Bytes,
    },
    /// The receiver staged chunk `seq` of the snapshot at `index` (`transfer::REFUSED`: it
    /// cannot take the snapshot).
    KeptAck {
        group: u64,
        index: u64,
        seq: u64,
    },
    /// The sender's data was wiped: it asks to take part in the metadata group under this
    /// new Raft id instead of its old one (`runtime::Runtime::rejoin`).
    Rejoin {
        raft_id: u64,
    },
    /// Part of a message too big for one frame (`parts`): its bytes from `offset` of
    /// `total`.
    RaftPart {
        kind: Kind,
        group: u64,
        total: u64,
        offset: u64,
        data: Bytes,
    },
}

impl Frame {
    /// `[len: u32][kind: u8][payload]`, len counting kind and payload.
    pub fn encode(&self, out: &mut BytesMut) {
        let at = out.len();
        out.put_u32(0);
        match self {
            Frame::Hello { cluster, node } => {
                out.put_u8(HELLO);
                out.put_u64(*cluster);
                out.put_u64(*node);
            }
            Frame::Heartbeat => out.put_u8(HEARTBEAT_FRAME),
            Frame::Raft { group, msg } => {
                out.put_u8(RAFT);
                out.put_u64(*group);
                out.put_slice(msg);
            }
            Frame::Forward(msg) => {
                out.put_u8(FORWARD);
                out.put_slice(msg);
            }
            Frame::Kept { group, msg } => {
                out.put_u8(KEPT);
                out.put_u64(*group);
                out.put_slice(msg);
            }
            Frame::KeptAck { group, index, seq } => {
                out.put_u8(KEPT_ACK);
                out.put_u64(*group);
                out.put_u64(*index);
                out.put_u64(*seq);
            }
            Frame::Rejoin { raft_id } => {
                out.put_u8(REJOIN);
                out.put_u64(*raft_id);
            }
            Frame::RaftPart {
                kind,
                group,
                total,
                offset,
                data,
            } => {
                out.put_u8(RAFT_PART);
                out.put_u8(match kind {
                    Kind::Raft => RAFT,
                    Kind::Kept => KEPT,
                });
                out.put_u64(*group);
                out.put_u64(*total);
                out.put_u64(*offset);
                out.put_slice(data);
            }
        }
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// The next whole frame in `buf`, if there is one; an error for a malformed frame.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, String> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(format!("bad frame length {len}"));
        }
        if buf.len() < 4 + len {
            buf.reserve(4 + len - buf.len());
            return Ok(None);
        }
        buf.advance(4);
        let mut body = buf.split_to(len).freeze();
        let kind = body.get_u8();
        let need = |n: usize, body: &Bytes| {
            if body.len() < n {
                Err(format!("short frame of kind {kind}"))
            } else {
                Ok(())
            }
        };
        let frame = match kind {
            HELLO => {
                need(16, &body)?;
                Frame::Hello {
                    cluster: body.get_u64(),
                    node: body.get_u64(),
                }
            }
            HEARTBEAT_FRAME => Frame::Heartbeat,
            RAFT => {
                need(8, &body)?;
                let group = body.get_u64();
                Frame::Raft { group, msg: body }
            }
            KEPT => {
                need(8, &body)?;
                let group = body.get_u64();
                Frame::Kept { group, msg: body }
            }
            KEPT_ACK => {
                need(24, &body)?;
                Frame::KeptAck {
                    group: body.get_u64(),
                    index: body.get_u64(),
                    seq: body.get_u64(),
                }
            }
            FORWARD => Frame::Forward(body),
            REJOIN => {
                need(8, &body)?;
                Frame::Rejoin {
                    raft_id: body.get_u64(),
                }
            }
            RAFT_PART => {
                need(25, &body)?;
                Frame::RaftPart {
                    kind: match body.get_u8() {
                        RAFT => Kind::Raft,
                        KEPT => Kind::Kept,
                        other => return Err(format!("unknown part kind {other}")),
                    },
                    group: body.get_u64(),
                    total: body.get_u64(),
                    offset: body.get_u64(),
                    data: body,
                }
            }
            other => return Err(format!("unknown frame kind {other}")),
        };
        Ok(Some(frame))
    }
}

/// A frame from a peer, and the session it came on.
#[derive(Debug)]
pub struct Inbound {
    pub from: u64,
    pub session: Session,
    pub frame: Frame,
}

/// A frame to send, and the session it is for (None: any, as for Raft frames).
#[derive(Debug)]
struct Outgoing {
    session: Option<Session>,
    frame: Frame,
}

/// Which peers have a link up now, and its session.
pub type Sessions = BTreeMap<u64, Option<Session>>;

/// The links of this node to every peer.
pub struct Links {
    out: BTreeMap<u64, mpsc::Sender<Outgoing>>,
    up: watch::Receiver<Sessions>,
    /// Kept by `none`, whose watch nobody else sends on.
    _idle: Option<watch::Sender<Sessions>>,
}

impl Links {
    /// No peers (a single node's groups of one): nothing is ever sent.
    pub fn none() -> Arc<Links> {
        let (tx, up) = watch::channel(Sessions::new());
        Arc::new(Links {
            out: BTreeMap::new(),
            up,
            _idle: Some(tx),
        })
    }

    /// Listen on the cluster address and keep a link to every peer; frames received go to
    /// `inbound`.
    pub async fn start(
        cfg: &ClusterConfig,
        inbound: mpsc::Sender<Inbound>,
        forwarded: mpsc::UnboundedSender<Inbound>,
    ) -> std::io::Result<Arc<Links>> {
        let listener = TcpListener::bind(cfg.listen).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cfg.listen))
        })?;
        let identity = cfg.identity();
        let peers: Vec<(u64, SocketAddr)> = cfg
            .peers
            .iter()
            .filter(|(id, _)| **id != cfg.node_id)
            .map(|(id, a)| (*id, *a))
            .collect();
        let (up_tx, up) = watch::channel(peers.iter().map(|(id, _)| (*id, None)).collect());
        let up_tx = Arc::new(up_tx);
        let mut out = BTreeMap::new();
        let mut accepted = BTreeMap::new();
        for &(id, addr) in &peers {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            out.insert(id, tx);
            let (acc_tx, acc_rx) = mpsc::channel(2);
            let peer = Peer {
                me: cfg.node_id,
                identity,
                id,
                addr,
                local: cfg.listen,
                timeout: cfg.peer_timeout,
                inbound: inbound.clone(),
                forwarded: forwarded.clone(),
                up: up_tx.clone(),
            };
            if cfg.node_id > id {
                accepted.insert(id, acc_tx);
            }
            tokio::spawn(peer.run(rx, acc_rx));
        }
        tokio::spawn(accept_loop(listener, cfg.clone(), accepted));
        Ok(Arc::new(Links {
            out,
            up,
            _idle: None,
        }))
    }

    /// Queue a frame for a peer; dropped if its link is down or backed up.
    pub fn send(&self, to: u64, frame: Frame) {
        let item = Outgoing {
            session: None,
            frame,
        };
        if let Some(tx) = self.out.get(&to)
            && tx.try_send(item).is_err()
        {
            tracing::trace!(peer = to, "link queue full; frame dropped");
        }
    }

    /// Queue a frame for a peer, waiting for room (a snapshot's chunks, which the follower
    /// acknowledges: not dropped for a moment's backlog); dropped if its link is down.
    pub async fn send_waiting(&self, to: u64, frame: Frame) {
        if let Some(tx) = self.out.get(&to) {
            let item = Outgoing {
                session: None,
                frame,
            };
            let _ = tx.send(item).await;
        }
    }

    /// Queue forwarded work for a peer's session, waiting for room; it is dropped if that
    /// session has ended by the time it would be written.
    pub async fn forward(&self, to: u64, session: Session, msg: Bytes) {
        if let Some(tx) = self.out.get(&to) {
            let item = Outgoing {
                session: Some(session),
                frame: Frame::Forward(msg),
            };
            let _ = tx.send(item).await;
        }
    }

    /// Which peers have a link up, and its session, as it changes.
    pub fn up(&self) -> watch::Receiver<Sessions> {
        self.up.clone()
    }

    /// Whether `session` is the peer's link now. A session is shown up before anything is
    /// read from it, so a frame that fails this came on a link that has since gone down.
    pub fn is_current(&self, peer: u64, session: Session) -> bool {
        self.up.borrow().get(&peer) == Some(&Some(session))
    }
}

/// Accept links from lower-numbered peers and hand each to its peer's task after the hello.
async fn accept_loop(
    listener: TcpListener,
    cfg: ClusterConfig,
    accepted: BTreeMap<u64, mpsc::Sender<(TcpStream, BytesMut)>>,
) {
    // Connections that have not said hello yet are bounded: a flood of them is dropped.
    let hellos = Arc::new(tokio::sync::Semaphore::new(PENDING_HELLOS));
    loop {
        let (mut stream, from) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cluster accept failed: {e}");
                tokio::time::sleep(REDIAL).await;
                continue;
            }
        };
        let Ok(permit) = hellos.clone().try_acquire_owned() else {
            continue;
        };
        let cfg = cfg.clone();
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = BytesMut::new();
            let hello =
                tokio::time::timeout(cfg.peer_timeout * 5, read_frame(&mut stream, &mut buf));
            let node = match hello.await {
                Ok(Ok(Frame::Hello { cluster, node })) if cluster == cfg.identity() => node,
                Ok(Ok(Frame::Hello { node, .. })) => {
                    tracing::error!(
                        %from,
                        node,
                        "refused a node link: that node has another peer list"
                    );
                    return;
                }
                _ => return,
            };
            let Some(tx) = accepted.get(&node) else {
                tracing::warn!(%from, node, "refused a node link from an unexpected node id");
                return;
            };
            let expected = cfg.peers[&node].ip();
            if !expected.is_unspecified() && from.ip() != expected {
                tracing::warn!(%from, node, "refused a node link from the wrong address");
                return;
            }
            let _ = tx.send((stream, buf)).await;
        });
    }
}

async fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<Frame> {
    loop {
        match Frame::decode(buf) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// One peer's link, redialed or re-accepted whenever it fails.
struct Peer {
    me: u64,
    identity: u64,
    id: u64,
    addr: SocketAddr,
    local: SocketAddr,
    timeout: Duration,
    inbound: mpsc::Sender<Inbound>,
    forwarded: mpsc::UnboundedSender<Inbound>,
    up: Arc<watch::Sender<Sessions>>,
}

impl Peer {
    async fn run(
        self,
        mut out: mpsc::Receiver<Outgoing>,
        mut accepted: mpsc::Receiver<(TcpStream, BytesMut)>,
    ) {
        let mut next: Option<(TcpStream, BytesMut)> = None;
        let mut session: Session = 0;
        loop {
            let (stream, buf) = match next.take() {
                Some(s) => s,
                None if self.me < self.id => match self.dial().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(peer = self.id, "dial failed: {e}");
                        // Frames for a peer that is down are stale by the time it is back.
                        while out.try_recv().is_ok() {}
                        tokio::time::sleep(REDIAL).await;
                        continue;
                    }
                },
                None => loop {
                    // While down, what is queued is stale: drop it so senders never wait.
                    tokio::select! {
                        s = accepted.recv() => match s {
                            Some(s) => break s,
                            None => return,
                        },
                        _ = out.recv() => {}
                    }
                },
            };
            session += 1;
            if self.me > self.id {
                // The acceptor answers the hello, so the dialer knows it was not refused.
                let mut hello = BytesMut::new();
                Frame::Hello {
                    cluster: self.identity,
                    node: self.me,
                }
                .encode(&mut hello);
                let mut stream = stream;
                if stream.write_all(&hello).await.is_err() {
                    continue;
                }
                next = self
                    .serve(stream, buf, session, &mut out, &mut accepted)
                    .await;
            } else {
                next = self
                    .serve(stream, buf, session, &mut out, &mut accepted)
                    .await;
            }
        }
    }

    async fn dial(&self) -> std::io::Result<(TcpStream, BytesMut)> {
        let socket = if self.local.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(self.local.ip(), 0))?;
        let mut stream = tokio::time::timeout(self.timeout, socket.connect(self.addr))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        stream.set_nodelay(true)?;
        let mut hello = BytesMut::new();
        Frame::Hello {
            cluster: self.identity,
            node: self.me,
        }
        .encode(&mut hello);
        stream.write_all(&hello).await?;
        let mut buf = BytesMut::new();
        match tokio::time::timeout(self.timeout * 5, read_frame(&mut stream, &mut buf)).await {
            Ok(Ok(Frame::Hello { cluster, node }))
                if cluster == self.identity && node == self.id =>
            {
                Ok((stream, buf))
            }
            Ok(Ok(_)) => Err(std::io::Error::other("unexpected hello")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    fn set_up(&self, session: Option<Session>) {
        self.up.send_modify(|m| {
            m.insert(self.id, session);
        });
        if session.is_some() {
            tracing::info!(peer = self.id, addr = %self.addr, "node link up");
        } else {
            tracing::warn!(peer = self.id, addr = %self.addr, "node link down");
        }
    }

    /// Carry frames both ways until the link fails or a newer connection from the peer
    /// replaces it (returned, to serve next). Reading and writing go on independently: an
    /// end that stopped reading while its write waits could wait for good on a peer doing
    /// the same (both sockets' buffers full).
    async fn serve(
        &self,
        stream: TcpStream,
        rbuf: BytesMut,
        session: Session,
        out: &mut mpsc::Receiver<Outgoing>,
        accepted: &mut mpsc::Receiver<(TcpStream, BytesMut)>,
    ) -> Option<(TcpStream, BytesMut)> {
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        self.set_up(Some(session));
        let replaced = tokio::select! {
            () = self.read(reader, rbuf, session) => None,
            () = self.write(writer, session, out) => None,
            // Only the accepting side gets new connections from the peer.
            s = accepted.recv(), if self.me > self.id => s,
        };
        self.set_up(None);
        replaced
    }

    /// Hand what the peer sends to this node, until the link fails or is silent for the
    /// peer timeout.
    async fn read(&self, mut reader: OwnedReadHalf, mut rbuf: BytesMut, session: Session) {
        let mut parts = Parts::default();
        loop {
            match tokio::time::timeout(self.timeout, reader.read_buf(&mut rbuf)).await {
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) => {
                    return tracing::warn!(peer = self.id, "node link silent; closing it");
                }
            }
            loop {
                let frame = match Frame::decode(&mut rbuf) {
                    Ok(Some(Frame::Heartbeat | Frame::Hello { .. })) => continue,
                    Ok(Some(frame @ Frame::Forward(_))) => {
                        // Not waited for: what a peer forwards is bounded by the windows
                        // its senders keep (see broker::remote).
                        let _ = self.forwarded.send(Inbound {
                            from: self.id,
                            session,
                            frame,
                        });
                        continue;
                    }
                    Ok(Some(Frame::RaftPart {
                        kind,
                        group,
                        total,
                        offset,
                        data,
                    })) => {
                        let Some(msg) = parts.take((kind, group), total, offset, &data) else {
                            continue;
                        };
                        kind.whole(group, msg)
                    }
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        return tracing::warn!(peer = self.id, "bad frame on node link: {e}");
                    }
                };
                let msg = Inbound {
                    from: self.id,
                    session,
                    frame,
                };
                if self.inbound.send(msg).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Write what this node queues for the peer, and a heartbeat every `HEARTBEAT`, until
    /// the link fails.
    async fn write(
        &self,
        mut writer: OwnedWriteHalf,
        session: Session,
        out: &mut mpsc::Receiver<Outgoing>,
    ) {
        // Only frames for this session (or for any) go out on it.
        let keep = |o: &Outgoing| o.session.is_none_or(|s| s == session);
        let mut wbuf = BytesMut::new();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                f = out.recv() => {
                    let Some(f) = f else { return };
                    if keep(&f) {
                        f.frame.encode(&mut wbuf);
                    }
                    while wbuf.len() < WRITE_BATCH {
                        match out.try_recv() {
                            Ok(f) if keep(&f) => f.frame.encode(&mut wbuf),
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                }
                _ = heartbeat.tick() => Frame::Heartbeat.encode(&mut wbuf),
            }
            if writer.write_all(&wbuf).await.is_err() {
                return;
            }
            wbuf.clear();
        }
    }
}

#[cfg(test)]
mod tests;
