//! Model-based test: random command sequences applied to `QueueState` and to a reference
//! model written for clarity, not speed; after every command both must agree on who got
//! which message in what order, the ready list, the counts and the weight.

use std::collections::BTreeMap;

use super::tests::{Q, chan, cid, msg};
use super::*;
use crate::broker::args::{Limits, QueueArgs};
use crate::test_rng::Rng;

#[derive(Debug, Clone)]
struct MMsg {
    seq: u64,
    id: u32,
    redelivered: bool,
    expires: Option<u64>,
}

#[derive(Debug, Clone)]
struct MConsumer {
    id: ConsumerId,
    no_ack: bool,
    prefetch: u32,
    unacked: u32,
    sent: u64,
    limit: u64,
}

/// The reference: a sorted list of ready messages and a map of unacked ones.
#[derive(Debug, Default)]
struct Model {
    ready: Vec<MMsg>,
    unacked: BTreeMap<u64, (MMsg, ChannelId, Option<ConsumerId>)>,
    consumers: Vec<MConsumer>,
    rr: usize,
    next_seq: u64,
    max_length: Option<u64>,
    ttl: Option<u64>,
}

impl Model {
    fn expire(&mut self, now: u64) {
        while self
            .ready
            .first()
            .is_some_and(|m| m.expires.is_some_and(|e| e <= now))
        {
            self.ready.remove(0);
        }
    }

    fn put_back(&mut self, m: MMsg) {
        let at = self.ready.iter().take_while(|r| r.seq < m.seq).count();
        self.ready.insert(at, m);
    }

    fn settle(&mut self, seq: u64) -> Option<MMsg> {
        let (m, _, c) = self.unacked.remove(&seq)?;
        if let Some(c) = c
            && let Some(k) = self.consumers.iter_mut().find(|k| k.id == c)
        {
            k.unacked -= 1;
        }
        Some(m)
    }

    fn can_take(c: &MConsumer) -> bool {
        c.sent < c.limit && (c.no_ack || c.prefetch == 0 || c.unacked < c.prefetch)
    }

    /// Deliveries, in the order the queue makes them: (tag, id, redelivered).
    fn dispatch(&mut self, out: &mut Vec<(String, u32, bool)>) {
        let n = self.consumers.len();
        while !self.ready.is_empty() && n > 0 {
            let Some(i) = (0..n)
                .map(|k| (self.rr + k) % n)
                .find(|&i| Self::can_take(&self.consumers[i]))
            else {
                break;
            };
            let m = self.ready.remove(0);
            let c = &mut self.consumers[i];
            c.sent += 1;
            out.push((c.id.tag.to_string(), m.id, m.redelivered));
            if !c.no_ack {
                c.unacked += 1;
                self.unacked
                    .insert(m.seq, (m, c.id.channel, Some(c.id.clone())));
            }
            self.rr = (i + 1) % n;
        }
        if let Some(max) = self.max_length {
            while self.ready.len() as u64 > max {
                self.ready.remove(0);
            }
        }
    }
}

/// Group deliveries per consumer, keeping each one's order (the state emits one batch per
/// consumer per dispatch; only the order within a consumer is a promise).
fn per_consumer(v: &[(String, u32, bool)]) -> BTreeMap<String, Vec<(u32, bool)>> {
    let mut m: BTreeMap<String, Vec<(u32, bool)>> = BTreeMap::new();
    for (t, id, r) in v {
        m.entry(t.clone()).or_default().push((*id, *r));
    }
    m
}

/// Counters for the ids a sequence hands out.
#[derive(Default)]
struct Ids {
    next_id: u32,
    serial: u64,
}

