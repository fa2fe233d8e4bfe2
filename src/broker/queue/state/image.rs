//! A `QueueState` as plain data (`Image`), for a quorum queue's snapshots: everything the
//! state holds except its configuration (rebuilt from the declaration, the same on every
//! node). Restoring an image gives a state that answers every later command exactly as the
//! one imaged would, so replicas restored from a snapshot stay in step with those that
//! applied the log.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{Config, Consumer, Held, Msg, Payload, QueueState};
use crate::broker::ids::{ChannelId, ConsumerId};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image<B> {
    ready: VecDeque<Msg<B>>,
    /// By seq (a map's order would differ between nodes).
    unacked: Vec<(u64, Held<B>)>,
    consumers: Vec<Consumer>,
    pools: Vec<(ChannelId, u32)>,
    rr: usize,
    next_seq: u64,
    ever_consumed: bool,
    weight: usize,
    ready_bytes: u64,
    last_used_ms: u64,
    deleted: bool,
}

impl<B> Image<B> {
    /// Every message body the image holds (ready, then unacked).
    pub fn bodies(&self) -> impl Iterator<Item = &B> {
        let held = self.unacked.iter().map(|(_, h)| &h.msg.body);
        self.ready.iter().map(|m| &m.body).chain(held)
    }
}

impl<B: Payload> QueueState<B> {
    /// Count every message at what its body weighs now: bodies restored from an image
    /// may be held otherwise than when it was made (a quorum queue's come back paged out).
    pub fn reweigh(&mut self) {
        let msgs = self.unacked.values_mut().map(|h| &mut h.msg);
        let mut total = 0;
        for m in self.ready.iter_mut().chain(msgs) {
            m.weight = m.body.weight() as u32;
            total += m.weight as usize;
        }
        self.weight = total;
    }
}

impl<B: Clone> QueueState<B> {
    /// The state as data (bodies are cloned handles).
    pub fn image(&self) -> Image<B> {
        let mut unacked: Vec<(u64, Held<B>)> =
            self.unacked.iter().map(|(s, h)| (*s, h.clone())).collect();
        unacked.sort_unstable_by_key(|(s, _)| *s);
        let mut pools: Vec<(ChannelId, u32)> = self.pools.iter().map(|(c, n)| (*c, *n)).collect();
        pools.sort_unstable();
        Image {
            ready: self.ready.clone(),
            unacked,
            consumers: self.consumers.clone(),
            pools,
            rr: self.rr,
            next_seq: self.next_seq,
            ever_consumed: self.ever_consumed,
            weight: self.weight,
            ready_bytes: self.ready_bytes,
            last_used_ms: self.last_used_ms,
            deleted: self.deleted,
        }
    }

    /// The state an image was made of, under `cfg`.
    pub fn from_image(cfg: Config, image: Image<B>) -> Self {
        QueueState {
            cfg,
            ready: image.ready,
            unacked: image.unacked.into_iter().collect(),
            consumers: image.consumers,
            pools: image.pools.into_iter().collect(),
            rr: image.rr,
            next_seq: image.next_seq,
            ever_consumed: image.ever_consumed,
            weight: image.weight,
            ready_bytes: image.ready_bytes,
            last_used_ms: image.last_used_ms,
            deleted: image.deleted,
            scratch: Vec::new(),
        }
    }

    /// The unacked messages held by consumers (not basic.get), by seq.
    pub fn held_by_consumers(&self) -> Vec<(u64, ConsumerId)> {
        let mut held: Vec<(u64, ConsumerId)> = self
            .unacked
            .iter()
            .filter_map(|(s, h)| Some((*s, h.consumer.clone()?)))
            .collect();
        held.sort_unstable_by_key(|(s, _)| *s);
        held
    }

    /// An unacked message as it was delivered.
    pub fn held_delivery(&self, seq: u64) -> Option<super::Delivery<B>> {
        self.unacked.get(&seq).map(|h| h.msg.delivery())
    }
}
