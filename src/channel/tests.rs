//! The channel without sockets, tasks or clocks: table-driven cases for its rules, and the
//! reference model (model.rs) run on random input sequences.

use super::*;
use crate::broker::ids::ConnId;
use crate::broker::message::Message;
use crate::protocol::basic;

use super::model::{entry, queue};

fn channel() -> Channel {
    Channel::new(
        ChannelId {
            conn: ConnId { node: 0, seq: 1 },
            channel: 1,
        },
        true,
    )
}

/// A consumer `tag` on `q`, started; its id.
fn consume(ch: &mut Channel, tag: &str, q: &QueueHandle, no_ack: bool) -> ConsumerId {
    let mut out = Vec::new();
    let c = Consume {
        tag: tag.into(),
        queue: q.clone(),
        no_ack,
        exclusive: false,
        arguments: Default::default(),
        nowait: true,
    };
    ch.handle(Input::Consume(c), &mut out).unwrap();
    match out.pop() {
        Some(Action::Consume(s)) => s.id,
        other => panic!("{other:?}"),
    }
}

fn deliver(ch: &mut Channel, id: &ConsumerId, q: &QueueHandle, seqs: &[u64]) -> Vec<Action> {
    let mut out = Vec::new();
    let input = Input::Deliver {
        consumer: id.clone(),
        no_ack: false,
        queue: q.clone(),
        entries: seqs.iter().map(|&s| entry(s)).collect(),
    };
    ch.handle(input, &mut out).unwrap();
    out
}

