//! One AMQP channel as a state machine without I/O. `Channel::handle` takes an `Input`: a
//! method from the client, the broker's answer to one the connection asked for it (a queue
//! found for basic.consume, a basic.get's message, a publish routed), an event from a queue
//! (deliveries, a cancel) or the outcome of a flush of publishes. It changes the channel's
//! state and pushes `Action`s: frames to write, commands to queues, publishes to hand over, a
//! transaction to apply. The connection task (src/connection) is its runtime: it reads
//! frames, asks the broker, and carries the actions out in order, stopping at the first that
//! fails. One file per AMQP class the channel keeps state for.
//!
//! The channel owns delivery tags and the unacked map, consumers and the credit granted to
//! them, qos, channel.flow, publisher confirms (sequence numbers, each flush's run of them and
//! its outcome), transaction staging, the queue most recently declared and content assembly.
//! The global-prefetch pool (`ChannelLimit`) is its state too: queue runtimes draw from it,
//! the channel gives back what is settled.
//!
//! Invariants: delivery tags count from 1 in the order deliveries are written; an unacked tag
//! is settled at most once; confirm mode and transactions exclude each other; confirms go out
//! in publish order, so a `multiple` ack never covers a publish still open.

mod basic;
mod confirm;
#[doc(hidden)]
pub mod model;
mod tx;

pub use basic::{QueueSettle, by_queue};
pub use tx::{Tx, TxPublish, TxSettle};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::broker::consumer::{ChannelLimit, ConsumerFlow};
use crate::broker::ids::{ChannelId, ConsumerId};
use crate::broker::queue::{Entry, GetReply, QueueCmd, QueueHandle};
use crate::error::Error;
use crate::protocol::content::Assembler;
use crate::protocol::{AMQPClass, FieldTable};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    /// We sent channel.close and wait for close-ok; everything else is dropped.
    Closing,
}

/// What settled deliveries become (the queues' own type: one command per settlement).
pub use crate::broker::queue::Settle;

/// What the channel is told.
#[derive(Debug)]
pub enum Input {
    /// basic.qos.
    Qos {
        prefetch: u32,
        global: bool,
    },
    /// basic.ack, basic.nack, basic.reject.
    Settle {
        how: Settle,
        tag: u64,
        multiple: bool,
    },
    /// basic.recover (`reply`: recover-ok is due) and basic.recover-async.
    Recover {
        requeue: bool,
        reply: bool,
    },
    /// channel.flow.
    Flow {
        active: bool,
    },
    ConfirmSelect {
        nowait: bool,
    },
    TxSelect,
    TxCommit,
    TxRollback,
    /// basic.cancel from the client.
    Cancel {
        tag: Arc<str>,
        nowait: bool,
    },
    /// basic.consume, with the queue the broker found.
    Consume(Consume),
    /// basic.get's answer from its queue.
    Got {
        queue: QueueHandle,
        no_ack: bool,
        got: GetReply,
    },
    /// A complete publish, routed.
    Publish(Routed),
    /// The client's channel.close: give everything back, then close-ok.
    Close,
    /// The connection is ending: give everything back.
    Release,
    /// A channel error: channel.close for it, everything given back, then only close-ok.
    Fail(Error),
    /// Deliveries from a queue to one of this channel's consumers.
    Deliver {
        consumer: ConsumerId,
        no_ack: bool,
        queue: QueueHandle,
        entries: Vec<Entry>,
    },
    /// The queue cancelled a consumer (it was deleted, or its node went down).
    Cancelled(ConsumerId),
    /// A queue gave back global-prefetch credit other queues may be waiting for.
    Wake,
    /// The publishes since the last flush were handed to their queues as flush `token`.
    Flushed {
        token: u64,
    },
    /// Flush `token` is settled: stored and taken, or `failed` (the store), with the
    /// sequence numbers some queue `refused`.
    Confirmed {
        token: u64,
        failed: bool,
        refused: Vec<u64>,
    },
}

/// basic.consume on a queue that exists.
#[derive(Debug)]
pub struct Consume {
    pub tag: Arc<str>,
    pub queue: QueueHandle,
    pub no_ack: bool,
    pub exclusive: bool,
    pub arguments: FieldTable,
    pub nowait: bool,
}

