//! A queue homed on another node, as this node holds it: a handle like any queue's whose
//! task forwards each command to the home node over the link's current session.
//!
//! Flow control: publishes in flight to the home node (sent, not yet taken) are bounded in
//! bytes; past the window the task stops reading its inbox, so publishers wait as they would
//! on a local queue's full inbox. Without a session (the link is down for longer than the
//! peer timeout) a publish is nacked, and a get, stat, purge or delete answers 404 with
//! RabbitMQ's words for a queue whose home node is down.
//!
//! A quorum queue on a node that is not one of its members is used through a member: the
//! first one (in placement order) whose link is up, kept while its link stays up. When that
//! link goes, the stub moves to another member and registers its consumers again there;
//! the queue then returns what they held through the old member (redelivered), and a
//! late command of the old member for their channels is ignored (see `quorum::apply`), so
//! consumers carry on with no message lost, and no channel is served by two members at once
//! (a message held at the switch comes again, redelivered).

mod route;
mod take_over;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::wire::{Fwd, QueueRef, Settle, WireEntry, WireMsg};
use super::{Consuming, Forwarder, Held};
use crate::broker::consumer::{ChannelLimit, ConsumerFlow};
use crate::broker::ids::{ChannelId, ConsumerId, NodeId};
use crate::broker::message::Message;
use crate::broker::queue::receipt::Receipt;
pub use take_over::{TakeOver, take_over};

use crate::broker::queue::{
    ConnSender, ConsumerSpec, Entry, GetReply, QueueCmd, QueueHandle, QueueShared, RemoteHome,
    Settles, Stat,
};
use crate::broker::topology::QueueRecord;
use crate::cluster::link::Session;
use crate::error::Error;
use crate::protocol::FieldTable;

type Links = watch::Receiver<crate::cluster::link::Sessions>;

/// Bytes of publishes in flight to the home node, per queue.
const WINDOW: usize = 8 << 20;
/// The window counts in units of this many bytes (a semaphore's permits).
const UNIT: usize = 1024;

/// A handle for `q`, homed on another node, served by a new stub task.
pub fn spawn_stub(q: &QueueRecord, vhost: &str, fwd: Arc<Forwarder>, inbox: usize) -> QueueHandle {
    let (tx, rx) = mpsc::channel(inbox.max(1));
    let mut shared = QueueShared::new(
        q.name.clone(),
        q.id,
        q.exclusive_owner,
        q.auto_delete,
        q.arguments.clone(),
        None,
        tx,
    );
    let members = q
        .quorum
        .as_ref()
        .map(|p| p.members.clone())
        .unwrap_or_default();
    let home = match members.first() {
        // A quorum queue's errors are its own (no home node to be down).
        Some(first) => {
            shared.quorum = true;
            *first
        }
        None => {
            shared.remote = Some(RemoteHome {
                node: q.home,
                durable: q.durable,
            });
            q.home
        }
    };
    let shared = Arc::new(shared);
    let stub = Stub::new(shared.clone(), vhost, (home, members), fwd);
    tokio::spawn(stub.run(rx));
    shared
}

/// What a consumer of a quorum queue asked for, to ask again through another member.
struct Registration {
    no_ack: bool,
    exclusive: bool,
    prefetch: u32,
    arguments: FieldTable,
    events: ConnSender,
    pool: Arc<ChannelLimit>,
}

/// A consumer's credit cell, and the limit last sent to the home node.
type Flows = Arc<Mutex<HashMap<ConsumerId, (Arc<ConsumerFlow>, u64)>>>;

struct Stub {
    /// The node commands go to: a classic queue's home, or the quorum member used now.
    home: NodeId,
    /// A quorum queue's members (empty for a classic queue, whose home is fixed).
    members: Vec<NodeId>,
    /// The session to `home` that the consumers are registered over (quorum).
    routed: Option<Session>,
    /// A quorum queue's consumers here, to register again on another member.
    registered: HashMap<ConsumerId, Registration>,
    queue: QueueRef,
    fwd: Arc<Forwarder>,
    window: Arc<Semaphore>,
    /// Messages held with acks pending, by seq, with the session they came on:
    /// settlements are forwarded only on that session.
    held: Held,
    /// This queue's consumers on this node.
    flows: Flows,
    shared: QueueHandle,
}

/// Resolves when the links change (never without a watch, or once it ends).
async fn changed(links: &mut Option<Links>) -> Option<()> {
    if let Some(l) = links
        && l.changed().await.is_ok()
    {
        return Some(());
    }
    std::future::pending().await
}

