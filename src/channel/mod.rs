//! The state of one AMQP channel, without I/O: delivery tags and the unacked map, consumers,
//! qos, publisher-confirm sequence numbers, the queue most recently declared, and content
//! assembly. The connection task drives it and performs what it decides.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::broker::consumer::{ChannelLimit, ConsumerFlow};
use crate::broker::queue::{Entry, QueueHandle};
use crate::error::Error;
use crate::protocol::content::Assembler;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    /// We sent channel.close and wait for close-ok; everything else is dropped.
    Closing,
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
pub struct ConsumerInfo {
    pub queue: QueueHandle,
    pub no_ack: bool,
    /// Which consumer of this tag it is (see `ConsumerId::serial`).
    pub serial: u64,
    /// The credit cell its queue reads.
    pub flow: Arc<ConsumerFlow>,
    /// Deliveries written out (or given back): the credit limit is this plus the window.
    pub written: u64,
}

/// Deliveries held back while the client has paused the channel with channel.flow.
#[derive(Debug)]
pub struct Parked {
    pub consumer: crate::broker::ids::ConsumerId,
    pub no_ack: bool,
    pub queue: QueueHandle,
    pub entries: Vec<Entry>,
}

#[derive(Debug)]
pub struct Channel {
    pub state: State,
    pub assembler: Assembler,
    next_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    pub consumers: HashMap<Arc<str>, ConsumerInfo>,
    /// basic.qos global=false: the prefetch given to consumers created from now on.
    pub consumer_prefetch: u32,
    pub limit: Arc<ChannelLimit>,
    /// Queues this channel consumed from or got from, told when the channel closes.
    pub touched: HashMap<u64, QueueHandle>,
    pub last_queue: Option<String>,
    pub active: bool,
    pub parked: Vec<Parked>,
    /// Publisher confirms: the sequence number of the next publish, once confirm.select ran.
    pub confirm_next: Option<u64>,
    /// Set by tx.select: what the current transaction will do at commit.
    pub tx: Option<Tx>,
}

/// What to do with settled deliveries.
#[derive(Debug, Clone, Copy)]
pub enum Settle {
    Ack,
    Requeue,
    Discard,
}

/// A publish staged in a transaction: routed, not yet visible.
#[derive(Debug)]
pub struct TxPublish {
    pub msg: crate::broker::message::Message,
    pub targets: Vec<QueueHandle>,
    pub mandatory: bool,
}

/// A transaction's staged work, applied at tx.commit in one store write.
#[derive(Debug, Default)]
pub struct Tx {
    pub publishes: Vec<TxPublish>,
    pub settles: Vec<(Settle, Vec<(u64, Unacked)>)>,
}

impl Default for Channel {
    fn default() -> Self {
        Channel {
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
            confirm_next: None,
            tx: None,
        }
    }
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
            let stored = entry.msg.stored.as_ref().map(|p| p.id);
            self.unacked.insert(
                tag,
                Unacked {
                    queue: queue.clone(),
                    seq: entry.seq,
                    stored,
                    limited,
                },
            );
        }
        tag
    }

    /// Put back deliveries whose settlement was rolled back (tx.rollback): they are unacked
    /// again, under their original tags.
    pub fn unsettle(&mut self, settled: Vec<(u64, Unacked)>) {
        self.unacked.extend(settled);
    }

    /// The deliveries a basic.ack/nack/reject settles: `tag` alone, or with `multiple` every
    /// outstanding tag up to it (tag 0 + multiple = all). Unknown or settled tag → 406.
    pub fn settle(&mut self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, Error> {
        Ok(self
            .settle_tagged(tag, multiple)?
            .into_iter()
            .map(|(_, u)| u)
            .collect())
    }

    /// As `settle`, keeping the tags (a transaction may have to put them back).
    pub fn settle_tagged(
        &mut self,
        tag: u64,
        multiple: bool,
    ) -> Result<Vec<(u64, Unacked)>, Error> {
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
}

fn unknown_tag(tag: u64) -> Error {
    Error::precondition(format!("unknown delivery tag {tag}"))
}

/// Group settled deliveries by queue, keeping each queue's order: one command per queue.
pub fn by_queue(settled: Vec<Unacked>) -> Vec<(QueueHandle, Vec<u64>)> {
    let mut out: Vec<(QueueHandle, Vec<u64>)> = Vec::new();
    for u in settled {
        match out.iter_mut().find(|(q, _)| q.id == u.queue.id) {
            Some((_, seqs)) => seqs.push(u.seq),
            None => out.push((u.queue, vec![u.seq])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::vhost::{QueueDecl, VHost};

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            msg: Arc::new(crate::broker::message::Message {
                exchange: Default::default(),
                routing_key: Default::default(),
                properties: Default::default(),
                body: Default::default(),
                persistent: false,
                stored: None,
            }),
            redelivered: false,
            expires_ms: None,
        }
    }

    fn queue() -> QueueHandle {
        let settings = crate::broker::vhost::QueueSettings {
            inbox: 8,
            memory_budget: 1 << 20,
            flow_messages: 1 << 16,
        };
        let v = VHost::new(
            "/",
            settings,
            Arc::new(crate::broker::memory::MemoryMonitor::new(0)),
            None,
        );
        let d = QueueDecl {
            name: "q".into(),
            ..Default::default()
        };
        v.declare_queue(&d, 1).unwrap().0
    }

    #[tokio::test]
    async fn tags_count_from_one_and_settle_ranges() {
        let q = queue();
        let mut ch = Channel::default();
        let tags: Vec<u64> = (0..5)
            .map(|s| ch.deliver(&q, &entry(s), false, true))
            .collect();
        assert_eq!(tags, vec![1, 2, 3, 4, 5]);
        assert_eq!(ch.settle(2, false).unwrap()[0].seq, 1);
        assert_eq!(ch.settle(2, false).unwrap_err().code(), 406);
        let seqs: Vec<u64> = ch.settle(4, true).unwrap().iter().map(|u| u.seq).collect();
        assert_eq!(seqs, vec![0, 2, 3]);
        assert_eq!(ch.settle(9, true).unwrap_err().code(), 406);
        assert_eq!(ch.settle(0, true).unwrap().len(), 1);
        assert_eq!(ch.unacked_count(), 0);
    }

    #[tokio::test]
    async fn no_ack_deliveries_are_not_tracked() {
        let q = queue();
        let mut ch = Channel::default();
        let t = ch.deliver(&q, &entry(0), true, false);
        assert_eq!(ch.settle(t, false).unwrap_err().code(), 406);
        assert_eq!(ch.settle(0, false).unwrap_err().code(), 406);
    }

    #[test]
    fn empty_queue_name_means_last_declared() {
        let mut ch = Channel::default();
        assert_eq!(ch.queue_name("").unwrap_err().code(), 404);
        ch.last_queue = Some("a".into());
        assert_eq!(ch.queue_name("").unwrap(), "a");
        assert_eq!(ch.queue_name("b").unwrap(), "b");
    }
}
