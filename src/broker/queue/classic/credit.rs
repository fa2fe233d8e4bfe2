//! Credit for the classic queue's consumers, read from what their channels granted: each
//! consumer's delivery limit from its credit cell, and for ack-mode consumers a share of
//! their channel's pool (bounded by a global prefetch, if one is set), drawn for one dispatch
//! and given back after it.

use std::sync::Arc;

use super::Classic;
use crate::broker::consumer::ChannelLimit;
use crate::broker::ids::ChannelId;
use crate::broker::queue::ConnEvent;
use crate::broker::queue::state::{Command, Credit};

impl Classic {
    /// Read the credit channels granted since the last round into the state, then take what
    /// pooled (ack-mode) consumers can use from their channels' pools, and give back what the
    /// dispatch left, so a pool is never held by a queue between rounds.
    pub(super) fn refresh_credit(&mut self) {
        for _ in 0..4 {
            self.again = false;
            let mut credit = Credit::default();
            for (id, l) in &mut self.links {
                let limit = l.flow.limit();
                if limit != l.applied {
                    l.applied = limit;
                    credit.consumers.push((id.clone(), limit));
                }
            }
            // Every pool is drawn from, limited (global prefetch) or not, so that the channel
            // counts all its unacked deliveries: a global limit set later starts from the truth.
            let mut taken: Vec<(ChannelId, Arc<ChannelLimit>)> = Vec::new();
            if self.state.ready_len() > 0 {
                taken = self
                    .links
                    .iter()
                    .filter(|(_, l)| l.pooled)
                    .map(|(id, l)| (id.channel, l.pool.clone()))
                    .collect();
                taken.sort_unstable_by_key(|(ch, _)| *ch);
                taken.dedup_by_key(|(ch, _)| *ch);
            }
            if !credit.consumers.is_empty() {
                self.apply(Command::Credit(credit));
            }
            let mut pools = Credit::default();
            if !taken.is_empty() {
                for (ch, want) in self.state.pool_demands() {
                    let Ok(at) = taken.binary_search_by_key(&ch, |(c, _)| *c) else {
                        continue;
                    };
                    if want > 0 {
                        pools.pools.push((ch, taken[at].1.acquire(want)));
                    }
                }
            }
            if !pools.pools.is_empty() {
                self.apply(Command::Credit(pools));
                self.give_back(&taken);
            }
            if !self.again {
                break;
            }
        }
    }

    fn give_back(&mut self, taken: &[(ChannelId, Arc<ChannelLimit>)]) {
        let mut zero = Credit::default();
        for (ch, pool) in taken {
            let unused = self.state.pool(ch);
            if unused == 0 {
                continue;
            }
            zero.pools.push((*ch, 0));
            if pool.release(unused)
                && let Some((_, l)) = self.links.iter().find(|(id, _)| id.channel == *ch)
            {
                let _ = l.events.send(ConnEvent::Wake {
                    channel: ch.channel,
                });
            }
        }
        if !zero.pools.is_empty() {
            self.apply(Command::Credit(zero));
        }
    }
}
