//! Flow control: a consumer that stops reading its socket stops receiving, instead of making
//! the broker buffer the queue for it.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use warren::protocol::{AMQPClass, basic};

use crate::common::*;

const MESSAGES: usize = 2000;
const SIZE: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_does_not_read_stops_receiving() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "slow").await;

    // A consumer with no prefetch limit that never reads after consume-ok.
    let mut stuck = Raw::connect(&b).await;
    stuck.open(0, 0).await;
    stuck.open_channel(1).await;
    let ok = stuck
        .call(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "slow".into(),
                consumer_tag: "stuck".into(),
                no_local: false,
                no_ack: false,
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

    ch.confirm_select(Default::default()).await.unwrap();
    let body = vec![7u8; SIZE];
    let mut confirms = Vec::new();
    for _ in 0..MESSAGES {
        confirms.push(
            ch.basic_publish(
                "".into(),
                "slow".into(),
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

    // A second consumer gets what the stuck one could not take: everything but the stuck
    // consumer's credit and socket buffers (well under 800 of the 2000 messages, 125 MiB).
    let (_c2, ch2) = channel(&b).await;
    let mut live = ch2
        .basic_consume(
            "slow".into(),
            "live".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = 0;
    while got < MESSAGES - 800 {
        let d = tokio::time::timeout(std::time::Duration::from_secs(30), live.next())
            .await
            .expect("the live consumer keeps receiving")
            .unwrap()
            .unwrap();
        assert_eq!(d.data.len(), SIZE);
        got += 1;
    }
    drop(stuck);
    b.stop().await;
}
