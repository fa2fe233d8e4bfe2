//! Credit for the classic queue's consumers, read from what their channels granted: each
//! consumer's delivery limit from its credit cell, and for channels with a global prefetch a
//! share of the channel's pool, drawn for one dispatch and given back after it.

use std::sync::Arc;

use super::Classic;
use crate::broker::consumer::ChannelLimit;
use crate::broker::ids::ChannelId;
use crate::broker::queue::ConnEvent;
use crate::broker::queue::state::{Command, Credit};

impl Classic {
    /// Read the credit channels granted since the last round into the state, then take what
    /// pooled consumers can use from their channels' pools (global prefetch), and give back
    /// what the dispatch left, so a pool is never held by a queue between rounds.
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
            // Pools: unlimited ones (no global prefetch) are granted without bound; limited
            // ones are drawn from below, for what their consumers here can take.
            let mut taken: Vec<(ChannelId, Arc<ChannelLimit>)> = Vec::new();
            let mut pools = Credit::default();
            if self.state.ready_len() > 0 {
                for (id, l) in self.links.iter().filter(|(_, l)| l.pooled) {
                    let ch = id.channel;
                    if l.pool.limit() != 0 {
                        if !taken.iter().any(|(c, _)| *c == ch) {
                            taken.push((ch, l.pool.clone()));
                        }
                    } else if self.state.pool(&ch) < u32::MAX / 2
                        && !credit.pools.iter().any(|(c, _)| *c == ch)
                    {
                        credit.pools.push((ch, u32::MAX));
                    }
                }
            }
            if !credit.consumers.is_empty() || !credit.pools.is_empty() {
                self.apply(Command::Credit(credit));
            }
            for (ch, pool) in &taken {
                let want = self.state.pool_demand(ch);
                if want > 0 {
                    pools.pools.push((*ch, pool.acquire(want)));
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
