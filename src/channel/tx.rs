//! The tx class as the channel keeps it: tx.select, the publishes and settlements staged
//! until tx.commit, and tx.rollback putting staged settlements back.

use super::{Channel, Settle, Unacked};
use crate::broker::message::Message;
use crate::broker::queue::QueueHandle;
use crate::error::Error;

/// A publish staged in a transaction: routed, not yet visible.
#[derive(Debug)]
pub struct TxPublish {
    pub msg: Message,
    pub targets: Vec<QueueHandle>,
    pub mandatory: bool,
}

/// A settlement staged in a transaction, with the tags it settled (to put back on rollback).
#[derive(Debug)]
pub struct TxSettle {
    pub how: Settle,
    pub deliveries: Vec<(u64, Unacked)>,
}

/// A transaction's staged work, applied at tx.commit in one store write.
#[derive(Debug, Default)]
pub struct Tx {
    pub publishes: Vec<TxPublish>,
    pub settles: Vec<TxSettle>,
}

fn not_transactional() -> Error {
    Error::precondition("channel is not transactional")
}

impl Channel {
    /// tx.select; 406 on a channel in confirm mode.
    pub fn tx_select(&mut self) -> Result<(), Error> {
        if self.confirm_next.is_some() {
            return Err(Error::precondition("cannot switch from confirm to tx mode"));
        }
        self.tx.get_or_insert_default();
        Ok(())
    }

    pub fn transactional(&self) -> bool {
        self.tx.is_some()
    }

    /// Stage a routed publish (on a transactional channel; otherwise it is dropped).
    pub fn stage(&mut self, p: TxPublish) {
        if let Some(tx) = self.tx.as_mut() {
            tx.publishes.push(p);
        }
    }

    /// tx.commit: the staged work, to apply now (the channel stays transactional).
    pub fn commit(&mut self) -> Result<Tx, Error> {
        self.tx
            .as_mut()
            .map(std::mem::take)
            .ok_or_else(not_transactional)
    }

    /// tx.rollback: staged publishes vanish; staged settlements are undone (unacked again).
    pub fn rollback(&mut self) -> Result<(), Error> {
        let staged = self.commit()?;
        for s in staged.settles {
            self.unsettle(s.deliveries);
        }
        Ok(())
    }
}
