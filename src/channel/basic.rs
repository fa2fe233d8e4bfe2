//! The basic class as the channel keeps it: deliveries and their tags, settlement (ack,
//! nack, reject, recover), consumers and the credit the channel grants them, basic.get, qos,
//! channel.flow, and server-sent cancels.

use std::sync::Arc;

use super::{Action, Channel, ConsumerInfo, ConsumerStart, Parked, Settle, State, Unacked};
use crate::broker::consumer::{CONSUMER_CREDIT, ConsumerFlow};
use crate::broker::ids::ConsumerId;
use crate::broker::queue::{Entry, GetReply, QueueCmd, QueueHandle};
use crate::error::{Error, code};
use crate::protocol::{AMQPClass, basic, channel};

/// Settled deliveries of one queue, in order: one command to it.
#[derive(Debug)]
pub struct QueueSettle {
    pub queue: QueueHandle,
    pub seqs: Vec<u64>,
}

fn unknown_tag(tag: u64) -> Error {
    Error::precondition(format!("unknown delivery tag {tag}"))
}

fn send(out: &mut Vec<Action>, m: basic::AMQPMethod) {
    out.push(Action::Send(AMQPClass::Basic(m)));
}

impl Channel {
    /// Tags for `entries` in order, recording them as unacked unless they need no ack.
    fn tag_all(&mut self, queue: &QueueHandle, entries: &[Entry], no_ack: bool) -> u64 {
        let first = self.next_tag;
        for e in entries {
            let tag = self.next_tag;
            self.next_tag += 1;
            if !no_ack {
                self.unacked.insert(
                    tag,
                    Unacked {
                        queue: queue.clone(),
                        seq: e.seq,
                        stored: e.msg.stored.as_ref().map(|p| p.id),
                        limited: true,
                    },
                );
            }
        }
        first
    }

    /// Deliveries from a queue: written, held back (channel.flow), or given back if their
    /// consumer is gone.
    pub(super) fn delivered(
        &mut self,
        consumer: ConsumerId,
        no_ack: bool,
        queue: QueueHandle,
        entries: Vec<Entry>,
        out: &mut Vec<Action>,
    ) {
        if self.state != State::Open || !self.is_current(&consumer) {
            // Ack-mode deliveries were counted in the pool when the queue sent them.
            if !no_ack && self.limit.release(entries.len() as u32) {
                self.wake_consumers(out);
            }
            out.push(Action::Tell(
                queue,
                QueueCmd::Return {
                    consumer,
                    entries,
                    no_ack,
                },
            ));
            return;
        }
        if !self.active {
            self.parked.push(Parked {
                consumer,
                no_ack,
                queue,
                entries,
            });
            return;
        }
        let n = entries.len() as u64;
        let first_tag = self.tag_all(&queue, &entries, no_ack);
        out.push(Action::Deliver {
            consumer_tag: consumer.tag.clone(),
            first_tag,
            entries,
        });
        // Its queue may send `n` more once these are written: at most CONSUMER_CREDIT are
        // ever in flight to this connection.
        if let Some(ci) = self.consumers.get_mut(&consumer.tag) {
            ci.written += n;
            out.push(Action::Grant {
                flow: ci.flow.clone(),
                limit: ci.written + u64::from(CONSUMER_CREDIT),
                queue,
            });
        }
    }

    /// basic.ack/nack/reject: `tag` alone, or with `multiple` every outstanding tag up to it
    /// (tag 0 + multiple = all). Unknown or settled tag → 406. In a transaction the
    /// settlement is staged (and can be rolled back).
    pub(super) fn settle(
        &mut self,
        how: Settle,
        tag: u64,
        multiple: bool,
        out: &mut Vec<Action>,
    ) -> Result<(), Error> {
        let taken = self.take(tag, multiple)?;
        if let Some(tx) = self.tx.as_mut() {
            tx.settles.push(super::TxSettle {
                how,
                deliveries: taken,
            });
            return Ok(());
        }
        self.apply_settle(taken.into_iter().map(|(_, u)| u).collect(), how, out);
        Ok(())
    }

