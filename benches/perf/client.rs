//! A lean AMQP 0-9-1 client for the load generator. lapin costs 10-20 us of CPU per message
//! and a thread per connection; on two shared cores that would measure lapin, not the
//! broker. This one writes many publishes per syscall, reads many frames per syscall, and
//! parses deliveries, acks and nacks by hand without allocating; everything else goes
//! through warren's codec (amq-protocol), as a control path.

use std::io;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::protocol::codec::{self, Frame, Method};
use warren::protocol::{AMQPClass, FieldTable, channel, connection, encode};

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;

/// `amqp://user:pass@host:port/vhost`
#[derive(Debug, Clone)]
pub struct Url {
    pub addr: String,
    pub user: String,
    pub pass: String,
    pub vhost: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, String> {
        let rest = url
            .strip_prefix("amqp://")
            .ok_or_else(|| format!("not an amqp:// URL: {url}"))?;
        let (auth, rest) = rest.split_once('@').unwrap_or(("guest:guest", rest));
        let (user, pass) = auth.split_once(':').unwrap_or((auth, ""));
        let (addr, vhost) = rest.split_once('/').unwrap_or((rest, ""));
        let vhost = match vhost {
            "" => "/".to_string(),
            v => v.replace("%2f", "/").replace("%2F", "/"),
        };
        let addr = if addr.contains(':') {
            addr.to_string()
        } else {
            format!("{addr}:5672")
        };
        Ok(Url {
            addr,
            user: user.into(),
            pass: pass.into(),
            vhost,
        })
    }
}

/// A frame, parsed as far as the load generator needs it.
#[derive(Debug)]
pub enum Event {
    Deliver {
        tag: u64,
    },
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
    },
    Header,
    /// A body frame's first 8 bytes as a big-endian u64 (the send time).
    Body {
        stamp: Option<u64>,
    },
    Method(u16, AMQPClass),
    Heartbeat,
}

