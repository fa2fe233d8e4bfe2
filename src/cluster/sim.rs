//! A deterministic simulation of the replication runtime: three nodes, each a `raft::Group`
//! over its own real store (RocksDB in a temporary directory), driven as `node.rs` drives
//! them (tick, step, propose, then each round's ready work in two halves around the write),
//! on an in-process network that drops, delays, duplicates and reorders messages, cuts
//! nodes and single links off, and crashes nodes (also between a round's two halves, before
//! its write) and restarts them from what their store kept, or wipes a node's store (a lost
//! disk) and restarts it under a new Raft id, which the leader swaps in for its old one
//! (`Group::replace_member`, as a `Frame::Rejoin` asks it to). A small queue state machine
//! stands in for a quorum queue's, with its snapshots (made every few entries, and when a
//! follower needs one), so that logs are compacted and followers far behind are sent one.
//! As a quorum queue's, its state holds the log index of each queued id's enqueue, not the
//! id: its snapshots keep those entries (`kept`), a snapshot sent to a follower has them
//! streamed ahead of it in small chunks over the same faulty network (`transfer`), and
//! taking an id reads its enqueue back from the node's store, which must have it.
//!
//! Checked, for every seed: a log index applied on two nodes holds the same entry; after
//! the faults stop and every node is back, the nodes converge to the same state, every
//! enqueue that was committed (applied anywhere) is in it exactly once, and nothing is in it
//! that no client proposed. A run is reproducible from its seed: raft-rs draws no election
//! timeout at random under `cfg(test)`, and the nodes' ticks are skewed by the seeded RNG.
//!
//! The store writes unsynced here (a crash of the process, not of the machine: what reached
//! the store survives); a snapshot's write, which the runtime makes unsynced, is held back
//! until the node's next write and lost if it crashes first.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::kept::Keep;
use super::node::{Apply, Cluster};
use super::node_of;
use super::raft::{Group, GroupIo, Transport};
use super::storage::Gauge;
use super::transfer::Sending;
use crate::store::{Op, Store};
use crate::test_rng::Rng;

const GROUP: u64 = 7;
const NODES: [u64; 3] = [1, 2, 3];
/// A node's state machine snapshots after this many entries.
const SNAPSHOT_EVERY: usize = 25;
/// Entry bytes in a snapshot's chunk: a few entries each.
const CHUNK: usize = 60;
/// Steps without an acknowledgement after which a sending is given up.
const SENDING_WAIT: u64 = 200;

struct NoGauge;

impl Gauge for NoGauge {
    fn add(&self, _: usize) {}
    fn sub(&self, _: usize) {}
}

/// What goes over the network.
#[derive(Clone, Debug)]
enum Msg {
    Raft(Bytes),
    /// A chunk of a snapshot's kept entries (`Frame::Kept`).
    Chunk(Bytes),
    /// Its acknowledgement (`Frame::KeptAck`): the snapshot's index, the chunk's number.
    Ack(u64, u64),
}

/// Messages the nodes sent since the network last took them: (from, to, message).
#[derive(Default)]
struct Wire(Mutex<Vec<(u64, u64, Msg)>>);

struct Outbox {
    from: u64,
    wire: Arc<Wire>,
}

impl Transport for Outbox {
    fn send_raft(&self, to: u64, group: u64, msg: Bytes) {
        assert_eq!(group, GROUP);
        self.wire
            .0
            .lock()
            .unwrap()
            .push((self.from, to, Msg::Raft(msg)));
    }
}

/// What every node applied, to check the nodes against each other.
#[derive(Default)]
struct Check {
    /// Each index's entry as first applied anywhere.
    at: BTreeMap<u64, Vec<u8>>,
    /// Ids of entries applied anywhere: committed.
    committed: BTreeSet<u64>,
}

fn entry(kind: u8, id: u64) -> Vec<u8> {
    let mut e = vec![kind];
    e.extend_from_slice(&id.to_be_bytes());
    e
}

/// The replicated state: a queue of ids. An entry enqueues its id (`e`) or takes the head
/// (`t`); each id is applied once, as a replica skips a proposal it applied already.
#[derive(Default, Clone, PartialEq, Debug, Serialize, Deserialize)]
struct Fifo {
    seen: BTreeSet<u64>,
    /// (id, the index of the entry that enqueued it).
    queue: VecDeque<(u64, u64)>,
    /// (the take's id, the id it took).
    taken: Vec<(u64, u64)>,
}

