//! Transactions: tx.select, and tx.commit applying a transaction's staged publishes and acks
//! in one synced store write (atomic across the node's queues) before they become visible;
//! commit-ok waits until every queue took its publishes (a queue on another node writes
//! its part there, separately; a quorum queue commits its part as one log entry). A part
//! refused or lost fails the commit with RabbitMQ's 406 "partial tx completion".

use std::sync::Arc;

use super::Conn;
use crate::broker::durable::Batch;
use crate::broker::message::Message;
use crate::broker::queue::receipt::{ConfirmTag, Receipt, ReceiptTag};
use crate::broker::queue::{ConnEvent, QueueCmd, QueueHandle};
use crate::channel::{Action, Input, Settle, Tx};
use crate::error::{Error, code};
use crate::protocol::tx;

impl Conn {
    pub(super) async fn on_tx(&mut self, ch: u16, m: tx::AMQPMethod) -> Result<(), Error> {
        let input = match m {
            tx::AMQPMethod::Select(_) => Input::TxSelect,
            tx::AMQPMethod::Commit(_) => Input::TxCommit,
            tx::AMQPMethod::Rollback(_) => Input::TxRollback,
            _ => {
                return Err(Error::connection(
                    code::COMMAND_INVALID,
                    "unexpected tx method",
                ));
            }
        };
        self.drive(ch, input).await
    }

    /// Apply a transaction atomically: its persistent publishes and its acks of stored
    /// messages, across all queues, go to the store in one synced write; only then do the
    /// queues see them (so after a crash all of it or none of it is there).
    pub(super) async fn commit(&mut self, ch: u16, staged: Tx) -> Result<(), Error> {
        let mut rows = Batch::default();
        let mut batches: Vec<(QueueHandle, Vec<Arc<Message>>)> = Vec::new();
        let mut returns = Vec::new();
        for p in staged.publishes {
            let mut msg = p.msg;
            rows.publish(&self.broker.store, &mut msg, &p.targets);
            let msg = Arc::new(msg);
            if p.targets.is_empty() && p.mandatory {
                returns.push(msg.clone());
            }
            for q in p.targets {
                match batches.iter_mut().find(|(h, _)| h.id == q.id) {
                    Some((_, b)) => b.push(msg.clone()),
                    None => batches.push((q, vec![msg.clone()])),
                }
            }
        }
        for s in &staged.settles {
            if matches!(s.how, Settle::Requeue) {
                continue;
            }
            for (_, u) in &s.deliveries {
                rows.settle(&u.queue, u.stored);
            }
        }
        self.write_commit(rows).await?;
        for msg in returns {
            self.write_return(ch, &msg);
        }
        let refused = hand_over(ch, batches).await;
        // The acks were written with the publishes: they take effect whatever a queue
        // answered, as in RabbitMQ, where they reach the queues before the commit's outcome.
        let mut acts = Vec::new();
        if let Some(c) = self.channels.get_mut(&ch) {
            for s in staged.settles {
                let settled = s.deliveries.into_iter().map(|(_, u)| u).collect();
                c.apply_settle(settled, s.how, &mut acts);
            }
        }
        for a in acts {
            match a {
                Action::Tell(q, cmd) => {
                    q.send(cmd).await;
                }
                Action::Wake(q) => q.wake(),
                other => tracing::error!("unexpected action after a commit: {other:?}"),
            }
        }
        if refused {
            // A queue refused part of the commit (reject-publish overflow) or could not
            // take it (a quorum queue without a majority, a peer lost): RabbitMQ's answer
            // to a nack during a commit, so the client never sees commit-ok for it.
            return Err(Error::precondition("partial tx completion"));
        }
        Ok(())
    }

    /// The commit's rows, in one synced store write.
    async fn write_commit(&self, mut rows: Batch) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let (done, written) = tokio::sync::oneshot::channel();
        rows.submit(
            &self.broker.store,
            Box::new(move |r: Result<(), _>| {
                let _ = done.send(r.is_ok());
            }),
        );
        if written.await != Ok(true) {
            return Err(Error::connection(
                code::INTERNAL_ERROR,
                "store write failed",
            ));
        }
        Ok(())
    }
}

/// Hand each queue its part of a commit and wait for every answer: a queue on another node
/// writes (and syncs) its part there, so its answer is what makes that part durable. True if
/// some part was refused or lost.
async fn hand_over(ch: u16, batches: Vec<(QueueHandle, Vec<Arc<Message>>)>) -> bool {
    let (events, mut taken) = tokio::sync::mpsc::unbounded_channel();
    let mut answers = 0;
    for (q, msgs) in batches {
        let tags = (0..msgs.len() as u32)
            .map(|at| ReceiptTag {
                at,
                tag: ConfirmTag {
                    channel: ch,
                    tag: u64::from(at),
                },
            })
            .collect();
        let receipt = Receipt::new(events.clone(), 0, tags);
        q.send(QueueCmd::Publish(msgs, Some(receipt))).await;
        answers += 1;
    }
    drop(events);
    let mut refused = false;
    for _ in 0..answers {
        match taken.recv().await {
            Some(ConnEvent::Taken { nacks, .. }) => refused |= !nacks.is_empty(),
            _ => return true,
        }
    }
    refused
}