/// The settle commands among `acts`: (queue, how, seqs).
fn told(acts: &[Action]) -> Vec<(u64, Settle, Vec<u64>)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Tell(q, QueueCmd::Ack(s)) => Some((q.id, Settle::Ack, s.clone())),
            Action::Tell(q, QueueCmd::Requeue(s)) => Some((q.id, Settle::Requeue, s.clone())),
            Action::Tell(q, QueueCmd::Discard(s)) => Some((q.id, Settle::Discard, s.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn tags_count_from_one_and_settle_ranges() {
    let (q, _rx) = queue(0);
    let mut ch = channel();
    let id = consume(&mut ch, "c", &q, false);
    let acts = deliver(&mut ch, &id, &q, &[10, 11, 12, 13, 14]);
    assert!(matches!(acts[0], Action::Deliver { first_tag: 1, .. }));
    type Case = (Settle, u64, bool, Result<Vec<u64>, u16>);
    let cases: [Case; 7] = [
        (Settle::Ack, 2, false, Ok(vec![11])),
        (Settle::Ack, 2, false, Err(406)),
        (Settle::Requeue, 4, true, Ok(vec![10, 12, 13])),
        (Settle::Ack, 9, true, Err(406)),
        (Settle::Ack, 0, false, Err(406)),
        (Settle::Discard, 0, true, Ok(vec![14])),
        (Settle::Ack, 0, true, Ok(vec![])),
    ];
    for (how, tag, multiple, want) in cases {
        let mut out = Vec::new();
        let got = ch
            .handle(Input::Settle { how, tag, multiple }, &mut out)
            .map(|()| told(&out).into_iter().flat_map(|t| t.2).collect())
            .map_err(|e| e.code());
        assert_eq!(got, want, "tag {tag} multiple {multiple}");
        if let Ok(seqs) = &want
            && !seqs.is_empty()
        {
            assert_eq!(told(&out)[0].1, how);
        }
    }
    assert_eq!(ch.unacked_count(), 0);
}

#[test]
fn settlements_go_to_each_queue_once_in_order() {
    let (a, _ra) = queue(0);
    let (b, _rb) = queue(1);
    let mut ch = channel();
    let ca = consume(&mut ch, "a", &a, false);
    let cb = consume(&mut ch, "b", &b, false);
    deliver(&mut ch, &ca, &a, &[1]);
    deliver(&mut ch, &cb, &b, &[7]);
    deliver(&mut ch, &ca, &a, &[2]);
    let mut out = Vec::new();
    let input = Input::Settle {
        how: Settle::Ack,
        tag: 3,
        multiple: true,
    };
    ch.handle(input, &mut out).unwrap();
    assert_eq!(
        told(&out),
        [(0, Settle::Ack, vec![1, 2]), (1, Settle::Ack, vec![7])]
    );
}

#[test]
fn deliveries_grant_credit_once_written_and_go_back_when_their_consumer_is_gone() {
    let (q, _rx) = queue(0);
    let mut ch = channel();
    let id = consume(&mut ch, "c", &q, false);
    let acts = deliver(&mut ch, &id, &q, &[1, 2, 3]);
    match &acts[..] {
        [
            Action::Deliver { first_tag: 1, .. },
            Action::Grant { limit, .. },
        ] => {
            assert_eq!(
                *limit,
                3 + u64::from(crate::broker::consumer::CONSUMER_CREDIT)
            )
        }
        other => panic!("{other:?}"),
    }
    // A consumer of the same tag since cancelled is not this one: its deliveries go back.
    let stale = ConsumerId {
        serial: id.serial - 1,
        ..id.clone()
    };
    let acts = deliver(&mut ch, &stale, &q, &[4]);
    assert!(matches!(
        &acts[..],
        [Action::Tell(_, QueueCmd::Return { .. })]
    ));
    assert_eq!(ch.unacked_count(), 3);
}

#[test]
fn channel_flow_holds_deliveries_back_until_resumed() {
    let (q, _rx) = queue(0);
    let mut ch = channel();
    let id = consume(&mut ch, "c", &q, false);
    let mut out = Vec::new();
    ch.handle(Input::Flow { active: false }, &mut out).unwrap();
    assert!(deliver(&mut ch, &id, &q, &[1, 2]).is_empty());
    out.clear();
    ch.handle(Input::Flow { active: true }, &mut out).unwrap();
    assert!(matches!(
        &out[..],
        [
            Action::Send(_),
            Action::Deliver { first_tag: 1, .. },
            Action::Grant { .. }
        ]
    ));
}

#[test]
fn modes_exclude_each_other_and_need_selecting() {
    type Case = (&'static [Input], Option<u16>);
    let cases: Vec<Case> = vec![
        (&[Input::TxCommit], Some(406)),
        (&[Input::TxRollback], Some(406)),
        (
            &[Input::TxSelect, Input::ConfirmSelect { nowait: false }],
            Some(406),
        ),
        (
            &[Input::ConfirmSelect { nowait: false }, Input::TxSelect],
            Some(406),
        ),
        (
            &[
                Input::ConfirmSelect { nowait: true },
                Input::ConfirmSelect { nowait: false },
            ],
            None,
        ),
        (&[Input::TxSelect, Input::TxCommit, Input::TxCommit], None),
        (
            &[Input::Recover {
                requeue: false,
                reply: true,
            }],
            Some(540),
        ),
    ];
    for (inputs, want) in cases {
        let mut ch = channel();
        let mut out = Vec::new();
        let mut got = None;
        for i in inputs {
            let i = match i {
                Input::TxCommit => Input::TxCommit,
                Input::TxRollback => Input::TxRollback,
                Input::TxSelect => Input::TxSelect,
                Input::ConfirmSelect { nowait } => Input::ConfirmSelect { nowait: *nowait },
                Input::Recover { requeue, reply } => Input::Recover {
                    requeue: *requeue,
                    reply: *reply,
                },
                other => panic!("{other:?}"),
            };
            got = ch.handle(i, &mut out).err().map(|e| e.code());
        }
        assert_eq!(got, want, "{inputs:?}");
    }
}

#[test]
fn a_rollback_puts_staged_settlements_back_under_their_tags() {
    let (q, _rx) = queue(0);
    let mut ch = channel();
    let id = consume(&mut ch, "c", &q, false);
    deliver(&mut ch, &id, &q, &[1, 2, 3]);
    let mut out = Vec::new();
    ch.handle(Input::TxSelect, &mut out).unwrap();
    let ack = |tag, multiple| Input::Settle {
        how: Settle::Ack,
        tag,
        multiple,
    };
    ch.handle(ack(2, true), &mut out).unwrap();
    // Checked when staged: a tag settled in the transaction is unknown now.
    assert_eq!(ch.handle(ack(1, false), &mut out).unwrap_err().code(), 406);
    ch.handle(Input::TxRollback, &mut out).unwrap();
    assert_eq!(ch.unacked_count(), 3);
    out.clear();
    ch.handle(ack(3, false), &mut out).unwrap();
    assert!(out.is_empty(), "staged, not told");
    ch.handle(Input::TxCommit, &mut out).unwrap();
    match &out[..] {
        [Action::Commit(tx), Action::Send(_)] => {
            assert_eq!(tx.settles.len(), 1);
            assert_eq!(tx.settles[0].deliveries[0].0, 3);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ch.unacked_count(), 2);
}

/// (tag, multiple, nack) of the confirms among `acts`.
fn confirms(acts: &[Action]) -> Vec<(u64, bool, bool)> {
    acts.iter()
        .map(|a| match a {
            Action::Confirm {
                tag,
                multiple,
                nack,
            } => (*tag, *multiple, *nack),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn confirms_go_out_in_publish_order_one_ack_per_run_and_a_nack_per_refused_publish() {
    let (q, _rx) = queue(0);
    let mut ch = channel();
    let mut out = Vec::new();
    ch.handle(Input::ConfirmSelect { nowait: true }, &mut out)
        .unwrap();
    let publish = |ch: &mut Channel, n: usize, token: u64| {
        let mut out = Vec::new();
        for _ in 0..n {
            let p = Routed {
                msg: Arc::new(Message::default()),
                targets: vec![q.clone()],
                mandatory: false,
            };
            ch.handle(Input::Publish(p), &mut out).unwrap();
        }
        ch.handle(Input::Flushed { token }, &mut out).unwrap();
    };
    publish(&mut ch, 5, 1);
    publish(&mut ch, 4, 2);
    publish(&mut ch, 1, 3);
    let settle = |ch: &mut Channel, token, failed, refused: Vec<u64>| {
        let mut out = Vec::new();
        let input = Input::Confirmed {
            token,
            failed,
            refused,
        };
        ch.handle(input, &mut out).unwrap();
        confirms(&out)
    };
    // Flush 2 settles first: it waits behind flush 1.
    assert_eq!(settle(&mut ch, 2, false, vec![9, 6, 7]), []);
    assert_eq!(
        settle(&mut ch, 1, false, vec![3]),
        [
            (2, true, false),
            (3, false, true),
            (5, true, false),
            (6, false, true),
            (7, false, true),
            (8, false, false),
            (9, false, true)
        ]
    );
    assert_eq!(settle(&mut ch, 3, true, vec![]), [(10, false, true)]);
    // A token this channel never flushed changes nothing.
    assert_eq!(settle(&mut ch, 4, false, vec![]), []);
}

#[test]
fn server_sent_cancel_only_to_clients_that_understand_it() {
    for notify in [false, true] {
        let (q, _rx) = queue(0);
        let mut ch = channel();
        ch.cancel_notify = notify;
        let id = consume(&mut ch, "c", &q, false);
        let mut out = Vec::new();
        ch.handle(Input::Cancelled(id.clone()), &mut out).unwrap();
        assert_eq!(
            matches!(
                &out[..],
                [Action::Send(AMQPClass::Basic(basic::AMQPMethod::Cancel(_)))]
            ),
            notify
        );
        // Only once.
        out.clear();
        ch.handle(Input::Cancelled(id), &mut out).unwrap();
        assert!(out.is_empty());
    }
}

#[test]
fn empty_queue_name_means_last_declared() {
    let mut ch = channel();
    assert_eq!(ch.queue_name("").unwrap_err().code(), 404);
    ch.last_queue = Some("a".into());
    assert_eq!(ch.queue_name("").unwrap(), "a");
    assert_eq!(ch.queue_name("b").unwrap(), "b");
}

/// The reference model on random input sequences (the seed is printed on failure).
#[test]
fn the_channel_agrees_with_its_model() {
    for seed in 0..2000u64 {
        let mut rng = crate::test_rng::Rng(seed);
        let len = 3 * (1 + rng.below(200)) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let r = std::panic::catch_unwind(|| super::model::run(&data));
        assert!(r.is_ok(), "seed {seed}");
    }
}

/// The fuzz target's hand-written seeds pass the model too.
#[test]
fn the_fuzz_seeds_agree_with_the_model() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/channel");
    let mut n = 0;
    for f in std::fs::read_dir(dir).unwrap() {
        super::model::run(&std::fs::read(f.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n >= 5);
}
