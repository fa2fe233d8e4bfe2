//! Topology rules, one table or case per rule, without a broker: commands in, replies,
//! changes and store rows out.

use super::*;
use crate::protocol::AMQPValue;
use crate::store::StoredBinding;

fn conn(seq: u64) -> ConnId {
    ConnId { node: 0, seq }
}

fn topo() -> Topology {
    Topology::new("/", &mut Changes::default())
}

fn x(name: &str, kind: &str) -> ExchangeDecl {
    ExchangeDecl {
        name: name.into(),
        kind: kind.into(),
        durable: true,
        ..Default::default()
    }
}

fn q(name: &str) -> QueueDecl {
    QueueDecl {
        name: name.into(),
        durable: true,
        ..Default::default()
    }
}

fn bind(source: &str, dest: DestName, key: &str) -> BindDecl {
    BindDecl {
        source: source.into(),
        dest,
        key: key.into(),
        arguments: FieldTable::default(),
    }
}

fn queue_dest(name: &str) -> DestName {
    DestName::Queue(name.into())
}

fn exchange_dest(name: &str) -> DestName {
    DestName::Exchange(name.into())
}

/// The reply code of a refused command, or 0 with the changes of an accepted one.
fn run(t: &mut Topology, cmd: Cmd) -> (u16, Changes) {
    match t.apply(cmd) {
        Ok((_, ch)) => (0, ch),
        Err(e) => (e.code(), Changes::default()),
    }
}

fn code(t: &mut Topology, cmd: Cmd) -> u16 {
    run(t, cmd).0
}

fn ops(ch: &Changes) -> Vec<&'static str> {
    ch.ops
        .iter()
        .map(|op| match op {
            Op::PutExchange(_) => "put exchange",
            Op::DeleteExchange { .. } => "delete exchange",
            Op::PutQueue(_) => "put queue",
            Op::PutBinding(_) => "put binding",
            Op::DeleteBinding(_) => "delete binding",
            _ => "other",
        })
        .collect()
}

#[test]
fn exchange_declare_rules() {
    let mut t = topo();
    assert_eq!(code(&mut t, Cmd::DeclareExchange(x("x", "topic"))), 0);
    let redeclares = [
        (x("x", "topic"), 0),
        (x("x", "fanout"), 406),
        (
            ExchangeDecl {
                durable: false,
                ..x("x", "topic")
            },
            406,
        ),
        (
            ExchangeDecl {
                auto_delete: true,
                ..x("x", "topic")
            },
            406,
        ),
        (
            ExchangeDecl {
                internal: true,
                ..x("x", "topic")
            },
            406,
        ),
        (
            ExchangeDecl {
                passive: true,
                ..x("x", "")
            },
            0,
        ),
        (
            ExchangeDecl {
                passive: true,
                ..x("nope", "")
            },
            404,
        ),
        (x("amq.mine", "direct"), 403),
        (x("", "direct"), 403),
        (x("y", "bogus"), 503),
        (
            ExchangeDecl {
                passive: true,
                ..x("amq.topic", "")
            },
            0,
        ),
    ];
    for (d, want) in redeclares {
        assert_eq!(code(&mut t, Cmd::DeclareExchange(d.clone())), want, "{d:?}");
    }
}

#[test]
fn only_durable_exchanges_are_stored() {
    let mut t = topo();
    let (_, ch) = run(&mut t, Cmd::DeclareExchange(x("d", "direct")));
    assert_eq!(ops(&ch), ["put exchange"]);
    assert!(matches!(&ch.list[..], [Change::ExchangeAdded(d)] if &*d.name == "d"));
    let transient = ExchangeDecl {
        durable: false,
        ..x("t", "direct")
    };
    let (_, ch) = run(&mut t, Cmd::DeclareExchange(transient));
    assert!(ops(&ch).is_empty());
    // A redeclare changes nothing.
    let (_, ch) = run(&mut t, Cmd::DeclareExchange(x("d", "direct")));
    assert!(ch.list.is_empty() && ch.ops.is_empty());
}

