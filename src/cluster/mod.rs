//! The cluster: node links and the Raft groups this node takes part in. Only this module
//! imports the Raft library. Today there is one group, the metadata group (id 0), whose
//! state machine the broker supplies (`Apply`); quorum queues will add one group each.
//!
//! A node knows every peer from its configuration (membership is fixed). It keeps a link to
//! each (`link`), and one task drives its groups (`node`): ticks, messages from peers,
//! proposals, and each group's ready work.

pub mod kept;
pub mod link;
mod node;
mod parts;
mod quiet;
pub mod raft;
mod runtime;
#[cfg(test)]
mod sim;
mod storage;
mod transfer;
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
    /// Proposed bytes a quorum queue replica lets wait to apply (`quorum_max_pending_bytes`).
    pub pending_bytes: usize,
    /// Entries after which the metadata group snapshots (`metadata_snapshot_entries`).
    pub meta_snapshot_entries: u64,
    /// This node's Raft id in the metadata group: its node id, or the id it took when it
    /// rejoined with a wiped data directory (`check_data_dir`).
    pub raft_id: u64,
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
    /// A request this node cannot carry out as things stand.
    #[error("{0}")]
    Refused(String),
}

const MARKER: &str = "cluster";

/// A data directory belongs to one node of one cluster, or to a single node: check that it
/// is used as what it was made for, and mark a new one. `fresh`: the store held nothing.
/// Returns this node's Raft id in the metadata group (see `ClusterConfig::raft_id`).
///
/// `rejoin` (`warren --rejoin`): the node's data directory was wiped while its peers
/// remember it. It must not take part under its old Raft id (it could vote twice in a term,
/// or count towards a majority for entries it no longer has): it draws a new one, kept in
/// the marker, and the cluster replaces the old one with it (`runtime`). Refused on a data
/// directory that holds the node's data under its old id.
pub fn check_data_dir(
    dir: &Path,
    cfg: Option<&ClusterConfig>,
    fresh: bool,
    rejoin: bool,
) -> Result<u64, ClusterError> {
    let path = dir.join(MARKER);
    let found = std::fs::read_to_string(&path).ok();
    let bad = |why: String| {
        Err(ClusterError::DataDir(format!(
            "data dir {}: {why}",
            dir.display()
        )))
    };
    let Some(c) = cfg else {
        return match found {
            None => Ok(0),
            Some(f) => bad(format!(
                "it belongs to a cluster node ({}); start it with its cluster settings",
                f.lines().next().unwrap_or("")
            )),
        };
    };
    let wanted = format!(
        "node_id = {}\nidentity = {:016x}\n",
        c.node_id,
        c.identity()
    );
    let write = |raft_id: u64| {
        let mut text = wanted.clone();
        if raft_id != c.node_id {
            text.push_str(&format!("raft_id = {raft_id}\n"));
        }
        std::fs::write(&path, text)
            .map_err(|e| ClusterError::DataDir(format!("cannot write {}: {e}", path.display())))?;
        Ok(raft_id)
    };
    // Rejoined before (perhaps interrupted): that id again, with or without the flag.
    let rejoined = found.as_deref().and_then(|f| {
        f.strip_prefix(wanted.as_str())?
            .trim()
            .strip_prefix("raft_id = ")?
            .parse::<u64>()
            .ok()
            .filter(|id| node_of(*id) == c.node_id && *id != c.node_id)
    });
    if let Some(id) = rejoined {
        return Ok(id);
    }
    match found {
        Some(f) if f == wanted && rejoin && fresh => write(new_raft_id(c.node_id)),
        Some(f) if f == wanted && rejoin => bad(
            "--rejoin is for a node whose data dir was wiped, and this one holds the node's \
             data: start it without --rejoin"
                .into(),
        ),
        Some(f) if f == wanted => Ok(c.node_id),
        Some(f) => bad(format!(
            "it belongs to another cluster or node ({}), not this peer list and node id",
            f.lines().next().unwrap_or("")
        )),
        None if !fresh => bad("it holds a single node's data, not a cluster node's".into()),
        None if rejoin => write(new_raft_id(c.node_id)),
        None => write(c.node_id),
    }
}

/// A new Raft id for `node`: its node id with a random nonce above (never 0).
fn new_raft_id(node: u64) -> u64 {
    let nonce = u64::from(rand::random::<u32>().max(1));
    node_of(node) | (nonce << 32)
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
            pending_bytes: 32 << 20,
            meta_snapshot_entries: 10_000,
            raft_id: node_id,
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
        assert_eq!(check_data_dir(dir.path(), Some(&one), true, false), Ok(1));
        assert_eq!(check_data_dir(dir.path(), Some(&one), false, false), Ok(1));
        let refused = [
            (None, false, "belongs to a cluster node"),
            (Some(&other), false, "another cluster"),
            (Some(&cfg(2, &[1, 2, 3])), false, "another cluster"),
            (Some(&one), true, "start it without --rejoin"),
        ];
        for (c, rejoin, why) in refused {
            let e = check_data_dir(dir.path(), c, false, rejoin)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{e}");
        }
        let single = tempfile::tempdir().unwrap();
        assert_eq!(check_data_dir(single.path(), None, false, false), Ok(0));
        let e = check_data_dir(single.path(), Some(&one), false, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("single node"), "{e}");
    }

    #[test]
    fn a_wiped_node_rejoins_under_a_new_raft_id_that_it_keeps() {
        let two = cfg(2, &[1, 2, 3]);
        // Wiped entirely, or only its store (the marker left): a new id either way.
        for keep_marker in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            if keep_marker {
                check_data_dir(dir.path(), Some(&two), true, false).unwrap();
            }
            let id = check_data_dir(dir.path(), Some(&two), true, true).unwrap();
            assert_eq!(node_of(id), 2);
            assert_ne!(id, 2, "a nonce above the node id");
            // Restarted, with the flag still given or not, with data by then or not: the
            // same id.
            for (fresh, rejoin) in [(true, true), (false, true), (false, false)] {
                let again = check_data_dir(dir.path(), Some(&two), fresh, rejoin);
                assert_eq!(again, Ok(id));
            }
            // Another node's settings are still refused.
            let e = check_data_dir(dir.path(), Some(&cfg(3, &[1, 2, 3])), false, false);
            assert!(e.unwrap_err().to_string().contains("another cluster"));
        }
        let a = check_data_dir(tempfile::tempdir().unwrap().path(), Some(&two), true, true);
        let b = check_data_dir(tempfile::tempdir().unwrap().path(), Some(&two), true, true);
        assert_ne!(a, b, "each rejoin draws its own id");
    }
}
