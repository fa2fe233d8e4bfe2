//! A replica's deliveries whose bodies are not in memory (paged out past the queue's memory
//! budget, or restored from a snapshot): read back from the log, off the async workers,
//! then handed out. Deliveries go out in the order the replica made them: while one waits
//! for a read, those after it wait behind it (one queue of jobs per replica).
//!
//! A body that cannot be read (the store failed) is logged and its delivery dropped: the
//! message stays held by its consumer until the channel closes, then it comes back.
//!
//! Invariant: an entry waiting to be read here is named live by every snapshot made
//! meanwhile (`reading`): a no-ack delivery's message is settled as it is made, and the
//! compaction must not delete its entry before it is read.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::apply::entry;
use super::entry::messages_of;
use super::{QBody, QueueHandle};
use crate::broker::ids::ConsumerId;
use crate::broker::queue::state::Delivery;
use crate::broker::queue::{ConnEvent, ConnSender, GetReply};
use crate::cluster::Cluster;

/// Where deliveries go.
pub(super) enum To {
    Consumer {
        events: ConnSender,
        consumer: ConsumerId,
        no_ack: bool,
        queue: QueueHandle,
    },
    /// A basic.get's answer, with the messages left.
    Get {
        reply: oneshot::Sender<GetReply>,
        left: u32,
    },
}

/// Jobs read back together at most.
const BATCH: usize = 256;

struct Job {
    deliveries: Vec<Delivery<QBody>>,
    to: To,
    /// The entries it reads.
    unread: Vec<u64>,
}

/// Entries waiting to be read, each with the number of jobs that read it.
type Reading = Arc<Mutex<BTreeMap<u64, u32>>>;

pub(super) struct Loader {
    jobs: mpsc::UnboundedSender<Job>,
    /// Jobs queued and not handed out yet.
    queued: Arc<AtomicUsize>,
    reading: Reading,
}

impl Loader {
    /// The loader of `group`'s replica; it ends with the replica.
    pub(super) fn start(cluster: Arc<Cluster>, group: u64) -> Loader {
        let (jobs, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let reading = Reading::default();
        tokio::spawn(run(rx, cluster, group, queued.clone(), reading.clone()));
        Loader {
            jobs,
            queued,
            reading,
        }
    }

    /// The entries waiting to be read (a snapshot keeps them).
    pub(super) fn reading(&self) -> Vec<u64> {
        lock(&self.reading).keys().copied().collect()
    }

    /// Hand deliveries out: at once if their bodies are in memory and none wait before
    /// them, else once read.
    pub(super) fn deliver(&self, deliveries: Vec<Delivery<QBody>>, to: To) {
        let loaded = deliveries.iter().all(|d| d.body.msg.is_some());
        if loaded && self.queued.load(Ordering::Acquire) == 0 {
            send(deliveries, to);
            return;
        }
        let mut unread: Vec<u64> = (deliveries.iter())
            .filter(|d| d.body.msg.is_none())
            .map(|d| d.body.at.index)
            .collect();
        unread.sort_unstable();
        unread.dedup();
        {
            let mut reading = lock(&self.reading);
            for i in &unread {
                *reading.entry(*i).or_default() += 1;
            }
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        let job = Job {
            deliveries,
            to,
            unread,
        };
        if let Err(e) = self.jobs.send(job) {
            // The loader is gone only with the runtime; what it held is sent unread.
            self.queued.fetch_sub(1, Ordering::AcqRel);
            done(&self.reading, &e.0.unread);
            send(e.0.deliveries, e.0.to);
        }
    }
}

fn lock(reading: &Reading) -> std::sync::MutexGuard<'_, BTreeMap<u64, u32>> {
    reading.lock().unwrap_or_else(|e| e.into_inner())
}

/// A job's entries are read (or given up).
fn done(reading: &Reading, unread: &[u64]) {
    let mut reading = lock(reading);
    for i in unread {
        if let Some(n) = reading.get_mut(i) {
            *n -= 1;
            if *n == 0 {
                reading.remove(i);
            }
        }
    }
}

async fn run(
    mut jobs: mpsc::UnboundedReceiver<Job>,
    cluster: Arc<Cluster>,
    group: u64,
    queued: Arc<AtomicUsize>,
    reading: Reading,
) {
    while let Some(first) = jobs.recv().await {
        // Everything queued meanwhile is read at once.
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let unread = |d: &&mut Delivery<QBody>| d.body.msg.is_none();
        let mut need: Vec<u64> = batch
            .iter()
            .flat_map(|j| j.unread.iter().copied())
            .collect();
        need.sort_unstable();
        need.dedup();
        if !need.is_empty() {
            let c = cluster.clone();
            let read = tokio::task::spawn_blocking(move || read(&c, group, need)).await;
            let read = read.unwrap_or_else(|e| {
                tracing::error!(group, "reading queue messages back failed: {e}");
                HashMap::new()
            });
            for d in batch
                .iter_mut()
                .flat_map(|j| j.deliveries.iter_mut().filter(unread))
            {
                let at = d.body.at;
                let m = read.get(&at.index).and_then(|ms| ms.get(at.pos as usize));
                d.body.msg = m.map(|m| Arc::new(m.clone().into_message()));
            }
        }
        for job in batch {
            done(&reading, &job.unread);
            send(job.deliveries, job.to);
            queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The messages of the entries at `indexes`, by index (those that cannot be read missing).
fn read(
    cluster: &Cluster,
    group: u64,
    indexes: Vec<u64>,
) -> HashMap<u64, Vec<crate::broker::remote::wire::WireMsg>> {
    let stored = match cluster.read_stored(group, &indexes) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(group, "cannot read queue messages back: {e}");
            return HashMap::new();
        }
    };
    let mut out = HashMap::new();
    for (index, s) in indexes.into_iter().zip(stored) {
        let msgs = s
            .and_then(|raw| Cluster::entry_data(&raw).ok())
            .and_then(|data| messages_of(&data));
        match msgs {
            Some(m) => _ = out.insert(index, m),
            None => tracing::error!(group, index, "a queue message's log entry is missing"),
        }
    }
    out
}

fn send(deliveries: Vec<Delivery<QBody>>, to: To) {
    match to {
        To::Consumer {
            events,
            consumer,
            no_ack,
            queue,
        } => {
            let entries: Vec<_> = (deliveries.into_iter())
                .filter_map(|d| entry(d, false))
                .collect();
            if !entries.is_empty() {
                let ev = ConnEvent::Deliver {
                    consumer,
                    no_ack,
                    queue,
                    entries,
                };
                let _ = events.send(ev);
            }
        }
        To::Get { reply, left } => {
            let got = deliveries.into_iter().next().and_then(|d| entry(d, true));
            let _ = reply.send(got.map(|e| (e, left)));
        }
    }
}
