//! Carrying out what a channel decided (`channel::Action`), in order: frames encoded into
//! the output buffer (handed to the writer every FLUSH_AT bytes, which is the back-pressure
//! on a consumer that does not read), commands to queues, consumers started and cancelled,
//! credit granted, publishes handed over, transactions applied. The first action that fails
//! ends the sequence; commands to queues still go, as they give back what the channel held.

use super::{Conn, End, FLUSH_AT};
use crate::broker::queue::{ConsumerSpec, QueueCmd};
use crate::channel::{Action, Input};
use crate::error::{Error, code};
use crate::protocol::encode;

impl Conn {
    /// Hand `input` to channel `ch` and carry out what it decides. A missing channel takes
    /// nothing (the caller checked it is open).
    pub(super) async fn drive(&mut self, ch: u16, input: Input) -> Result<(), Error> {
        self.drive_event(ch, input).await.map_err(into_error)
    }

    /// `drive` for inputs from queues and flushes: a socket that went away ends the
    /// connection quietly.
    pub(super) async fn drive_event(&mut self, ch: u16, input: Input) -> Result<(), End> {
        let mut acts = std::mem::take(&mut self.acts);
        let r = match self.channels.get_mut(&ch) {
            Some(c) => c.handle(input, &mut acts).map_err(End::Close),
            None => Ok(()),
        };
        let r = match r {
            Ok(()) => self.perform(ch, &mut acts).await,
            Err(e) => Err(e),
        };
        acts.clear();
        self.acts = acts;
        r
    }

    /// `drive` for inputs whose actions never wait (a publish, a flush's outcome).
    pub(super) fn drive_now(&mut self, ch: u16, input: Input) -> Result<(), Error> {
        let Some(c) = self.channels.get_mut(&ch) else {
            return Ok(());
        };
        let mut acts = std::mem::take(&mut self.acts);
        let r = c.handle(input, &mut acts);
        for a in acts.drain(..) {
            if let Some(a) = self.act_now(ch, a) {
                tracing::error!(conn = %self.id, channel = ch, "dropped an action that waits: {a:?}");
            }
        }
        self.acts = acts;
        r
    }

    /// Carry out `acts` for channel `ch`, in order.
    pub(super) async fn perform(&mut self, ch: u16, acts: &mut Vec<Action>) -> Result<(), End> {
        let mut r = Ok(());
        for a in acts.drain(..) {
            if r.is_err() {
                if let Action::Tell(q, cmd) = a {
                    q.send(cmd).await;
                }
                continue;
            }
            r = match self.act_now(ch, a) {
                None => Ok(()),
                Some(a) => self.act(ch, a).await,
            };
        }
        r
    }

    /// Carry out an action that needs no waiting; hand back one that does.
    pub(super) fn act_now(&mut self, ch: u16, a: Action) -> Option<Action> {
        match a {
            Action::Send(m) => encode::method(&mut self.out, ch, &m),
            Action::GetOk {
                tag,
                entry,
                remaining,
            } => {
                let m = &entry.msg;
                encode::get_ok(
                    &mut self.out,
                    ch,
                    tag,
                    entry.redelivered,
                    &m.exchange,
                    &m.routing_key,
                    remaining,
                );
                encode::content(&mut self.out, ch, &m.properties, &m.body, self.frame_max);
            }
            Action::Confirm {
                tag,
                multiple,
                nack,
            } => encode::confirm(&mut self.out, ch, tag, multiple, nack),
            Action::Wake(q) => q.wake(),
            Action::Grant { flow, limit, queue } => {
                if flow.grant(limit) {
                    queue.wake();
                }
            }
            Action::Publish { publish, confirm } => self.hand_over(ch, publish, confirm),
            a => return Some(a),
        }
        None
    }

    /// Carry out an action that waits: for the writer, a queue, or the store.
    async fn act(&mut self, ch: u16, a: Action) -> Result<(), End> {
        match a {
            Action::Deliver {
                consumer_tag,
                first_tag,
                entries,
            } => {
                for (tag, e) in (first_tag..).zip(entries) {
                    let m = &e.msg;
                    encode::deliver(
                        &mut self.out,
                        ch,
                        consumer_tag.as_bytes(),
                        tag,
                        e.redelivered,
                        &m.exchange,
                        &m.routing_key,
                    );
                    encode::content(&mut self.out, ch, &m.properties, &m.body, self.frame_max);
                    if self.out.len() >= FLUSH_AT {
                        self.flush().await?;
                    }
                }
            }
            Action::Tell(q, cmd) => {
                q.send(cmd).await;
            }
            Action::Cancel { queue, consumer } => {
                let _ = queue
                    .ask(|reply| QueueCmd::Cancel { consumer, reply })
                    .await;
            }
            Action::Consume(start) => {
                let start = *start;
                let id = start.id.clone();
                let queue = start.queue.clone();
                let spec = ConsumerSpec {
                    id: start.id,
                    no_ack: start.no_ack,
                    exclusive: start.exclusive,
                    prefetch: start.prefetch,
                    arguments: start.arguments,
                    events: self.events_tx.clone(),
                    flow: start.flow,
                    channel_limit: start.channel_limit,
                };
                let e = match queue.ask(|reply| QueueCmd::Consume(spec, reply)).await {
                    Some(Ok(())) => return Ok(()),
                    Some(Err(e)) => e,
                    None => queue.gone(&self.vhost().name),
                };
                if let Some(c) = self.channels.get_mut(&ch) {
                    c.remove_consumer(&id);
                }
                return Err(End::Close(e));
            }
            Action::Commit(tx) => self.commit(ch, tx).await.map_err(End::Close)?,
            // Handled by `act_now`, which `perform` tries first.
            a => {
                let _ = self.act_now(ch, a);
            }
        }
        Ok(())
    }
}

/// An action's failure as the method's: its error, or the connection going away.
fn into_error(end: End) -> Error {
    match end {
        End::Close(e) => e,
        End::Quiet => Error::connection(code::INTERNAL_ERROR, "connection is closing"),
    }
}
