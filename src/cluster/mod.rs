//! The cluster: node links and the Raft groups this node takes part in. Only this module
//! imports the Raft library. Today there is one group, the metadata group (id 0), whose
//! state machine the broker supplies (`Apply`); quorum queues will add one group each.
//!
//! A node knows every peer from its configuration (membership is fixed). It keeps a link to
//! each (`link`), and one task drives its groups (`node`): ticks, messages from peers,
//! proposals, and each group's ready work.

pub mod link;
mod node;
mod quiet;
pub mod raft;
mod runtime;
#[cfg(test)]
mod sim;
mod storage;
mod unopened;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::store::StoreError;

pub use node::{Apply, Cluster};
pub use raft::GroupStatus;
pub use storage::{Gauge, LogBytes};

/// The metadata group's id.
pub const META_GROUP: u64 = 0;

/// The node a Raft id belongs to. A node's Raft id in a group is its node id in the low 32
/// bits and, for a member added to a group after it began, a nonce above
/// (`Quorum::next_raft_id`): a node that left a group and joins it again is a new member to
/// Raft (its old votes and acknowledgements cannot be counted for the new one), and every
/// message still goes to the right node.
pub fn node_of(raft_id: u64) -> u64 {
    raft_id & 0xFFFF_FFFF
}

/// A cluster node's settings, checked (`Config::cluster`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub node_id: u64,
    pub listen: SocketAddr,
    /// Every node by id, this one included: the same on every node.
    pub peers: BTreeMap<u64, SocketAddr>,
    pub command_timeout: Duration,
    pub peer_timeout: Duration,
    /// Log bytes after which a quorum queue replica snapshots (`quorum_snapshot_bytes`).
    pub snapshot_bytes: usize,
    /// Entries after which the metadata group snapshots (`metadata_snapshot_entries`).
    pub meta_snapshot_entries: u64,
}

impl ClusterConfig {
    /// The cluster's identity: a hash of the peer list (FNV-1a, stable across builds), so
    /// that nodes configured with different lists refuse each other's links.
    pub fn identity(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (id, addr) in &self.peers {
            for b in format!("{id}={addr};").bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid cluster configuration: {0}")]
    Config(String),
    #[error("{0}")]
    DataDir(String),
    #[error("cannot open the cluster port: {0}")]
    Listen(String),
    #[error("corrupt raft state: {0}")]
    Corrupt(String),
    #[error("raft storage failed: {0}")]
    Store(StoreError),
    /// No leader is known right now (an election is under way, or no majority is reachable).
    #[error("no metadata leader reachable")]
    NoLeader,
    #[error("the cluster is shutting down")]
    Stopped,
}

const MARKER: &str = "cluster";

/// A data directory belongs to one node of one cluster, or to a single node: check that it
/// is used as what it was made for, and mark a new one. `fresh`: the store held nothing.
pub fn check_data_dir(
    dir: &Path,
    cfg: Option<&ClusterConfig>,
    fresh: bool,
) -> Result<(), ClusterError> {
    let path = dir.join(MARKER);
    let found = std::fs::read_to_string(&path).ok();
    let wanted = cfg.map(|c| {
        format!(
            "node_id = {}\nidentity = {:016x}\n",
            c.node_id,
            c.identity()
        )
    });
    let bad = |why: String| {
        Err(ClusterError::DataDir(format!(
            "data dir {}: {why}",
            dir.display()
        )))
    };
    match (found, wanted) {
        (None, None) => Ok(()),
        (Some(f), Some(w)) if f == w => Ok(()),
        (Some(f), None) => bad(format!(
            "it belongs to a cluster node ({}); start it with its cluster settings",
            f.lines().next().unwrap_or("")
        )),
        (Some(f), Some(_)) => bad(format!(
            "it belongs to another cluster or node ({}), not this peer list and node id",
            f.lines().next().unwrap_or("")
        )),
        (None, Some(_)) if !fresh => {
            bad("it holds a single node's data, not a cluster node's".into())
        }
        (None, Some(w)) => std::fs::write(&path, w)
            .map_err(|e| ClusterError::DataDir(format!("cannot write {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(node_id: u64, ports: &[u16]) -> ClusterConfig {
        ClusterConfig {
            node_id,
            listen: format!("127.0.0.1:{}", ports[0]).parse().unwrap(),
            peers: ports
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}").parse().unwrap()))
                .collect(),
            command_timeout: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(1),
            snapshot_bytes: 8 << 20,
            meta_snapshot_entries: 10_000,
        }
    }

    #[test]
    fn identity_depends_on_the_peer_list_only() {
        assert_eq!(cfg(1, &[1, 2, 3]).identity(), cfg(2, &[1, 2, 3]).identity());
        assert_ne!(cfg(1, &[1, 2, 3]).identity(), cfg(1, &[1, 2, 4]).identity());
    }

    #[test]
    fn a_data_dir_serves_what_it_was_made_for() {
        let dir = tempfile::tempdir().unwrap();
        let (one, other) = (cfg(1, &[1, 2, 3]), cfg(1, &[1, 2, 4]));
        check_data_dir(dir.path(), Some(&one), true).unwrap();
        check_data_dir(dir.path(), Some(&one), false).unwrap();
        let refused = [
            (None, "belongs to a cluster node"),
            (Some(&other), "another cluster"),
            (Some(&cfg(2, &[1, 2, 3])), "another cluster"),
        ];
        for (c, why) in refused {
            let e = check_data_dir(dir.path(), c, false)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{e}");
        }
        let single = tempfile::tempdir().unwrap();
        check_data_dir(single.path(), None, false).unwrap();
        let e = check_data_dir(single.path(), Some(&one), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("single node"), "{e}");
    }
}
