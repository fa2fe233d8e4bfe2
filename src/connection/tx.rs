//! Transactions: tx.commit applies a transaction's staged publishes and acks in one synced
//! store write (atomic across the node's classic queues) before they become visible, then
//! hands each queue its part (publishes and acks) in one command; commit-ok waits until
//! every queue applied its part (a queue on another node writes its part there; a quorum
//! queue commits its part as one log entry). A part refused or lost fails the commit with
//! RabbitMQ's 406 "partial tx completion".

use std::sync::Arc;

use super::Conn;
use crate::broker::durable::Batch;
use crate::broker::message::Message;
use crate::broker::queue::receipt::{ConfirmTag, Receipt, ReceiptTag};
use crate::broker::queue::{ConnEvent, QueueCmd, QueueHandle, Settles};
use crate::channel::{Action, Input, Settle, Tx, Unacked, by_queue};
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
        let mut parts: Vec<Part> = Vec::new();
        let mut returns = Vec::new();
        for p in staged.publishes {
            let mut msg = p.msg;
            rows.publish(&self.broker.store, Arc::make_mut(&mut msg), &p.targets);
            if p.targets.is_empty() && p.mandatory {
                returns.push(msg.clone());
            }
            for q in p.targets {
                part(&mut parts, q).msgs.push(msg.clone());
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
        // The acks were written with the publishes: they go with them, each queue's part
        // in one command, and take effect whatever a queue answers for the publishes, as
        // in RabbitMQ. Their global-prefetch credit comes back to the channel.
        let mut wakes = Vec::new();
        if let Some(c) = self.channels.get_mut(&ch) {
            for s in staged.settles {
                let settled: Vec<Unacked> = s.deliveries.into_iter().map(|(_, u)| u).collect();
                c.release_credit(&settled, &mut wakes);
                for g in by_queue(settled) {
                    part(&mut parts, g.queue).settles.push((s.how, g.seqs));
                }
            }
        }
        let refused = hand_over(ch, parts).await;
        for a in wakes {
            if let Action::Wake(q) = a {
                q.wake();
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

/// A transaction's part for one queue.
struct Part {
    queue: QueueHandle,
    msgs: Vec<Arc<Message>>,
    settles: Settles,
}

fn part(parts: &mut Vec<Part>, queue: QueueHandle) -> &mut Part {
    let at = match parts.iter().position(|p| p.queue.id == queue.id) {
        Some(at) => at,
        None => {
            parts.push(Part {
                queue,
                msgs: Vec::new(),
                settles: Vec::new(),
            });
            parts.len() - 1
        }
    };
    &mut parts[at]
}

/// Hand each queue its part of a commit and wait for every answer: a queue on another node
/// writes (and syncs) its part there, and a quorum queue commits it as one log entry, so
/// its answer is what makes that part durable. True if some publish was refused, or a
/// quorum queue's part was lost (its log entry never committed: a part of acks alone
/// fails the commit too; a classic queue's acks are in the store write already).
async fn hand_over(ch: u16, parts: Vec<Part>) -> bool {
    let (events, mut taken) = tokio::sync::mpsc::unbounded_channel();
    let mut quorum = Vec::with_capacity(parts.len());
    for p in parts {
        let tags = (0..p.msgs.len() as u32)
            .map(|at| ReceiptTag {
                at,
                tag: ConfirmTag {
                    channel: ch,
                    tag: u64::from(at),
                },
            })
            .collect();
        // The receipt's token says which part answers.
        let receipt = Receipt::new(events.clone(), quorum.len() as u64, tags);
        quorum.push(p.queue.quorum);
        let cmd = QueueCmd::Commit {
            msgs: p.msgs,
            settles: p.settles,
            receipt,
        };
        p.queue.send(cmd).await;
    }
    drop(events);
    let mut refused = false;
    for _ in 0..quorum.len() {
        match taken.recv().await {
            Some(ConnEvent::Taken { token, nacks, lost }) => {
                refused |= !nacks.is_empty() || (lost && quorum[token as usize]);
            }
            _ => return true,
        }
    }
    refused
}
