//! The broker's side of the metadata group on a cluster node. A topology change becomes a
//! log entry naming its vhost, its origin node and a request number; every node applies
//! committed entries in log order to its vhosts (`Applier`), and the origin node hands the
//! outcome (the reply, or the error every node computed alike) to the waiting channel.
//!
//! Invariants: an entry is applied at most once however often it was proposed (a proposal
//! can be lost with a leader, so the proposer proposes again; the applier skips an
//! (origin, request) it applied already, deterministically on every node); a change whose
//! commit is not seen within the command timeout is reported as failed, never as done.
//!
//! A node that rejoined with a wiped data directory (`cluster::check_data_dir`) shows in
//! the log as its new Raft id added to the group: applied, every node takes it out of the
//! quorum queues it was a member of (`Cmd::NodeWiped`; their leaders add it back under new
//! ids, `broker::members`), so it never opens their groups under ids whose state it lost.
//! The rejoining node itself holds its quorum queues until it has applied that entry
//! (`Gate`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::applied::Applied;
use super::ids::NodeId;
use super::queue::QueueHandle;
use super::topology::{Cmd, Image};
use super::vhost::{VHost, Written};
use crate::cluster::{Apply, Cluster, ClusterError, node_of};
use crate::error::{Error, code};

/// A proposal not seen committed by then is proposed again (it may have been dropped).
const REPROPOSE: Duration = Duration::from_millis(1000);
/// Applied (origin, request) pairs remembered for skipping duplicates.
const REMEMBERED: usize = 65_536;

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    origin: NodeId,
    req: u64,
    op: MetaOp,
}

#[derive(Debug, Serialize, Deserialize)]
enum MetaOp {
    Topology {
        vhost: String,
        cmd: Cmd,
    },
    /// A node is gone, in every vhost (see `Cmd::NodeDown`). A starting node proposes it
    /// for itself: once applied, it has applied everything committed before too.
    NodeDown {
        node: NodeId,
    },
}

type Outcome = (Result<Option<QueueHandle>, Error>, Written);
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Outcome>>>>;

/// Proposes changes and waits for their outcome.
pub struct Replicated {
    cluster: Arc<Cluster>,
    next_req: AtomicU64,
    pending: Pending,
}

/// Applies committed entries to this node's vhosts, on the cluster task.
pub struct Applier {
    node: NodeId,
    vhosts: HashMap<String, Arc<VHost>>,
    pending: Pending,
    /// Bumped when the cluster took this node as down while it ran (it was cut off): its
    /// connections' exclusive queues are gone everywhere, so its connections must go too.
    evicted: Arc<watch::Sender<u64>>,
    applied: Applied,
    /// Entries applied since the last snapshot, and after how many the next is due.
    since_snapshot: u64,
    snapshot_every: u64,
    /// A follower needs a snapshot newer than the last one.
    wanted: bool,
    /// This node's Raft id in the metadata group.
    raft_id: u64,
    /// Nodes that rejoined with a wiped data dir: their Raft id since.
    rejoined: BTreeMap<NodeId, u64>,
    gate: watch::Sender<bool>,
}

/// Open (true) once this node may run its quorum queues' replicas: at once, unless it is
/// rejoining with a wiped data dir, and then once it has applied its own rejoin.
pub type Gate = watch::Receiver<bool>;

/// The metadata group's snapshot: every vhost's topology and the requests applied (so
/// that a copy committed after the snapshot is still skipped).
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    vhosts: Vec<(String, Image)>,
    applied: Vec<(NodeId, u64)>,
    rejoined: Vec<(NodeId, u64)>,
}

/// The applier for `vhosts` of node `node` (`raft_id` in the metadata group), what
/// `Replicated::new` shares with it, and its gate. `evicted` is bumped when another node
/// took this one as down (see `Applier::evicted`).
pub fn applier(
    (node, raft_id): (NodeId, u64),
    vhosts: HashMap<String, Arc<VHost>>,
    evicted: Arc<watch::Sender<u64>>,
    snapshot_every: u64,
) -> (Box<dyn Apply>, Pending, Gate) {
    let pending = Pending::default();
    let (gate, open) = watch::channel(raft_id == node);
    let a = Applier {
        node,
        vhosts,
        pending: pending.clone(),
        evicted,
        applied: Applied::new(REMEMBERED),
        since_snapshot: 0,
        snapshot_every: snapshot_every.max(1),
        wanted: false,
        raft_id,
        rejoined: BTreeMap::new(),
        gate,
    };
    (Box::new(a), pending, open)
}

fn unavailable(why: impl std::fmt::Display) -> Error {
    Error::channel(
        code::INTERNAL_ERROR,
        format!("metadata change failed: {why}"),
    )
}

