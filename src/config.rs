//! Configuration: built-in defaults, overridden by a TOML file (`--config`), overridden by
//! `WARREN_*` environment variables and command-line flags. Every limit lives here and is
//! documented with its default in config/warren.toml.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    /// The HTTP status API's listener, HOST:PORT; empty: no HTTP API.
    pub http_listen: String,
    /// HTTP API connections at once; more wait to be accepted.
    pub http_max_connections: usize,
    /// An HTTP API connection that sends and takes nothing for this long is closed.
    pub http_idle_timeout_ms: u64,
    pub default_user: String,
    pub default_pass: String,
    pub default_vhost: String,
    /// Users that may only connect from loopback addresses (RabbitMQ's loopback_users).
    pub loopback_users: Vec<String>,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub max_message_size: u64,
    /// How deep field tables and arrays may nest in method arguments, message headers and
    /// SASL responses.
    pub max_table_depth: usize,
    pub max_connections: usize,
    pub handshake_timeout_ms: u64,
    /// Connections accepted but not yet through the handshake; more are closed at once.
    pub max_pending_handshakes: usize,
    pub queue_inbox: usize,
    /// Bytes of messages a durable queue keeps in memory; past it, persistent messages wait
    /// on disk and are read back when they reach the head.
    pub queue_memory_budget_bytes: usize,
    /// Ready messages past which a queue whose consumers cannot keep up makes its
    /// publishers pause (flow control).
    pub queue_flow_messages: usize,
    pub writer_buffer_bytes: usize,
    pub shutdown_timeout_ms: u64,
    /// Fraction of the machine's memory that queued messages may use before publishers block.
    pub memory_high_watermark: f64,
    /// The same limit in bytes; overrides the fraction when set.
    pub memory_high_watermark_bytes: Option<usize>,
    /// Free bytes on the data directory's disk below which persistent publishers block.
    pub disk_free_limit_bytes: u64,
    pub disk_check_interval_ms: u64,
    /// How often the broker logs its connection, task and memory counts (0: never).
    pub stats_log_interval_ms: u64,
    /// The cluster_name clients see in connection.start (default: "warren" on a single node,
    /// "warren-" and the cluster's identity on a cluster node).
    pub cluster_name: Option<String>,
    /// Cluster: this node's id (in `peers`); unset on a single node.
    pub node_id: Option<u64>,
    /// Cluster: the address node links listen on and are opened from.
    pub cluster_listen: Option<String>,
    /// Cluster: every node as "ID=HOST:PORT" (its cluster address), this one included.
    pub peers: Vec<String>,
    /// Cluster: how long a metadata change may wait to be committed by a majority before
    /// the client is told it failed.
    pub cluster_command_timeout_ms: u64,
    /// Cluster: a node link that carries nothing for this long is taken as down.
    pub cluster_peer_timeout_ms: u64,
    /// A quorum queue's replica snapshots its state (and compacts its log) once this many
    /// bytes were logged since its last snapshot, or twice its state's size if larger.
    pub quorum_snapshot_bytes: usize,
    /// A quorum queue's replica takes no new commands while this many bytes it proposed
    /// wait to apply: its publishers wait (flow control) instead of piling up proposals.
    pub quorum_max_pending_bytes: usize,
    /// Cluster: the metadata group snapshots the topology (and compacts its log) every
    /// this many entries.
    pub metadata_snapshot_entries: u64,
    /// The type of a durable, shared queue declared without x-queue-type: "classic" or
    /// "quorum" (RabbitMQ's default_queue_type).
    pub default_queue_type: String,
    /// Where a new quorum queue's first leader goes without x-queue-leader-locator:
    /// "balanced" (the live node leading the fewest) or "client-local" (the declaring node).
    pub queue_leader_locator: String,
    /// How many members a new quorum queue has without x-quorum-initial-group-size (all
    /// nodes if fewer): RabbitMQ's quorum_cluster_size.
    pub quorum_initial_group_size: usize,
    /// `--rejoin`: only from the command line (it is for the start after a wipe).
    #[serde(skip)]
    pub rejoin: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:5672".into(),
            data_dir: "./warren-data".into(),
            http_listen: String::new(),
            http_max_connections: 128,
            http_idle_timeout_ms: 60_000,
            default_user: "guest".into(),
            default_pass: "guest".into(),
            default_vhost: "/".into(),
            loopback_users: vec!["guest".into()],
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            max_message_size: 128 * 1024 * 1024,
            max_table_depth: 128,
            max_connections: 10_000,
            handshake_timeout_ms: 10_000,
            max_pending_handshakes: 1024,
            queue_inbox: 1024,
            queue_memory_budget_bytes: 32 << 20,
            queue_flow_messages: 32768,
            writer_buffer_bytes: 2 << 20,
            shutdown_timeout_ms: 5_000,
            memory_high_watermark: 0.4,
            memory_high_watermark_bytes: None,
            disk_free_limit_bytes: 50_000_000,
            disk_check_interval_ms: 1_000,
            stats_log_interval_ms: 0,
            cluster_name: None,
            node_id: None,
            cluster_listen: None,
            peers: Vec::new(),
            cluster_command_timeout_ms: 5_000,
            cluster_peer_timeout_ms: 1_000,
            quorum_snapshot_bytes: 8 << 20,
            quorum_max_pending_bytes: 32 << 20,
            metadata_snapshot_entries: 10_000,
            default_queue_type: "classic".into(),
            queue_leader_locator: "balanced".into(),
            quorum_initial_group_size: 3,
            rejoin: false,
        }
    }
}

