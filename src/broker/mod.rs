//! The broker proper: vhosts with their exchanges, routing and queues. Nothing here does
//! socket I/O; connections call in, queues call out only through consumer inboxes.

pub mod applied;
pub mod args;
pub mod clock;
pub mod consumer;
pub mod disk;
pub mod durable;
pub mod exchange;
pub mod ids;
pub mod members;
pub mod memory;
pub mod message;
pub mod meta;
pub mod queue;
pub mod remote;
pub mod routing;
pub mod topology;
pub mod vhost;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::{self, Cluster};
use crate::config::Config;
use crate::error::Fatal;
use crate::store::{Store, StoredBinding, StoredExchange};
use ids::{ConnId, NodeId};
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
    /// The alarms publishers obey: this node's, and on a cluster every live peer's too.
    pub alarms: Arc<remote::alarms::Alarms>,
    pub store: Arc<Store>,
    node: NodeId,
    /// Set on a cluster node.
    pub cluster: Option<Arc<Cluster>>,
    /// The Raft runtime of quorum queues: the cluster's, or a single node's own.
    raft: Option<Arc<Cluster>>,
    /// Sent in connection.start: the same on every node of a cluster.
    pub cluster_name: String,
    /// Changes when the cluster took this node as down while it ran: connections open
    /// then are closed (`meta::Applier`).
    pub evicted: Arc<watch::Sender<u64>>,
}

impl Broker {
    /// Open the store in the data directory and rebuild everything durable from it; on a
    /// cluster node, join the cluster and catch up with its metadata first.
    pub async fn open(config: Arc<Config>) -> Result<Arc<Broker>, Fatal> {
        let started = std::time::Instant::now();
        let mut cluster_config = config.cluster().map_err(cluster::ClusterError::Config)?;
        let (store, mut recovered) = Store::open(&config.data_dir)?;
        let raft_id = cluster::check_data_dir(
            &config.data_dir,
            cluster_config.as_ref(),
            recovered.is_empty(),
            config.rejoin,
        )?;
        if let Some(cc) = cluster_config.as_mut() {
            cc.raft_id = raft_id;
        }
        let node = cluster_config.as_ref().map_or(0, |c| c.node_id);
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
                quorum: config
                    .quorum_defaults()
                    .map_err(cluster::ClusterError::Config)?,
            },
            memory.clone(),
            Some(store.clone()),
            node,
        );
        vhosts.insert(config.default_vhost.clone(), vhost);

        let (queues, total) = shared_messages(recovered.queues);
        let mut exchanges: HashMap<String, Vec<StoredExchange>> = HashMap::new();
        for x in recovered.exchanges {
            exchanges.entry(x.vhost.clone()).or_default().push(x);
        }
        let mut bindings: HashMap<String, Vec<StoredBinding>> = HashMap::new();
        for b in recovered.bindings {
            bindings.entry(b.vhost.clone()).or_default().push(b);
        }
        let mut local_raft = None;
        if cluster_config.is_none() {
            let raft = std::mem::take(&mut recovered.raft);
            let runtime = local_quorum(&config, &store, raft, &memory);
            local_raft = Some(runtime.cluster.clone());
            for v in vhosts.values() {
                v.quorum_runtime(runtime.clone());
            }
        }
        restore(
            &vhosts,
            (queues, exchanges, bindings),
            cluster_config.is_some(),
        );
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
        let cluster_name = match (&config.cluster_name, &cluster_config) {
            (Some(name), _) => name.clone(),
            (None, Some(cc)) => format!("warren-{:016x}", cc.identity()),
            (None, None) => "warren".into(),
        };
        let evicted = Arc::new(watch::Sender::new(0));
        let alarms = remote::alarms::Alarms::new(memory.subscribe(), disk.subscribe());
        let cluster = match cluster_config {
            None => None,
            Some(cc) => {
                let raft = std::mem::take(&mut recovered.raft);
                let joined = Joining {
                    store: &store,
                    vhosts: &vhosts,
                    evicted: evicted.clone(),
                    alarms: alarms.clone(),
                    memory: memory.clone(),
                };
                Some(join(cc, joined, raft).await?)
            }
        };
        let raft = cluster.clone().or(local_raft);
        let broker = Arc::new(Broker {
            raft,
            disk,
            config,
            vhosts,
            // From a random point: a restarted node's connections must not be taken for
            // its earlier ones (consumer ids, exclusive owners) by nodes still holding them.
            next_conn: AtomicU64::new((u64::from(rand::random::<u32>()) << 24) + 1),
            connections: AtomicUsize::new(0),
            memory,
            store,
            node,
            cluster,
            cluster_name,
            evicted,
            alarms,
        });
        members::start_repair(&broker);
        Ok(broker)
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).cloned()
    }

    pub fn vhosts(&self) -> impl Iterator<Item = &Arc<VHost>> {
        self.vhosts.values()
    }

    /// Where quorum queues run: the cluster's Raft runtime, or a single node's.
    pub fn quorum_cluster(&self) -> Option<&Arc<Cluster>> {
        self.raft.as_ref()
    }

    /// The nodes this one has a live link to, and itself.
    pub fn live_nodes(&self) -> std::collections::BTreeSet<NodeId> {
        let mut live = self
            .cluster
            .as_ref()
            .map(|c| c.live_peers())
            .unwrap_or_default();
        live.insert(self.node);
        live
    }

    /// This node's id in connection, channel and consumer names: 0 on a single node.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    pub fn next_conn_id(&self) -> ConnId {
        ConnId {
            node: self.node,
            seq: self.next_conn.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// What a joining node's broker shares with its part of the cluster.
struct Joining<'a> {
    store: &'a Arc<Store>,
    vhosts: &'a HashMap<String, Arc<VHost>>,
    evicted: Arc<watch::Sender<u64>>,
    alarms: Arc<remote::alarms::Alarms>,
    memory: Arc<MemoryMonitor>,
}