/// Wait for `until` (it needs a majority of cluster nodes, as long as that takes), saying
/// so in the log every 5 s.
pub async fn waiting_for_a_majority<F: std::future::Future>(until: F) {
    let say = async {
        for waited in (5u32..).step_by(5) {
            tokio::time::sleep(Duration::from_secs(5)).await;
            tracing::info!("waiting for a majority of cluster nodes ({waited} s)");
        }
    };
    tokio::select! {
        _ = until => {}
        _ = say => {}
    }
}

/// Forgets a request's waiter however its wait ends.
struct Forget<'a>(&'a Pending, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

impl Replicated {
    pub fn new(cluster: Arc<Cluster>, pending: Pending) -> Arc<Replicated> {
        Arc::new(Replicated {
            cluster,
            // Random, so that requests of an earlier run of this node (replayed from the
            // log at start) are not taken for new ones.
            next_req: AtomicU64::new(rand::random::<u64>() >> 1),
            pending,
        })
    }

    /// A topology change through the log: its outcome once this node applied it (and wrote
    /// its rows), or an error if no majority committed it within the command timeout.
    pub async fn run(&self, vhost: &str, cmd: Cmd) -> Result<Option<QueueHandle>, Error> {
        let op = MetaOp::Topology {
            vhost: vhost.to_string(),
            cmd,
        };
        let timeout = self.cluster.config.command_timeout;
        let (outcome, written) = self.commit(op, Some(timeout)).await?;
        let handle = outcome?;
        written.wait().await?;
        Ok(handle)
    }

    /// How long a change may take to commit before it is reported as failed.
    pub fn command_timeout(&self) -> Duration {
        self.cluster.config.command_timeout
    }

    /// The same, retried until it is committed: for changes nobody waits for (a queue that
    /// deleted itself) that must still reach every node.
    pub async fn run_until_done(&self, vhost: &str, cmd: Cmd) {
        loop {
            match self.run(vhost, cmd.clone()).await {
                Err(e) if e.code() == code::INTERNAL_ERROR => {
                    tracing::warn!(vhost, "{e}; trying again")
                }
                _ => return,
            }
        }
    }

    /// A check (passive declare) sees every change committed before it, on any node: wait
    /// until this node has applied them, within the command timeout.
    pub async fn read(&self) -> Result<(), Error> {
        let timeout = self.cluster.config.command_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut leader = self.cluster.leader();
        loop {
            leader.borrow_and_update();
            tokio::select! {
                r = self.cluster.read() => {
                    return r.map_err(|_| unavailable("the node is shutting down"));
                }
                // A read in flight to a leader that lost office is lost with it.
                _ = leader.changed() => {}
                _ = tokio::time::sleep(REPROPOSE) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(unavailable(format!(
                        "not confirmed within {} ms (no majority of cluster nodes reachable)",
                        timeout.as_millis()
                    )));
                }
            }
        }
    }

    /// A starting node: the queues its connections had before are gone, and once that is
    /// applied here, so is everything committed before. Waits for a majority as long as it
    /// takes (the node serves no client until then).
    pub async fn rejoin(&self) {
        let me = self.cluster.node_id();
        // One request, proposed again until it commits: separate attempts could commit
        // late, after this node serves, and take its new connections' exclusive queues.
        let op = MetaOp::NodeDown { node: me };
        waiting_for_a_majority(self.commit(op, None)).await;
    }

    /// While this node leads, a peer whose link stays down for `down_after` is taken as down.
    pub async fn watch_nodes(self: Arc<Self>, down_after: Duration) {
        let me = self.cluster.node_id();
        let (mut up, leader) = (self.cluster.links_up(), self.cluster.leader());
        let mut down_since: HashMap<NodeId, tokio::time::Instant> = HashMap::new();
        let mut reported: HashSet<NodeId> = HashSet::new();
        let mut check = tokio::time::interval(down_after / 4);
        loop {
            tokio::select! {
                r = up.changed() => if r.is_err() { return },
                _ = check.tick() => {}
            }
            let now = tokio::time::Instant::now();
            let leading = *leader.borrow() == me;
            let links = up.borrow_and_update().clone();
            for (peer, session) in links {
                if session.is_some() {
                    down_since.remove(&peer);
                    reported.remove(&peer);
                    continue;
                }
                let since = *down_since.entry(peer).or_insert(now);
                if leading && now - since >= down_after && reported.insert(peer) {
                    let timeout = Some(self.cluster.config.command_timeout);
                    if self
                        .commit(MetaOp::NodeDown { node: peer }, timeout)
                        .await
                        .is_err()
                    {
                        reported.remove(&peer);
                    }
                }
            }
        }
    }

    async fn commit(&self, op: MetaOp, timeout: Option<Duration>) -> Result<Outcome, Error> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            origin: self.cluster.node_id(),
            req,
            op,
        };
        let data = postcard::to_stdvec(&entry).map_err(unavailable)?;
        let (tx, mut rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req, tx);
        let _forget = Forget(&self.pending, req);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut leader = self.cluster.leader();
        loop {
            leader.borrow_and_update();
            if let Err(ClusterError::Stopped) = self.cluster.propose(data.clone()).await {
                return Err(unavailable("the node is shutting down"));
            }
            let expired = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = &mut rx => return r.map_err(|_| unavailable("the node is shutting down")),
                // A proposal in flight to a leader that lost office is lost with it.
                _ = leader.changed() => {}
                _ = tokio::time::sleep(REPROPOSE) => {}
                _ = expired => {
                    let ms = timeout.unwrap_or_default().as_millis();
                    return Err(unavailable(format!(
                        "not committed within {ms} ms (no majority of cluster nodes reachable)"
                    )));
                }
            }
        }
    }
}