pub struct Client {
    sock: TcpStream,
    rbuf: BytesMut,
    pub wbuf: BytesMut,
    pub frame_max: u32,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Client {
    pub async fn connect(url: &Url) -> io::Result<Client> {
        let sock = TcpStream::connect(&url.addr).await?;
        sock.set_nodelay(true)?;
        let mut c = Client {
            sock,
            rbuf: BytesMut::with_capacity(256 * 1024),
            wbuf: BytesMut::with_capacity(256 * 1024),
            frame_max: 131_072,
        };
        c.wbuf.put_slice(b"AMQP\x00\x00\x09\x01");
        c.flush().await?;
        match c.next_method().await? {
            (0, AMQPClass::Connection(connection::AMQPMethod::Start(_))) => {}
            other => return Err(io_err(format!("expected connection.start, got {other:?}"))),
        }
        c.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: format!("\0{}\0{}", url.user, url.pass).into(),
                locale: "en_US".into(),
            })),
        );
        c.flush().await?;
        let tune = match c.next_method().await? {
            (0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => t,
            other => return Err(io_err(format!("expected connection.tune, got {other:?}"))),
        };
        if tune.frame_max != 0 {
            c.frame_max = c.frame_max.min(tune.frame_max);
        }
        c.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: c.frame_max,
                heartbeat: 0,
            })),
        );
        c.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: url.vhost.as_str().into(),
            })),
        );
        c.flush().await?;
        match c.next_method().await? {
            (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
            other => {
                return Err(io_err(format!(
                    "expected connection.open-ok, got {other:?}"
                )));
            }
        }
        c.call(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await?;
        Ok(c)
    }

    pub fn send(&mut self, ch: u16, m: &AMQPClass) {
        encode::method(&mut self.wbuf, ch, m);
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.sock.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Read whatever the broker has sent (at least one byte).
    pub async fn fill(&mut self) -> io::Result<()> {
        if self.rbuf.capacity() - self.rbuf.len() < 64 * 1024 {
            self.rbuf.reserve(256 * 1024);
        }
        if self.sock.read_buf(&mut self.rbuf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "broker closed the connection",
            ));
        }
        Ok(())
    }

    /// Read what is there without waiting.
    pub fn try_fill(&mut self) -> io::Result<()> {
        if self.rbuf.capacity() - self.rbuf.len() < 64 * 1024 {
            self.rbuf.reserve(256 * 1024);
        }
        match self.sock.try_read_buf(&mut self.rbuf) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "broker closed the connection",
            )),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The next whole frame in the read buffer, if any.
    pub fn next(&mut self) -> io::Result<Option<Event>> {
        let b = &self.rbuf[..];
        if b.len() < 8 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([b[3], b[4], b[5], b[6]]) as usize;
        if b.len() < size + 8 {
            return Ok(None);
        }
        let p = &b[7..7 + size];
        let ev = match b[0] {
            FRAME_METHOD if size >= 4 && p[..2] == [0, 60] => match (p[2], p[3]) {
                (0, 60) => {
                    // basic.deliver: consumer-tag, delivery-tag, ...
                    let tag_len = p[4] as usize;
                    let at = 5 + tag_len;
                    Some(Event::Deliver {
                        tag: u64::from_be_bytes(p[at..at + 8].try_into().map_err(io_err)?),
                    })
                }
                (0, 80) | (0, 120) => {
                    let tag = u64::from_be_bytes(p[4..12].try_into().map_err(io_err)?);
                    let multiple = p[12] & 1 != 0;
                    Some(if p[3] == 80 {
                        Event::Ack { tag, multiple }
                    } else {
                        Event::Nack { tag, multiple }
                    })
                }
                _ => None,
            },
            FRAME_HEADER => Some(Event::Header),
            FRAME_BODY => Some(Event::Body {
                stamp: p
                    .get(..8)
                    .map(|s| u64::from_be_bytes(s.try_into().unwrap())),
            }),
            FRAME_HEARTBEAT => Some(Event::Heartbeat),
            _ => None,
        };
        if let Some(ev) = ev {
            self.rbuf.advance(size + 8);
            return Ok(Some(ev));
        }
        match codec::decode_server_frame(&mut self.rbuf, 1 << 24).map_err(io_err)? {
            Some(Frame::Method(ch, Method::Other(m))) => Ok(Some(Event::Method(ch, m))),
            Some(other) => Err(io_err(format!("unexpected frame {other:?}"))),
            None => Ok(None),
        }
    }

    /// The next method (content and heartbeats skipped); a close is an error.
    pub async fn next_method(&mut self) -> io::Result<(u16, AMQPClass)> {
        loop {
            while let Some(ev) = self.next()? {
                if let Event::Method(ch, m) = ev {
                    return match m {
                        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => Err(io_err(format!(
                            "channel closed: {} {}",
                            c.reply_code, c.reply_text
                        ))),
                        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => Err(io_err(
                            format!("connection closed: {} {}", c.reply_code, c.reply_text),
                        )),
                        m => Ok((ch, m)),
                    };
                }
            }
            self.fill().await?;
        }
    }

    /// Send a method and wait for its reply.
    pub async fn call(&mut self, ch: u16, m: AMQPClass) -> io::Result<AMQPClass> {
        self.send(ch, &m);
        self.flush().await?;
        Ok(self.next_method().await?.1)
    }

    /// basic.publish with its content, into the write buffer.
    pub fn publish(&mut self, exchange: &str, key: &str, persistent: bool, body: &[u8]) {
        let w = &mut self.wbuf;
        w.put_u8(FRAME_METHOD);
        w.put_u16(1);
        w.put_u32((4 + 2 + 1 + exchange.len() + 1 + key.len() + 1) as u32);
        w.put_u16(60);
        w.put_u16(40);
        w.put_u16(0);
        w.put_u8(exchange.len() as u8);
        w.put_slice(exchange.as_bytes());
        w.put_u8(key.len() as u8);
        w.put_slice(key.as_bytes());
        w.put_u8(0);
        w.put_u8(0xce);
        // delivery-mode is the only property: flag bit 12.
        let props: &[u8] = if persistent {
            &[0x10, 0x00, 2]
        } else {
            &[0, 0]
        };
        encode::content(w, 1, props, body, self.frame_max);
    }

    pub fn ack(&mut self, tag: u64, multiple: bool) {
        let w = &mut self.wbuf;
        w.put_u8(FRAME_METHOD);
        w.put_u16(1);
        w.put_u32(13);
        w.put_u16(60);
        w.put_u16(80);
        w.put_u64(tag);
        w.put_u8(multiple as u8);
        w.put_u8(0xce);
    }
}
