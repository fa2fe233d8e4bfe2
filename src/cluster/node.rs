//! This node's cluster runtime: one task drives the node's Raft groups (ticks every
//! `raft::TICK`, steps messages from the links, takes proposals) and does each round's ready
//! work with one sync for every group, handing each group's committed entries to its
//! `Apply` in log order. The `Cluster` handle opens and closes groups, proposes, and reports
//! who leads. On a single node the same runtime runs groups of one, without links.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::link::{Frame, Inbound, Links, Session, Sessions};
use super::raft::{Group, GroupIo, GroupStatus, TICK, persist};
use super::storage::LogBytes;
use super::unopened::{Early, Unopened};
use super::{ClusterConfig, ClusterError, META_GROUP};
use crate::store::{Op, RaftLog, Store};

/// Inputs taken in one round before the ready work (bounds a round's latency).
const ROUND: usize = 1024;

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
}

enum Request {
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
        voters: Vec<u64>,
        campaign: bool,
        apply: Box<dyn Apply>,
        leader: watch::Sender<u64>,
        /// Answered with whether the group is new here (no saved log).
        done: oneshot::Sender<Result<bool, ClusterError>>,
    },
    /// Leave a group for good: it stops and its log is deleted.
    Close { group: u64 },
    /// Hand the group's leadership to `to`.
    Transfer { group: u64, to: u64 },
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
}