/// A complete publish and the queues it was routed to. The message is shared as the
/// queues will hold it, and still unique here (its store id is set when it is written).
#[derive(Debug)]
pub struct Routed {
    pub msg: Arc<crate::broker::message::Message>,
    pub targets: Vec<QueueHandle>,
    pub mandatory: bool,
}

/// A consumer to start at its queue.
#[derive(Debug)]
pub struct ConsumerStart {
    pub id: ConsumerId,
    pub queue: QueueHandle,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Per-consumer prefetch (basic.qos global=false); 0 = unlimited.
    pub prefetch: u32,
    pub arguments: FieldTable,
    pub flow: Arc<ConsumerFlow>,
    pub channel_limit: Arc<ChannelLimit>,
}

/// What the runtime does for the channel, in order.
#[derive(Debug)]
pub enum Action {
    /// Write a method frame on the channel.
    Send(AMQPClass),
    /// Write basic.deliver and the message for each entry, tags from `first_tag` up.
    Deliver {
        consumer_tag: Arc<str>,
        first_tag: u64,
        entries: Vec<Entry>,
    },
    /// Write basic.get-ok and the message.
    GetOk {
        tag: u64,
        entry: Entry,
        remaining: u32,
    },
    /// Write a publisher confirm: basic.ack, or basic.nack if `nack`.
    Confirm {
        tag: u64,
        multiple: bool,
        nack: bool,
    },
    /// A command to a queue that needs no answer.
    Tell(QueueHandle, QueueCmd),
    /// Start a consumer at its queue; what follows waits for its answer. If it refuses, the
    /// runtime forgets the consumer (`Channel::remove_consumer`) and fails with its error.
    /// (Boxed: rare, and it would make every action bigger.)
    Consume(Box<ConsumerStart>),
    /// Cancel a consumer at its queue and wait, so that nothing more arrives for it.
    Cancel {
        queue: QueueHandle,
        consumer: ConsumerId,
    },
    /// A consumer may now be sent deliveries while its queue has sent fewer than `limit`
    /// (carried out once the deliveries before it are written, so that at most
    /// CONSUMER_CREDIT are in flight to the connection).
    Grant {
        flow: Arc<ConsumerFlow>,
        limit: u64,
        queue: QueueHandle,
    },
    /// A queue may go on: credit it was waiting for is back.
    Wake(QueueHandle),
    /// Hand a publish to its queues, with its confirm sequence number in confirm mode
    /// (the runtime writes persistent messages to the store, batches per queue, and returns
    /// a mandatory publish nothing took).
    Publish {
        publish: Routed,
        confirm: Option<u64>,
    },
    /// Apply a committed transaction atomically; what follows waits for it.
    Commit(Tx),
}

/// A delivery the client has not settled yet.
#[derive(Debug, Clone)]
pub struct Unacked {
    pub queue: QueueHandle,
    pub seq: u64,
    /// The message's store id, if it was written (for transactions, whose acks of it in a
    /// durable queue are written with their publishes).
    pub stored: Option<u64>,
    /// Counted against the channel's global prefetch (consumer deliveries, not basic.get).
    pub limited: bool,
}

#[derive(Debug)]
struct ConsumerInfo {
    queue: QueueHandle,
    /// Which consumer of this tag it is (see `ConsumerId::serial`).
    serial: u64,
    /// The credit cell its queue reads.
    flow: Arc<ConsumerFlow>,
    /// Deliveries written out (or given back): the credit limit is this plus the window.
    written: u64,
}

/// Deliveries held back while the client has paused the channel with channel.flow.
#[derive(Debug)]
struct Parked {
    consumer: ConsumerId,
    no_ack: bool,
    queue: QueueHandle,
    entries: Vec<Entry>,
}

#[derive(Debug)]
pub struct Channel {
    id: ChannelId,
    /// The client understands a server-sent basic.cancel.
    cancel_notify: bool,
    pub state: State,
    pub assembler: Assembler,
    next_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    consumers: HashMap<Arc<str>, ConsumerInfo>,
    /// basic.qos global=false: the prefetch given to consumers created from now on.
    consumer_prefetch: u32,
    limit: Arc<ChannelLimit>,
    /// Queues this channel consumed from or got from, told when the channel closes.
    touched: HashMap<u64, QueueHandle>,
    /// The queue an empty queue name means.
    pub last_queue: Option<String>,
    active: bool,
    parked: Vec<Parked>,
    /// Set by confirm.select (boxed: most channels never select it).
    confirms: Option<Box<confirm::Confirms>>,
    /// Set by tx.select: what the current transaction will do at commit.
    tx: Option<Box<Tx>>,
    /// Consumers created on this channel before this one (see `ConsumerId`).
    next_serial: u64,
}

