//! Queues. `state.rs` is what a queue decides (`QueueState`, pure); `classic.rs` is the task
//! that runs a classic queue around it (inbox, timers, paging I/O, deliveries, store rows).
//! This module is what everyone else holds of a queue: its handle and the commands it takes.
//!
//! Back-pressure: the inbox is bounded (a publisher faster than its queue waits on it), and a
//! queue whose consumers' connections cannot keep up sets `busy`, so publishers to it pause.

pub mod classic;
pub mod quorum;
pub mod receipt;
pub mod state;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, mpsc, oneshot};

use super::consumer::{ChannelLimit, ConsumerFlow};
use super::ids::{ChannelId, ConnId, ConsumerId, NodeId};
use super::message::Message;
use crate::error::Error;
use crate::protocol::FieldTable;
use crate::store::Store;
use receipt::Receipt;

pub use classic::{QueueSpec, spawn};

/// A message handed to a connection, with its position in the queue.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub msg: Arc<Message>,
    pub redelivered: bool,
    /// Its deadline (wall-clock ms), kept in case it comes back unchanged.
    pub expires_ms: Option<u64>,
}

/// Events queues send to a connection task. The inbox is unbounded as a channel, but what
/// flows through it is bounded by consumer credit and prefetch.
#[derive(Debug)]
pub enum ConnEvent {
    Deliver {
        consumer: ConsumerId,
        no_ack: bool,
        queue: QueueHandle,
        entries: Vec<Entry>,
    },
    /// The queue went away under the consumer (server-sent basic.cancel).
    Cancelled(ConsumerId),
    /// A queue gave back pool credit other queues of this channel were waiting for.
    Wake { channel: u16 },
    /// The store wrote (ok) or failed to write the publishes of sync request `token`.
    Synced { token: u64, ok: bool },
    /// A queue took the confirm-mode publishes of flush `token`, except `nacks`; `lost`:
    /// the batch was never applied (dropped unanswered), so `nacks` is all of it.
    Taken {
        token: u64,
        nacks: Vec<receipt::ConfirmTag>,
        lost: bool,
    },
}

pub type ConnSender = mpsc::UnboundedSender<ConnEvent>;

/// A consumer as its queue sees it: what it asked for, and how to reach its connection.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub id: ConsumerId,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Per-consumer prefetch (basic.qos global=false); 0 = unlimited.
    pub prefetch: u32,
    pub arguments: FieldTable,
    pub events: ConnSender,
    pub flow: Arc<ConsumerFlow>,
    /// The channel's pool (basic.qos global=true).
    pub channel_limit: Arc<ChannelLimit>,
}

/// What a `basic.get` returns: the message and how many are left ready.
pub type GetReply = Option<(Entry, u32)>;

/// A queue's answer to queue.declare: ready messages and consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub messages: u32,
    pub consumers: u32,
}

/// How settled deliveries end: acked, back in their place (redelivered), or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Settle {
    Ack,
    Requeue,
    Discard,
}

/// A transaction's settlements for one queue: how, and which deliveries (by queue seq).
pub type Settles = Vec<(Settle, Vec<u64>)>;

impl Settle {
    /// The command that settles `seqs` this way.
    pub fn command(self, seqs: Vec<u64>) -> QueueCmd {
        match self {
            Settle::Ack => QueueCmd::Ack(seqs),
            Settle::Requeue => QueueCmd::Requeue(seqs),
            Settle::Discard => QueueCmd::Discard(seqs),
        }
    }
}

#[derive(Debug)]
pub enum QueueCmd {
    /// Messages to enqueue; the receipt (for confirm-mode publishes) says which were taken.
    Publish(Vec<Arc<Message>>, Option<Receipt>),
    /// A transaction's part for this queue: its publishes and its settlements, applied
    /// together (a quorum queue makes them one log entry); the receipt says which
    /// publishes were taken.
    Commit {
        msgs: Vec<Arc<Message>>,
        settles: Settles,
        receipt: Receipt,
    },
    Consume(ConsumerSpec, oneshot::Sender<Result<(), Error>>),
    Cancel {
        consumer: ConsumerId,
        reply: oneshot::Sender<()>,
    },
    Get {
        channel: ChannelId,
        no_ack: bool,
        reply: oneshot::Sender<GetReply>,
    },
    Ack(Vec<u64>),
    /// Back to its place, marked redelivered (nack/reject requeue, recover).
    Requeue(Vec<u64>),
    /// Settled without delivery (nack/reject without requeue).
    Discard(Vec<u64>),
    /// Deliveries a connection could not hand to a consumer (cancelled or channel gone):
    /// back to their place unchanged. `no_ack` ones were forgotten by the queue already.
    Return {
        consumer: ConsumerId,
        entries: Vec<Entry>,
        no_ack: bool,
    },
    /// The channel closed: drop its consumers and requeue everything it held.
    ChannelClosed(ChannelId),
    Stat(oneshot::Sender<Stat>),
    Purge(oneshot::Sender<u32>),
    Delete {
        if_unused: bool,
        if_empty: bool,
        reply: oneshot::Sender<Result<u32, Error>>,
    },
    /// The queue is gone from the metadata without having deleted itself (a log replayed at
    /// start, or its node taken as down): end the task, cancelling its consumers, writing
    /// nothing about the queue.
    Stop,
    /// A node was taken as down: a quorum queue returns what its consumers held (a classic
    /// queue learns of its consumers' channels otherwise).
    NodeDown(NodeId),
    /// A quorum queue's members changed: a stub on a node that is not one uses these.
    Members(Vec<NodeId>),
    /// This node left a quorum queue's members: its replica goes on as a stub that uses the
    /// queue through these, with its consumers (`remote::take_over`).
    Leave(Vec<NodeId>),
    /// A quorum queue's member: a non-member's channel is used through it from now on.
    Move(ChannelId),
}

