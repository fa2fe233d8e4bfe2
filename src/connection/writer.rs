//! The socket writer: one task per connection that takes encoded chunks and writes everything
//! queued with one vectored write. What is queued is bounded in bytes (a semaphore of
//! `writer_buffer_bytes` permits): when the peer stops reading, the connection task (the only
//! producer) waits for permits, so a consumer that does not read stops costing memory.

use std::io::IoSlice;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;
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
}

impl Handle {
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
    let task = tokio::spawn(run(socket, rx, budget.clone()));
    (Handle { tx, budget, max }, task)
}

async fn run(
    mut socket: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<(Bytes, u32)>,
    budget: Arc<Semaphore>,
) {
    let mut items: Vec<(Bytes, u32)> = Vec::with_capacity(MAX_SLICES);
    let mut chunks: Vec<Bytes> = Vec::with_capacity(MAX_SLICES);
    while rx.recv_many(&mut items, MAX_SLICES).await > 0 {
        let permits: u32 = items.iter().map(|(_, n)| n).sum();
        chunks.extend(items.drain(..).map(|(c, _)| c));
        let written = write_all(&mut socket, &mut chunks).await;
        budget.add_permits(permits as usize);
        if let Err(e) = written {
            tracing::debug!("write failed: {e}");
            // Closing the budget fails the connection task's next send at once.
            budget.close();
            return;
        }
    }
    let _ = socket.shutdown().await;
}

async fn write_all(socket: &mut OwnedWriteHalf, chunks: &mut Vec<Bytes>) -> std::io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let slices: Vec<IoSlice<'_>> = chunks[first..].iter().map(|c| IoSlice::new(c)).collect();
        let mut n = socket.write_vectored(&slices).await?;
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
