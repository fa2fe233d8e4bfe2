//! A group's Raft storage: raft-rs's `MemStorage` (the in-memory mirror of the log the store
//! keeps) with the group's snapshots. raft-rs asks for a snapshot when a follower needs
//! entries this node has compacted away; the state machine makes them (it alone holds the
//! state), so a snapshot is kept here only once made for a follower, and for a while
//! (its data may be large): when none is at hand the answer is
//! "temporarily unavailable", the group flags that one is wanted, and raft-rs asks again on
//! a later heartbeat. The last snapshot's term stays known, so one for a follower can be
//! made again at its index after the log past it is compacted.
//!
//! Invariants: the mirror always keeps at least its last entry (raft-rs's `MemStorage`
//! forgets its first index when emptied), and the term of the snapshot's index stays
//! known after the entries up to it are compacted. `bytes` is the data of the entries in
//! the mirror, also counted in the node's `Gauge` (the memory alarm).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use super::ClusterError;
use super::kept;
use super::node::Apply;
use crate::store::RaftLog;

/// A snapshot made is kept this long for followers that may still ask for it.
const KEEP: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Snapshots {
    /// The index and term of the last snapshot (made here or installed).
    last: (u64, u64),
    /// The last snapshot with its data, while it may be sent.
    kept: Option<(Snapshot, Instant)>,
    /// raft-rs asked for one newer than `kept` (a follower needs it).
    wanted: bool,
    /// The index and term of snapshots sent to followers and not yet taken: an append
    /// after one names its term, known here after newer snapshots compacted the log.
    sent: Vec<(u64, u64)>,
}

/// Where a node's log mirrors count their bytes (the broker's memory alarm).
pub trait Gauge: Send + Sync {
    fn add(&self, n: usize);
    fn sub(&self, n: usize);
}

/// Bytes of entry data in every group's log mirror on this node.
pub type LogBytes = Arc<dyn Gauge>;

pub struct GroupStorage {
    pub mem: MemStorage,
    snaps: Mutex<Snapshots>,
    /// This group's entry bytes in the mirror, and the node's total they are part of.
    bytes: AtomicUsize,
    total: LogBytes,
}

impl GroupStorage {
    pub fn new(voters: Vec<u64>, total: LogBytes) -> GroupStorage {
        GroupStorage {
            mem: MemStorage::new_with_conf_state(ConfState::from((voters, Vec::<u64>::new()))),
            snaps: Mutex::new(Snapshots::default()),
            bytes: AtomicUsize::new(0),
            total,
        }
    }

    /// The data bytes of entries `low..high` in the mirror.
    fn span_bytes(&self, low: u64, high: u64) -> usize {
        if low >= high {
            return 0;
        }
        let ctx = GetEntriesContext::empty(false);
        self.mem
            .entries(low, high, None, ctx)
            .map(|es| es.iter().map(|e| e.data.len()).sum())
            .unwrap_or(0)
    }

    fn grew(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
        self.total.add(n);
    }

    fn shrank(&self, n: usize) {
        let n = n.min(self.bytes.load(Ordering::Acquire));
        self.bytes.fetch_sub(n, Ordering::AcqRel);
        self.total.sub(n);
    }

    /// This group's entry bytes in the mirror.
    pub fn log_bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    fn snaps(&self) -> std::sync::MutexGuard<'_, Snapshots> {
        self.snaps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of the last snapshot (0: none).
    pub fn snapshot_index(&self) -> u64 {
        self.snaps().last.0
    }

    /// The snapshots sent to followers and not yet taken (`Snapshots::sent`).
    pub fn set_sent(&self, sent: Vec<(u64, u64)>) {
        self.snaps().sent = sent;
    }

    /// A follower needs a snapshot newer than the one kept: the flag is cleared.
    pub fn take_wanted(&self) -> bool {
        std::mem::take(&mut self.snaps().wanted)
    }

    /// The snapshot the state machine made at `index` (applied here), with `data`; kept
    /// for followers if `send` (else a follower that needs one waits for a new one). None
    /// if it is not newer than the last one or its entry is unknown.
    pub fn made(&self, index: u64, data: Vec<u8>, send: bool) -> Option<Snapshot> {
        let mut snaps = self.snaps();
        // The last snapshot's entry may be compacted: one for a follower is often made
        // again at the same index.
        let term = match snaps.last {
            (i, t) if i == index && i > 0 => t,
            _ => self.mem.term(index).ok()?,
        };
        // The same index again is made anew for a follower once the kept one expired.
        if index < snaps.last.0 || (index == snaps.last.0 && snaps.kept.is_some()) {
            return None;
        }
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(self.mem.initial_state().ok()?.conf_state);
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snaps.last = (index, term);
        snap.data = data.into();
        snaps.kept = send.then(|| (snap.clone(), Instant::now()));
        Some(snap)
    }

