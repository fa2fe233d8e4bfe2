//! The socket writer: one task per connection that takes encoded chunks from a bounded queue
//! and writes everything queued with one vectored write. When the peer stops reading, the
//! queue fills and the connection task (the only producer) waits: that is how a consumer that
//! does not read stops costing broker memory.

use std::io::IoSlice;

use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Chunks taken per write.
const MAX_SLICES: usize = 64;

pub async fn run(mut socket: OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    let mut chunks: Vec<Bytes> = Vec::with_capacity(MAX_SLICES);
    while rx.recv_many(&mut chunks, MAX_SLICES).await > 0 {
        if let Err(e) = write_all(&mut socket, &mut chunks).await {
            tracing::debug!("write failed: {e}");
            // Keep draining so the connection task never blocks on a dead socket.
            while rx.recv().await.is_some() {}
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
