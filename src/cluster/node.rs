//! The handle on this node's cluster runtime (runtime.rs, one task driving every Raft group
//! of the node): the `Cluster` opens and closes groups, proposes, reads, changes members,
//! transfers leadership and reports who leads, by requests to that task. On a single node the
//! same runtime runs groups of one, without links.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::kept::Keep;
use super::link::{Inbound, Links, Session, Sessions};
use super::raft::GroupStatus;
use super::runtime::{Runtime, up_peers};
use super::storage::LogBytes;
use super::{ClusterConfig, ClusterError, META_GROUP};
use crate::store::{RaftLog, Store};

/// Inputs taken in one round before the ready work (bounds a round's latency).
pub(super) const ROUND: usize = 1024;

/// The metadata group's state machine, run on the cluster task.
pub trait Apply: Send + 'static {
    /// A committed entry, in log order; after a restart every committed entry after the
    /// last snapshot comes again. `data` is empty for a new leader's no-op.
    fn apply(&mut self, index: u64, data: &[u8]);

    /// A snapshot (as this state machine made it) replaces the state: the entries after
    /// `index` follow. Comes at a start from a saved snapshot, and on a follower so far
    /// behind that the leader had compacted what it missed.
    fn restore(&mut self, index: u64, data: &[u8]) {
        let _ = data;
        tracing::error!(index, "a snapshot came for a group that makes none");
    }

    /// A follower needs a snapshot newer than the last one made: make one soon
    /// (`Cluster::snapshot`).
    fn want_snapshot(&mut self) {}

    /// A membership change applied (Raft id `raft_id` added, or removed), just before its
    /// entry's `apply` (with empty data); again for its entry after a restart.
    fn member_changed(&mut self, add: bool, raft_id: u64) {
        let _ = (add, raft_id);
    }

    /// A state machine that lives on the cluster task (the metadata group's) snapshots
    /// here: asked after every round, it returns its state as applied so far when a
    /// snapshot is due. Others make theirs elsewhere and send them (`Cluster::snapshot`).
    fn snapshot_due(&mut self) -> Option<Vec<u8>> {
        None
    }
}

pub(super) enum Request {
    /// An entry to propose; answered (if asked) once this node's Raft took it.
    Propose {
        group: u64,
        data: Vec<u8>,
        done: Option<oneshot::Sender<Result<(), ClusterError>>>,
    },
    /// Answered once this node has applied everything committed when it was asked (Raft's
    /// read index: the leader confirms with a majority that it still leads). Dropped without
    /// an answer if no leader is known.
    Read {
        group: u64,
        done: oneshot::Sender<u64>,
    },
    /// Start taking part in a group (its log as the store saved it, if any).
    Open {
        group: u64,
        /// This node's Raft id in the group.
        me: u64,
        voters: Vec<u64>,
        campaign: bool,
        apply: Box<dyn Apply>,
        leader: watch::Sender<u64>,
        /// Answered with whether the group is new here (no saved log).
        done: oneshot::Sender<Result<bool, ClusterError>>,
    },
    /// Leave a group for good: it stops and its log is deleted. `unopened`: only if it
    /// is not running here (a log left from before, not a group a replica opened since).
    Close { group: u64, unopened: bool },
    /// Hand the group's leadership to `to`.
    Transfer { group: u64, to: u64 },
    /// Make this node the group's only voter (`Group::force_alone`).
    ForceAlone {
        group: u64,
        done: oneshot::Sender<Result<Vec<u64>, ClusterError>>,
    },
    /// Add (or remove) voter `node`: answered once the change is applied here; dropped if
    /// it is refused or lost (the caller bounds the wait).
    Member {
        group: u64,
        add: bool,
        node: u64,
        done: oneshot::Sender<()>,
    },
    /// How the group stands here (None: not a group of this node).
    Status {
        group: u64,
        reply: oneshot::Sender<Option<GroupStatus>>,
    },
    /// The group's state machine made a snapshot at `index` (applied).
    Snapshot {
        group: u64,
        index: u64,
        data: bytes::Bytes,
        keep: Keep,
    },
}