impl Channel {
    pub fn new(id: ChannelId, cancel_notify: bool) -> Self {
        Channel {
            id,
            cancel_notify,
            state: State::Open,
            assembler: Assembler::default(),
            next_tag: 1,
            unacked: BTreeMap::new(),
            consumers: HashMap::new(),
            consumer_prefetch: 0,
            limit: Arc::default(),
            touched: HashMap::new(),
            last_queue: None,
            active: true,
            parked: Vec::new(),
            confirms: None,
            tx: None,
            next_serial: 0,
        }
    }

    /// Take `input`, pushing what to do onto `out`. On an error nothing is pushed and the
    /// state is as before: the runtime closes the channel (soft) or the connection (hard).
    pub fn handle(&mut self, input: Input, out: &mut Vec<Action>) -> Result<(), Error> {
        match input {
            Input::Qos { prefetch, global } => self.qos(prefetch, global, out),
            Input::Settle { how, tag, multiple } => self.settle(how, tag, multiple, out)?,
            Input::Recover { requeue, reply } => self.recover(requeue, reply, out)?,
            Input::Flow { active } => self.flow(active, out),
            Input::ConfirmSelect { nowait } => self.confirm_select(nowait, out)?,
            Input::TxSelect => self.tx_select(out)?,
            Input::TxCommit => self.commit(out)?,
            Input::TxRollback => self.rollback(out)?,
            Input::Cancel { tag, nowait } => self.cancel(tag, nowait, out),
            Input::Consume(c) => self.consume(c, out)?,
            Input::Got { queue, no_ack, got } => self.got(queue, no_ack, got, out),
            Input::Publish(p) => self.publish(p, out),
            Input::Close => {
                self.release(out);
                out.push(Action::Send(AMQPClass::Channel(
                    crate::protocol::channel::AMQPMethod::CloseOk(
                        crate::protocol::channel::CloseOk {},
                    ),
                )));
            }
            Input::Release => self.release(out),
            Input::Fail(e) => self.fail(e, out),
            Input::Deliver {
                consumer,
                no_ack,
                queue,
                entries,
            } => self.delivered(consumer, no_ack, queue, entries, out),
            Input::Cancelled(consumer) => self.cancelled(consumer, out),
            Input::Wake => self.wake_consumers(out),
            Input::Flushed { token } => self.flushed(token),
            Input::Confirmed {
                token,
                failed,
                refused,
            } => self.confirmed(token, failed, refused, out),
        }
        Ok(())
    }

    /// Resolve the empty queue name to the channel's most recently declared queue.
    pub fn queue_name(&self, name: &str) -> Result<String, Error> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| Error::not_found("no previously declared queue"))
    }

    pub fn unacked_count(&self) -> usize {
        self.unacked.len()
    }

    pub fn transactional(&self) -> bool {
        self.tx.is_some()
    }

    /// A channel error: channel.close now, everything given back, and from now on only the
    /// client's close-ok (or close) counts.
    fn fail(&mut self, e: Error, out: &mut Vec<Action>) {
        use crate::protocol::channel::{AMQPMethod, Close};
        let (class_id, method_id) = e.ids();
        out.push(Action::Send(AMQPClass::Channel(AMQPMethod::Close(Close {
            reply_code: e.code(),
            reply_text: e.reply_text().into(),
            class_id,
            method_id,
        }))));
        self.release(out);
        self.state = State::Closing;
    }

    /// Give back everything the channel holds: its consumers go, its unacked deliveries
    /// return to their queues (the queues requeue what the channel held, marked
    /// redelivered), deliveries held by channel.flow go back unchanged.
    fn release(&mut self, out: &mut Vec<Action>) {
        self.consumers.clear();
        self.unacked.clear();
        for p in std::mem::take(&mut self.parked) {
            out.push(Action::Tell(
                p.queue,
                QueueCmd::Return {
                    consumer: p.consumer,
                    entries: p.entries,
                    no_ack: p.no_ack,
                },
            ));
        }
        for (_, q) in self.touched.drain() {
            out.push(Action::Tell(q, QueueCmd::ChannelClosed(self.id)));
        }
    }
}

#[cfg(test)]
mod tests;
