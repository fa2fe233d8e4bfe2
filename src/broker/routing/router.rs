//! One compiled router per exchange type behind one enum, and the exchange as publishers
//! see it in the routing snapshot.

use super::{BindingId, Dest, direct::Direct, fanout::Fanout, headers::Headers, topic::Topic};
use crate::broker::exchange::ExchangeKind;
use crate::protocol::FieldTable;

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
