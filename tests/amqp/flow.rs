//! Flow control: a consumer that stops reading its socket stops receiving, instead of making
//! the broker buffer the queue for it.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use warren::broker::consumer::CONSUMER_CREDIT;
use warren::protocol::{AMQPClass, basic};

use crate::common::*;

const MESSAGES: usize = 2000;

/// A consumer (no prefetch limit) that never reads its socket after consume-ok.
async fn stuck_consumer(b: &TestBroker, queue: &str, no_ack: bool) -> Raw {
    let mut stuck = Raw::connect(b).await;
    stuck.open(0, 0).await;
    stuck.open_channel(1).await;
    let ok = stuck
        .call(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue.into(),
                consumer_tag: "stuck".into(),
                no_local: false,
                no_ack,
                exclusive: false,
                nowait: false,
                arguments: Default::default(),
            })),
        )
        .await;
    assert!(
        matches!(ok, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))),
        "{ok:?}"
    );
    stuck
}
const SIZE: usize = 64 * 1024;

/// Publish `n` bodies of `SIZE` to `queue` with confirms: every one is acked.
async fn publish_all(ch: &lapin::Channel, queue: &str, n: usize, props: lapin::BasicProperties) {
    ch.confirm_select(Default::default()).await.unwrap();
    let body = vec![7u8; SIZE];
    let mut confirms = Vec::new();
    for _ in 0..n {
        let c = ch
            .basic_publish(
                "".into(),
                queue.into(),
                Default::default(),
                &body,
                props.clone(),
            )
            .await
            .unwrap();
        confirms.push(c);
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
}

/// A second consumer (no-ack) gets `n` messages, each within 30 s: what the stuck one could
/// not take.
async fn the_rest_goes_to_a_live_consumer(b: &TestBroker, queue: &str, n: usize) {
    let (_c2, ch2) = channel(b).await;
    let opts = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut live = ch2
        .basic_consume(queue.into(), "live".into(), opts, FieldTable::default())
        .await
        .unwrap();
    for _ in 0..n {
        let d = tokio::time::timeout(std::time::Duration::from_secs(30), live.next())
            .await
            .expect("the live consumer keeps receiving")
            .unwrap()
            .unwrap();
        assert_eq!(d.data.len(), SIZE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_does_not_read_stops_receiving() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "slow").await;
    // A consumer with no prefetch limit that never reads after consume-ok.
    let stuck = stuck_consumer(&b, "slow", false).await;
    publish_all(&ch, "slow", MESSAGES, Default::default()).await;
    // Everything but the stuck consumer's credit and socket buffers: well under 800 of the
    // 2000 messages (125 MiB).
    the_rest_goes_to_a_live_consumer(&b, "slow", MESSAGES - 800).await;
    drop(stuck);
    b.stop().await;
}

/// The same for a quorum queue's no-ack consumer, whose credit is in the queue's log: it
/// takes its window (2,000, `quorum/credit.rs`) and what its socket holds, and the rest
/// stays in the queue for others. Before, the log handed it the whole backlog at once,
/// settled (lost with its connection) and read back into memory to wait for a socket that
/// was never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_ack_consumer_of_a_quorum_queue_that_does_not_read_stops_receiving() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    crate::quorum::declare_quorum(&ch, "slowq").await;
    let stuck = stuck_consumer(&b, "slowq", true).await;
    publish_all(&ch, "slowq", 2 * MESSAGES, persistent()).await;
    let left = count(&ch, "slowq").await as usize;
    let took = 2 * MESSAGES - left;
    assert!(took <= MESSAGES + 400, "the stuck consumer took {took}");
    the_rest_goes_to_a_live_consumer(&b, "slowq", MESSAGES - 400).await;
    drop(stuck);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_alarm_blocks_publishers_until_queues_drain() {
    let b = start_with(warren::Config {
        memory_high_watermark_bytes: Some(1 << 20),
        ..warren::Config::default()
    })
    .await;
    let publisher = connect(&b).await;
    let mut events = publisher.events_listener();
    let pch = publisher.create_channel().await.unwrap();
    declare(&pch, "mem").await;
    // Publishing stalls once the broker stops reading, so it runs on its own task.
    let publishing = {
        let pch = pch.clone();
        tokio::spawn(async move {
            let body = vec![1u8; 64 * 1024];
            for _ in 0..20 {
                publish(&pch, "", "mem", &body).await;
            }
        })
    };
    let blocked = crate::common::until_blocked(&mut events).await;
    assert_eq!(blocked, "low on memory");

    // A connection that only consumes is not blocked, and draining clears the alarm.
    let (_c, ch) = channel(&b).await;
    let purged = ch
        .queue_purge("mem".into(), Default::default())
        .await
        .unwrap();
    assert!(purged >= 15, "{purged}");
    crate::common::until_unblocked(&mut events).await;
    // Everything published before and after the alarm went through.
    publishing.await.unwrap();
    publish(&pch, "", "mem", b"after").await;
    assert_eq!(purged + count(&pch, "mem").await, 21);
    b.stop().await;
}

/// Flow control: a publisher faster than its queue's consumer connection can take is paused
/// (its socket is not read) once the queue passes `queue_flow_messages`, instead of growing
/// the queue; it goes on once that consumer is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_outrunning_a_starved_consumer_is_paused() {
    const FLOW: usize = 500;
    const TOTAL: usize = 40_000;
    let b = start_with(warren::Config {
        queue_flow_messages: FLOW,
        writer_buffer_bytes: 64 * 1024,
        ..warren::Config::default()
    })
    .await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "fq").await;
    // An auto-ack consumer that never reads: its connection falls behind on deliveries.
    let stuck = stuck_consumer(&b, "fq", true).await;

    let publisher = connect(&b).await;
    let pch = publisher.create_channel().await.unwrap();
    pch.confirm_select(Default::default()).await.unwrap();
    let publishing = tokio::spawn(async move {
        let body = vec![3u8; 1024];
        let mut confirms = Vec::with_capacity(TOTAL);
        for _ in 0..TOTAL {
            confirms.push(
                pch.basic_publish(
                    "".into(),
                    "fq".into(),
                    Default::default(),
                    &body,
                    Default::default(),
                )
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            assert!(c.await.unwrap().is_ack());
        }
    });
    // Without flow control the 40 MB would be taken in well under this; with it, the
    // publisher cannot finish while the consumer is stuck.
    let mut publishing = publishing;
    let early = tokio::time::timeout(std::time::Duration::from_secs(3), &mut publishing).await;
    assert!(early.is_err(), "the publisher was never paused");
    let held = count(&ch, "fq").await as usize;
    assert!(
        held < 10_000,
        "the queue grew to {held} despite flow control"
    );
    // The stuck consumer goes: no consumer is behind any more, and the publisher finishes.
    drop(stuck);
    tokio::time::timeout(std::time::Duration::from_secs(60), publishing)
        .await
        .expect("the publisher finishes once the consumer is gone")
        .unwrap();
    let left = count(&ch, "fq").await as usize;
    assert!(left > TOTAL - 10_000 && left <= TOTAL, "{left}");
    b.stop().await;
}

/// Deliveries that come back to a queue over its paging budget are paged out like new
/// messages. No-ack deliveries held back by channel.flow and then cancelled came back in
/// memory (their bodies read back from disk), and 512 of them tripped the memory alarm with
/// nothing left to drain it: every connection that had published was blocked for good. (On a
/// loaded machine, deliveries in flight to a cancelled consumer did the same: a flaky hang
/// of `a_backlog_larger_than_memory_pages_to_disk`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_coming_back_over_the_budget_are_paged_out() {
    let (b, _c, ch) = paging_broker("back").await;
    let body = vec![5u8; 1024];
    let mut confirms = Vec::new();
    for _ in 0..MESSAGES {
        confirms.push(
            ch.basic_publish(
                "".into(),
                "back".into(),
                Default::default(),
                &body,
                persistent(),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
    // A no-ack consumer on a channel with flow off: the queue hands it its credit's worth
    // (bodies read back from disk), which its channel holds back.
    let (_c2, ch2) = channel(&b).await;
    ch2.channel_flow(ChannelFlowOptions { active: false })
        .await
        .unwrap();
    let held = consume(&ch2, "back", "held", true).await;
    while count(&ch, "back").await as usize > MESSAGES - CONSUMER_CREDIT as usize {}
    ch2.basic_cancel(held.tag(), Default::default())
        .await
        .unwrap();
    // They came back before cancel-ok; the publisher's connection is still read.
    let back = tokio::time::timeout(std::time::Duration::from_secs(10), count(&ch, "back"))
        .await
        .expect("the publisher's connection is not blocked");
    assert_eq!(back as usize, MESSAGES);
    b.stop().await;
}