/// A peer whose link stays down this many peer timeouts is taken as down.
const NODE_DOWN_AFTER_TIMEOUTS: u32 = 5;
/// How many command timeouts a node back from a wiped data dir waits, before it serves,
/// for its quorum queues to take it back (`back_in_quorum_queues`).
const REJOIN_WAIT: u32 = 5;

/// Start this node's part of the cluster: the metadata group applies its log to `vhosts`
/// (again from the first entry), then every change goes through it. Returns once this node
/// has applied everything committed before it started, which needs a majority.
async fn join(
    cc: cluster::ClusterConfig,
    with: Joining<'_>,
    raft: std::collections::BTreeMap<u64, crate::store::RaftLog>,
) -> Result<Arc<Cluster>, Fatal> {
    let Joining {
        store,
        vhosts,
        evicted,
        alarms,
        memory,
    } = with;
    let (applier, pending, mut gate) = meta::applier(
        (cc.node_id, cc.raft_id),
        vhosts.clone(),
        evicted,
        cc.meta_snapshot_entries,
    );
    // Set before the log is applied: queues homed elsewhere get their stubs as it is.
    let forwarder = remote::Forwarder::new();
    for v in vhosts.values() {
        v.forward(forwarder.clone());
    }
    let nodes: Vec<NodeId> = cc.peers.keys().copied().collect();
    let cluster = Cluster::start(cc, store.clone(), raft, applier, memory).await?;
    if !*gate.borrow() {
        tracing::info!("rejoining with a wiped data dir: catching up with the cluster");
        meta::waiting_for_a_majority(gate.wait_for(|open| *open)).await;
        tracing::info!("rejoined the cluster as a new member");
    }
    // Replicas of quorum queues started by the log replayed so far wait for this.
    let runtime = queue::quorum::Runtime {
        cluster: cluster.clone(),
        nodes,
    };
    for v in vhosts.values() {
        v.quorum_runtime(runtime.clone());
    }
    forwarder.start(cluster.clone(), vhosts.clone(), alarms);
    let replicated = meta::Replicated::new(cluster.clone(), pending);
    for v in vhosts.values() {
        v.replicate(replicated.clone());
    }
    replicated.rejoin().await;
    tracing::info!("caught up with the cluster's metadata");
    back_in_quorum_queues(&cluster, vhosts).await;
    let down_after = cluster.config.peer_timeout * NODE_DOWN_AFTER_TIMEOUTS;
    tokio::spawn(replicated.watch_nodes(down_after));
    Ok(cluster)
}

