//! The basic class as the channel keeps it: delivery tags and settlement (ack, nack,
//! reject, recover), consumers and the credit the channel grants them, qos, channel.flow.

use std::sync::Arc;

use super::{Channel, Parked, Settle, TxSettle, Unacked};
use crate::broker::consumer::{CONSUMER_CREDIT, ConsumerFlow};
use crate::broker::ids::ConsumerId;
use crate::broker::queue::{Entry, QueueHandle};
use crate::error::{Error, code};

/// What a basic.ack/nack/reject did.
#[derive(Debug)]
pub enum Settled {
    /// In a transaction: checked now, applied at commit.
    Staged,
    /// To tell the queues now.
    Now(Vec<Unacked>),
}

/// Settled deliveries of one queue, in order: one command to it.
#[derive(Debug)]
pub struct QueueSettle {
    pub queue: QueueHandle,
    pub seqs: Vec<u64>,
}

/// New credit for a consumer: its queue may send while it has sent fewer than `limit`.
#[derive(Debug)]
pub struct Grant {
    pub flow: Arc<ConsumerFlow>,
    pub limit: u64,
}

fn unknown_tag(tag: u64) -> Error {
    Error::precondition(format!("unknown delivery tag {tag}"))
}

impl Channel {
    /// A new delivery tag, recording the delivery unless it needs no ack.
    pub fn deliver(
        &mut self,
        queue: &QueueHandle,
        entry: &Entry,
        no_ack: bool,
        limited: bool,
    ) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        if !no_ack {
            self.unacked.insert(
                tag,
                Unacked {
                    queue: queue.clone(),
                    seq: entry.seq,
                    stored: entry.msg.stored.as_ref().map(|p| p.id),
                    limited,
                },
            );
        }
        tag
    }

    /// basic.ack/nack/reject: `tag` alone, or with `multiple` every outstanding tag up to it
    /// (tag 0 + multiple = all). Unknown or settled tag → 406. In a transaction the
    /// settlement is staged (and can be rolled back).
    pub fn settle(&mut self, how: Settle, tag: u64, multiple: bool) -> Result<Settled, Error> {
        let taken = self.take(tag, multiple)?;
        if let Some(tx) = self.tx.as_mut() {
            tx.settles.push(TxSettle {
                how,
                deliveries: taken,
            });
            return Ok(Settled::Staged);
        }
        Ok(Settled::Now(taken.into_iter().map(|(_, u)| u).collect()))
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

    /// Put back deliveries whose settlement was rolled back: unacked again, same tags.
    pub(super) fn unsettle(&mut self, settled: Vec<(u64, Unacked)>) {
        self.unacked.extend(settled);
    }

    /// Everything unacked (basic.recover, channel close).
    pub fn settle_all(&mut self) -> Vec<Unacked> {
        std::mem::take(&mut self.unacked).into_values().collect()
    }

    pub fn unacked_count(&self) -> usize {
        self.unacked.len()
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

    /// basic.qos: per consumer (for consumers created from now on) or, global, one pool
    /// shared by the channel's consumers (at once).
    pub fn qos(&mut self, prefetch: u32, global: bool) {
        if global {
            self.limit.set_limit(prefetch);
        } else {
            self.consumer_prefetch = prefetch;
        }
    }

    /// channel.flow: paused channels hold deliveries back; resuming gives them back to write.
    pub fn set_flow(&mut self, active: bool) -> Vec<Parked> {
        self.active = active;
        if active {
            std::mem::take(&mut self.parked)
        } else {
            Vec::new()
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

    /// Register a consumer (before the queue has it: deliveries may follow at once).
    /// Returns its serial and credit cell.
    pub fn add_consumer(
        &mut self,
        tag: &Arc<str>,
        queue: &QueueHandle,
        no_ack: bool,
    ) -> Result<(u64, Arc<ConsumerFlow>), Error> {
        self.tag_free(tag)?;
        self.next_serial += 1;
        let flow = Arc::new(ConsumerFlow::new(u64::from(CONSUMER_CREDIT)));
        self.consumers.insert(
            tag.clone(),
            super::ConsumerInfo {
                queue: queue.clone(),
                no_ack,
                serial: self.next_serial,
                flow: flow.clone(),
                written: 0,
            },
        );
        self.touched.insert(queue.id, queue.clone());
        Ok((self.next_serial, flow))
    }

    /// Is `consumer` this channel's current consumer of its tag (not one since cancelled)?
    pub fn is_current(&self, consumer: &ConsumerId) -> bool {
        self.consumers
            .get(&consumer.tag)
            .is_some_and(|ci| ci.serial == consumer.serial)
    }

    /// Forget a consumer (cancelled by the client or the queue); false if not current.
    pub fn remove_consumer(&mut self, consumer: &ConsumerId) -> bool {
        if !self.is_current(consumer) {
            return false;
        }
        self.consumers.remove(&consumer.tag);
        true
    }

    /// `n` deliveries to `consumer` were written out: its queue may send `n` more, so that at
    /// most CONSUMER_CREDIT are ever in flight to this connection.
    pub fn written(&mut self, consumer: &ConsumerId, n: u32) -> Option<Grant> {
        let ci = self
            .consumers
            .get_mut(&consumer.tag)
            .filter(|ci| ci.serial == consumer.serial)?;
        ci.written += u64::from(n);
        Some(Grant {
            flow: ci.flow.clone(),
            limit: ci.written + u64::from(CONSUMER_CREDIT),
        })
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
