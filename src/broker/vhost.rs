//! A virtual host: its exchanges, queues and bindings. Declares, binds and deletes take one
//! std mutex (never held across an await; the critical sections do no I/O), then publish a new
//! immutable routing snapshot; publishers only ever read the current snapshot, without a lock.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use arc_swap::ArcSwap;
use tokio::sync::oneshot;

use super::exchange::{
    Binding, BindingKey, DestName, ExchangeDef, ExchangeKind, ExchangeRoute, Router,
};
use super::ids::ConnId;
use super::memory::MemoryMonitor;
use super::queue::classic::{OnDeleted, Recovered};
use super::queue::{self, QueueHandle, QueueShared, QueueSpec};
use super::routing::{BindingId, Dest, Map, Routes};
use crate::error::{Error, code};
use crate::protocol::{AMQPValue, FieldTable};
use crate::store::{Op, Store, StoredBinding, StoredExchange, StoredQueue};

/// Queue arguments whose values must match on redeclare, as RabbitMQ checks them.
const EQUIVALENT_QUEUE_ARGS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
];

#[derive(Debug, Clone, Default)]
pub struct ExchangeDecl {
    pub name: String,
    pub kind: String,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, Default)]
pub struct QueueDecl {
    pub name: String,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// Every operation costs in proportion to what it changes: bindings are indexed by source
/// and by destination, routers are kept compiled and changed in place (persistent maps, so a
/// snapshot is a cheap clone), and the queue map is persistent too.
#[derive(Default)]
struct Topology {
    exchanges: HashMap<Arc<str>, ExchangeDef>,
    /// The compiled router of every exchange in `exchanges`.
    routers: HashMap<Arc<str>, ExchangeRoute>,
    queues: Map<Arc<str>, QueueHandle>,
    /// Bindings by source exchange, each with its router id and arguments.
    bindings: HashMap<Arc<str>, HashMap<BindingKey, (BindingId, FieldTable)>>,
    /// The same bindings by destination (source, key), for removing everything bound to a
    /// queue or exchange that goes.
    by_dest: HashMap<DestName, HashSet<(Arc<str>, BindingKey)>>,
    next_queue_id: u64,
    next_binding: BindingId,
}

impl Topology {
    fn add_exchange(&mut self, def: ExchangeDef) {
        let route = ExchangeRoute {
            internal: def.internal,
            router: Router::new(def.kind),
        };
        self.routers.insert(def.name.clone(), route);
        self.exchanges.insert(def.name.clone(), def);
    }

    fn resolve(&self, dest: &DestName) -> Option<Dest> {
        match dest {
            DestName::Queue(q) => self.queues.get(q).map(|h| Dest::Queue(h.clone())),
            DestName::Exchange(x) => Some(Dest::Exchange(x.clone())),
        }
    }

    /// Add a binding from an existing exchange; false if it was there already (or its
    /// destination is gone).
    fn add_binding(&mut self, source: &Arc<str>, key: BindingKey, arguments: FieldTable) -> bool {
        let exists = self
            .bindings
            .get(source)
            .is_some_and(|b| b.contains_key(&key));
        let (Some(dest), false) = (self.resolve(&key.dest), exists) else {
            return false;
        };
        let Some(route) = self.routers.get_mut(source) else {
            return false;
        };
        self.next_binding += 1;
        let id = self.next_binding;
        route.router.bind(&key.key, &arguments, id, dest);
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

    /// Remove one binding; returns it (for the store) if it existed.
    fn remove_binding(&mut self, source: &Arc<str>, key: &BindingKey) -> Option<Binding> {
        let list = self.bindings.get_mut(source)?;
        let (id, arguments) = list.remove(key)?;
        if list.is_empty() {
            self.bindings.remove(source);
        }
        if let Some(r) = self.routers.get_mut(source) {
            r.router.unbind(&key.key, id);
        }
        if let Some(set) = self.by_dest.get_mut(&key.dest) {
            set.remove(&(source.clone(), key.clone()));
            if set.is_empty() {
                self.by_dest.remove(&key.dest);
            }
        }
        Some(Binding {
            dest: key.dest.clone(),
            key: key.key.clone(),
            arguments,
        })
    }

    fn has_bindings(&self, source: &str) -> bool {
        self.bindings.get(source).is_some_and(|b| !b.is_empty())
    }
}

/// Per-queue settings from the config.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    pub inbox: usize,
    pub memory_budget: usize,
    pub flow_messages: usize,
}

pub struct VHost {
    pub name: String,
    topo: Mutex<Topology>,
    routes: ArcSwap<Routes>,
    weak: Weak<VHost>,
    settings: QueueSettings,
    memory: Arc<MemoryMonitor>,
    store: Option<Arc<Store>>,
}

/// A topology change on its way to disk: declare-ok and friends wait for it, so that an
/// acknowledged durable declaration survives a crash.
#[must_use]
pub struct Written(Option<oneshot::Receiver<bool>>);

impl Written {
    pub async fn wait(self) -> Result<(), Error> {
        match self.0 {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(true) => Ok(()),
                _ => Err(Error::connection(
                    code::INTERNAL_ERROR,
                    "store write failed",
                )),
            },
        }
    }
}