struct Machine {
    me: u64,
    fifo: Fifo,
    applied: u64,
    since: usize,
    wanted: bool,
    check: Arc<Mutex<Check>>,
    /// Snapshots installed from a leader (not the node's own at a start).
    installed: u64,
    running: bool,
    store: Arc<Store>,
}

impl Apply for Machine {
    fn apply(&mut self, index: u64, data: &[u8]) {
        assert!(
            index > self.applied,
            "node {} applied {index} after {}",
            self.me,
            self.applied
        );
        self.applied = index;
        {
            let mut check = self.check.lock().unwrap();
            let first = check.at.entry(index).or_insert_with(|| data.to_vec());
            assert_eq!(
                first.as_slice(),
                data,
                "node {} applied another entry at {index}",
                self.me
            );
            if !data.is_empty() {
                check
                    .committed
                    .insert(u64::from_be_bytes(data[1..9].try_into().unwrap()));
            }
        }
        if data.is_empty() {
            return;
        }
        let id = u64::from_be_bytes(data[1..9].try_into().unwrap());
        self.since += 1;
        if !self.fifo.seen.insert(id) {
            return;
        }
        match data[0] {
            b'e' => self.fifo.queue.push_back((id, index)),
            _ => {
                if let Some((head, at)) = self.fifo.queue.pop_front() {
                    let stored = self.stored(&[at]).pop().flatten();
                    assert_eq!(
                        stored.map(|raw| Cluster::entry_data(&raw).unwrap().to_vec()),
                        Some(entry(b'e', head)),
                        "node {}: the enqueue of {head} at {at} is not stored",
                        self.me
                    );
                    self.fifo.taken.push((id, head));
                }
            }
        }
    }

    fn restore(&mut self, index: u64, data: &[u8]) {
        self.fifo = postcard::from_bytes(data).expect("a snapshot decodes");
        self.applied = index;
        self.since = 0;
        if self.running {
            self.installed += 1;
        }
    }

    fn want_snapshot(&mut self) {
        self.wanted = true;
    }
}

impl Machine {
    fn stored(&self, indexes: &[u64]) -> Vec<Option<Vec<u8>>> {
        (self.store.read_raft_entries(GROUP, indexes)).expect("the store reads")
    }

    /// What a snapshot now keeps: the enqueues of the queued ids.
    fn keep(&self, size: usize, send: bool) -> Keep {
        let mut live: Vec<u64> = self.fifo.queue.iter().map(|(_, at)| *at).collect();
        live.sort_unstable();
        Keep { live, send, size }
    }
}

struct Up {
    store: Arc<Store>,
    group: Group,
    machine: Machine,
    /// A snapshot's write, unsynced as the runtime makes it: it goes with the next write.
    unsynced: Vec<Op>,
    /// Snapshots being sent, and the step each last made progress.
    sendings: Vec<(Sending, u64)>,
}

struct Node {
    id: u64,
    /// Its Raft id: `id`, or a new one after each wipe.
    raft_id: u64,
    wipes: u64,
    dir: PathBuf,
    up: Option<Up>,
    /// Down until this step.
    down_until: u64,
}

fn write(store: &Store, ops: Vec<Op>) {
    let (tx, rx) = std::sync::mpsc::channel();
    store.submit(
        ops,
        false,
        Some(Box::new(move |r| {
            let _ = tx.send(r);
        })),
    );
    rx.recv()
        .expect("the store answers")
        .expect("the store writes");
}

impl Node {
    fn start(&mut self, wire: &Arc<Wire>, check: &Arc<Mutex<Check>>) {
        let (store, recovered) = Store::open(&self.dir).expect("the store opens");
        let mut machine = Machine {
            me: self.id,
            fifo: Fifo::default(),
            applied: 0,
            since: 0,
            wanted: false,
            check: check.clone(),
            installed: 0,
            running: false,
            store: store.clone(),
        };
        let io = GroupIo {
            store: store.clone(),
            links: Arc::new(Outbox {
                from: self.id,
                wire: wire.clone(),
            }),
            log_bytes: Arc::new(NoGauge),
        };
        let saved = recovered.raft.get(&GROUP);
        // A wiped node starts from the group's first voters too (and is none of them): the
        // leader's log or snapshot brings it up to date.
        let group = Group::open(GROUP, self.raft_id, NODES.to_vec(), saved, io, &mut machine)
            .expect("the group opens");
        machine.running = true;
        self.up = Some(Up {
            store,
            group,
            machine,
            unsynced: Vec::new(),
            sendings: Vec::new(),
        });
    }

