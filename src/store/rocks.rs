//! RocksDB behind the store boundary. Column families: `meta` (exchanges, queues, bindings),
//! `messages` (id → names, properties and body; bodies over 4 KiB go to blob files) and
//! `queue_index` (queue id + message id → delivered flag and body size).

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};
use tokio::sync::{Notify, watch};

use super::keys;
use super::{
    Compact, Done, Op, Recovered, RecoveredMessage, RecoveredQueue, StoreError, StoredMessage,
};

const META: &str = "meta";
const MESSAGES: &str = "messages";
const INDEX: &str = "queue_index";
const RAFT: &str = "raft";

/// One write never takes more than this many bytes of requests (the rest waits for the next).
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Publishers wait while this much is queued for the writer.
const MAX_PENDING_BYTES: usize = 64 << 20;
/// Deleted message bytes that trigger a compaction (to give disk space back) at once...
const COMPACT_AFTER_BYTES: usize = 256 << 20;
/// ...or, for fewer, once the writer has been idle this long.
const COMPACT_WHEN_IDLE: std::time::Duration = std::time::Duration::from_secs(1);
/// Below this, deleted bytes are left for RocksDB's own compactions.
const COMPACT_MIN_BYTES: usize = 8 << 20;
/// Gaps of at most this many entries are deleted key by key, not as a range.
const POINT_DELETES: u64 = 64;
/// How long a close waits for reads in flight to let go of the database.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

struct Request {
    ops: Vec<Op>,
    sync: bool,
    done: Option<Done>,
    bytes: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

pub struct Store {
    /// Dropped by `close`, so the data directory's lock is released (a restart in the same
    /// process can open it again).
    db: Mutex<Option<Arc<DB>>>,
    compaction: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// A std mutex around the sender: submissions never wait while holding it.
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    next_message: AtomicU64,
    pending: Arc<AtomicUsize>,
    space: Arc<Notify>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set once a write has failed: why. The store then writes nothing more (every request
    /// is answered `false`) and the broker stops, rather than confirm what it cannot keep.
    failed: Arc<watch::Sender<Option<StoreError>>>,
}

fn db_error(dir: &Path, e: rocksdb::Error) -> StoreError {
    let (dir, reason) = (dir.display().to_string(), e.to_string());
    if reason.contains("lock") || reason.contains("Resource temporarily unavailable") {
        StoreError::InUse { dir, reason }
    } else {
        StoreError::Open { dir, reason }
    }
}

impl Store {
    /// Open (or create) the store in `dir` and read back everything durable.
    pub fn open(dir: &Path) -> Result<(Arc<Store>, Recovered), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::CreateDir {
            dir: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        // A WAL file can only go once every column family's memtable in it is flushed; the
        // rarely written `meta` would otherwise pin every WAL since its last write.
        opts.set_max_total_wal_size(64 << 20);
        let mut msg_opts = Options::default();
        msg_opts.set_enable_blob_files(true);
        msg_opts.set_min_blob_size(4096);
        msg_opts.set_enable_blob_gc(true);
        let cfs = vec![
            ColumnFamilyDescriptor::new(META, Options::default()),
            ColumnFamilyDescriptor::new(MESSAGES, msg_opts),
            ColumnFamilyDescriptor::new(INDEX, Options::default()),
            ColumnFamilyDescriptor::new(RAFT, Options::default()),
        ];
        let db =
            DB::open_cf_descriptors(&opts, dir.join("store"), cfs).map_err(|e| db_error(dir, e))?;
        let db = Arc::new(db);
        let (recovered, max_id) = recover(&db).map_err(|reason| StoreError::Corrupt {
            dir: dir.display().to_string(),
            reason,
        })?;
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let space = Arc::new(Notify::new());
        let compaction = Arc::new(Mutex::new(None));
        let failed = Arc::new(watch::Sender::new(None));
        let writer = {
            let (db, pending, space, compaction, failed) = (
                db.clone(),
                pending.clone(),
                space.clone(),
                compaction.clone(),
                failed.clone(),
            );
            std::thread::Builder::new()
                .name("warren-store".into())
                .spawn(move || write_loop(db, rx, pending, space, compaction, failed))
                .map_err(|e| StoreError::Writer(e.to_string()))?
        };
        let store = Store {
            db: Mutex::new(Some(db)),
            compaction,
            tx: Mutex::new(Some(tx)),
            next_message: AtomicU64::new(max_id + 1),
            pending,
            space,
            writer: Mutex::new(Some(writer)),
            failed,
        };
        Ok((Arc::new(store), recovered))
    }

