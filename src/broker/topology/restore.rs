//! Rebuilding a vhost's topology from the store at start.

use std::sync::Arc;

use super::{Changes, QueueRecord, Topology};
use crate::broker::exchange::{BindingKey, DestName, ExchangeDef, ExchangeKind};
use crate::store::{StoredBinding, StoredExchange, StoredQueue};

impl Topology {
    /// Rebuild from the store, before any client: what a restart finds.
    pub fn restore(
        &mut self,
        exchanges: Vec<StoredExchange>,
        queues: Vec<StoredQueue>,
        bindings: Vec<StoredBinding>,
        ch: &mut Changes,
    ) {
        for x in exchanges {
            let Some(kind) = ExchangeKind::parse(&x.kind) else {
                tracing::warn!(
                    exchange = x.name,
                    kind = x.kind,
                    "skipping stored exchange of unknown type"
                );
                continue;
            };
            let def = ExchangeDef {
                name: x.name.as_str().into(),
                kind,
                durable: true,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments,
            };
            self.add_exchange(def, ch);
        }
        for q in queues {
            let record = QueueRecord {
                name: q.name.as_str().into(),
                id: q.id,
                durable: true,
                exclusive_owner: None,
                auto_delete: q.auto_delete,
                arguments: q.arguments,
                // Restored from a single node's store: node 0.
                home: 0,
                quorum: q.group.map(|group| super::Quorum::new(group, vec![0])),
            };
            self.insert_queue(record, ch);
        }
        for b in bindings {
            let dest = if b.to_queue {
                DestName::Queue(b.destination.as_str().into())
            } else {
                DestName::Exchange(b.destination.as_str().into())
            };
            let source: Arc<str> = b.source.as_str().into();
            let key = BindingKey::new(dest, &b.routing_key, &b.arguments);
            if !self.add_binding(&source, key, b.arguments, ch) {
                tracing::warn!(
                    source = b.source,
                    destination = b.destination,
                    "stored binding without its exchange or destination ignored"
                );
            }
        }
        ch.ops.clear();
    }
}
