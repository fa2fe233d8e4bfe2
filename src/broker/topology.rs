//! `Topology`: a vhost's exchanges, queue records and bindings, and the rules for changing
//! them (equivalence → 406, `amq.` → 403, exclusive ownership → 405, missing → 404,
//! auto-delete cascades, exchange-to-exchange bindings), as a pure state machine. `apply`
//! takes a command and returns what changed (for the routing snapshot: routers are compiled
//! by the runtime, which holds the queue handles) and the store rows to write. No locks, no
//! tasks, no I/O: the vhost (single node) or the metadata Raft group (cluster) runs it.
//!
//! Invariants: every binding's source exchange exists and is indexed in `bindings` and, by
//! destination, in `by_dest`; a binding's destination existed when it was made, and every
//! binding to a queue or exchange goes with it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::exchange::{Binding, BindingKey, DestName, ExchangeDef, ExchangeKind};
use serde::{Deserialize, Serialize};

use super::ids::{ConnId, NodeId};
use super::routing::BindingId;
use crate::error::{Error, code};
use crate::protocol::{AMQPValue, FieldTable};
use crate::store::{Op, StoredExchange, StoredQueue};

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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExchangeDecl {
    pub name: String,
    pub kind: String,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueueDecl {
    pub name: String,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// Where a new quorum queue goes, chosen by the declaring node (the topology is pure:
    /// it takes this as given, so every node applies the same placement).
    #[serde(default)]
    pub quorum: Option<Quorum>,
}

/// A quorum queue's placement: its Raft group (a random id, never reused) and the nodes
/// that hold a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quorum {
    pub group: u64,
    pub members: Vec<NodeId>,
}

/// Arguments other queue types take that a quorum queue refuses (RabbitMQ 3.10's list).
const REFUSED_QUORUM_ARGS: &[&str] = &[
    "x-max-priority",
    "x-queue-mode",
    "x-queue-version",
    "x-queue-master-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
];

/// queue.bind / exchange.bind and their unbinds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindDecl {
    pub source: String,
    pub dest: DestName,
    pub key: String,
    pub arguments: FieldTable,
}

/// A queue as the topology knows it (its contents are the queue's own business).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRecord {
    pub name: Arc<str>,
    pub id: u64,
    pub durable: bool,
    pub exclusive_owner: Option<ConnId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// The node whose queue task holds the contents: the declaring connection's (RabbitMQ's
    /// rule for classic queues). A quorum queue's first leader.
    pub home: NodeId,
    /// Set for a quorum queue.
    pub quorum: Option<Quorum>,
}

impl QueueRecord {
    /// Kept in the store: durable and not exclusive (exclusive queues die with their
    /// connection, whatever the durable flag says).
    pub fn stored(&self) -> bool {
        self.durable && self.exclusive_owner.is_none()
    }
}

/// A change to the topology: plain data, so that it can be a metadata log entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Cmd {
    DeclareExchange(ExchangeDecl),
    DeleteExchange {
        name: String,
        if_unused: bool,
    },
    Bind(BindDecl, ConnId),
    Unbind(BindDecl, ConnId),
    DeclareQueue(QueueDecl, ConnId),
    /// A declare without a name: whoever issues the command names it (`amq.gen-…`).
    DeclareServerNamed(QueueDecl, ConnId),
    /// The queue deleted itself (delete, auto-delete, x-expires, exclusive owner gone).
    QueueDeleted {
        name: Arc<str>,
        id: u64,
    },
    /// A node is gone (taken as dead, or restarted): the exclusive queues of its connections
    /// and its transient queues go with it, as in RabbitMQ; its durable queues stay.
    NodeDown {
        node: NodeId,
    },
}