#[test]
fn exchange_delete_rules() {
    let mut t = topo();
    let del = |name: &str, if_unused| Cmd::DeleteExchange {
        name: name.into(),
        if_unused,
    };
    assert_eq!(code(&mut t, del("", false)), 403);
    assert_eq!(code(&mut t, del("amq.direct", false)), 403);
    assert_eq!(code(&mut t, del("missing", false)), 0);
    run(&mut t, Cmd::DeclareExchange(x("x", "direct")));
    run(&mut t, Cmd::DeclareQueue(q("q"), conn(1)));
    run(&mut t, Cmd::Bind(bind("x", queue_dest("q"), "k"), conn(1)));
    assert_eq!(code(&mut t, del("x", true)), 406);
    let (c, ch) = run(&mut t, del("x", false));
    assert_eq!(c, 0);
    assert_eq!(ops(&ch), ["delete binding", "delete exchange"]);
    assert_eq!(
        code(&mut t, Cmd::Bind(bind("x", queue_dest("q"), "k"), conn(1))),
        404
    );
}

#[test]
fn bind_rules() {
    let mut t = topo();
    run(&mut t, Cmd::DeclareExchange(x("x", "direct")));
    run(&mut t, Cmd::DeclareQueue(q("q"), conn(1)));
    let excl = QueueDecl {
        exclusive: true,
        ..q("mine")
    };
    run(&mut t, Cmd::DeclareQueue(excl, conn(1)));
    let cases = [
        (bind("x", queue_dest("q"), "k"), 1, 0),
        (bind("missing", queue_dest("nope"), "k"), 1, 404),
        (bind("missing", queue_dest("q"), "k"), 1, 404),
        (bind("", queue_dest("q"), "k"), 1, 403),
        (bind("x", exchange_dest(""), "k"), 1, 403),
        (bind("x", queue_dest("mine"), "k"), 2, 405),
        (bind("x", queue_dest("mine"), "k"), 1, 0),
        (bind("x", exchange_dest("amq.fanout"), "k"), 1, 0),
        (bind("x", exchange_dest("missing"), "k"), 1, 404),
    ];
    for (b, from, want) in cases {
        assert_eq!(
            code(&mut t, Cmd::Bind(b.clone(), conn(from))),
            want,
            "{b:?} from {from}"
        );
    }
    // The same binding again changes nothing.
    let (_, ch) = run(&mut t, Cmd::Bind(bind("x", queue_dest("q"), "k"), conn(1)));
    assert!(ch.list.is_empty());
}

#[test]
fn a_binding_is_stored_only_between_durable_ends() {
    let mut t = topo();
    run(&mut t, Cmd::DeclareExchange(x("dx", "direct")));
    let tx = ExchangeDecl {
        durable: false,
        ..x("tx", "direct")
    };
    run(&mut t, Cmd::DeclareExchange(tx));
    run(&mut t, Cmd::DeclareQueue(q("dq"), conn(1)));
    let tq = QueueDecl {
        durable: false,
        ..q("tq")
    };
    run(&mut t, Cmd::DeclareQueue(tq, conn(1)));
    let eq = QueueDecl {
        exclusive: true,
        ..q("eq")
    };
    run(&mut t, Cmd::DeclareQueue(eq, conn(1)));
    let cases = [
        ("dx", "dq", true),
        ("dx", "tq", false),
        ("tx", "dq", false),
        ("dx", "eq", false),
    ];
    for (source, dest, stored) in cases {
        let (_, ch) = run(
            &mut t,
            Cmd::Bind(bind(source, queue_dest(dest), "k"), conn(1)),
        );
        assert_eq!(ops(&ch) == ["put binding"], stored, "{source} -> {dest}");
    }
}

#[test]
fn unbinding_the_last_binding_of_an_auto_delete_exchange_deletes_it() {
    let mut t = topo();
    let ad = ExchangeDecl {
        auto_delete: true,
        ..x("ad", "direct")
    };
    run(&mut t, Cmd::DeclareExchange(ad));
    run(&mut t, Cmd::DeclareQueue(q("q"), conn(1)));
    run(&mut t, Cmd::Bind(bind("ad", queue_dest("q"), "a"), conn(1)));
    run(&mut t, Cmd::Bind(bind("ad", queue_dest("q"), "b"), conn(1)));
    let (_, ch) = run(
        &mut t,
        Cmd::Unbind(bind("ad", queue_dest("q"), "a"), conn(1)),
    );
    assert!(
        !ch.list
            .iter()
            .any(|c| matches!(c, Change::ExchangeRemoved(_)))
    );
    // Unbinding what is not there is fine and changes nothing.
    let (c, ch) = run(
        &mut t,
        Cmd::Unbind(bind("ad", queue_dest("q"), "zz"), conn(1)),
    );
    assert_eq!((c, ch.list.len()), (0, 0));
    let (_, ch) = run(
        &mut t,
        Cmd::Unbind(bind("ad", queue_dest("q"), "b"), conn(1)),
    );
    assert!(ch.list.contains(&Change::ExchangeRemoved("ad".into())));
    assert_eq!(ops(&ch), ["delete binding", "delete exchange"]);
}

