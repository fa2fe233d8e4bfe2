//! Where a new quorum queue's replicas go and which of them stands for election first:
//! RabbitMQ's queue leader locators. `client-local` puts the first leader on the declaring
//! node; `balanced` on the live node that leads the fewest quorum queues now (the declaring
//! node on a tie, then the lowest id), so that the load of leading spreads over the cluster.
//!
//! Pure: the caller gives the nodes, which of them are live and how many groups each leads.
//! The members come back ordered, the first leader first; that order is what the metadata
//! log records, so every node starts the queue's group alike.

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
/// Raft id, which is the node id in a cluster; 0: none known) or, for a group not led yet,
/// its first member, which stands for election.
pub fn leading<'a>(
    groups: impl Iterator<Item = &'a Quorum>,
    leader_of: impl Fn(u64) -> u64,
) -> BTreeMap<NodeId, usize> {
    let mut n = BTreeMap::new();
    for p in groups {
        let leader = match leader_of(p.group) {
            0 => p.members.first().copied(),
            id => Some(id),
        };
        if let Some(l) = leader {
            *n.entry(l).or_insert(0) += 1;
        }
    }
    n
}

/// The members of a new group on `nodes`, the first leader first, the others in id order.
pub fn place(
    locator: Locator,
    declaring: NodeId,
    nodes: &[NodeId],
    live: &BTreeSet<NodeId>,
    leading: &BTreeMap<NodeId, usize>,
) -> Vec<NodeId> {
    let first = match locator {
        Locator::ClientLocal => declaring,
        Locator::Balanced => nodes
            .iter()
            .copied()
            .filter(|n| *n == declaring || live.contains(n))
            .min_by_key(|n| (leading.get(n).copied().unwrap_or(0), *n != declaring, *n))
            .unwrap_or(declaring),
    };
    let mut members: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != first).collect();
    members.sort_unstable();
    if nodes.contains(&first) {
        members.insert(0, first);
    }
    members
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
            let got = place(locator, declaring, &nodes, live, leading);
            assert_eq!(
                got, want,
                "{locator:?} from {declaring}, {leading:?}, live {live:?}"
            );
        }
    }

    #[test]
    fn leaders_are_counted_as_known_or_as_placed() {
        let q = |group, members: &[NodeId]| Quorum {
            group,
            members: members.to_vec(),
        };
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
        for locator in [Locator::ClientLocal, Locator::Balanced] {
            assert_eq!(place(locator, 0, &[0], &BTreeSet::new(), &leading), vec![0]);
        }
    }
}
