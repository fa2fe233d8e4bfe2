//! A replica's commands from connections (and from non-members through the stubs that use
//! it): each becomes a proposal, answered once its entry is applied here (`apply`), except
//! the counts of queue.declare, which wait for a read index instead.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{DEFAULT_PREFETCH, QOp, READ_RETRY, Read, Replica, Waiter};
use crate::broker::queue::{ConsumerSpec, QueueCmd, Stat};
use crate::broker::remote::wire::WireMsg;
use crate::cluster::Cluster;
use crate::error::{Error, code};

impl Replica {
    pub(super) async fn command(&mut self, cmd: QueueCmd, reads: &mpsc::UnboundedSender<Read>) {
        match cmd {
            QueueCmd::Publish(msgs, receipt) => {
                let msgs = msgs.iter().map(|m| WireMsg::of(m)).collect();
                self.enqueued += 1;
                let op = QOp::Enqueue {
                    run: self.run,
                    seq: self.enqueued,
                    msgs,
                };
                self.propose_op(op, Waiter::Publish(receipt)).await;
            }
            QueueCmd::Commit {
                msgs,
                settles,
                receipt,
            } => {
                let msgs = msgs.iter().map(|m| WireMsg::of(m)).collect();
                self.enqueued += 1;
                let op = QOp::Commit {
                    run: self.run,
                    seq: self.enqueued,
                    msgs,
                    settles,
                };
                self.propose_op(op, Waiter::Publish(Some(receipt))).await;
            }
            QueueCmd::Consume(spec, reply) => self.consume(spec, reply).await,
            QueueCmd::Cancel { consumer, reply } => {
                self.propose_op(QOp::Cancel(consumer), Waiter::Cancel(reply))
                    .await;
            }
            QueueCmd::Get {
                channel,
                no_ack,
                reply,
            } => {
                self.propose_op(QOp::Get { channel, no_ack }, Waiter::Get(reply))
                    .await;
            }
            QueueCmd::Ack(seqs) => self.propose_op(QOp::Ack(seqs), Waiter::Nothing).await,
            QueueCmd::Requeue(seqs) => self.propose_op(QOp::Requeue(seqs), Waiter::Nothing).await,
            QueueCmd::Discard(seqs) => self.propose_op(QOp::Discard(seqs), Waiter::Nothing).await,
            QueueCmd::Return {
                consumer,
                entries,
                no_ack,
            } => {
                // No-ack deliveries were settled as they were sent (at most once).
                if !no_ack {
                    let seqs = entries.iter().map(|e| e.seq).collect();
                    self.propose_op(QOp::Return { consumer, seqs }, Waiter::Nothing)
                        .await;
                }
            }
            QueueCmd::ChannelClosed(ch) => {
                self.consumers.retain(|id, _| id.channel != ch);
                self.propose_op(QOp::ChannelDown(ch), Waiter::Nothing).await;
            }
            QueueCmd::NodeDown(node) => self.propose_op(QOp::NodeDown(node), Waiter::Nothing).await,
            QueueCmd::Stat(reply) => self.stat(reply, reads),
            QueueCmd::Purge(reply) => self.propose_op(QOp::Purge, Waiter::Purge(reply)).await,
            QueueCmd::Delete {
                if_unused,
                if_empty,
                reply,
            } => self.delete(if_unused, if_empty, reply).await,
            QueueCmd::Move(ch) => self.propose_op(QOp::Move(ch), Waiter::Nothing).await,
            // Members change in the Raft group; the metadata only follows (a leave is
            // taken by the run loop).
            QueueCmd::Stop | QueueCmd::Members(_) | QueueCmd::Leave(_) => {}
        }
    }

    /// basic.consume: a consumer of this node's, checked out through the log (a global
    /// qos is refused, as by RabbitMQ's quorum queues).
    async fn consume(&mut self, spec: ConsumerSpec, reply: oneshot::Sender<Result<(), Error>>) {
        if spec.channel_limit.limit() > 0 {
            let _ = reply.send(Err(Error::connection(
                code::NOT_IMPLEMENTED,
                format!(
                    "queue '{}' in vhost '{}' does not support global qos",
                    self.shared.name,
                    self.state.config().vhost
                ),
            )));
            return;
        }
        let prefetch = match spec.prefetch {
            _ if spec.no_ack => {
                let (first, credited) = super::credit::first(&spec);
                self.credited.insert(spec.id.clone(), credited);
                first
            }
            0 => DEFAULT_PREFETCH,
            p => p,
        };
        self.consumers.insert(spec.id.clone(), spec.clone());
        let op = QOp::Checkout {
            consumer: spec.id.clone(),
            no_ack: spec.no_ack,
            prefetch,
        };
        self.propose_op(op, Waiter::Consume(spec.id, reply)).await;
    }

    /// queue.declare's counts: as of every change committed before the declare (so also
    /// this connection's own earlier commands), once this replica has applied up to the
    /// group's read index.
    fn stat(&self, reply: oneshot::Sender<Stat>, reads: &mpsc::UnboundedSender<Read>) {
        let after = self.next_req;
        let (cluster, group, reads) = (self.cluster.clone(), self.group, reads.clone());
        let timeout = cluster.config.command_timeout;
        tokio::spawn(async move {
            if let Some(index) = read_index(&cluster, group, timeout).await {
                let _ = reads.send((index, after, reply));
            }
        });
    }

    /// queue.delete: if-unused and if-empty are refused, as by RabbitMQ's quorum queues.
    async fn delete(
        &mut self,
        if_unused: bool,
        if_empty: bool,
        reply: oneshot::Sender<Result<u32, Error>>,
    ) {
        if if_unused || if_empty {
            let flag = if if_unused { "if-unused" } else { "if-empty" };
            let _ = reply.send(Err(Error::connection(
                code::NOT_IMPLEMENTED,
                format!(
                    "cannot delete queue '{}' in vhost '{}'. queue.delete operations \
                     with {flag} flag set are not supported by quorum queues",
                    self.shared.name,
                    self.state.config().vhost
                ),
            )));
            return;
        }
        self.propose_op(QOp::Delete, Waiter::Delete(reply)).await;
    }
}

/// The group's read index, asked again until `timeout`: a read is dropped without an
/// answer while the group has no leader, or one that has not committed in its term yet.
async fn read_index(cluster: &Cluster, group: u64, timeout: Duration) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        tokio::select! {
            r = cluster.read_group(group) => return r.ok(),
            _ = tokio::time::sleep(READ_RETRY) => {}
        }
    }
    None
}
