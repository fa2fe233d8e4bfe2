//! Exchange definitions and bindings by name, as the topology keeps them (their compiled
//! routers are `routing`'s).

use std::sync::Arc;

use crate::protocol::FieldTable;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExchangeDef {
    pub name: Arc<str>,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// The destination of a binding, by name (the topology's view; `Dest` is the router's).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
