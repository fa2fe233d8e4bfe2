//! A snapshot for a follower, streamed: its kept entries (a quorum queue's live messages,
//! up to the whole queue) go ahead of it in chunks read from the leader's store, each
//! staged in the follower's store (`Op::RaftStage`) and acknowledged once written, at most
//! `WINDOW` unacknowledged; the Raft message, which lists the kept entries without their
//! bytes, goes last. Neither side holds more than a few chunks: a 1 GiB queue is not read
//! into memory to be sent, nor put back together to be installed.
//!
//! `Sending` is the leader's side and `Staging` the follower's, both without I/O: the
//! runtime drives them over the node links (`run`), the simulation over its network.
//!
//! Invariants: a follower steps a snapshot that lists kept entries only if it staged
//! exactly those, in order, from the chunks of that snapshot (`Staging::holds`); chunks are
//! staged in order, a chunk out of order is ignored (the leader gives up and Raft sends the
//! snapshot again). While an entry is being sent, the leader's compactions keep it
//! (`Group::snapshot_made`).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::watch;

use super::link::{Frame, Links};
use super::parts;
use crate::store::Store;

/// Entry bytes in a chunk (an entry bigger than this goes alone, in frame parts).
pub const CHUNK: usize = 4 << 20;
/// Chunks sent and not acknowledged yet.
pub const WINDOW: u64 = 2;
/// The acknowledgement of a follower that cannot take the snapshot (its group is not open).
pub const REFUSED: u64 = u64::MAX;
/// A sending with no chunk acknowledged for this long is given up.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// Entries read at once, most.
const READ_MAX: usize = 1024;

/// Part of a snapshot's kept entries: the `seq`th chunk of the snapshot at `index`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub index: u64,
    pub seq: u64,
    pub entries: Vec<(u64, Vec<u8>)>,
}

impl Chunk {
    /// `[index][seq][count: u32]`, then each entry's `[index][len: u32][bytes]`.
    pub fn encode(&self) -> Bytes {
        let size: usize = self.entries.iter().map(|(_, e)| 12 + e.len()).sum();
        let mut out = BytesMut::with_capacity(20 + size);
        out.put_u64(self.index);
        out.put_u64(self.seq);
        out.put_u32(self.entries.len() as u32);
        for (i, e) in &self.entries {
            out.put_u64(*i);
            out.put_u32(e.len() as u32);
            out.put_slice(e);
        }
        out.freeze()
    }

    pub fn decode(mut b: &[u8]) -> Result<Chunk, String> {
        let short = || "short snapshot chunk".to_string();
        if b.len() < 20 {
            return Err(short());
        }
        let (index, seq, count) = (b.get_u64(), b.get_u64(), b.get_u32());
        let mut entries = Vec::with_capacity((count as usize).min(b.len() / 12));
        for _ in 0..count {
            if b.len() < 12 {
                return Err(short());
            }
            let (i, len) = (b.get_u64(), b.get_u32() as usize);
            if b.len() < len {
                return Err(short());
            }
            entries.push((i, b[..len].to_vec()));
            b.advance(len);
        }
        Ok(Chunk {
            index,
            seq,
            entries,
        })
    }
}

/// A snapshot being sent to a follower, on the leader.
#[derive(Debug)]
pub struct Sending {
    pub group: u64,
    /// The follower's Raft id.
    pub to: u64,
    /// The snapshot's index.
    pub index: u64,
    /// The Raft message that carries the snapshot, sent once every chunk is acknowledged.
    pub msg: Bytes,
    kept: Vec<u64>,
    /// Kept entries read into chunks so far.
    read: usize,
    /// Chunks made, and acknowledged.
    made: u64,
    acked: u64,
    /// Entry bytes read so far, to size the next read.
    bytes: usize,
    /// Entry bytes in a chunk (`CHUNK`; the simulation's are smaller).
    chunk: usize,
}

impl Sending {
    pub fn new(group: u64, to: u64, index: u64, msg: Bytes, kept: Vec<u64>) -> Sending {
        Sending {
            group,
            to,
            index,
            msg,
            kept,
            read: 0,
            made: 0,
            acked: 0,
            bytes: 0,
            chunk: CHUNK,
        }
    }

    /// Chunks of `bytes` of entries instead of `CHUNK`.
    #[cfg(test)]
    pub fn chunked(mut self, bytes: usize) -> Sending {
        self.chunk = bytes;
        self
    }

    /// Another chunk may be made now.
    pub fn wants_chunk(&self) -> bool {
        self.read < self.kept.len() && self.made < self.acked + WINDOW
    }

    /// Every chunk is acknowledged: the snapshot's message may go.
    pub fn finished(&self) -> bool {
        self.read == self.kept.len() && self.acked == self.made
    }

