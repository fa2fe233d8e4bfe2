//! One method of the model per kind of input: it feeds the input to the channel and checks
//! the actions against what the model expects, updating the model.

use std::sync::Arc;

use super::{Consumer, Mode, Model, QUEUES, Run, Step, code, entry, tag_name};
use crate::broker::message::Message;
use crate::channel::{Action, Channel, Consume, Input, Routed, Settle};
use crate::protocol::{AMQPClass, basic, channel, confirm, tx};

impl Model {
    pub(super) fn settle(&mut self, ch: &mut Channel, out: &mut Vec<Action>, s: Step) {
        // basic.ack/nack/reject of a tag near the ones handed out.
        let how = [Settle::Ack, Settle::Requeue, Settle::Discard][usize::from(s.arg % 3)];
        let multiple = s.arg & 4 != 0;
        let tag = u64::from(s.arg2) % (self.next_tag + 2);
        let taken: Option<Vec<u64>> = match (multiple, tag) {
            (true, 0) => Some(self.unacked.keys().copied().collect()),
            _ if !self.unacked.contains_key(&tag) => None,
            (true, _) => Some(self.unacked.range(..=tag).map(|(t, _)| *t).collect()),
            (false, _) => Some(vec![tag]),
        };
        let r = ch.handle(Input::Settle { how, tag, multiple }, out);
        let Some(tags) = taken else {
            assert_eq!(code(r), Some(406));
            assert!(out.is_empty());
            return;
        };
        r.expect("settle");
        let settled: Vec<(u64, usize, u64)> = tags
            .iter()
            .map(|t| {
                let (q, s) = self.unacked.remove(t).expect("unacked");
                (*t, q, s)
            })
            .collect();
        let mut acts = std::mem::take(out).into_iter();
        if let Mode::Tx(staged, _) = &mut self.mode {
            staged.extend(settled);
        } else {
            let qs: Vec<(usize, u64)> = settled.iter().map(|&(_, q, s)| (q, s)).collect();
            self.check_settle(&mut acts, &qs, how);
        }
        assert!(acts.next().is_none());
    }

    pub(super) fn recover(&mut self, ch: &mut Channel, out: &mut Vec<Action>, s: Step) {
        let (requeue, reply) = (s.arg & 1 == 0, s.arg & 2 != 0);
        let r = ch.handle(Input::Recover { requeue, reply }, out);
        if !requeue {
            assert_eq!(code(r), Some(540));
            return;
        }
        r.expect("recover");
        let all: Vec<(usize, u64)> = std::mem::take(&mut self.unacked).into_values().collect();
        let mut acts = std::mem::take(out).into_iter();
        self.check_settle(&mut acts, &all, Settle::Requeue);
        if reply {
            Model::expect_send(&mut acts, "recover-ok", |c| {
                matches!(c, AMQPClass::Basic(basic::AMQPMethod::RecoverOk(_)))
            });
        }
        assert!(acts.next().is_none());
    }

    pub(super) fn tx_select(&mut self, ch: &mut Channel, out: &mut Vec<Action>, _: Step) {
        let r = ch.handle(Input::TxSelect, out);
        match self.mode {
            Mode::Confirm => assert_eq!(code(r), Some(406)),
            Mode::Plain => self.mode = Mode::Tx(Vec::new(), 0),
            Mode::Tx(..) => {}
        }
        assert_eq!(out.len(), usize::from(self.mode != Mode::Confirm));
    }

