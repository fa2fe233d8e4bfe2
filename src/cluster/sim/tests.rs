//! The simulation's runs: seeds under faults (converge, lose nothing), bursts of work with
//! idle time between, reproducibility from a seed, and an election without ticks.

use super::*;

/// Run one seed: faults for `steps`, then a heal; returns what it did.
fn run(seed: u64, steps: u64) -> Counts {
    run_with(seed, steps, 800)
}

/// The same with `work` new enqueues per 1000 steps.
fn run_with(seed: u64, steps: u64, work: u64) -> Counts {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::new(seed, dir.path());
    sim.work = work;
    for _ in 0..steps {
        sim.step(true, true);
    }
    // Heal: every node back, no more faults or new work; what is pending is proposed
    // again until committed.
    for n in &mut sim.nodes {
        n.down_until = 0;
    }
    let mut healed = 0;
    while !sim.settled() {
        sim.step(false, false);
        healed += 1;
        assert!(
            healed < 20_000,
            "seed {seed}: the cluster did not settle after the faults ({} pending): {:?}",
            sim.client.pending.len(),
            sim.nodes
                .iter()
                .map(|n| (n.raft_id, n.up.as_ref().map(|up| up.group.status())))
                .collect::<Vec<_>>()
        );
    }
    // Three more rounds of heartbeats, so the last commit index reaches every follower.
    for _ in 0..30 {
        sim.step(false, false);
    }
    let fifos: Vec<&Fifo> = sim
        .nodes
        .iter()
        .map(|n| &n.up.as_ref().unwrap().machine.fifo)
        .collect();
    for (i, f) in fifos.iter().enumerate().skip(1) {
        assert_eq!(
            *f,
            fifos[0],
            "seed {seed}: node {} differs from node 1",
            i + 1
        );
    }
    let check = sim.check.lock().unwrap();
    let f = fifos[0];
    let mut held: Vec<u64> = f.queue.iter().map(|(id, _)| *id).collect();
    held.extend(f.taken.iter().map(|(_, id)| *id));
    let kept: BTreeSet<u64> = held.iter().copied().collect();
    let committed_enqueues: BTreeSet<u64> = check
        .committed
        .iter()
        .filter(|id| sim.client.enqueued.contains(id))
        .copied()
        .collect();
    let lost = committed_enqueues.difference(&kept).count();
    let duplicated = held.len() - kept.len();
    let unexpected = kept.difference(&sim.client.enqueued).count();
    assert_eq!(
        (lost, duplicated, unexpected),
        (0, 0, 0),
        "seed {seed}: lost, duplicated, unexpected"
    );
    // Every proposal was retried until committed: all enqueues are in.
    assert_eq!(committed_enqueues, sim.client.enqueued, "seed {seed}");
    let mut counts = std::mem::take(&mut sim.counts);
    counts.committed = check.committed.len();
    counts.final_step = sim.now;
    for n in &sim.nodes {
        counts.installed += n.up.as_ref().unwrap().machine.installed;
    }
    drop(check);
    for n in &mut sim.nodes {
        n.crash(0);
    }
    counts
}

#[test]
fn three_replicas_converge_and_lose_no_committed_entry_under_faults() {
    let mut total = Counts::default();
    for seed in 1..=12 {
        let c = run(seed, 4000);
        eprintln!("seed {seed}: {c:?}");
        total.committed += c.committed;
        total.crashes += c.crashes;
        total.crashes_mid_round += c.crashes_mid_round;
        total.wipes += c.wipes;
        total.partitions += c.partitions;
        total.dropped += c.dropped;
        total.duplicated += c.duplicated;
        total.installed += c.installed;
        total.chunks += c.chunks;
        total.chunks_lost += c.chunks_lost;
    }
    // The faults were exercised, not only survived.
    assert!(total.committed > 12 * 1000, "{total:?}");
    assert!(
        total.crashes_mid_round > 0 && total.partitions > 0 && total.wipes > 0,
        "{total:?}"
    );
    assert!(total.dropped > 0 && total.duplicated > 0, "{total:?}");
    assert!(
        total.installed > 0,
        "no follower was ever sent a snapshot: {total:?}"
    );
    // Snapshots' kept entries went in several chunks each, some of them lost on the way.
    assert!(
        total.chunks > 2 * total.installed && total.chunks_lost > 0,
        "{total:?}"
    );
}

