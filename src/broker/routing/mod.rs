//! Routing: each exchange type compiles its bindings into an immutable matcher that publishers
//! read without locks (the vhost swaps in a new one on every topology change).

pub mod direct;
pub mod fanout;
pub mod headers;
mod router;
pub mod topic;

pub use router::{ExchangeRoute, Router};

use std::sync::Arc;

use crate::broker::message::Message;
use crate::broker::queue::QueueHandle;
use crate::protocol::FieldTable;

/// Where a binding sends a message: a queue (resolved to its handle when the matcher is built,
/// so publishing needs no lookup) or another exchange (exchange-to-exchange bindings).
#[derive(Clone, Debug)]
pub enum Dest {
    Queue(QueueHandle),
    Exchange(Arc<str>),
}

/// A binding's identity inside a router (given by the vhost, unique within it), so that an
/// unbind removes exactly that binding.
pub type BindingId = u64;

/// The persistent map the routers and the snapshot use: imbl's, with foldhash (fast on the
/// short keys routing looks up, and seeded per process, so clients cannot choose collisions).
pub type Map<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// The destinations bound at one place of a router (a topic node, a direct key, a fanout):
/// a vector while there are few, the common case, so routing walks a slice; a persistent map
/// past `Dests::FEW`, so that a new snapshot of a place with 100,000 bindings does not copy
/// them all.
#[derive(Debug, Clone)]
pub enum Dests {
    Few(Vec<(BindingId, Dest)>),
    Many(imbl::OrdMap<BindingId, Dest>),
}

impl Default for Dests {
    fn default() -> Self {
        Dests::Few(Vec::new())
    }
}

impl Dests {
    const FEW: usize = 32;

    pub fn insert(&mut self, id: BindingId, dest: Dest) {
        match self {
            Dests::Few(v) if v.len() < Self::FEW => v.push((id, dest)),
            Dests::Few(v) => {
                let mut m: imbl::OrdMap<BindingId, Dest> = v.drain(..).collect();
                m.insert(id, dest);
                *self = Dests::Many(m);
            }
            Dests::Many(m) => {
                m.insert(id, dest);
            }
        }
    }

    pub fn remove(&mut self, id: BindingId) {
        match self {
            Dests::Few(v) => v.retain(|(i, _)| *i != id),
            Dests::Many(m) => {
                m.remove(&id);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Dests::Few(v) => v.is_empty(),
            Dests::Many(m) => m.is_empty(),
        }
    }

    pub fn extend_into<'a>(&'a self, out: &mut Vec<&'a Dest>) {
        match self {
            Dests::Few(v) => out.extend(v.iter().map(|(_, d)| d)),
            Dests::Many(m) => out.extend(m.values()),
        }
    }
}

/// Keys already met while routing one message: a few in a vector (no allocation beyond it,
/// the common case), many in a set, so that reaching 100,000 places (a fanout to as many
/// queues, a topic pattern of many `#`) costs no more than linear time.
pub(crate) struct Seen<K> {
    few: Vec<K>,
    many: Option<std::collections::HashSet<K>>,
}

impl<K> Default for Seen<K> {
    fn default() -> Self {
        Seen {
            few: Vec::new(),
            many: None,
        }
    }
}

impl<K: Eq + std::hash::Hash + Copy> Seen<K> {
    const FEW: usize = 16;

    /// True the first time `k` is met.
    pub(crate) fn first(&mut self, k: K) -> bool {
        if let Some(set) = &mut self.many {
            return set.insert(k);
        }
        if self.few.contains(&k) {
            return false;
        }
        if self.few.len() < Self::FEW {
            self.few.push(k);
        } else {
            let mut set: std::collections::HashSet<K> = self.few.drain(..).collect();
            set.insert(k);
            self.many = Some(set);
        }
        true
    }
}

/// The immutable view publishers route with. Persistent maps: a topology change makes a new
/// snapshot in time proportional to what changed, not to how much there is (100,000 queues
/// or bindings cost no more per declare than ten).
#[derive(Default)]
pub struct Routes {
    pub(crate) exchanges: Map<Arc<str>, Arc<ExchangeRoute>>,
    pub(crate) queues: Map<Arc<str>, QueueHandle>,
}

impl Routes {
    pub fn exchange(&self, name: &str) -> Option<&Arc<ExchangeRoute>> {
        self.exchanges.get(name)
    }

    /// Every queue `msg` reaches from `exchange` (which must exist), each once, following
    /// exchange-to-exchange bindings (cycles are cut).
    pub fn route(&self, exchange: &str, msg: &Message, out: &mut Vec<QueueHandle>) {
        if exchange.is_empty() {
            if let Ok(key) = std::str::from_utf8(&msg.routing_key)
                && let Some(q) = self.queues.get(key)
            {
                out.push(q.clone());
            }
            return;
        }
        let mut headers: Option<Option<FieldTable>> = None;
        let mut visited: Seen<&str> = Seen::default();
        visited.first(exchange);
        let mut pending: Vec<&str> = vec![exchange];
        let mut dests = Vec::new();
        let mut queued: Seen<u64> = Seen::default();
        for o in out.iter() {
            queued.first(o.id);
        }
        while let Some(name) = pending.pop() {
            let Some(x) = self.exchanges.get(name) else {
                continue;
            };
            if x.router.needs_headers() && headers.is_none() {
                headers = Some(msg.headers());
            }
            dests.clear();
            x.router.route(
                &msg.routing_key,
                headers.as_ref().and_then(|h| h.as_ref()),
                &mut dests,
            );
            for d in &dests {
                match d {
                    Dest::Queue(q) => {
                        if queued.first(q.id) {
                            out.push(q.clone());
                        }
                    }
                    Dest::Exchange(next) => {
                        if visited.first(&**next) {
                            pending.push(next);
                        }
                    }
                }
            }
        }
    }
}