    /// Everything in memory is lost; the store keeps what it was given.
    fn crash(&mut self, until: u64) -> u64 {
        let installed = match self.up.take() {
            Some(up) => {
                let Up {
                    store,
                    group,
                    machine,
                    ..
                } = up;
                drop(group);
                store.close();
                machine.installed
            }
            None => 0,
        };
        self.down_until = until;
        installed
    }

    /// The node's disk is lost: it comes back empty, under a new Raft id.
    fn wipe(&mut self, until: u64) -> u64 {
        let installed = self.crash(until);
        std::fs::remove_dir_all(&self.dir).expect("the store's directory goes");
        self.wipes += 1;
        self.raft_id = self.id | (self.wipes << 32);
        installed
    }

    /// Waiting to be taken in under its new Raft id (after a wipe).
    fn rejoining(&self) -> bool {
        self.up
            .as_ref()
            .is_some_and(|up| self.raft_id != self.id && !up.group.voters().contains(&self.raft_id))
    }

    /// One round of ready work, as `node.rs` does it; with `crash`, the node dies after the
    /// first half (messages a leader may send at once are out, nothing was written).
    fn ready(&mut self, crash: bool) -> bool {
        let Some(up) = self.up.as_mut() else {
            return false;
        };
        let Some(mut prepared) = up.group.prepare(&mut up.machine).expect("prepare") else {
            return false;
        };
        if crash {
            return true;
        }
        if !prepared.ops.is_empty() {
            let mut ops = std::mem::take(&mut up.unsynced);
            ops.append(&mut prepared.ops);
            write(&up.store, ops);
        }
        up.group.finish(prepared, &mut up.machine);
        if up.group.snapshot_wanted() {
            up.machine.want_snapshot();
        }
        let m = &mut up.machine;
        if m.wanted || m.since >= SNAPSHOT_EVERY {
            let sendable = std::mem::take(&mut m.wanted);
            m.since = 0;
            let data = postcard::to_stdvec(&m.fifo).expect("a snapshot encodes");
            let keep = m.keep(data.len(), sendable);
            if let Some(op) = up.group.snapshot_made(m.applied, data.into(), keep) {
                up.unsynced.push(op);
            }
        }
        false
    }
}

/// A message on its way.
struct Flight {
    due: u64,
    seq: u64,
    from: u64,
    to: u64,
    msg: Msg,
}

/// Cuts between nodes: (from, to) pairs and the step each heals at.
#[derive(Default)]
struct Cuts(BTreeMap<(u64, u64), u64>);

impl Cuts {
    fn cut(&mut self, from: u64, to: u64, until: u64) {
        let e = self.0.entry((from, to)).or_insert(0);
        *e = (*e).max(until);
    }

    fn is_cut(&self, from: u64, to: u64, now: u64) -> bool {
        self.0.get(&(from, to)).is_some_and(|until| *until > now)
    }
}

/// What a run did, so that the test can tell its faults were exercised.
#[derive(Debug, Default)]
struct Counts {
    committed: usize,
    crashes: u64,
    crashes_mid_round: u64,
    wipes: u64,
    partitions: u64,
    dropped: u64,
    duplicated: u64,
    installed: u64,
    /// Chunks of snapshots' kept entries delivered, and lost (dropped or cut off).
    chunks: u64,
    chunks_lost: u64,
    /// Ticks a node's group skipped, idle.
    quiet_ticks: u64,
    final_step: u64,
}

/// The client: proposes enqueues and takes through random live nodes, each again until it
/// is seen committed (a proposal may be lost with a leader or on the network).
struct Client {
    next: u64,
    /// Not yet seen committed: id → (entry, step last proposed).
    pending: BTreeMap<u64, (Vec<u8>, u64)>,
    enqueued: BTreeSet<u64>,
}

struct Sim {
    rng: Rng,
    nodes: Vec<Node>,
    wire: Arc<Wire>,
    check: Arc<Mutex<Check>>,
    flights: Vec<Flight>,
    seq: u64,
    cuts: Cuts,
    client: Client,
    counts: Counts,
    now: u64,
    /// Off: the nodes' clocks stand still (no election or heartbeat timeouts).
    ticking: bool,
    /// New enqueues per 1000 steps (and a quarter as many takes).
    work: u64,
}

