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
use crate::store::{Op, StoredExchange};

pub use image::Image;

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
/// that hold a replica, with their Raft ids in the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quorum {
    pub group: u64,
    pub members: Vec<NodeId>,
    /// Each member's Raft id (`cluster::node_of`), in the order of `members`; empty in
    /// placements logged before members had their own (then `raft_id` of the node).
    #[serde(default)]
    pub ids: Vec<u64>,
    /// Member changes recorded so far (each gives a node that joins a new Raft id).
    #[serde(default)]
    pub changes: u32,
    /// Members taken out because their node's data was wiped (`Cmd::NodeWiped`), with the
    /// Raft id each had: still in the group until its leader replaces them
    /// (`broker::members::repair`).
    #[serde(default)]
    pub stale: Vec<(NodeId, u64)>,
}

impl Quorum {
    /// A new group's placement: its first members are their nodes' plain Raft ids.
    pub fn new(group: u64, members: Vec<NodeId>) -> Quorum {
        Quorum {
            group,
            members,
            ids: Vec::new(),
            changes: 0,
            stale: Vec::new(),
        }
    }

    /// The Raft id `node` gets if it joins now: its node id, and above it a nonce drawn
    /// from the group and the number of changes so far, so that it differs from any id
    /// the node had in the group before, yet is the same if the join is asked again.
    pub fn next_raft_id(&self, node: NodeId) -> u64 {
        let mut z = self.group ^ (u64::from(self.changes) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let nonce = ((z ^ (z >> 31)) >> 32).max(1);
        crate::cluster::node_of(node) | (nonce << 32)
    }

    /// Every member's Raft id, in the order of `members`.
    pub fn raft_ids(&self) -> Vec<u64> {
        match self.ids.len() == self.members.len() {
            true => self.ids.clone(),
            false => self
                .members
                .iter()
                .map(|n| crate::broker::queue::quorum::raft_id(*n))
                .collect(),
        }
    }

    /// `node`'s Raft id in the group, if it is a member.
    pub fn raft_id_of(&self, node: NodeId) -> Option<u64> {
        let i = self.members.iter().position(|m| *m == node)?;
        self.raft_ids().get(i).copied()
    }
}

/// queue.bind / exchange.bind and their unbinds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindDecl {
    pub source: String,
    pub dest: DestName,
    pub key: String,
    pub arguments: FieldTable,
}

/// A queue as the topology knows it (its contents are the queue's own business).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueRecord {
    pub name: Arc<str>,
    pub id: u64,
    pub durable: bool,
    pub exclusive_owner: Option<ConnId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// The node whose queue task holds the contents: the declaring connection's (RabbitMQ's
    /// rule for classic queues). For a quorum queue, the declaring node (its placement's
    /// first member leads first).
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
    /// A quorum queue's members changed (its Raft group's did first): added at the end,
    /// or removed.
    QueueMembers {
        name: Arc<str>,
        id: u64,
        members: Vec<NodeId>,
        /// The members' Raft ids (empty in entries logged before members had their own).
        #[serde(default)]
        ids: Vec<u64>,
    },
    /// A node rejoined with a wiped data dir: it leaves its quorum queues' members, to join
    /// them again as a new member (see `Topology::node_wiped`).
    NodeWiped {
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
    /// A quorum queue's placement changed (members, their Raft ids, stale members): its
    /// record now, and the placement before.
    QueueMembers {
        queue: QueueRecord,
        before: Quorum,
    },
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
            Cmd::QueueMembers {
                name,
                id,
                members,
                ids,
            } => {
                self.set_members(&name, id, (members, ids), &mut ch);
                Ok(Reply::Done)
            }
            Cmd::NodeWiped { node } => {
                self.node_wiped(node, &mut ch);
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
        for (name, p) in self
            .queues
            .iter()
            .filter_map(|(n, q)| Some((n, q.quorum.as_ref()?)))
        {
            let ids = p.raft_ids();
            let distinct: HashSet<&u64> = ids.iter().collect();
            if p.members.is_empty() || distinct.len() != ids.len() {
                return Err(format!("quorum queue '{name}': no members, or an id twice"));
            }
            if p.stale
                .iter()
                .any(|(n, id)| p.members.contains(n) || ids.contains(id))
            {
                return Err(format!("quorum queue '{name}': a stale member is a member"));
            }
        }
        Ok(())
    }

    pub fn has_queue(&self, name: &str) -> bool {
        self.queues.contains_key(name)
    }

    pub fn queue_record(&self, name: &str) -> Option<&QueueRecord> {
        self.queues.get(name)
    }

    pub fn queue_records(&self) -> impl Iterator<Item = &QueueRecord> {
        self.queues.values()
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
mod image;
mod queues;
mod quorum;
mod restore;
pub use quorum::{default_to_quorum, is_quorum};
#[cfg(test)]
mod tests;
