//! Where a new quorum queue's replicas go and which of them stands for election first:
//! RabbitMQ's queue leader locators. `client-local` puts the first leader on the declaring
//! node; `balanced` on the live node that leads the fewest quorum queues now (the declaring
//! node on a tie, then the lowest id), so that the load of leading spreads over the cluster.
//!
//! A group has `x-quorum-initial-group-size` members (the setting
//! `quorum_initial_group_size` otherwise, 3 by default as in RabbitMQ); besides the first
//! leader they are the live nodes that are members of the fewest groups.
//!
//! Pure: the caller gives the nodes, which of them are live and how many groups each leads
//! and is in. The members come back ordered, the first leader first; that order is what the
//! metadata log records, so every node starts the queue's group alike.

use std::collections::{BTreeMap, BTreeSet};

use crate::broker::ids::NodeId;
use crate::broker::topology::Quorum;
use crate::protocol::{AMQPValue, FieldTable};

/// How the first leader of a new quorum queue is chosen (x-queue-leader-locator, or the
/// `queue_leader_locator` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Locator {
    ClientLocal,
    #[default]
    Balanced,
}

impl Locator {
    /// RabbitMQ's names; its older ones (`random`, `least-leaders`, `min-masters`) mean
    /// `balanced` there since 3.10.
    pub fn parse(s: &str) -> Option<Locator> {
        match s {
            "client-local" => Some(Locator::ClientLocal),
            "balanced" | "random" | "least-leaders" | "min-masters" => Some(Locator::Balanced),
            _ => None,
        }
    }

    /// The x-queue-leader-locator argument, if it names one (a long or short string; the
    /// declare rules refuse one that is there and does not).
    pub fn of(arguments: &FieldTable) -> Option<Locator> {
        match arguments.inner().get("x-queue-leader-locator")? {
            AMQPValue::LongString(s) => Locator::parse(&String::from_utf8_lossy(s.as_bytes())),
            AMQPValue::ShortString(s) => Locator::parse(s.as_str()),
            _ => None,
        }
    }
}

/// How many of `groups` each node leads: its leader as this node knows it (`leader_of`, a
/// Raft id, whose node is `cluster::node_of`; 0: none known) or, for a group not led yet,
/// its first member, which stands for election.
pub fn leading<'a>(
    groups: impl Iterator<Item = &'a Quorum>,
    leader_of: impl Fn(u64) -> u64,
) -> BTreeMap<NodeId, usize> {
    let mut n = BTreeMap::new();
    for p in groups {
        let leader = match leader_of(p.group) {
            0 => p.members.first().copied(),
            id => Some(crate::cluster::node_of(id)),
        };
        if let Some(l) = leader {
            *n.entry(l).or_insert(0) += 1;
        }
    }
    n
}

/// What a placement weighs: the nodes, which of them are live, and how many groups each
/// leads and is a member of now.
pub struct Load<'a> {
    pub nodes: &'a [NodeId],
    pub live: &'a BTreeSet<NodeId>,
    pub leading: &'a BTreeMap<NodeId, usize>,
    pub members: &'a BTreeMap<NodeId, usize>,
}

/// The members of a new group of `size` nodes (all of them if fewer), the first leader
/// first, the others in id order. The others are the live nodes in the fewest groups (then
/// the lowest ids); nodes not live only if too few are.
pub fn place(locator: Locator, declaring: NodeId, size: usize, load: &Load) -> Vec<NodeId> {
    let live = |n: &NodeId| *n == declaring || load.live.contains(n);
    let first = match locator {
        Locator::ClientLocal => declaring,
        Locator::Balanced => load
            .nodes
            .iter()
            .copied()
            .filter(live)
            .min_by_key(|n| {
                let leads = load.leading.get(n).copied().unwrap_or(0);
                (leads, *n != declaring, *n)
            })
            .unwrap_or(declaring),
    };
    let mut others: Vec<NodeId> = load.nodes.iter().copied().filter(|n| *n != first).collect();
    others.sort_by_key(|n| (!live(n), load.members.get(n).copied().unwrap_or(0), *n));
    others.truncate(size.max(1) - 1);
    others.sort_unstable();
    if load.nodes.contains(&first) {
        others.insert(0, first);
    }
    others
}

