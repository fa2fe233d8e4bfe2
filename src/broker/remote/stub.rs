//! A queue homed on another node, as this node holds it: a handle like any queue's whose
//! task forwards each command to the home node over the link's current session.
//!
//! Flow control: publishes in flight to the home node (sent, not yet taken) are bounded in
//! bytes; past the window the task stops reading its inbox, so publishers wait as they would
//! on a local queue's full inbox. Without a session (the link is down for longer than the
//! peer timeout) a publish is nacked, and a get, stat, purge or delete answers as for a
//! queue that is gone (404, as RabbitMQ answers for a queue whose home node is down).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Forwarder;
use super::wire::{Fwd, QueueRef, Settle, WireMsg};
use crate::broker::ids::NodeId;
use crate::broker::queue::{QueueCmd, QueueHandle, QueueShared, Stat};
use crate::broker::topology::QueueRecord;
use crate::cluster::link::Session;
use crate::error::{Error, code};

/// Bytes of publishes in flight to the home node, per queue.
const WINDOW: usize = 8 << 20;
/// The window counts in units of this many bytes (a semaphore's permits).
const UNIT: usize = 1024;

/// A handle for `q`, homed on another node, served by a new stub task.
pub fn spawn_stub(q: &QueueRecord, vhost: &str, fwd: Arc<Forwarder>, inbox: usize) -> QueueHandle {
    let (tx, rx) = mpsc::channel(inbox.max(1));
    let shared = Arc::new(QueueShared::new(
        q.name.clone(),
        q.id,
        q.exclusive_owner,
        q.auto_delete,
        q.arguments.clone(),
        None,
        tx,
    ));
    let stub = Stub {
        home: q.home,
        queue: QueueRef {
            vhost: vhost.to_string(),
            name: q.name.to_string(),
            id: q.id,
        },
        fwd,
        window: Arc::new(Semaphore::new(WINDOW / UNIT)),
        held: Arc::default(),
    };
    tokio::spawn(stub.run(rx));
    shared
}

struct Stub {
    home: NodeId,
    queue: QueueRef,
    fwd: Arc<Forwarder>,
    window: Arc<Semaphore>,
    /// Messages got with acks pending, by seq, with the session they came on: settlements
    /// are forwarded only on that session.
    held: Arc<Mutex<HashMap<u64, Session>>>,
}

fn no_consumers(queue: &str) -> Error {
    Error::connection(
        code::NOT_IMPLEMENTED,
        format!(
            "consuming from queue '{queue}' on another node is not supported yet; consume on its node"
        ),
    )
}

impl Stub {
    async fn run(self, mut rx: mpsc::Receiver<QueueCmd>) {
        while let Some(cmd) = rx.recv().await {
            if matches!(cmd, QueueCmd::Stop) {
                return;
            }
            self.handle(cmd).await;
        }
    }

    /// Send a request and hand its answer, if one comes, to `then`.
    async fn ask(&self, session: Session, make: impl FnOnce(u64) -> Fwd) -> oneshot::Receiver<Fwd> {
        let (req, rx) = self.fwd.expect(self.home, session);
        self.fwd.send(self.home, session, &make(req)).await;
        rx
    }

    async fn handle(&self, cmd: QueueCmd) {
        let Some(session) = self.fwd.session(self.home).await else {
            // Dropping the command drops its reply (the queue looks gone) and its receipt
            // (its publishes are nacked).
            if let QueueCmd::Consume(_, reply) = cmd {
                let _ = reply.send(Err(no_consumers(&self.queue.name)));
            }
            return;
        };
        let q = self.queue.clone();
        match cmd {
            QueueCmd::Publish(msgs, receipt) => {
                let bytes: usize = msgs.iter().map(|m| m.weight()).sum();
                let units = (bytes / UNIT).clamp(1, WINDOW / UNIT) as u32;
                let Ok(permit) = self.window.clone().acquire_many_owned(units).await else {
                    return;
                };
                let msgs = msgs.iter().map(|m| WireMsg::of(m)).collect();
                let rx = self
                    .ask(session, |req| Fwd::Publish {
                        req,
                        queue: q,
                        msgs,
                    })
                    .await;
                tokio::spawn(async move {
                    let answer = rx.await;
                    drop(permit);
                    if let (Ok(Fwd::Taken { refused, .. }), Some(r)) = (answer, receipt) {
                        r.answer(&refused);
                    }
                    // Otherwise the receipt is dropped unanswered: every publish refused.
                });
            }
            QueueCmd::Get {
                channel,
                no_ack,
                reply,
            } => {
                let rx = self
                    .ask(session, |req| Fwd::Get {
                        req,
                        queue: q,
                        channel,
                        no_ack,
                    })
                    .await;
                let held = self.held.clone();
                tokio::spawn(async move {
                    if let Ok(Fwd::Got { got, .. }) = rx.await {
                        let got = got.map(|(e, n)| (e.into_entry(), n));
                        if let (Some((e, _)), false) = (&got, no_ack) {
                            held.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(e.seq, session);
                        }
                        let _ = reply.send(got);
                    }
                });
            }
            QueueCmd::Ack(seqs) => self.settle(session, Settle::Ack, seqs).await,
            QueueCmd::Requeue(seqs) => self.settle(session, Settle::Requeue, seqs).await,
            QueueCmd::Discard(seqs) => self.settle(session, Settle::Discard, seqs).await,
            QueueCmd::ChannelClosed(channel) => {
                let msg = Fwd::ChannelClosed { queue: q, channel };
                self.fwd.send(self.home, session, &msg).await;
            }
            QueueCmd::Stat(reply) => {
                let rx = self.ask(session, |req| Fwd::Stat { req, queue: q }).await;
                tokio::spawn(async move {
                    if let Ok(Fwd::Counted {
                        messages,
                        consumers,
                        ..
                    }) = rx.await
                    {
                        let _ = reply.send(Stat {
                            messages,
                            consumers,
                        });
                    }
                });
            }
            QueueCmd::Purge(reply) => {
                let rx = self.ask(session, |req| Fwd::Purge { req, queue: q }).await;
                tokio::spawn(async move {
                    if let Ok(Fwd::Purged { messages, .. }) = rx.await {
                        let _ = reply.send(messages);
                    }
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
                tokio::spawn(async move {
                    if let Ok(Fwd::Deleted { result, .. }) = rx.await {
                        let _ = reply.send(result);
                    }
                });
            }
            QueueCmd::Consume(_, reply) => {
                let _ = reply.send(Err(no_consumers(&self.queue.name)));
            }
            QueueCmd::Cancel { reply, .. } => {
                let _ = reply.send(());
            }
            // Only consumers' deliveries come back; there are none through a stub yet.
            QueueCmd::Return { .. } | QueueCmd::Stop => {}
        }
    }

    /// Forward the settlements of messages got on the current session; those got on an
    /// earlier one were requeued by the home node when it ended.
    async fn settle(&self, session: Session, how: Settle, seqs: Vec<u64>) {
        let seqs: Vec<u64> = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            seqs.into_iter()
                .filter(|s| held.remove(s) == Some(session))
                .collect()
        };
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