impl Cmd {
    /// A passive declare: it only checks, so any node can answer it from what it applied.
    pub fn is_check(&self) -> bool {
        match self {
            Cmd::DeclareExchange(d) => d.passive,
            Cmd::DeclareQueue(d, _) => d.passive,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Done,
    /// The declared (or found) queue, and whether this declare created it.
    Queue(QueueRecord, bool),
}

/// One change for the routing snapshot, in the order made.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    ExchangeAdded(ExchangeDef),
    ExchangeRemoved(Arc<str>),
    Bound {
        source: Arc<str>,
        key: BindingKey,
        arguments: FieldTable,
        id: BindingId,
    },
    Unbound {
        source: Arc<str>,
        key: BindingKey,
        id: BindingId,
    },
    QueueAdded(QueueRecord),
    QueueRemoved(Arc<str>),
}

/// What an accepted command changed, and the rows that make it durable.
#[derive(Debug, Default)]
pub struct Changes {
    pub list: Vec<Change>,
    pub ops: Vec<Op>,
}

#[derive(Debug)]
pub struct Topology {
    vhost: Arc<str>,
    exchanges: HashMap<Arc<str>, ExchangeDef>,
    queues: HashMap<Arc<str>, QueueRecord>,
    /// Bindings by source exchange, each with its router id and arguments.
    bindings: HashMap<Arc<str>, HashMap<BindingKey, (BindingId, FieldTable)>>,
    /// The same bindings by destination, for removing everything bound to what goes.
    by_dest: HashMap<DestName, HashSet<(Arc<str>, BindingKey)>>,
    next_queue_id: u64,
    next_binding: BindingId,
}

fn default_exchange_refused() -> Error {
    Error::access_refused("operation not permitted on the default exchange")
}

impl Topology {
    /// A vhost with its built-in exchanges (their additions are in `ch`).
    pub fn new(vhost: &str, ch: &mut Changes) -> Topology {
        let mut t = Topology {
            vhost: vhost.into(),
            exchanges: HashMap::new(),
            queues: HashMap::new(),
            bindings: HashMap::new(),
            by_dest: HashMap::new(),
            next_queue_id: 0,
            next_binding: 0,
        };
        let builtin = [
            ("", ExchangeKind::Direct),
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ];
        for (name, kind) in builtin {
            t.add_exchange(
                ExchangeDef {
                    name: name.into(),
                    kind,
                    durable: true,
                    auto_delete: false,
                    internal: false,
                    arguments: FieldTable::default(),
                },
                ch,
            );
        }
        t
    }

    pub fn apply(&mut self, cmd: Cmd) -> Result<(Reply, Changes), Error> {
        let mut ch = Changes::default();
        let reply = match cmd {
            Cmd::DeclareExchange(d) => self.declare_exchange(&d, &mut ch).map(|()| Reply::Done),
            Cmd::DeleteExchange { name, if_unused } => self
                .delete_exchange(&name, if_unused, &mut ch)
                .map(|()| Reply::Done),
            Cmd::Bind(b, conn) => self.bind(&b, conn, &mut ch).map(|()| Reply::Done),
            Cmd::Unbind(b, conn) => self.unbind(&b, conn, &mut ch).map(|()| Reply::Done),
            Cmd::DeclareQueue(d, conn) => self
                .declare_queue(&d, conn, false, &mut ch)
                .map(|(q, created)| Reply::Queue(q, created)),
            Cmd::DeclareServerNamed(d, conn) => self
                .declare_queue(&d, conn, true, &mut ch)
                .map(|(q, created)| Reply::Queue(q, created)),
            Cmd::QueueDeleted { name, id } => {
                self.remove_queue(&name, id, &mut ch);
                Ok(Reply::Done)
            }
            Cmd::NodeDown { node } => {
                self.node_down(node, &mut ch);
                Ok(Reply::Done)
            }
        }?;
        Ok((reply, ch))
    }

    /// Check the invariants (see the module doc); for tests and fuzzing.
    pub fn check(&self) -> Result<(), String> {
        let mut indexed = 0;
        for (source, list) in &self.bindings {
            if !self.exchanges.contains_key(source) || list.is_empty() {
                return Err(format!("bindings of missing exchange '{source}', or none"));
            }
            for key in list.keys() {
                let dest_exists = match &key.dest {
                    DestName::Queue(q) => self.queues.contains_key(q),
                    DestName::Exchange(x) => self.exchanges.contains_key(x),
                };
                let in_index = self
                    .by_dest
                    .get(&key.dest)
                    .is_some_and(|s| s.contains(&(source.clone(), key.clone())));
                if !dest_exists || !in_index {
                    return Err(format!(
                        "binding {source} -> {:?}: dest or index missing",
                        key.dest
                    ));
                }
                indexed += 1;
            }
        }
        let total: usize = self.by_dest.values().map(HashSet::len).sum();
        if total != indexed {
            return Err(format!(
                "{total} indexed by destination, {indexed} by source"
            ));
        }
        Ok(())
    }

