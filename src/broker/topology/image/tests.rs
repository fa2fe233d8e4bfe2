//! Installing an image is as good as applying the entries: model-based, on random
//! histories. A takes random commands; B is new, or has taken the first of A's, or its
//! own; B then installs A's image. B must equal A (same image, invariants hold), the runtime state that follows
//! B's changes (routers with their binding ids, queues with their ids and members) must
//! equal the one that followed A's, and from then on both answer every command alike.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::*;
use crate::broker::exchange::DestName;
use crate::protocol::AMQPValue;
use crate::test_rng::Rng;

/// What the vhost runtime keeps as it follows changes (`VHost::commit`).
#[derive(Debug, Default, PartialEq)]
struct Runtime {
    routers: BTreeMap<Arc<str>, BTreeMap<BindingId, BindingKey>>,
    queues: BTreeMap<Arc<str>, (u64, Option<Quorum>)>,
}

impl Runtime {
    fn follow(&mut self, ch: &Changes) {
        for c in &ch.list {
            match c {
                Change::ExchangeAdded(def) => {
                    self.routers.insert(def.name.clone(), BTreeMap::new());
                }
                Change::ExchangeRemoved(name) => {
                    self.routers.remove(name);
                }
                Change::Bound {
                    source, key, id, ..
                } => {
                    let dest_there = match &key.dest {
                        DestName::Queue(q) => self.queues.contains_key(q),
                        DestName::Exchange(_) => true,
                    };
                    if let (true, Some(r)) = (dest_there, self.routers.get_mut(source)) {
                        r.insert(*id, key.clone());
                    }
                }
                Change::Unbound { source, id, .. } => {
                    if let Some(r) = self.routers.get_mut(source) {
                        r.remove(id);
                    }
                }
                Change::QueueAdded(q) => {
                    self.queues.insert(q.name.clone(), (q.id, q.quorum.clone()));
                }
                Change::QueueRemoved(name) => {
                    self.queues.remove(name);
                }
                Change::QueueMembers { queue, .. } => {
                    let placement = queue.quorum.clone();
                    self.queues
                        .insert(queue.name.clone(), (queue.id, placement));
                }
            }
        }
    }
}

fn pick<'a>(rng: &mut Rng, from: &[&'a str]) -> &'a str {
    from[rng.below(from.len() as u64) as usize]
}

const EXCHANGES: [&str; 3] = ["x0", "x1", "amq.topic"];
const QUEUES: [&str; 4] = ["q0", "q1", "q2", "q3"];

fn dest(rng: &mut Rng) -> DestName {
    match rng.chance(700) {
        true => DestName::Queue(pick(rng, &QUEUES).into()),
        false => DestName::Exchange(pick(rng, &EXCHANGES).into()),
    }
}

fn command(rng: &mut Rng, t: &Topology) -> Cmd {
    let conn = ConnId {
        node: 1 + rng.below(3),
        seq: rng.below(2),
    };
    let bind = |rng: &mut Rng| BindDecl {
        source: pick(rng, &EXCHANGES).into(),
        dest: dest(rng),
        key: pick(rng, &["a", "b"]).into(),
        arguments: FieldTable::default(),
    };
    match rng.below(10) {
        0 => Cmd::DeclareExchange(ExchangeDecl {
            name: pick(rng, &EXCHANGES).into(),
            kind: pick(rng, &["direct", "fanout", "topic"]).into(),
            durable: rng.chance(500),
            auto_delete: rng.chance(300),
            ..Default::default()
        }),
        1 => Cmd::DeleteExchange {
            name: pick(rng, &EXCHANGES).into(),
            if_unused: rng.chance(500),
        },
        2 | 3 => Cmd::Bind(bind(rng), conn),
        4 => Cmd::Unbind(bind(rng), conn),
        5 => {
            let quorum = rng
                .chance(300)
                .then(|| Quorum::new(rng.next() | 1, vec![1, 2]));
            let mut arguments = FieldTable::default();
            if quorum.is_some() {
                arguments.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("quorum".into()),
                );
            }
            Cmd::DeclareQueue(
                QueueDecl {
                    name: pick(rng, &QUEUES).into(),
                    arguments,
                    durable: quorum.is_some() || rng.chance(500),
                    exclusive: quorum.is_none() && rng.chance(200),
                    auto_delete: quorum.is_none() && rng.chance(200),
                    quorum,
                    ..Default::default()
                },
                conn,
            )
        }
        6 => {
            let name = pick(rng, &QUEUES);
            let id = t.queue_record(name).map_or(7, |q| q.id);
            Cmd::QueueDeleted {
                name: name.into(),
                id,
            }
        }
        7 => Cmd::NodeDown {
            node: 1 + rng.below(3),
        },
        8 if rng.chance(300) => Cmd::NodeWiped {
            node: 1 + rng.below(3),
        },
        _ => {
            let name = pick(rng, &QUEUES);
            let id = t.queue_record(name).map_or(7, |q| q.id);
            let members = match rng.below(3) {
                0 => vec![1, 2, 3],
                1 => vec![2, 3],
                _ => vec![1, 2],
            };
            Cmd::QueueMembers {
                name: name.into(),
                id,
                members,
                ids: Vec::new(),
            }
        }
    }
}