    fn take(&mut self, tag: u64, multiple: bool) -> Result<Vec<(u64, Unacked)>, Error> {
        if multiple {
            if tag == 0 {
                return Ok(std::mem::take(&mut self.unacked).into_iter().collect());
            }
            if !self.unacked.contains_key(&tag) {
                return Err(unknown_tag(tag));
            }
            let rest = self.unacked.split_off(&(tag + 1));
            return Ok(std::mem::replace(&mut self.unacked, rest)
                .into_iter()
                .collect());
        }
        self.unacked
            .remove(&tag)
            .map(|u| vec![(tag, u)])
            .ok_or_else(|| unknown_tag(tag))
    }

    /// Tell the queues about settled deliveries (one command per queue) and give their
    /// global-prefetch credit back.
    fn apply_settle(&mut self, settled: Vec<Unacked>, how: Settle, out: &mut Vec<Action>) {
        self.release_credit(&settled, out);
        for s in by_queue(settled) {
            out.push(Action::Tell(s.queue, how.command(s.seqs)));
        }
    }

    /// Settled deliveries give their global-prefetch credit back: the queues that waited
    /// for it are woken.
    pub fn release_credit(&mut self, settled: &[Unacked], out: &mut Vec<Action>) {
        let limited = settled.iter().filter(|u| u.limited).count() as u32;
        if limited > 0 && self.limit.release(limited) {
            self.wake_consumers(out);
        }
    }

    /// basic.recover: everything unacked back to its queue, redelivered.
    pub(super) fn recover(
        &mut self,
        requeue: bool,
        reply: bool,
        out: &mut Vec<Action>,
    ) -> Result<(), Error> {
        if !requeue {
            return Err(Error::connection(code::NOT_IMPLEMENTED, "requeue=false"));
        }
        let all = std::mem::take(&mut self.unacked).into_values().collect();
        self.apply_settle(all, Settle::Requeue, out);
        if reply {
            send(out, basic::AMQPMethod::RecoverOk(basic::RecoverOk {}));
        }
        Ok(())
    }

    /// basic.qos: per consumer (for consumers created from now on) or, global, one pool
    /// shared by the channel's consumers (at once).
    pub(super) fn qos(&mut self, prefetch: u32, global: bool, out: &mut Vec<Action>) {
        if global {
            self.limit.set_limit(prefetch);
        } else {
            self.consumer_prefetch = prefetch;
        }
        self.wake_consumers(out);
        send(out, basic::AMQPMethod::QosOk(basic::QosOk {}));
    }

    /// channel.flow: a paused channel holds deliveries back; resuming writes them.
    pub(super) fn flow(&mut self, active: bool, out: &mut Vec<Action>) {
        self.active = active;
        out.push(Action::Send(AMQPClass::Channel(
            channel::AMQPMethod::FlowOk(channel::FlowOk { active }),
        )));
        if active {
            for p in std::mem::take(&mut self.parked) {
                self.delivered(p.consumer, p.no_ack, p.queue, p.entries, out);
            }
        }
    }

