//! Bindings kept in two indexes (by source, by destination), and the removals that cascade
//! through them: an exchange's own bindings and those to it, then auto-delete exchanges left
//! without bindings.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Change, Changes, Topology};
use crate::broker::exchange::{Binding, BindingKey, DestName};
use crate::protocol::FieldTable;
use crate::store::{Op, StoredBinding};

impl Topology {
    /// Add a binding from an existing exchange; false if it was there already (or its
    /// destination is gone).
    pub(super) fn add_binding(
        &mut self,
        source: &Arc<str>,
        key: BindingKey,
        arguments: FieldTable,
        ch: &mut Changes,
    ) -> bool {
        let exists = self
            .bindings
            .get(source)
            .is_some_and(|b| b.contains_key(&key));
        let dest_exists = match &key.dest {
            DestName::Queue(q) => self.queues.contains_key(q),
            DestName::Exchange(_) => true,
        };
        if exists || !dest_exists || !self.exchanges.contains_key(source) {
            return false;
        }
        self.next_binding += 1;
        let id = self.next_binding;
        ch.list.push(Change::Bound {
            source: source.clone(),
            key: key.clone(),
            arguments: arguments.clone(),
            id,
        });
        self.by_dest
            .entry(key.dest.clone())
            .or_default()
            .insert((source.clone(), key.clone()));
        self.bindings
            .entry(source.clone())
            .or_default()
            .insert(key, (id, arguments));
        true
    }

    /// Remove one binding (and its store row); false if there was none.
    pub(super) fn remove_binding(
        &mut self,
        source: &Arc<str>,
        key: &BindingKey,
        ch: &mut Changes,
    ) -> bool {
        let Some(list) = self.bindings.get_mut(source) else {
            return false;
        };
        let Some((id, arguments)) = list.remove(key) else {
            return false;
        };
        if list.is_empty() {
            self.bindings.remove(source);
        }
        if let Some(set) = self.by_dest.get_mut(&key.dest) {
            set.remove(&(source.clone(), key.clone()));
            if set.is_empty() {
                self.by_dest.remove(&key.dest);
            }
        }
        let binding = Binding {
            dest: key.dest.clone(),
            key: key.key.clone(),
            arguments,
        };
        ch.ops
            .push(Op::DeleteBinding(self.stored_binding(source, &binding)));
        ch.list.push(Change::Unbound {
            source: source.clone(),
            key: key.clone(),
            id,
        });
        true
    }

    pub(super) fn has_bindings(&self, source: &str) -> bool {
        self.bindings.get(source).is_some_and(|b| !b.is_empty())
    }

    pub(super) fn stored_binding(&self, source: &str, b: &Binding) -> StoredBinding {
        let (to_queue, destination) = match &b.dest {
            DestName::Queue(q) => (true, q.to_string()),
            DestName::Exchange(x) => (false, x.to_string()),
        };
        StoredBinding {
            vhost: self.vhost.to_string(),
            source: source.to_string(),
            to_queue,
            destination,
            routing_key: b.key.clone(),
            arguments: b.arguments.clone(),
        }
    }

    /// Remove an exchange, its bindings, and bindings to it (which may auto-delete others).
    pub(super) fn remove_exchange(&mut self, name: &str, ch: &mut Changes) {
        let Some((key, def)) = self.exchanges.remove_entry(name) else {
            return;
        };
        let own: Vec<BindingKey> = self
            .bindings
            .get(&key)
            .map(|b| b.keys().cloned().collect())
            .unwrap_or_default();
        for b in own {
            self.remove_binding(&key, &b, ch);
        }
        ch.list.push(Change::ExchangeRemoved(key.clone()));
        if def.durable {
            ch.ops.push(Op::DeleteExchange {
                vhost: self.vhost.to_string(),
                name: key.to_string(),
            });
        }
        self.drop_bindings_to(&DestName::Exchange(key), ch);
    }

    /// Remove every binding to `dest`, through the destination index.
    pub(super) fn drop_bindings_to(&mut self, dest: &DestName, ch: &mut Changes) {
        let Some(to) = self.by_dest.remove(dest) else {
            return;
        };
        let mut sources = HashSet::new();
        for (source, key) in to {
            if self.remove_binding(&source, &key, ch) {
                sources.insert(source);
            }
        }
        for source in sources {
            self.maybe_auto_delete_exchange(&source, ch);
        }
    }

    /// Auto-delete exchanges go when their last binding (as source) goes.
    pub(super) fn maybe_auto_delete_exchange(&mut self, name: &str, ch: &mut Changes) {
        let unused = !self.has_bindings(name);
        if unused && self.exchanges.get(name).is_some_and(|x| x.auto_delete) {
            self.remove_exchange(name, ch);
        }
    }
}