    pub fn has_queue(&self, name: &str) -> bool {
        self.queues.contains_key(name)
    }

    pub fn queue_record(&self, name: &str) -> Option<&QueueRecord> {
        self.queues.get(name)
    }

    /// Is this queue (name and id) still in the topology?
    pub fn has_queue_id(&self, name: &str, id: u64) -> bool {
        self.queues.get(name).is_some_and(|q| q.id == id)
    }

    /// A queue for use by `conn`: 404 if missing, 405 if exclusive to another connection.
    pub fn queue(&self, name: &str, conn: ConnId) -> Result<&QueueRecord, Error> {
        let q = self.queues.get(name).ok_or_else(|| self.no_queue(name))?;
        if q.exclusive_owner.is_some_and(|o| o != conn) {
            return Err(self.locked(name));
        }
        Ok(q)
    }

    fn no_exchange(&self, name: &str) -> Error {
        Error::not_found(format!("no exchange '{name}' in vhost '{}'", self.vhost))
    }

    fn no_queue(&self, name: &str) -> Error {
        Error::not_found(format!("no queue '{name}' in vhost '{}'", self.vhost))
    }

    fn locked(&self, name: &str) -> Error {
        Error::channel(
            code::RESOURCE_LOCKED,
            format!(
                "cannot obtain exclusive access to locked queue '{name}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                self.vhost
            ),
        )
    }

    fn inequivalent(&self, what: &str, arg: &str, name: &str, got: &str, cur: &str) -> Error {
        Error::precondition(format!(
            "inequivalent arg '{arg}' for {what} '{name}' in vhost '{}': received '{got}' but current is '{cur}'",
            self.vhost
        ))
    }

