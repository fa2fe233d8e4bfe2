//! A quorum queue replica's snapshots. Each replica snapshots its own state once enough was
//! logged since its last one (`quorum_snapshot_bytes`, or twice the state's size if larger,
//! so that rewriting a long queue costs at most half of what the log took), or when the
//! group's leader needs one for a follower too far behind, or under the memory alarm once
//! its log is more than 64 KiB and twice its state; the Raft runtime then compacts
//! the log before it. A snapshot holds everything replicated: the `QueueState` image, the
//! dedup sets (applied requests, each publisher run's last sequence) and which member each
//! non-member's channel is used through. The image holds each message's log position, not
//! its body: the compaction keeps the entries of live messages (`cluster::kept`), and a
//! follower sent the snapshot gets them ahead of it, streamed from the store.
//!
//! Restoring one (at a start, or on a follower the leader sent it to) replaces the state;
//! what this node missed in between is made good: deliveries made to its own consumers go
//! out now, and its own proposals that the snapshot holds as applied are answered.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::loader::To;
use super::{QBody, REMEMBERED, Replica, Waiter};
use crate::broker::applied::Applied;
use crate::broker::ids::{ChannelId, NodeId};
use crate::broker::queue::state::{Image, Payload, QueueState};
use crate::cluster::kept::Keep;

/// Log bytes since the last snapshot past which a replica snapshots under the memory alarm
/// (unless its state is larger).
const PRESSED_SNAPSHOT_BYTES: usize = 64 << 10;

#[derive(Serialize, Deserialize)]
struct ReplicaImage {
    state: Image<QBody>,
    applied_reqs: Vec<(NodeId, u64)>,
    enqueues: Vec<((NodeId, u64), u64)>,
    relays: Vec<(ChannelId, NodeId)>,
}

/// A replica's snapshot bookkeeping.
#[derive(Default)]
pub(super) struct Snapshots {
    /// Entry bytes applied since the last snapshot.
    since: usize,
    /// The leader needs one for a follower.
    wanted: bool,
    /// One is being encoded (one at a time).
    busy: Arc<AtomicBool>,
}

impl Snapshots {
    pub(super) fn applied(&mut self, bytes: usize) {
        self.since += bytes;
    }

    pub(super) fn want(&mut self) {
        self.wanted = true;
    }
}

impl Replica {
    /// Make a snapshot if one is due: encoded off the async workers, then handed to the
    /// Raft runtime.
    pub(super) fn maybe_snapshot(&mut self) {
        let s = &mut self.snapshots;
        // Under the memory alarm a log that is mostly settled messages goes sooner: what an
        // idle queue keeps of its log must not hold the alarm on.
        let floor = match self.memory.alarmed() {
            true => PRESSED_SNAPSHOT_BYTES,
            false => self.cluster.config.snapshot_bytes,
        };
        let threshold = floor.max(2 * self.state.weight());
        if s.busy.load(Ordering::Acquire) || !(s.wanted || s.since >= threshold) {
            return;
        }
        s.since = 0;
        let image = ReplicaImage {
            state: self.state.image(),
            applied_reqs: self.applied_reqs.to_vec(),
            enqueues: self.enqueues.iter().map(|(k, v)| (*k, *v)).collect(),
            relays: self.relays.iter().map(|(k, v)| (*k, *v)).collect(),
        };
        // Kept to be sent to a follower only if one needs it (its data may be large).
        let send = std::mem::take(&mut s.wanted);
        let (cluster, group, index) = (self.cluster.clone(), self.group, self.applied);
        let busy = s.busy.clone();
        busy.store(true, Ordering::Release);
        // Deliveries waiting for their bodies: a no-ack one's message is settled already.
        let reading = self.loader.reading();
        tokio::spawn(async move {
            let made = tokio::task::spawn_blocking(move || make(&image, reading, send)).await;
            match made {
                Ok(Ok((data, keep))) => cluster.snapshot(group, index, data.into(), keep).await,
                Ok(Err(e)) => tracing::error!(group, "cannot make a queue snapshot: {e}"),
                Err(e) => tracing::error!(group, "queue snapshot task failed: {e}"),
            }
            busy.store(false, Ordering::Release);
        });
    }

