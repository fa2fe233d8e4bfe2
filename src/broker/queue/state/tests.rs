//! `QueueState` without tasks, sockets or clocks: one test per rule (the model-based test is
//! in `model.rs`).

use super::*;
use crate::broker::args::{Limits, QueueArgs};

/// A message handle for tests: an id, and the facts the state reads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct T {
    pub(super) id: u32,
    size: u32,
    ttl: Option<u64>,
    stored: bool,
    resident: bool,
}

impl Payload for T {
    fn size(&self) -> u32 {
        self.size
    }
    fn weight(&self) -> usize {
        if self.resident {
            self.size as usize + 100
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

/// A message with a store row (so the store effects of a durable queue show).
pub(super) fn msg(id: u32) -> T {
    T {
        id,
        size: 10,
        ttl: None,
        stored: true,
        resident: true,
    }
}

pub(super) fn cfg(args: QueueArgs) -> Config {
    Config {
        name: "q".into(),
        vhost: "/".into(),
        durable: true,
        auto_delete: false,
        args,
        memory_budget: usize::MAX,
        delivery_limit: None,
        requeue_to_tail: false,
    }
}

pub(super) fn chan(n: u16) -> ChannelId {
    ChannelId {
        conn: crate::broker::ids::ConnId { node: 0, seq: 1 },
        channel: n,
    }
}

pub(super) fn cid(ch: u16, tag: &str) -> ConsumerId {
    ConsumerId {
        channel: chan(ch),
        tag: tag.into(),
        serial: 0,
    }
}

fn checkout(ch: u16, tag: &str) -> Checkout {
    Checkout {
        consumer: cid(ch, tag),
        no_ack: false,
        exclusive: false,
        prefetch: 0,
        limit: u64::MAX,
        pooled: false,
    }
}

/// A queue and a clock, applying commands and keeping their effects.
pub(super) struct Q {
    pub(super) q: QueueState<T>,
    pub(super) now: u64,
    fx: Vec<Effect<T>>,
}

impl Q {
    pub(super) fn new(args: QueueArgs) -> Q {
        Q::with(cfg(args))
    }

    pub(super) fn with(cfg: Config) -> Q {
        Q {
            q: QueueState::new(cfg, Meta { now_ms: 0 }),
            now: 0,
            fx: Vec::new(),
        }
    }

    pub(super) fn run(&mut self, cmd: Command<T>) -> Reply<T> {
        self.q.apply(Meta { now_ms: self.now }, cmd, &mut self.fx)
    }

    fn enqueue(&mut self, ids: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let msgs = ids.into_iter().map(msg).collect();
        match self.run(Command::Enqueue(msgs)) {
            Reply::Enqueued { refused } => refused,
            other => panic!("{other:?}"),
        }
    }

    fn checkout(&mut self, c: Checkout) -> Result<(), Error> {
        match self.run(Command::Checkout(c)) {
            Reply::CheckedOut(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn get(&mut self, no_ack: bool) -> Option<(u64, u32, bool)> {
        match self.run(Command::Get {
            channel: chan(9),
            no_ack,
        }) {
            Reply::Got(g) => g.map(|(d, _)| (d.seq, d.body.id, d.redelivered)),
            other => panic!("{other:?}"),
        }
    }

    fn ready(&mut self) -> u32 {
        match self.run(Command::Stat) {
            Reply::Stat { messages, .. } => messages,
            other => panic!("{other:?}"),
        }
    }

    /// Deliveries since the last call: (consumer tag, message id, redelivered).
    pub(super) fn delivered(&mut self) -> Vec<(String, u32, bool)> {
        let mut out = Vec::new();
        for e in &self.fx {
            if let Effect::Deliver { consumer, msgs, .. } = e {
                for d in msgs {
                    out.push((consumer.tag.to_string(), d.body.id, d.redelivered));
                }
            }
        }
        self.fx.clear();
        out
    }

    fn released(&self) -> Vec<u32> {
        self.fx
            .iter()
            .filter_map(|e| match e {
                Effect::Release(b) => Some(b.id),
                _ => None,
            })
            .collect()
    }

    fn has(&self, f: impl Fn(&Effect<T>) -> bool) -> bool {
        self.fx.iter().any(f)
    }
}

fn tags(v: &[(String, u32, bool)]) -> Vec<(&str, u32)> {
    v.iter().map(|(t, id, _)| (t.as_str(), *id)).collect()
}

#[test]
fn consumers_take_turns() {
    let mut q = Q::new(QueueArgs::default());
    for t in ["a", "b", "c"] {
        q.checkout(checkout(1, t)).unwrap();
    }
    q.enqueue(0..7);
    let d = q.delivered();
    assert_eq!(
        tags(&d),
        [
            ("a", 0),
            ("a", 3),
            ("a", 6),
            ("b", 1),
            ("b", 4),
            ("c", 2),
            ("c", 5)
        ]
    );
    // The turn carries over to the next dispatch: b is next.
    q.enqueue([7]);
    assert_eq!(tags(&q.delivered()), [("b", 7)]);
}

#[test]
fn prefetch_bounds_unacked_and_an_ack_frees_a_slot() {
    let mut q = Q::new(QueueArgs::default());
    q.checkout(Checkout {
        prefetch: 2,
        ..checkout(1, "a")
    })
    .unwrap();
    q.enqueue(0..5);
    assert_eq!(tags(&q.delivered()), [("a", 0), ("a", 1)]);
    assert_eq!(q.ready(), 3);
    q.run(Command::Ack(vec![0]));
    assert_eq!(tags(&q.delivered()), [("a", 2)]);
    q.run(Command::Discard(vec![1, 2]));
    assert_eq!(tags(&q.delivered()), [("a", 3), ("a", 4)]);
}

#[test]
fn credit_bounds_deliveries_and_a_grant_resumes_them() {
    let mut q = Q::new(QueueArgs::default());
    q.checkout(Checkout {
        no_ack: true,
        limit: 2,
        ..checkout(1, "a")
    })
    .unwrap();
    q.enqueue(0..5);
    assert!(q.has(|e| matches!(e, Effect::Starved(c) if &*c.tag == "a")));
    assert_eq!(tags(&q.delivered()), [("a", 0), ("a", 1)]);
    assert!(q.q.any_starved());
    q.run(Command::Credit(Credit {
        consumers: vec![(cid(1, "a"), 3)],
        pools: vec![],
    }));
    assert_eq!(tags(&q.delivered()), [("a", 2)]);
    q.run(Command::Credit(Credit {
        consumers: vec![(cid(1, "a"), 10)],
        pools: vec![],
    }));
    assert_eq!(tags(&q.delivered()), [("a", 3), ("a", 4)]);
    assert!(!q.q.any_starved());
}

#[test]
fn a_channel_pool_is_shared_by_its_pooled_consumers() {
    let mut q = Q::new(QueueArgs::default());
    for t in ["a", "b"] {
        q.checkout(Checkout {
            pooled: true,
            ..checkout(1, t)
        })
        .unwrap();
    }
    q.enqueue(0..6);
    // No pool granted yet: pooled consumers take nothing.
    assert!(q.delivered().is_empty());
    assert_eq!(q.q.pool_demands(), [(chan(1), 6)]);
    q.run(Command::Credit(Credit {
        consumers: vec![],
        pools: vec![(chan(1), 3)],
    }));
    assert_eq!(tags(&q.delivered()), [("a", 0), ("a", 2), ("b", 1)]);
    assert_eq!(q.q.pool(&chan(1)), 0);
    q.run(Command::Credit(Credit {
        consumers: vec![],
        pools: vec![(chan(1), u32::MAX)],
    }));
    assert_eq!(q.delivered().len(), 3);
}

#[test]
fn requeued_messages_go_back_to_their_place_redelivered() {
    let mut q = Q::new(QueueArgs::default());
    q.enqueue(0..4);
    let first = q.get(false).unwrap();
    let second = q.get(false).unwrap();
    assert_eq!((first.1, second.1), (0, 1));
    q.run(Command::Requeue(vec![second.0]));
    q.run(Command::Requeue(vec![first.0]));
    assert_eq!(q.get(true), Some((0, 0, true)));
    assert_eq!(q.get(true), Some((1, 1, true)));
    assert_eq!(q.get(true), Some((2, 2, false)));
    // A return (never delivered) keeps the flag as it was.
    q.checkout(Checkout {
        limit: 1,
        ..checkout(1, "a")
    })
    .unwrap();
    assert_eq!(tags(&q.delivered()), [("a", 3)]);
    q.run(Command::Cancel(cid(1, "a")));
    q.run(Command::Return {
        consumer: cid(1, "a"),
        seqs: vec![3],
    });
    assert_eq!(q.get(true), Some((3, 3, false)));
    assert_eq!(q.get(true), None);
}

#[test]
fn a_no_ack_delivery_that_never_arrived_is_taken_back() {
    let mut q = Q::new(QueueArgs::default());
    q.enqueue([5]);
    let Reply::Got(Some((d, 0))) = q.run(Command::Get {
        channel: chan(1),
        no_ack: true,
    }) else {
        panic!()
    };
    assert_eq!(q.released(), [5]);
    q.fx.clear();
    q.run(Command::Reinstate(vec![d]));
    assert!(q.has(|e| matches!(e, Effect::Reacquire(b) if b.id == 5)));
    assert_eq!(q.ready(), 1);
}

#[test]
fn the_shorter_ttl_wins_and_expiry_is_from_the_head() {
    let ttl = QueueArgs {
        message_ttl: Some(100),
        ..Default::default()
    };
    let mut q = Q::new(ttl);
    let mut own = msg(1);
    own.ttl = Some(10);
    q.run(Command::Enqueue(vec![msg(0), own]));
    q.now = 20;
    q.enqueue([2]);
    assert_eq!(q.q.next_deadline_ms(), Some(100));
    q.now = 50;
    q.run(Command::Tick);
    // Message 1 has expired, but only the head leaves by expiry.
    assert_eq!(q.ready(), 3);
    q.now = 100;
    assert_eq!(q.ready(), 1, "the head and the expired one behind it go");
    assert_eq!(q.released(), [0, 1]);
}

#[test]
fn a_message_with_ttl_0_still_reaches_a_waiting_consumer() {
    let mut q = Q::new(QueueArgs {
        message_ttl: Some(0),
        ..Default::default()
    });
    q.enqueue([0]);
    q.run(Command::Tick);
    assert_eq!(q.ready(), 0);
    q.checkout(checkout(1, "a")).unwrap();
    q.enqueue([1]);
    q.run(Command::Tick);
    assert_eq!(tags(&q.delivered()), [("a", 1)]);
}

#[test]
fn an_unused_queue_expires() {
    let mut q = Q::new(QueueArgs {
        expires: Some(1000),
        ..Default::default()
    });
    q.now = 500;
    q.ready(); // a declare's stat counts as use
    q.now = 1499;
    q.run(Command::Tick);
    assert!(!q.q.is_deleted());
    q.checkout(checkout(1, "a")).unwrap();
    assert_eq!(q.q.next_deadline_ms(), None, "a consumer keeps it alive");
    q.run(Command::Cancel(cid(1, "a")));
    assert_eq!(q.q.next_deadline_ms(), Some(2499));
    q.now = 2499;
    q.run(Command::Tick);
    assert!(q.q.is_deleted());
    assert!(q.has(|e| matches!(e, Effect::Deleted)));
}

#[test]
fn overflow_modes() {
    let cases = [
        // (max length, max bytes, overflow, ready ids after enqueueing 0..5, refused)
        (Some(3), None, Overflow::DropHead, vec![2, 3, 4], vec![]),
        (
            Some(3),
            None,
            Overflow::RejectPublish,
            vec![0, 1, 2],
            vec![3, 4],
        ),
        (None, Some(20), Overflow::DropHead, vec![3, 4], vec![]),
        (
            None,
            Some(20),
            Overflow::RejectPublish,
            vec![0, 1],
            vec![2, 3, 4],
        ),
        (Some(0), None, Overflow::DropHead, vec![], vec![]),
    ];
    for (max_length, max_bytes, overflow, ready, refused) in cases {
        let mut q = Q::new(QueueArgs {
            limits: Limits {
                max_length,
                max_bytes,
                overflow,
            },
            ..Default::default()
        });
        assert_eq!(
            q.enqueue(0..5),
            refused,
            "{max_length:?} {max_bytes:?} {overflow:?}"
        );
        let mut got = Vec::new();
        while let Some((_, id, _)) = q.get(true) {
            got.push(id);
        }
        assert_eq!(got, ready, "{max_length:?} {max_bytes:?} {overflow:?}");
    }
}

#[test]
fn unacked_messages_do_not_count_against_the_length_limit() {
    let mut q = Q::new(QueueArgs {
        limits: Limits {
            max_length: Some(1),
            ..Default::default()
        },
        ..Default::default()
    });
    q.checkout(Checkout {
        prefetch: 1,
        ..checkout(1, "a")
    })
    .unwrap();
    q.enqueue([0, 1, 2]);
    assert_eq!(tags(&q.delivered()), [("a", 0)]);
    assert_eq!(q.ready(), 1);
    assert_eq!(q.get(true).map(|g| g.1), Some(2));
}

#[test]
fn exclusive_consumers() {
    let mut q = Q::new(QueueArgs::default());
    q.checkout(checkout(1, "a")).unwrap();
    let e = q
        .checkout(Checkout {
            exclusive: true,
            ..checkout(1, "x")
        })
        .unwrap_err();
    assert_eq!(e.code(), 403);
    q.run(Command::Cancel(cid(1, "a")));
    q.checkout(Checkout {
        exclusive: true,
        ..checkout(1, "x")
    })
    .unwrap();
    assert_eq!(q.checkout(checkout(2, "b")).unwrap_err().code(), 403);
}

#[test]
fn a_transient_queue_has_no_store_effects() {
    let mut c = cfg(QueueArgs::default());
    c.durable = false;
    let mut q = Q::with(c);
    q.checkout(Checkout {
        no_ack: true,
        ..checkout(1, "a")
    })
    .unwrap();
    q.enqueue(0..3);
    let store_effect = |e: &Effect<T>| {
        matches!(
            e,
            Effect::Release(_) | Effect::MarkDelivered(_) | Effect::Reacquire(_)
        )
    };
    assert!(!q.has(store_effect));
    assert_eq!(tags(&q.delivered()), [("a", 0), ("a", 1), ("a", 2)]);
    assert_eq!(q.q.weight(), 0);
}

#[test]
fn a_consumer_id_in_use_is_refused() {
    let mut q = Q::new(QueueArgs::default());
    q.checkout(checkout(1, "a")).unwrap();
    assert_eq!(q.checkout(checkout(1, "a")).unwrap_err().code(), 530);
    assert_eq!(q.q.consumer_count(), 1);
}

#[test]
fn auto_delete_after_the_last_consumer_but_never_before_the_first() {
    let mut c = cfg(QueueArgs::default());
    c.auto_delete = true;
    let mut q = Q::with(c);
    q.run(Command::ChannelDown(chan(1)));
    assert!(!q.q.is_deleted());
    q.checkout(checkout(1, "a")).unwrap();
    q.checkout(checkout(2, "b")).unwrap();
    q.run(Command::Cancel(cid(1, "a")));
    assert!(!q.q.is_deleted());
    q.run(Command::ChannelDown(chan(2)));
    assert!(q.q.is_deleted());
    // After deletion nothing is taken.
    assert_eq!(q.enqueue([1]), [0]);
}

#[test]
fn delete_if_unused_and_if_empty() {
    let mut q = Q::new(QueueArgs::default());
    q.checkout(checkout(1, "a")).unwrap();
    let del = |q: &mut Q, if_unused, if_empty| match q.run(Command::Delete {
        if_unused,
        if_empty,
    }) {
        Reply::Deleted(r) => r.map_err(|e| e.code()),
        other => panic!("{other:?}"),
    };
    assert_eq!(del(&mut q, true, false), Err(406));
    q.run(Command::Cancel(cid(1, "a")));
    q.enqueue([0, 1]);
    assert_eq!(del(&mut q, false, true), Err(406));
    q.fx.clear();
    assert_eq!(del(&mut q, true, false), Ok(2));
    assert_eq!(q.released(), [0, 1]);
    assert!(q.has(|e| matches!(e, Effect::Deleted)));
}

#[test]
fn deleting_cancels_consumers_and_releases_what_they_hold() {
    let mut q = Q::new(QueueArgs::default());
    q.checkout(checkout(1, "a")).unwrap();
    q.enqueue([0, 1]);
    q.fx.clear();
    q.run(Command::Delete {
        if_unused: false,
        if_empty: false,
    });
    assert_eq!(q.released(), [0, 1]);
    assert!(q.has(|e| matches!(e, Effect::Cancelled(c) if &*c.tag == "a")));
}

#[test]
fn a_closed_channel_gives_back_what_it_held_redelivered() {
    let mut q = Q::new(QueueArgs::default());
    q.checkout(checkout(1, "a")).unwrap();
    q.checkout(Checkout {
        prefetch: 1,
        ..checkout(2, "b")
    })
    .unwrap();
    q.enqueue(0..4);
    assert_eq!(
        tags(&q.delivered()),
        [("a", 0), ("a", 2), ("a", 3), ("b", 1)]
    );
    q.run(Command::ChannelDown(chan(1)));
    assert_eq!(q.q.consumer_count(), 1);
    q.run(Command::Ack(vec![1]));
    // b (prefetch 1) gets them back one at a time, in their original order.
    assert_eq!(q.delivered(), [("b".to_string(), 0, true)]);
    q.run(Command::Ack(vec![0]));
    assert_eq!(q.delivered(), [("b".to_string(), 2, true)]);
}

#[test]
fn a_durable_queue_marks_first_deliveries_of_stored_messages_and_pages_out_past_its_budget() {
    let mut c = cfg(QueueArgs::default());
    c.durable = true;
    c.memory_budget = 250;
    let mut q = Q::with(c);
    let transient = T {
        stored: false,
        ..msg(4)
    };
    q.run(Command::Enqueue(
        (0..4).map(msg).chain([transient]).collect(),
    ));
    // 110 each: the third goes over the budget, so what comes after it is paged out,
    // unless it has no row to be read back from.
    assert_eq!(q.q.weight(), 3 * 110 + PAGED_WEIGHT + 110);
    let (seq, _, _) = q.get(false).unwrap();
    assert!(q.has(|e| matches!(e, Effect::MarkDelivered(b) if b.id == 0)));
    q.fx.clear();
    q.run(Command::Requeue(vec![seq]));
    q.get(false).unwrap();
    assert!(
        !q.has(|e| matches!(e, Effect::MarkDelivered(_))),
        "redelivered: marked already"
    );
    let Reply::Got(Some((d, _))) = q.run(Command::Get {
        channel: chan(1),
        no_ack: true,
    }) else {
        panic!()
    };
    assert!(d.body.resident);
    for _ in 0..2 {
        q.get(true).unwrap();
    }
    let Reply::Got(Some((d, 0))) = q.run(Command::Get {
        channel: chan(1),
        no_ack: true,
    }) else {
        panic!()
    };
    assert_eq!(d.body.id, 4);
    assert!(d.body.resident);
}

#[test]
fn deliveries_coming_back_past_the_budget_are_paged_out() {
    let mut c = cfg(QueueArgs::default());
    c.durable = true;
    c.memory_budget = 250;
    let mut q = Q::with(c);
    q.run(Command::Enqueue((0..4).map(msg).collect()));
    // 0..2 held in memory (330), 3 paged out.
    let base = 3 * 110 + PAGED_WEIGHT;
    assert_eq!(q.q.weight(), base);
    let back = |seq: u64| Delivery {
        seq,
        body: msg(10 + seq as u32),
        redelivered: true,
        expires_ms: None,
        returns: 0,
    };
    // A no-ack delivery never handed over comes back with its body read in.
    q.run(Command::Reinstate(vec![back(100)]));
    assert_eq!(q.q.weight(), base + PAGED_WEIGHT, "reinstated: paged");
    // Under the budget it stays in memory.
    let mut small = cfg(QueueArgs::default());
    small.durable = true;
    small.memory_budget = 1000;
    let mut q2 = Q::with(small);
    q2.run(Command::Reinstate(vec![back(100)]));
    assert_eq!(q2.q.weight(), 110, "under the budget: kept");
    // An ack-mode delivery requeued over the budget, read in when it went out.
    let (seq, _, _) = q.get(false).unwrap();
    assert_eq!(q.q.weight(), base + PAGED_WEIGHT);
    q.run(Command::Requeue(vec![seq]));
    assert_eq!(q.q.weight(), 2 * 110 + 3 * PAGED_WEIGHT, "requeued: paged");
    // A transient message has no row to read back from: it stays in memory.
    let mut t = back(101);
    t.body.stored = false;
    q.run(Command::Reinstate(vec![t]));
    assert_eq!(q.q.weight(), 3 * 110 + 3 * PAGED_WEIGHT);
}