/// Work in bursts with idle time between: the group goes quiet (no ticks) between them,
/// under the same faults, and still converges and loses nothing.
#[test]
fn an_idle_group_goes_quiet_and_still_loses_nothing_under_faults() {
    let mut total = Counts::default();
    for seed in 101..=106 {
        let c = run_with(seed, 6000, 3);
        eprintln!("seed {seed}: {c:?}");
        total.committed += c.committed;
        total.crashes += c.crashes;
        total.partitions += c.partitions;
        total.quiet_ticks += c.quiet_ticks;
    }
    assert!(total.committed > 6 * 10, "{total:?}");
    assert!(total.crashes > 0 && total.partitions > 0, "{total:?}");
    assert!(
        total.quiet_ticks > 1000,
        "the group never went quiet: {total:?}"
    );
}

#[test]
fn a_run_is_reproducible_from_its_seed() {
    let a = format!("{:?}", run(99, 1500));
    let b = format!("{:?}", run(99, 1500));
    assert_eq!(a, b);
}

/// The group's leader as node `i` knows it.
fn leader(sim: &Sim, i: usize) -> u64 {
    sim.nodes[i].up.as_ref().unwrap().group.status().leader
}

/// A simulation (from `seed`) whose settled leader crashed, with every clock stopped: the
/// old leader and the survivors.
fn leader_crashed(seed: u64, dir: &std::path::Path) -> (Sim, u64, Vec<u64>) {
    let mut sim = Sim::new(seed, dir);
    while sim.client.next < 20 || !sim.settled() {
        sim.step(false, sim.client.next < 20);
    }
    let old = leader(&sim, 0);
    sim.nodes[(old - 1) as usize].crash(u64::MAX);
    sim.ticking = false;
    let survivors = NODES.iter().copied().filter(|n| *n != old).collect();
    (sim, old, survivors)
}

/// A follower that sees its leader's link go down does not wait out the election timeout:
/// with every clock stopped, the two survivors elect the lower-numbered one, and the group
/// commits again.
#[test]
fn losing_the_leaders_link_elects_a_new_leader_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sim, old, survivors) = leader_crashed(5, dir.path());
    for id in &survivors {
        let up: BTreeSet<u64> = survivors.iter().copied().filter(|o| o != id).collect();
        let node = sim.nodes[(*id - 1) as usize].up.as_mut().unwrap();
        node.group.leader_link_lost(old, &up);
    }
    for _ in 0..50 {
        sim.step(false, false);
    }
    let first = (survivors[0] - 1) as usize;
    assert_eq!(
        leader(&sim, first),
        survivors[0],
        "no new leader without ticks"
    );
    assert_eq!(leader(&sim, (survivors[1] - 1) as usize), survivors[0]);
    // And it commits: a new enqueue is applied on both survivors.
    let before = sim.check.lock().unwrap().committed.len();
    while sim.check.lock().unwrap().committed.len() == before {
        sim.step(false, true);
        assert!(sim.now < 10_000, "the new leader commits nothing");
    }
    for n in &mut sim.nodes {
        n.crash(0);
    }
}

/// The same, when the other survivor sees the leader's link go only after the first one's
/// pre-vote reached it: it refused that (it still held the dead leader's lease), and the
/// campaign is made again on the next tick rather than after the election timeout.
#[test]
fn a_survivor_that_keeps_the_lease_a_moment_longer_does_not_delay_the_election() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sim, old, survivors) = leader_crashed(7, dir.path());
    let up =
        |id: u64| -> BTreeSet<u64> { survivors.iter().copied().filter(|o| *o != id).collect() };
    let (first, second) = (survivors[0], survivors[1]);
    group_of(&mut sim, first).leader_link_lost(old, &up(first));
    for _ in 0..50 {
        sim.step(false, false);
    }
    assert_eq!(
        leader(&sim, (first - 1) as usize),
        0,
        "the pre-vote went unanswered"
    );
    group_of(&mut sim, second).leader_link_lost(old, &up(second));
    // Two ticks: far below the election timeout (ELECTION_TICKS).
    for _ in 0..2 {
        for id in [first, second] {
            group_of(&mut sim, id).tick(&up(id));
        }
        for _ in 0..50 {
            sim.step(false, false);
        }
    }
    assert_eq!(
        leader(&sim, (first - 1) as usize),
        first,
        "elected without waiting"
    );
    assert_eq!(leader(&sim, (second - 1) as usize), first);
    for n in &mut sim.nodes {
        n.crash(0);
    }
}

fn group_of(sim: &mut Sim, id: u64) -> &mut crate::cluster::raft::Group {
    &mut sim.nodes[(id - 1) as usize].up.as_mut().unwrap().group
}