/// The command line; each flag can also come from its `WARREN_*` variable.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about = "An AMQP 0-9-1 message broker")]
pub struct Args {
    /// TOML configuration file (see config/warren.toml)
    #[arg(long, env = "WARREN_CONFIG")]
    pub config: Option<PathBuf>,
    /// AMQP listener, HOST:PORT
    #[arg(long, env = "WARREN_LISTEN")]
    pub listen: Option<String>,
    /// Data directory
    #[arg(long, env = "WARREN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP status API listener, HOST:PORT (off unless given)
    #[arg(long, env = "WARREN_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Cluster: this node's id (one of the --peer ids)
    #[arg(long, env = "WARREN_NODE_ID")]
    pub node_id: Option<u64>,
    /// Cluster: address for node links, HOST:PORT (links to peers are opened from it too)
    #[arg(long, env = "WARREN_CLUSTER_LISTEN")]
    pub cluster_listen: Option<String>,
    /// Cluster: a node as ID=HOST:PORT; repeat for every node, this one included
    #[arg(long = "peer", env = "WARREN_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Cluster: this node's data dir was wiped while its peers remember it; it rejoins as a
    /// new, empty member and catches up from them (README: "Mirrored queues")
    #[arg(long)]
    pub rejoin: bool,
}

impl Config {
    /// Defaults < config file < environment < flags; then validated.
    pub fn load(args: &Args) -> Result<Config, String> {
        let mut config = match &args.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = &args.listen {
            config.listen = v.clone();
        }
        if let Some(v) = &args.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &args.http_listen {
            config.http_listen = v.clone();
        }
        if args.node_id.is_some() {
            config.node_id = args.node_id;
        }
        if let Some(v) = &args.cluster_listen {
            config.cluster_listen = Some(v.clone());
        }
        if !args.peers.is_empty() {
            config.peers = args.peers.clone();
        }
        config.rejoin = args.rejoin;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            let msg = e.message().replace('\n', " ");
            format!("invalid config {}: {msg}", path.display())
        })
    }

    pub fn validate(&self) -> Result<(), String> {
        resolve(&self.listen, "listen")?;
        self.http_addr()?;
        if self.frame_max < crate::protocol::FRAME_MIN_SIZE {
            return Err(format!(
                "frame_max {} is below the minimum {}",
                self.frame_max,
                crate::protocol::FRAME_MIN_SIZE
            ));
        }
        if self.channel_max == 0 {
            return Err("channel_max must be at least 1".into());
        }
        if self.max_message_size == 0 || self.max_message_size > 512 * 1024 * 1024 {
            return Err("max_message_size must be between 1 and 536870912 bytes".into());
        }
        let cap = crate::protocol::table::DEPTH_CAP;
        if self.max_table_depth == 0 || self.max_table_depth > cap {
            return Err(format!("max_table_depth must be between 1 and {cap}"));
        }
        if self.max_pending_handshakes == 0 {
            return Err("max_pending_handshakes must be at least 1".into());
        }
        if self.quorum_max_pending_bytes == 0 {
            return Err("quorum_max_pending_bytes must be at least 1".into());
        }
        if self.http_max_connections == 0 || self.http_idle_timeout_ms == 0 {
            return Err("http_max_connections and http_idle_timeout_ms must be at least 1".into());
        }
        if self.handshake_timeout_ms == 0 {
            return Err("handshake_timeout_ms must be at least 1".into());
        }
        if self.queue_flow_messages == 0 {
            return Err("queue_flow_messages must be at least 1".into());
        }
        if self.queue_inbox == 0 {
            return Err("queue_inbox must be at least 1".into());
        }
        if self.writer_buffer_bytes < 64 * 1024 {
            return Err("writer_buffer_bytes must be at least 65536".into());
        }
        if !(self.memory_high_watermark > 0.0 && self.memory_high_watermark <= 1.0) {
            return Err("memory_high_watermark must be a fraction in (0, 1]".into());
        }
        if self.disk_check_interval_ms == 0 {
            return Err("disk_check_interval_ms must be at least 1".into());
        }
        if self.default_vhost.is_empty() {
            return Err("default_vhost must not be empty".into());
        }
        self.quorum_defaults()?;
        self.cluster()?;
        Ok(())
    }

    /// default_queue_type, queue_leader_locator and quorum_initial_group_size, checked.
    pub fn quorum_defaults(&self) -> Result<crate::broker::vhost::QuorumDefaults, String> {
        let default_type = match self.default_queue_type.as_str() {
            "classic" => false,
            "quorum" => true,
            other => {
                return Err(format!(
                    "default_queue_type '{other}' is not \"classic\" or \"quorum\""
                ));
            }
        };
        let locator = crate::broker::queue::quorum::Locator::parse(&self.queue_leader_locator)
            .ok_or_else(|| {
                format!(
                    "queue_leader_locator '{}' is not \"balanced\" or \"client-local\"",
                    self.queue_leader_locator
                )
            })?;
        if self.quorum_initial_group_size == 0 {
            return Err("quorum_initial_group_size must be at least 1".into());
        }
        Ok(crate::broker::vhost::QuorumDefaults {
            default_type,
            locator,
            group_size: self.quorum_initial_group_size,
        })
    }

    /// The cluster settings, checked: None on a single node (no cluster setting given).
    pub fn cluster(&self) -> Result<Option<crate::cluster::ClusterConfig>, String> {
        if self.node_id.is_none() && self.cluster_listen.is_none() && self.peers.is_empty() {
            if self.rejoin {
                return Err("--rejoin is for a cluster node".into());
            }
            return Ok(None);
        }
        let (Some(node_id), Some(listen)) = (self.node_id, &self.cluster_listen) else {
            return Err("a cluster node needs node_id, cluster_listen and peers".into());
        };
        let listen = resolve(listen, "cluster_listen")?;
        let mut peers = std::collections::BTreeMap::new();
        for p in &self.peers {
            let (id, addr) = p
                .split_once('=')
                .ok_or_else(|| format!("invalid peer '{p}': expected ID=HOST:PORT"))?;
            // Below 2^32: a Raft id carries the node id in its low 32 bits.
            let id: u64 = id
                .trim()
                .parse()
                .ok()
                .filter(|&n| n > 0 && n <= u64::from(u32::MAX))
                .ok_or_else(|| {
                    format!("invalid peer '{p}': the id must be an integer from 1 to 4294967295")
                })?;
            let addr = resolve(addr.trim(), "peer")?;
            if peers.insert(id, addr).is_some() {
                return Err(format!("peer id {id} is given twice"));
            }
        }
        if peers
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len()
            != peers.len()
        {
            return Err("two peers have the same address".into());
        }
        match peers.get(&node_id) {
            None => return Err(format!("node_id {node_id} is not in the peer list")),
            Some(&own) if own != listen => {
                return Err(format!(
                    "cluster_listen {listen} is not this node's peer entry {node_id}={own}"
                ));
            }
            Some(_) => {}
        }
        if self.cluster_command_timeout_ms == 0 || self.cluster_peer_timeout_ms == 0 {
            return Err("cluster timeouts must be at least 1 ms".into());
        }
        if self.metadata_snapshot_entries == 0 {
            return Err("metadata_snapshot_entries must be at least 1".into());
        }
        Ok(Some(crate::cluster::ClusterConfig {
            node_id,
            listen,
            peers,
            command_timeout: std::time::Duration::from_millis(self.cluster_command_timeout_ms),
            peer_timeout: std::time::Duration::from_millis(self.cluster_peer_timeout_ms),
            snapshot_bytes: self.quorum_snapshot_bytes,
            pending_bytes: self.quorum_max_pending_bytes,
            meta_snapshot_entries: self.metadata_snapshot_entries,
            raft_id: node_id,
        }))
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        resolve(&self.listen, "listen")
    }

    /// The HTTP API's address, if it is on.
    pub fn http_addr(&self) -> Result<Option<SocketAddr>, String> {
        match self.http_listen.as_str() {
            "" => Ok(None),
            addr => resolve(addr, "http_listen").map(Some),
        }
    }
}

