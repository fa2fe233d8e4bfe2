//! The confirm class: confirm.select, and the sequence numbers of confirm-mode publishes
//! (from 1 per channel, as clients count them).

use super::Channel;
use crate::error::Error;

impl Channel {
    /// confirm.select; 406 on a transactional channel. Selecting again changes nothing.
    pub fn confirm_select(&mut self) -> Result<(), Error> {
        if self.tx.is_some() {
            return Err(Error::precondition("cannot switch from tx to confirm mode"));
        }
        self.confirm_next.get_or_insert(1);
        Ok(())
    }

    pub fn confirming(&self) -> bool {
        self.confirm_next.is_some()
    }

    /// The sequence number of the next publish, if the channel is in confirm mode.
    pub fn next_publish(&mut self) -> Option<u64> {
        let next = self.confirm_next.as_mut()?;
        let tag = *next;
        *next += 1;
        Some(tag)
    }
}
