//! Channel state without sockets: tags, settlement, confirms, transactions, credit.

use super::*;
use crate::broker::vhost::{QueueDecl, VHost};

fn entry(seq: u64) -> Entry {
    Entry {
        seq,
        msg: Arc::new(crate::broker::message::Message::default()),
        redelivered: false,
        expires_ms: None,
    }
}

async fn queue() -> QueueHandle {
    let settings = crate::broker::vhost::QueueSettings {
        inbox: 8,
        memory_budget: 1 << 20,
        flow_messages: 1 << 16,
        quorum: Default::default(),
    };
    let v = VHost::new(
        "/",
        settings,
        Arc::new(crate::broker::memory::MemoryMonitor::new(0)),
        None,
        0,
    );
    let d = QueueDecl {
        name: "q".into(),
        ..Default::default()
    };
    v.declare_queue(&d, crate::broker::ids::ConnId { node: 0, seq: 1 })
        .await
        .unwrap()
}

fn seqs(s: Settled) -> Vec<u64> {
    match s {
        Settled::Now(v) => v.iter().map(|u| u.seq).collect(),
        Settled::Staged => panic!("staged"),
    }
}

#[tokio::test]
async fn tags_count_from_one_and_settle_ranges() {
    let q = queue().await;
    let mut ch = Channel::default();
    let tags: Vec<u64> = (0..5)
        .map(|s| ch.deliver(&q, &entry(s), false, true))
        .collect();
    assert_eq!(tags, vec![1, 2, 3, 4, 5]);
    let cases: [(u64, bool, Result<Vec<u64>, u16>); 6] = [
        (2, false, Ok(vec![1])),
        (2, false, Err(406)),
        (4, true, Ok(vec![0, 2, 3])),
        (9, true, Err(406)),
        (0, false, Err(406)),
        (0, true, Ok(vec![4])),
    ];
    for (tag, multiple, want) in cases {
        let got = ch
            .settle(Settle::Ack, tag, multiple)
            .map(seqs)
            .map_err(|e| e.code());
        assert_eq!(got, want, "tag {tag} multiple {multiple}");
    }
    assert_eq!(ch.unacked_count(), 0);
}

#[tokio::test]
async fn no_ack_deliveries_are_not_tracked() {
    let q = queue().await;
    let mut ch = Channel::default();
    let t = ch.deliver(&q, &entry(0), true, false);
    assert_eq!(ch.settle(Settle::Ack, t, false).unwrap_err().code(), 406);
}

#[tokio::test]
async fn a_transaction_stages_settlements_and_a_rollback_puts_them_back() {
    let q = queue().await;
    let mut ch = Channel::default();
    assert_eq!(ch.commit().unwrap_err().code(), 406);
    assert_eq!(ch.rollback().unwrap_err().code(), 406);
    ch.tx_select().unwrap();
    for s in 0..3 {
        ch.deliver(&q, &entry(s), false, true);
    }
    assert!(matches!(
        ch.settle(Settle::Ack, 2, true),
        Ok(Settled::Staged)
    ));
    // Checked when staged: a tag settled in the transaction is unknown now.
    assert_eq!(ch.settle(Settle::Ack, 1, false).unwrap_err().code(), 406);
    ch.rollback().unwrap();
    assert_eq!(ch.unacked_count(), 3);
    assert!(matches!(
        ch.settle(Settle::Requeue, 3, false),
        Ok(Settled::Staged)
    ));
    let tx = ch.commit().unwrap();
    assert_eq!(tx.settles.len(), 1);
    assert_eq!(tx.settles[0].deliveries[0].0, 3);
    assert_eq!(ch.unacked_count(), 2);
    // Still transactional after a commit; confirm mode is refused.
    assert!(ch.commit().unwrap().settles.is_empty());
    assert_eq!(ch.confirm_select().unwrap_err().code(), 406);
}

#[test]
fn confirm_tags_count_from_one_and_exclude_transactions() {
    let mut ch = Channel::default();
    assert_eq!(ch.next_publish(), None);
    ch.confirm_select().unwrap();
    ch.confirm_select().unwrap();
    assert!(ch.confirming());
    assert_eq!([ch.next_publish(), ch.next_publish()], [Some(1), Some(2)]);
    assert_eq!(ch.tx_select().unwrap_err().code(), 406);
}

#[tokio::test]
async fn consumers_get_credit_as_deliveries_are_written() {
    let q = queue().await;
    let mut ch = Channel::default();
    let tag: Arc<str> = "c".into();
    let (serial, flow) = ch.add_consumer(&tag, &q, false).unwrap();
    assert_eq!(
        flow.limit(),
        u64::from(crate::broker::consumer::CONSUMER_CREDIT)
    );
    assert_eq!(ch.add_consumer(&tag, &q, false).unwrap_err().code(), 530);
    let id = crate::broker::ids::ConsumerId {
        channel: crate::broker::ids::ChannelId {
            conn: crate::broker::ids::ConnId { node: 0, seq: 1 },
            channel: 1,
        },
        tag: tag.clone(),
        serial,
    };
    let g = ch.written(&id, 10).unwrap();
    assert_eq!(
        g.limit,
        10 + u64::from(crate::broker::consumer::CONSUMER_CREDIT)
    );
    // A consumer of the same tag since cancelled is not this one.
    let old = crate::broker::ids::ConsumerId {
        serial: serial - 1,
        ..id.clone()
    };
    assert!(ch.written(&old, 1).is_none());
    assert!(!ch.remove_consumer(&old));
    assert!(ch.remove_consumer(&id));
    assert!(!ch.is_current(&id));
}

#[test]
fn channel_flow_parks_and_resumes() {
    let mut ch = Channel::default();
    assert!(ch.set_flow(false).is_empty());
    assert!(!ch.active);
    assert!(ch.set_flow(true).is_empty());
    assert!(ch.active);
}

#[test]
fn empty_queue_name_means_last_declared() {
    let mut ch = Channel::default();
    assert_eq!(ch.queue_name("").unwrap_err().code(), 404);
    ch.last_queue = Some("a".into());
    assert_eq!(ch.queue_name("").unwrap(), "a");
    assert_eq!(ch.queue_name("b").unwrap(), "b");
}
