//! A channel's state under arbitrary sequences of what its client and its queues do to it:
//! deliveries (with and without ack), ack/nack/reject of any tag with or without
//! `multiple`, basic.recover, tx.select/commit/rollback, confirm.select and publishes,
//! consumers added, cancelled and credited, qos and channel.flow. No panic, and a reference
//! model agrees after every step: the tags handed out, the unacked set, what each
//! settlement returns or stages, which errors are 406, the confirm sequence numbers.
#![no_main]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use warren::broker::consumer::CONSUMER_CREDIT;
use warren::broker::ids::{ChannelId, ConnId, ConsumerId};
use warren::broker::message::Message;
use warren::broker::queue::{Entry, QueueHandle, QueueShared};
use warren::channel::{Channel, Settle, Settled, by_queue};

/// Three queues the deliveries come from. Their inboxes are never read: the channel only
/// names them.
static QUEUES: LazyLock<Vec<QueueHandle>> = LazyLock::new(|| {
    (0..3u64)
        .map(|id| {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            std::mem::forget(rx);
            Arc::new(QueueShared::new(
                format!("q{id}").into(),
                id,
                None,
                false,
                Default::default(),
                None,
                tx,
            ))
        })
        .collect()
});

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
}

#[derive(Debug, PartialEq)]
enum Mode {
    Plain,
    Confirm(u64),
    /// The settlements staged: (tag, queue).
    Tx(Vec<(u64, u64)>),
}

/// What the model expects of the channel.
struct Model {
    next_tag: u64,
    /// Unacked tag → the queue it came from.
    unacked: std::collections::BTreeMap<u64, u64>,
    mode: Mode,
    /// Consumer tag → (serial, deliveries written).
    consumers: HashMap<String, (u64, u64)>,
    serials: u64,
}

fn entry(seq: u64) -> Entry {
    Entry {
        seq,
        msg: Arc::new(Message::default()),
        redelivered: false,
        expires_ms: None,
    }
}

fn consumer_id(tag: &str, serial: u64) -> ConsumerId {
    ConsumerId {
        channel: ChannelId {
            conn: ConnId { node: 0, seq: 1 },
            channel: 1,
        },
        tag: tag.into(),
        serial,
    }
}

