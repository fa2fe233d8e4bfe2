//! Publisher confirms: each flush of publishes is one `Awaiting` entry that completes when
//! the store has synced its persistent messages and every queue it went to has answered
//! (`Receipt`). Entries are released in order, so `multiple` acks never cover a publish that
//! is still open; a publish some queue refused is nacked on its own.

use super::Conn;
use crate::broker::queue::receipt::ConfirmTag;
use crate::channel::State;
use crate::protocol::encode;

/// The confirm-mode publishes of one flush on one channel: `count` tags up to `last`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConfirmRun {
    pub channel: u16,
    pub last: u64,
    pub count: u32,
}

pub(super) type Confirms = Vec<ConfirmRun>;

pub(super) struct Awaiting {
    pub token: u64,
    /// Waiting for the store's sync of this flush.
    pub syncing: bool,
    /// Queue answers still to come.
    pub receipts: usize,
    /// The store failed: everything in the flush is nacked.
    pub failed: bool,
    pub confirms: Confirms,
    /// Publishes some queue refused.
    pub nacks: Vec<ConfirmTag>,
}

impl Awaiting {
    fn done(&self) -> bool {
        !self.syncing && self.receipts == 0
    }
}

impl Conn {
    /// A store sync finished (nack its flush if it failed).
    pub(super) fn on_synced(&mut self, token: u64, ok: bool) {
        if let Some(a) = self.awaiting.iter_mut().find(|a| a.token == token) {
            a.syncing = false;
            a.failed |= !ok;
            self.release_confirms();
        }
    }

    /// A queue answered for its part of a flush.
    pub(super) fn on_taken(&mut self, token: u64, nacks: Vec<ConfirmTag>) {
        if let Some(a) = self.awaiting.iter_mut().find(|a| a.token == token) {
            a.receipts -= 1;
            a.nacks.extend(nacks);
            self.release_confirms();
        }
    }

    /// Send the confirms of every complete flush at the front, in order.
    pub(super) fn release_confirms(&mut self) {
        while self.awaiting.front().is_some_and(Awaiting::done) {
            let Some(mut a) = self.awaiting.pop_front() else {
                break;
            };
            a.nacks.sort_unstable();
            a.nacks.dedup();
            for &ConfirmRun {
                channel: ch,
                last,
                count,
            } in &a.confirms
            {
                if !self
                    .channels
                    .get(&ch)
                    .is_some_and(|c| c.state == State::Open)
                {
                    continue;
                }
                if a.failed {
                    encode::confirm(&mut self.out, ch, last, count > 1, true);
                    continue;
                }
                let first = last + 1 - u64::from(count);
                let refused = a.nacks.iter().filter(|n| n.channel == ch).map(|n| n.tag);
                write_range(&mut self.out, ch, first, last, refused);
            }
        }
    }
}

/// Confirm tags `first..=last` of a channel, all earlier ones being confirmed already: one
/// `multiple` ack per run of taken publishes, one nack per refused one.
fn write_range(
    out: &mut bytes::BytesMut,
    ch: u16,
    first: u64,
    last: u64,
    refused: impl Iterator<Item = u64>,
) {
    let mut from = first;
    for tag in refused {
        if tag < from || tag > last {
            continue;
        }
        if tag > from {
            encode::confirm(out, ch, tag - 1, tag - 1 > from, false);
        }
        encode::confirm(out, ch, tag, false, true);
        from = tag + 1;
    }
    if from <= last {
        encode::confirm(out, ch, last, last > from, false);
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::write_range;
    use crate::protocol::codec::{Frame, Method, decode_server_frame};
    use crate::protocol::{AMQPClass, basic};

    /// (ack?, tag, multiple) of each frame written.
    fn frames(out: &mut BytesMut) -> Vec<(bool, u64, bool)> {
        let mut got = Vec::new();
        while let Some(f) = decode_server_frame(out, 1 << 16).unwrap() {
            match f {
                Frame::Method(1, Method::Other(AMQPClass::Basic(basic::AMQPMethod::Ack(a)))) => {
                    got.push((true, a.delivery_tag, a.multiple))
                }
                Frame::Method(1, Method::Other(AMQPClass::Basic(basic::AMQPMethod::Nack(n)))) => {
                    got.push((false, n.delivery_tag, n.multiple))
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        got
    }

    #[test]
    fn runs_of_taken_publishes_share_one_ack_and_refused_ones_are_nacked_alone() {
        let mut out = BytesMut::new();
        write_range(&mut out, 1, 1, 5, [3].into_iter());
        assert_eq!(
            frames(&mut out),
            [(true, 2, true), (false, 3, false), (true, 5, true)]
        );
        write_range(&mut out, 1, 6, 9, [6, 7, 9].into_iter());
        assert_eq!(
            frames(&mut out),
            [
                (false, 6, false),
                (false, 7, false),
                (true, 8, false),
                (false, 9, false)
            ]
        );
        write_range(&mut out, 1, 10, 10, [].into_iter());
        assert_eq!(frames(&mut out), [(true, 10, false)]);
    }
}