/// A node back from a wiped data dir was taken out of its quorum queues, and their leaders
/// add it back (`members::repair`): it serves once they have, so that its clients'
/// consumers start on its own replicas (a consumer of a queue its node joins later is
/// cancelled), or after `REJOIN_WAIT` command timeouts if a queue cannot be repaired (a
/// majority of its members lost). Returns at once on any other start.
async fn back_in_quorum_queues(cluster: &Cluster, vhosts: &HashMap<String, Arc<VHost>>) {
    let me = cluster.node_id();
    let waiting = || {
        let stale = vhosts.values().flat_map(|v| v.stale_queues());
        stale
            .filter(|q| {
                q.quorum
                    .as_ref()
                    .is_some_and(|p| p.stale.iter().any(|(n, _)| *n == me))
            })
            .count()
    };
    let deadline = tokio::time::Instant::now() + cluster.config.command_timeout * REJOIN_WAIT;
    while waiting() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match waiting() {
        0 => {}
        n => tracing::warn!(
            queues = n,
            "quorum queues have not taken this node back as a member yet: serving anyway"
        ),
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

/// A single node's quorum queues are groups of one on a Raft runtime of its own.
fn local_quorum(
    config: &Config,
    store: &Arc<Store>,
    raft: std::collections::BTreeMap<u64, crate::store::RaftLog>,
    memory: &Arc<MemoryMonitor>,
) -> queue::quorum::Runtime {
    let local = cluster::ClusterConfig {
        node_id: queue::quorum::raft_id(0),
        listen: ([0, 0, 0, 0], 0).into(),
        peers: [(1, ([0, 0, 0, 0], 0).into())].into(),
        command_timeout: Duration::from_millis(config.cluster_command_timeout_ms),
        peer_timeout: Duration::from_millis(config.cluster_peer_timeout_ms),
        snapshot_bytes: config.quorum_snapshot_bytes,
        pending_bytes: config.quorum_max_pending_bytes,
        meta_snapshot_entries: config.metadata_snapshot_entries,
        raft_id: queue::quorum::raft_id(0),
    };
    queue::quorum::Runtime {
        cluster: Cluster::local(local, store.clone(), raft, memory.clone()),
        nodes: vec![0],
    }
}

/// What the store recovered, per vhost: queues with their messages, exchanges, bindings.
type Stored = (
    ByVhost,
    HashMap<String, Vec<StoredExchange>>,
    HashMap<String, Vec<StoredBinding>>,
);

/// Rebuild each vhost from the store; on a cluster node the metadata log rebuilds the
/// topology, so only the messages are kept, for the queues the log brings back.
fn restore(vhosts: &HashMap<String, Arc<VHost>>, stored: Stored, clustered: bool) {
    let (mut queues, mut exchanges, mut bindings) = stored;
    for (name, v) in vhosts {
        let queues = queues.remove(name).unwrap_or_default();
        if clustered {
            v.stash(queues);
            exchanges.remove(name);
            bindings.remove(name);
            continue;
        }
        v.restore(
            exchanges.remove(name).unwrap_or_default(),
            queues,
            bindings.remove(name).unwrap_or_default(),
        );
    }
    for name in exchanges.keys().chain(queues.keys()).chain(bindings.keys()) {
        tracing::warn!(vhost = name, "stored state of an unknown vhost ignored");
    }
}
