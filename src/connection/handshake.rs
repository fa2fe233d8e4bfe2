//! Connection establishment: protocol header, connection.start / start-ok (SASL PLAIN or
//! AMQPLAIN), tune / tune-ok (frame_max, channel_max, heartbeat), open / open-ok (vhost).

use std::sync::atomic::Ordering;

use super::{ClientCaps, Conn, End};
use crate::error::{Error, code};
use crate::protocol::codec::{Frame, Method};
use crate::protocol::{
    AMQPClass, AMQPValue, FRAME_MIN_SIZE, FieldTable, PROTOCOL_HEADER, connection, sasl,
};

fn hard(code: u16, text: impl Into<String>) -> End {
    End::Close(Error::connection(code, text))
}

fn server_properties(cluster_name: &str) -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props.insert("product".into(), text("warren"));
    props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    props.insert("platform".into(), text("Rust"));
    props.insert("cluster_name".into(), text(cluster_name));
    props.insert(
        "information".into(),
        text("warren: an AMQP 0-9-1 broker; see README.md"),
    );
    props.insert("copyright".into(), text("the warren authors"));
    props
}

fn client_caps(props: &FieldTable) -> ClientCaps {
    let Some(AMQPValue::FieldTable(caps)) = props.inner().get("capabilities") else {
        return ClientCaps::default();
    };
    let on = |k: &str| matches!(caps.inner().get(k), Some(AMQPValue::Boolean(true)));
    ClientCaps {
        consumer_cancel_notify: on("consumer_cancel_notify"),
        connection_blocked: on("connection.blocked"),
    }
}

impl Conn {
    /// The next connection-class method during the handshake.
    async fn handshake_method(&mut self) -> Result<connection::AMQPMethod, End> {
        loop {
            match self.decode_frame()? {
                Some(Frame::Heartbeat(_)) => continue,
                Some(Frame::Method(0, Method::Other(AMQPClass::Connection(m)))) => return Ok(m),
                Some(other) => {
                    return Err(hard(
                        code::COMMAND_INVALID,
                        format!(
                            "unexpected frame during handshake on channel {}",
                            other.channel()
                        ),
                    ));
                }
                None => self.read_more().await?,
            }
        }
    }

    pub(super) async fn handshake(&mut self) -> Result<(), End> {
        while self.rbuf.len() < 8 {
            self.read_more().await?;
        }
        if &self.rbuf[..8] != PROTOCOL_HEADER {
            // Tell the client which protocol we speak, then hang up (AMQP 0-9-1 §4.2.2).
            self.out.extend_from_slice(PROTOCOL_HEADER);
            self.flush().await?;
            return Err(End::Quiet);
        }
        let _ = self.rbuf.split_to(8);

        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(&self.broker.cluster_name),
                mechanisms: "PLAIN AMQPLAIN".into(),
                locales: "en_US".into(),
            })),
        );
        self.flush().await?;

        let connection::AMQPMethod::StartOk(start_ok) = self.handshake_method().await? else {
            return Err(hard(code::COMMAND_INVALID, "expected connection.start-ok"));
        };
        self.caps = client_caps(&start_ok.client_properties);
        self.authenticate(start_ok.mechanism.as_str(), start_ok.response.as_bytes())
            .map_err(|e| End::Close(e.during(10, 11)))?;

        self.tune().await?;
        self.open().await
    }

    /// connection.tune / tune-ok: the client may lower our limits, never raise them.
    async fn tune(&mut self) -> Result<(), End> {
        let cfg = self.broker.config.clone();
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: cfg.channel_max,
                frame_max: cfg.frame_max,
                heartbeat: cfg.heartbeat,
            })),
        );
        self.flush().await?;

        let connection::AMQPMethod::TuneOk(tune) = self.handshake_method().await? else {
            return Err(hard(code::COMMAND_INVALID, "expected connection.tune-ok"));
        };
        if tune.frame_max != 0 && tune.frame_max < FRAME_MIN_SIZE {
            return Err(hard(
                code::NOT_ALLOWED,
                format!("frame_max={} < {FRAME_MIN_SIZE} min size", tune.frame_max),
            ));
        }
        if tune.frame_max > cfg.frame_max {
            return Err(hard(
                code::NOT_ALLOWED,
                format!("frame_max={} > {} max size", tune.frame_max, cfg.frame_max),
            ));
        }
        if tune.channel_max > cfg.channel_max {
            return Err(hard(
                code::NOT_ALLOWED,
                format!("channel_max={} > {} max", tune.channel_max, cfg.channel_max),
            ));
        }
        self.frame_max = if tune.frame_max == 0 {
            cfg.frame_max
        } else {
            tune.frame_max
        };
        self.channel_max = if tune.channel_max == 0 {
            cfg.channel_max
        } else {
            tune.channel_max
        };
        self.heartbeat = tune.heartbeat;

        Ok(())
    }

    /// connection.open: the vhost, and a place under the connection limit.
    async fn open(&mut self) -> Result<(), End> {
        let cfg = self.broker.config.clone();
        let connection::AMQPMethod::Open(open) = self.handshake_method().await? else {
            return Err(hard(code::COMMAND_INVALID, "expected connection.open"));
        };
        let name = open.virtual_host.as_str();
        let Some(vhost) = self.broker.vhost(name) else {
            return Err(End::Close(
                Error::connection(code::NOT_ALLOWED, format!("vhost {name} not found"))
                    .during(10, 40),
            ));
        };
        let n = self.broker.connections.fetch_add(1, Ordering::AcqRel) + 1;
        self.counted = true;
        if n > cfg.max_connections {
            return Err(End::Close(
                Error::connection(
                    code::NOT_ALLOWED,
                    format!("connection limit ({}) is reached", cfg.max_connections),
                )
                .during(10, 40),
            ));
        }
        self.vhost = Some(vhost);
        self.unauthenticated = None;
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        self.flush().await?;
        tracing::debug!(conn = %self.id, peer = %self.peer, vhost = name, "connection open");
        Ok(())
    }

    fn authenticate(&self, mechanism: &str, response: &[u8]) -> Result<(), Error> {
        let creds = match mechanism {
            "PLAIN" => sasl::plain(response),
            "AMQPLAIN" => sasl::amqplain(response, self.broker.config.max_table_depth)
                .map_err(|e| Error::connection(code::FRAME_ERROR, e.to_string()))?,
            other => {
                return Err(Error::connection(
                    code::COMMAND_INVALID,
                    format!("unknown authentication mechanism '{other}'"),
                ));
            }
        };
        let cfg = &self.broker.config;
        let refused = || {
            Error::connection(
                code::ACCESS_REFUSED,
                format!(
                    "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                ),
            )
        };
        let Some((user, pass)) = creds else {
            return Err(refused());
        };
        if user != cfg.default_user || pass != cfg.default_pass {
            tracing::info!(peer = %self.peer, user, "login refused: bad credentials");
            return Err(refused());
        }
        if cfg.loopback_users.contains(&user) && !self.peer.ip().is_loopback() {
            return Err(Error::connection(
                code::ACCESS_REFUSED,
                format!("user '{user}' can only connect via localhost"),
            ));
        }
        Ok(())
    }
}