    pub(super) fn confirm_select(&mut self, ch: &mut Channel, out: &mut Vec<Action>, s: Step) {
        let nowait = s.arg & 1 != 0;
        let r = ch.handle(Input::ConfirmSelect { nowait }, out);
        if matches!(self.mode, Mode::Tx(..)) {
            assert_eq!(code(r), Some(406));
        } else {
            self.mode = Mode::Confirm;
            assert_eq!(out.len(), usize::from(!nowait));
            if let Some(Action::Send(c)) = out.first() {
                assert!(matches!(
                    c,
                    AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))
                ));
            }
        }
    }

    pub(super) fn publish(&mut self, ch: &mut Channel, out: &mut Vec<Action>, s: Step) {
        let p = Routed {
            msg: Arc::new(Message::default()),
            targets: vec![self.queues[usize::from(s.arg) % QUEUES].clone()],
            mandatory: false,
        };
        ch.handle(Input::Publish(p), out).expect("publish");
        match &mut self.mode {
            Mode::Tx(_, n) => {
                *n += 1;
                assert!(out.is_empty());
            }
            mode => {
                let want = (*mode == Mode::Confirm).then_some(self.next_publish);
                match out.as_slice() {
                    [Action::Publish { confirm, .. }] => assert_eq!(*confirm, want),
                    other => panic!("publish: {other:?}"),
                }
                if let Some(n) = want {
                    self.open.push(n);
                    self.next_publish += 1;
                }
            }
        }
    }

    pub(super) fn commit_or_rollback(&mut self, ch: &mut Channel, out: &mut Vec<Action>, s: Step) {
        let rollback = s.op % 18 == 6;
        let input = if rollback {
            Input::TxRollback
        } else {
            Input::TxCommit
        };
        let r = ch.handle(input, out);
        let Mode::Tx(staged, publishes) = &mut self.mode else {
            assert_eq!(code(r), Some(406));
            return;
        };
        r.expect("commit/rollback");
        let staged = std::mem::take(staged);
        let publishes = std::mem::take(publishes);
        let mut acts = std::mem::take(out).into_iter();
        if rollback {
            for (t, q, s) in staged {
                self.unacked.insert(t, (q, s));
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

    pub(super) fn consume(&mut self, ch: &mut Channel, out: &mut Vec<Action>, s: Step) {
        let tag = tag_name(s.arg);
        let (queue, no_ack, nowait) = (
            usize::from(s.arg >> 4) % QUEUES,
            s.arg & 8 != 0,
            s.arg & 4 != 0,
        );
        let c = Consume {
            tag: tag.as_str().into(),
            queue: self.queues[queue].clone(),
            no_ack,
            exclusive: false,
            arguments: Default::default(),
            nowait,
        };
        let r = ch.handle(Input::Consume(c), out);
        if self.consumers.contains_key(&tag) {
            assert_eq!(code(r), Some(530));
            return;
        }
        r.expect("consume");
        self.serials += 1;
        self.consumers.insert(
            tag.clone(),
            Consumer {
                serial: self.serials,
                queue,
                no_ack,
                written: 0,
            },
        );
        self.touch(queue);
        let mut acts = std::mem::take(out).into_iter();
        match acts.next() {
            Some(Action::Consume(s)) => {
                assert_eq!(s.id, self.consumer_id(&tag, self.serials));
                assert_eq!(
                    (s.queue.id, s.no_ack, s.prefetch),
                    (queue as u64, no_ack, self.prefetch)
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

    pub(super) fn cancel(&mut self, ch: &mut Channel, out: &mut Vec<Action>, s: Step) {
        let (tag, nowait) = (tag_name(s.arg), s.arg & 4 != 0);
        ch.handle(
            Input::Cancel {
                tag: tag.as_str().into(),
                nowait,
            },
            out,
        )
        .expect("cancel");
        let mut acts = std::mem::take(out).into_iter();
        if let Some(c) = self.consumers.remove(&tag) {
            match acts.next() {
                Some(Action::Cancel { queue, consumer }) => {
                    assert_eq!(queue.id, c.queue as u64);
                    assert_eq!(consumer, self.consumer_id(&tag, c.serial));
                }
                other => panic!("expected a cancel, got {other:?}"),
            }
            self.expect_parked_returned(&mut acts, &tag);
        }
        if !nowait {
            Model::expect_send(&mut acts, "cancel-ok", |c| {
                matches!(c, AMQPClass::Basic(basic::AMQPMethod::CancelOk(_)))
            });
        }
        assert!(acts.next().is_none());
    }

    pub(super) fn qos(&mut self, ch: &mut Channel, out: &mut Vec<Action>, s: Step) {
        let (prefetch, global) = (u32::from(s.arg), s.arg2 & 1 != 0);
        ch.handle(Input::Qos { prefetch, global }, out)
            .expect("qos");
        if !global {
            self.prefetch = prefetch;
        }
        let mut acts = std::mem::take(out).into_iter();
        self.expect_wakes(&mut acts);
        Model::expect_send(&mut acts, "qos-ok", |c| {
            matches!(c, AMQPClass::Basic(basic::AMQPMethod::QosOk(_)))
        });
        assert!(acts.next().is_none());
    }

    pub(super) fn flow(&mut self, ch: &mut Channel, out: &mut Vec<Action>, s: Step) {
        let active = s.arg & 1 != 0;
        ch.handle(Input::Flow { active }, out).expect("flow");
        self.active = active;
        let mut acts = std::mem::take(out).into_iter();
        Model::expect_send(
            &mut acts,
            "flow-ok",
            |c| matches!(c, AMQPClass::Channel(channel::AMQPMethod::FlowOk(f)) if f.active == active),
        );
        if active {
            for (tag, serial, q, seqs, no_ack) in std::mem::take(&mut self.parked) {
                if self.consumers.get(&tag).is_some_and(|c| c.serial == serial) {
                    self.expect_delivery(&mut acts, &tag, q, &seqs, no_ack);
                } else {
                    Model::expect_return(&mut acts, q, &seqs);
                }
            }
        }
        assert!(acts.next().is_none());
    }

    pub(super) fn got(&mut self, ch: &mut Channel, out: &mut Vec<Action>, s: Step) {
        // basic.get's answer: a message (with or without ack) or none.
        let (queue, no_ack) = (usize::from(s.arg) % QUEUES, s.arg & 8 != 0);
        let got = (s.arg & 16 == 0).then(|| {
            self.next_seq += 1;
            (entry(self.next_seq), u32::from(s.arg2))
        });
        let seq = self.next_seq;
        let some = got.is_some();
        let input = Input::Got {
            queue: self.queues[queue].clone(),
            no_ack,
            got,
        };
        ch.handle(input, out).expect("got");
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
                    (self.next_tag, seq, u32::from(s.arg2))
                );
                if !no_ack {
                    self.unacked.insert(self.next_tag, (queue, seq));
                    self.touch(queue);
                }
                self.next_tag += 1;
            }
            other => panic!("get: {other:?}"),
        }
    }

    pub(super) fn deliver(&mut self, ch: &mut Channel, out: &mut Vec<Action>, s: Step) {
        // Deliveries from a queue, to a consumer current or since gone.
        let tag = tag_name(s.arg);
        let (serial, queue, no_ack) = match self.consumers.get(&tag) {
            Some(c) if s.arg & 0x40 == 0 => (c.serial, c.queue, c.no_ack),
            _ => (
                u64::from(s.arg2),
                usize::from(s.arg2) % QUEUES,
                s.arg & 8 != 0,
            ),
        };
        let seqs: Vec<u64> = (0..1 + u64::from(s.arg >> 4) % 3)
            .map(|_| {
                self.next_seq += 1;
                self.next_seq
            })
            .collect();
        let input = Input::Deliver {
            consumer: self.consumer_id(&tag, serial),
            no_ack,
            queue: self.queues[queue].clone(),
            entries: seqs.iter().map(|&s| entry(s)).collect(),
        };
        ch.handle(input, out).expect("deliver");
        let current = self.consumers.get(&tag).is_some_and(|c| c.serial == serial);
        let mut acts = std::mem::take(out).into_iter();
        if self.closing || !current {
            Model::expect_return(&mut acts, queue, &seqs);
        } else if !self.active {
            self.parked.push((tag, serial, queue, seqs, no_ack));
        } else {
            self.expect_delivery(&mut acts, &tag, queue, &seqs, no_ack);
        }
        assert!(acts.next().is_none());
    }

    pub(super) fn cancelled(&mut self, ch: &mut Channel, out: &mut Vec<Action>, s: Step) {
        // The queue cancelled a consumer (current, or a stale serial).
        let tag = tag_name(s.arg);
        let serial = match self.consumers.get(&tag) {
            Some(c) if s.arg & 8 == 0 => c.serial,
            _ => u64::from(s.arg2),
        };
        ch.handle(Input::Cancelled(self.consumer_id(&tag, serial)), out)
            .expect("cancelled");
        let current = self.consumers.get(&tag).is_some_and(|c| c.serial == serial);
        let mut acts = std::mem::take(out).into_iter();
        if current {
            self.consumers.remove(&tag);
            self.expect_parked_returned(&mut acts, &tag);
        }
        let notified = current && !self.closing && self.cancel_notify;
        assert_eq!(acts.len(), usize::from(notified), "{acts:?}");
    }

    pub(super) fn flushed(&mut self, ch: &mut Channel, out: &mut Vec<Action>, _: Step) {
        let token = self.next_token;
        self.next_token += 1;
        ch.handle(Input::Flushed { token }, out).expect("flushed");
        assert!(out.is_empty());
        if !self.open.is_empty() {
            self.runs.push(Run {
                token,
                tags: std::mem::take(&mut self.open),
            });
        }
    }

    pub(super) fn confirmed(&mut self, ch: &mut Channel, out: &mut Vec<Action>, s: Step) {
        // A flush settles, in any order; a token never flushed here is ignored.
        let (token, failed, refused) = if self.runs.is_empty() || s.arg & 0x40 != 0 {
            (self.next_token + 7, false, Vec::new())
        } else {
            let run = self.runs.remove(usize::from(s.arg2) % self.runs.len());
            let failed = s.arg & 1 != 0;
            let refused: Vec<u64> = run
                .tags
                .iter()
                .enumerate()
                .filter(|(i, _)| (s.arg >> 1) & (1 << (i % 5)) != 0)
                .map(|(_, t)| *t)
                .collect();
            for t in &run.tags {
                self.outcome.insert(*t, failed || refused.contains(t));
            }
            (run.token, failed, refused)
        };
        ch.handle(
            Input::Confirmed {
                token,
                failed,
                refused,
            },
            out,
        )
        .expect("confirmed");
        for a in std::mem::take(out) {
            match a {
                Action::Confirm {
                    tag,
                    multiple,
                    nack,
                } => {
                    assert!(!self.closing, "a confirm on a closing channel");
                    self.check_confirm(tag, multiple, nack);
                }
                other => panic!("confirmed: {other:?}"),
            }
        }
        // Everything settled before the first open run is confirmed now.
        let first_open = self.runs.iter().flat_map(|r| r.tags.first()).min().copied();
        if !self.closing {
            let mut ready: Vec<u64> = self
                .outcome
                .keys()
                .copied()
                .filter(|t| first_open.is_none_or(|f| *t < f))
                .collect();
            ready.sort_unstable();
            assert!(ready.is_empty(), "not confirmed: {ready:?}");
        }
    }

    pub(super) fn wake(&mut self, ch: &mut Channel, out: &mut Vec<Action>, _: Step) {
        ch.handle(Input::Wake, out).expect("wake");
        let mut acts = std::mem::take(out).into_iter();
        self.expect_wakes(&mut acts);
        assert!(acts.next().is_none());
    }

    pub(super) fn fail(&mut self, ch: &mut Channel, out: &mut Vec<Action>, _: Step) {
        if self.closing {
            return;
        }
        // A channel error: channel.close, everything given back, closing from now on.
        let e = crate::error::Error::precondition("model");
        ch.handle(Input::Fail(e), out).expect("fail");
        let mut acts = std::mem::take(out).into_iter();
        Model::expect_send(
            &mut acts,
            "channel.close",
            |c| matches!(c, AMQPClass::Channel(channel::AMQPMethod::Close(c)) if c.reply_code == 406),
        );
        self.expect_release(&mut acts);
        assert!(acts.next().is_none());
        self.closing = true;
        // Confirms of a closing channel are dropped.
        self.outcome.clear();
        self.next_confirm = self.next_publish;
    }
}