pub struct Cluster {
    pub config: ClusterConfig,
    requests: mpsc::Sender<Request>,
    leader: watch::Receiver<u64>,
    links: Arc<Links>,
    /// Forwarded work from peers, until the broker takes it.
    forwarded: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Inbound>>>,
    /// A single node's: keeps the (never used) inbound channel open.
    idle_inbound: std::sync::Mutex<Option<mpsc::Sender<Inbound>>>,
    /// Who leads each queue group, as this node knows it (the runtime keeps it).
    leaders: Leaders,
    /// Where the groups' logs are (kept entries are read from it).
    store: Arc<Store>,
}

/// Each group's leader (Raft id, 0: none known) but the metadata group's.
pub(super) type Leaders = Arc<std::sync::Mutex<BTreeMap<u64, u64>>>;

impl Cluster {
    /// Open the links and the metadata group (its log as `saved` holds it) and start driving
    /// them; other groups' saved logs wait for `open_group`.
    pub async fn start(
        config: ClusterConfig,
        store: Arc<Store>,
        saved: BTreeMap<u64, RaftLog>,
        apply: Box<dyn Apply>,
        log_bytes: LogBytes,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let (in_tx, in_rx) = mpsc::channel(4096);
        let (fwd_tx, fwd_rx) = mpsc::unbounded_channel();
        let links = Links::start(&config, in_tx, fwd_tx)
            .await
            .map_err(|e| ClusterError::Listen(e.to_string()))?;
        // Every node of a new cluster starts the group with all of them as voters; a node
        // that rejoins under a new Raft id starts from the same (and is no voter there): the
        // membership changes in the log, or the snapshot it is sent, bring it up to date.
        let voters = config.peers.keys().copied().collect();
        let cluster = Cluster::spawn(config, store, saved, links, (in_rx, fwd_rx), log_bytes);
        // The metadata group reports to the cluster's own leader watch (see `Runtime::open`).
        let unused = watch::Sender::new(0);
        let me = cluster.config.raft_id;
        cluster
            .open(META_GROUP, (me, voters), false, apply, unused)
            .await?;
        tracing::info!(
            node = cluster.config.node_id,
            listen = %cluster.config.listen,
            peers = cluster.config.peers.len(),
            "cluster node started"
        );
        Ok(cluster)
    }

    /// A single node's Raft runtime, for groups of one (its quorum queues): no links, no
    /// metadata group. `config` names this node (its Raft id) and the timeouts.
    pub fn local(
        config: ClusterConfig,
        store: Arc<Store>,
        saved: BTreeMap<u64, RaftLog>,
        log_bytes: LogBytes,
    ) -> Arc<Cluster> {
        // Nothing arrives from peers; the sender lives as long as the runtime, so that the
        // inbound channel stays open (and empty).
        let (in_tx, in_rx) = mpsc::channel(1);
        let (_fwd_tx, fwd_rx) = mpsc::unbounded_channel();
        let inbound = (in_rx, fwd_rx);
        let cluster = Cluster::spawn(config, store, saved, Links::none(), inbound, log_bytes);
        *cluster
            .idle_inbound
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(in_tx);
        cluster
    }

    fn spawn(
        config: ClusterConfig,
        store: Arc<Store>,
        saved: BTreeMap<u64, RaftLog>,
        links: Arc<Links>,
        (inbound, forwarded): (mpsc::Receiver<Inbound>, mpsc::UnboundedReceiver<Inbound>),
        log_bytes: LogBytes,
    ) -> Arc<Cluster> {
        let (p_tx, p_rx) = mpsc::channel(1024);
        let (l_tx, l_rx) = watch::channel(0);
        let leaders = Leaders::default();
        let runtime = Runtime::new(
            config.node_id,
            saved,
            store.clone(),
            links.clone(),
            (l_tx, leaders.clone()),
            log_bytes,
        );
        tokio::spawn(runtime.run(inbound, p_rx));
        Arc::new(Cluster {
            config,
            requests: p_tx,
            leader: l_rx,
            links,
            forwarded: std::sync::Mutex::new(Some(forwarded)),
            idle_inbound: std::sync::Mutex::new(None),
            leaders,
            store,
        })
    }