impl Sim {
    fn new(seed: u64, dir: &std::path::Path) -> Sim {
        let wire = Arc::new(Wire::default());
        let check = Arc::new(Mutex::new(Check::default()));
        let mut nodes: Vec<Node> = NODES
            .iter()
            .map(|id| Node {
                id: *id,
                raft_id: *id,
                wipes: 0,
                dir: dir.join(format!("n{id}")),
                up: None,
                down_until: 0,
            })
            .collect();
        for n in &mut nodes {
            n.start(&wire, &check);
        }
        Sim {
            rng: Rng(seed),
            nodes,
            wire,
            check,
            flights: Vec::new(),
            seq: 0,
            cuts: Cuts::default(),
            client: Client {
                next: 1,
                pending: BTreeMap::new(),
                enqueued: BTreeSet::new(),
            },
            counts: Counts::default(),
            now: 0,
            ticking: true,
            work: 800,
        }
    }

    /// One step of simulated time; `faults` off lets the cluster heal, `new_work` off
    /// leaves the client only proposing again what is not yet committed.
    fn step(&mut self, faults: bool, new_work: bool) {
        self.now += 1;
        let now = self.now;
        for i in 0..self.nodes.len() {
            let n = &mut self.nodes[i];
            if n.up.is_none() && n.down_until <= now {
                n.start(&self.wire, &self.check);
            }
        }
        if faults {
            self.nemesis();
        }
        // Each node's clock runs at its own pace: a tick every 4 steps on average. A node's
        // links are up to the peers running and not cut off from it either way.
        for (i, a) in NODES.into_iter().enumerate() {
            let links: BTreeSet<u64> = NODES
                .iter()
                .copied()
                .filter(|&b| {
                    a != b
                        && self.nodes[(b - 1) as usize].up.is_some()
                        && !(faults && (self.cuts.is_cut(a, b, now) || self.cuts.is_cut(b, a, now)))
                })
                .collect();
            if let Some(up) = self.nodes[i].up.as_mut()
                && self.rng.chance(250)
                && self.ticking
            {
                up.group.tick(&links);
                self.counts.quiet_ticks += u64::from(up.group.status().quiet);
            }
        }
        self.deliver(faults);
        self.rejoin(faults);
        self.propose(new_work);
        for i in 0..self.nodes.len() {
            let crash = faults && self.rng.chance(1);
            if self.nodes[i].ready(crash) {
                let until = now + self.downtime();
                self.counts.installed += self.nodes[i].crash(until);
                self.counts.crashes += 1;
                self.counts.crashes_mid_round += 1;
            }
        }
        for n in &mut self.nodes {
            n.send_snapshots(&self.wire, now);
        }
        self.take_sent(faults);
        let check = self.check.lock().unwrap();
        self.client
            .pending
            .retain(|id, _| !check.committed.contains(id));
    }

    /// Mostly short; one in four long enough for the leader to compact the entries the
    /// node misses (`LAG_KEPT`), so that it is sent a snapshot when it is back.
    fn downtime(&mut self) -> u64 {
        match self.rng.chance(250) {
            true => 1100 + self.rng.below(600),
            false => 20 + self.rng.below(300),
        }
    }

    fn nemesis(&mut self) {
        let now = self.now;
        let i = self.rng.below(3) as usize;
        if self.rng.chance(1) && self.nodes[i].up.is_some() {
            let until = now + self.downtime();
            self.counts.installed += self.nodes[i].crash(until);
            self.counts.crashes += 1;
        }
        // One lost disk at a time (a minority): the next only once the last wiped node is a
        // voter again and its old id gone.
        if self.rng.chance(1) && self.nodes[i].up.is_some() && self.replaced() {
            let until = now + 20 + self.rng.below(300);
            self.counts.installed += self.nodes[i].wipe(until);
            self.counts.wipes += 1;
        }
        if self.rng.chance(3) {
            // A node cut off from both others, both ways.
            let until = now + 50 + self.rng.below(600);
            let a = NODES[i];
            for b in NODES.iter().filter(|b| **b != a) {
                self.cuts.cut(a, *b, until);
                self.cuts.cut(*b, a, until);
            }
            self.counts.partitions += 1;
        }
        if self.rng.chance(3) {
            // One link, one way or both.
            let until = now + 50 + self.rng.below(600);
            let (a, b) = (NODES[i], NODES[(i + 1 + self.rng.below(2) as usize) % 3]);
            self.cuts.cut(a, b, until);
            if self.rng.chance(500) {
                self.cuts.cut(b, a, until);
            }
            self.counts.partitions += 1;
        }
    }

