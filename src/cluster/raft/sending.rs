//! A group's snapshots sent to followers and taken from a leader (`transfer` streams their
//! kept entries): the leader pins a snapshot it sends until the follower has taken it, and
//! the follower stages the entries that come ahead of a snapshot and keeps them only for
//! one it steps.

use raft::SnapshotStatus;

use super::Group;
use crate::cluster::kept;
use crate::cluster::transfer::{Chunk, Sending, Staging};
use crate::store::Op;

/// A snapshot being sent to a follower, or sent and not yet taken: until then compactions
/// keep its kept entries (read for the sending) and the log after it (what the follower is
/// sent next), and its term stays known (an append after it names it).
pub(super) struct Pin {
    pub(super) index: u64,
    pub(super) term: u64,
    pub(super) kept: Vec<u64>,
    /// When it was handed to the link (None: being sent).
    pub(super) sent: Option<std::time::Instant>,
}

/// How long a snapshot handed to the link is waited for before compactions go on without
/// it (the follower may be gone).
const PIN_SENT: std::time::Duration = std::time::Duration::from_secs(30);

impl Group {
    /// A snapshot whose kept entries are staged was stepped: they stay for its install if
    /// Raft took it, else they go.
    pub(super) fn stepped_snapshot(&mut self, index: u64, kept: Vec<u64>) {
        let staged = self.staging.take().map(Staging::into_staged);
        let raft_log = &self.node.raft.raft_log;
        let pending = (raft_log.unstable.snapshot.as_ref()).map(|s| s.get_metadata().index);
        let unneeded = match pending == Some(index) {
            true => (self.accepted.replace((index, kept))).map(|(_, k)| k),
            false => staged,
        };
        if let Some(op) = unneeded.and_then(|u| self.unstage(&u)) {
            self.store.submit(vec![op], false, None);
        }
    }

    /// Delete staged entries no longer needed, but those the state reads or a snapshot
    /// stepped keeps.
    fn unstage(&self, staged: &[u64]) -> Option<Op> {
        let mut indexes = kept::forgotten(staged, &self.kept);
        if let Some((_, accepted)) = &self.accepted {
            indexes = kept::forgotten(&indexes, accepted);
        }
        (!indexes.is_empty()).then_some(Op::RaftUnstage {
            group: self.id,
            indexes,
        })
    }

    /// A chunk of a leader's snapshot for this node: the store writes that stage it (None:
    /// not the chunk expected, ignored), and its index and number to acknowledge once
    /// written.
    pub fn stage(&mut self, msg: &[u8]) -> Option<(Vec<Op>, u64, u64)> {
        let chunk = match Chunk::decode(msg) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(group = self.id, "bad snapshot chunk: {e}");
                return None;
            }
        };
        let stage = Staging::take(&mut self.staging, chunk)?;
        let mut ops: Vec<Op> = self.unstage(&stage.given_up).into_iter().collect();
        ops.push(Op::RaftStage {
            group: self.id,
            entries: stage.entries,
        });
        Some((ops, stage.index, stage.seq))
    }

    /// Snapshots to send to followers, for the runtime to start.
    pub fn take_sendings(&mut self) -> Vec<Sending> {
        std::mem::take(&mut self.sendings)
    }

    /// The sending of the snapshot at `index` to `to` ended: handed to the link (`ok`) or
    /// given up. Raft sends another when the follower still needs one.
    pub fn sent(&mut self, to: u64, index: u64, ok: bool) {
        let Some(pin) = self.pins.get_mut(&to).filter(|p| p.index == index) else {
            return;
        };
        let status = match ok {
            true => {
                pin.sent = Some(std::time::Instant::now());
                SnapshotStatus::Finish
            }
            false => {
                self.pins.remove(&to);
                self.pins_changed();
                SnapshotStatus::Failure
            }
        };
        self.node.report_snapshot(to, status);
    }

    /// Pins of snapshots the follower has taken (or that waited too long) go.
    pub(super) fn unpin_taken(&mut self) {
        let leader = self.is_leader();
        let prs = self.node.raft.prs();
        let before = self.pins.len();
        self.pins.retain(|to, p| {
            let taken = prs.get(*to).is_none_or(|pr| pr.matched >= p.index);
            let late = p.sent.is_some_and(|t| t.elapsed() > PIN_SENT);
            leader && !taken && !late
        });
        if self.pins.len() != before {
            self.pins_changed();
        }
    }

    pub(super) fn pins_changed(&self) {
        let terms = self.pins.values().map(|p| (p.index, p.term)).collect();
        self.node.store().set_sent(terms);
    }
}