    /// A snapshot at `index` replaces the state.
    pub(super) fn restore(&mut self, index: u64, data: &[u8]) {
        let image: ReplicaImage = match postcard::from_bytes(data) {
            Ok(i) => i,
            Err(e) => {
                // Going on from a state other replicas do not have would diverge from them.
                tracing::error!(queue = %self.shared.name, index, "undecodable queue snapshot: {e}; stopping");
                std::process::exit(2);
            }
        };
        let before: HashSet<u64> = self
            .state
            .held_by_consumers()
            .into_iter()
            .filter(|(_, c)| self.consumers.contains_key(c))
            .map(|(s, _)| s)
            .collect();
        let cfg = self.state.config().clone();
        self.state = QueueState::from_image(cfg, image.state);
        // Its bodies are in the log: read back when delivered.
        self.state.reweigh();
        self.applied_reqs = Applied::from_vec(REMEMBERED, image.applied_reqs);
        self.enqueues = image.enqueues.into_iter().collect::<HashMap<_, _>>();
        self.relays = image.relays.into_iter().collect::<HashMap<_, _>>();
        // Registrations for channels that moved to another member meanwhile are over.
        let me = self.me;
        let relays = &self.relays;
        self.consumers.retain(|id, _| {
            relays
                .get(&id.channel)
                .copied()
                .unwrap_or(id.channel.conn.node)
                == me
        });
        self.applied = index;
        self.snapshots.since = 0;
        tracing::info!(queue = %self.shared.name, index, messages = self.state.ready_len(), "queue state restored from a snapshot");
        self.deliver_missed(&before);
        self.answer_covered();
        if self.state.is_deleted() && !self.done {
            self.done = true;
            (self.on_deleted)(&self.shared);
        }
        self.count_memory();
    }

    /// Deliveries to this node's consumers that the snapshot holds and this replica never
    /// carried out (it skipped the entries that made them).
    fn deliver_missed(&mut self, before: &HashSet<u64>) {
        let mut missed: HashMap<_, Vec<_>> = HashMap::new();
        for (seq, c) in self.state.held_by_consumers() {
            if !before.contains(&seq) && self.consumers.contains_key(&c) {
                missed.entry(c).or_default().push(seq);
            }
        }
        for (consumer, seqs) in missed {
            let Some(local) = self.consumers.get(&consumer) else {
                continue;
            };
            let held: Vec<_> = (seqs.iter())
                .filter_map(|s| self.state.held_delivery(*s))
                .collect();
            local.channel_limit.force(held.len() as u32);
            let to = To::Consumer {
                events: local.events.clone(),
                consumer,
                no_ack: false,
                queue: self.shared.clone(),
            };
            self.loader.deliver(held, to);
        }
    }

    /// This node's proposals that the snapshot holds as applied: answered as they would
    /// have been (a publish is confirmed, a count it cannot know is 0).
    fn answer_covered(&mut self) {
        let me = self.me;
        let last = self.enqueues.get(&(me, self.run)).copied().unwrap_or(0);
        let covered: Vec<u64> = self
            .pending
            .iter()
            .filter(|(req, p)| match p.enqueued {
                Some(seq) => seq <= last,
                None => self.applied_reqs.contains((me, **req)),
            })
            .map(|(req, _)| *req)
            .collect();
        for req in covered {
            let Some(p) = self.take_pending(req) else {
                continue;
            };
            match p.waiter {
                Waiter::Publish(Some(r)) => r.answer(&[]),
                Waiter::Consume(_, tx) => _ = tx.send(Ok(())),
                Waiter::Cancel(tx) => _ = tx.send(()),
                Waiter::Purge(tx) => _ = tx.send(0),
                Waiter::Delete(tx) => _ = tx.send(Ok(0)),
                // A get's message is held for its channel, which cannot be told: dropped,
                // it fails, and the message comes back when the channel closes.
                Waiter::Get(_) | Waiter::Publish(None) | Waiter::Nothing => {}
            }
        }
    }
}

/// A snapshot's data and what it keeps of the log: the entries of its live messages and
/// those still being read for deliveries. Blocking (a long queue's image is large): never
/// on an async worker.
fn make(image: &ReplicaImage, reading: Vec<u64>, send: bool) -> Result<(Vec<u8>, Keep), String> {
    let data = postcard::to_stdvec(image).map_err(|e| e.to_string())?;
    // Roughly what the kept entries weigh (a batch's settled messages come along).
    let mut size = data.len();
    let mut live = reading;
    for b in image.state.bodies() {
        live.push(b.at.index);
        size += b.size() as usize + 64;
    }
    live.sort_unstable();
    live.dedup();
    Ok((data, Keep { live, send, size }))
}