    /// A consumer tag in use on the channel is 530 NOT_ALLOWED (checked before the queue).
    pub fn tag_free(&self, tag: &str) -> Result<(), Error> {
        if self.consumers.contains_key(tag) {
            return Err(Error::connection(
                code::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        Ok(())
    }

    /// basic.consume: the consumer is registered before its queue has it (deliveries may
    /// follow at once), then started there; consume-ok waits for the queue's answer.
    pub(super) fn consume(
        &mut self,
        c: super::Consume,
        out: &mut Vec<Action>,
    ) -> Result<(), Error> {
        self.tag_free(&c.tag)?;
        self.next_serial += 1;
        let flow = Arc::new(ConsumerFlow::new(u64::from(CONSUMER_CREDIT)));
        self.consumers.insert(
            c.tag.clone(),
            ConsumerInfo {
                queue: c.queue.clone(),
                serial: self.next_serial,
                flow: flow.clone(),
                written: 0,
            },
        );
        self.touched.insert(c.queue.id, c.queue.clone());
        let id = ConsumerId {
            channel: self.id,
            tag: c.tag.clone(),
            serial: self.next_serial,
        };
        out.push(Action::Consume(Box::new(ConsumerStart {
            id,
            queue: c.queue,
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch: self.consumer_prefetch,
            arguments: c.arguments,
            flow,
            channel_limit: self.limit.clone(),
        })));
        if !c.nowait {
            send(
                out,
                basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: c.tag.to_string().into(),
                }),
            );
        }
        Ok(())
    }

    /// basic.cancel: the queue forgets the consumer before cancel-ok, so nothing more
    /// arrives for it. An unknown tag is cancelled already.
    pub(super) fn cancel(&mut self, tag: Arc<str>, nowait: bool, out: &mut Vec<Action>) {
        if let Some(info) = self.consumers.remove(&tag) {
            out.push(Action::Cancel {
                queue: info.queue,
                consumer: ConsumerId {
                    channel: self.id,
                    tag: tag.clone(),
                    serial: info.serial,
                },
            });
            self.return_parked(&tag, out);
        }
        if !nowait {
            send(
                out,
                basic::AMQPMethod::CancelOk(basic::CancelOk {
                    consumer_tag: tag.to_string().into(),
                }),
            );
        }
    }

    /// The queue cancelled a consumer: basic.cancel to a client that understands it.
    pub(super) fn cancelled(&mut self, consumer: ConsumerId, out: &mut Vec<Action>) {
        if !self.remove_consumer(&consumer) {
            return;
        }
        self.return_parked(&consumer.tag, out);
        if self.state == State::Open && self.cancel_notify {
            send(
                out,
                basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: consumer.tag.to_string().into(),
                    nowait: true,
                }),
            );
        }
    }

    /// basic.get's answer: get-empty, or get-ok with a new tag.
    pub(super) fn got(
        &mut self,
        queue: QueueHandle,
        no_ack: bool,
        got: GetReply,
        out: &mut Vec<Action>,
    ) {
        let Some((entry, remaining)) = got else {
            send(out, basic::AMQPMethod::GetEmpty(basic::GetEmpty {}));
            return;
        };
        let tag = self.tag_all(&queue, std::slice::from_ref(&entry), no_ack);
        if !no_ack {
            // Not counted against the global prefetch.
            if let Some(u) = self.unacked.get_mut(&tag) {
                u.limited = false;
            }
            self.touched.insert(queue.id, queue);
        }
        out.push(Action::GetOk {
            tag,
            entry,
            remaining,
        });
    }

    /// Is `consumer` this channel's current consumer of its tag (not one since cancelled)?
    pub fn is_current(&self, consumer: &ConsumerId) -> bool {
        self.consumers
            .get(&consumer.tag)
            .is_some_and(|ci| ci.serial == consumer.serial)
    }

    /// Forget a consumer (cancelled by the queue, or refused by it); false if not current.
    pub fn remove_consumer(&mut self, consumer: &ConsumerId) -> bool {
        if !self.is_current(consumer) {
            return false;
        }
        self.consumers.remove(&consumer.tag);
        true
    }

    /// Deliveries channel.flow held back for a consumer now gone go back to their queues
    /// at once: held until flow resumed, they were out of every other consumer's reach.
    fn return_parked(&mut self, tag: &str, out: &mut Vec<Action>) {
        let (gone, kept) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| &*p.consumer.tag == tag);
        self.parked = kept;
        for p in gone {
            self.delivered(p.consumer, p.no_ack, p.queue, p.entries, out);
        }
    }

    /// Wake the queues of every consumer: credit they may be waiting for is back.
    pub(super) fn wake_consumers(&self, out: &mut Vec<Action>) {
        for ci in self.consumers.values() {
            out.push(Action::Wake(ci.queue.clone()));
        }
    }
}

/// Group settled deliveries by queue, keeping each queue's order: one command per queue.
pub fn by_queue(settled: Vec<Unacked>) -> Vec<QueueSettle> {
    let mut out: Vec<QueueSettle> = Vec::new();
    for u in settled {
        match out.iter_mut().find(|s| s.queue.id == u.queue.id) {
            Some(s) => s.seqs.push(u.seq),
            None => out.push(QueueSettle {
                queue: u.queue,
                seqs: vec![u.seq],
            }),
        }
    }
    out
}
