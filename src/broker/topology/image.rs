//! A vhost's topology as one plain value (the metadata group's snapshot holds one per
//! vhost), and installing one in place of what a node has: the changes that take its
//! routers and queues from the one to the other, as if the entries between had applied.
//!
//! Invariant: installing the image of a topology gives back an equal topology (same
//! exchanges, queue records with their ids, bindings with their router ids, and counters),
//! and the changes name every difference once: what only the old one had is removed before
//! what only the new one has is added, bindings last, so that a binding's destination is
//! there when it is bound.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Change, Changes, QueueRecord, Topology};
use crate::broker::exchange::{BindingKey, ExchangeDef};
use crate::broker::routing::BindingId;
use crate::protocol::FieldTable;
use crate::store::Op;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    exchanges: Vec<ExchangeDef>,
    queues: Vec<QueueRecord>,
    /// (source, key, router id, arguments).
    bindings: Vec<(Arc<str>, BindingKey, BindingId, FieldTable)>,
    next_queue_id: u64,
    next_binding: BindingId,
}

type Bindings = HashMap<(Arc<str>, BindingKey), (BindingId, FieldTable)>;

/// The same queue, its members aside (those change in place).
fn same_queue(a: &QueueRecord, b: &QueueRecord) -> bool {
    let group = |q: &QueueRecord| q.quorum.as_ref().map(|p| p.group);
    a.id == b.id
        && group(a) == group(b)
        && QueueRecord {
            quorum: None,
            ..a.clone()
        } == QueueRecord {
            quorum: None,
            ..b.clone()
        }
}

impl Topology {
    /// Everything, sorted (so that equal topologies give equal images).
    pub fn image(&self) -> Image {
        let mut exchanges: Vec<ExchangeDef> = self.exchanges.values().cloned().collect();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        let mut queues: Vec<QueueRecord> = self.queues.values().cloned().collect();
        queues.sort_by_key(|q| q.id);
        let mut bindings: Vec<_> = self
            .bindings
            .iter()
            .flat_map(|(source, list)| {
                list.iter()
                    .map(|(key, (id, args))| (source.clone(), key.clone(), *id, args.clone()))
            })
            .collect();
        bindings.sort_by_key(|b| b.2);
        Image {
            exchanges,
            queues,
            bindings,
            next_queue_id: self.next_queue_id,
            next_binding: self.next_binding,
        }
    }

    /// Become `image`; the changes from what was here before.
    pub fn install(&mut self, image: Image) -> Changes {
        let mut ch = Changes::default();
        let old_bindings = self.binding_map();
        let new_bindings: Bindings = image
            .bindings
            .into_iter()
            .map(|(source, key, id, args)| ((source, key), (id, args)))
            .collect();
        let new_exchanges: HashMap<Arc<str>, ExchangeDef> = image
            .exchanges
            .into_iter()
            .map(|x| (x.name.clone(), x))
            .collect();
        let new_queues: HashMap<Arc<str>, QueueRecord> = image
            .queues
            .into_iter()
            .map(|q| (q.name.clone(), q))
            .collect();
        // An exchange made anew gets a new router: every binding from it is bound again.
        let remade: HashSet<Arc<str>> = self
            .exchanges
            .iter()
            .filter(|(name, def)| new_exchanges.get(*name) != Some(*def))
            .map(|(name, _)| name.clone())
            .collect();
        let same = |k: &(Arc<str>, BindingKey), v: &(BindingId, FieldTable)| {
            !remade.contains(&k.0) && new_bindings.get(k).is_some_and(|n| n.0 == v.0)
        };
        for (k, v) in &old_bindings {
            if !same(k, v) && !remade.contains(&k.0) {
                ch.list.push(Change::Unbound {
                    source: k.0.clone(),
                    key: k.1.clone(),
                    id: v.0,
                });
            }
        }
        for (name, q) in &self.queues {
            if new_queues.get(name).is_none_or(|n| !same_queue(q, n)) {
                ch.list.push(Change::QueueRemoved(name.clone()));
            }
        }
        for name in &remade {
            ch.list.push(Change::ExchangeRemoved(name.clone()));
        }
        for (name, x) in &new_exchanges {
            if self.exchanges.get(name) != Some(x) {
                ch.list.push(Change::ExchangeAdded(x.clone()));
            }
        }
        for (name, q) in &new_queues {
            match self.queues.get(name).filter(|o| same_queue(o, q)) {
                None => {
                    if q.stored() {
                        ch.ops.push(Op::PutQueue(self.stored_queue(q)));
                    }
                    ch.list.push(Change::QueueAdded(q.clone()));
                }
                Some(old) => {
                    if let Some(before) =
                        old.quorum.clone().filter(|b| Some(b) != q.quorum.as_ref())
                    {
                        ch.list.push(Change::QueueMembers {
                            queue: q.clone(),
                            before,
                        });
                    }
                }
            }
        }
        for (k, v) in &new_bindings {
            let kept = old_bindings.get(k).is_some_and(|o| same(k, o));
            if !kept {
                ch.list.push(Change::Bound {
                    source: k.0.clone(),
                    key: k.1.clone(),
                    arguments: v.1.clone(),
                    id: v.0,
                });
            }
        }
        self.exchanges = new_exchanges;
        self.queues = new_queues;
        self.bindings = HashMap::new();
        self.by_dest = HashMap::new();
        for ((source, key), (id, args)) in new_bindings {
            self.by_dest
                .entry(key.dest.clone())
                .or_default()
                .insert((source.clone(), key.clone()));
            self.bindings
                .entry(source)
                .or_default()
                .insert(key, (id, args));
        }
        self.next_queue_id = image.next_queue_id;
        self.next_binding = image.next_binding;
        ch
    }

    fn binding_map(&self) -> Bindings {
        self.bindings
            .iter()
            .flat_map(|(source, list)| {
                list.iter()
                    .map(|(key, v)| ((source.clone(), key.clone()), v.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