    /// Every node's Raft id, and no other, is a voter as the leader has it.
    fn replaced(&self) -> bool {
        let ids: BTreeSet<u64> = self.nodes.iter().map(|n| n.raft_id).collect();
        let leader = self.nodes.iter().filter_map(|n| n.up.as_ref());
        leader
            .filter(|up| up.group.is_leader())
            .any(|up| up.group.voters().into_iter().collect::<BTreeSet<u64>>() == ids)
    }

    /// A rejoining node asks (every 40 steps, as its runtime does every second) the
    /// leaders it can reach to take its new Raft id.
    fn rejoin(&mut self, faults: bool) {
        if !self.now.is_multiple_of(40) {
            return;
        }
        let now = self.now;
        let asking: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .filter(|n| n.rejoining())
            .map(|n| (n.id, n.raft_id))
            .collect();
        for (node, raft_id) in asking {
            for n in &mut self.nodes {
                let cut = faults && self.cuts.is_cut(node, n.id, now);
                if let Some(up) = n.up.as_mut().filter(|_| n.id != node && !cut) {
                    up.group.replace_member(node, raft_id);
                }
            }
        }
    }

    /// Deliver what is due, in order of arrival (messages delayed differently reorder).
    fn deliver(&mut self, faults: bool) {
        let now = self.now;
        let (mut due, later): (Vec<Flight>, Vec<Flight>) = std::mem::take(&mut self.flights)
            .into_iter()
            .partition(|f| f.due <= now);
        self.flights = later;
        due.sort_by_key(|f| (f.due, f.seq));
        for f in due {
            let chunk = matches!(f.msg, Msg::Chunk(_));
            if faults && self.cuts.is_cut(f.from, f.to, now) {
                self.counts.dropped += 1;
                self.counts.chunks_lost += u64::from(chunk);
                continue;
            }
            self.counts.chunks += u64::from(chunk);
            self.nodes[(f.to - 1) as usize].receive(f.from, &f.msg, &self.wire, now);
        }
    }

    fn take_sent(&mut self, faults: bool) {
        let sent = std::mem::take(&mut *self.wire.0.lock().unwrap());
        for (from, to, msg) in sent {
            if faults && self.rng.chance(50) {
                self.counts.dropped += 1;
                self.counts.chunks_lost += u64::from(matches!(msg, Msg::Chunk(_)));
                continue;
            }
            let copies = match faults && self.rng.chance(30) {
                true => 2,
                false => 1,
            };
            self.counts.duplicated += copies - 1;
            for _ in 0..copies {
                self.seq += 1;
                let delay = match faults {
                    true => 1 + self.rng.below(6),
                    false => 1,
                };
                self.flights.push(Flight {
                    due: self.now + delay,
                    seq: self.seq,
                    from,
                    to: node_of(to),
                    msg: msg.clone(),
                });
            }
        }
    }

    fn propose(&mut self, new_work: bool) {
        let now = self.now;
        let c = &mut self.client;
        if new_work && self.rng.chance(self.work) {
            let id = c.next;
            c.next += 1;
            c.enqueued.insert(id);
            c.pending.insert(id, (entry(b'e', id), 0));
        }
        if new_work && self.rng.chance(self.work / 4) {
            let id = c.next;
            c.next += 1;
            c.pending.insert(id, (entry(b't', id), 0));
        }
        for (data, last) in c.pending.values_mut() {
            if *last != 0 && *last + 40 > now {
                continue;
            }
            let n = &mut self.nodes[self.rng.below(3) as usize];
            if let Some(up) = n.up.as_mut() {
                // Refused without a known leader: proposed again later.
                let _ = up.group.propose(data.clone());
                *last = now;
            }
        }
    }

    /// Every node up, the group settled: all applied the same last index.
    fn settled(&self) -> bool {
        let mut applied = self.nodes.iter().map(|n| {
            n.up.as_ref().map(|up| {
                let s = up.group.status();
                (
                    s.commit_index == s.applied_index && s.leader != 0,
                    up.machine.applied,
                )
            })
        });
        let first = applied.next().flatten();
        self.client.pending.is_empty()
            && first.is_some_and(|(ok, _)| ok)
            && applied.all(|a| a.is_some_and(|a| a.0 && Some(a.1) == first.map(|f| f.1)))
    }
}

mod sending;
#[cfg(test)]
mod tests;
