//! Deliveries that come back from consumers, as quorum queues count them: the delivery
//! count, the delivery limit, and an explicit requeue to the tail.

use super::tests::{Q, cfg, chan, msg};
use super::*;
use crate::broker::args::QueueArgs;

fn queue(limit: Option<u32>, to_tail: bool) -> Q {
    let mut c = cfg(QueueArgs::default());
    c.delivery_limit = limit;
    c.requeue_to_tail = to_tail;
    Q::with(c)
}

/// basic.get on channel 9: (message id, times returned before, redelivered).
fn get(q: &mut Q) -> Option<(u32, u32, bool, u64)> {
    let got = q.run(Command::Get {
        channel: chan(9),
        no_ack: false,
    });
    match got {
        Reply::Got(g) => g.map(|(d, _)| (d.body.id, d.returns, d.redelivered, d.seq)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn returns_are_counted_and_a_message_past_the_limit_is_dropped() {
    let mut q = queue(Some(1), false);
    q.run(Command::Enqueue(vec![msg(1), msg(2)]));
    let (id, returns, redelivered, seq) = get(&mut q).unwrap();
    assert_eq!((id, returns, redelivered), (1, 0, false));
    q.run(Command::Requeue(vec![seq]));
    // Back at its place (a limit is set), counted once.
    let (id, returns, redelivered, seq) = get(&mut q).unwrap();
    assert_eq!((id, returns, redelivered), (1, 1, true));
    // Its channel goes: that counts too, and past the limit of 1 it is dropped.
    q.run(Command::ChannelDown(chan(9)));
    let _ = seq;
    let (id, returns, ..) = get(&mut q).unwrap();
    assert_eq!((id, returns), (2, 0));
    assert_eq!(get(&mut q), None);
}

#[test]
fn an_explicit_requeue_goes_to_the_tail_when_the_queue_says_so() {
    let mut q = queue(None, true);
    q.run(Command::Enqueue(vec![msg(1), msg(2), msg(3)]));
    let (_, _, _, seq) = get(&mut q).unwrap();
    q.run(Command::Requeue(vec![seq]));
    let order: Vec<(u32, u32)> = (0..3)
        .map(|_| {
            let (id, returns, ..) = get(&mut q).unwrap();
            (id, returns)
        })
        .collect();
    assert_eq!(order, vec![(2, 0), (3, 0), (1, 1)]);
    // A channel that goes returns what it held to where it was (in queue order), not to
    // the tail; each counted once more.
    q.run(Command::ChannelDown(chan(9)));
    let order: Vec<(u32, u32, bool)> = (0..3)
        .map(|_| {
            let (id, returns, redelivered, _) = get(&mut q).unwrap();
            (id, returns, redelivered)
        })
        .collect();
    assert_eq!(order, vec![(2, 1, true), (3, 1, true), (1, 2, true)]);
    // Without a limit nothing is dropped, however often it comes back.
    for _ in 0..5 {
        q.run(Command::ChannelDown(chan(9)));
    }
    assert!(get(&mut q).is_some());
}
