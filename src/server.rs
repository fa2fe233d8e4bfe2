//! The accept loop and graceful shutdown: on shutdown, stop accepting, let every connection
//! send connection.close 320 and wait (bounded) for them to finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::config::Config;

/// Raise this process's open-file limit to its hard maximum (every connection is a file
/// descriptor; the usual soft limit of 1024 would cap clients far below max_connections).
/// Returns the limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("cannot raise the open file limit: {e}");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// A running broker: its address, and the switch that stops it.
pub struct Server {
    pub local_addr: SocketAddr,
    /// The HTTP status API's address, if it is on.
    pub http_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    failed: watch::Receiver<Option<crate::store::StoreError>>,
}

impl Server {
    /// Bind the listener and start accepting; returns once the port is open.
    pub async fn start(config: Config) -> std::io::Result<Server> {
        let addr = config
            .listen_addr()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let broker = Broker::open(Arc::new(config))
            .await
            .map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(false);
        let http_addr = match config_http(&broker)? {
            None => None,
            Some(addr) => {
                let http = TcpListener::bind(addr).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
                })?;
                let bound = http.local_addr()?;
                tokio::spawn(crate::http::serve(http, broker.clone(), rx.clone()));
                tracing::info!("HTTP status API on {bound}");
                Some(bound)
            }
        };
        let failed = broker.store.failed();
        let task = tokio::spawn(accept_loop(listener, broker, rx));
        tracing::info!(
            "warren {} listening for AMQP on {local_addr}",
            env!("CARGO_PKG_VERSION")
        );
        Ok(Server {
            local_addr,
            http_addr,
            shutdown: tx,
            task,
            failed,
        })
    }

    /// Resolves once the broker has stopped by itself because its store failed, with why.
    pub async fn failed(&self) -> crate::error::Fatal {
        let mut failed = self.failed.clone();
        match failed.wait_for(Option::is_some).await {
            Ok(reason) => reason
                .clone()
                .unwrap_or(crate::store::StoreError::Unavailable)
                .into(),
            // The store is gone: only after a shutdown, which the caller asked for.
            Err(_) => std::future::pending().await,
        }
    }

    /// Close every connection with 320 CONNECTION_FORCED and wait for the broker to stop.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

fn config_http(broker: &Broker) -> std::io::Result<Option<SocketAddr>> {
    broker
        .config
        .http_addr()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

async fn accept_loop(
    listener: TcpListener,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Connections are told to close on a shutdown and also when the store fails.
    let (close_all, closing) = watch::channel(false);
    let mut failed = broker.store.failed();
    let mut conns = JoinSet::new();
    let max_pending = broker.config.max_pending_handshakes;
    let unauthenticated = Arc::new(Semaphore::new(max_pending));
    let stats_every = broker.config.stats_log_interval_ms;
    let mut stats = tokio::time::interval(Duration::from_millis(stats_every.max(1)));
    stats.tick().await;
    loop {
        tokio::select! {
            _ = stats.tick(), if stats_every > 0 => {
                tracing::info!(
                    connections = broker.connections.load(std::sync::atomic::Ordering::Relaxed),
                    pending_handshakes = max_pending - unauthenticated.available_permits(),
                    tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks(),
                    queued_bytes = broker.memory.used(),
                    "broker stats"
                );
            }
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    // A flood of sockets that never log in must not crowd out real clients:
                    // past the bound, new ones are closed at once (the client may retry).
                    let Ok(permit) = unauthenticated.clone().try_acquire_owned() else {
                        tracing::debug!(%peer, "too many connections in the handshake; closing");
                        drop(stream);
                        continue;
                    };
                    conns.spawn(crate::connection::serve(
                        stream,
                        peer,
                        broker.clone(),
                        closing.clone(),
                        permit,
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
            Ok(()) = failed.changed() => {
                if failed.borrow_and_update().is_some() {
                    tracing::error!("the store cannot write: closing every connection and stopping");
                    break;
                }
            }
        }
    }
    drop(listener);
    let _ = close_all.send(true);
    let grace = Duration::from_millis(broker.config.shutdown_timeout_ms);
    let all = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all).await.is_err() {
        tracing::warn!("connections still open after {grace:?}; stopping anyway");
        conns.abort_all();
    }
    let store = broker.store.clone();
    let _ = tokio::task::spawn_blocking(move || store.close()).await;
    tracing::info!("broker stopped");
}
