//! A group's membership: voters added and removed one at a time through the log (a
//! change is applied when committed, and again after a restart, where a voter added twice
//! or one absent removed changes nothing), a wiped node's Raft id replaced, and the
//! disaster-recovery step that leaves this node the only voter.

use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry};

use super::Group;
use crate::cluster::ClusterError;

impl Group {
    /// Propose adding (or removing) a voter, one change at a time: raft-rs turns a second
    /// one proposed before the first applies into an empty entry. `ctx` comes back with
    /// the change once applied (`take_conf_applied`).
    pub fn propose_member(
        &mut self,
        add: bool,
        node: u64,
        ctx: Vec<u8>,
    ) -> Result<(), ClusterError> {
        let mut cc = ConfChange::default();
        cc.set_change_type(match add {
            true => ConfChangeType::AddNode,
            false => ConfChangeType::RemoveNode,
        });
        cc.node_id = node;
        self.quiet.wake();
        self.node
            .propose_conf_change(ctx, cc)
            .map_err(|_| ClusterError::NoLeader)
    }

    pub fn take_conf_applied(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.conf_applied)
    }

    /// Disaster recovery: make this node the group's only voter, here alone (nothing is
    /// logged, no other member asked), and stand for election, which it wins by itself;
    /// what its log holds is committed then, whatever the lost members had. Returns the
    /// voters dropped, for the new leader to log their removal (so that a restart, which
    /// replays the log, ends with the same voters). Refused while a membership change
    /// waits to be applied here (raft-rs would not campaign).
    pub fn force_alone(&mut self) -> Result<Vec<u64>, ClusterError> {
        if self.node.raft.has_pending_conf() {
            return Err(ClusterError::Refused(
                "a membership change of the group is not applied here yet".into(),
            ));
        }
        let me = self.raft_id();
        let others: Vec<u64> = self.voters().into_iter().filter(|v| *v != me).collect();
        for id in &others {
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::RemoveNode);
            cc.node_id = *id;
            let cs = self
                .node
                .apply_conf_change(&cc)
                .map_err(|e| ClusterError::Refused(e.to_string()))?;
            self.node.mut_store().mem.wl().set_conf_state(cs);
        }
        tracing::warn!(group = self.id, dropped = ?others, "raft group forced down to this node alone");
        self.campaign();
        Ok(others)
    }

    /// A committed membership change: the voters change here, and the conf state kept for
    /// snapshots with them. Applied again after a restart (a voter added twice, or one
    /// absent removed, changes nothing). Returns the change made: (added, Raft id).
    pub(super) fn apply_member_change(&mut self, e: &Entry) -> Option<(bool, u64)> {
        let cc = match ConfChange::parse_from_bytes(&e.data) {
            Ok(cc) => cc,
            Err(err) => {
                tracing::error!(
                    group = self.id,
                    index = e.index,
                    "undecodable membership change: {err}"
                );
                return None;
            }
        };
        match self.node.apply_conf_change(&cc) {
            Ok(cs) => {
                tracing::info!(group = self.id, index = e.index, voters = ?cs.voters, "raft group members changed");
                self.node.mut_store().mem.wl().set_conf_state(cs);
                self.conf_applied.push(e.context.to_vec());
                let add = cc.get_change_type() != ConfChangeType::RemoveNode;
                Some((add, cc.node_id))
            }
            Err(err) => {
                tracing::error!(
                    group = self.id,
                    index = e.index,
                    "membership change refused: {err}"
                );
                None
            }
        }
    }

    /// The group's voters as applied here, in order.
    pub fn voters(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.node.raft.prs().conf().voters().ids().iter().collect();
        v.sort_unstable();
        v
    }

    /// The next step in replacing node `node`'s Raft id with `raft_id` (its data was wiped,
    /// `cluster::check_data_dir`), proposed if this node leads and no other change is under
    /// way: first its old id goes, then the new one comes; one change at a time, as
    /// raft-rs allows. Asked again until done (a proposal can be lost).
    pub fn replace_member(&mut self, node: u64, raft_id: u64) {
        if !self.is_leader() || self.node.raft.has_pending_conf() {
            return;
        }
        let voters = self.voters();
        let old = voters
            .iter()
            .copied()
            .find(|v| crate::cluster::node_of(*v) == node && *v != raft_id);
        let (add, id) = match old {
            Some(old) => (false, old),
            None if !voters.contains(&raft_id) => (true, raft_id),
            None => return,
        };
        tracing::info!(
            group = self.id,
            node,
            raft_id = id,
            add,
            "replacing a rejoining node's raft id"
        );
        if let Err(e) = self.propose_member(add, id, Vec::new()) {
            tracing::debug!(group = self.id, "raft membership change: {e}");
        }
    }
}
