//! A reference model of the channel, and a driver that feeds `Channel::handle` a sequence of
//! inputs decoded from bytes and checks every action against the model: tags from 1 in
//! delivery order, the unacked set, what each settlement tells which queue, 406/530/540
//! where due, credit granted, channel.flow holding deliveries back, consumers started,
//! cancelled and given back to, transactions staged, committed and rolled back, and every
//! confirm-mode publish confirmed exactly once, in order, acked or nacked as its flush
//! settled, with `multiple` never covering one still open. Shared by the unit tests (random
//! byte strings) and the `channel` fuzz target; it panics on the first disagreement.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{Action, Channel, Settle, State};
use crate::broker::consumer::CONSUMER_CREDIT;
use crate::broker::ids::{ChannelId, ConnId, ConsumerId};
use crate::broker::message::Message;
use crate::broker::queue::{Entry, QueueCmd, QueueHandle, QueueShared};
use crate::protocol::AMQPClass;

const QUEUES: usize = 3;

#[derive(Debug, PartialEq)]
enum Mode {
    Plain,
    Confirm,
    /// The settlements staged: (tag, queue, seq); and the publishes staged.
    Tx(Vec<(u64, usize, u64)>, usize),
}

struct Consumer {
    serial: u64,
    queue: usize,
    no_ack: bool,
    written: u64,
}

/// A flush's confirm-mode publishes on this channel.
struct Run {
    token: u64,
    tags: Vec<u64>,
}

/// What the model expects of the channel.
struct Model {
    queues: Vec<QueueHandle>,
    /// Kept open so that the handles stay valid.
    _inboxes: Vec<tokio::sync::mpsc::Receiver<QueueCmd>>,
    id: ChannelId,
    cancel_notify: bool,
    next_tag: u64,
    next_seq: u64,
    /// Unacked tag → (queue, seq, counted in the global prefetch).
    unacked: BTreeMap<u64, (usize, u64)>,
    mode: Mode,
    consumers: HashMap<String, Consumer>,
    serials: u64,
    prefetch: u32,
    active: bool,
    /// Batches held back by channel.flow: (consumer tag, serial, queue, seqs, no_ack).
    parked: Vec<(String, u64, usize, Vec<u64>, bool)>,
    closing: bool,
    /// Confirm numbers: the next one, those published since the last flush, those flushed.
    next_publish: u64,
    open: Vec<u64>,
    runs: Vec<Run>,
    next_token: u64,
    /// The settled outcome of each flushed number (true: nack), and the next to confirm.
    outcome: HashMap<u64, bool>,
    next_confirm: u64,
    /// Queues touched (consumed or got from with ack).
    touched: Vec<usize>,
}

/// One input's bytes: which input (`op`) and its arguments.
#[derive(Clone, Copy)]
struct Step {
    op: u8,
    arg: u8,
    arg2: u8,
}

fn tag_name(k: u8) -> String {
    format!("c{}", k % 4)
}

/// A queued message as a queue hands it out (`seq` is what settlements name).
pub(super) fn entry(seq: u64) -> Entry {
    Entry {
        seq,
        msg: Arc::new(Message::default()),
        redelivered: false,
        expires_ms: None,
    }
}

fn code(r: Result<(), crate::error::Error>) -> Option<u16> {
    r.err().map(|e| e.code())
}

/// A queue handle the channel can name, and its inbox (never read: keep it to keep the
/// handle open).
pub(super) fn queue(id: u64) -> (QueueHandle, tokio::sync::mpsc::Receiver<QueueCmd>) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let q = QueueShared::new(
        format!("q{id}").into(),
        id,
        None,
        false,
        Default::default(),
        None,
        tx,
    );
    (Arc::new(q), rx)
}