    fn declare_exchange(&mut self, d: &ExchangeDecl, ch: &mut Changes) -> Result<(), Error> {
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
        if let Some(x) = self.exchanges.get(d.name.as_str()) {
            let Some(kind) = kind else {
                return Ok(());
            };
            let checks = [
                (
                    "type",
                    kind.as_str().to_string(),
                    x.kind.as_str().to_string(),
                ),
                ("durable", d.durable.to_string(), x.durable.to_string()),
                (
                    "auto_delete",
                    d.auto_delete.to_string(),
                    x.auto_delete.to_string(),
                ),
                ("internal", d.internal.to_string(), x.internal.to_string()),
            ];
            for (arg, got, cur) in checks {
                if got != cur {
                    return Err(self.inequivalent("exchange", arg, &d.name, &got, &cur));
                }
            }
            return Ok(());
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
        let def = ExchangeDef {
            name: d.name.as_str().into(),
            kind,
            durable: d.durable,
            auto_delete: d.auto_delete,
            internal: d.internal,
            arguments: d.arguments.clone(),
        };
        if def.durable {
            ch.ops.push(Op::PutExchange(self.stored_exchange(&def)));
        }
        self.add_exchange(def, ch);
        Ok(())
    }

    fn stored_exchange(&self, x: &ExchangeDef) -> StoredExchange {
        StoredExchange {
            vhost: self.vhost.to_string(),
            name: x.name.to_string(),
            kind: x.kind.as_str().into(),
            auto_delete: x.auto_delete,
            internal: x.internal,
            arguments: x.arguments.clone(),
        }
    }

    fn add_exchange(&mut self, def: ExchangeDef, ch: &mut Changes) {
        ch.list.push(Change::ExchangeAdded(def.clone()));
        self.exchanges.insert(def.name.clone(), def);
    }

    fn delete_exchange(
        &mut self,
        name: &str,
        if_unused: bool,
        ch: &mut Changes,
    ) -> Result<(), Error> {
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(Error::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.vhost
            )));
        }
        if !self.exchanges.contains_key(name) {
            return Ok(());
        }
        if if_unused && self.has_bindings(name) {
            return Err(Error::precondition(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.vhost
            )));
        }
        self.remove_exchange(name, ch);
        Ok(())
    }

    /// RabbitMQ reports a missing destination before a missing source.
    fn check_dest(&self, dest: &DestName, conn: ConnId) -> Result<(), Error> {
        match dest {
            DestName::Queue(q) => {
                self.queue(q, conn)?;
            }
            DestName::Exchange(x) if x.is_empty() => return Err(default_exchange_refused()),
            DestName::Exchange(x) => {
                if !self.exchanges.contains_key(x) {
                    return Err(self.no_exchange(x));
                }
            }
        }
        Ok(())
    }

    /// Is this destination durable (so a binding to it from a durable exchange is stored)?
    fn durable_dest(&self, dest: &DestName) -> bool {
        match dest {
            DestName::Queue(q) => self.queues.get(q).is_some_and(QueueRecord::stored),
            DestName::Exchange(x) => self.exchanges.get(x).is_some_and(|x| x.durable),
        }
    }

    fn bind(&mut self, b: &BindDecl, conn: ConnId, ch: &mut Changes) -> Result<(), Error> {
        if b.source.is_empty() {
            return Err(default_exchange_refused());
        }
        self.check_dest(&b.dest, conn)?;
        let Some(source) = self.exchanges.get(b.source.as_str()) else {
            return Err(self.no_exchange(&b.source));
        };
        let durable = source.durable && self.durable_dest(&b.dest);
        let source = source.name.clone();
        let key = BindingKey::new(b.dest.clone(), &b.key, &b.arguments);
        if !self.add_binding(&source, key, b.arguments.clone(), ch) {
            return Ok(());
        }
        if durable {
            let binding = Binding {
                dest: b.dest.clone(),
                key: b.key.clone(),
                arguments: b.arguments.clone(),
            };
            ch.ops
                .push(Op::PutBinding(self.stored_binding(&source, &binding)));
        }
        Ok(())
    }

    fn unbind(&mut self, b: &BindDecl, conn: ConnId, ch: &mut Changes) -> Result<(), Error> {
        if b.source.is_empty() || b.dest == DestName::Exchange("".into()) {
            return Err(default_exchange_refused());
        }
        if let DestName::Queue(q) = &b.dest
            && self
                .queues
                .get(q)
                .is_some_and(|r| r.exclusive_owner.is_some_and(|o| o != conn))
        {
            return Err(self.locked(q));
        }
        let source: Arc<str> = b.source.as_str().into();
        let key = BindingKey::new(b.dest.clone(), &b.key, &b.arguments);
        if self.remove_binding(&source, &key, ch) {
            self.maybe_auto_delete_exchange(&source, ch);
        }
        Ok(())
    }

    fn declare_queue(
        &mut self,
        d: &QueueDecl,
        conn: ConnId,
        server_named: bool,
        ch: &mut Changes,
    ) -> Result<(QueueRecord, bool), Error> {
        if let Some(q) = self.queues.get(d.name.as_str()) {
            self.check_redeclare(q, d, conn)?;
            return Ok((q.clone(), false));
        }
        if d.passive {
            return Err(self.no_queue(&d.name));
        }
        if d.name.starts_with("amq.") && !server_named {
            return Err(Error::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        let quorum = self.queue_type(d, server_named)?;
        self.next_queue_id += 1;
        let q = QueueRecord {
            name: d.name.as_str().into(),
            id: self.next_queue_id,
            durable: d.durable,
            exclusive_owner: d.exclusive.then_some(conn),
            auto_delete: d.auto_delete,
            arguments: d.arguments.clone(),
            home: conn.node,
            quorum,
        };
        if q.stored() {
            ch.ops.push(Op::PutQueue(self.stored_queue(&q)));
        }
        self.insert_queue(q.clone(), ch);
        Ok((q, true))
    }

    /// Redeclaring an existing queue: 405 if another connection's exclusive queue (or the
    /// exclusive flag differs), 406 if a property or argument differs; passive checks only
    /// the ownership.
    fn check_redeclare(&self, q: &QueueRecord, d: &QueueDecl, conn: ConnId) -> Result<(), Error> {
        if q.exclusive_owner.is_some_and(|o| o != conn) {
            return Err(self.locked(&d.name));
        }
        if d.passive {
            return Ok(());
        }
        if q.exclusive_owner.is_some() != d.exclusive {
            return Err(self.locked(&d.name));
        }
        for (arg, got, cur) in [
            ("durable", d.durable, q.durable),
            ("auto_delete", d.auto_delete, q.auto_delete),
        ] {
            if got != cur {
                return Err(self.inequivalent(
                    "queue",
                    arg,
                    &d.name,
                    &got.to_string(),
                    &cur.to_string(),
                ));
            }
        }
        for arg in EQUIVALENT_QUEUE_ARGS {
            let got = d.arguments.inner().get(*arg);
            let cur = q.arguments.inner().get(*arg);
            if got != cur {
                return Err(self.inequivalent("queue", arg, &d.name, &show(got), &show(cur)));
            }
        }
        Ok(())
    }

    fn stored_queue(&self, q: &QueueRecord) -> StoredQueue {
        StoredQueue {
            vhost: self.vhost.to_string(),
            name: q.name.to_string(),
            id: q.id,
            auto_delete: q.auto_delete,
            arguments: q.arguments.clone(),
            group: q.quorum.as_ref().map(|x| x.group),
        }
    }

    /// A new queue's type from x-queue-type: None for classic, the placement for quorum,
    /// which must be durable, not exclusive, not auto-delete and named by the client (406
    /// otherwise, with RabbitMQ's words).
    fn queue_type(&self, d: &QueueDecl, server_named: bool) -> Result<Option<Quorum>, Error> {
        let rs = format!("queue '{}' in vhost '{}'", d.name, self.vhost);
        let kind = d.arguments.inner().get("x-queue-type").map(text);
        match kind.as_deref() {
            None | Some("classic") => return Ok(None),
            Some("quorum") => {}
            Some(other) => {
                return Err(Error::precondition(format!(
                    "invalid arg 'x-queue-type' for {rs}: unsupported queue type '{other}'"
                )));
            }
        }
        if server_named {
            return Err(Error::precondition(
                "Cannot declare a server-named queue for type rabbit_quorum_queue",
            ));
        }
        for (bad, property) in [
            (d.auto_delete, "auto-delete"),
            (d.exclusive, "exclusive-owner"),
            (!d.durable, "non-durable"),
        ] {
            if bad {
                return Err(Error::precondition(format!(
                    "invalid property '{property}' for {rs}"
                )));
            }
        }
        for arg in REFUSED_QUORUM_ARGS {
            if d.arguments.inner().contains_key(*arg) {
                return Err(Error::precondition(format!(
                    "invalid arg '{arg}' for {rs} of queue type rabbit_quorum_queue"
                )));
            }
        }
        for arg in ["x-quorum-initial-group-size", "x-delivery-limit"] {
            if let Some(v) = d.arguments.inner().get(arg)
                && !positive_int(v)
            {
                return Err(Error::precondition(format!(
                    "invalid arg '{arg}' for {rs}: {}",
                    show(Some(v))
                )));
            }
        }
        d.quorum.clone().map(Some).ok_or_else(|| {
            Error::channel(
                code::INTERNAL_ERROR,
                format!("no placement for quorum {rs}"),
            )
        })
    }

    fn insert_queue(&mut self, q: QueueRecord, ch: &mut Changes) {
        self.next_queue_id = self.next_queue_id.max(q.id);
        ch.list.push(Change::QueueAdded(q.clone()));
        self.queues.insert(q.name.clone(), q);
    }

    /// A queue went (it reports that itself): forget it and every binding to it. A stale
    /// report (a queue of that name declared since) changes nothing.
    fn node_down(&mut self, node: NodeId, ch: &mut Changes) {
        let mut gone: Vec<(Arc<str>, u64)> = self
            .queues
            .values()
            .filter(|q| q.home == node && !q.stored())
            .map(|q| (q.name.clone(), q.id))
            .collect();
        // In id order, so that every node makes the same changes in the same order.
        gone.sort_by_key(|(_, id)| *id);
        // Where the node still runs such a queue (it was only cut off), the task ends as the
        // last handle to it goes: nothing routes to it any more.
        for (name, id) in gone {
            self.remove_queue(&name, id, ch);
        }
    }

    fn remove_queue(&mut self, name: &str, id: u64, ch: &mut Changes) {
        if !self.has_queue_id(name, id) {
            return;
        }
        let Some((name, _)) = self.queues.remove_entry(name) else {
            return;
        };
        ch.list.push(Change::QueueRemoved(name.clone()));
        self.drop_bindings_to(&DestName::Queue(name), ch);
    }
}

/// A string argument's text (anything else: its debug form, which matches no type name).
fn text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

fn positive_int(v: &AMQPValue) -> bool {
    crate::broker::args::integer(v).is_some_and(|n| n > 0)
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

mod bindings;
mod restore;
#[cfg(test)]
mod tests;