fn inequivalent(what: &str, arg: &str, name: &str, vhost: &str, got: &str, cur: &str) -> Error {
    Error::precondition(format!(
        "inequivalent arg '{arg}' for {what} '{name}' in vhost '{vhost}': received '{got}' but current is '{cur}'"
    ))
}

fn default_exchange_refused() -> Error {
    Error::access_refused("operation not permitted on the default exchange")
}

impl VHost {
    pub fn new(
        name: &str,
        settings: QueueSettings,
        memory: Arc<MemoryMonitor>,
        store: Option<Arc<Store>>,
    ) -> Arc<VHost> {
        let vhost = Arc::new_cyclic(|weak| VHost {
            name: name.to_string(),
            topo: Mutex::new(Topology::default()),
            routes: ArcSwap::from_pointee(Routes::default()),
            weak: weak.clone(),
            settings,
            memory,
            store,
        });
        let builtin = [
            ("", ExchangeKind::Direct),
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ];
        {
            let mut t = vhost.lock();
            for (n, kind) in builtin {
                t.add_exchange(ExchangeDef {
                    name: n.into(),
                    kind,
                    durable: true,
                    auto_delete: false,
                    internal: false,
                    arguments: FieldTable::default(),
                });
            }
            let names: Vec<Arc<str>> = t.exchanges.keys().cloned().collect();
            vhost.publish(&t, &names, true);
        }
        vhost
    }