impl Model {
    fn new(cancel_notify: bool) -> Model {
        let mut queues = Vec::new();
        let mut inboxes = Vec::new();
        for id in 0..QUEUES as u64 {
            let (q, rx) = queue(id);
            inboxes.push(rx);
            queues.push(q);
        }
        Model {
            queues,
            _inboxes: inboxes,
            id: ChannelId {
                conn: ConnId { node: 0, seq: 1 },
                channel: 1,
            },
            cancel_notify,
            next_tag: 1,
            next_seq: 1,
            unacked: BTreeMap::new(),
            mode: Mode::Plain,
            consumers: HashMap::new(),
            serials: 0,
            prefetch: 0,
            active: true,
            parked: Vec::new(),
            closing: false,
            next_publish: 1,
            open: Vec::new(),
            runs: Vec::new(),
            next_token: 1,
            outcome: HashMap::new(),
            next_confirm: 1,
            touched: Vec::new(),
        }
    }

    fn consumer_id(&self, tag: &str, serial: u64) -> ConsumerId {
        ConsumerId {
            channel: self.id,
            tag: tag.into(),
            serial,
        }
    }

    fn touch(&mut self, q: usize) {
        if !self.touched.contains(&q) {
            self.touched.push(q);
        }
    }

    /// Check the Tells of a settlement of `tags` (ascending): one per queue, in order of
    /// first appearance, each with its seqs in order.
    fn check_settle(
        &self,
        acts: &mut std::vec::IntoIter<Action>,
        settled: &[(usize, u64)],
        how: Settle,
    ) {
        let mut groups: Vec<(usize, Vec<u64>)> = Vec::new();
        for &(q, seq) in settled {
            match groups.iter_mut().find(|g| g.0 == q) {
                Some(g) => g.1.push(seq),
                None => groups.push((q, vec![seq])),
            }
        }
        for (q, seqs) in groups {
            match acts.next() {
                Some(Action::Tell(h, cmd)) => {
                    assert_eq!(h.id, q as u64);
                    let (got, got_how) = match cmd {
                        QueueCmd::Ack(s) => (s, Settle::Ack),
                        QueueCmd::Requeue(s) => (s, Settle::Requeue),
                        QueueCmd::Discard(s) => (s, Settle::Discard),
                        other => panic!("settle told {other:?}"),
                    };
                    assert_eq!((got, got_how), (seqs, how));
                }
                other => panic!("expected a settle to q{q}, got {other:?}"),
            }
        }
    }

