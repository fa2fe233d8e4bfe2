//! This node's cluster runtime: one task drives the node's Raft groups (ticks every
//! `raft::TICK`, steps messages from the links, takes the `Cluster` handle's requests) and
//! does each round's ready work with one sync for every group, handing each group's committed
//! entries to its `Apply` in log order. Reads wait for their read index and then for this
//! node to apply up to it.
//!
//! A node that rejoins with a wiped data directory takes part in the metadata group under a
//! new Raft id (`check_data_dir`): until the group has it as a voter, it asks its peers every
//! `REJOIN_ASK` to replace its old id with the new one (`Frame::Rejoin`), and the leader does
//! so in two membership changes (`Group::replace_member`). It then catches up like a new
//! member, from the leader's log or snapshot.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::kept::Keep;
use super::link::{Frame, Inbound, Links, Sessions};
use super::node::{Apply, Leaders, ROUND, Request};
use super::raft::{Group, GroupIo, TICK, persist};
use super::storage::LogBytes;
use super::transfer::{self, Sending};
use super::unopened::{Early, Unopened};
use super::{ClusterError, META_GROUP};
use crate::store::{Op, RaftLog, Store};

/// Bytes of messages and proposals one round takes, besides `ROUND` of them: a round
/// persists what it took before it steps anything else (ticks, heartbeats and votes wait
/// for it), so a burst of large messages must not make it long.
const ROUND_BYTES: usize = 16 << 20;

/// How often (in ticks) a rejoining node asks its peers to take its new Raft id.
const REJOIN_ASK: u32 = 10;

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
pub(super) fn up_peers(sessions: &Sessions) -> BTreeSet<u64> {
    sessions
        .iter()
        .filter(|(_, s)| s.is_some())
        .map(|(id, _)| *id)
        .collect()
}

/// How a snapshot's sending ended (`transfer::run`).
struct Sent {
    group: u64,
    to: u64,
    index: u64,
    /// Which sending to this node it was (a newer one replaces it).
    number: u64,
    ok: bool,
}

/// Snapshots being sent from this node, by (group, peer node): the sending's number, the
/// snapshot's index, and where the follower's acknowledgements go.
#[derive(Default)]
struct Sendings {
    next: u64,
    open: HashMap<(u64, u64), (u64, u64, watch::Sender<u64>)>,
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
pub(super) struct Runtime {
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
    /// Ticks since this node last asked to rejoin (see the module doc).
    rejoin_ticks: u32,
    sendings: Sendings,
    sent: (mpsc::Sender<Sent>, Option<mpsc::Receiver<Sent>>),
}

impl Runtime {
    /// The runtime of node `node_id`, with the groups' logs the store saved; it reports the
    /// metadata group's leader and every other group's.
    pub(super) fn new(
        node_id: u64,
        saved: BTreeMap<u64, RaftLog>,
        store: Arc<Store>,
        links: Arc<Links>,
        (meta_leader, leaders): (watch::Sender<u64>, Leaders),
        log_bytes: LogBytes,
    ) -> Runtime {
        Runtime {
            node_id,
            groups: BTreeMap::new(),
            saved,
            store,
            links,
            meta_leader,
            leaders,
            log_bytes,
            next_change: 0,
            unopened: Unopened::default(),
            rejoin_ticks: 0,
            sendings: Sendings::default(),
            sent: {
                let (tx, rx) = mpsc::channel(64);
                (tx, Some(rx))
            },
        }
    }