    fn lock(&self) -> MutexGuard<'_, Topology> {
        // A panic elsewhere must not take routing down with it: the topology stays consistent
        // because every mutation below completes before it publishes.
        self.topo.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `ops` for the store (called with the topology lock held, so they are written in
    /// the order the changes were made).
    fn write(&self, ops: Vec<Op>) -> Written {
        match &self.store {
            Some(store) if !ops.is_empty() => {
                let (tx, rx) = oneshot::channel();
                store.submit(
                    ops,
                    true,
                    Some(Box::new(move |ok| {
                        let _ = tx.send(ok);
                    })),
                );
                Written(Some(rx))
            }
            _ => Written(None),
        }
    }

    fn stored_binding(&self, source: &str, b: &Binding) -> StoredBinding {
        let (to_queue, destination) = match &b.dest {
            DestName::Queue(q) => (true, q.to_string()),
            DestName::Exchange(x) => (false, x.to_string()),
        };
        StoredBinding {
            vhost: self.name.clone(),
            source: source.to_string(),
            to_queue,
            destination,
            routing_key: b.key.clone(),
            arguments: b.arguments.clone(),
        }
    }

    /// What a queue calls as it is deleted: forget it here.
    fn on_deleted(&self) -> OnDeleted {
        let weak = self.weak.clone();
        Arc::new(move |q: &QueueShared| {
            if let Some(v) = weak.upgrade() {
                v.remove_queue(q);
            }
        })
    }

    /// Rebuild durable topology and queues read back from the store, before any client.
    pub fn restore(
        &self,
        exchanges: Vec<StoredExchange>,
        queues: Vec<(StoredQueue, Recovered)>,
        bindings: Vec<StoredBinding>,
    ) {
        let mut t = self.lock();
        for x in exchanges {
            let Some(kind) = ExchangeKind::parse(&x.kind) else {
                tracing::warn!(
                    exchange = x.name,
                    kind = x.kind,
                    "skipping stored exchange of unknown type"
                );
                continue;
            };
            t.add_exchange(ExchangeDef {
                name: x.name.as_str().into(),
                kind,
                durable: true,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments,
            });
        }
        for (q, messages) in queues {
            t.next_queue_id = t.next_queue_id.max(q.id);
            tracing::info!(
                vhost = self.name,
                queue = q.name,
                messages = messages.len(),
                "recovered queue"
            );
            let name: Arc<str> = q.name.as_str().into();
            let h = queue::spawn(QueueSpec {
                name: name.clone(),
                id: q.id,
                durable: true,
                exclusive_owner: None,
                auto_delete: q.auto_delete,
                arguments: q.arguments,
                inbox: self.settings.inbox,
                memory: self.memory.clone(),
                store: self.store.clone(),
                initial: messages,
                vhost: self.name.as_str().into(),
                memory_budget: self.settings.memory_budget,
                flow_messages: self.settings.flow_messages,
                on_deleted: self.on_deleted(),
            });
            t.queues.insert(name, h);
        }
        for b in bindings {
            let dest = if b.to_queue {
                DestName::Queue(b.destination.as_str().into())
            } else {
                DestName::Exchange(b.destination.as_str().into())
            };
            let source: Arc<str> = b.source.as_str().into();
            let key = BindingKey::new(dest, &b.routing_key, &b.arguments);
            if !t.add_binding(&source, key, b.arguments) {
                tracing::warn!(
                    source = b.source,
                    destination = b.destination,
                    "stored binding without its exchange or destination ignored"
                );
            }
        }
        let names: Vec<Arc<str>> = t.exchanges.keys().cloned().collect();
        self.publish(&t, &names, true);
    }

    /// The routing snapshot; cheap, lock-free.
    pub fn routes(&self) -> arc_swap::Guard<Arc<Routes>> {
        self.routes.load()
    }

    fn no_exchange(&self, name: &str) -> Error {
        Error::not_found(format!("no exchange '{name}' in vhost '{}'", self.name))
    }

    fn no_queue(&self, name: &str) -> Error {
        Error::not_found(format!("no queue '{name}' in vhost '{}'", self.name))
    }

    fn locked(&self, name: &str) -> Error {
        Error::channel(
            code::RESOURCE_LOCKED,
            format!(
                "cannot obtain exclusive access to locked queue '{name}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                self.name
            ),
        )
    }

    /// Swap in a new snapshot with the routers of `changed` exchanges (and the queue map):
    /// clones of persistent maps, so this costs what changed.
    fn publish(&self, t: &Topology, changed: &[Arc<str>], queues_changed: bool) {
        let old = self.routes.load();
        let mut exchanges = old.exchanges.clone();
        let mut done: HashSet<&Arc<str>> = HashSet::new();
        for name in changed {
            if !done.insert(name) {
                continue;
            }
            match t.routers.get(name) {
                Some(route) => {
                    exchanges.insert(name.clone(), Arc::new(route.clone()));
                }
                None => {
                    exchanges.remove(name);
                }
            }
        }
        let queues = if queues_changed {
            t.queues.clone()
        } else {
            old.queues.clone()
        };
        self.routes.store(Arc::new(Routes { exchanges, queues }));
    }

    pub fn declare_exchange(&self, d: &ExchangeDecl) -> Result<Written, Error> {
        if d.name.is_empty() && !d.passive {
            return Err(default_exchange_refused());
        }
        let kind = if d.passive {
            None
        } else {
            Some(ExchangeKind::parse(&d.kind).ok_or_else(|| {
                Error::connection(
                    code::COMMAND_INVALID,
                    format!("unknown exchange type '{}'", d.kind),
                )
            })?)
        };
        let mut t = self.lock();
        if let Some(x) = t.exchanges.get(d.name.as_str()) {
            let Some(kind) = kind else {
                return Ok(Written(None));
            };
            let check = |arg: &str, got: String, cur: String| {
                if got != cur {
                    Err(inequivalent(
                        "exchange", arg, &d.name, &self.name, &got, &cur,
                    ))
                } else {
                    Ok(())
                }
            };
            check("type", kind.as_str().into(), x.kind.as_str().into())?;
            check("durable", d.durable.to_string(), x.durable.to_string())?;
            check(
                "auto_delete",
                d.auto_delete.to_string(),
                x.auto_delete.to_string(),
            )?;
            check("internal", d.internal.to_string(), x.internal.to_string())?;
            return Ok(Written(None));
        }
        let Some(kind) = kind else {
            return Err(self.no_exchange(&d.name));
        };
        if d.name.starts_with("amq.") {
            return Err(Error::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        let name: Arc<str> = d.name.as_str().into();
        t.add_exchange(ExchangeDef {
            name: name.clone(),
            kind,
            durable: d.durable,
            auto_delete: d.auto_delete,
            internal: d.internal,
            arguments: d.arguments.clone(),
        });
        self.publish(&t, &[name], false);
        let mut ops = Vec::new();
        if d.durable {
            ops.push(Op::PutExchange(StoredExchange {
                vhost: self.name.clone(),
                name: d.name.clone(),
                kind: kind.as_str().into(),
                auto_delete: d.auto_delete,
                internal: d.internal,
                arguments: d.arguments.clone(),
            }));
        }
        Ok(self.write(ops))
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<Written, Error> {
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(Error::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let mut t = self.lock();
        if !t.exchanges.contains_key(name) {
            return Ok(Written(None));
        }
        if if_unused && t.has_bindings(name) {
            return Err(Error::precondition(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        let mut changed = Vec::new();
        let mut removed = Removed::default();
        remove_exchange(&mut t, name, &mut changed, &mut removed);
        self.publish(&t, &changed, false);
        let ops = self.removal_ops(removed);
        Ok(self.write(ops))
    }

    fn removal_ops(&self, removed: Removed) -> Vec<Op> {
        if self.store.is_none() {
            return Vec::new();
        }
        let mut ops: Vec<Op> = removed
            .bindings
            .iter()
            .map(|(source, b)| Op::DeleteBinding(self.stored_binding(source, b)))
            .collect();
        ops.extend(
            removed
                .exchanges
                .into_iter()
                .map(|name| Op::DeleteExchange {
                    vhost: self.name.clone(),
                    name: name.to_string(),
                }),
        );
        ops
    }

    /// Is this destination durable (so a binding to it from a durable exchange is stored)?
    fn durable_dest(t: &Topology, dest: &DestName) -> bool {
        match dest {
            DestName::Queue(q) => t.queues.get(q).is_some_and(|h| h.store.is_some()),
            DestName::Exchange(x) => t.exchanges.get(x).is_some_and(|x| x.durable),
        }
    }

    fn check_dest(&self, t: &Topology, dest: &DestName, conn: ConnId) -> Result<(), Error> {
        match dest {
            DestName::Queue(q) => {
                let h = t.queues.get(q).ok_or_else(|| self.no_queue(q))?;
                if h.exclusive_owner.is_some_and(|o| o != conn) {
                    return Err(self.locked(q));
                }
            }
            DestName::Exchange(x) if x.is_empty() => return Err(default_exchange_refused()),
            DestName::Exchange(x) => {
                if !t.exchanges.contains_key(x) {
                    return Err(self.no_exchange(x));
                }
            }
        }
        Ok(())
    }

    pub fn bind(
        &self,
        source: &str,
        dest: DestName,
        key: &str,
        arguments: &FieldTable,
        conn: ConnId,
    ) -> Result<Written, Error> {
        if source.is_empty() {
            return Err(default_exchange_refused());
        }
        let mut t = self.lock();
        // RabbitMQ reports a missing destination before a missing source.
        self.check_dest(&t, &dest, conn)?;
        let Some((source, _)) = t.exchanges.get_key_value(source) else {
            return Err(self.no_exchange(source));
        };
        let source = source.clone();
        let durable = t.exchanges[&source].durable && Self::durable_dest(&t, &dest);
        let binding = Binding {
            dest: dest.clone(),
            key: key.to_string(),
            arguments: arguments.clone(),
        };
        if !t.add_binding(
            &source,
            BindingKey::new(dest, key, arguments),
            arguments.clone(),
        ) {
            return Ok(Written(None));
        }
        let ops = if durable && self.store.is_some() {
            vec![Op::PutBinding(self.stored_binding(&source, &binding))]
        } else {
            Vec::new()
        };
        self.publish(&t, &[source], false);
        Ok(self.write(ops))
    }

    pub fn unbind(
        &self,
        source: &str,
        dest: DestName,
        key: &str,
        arguments: &FieldTable,
        conn: ConnId,
    ) -> Result<Written, Error> {
        if source.is_empty() || dest == DestName::Exchange("".into()) {
            return Err(default_exchange_refused());
        }
        let mut t = self.lock();
        if let DestName::Queue(q) = &dest
            && t.queues
                .get(q)
                .is_some_and(|h| h.exclusive_owner.is_some_and(|o| o != conn))
        {
            return Err(self.locked(q));
        }
        let source: Arc<str> = source.into();
        let key = BindingKey::new(dest, key, arguments);
        let Some(binding) = t.remove_binding(&source, &key) else {
            return Ok(Written(None));
        };
        let mut removed = Removed::default();
        removed.bindings.push((source.clone(), binding));
        let mut changed = vec![source.clone()];
        maybe_auto_delete_exchange(&mut t, &source, &mut changed, &mut removed);
        self.publish(&t, &changed, false);
        let ops = self.removal_ops(removed);
        Ok(self.write(ops))
    }

    /// Declare (or check) a queue; returns its handle.
    pub fn declare_queue(
        &self,
        d: &QueueDecl,
        conn: ConnId,
    ) -> Result<(QueueHandle, Written), Error> {
        let mut t = self.lock();
        if let Some(q) = t.queues.get(d.name.as_str()) {
            if q.exclusive_owner.is_some_and(|o| o != conn) {
                return Err(self.locked(&d.name));
            }
            if d.passive {
                return Ok((q.clone(), Written(None)));
            }
            if q.exclusive_owner.is_some() != d.exclusive {
                return Err(self.locked(&d.name));
            }
            let check = |arg: &str, got: bool, cur: bool| {
                if got != cur {
                    Err(inequivalent(
                        "queue",
                        arg,
                        &d.name,
                        &self.name,
                        &got.to_string(),
                        &cur.to_string(),
                    ))
                } else {
                    Ok(())
                }
            };
            check("durable", d.durable, q.durable)?;
            check("auto_delete", d.auto_delete, q.auto_delete)?;
            for arg in EQUIVALENT_QUEUE_ARGS {
                let got = d.arguments.inner().get(*arg);
                let cur = q.arguments.inner().get(*arg);
                if got != cur {
                    return Err(inequivalent(
                        "queue",
                        arg,
                        &d.name,
                        &self.name,
                        &show(got),
                        &show(cur),
                    ));
                }
            }
            return Ok((q.clone(), Written(None)));
        }
        if d.passive {
            return Err(self.no_queue(&d.name));
        }
        if d.name.starts_with("amq.") {
            return Err(Error::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        Ok(self.create_queue(&mut t, d, conn))
    }

    /// A server-named queue (`amq.gen-…`), as for a declare with an empty name.
    pub fn declare_server_named(&self, d: &QueueDecl, conn: ConnId) -> (QueueHandle, Written) {
        let mut t = self.lock();
        let mut d = d.clone();
        loop {
            d.name = server_name();
            if !t.queues.contains_key(d.name.as_str()) {
                break;
            }
        }
        self.create_queue(&mut t, &d, conn)
    }

    fn create_queue(
        &self,
        t: &mut Topology,
        d: &QueueDecl,
        conn: ConnId,
    ) -> (QueueHandle, Written) {
        t.next_queue_id += 1;
        let name: Arc<str> = d.name.as_str().into();
        // Exclusive queues die with their connection: never durable, whatever the flag says.
        let durable = d.durable && !d.exclusive;
        let h = queue::spawn(QueueSpec {
            name: name.clone(),
            id: t.next_queue_id,
            durable: d.durable,
            exclusive_owner: d.exclusive.then_some(conn),
            auto_delete: d.auto_delete,
            arguments: d.arguments.clone(),
            inbox: self.settings.inbox,
            memory: self.memory.clone(),
            store: if durable { self.store.clone() } else { None },
            initial: Vec::new(),
            vhost: self.name.as_str().into(),
            memory_budget: self.settings.memory_budget,
            flow_messages: self.settings.flow_messages,
            on_deleted: self.on_deleted(),
        });
        t.queues.insert(name, h.clone());
        self.publish(t, &[], true);
        let ops = if durable {
            vec![Op::PutQueue(StoredQueue {
                vhost: self.name.clone(),
                name: d.name.clone(),
                id: h.id,
                auto_delete: d.auto_delete,
                arguments: d.arguments.clone(),
            })]
        } else {
            Vec::new()
        };
        (h, self.write(ops))
    }

    /// Look up a queue for use by `conn` (404 if missing, 405 if exclusive to another).
    pub fn queue(&self, name: &str, conn: ConnId) -> Result<QueueHandle, Error> {
        let t = self.lock();
        let q = t.queues.get(name).ok_or_else(|| self.no_queue(name))?;
        if q.exclusive_owner.is_some_and(|o| o != conn) {
            return Err(self.locked(name));
        }
        Ok(q.clone())
    }

    /// Called by a queue task as it ends: forget the queue and every binding to it.
    pub fn remove_queue(&self, q: &QueueShared) {
        let mut t = self.lock();
        if t.queues.get(&q.name).is_none_or(|h| h.id != q.id) {
            return;
        }
        t.queues.remove(&q.name);
        let mut changed = Vec::new();
        let mut removed = Removed::default();
        drop_bindings_to(
            &mut t,
            &DestName::Queue(q.name.clone()),
            &mut changed,
            &mut removed,
        );
        self.publish(&t, &changed, true);
        let ops = self.removal_ops(removed);
        let _ = self.write(ops);
    }
}

fn show(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".into(),
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        Some(AMQPValue::LongLongInt(n)) => n.to_string(),
        Some(AMQPValue::LongInt(n)) => n.to_string(),
        Some(AMQPValue::LongUInt(n)) => n.to_string(),
        Some(AMQPValue::ShortInt(n)) => n.to_string(),
        Some(AMQPValue::ShortUInt(n)) => n.to_string(),
        Some(AMQPValue::Boolean(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
    }
}

fn server_name() -> String {
    use rand::RngExt;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let tail: String = (0..22)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("amq.gen-{tail}")
}

/// What a removal took with it, for the store.
#[derive(Default)]
struct Removed {
    /// Durable exchanges removed.
    exchanges: Vec<Arc<str>>,
    /// (source, binding) pairs removed.
    bindings: Vec<(Arc<str>, Binding)>,
}

/// Remove an exchange, its bindings, and bindings to it (which may auto-delete others).
fn remove_exchange(
    t: &mut Topology,
    name: &str,
    changed: &mut Vec<Arc<str>>,
    removed: &mut Removed,
) {
    let Some((key, def)) = t.exchanges.remove_entry(name) else {
        return;
    };
    if def.durable {
        removed.exchanges.push(key.clone());
    }
    let own: Vec<BindingKey> = t
        .bindings
        .get(&key)
        .map(|b| b.keys().cloned().collect())
        .unwrap_or_default();
    for b in own {
        if let Some(binding) = t.remove_binding(&key, &b) {
            removed.bindings.push((key.clone(), binding));
        }
    }
    t.routers.remove(&key);
    changed.push(key.clone());
    drop_bindings_to(t, &DestName::Exchange(key), changed, removed);
}

/// Remove every binding to `dest`, through the destination index.
fn drop_bindings_to(
    t: &mut Topology,
    dest: &DestName,
    changed: &mut Vec<Arc<str>>,
    removed: &mut Removed,
) {
    let Some(to) = t.by_dest.remove(dest) else {
        return;
    };
    let mut sources = HashSet::new();
    for (source, key) in to {
        if let Some(binding) = t.remove_binding(&source, &key) {
            removed.bindings.push((source.clone(), binding));
            changed.push(source.clone());
            sources.insert(source);
        }
    }
    for source in sources {
        maybe_auto_delete_exchange(t, &source, changed, removed);
    }
}

/// Auto-delete exchanges go when their last binding (as source) goes.
fn maybe_auto_delete_exchange(
    t: &mut Topology,
    name: &str,
    changed: &mut Vec<Arc<str>>,
    removed: &mut Removed,
) {
    let unused = !t.has_bindings(name);
    if unused && t.exchanges.get(name).is_some_and(|x| x.auto_delete) {
        remove_exchange(t, name, changed, removed);
    }
}