/// What everyone else holds of a queue: its identity, declared properties and inbox.
#[derive(Debug)]
pub struct QueueShared {
    pub name: Arc<str>,
    pub id: u64,
    pub exclusive_owner: Option<ConnId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// Set for durable queues: their persistent messages are in the store.
    pub store: Option<Arc<Store>>,
    /// Set on a stub: the queue lives on another node.
    pub remote: Option<RemoteHome>,
    /// A quorum queue's replica.
    pub quorum: bool,
    tx: mpsc::Sender<QueueCmd>,
    wake: Notify,
    /// Flow control: set while the queue has a backlog its consumers' connections cannot
    /// keep up with; publishers that sent to it pause reading until it clears.
    busy: AtomicBool,
    unbusy: Notify,
}

pub type QueueHandle = Arc<QueueShared>;

/// Where a queue held as a stub lives, for the error when it cannot be reached.
#[derive(Debug, Clone, Copy)]
pub struct RemoteHome {
    pub node: NodeId,
    pub durable: bool,
}

impl RemoteHome {
    /// RabbitMQ's 404 for a queue whose home node is down.
    pub fn unreachable(&self, queue: &str, vhost: &str) -> Error {
        let durable = if self.durable { "durable " } else { "" };
        Error::not_found(format!(
            "home node 'node {}' of {durable}queue '{queue}' in vhost '{vhost}' is down or \
             inaccessible",
            self.node
        ))
    }
}

impl QueueShared {
    /// A queue's shared part around the inbox its task reads.
    pub fn new(
        name: Arc<str>,
        id: u64,
        exclusive_owner: Option<ConnId>,
        auto_delete: bool,
        arguments: FieldTable,
        store: Option<Arc<Store>>,
        tx: mpsc::Sender<QueueCmd>,
    ) -> QueueShared {
        QueueShared {
            name,
            id,
            exclusive_owner,
            auto_delete,
            arguments,
            store,
            remote: None,
            quorum: false,
            tx,
            wake: Notify::new(),
            busy: AtomicBool::new(false),
            unbusy: Notify::new(),
        }
    }

    /// The 404 for a command whose queue did not answer: gone, or out of reach.
    pub fn gone(&self, vhost: &str) -> Error {
        match self.remote {
            Some(home) => home.unreachable(&self.name, vhost),
            // A quorum queue's replica answers everything but what no majority committed.
            None if self.quorum => Error::channel(
                crate::error::code::INTERNAL_ERROR,
                format!(
                    "queue '{}' in vhost '{vhost}': not committed in time (no majority of \
                     its members reachable)",
                    self.name
                ),
            ),
            None => Error::not_found(format!("no queue '{}' in vhost '{vhost}'", self.name)),
        }
    }

    /// Tell the task to stop (see `QueueCmd::Stop`), without waiting.
    pub fn stop(self: &Arc<Self>) {
        if let Err(mpsc::error::TrySendError::Full(cmd)) = self.tx.try_send(QueueCmd::Stop) {
            let tx = self.tx.clone();
            tokio::spawn(async move { tx.send(cmd).await });
        }
    }

    /// Resolves when the queue is woken (a consumer regained credit).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Send a command; false if the queue is gone (deleted meanwhile).
    pub async fn send(&self, cmd: QueueCmd) -> bool {
        self.tx.send(cmd).await.is_ok()
    }

    /// Ask the queue something; None if it is gone.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> QueueCmd) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        if !self.send(make(tx)).await {
            return None;
        }
        rx.await.ok()
    }

    /// A consumer regained credit: try delivering again.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Resolves once the queue is not busy (at once if it is not).
    pub async fn unbusy(&self) {
        let notified = self.unbusy.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_busy() {
            notified.await;
        }
    }

    fn set_busy(&self, busy: bool) {
        if self.busy.swap(busy, Ordering::AcqRel) && !busy {
            self.unbusy.notify_waiters();
        }
    }
}
