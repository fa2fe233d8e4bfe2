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

/// A running broker: its address, and the switch that stops it.
pub struct Server {
    pub local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Bind the listener and start accepting; returns once the port is open.
    pub async fn start(config: Config) -> std::io::Result<Server> {
        let addr = config
            .listen_addr()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let broker = Broker::open(Arc::new(config)).map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, broker, rx));
        tracing::info!(
            "warren {} listening for AMQP on {local_addr}",
            env!("CARGO_PKG_VERSION")
        );
        Ok(Server {
            local_addr,
            shutdown: tx,
            task,
        })
    }

    /// Close every connection with 320 CONNECTION_FORCED and wait for the broker to stop.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let unauthenticated = Arc::new(Semaphore::new(broker.config.max_pending_handshakes));
    loop {
        tokio::select! {
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
                        shutdown.clone(),
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
        }
    }
    drop(listener);
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
