//! A virtual host at run time: its `Topology` (the rules, pure) behind one std mutex, the
//! compiled routers and queue handles that the topology's changes are carried out on, and
//! the immutable routing snapshot publishers read without a lock. Declares, binds and
//! deletes take the mutex (never across an await; nothing under it does I/O but queueing a
//! store write, so durable changes are written in the order they were made), apply the
//! command, spawn or forget queue tasks, publish a new snapshot and submit the store rows.
//!
//! On a cluster node a change is first committed through the metadata log (`meta.rs`) and
//! then applied here, on every node in log order; a passive declare first waits until this
//! node has applied every change committed before it. Only the home node of a queue runs
//! it; the others hold a stub handle that forwards to it (`remote/`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use arc_swap::ArcSwap;
use tokio::sync::{oneshot, watch};

use super::exchange::DestName;
use super::ids::{ConnId, NodeId};
use super::memory::MemoryMonitor;
use super::meta::Replicated;
use super::queue::classic::{OnDeleted, Recovered};
use super::queue::quorum::{self, Locator};
use super::queue::{self, QueueHandle, QueueShared, QueueSpec};
use super::remote::{self, Forwarder};
use super::routing::{Dest, ExchangeRoute, Map, Router, Routes};
use super::topology::{self, Change, Changes, Cmd, Image, QueueRecord, Reply, Topology};
use crate::error::{Error, code};
use crate::store::{Op, Store, StoredBinding, StoredExchange, StoredQueue};

pub use super::topology::{BindDecl, ExchangeDecl, QueueDecl};

mod cluster;

/// Per-queue settings from the config.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    pub inbox: usize,
    pub memory_budget: usize,
    pub flow_messages: usize,
    pub quorum: QuorumDefaults,
}

/// How quorum queues are declared when the client does not say.
#[derive(Debug, Clone, Copy)]
pub struct QuorumDefaults {
    /// RabbitMQ's `default_queue_type = quorum`: a durable, shared queue declared without
    /// x-queue-type is a quorum queue.
    pub default_type: bool,
    /// Where a new quorum queue's first leader goes without x-queue-leader-locator.
    pub locator: Locator,
    /// Its members without x-quorum-initial-group-size.
    pub group_size: usize,
}

impl Default for QuorumDefaults {
    fn default() -> Self {
        QuorumDefaults {
            default_type: false,
            locator: Locator::default(),
            group_size: 3,
        }
    }
}

/// What the topology's changes are carried out on: compiled routers (persistent maps, so a
/// snapshot is a cheap clone) and the handles of running queues.
struct Runtime {
    topo: Topology,
    routers: HashMap<Arc<str>, ExchangeRoute>,
    handles: Map<Arc<str>, QueueHandle>,
    /// Messages read back from the store for durable queues not started yet, by queue id.
    recovered: HashMap<u64, Recovered>,
}

pub struct VHost {
    pub name: String,
    inner: Mutex<Runtime>,
    routes: ArcSwap<Routes>,
    weak: Weak<VHost>,
    settings: QueueSettings,
    memory: Arc<MemoryMonitor>,
    store: Option<Arc<Store>>,
    /// This node: queues homed here run here.
    node: NodeId,
    /// Set on a cluster node: changes go through the metadata log.
    replicated: OnceLock<Arc<Replicated>>,
    /// Set on a cluster node: queues homed elsewhere are used through it.
    remote: OnceLock<Arc<Forwarder>>,
    /// Where quorum queues run, once this node has its Raft runtime.
    quorum: watch::Sender<Option<quorum::Runtime>>,
    /// Counts the commands applied to the topology, for `forgotten` to wait on.
    applied: watch::Sender<u64>,
}

/// A topology change on its way to disk: declare-ok and friends wait for it, so that an
/// acknowledged durable declaration survives a crash.
#[must_use]
pub struct Written(Option<oneshot::Receiver<bool>>);

impl Written {
    /// Nothing to wait for.
    pub fn done() -> Written {
        Written(None)
    }

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

impl VHost {
    pub fn new(
        name: &str,
        settings: QueueSettings,
        memory: Arc<MemoryMonitor>,
        store: Option<Arc<Store>>,
        node: NodeId,
    ) -> Arc<VHost> {
        let mut builtin = Changes::default();
        let topo = Topology::new(name, &mut builtin);
        let vhost = Arc::new_cyclic(|weak| VHost {
            name: name.to_string(),
            inner: Mutex::new(Runtime {
                topo,
                routers: HashMap::new(),
                handles: Map::default(),
                recovered: HashMap::new(),
            }),
            routes: ArcSwap::from_pointee(Routes::default()),
            weak: weak.clone(),
            settings,
            memory,
            store,
            node,
            replicated: OnceLock::new(),
            remote: OnceLock::new(),
            quorum: watch::Sender::new(None),
            applied: watch::Sender::new(0),
        });
        let _ = vhost.commit(&mut vhost.lock(), builtin);
        vhost
    }