impl Apply for Applier {
    fn apply(&mut self, index: u64, data: &[u8]) {
        self.since_snapshot += 1;
        if data.is_empty() {
            return;
        }
        let entry: Entry = match postcard::from_bytes(data) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(index, "undecodable metadata entry skipped: {e}");
                return;
            }
        };
        if !self.applied.first_time((entry.origin, entry.req)) {
            return;
        }
        let outcome = match entry.op {
            MetaOp::NodeDown { node } => {
                tracing::info!(
                    node,
                    "node down or restarted: its exclusive and transient queues go"
                );
                for v in self.vhosts.values() {
                    drop(v.apply_committed(Cmd::NodeDown { node }));
                }
                // A node proposes its own NodeDown only as it starts, before it serves;
                // from another node it means this one was cut off long enough to be
                // taken as down (before start, in the replayed log, nobody is connected).
                if node == self.node && entry.origin != self.node {
                    tracing::warn!(
                        by = entry.origin,
                        "the cluster took this node as down while it was cut off: \
                         closing its client connections"
                    );
                    self.evicted.send_modify(|n| *n += 1);
                }
                (Ok(None), Written::done())
            }
            MetaOp::Topology { vhost, cmd } => match self.vhosts.get(&vhost) {
                Some(v) => v.apply_committed(cmd),
                None => (
                    Err(Error::connection(
                        code::NOT_ALLOWED,
                        format!("no access to vhost '{vhost}'"),
                    )),
                    Written::done(),
                ),
            },
        };
        if entry.origin == self.node {
            let waiter = self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&entry.req);
            if let Some(tx) = waiter {
                let _ = tx.send(outcome);
            }
        }
    }

    /// The topology of a snapshot replaces each vhost's: at a start from the saved one,
    /// or on a node so far behind that the leader sent its own. Proposals of this node
    /// that the snapshot covers get no answer here: their waiters time out.
    fn restore(&mut self, index: u64, data: &[u8]) {
        let snap: Snapshot = match postcard::from_bytes(data) {
            Ok(s) => s,
            Err(e) => {
                // A snapshot this build cannot read: going on would diverge from the others.
                tracing::error!(index, "undecodable metadata snapshot: {e}; stopping");
                std::process::exit(2);
            }
        };
        for (name, image) in snap.vhosts {
            match self.vhosts.get(&name) {
                Some(v) => v.install(image),
                None => tracing::warn!(vhost = name, "snapshot of an unknown vhost ignored"),
            }
        }
        self.applied = Applied::from_vec(REMEMBERED, snap.applied);
        self.rejoined = snap.rejoined.into_iter().collect();
        if self.rejoined.get(&self.node) == Some(&self.raft_id) {
            self.gate.send_replace(true);
        }
        self.since_snapshot = 0;
        tracing::info!(index, "metadata restored from a snapshot");
    }

    fn want_snapshot(&mut self) {
        self.wanted = true;
    }

    /// A node's new Raft id added: it rejoined with a wiped data dir (the group's members
    /// change for nothing else).
    fn member_changed(&mut self, add: bool, raft_id: u64) {
        let node = node_of(raft_id);
        if !add || raft_id == node {
            return;
        }
        tracing::info!(
            node,
            raft_id,
            "node rejoined with a wiped data dir: it leaves its quorum queues, to join them \
             again as a new member"
        );
        for v in self.vhosts.values() {
            drop(v.apply_committed(Cmd::NodeWiped { node }));
        }
        self.rejoined.insert(node, raft_id);
        if node == self.node && raft_id == self.raft_id {
            self.gate.send_replace(true);
        }
    }

    fn snapshot_due(&mut self) -> Option<Vec<u8>> {
        if self.since_snapshot < self.snapshot_every && !(self.wanted && self.since_snapshot > 0) {
            return None;
        }
        self.wanted = false;
        self.since_snapshot = 0;
        let mut vhosts: Vec<(String, Image)> = self
            .vhosts
            .iter()
            .map(|(name, v)| (name.clone(), v.image()))
            .collect();
        vhosts.sort_by(|a, b| a.0.cmp(&b.0));
        let snap = Snapshot {
            vhosts,
            applied: self.applied.to_vec(),
            rejoined: self.rejoined.iter().map(|(n, id)| (*n, *id)).collect(),
        };
        match postcard::to_stdvec(&snap) {
            Ok(data) => Some(data),
            Err(e) => {
                tracing::error!("cannot encode a metadata snapshot: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::ids::ConnId;
    use crate::broker::vhost::{ExchangeDecl, QueueDecl, QueueSettings};

    fn entry(origin: NodeId, req: u64, op: MetaOp) -> Vec<u8> {
        postcard::to_stdvec(&Entry { origin, req, op }).unwrap()
    }

    fn topo(cmd: Cmd) -> MetaOp {
        MetaOp::Topology {
            vhost: "/".into(),
            cmd,
        }
    }

    fn queue(name: &str) -> QueueDecl {
        QueueDecl {
            name: name.into(),
            ..Default::default()
        }
    }

    fn exchange(name: &str, passive: bool) -> ExchangeDecl {
        ExchangeDecl {
            name: name.into(),
            kind: "direct".into(),
            passive,
            ..Default::default()
        }
    }

    fn conn(node: NodeId) -> ConnId {
        ConnId { node, seq: 1 }
    }

    /// The reply code of looking a queue up on this node (0: running here).
    fn lookup(v: &VHost, name: &str) -> u16 {
        v.queue(name, conn(1)).map_or_else(|e| e.code(), |_| 0)
    }

    #[tokio::test]
    async fn committed_entries_apply_once_and_answer_their_proposer() {
        let settings = QueueSettings {
            inbox: 8,
            memory_budget: 1 << 20,
            flow_messages: 1 << 16,
            quorum: Default::default(),
        };
        let memory = Arc::new(crate::broker::memory::MemoryMonitor::new(0));
        let v = VHost::new("/", settings, memory, None, 1);
        let evicted = Arc::new(watch::Sender::new(0));
        let evictions = evicted.subscribe();
        let vhosts = HashMap::from([("/".to_string(), v.clone())]);
        let (mut a, pending, gate) = applier((1, 1), vhosts, evicted, 1000);
        assert!(
            *gate.borrow(),
            "a node that did not rejoin runs its replicas at once"
        );
        let (tx, rx) = oneshot::channel();
        pending.lock().unwrap().insert(7, tx);

        // Node 1's own declare: applied, answered with the queue running here.
        a.apply(
            1,
            &entry(1, 7, topo(Cmd::DeclareQueue(queue("mine"), conn(1)))),
        );
        let (outcome, _) = rx.await.unwrap();
        assert!(outcome.unwrap().is_some());
        // Node 2's declare (same request number, other origin): applied, homed on node 2.
        a.apply(
            2,
            &entry(2, 7, topo(Cmd::DeclareQueue(queue("theirs"), conn(2)))),
        );
        // The same request of node 1 committed twice (proposed again): the copy is skipped.
        a.apply(
            3,
            &entry(1, 7, topo(Cmd::DeclareExchange(exchange("dup", false)))),
        );
        // Undecodable entries and unknown vhosts change nothing.
        a.apply(4, b"\xff\xff\xff");
        let elsewhere = MetaOp::Topology {
            vhost: "other".into(),
            cmd: Cmd::DeclareExchange(exchange("elsewhere", false)),
        };
        a.apply(5, &entry(2, 8, elsewhere));
        assert_eq!(lookup(&v, "mine"), 0);
        assert_eq!(lookup(&v, "theirs"), code::NOT_IMPLEMENTED);
        let dup = v.declare_exchange(&exchange("dup", true)).await;
        assert_eq!(dup.unwrap_err().code(), code::NOT_FOUND);

        // Node 2 goes: its transient queue with it; node 1's stays.
        a.apply(6, &entry(1, 9, MetaOp::NodeDown { node: 2 }));
        assert_eq!(lookup(&v, "theirs"), code::NOT_FOUND);
        assert_eq!(lookup(&v, "mine"), 0);
        assert!(pending.lock().unwrap().is_empty());
        // Node 2 took this node (1) as down: its connections are evicted; its own NodeDown
        // (proposed as it starts) evicts nobody.
        assert!(!evictions.has_changed().unwrap());
        a.apply(7, &entry(1, 10, MetaOp::NodeDown { node: 1 }));
        assert!(!evictions.has_changed().unwrap());
        a.apply(8, &entry(2, 11, MetaOp::NodeDown { node: 1 }));
        assert!(evictions.has_changed().unwrap());
        assert_eq!(lookup(&v, "mine"), code::NOT_FOUND);
    }
}
