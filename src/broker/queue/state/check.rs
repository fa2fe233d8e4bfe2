//! The state's invariants, checked on demand (by the model-based test and the fuzzer).

use super::{Payload, QueueState};

impl<B: Payload> QueueState<B> {
    /// Check the invariants (see the module doc); for tests and fuzzing.
    pub fn check(&self) -> Result<(), String> {
        if !self
            .ready
            .iter()
            .zip(self.ready.iter().skip(1))
            .all(|(a, b)| a.seq < b.seq)
        {
            return Err("ready is not sorted by seq".into());
        }
        if let Some(m) = self
            .ready
            .iter()
            .find(|m| self.unacked.contains_key(&m.seq))
        {
            return Err(format!("seq {} is both ready and unacked", m.seq));
        }
        let weight: usize = self.ready.iter().map(|m| m.weight as usize).sum::<usize>()
            + self
                .unacked
                .values()
                .map(|h| h.msg.weight as usize)
                .sum::<usize>();
        if weight != self.weight {
            return Err(format!(
                "weight {} but messages weigh {weight}",
                self.weight
            ));
        }
        let bytes: u64 = self.ready.iter().map(|m| u64::from(m.body.size())).sum();
        if bytes != self.ready_bytes {
            return Err(format!("ready_bytes {} but {bytes}", self.ready_bytes));
        }
        for c in &self.consumers {
            let held = self
                .unacked
                .values()
                .filter(|h| h.consumer.as_ref() == Some(&c.id))
                .count();
            if held != c.unacked as usize {
                return Err(format!(
                    "{:?} counts {} unacked, holds {held}",
                    c.id, c.unacked
                ));
            }
        }
        if self.deleted && !(self.ready.is_empty() && self.unacked.is_empty()) {
            return Err("deleted with messages".into());
        }
        Ok(())
    }
}