    /// Route changes through the metadata log from now on (a cluster node, before serving).
    pub fn replicate(&self, r: Arc<Replicated>) {
        let _ = self.replicated.set(r);
    }

    /// Use queues homed on other nodes through `f` (a cluster node, before the log is
    /// applied).
    pub fn forward(&self, f: Arc<Forwarder>) {
        let _ = self.remote.set(f);
    }

    /// Run quorum queues' replicas on `rt` (replicas started before wait for it).
    pub fn quorum_runtime(&self, rt: quorum::Runtime) {
        self.quorum.send_replace(Some(rt));
    }

    /// A queue of this name and id that runs here (not a stub for another node's): a
    /// classic queue homed here, or this node's replica of a quorum queue.
    pub fn home_queue(&self, name: &str, id: u64) -> Option<QueueHandle> {
        let rt = self.lock();
        rt.topo.queue_record(name).filter(|q| {
            let here = match &q.quorum {
                Some(p) => p.members.contains(&self.node),
                None => q.home == self.node,
            };
            q.id == id && here
        })?;
        rt.handles.get(name).filter(|h| h.id == id).cloned()
    }

    /// Every queue record, with the handle this node uses it through (None: not here).
    pub fn queue_list(&self) -> Vec<(QueueRecord, Option<QueueHandle>)> {
        let rt = self.lock();
        rt.topo
            .queue_records()
            .map(|q| (q.clone(), rt.handles.get(&q.name).cloned()))
            .collect()
    }

