//! The broker proper: vhosts with their exchanges, routing and queues. Nothing here does
//! socket I/O; connections call in, queues call out only through consumer inboxes.

pub mod consumer;
pub mod exchange;
pub mod message;
pub mod queue;
pub mod routing;
pub mod vhost;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::config::Config;
use vhost::VHost;

pub struct Broker {
    pub config: Arc<Config>,
    vhosts: HashMap<String, Arc<VHost>>,
    next_conn: AtomicU64,
    /// Open connections (past the handshake), for the max_connections limit.
    pub connections: AtomicUsize,
}

impl Broker {
    pub fn new(config: Arc<Config>) -> Arc<Broker> {
        let mut vhosts = HashMap::new();
        vhosts.insert(
            config.default_vhost.clone(),
            VHost::new(&config.default_vhost, config.queue_inbox),
        );
        Arc::new(Broker {
            config,
            vhosts,
            next_conn: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
        })
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).cloned()
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}