    pub fn next_message_id(&self) -> u64 {
        self.next_message.fetch_add(1, Ordering::Relaxed)
    }

    /// Queue `ops` for the writer; `done` runs once they are written (synced if `sync`).
    pub fn submit(&self, ops: Vec<Op>, sync: bool, done: Option<Done>) {
        let bytes = ops.iter().map(Op::size).sum();
        self.pending.fetch_add(bytes, Ordering::AcqRel);
        let req = Request {
            ops,
            sync,
            done,
            bytes,
        };
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let sent = match tx.as_ref() {
            Some(tx) => tx.send(req).map_err(|e| e.0),
            None => Err(req),
        };
        if let Err(req) = sent {
            // The store is closed (shutting down): nothing is written.
            if let Some(done) = req.done {
                done(Err(StoreError::Unavailable));
            }
        }
    }

    /// Watch for a failed write: the reason, once the store has stopped writing.
    pub fn failed(&self) -> watch::Receiver<Option<StoreError>> {
        self.failed.subscribe()
    }

    /// Publishers call this before submitting: it returns once the writer has room.
    pub async fn wait_for_space(&self) {
        while self.pending.load(Ordering::Acquire) > MAX_PENDING_BYTES {
            let notified = self.space.notified();
            if self.pending.load(Ordering::Acquire) <= MAX_PENDING_BYTES {
                return;
            }
            notified.await;
        }
    }

    /// Read message rows (paging in): None for a row that does not exist. Err if the store
    /// cannot be read (closed, or an I/O error): then nothing may be concluded about any row.
    pub fn read_messages(&self, ids: &[u64]) -> Result<Vec<Option<StoredMessage>>, StoreError> {
        let keys = ids.iter().map(|id| keys::message_key(*id));
        let rows = self.read(MESSAGES, keys)?;
        let decode = |v: Vec<u8>| keys::decode_message(bytes::Bytes::from(v));
        Ok(rows.into_iter().map(|r| r.and_then(decode)).collect())
    }

    /// The values at `keys` of a column family, None where there is none. Err if the store
    /// cannot be read. Blocking: never on an async worker.
    fn read<K: AsRef<[u8]>>(
        &self,
        cf: &str,
        keys: impl Iterator<Item = K>,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let db = self.db.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let db = db.ok_or(StoreError::Unavailable)?;
        let cf = db.cf_handle(cf).ok_or(StoreError::Unavailable)?;
        let keys = keys.map(|k| (&cf, k));
        db.multi_get_cf(keys)
            .into_iter()
            .map(|r| {
                r.map_err(|e| {
                    tracing::error!("store read failed: {e}");
                    StoreError::Unavailable
                })
            })
            .collect()
    }

    /// Read a Raft group's stored entries (as the cluster encoded them), from the log or
    /// staged from a leader's snapshot: None for one that is not stored. Blocking: never
    /// on an async worker.
    pub fn read_raft_entries(
        &self,
        group: u64,
        indexes: &[u64],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let keys = indexes
            .iter()
            .map(|i| keys::raft_key(group, keys::RAFT_ENTRY, *i));
        let mut got = self.read(RAFT, keys)?;
        // A committed entry is the same wherever it is stored: an entry key, if it has
        // one, holds what the staged key would.
        let missing: Vec<usize> = (0..got.len()).filter(|i| got[*i].is_none()).collect();
        if !missing.is_empty() {
            let keys =
                (missing.iter()).map(|i| keys::raft_key(group, keys::RAFT_STAGED, indexes[*i]));
            for (i, e) in missing.iter().zip(self.read(RAFT, keys)?) {
                got[*i] = e;
            }
        }
        Ok(got)
    }

