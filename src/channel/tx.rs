//! The tx class as the channel keeps it: tx.select, the publishes and settlements staged
//! until tx.commit, and tx.rollback putting staged settlements back.

use super::{Action, Channel, Routed, Settle, Unacked};
use crate::error::Error;
use crate::protocol::{AMQPClass, tx};

/// A publish staged in a transaction: routed, not yet visible.
pub type TxPublish = Routed;

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

fn send(out: &mut Vec<Action>, m: tx::AMQPMethod) {
    out.push(Action::Send(AMQPClass::Tx(m)));
}

impl Channel {
    /// tx.select; 406 on a channel in confirm mode.
    pub(super) fn tx_select(&mut self, out: &mut Vec<Action>) -> Result<(), Error> {
        if self.confirms.is_some() {
            return Err(Error::precondition("cannot switch from confirm to tx mode"));
        }
        self.tx.get_or_insert_default();
        send(out, tx::AMQPMethod::SelectOk(tx::SelectOk {}));
        Ok(())
    }

    /// tx.commit: the staged work, applied now; commit-ok once it is (the channel stays
    /// transactional).
    pub(super) fn commit(&mut self, out: &mut Vec<Action>) -> Result<(), Error> {
        let staged = self
            .tx
            .as_mut()
            .map(|t| std::mem::take(&mut **t))
            .ok_or_else(not_transactional)?;
        out.push(Action::Commit(staged));
        send(out, tx::AMQPMethod::CommitOk(tx::CommitOk {}));
        Ok(())
    }

    /// tx.rollback: staged publishes vanish; staged settlements are undone (unacked again,
    /// under the same tags).
    pub(super) fn rollback(&mut self, out: &mut Vec<Action>) -> Result<(), Error> {
        let staged = self
            .tx
            .as_mut()
            .map(|t| std::mem::take(&mut **t))
            .ok_or_else(not_transactional)?;
        for s in staged.settles {
            self.unacked.extend(s.deliveries);
        }
        send(out, tx::AMQPMethod::RollbackOk(tx::RollbackOk {}));
        Ok(())
    }
}
