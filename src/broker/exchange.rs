//! Exchange definitions and their compiled routers.

use std::sync::Arc;

use super::routing::{
    BindingId, Dest, direct::Direct, fanout::Fanout, headers::Headers, topic::Topic,
};
use crate::protocol::FieldTable;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "direct" => Self::Direct,
            "fanout" => Self::Fanout,
            "topic" => Self::Topic,
            "headers" => Self::Headers,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDef {
    pub name: Arc<str>,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// The destination of a binding, by name (the topology's view; `Dest` is the router's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DestName {
    Queue(Arc<str>),
    Exchange(Arc<str>),
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub dest: DestName,
    pub key: String,
    pub arguments: FieldTable,
}

/// What makes a binding unique on its source exchange (RabbitMQ's rule: destination, key and
/// arguments), hashable: the arguments as their wire encoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BindingKey {
    pub dest: DestName,
    pub key: String,
    pub arguments: Box<[u8]>,
}

impl BindingKey {
    pub fn new(dest: DestName, key: &str, arguments: &FieldTable) -> BindingKey {
        let mut encoded = Vec::new();
        crate::protocol::table::encode(arguments, &mut encoded);
        BindingKey {
            dest,
            key: key.to_string(),
            arguments: encoded.into(),
        }
    }
}

/// A compiled router; cheap to clone (persistent maps), which is how a routing snapshot is
/// made.
#[derive(Debug, Clone)]
pub enum Router {
    Direct(Direct),
    Fanout(Fanout),
    Topic(Topic),
    Headers(Headers),
}

impl Router {
    pub fn new(kind: ExchangeKind) -> Self {
        match kind {
            ExchangeKind::Direct => Router::Direct(Direct::default()),
            ExchangeKind::Fanout => Router::Fanout(Fanout::default()),
            ExchangeKind::Topic => Router::Topic(Topic::default()),
            ExchangeKind::Headers => Router::Headers(Headers::default()),
        }
    }

    pub fn bind(&mut self, key: &str, args: &FieldTable, id: BindingId, dest: Dest) {
        match self {
            Router::Direct(r) => r.bind(key, id, dest),
            Router::Fanout(r) => r.bind(id, dest),
            Router::Topic(r) => r.bind(key, id, dest),
            Router::Headers(r) => r.bind(args, id, dest),
        }
    }

    pub fn unbind(&mut self, key: &str, id: BindingId) {
        match self {
            Router::Direct(r) => r.unbind(key, id),
            Router::Fanout(r) => r.unbind(id),
            Router::Topic(r) => r.unbind(key, id),
            Router::Headers(r) => r.unbind(id),
        }
    }

    pub fn needs_headers(&self) -> bool {
        matches!(self, Router::Headers(_))
    }

    pub fn route<'a>(
        &'a self,
        routing_key: &[u8],
        headers: Option<&FieldTable>,
        out: &mut Vec<&'a Dest>,
    ) {
        match self {
            Router::Direct(r) => r.route(routing_key, out),
            Router::Fanout(r) => r.route(out),
            Router::Topic(r) => r.route(routing_key, out),
            Router::Headers(r) => r.route(headers, out),
        }
    }
}

/// An exchange as publishers see it in the routing snapshot.
#[derive(Debug, Clone)]
pub struct ExchangeRoute {
    pub internal: bool,
    pub router: Router,
}
