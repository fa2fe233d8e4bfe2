//! The link's frame encoding, and two nodes' links carrying frames both ways at once.

use super::*;

#[test]
fn frames_round_trip_and_split_anywhere() {
    let frames = [
        Frame::Hello {
            cluster: 7,
            node: 3,
        },
        Frame::Heartbeat,
        Frame::Raft {
            group: 0,
            msg: Bytes::from_static(b"\x08\x01raft"),
        },
        Frame::Raft {
            group: u64::MAX,
            msg: Bytes::new(),
        },
        Frame::Forward(Bytes::from_static(b"work")),
        Frame::Rejoin {
            raft_id: 3 | 7 << 32,
        },
        Frame::RaftPart {
            kind: Kind::Raft,
            group: 4,
            total: 9,
            offset: 5,
            data: Bytes::from_static(b"part"),
        },
        Frame::RaftPart {
            kind: Kind::Kept,
            group: 4,
            total: 9,
            offset: 0,
            data: Bytes::from_static(b"kept"),
        },
        Frame::Kept {
            group: 5,
            msg: Bytes::from_static(b"chunk"),
        },
        Frame::KeptAck {
            group: 5,
            index: 10,
            seq: u64::MAX,
        },
    ];
    let mut all = BytesMut::new();
    for f in &frames {
        f.encode(&mut all);
    }
    for cut in 0..all.len() {
        let mut buf = BytesMut::from(&all[..cut]);
        let mut got = Vec::new();
        while let Some(f) = Frame::decode(&mut buf).unwrap() {
            got.push(f);
        }
        buf.extend_from_slice(&all[cut..]);
        while let Some(f) = Frame::decode(&mut buf).unwrap() {
            got.push(f);
        }
        assert_eq!(got, frames, "cut at {cut}");
        assert!(buf.is_empty());
    }
}

/// Two nodes' links, on free loopback ports.
async fn pair() -> [(
    Arc<Links>,
    mpsc::UnboundedReceiver<Inbound>,
    mpsc::Receiver<Inbound>,
); 2] {
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        })
        .collect();
    let peers: BTreeMap<u64, SocketAddr> = (1..=2)
        .map(|id| {
            (
                id,
                SocketAddr::from(([127, 0, 0, 1], ports[id as usize - 1])),
            )
        })
        .collect();
    let mut out = Vec::new();
    for id in 1..=2 {
        let cfg = ClusterConfig {
            node_id: id,
            listen: peers[&id],
            peers: peers.clone(),
            command_timeout: Duration::from_secs(5),
            peer_timeout: Duration::from_secs(1),
            snapshot_bytes: 1 << 20,
            pending_bytes: 1 << 20,
            meta_snapshot_entries: 1000,
            raft_id: id,
        };
        let (inbound, raft) = mpsc::channel(16);
        let (fwd_tx, fwd_rx) = mpsc::unbounded_channel();
        let links = Links::start(&cfg, inbound, fwd_tx).await.unwrap();
        out.push((links, fwd_rx, raft));
    }
    out.try_into().ok().unwrap()
}

/// The session of `links`' link to `peer`, once it is up.
async fn session(links: &Links, peer: u64) -> Session {
    let mut up = links.up();
    loop {
        if let Some(Some(s)) = up.borrow_and_update().get(&peer) {
            return *s;
        }
        up.changed().await.unwrap();
    }
}

/// Both ends sending more than the sockets buffer at once: each end must go on reading
/// while its writes wait, or both wait on each other for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_full_both_ways_keeps_moving() {
    const FRAMES: usize = 64;
    let [(l1, r1, _raft1), (l2, r2, _raft2)] = pair().await;
    let (s1, s2) = (session(&l1, 2).await, session(&l2, 1).await);
    let body = Bytes::from(vec![7u8; 1 << 20]);
    let send = |links: Arc<Links>, to: u64, session: Session| {
        let body = body.clone();
        tokio::spawn(async move {
            for _ in 0..FRAMES {
                links.forward(to, session, body.clone()).await;
            }
        })
    };
    let (a, b) = (send(l1.clone(), 2, s1), send(l2.clone(), 1, s2));
    let take = |mut rx: mpsc::UnboundedReceiver<Inbound>| async move {
        let mut bytes = 0;
        for _ in 0..FRAMES {
            match rx.recv().await.map(|m| m.frame) {
                Some(Frame::Forward(b)) => bytes += b.len(),
                other => panic!("unexpected {other:?}"),
            }
        }
        bytes
    };
    let both = async { tokio::join!(take(r1), take(r2)) };
    let (got1, got2) = tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .expect("both directions delivered");
    assert_eq!((got1, got2), (FRAMES << 20, FRAMES << 20));
    a.await.unwrap();
    b.await.unwrap();
}

#[test]
fn malformed_frames_are_errors() {
    let cases: [&[u8]; 7] = [
        &[0, 0, 0, 0],
        &[0xff, 0xff, 0xff, 0xff],
        &[0, 0, 0, 1, 99],
        &[0, 0, 0, 2, HELLO, 0],
        &[0, 0, 0, 3, RAFT, 0, 0],
        &[0, 0, 0, 2, REJOIN, 0],
        &[0, 0, 0, 9, RAFT_PART, 0, 0, 0, 0, 0, 0, 0, 1],
    ];
    for c in cases {
        let mut buf = BytesMut::from(c);
        assert!(Frame::decode(&mut buf).is_err(), "{c:?}");
    }
}
