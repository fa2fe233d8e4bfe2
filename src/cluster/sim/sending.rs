//! The simulation's nodes send snapshots as the runtime does (`transfer::run`): kept
//! entries in chunks over the faulty network, acknowledged once staged, the snapshot's
//! message last; a sending without progress for `SENDING_WAIT` steps is given up.

use super::{CHUNK, Msg, Node, SENDING_WAIT, Wire, node_of, write};

impl Node {
    /// Drive the node's sendings (`transfer::run`): chunks out as the window allows, the
    /// snapshot's message once all are acknowledged; given up without progress.
    pub(super) fn send_snapshots(&mut self, wire: &Wire, now: u64) {
        let Some(up) = self.up.as_mut() else {
            return;
        };
        for s in up.group.take_sendings() {
            // A newer sending to a follower replaces the one before, as in the runtime.
            up.sendings.retain(|(o, _)| o.to != s.to);
            up.sendings.push((s.chunked(CHUNK), now));
        }
        let mut out = wire.0.lock().unwrap();
        let store = &up.store;
        up.sendings.retain_mut(|(s, last)| {
            while s.wants_chunk() {
                let group = s.group;
                let chunk = s.next_chunk(|ix| store.read_raft_entries(group, ix));
                let chunk = chunk.expect("a pinned kept entry is stored");
                out.push((self.id, s.to, Msg::Chunk(chunk.encode())));
            }
            let (done, ok) = match (s.finished(), *last + SENDING_WAIT < now) {
                (true, _) => (true, true),
                (false, late) => (late, false),
            };
            if ok {
                out.push((self.id, s.to, Msg::Raft(s.msg.clone())));
            }
            if done {
                up.group.sent(s.to, s.index, ok);
            }
            !done
        });
    }

    /// A message for this node.
    pub(super) fn receive(&mut self, from: u64, msg: &Msg, wire: &Wire, now: u64) {
        let Some(up) = self.up.as_mut() else {
            return;
        };
        match msg {
            Msg::Raft(m) => up.group.step(m),
            Msg::Chunk(c) => {
                if let Some((ops, index, seq)) = up.group.stage(c) {
                    let mut all = std::mem::take(&mut up.unsynced);
                    all.extend(ops);
                    write(&up.store, all);
                    wire.0
                        .lock()
                        .unwrap()
                        .push((self.id, from, Msg::Ack(index, seq)));
                }
            }
            Msg::Ack(index, seq) => {
                for (s, last) in &mut up.sendings {
                    if node_of(s.to) == from && s.index == *index && s.ack(*seq) {
                        *last = now;
                    }
                }
            }
        }
    }
}
