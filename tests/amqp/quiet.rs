//! Idle quorum queues go quiet: their Raft groups stop ticking (no heartbeats) until
//! something happens, and wake for work and for failures.

use lapin::options::*;

use crate::cluster::TestCluster;
use crate::quorum::{declare_quorum, publish_confirmed, until_led_by, until_status};

const QUEUES: [&str; 6] = ["i0", "i1", "i2", "i3", "i4", "i5"];

fn quiet(q: &serde_json::Value) -> bool {
    q["raft"]["quiet"] == serde_json::json!(true)
}

/// Every replica of an idle queue goes quiet (the status API says so on each node); a
/// quiet queue takes a publish from another node and delivers it; when the node leading
/// quiet queues is killed, the survivors elect new leaders for them and every confirmed
/// message is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_quorum_queues_go_quiet_and_wake_for_work_and_failures() {
    let mut cluster = TestCluster::start(3, "cluster_command_timeout_ms = 3000\n");
    let (_c1, ch1) = cluster.channel(0).await;
    for peer in [2, 3] {
        cluster
            .until_said(0, &format!("node link up peer={peer} "), 0)
            .await;
    }
    let apis = [
        cluster.http(0).await,
        cluster.http(1).await,
        cluster.http(2).await,
    ];
    for name in QUEUES {
        declare_quorum(&ch1, name).await;
        assert_eq!(publish_confirmed(&ch1, name, 0, 5).await, 5);
    }
    for api in apis {
        for name in QUEUES {
            until_status(api, name, "quiet", quiet).await;
        }
    }

    // Work wakes a quiet queue: a publish through node 2 is confirmed, node 3 consumes it.
    let (_c2, ch2) = cluster.channel(1).await;
    assert_eq!(publish_confirmed(&ch2, "i0", 5, 1).await, 1);
    let (_c3, ch3) = cluster.channel(2).await;
    for i in 0..6 {
        let got = ch3
            .basic_get("i0".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("a message");
        assert_eq!(got.delivery.data, format!("m{i}").into_bytes());
    }

    // The queues node 1 leads, quiet everywhere, lose their leader.
    let mut led = Vec::new();
    for name in &QUEUES[1..] {
        let q = until_status(apis[0], name, "quiet", quiet).await;
        if q["leader"] == serde_json::json!(1) {
            led.push(*name);
        }
    }
    assert!(!led.is_empty(), "node 1 leads none of the queues");
    cluster.kill9(0);
    for name in &led {
        until_led_by(apis[1], name, &[2, 3]).await;
        assert_eq!(publish_confirmed(&ch2, name, 5, 1).await, 1);
        assert_eq!(crate::cluster::count(&cluster, 2, name).await, 6, "{name}");
    }
}
