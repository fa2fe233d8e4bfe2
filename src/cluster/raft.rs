//! One Raft group on this node: raft-rs's `RawNode` over an in-memory mirror of the log that
//! the store keeps. The caller drives it (`tick`, `step`, `propose`) and, after each batch of
//! inputs, does its ready work in the order Raft requires, in two halves so that one sync
//! serves every group of the node: `prepare` sends what a leader may send at once and
//! returns the new entries and hard state to sync; once synced (`persist`), `finish` sends
//! the messages that depend on them. Committed entries are handed to the state machine in
//! log order. A state machine's snapshot (`snapshot_made`) lets the log before it go, but
//! the entries it keeps (`kept`: a quorum queue's live messages); a snapshot from the
//! leader replaces this node's log and state, with the leader's kept entries, which come
//! ahead of it in a stream (`transfer`).
//!
//! Invariants: the store holds every entry the mirror holds, contiguous from the first
//! after its last snapshot, and before its floor the kept entries of the last snapshot;
//! an entry is applied only once committed, and on restart the state machine gets the
//! saved snapshot, then every committed entry after it again. A snapshot from the leader
//! is stepped only once its kept entries are staged here, and staged entries are deleted
//! only when no snapshot stepped or installed keeps them.

mod members;
mod sending;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use protobuf::Message as _;
use raft::prelude::{Entry, EntryType, HardState, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole, Storage as _};

use super::ClusterError;
use super::kept::{self, Keep};
use super::link::Links;
use super::node::Apply;
use super::quiet::Quiet;
use super::storage::{GroupStorage, LogBytes, corrupt, load};
use super::transfer::{Sending, Staging};
use crate::store::{Compact, Op, RaftLog, Store, StoreError};
use sending::Pin;

/// Ticks (of `TICK`) without a heartbeat before a follower stands for election.
const ELECTION_TICKS: usize = 10;
/// Ticks between a leader's heartbeats.
const HEARTBEAT_TICKS: usize = 2;
/// Ticks in which a campaign made at a leader's link loss is made again while no leader
/// is known (see `leader_link_lost`).
const HURRY_TICKS: u8 = 5;
/// How often a group ticks.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(100);
/// A leader compacts its log past a follower at most this many entries behind only by
/// sending it a snapshot: one closer gets entries.
const LAG_KEPT: u64 = 1024;

/// A group's ready work between its two halves: the ops to sync first.
pub struct Prepared {
    ready: raft::Ready,
    pub ops: Vec<Op>,
    /// A snapshot from the leader (its index and state machine data), and the committed
    /// entries after it: applied once it is stored.
    installed: Option<(u64, Vec<u8>, Vec<Entry>)>,
}

/// Sync the ops of a round (of every group) in one write of the store's group commit.
pub async fn persist(store: &Store, ops: Vec<Op>) -> Result<(), ClusterError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store.submit(
        ops,
        true,
        Some(Box::new(move |r: Result<(), StoreError>| {
            let _ = tx.send(r);
        })),
    );
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ClusterError::Store(e)),
        Err(_) => Err(ClusterError::Store(StoreError::Unavailable)),
    }
}

/// A group as this node sees it, for the status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub term: u64,
    /// The leader's Raft id (0: none known).
    pub leader: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    /// On the leader: each voter's last entry known to be in its log.
    pub matched: Vec<(u64, u64)>,
    /// The group's voters (Raft ids) as this node applied them, in order.
    pub voters: Vec<u64>,
    /// Idle and not ticking (see `quiet`).
    pub quiet: bool,
}

/// Where a group's messages go: the node's links to its peers (a test's simulated network
/// in `sim`). Sending never waits; a message may be lost, as on a link that goes down.
pub trait Transport: Send + Sync {
    fn send_raft(&self, to: u64, group: u64, msg: Bytes);
}