#[test]
fn queue_declare_rules() {
    let mut t = topo();
    let ttl = |ms: i32| {
        let mut a = FieldTable::default();
        a.insert("x-message-ttl".into(), AMQPValue::LongInt(ms));
        a
    };
    run(
        &mut t,
        Cmd::DeclareQueue(
            QueueDecl {
                arguments: ttl(100),
                ..q("q")
            },
            conn(1),
        ),
    );
    let excl = QueueDecl {
        exclusive: true,
        ..q("ex")
    };
    run(&mut t, Cmd::DeclareQueue(excl.clone(), conn(1)));
    let cases = [
        (
            QueueDecl {
                arguments: ttl(100),
                ..q("q")
            },
            1,
            0,
        ),
        (q("q"), 1, 406),
        (
            QueueDecl {
                arguments: ttl(5),
                ..q("q")
            },
            1,
            406,
        ),
        (
            QueueDecl {
                durable: false,
                arguments: ttl(100),
                ..q("q")
            },
            1,
            406,
        ),
        (
            QueueDecl {
                passive: true,
                ..q("q")
            },
            2,
            0,
        ),
        (
            QueueDecl {
                passive: true,
                ..q("missing")
            },
            1,
            404,
        ),
        (excl.clone(), 1, 0),
        (excl.clone(), 2, 405),
        (
            QueueDecl {
                passive: true,
                ..excl.clone()
            },
            2,
            405,
        ),
        (q("ex"), 1, 405),
        (q("amq.q"), 1, 403),
    ];
    for (d, from, want) in cases {
        assert_eq!(
            code(&mut t, Cmd::DeclareQueue(d.clone(), conn(from))),
            want,
            "{d:?} from {from}"
        );
    }
    let e = t.apply(Cmd::DeclareQueue(q("q"), conn(1))).unwrap_err();
    assert_eq!(
        e.reply_text(),
        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received 'none' but current is '100'"
    );
    // The broker may name queues amq.gen-…; clients may not.
    assert_eq!(
        code(&mut t, Cmd::DeclareServerNamed(q("amq.gen-x"), conn(1))),
        0
    );
    assert_eq!(t.queue("ex", conn(2)).unwrap_err().code(), 405);
    assert_eq!(t.queue("nope", conn(1)).unwrap_err().code(), 404);
}

#[test]
fn new_queues_get_new_ids_and_only_durable_non_exclusive_ones_are_stored() {
    let mut t = topo();
    let declare = |t: &mut Topology, d: QueueDecl| match t.apply(Cmd::DeclareQueue(d, conn(1))) {
        Ok((Reply::Queue(r, created), ch)) => (r.id, created, ops(&ch)),
        other => panic!("{other:?}"),
    };
    assert_eq!(declare(&mut t, q("a")), (1, true, vec!["put queue"]));
    assert_eq!(declare(&mut t, q("a")), (1, false, vec![]));
    let transient = QueueDecl {
        durable: false,
        ..q("b")
    };
    assert_eq!(declare(&mut t, transient), (2, true, vec![]));
    let excl = QueueDecl {
        exclusive: true,
        ..q("c")
    };
    assert_eq!(declare(&mut t, excl), (3, true, vec![]));
}