/// Hand the home node's answer to the waiting command once it comes, if `take` finds in it
/// what the command waits for; otherwise the reply is dropped (the queue looks gone).
fn relay<T: Send + 'static>(
    rx: oneshot::Receiver<Fwd>,
    reply: oneshot::Sender<T>,
    take: impl FnOnce(Fwd) -> Option<T> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Some(answer) = rx.await.ok().and_then(take) {
            let _ = reply.send(answer);
        }
    });
}

impl Stub {
    fn new(
        shared: QueueHandle,
        vhost: &str,
        (home, members): (NodeId, Vec<NodeId>),
        fwd: Arc<Forwarder>,
    ) -> Stub {
        Stub {
            home,
            members,
            routed: None,
            registered: HashMap::new(),
            queue: QueueRef {
                vhost: vhost.to_string(),
                name: shared.name.to_string(),
                id: shared.id,
            },
            fwd,
            window: Arc::new(Semaphore::new(WINDOW / UNIT)),
            held: Arc::default(),
            flows: Arc::default(),
            shared,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<QueueCmd>) {
        // A quorum queue's stub watches the links, to move its consumers off a member that
        // went away before a command needs it.
        let mut links = match (self.members.is_empty(), self.fwd.cluster()) {
            (false, Some(c)) => Some(c.links_up()),
            _ => None,
        };
        loop {
            tokio::select! {
                cmd = rx.recv() => {
                    match cmd {
                        None | Some(QueueCmd::Stop) => break,
                        Some(QueueCmd::Members(m) | QueueCmd::Leave(m)) => {
                            self.members_changed(m).await
                        }
                        Some(cmd) => self.handle(cmd).await,
                    }
                }
                _ = self.shared.woken() => self.credit().await,
                Some(()) = changed(&mut links) => {
                    if self.holds() {
                        self.session().await;
                    }
                }
            }
        }
        let ids: Vec<ConsumerId> = {
            let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
            flows.drain().map(|(id, _)| id).collect()
        };
        for id in ids {
            self.fwd.consumer_gone(id);
        }
    }

    /// Consumers' connections wrote deliveries out: tell the home node how far each may
    /// now be sent, and arrange to be woken by the next grant.
    async fn credit(&mut self) {
        let Some(session) = self.session().await else {
            return;
        };
        let mut grants = Vec::new();
        {
            let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
            for (id, (flow, sent)) in flows.iter_mut() {
                flow.starve();
                let limit = flow.limit();
                if limit > *sent {
                    *sent = limit;
                    grants.push((id.clone(), limit));
                }
            }
        }
        for (consumer, limit) in grants {
            let msg = Fwd::Credit {
                queue: self.queue.clone(),
                consumer,
                limit,
            };
            self.fwd.send(self.home, session, &msg).await;
        }
        // A woken stub may be woken by acks that freed its channels' pools.
        for (session, channel, n) in self.fwd.retry_wants(self.home) {
            let msg = Fwd::PoolGrant { channel, n };
            self.fwd.send(self.home, session, &msg).await;
        }
    }

    /// Send a request; its answer comes on the receiver (dropped if the session ends).
    async fn ask(&self, session: Session, make: impl FnOnce(u64) -> Fwd) -> oneshot::Receiver<Fwd> {
        let (req, rx) = self.fwd.expect(self.home, session);
        self.fwd.send(self.home, session, &make(req)).await;
        rx
    }

    async fn handle(&mut self, cmd: QueueCmd) {
        let Some(session) = self.session().await else {
            // Dropping the command drops its reply (the queue looks gone) and its receipt
            // (its publishes are nacked).
            if let QueueCmd::Consume(_, reply) = cmd {
                let _ = reply.send(Err(self.shared.gone(&self.queue.vhost)));
            }
            return;
        };
        let q = self.queue.clone();
        match cmd {
            QueueCmd::Publish(msgs, receipt) => self.publish(session, msgs, receipt, None).await,
            QueueCmd::Commit {
                msgs,
                settles,
                receipt,
            } => {
                let settles = settles
                    .into_iter()
                    .map(|(how, seqs)| (how, self.held_here(session, seqs)))
                    .filter(|(_, seqs)| !seqs.is_empty())
                    .collect();
                self.publish(session, msgs, Some(receipt), Some(settles))
                    .await
            }
            QueueCmd::Get {
                channel,
                no_ack,
                reply,
            } => self.get(session, channel, no_ack, reply).await,
            QueueCmd::Ack(seqs) => self.settle(session, Settle::Ack, seqs).await,
            QueueCmd::Requeue(seqs) => self.settle(session, Settle::Requeue, seqs).await,
            QueueCmd::Discard(seqs) => self.settle(session, Settle::Discard, seqs).await,
            QueueCmd::ChannelClosed(channel) => self.channel_closed(session, channel).await,
            QueueCmd::Stat(reply) => {
                let rx = self.ask(session, |req| Fwd::Stat { req, queue: q }).await;
                relay(rx, reply, |f| match f {
                    Fwd::Counted {
                        messages,
                        consumers,
                        ..
                    } => Some(Stat {
                        messages,
                        consumers,
                    }),
                    _ => None,
                });
            }
            QueueCmd::Purge(reply) => {
                let rx = self.ask(session, |req| Fwd::Purge { req, queue: q }).await;
                relay(rx, reply, |f| match f {
                    Fwd::Purged { messages, .. } => Some(messages),
                    _ => None,
                });
            }
            QueueCmd::Delete {
                if_unused,
                if_empty,
                reply,
            } => {
                let rx = self
                    .ask(session, |req| Fwd::Delete {
                        req,
                        queue: q,
                        if_unused,
                        if_empty,
                    })
                    .await;
                relay(rx, reply, |f| match f {
                    Fwd::Deleted { result, .. } => Some(result),
                    _ => None,
                });
            }
            QueueCmd::Consume(spec, reply) => self.consume(session, spec, Some(reply)).await,
            QueueCmd::Cancel { consumer, reply } => self.cancel(session, consumer, reply).await,
            QueueCmd::Return {
                consumer,
                entries,
                no_ack,
            } => self.give_back(session, consumer, entries, no_ack).await,
            QueueCmd::Stop
            | QueueCmd::NodeDown(_)
            | QueueCmd::Members(_)
            | QueueCmd::Leave(_)
            | QueueCmd::Move(_) => {}
        }
    }

    /// Publishes to the home node, within the stub's byte window; the receipt is answered
    /// with the home node's answer (dropped unanswered, every publish refused, without one).
    /// (`settles`: a transaction's part, applied with the publishes at the home node.)
    async fn publish(
        &mut self,
        session: Session,
        msgs: Vec<Arc<Message>>,
        receipt: Option<Receipt>,
        settles: Option<Settles>,
    ) {
        let q = self.queue.clone();
        let bytes: usize = msgs.iter().map(|m| m.weight()).sum();
        let units = (bytes / UNIT).clamp(1, WINDOW / UNIT) as u32;
        let Ok(permit) = self.window.clone().acquire_many_owned(units).await else {
            return;
        };
        let msgs = msgs.iter().map(|m| WireMsg::of(m)).collect();
        let rx = self
            .ask(session, |req| match settles {
                None => Fwd::Publish {
                    req,
                    queue: q,
                    msgs,
                },
                Some(settles) => Fwd::Commit {
                    req,
                    queue: q,
                    msgs,
                    settles,
                },
            })
            .await;
        tokio::spawn(async move {
            let answer = rx.await;
            drop(permit);
            if let (
                Ok(Fwd::Taken {
                    refused,
                    lost: false,
                    ..
                }),
                Some(r),
            ) = (answer, receipt)
            {
                r.answer(&refused);
            }
            // Otherwise the receipt is dropped unanswered: every publish refused, and the
            // batch lost.
        });
    }

    /// basic.get at the home node; a message got with ack is held on this session.
    async fn get(
        &mut self,
        session: Session,
        channel: ChannelId,
        no_ack: bool,
        reply: oneshot::Sender<GetReply>,
    ) {
        let q = self.queue.clone();
        let rx = self
            .ask(session, |req| Fwd::Get {
                req,
                queue: q,
                channel,
                no_ack,
            })
            .await;
        let (held, home) = (self.held.clone(), self.home);
        relay(rx, reply, move |f| {
            let Fwd::Got { got, .. } = f else { return None };
            let got = got.map(|(e, n)| (e.into_entry(), n));
            if let (Some((e, _)), false) = (&got, no_ack) {
                held.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(e.seq, (home, session, channel));
            }
            Some(got)
        });
    }

    /// A channel closed: its consumers here are forgotten, and the home node is told.
    async fn channel_closed(&mut self, session: Session, channel: ChannelId) {
        let q = self.queue.clone();
        let gone: Vec<ConsumerId> = {
            let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
            let ids = flows
                .keys()
                .filter(|id| id.channel == channel)
                .cloned()
                .collect();
            flows.retain(|id, _| id.channel != channel);
            ids
        };
        self.registered.retain(|id, _| id.channel != channel);
        for id in gone {
            self.fwd.remove_consumer(&id);
        }
        self.fwd.forget_lent(self.home, channel);
        let msg = Fwd::ChannelClosed { queue: q, channel };
        self.fwd.send(self.home, session, &msg).await;
    }

    /// A consumer of this channel's node, started at the home node: known here first (its
    /// deliveries may follow the home node's answer at once), with its channel's pool lent
    /// if it has a global prefetch, and registered to move with the queue if it can.
    /// Without a reply (a consumer taken over), one the home node refuses is cancelled.
    async fn consume(
        &mut self,
        session: Session,
        spec: ConsumerSpec,
        reply: Option<oneshot::Sender<Result<(), Error>>>,
    ) {
        let q = self.queue.clone();
        let id = spec.id.clone();
        let limit = spec.flow.limit();
        spec.flow.starve();
        // Known before the home node has it: deliveries may follow its answer at once.
        self.flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), (spec.flow.clone(), limit));
        // A global prefetch spans nodes only for consumers started under it.
        let pooled = !spec.no_ack && spec.channel_limit.limit() > 0;
        if pooled {
            let key = (self.home, session, id.channel);
            let pool = spec.channel_limit.clone();
            self.fwd.lend(key, pool, spec.events.clone());
        }
        let moves = !self.members.is_empty();
        if moves {
            self.registered.insert(
                id.clone(),
                Registration {
                    no_ack: spec.no_ack,
                    exclusive: spec.exclusive,
                    prefetch: spec.prefetch,
                    arguments: spec.arguments.clone(),
                    events: spec.events.clone(),
                    pool: spec.channel_limit.clone(),
                },
            );
        }
        let consuming = Consuming {
            home: self.home,
            session,
            events: spec.events.clone(),
            pool: spec.channel_limit.clone(),
            pooled,
            queue: self.shared.clone(),
            held: self.held.clone(),
            moves,
        };
        self.fwd.add_consumer(id.clone(), consuming);
        let rx = self
            .ask(session, |req| Fwd::Consume {
                req,
                queue: q,
                consumer: id.clone(),
                no_ack: spec.no_ack,
                exclusive: spec.exclusive,
                prefetch: spec.prefetch,
                arguments: spec.arguments,
                limit,
                pooled,
            })
            .await;
        let (fwd, flows, shared) = (self.fwd.clone(), self.flows.clone(), self.shared.clone());
        let vhost = self.queue.vhost.clone();
        tokio::spawn(async move {
            let result = match rx.await {
                Ok(Fwd::Consumed { result, .. }) => result,
                _ => Err(shared.gone(&vhost)),
            };
            if result.is_err() {
                flows.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                match &reply {
                    Some(_) => _ = fwd.remove_consumer(&id),
                    None => fwd.consumer_gone(id),
                }
            }
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        });
    }

    /// basic.cancel: forgotten here, then at the home node; answered once it is there.
    async fn cancel(&mut self, session: Session, consumer: ConsumerId, reply: oneshot::Sender<()>) {
        let q = self.queue.clone();
        self.registered.remove(&consumer);
        self.flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&consumer);
        self.fwd.remove_consumer(&consumer);
        let rx = self
            .ask(session, |req| Fwd::Cancel {
                req,
                queue: q,
                consumer,
            })
            .await;
        tokio::spawn(async move {
            let _ = rx.await;
            let _ = reply.send(());
        });
    }

    /// Deliveries this node could not hand to their consumer go back to the home node.
    async fn give_back(
        &mut self,
        session: Session,
        consumer: ConsumerId,
        entries: Vec<Entry>,
        no_ack: bool,
    ) {
        let q = self.queue.clone();
        {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            for e in &entries {
                held.remove(&e.seq);
            }
        }
        let msg = Fwd::Return {
            queue: q,
            consumer,
            entries: entries.iter().map(WireEntry::of).collect(),
            no_ack,
        };
        self.fwd.send(self.home, session, &msg).await;
    }

    /// Of `seqs`, those got on `session` with the home node (no longer held once settled).
    fn held_here(&self, session: Session, seqs: Vec<u64>) -> Vec<u64> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        seqs.into_iter()
            .filter(|s| {
                held.remove(s)
                    .is_some_and(|(n, s, _)| (n, s) == (self.home, session))
            })
            .collect()
    }

    /// Forward the settlements of messages got on the current session; those got on an
    /// earlier one were requeued by the home node when it ended.
    async fn settle(&self, session: Session, how: Settle, seqs: Vec<u64>) {
        let seqs = self.held_here(session, seqs);
        if !seqs.is_empty() {
            let msg = Fwd::Settle {
                queue: self.queue.clone(),
                how,
                seqs,
            };
            self.fwd.send(self.home, session, &msg).await;
        }
    }
}
