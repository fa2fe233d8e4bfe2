//! Raft messages and snapshot chunks bigger than a link frame travel in parts: a snapshot
//! of a long queue's state, or a chunk that carries a message of up to 512 MiB
//! (`transfer`), is past the 64 MiB frame limit. `split` cuts such a message into
//! `Frame::RaftPart`s, and `Parts` puts them back together on the connection that receives
//! them, per group and kind, so that parts of different groups may interleave.
//!
//! Invariants: a message is handed on only whole, its parts in order on one connection; a
//! part that does not follow the last one taken (one was dropped with a full link queue)
//! drops the message, which Raft sends again as it would any lost message.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use super::link::Frame;

/// The size of a part, and of the largest message sent whole.
pub const PART: usize = 8 << 20;
/// The largest message put together (a peer that says more is not believed).
const MAX_WHOLE: u64 = 1 << 40;

/// What a message in parts is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A Raft message (`Frame::Raft`).
    Raft,
    /// A chunk of a snapshot's kept entries (`Frame::Kept`).
    Kept,
}

impl Kind {
    /// The frame that carries a whole message of this kind.
    pub fn whole(self, group: u64, msg: Bytes) -> Frame {
        match self {
            Kind::Raft => Frame::Raft { group, msg },
            Kind::Kept => Frame::Kept { group, msg },
        }
    }
}

/// The frames that carry `msg`, of `kind` for `group`: one unless it is bigger than
/// `PART`.
pub fn split(kind: Kind, group: u64, msg: Bytes) -> Vec<Frame> {
    if msg.len() <= PART {
        return vec![kind.whole(group, msg)];
    }
    let total = msg.len() as u64;
    (0..msg.len())
        .step_by(PART)
        .map(|at| Frame::RaftPart {
            kind,
            group,
            total,
            offset: at as u64,
            data: msg.slice(at..(at + PART).min(msg.len())),
        })
        .collect()
}

/// The messages being put together on one connection, by group and kind.
#[derive(Default)]
pub struct Parts {
    open: HashMap<(u64, Kind), BytesMut>,
}

impl Parts {
    /// Take a part; returns the message once it is whole.
    pub fn take(
        &mut self,
        (kind, group): (Kind, u64),
        total: u64,
        offset: u64,
        data: &[u8],
    ) -> Option<Bytes> {
        let group = (group, kind);
        if offset == 0 {
            self.open.remove(&group);
            if total > MAX_WHOLE {
                return None;
            }
        }
        let buf = match self.open.get_mut(&group) {
            Some(b) => b,
            None if offset == 0 => self.open.entry(group).or_default(),
            None => return None,
        };
        let end = buf.len() as u64 + data.len() as u64;
        if offset != buf.len() as u64 || end > total {
            self.open.remove(&group);
            return None;
        }
        buf.extend_from_slice(data);
        if end < total {
            return None;
        }
        self.open.remove(&group).map(BytesMut::freeze)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_of(frames: Vec<Frame>) -> Vec<((Kind, u64), u64, u64, Bytes)> {
        frames
            .into_iter()
            .map(|f| match f {
                Frame::RaftPart {
                    kind,
                    group,
                    total,
                    offset,
                    data,
                } => ((kind, group), total, offset, data),
                other => panic!("not a part: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_small_message_goes_whole_and_a_big_one_in_parts_put_back_together() {
        let small = Bytes::from(vec![7u8; PART]);
        assert_eq!(
            split(Kind::Raft, 3, small.clone()),
            vec![Frame::Raft {
                group: 3,
                msg: small.clone()
            }]
        );
        assert_eq!(
            split(Kind::Kept, 3, small.clone()),
            vec![Frame::Kept {
                group: 3,
                msg: small
            }]
        );
        let big: Bytes = (0..2 * PART + 5)
            .map(|i| i as u8)
            .collect::<Vec<_>>()
            .into();
        let a = parts_of(split(Kind::Raft, 1, big.clone()));
        let b = parts_of(split(Kind::Raft, 2, big.slice(..PART + 1)));
        let c = parts_of(split(Kind::Kept, 1, big.slice(1..PART + 2)));
        assert_eq!((a.len(), b.len(), c.len()), (3, 2, 2));
        // Two groups' parts, and two kinds of one group's, interleaved on one connection.
        let mut parts = Parts::default();
        let mut whole = Vec::new();
        for (g, t, o, d) in [&a[0], &b[0], &c[0], &a[1], &b[1], &c[1], &a[2]] {
            whole.extend(parts.take(*g, *t, *o, d).map(|m| (g.0, g.1, m)));
        }
        let want = vec![
            (Kind::Raft, 2, big.slice(..PART + 1)),
            (Kind::Kept, 1, big.slice(1..PART + 2)),
            (Kind::Raft, 1, big),
        ];
        assert_eq!(whole, want);
        assert!(parts.open.is_empty());
    }

    #[test]
    fn a_missing_or_repeated_part_drops_the_message() {
        let big: Bytes = vec![1u8; 3 * PART].into();
        let p = parts_of(split(Kind::Raft, 9, big.clone()));
        // Table: the parts that arrive (by position), and whether the message is whole.
        let cases: [(&[usize], bool); 6] = [
            (&[0, 1, 2], true),
            (&[0, 2], false),
            (&[1, 2], false),
            (&[0, 1, 1, 2], false),
            (&[0, 1, 0, 1, 2], true), // sent again from the start
            (&[0, 0, 1, 2], true),
        ];
        for (arrive, whole) in cases {
            let mut parts = Parts::default();
            let got: Vec<Bytes> = (arrive.iter())
                .filter_map(|i| parts.take(p[*i].0, p[*i].1, p[*i].2, &p[*i].3))
                .collect();
            assert_eq!(got == vec![big.clone()], whole, "{arrive:?}");
        }
        // A size past the limit is not believed.
        let mut parts = Parts::default();
        assert_eq!(parts.take((Kind::Raft, 1), MAX_WHOLE + 1, 0, b"x"), None);
        assert!(parts.open.is_empty());
    }
}
