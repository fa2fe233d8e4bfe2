//! Publisher confirms, the connection's part: each flush of publishes is one `Flush` that
//! settles when the store has synced its persistent messages and every queue it went to has
//! answered (`Receipt`). Each channel that published in confirm mode in it is then told the
//! outcome, with the publishes some queue refused; the channel writes its confirms in its
//! own publish order (see channel/confirm.rs).

use super::Conn;
use crate::broker::queue::receipt::ConfirmTag;
use crate::channel::Input;

pub(super) struct Flush {
    pub token: u64,
    /// Waiting for the store's sync of this flush.
    pub syncing: bool,
    /// Queue answers still to come.
    pub receipts: usize,
    /// The store failed: everything in the flush is nacked.
    pub failed: bool,
    /// The channels with confirm-mode publishes in it.
    pub channels: Vec<u16>,
    /// Publishes some queue refused.
    pub nacks: Vec<ConfirmTag>,
}

impl Conn {
    /// A store sync finished (nack its flush if it failed).
    pub(super) fn on_synced(&mut self, token: u64, ok: bool) {
        if let Some(f) = self.awaiting.iter_mut().find(|f| f.token == token) {
            f.syncing = false;
            f.failed |= !ok;
            self.settle_flushes();
        }
    }

    /// A queue answered for its part of a flush.
    pub(super) fn on_taken(&mut self, token: u64, nacks: Vec<ConfirmTag>) {
        if let Some(f) = self.awaiting.iter_mut().find(|f| f.token == token) {
            f.receipts -= 1;
            f.nacks.extend(nacks);
            self.settle_flushes();
        }
    }

    /// Tell the channels of every settled flush its outcome.
    pub(super) fn settle_flushes(&mut self) {
        while let Some(at) = self
            .awaiting
            .iter()
            .position(|f| !f.syncing && f.receipts == 0)
        {
            let f = self.awaiting.swap_remove(at);
            for ch in f.channels {
                let refused = f
                    .nacks
                    .iter()
                    .filter(|n| n.channel == ch)
                    .map(|n| n.tag)
                    .collect();
                let input = Input::Confirmed {
                    token: f.token,
                    failed: f.failed,
                    refused,
                };
                // Confirms are frames only: nothing here waits.
                let _ = self.drive_now(ch, input);
            }
        }
    }
}