impl Transport for Links {
    fn send_raft(&self, to: u64, group: u64, msg: Bytes) {
        for frame in super::parts::split(super::parts::Kind::Raft, group, msg) {
            self.send(super::node_of(to), frame);
        }
    }
}

/// What a group writes, sends and counts through: the node's store, links and gauge.
pub struct GroupIo {
    pub store: Arc<Store>,
    pub links: Arc<dyn Transport>,
    pub log_bytes: LogBytes,
}

pub struct Group {
    pub id: u64,
    node: RawNode<GroupStorage>,
    store: Arc<Store>,
    links: Arc<dyn Transport>,
    /// The index of the last committed entry handed on (of any kind).
    applied: u64,
    /// Read indexes that came back: (index, the read's context).
    read_states: Vec<(u64, Vec<u8>)>,
    /// Followers sent a snapshot this round: reported once the round is done.
    snapshots_sent: Vec<u64>,
    /// Membership changes applied: their proposals' contexts.
    conf_applied: Vec<Vec<u8>>,
    quiet: Quiet,
    /// Where the stored log proper starts: the entries before it are kept ones
    /// (`kept`), the next compaction starts here.
    floor: u64,
    /// The entries kept past the last snapshot (sorted).
    kept: Vec<u64>,
    /// Snapshots sent to followers (by Raft id), which compactions respect until the
    /// follower has taken them (`Pin`).
    pins: BTreeMap<u64, Pin>,
    /// Sendings for the runtime to start (`take_sendings`).
    sendings: Vec<Sending>,
    /// A leader's snapshot being received: its kept entries staged so far.
    staging: Option<Staging>,
    /// The kept entries of a leader's snapshot stepped and not installed yet: staged, and
    /// not to be deleted.
    accepted: Option<(u64, Vec<u64>)>,
    /// Ticks left to campaign again after a leader's link loss (`leader_link_lost`).
    hurry: u8,
}

/// raft-rs logs through slog; its lines go to tracing under the `raft` target.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, r: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match r.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", r.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", r.msg()),
            _ => tracing::debug!(target: "raft", "{}", r.msg()),
        }
        Ok(())
    }
}

impl Group {
    /// The group with `voters` as members, its log as the store saved it; a saved snapshot
    /// is handed to `apply` first (its entries follow).
    pub fn open(
        id: u64,
        node_id: u64,
        voters: Vec<u64>,
        saved: Option<&RaftLog>,
        io: GroupIo,
        apply: &mut dyn Apply,
    ) -> Result<Group, ClusterError> {
        let GroupIo {
            store,
            links,
            log_bytes,
        } = io;
        let storage = GroupStorage::new(voters, log_bytes);
        let mut applied = 0;
        let mut floor = 0;
        let mut kept = Vec::new();
        if let Some(log) = saved {
            (applied, kept) = load(&storage, log, apply)?;
            floor = match log.floor {
                0 => log.first,
                f => f,
            };
        }
        let config = raft::Config {
            id: node_id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            // A leader cut off from the majority steps down; a node that rejoins does not
            // disturb a working leader with a higher term.
            check_quorum: true,
            pre_vote: true,
            applied,
            // The simulated network's runs are reproducible from their seed: the election
            // timeout is not drawn at random there (the simulation skews the nodes' ticks).
            max_election_tick: if cfg!(test) { ELECTION_TICKS + 1 } else { 0 },
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| ClusterError::Config(e.to_string()))?;
        let logger = slog::Logger::root(TracingDrain, slog::o!("group" => id));
        let node = RawNode::new(&config, storage, &logger)
            .map_err(|e| ClusterError::Config(e.to_string()))?;
        Ok(Group {
            id,
            node,
            store,
            links,
            applied,
            read_states: Vec::new(),
            snapshots_sent: Vec::new(),
            conf_applied: Vec::new(),
            quiet: Quiet::default(),
            hurry: 0,
            floor,
            kept,
            pins: BTreeMap::new(),
            sendings: Vec::new(),
            staging: None,
            accepted: None,
        })
    }

