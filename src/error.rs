//! Errors that end a channel or a connection, carrying the AMQP reply code and the method that
//! caused them, so the connection layer can send exactly the close RabbitMQ would.

use thiserror::Error;

/// AMQP reply codes used by warren (see AMQP-NOTES.md).
pub mod code {
    pub const REPLY_SUCCESS: u16 = 200;
    pub const CONTENT_TOO_LARGE: u16 = 311;
    pub const NO_ROUTE: u16 = 312;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;

    /// The name RabbitMQ puts in front of a close's reply text ("NOT_FOUND - ...").
    pub fn name(code: u16) -> &'static str {
        match code {
            200 => "OK",
            311 => "CONTENT_TOO_LARGE",
            312 => "NO_ROUTE",
            320 => "CONNECTION_FORCED",
            403 => "ACCESS_REFUSED",
            404 => "NOT_FOUND",
            405 => "RESOURCE_LOCKED",
            406 => "PRECONDITION_FAILED",
            501 => "FRAME_ERROR",
            502 => "SYNTAX_ERROR",
            503 => "COMMAND_INVALID",
            504 => "CHANNEL_ERROR",
            505 => "UNEXPECTED_FRAME",
            506 => "RESOURCE_ERROR",
            530 => "NOT_ALLOWED",
            540 => "NOT_IMPLEMENTED",
            _ => "INTERNAL_ERROR",
        }
    }
}

/// Why a node stops serving by itself: its store failed (it will not confirm what it cannot
/// keep). Cluster failures join here. Apart from `Error`, which only ever closes a channel
/// or a connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Fatal {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// A protocol-level failure. `Channel` is a soft error (the channel closes, the connection
/// carries on); `Connection` is a hard error (the whole connection closes).
#[derive(Debug, Clone, Error, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Error {
    #[error("channel error {code}: {text}")]
    Channel {
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
    #[error("connection error {code}: {text}")]
    Connection {
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
}

impl Error {
    /// A soft error; the method ids are filled in by the channel that runs the method.
    pub fn channel(code: u16, text: impl Into<String>) -> Self {
        Error::Channel {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }

    /// A hard error.
    pub fn connection(code: u16, text: impl Into<String>) -> Self {
        Error::Connection {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }

    pub fn not_found(text: impl Into<String>) -> Self {
        Self::channel(code::NOT_FOUND, text)
    }

    pub fn precondition(text: impl Into<String>) -> Self {
        Self::channel(code::PRECONDITION_FAILED, text)
    }

    pub fn access_refused(text: impl Into<String>) -> Self {
        Self::channel(code::ACCESS_REFUSED, text)
    }

    /// Reply text as RabbitMQ formats it, capped to a short string.
    pub fn reply_text(&self) -> String {
        let (Error::Channel { code, text, .. } | Error::Connection { code, text, .. }) = self;
        let mut s = format!("{} - {text}", code::name(*code));
        if s.len() > 255 {
            let mut cut = 255;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        s
    }

    pub fn ids(&self) -> (u16, u16) {
        match self {
            Error::Channel {
                class_id,
                method_id,
                ..
            }
            | Error::Connection {
                class_id,
                method_id,
                ..
            } => (*class_id, *method_id),
        }
    }

    pub fn code(&self) -> u16 {
        match self {
            Error::Channel { code, .. } | Error::Connection { code, .. } => *code,
        }
    }

    /// Record which method failed, unless it was already recorded.
    pub fn during(mut self, class: u16, method: u16) -> Self {
        match &mut self {
            Error::Channel {
                class_id,
                method_id,
                ..
            }
            | Error::Connection {
                class_id,
                method_id,
                ..
            } => {
                if *class_id == 0 {
                    *class_id = class;
                    *method_id = method;
                }
            }
        }
        self
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
