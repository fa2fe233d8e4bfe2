//! `QueueState` under arbitrary command sequences (any seq, any credit, any time, any
//! arguments): no panic, and its invariants hold after every command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren::broker::args::{Limits, Overflow, QueueArgs};
use warren::broker::ids::{ChannelId, ConsumerId};
use warren::broker::queue::state::{
    Checkout, Command, Config, Credit, Delivery, Effect, Meta, PAGED_WEIGHT, Payload, QueueState,
    Reply,
};

#[derive(Debug, Clone)]
struct M {
    size: u32,
    ttl: Option<u64>,
    stored: bool,
    resident: bool,
}

impl Payload for M {
    fn size(&self) -> u32 {
        self.size
    }
    fn weight(&self) -> usize {
        if self.resident {
            self.size as usize + 128
        } else {
            PAGED_WEIGHT
        }
    }
    fn ttl_ms(&self) -> Option<u64> {
        self.ttl
    }
    fn stored(&self) -> bool {
        self.stored
    }
    fn page_out(&mut self) {
        self.resident = false;
    }
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }
    fn opt(&mut self, scale: u64) -> Option<u64> {
        let b = self.byte();
        (b & 0x80 != 0).then(|| u64::from(b & 0x7f) * scale)
    }
}

fn channel(n: u8) -> ChannelId {
    ChannelId {
        conn: warren::broker::ids::ConnId { node: 0, seq: 1 },
        channel: u16::from(n % 3),
    }
}

/// A consumer checked out before (or, now and then, one never seen: a stale id).
fn consumer(b: &mut Bytes, issued: u64) -> ConsumerId {
    let n = b.byte();
    let serial = u64::from(n) % (issued + 2);
    ConsumerId {
        channel: channel(serial as u8),
        tag: format!("c{serial}").into(),
        serial,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let overflow = if b.flag() {
        Overflow::RejectPublish
    } else {
        Overflow::DropHead
    };
    let args = QueueArgs {
        limits: Limits {
            max_length: b.opt(1),
            max_bytes: b.opt(64),
            overflow,
        },
        message_ttl: b.opt(10),
        expires: b.opt(10).map(|t| t.max(1)),
    };
    let cfg = Config {
        name: "q".into(),
        vhost: "/".into(),
        durable: b.flag(),
        auto_delete: b.flag(),
        args,
        memory_budget: usize::from(b.byte()) * 64,
        delivery_limit: b.opt(1).map(|n| n as u32 % 4),
        requeue_to_tail: b.flag(),
    };
    let mut now = 0u64;
    let mut q: QueueState<M> = QueueState::new(cfg, Meta { now_ms: now });
    let mut fx = Vec::new();
    // No-ack deliveries, each of which may come back once (Reinstate).
    let mut handed: Vec<Delivery<M>> = Vec::new();
    let mut issued = 0u64;
    for _ in 0..256 {
        if b.0.is_empty() {
            break;
        }
        now += u64::from(b.byte() % 16);
        let mut got_no_ack = false;
        let cmd = match b.byte() % 16 {
            0 | 1 => {
                let n = 1 + b.byte() % 4;
                let msgs = (0..n)
                    .map(|_| M {
                        size: u32::from(b.byte()),
                        ttl: b.opt(5),
                        stored: b.flag(),
                        resident: true,
                    })
                    .collect();
                Command::Enqueue(msgs)
            }
            2 => Command::Checkout(Checkout {
                // Ids are used once: the channel numbers its consumers.
                consumer: {
                    issued += 1;
                    ConsumerId {
                        channel: channel(issued as u8),
                        tag: format!("c{issued}").into(),
                        serial: issued,
                    }
                },
                no_ack: b.flag(),
                exclusive: b.byte() % 8 == 0,
                prefetch: u32::from(b.byte() % 4),
                limit: u64::from(b.byte() % 8),
                pooled: b.flag(),
            }),
            3 => Command::Cancel(consumer(&mut b, issued)),
            4 => {
                got_no_ack = b.flag();
                Command::Get {
                    channel: channel(b.byte()),
                    no_ack: got_no_ack,
                }
            }
            5 => Command::Ack(vec![u64::from(b.byte() % 32)]),
            6 => Command::Discard(vec![u64::from(b.byte() % 32)]),
            7 => Command::Requeue(vec![u64::from(b.byte() % 32), u64::from(b.byte() % 32)]),
            8 => Command::Return {
                consumer: consumer(&mut b, issued),
                seqs: vec![u64::from(b.byte() % 32)],
            },
            9 if !handed.is_empty() => {
                let i = usize::from(b.byte()) % handed.len();
                Command::Reinstate(vec![handed.swap_remove(i)])
            }
            10 => {
                let c = consumer(&mut b, issued);
                let limit = u64::from(b.byte());
                let pool = (channel(b.byte()), u32::from(b.byte() % 4));
                Command::Credit(Credit {
                    consumers: vec![(c, limit)],
                    pools: vec![pool],
                })
            }
            11 => Command::ChannelDown(channel(b.byte())),
            12 => Command::Stat,
            13 => Command::Purge,
            14 if b.byte() % 8 == 0 => Command::Delete {
                if_unused: b.flag(),
                if_empty: b.flag(),
            },
            _ => Command::Tick,
        };
        let reply = q.apply(Meta { now_ms: now }, cmd, &mut fx);
        // A no-ack get: the queue let go of it, so it may come back.
        if let Reply::Got(Some((d, _))) = reply
            && got_no_ack
        {
            handed.push(d);
        }
        for e in fx.drain(..) {
            if let Effect::Deliver {
                no_ack: true, msgs, ..
            } = e
            {
                handed.extend(msgs);
            }
        }
        if let Err(e) = q.check() {
            panic!("invariant broken: {e}");
        }
    }
});
