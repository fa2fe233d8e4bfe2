//! A replica whose node left the queue's members (`QueueCmd::Leave`: its Raft group went
//! on without it, and its log is deleted) goes on as a stub (`remote::take_over`) on the
//! same inbox: the node's channels keep the queue's handle, so its consumers carry on
//! through a member instead of being cancelled, as RabbitMQ's do.
//!
//! What the node's channels held (deliveries, messages got) comes back redelivered: the
//! stub moves each channel to the member (`QOp::Move`), which ends what it had through
//! this node as if it had closed; its consumers are registered there again. What waited
//! for the group here is asked again through the member (a consume, get, cancel, channel
//! close or count); a publish is nacked (it may have landed, so only the publisher can
//! tell whether to send it again), a purge or delete fails.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{QEntry, QOp, Replica, Waiter, fail};
use crate::broker::ids::NodeId;
use crate::broker::queue::QueueCmd;
use crate::broker::remote::{self, Forwarder, TakeOver};

impl Replica {
    pub(super) fn hand_over(
        mut self,
        members: Vec<NodeId>,
        fwd: Arc<Forwarder>,
        inbox: mpsc::Receiver<QueueCmd>,
    ) {
        let timeout = self.cluster.config.command_timeout;
        let mut again = Vec::new();
        for (_, p) in std::mem::take(&mut self.pending) {
            let op = QEntry::decode(&p.data).ok().map(|e| e.op);
            match (p.waiter, op) {
                (Waiter::Consume(id, reply), _) => {
                    if let Some(spec) = self.consumers.remove(&id) {
                        again.push(QueueCmd::Consume(spec, reply));
                    }
                }
                (Waiter::Get(reply), Some(QOp::Get { channel, no_ack })) => {
                    again.push(QueueCmd::Get {
                        channel,
                        no_ack,
                        reply,
                    })
                }
                // The move ends the consumer at the queue (it is not registered again).
                (Waiter::Cancel(reply), Some(QOp::Cancel(id))) => {
                    self.consumers.remove(&id);
                    let _ = reply.send(());
                }
                (Waiter::Nothing, Some(QOp::ChannelDown(ch))) => {
                    again.push(QueueCmd::ChannelClosed(ch))
                }
                (waiter, _) => fail(waiter, timeout),
            }
        }
        again.extend(
            std::mem::take(&mut self.reads)
                .into_iter()
                .map(|(_, _, reply)| QueueCmd::Stat(reply)),
        );
        // Consumers of non-members relayed by this node are left to their stubs, which
        // register them with another member as they learn of the change (cancelled here,
        // one could be cancelled at its node before its stub moved it).
        let own: Vec<_> = std::mem::take(&mut self.consumers)
            .into_values()
            .filter(|c| c.id.channel.conn.node == self.me)
            .collect();
        let t = TakeOver {
            shared: self.shared.clone(),
            vhost: self.state.config().vhost.to_string(),
            members,
            fwd,
            consumers: own,
            channels: self.state.channels_of(self.me),
            again,
        };
        remote::take_over(t, inbox);
    }
}