#[test]
fn a_deleted_queue_takes_its_bindings_and_empties_auto_delete_exchanges() {
    let mut t = topo();
    let ad = ExchangeDecl {
        auto_delete: true,
        ..x("ad", "fanout")
    };
    run(&mut t, Cmd::DeclareExchange(ad));
    run(&mut t, Cmd::DeclareExchange(x("keep", "fanout")));
    run(&mut t, Cmd::DeclareQueue(q("q"), conn(1)));
    run(&mut t, Cmd::Bind(bind("ad", queue_dest("q"), ""), conn(1)));
    run(
        &mut t,
        Cmd::Bind(bind("keep", queue_dest("q"), ""), conn(1)),
    );
    let id = t.queue("q", conn(1)).unwrap().id;
    // A stale report (another queue of that name since) changes nothing.
    let (_, ch) = run(
        &mut t,
        Cmd::QueueDeleted {
            name: "q".into(),
            id: id + 1,
        },
    );
    assert!(ch.list.is_empty());
    let (_, ch) = run(
        &mut t,
        Cmd::QueueDeleted {
            name: "q".into(),
            id,
        },
    );
    assert!(ch.list.contains(&Change::QueueRemoved("q".into())));
    assert!(ch.list.contains(&Change::ExchangeRemoved("ad".into())));
    assert!(!ch.list.contains(&Change::ExchangeRemoved("keep".into())));
    let mut rows = ops(&ch);
    rows.sort_unstable();
    assert_eq!(
        rows,
        ["delete binding", "delete binding", "delete exchange"]
    );
    assert_eq!(t.queue("q", conn(1)).unwrap_err().code(), 404);
}

#[test]
fn exchange_to_exchange_bindings_go_with_either_end() {
    let mut t = topo();
    for name in ["a", "b", "c"] {
        run(&mut t, Cmd::DeclareExchange(x(name, "fanout")));
    }
    run(
        &mut t,
        Cmd::Bind(bind("a", exchange_dest("b"), ""), conn(1)),
    );
    run(
        &mut t,
        Cmd::Bind(bind("b", exchange_dest("c"), ""), conn(1)),
    );
    let (_, ch) = run(
        &mut t,
        Cmd::DeleteExchange {
            name: "b".into(),
            if_unused: false,
        },
    );
    let unbound: Vec<&str> = ch
        .list
        .iter()
        .filter_map(|c| match c {
            Change::Unbound { source, .. } => Some(&**source),
            _ => None,
        })
        .collect();
    assert_eq!(unbound.len(), 2, "{unbound:?}");
    assert!(unbound.contains(&"a") && unbound.contains(&"b"));
    assert!(!t.has_bindings("a"));
}

