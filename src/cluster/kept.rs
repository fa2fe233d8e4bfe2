//! What a state machine keeps of its log past a snapshot, and the envelope that carries it
//! in a snapshot sent to a follower.
//!
//! A quorum queue's state holds each message's log position, not its body: the body stays
//! in the entry that enqueued it. A snapshot's compaction keeps the entries the state still
//! reads (under their own keys, before the log proper's floor: `store::Compact`), and the
//! first snapshot after their messages are all settled deletes them. So a body is stored
//! once per node, and a snapshot saved here is the state alone (small, cheap to make).
//! One sent to a follower carries the kept entries too, written in place with it there.
//!
//! A snapshot saved here lists the kept entries' indexes (with no bytes), so the group
//! knows after a restart which stored entries the next compaction may forget.
//!
//! Invariants: `live` names every entry at or before the snapshot that the state reads;
//! an entry leaves it only once nothing in the state refers to it, and never comes back.

/// Kept entries as stored: (index, the entry's bytes).
pub type Entries = Vec<(u64, Vec<u8>)>;

/// A snapshot's kept entries (a state machine that keeps none: `Keep::nothing`).
#[derive(Debug, Default)]
pub struct Keep {
    /// The entries the state still reads, sorted.
    pub live: Vec<u64>,
    /// The kept entries as stored, for a follower (None: this snapshot is only saved
    /// here, a follower that needs one gets a new one made with them).
    pub entries: Option<Entries>,
    /// The size of the snapshot as sent (the state and the kept entries).
    pub size: usize,
}

impl Keep {
    /// A snapshot that is the whole state, sendable as it is.
    pub fn nothing(size: usize) -> Keep {
        Keep {
            entries: Some(Vec::new()),
            size,
            ..Keep::default()
        }
    }
}

/// A snapshot's data: the kept entries (count, then each index, length and bytes), then
/// the state machine's data.
pub fn wrap(app: &[u8], entries: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let kept: usize = entries.iter().map(|(_, e)| 12 + e.len()).sum();
    let mut out = Vec::with_capacity(4 + kept + app.len());
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (index, e) in entries {
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(&(e.len() as u32).to_be_bytes());
        out.extend_from_slice(e);
    }
    out.extend_from_slice(app);
    out
}

/// The indexes alone, as a saved snapshot lists them.
pub fn listed(live: &[u64]) -> Entries {
    live.iter().map(|i| (*i, Vec::new())).collect()
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

/// The kept entries and the state machine's data of a snapshot's data.
pub fn unwrap(data: &[u8]) -> Result<(Entries, &[u8]), String> {
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
    let mut entries = Vec::with_capacity((count as usize).min(data.len() / 12));
    for _ in 0..count {
        let index = u64::from_be_bytes(take(&mut data, 8)?.try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(take(&mut data, 4)?.try_into().expect("4 bytes"));
        entries.push((index, take(&mut data, len as usize)?.to_vec()));
    }
    Ok((entries, data))
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
        for entries in [
            vec![],
            vec![(3, vec![1, 2]), (9, vec![]), (10, vec![7; 300])],
        ] {
            for app in [&b""[..], b"state"] {
                let data = wrap(app, &entries);
                assert_eq!(unwrap(&data).unwrap(), (entries.clone(), app));
                for cut in 0..data.len().min(40) {
                    if cut < data.len() - app.len() {
                        assert!(unwrap(&data[..cut]).is_err(), "cut at {cut}");
                    }
                }
            }
        }
    }
}