    /// The number of commands applied to the topology so far: unchanged, so is it.
    pub fn changes(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Quorum queues with stale members to replace (`Quorum::stale`).
    pub fn stale_queues(&self) -> Vec<QueueRecord> {
        let rt = self.lock();
        rt.topo
            .queue_records()
            .filter(|q| q.quorum.as_ref().is_some_and(|p| !p.stale.is_empty()))
            .cloned()
            .collect()
    }

    /// One queue's record and handle, as `queue_list` gives them.
    pub fn queue_entry(&self, name: &str) -> Option<(QueueRecord, Option<QueueHandle>)> {
        let rt = self.lock();
        let q = rt.topo.queue_record(name)?.clone();
        let h = rt.handles.get(name).cloned();
        Some((q, h))
    }

    fn lock(&self) -> MutexGuard<'_, Runtime> {
        // A panic elsewhere must not take routing down with it: the topology stays consistent
        // because every mutation below completes before it publishes.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The routing snapshot; cheap, lock-free.
    pub fn routes(&self) -> arc_swap::Guard<Arc<Routes>> {
        self.routes.load()
    }

    /// Apply a command, carry out its changes, and queue its store rows.
    fn run(&self, cmd: Cmd) -> Result<(Option<QueueHandle>, Written), Error> {
        let mut rt = self.lock();
        let applied = rt.topo.apply(cmd);
        self.applied.send_modify(|n| *n += 1);
        let (reply, changes) = applied?;
        let written = self.commit(&mut rt, changes);
        let handle = match reply {
            Reply::Queue(q, _) => rt.handles.get(&q.name).cloned(),
            Reply::Done => None,
        };
        Ok((handle, written))
    }

    /// Carry out `changes` on the routers and queues (spawning new queues, with what was
    /// recovered for them), publish the snapshot and submit the rows.
    fn commit(&self, rt: &mut Runtime, changes: Changes) -> Written {
        let mut changed = Vec::new();
        let mut queues_changed = false;
        for c in changes.list {
            match c {
                Change::ExchangeAdded(def) => {
                    let route = ExchangeRoute {
                        internal: def.internal,
                        router: Router::new(def.kind),
                    };
                    rt.routers.insert(def.name.clone(), route);
                    changed.push(def.name);
                }
                Change::ExchangeRemoved(name) => {
                    rt.routers.remove(&name);
                    changed.push(name);
                }
                Change::Bound {
                    source,
                    key,
                    arguments,
                    id,
                } => {
                    let dest = match &key.dest {
                        DestName::Queue(q) => rt.handles.get(q).map(|h| Dest::Queue(h.clone())),
                        DestName::Exchange(x) => Some(Dest::Exchange(x.clone())),
                    };
                    if let (Some(dest), Some(r)) = (dest, rt.routers.get_mut(&source)) {
                        r.router.bind(&key.key, &arguments, id, dest);
                    }
                    changed.push(source);
                }
                Change::Unbound { source, key, id } => {
                    if let Some(r) = rt.routers.get_mut(&source) {
                        r.router.unbind(&key.key, id);
                    }
                    changed.push(source);
                }
                Change::QueueAdded(q) if q.quorum.is_some() => {
                    if let Some(h) = self.spawn_quorum(&q) {
                        rt.handles.insert(q.name, h);
                        queues_changed = true;
                    }
                }
                Change::QueueAdded(q) if q.home == self.node => {
                    let initial = rt.recovered.remove(&q.id).unwrap_or_default();
                    let h = self.spawn_queue(&q, initial);
                    rt.handles.insert(q.name, h);
                    queues_changed = true;
                }
                // Another node runs it: used through a stub that forwards to it.
                Change::QueueAdded(q) => {
                    if let Some(f) = self.remote.get() {
                        let h = remote::spawn_stub(&q, &self.name, f.clone(), self.settings.inbox);
                        rt.handles.insert(q.name, h);
                        queues_changed = true;
                    }
                }
                Change::QueueMembers { queue, before } => {
                    self.members_changed(rt, queue, &before);
                    queues_changed = true;
                }
                Change::QueueRemoved(name) => {
                    // Still here only if the queue did not delete itself: stop its task.
                    if let Some(h) = rt.handles.remove(&name) {
                        h.stop();
                    }
                    queues_changed = true;
                }
            }
        }
        if !changed.is_empty() || queues_changed {
            self.publish(rt, &changed, queues_changed);
        }
        self.write(changes.ops)
    }

    fn spawn_queue(&self, q: &QueueRecord, initial: Recovered) -> QueueHandle {
        queue::spawn(QueueSpec {
            name: q.name.clone(),
            id: q.id,
            exclusive_owner: q.exclusive_owner,
            auto_delete: q.auto_delete,
            arguments: q.arguments.clone(),
            inbox: self.settings.inbox,
            memory: self.memory.clone(),
            store: if q.stored() { self.store.clone() } else { None },
            initial,
            vhost: self.name.as_str().into(),
            memory_budget: self.settings.memory_budget,
            flow_messages: self.settings.flow_messages,
            on_deleted: self.on_deleted(),
        })
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

    /// Queue `ops` for the store (called with the lock held, so they are written in the
    /// order the changes were made).
    fn write(&self, ops: Vec<Op>) -> Written {
        match &self.store {
            Some(store) if !ops.is_empty() => {
                let (tx, rx) = oneshot::channel();
                store.submit(
                    ops,
                    true,
                    Some(Box::new(move |r: Result<(), _>| {
                        let _ = tx.send(r.is_ok());
                    })),
                );
                Written(Some(rx))
            }
            _ => Written(None),
        }
    }

    /// Swap in a new snapshot with the routers of `changed` exchanges (and the queue map):
    /// clones of persistent maps, so this costs what changed.
    fn publish(&self, rt: &Runtime, changed: &[Arc<str>], queues_changed: bool) {
        let old = self.routes.load();
        let mut exchanges = old.exchanges.clone();
        let mut done: HashSet<&Arc<str>> = HashSet::new();
        for name in changed {
            if !done.insert(name) {
                continue;
            }
            match rt.routers.get(name) {
                Some(route) => {
                    exchanges.insert(name.clone(), Arc::new(route.clone()));
                }
                None => {
                    exchanges.remove(name);
                }
            }
        }
        let queues = if queues_changed {
            rt.handles.clone()
        } else {
            old.queues.clone()
        };
        self.routes.store(Arc::new(Routes { exchanges, queues }));
    }

    /// Rebuild durable topology and queues read back from the store, before any client.
    pub fn restore(
        &self,
        exchanges: Vec<StoredExchange>,
        queues: Vec<(StoredQueue, Recovered)>,
        bindings: Vec<StoredBinding>,
    ) {
        let records = self.stash(queues);
        let mut rt = self.lock();
        let mut changes = Changes::default();
        rt.topo.restore(exchanges, records, bindings, &mut changes);
        let _ = self.commit(&mut rt, changes);
    }

    /// Keep the messages of recovered queues until their queue is started (on a cluster
    /// node, when the metadata log is applied again); returns the queues' records.
    pub fn stash(&self, queues: Vec<(StoredQueue, Recovered)>) -> Vec<StoredQueue> {
        let mut rt = self.lock();
        let mut records = Vec::with_capacity(queues.len());
        for (q, messages) in queues {
            tracing::info!(
                vhost = self.name,
                queue = q.name,
                messages = messages.len(),
                "recovered queue"
            );
            rt.recovered.insert(q.id, messages);
            records.push(q);
        }
        records
    }

    /// Wait until this node has applied every metadata change committed before the call
    /// (on a cluster; at once on a single node), within the command timeout.
    pub async fn caught_up(&self) -> Result<(), Error> {
        match self.replicated.get() {
            Some(r) => r.read().await,
            None => Ok(()),
        }
    }

    /// Make a change: on a single node, apply it here and wait for its rows to be written;
    /// in a cluster, through the metadata log (every node applies it once committed).
    async fn change(&self, cmd: Cmd) -> Result<Option<QueueHandle>, Error> {
        if let Some(r) = self.replicated.get() {
            if !cmd.is_check() {
                return r.run(&self.name, cmd).await;
            }
            r.read().await?;
        }
        let (handle, written) = self.run(cmd)?;
        written.wait().await?;
        Ok(handle)
    }

    /// This vhost's topology as the metadata snapshot keeps it.
    pub fn image(&self) -> Image {
        self.lock().topo.image()
    }

    /// A metadata snapshot's topology replaces this vhost's: routers, queues and stubs
    /// follow, as if the entries it covers had been applied.
    pub fn install(&self, image: Image) {
        let mut rt = self.lock();
        let changes = rt.topo.install(image);
        self.applied.send_modify(|n| *n += 1);
        drop(self.commit(&mut rt, changes));
    }

    /// A committed metadata entry's change, on every node in log order.
    pub fn apply_committed(&self, cmd: Cmd) -> (Result<Option<QueueHandle>, Error>, Written) {
        if let Cmd::NodeDown { node } = &cmd {
            // Quorum queues return what the node's consumers held (each replica proposes
            // it; applying it again changes nothing).
            let node = *node;
            let rt = self.lock();
            for (_, h) in rt.handles.iter().filter(|(_, h)| h.quorum) {
                let h = h.clone();
                tokio::spawn(async move { h.send(queue::QueueCmd::NodeDown(node)).await });
            }
        }
        match self.run(cmd) {
            Ok((handle, written)) => (Ok(handle), written),
            Err(e) => (Err(e), Written::done()),
        }
    }

    pub async fn declare_exchange(&self, d: &ExchangeDecl) -> Result<(), Error> {
        self.change(Cmd::DeclareExchange(d.clone())).await.map(drop)
    }

    pub async fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), Error> {
        let cmd = Cmd::DeleteExchange {
            name: name.to_string(),
            if_unused,
        };
        self.change(cmd).await.map(drop)
    }

    /// queue.bind / exchange.bind (or, `bind` false, their unbinds).
    pub async fn binding(&self, bind: bool, b: BindDecl, conn: ConnId) -> Result<(), Error> {
        let cmd = if bind {
            Cmd::Bind(b, conn)
        } else {
            Cmd::Unbind(b, conn)
        };
        self.change(cmd).await.map(drop)
    }

    /// Declare (or check) a queue; returns its handle.
    pub async fn declare_queue(&self, d: &QueueDecl, conn: ConnId) -> Result<QueueHandle, Error> {
        let mut d = d.clone();
        if self.settings.quorum.default_type {
            let existing = self.lock().topo.queue_record(&d.name).cloned();
            topology::default_to_quorum(&mut d, existing.as_ref());
        }
        d.quorum = self.placement(&d)?;
        self.change(Cmd::DeclareQueue(d.clone(), conn))
            .await?
            .ok_or_else(|| self.remote(&d.name))
    }

    /// A server-named queue (`amq.gen-…`), as for a declare with an empty name.
    pub async fn declare_server_named(
        &self,
        d: &QueueDecl,
        conn: ConnId,
    ) -> Result<QueueHandle, Error> {
        let mut d = d.clone();
        loop {
            d.name = server_name();
            if !self.lock().topo.has_queue(&d.name) {
                break;
            }
        }
        self.change(Cmd::DeclareServerNamed(d, conn))
            .await?
            .ok_or_else(not_running)
    }

    /// Look up a queue for use by `conn` (404 if missing, 405 if exclusive to another).
    pub fn queue(&self, name: &str, conn: ConnId) -> Result<QueueHandle, Error> {
        let rt = self.lock();
        let record = rt.topo.queue(name, conn)?;
        match rt.handles.get(name) {
            Some(h) => Ok(h.clone()),
            None if record.home != self.node => Err(self.remote(name)),
            // In a cluster, a queue that deleted itself is gone from here before the log
            // says so everywhere.
            None => Err(Error::not_found(format!(
                "no queue '{name}' in vhost '{}'",
                self.name
            ))),
        }
    }
}

fn not_running() -> Error {
    Error::connection(code::INTERNAL_ERROR, "queue not running")
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