/// The tags a settlement of `tag` (with `multiple`) takes, or None for a 406.
fn expected_settle(m: &Model, tag: u64, multiple: bool) -> Option<Vec<u64>> {
    match (multiple, tag) {
        (true, 0) => Some(m.unacked.keys().copied().collect()),
        _ if !m.unacked.contains_key(&tag) => None,
        (true, _) => Some(m.unacked.range(..=tag).map(|(t, _)| *t).collect()),
        (false, _) => Some(vec![tag]),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut ch = Channel::default();
    let mut m = Model {
        next_tag: 1,
        unacked: Default::default(),
        mode: Mode::Plain,
        consumers: HashMap::new(),
        serials: 0,
    };
    while let Some(op) = input.byte() {
        let arg = input.byte().unwrap_or(0);
        match op % 13 {
            0 => {
                let (q, no_ack) = (usize::from(arg % 3), arg & 4 != 0);
                // The queue's seq is the tag it should get: settlements report seqs.
                let tag = ch.deliver(&QUEUES[q], &entry(m.next_tag), no_ack, arg & 8 != 0);
                assert_eq!(tag, m.next_tag);
                m.next_tag += 1;
                if !no_ack {
                    m.unacked.insert(tag, q as u64);
                }
            }
            1 => {
                let how = [Settle::Ack, Settle::Requeue, Settle::Discard][usize::from(arg % 3)];
                let multiple = arg & 4 != 0;
                // A tag near the ones handed out, now and then 0 or one never seen.
                let tag = u64::from(input.byte().unwrap_or(0)) % (m.next_tag + 2);
                let want = expected_settle(&m, tag, multiple);
                match (ch.settle(how, tag, multiple), want) {
                    (Err(e), None) => assert_eq!(e.code(), 406),
                    (Ok(Settled::Staged), Some(tags)) => {
                        let Mode::Tx(staged) = &mut m.mode else {
                            panic!("staged outside a transaction");
                        };
                        for t in tags {
                            let q = m.unacked.remove(&t).expect("staged an unacked tag");
                            staged.push((t, q));
                        }
                    }
                    (Ok(Settled::Now(got)), Some(tags)) => {
                        assert!(!matches!(m.mode, Mode::Tx(_)), "applied inside a tx");
                        let got_seqs: Vec<u64> = got.iter().map(|u| u.seq).collect();
                        assert_eq!(got_seqs, tags);
                        for u in &got {
                            assert_eq!(m.unacked.remove(&u.seq), Some(u.queue.id));
                        }
                        // Grouped by queue: every delivery once, each queue's in order.
                        let groups = by_queue(got);
                        let mut seen = 0;
                        for g in &groups {
                            assert!(g.seqs.windows(2).all(|w| w[0] < w[1]));
                            seen += g.seqs.len();
                        }
                        assert_eq!(seen, tags.len());
                    }
                    (got, want) => panic!("settle {tag} multiple={multiple}: {got:?}, {want:?}"),
                }
            }
            2 => {
                // basic.recover or a channel close: everything unacked, whatever the mode.
                let all: BTreeSet<u64> = ch.settle_all().iter().map(|u| u.seq).collect();
                let want: BTreeSet<u64> = std::mem::take(&mut m.unacked).into_keys().collect();
                assert_eq!(all, want);
            }
            3 => match (ch.tx_select(), &m.mode) {
                (Err(e), Mode::Confirm(_)) => assert_eq!(e.code(), 406),
                (Ok(()), Mode::Plain) => m.mode = Mode::Tx(Vec::new()),
                (Ok(()), Mode::Tx(_)) => {}
                (got, mode) => panic!("tx.select in {mode:?}: {got:?}"),
            },
            4 => match (ch.confirm_select(), &m.mode) {
                (Err(e), Mode::Tx(_)) => assert_eq!(e.code(), 406),
                (Ok(()), Mode::Plain) => m.mode = Mode::Confirm(1),
                (Ok(()), Mode::Confirm(_)) => {}
                (got, mode) => panic!("confirm.select in {mode:?}: {got:?}"),
            },
            5 => {
                let got = ch.next_publish();
                match &mut m.mode {
                    Mode::Confirm(next) => {
                        assert_eq!(got, Some(*next));
                        *next += 1;
                    }
                    _ => assert_eq!(got, None),
                }
                assert_eq!(ch.confirming(), matches!(m.mode, Mode::Confirm(_)));
            }
            6 | 7 => {
                let rollback = op % 13 == 7;
                let got = if rollback {
                    ch.rollback().map(|()| Vec::new())
                } else {
                    ch.commit().map(|tx| {
                        tx.settles
                            .into_iter()
                            .flat_map(|s| s.deliveries.into_iter().map(|(t, u)| (t, u.queue.id)))
                            .collect()
                    })
                };
                match (got, &mut m.mode) {
                    (Err(e), Mode::Plain | Mode::Confirm(_)) => assert_eq!(e.code(), 406),
                    (Ok(tags), Mode::Tx(staged)) => {
                        let staged = std::mem::take(staged);
                        if rollback {
                            // Unacked again, under the same tags.
                            m.unacked.extend(staged);
                        } else {
                            assert_eq!(tags, staged);
                        }
                    }
                    (got, mode) => panic!("commit/rollback in {mode:?}: {got:?}"),
                }
                assert_eq!(ch.transactional(), matches!(m.mode, Mode::Tx(_)));
            }
            8 => {
                let tag = format!("c{}", arg % 4);
                let no_ack = arg & 8 != 0;
                let q = &QUEUES[usize::from(arg >> 4) % 3];
                match (ch.add_consumer(&tag.as_str().into(), q, no_ack), m.consumers.get(&tag)) {
                    (Err(e), Some(_)) => assert_eq!(e.code(), 530),
                    (Ok((serial, _flow)), None) => {
                        m.serials += 1;
                        assert_eq!(serial, m.serials);
                        m.consumers.insert(tag, (serial, 0));
                    }
                    (got, had) => panic!("add consumer {tag}: {got:?}, had {had:?}"),
                }
            }
            9 => {
                let tag = format!("c{}", arg % 4);
                // The current serial, or a stale one.
                let serial = match m.consumers.get(&tag) {
                    Some((s, _)) if arg & 8 == 0 => *s,
                    _ => u64::from(arg >> 4),
                };
                let current = m.consumers.get(&tag).is_some_and(|(s, _)| *s == serial);
                assert_eq!(ch.remove_consumer(&consumer_id(&tag, serial)), current);
                if current {
                    m.consumers.remove(&tag);
                }
            }
            10 => {
                let tag = format!("c{}", arg % 4);
                let n = u32::from(input.byte().unwrap_or(0));
                let serial = m.consumers.get(&tag).map_or(0, |(s, _)| *s);
                match (ch.written(&consumer_id(&tag, serial), n), m.consumers.get_mut(&tag)) {
                    (Some(grant), Some((_, written))) => {
                        *written += u64::from(n);
                        assert_eq!(grant.limit, *written + u64::from(CONSUMER_CREDIT));
                    }
                    (None, None) => {}
                    (got, had) => panic!("written {tag}: {got:?}, had {had:?}"),
                }
            }
            11 => ch.qos(u32::from(arg), arg & 1 != 0),
            _ => {
                let parked = ch.set_flow(arg & 1 != 0);
                assert!(parked.is_empty(), "nothing was parked");
            }
        }
        assert_eq!(ch.unacked_count(), m.unacked.len());
    }
});