fn resolve(addr: &str, what: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("invalid {what} address '{addr}': expected HOST:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_file_overrides() {
        Config::default().validate().unwrap();
        let c: Config = toml::from_str("frame_max = 8192\nlisten = \"127.0.0.1:1\"").unwrap();
        assert_eq!(c.frame_max, 8192);
        assert_eq!(c.channel_max, 2047);
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(toml::from_str::<Config>("nonsense = 1").is_err());
        let c = Config {
            frame_max: 100,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            listen: "nowhere".into(),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_documented_config_file_is_the_defaults() {
        let c: Config = toml::from_str(include_str!("../config/warren.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(format!("{c:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn cluster_settings_are_checked() {
        let peers = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let node = |id: u64, listen: &str, p: &[&str]| Config {
            node_id: Some(id),
            cluster_listen: Some(listen.into()),
            peers: peers(p),
            ..Config::default()
        };
        let three = [
            "1=127.0.0.2:25672",
            "2=127.0.0.3:25672",
            "3=127.0.0.4:25672",
        ];
        let c = node(2, "127.0.0.3:25672", &three)
            .cluster()
            .unwrap()
            .unwrap();
        assert_eq!((c.node_id, c.peers.len()), (2, 3));
        assert_eq!(Config::default().cluster().unwrap(), None);
        let bad: [(Config, &str); 7] = [
            (node(4, "127.0.0.3:25672", &three), "not in the peer list"),
            (
                node(2, "127.0.0.9:25672", &three),
                "not this node's peer entry",
            ),
            (
                node(1, "127.0.0.2:1", &["1=127.0.0.2:1", "1=127.0.0.3:1"]),
                "twice",
            ),
            (
                node(1, "127.0.0.2:1", &["1=127.0.0.2:1", "2=127.0.0.2:1"]),
                "same address",
            ),
            (
                node(1, "127.0.0.2:1", &["x=127.0.0.2:1"]),
                "an integer from 1 to 4294967295",
            ),
            (
                node(
                    1,
                    "127.0.0.2:1",
                    &["1=127.0.0.2:1", "4294967296=127.0.0.3:1"],
                ),
                "an integer from 1 to 4294967295",
            ),
            (
                Config {
                    node_id: Some(1),
                    ..Config::default()
                },
                "needs node_id",
            ),
        ];
        for (c, why) in bad {
            let e = c.validate().unwrap_err();
            assert!(e.contains(why), "{e:?} should say {why:?}");
        }
    }
}