    /// One tick, unless the group is quiet (see `quiet`); `up`: the peers whose node link
    /// is up.
    pub fn tick(&mut self, up: &BTreeSet<u64>) {
        if self.quiet.skip(&mut self.node.raft, up) {
            return;
        }
        self.node.tick();
        if self.hurry > 0 {
            self.hurry -= 1;
            let raft = &self.node.raft;
            let waiting = matches!(raft.state, StateRole::PreCandidate | StateRole::Follower);
            if waiting && raft.leader_id == raft::INVALID_ID {
                let _ = self.node.campaign();
            }
        }
    }

    /// Tick again from now on (a node link came up or went down).
    pub fn wake(&mut self) {
        self.quiet.wake();
    }

    /// A message from a peer; one that cannot be decoded is dropped.
    ///
    /// raft-rs asserts (panics) on a message that contradicts this node's stored state,
    /// such as a commit index past the end of its log: its data directory was wiped, or
    /// replaced by an older copy, and the peers remember more of it than it has. Such a node
    /// must not go on as the same member (it could vote twice, or lose what it had
    /// acknowledged): it stops with the reason.
    pub fn step(&mut self, bytes: &[u8]) {
        let m = match Message::parse_from_bytes(bytes) {
            Ok(m) => m,
            Err(e) => return tracing::warn!(group = self.id, "undecodable raft message: {e}"),
        };
        let from = m.from;
        // For another Raft id of this node: the one it had before its data was wiped, still
        // a member until the leader replaces it (`replace_member`). Stepped, the leader's
        // view of that member (a commit index past this log's end) would stop this node.
        if m.to != self.node.raft.id {
            return tracing::trace!(group = self.id, to = m.to, "raft message for an old id");
        }
        self.quiet.stepped(m.get_msg_type());
        let mut listed = None;
        if m.get_msg_type() == MessageType::MsgSnapshot {
            let index = m.get_snapshot().get_metadata().index;
            let kept = match kept::unwrap(&m.get_snapshot().data) {
                Ok((kept, _)) => kept,
                Err(e) => return tracing::warn!(group = self.id, "undecodable snapshot: {e}"),
            };
            if !kept.is_empty() {
                if !(self.staging.as_ref()).is_some_and(|s| s.holds(index, &kept)) {
                    return tracing::debug!(
                        group = self.id,
                        index,
                        "a snapshot whose kept entries are not staged here: dropped"
                    );
                }
                listed = Some((index, kept));
            }
        }
        let node = &mut self.node;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.step(m))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(group = self.id, "raft step: {e}"),
            Err(_) => {
                tracing::error!(
                    group = self.id,
                    peer = from,
                    "this node's raft state is behind what its peers know of it: its data \
                     directory was wiped or replaced by an older copy, and it cannot rejoin \
                     as the same node; stopping (start it with --rejoin on an empty data \
                     directory)"
                );
                std::process::exit(2);
            }
        }
        if let Some((index, kept)) = listed {
            self.stepped_snapshot(index, kept);
        }
    }

    /// Propose an entry (forwarded to the leader if this node is not it); refused while no
    /// leader is known.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), ClusterError> {
        self.quiet.wake();
        self.node
            .propose(Vec::new(), data)
            .map_err(|_| ClusterError::NoLeader)
    }

    /// Ask for a read index (answered through `take_read_states`; lost without a leader).
    pub fn read_index(&mut self, ctx: Vec<u8>) {
        self.node.read_index(ctx);
    }

    /// Does this node know a leader and has it seen an entry of the leader's term
    /// committed? Until then read requests are dropped (a leader drops them until it has
    /// committed in its term; a follower without a leader has nobody to ask).
    pub fn committed_in_term(&self) -> bool {
        let raft = &self.node.raft;
        raft.leader_id != 0 && raft.raft_log.term(raft.raft_log.committed).ok() == Some(raft.term)
    }

    pub fn take_read_states(&mut self) -> Vec<(u64, Vec<u8>)> {
        std::mem::take(&mut self.read_states)
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The leader this node knows of (0: none).
    pub fn leader(&self) -> u64 {
        self.node.raft.leader_id
    }

    /// This node's link to `peer` went down (its process died: the kernel closed the
    /// socket; or the link went silent). If `peer` led this group, waiting out the
    /// election timeout would stall the group for one to two seconds: instead this node
    /// gives up the leader's lease (so it grants a vote at once), and the lowest-numbered
    /// voter still reachable (`up`: peers whose link is up) stands for election now. Only
    /// liveness changes: the campaign is raft-rs's own (pre-vote first), so a leader that
    /// is in fact alive keeps its followers' lease elsewhere and is not deposed; and reads
    /// go through ReadIndex (raft-rs's default), never a lease, so none goes stale. A
    /// survivor that sees the link go a moment later than this node still holds the lease
    /// when the pre-vote comes, and ignores it: the campaign is made again on the next
    /// ticks (`HURRY_TICKS`) while no leader is known, not only after the election timeout.
    pub fn leader_link_lost(&mut self, peer: u64, up: &BTreeSet<u64>) {
        self.quiet.wake();
        let raft = &mut self.node.raft;
        let me = raft.id;
        if super::node_of(raft.leader_id) != peer || raft.leader_id == me {
            return;
        }
        // Forgetting the leader gives up its lease (raft-rs ignores a vote request while a
        // known leader's lease runs). Not by running the election clock out, which would
        // make this node campaign on its next tick as well: two campaigns at once split
        // the vote, and the election then waits out the timeout.
        raft.leader_id = raft::INVALID_ID;
        let first = raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|v| {
                super::node_of(*v) != peer && (*v == me || up.contains(&super::node_of(*v)))
            })
            .min()
            == Some(me);
        if first && raft.promotable() {
            tracing::info!(
                group = self.id,
                leader = peer,
                "leader's link lost: campaigning"
            );
            let _ = self.node.campaign();
            self.hurry = HURRY_TICKS;
        }
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// Hand leadership to `to` (a member): on a follower, raft-rs forwards the request to
    /// the leader, which lets `to` catch up and then tells it to stand for election.
    pub fn transfer_leader(&mut self, to: u64) {
        self.quiet.wake();
        self.node.transfer_leader(to);
    }

    /// Stand for election now (a new group's first member, so leaders spread as placed).
    pub fn campaign(&mut self) {
        self.quiet.wake();
        if let Err(e) = self.node.campaign() {
            tracing::debug!(group = self.id, "raft campaign: {e}");
        }
    }

    /// The first half of the group's ready work: messages a leader may send at once go
    /// out, committed entries that were already persisted are applied, and what must be
    /// synced before the rest is returned (None: nothing to do). The caller syncs the ops
    /// of every group in one write, then calls `finish` for each.
    pub fn prepare(&mut self, apply: &mut dyn Apply) -> Result<Option<Prepared>, ClusterError> {
        if !self.node.has_ready() {
            return Ok(None);
        }
        let mut ready = self.node.ready();
        let msgs = ready.take_messages();
        self.send(msgs);
        for rs in ready.take_read_states() {
            self.read_states.push((rs.index, rs.request_ctx));
        }
        let mut ops = Vec::new();
        let mut installed = None;
        if !ready.snapshot().is_empty() {
            // The leader's snapshot replaces this node's log and state (it was too far
            // behind); the entries in this ready follow it. The state machine gets it once
            // the entries it keeps are stored with it (it may read them at once).
            let snap = ready.snapshot().clone();
            let index = snap.get_metadata().index;
            let (kept, app) = kept::unwrap(&snap.data).map_err(|e| corrupt("raft snapshot", e))?;
            let app = app.to_vec();
            // Staged (checked when stepped), as stored from now on.
            self.accepted = None;
            let forget = kept::forgotten(&self.kept, &kept);
            self.kept = kept.clone();
            ops.push(Op::RaftSnapshot {
                group: self.id,
                snapshot: snap.write_to_bytes().expect("a snapshot encodes"),
                compact: Compact::Replace {
                    floor: index + 1,
                    kept,
                    forget,
                },
            });
            self.floor = index + 1;
            self.node
                .mut_store()
                .install(&snap)
                .map_err(|e| corrupt("raft snapshot", e))?;
            tracing::info!(
                group = self.id,
                index,
                "installed a snapshot from the leader"
            );
            installed = Some((index, app, ready.take_committed_entries()));
        }
        self.apply(ready.take_committed_entries(), apply);
        if !ready.entries().is_empty() {
            let first = ready.entries()[0].index;
            let entries = ready
                .entries()
                .iter()
                .map(|e| e.write_to_bytes().expect("an entry encodes"))
                .collect();
            ops.push(Op::RaftAppend {
                group: self.id,
                first,
                entries,
                // What the log had past them: a new leader's entries replace it.
                stale_to: self.node.store().last_index().unwrap_or(0),
            });
            self.node
                .mut_store()
                .append(ready.entries())
                .map_err(|e| corrupt("raft append", e))?;
        }
        if let Some(hs) = ready.hs() {
            ops.push(self.state_op(hs));
            self.node.mut_store().set_hardstate(hs.clone());
        }
        Ok(Some(Prepared {
            ready,
            ops,
            installed,
        }))
    }

    /// The second half, once `prepared.ops` are synced: messages that depend on them go
    /// out, and newly committed entries are applied.
    pub fn finish(&mut self, prepared: Prepared, apply: &mut dyn Apply) {
        let mut ready = prepared.ready;
        if let Some((index, data, committed)) = prepared.installed {
            self.applied = index;
            apply.restore(index, &data);
            self.apply(committed, apply);
        }
        self.send(ready.take_persisted_messages());
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            let hs = {
                let mut store = self.node.mut_store().mem.wl();
                store.mut_hard_state().set_commit(commit);
                store.hard_state().clone()
            };
            let op = self.state_op(&hs);
            // Not synced: a lost commit index is learnt again from the leader.
            self.store.submit(vec![op], false, None);
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries(), apply);
        self.node.advance_apply();
        // Handed to the link: a snapshot lost on the way is sent again once the follower
        // answers a probe (raft-rs waits for this report before it probes again).
        for to in std::mem::take(&mut self.snapshots_sent) {
            self.node.report_snapshot(to, SnapshotStatus::Finish);
        }
    }

    /// The state machine made a snapshot at `index` (applied here): it replaces the last
    /// one, and the log before it is compacted, except what a close follower still needs
    /// from a leader, the entries `keep` names and those of snapshots being sent. Returns
    /// the store write (None if the snapshot is not newer).
    pub fn snapshot_made(&mut self, index: u64, data: Bytes, keep: Keep) -> Option<Op> {
        let size = keep.size;
        let mut live = keep.live;
        self.unpin_taken();
        if !self.pins.is_empty() {
            live.extend(self.pins.values().flat_map(|p| p.kept.iter().copied()));
            live.sort_unstable();
            live.dedup();
        }
        let data = kept::wrap(&data, &live);
        let snap = self.node.store().made(index, data, keep.send)?;
        // A follower being sent a snapshot needs the entries after it next: compacted
        // meanwhile, it would be sent another one, as large.
        let mut below = (self.pins.values()).fold(index + 1, |b, p| b.min(p.index + 1));
        if self.is_leader() {
            let me = self.node.raft.id;
            for (id, pr) in self.node.raft.prs().iter() {
                let far = pr.matched + LAG_KEPT < index;
                if *id != me && !far {
                    below = below.min(pr.matched + 1);
                }
            }
        }
        self.node.store().compact(below);
        tracing::debug!(
            group = self.id,
            index,
            size,
            below,
            kept = live.len(),
            "raft snapshot"
        );
        let from = self.floor;
        self.floor = from.max(below);
        let forget = kept::forgotten(&self.kept, &live);
        self.kept = live.clone();
        Some(Op::RaftSnapshot {
            group: self.id,
            snapshot: snap.write_to_bytes().expect("a snapshot encodes"),
            compact: Compact::Below {
                from,
                below,
                keep: live,
                forget,
            },
        })
    }

    /// A follower needs a snapshot that is not at hand (the flag is cleared).
    pub fn snapshot_wanted(&self) -> bool {
        self.node.store().take_wanted()
    }

    /// Forget a snapshot kept for followers once it is old.
    pub fn expire_snapshot(&self) {
        self.node.store().expire();
    }

    pub fn status(&self) -> GroupStatus {
        let raft = &self.node.raft;
        let matched = if self.is_leader() {
            let mut m: Vec<(u64, u64)> =
                raft.prs().iter().map(|(id, p)| (*id, p.matched)).collect();
            m.sort_unstable();
            m
        } else {
            Vec::new()
        };
        GroupStatus {
            term: raft.term,
            leader: raft.leader_id,
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            last_index: raft.raft_log.last_index(),
            snapshot_index: self.node.store().snapshot_index(),
            matched,
            voters: self.voters(),
            quiet: self.quiet.is_quiet(),
        }
    }

    /// Entries in the log mirror, and the index of the last snapshot.
    pub fn log_span(&self) -> (u64, u64) {
        let store = self.node.store();
        let first = store.first_index().unwrap_or(1);
        let last = store.last_index().unwrap_or(0);
        ((last + 1).saturating_sub(first), store.snapshot_index())
    }

    fn state_op(&self, hs: &HardState) -> Op {
        Op::RaftState {
            group: self.id,
            state: hs.write_to_bytes().expect("a hard state encodes"),
        }
    }

    fn apply(&mut self, entries: Vec<Entry>, apply: &mut dyn Apply) {
        for e in entries {
            self.applied = e.index;
            // Empty entries (a new leader's no-op) are handed on too: a state machine that
            // counts its applied index (for read indexes) must see every index, so a
            // membership change goes on as an empty one.
            match e.get_entry_type() {
                EntryType::EntryNormal => apply.apply(e.index, &e.data),
                EntryType::EntryConfChange => {
                    if let Some((add, id)) = self.apply_member_change(&e) {
                        apply.member_changed(add, id);
                    }
                    apply.apply(e.index, &[]);
                }
                EntryType::EntryConfChangeV2 => apply.apply(e.index, &[]),
            }
        }
    }

    /// This node's Raft id in the group.
    pub fn raft_id(&self) -> u64 {
        self.node.raft.id
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            let bytes = match m.write_to_bytes() {
                Ok(bytes) => Bytes::from(bytes),
                Err(e) => {
                    tracing::error!(group = self.id, "cannot encode a raft message: {e}");
                    continue;
                }
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let index = m.get_snapshot().get_metadata().index;
                let kept = (kept::unwrap(&m.get_snapshot().data)).map_or(Vec::new(), |k| k.0);
                tracing::info!(
                    group = self.id,
                    to,
                    index,
                    kept = kept.len(),
                    "sending a snapshot"
                );
                if !kept.is_empty() {
                    // Its kept entries go first, streamed (`transfer`); Raft hears how the
                    // sending ended (`sent`).
                    let term = m.get_snapshot().get_metadata().term;
                    let sent = None;
                    let pin = Pin {
                        index,
                        term,
                        kept: kept.clone(),
                        sent,
                    };
                    self.pins.insert(to, pin);
                    self.pins_changed();
                    (self.sendings).push(Sending::new(self.id, to, index, bytes, kept));
                    continue;
                }
                self.snapshots_sent.push(to);
            }
            self.links.send_raft(to, self.id, bytes);
        }
    }
}
