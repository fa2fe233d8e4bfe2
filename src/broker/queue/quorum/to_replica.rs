//! The channel from the Raft runtime to a replica's task: committed entries, snapshots to
//! restore and requests for a snapshot, in log order. The runtime cannot wait on a slow
//! replica, so the channel is unbounded, and what waits in it counts against the memory
//! alarm until the replica takes it.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::broker::memory::MemoryMonitor;
use crate::cluster::Apply;

/// What the Raft runtime hands a replica, in log order.
pub(super) enum FromRaft {
    Committed(u64, Vec<u8>),
    Restore(u64, Vec<u8>),
    WantSnapshot,
}

impl FromRaft {
    pub(super) fn bytes(&self) -> usize {
        match self {
            FromRaft::Committed(_, data) | FromRaft::Restore(_, data) => data.len(),
            FromRaft::WantSnapshot => 0,
        }
    }
}

/// The group's state machine as the cluster task sees it: committed entries and snapshots
/// go to the replica's task in order. The channel cannot push back on Raft, so what waits
/// in it counts against the memory alarm (publishers block until the replica catches up).
pub(super) struct ToReplica {
    pub(super) tx: mpsc::UnboundedSender<FromRaft>,
    pub(super) memory: Arc<MemoryMonitor>,
}

impl ToReplica {
    fn send(&self, m: FromRaft) {
        let n = m.bytes();
        self.memory.add(n);
        if self.tx.send(m).is_err() {
            self.memory.sub(n);
        }
    }
}

impl Apply for ToReplica {
    fn apply(&mut self, index: u64, data: &[u8]) {
        self.send(FromRaft::Committed(index, data.to_vec()));
    }

    fn restore(&mut self, index: u64, data: &[u8]) {
        self.send(FromRaft::Restore(index, data.to_vec()));
    }

    fn want_snapshot(&mut self) {
        self.send(FromRaft::WantSnapshot);
    }
}