    /// Drop the entries before `below` from the mirror, keeping the last one.
    pub fn compact(&self, below: u64) {
        let last = self.mem.last_index().unwrap_or(0);
        let first = self.mem.first_index().unwrap_or(1);
        let below = below.min(last);
        let freed = self.span_bytes(first, below);
        match self.mem.wl().compact(below) {
            Ok(()) => self.shrank(freed),
            Err(e) => tracing::warn!("raft log compaction: {e}"),
        }
    }

    /// A snapshot installed (from the leader, or saved at the last start): the mirror's log
    /// is replaced by it.
    pub fn install(&self, snap: &Snapshot) -> raft::Result<()> {
        let meta = snap.get_metadata();
        self.mem.wl().apply_snapshot(snap.clone())?;
        self.shrank(self.log_bytes());
        let mut snaps = self.snaps();
        snaps.last = (meta.index, meta.term);
        snaps.kept = None;
        Ok(())
    }

    /// Forget a kept snapshot after `KEEP` (its data may be large).
    pub fn expire(&self) {
        let mut snaps = self.snaps();
        if snaps
            .kept
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() > KEEP)
        {
            snaps.kept = None;
        }
    }

    pub fn append(&self, entries: &[Entry]) -> raft::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        // Entries from `first` on replace what the mirror had there (a new leader's).
        let last = self.mem.last_index().unwrap_or(0);
        let replaced = self.span_bytes(first.index, last + 1);
        self.mem.wl().append(entries)?;
        self.shrank(replaced);
        self.grew(entries.iter().map(|e| e.data.len()).sum());
        Ok(())
    }

    pub fn set_hardstate(&self, hs: HardState) {
        self.mem.wl().set_hardstate(hs);
    }
}

impl Drop for GroupStorage {
    /// A group closed (or the node stopping) takes its mirror out of the total.
    fn drop(&mut self) {
        self.shrank(self.log_bytes());
    }
}

impl Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        {
            let snaps = self.snaps();
            let known = std::iter::once(&snaps.last).chain(&snaps.sent);
            if let Some((_, term)) = known.into_iter().find(|(i, _)| *i == idx && idx > 0) {
                return Ok(*term);
            }
        }
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    /// The kept snapshot, if it is recent enough and names `to` as a member: raft-rs on a
    /// follower ignores a snapshot whose members do not include it, so a member added after
    /// the last snapshot (a grown queue, a wiped node back) needs a new one.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut snaps = self.snaps();
        let names = |snap: &Snapshot| {
            let cs = snap.get_metadata().get_conf_state();
            let ids = cs.get_voters().iter().chain(cs.get_learners());
            ids.chain(cs.get_voters_outgoing()).any(|id| *id == to)
        };
        match &snaps.kept {
            Some((snap, _)) if snap.get_metadata().index >= request_index && names(snap) => {
                Ok(snap.clone())
            }
            _ => {
                snaps.wanted = true;
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

/// Load a saved log into `storage`: the snapshot (handed to `apply`), the hard state, and
/// the entries after the snapshot. Returns the snapshot's index (applied by then) and the
/// entries kept past it.
pub(super) fn load(
    storage: &GroupStorage,
    log: &RaftLog,
    apply: &mut dyn Apply,
) -> Result<(u64, Vec<u64>), ClusterError> {
    let mut applied = 0;
    let mut kept = Vec::new();
    if let Some(bytes) = &log.snapshot {
        let snap = Snapshot::parse_from_bytes(bytes).map_err(|e| corrupt("raft snapshot", e))?;
        applied = snap.get_metadata().index;
        storage
            .install(&snap)
            .map_err(|e| corrupt("raft snapshot", e))?;
        let data;
        (kept, data) = kept::unwrap(&snap.data).map_err(|e| corrupt("raft snapshot", e))?;
        apply.restore(applied, data);
    }
    if let Some(state) = &log.state {
        let mut hs = HardState::parse_from_bytes(state).map_err(|e| corrupt("hard state", e))?;
        // The commit index is written unsynced: it is at least the snapshot's.
        hs.commit = hs.commit.max(applied);
        storage.set_hardstate(hs);
    }
    let mut entries = Vec::with_capacity(log.entries.len());
    for (i, bytes) in log.entries.iter().enumerate() {
        let index = log.first + i as u64;
        if index <= applied {
            continue;
        }
        let e = Entry::parse_from_bytes(bytes).map_err(|e| corrupt("raft entry", e))?;
        if e.index != index {
            return Err(corrupt(
                "raft entry",
                format!("index {} out of place", e.index),
            ));
        }
        entries.push(e);
    }
    if entries.first().is_some_and(|e| e.index != applied + 1) {
        return Err(corrupt(
            "raft log",
            format!("does not start right after the snapshot at {applied}"),
        ));
    }
    storage
        .append(&entries)
        .map_err(|e| corrupt("raft log", e))?;
    Ok((applied, kept))
}

pub(super) fn corrupt(what: &str, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Corrupt(format!("{what}: {e}"))
}