    /// Deliveries for a current consumer, while the channel is open and flowing.
    fn expect_delivery(
        &mut self,
        acts: &mut std::vec::IntoIter<Action>,
        tag: &str,
        queue: usize,
        seqs: &[u64],
        no_ack: bool,
    ) {
        match acts.next() {
            Some(Action::Deliver {
                consumer_tag,
                first_tag,
                entries,
            }) => {
                assert_eq!(&*consumer_tag, tag);
                assert_eq!(first_tag, self.next_tag);
                let got: Vec<u64> = entries.iter().map(|e| e.seq).collect();
                assert_eq!(got, seqs);
            }
            other => panic!("expected deliveries, got {other:?}"),
        }
        for &seq in seqs {
            if !no_ack {
                self.unacked.insert(self.next_tag, (queue, seq));
            }
            self.next_tag += 1;
        }
        let c = self.consumers.get_mut(tag).expect("current consumer");
        c.written += seqs.len() as u64;
        match acts.next() {
            Some(Action::Grant {
                limit, queue: q, ..
            }) => {
                assert_eq!(limit, c.written + u64::from(CONSUMER_CREDIT));
                assert_eq!(q.id, queue as u64);
            }
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn expect_return(acts: &mut std::vec::IntoIter<Action>, queue: usize, seqs: &[u64]) {
        match acts.next() {
            Some(Action::Tell(h, QueueCmd::Return { entries, .. })) => {
                assert_eq!(h.id, queue as u64);
                let got: Vec<u64> = entries.iter().map(|e| e.seq).collect();
                assert_eq!(got, seqs);
            }
            other => panic!("expected a return to q{queue}, got {other:?}"),
        }
    }

    /// A confirm action: it covers every number from the next unconfirmed one up to its
    /// tag (exactly one without `multiple`), all settled, all with the same outcome.
    fn check_confirm(&mut self, tag: u64, multiple: bool, nack: bool) {
        assert!(tag >= self.next_confirm, "confirm {tag} again");
        assert!(multiple || tag == self.next_confirm, "confirm {tag} skips");
        assert!(!multiple || tag > self.next_confirm, "multiple over one");
        for t in self.next_confirm..=tag {
            let want = self
                .outcome
                .remove(&t)
                .expect("confirmed before its flush settled");
            assert_eq!(nack, want, "confirm {t}: nack={nack}");
        }
        self.next_confirm = tag + 1;
    }

    fn expect_send(
        acts: &mut std::vec::IntoIter<Action>,
        what: &str,
        ok: impl Fn(&AMQPClass) -> bool,
    ) {
        match acts.next() {
            Some(Action::Send(m)) if ok(&m) => {}
            other => panic!("expected {what}, got {other:?}"),
        }
    }

    fn expect_wakes(&self, acts: &mut std::vec::IntoIter<Action>) {
        for _ in 0..self.consumers.len() {
            assert!(matches!(acts.next(), Some(Action::Wake(_))));
        }
    }

    /// A consumer went: the batches parked for its tag go back, in the order parked.
    fn expect_parked_returned(&mut self, acts: &mut std::vec::IntoIter<Action>, tag: &str) {
        let (gone, kept) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.0 == tag);
        self.parked = kept;
        for (_, _, q, seqs, _) in gone {
            Self::expect_return(acts, q, &seqs);
        }
    }

    /// Everything given back: parked batches returned, touched queues told.
    fn expect_release(&mut self, acts: &mut std::vec::IntoIter<Action>) {
        for (_, _, q, seqs, _) in std::mem::take(&mut self.parked) {
            Self::expect_return(acts, q, &seqs);
        }
        let mut told = Vec::new();
        for _ in 0..self.touched.len() {
            match acts.next() {
                Some(Action::Tell(h, QueueCmd::ChannelClosed(id))) => {
                    assert_eq!(id, self.id);
                    told.push(h.id as usize);
                }
                other => panic!("expected channel-closed, got {other:?}"),
            }
        }
        told.sort_unstable();
        let mut want = std::mem::take(&mut self.touched);
        want.sort_unstable();
        assert_eq!(told, want);
        self.consumers.clear();
        self.unacked.clear();
    }
}

mod ops;

/// Run the channel against the model on the inputs `data` encodes.
pub fn run(data: &[u8]) {
    let mut bytes = data.iter().copied();
    let cancel_notify = bytes.next().unwrap_or(0) & 1 == 1;
    let mut m = Model::new(cancel_notify);
    let mut ch = Channel::new(m.id, cancel_notify);
    let mut out = Vec::new();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        let arg2 = bytes.next().unwrap_or(0);
        out.clear();
        let method = op % 18 < 12;
        if m.closing && method {
            // The runtime drops methods on a closing channel.
            continue;
        }
        let step = Step { op, arg, arg2 };
        match op % 18 {
            0 => m.settle(&mut ch, &mut out, step),
            1 => m.recover(&mut ch, &mut out, step),
            2 => m.tx_select(&mut ch, &mut out, step),
            3 => m.confirm_select(&mut ch, &mut out, step),
            4 => m.publish(&mut ch, &mut out, step),
            5 | 6 => m.commit_or_rollback(&mut ch, &mut out, step),
            7 => m.consume(&mut ch, &mut out, step),
            8 => m.cancel(&mut ch, &mut out, step),
            9 => m.qos(&mut ch, &mut out, step),
            10 => m.flow(&mut ch, &mut out, step),
            11 => m.got(&mut ch, &mut out, step),
            12 => m.deliver(&mut ch, &mut out, step),
            13 => m.cancelled(&mut ch, &mut out, step),
            14 => m.flushed(&mut ch, &mut out, step),
            15 => m.confirmed(&mut ch, &mut out, step),
            16 => m.wake(&mut ch, &mut out, step),
            _ => m.fail(&mut ch, &mut out, step),
        }
        assert_eq!(ch.unacked_count(), m.unacked.len());
        assert_eq!(ch.state == State::Closing, m.closing);
    }
}