    /// The next chunk, read with `read` (the store's entries by index; blocking). Reads are
    /// sized from the entries read so far, so that a chunk of small entries takes few
    /// reads and one of large entries little more than `CHUNK`.
    pub fn next_chunk<E: std::fmt::Display>(
        &mut self,
        mut read: impl FnMut(&[u64]) -> Result<Vec<Option<Vec<u8>>>, E>,
    ) -> Result<Chunk, String> {
        let mut entries = Vec::new();
        let mut size = 0;
        while size < self.chunk && self.read < self.kept.len() {
            let n = match self.read {
                0 => 1,
                r => ((self.chunk - size) * r / self.bytes.max(1)).clamp(1, READ_MAX),
            };
            let ix = &self.kept[self.read..(self.read + n).min(self.kept.len())];
            let got = read(ix).map_err(|e| e.to_string())?;
            for (i, e) in ix.iter().zip(got) {
                let e = e.ok_or_else(|| format!("kept entry {i} is not stored"))?;
                size += e.len();
                self.bytes += e.len();
                entries.push((*i, e));
            }
            self.read += ix.len();
        }
        self.made += 1;
        Ok(Chunk {
            index: self.index,
            seq: self.made - 1,
            entries,
        })
    }

    /// The follower acknowledged chunk `seq` (and so every one before it); false if it
    /// refused the snapshot.
    pub fn ack(&mut self, seq: u64) -> bool {
        if seq == REFUSED {
            return false;
        }
        if seq < self.made {
            self.acked = self.acked.max(seq + 1);
        }
        true
    }
}

/// What a follower staged of a leader's snapshot so far.
#[derive(Debug)]
pub struct Staging {
    index: u64,
    next: u64,
    staged: Vec<u64>,
}

/// A chunk to stage on a follower: the entries to write (then acknowledge `seq`), and the
/// entries staged for a snapshot given up, to delete first.
#[derive(Debug, PartialEq)]
pub struct Stage {
    pub index: u64,
    pub seq: u64,
    pub entries: Vec<(u64, Vec<u8>)>,
    pub given_up: Vec<u64>,
}

impl Staging {
    /// Take a chunk: the first of a snapshot starts its staging anew (a sending that
    /// started again, or another snapshot); the next one of this staging is added; any
    /// other (repeated, or after a lost one) is ignored.
    pub fn take(staging: &mut Option<Staging>, chunk: Chunk) -> Option<Stage> {
        let mut given_up = Vec::new();
        match staging {
            Some(s) if chunk.seq == s.next && chunk.index == s.index && chunk.seq > 0 => {}
            _ if chunk.seq == 0 => {
                if let Some(old) = staging.take() {
                    given_up = old.staged;
                }
                *staging = Some(Staging {
                    index: chunk.index,
                    next: 0,
                    staged: Vec::new(),
                });
            }
            _ => return None,
        }
        let s = staging.as_mut().expect("staging");
        let mut last = s.staged.last().copied();
        for (i, _) in &chunk.entries {
            // In order, as the leader lists them: anything else is not a chunk of ours, and
            // the staging goes no further (it no longer holds what the snapshot lists).
            if last.is_some_and(|l| l >= *i) {
                s.next = u64::MAX;
                return None;
            }
            last = Some(*i);
        }
        s.staged.extend(chunk.entries.iter().map(|(i, _)| *i));
        s.next += 1;
        Some(Stage {
            index: chunk.index,
            seq: chunk.seq,
            entries: chunk.entries,
            given_up,
        })
    }

    /// The staging holds exactly `kept` for the snapshot at `index`.
    pub fn holds(&self, index: u64, kept: &[u64]) -> bool {
        self.index == index && self.staged == kept
    }

    /// The entries staged.
    pub fn into_staged(self) -> Vec<u64> {
        self.staged
    }
}

/// Send `s` over the node links, reading its chunks from `store`; `acks` carries the
/// follower's last acknowledgement. True once the snapshot's message is handed to the
/// link; false if the sending was given up (the link went down, the follower refused or
/// stopped answering, an entry could not be read).
pub async fn run(
    mut s: Sending,
    store: Arc<Store>,
    links: Arc<Links>,
    mut acks: watch::Receiver<u64>,
) -> bool {
    let peer = super::node_of(s.to);
    let Some(session) = links.up().borrow().get(&peer).copied().flatten() else {
        return false;
    };
    loop {
        while s.wants_chunk() {
            let st = store.clone();
            let read = tokio::task::spawn_blocking(move || {
                let group = s.group;
                let c = s.next_chunk(|ix| st.read_raft_entries(group, ix));
                (s, c)
            })
            .await;
            let chunk = match read {
                Ok((back, Ok(c))) => {
                    s = back;
                    c
                }
                Ok((back, Err(e))) => {
                    tracing::warn!(group = back.group, "snapshot not sent: {e}");
                    return false;
                }
                Err(_) => return false,
            };
            for frame in parts::split(parts::Kind::Kept, s.group, chunk.encode()) {
                links.send_waiting(peer, frame).await;
            }
        }
        if s.finished() {
            for frame in parts::split(parts::Kind::Raft, s.group, s.msg.clone()) {
                links.send(peer, frame);
            }
            return true;
        }
        match tokio::time::timeout(ACK_WAIT, acks.changed()).await {
            Ok(Ok(())) => {
                let seq = *acks.borrow_and_update();
                if !s.ack(seq) {
                    tracing::debug!(group = s.group, peer, "follower refused a snapshot");
                    return false;
                }
            }
            // Replaced by a newer sending, or the runtime stopped.
            Ok(Err(_)) => return false,
            Err(_) => {
                tracing::warn!(
                    group = s.group,
                    peer,
                    "snapshot chunks not acknowledged; giving up"
                );
                return false;
            }
        }
        if !links.is_current(peer, session) {
            return false;
        }
    }
}

