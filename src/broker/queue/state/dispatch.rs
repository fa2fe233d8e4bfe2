//! Dispatch: ready messages handed to consumers with credit, in strict round-robin.

use super::{Delivery, Effect, Msg, Payload, QueueState};

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
        let mut batches = std::mem::take(&mut self.scratch);
        batches.resize_with(n, Vec::new);
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
        for (i, batch) in batches.iter_mut().enumerate() {
            let c = &self.consumers[i];
            if !batch.is_empty() {
                fx.push(Effect::Deliver {
                    consumer: c.id.clone(),
                    no_ack: c.no_ack,
                    msgs: std::mem::take(batch),
                });
            }
            if c.starved && !self.ready.is_empty() {
                fx.push(Effect::Starved(c.id.clone()));
            }
        }
        batches.clear();
        self.scratch = batches;
    }

    /// Give message `m` to consumer `i`, spending its credit.
    fn hand_out(&mut self, i: usize, m: Msg<B>, fx: &mut Vec<Effect<B>>) -> Delivery<B> {
        let c = &mut self.consumers[i];
        c.sent += 1;
        if c.no_ack {
            if self.stores(&m.body) {
                let d = m.delivery();
                self.release(m, fx);
                return d;
            }
            // Nothing to release outside: the delivery takes the message as it is.
            self.weight = self.weight.saturating_sub(m.weight as usize);
            return Delivery {
                seq: m.seq,
                body: m.body,
                redelivered: m.redelivered,
                expires_ms: m.expires_ms,
                returns: m.returns,
            };
        }
        let d = m.delivery();
        let c = &mut self.consumers[i];
        c.unacked += 1;
        if c.pooled
            && let Some(n) = self.pools.get_mut(&c.id.channel)
        {
            *n -= 1;
        }
        let (channel, consumer) = (c.id.channel, Some(c.id.clone()));
        self.hold(m, channel, consumer, fx);
        d
    }
}
