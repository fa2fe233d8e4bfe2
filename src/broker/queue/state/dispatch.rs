//! Dispatch: ready messages handed to consumers with credit, in strict round-robin.

use super::{Delivery, Effect, Held, Msg, Payload, QueueState};

impl<B: Payload> QueueState<B> {
    /// May consumer `i` take one more message, `batched` being already on its way to it?
    fn can_take(&mut self, i: usize) -> bool {
        let c = &mut self.consumers[i];
        if c.sent >= c.limit {
            c.starved = true;
            return false;
        }
        if c.no_ack {
            return true;
        }
        if c.prefetch != 0 && c.unacked >= c.prefetch {
            return false;
        }
        !c.pooled || self.pools.get(&c.id.channel).is_some_and(|&n| n > 0)
    }

    /// Hand ready messages to consumers, one each in turn, then emit each consumer's batch.
    /// Strict round-robin: `rr` is the consumer that gets the next message; a consumer
    /// without credit is skipped, and a full turn with no taker ends the dispatch.
    pub(super) fn dispatch(&mut self, fx: &mut Vec<Effect<B>>) {
        if self.ready.is_empty() || self.consumers.is_empty() {
            return;
        }
        let n = self.consumers.len();
        let mut batches: Vec<Vec<Delivery<B>>> = (0..n).map(|_| Vec::new()).collect();
        let mut idle = 0;
        let mut i = self.rr % n;
        while idle < n && !self.ready.is_empty() {
            if !self.can_take(i) {
                idle += 1;
                i = (i + 1) % n;
                continue;
            }
            let Some(m) = self.pop_ready() else {
                break;
            };
            batches[i].push(self.hand_out(i, m, fx));
            idle = 0;
            i = (i + 1) % n;
            self.rr = i;
        }
        for (i, msgs) in batches.into_iter().enumerate() {
            let c = &self.consumers[i];
            if !msgs.is_empty() {
                fx.push(Effect::Deliver {
                    consumer: c.id.clone(),
                    no_ack: c.no_ack,
                    msgs,
                });
            }
            if c.starved && !self.ready.is_empty() {
                fx.push(Effect::Starved(c.id.clone()));
            }
        }
    }

    /// Give message `m` to consumer `i`, spending its credit.
    fn hand_out(&mut self, i: usize, m: Msg<B>, fx: &mut Vec<Effect<B>>) -> Delivery<B> {
        let d = m.delivery();
        let c = &mut self.consumers[i];
        c.sent += 1;
        if c.no_ack {
            self.release(m, fx);
            return d;
        }
        c.unacked += 1;
        if c.pooled
            && let Some(n) = self.pools.get_mut(&c.id.channel)
        {
            *n -= 1;
        }
        let (channel, consumer) = (c.id.channel, Some(c.id.clone()));
        self.mark_delivered(&m, fx);
        self.unacked.insert(
            m.seq,
            Held {
                msg: m,
                channel,
                consumer,
            },
        );
        d
    }
}