/// The frame that acknowledges a staged chunk (or refuses a snapshot: `REFUSED`).
pub fn ack(group: u64, index: u64, seq: u64) -> Frame {
    Frame::KeptAck { group, index, seq }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(n: u64, size: usize) -> impl FnMut(&[u64]) -> Result<Vec<Option<Vec<u8>>>, String> {
        move |ix: &[u64]| {
            Ok(ix
                .iter()
                .map(|i| (*i <= n).then(|| vec![*i as u8; size]))
                .collect())
        }
    }

    #[test]
    fn chunks_round_trip_and_short_ones_are_refused() {
        let c = Chunk {
            index: 9,
            seq: 2,
            entries: vec![(3, vec![1, 2]), (5, vec![]), (8, vec![7; 100])],
        };
        let b = c.encode();
        assert_eq!(Chunk::decode(&b), Ok(c));
        for cut in 0..b.len() {
            assert!(Chunk::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// The sender and a follower's staging, over a channel that loses, repeats or
    /// reorders what the table says: the follower holds the snapshot's kept entries
    /// exactly when every chunk came, in order.
    #[test]
    fn a_follower_holds_the_kept_entries_only_when_every_chunk_came_in_order() {
        let kept: Vec<u64> = (1..=40).map(|i| i * 3).collect();
        // (entry size, what happens to the chunks: their order of arrival, by number).
        let cases: [(usize, Option<&[u64]>, bool); 6] = [
            (1 << 20, None, true),
            (100, None, true),
            (3 << 20, Some(&[0, 1, 1, 2]), false),
            (3 << 20, Some(&[0, 2]), false),
            (3 << 20, Some(&[1, 0]), false),
            (3 << 20, Some(&[0, 1, 0]), false),
        ];
        for (size, arrive, whole) in cases {
            let mut s = Sending::new(1, 2, 200, Bytes::new(), kept.clone());
            let mut read = store(200, size);
            let mut chunks = Vec::new();
            while s.wants_chunk() || !s.finished() {
                while s.wants_chunk() {
                    chunks.push(s.next_chunk(&mut read).unwrap());
                }
                // The follower acknowledges as it stages (in order, all came).
                let last = chunks.last().unwrap().seq;
                assert!(s.ack(last));
            }
            let bytes: usize = chunks
                .iter()
                .flat_map(|c| &c.entries)
                .map(|(_, e)| e.len())
                .sum();
            assert_eq!(bytes, kept.len() * size);
            for c in &chunks {
                let b: usize = c.entries.iter().map(|(_, e)| e.len()).sum();
                assert!(
                    b < CHUNK + size,
                    "a chunk of {b} bytes for entries of {size}"
                );
            }
            let order: Vec<u64> = match arrive {
                Some(o) => o.to_vec(),
                None => (0..chunks.len() as u64).collect(),
            };
            let mut staging = None;
            let mut staged = Vec::new();
            for n in order {
                if let Some(st) = Staging::take(&mut staging, chunks[n as usize].clone()) {
                    staged.extend(st.entries.iter().map(|(i, _)| *i));
                }
            }
            let holds = staging.as_ref().is_some_and(|s| s.holds(200, &kept));
            assert_eq!(holds, whole, "{size} {arrive:?}");
            if whole {
                assert_eq!(staged, kept);
            }
        }
    }

    #[test]
    fn a_new_sending_gives_up_the_last_one_and_a_missing_entry_fails_the_chunk() {
        let mut staging = None;
        let first = Chunk {
            index: 10,
            seq: 0,
            entries: vec![(1, vec![1]), (4, vec![4])],
        };
        assert!(Staging::take(&mut staging, first.clone()).is_some());
        let again = Chunk {
            index: 12,
            ..first.clone()
        };
        let st = Staging::take(&mut staging, again).unwrap();
        assert_eq!(st.given_up, vec![1, 4]);
        assert!(staging.as_ref().unwrap().holds(12, &[1, 4]));
        // Entries out of order are no chunk of ours: the staging goes no further.
        let bad = Chunk {
            index: 12,
            seq: 1,
            entries: vec![(3, vec![])],
        };
        assert_eq!(Staging::take(&mut staging, bad), None);
        let next = Chunk {
            index: 12,
            seq: 1,
            entries: vec![(5, vec![])],
        };
        assert_eq!(Staging::take(&mut staging, next), None);
        assert!(staging.as_ref().unwrap().holds(12, &[1, 4]));
        // An entry the leader no longer has.
        let mut s = Sending::new(1, 2, 9, Bytes::new(), vec![1, 2, 50]);
        assert!(s.next_chunk(store(10, 8)).unwrap_err().contains("50"));
        assert!(!s.ack(REFUSED));
    }
}