    pub fn node_id(&self) -> u64 {
        self.config.node_id
    }

    /// Hand an entry to the metadata group: Ok once this node's Raft took it (forwarding it
    /// to the leader). It may still be lost if leadership changes before it commits; the
    /// caller learns of the commit from its own state machine.
    pub async fn propose(&self, data: Vec<u8>) -> Result<(), ClusterError> {
        self.propose_to(META_GROUP, data).await
    }

    /// The same for any group this node takes part in.
    pub async fn propose_to(&self, group: u64, data: Vec<u8>) -> Result<(), ClusterError> {
        let (done, rx) = oneshot::channel();
        let done = Some(done);
        self.requests
            .send(Request::Propose { group, data, done })
            .await
            .map_err(|_| ClusterError::Stopped)?;
        rx.await.map_err(|_| ClusterError::Stopped)?
    }

    /// Propose without waiting for Raft to take it (only for room in the runtime's queue):
    /// for a caller that learns of the commit from its state machine and proposes again
    /// what it does not see applied, so that it keeps many proposals in flight.
    pub async fn propose_in_flight(&self, group: u64, data: Vec<u8>) {
        let req = Request::Propose {
            group,
            data,
            done: None,
        };
        let _ = self.requests.send(req).await;
    }

    /// Resolves once this node has applied every metadata entry committed before the call;
    /// never resolves if the read is lost (no leader, or none reachable): the caller bounds it.
    pub async fn read(&self) -> Result<(), ClusterError> {
        self.read_group(META_GROUP).await.map(drop)
    }

    /// The same for any group this node takes part in; returns the read index (handed to
    /// the group's `Apply` by then, which may still be applying it).
    pub async fn read_group(&self, group: u64) -> Result<u64, ClusterError> {
        let (done, rx) = oneshot::channel();
        self.requests
            .send(Request::Read { group, done })
            .await
            .map_err(|_| ClusterError::Stopped)?;
        match rx.await {
            Ok(index) => Ok(index),
            // Dropped: lost, as far as the caller is concerned.
            Err(_) => std::future::pending().await,
        }
    }

    /// Take part in group `group` with `voters` (Raft ids) as its members, applying its
    /// committed entries with `apply` (on the cluster task: it must not block). `campaign`:
    /// stand for election at once (the member meant to lead first). Returns the group's
    /// leader as this node knows it (0: none), as it changes, and whether the group is new
    /// here (it had no log on this node).
    pub async fn open_group(
        &self,
        group: u64,
        (me, voters): (u64, Vec<u64>),
        campaign: bool,
        apply: Box<dyn Apply>,
    ) -> Result<(watch::Receiver<u64>, bool), ClusterError> {
        let (leader, rx) = watch::channel(0);
        let new = self
            .open(group, (me, voters), campaign, apply, leader)
            .await?;
        Ok((rx, new))
    }

    async fn open(
        &self,
        group: u64,
        (me, voters): (u64, Vec<u64>),
        campaign: bool,
        apply: Box<dyn Apply>,
        leader: watch::Sender<u64>,
    ) -> Result<bool, ClusterError> {
        let (done, rx) = oneshot::channel();
        let req = Request::Open {
            group,
            me,
            voters,
            campaign,
            apply,
            leader,
            done,
        };
        self.requests
            .send(req)
            .await
            .map_err(|_| ClusterError::Stopped)?;
        rx.await.map_err(|_| ClusterError::Stopped)?
    }

    /// A snapshot of a group's state machine at `index` (an entry it has applied): the log
    /// up to it is compacted but the entries `keep` names, and a follower too far behind
    /// is sent it if `keep` has the entries for it.
    pub async fn snapshot(&self, group: u64, index: u64, data: bytes::Bytes, keep: Keep) {
        let req = Request::Snapshot {
            group,
            index,
            data,
            keep,
        };
        let _ = self.requests.send(req).await;
    }