/// Each group's leader (Raft id, 0: none known) but the metadata group's.
type Leaders = Arc<std::sync::Mutex<BTreeMap<u64, u64>>>;

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
        let voters = config.peers.keys().copied().collect();
        let cluster = Cluster::spawn(config, store, saved, links, (in_rx, fwd_rx), log_bytes);
        // The metadata group reports to the cluster's own leader watch (see `Runtime::open`).
        let unused = watch::Sender::new(0);
        cluster
            .open(META_GROUP, voters, false, apply, unused)
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
        let runtime = Runtime {
            node_id: config.node_id,
            groups: BTreeMap::new(),
            saved,
            store,
            links: links.clone(),
            meta_leader: l_tx,
            leaders: leaders.clone(),
            log_bytes,
            next_change: 0,
            unopened: Unopened::default(),
        };
        tokio::spawn(runtime.run(inbound, p_rx));
        Arc::new(Cluster {
            config,
            requests: p_tx,
            leader: l_rx,
            links,
            forwarded: std::sync::Mutex::new(Some(forwarded)),
            idle_inbound: std::sync::Mutex::new(None),
            leaders,
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
        voters: Vec<u64>,
        campaign: bool,
        apply: Box<dyn Apply>,
    ) -> Result<(watch::Receiver<u64>, bool), ClusterError> {
        let (leader, rx) = watch::channel(0);
        let new = self.open(group, voters, campaign, apply, leader).await?;
        Ok((rx, new))
    }

    async fn open(
        &self,
        group: u64,
        voters: Vec<u64>,
        campaign: bool,
        apply: Box<dyn Apply>,
        leader: watch::Sender<u64>,
    ) -> Result<bool, ClusterError> {
        let (done, rx) = oneshot::channel();
        let req = Request::Open {
            group,
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
    /// up to it is compacted, and a follower too far behind is sent it.
    pub async fn snapshot(&self, group: u64, index: u64, data: bytes::Bytes) {
        let req = Request::Snapshot { group, index, data };
        let _ = self.requests.send(req).await;
    }

    /// Leave a group for good (its queue is deleted): it stops and its log is deleted.
    pub async fn close_group(&self, group: u64) {
        let _ = self.requests.send(Request::Close { group }).await;
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

/// Reads waiting for their read index, then for this node to apply up to it.
#[derive(Default)]
struct Reads {
    next: u64,
    asked: HashMap<Vec<u8>, oneshot::Sender<u64>>,
    /// (read index, waiter), answered once applied reaches the index.
    indexed: Vec<(u64, oneshot::Sender<u64>)>,
    /// Reads asked before this node saw an entry of the group's current term committed:
    /// a leader drops those (raft-rs's rule, as a new leader does not know its commit index
    /// yet), so they are asked again once it has one, instead of after the asker's retry.
    early: Vec<Vec<u8>>,
}

impl Reads {
    fn ask(&mut self, group: &mut Group, done: oneshot::Sender<u64>) {
        self.next += 1;
        let ctx = self.next.to_be_bytes().to_vec();
        // A read whose answer never comes (lost with a leader) is dropped in time: the
        // caller has given up by then.
        if self.asked.len() > 4 * ROUND {
            self.asked.clear();
            self.early.clear();
        }
        self.asked.insert(ctx.clone(), done);
        if !group.committed_in_term() {
            self.early.push(ctx.clone());
        }
        group.read_index(ctx);
    }

    /// Ask again the reads asked too early, once the group can answer them.
    fn ask_early_again(&mut self, group: &mut Group) {
        if self.early.is_empty() || !group.committed_in_term() {
            return;
        }
        for ctx in std::mem::take(&mut self.early) {
            if self.asked.contains_key(&ctx) {
                group.read_index(ctx);
            }
        }
    }

    fn answer(&mut self, group: &mut Group) {
        for (index, ctx) in group.take_read_states() {
            if let Some(done) = self.asked.remove(&ctx) {
                self.indexed.push((index, done));
            }
        }
        let applied = group.applied();
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.indexed)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.indexed = waiting;
        for (index, tx) in done {
            let _ = tx.send(index);
        }
    }
}

/// The peers whose link is up.
fn up_peers(sessions: &Sessions) -> BTreeSet<u64> {
    sessions
        .iter()
        .filter(|(_, s)| s.is_some())
        .map(|(id, _)| *id)
        .collect()
}

/// A group this node takes part in.
struct Running {
    group: Group,
    apply: Box<dyn Apply>,
    leader: watch::Sender<u64>,
    /// (leader, term) last reported.
    known: (u64, u64),
    reads: Reads,
    /// Membership changes proposed here, by context, waiting to be applied.
    changes: HashMap<Vec<u8>, oneshot::Sender<()>>,
}

/// The cluster task's state: every group of this node.
struct Runtime {
    node_id: u64,
    groups: BTreeMap<u64, Running>,
    /// Logs of groups not opened yet (queues whose metadata is not applied yet at start).
    saved: BTreeMap<u64, RaftLog>,
    store: Arc<Store>,
    links: Arc<Links>,
    meta_leader: watch::Sender<u64>,
    leaders: Leaders,
    log_bytes: LogBytes,
    /// Numbers this node's membership change proposals.
    next_change: u64,
    /// Messages for groups not open here yet (a new queue's, before its metadata is here).
    unopened: Unopened,
}

impl Runtime {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut requests: mpsc::Receiver<Request>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut links = self.links.up();
        let mut links_up = up_peers(&links.borrow_and_update());
        let mut links_open = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    for r in self.groups.values_mut() {
                        r.group.tick();
                        r.group.expire_snapshot();
                    }
                    self.unopened.expire(std::time::Instant::now());
                }
                changed = links.changed(), if links_open => match changed {
                    Ok(()) => {
                        let now = up_peers(&links.borrow_and_update());
                        self.links_lost(&links_up, &now);
                        links_up = now;
                    }
                    Err(_) => links_open = false,
                },
                m = inbound.recv() => match m {
                    Some(m) => self.step(m),
                    None => break,
                },
                r = requests.recv() => match r {
                    Some(r) => self.request(r),
                    None => break,
                },
            }
            for _ in 0..ROUND {
                match inbound.try_recv() {
                    Ok(m) => self.step(m),
                    Err(_) => break,
                }
            }
            for _ in 0..ROUND {
                match requests.try_recv() {
                    Ok(r) => self.request(r),
                    Err(_) => break,
                }
            }
            for r in self.groups.values_mut() {
                r.reads.ask_early_again(&mut r.group);
            }
            if let Err(e) = self.ready().await {
                // Only a store failure gets here, and it stops the node by itself.
                tracing::error!("raft groups stopped: {e}");
                break;
            }
            for (id, r) in self.groups.iter_mut() {
                r.reads.answer(&mut r.group);
                for ctx in r.group.take_conf_applied() {
                    if let Some(done) = r.changes.remove(&ctx) {
                        let _ = done.send(());
                    }
                }
                if report_leader(*id, r) && *id != META_GROUP {
                    let mut leaders = self.leaders.lock().unwrap_or_else(|e| e.into_inner());
                    leaders.insert(*id, r.known.0);
                }
                if r.group.snapshot_wanted() {
                    r.apply.want_snapshot();
                }
            }
        }
        self.meta_leader.send_replace(0);
        for r in self.groups.values() {
            r.leader.send_replace(0);
        }
        self.leaders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Every group's ready work, with one sync for all of them.
    async fn ready(&mut self) -> Result<(), ClusterError> {
        let mut prepared = Vec::new();
        let mut ops = Vec::new();
        for (id, r) in self.groups.iter_mut() {
            if let Some(mut p) = r.group.prepare(&mut *r.apply)? {
                ops.append(&mut p.ops);
                prepared.push((*id, p));
            }
        }
        if !ops.is_empty() {
            persist(&self.store, ops).await?;
        }
        for (id, p) in prepared {
            if let Some(r) = self.groups.get_mut(&id) {
                r.group.finish(p, &mut *r.apply);
            }
        }
        Ok(())
    }

    /// Links that went down since `was`: groups they led elect a new leader now.
    fn links_lost(&mut self, was: &BTreeSet<u64>, now: &BTreeSet<u64>) {
        for lost in was.difference(now) {
            for r in self.groups.values_mut() {
                r.group.leader_link_lost(*lost, now);
            }
        }
    }

    fn step(&mut self, m: Inbound) {
        // A message still queued from a link that went down is dropped (Raft takes a lost
        // message in its stride): stepped after `links_lost`, a dead leader's last
        // heartbeat would give the followers back the lease they just gave up, and they
        // would ignore the survivor's campaign until the election timeout.
        if !self.links.is_current(m.from, m.session) {
            return tracing::trace!(from = m.from, "message from a link that went down");
        }
        if let Frame::Raft { group, msg } = m.frame {
            match self.groups.get_mut(&group) {
                Some(r) => r.group.step(&msg),
                // A group not opened here yet (its queue's metadata is on its way), or
                // closed: kept a while for the first, dropped for the second.
                None => {
                    tracing::trace!(from = m.from, group, "message for no group here");
                    let early = Early {
                        from: m.from,
                        session: m.session,
                        msg,
                    };
                    self.unopened.keep(group, early, std::time::Instant::now());
                }
            }
        }
    }

    fn request(&mut self, r: Request) {
        match r {
            Request::Propose { group, data, done } => {
                let r = match self.groups.get_mut(&group) {
                    Some(r) => r.group.propose(data),
                    None => Err(ClusterError::Stopped),
                };
                if let Some(done) = done {
                    let _ = done.send(r);
                }
            }
            Request::Read { group, done } => {
                if let Some(r) = self.groups.get_mut(&group) {
                    r.reads.ask(&mut r.group, done);
                }
            }
            Request::Open {
                group,
                voters,
                campaign,
                apply,
                leader,
                done,
            } => {
                let _ = done.send(self.open(group, voters, campaign, apply, leader));
            }
            Request::Close { group } => {
                if let Some(r) = self.groups.remove(&group) {
                    r.leader.send_replace(0);
                }
                self.leaders
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&group);
                self.saved.remove(&group);
                self.store
                    .submit(vec![Op::RaftDelete { group }], true, None);
            }
            Request::Transfer { group, to } => {
                if let Some(r) = self.groups.get_mut(&group) {
                    r.group.transfer_leader(to);
                }
            }
            Request::Member {
                group,
                add,
                node,
                done,
            } => {
                self.next_change += 1;
                // Unique in the cluster: only the proposing node waits for it.
                let ctx = [self.node_id.to_be_bytes(), self.next_change.to_be_bytes()].concat();
                if let Some(r) = self.groups.get_mut(&group)
                    && r.group.propose_member(add, node, ctx.clone()).is_ok()
                {
                    // Changes lost without an answer are dropped in time.
                    if r.changes.len() > 64 {
                        r.changes.clear();
                    }
                    r.changes.insert(ctx, done);
                }
            }
            Request::Status { group, reply } => {
                let _ = reply.send(self.groups.get(&group).map(|r| r.group.status()));
            }
            Request::Snapshot { group, index, data } => {
                let op = self
                    .groups
                    .get_mut(&group)
                    .and_then(|r| r.group.snapshot_made(index, data));
                if let Some(op) = op {
                    // Unsynced: lost with a crash, the log it compacted is kept with it (one
                    // write), and the group replays from the snapshot before.
                    self.store.submit(vec![op], false, None);
                }
            }
        }
    }

    fn open(
        &mut self,
        group: u64,
        voters: Vec<u64>,
        campaign: bool,
        mut apply: Box<dyn Apply>,
        leader: watch::Sender<u64>,
    ) -> Result<bool, ClusterError> {
        if self.groups.contains_key(&group) {
            return Ok(false);
        }
        let saved = self.saved.remove(&group);
        let new = saved.is_none();
        // A group of one elects itself at once, at every start.
        let campaign = (campaign && saved.is_none()) || voters.len() == 1;
        let mut g = Group::open(
            group,
            self.node_id,
            voters,
            saved.as_ref(),
            GroupIo {
                store: self.store.clone(),
                links: self.links.clone(),
                log_bytes: self.log_bytes.clone(),
            },
            &mut *apply,
        )?;
        if campaign {
            g.campaign();
        }
        for e in self.unopened.take(group) {
            if self.links.is_current(e.from, e.session) {
                g.step(&e.msg);
            }
        }
        let leader = if group == META_GROUP {
            self.meta_leader.clone()
        } else {
            leader
        };
        self.groups.insert(
            group,
            Running {
                group: g,
                apply,
                leader,
                known: (0, 0),
                reads: Reads::default(),
                changes: HashMap::new(),
            },
        );
        Ok(new)
    }
}

/// Tell who leads a group once it changes (the metadata group's in the log); true if it
/// changed.
fn report_leader(id: u64, r: &mut Running) -> bool {
    let now = (r.group.leader(), r.group.term());
    if now == r.known {
        return false;
    }
    if id == META_GROUP {
        match now.0 {
            0 => tracing::info!(
                term = now.1,
                "no metadata leader (an election is under way)"
            ),
            leader if r.group.is_leader() => {
                tracing::info!(
                    term = now.1,
                    "this node (node {leader}) leads the metadata group"
                )
            }
            leader => tracing::info!(term = now.1, "node {leader} leads the metadata group"),
        }
    }
    r.leader.send_replace(now.0);
    r.known = now;
    true
}