#[test]
fn restore_rebuilds_without_writing_and_skips_what_is_incomplete() {
    let mut t = topo();
    let mut ch = Changes::default();
    let stored_q = crate::store::StoredQueue {
        group: None,
        vhost: "/".into(),
        name: "q".into(),
        id: 7,
        auto_delete: false,
        arguments: FieldTable::default(),
    };
    let binding = |source: &str, dest: &str| StoredBinding {
        vhost: "/".into(),
        source: source.into(),
        to_queue: true,
        destination: dest.into(),
        routing_key: "k".into(),
        arguments: FieldTable::default(),
    };
    t.restore(
        vec![],
        vec![stored_q],
        vec![
            binding("amq.direct", "q"),
            binding("gone", "q"),
            binding("amq.direct", "gone"),
        ],
        &mut ch,
    );
    assert!(ch.ops.is_empty());
    let bound = ch
        .list
        .iter()
        .filter(|c| matches!(c, Change::Bound { .. }))
        .count();
    assert_eq!(bound, 1);
    // New queues are numbered after the recovered ones.
    match t.apply(Cmd::DeclareQueue(q("new"), conn(1))) {
        Ok((Reply::Queue(r, true), _)) => assert_eq!(r.id, 8),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_node_down_takes_its_exclusive_and_transient_queues_only() {
    let mut t = topo();
    let on = |node: u64| ConnId { node, seq: 1 };
    let decls = [
        ("ex2", on(2), true, false),
        ("tq2", on(2), false, false),
        ("dq2", on(2), false, true),
        ("tq1", on(1), false, false),
    ];
    for (name, c, exclusive, durable) in decls {
        let d = QueueDecl {
            exclusive,
            durable,
            ..q(name)
        };
        run(&mut t, Cmd::DeclareQueue(d, c));
    }
    run(
        &mut t,
        Cmd::Bind(bind("amq.direct", queue_dest("tq2"), "k"), on(2)),
    );
    let (_, ch) = run(&mut t, Cmd::NodeDown { node: 2 });
    // Removed in declaration order, bindings with them; nothing is written but deletes.
    let what: Vec<String> = ch
        .list
        .iter()
        .map(|c| match c {
            Change::QueueRemoved(q) => format!("remove {q}"),
            Change::Unbound { source, key, .. } => format!("unbind {source} {:?}", key.dest),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        what,
        [
            "remove ex2",
            "remove tq2",
            "unbind amq.direct Queue(\"tq2\")"
        ]
    );
    assert!(
        ops(&ch).iter().all(|op| op.starts_with("delete")),
        "{:?}",
        ops(&ch)
    );
    for (name, found) in [("ex2", false), ("tq2", false), ("dq2", true), ("tq1", true)] {
        assert_eq!(t.queue(name, on(1)).is_ok(), found, "{name}");
    }
    t.check().unwrap();
    let (_, again) = run(&mut t, Cmd::NodeDown { node: 2 });
    assert!(again.list.is_empty());
}

/// A topology with the quorum queue `name` on `members` (group 7).
fn with_quorum_queue(name: &str, members: &[NodeId]) -> Topology {
    let mut t = topo();
    let mut d = q(name);
    d.arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    d.quorum = Some(Quorum::new(7, members.to_vec()));
    run(&mut t, Cmd::DeclareQueue(d, conn(1)));
    t
}

#[test]
fn a_quorum_queue_takes_new_members_and_stale_changes_change_nothing() {
    let mut t = with_quorum_queue("qq", &[1, 2]);
    run(&mut t, Cmd::DeclareQueue(q("classic"), conn(1)));
    let id = t.queue_record("qq").unwrap().id;
    let members = |name: &str, id: u64, m: &[NodeId]| Cmd::QueueMembers {
        name: name.into(),
        id,
        members: m.to_vec(),
        ids: Vec::new(),
    };
    let (code, ch) = run(&mut t, members("qq", id, &[1, 2, 3]));
    assert_eq!(code, 0);
    match ch.list.as_slice() {
        [Change::QueueMembers { queue, before }] => {
            assert_eq!(before.members, [1, 2]);
            assert_eq!(queue.quorum.as_ref().unwrap().members, [1, 2, 3]);
        }
        other => panic!("{other:?}"),
    }
    // Stale or meaningless: another id, a classic queue, no queue, the same members, none.
    let classic = t.queue_record("classic").unwrap().id;
    for cmd in [
        members("qq", id + 100, &[3]),
        members("classic", classic, &[3]),
        members("none", 1, &[3]),
        members("qq", id, &[1, 2, 3]),
        members("qq", id, &[]),
    ] {
        let (code, ch) = run(&mut t, cmd);
        assert_eq!((code, ch.list.len(), ch.ops.len()), (0, 0, 0));
    }
    assert_eq!(
        t.queue_record("qq")
            .unwrap()
            .quorum
            .as_ref()
            .unwrap()
            .members,
        [1, 2, 3]
    );
}

/// A member that joins gets a Raft id of its own, the same if the join is asked again, a
/// new one after any change; members that stay keep theirs; entries logged before members
/// had their own ids (none given) keep the node ids.
#[test]
fn a_member_that_joins_again_gets_a_new_raft_id() {
    let mut t = with_quorum_queue("qq", &[1, 2]);
    let id = t.queue_record("qq").unwrap().id;
    let placement = |t: &Topology| t.queue_record("qq").unwrap().quorum.clone().unwrap();
    let set = |members: &[NodeId], ids: Vec<u64>| Cmd::QueueMembers {
        name: "qq".into(),
        id,
        members: members.to_vec(),
        ids,
    };
    let p = placement(&t);
    assert_eq!(
        p.raft_ids(),
        [1, 2],
        "a new group's members: their node ids"
    );
    let three = p.next_raft_id(3);
    assert_eq!(p.next_raft_id(3), three, "asked again: the same id");
    assert!(
        three != 3 && crate::cluster::node_of(three) == 3,
        "{three:#x}"
    );
    // Grow onto 3, shrink off 3, grow onto 3 again: a new id each time it joins.
    run(&mut t, set(&[1, 2, 3], vec![1, 2, three]));
    assert_eq!(placement(&t).raft_id_of(3), Some(three));
    run(&mut t, set(&[1, 2], vec![1, 2]));
    let again = placement(&t).next_raft_id(3);
    assert!(again != three && crate::cluster::node_of(again) == 3);
    run(&mut t, set(&[1, 2, 3], vec![1, 2, again]));
    assert_eq!(placement(&t).raft_ids(), [1, 2, again]);
    // An entry without ids (logged before): who stays keeps its id, who joins gets its node
    // id.
    run(&mut t, set(&[2, 3, 4], Vec::new()));
    assert_eq!(placement(&t).raft_ids(), [2, again, 4]);
}
