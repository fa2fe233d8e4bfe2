//! `Topology` under arbitrary declare/bind/unbind/delete/member/node-down sequences over a
//! few names (so they collide): no panic, the binding indexes stay consistent, a refused
//! command changes nothing, and the image of the topology installed over a copy that fell
//! behind (or a new one) gives the same topology.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren::broker::exchange::DestName;
use warren::broker::topology::{
    BindDecl, Changes, Cmd, ExchangeDecl, QueueDecl, Quorum, Topology,
};
use warren::protocol::{AMQPValue, FieldTable};

const NAMES: &[&str] = &["a", "b", "c", "", "amq.direct", "amq.x", "q"];
const KINDS: &[&str] = &["direct", "fanout", "topic", "headers", "bogus"];

fn pick<'a>(b: &mut &[u8], from: &[&'a str]) -> &'a str {
    from[usize::from(byte(b)) % from.len()]
}

fn byte(b: &mut &[u8]) -> u8 {
    let (x, rest) = b.split_first().map_or((0, &[][..]), |(x, r)| (*x, r));
    *b = rest;
    x
}

fuzz_target!(|data: &[u8]| {
    let mut b = data;
    let mut t = Topology::new("/", &mut Changes::default());
    // A follower that installs the leader's image now and then.
    let mut behind = Topology::new("/", &mut Changes::default());
    for _ in 0..128 {
        if b.is_empty() {
            break;
        }
        let op = byte(&mut b);
        let flags = byte(&mut b);
        let conn = warren::broker::ids::ConnId {
            node: u64::from(flags >> 7),
            seq: 1,
        };
        let name = pick(&mut b, NAMES).to_string();
        let cmd = match op % 9 {
            0 => Cmd::DeclareExchange(ExchangeDecl {
                name,
                kind: pick(&mut b, KINDS).into(),
                passive: flags & 1 != 0,
                durable: flags & 2 != 0,
                auto_delete: flags & 4 != 0,
                internal: flags & 8 != 0,
                arguments: Default::default(),
            }),
            1 => Cmd::DeleteExchange {
                name,
                if_unused: flags & 1 != 0,
            },
            2 | 3 => {
                let target = pick(&mut b, NAMES);
                let dest = if flags & 16 != 0 {
                    DestName::Exchange(target.into())
                } else {
                    DestName::Queue(target.into())
                };
                let decl = BindDecl {
                    source: name,
                    dest,
                    key: pick(&mut b, NAMES).into(),
                    arguments: Default::default(),
                };
                if op % 9 == 2 {
                    Cmd::Bind(decl, conn)
                } else {
                    Cmd::Unbind(decl, conn)
                }
            }
            4 => Cmd::DeclareQueue(
                QueueDecl {
                    name,
                    passive: flags & 1 != 0,
                    durable: flags & 2 != 0,
                    exclusive: flags & 4 != 0,
                    auto_delete: flags & 8 != 0,
                    arguments: queue_type(flags),
                    // Placed as a declaring node would place a quorum queue (or not at all).
                    quorum: (flags & 64 != 0)
                        .then(|| Quorum::new(u64::from(flags) | 1, vec![1, 2, 3])),
                },
                conn,
            ),
            5 => Cmd::DeclareServerNamed(
                QueueDecl {
                    name: format!("amq.gen-{}", flags % 4),
                    ..Default::default()
                },
                conn,
            ),
            6 => Cmd::QueueDeleted {
                name: name.as_str().into(),
                id: u64::from(flags % 8),
            },
            7 => {
                // Cluster nodes are numbered from 1 (node 0 is a single node, alone).
                let members: Vec<u64> = (1..5).filter(|n| flags & (1 << (n - 1)) != 0).collect();
                // With the members' Raft ids, or without (an entry logged before them).
                let ids = match flags & 64 != 0 {
                    true => members.iter().map(|n| n | u64::from(flags) << 32).collect(),
                    false => Vec::new(),
                };
                Cmd::QueueMembers {
                    name: name.as_str().into(),
                    id: u64::from(flags >> 4 & 7),
                    members,
                    ids,
                }
            }
            8 if flags & 8 != 0 => Cmd::NodeWiped {
                node: 1 + u64::from(flags & 3),
            },
            _ => Cmd::NodeDown {
                node: u64::from(flags & 3),
            },
        };
        let before = format!("{t:?}");
        if t.apply(cmd).is_err() {
            assert_eq!(
                format!("{t:?}"),
                before,
                "a refused command changed the topology"
            );
        }
        if let Err(e) = t.check() {
            panic!("invariant broken: {e}");
        }
        if op & 0x80 != 0 {
            let image = t.image();
            behind.install(image.clone());
            assert_eq!(behind.image(), image, "installed over a copy behind");
            if let Err(e) = behind.check() {
                panic!("invariant broken after install: {e}");
            }
        }
    }
    let image = t.image();
    let mut fresh = Topology::new("/", &mut Changes::default());
    fresh.install(image.clone());
    assert_eq!(fresh.image(), image, "installed over a new topology");
});

/// x-queue-type from the flags: none, classic, quorum, or an unknown type.
fn queue_type(flags: u8) -> FieldTable {
    let mut t = FieldTable::default();
    let kind = match (flags >> 4) & 3 {
        0 => return t,
        1 => "classic",
        2 => "quorum",
        _ => "stream",
    };
    t.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    t
}
