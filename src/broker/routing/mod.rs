//! Routing: each exchange type compiles its bindings into an immutable matcher that publishers
//! read without locks (the vhost swaps in a new one on every topology change).

pub mod direct;
pub mod fanout;
pub mod headers;
pub mod topic;

use std::collections::HashMap;
use std::sync::Arc;

use crate::broker::exchange::ExchangeRoute;
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

/// The immutable view publishers route with.
#[derive(Default)]
pub struct Routes {
    pub(crate) exchanges: HashMap<Arc<str>, Arc<ExchangeRoute>>,
    pub(crate) queues: Arc<HashMap<Arc<str>, QueueHandle>>,
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
        let mut visited: Vec<&str> = vec![exchange];
        let mut pending: Vec<&str> = vec![exchange];
        let mut dests = Vec::new();
        // Queues already in `out`, by id, once there are too many to compare one by one (a
        // fanout to 100,000 queues must not cost 10^10 comparisons per publish).
        let mut seen: Option<std::collections::HashSet<u64>> = None;
        let mut visited_set: Option<std::collections::HashSet<&str>> = None;
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
                        let new = match &mut seen {
                            Some(set) => set.insert(q.id),
                            None => !out.iter().any(|o| o.id == q.id),
                        };
                        if new {
                            out.push(q.clone());
                            if seen.is_none() && out.len() > 32 {
                                seen = Some(out.iter().map(|o| o.id).collect());
                            }
                        }
                    }
                    Dest::Exchange(next) => {
                        let new = match &mut visited_set {
                            Some(set) => set.insert(&**next),
                            None => !visited.contains(&&**next),
                        };
                        if new {
                            visited.push(next);
                            pending.push(next);
                            if visited_set.is_none() && visited.len() > 32 {
                                visited_set = Some(visited.iter().copied().collect());
                            }
                        }
                    }
                }
            }
        }
    }
}
