//! The socket writer. The connection task writes straight to the socket while nothing is
//! queued (no task hop, no copy: the common case); what the socket does not take at once
//! goes to a writer task that writes everything queued with one vectored write when the
//! socket is ready. What is queued is bounded in bytes (a semaphore of `writer_buffer_bytes`
//! permits): when the peer stops reading, the connection task (the only producer) waits for
//! permits, so a consumer that does not read stops costing memory.

use std::io::IoSlice;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

/// Chunks taken per write.
const MAX_SLICES: usize = 64;

/// The connection task's end: send chunks, waiting while the byte budget is spent.
pub struct Handle {
    tx: mpsc::UnboundedSender<(Bytes, u32)>,
    budget: Arc<Semaphore>,
    max: u32,
    socket: Arc<OwnedWriteHalf>,
}

impl Handle {
    /// Write `out` (left empty for reuse): directly if the writer task is idle, the rest
    /// through it. Err when the socket is closed.
    pub async fn write(&self, out: &mut BytesMut) -> Result<(), ()> {
        // All permits back means nothing is queued or being written: writing here cannot
        // overtake earlier bytes (this task is the only producer).
        if self.budget.available_permits() == self.max as usize {
            match self.socket.try_write(out) {
                Ok(n) => out.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!("write failed: {e}");
                    return Err(());
                }
            }
            if out.is_empty() {
                out.clear();
                return Ok(());
            }
        }
        self.send(out.split().freeze()).await
    }

    /// Queue a chunk; Err when the writer is gone (socket closed).
    pub async fn send(&self, chunk: Bytes) -> Result<(), ()> {
        // A chunk bigger than the whole budget takes all of it.
        let n = (chunk.len() as u32).clamp(1, self.max);
        let permits = self.budget.acquire_many(n).await.map_err(|_| ())?;
        permits.forget();
        self.tx.send((chunk, n)).map_err(|_| ())
    }
}

pub fn spawn(socket: OwnedWriteHalf, budget_bytes: usize) -> (Handle, JoinHandle<()>) {
    let max = budget_bytes.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
    let budget = Arc::new(Semaphore::new(max as usize));
    let (tx, rx) = mpsc::unbounded_channel();
    let socket = Arc::new(socket);
    let task = tokio::spawn(run(socket.clone(), rx, budget.clone()));
    (
        Handle {
            tx,
            budget,
            max,
            socket,
        },
        task,
    )
}

/// The write half shuts down when its last owner (this task or the handle) drops it.
async fn run(
    socket: Arc<OwnedWriteHalf>,
    mut rx: mpsc::UnboundedReceiver<(Bytes, u32)>,
    budget: Arc<Semaphore>,
) {
    let mut items: Vec<(Bytes, u32)> = Vec::new();
    let mut chunks: Vec<Bytes> = Vec::new();
    while rx.recv_many(&mut items, MAX_SLICES).await > 0 {
        let permits: u32 = items.iter().map(|(_, n)| n).sum();
        chunks.extend(items.drain(..).map(|(c, _)| c));
        let written = write_all(&socket, &mut chunks).await;
        budget.add_permits(permits as usize);
        if let Err(e) = written {
            tracing::debug!("write failed: {e}");
            // Closing the budget fails the connection task's next send at once.
            budget.close();
            return;
        }
    }
}

async fn write_all(socket: &OwnedWriteHalf, chunks: &mut Vec<Bytes>) -> std::io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let slices: Vec<IoSlice<'_>> = chunks[first..].iter().map(|c| IoSlice::new(c)).collect();
        let mut n = loop {
            socket.writable().await?;
            match socket.try_write_vectored(&slices) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let c = &mut chunks[first];
            let take = n.min(c.len());
            c.advance(take);
            n -= take;
            if c.is_empty() {
                first += 1;
            }
        }
        while first < chunks.len() && chunks[first].is_empty() {
            first += 1;
        }
    }
    chunks.clear();
    Ok(())
}