    pub(super) async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut requests: mpsc::Receiver<Request>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut links = self.links.up();
        let mut links_up = up_peers(&links.borrow_and_update());
        let mut links_open = true;
        let mut sent = self.sent.1.take().expect("the runtime runs once");
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    for r in self.groups.values_mut() {
                        r.group.tick(&links_up);
                        r.group.expire_snapshot();
                    }
                    self.unopened.expire(std::time::Instant::now());
                    self.ask_to_rejoin();
                }
                changed = links.changed(), if links_open => match changed {
                    Ok(()) => {
                        let now = up_peers(&links.borrow_and_update());
                        self.links_lost(&links_up, &now);
                        if now != links_up {
                            for r in self.groups.values_mut() {
                                r.group.wake();
                            }
                        }
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
                Some(s) = sent.recv() => self.sent(s),
            }
            let mut bytes = 0;
            for _ in 0..ROUND {
                if bytes >= ROUND_BYTES {
                    break;
                }
                match inbound.try_recv() {
                    Ok(m) => {
                        if let Frame::Raft { msg, .. } | Frame::Kept { msg, .. } = &m.frame {
                            bytes += msg.len();
                        }
                        self.step(m);
                    }
                    Err(_) => break,
                }
            }
            for _ in 0..ROUND {
                if bytes >= ROUND_BYTES {
                    break;
                }
                match requests.try_recv() {
                    Ok(r) => {
                        if let Request::Propose { data, .. } = &r {
                            bytes += data.len();
                        }
                        self.request(r);
                    }
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
            let mut sendings = Vec::new();
            for (id, r) in self.groups.iter_mut() {
                sendings.extend(r.group.take_sendings());
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
                if let Some(data) = r.apply.snapshot_due() {
                    let index = r.group.applied();
                    let keep = Keep::nothing(data.len());
                    if let Some(op) = r.group.snapshot_made(index, data.into(), keep) {
                        self.store.submit(vec![op], false, None);
                    }
                }
            }
            for s in sendings {
                self.start_sending(s);
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

    /// Send a snapshot with its kept entries (`transfer`), in a task of its own; one
    /// sending to the same node for the same group before it is given up.
    fn start_sending(&mut self, s: Sending) {
        let (group, to, index) = (s.group, s.to, s.index);
        let (acks_tx, acks) = watch::channel(0);
        self.sendings.next += 1;
        let number = self.sendings.next;
        let key = (group, super::node_of(to));
        self.sendings.open.insert(key, (number, index, acks_tx));
        let (store, links, done) = (self.store.clone(), self.links.clone(), self.sent.0.clone());
        tokio::spawn(async move {
            let ok = transfer::run(s, store, links, acks).await;
            let sent = Sent {
                group,
                to,
                index,
                number,
                ok,
            };
            let _ = done.send(sent).await;
        });
    }

    /// A sending ended; one replaced by a newer one is not Raft's concern (the newer one
    /// may be of the same snapshot).
    fn sent(&mut self, s: Sent) {
        let key = (s.group, super::node_of(s.to));
        if (self.sendings.open.get(&key)).is_none_or(|o| o.0 != s.number) {
            return;
        }
        self.sendings.open.remove(&key);
        if let Some(r) = self.groups.get_mut(&s.group) {
            r.group.sent(s.to, s.index, s.ok);
        }
    }

    /// A chunk of a snapshot for one of this node's groups: staged, then acknowledged (a
    /// group not open here refuses it: the leader tries again later).
    fn stage(&mut self, from: u64, group: u64, msg: &[u8]) {
        let Some(r) = self.groups.get_mut(&group) else {
            if let Ok(c) = transfer::Chunk::decode(msg) {
                let refused = transfer::ack(group, c.index, transfer::REFUSED);
                self.links.send(from, refused);
            }
            return;
        };
        let Some((ops, index, seq)) = r.group.stage(msg) else {
            return;
        };
        let links = self.links.clone();
        let acked = Box::new(move |r: Result<(), crate::store::StoreError>| {
            if r.is_ok() {
                links.send(from, transfer::ack(group, index, seq));
            }
        });
        self.store.submit(ops, false, Some(acked));
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
        if let Frame::Rejoin { raft_id } = m.frame {
            // Only for the sender itself, and only for an id that is not a node's first.
            if super::node_of(raft_id) == m.from
                && raft_id != m.from
                && let Some(r) = self.groups.get_mut(&META_GROUP)
            {
                r.group.replace_member(m.from, raft_id);
            }
            return;
        }
        if let Frame::Kept { group, msg } = m.frame {
            return self.stage(m.from, group, &msg);
        }
        if let Frame::KeptAck { group, index, seq } = m.frame {
            if let Some((_, i, acks)) = self.sendings.open.get(&(group, m.from))
                && *i == index
            {
                acks.send_replace(seq);
            }
            return;
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

    /// A node that rejoins (its metadata Raft id is not its node id) asks every peer it
    /// reaches to make its id a voter, until one is.
    fn ask_to_rejoin(&mut self) {
        let Some(r) = self.groups.get(&META_GROUP) else {
            return;
        };
        let me = r.group.raft_id();
        if me == self.node_id || r.group.voters().contains(&me) {
            return;
        }
        self.rejoin_ticks += 1;
        if self.rejoin_ticks < REJOIN_ASK {
            return;
        }
        self.rejoin_ticks = 0;
        tracing::info!(
            raft_id = me,
            "rejoining the cluster under a new raft id: asking the metadata leader"
        );
        for peer in up_peers(&self.links.up().borrow()) {
            self.links.send(peer, Frame::Rejoin { raft_id: me });
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
                me,
                voters,
                campaign,
                apply,
                leader,
                done,
            } => {
                let _ = done.send(self.open(group, (me, voters), campaign, apply, leader));
            }
            Request::Close { group, unopened } => {
                if unopened && self.groups.contains_key(&group) {
                    return;
                }
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
            Request::ForceAlone { group, done } => {
                let forced = match self.groups.get_mut(&group) {
                    Some(r) => r.group.force_alone(),
                    None => Err(ClusterError::Refused(format!("no group {group} here"))),
                };
                let _ = done.send(forced);
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
            Request::Snapshot {
                group,
                index,
                data,
                keep,
            } => {
                let op = self
                    .groups
                    .get_mut(&group)
                    .and_then(|r| r.group.snapshot_made(index, data, keep));
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
        (me, voters): (u64, Vec<u64>),
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
            me,
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
    let mut now = (r.group.leader(), r.group.term());
    if id == META_GROUP {
        // By node: a node that rejoined leads under a Raft id of its own.
        now.0 = super::node_of(now.0);
    }
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