/// One random command, applied to the model as it is chosen; `want` gets what a get
/// should return.
fn step_command(
    rng: &mut Rng,
    m: &mut Model,
    now: u64,
    ids: &mut Ids,
    want: &mut Vec<u32>,
) -> Command<super::tests::T> {
    match rng.below(13) {
        0..=2 => {
            let n = 1 + rng.below(4) as u32;
            let new: Vec<u32> = (ids.next_id..ids.next_id + n).collect();
            ids.next_id += n;
            for &id in &new {
                let seq = m.next_seq;
                m.next_seq += 1;
                m.ready.push(MMsg {
                    seq,
                    id,
                    redelivered: false,
                    expires: m.ttl.map(|t| now + t),
                });
            }
            Command::Enqueue(new.into_iter().map(msg).collect())
        }
        3 if m.consumers.len() < 4 => {
            ids.serial += 1;
            let c = MConsumer {
                id: ConsumerId {
                    channel: chan(1 + rng.below(2) as u16),
                    tag: format!("c{}", ids.serial).into(),
                    serial: ids.serial,
                },
                no_ack: rng.below(3) == 0,
                prefetch: rng.below(4) as u32,
                unacked: 0,
                sent: 0,
                limit: rng.below(6),
            };
            m.consumers.push(c.clone());
            Command::Checkout(Checkout {
                consumer: c.id,
                no_ack: c.no_ack,
                exclusive: false,
                prefetch: c.prefetch,
                limit: c.limit,
                pooled: false,
            })
        }
        4 if !m.consumers.is_empty() => {
            let i = rng.below(m.consumers.len() as u64) as usize;
            // The turn is an index: removing a consumer does not move it.
            let c = m.consumers.remove(i);
            Command::Cancel(c.id)
        }
        5 if !m.consumers.is_empty() => {
            let i = rng.below(m.consumers.len() as u64) as usize;
            let c = &mut m.consumers[i];
            c.limit = c.sent + rng.below(5);
            Command::Credit(Credit {
                consumers: vec![(c.id.clone(), c.limit)],
                pools: vec![],
            })
        }
        6..=8 if !m.unacked.is_empty() => {
            let keys: Vec<u64> = m.unacked.keys().copied().collect();
            let seq = keys[rng.below(keys.len() as u64) as usize];
            match rng.below(4) {
                0 => {
                    m.settle(seq);
                    Command::Ack(vec![seq])
                }
                1 => {
                    m.settle(seq);
                    Command::Discard(vec![seq])
                }
                2 => {
                    let mut x = m.settle(seq).unwrap();
                    x.redelivered = true;
                    m.put_back(x);
                    Command::Requeue(vec![seq])
                }
                _ => {
                    // Only the consumer that holds it can give it back; a stale
                    // return (another consumer) changes nothing.
                    let holder = m.unacked[&seq].2.clone();
                    let consumer = match holder {
                        Some(c) if rng.below(4) > 0 => {
                            let x = m.settle(seq).unwrap();
                            m.put_back(x);
                            c
                        }
                        _ => cid(1, "stale"),
                    };
                    Command::Return {
                        consumer,
                        seqs: vec![seq],
                    }
                }
            }
        }
        9 => {
            m.expire(now);
            let ch = chan(1 + rng.below(2) as u16);
            let no_ack = rng.below(2) == 0;
            if !m.ready.is_empty() {
                let x = m.ready.remove(0);
                want.push(x.id);
                if !no_ack {
                    m.unacked.insert(x.seq, (x, ch, None));
                }
            }
            Command::Get {
                channel: ch,
                no_ack,
            }
        }
        10 => {
            let ch = chan(1 + rng.below(2) as u16);
            let gone: Vec<usize> = (0..m.consumers.len())
                .filter(|&i| m.consumers[i].id.channel == ch)
                .collect();
            for &i in gone.iter().rev() {
                m.consumers.remove(i);
            }
            let held: Vec<u64> = m
                .unacked
                .iter()
                .filter(|(_, (_, c, _))| *c == ch)
                .map(|(s, _)| *s)
                .collect();
            for seq in held {
                let mut x = m.settle(seq).unwrap();
                x.redelivered = true;
                m.put_back(x);
            }
            Command::ChannelDown(ch)
        }
        11 => {
            m.expire(now);
            Command::Tick
        }
        _ => {
            m.ready.clear();
            Command::Purge
        }
    }
}

fn run_model(seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let max_length = (rng.below(3) == 0).then(|| rng.below(6));
    let ttl = (rng.below(3) == 0).then(|| rng.below(50));
    let args = QueueArgs {
        limits: Limits {
            max_length,
            ..Default::default()
        },
        message_ttl: ttl,
        ..Default::default()
    };
    let mut q = Q::new(args);
    let mut m = Model {
        max_length,
        ttl,
        ..Default::default()
    };
    let mut ids = Ids::default();
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step}");
        q.now += rng.below(8);
        if step % 7 == 3 {
            // A replica restored from a snapshot must go on exactly as the one imaged.
            let bytes = postcard::to_stdvec(&q.q.image()).unwrap();
            let image = postcard::from_bytes(&bytes).unwrap();
            q.q = QueueState::from_image(q.q.config().clone(), image);
        }
        let mut want = Vec::new();
        let cmd = step_command(&mut rng, &mut m, q.now, &mut ids, &mut want);
        let reply = q.run(cmd);
        let mut expected = Vec::new();
        m.dispatch(&mut expected);
        let got = q.delivered();
        assert_eq!(per_consumer(&got), per_consumer(&expected), "{ctx}");
        if let Reply::Got(g) = reply {
            assert_eq!(g.map(|(d, _)| d.body.id), want.pop(), "{ctx}: get");
        }
        assert_eq!(q.q.ready_len(), m.ready.len(), "{ctx}: ready");
        assert_eq!(q.q.unacked.len(), m.unacked.len(), "{ctx}: unacked");
        assert_eq!(q.q.consumer_count(), m.consumers.len(), "{ctx}: consumers");
        let ids: Vec<u32> = q.q.ready.iter().map(|x| x.body.id).collect();
        let mids: Vec<u32> = m.ready.iter().map(|x| x.id).collect();
        assert_eq!(ids, mids, "{ctx}: ready order");
        let weight: usize = q.q.ready.iter().map(|x| x.weight as usize).sum::<usize>()
            + q.q
                .unacked
                .values()
                .map(|h| h.msg.weight as usize)
                .sum::<usize>();
        assert_eq!(q.q.weight(), weight, "{ctx}: weight");
        q.q.check().unwrap_or_else(|e| panic!("{ctx}: {e}"));
    }
}

#[test]
fn random_command_sequences_match_the_model() {
    for seed in 0..300 {
        run_model(seed, 300);
    }
}