    /// A group's stored entries as the store has them (None: not stored): entries of the
    /// log, or kept past a snapshot. Blocking: never on an async worker.
    pub fn read_stored(
        &self,
        group: u64,
        indexes: &[u64],
    ) -> Result<Vec<Option<Vec<u8>>>, ClusterError> {
        self.store
            .read_raft_entries(group, indexes)
            .map_err(ClusterError::Store)
    }

    /// The data of a stored entry as `read_stored` gave it.
    pub fn entry_data(stored: &[u8]) -> Result<bytes::Bytes, ClusterError> {
        use protobuf::Message as _;
        let e = raft::prelude::Entry::parse_from_bytes(stored)
            .map_err(|e| ClusterError::Corrupt(format!("raft entry: {e}")))?;
        Ok(e.data)
    }

    /// Leave a group for good (its queue is deleted): it stops and its log is deleted.
    pub async fn close_group(&self, group: u64) {
        self.close(group, false).await;
    }

    /// Delete `group`'s log unless the group runs here: for a replica that learnt it left
    /// the group before it could open it, whose node may have been added back since.
    pub async fn drop_unopened(&self, group: u64) {
        self.close(group, true).await;
    }

    async fn close(&self, group: u64, unopened: bool) {
        let _ = self.requests.send(Request::Close { group, unopened }).await;
    }

    /// The metadata leader as this node knows it (0: none), as it changes.
    pub fn leader(&self) -> watch::Receiver<u64> {
        self.leader.clone()
    }

    /// Ask for `group`'s leadership to go to `to` (a Raft id); whether it did shows in
    /// `leader_of`.
    pub async fn transfer_leader(&self, group: u64, to: u64) {
        let _ = self.requests.send(Request::Transfer { group, to }).await;
    }

    /// Make this node `group`'s only voter, without the other members (a queue that lost
    /// a majority of them for good): the voters dropped (Raft ids). It then leads alone
    /// (see `leader_of`); their removal is for the caller to log (`change_member`).
    pub async fn force_alone(&self, group: u64) -> Result<Vec<u64>, ClusterError> {
        let (done, rx) = oneshot::channel();
        self.requests
            .send(Request::ForceAlone { group, done })
            .await
            .map_err(|_| ClusterError::Stopped)?;
        rx.await.map_err(|_| ClusterError::Stopped)?
    }

    /// Add (`add`) or remove voter `node` (a Raft id) of `group`, a group of this node:
    /// resolves once the change is committed and applied here. Never resolves if the
    /// change is lost (no leader, or another change under way): the caller bounds it.
    pub async fn change_member(
        &self,
        group: u64,
        add: bool,
        node: u64,
    ) -> Result<(), ClusterError> {
        let (done, rx) = oneshot::channel();
        self.requests
            .send(Request::Member {
                group,
                add,
                node,
                done,
            })
            .await
            .map_err(|_| ClusterError::Stopped)?;
        match rx.await {
            Ok(()) => Ok(()),
            Err(_) => std::future::pending().await,
        }
    }

    /// How a group stands on this node (None: not one of its groups, or the node stops).
    pub async fn group_status(&self, group: u64) -> Option<GroupStatus> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Status { group, reply })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    /// Who leads `group` as this node knows it (Raft id, 0: none or not a group here).
    pub fn leader_of(&self, group: u64) -> u64 {
        let leaders = self.leaders.lock().unwrap_or_else(|e| e.into_inner());
        leaders.get(&group).copied().unwrap_or(0)
    }

    /// Which peers have a link up, and its session, as it changes.
    pub fn links_up(&self) -> watch::Receiver<Sessions> {
        self.links.up()
    }

    /// The peers this node has a live link to now.
    pub fn live_peers(&self) -> BTreeSet<u64> {
        up_peers(&self.links.up().borrow())
    }

    /// Forwarded work for a peer's session (waits for room; dropped if the session ended).
    pub async fn forward(&self, to: u64, session: Session, msg: bytes::Bytes) {
        self.links.forward(to, session, msg).await;
    }

    /// Forwarded work from peers: once, for whoever serves it.
    pub fn take_forwarded(&self) -> Option<mpsc::UnboundedReceiver<Inbound>> {
        self.forwarded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}
