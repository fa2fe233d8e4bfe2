//! The broker proper: vhosts with their exchanges, routing and queues. Nothing here does
//! socket I/O; connections call in, queues call out only through consumer inboxes.

pub mod args;
pub mod clock;
pub mod consumer;
pub mod disk;
pub mod durable;
pub mod exchange;
pub mod ids;
pub mod memory;
pub mod message;
pub mod queue;
pub mod routing;
pub mod topology;
pub mod vhost;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::config::Config;
use crate::store::{Store, StoreError};
use memory::MemoryMonitor;
use message::Persisted;
use vhost::{QueueSettings, VHost};

pub struct Broker {
    pub config: Arc<Config>,
    vhosts: HashMap<String, Arc<VHost>>,
    next_conn: AtomicU64,
    /// Open connections (past the handshake), for the max_connections limit.
    pub connections: AtomicUsize,
    pub memory: Arc<MemoryMonitor>,
    pub disk: disk::DiskMonitor,
    pub store: Arc<Store>,
}

impl Broker {
    /// Open the store in the data directory and rebuild everything durable from it.
    pub fn open(config: Arc<Config>) -> Result<Arc<Broker>, StoreError> {
        let started = std::time::Instant::now();
        let (store, recovered) = Store::open(&config.data_dir)?;
        let limit = config.memory_high_watermark_bytes.unwrap_or_else(|| {
            let total = memory::total_memory().unwrap_or(4 << 30);
            (total as f64 * config.memory_high_watermark) as usize
        });
        tracing::info!("memory high watermark: {} MiB", limit >> 20);
        let memory = Arc::new(MemoryMonitor::new(limit));
        let mut vhosts = HashMap::new();
        let vhost = VHost::new(
            &config.default_vhost,
            QueueSettings {
                inbox: config.queue_inbox,
                memory_budget: config.queue_memory_budget_bytes,
                flow_messages: config.queue_flow_messages,
            },
            memory.clone(),
            Some(store.clone()),
        );
        vhosts.insert(config.default_vhost.clone(), vhost);

        let (mut queues, total) = shared_messages(recovered.queues);
        let mut exchanges: HashMap<String, Vec<_>> = HashMap::new();
        for x in recovered.exchanges {
            exchanges.entry(x.vhost.clone()).or_default().push(x);
        }
        let mut bindings: HashMap<String, Vec<_>> = HashMap::new();
        for b in recovered.bindings {
            bindings.entry(b.vhost.clone()).or_default().push(b);
        }
        for (name, v) in &vhosts {
            v.restore(
                exchanges.remove(name).unwrap_or_default(),
                queues.remove(name).unwrap_or_default(),
                bindings.remove(name).unwrap_or_default(),
            );
        }
        for name in exchanges.keys().chain(queues.keys()).chain(bindings.keys()) {
            tracing::warn!(vhost = name, "stored state of an unknown vhost ignored");
        }
        tracing::info!(
            messages = total,
            ms = started.elapsed().as_millis() as u64,
            "recovery complete"
        );
        let disk = disk::DiskMonitor::start(
            &config.data_dir,
            config.disk_free_limit_bytes,
            std::time::Duration::from_millis(config.disk_check_interval_ms),
        );
        Ok(Arc::new(Broker {
            disk,
            config,
            vhosts,
            next_conn: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            memory,
            store,
        }))
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).cloned()
    }

    /// This node's id in consumer and channel names: 0 on a single node.
    pub fn node_id(&self) -> u32 {
        0
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

/// Recovered queues by vhost, each message's row shared (one refcount per row, held by
/// every queue that has it); and how many messages there are.
type ByVhost = HashMap<String, Vec<(crate::store::StoredQueue, queue::classic::Recovered)>>;

fn shared_messages(recovered: Vec<crate::store::RecoveredQueue>) -> (ByVhost, usize) {
    let mut refs: HashMap<u64, u32> = HashMap::new();
    for q in &recovered {
        for m in &q.messages {
            *refs.entry(m.id).or_default() += 1;
        }
    }
    let mut shared: HashMap<u64, Arc<Persisted>> = HashMap::with_capacity(refs.len());
    let mut queues: ByVhost = HashMap::new();
    let mut total = 0usize;
    for q in recovered {
        let msgs: Vec<_> = q
            .messages
            .into_iter()
            .map(|m| {
                let p = shared
                    .entry(m.id)
                    .or_insert_with(|| Arc::new(Persisted::new(m.id, m.size, refs[&m.id])));
                (p.clone(), m.delivered)
            })
            .collect();
        total += msgs.len();
        queues
            .entry(q.queue.vhost.clone())
            .or_default()
            .push((q.queue, msgs));
    }
    (queues, total)
}
