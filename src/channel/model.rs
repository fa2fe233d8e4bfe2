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

use super::{Action, Channel, Consume, Input, Routed, Settle, State};
use crate::broker::consumer::CONSUMER_CREDIT;
use crate::broker::ids::{ChannelId, ConnId, ConsumerId};
use crate::broker::message::Message;
use crate::broker::queue::{Entry, QueueCmd, QueueHandle, QueueShared};
use crate::protocol::{AMQPClass, basic, channel, confirm, tx};

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

fn tag_name(k: u8) -> String {
    format!("c{}", k % 4)
}

fn entry(seq: u64) -> Entry {
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

impl Model {
    fn new(cancel_notify: bool) -> Model {
        let mut queues = Vec::new();
        let mut inboxes = Vec::new();
        for id in 0..QUEUES as u64 {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            inboxes.push(rx);
            queues.push(Arc::new(QueueShared::new(
                format!("q{id}").into(),
                id,
                None,
                false,
                Default::default(),
                None,
                tx,
            )));
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
        match op % 18 {
            0 => {
                // basic.ack/nack/reject of a tag near the ones handed out.
                let how = [Settle::Ack, Settle::Requeue, Settle::Discard][usize::from(arg % 3)];
                let multiple = arg & 4 != 0;
                let tag = u64::from(arg2) % (m.next_tag + 2);
                let taken: Option<Vec<u64>> = match (multiple, tag) {
                    (true, 0) => Some(m.unacked.keys().copied().collect()),
                    _ if !m.unacked.contains_key(&tag) => None,
                    (true, _) => Some(m.unacked.range(..=tag).map(|(t, _)| *t).collect()),
                    (false, _) => Some(vec![tag]),
                };
                let r = ch.handle(Input::Settle { how, tag, multiple }, &mut out);
                let Some(tags) = taken else {
                    assert_eq!(code(r), Some(406));
                    assert!(out.is_empty());
                    continue;
                };
                r.expect("settle");
                let settled: Vec<(u64, usize, u64)> = tags
                    .iter()
                    .map(|t| {
                        let (q, s) = m.unacked.remove(t).expect("unacked");
                        (*t, q, s)
                    })
                    .collect();
                let mut acts = std::mem::take(&mut out).into_iter();
                if let Mode::Tx(staged, _) = &mut m.mode {
                    staged.extend(settled);
                } else {
                    let qs: Vec<(usize, u64)> = settled.iter().map(|&(_, q, s)| (q, s)).collect();
                    m.check_settle(&mut acts, &qs, how);
                }
                assert!(acts.next().is_none());
            }
            1 => {
                let (requeue, reply) = (arg & 1 == 0, arg & 2 != 0);
                let r = ch.handle(Input::Recover { requeue, reply }, &mut out);
                if !requeue {
                    assert_eq!(code(r), Some(540));
                    continue;
                }
                r.expect("recover");
                let all: Vec<(usize, u64)> = std::mem::take(&mut m.unacked).into_values().collect();
                let mut acts = std::mem::take(&mut out).into_iter();
                m.check_settle(&mut acts, &all, Settle::Requeue);
                if reply {
                    Model::expect_send(&mut acts, "recover-ok", |c| {
                        matches!(c, AMQPClass::Basic(basic::AMQPMethod::RecoverOk(_)))
                    });
                }
                assert!(acts.next().is_none());
            }
            2 => {
                let r = ch.handle(Input::TxSelect, &mut out);
                match m.mode {
                    Mode::Confirm => assert_eq!(code(r), Some(406)),
                    Mode::Plain => m.mode = Mode::Tx(Vec::new(), 0),
                    Mode::Tx(..) => {}
                }
                assert_eq!(out.len(), usize::from(m.mode != Mode::Confirm));
            }
            3 => {
                let nowait = arg & 1 != 0;
                let r = ch.handle(Input::ConfirmSelect { nowait }, &mut out);
                if matches!(m.mode, Mode::Tx(..)) {
                    assert_eq!(code(r), Some(406));
                } else {
                    m.mode = Mode::Confirm;
                    assert_eq!(out.len(), usize::from(!nowait));
                    if let Some(Action::Send(c)) = out.first() {
                        assert!(matches!(
                            c,
                            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))
                        ));
                    }
                }
            }
            4 => {
                let p = Routed {
                    msg: Message::default(),
                    targets: vec![m.queues[usize::from(arg) % QUEUES].clone()],
                    mandatory: false,
                };
                ch.handle(Input::Publish(p), &mut out).expect("publish");
                match &mut m.mode {
                    Mode::Tx(_, n) => {
                        *n += 1;
                        assert!(out.is_empty());
                    }
                    mode => {
                        let want = (*mode == Mode::Confirm).then_some(m.next_publish);
                        match out.as_slice() {
                            [Action::Publish { confirm, .. }] => assert_eq!(*confirm, want),
                            other => panic!("publish: {other:?}"),
                        }
                        if let Some(n) = want {
                            m.open.push(n);
                            m.next_publish += 1;
                        }
                    }
                }
            }
            5 | 6 => {
                let rollback = op % 18 == 6;
                let input = if rollback {
                    Input::TxRollback
                } else {
                    Input::TxCommit
                };
                let r = ch.handle(input, &mut out);
                let Mode::Tx(staged, publishes) = &mut m.mode else {
                    assert_eq!(code(r), Some(406));
                    continue;
                };
                r.expect("commit/rollback");
                let staged = std::mem::take(staged);
                let publishes = std::mem::take(publishes);
                let mut acts = std::mem::take(&mut out).into_iter();
                if rollback {
                    for (t, q, s) in staged {
                        m.unacked.insert(t, (q, s));
                    }
                    Model::expect_send(&mut acts, "rollback-ok", |c| {
                        matches!(c, AMQPClass::Tx(tx::AMQPMethod::RollbackOk(_)))
                    });
                } else {
                    match acts.next() {
                        Some(Action::Commit(t)) => {
                            assert_eq!(t.publishes.len(), publishes);
                            let got: Vec<(u64, usize, u64)> = t
                                .settles
                                .iter()
                                .flat_map(|s| {
                                    s.deliveries
                                        .iter()
                                        .map(|(t, u)| (*t, u.queue.id as usize, u.seq))
                                })
                                .collect();
                            assert_eq!(got, staged);
                        }
                        other => panic!("expected a commit, got {other:?}"),
                    }
                    Model::expect_send(&mut acts, "commit-ok", |c| {
                        matches!(c, AMQPClass::Tx(tx::AMQPMethod::CommitOk(_)))
                    });
                }
                assert!(acts.next().is_none());
            }
            7 => {
                let tag = tag_name(arg);
                let (queue, no_ack, nowait) =
                    (usize::from(arg >> 4) % QUEUES, arg & 8 != 0, arg & 4 != 0);
                let c = Consume {
                    tag: tag.as_str().into(),
                    queue: m.queues[queue].clone(),
                    no_ack,
                    exclusive: false,
                    arguments: Default::default(),
                    nowait,
                };
                let r = ch.handle(Input::Consume(c), &mut out);
                if m.consumers.contains_key(&tag) {
                    assert_eq!(code(r), Some(530));
                    continue;
                }
                r.expect("consume");
                m.serials += 1;
                m.consumers.insert(
                    tag.clone(),
                    Consumer {
                        serial: m.serials,
                        queue,
                        no_ack,
                        written: 0,
                    },
                );
                m.touch(queue);
                let mut acts = std::mem::take(&mut out).into_iter();
                match acts.next() {
                    Some(Action::Consume(s)) => {
                        assert_eq!(s.id, m.consumer_id(&tag, m.serials));
                        assert_eq!(
                            (s.queue.id, s.no_ack, s.prefetch),
                            (queue as u64, no_ack, m.prefetch)
                        );
                    }
                    other => panic!("expected a consume, got {other:?}"),
                }
                if !nowait {
                    Model::expect_send(
                        &mut acts,
                        "consume-ok",
                        |c| matches!(c, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(o)) if o.consumer_tag.as_str() == tag),
                    );
                }
                assert!(acts.next().is_none());
            }
            8 => {
                let (tag, nowait) = (tag_name(arg), arg & 4 != 0);
                ch.handle(
                    Input::Cancel {
                        tag: tag.as_str().into(),
                        nowait,
                    },
                    &mut out,
                )
                .expect("cancel");
                let mut acts = std::mem::take(&mut out).into_iter();
                if let Some(c) = m.consumers.remove(&tag) {
                    match acts.next() {
                        Some(Action::Cancel { queue, consumer }) => {
                            assert_eq!(queue.id, c.queue as u64);
                            assert_eq!(consumer, m.consumer_id(&tag, c.serial));
                        }
                        other => panic!("expected a cancel, got {other:?}"),
                    }
                }
                if !nowait {
                    Model::expect_send(&mut acts, "cancel-ok", |c| {
                        matches!(c, AMQPClass::Basic(basic::AMQPMethod::CancelOk(_)))
                    });
                }
                assert!(acts.next().is_none());
            }
            9 => {
                let (prefetch, global) = (u32::from(arg), arg2 & 1 != 0);
                ch.handle(Input::Qos { prefetch, global }, &mut out)
                    .expect("qos");
                if !global {
                    m.prefetch = prefetch;
                }
                let mut acts = std::mem::take(&mut out).into_iter();
                m.expect_wakes(&mut acts);
                Model::expect_send(&mut acts, "qos-ok", |c| {
                    matches!(c, AMQPClass::Basic(basic::AMQPMethod::QosOk(_)))
                });
                assert!(acts.next().is_none());
            }
            10 => {
                let active = arg & 1 != 0;
                ch.handle(Input::Flow { active }, &mut out).expect("flow");
                m.active = active;
                let mut acts = std::mem::take(&mut out).into_iter();
                Model::expect_send(
                    &mut acts,
                    "flow-ok",
                    |c| matches!(c, AMQPClass::Channel(channel::AMQPMethod::FlowOk(f)) if f.active == active),
                );
                if active {
                    for (tag, serial, q, seqs, no_ack) in std::mem::take(&mut m.parked) {
                        if m.consumers.get(&tag).is_some_and(|c| c.serial == serial) {
                            m.expect_delivery(&mut acts, &tag, q, &seqs, no_ack);
                        } else {
                            Model::expect_return(&mut acts, q, &seqs);
                        }
                    }
                }
                assert!(acts.next().is_none());
            }
            11 => {
                // basic.get's answer: a message (with or without ack) or none.
                let (queue, no_ack) = (usize::from(arg) % QUEUES, arg & 8 != 0);
                let got = (arg & 16 == 0).then(|| {
                    m.next_seq += 1;
                    (entry(m.next_seq), u32::from(arg2))
                });
                let seq = m.next_seq;
                let some = got.is_some();
                let input = Input::Got {
                    queue: m.queues[queue].clone(),
                    no_ack,
                    got,
                };
                ch.handle(input, &mut out).expect("got");
                match out.as_slice() {
                    [Action::Send(AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_)))] => {
                        assert!(!some)
                    }
                    [
                        Action::GetOk {
                            tag,
                            entry,
                            remaining,
                        },
                    ] => {
                        assert!(some);
                        assert_eq!(
                            (*tag, entry.seq, *remaining),
                            (m.next_tag, seq, u32::from(arg2))
                        );
                        if !no_ack {
                            m.unacked.insert(m.next_tag, (queue, seq));
                            m.touch(queue);
                        }
                        m.next_tag += 1;
                    }
                    other => panic!("get: {other:?}"),
                }
            }
            12 => {
                // Deliveries from a queue, to a consumer current or since gone.
                let tag = tag_name(arg);
                let (serial, queue, no_ack) = match m.consumers.get(&tag) {
                    Some(c) if arg & 0x40 == 0 => (c.serial, c.queue, c.no_ack),
                    _ => (u64::from(arg2), usize::from(arg2) % QUEUES, arg & 8 != 0),
                };
                let seqs: Vec<u64> = (0..1 + u64::from(arg >> 4) % 3)
                    .map(|_| {
                        m.next_seq += 1;
                        m.next_seq
                    })
                    .collect();
                let input = Input::Deliver {
                    consumer: m.consumer_id(&tag, serial),
                    no_ack,
                    queue: m.queues[queue].clone(),
                    entries: seqs.iter().map(|&s| entry(s)).collect(),
                };
                ch.handle(input, &mut out).expect("deliver");
                let current = m.consumers.get(&tag).is_some_and(|c| c.serial == serial);
                let mut acts = std::mem::take(&mut out).into_iter();
                if m.closing || !current {
                    Model::expect_return(&mut acts, queue, &seqs);
                } else if !m.active {
                    m.parked.push((tag, serial, queue, seqs, no_ack));
                } else {
                    m.expect_delivery(&mut acts, &tag, queue, &seqs, no_ack);
                }
                assert!(acts.next().is_none());
            }
            13 => {
                // The queue cancelled a consumer (current, or a stale serial).
                let tag = tag_name(arg);
                let serial = match m.consumers.get(&tag) {
                    Some(c) if arg & 8 == 0 => c.serial,
                    _ => u64::from(arg2),
                };
                ch.handle(Input::Cancelled(m.consumer_id(&tag, serial)), &mut out)
                    .expect("cancelled");
                let current = m.consumers.get(&tag).is_some_and(|c| c.serial == serial);
                if current {
                    m.consumers.remove(&tag);
                }
                let notified = current && !m.closing && m.cancel_notify;
                assert_eq!(out.len(), usize::from(notified), "{out:?}");
            }
            14 => {
                let token = m.next_token;
                m.next_token += 1;
                ch.handle(Input::Flushed { token }, &mut out)
                    .expect("flushed");
                assert!(out.is_empty());
                if !m.open.is_empty() {
                    m.runs.push(Run {
                        token,
                        tags: std::mem::take(&mut m.open),
                    });
                }
            }
            15 => {
                // A flush settles, in any order; a token never flushed here is ignored.
                let (token, failed, refused) = if m.runs.is_empty() || arg & 0x40 != 0 {
                    (m.next_token + 7, false, Vec::new())
                } else {
                    let run = m.runs.remove(usize::from(arg2) % m.runs.len());
                    let failed = arg & 1 != 0;
                    let refused: Vec<u64> = run
                        .tags
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| (arg >> 1) & (1 << (i % 5)) != 0)
                        .map(|(_, t)| *t)
                        .collect();
                    for t in &run.tags {
                        m.outcome.insert(*t, failed || refused.contains(t));
                    }
                    (run.token, failed, refused)
                };
                ch.handle(
                    Input::Confirmed {
                        token,
                        failed,
                        refused,
                    },
                    &mut out,
                )
                .expect("confirmed");
                for a in std::mem::take(&mut out) {
                    match a {
                        Action::Confirm {
                            tag,
                            multiple,
                            nack,
                        } => {
                            assert!(!m.closing, "a confirm on a closing channel");
                            m.check_confirm(tag, multiple, nack);
                        }
                        other => panic!("confirmed: {other:?}"),
                    }
                }
                // Everything settled before the first open run is confirmed now.
                let first_open = m.runs.iter().flat_map(|r| r.tags.first()).min().copied();
                if !m.closing {
                    let mut ready: Vec<u64> = m
                        .outcome
                        .keys()
                        .copied()
                        .filter(|t| first_open.is_none_or(|f| *t < f))
                        .collect();
                    ready.sort_unstable();
                    assert!(ready.is_empty(), "not confirmed: {ready:?}");
                }
            }
            16 => {
                ch.handle(Input::Wake, &mut out).expect("wake");
                let mut acts = std::mem::take(&mut out).into_iter();
                m.expect_wakes(&mut acts);
                assert!(acts.next().is_none());
            }
            _ => {
                if m.closing {
                    continue;
                }
                // A channel error: channel.close, everything given back, closing from now on.
                let e = crate::error::Error::precondition("model");
                ch.handle(Input::Fail(e), &mut out).expect("fail");
                let mut acts = std::mem::take(&mut out).into_iter();
                Model::expect_send(
                    &mut acts,
                    "channel.close",
                    |c| matches!(c, AMQPClass::Channel(channel::AMQPMethod::Close(c)) if c.reply_code == 406),
                );
                m.expect_release(&mut acts);
                assert!(acts.next().is_none());
                m.closing = true;
                // Confirms of a closing channel are dropped.
                m.outcome.clear();
                m.next_confirm = m.next_publish;
            }
        }
        assert_eq!(ch.unacked_count(), m.unacked.len());
        assert_eq!(ch.state == State::Closing, m.closing);
    }
}
