//! The store boundary: what the broker persists and gets back at start, in plain records (no
//! RocksDB types leave `rocks.rs`). Writes go through one group-commit thread: every request
//! that arrives while a write is in progress joins the next write, which is synced if any of
//! its requests needs it. The contract: when a request's `Done` is called with `true`, its
//! operations are on disk (if it asked for a sync) and ordered after every earlier request.

pub mod keys;
mod rocks;

use bytes::Bytes;

use crate::protocol::FieldTable;
pub use rocks::Store;

/// Why the store could not do what it was asked. Opening errors stop the broker before it
/// serves anyone; a failed write is fatal too (the store writes nothing after it); an
/// unavailable store (closed at shutdown, or failed) allows no conclusion about its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {dir}: {reason}")]
    CreateDir { dir: String, reason: String },
    #[error("data directory {dir} is in use by another broker ({reason})")]
    InUse { dir: String, reason: String },
    #[error("cannot open the store in {dir}: {reason}")]
    Open { dir: String, reason: String },
    #[error("corrupt store in {dir}: {reason}")]
    Corrupt { dir: String, reason: String },
    #[error("cannot start the store writer: {0}")]
    Writer(String),
    #[error("store write failed: {0}")]
    Write(String),
    #[error("the store is unavailable")]
    Unavailable,
}

/// Called once a request has been written (Ok: on disk if it asked for a sync) or could not
/// be.
pub type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

#[derive(Debug, Clone, PartialEq)]
pub struct StoredExchange {
    pub vhost: String,
    pub name: String,
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredQueue {
    pub vhost: String,
    pub name: String,
    pub id: u64,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// A quorum queue's Raft group (its contents are that group's log); None: classic.
    pub group: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredBinding {
    pub vhost: String,
    pub source: String,
    pub to_queue: bool,
    pub destination: String,
    pub routing_key: String,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub properties: Bytes,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub enum Op {
    PutExchange(StoredExchange),
    DeleteExchange {
        vhost: String,
        name: String,
    },
    PutQueue(StoredQueue),
    /// Removes the queue and its whole index.
    DeleteQueue {
        vhost: String,
        name: String,
        id: u64,
    },
    PutBinding(StoredBinding),
    DeleteBinding(StoredBinding),
    PutMessage {
        id: u64,
        msg: StoredMessage,
    },
    /// `size`: the row's approximate size, so the store knows when to reclaim space.
    DeleteMessage {
        id: u64,
        size: usize,
    },
    /// `size`: the body's size, kept in the index for the queue's byte limit.
    Enqueue {
        queue: u64,
        msg: u64,
        size: u32,
    },
    Delivered {
        queue: u64,
        msg: u64,
        size: u32,
    },
    Dequeue {
        queue: u64,
        msg: u64,
    },
    /// Raft log entries of a group from index `first` on, in order (encoded by the cluster);
    /// the stored entries after the last one up to `stale_to` go (a new leader's log
    /// replaces a stale tail).
    RaftAppend {
        group: u64,
        first: u64,
        entries: Vec<Vec<u8>>,
        stale_to: u64,
    },
    /// A Raft group's hard state (term, vote, commit), encoded by the cluster.
    RaftState {
        group: u64,
        state: Vec<u8>,
    },
    /// A group's snapshot (encoded by the cluster) replaces the one before, and its log is
    /// compacted as `compact` says.
    RaftSnapshot {
        group: u64,
        snapshot: Vec<u8>,
        compact: Compact,
    },
    /// Kept entries of a leader's snapshot, sent ahead of it (`cluster::transfer`), staged
    /// under their own keys: `(index, raw entry)`. They are committed entries, the same on
    /// every node, so writing one again or over one kept here changes nothing.
    RaftStage {
        group: u64,
        entries: Vec<(u64, Vec<u8>)>,
    },
    /// Staged entries of a leader's snapshot that was not installed.
    RaftUnstage {
        group: u64,
        indexes: Vec<u64>,
    },
    /// A group left for good (its queue was deleted): its log, snapshot and hard state go.
    RaftDelete {
        group: u64,
    },
}

/// How a snapshot compacts its group's log. Entries a state machine still reads past its
/// snapshot (a quorum queue's live messages: their bodies are kept in the log only) stay
/// under their keys, before the log proper's floor; the rest go.
#[derive(Debug, Clone, PartialEq)]
pub enum Compact {
    /// The entries in `from..below` go but those in `keep` (sorted; others are ignored),
    /// and so do the kept entries in `forget` (before `from`: their messages are settled).
    /// The log proper starts at `below` (or `from`, if later).
    Below {
        from: u64,
        below: u64,
        keep: Vec<u64>,
        forget: Vec<u64>,
    },
    /// A snapshot from the leader: every entry goes but the staged ones it keeps (`kept`,
    /// sorted: they came ahead of it, `Op::RaftStage`), and the log proper starts at
    /// `floor`. Staged entries outside `kept`'s span go, and inside it those in `forget`
    /// (none of `kept`).
    Replace {
        floor: u64,
        kept: Vec<u64>,
        forget: Vec<u64>,
    },
}

impl Op {
    /// Rough size, for batch and back-pressure accounting.
    pub fn size(&self) -> usize {
        match self {
            Op::PutMessage { msg, .. } => 32 + msg.body.len() + msg.properties.len(),
            Op::RaftAppend { entries, .. } => 32 + entries.iter().map(Vec::len).sum::<usize>(),
            Op::RaftSnapshot { snapshot, .. } => 32 + snapshot.len(),
            Op::RaftStage { entries, .. } => {
                32 + entries.iter().map(|(_, e)| 12 + e.len()).sum::<usize>()
            }
            _ => 32,
        }
    }
}

/// A durable queue as found at start, with its messages in publish order.
#[derive(Debug)]
pub struct RecoveredQueue {
    pub queue: StoredQueue,
    pub messages: Vec<RecoveredMessage>,
}

#[derive(Debug, Clone, Copy)]
pub struct RecoveredMessage {
    pub id: u64,
    /// Delivered before the restart: it comes back redelivered.
    pub delivered: bool,
    /// Body size (0 if unknown).
    pub size: u32,
}

/// A Raft group's persisted state as written (the cluster decodes it).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RaftLog {
    pub state: Option<Vec<u8>>,
    /// The last snapshot: the log before it may be compacted away.
    pub snapshot: Option<Vec<u8>>,
    /// The index of the first entry in `entries`.
    pub first: u64,
    /// From `first` on, without gaps (the kept entries before the floor are not read).
    pub entries: Vec<Vec<u8>>,
    /// Where the log proper starts (0: no compaction written yet).
    pub floor: u64,
}

/// Everything durable, read back at start (message bodies stay on disk until needed).
#[derive(Debug, Default)]
pub struct Recovered {
    pub exchanges: Vec<StoredExchange>,
    pub queues: Vec<RecoveredQueue>,
    pub bindings: Vec<StoredBinding>,
    /// Raft groups by id (cluster nodes only).
    pub raft: std::collections::BTreeMap<u64, RaftLog>,
}

impl Recovered {
    /// Nothing was stored yet: a new data directory.
    pub fn is_empty(&self) -> bool {
        self.exchanges.is_empty()
            && self.queues.is_empty()
            && self.bindings.is_empty()
            && self.raft.is_empty()
    }
}
