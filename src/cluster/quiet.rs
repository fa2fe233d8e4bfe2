//! Quiescing: an idle group stops ticking, so that a thousand idle quorum queues cost no
//! heartbeats. A group goes quiet after `QUIET_AFTER` ticks in which nothing but heartbeats
//! and reads happened, once it is settled:
//! - its leader: every member has every entry, the commit index is the last entry, no read,
//!   leadership transfer or membership change is pending, and every member's node link is
//!   up;
//! - a follower: it knows a leader and its link to the leader's node is up.
//!
//! A quiet leader sends no heartbeats; a quiet follower counts no election timeout. That
//! is safe because ticks only drive liveness (Raft's safety never rests on them), and live:
//! - a dead or cut-off leader's node link goes down, which makes its followers unsettled
//!   (they tick and elect) and, through `leader_link_lost`, campaign at once;
//! - anything but a heartbeat or a read (a proposal, an append, a vote) wakes the group, on
//!   the node that gets it; a node that restarts campaigns, and its votes wake the others.
//!
//! A leader does not go quiet while a read is pending: its heartbeats carry the read on,
//! should the first round be lost. A leader coming back from quiet restarts its
//! check-quorum period, as its followers' last answers are from before it went quiet.

use std::collections::BTreeSet;

use raft::StateRole;
use raft::prelude::MessageType;

use super::storage::GroupStorage;

/// Ticks without activity before a settled group goes quiet (two election timeouts).
pub const QUIET_AFTER: u32 = 20;

/// What changes when something happens in a group: (term, leader, commit, last index).
type Seen = (u64, u64, u64, u64);

#[derive(Debug, Default)]
pub struct Quiet {
    idle: u32,
    seen: Seen,
    quiet: bool,
}

impl Quiet {
    /// Something happened: tick again.
    pub fn wake(&mut self) {
        self.idle = 0;
    }

    /// A message came: anything but a heartbeat or a read (or their answers) is activity.
    /// A read needs no tick: the leader confirms it with a round of heartbeats it sends at
    /// once, so reads (a status page polled, say) leave an idle group quiet.
    pub fn stepped(&mut self, kind: MessageType) {
        if !matches!(
            kind,
            MessageType::MsgHeartbeat
                | MessageType::MsgHeartbeatResponse
                | MessageType::MsgReadIndex
                | MessageType::MsgReadIndexResp
        ) {
            self.wake();
        }
    }

    /// Whether this tick is skipped; `up` is the peers whose node link is up.
    pub fn skip(&mut self, raft: &mut raft::Raft<GroupStorage>, up: &BTreeSet<u64>) -> bool {
        let log = &raft.raft_log;
        let seen = (raft.term, raft.leader_id, log.committed, log.last_index());
        if seen != self.seen {
            self.seen = seen;
            self.wake();
        }
        self.idle = self.idle.saturating_add(1);
        let quiet = self.idle > QUIET_AFTER && settled(raft, up);
        if self.quiet && !quiet && raft.state == StateRole::Leader {
            raft.election_elapsed = 0;
        }
        self.quiet = quiet;
        quiet
    }

    pub fn is_quiet(&self) -> bool {
        self.quiet
    }
}

fn settled(raft: &raft::Raft<GroupStorage>, up: &BTreeSet<u64>) -> bool {
    let alive = |id: u64| id == raft.id || up.contains(&super::node_of(id));
    match raft.state {
        StateRole::Leader => {
            let last = raft.raft_log.last_index();
            raft.raft_log.committed == last
                && raft.lead_transferee.is_none()
                && !raft.has_pending_conf()
                && raft.pending_read_count() == 0
                && raft
                    .prs()
                    .iter()
                    .all(|(id, pr)| alive(*id) && (*id == raft.id || pr.matched == last))
        }
        StateRole::Follower => raft.leader_id != 0 && alive(raft.leader_id),
        _ => false,
    }
}
