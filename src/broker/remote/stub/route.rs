//! A quorum queue's stub picks the member it uses the queue through: the one used now
//! while its link is up, else the first member (in placement order) whose link is up. On a
//! switch its channels that hold messages move to the new member first (their messages come
//! back, redelivered), then its consumers are registered there again; a member that leaves
//! the members is dropped at once.

use std::collections::BTreeSet;

use super::Stub;
use crate::broker::ids::{ChannelId, ConsumerId, NodeId};
use crate::broker::remote::Consuming;
use crate::broker::remote::wire::Fwd;
use crate::cluster::link::Session;

impl Stub {
    /// The session to send commands over: to a classic queue's home (waiting up to the
    /// peer timeout for its link); for a quorum queue, to the member used now while its link
    /// is up, else to the first member whose link is up (moving the consumers there), else
    /// waiting for the one used now.
    pub(super) async fn session(&mut self) -> Option<Session> {
        if self.members.is_empty() {
            return self.fwd.session(self.home).await;
        }
        let up = self.fwd.cluster()?.links_up().borrow().clone();
        let live = |n: &NodeId| up.get(n).copied().flatten();
        let pick = live(&self.home)
            .map(|s| (self.home, s))
            .or_else(|| self.members.iter().find_map(|m| live(m).map(|s| (*m, s))));
        let (node, session) = match pick {
            Some(p) => p,
            None => (self.home, self.fwd.session(self.home).await?),
        };
        if node != self.home || self.routed != Some(session) {
            self.reroute(node, session).await;
        }
        Some(session)
    }

    /// A quorum queue's members changed: a member that left is not used any more (its
    /// consumers move to one of the others at once).
    pub(super) async fn members_changed(&mut self, members: Vec<NodeId>) {
        if members.is_empty() {
            return;
        }
        if !members.contains(&self.home) {
            self.home = members[0];
            self.routed = None;
        }
        self.members = members;
        if self.holds() {
            self.session().await;
        }
    }

    /// Whether something here moves with the queue to another member: consumers, or
    /// messages held.
    pub(super) fn holds(&self) -> bool {
        !self.registered.is_empty()
            || !(self.held.lock().unwrap_or_else(|e| e.into_inner())).is_empty()
    }

    /// Use the queue through `node` from now on: the consumers are registered there again
    /// (one that it refuses is cancelled).
    pub(super) async fn reroute(&mut self, node: NodeId, session: Session) {
        if self.routed.is_some() {
            tracing::info!(queue = %self.queue.name, member = node, consumers = self.registered.len(), "quorum queue used through another member");
        }
        self.home = node;
        self.routed = Some(session);
        // Channels that hold messages got or delivered through another route move to this
        // member first: the queue gives those back (redelivered), as it does when a
        // consumer is registered again, also for a channel that only got messages (no
        // consumer to register), which would otherwise keep them for good.
        let moved: BTreeSet<ChannelId> = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let here = |n: &NodeId, s: &Session| (*n, *s) == (node, session);
            let moved = (held.values())
                .filter(|(n, s, _)| !here(n, s))
                .map(|(_, _, ch)| *ch)
                .collect();
            held.retain(|_, (n, s, _)| here(n, s));
            moved
        };
        for channel in moved {
            let queue = self.queue.clone();
            (self.fwd)
                .send(node, session, &Fwd::Move { queue, channel })
                .await;
        }
        // Only consumers still here (not cancelled meanwhile, nor refused) go along.
        self.registered.retain(|id, _| self.fwd.has_consumer(id));
        let ids: Vec<ConsumerId> = self.registered.keys().cloned().collect();
        for id in ids {
            let Some(r) = self.registered.get(&id) else {
                continue;
            };
            let (events, no_ack) = (r.events.clone(), r.no_ack);
            let limit = {
                let flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
                flows.get(&id).map(|(f, _)| f.limit()).unwrap_or(0)
            };
            let consuming = Consuming {
                home: node,
                session,
                events: events.clone(),
                pool: r.pool.clone(),
                pooled: false,
                queue: self.shared.clone(),
                held: self.held.clone(),
                moves: true,
            };
            self.fwd.add_consumer(id.clone(), consuming);
            let msg = |req| Fwd::Consume {
                req,
                queue: self.queue.clone(),
                consumer: id.clone(),
                no_ack,
                exclusive: r.exclusive,
                prefetch: r.prefetch,
                arguments: r.arguments.clone(),
                limit,
                pooled: false,
            };
            let rx = self.ask(session, msg).await;
            let (fwd, flows) = (self.fwd.clone(), self.flows.clone());
            tokio::spawn(async move {
                if !matches!(rx.await, Ok(Fwd::Consumed { result: Ok(()), .. })) {
                    flows.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    fwd.consumer_gone(id);
                }
            });
        }
    }
}