/// How many of `groups` each node is a member of.
pub fn memberships<'a>(groups: impl Iterator<Item = &'a Quorum>) -> BTreeMap<NodeId, usize> {
    let mut n = BTreeMap::new();
    for p in groups {
        for m in &p.members {
            *n.entry(*m).or_insert(0) += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locators_parse_as_rabbitmq_names_them() {
        for (name, want) in [
            ("client-local", Some(Locator::ClientLocal)),
            ("balanced", Some(Locator::Balanced)),
            ("random", Some(Locator::Balanced)),
            ("least-leaders", Some(Locator::Balanced)),
            ("min-masters", Some(Locator::Balanced)),
            ("Balanced", None),
            ("", None),
        ] {
            assert_eq!(Locator::parse(name), want, "{name}");
        }
    }

    type Case<'a> = (
        Locator,
        NodeId,
        &'a BTreeSet<NodeId>,
        &'a BTreeMap<NodeId, usize>,
        Vec<NodeId>,
    );

    #[test]
    fn the_argument_is_read_as_a_long_or_short_string() {
        let with = |v: AMQPValue| {
            let mut t = FieldTable::default();
            t.insert("x-queue-leader-locator".into(), v);
            t
        };
        let cases = [
            (
                with(AMQPValue::LongString("client-local".into())),
                Some(Locator::ClientLocal),
            ),
            (
                with(AMQPValue::ShortString("balanced".into())),
                Some(Locator::Balanced),
            ),
            (with(AMQPValue::LongString("nearby".into())), None),
            (with(AMQPValue::LongInt(1)), None),
            (FieldTable::default(), None),
        ];
        for (args, want) in cases {
            assert_eq!(Locator::of(&args), want, "{args:?}");
        }
    }

    #[test]
    fn the_first_leader_is_chosen_as_the_locator_says() {
        use Locator::*;
        let nodes = [1, 2, 3];
        let all: BTreeSet<NodeId> = [1, 2, 3].into();
        let only_1_2: BTreeSet<NodeId> = [1, 2].into();
        let none = BTreeMap::new();
        let two_on_1_one_on_2: BTreeMap<NodeId, usize> = [(1, 2), (2, 1)].into();
        let even: BTreeMap<NodeId, usize> = [(1, 4), (2, 4), (3, 4)].into();
        // (locator, declaring node, live peers, leaders per node, members wanted)
        let cases: Vec<Case> = vec![
            (ClientLocal, 2, &all, &two_on_1_one_on_2, vec![2, 1, 3]),
            (ClientLocal, 3, &only_1_2, &none, vec![3, 1, 2]),
            // A tie goes to the declaring node.
            (Balanced, 2, &all, &none, vec![2, 1, 3]),
            (Balanced, 1, &all, &even, vec![1, 2, 3]),
            // The node leading the fewest, even if another node declares.
            (Balanced, 1, &all, &two_on_1_one_on_2, vec![3, 1, 2]),
            (Balanced, 2, &all, &two_on_1_one_on_2, vec![3, 1, 2]),
            // A node not live is never chosen.
            (Balanced, 1, &only_1_2, &two_on_1_one_on_2, vec![2, 1, 3]),
        ];
        for (locator, declaring, live, leading, want) in cases {
            let load = Load {
                nodes: &nodes,
                live,
                leading,
                members: &BTreeMap::new(),
            };
            let got = place(locator, declaring, 3, &load);
            assert_eq!(
                got, want,
                "{locator:?} from {declaring}, {leading:?}, live {live:?}"
            );
        }
    }

    #[test]
    fn leaders_are_counted_as_known_or_as_placed() {
        let q = |group, members: &[NodeId]| Quorum::new(group, members.to_vec());
        let groups = [
            q(10, &[1, 2, 3]),
            q(11, &[2, 1, 3]),
            q(12, &[3, 1, 2]),
            q(13, &[2, 1, 3]),
        ];
        // Group 10 is led by node 3 now; 11 and 13 have no leader known yet.
        let known = |g: u64| match g {
            10 => 3,
            12 => 3,
            _ => 0,
        };
        let want: BTreeMap<NodeId, usize> = [(2, 2), (3, 2)].into();
        assert_eq!(leading(groups.iter(), known), want);
    }

    #[test]
    fn a_single_node_leads_its_own_queues() {
        let leading: BTreeMap<NodeId, usize> = [(0, 9)].into();
        let load = Load {
            nodes: &[0],
            live: &BTreeSet::new(),
            leading: &leading,
            members: &BTreeMap::new(),
        };
        for locator in [Locator::ClientLocal, Locator::Balanced] {
            for size in [1, 3] {
                assert_eq!(place(locator, 0, size, &load), vec![0]);
            }
        }
    }

    /// (locator, declaring node, size, live peers, memberships per node, members wanted)
    type SizedCase<'a> = (
        Locator,
        NodeId,
        usize,
        &'a BTreeSet<NodeId>,
        &'a BTreeMap<NodeId, usize>,
        Vec<NodeId>,
    );

    #[test]
    fn a_group_smaller_than_the_cluster_takes_the_least_loaded_live_nodes() {
        let nodes = [1, 2, 3, 4, 5];
        let all: BTreeSet<NodeId> = nodes.into();
        let no_4: BTreeSet<NodeId> = [1, 2, 3, 5].into();
        let only_1: BTreeSet<NodeId> = [1].into();
        let none = BTreeMap::new();
        let busy_2_3: BTreeMap<NodeId, usize> = [(1, 1), (2, 5), (3, 4)].into();
        let cases: Vec<SizedCase> = vec![
            (Locator::ClientLocal, 1, 3, &all, &none, vec![1, 2, 3]),
            (Locator::ClientLocal, 4, 3, &all, &none, vec![4, 1, 2]),
            (Locator::ClientLocal, 1, 3, &all, &busy_2_3, vec![1, 4, 5]),
            (Locator::ClientLocal, 1, 3, &no_4, &busy_2_3, vec![1, 3, 5]),
            (Locator::ClientLocal, 1, 1, &all, &none, vec![1]),
            (Locator::ClientLocal, 2, 2, &all, &none, vec![2, 1]),
            (Locator::ClientLocal, 1, 9, &all, &none, vec![1, 2, 3, 4, 5]),
            // Too few live nodes: the others are taken as well (they may come back).
            (Locator::ClientLocal, 1, 3, &only_1, &none, vec![1, 2, 3]),
            // The group's first leader is chosen before its other members.
            (Locator::Balanced, 1, 2, &all, &none, vec![1, 2]),
        ];
        for (locator, declaring, size, live, members, want) in cases {
            let load = Load {
                nodes: &nodes,
                live,
                leading: &none,
                members,
            };
            let got = place(locator, declaring, size, &load);
            assert_eq!(
                got, want,
                "{locator:?} from {declaring}, size {size}, {members:?}, live {live:?}"
            );
        }
    }

    #[test]
    fn memberships_count_every_member() {
        let q = |group, members: &[NodeId]| Quorum::new(group, members.to_vec());
        let groups = [q(1, &[1, 2]), q(2, &[2, 3]), q(3, &[2])];
        let want: BTreeMap<NodeId, usize> = [(1, 1), (2, 3), (3, 1)].into();
        assert_eq!(memberships(groups.iter()), want);
    }
}