    /// Write what is queued, stop the writer and close the database (clean shutdown).
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = w.join();
        }
        if let Some(c) = self
            .compaction
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = c.join();
        }
        if let Some(db) = self.db.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = db.flush_wal(true);
            // Reads in flight hold the database open: closed means closed for a new `open`.
            let waited = Instant::now();
            while Arc::strong_count(&db) > 1 && waited.elapsed() < CLOSE_WAIT {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}

/// Delete a group's entries `from..to`. A few go key by key: range tombstones are costly
/// for every later read (RocksDB fragments the memtable's on each), and a log interleaves
/// kept publishes with acks, so compactions leave many short gaps.
fn delete_entries(
    batch: &mut WriteBatch,
    raft: &impl rocksdb::AsColumnFamilyRef,
    (group, kind): (u64, u8),
    from: u64,
    to: u64,
) {
    let entry = |i: u64| keys::raft_key(group, kind, i);
    match to.saturating_sub(from) {
        0 => {}
        n if n <= POINT_DELETES => (from..to).for_each(|i| batch.delete_cf(raft, entry(i))),
        _ => batch.delete_range_cf(raft, entry(from), entry(to)),
    }
}

fn apply(db: &DB, batch: &mut WriteBatch, op: Op) {
    let (Some(meta), Some(msgs), Some(index), Some(raft)) = (
        db.cf_handle(META),
        db.cf_handle(MESSAGES),
        db.cf_handle(INDEX),
        db.cf_handle(RAFT),
    ) else {
        return;
    };
    match op {
        Op::RaftAppend {
            group,
            first,
            entries,
            stale_to,
        } => {
            let end = first + entries.len() as u64;
            for (i, e) in entries.into_iter().enumerate() {
                batch.put_cf(
                    &raft,
                    keys::raft_key(group, keys::RAFT_ENTRY, first + i as u64),
                    e,
                );
            }
            delete_entries(
                batch,
                &raft,
                (group, keys::RAFT_ENTRY),
                end,
                stale_to.saturating_add(1).max(end),
            );
        }
        Op::RaftDelete { group } => {
            batch.delete_range_cf(
                &raft,
                keys::raft_key(group, keys::RAFT_ENTRY, 0),
                keys::raft_entries_end(group),
            );
            batch.delete_range_cf(
                &raft,
                keys::raft_key(group, keys::RAFT_STAGED, 0),
                keys::raft_staged_end(group),
            );
            batch.delete_cf(&raft, keys::raft_key(group, keys::RAFT_STATE, 0));
            batch.delete_cf(&raft, keys::raft_key(group, keys::RAFT_SNAPSHOT, 0));
            batch.delete_cf(&raft, keys::raft_key(group, keys::RAFT_FLOOR, 0));
        }
        Op::RaftStage { group, entries } => {
            for (i, e) in entries {
                batch.put_cf(&raft, keys::raft_key(group, keys::RAFT_STAGED, i), e);
            }
        }
        Op::RaftUnstage { group, indexes } => {
            for i in indexes {
                batch.delete_cf(&raft, keys::raft_key(group, keys::RAFT_STAGED, i));
            }
        }
        Op::RaftSnapshot {
            group,
            snapshot,
            compact,
        } => {
            batch.put_cf(
                &raft,
                keys::raft_key(group, keys::RAFT_SNAPSHOT, 0),
                snapshot,
            );
            let entries = (group, keys::RAFT_ENTRY);
            let staged = (group, keys::RAFT_STAGED);
            let floor = match compact {
                Compact::Below {
                    from,
                    below,
                    keep,
                    forget,
                } => {
                    // The span compacted now, around the entries kept in it.
                    let mut start = from;
                    for k in keep.into_iter().filter(|k| (from..below).contains(k)) {
                        delete_entries(batch, &raft, entries, start, k);
                        start = k + 1;
                    }
                    delete_entries(batch, &raft, entries, start, below.max(start));
                    // A kept entry is under its entry key, or staged if it came with a
                    // leader's snapshot.
                    for k in forget.into_iter().filter(|k| *k < from) {
                        batch.delete_cf(&raft, keys::raft_key(group, keys::RAFT_ENTRY, k));
                        batch.delete_cf(&raft, keys::raft_key(group, keys::RAFT_STAGED, k));
                    }
                    from.max(below)
                }
                Compact::Replace {
                    floor,
                    kept,
                    forget,
                } => {
                    let first = keys::raft_key(group, keys::RAFT_ENTRY, 0);
                    batch.delete_range_cf(&raft, first, keys::raft_entries_end(group));
                    // Staged entries it does not keep: an earlier snapshot's, or those of
                    // one whose sending was given up. Two ranges and the known ones, not a
                    // range per gap (range deletes slow every later read).
                    let (low, high) = match (kept.first(), kept.last()) {
                        (Some(l), Some(h)) => (*l, h + 1),
                        _ => (u64::MAX, u64::MAX),
                    };
                    delete_entries(batch, &raft, staged, 0, low);
                    batch.delete_range_cf(
                        &raft,
                        keys::raft_key(group, keys::RAFT_STAGED, high),
                        keys::raft_staged_end(group),
                    );
                    for k in forget {
                        batch.delete_cf(&raft, keys::raft_key(group, keys::RAFT_STAGED, k));
                    }
                    floor
                }
            };
            batch.put_cf(
                &raft,
                keys::raft_key(group, keys::RAFT_FLOOR, 0),
                floor.to_be_bytes(),
            );
        }
        Op::RaftState { group, state } => {
            batch.put_cf(&raft, keys::raft_key(group, keys::RAFT_STATE, 0), state)
        }
        Op::PutExchange(x) => batch.put_cf(
            &meta,
            keys::exchange_key(&x.vhost, &x.name),
            keys::exchange_value(&x),
        ),
        Op::DeleteExchange { vhost, name } => {
            batch.delete_cf(&meta, keys::exchange_key(&vhost, &name))
        }
        Op::PutQueue(q) => batch.put_cf(
            &meta,
            keys::queue_key(&q.vhost, &q.name),
            keys::queue_value(&q),
        ),
        Op::DeleteQueue { vhost, name, id } => {
            batch.delete_cf(&meta, keys::queue_key(&vhost, &name));
            batch.delete_range_cf(&index, keys::index_key(id, 0), keys::index_key(id + 1, 0));
        }
        Op::PutBinding(b) => batch.put_cf(&meta, keys::binding_key(&b), []),
        Op::DeleteBinding(b) => batch.delete_cf(&meta, keys::binding_key(&b)),
        Op::PutMessage { id, msg } => {
            batch.put_cf(&msgs, keys::message_key(id), keys::message_value(&msg))
        }
        Op::DeleteMessage { id, .. } => batch.delete_cf(&msgs, keys::message_key(id)),
        Op::Enqueue { queue, msg, size } => batch.put_cf(
            &index,
            keys::index_key(queue, msg),
            keys::index_value(false, size),
        ),
        Op::Delivered { queue, msg, size } => batch.put_cf(
            &index,
            keys::index_key(queue, msg),
            keys::index_value(true, size),
        ),
        Op::Dequeue { queue, msg } => batch.delete_cf(&index, keys::index_key(queue, msg)),
    }
}

/// The group-commit loop: take a request, add everything else already waiting (up to
/// MAX_BATCH_BYTES), write it all at once, then tell every requester.
///
/// After a failed write nothing more is written: RocksDB keeps refusing writes after an I/O
/// error in its log (it does not resume when space returns), and after a failed sync nobody
/// knows what reached the disk. Every later request is answered `false` and the broker stops.
fn write_loop(
    db: Arc<DB>,
    rx: mpsc::Receiver<Request>,
    pending: Arc<AtomicUsize>,
    space: Arc<Notify>,
    compaction: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    failed: Arc<watch::Sender<Option<StoreError>>>,
) {
    let compacting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start_compaction = |db: &Arc<DB>, running: &Arc<std::sync::atomic::AtomicBool>| {
        match start_compaction(db, running) {
            Some(handle) => {
                let mut slot = compaction.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(old) = slot.replace(handle) {
                    let _ = old.join(); // already finished: `running` was false
                }
                true
            }
            None => false,
        }
    };
    let mut deleted = 0usize;
    loop {
        let first = match rx.recv_timeout(COMPACT_WHEN_IDLE) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if deleted >= COMPACT_MIN_BYTES && start_compaction(&db, &compacting) {
                    deleted = 0;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = WriteBatch::default();
        let mut dones = Vec::new();
        let (mut sync, mut bytes, mut requests) = (false, 0usize, 0usize);
        let mut next = Some(first);
        while let Some(req) = next {
            for op in req.ops {
                if let Op::DeleteMessage { size, .. } = &op {
                    deleted += size;
                }
                apply(&db, &mut batch, op);
            }
            sync |= req.sync;
            bytes += req.bytes;
            requests += 1;
            dones.extend(req.done);
            next = if bytes < MAX_BATCH_BYTES {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let started = Instant::now();
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        let earlier = failed.borrow().clone();
        let result = match earlier {
            Some(_) => Err(StoreError::Unavailable),
            None => db.write_opt(batch, &wo).map_err(|e| {
                tracing::error!("store write failed: {e}; the store writes nothing more");
                let e = StoreError::Write(e.to_string());
                failed.send_replace(Some(e.clone()));
                e
            }),
        };
        tracing::debug!(
            requests,
            bytes,
            sync,
            latency_us = started.elapsed().as_micros() as u64,
            "group commit"
        );
        pending.fetch_sub(bytes, Ordering::AcqRel);
        space.notify_waiters();
        for d in dones {
            d(result.clone());
        }
        if deleted >= COMPACT_AFTER_BYTES && start_compaction(&db, &compacting) {
            deleted = 0;
        }
    }
}

/// Compact messages and index in the background (one at a time), so that a drained backlog
/// gives its disk space back: deletes are only tombstones until compaction.
fn start_compaction(
    db: &Arc<DB>,
    running: &Arc<std::sync::atomic::AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    if running.swap(true, Ordering::AcqRel) {
        return None;
    }
    let (db, flag) = (db.clone(), running.clone());
    let spawned = std::thread::Builder::new()
        .name("warren-compact".into())
        .spawn(move || {
            let started = Instant::now();
            // Flushing every column family first lets all older WAL files go as well.
            for cf in [META, INDEX, MESSAGES] {
                if let Some(h) = db.cf_handle(cf) {
                    let _ = db.flush_cf(&h);
                }
            }
            for cf in [INDEX, MESSAGES] {
                if let Some(h) = db.cf_handle(cf) {
                    db.compact_range_cf(&h, None::<&[u8]>, None::<&[u8]>);
                }
            }
            tracing::debug!(ms = started.elapsed().as_millis() as u64, "compaction done");
            flag.store(false, Ordering::Release);
        });
    if spawned.is_err() {
        running.store(false, Ordering::Release);
    }
    spawned.ok()
}

/// Every Raft group's hard state, snapshot and entries from its floor on (the kept entries
/// before it are skipped unread: they are read when needed), checking that each group's
/// entries have no gaps.
fn read_raft(db: &DB, r: &mut Recovered) -> Result<(), String> {
    let raft = db.cf_handle(RAFT).ok_or("missing column family")?;
    let mut last: Option<(u64, u64)> = None;
    let mut it = db.raw_iterator_cf(&raft);
    it.seek_to_first();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let (group, kind, index) =
            keys::decode_raft_key(k).ok_or_else(|| format!("undecodable raft key {k:?}"))?;
        let log = r.raft.entry(group).or_default();
        if kind == keys::RAFT_ENTRY && index < log.floor {
            it.seek(keys::raft_key(group, keys::RAFT_ENTRY, log.floor));
            continue;
        }
        if kind == keys::RAFT_STAGED {
            // Read when needed, as the kept entries before the floor.
            it.seek(keys::raft_staged_end(group));
            continue;
        }
        let v = v.to_vec();
        it.next();
        if kind == keys::RAFT_FLOOR {
            let floor = v
                .try_into()
                .map_err(|_| format!("raft group {group}: bad floor"))?;
            log.floor = u64::from_be_bytes(floor);
            continue;
        }
        if kind == keys::RAFT_STATE {
            log.state = Some(v);
            continue;
        }
        if kind == keys::RAFT_SNAPSHOT {
            log.snapshot = Some(v);
            continue;
        }
        if let Some((g, i)) = last
            && g == group
            && i + 1 != index
        {
            return Err(format!("raft group {group}: entry {index} follows {i}"));
        }
        last = Some((group, index));
        if log.entries.is_empty() {
            log.first = index;
        }
        log.entries.push(v);
    }
    it.status().map_err(|e| e.to_string())
}

/// Read back topology, queue indexes and the messages they reference; drop what nothing
/// references (index rows of deleted queues, messages of no queue). Returns the highest
/// message id seen.
fn recover(db: &DB) -> Result<(Recovered, u64), String> {
    let started = Instant::now();
    let (Some(meta), Some(msgs), Some(index)) = (
        db.cf_handle(META),
        db.cf_handle(MESSAGES),
        db.cf_handle(INDEX),
    ) else {
        return Err("missing column family".into());
    };
    let mut r = Recovered::default();
    for item in db.iterator_cf(&meta, IteratorMode::Start) {
        let (k, v) = item.map_err(|e| e.to_string())?;
        let bad = || format!("undecodable metadata key {k:?}");
        match k.first() {
            Some(&keys::EXCHANGE) => r
                .exchanges
                .push(keys::decode_exchange(&k, &v).ok_or_else(bad)?),
            Some(&keys::QUEUE) => r.queues.push(RecoveredQueue {
                queue: keys::decode_queue(&k, &v).ok_or_else(bad)?,
                messages: Vec::new(),
            }),
            Some(&keys::BINDING) => r.bindings.push(keys::decode_binding(&k).ok_or_else(bad)?),
            _ => return Err(bad()),
        }
    }
    read_raft(db, &mut r)?;
    let mut cleanup = WriteBatch::default();
    let by_id: std::collections::HashMap<u64, usize> = r
        .queues
        .iter()
        .enumerate()
        .map(|(i, q)| (q.queue.id, i))
        .collect();
    let (mut referenced, mut max_ref) = (0usize, 0u64);
    for item in db.iterator_cf(&index, IteratorMode::Start) {
        let (k, v) = item.map_err(|e| e.to_string())?;
        let (queue, msg) = keys::decode_index_key(&k).ok_or("undecodable index key")?;
        match by_id.get(&queue) {
            Some(&i) => {
                let (delivered, size) = keys::decode_index_value(&v);
                r.queues[i].messages.push(RecoveredMessage {
                    id: msg,
                    delivered,
                    size,
                });
                referenced += 1;
                max_ref = max_ref.max(msg);
            }
            None => cleanup.delete_cf(&index, &k),
        }
    }
    // Message rows are read when queues need them (paging); only the highest id is needed
    // now, so that new ids keep increasing (queue order is id order).
    let mut last = db.raw_iterator_cf(&msgs);
    last.seek_to_last();
    let max_id = match last.key() {
        Some(k) => u64::from_be_bytes(k.try_into().map_err(|_| "undecodable message key")?),
        None => 0,
    };
    let max_id = max_id.max(max_ref);
    if !cleanup.is_empty() {
        db.write(cleanup).map_err(|e| e.to_string())?;
    }
    tracing::info!(
        exchanges = r.exchanges.len(),
        queues = r.queues.len(),
        bindings = r.bindings.len(),
        messages = referenced,
        raft_groups = r.raft.len(),
        ms = started.elapsed().as_millis() as u64,
        "store read"
    );
    Ok((r, max_id))
}

#[cfg(test)]
mod tests;
