//! What a state machine keeps of its log past a snapshot, and the envelope that carries it
//! in a snapshot sent to a follower.
//!
//! A quorum queue's state holds each message's log position, not its body: the body stays
//! in the entry that enqueued it. A snapshot's compaction keeps the entries the state still
//! reads (under their own keys, before the log proper's floor: `store::Compact`), and the
//! first snapshot after their messages are all settled deletes them. So a body is stored
//! once per node, and a snapshot saved here is the state alone (small, cheap to make).
//! One sent to a follower lists the kept entries too; they go ahead of it (`transfer`).
//!
//! A snapshot lists the kept entries' indexes (with no bytes), so the group knows after a
//! restart which stored entries the next compaction may forget, and a follower which
//! entries must be staged before it takes the snapshot.
//!
//! Invariants: `live` names every entry at or before the snapshot that the state reads;
//! an entry leaves it only once nothing in the state refers to it, and never comes back.

/// A snapshot's kept entries (a state machine that keeps none: `Keep::nothing`).
#[derive(Debug, Default)]
pub struct Keep {
    /// The entries the state still reads, sorted.
    pub live: Vec<u64>,
    /// Made for a follower: kept to be sent (else only saved here, and a follower that
    /// needs one gets a new one).
    pub send: bool,
    /// The size of the snapshot as sent (the state and the kept entries).
    pub size: usize,
}

impl Keep {
    /// A snapshot that is the whole state, sendable as it is.
    pub fn nothing(size: usize) -> Keep {
        Keep {
            send: true,
            size,
            ..Keep::default()
        }
    }
}

/// A snapshot's data: the kept entries' indexes (count, then each index and a zero
/// length: the format once carried their bytes), then the state machine's data.
pub fn wrap(app: &[u8], live: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 12 * live.len() + app.len());
    out.extend_from_slice(&(live.len() as u32).to_be_bytes());
    for index in live {
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
    }
    out.extend_from_slice(app);
    out
}

/// Sorted `before` less sorted `now`.
pub fn forgotten(before: &[u64], now: &[u64]) -> Vec<u64> {
    let mut now = now.iter().peekable();
    let mut out = Vec::new();
    for b in before {
        while now.next_if(|n| *n < b).is_some() {}
        if now.peek() != Some(&b) {
            out.push(*b);
        }
    }
    out
}

/// The kept entries' indexes and the state machine's data of a snapshot's data.
pub fn unwrap(data: &[u8]) -> Result<(Vec<u64>, &[u8]), String> {
    fn take<'a>(data: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if data.len() < n {
            return Err("truncated snapshot envelope".into());
        }
        let (head, rest) = data.split_at(n);
        *data = rest;
        Ok(head)
    }
    let mut data = data;
    let count = u32::from_be_bytes(take(&mut data, 4)?.try_into().expect("4 bytes"));
    let mut live = Vec::with_capacity((count as usize).min(data.len() / 12));
    for _ in 0..count {
        let index = u64::from_be_bytes(take(&mut data, 8)?.try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(take(&mut data, 4)?.try_into().expect("4 bytes"));
        take(&mut data, len as usize)?;
        live.push(index);
    }
    Ok((live, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgotten_is_the_sorted_difference() {
        let cases: [(&[u64], &[u64], &[u64]); 5] = [
            (&[], &[1, 2], &[]),
            (&[1, 2, 3], &[], &[1, 2, 3]),
            (&[1, 3, 5, 7], &[3, 4, 7, 9], &[1, 5]),
            (&[2, 4], &[1, 2, 3, 4, 5], &[]),
            (&[10], &[1, 11], &[10]),
        ];
        for (before, now, want) in cases {
            assert_eq!(forgotten(before, now), want, "{before:?} - {now:?}");
        }
    }

    #[test]
    fn envelopes_round_trip_and_truncated_ones_are_refused() {
        for live in [vec![], vec![3, 9, 10]] {
            for app in [&b""[..], b"state"] {
                let data = wrap(app, &live);
                assert_eq!(unwrap(&data).unwrap(), (live.clone(), app));
                for cut in 0..data.len().min(40) {
                    if cut < data.len() - app.len() {
                        assert!(unwrap(&data[..cut]).is_err(), "cut at {cut}");
                    }
                }
            }
        }
    }
}
