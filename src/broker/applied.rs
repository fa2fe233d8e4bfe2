//! The requests a replicated state machine has applied, by (origin node, request number):
//! an entry proposed again after a leader change (and so committed twice) is applied once.
//! Every replica applies the same entries in the same order, so every replica skips the
//! same ones. Bounded: the oldest are forgotten first (a copy comes within seconds of its
//! original, never after `cap` newer requests).

use std::collections::{HashSet, VecDeque};

use super::ids::NodeId;

#[derive(Debug)]
pub struct Applied {
    seen: HashSet<(NodeId, u64)>,
    order: VecDeque<(NodeId, u64)>,
    cap: usize,
}

impl Applied {
    pub fn new(cap: usize) -> Applied {
        Applied {
            seen: HashSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// The requests remembered, oldest first (for a snapshot).
    pub fn to_vec(&self) -> Vec<(NodeId, u64)> {
        self.order.iter().copied().collect()
    }

    /// The set a snapshot held.
    pub fn from_vec(cap: usize, order: Vec<(NodeId, u64)>) -> Applied {
        let mut a = Applied::new(cap);
        for key in order {
            a.first_time(key);
        }
        a
    }

    pub fn contains(&self, key: (NodeId, u64)) -> bool {
        self.seen.contains(&key)
    }

    /// Remember an applied request; false if it was applied before.
    pub fn first_time(&mut self, key: (NodeId, u64)) -> bool {
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_applies_once_and_the_oldest_are_forgotten() {
        let mut a = Applied::new(2);
        assert!(a.first_time((1, 7)));
        assert!(!a.first_time((1, 7)));
        assert!(a.first_time((2, 7)), "another origin, same number");
        assert!(a.first_time((1, 8)));
        assert!(a.first_time((1, 7)), "forgotten after two newer ones");
        let back = Applied::from_vec(2, a.to_vec());
        assert!(back.contains((1, 7)) && back.contains((1, 8)) && !back.contains((2, 7)));
    }
}