/// A topology after `steps` random commands, with the runtime that followed it and the
/// commands.
fn history(rng: &mut Rng, steps: usize) -> (Topology, Runtime, Vec<Cmd>) {
    let mut cmds = Vec::new();
    let (mut t, mut rt) = replay(&[]);
    for _ in 0..steps {
        let cmd = command(rng, &t);
        cmds.push(cmd.clone());
        if let Ok((_, ch)) = t.apply(cmd) {
            rt.follow(&ch);
        }
    }
    (t, rt, cmds)
}

/// A new topology after `cmds`, with the runtime that followed it.
fn replay(cmds: &[Cmd]) -> (Topology, Runtime) {
    let mut ch = Changes::default();
    let mut t = Topology::new("/", &mut ch);
    let mut rt = Runtime::default();
    rt.follow(&ch);
    for cmd in cmds {
        if let Ok((_, ch)) = t.apply(cmd.clone()) {
            rt.follow(&ch);
        }
    }
    (t, rt)
}

fn outcome(r: Result<(Reply, Changes), crate::error::Error>) -> Result<Reply, u16> {
    r.map(|(reply, _)| reply).map_err(|e| e.code())
}

#[test]
fn an_installed_image_is_as_good_as_the_entries() {
    let mut quorum_queues = 0;
    for seed in 0..400u64 {
        let mut rng = Rng(seed);
        let (na, nb) = (1 + rng.below(60) as usize, rng.below(60) as usize);
        let (mut a, a_rt, cmds) = history(&mut rng, na);
        // B: a node that starts from the snapshot, one behind A (a prefix of its history),
        // or one with a history of its own.
        let (mut b, mut b_rt) = match seed % 3 {
            0 => replay(&[]),
            1 => replay(&cmds[..nb.min(cmds.len())]),
            _ => {
                let (b, b_rt, _) = history(&mut rng, nb);
                (b, b_rt)
            }
        };
        let image = a.image();
        let ch = b.install(image.clone());
        b_rt.follow(&ch);
        assert_eq!(b.image(), image, "seed {seed}");
        b.check().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(b_rt, a_rt, "seed {seed}: the runtime differs");
        // Installing the same image again changes nothing.
        assert!(b.install(image).list.is_empty(), "seed {seed}");
        quorum_queues += a_rt.queues.values().filter(|q| q.1.is_some()).count();
        // From here on both take the same commands alike.
        let (mut a_rt, mut b_rt) = (a_rt, b_rt);
        for step in 0..30 {
            let cmd = command(&mut rng, &a);
            let (ra, rb) = (a.apply(cmd.clone()), b.apply(cmd));
            if let (Ok((_, ca)), Ok((_, cb))) = (&ra, &rb) {
                a_rt.follow(ca);
                b_rt.follow(cb);
            }
            assert_eq!(outcome(ra), outcome(rb), "seed {seed} step {step}");
        }
        assert_eq!(a.image(), b.image(), "seed {seed}: diverged after install");
        assert_eq!(a_rt, b_rt, "seed {seed}: runtimes diverged after install");
    }
    assert!(quorum_queues > 100, "{quorum_queues} quorum queues");
}

#[test]
fn an_image_survives_its_encoding() {
    let mut rng = Rng(7);
    let (t, _, _) = history(&mut rng, 80);
    let image = t.image();
    let bytes = postcard::to_stdvec(&image).unwrap();
    let back: Image = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, image);
}
