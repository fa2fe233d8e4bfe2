use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::FieldTable;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_get_and_consume_round_trip() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "q1").await;
    publish(&ch, "", "q1", b"hello").await;
    assert_eq!(count(&ch, "q1").await, 1);
    assert_eq!(get_body(&ch, "q1").await.as_deref(), Some(&b"hello"[..]));
    assert_eq!(get_body(&ch, "q1").await, None);

    let mut consumer = ch
        .basic_consume(
            "q1".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..10u8 {
        publish(&ch, "", "q1", &[i]).await;
    }
    for i in 0..10u8 {
        let d = consumer.next().await.unwrap().unwrap();
        assert_eq!(d.data, vec![i]);
        assert!(!d.redelivered);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let _ = BasicProperties::default();
    b.stop().await;
}
