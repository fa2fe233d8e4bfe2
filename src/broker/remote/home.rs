//! The home node's side of forwarding: forwarded commands carried out on its queues, and
//! the answers sent back on the session they came on. Commands that came on a session that
//! has ended are not carried out (their sender gave up on them); when a session ends, the
//! channels that held messages from basic.get over it are closed on their queues, which
//! requeues those messages (`redelivered`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::wire::{Fwd, QueueRef, Settle, WireEntry};
use super::{Forwarder, decode};
use crate::broker::durable::Batch;
use crate::broker::ids::{ChannelId, NodeId};
use crate::broker::queue::receipt::{ConfirmTag, Receipt, ReceiptTag};
use crate::broker::queue::{ConnEvent, QueueCmd, QueueHandle};
use crate::cluster::link::{Inbound, Session};

/// Channels of a peer's session that hold messages got from a queue here.
type Held = HashMap<(NodeId, Session), HashMap<(u64, ChannelId), QueueHandle>>;

pub(super) async fn serve(fwd: Arc<Forwarder>, mut rx: mpsc::UnboundedReceiver<Inbound>) {
    let Some(cluster) = fwd.cluster().cloned() else {
        return;
    };
    let mut up = cluster.links_up();
    let mut last: BTreeMap<NodeId, Option<Session>> = up.borrow_and_update().clone();
    let mut held = Held::new();
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { return };
                // The link publishes a session before it reads a frame of it.
                let live = up.borrow().get(&m.from).copied().flatten() == Some(m.session);
                if let Some(f) = decode(&m) {
                    handle(&fwd, &mut held, m.from, m.session, live, f).await;
                }
            }
            r = up.changed() => {
                if r.is_err() {
                    return;
                }
                let now = up.borrow_and_update().clone();
                fwd.sessions_changed(&now);
                for (peer, was) in &last {
                    if let Some(old) = *was
                        && now.get(peer).copied().flatten() != Some(old)
                    {
                        for ((_, channel), q) in held.remove(&(*peer, old)).unwrap_or_default() {
                            q.send(QueueCmd::ChannelClosed(channel)).await;
                        }
                    }
                }
                last = now;
            }
        }
    }
}

/// The queue a peer names, if it runs here (same id: not a namesake declared since).
fn local(fwd: &Forwarder, q: &QueueRef) -> Option<QueueHandle> {
    fwd.vhost(&q.vhost)?.home_queue(&q.name, q.id)
}

async fn handle(
    fwd: &Arc<Forwarder>,
    held: &mut Held,
    from: NodeId,
    session: Session,
    live: bool,
    f: Fwd,
) {
    let answer = |req: u64, rx: oneshot::Receiver<Fwd>| {
        let fwd = fwd.clone();
        tokio::spawn(async move {
            let msg = rx.await.unwrap_or(Fwd::Gone { req });
            fwd.send(from, session, &msg).await;
        });
    };
    match f {
        Fwd::Taken { req, .. }
        | Fwd::Got { req, .. }
        | Fwd::Counted { req, .. }
        | Fwd::Purged { req, .. }
        | Fwd::Deleted { req, .. }
        | Fwd::Gone { req } => fwd.answer(from, req, f),
        _ if !live => {}
        Fwd::Publish { req, queue, msgs } => {
            let (tx, rx) = oneshot::channel();
            publish(fwd, &queue, req, msgs, tx).await;
            answer(req, rx);
        }
        Fwd::Get {
            req,
            queue,
            channel,
            no_ack,
        } => {
            let Some(q) = local(fwd, &queue) else {
                return fwd.send(from, session, &Fwd::Gone { req }).await;
            };
            if !no_ack {
                held.entry((from, session))
                    .or_default()
                    .insert((q.id, channel), q.clone());
            }
            let (tx, rx) = oneshot::channel();
            tokio::spawn(async move {
                let got = q.ask(|reply| QueueCmd::Get {
                    channel,
                    no_ack,
                    reply,
                });
                if let Some(got) = got.await {
                    let got = got.map(|(e, n)| (WireEntry::of(&e), n));
                    let _ = tx.send(Fwd::Got { req, got });
                }
            });
            answer(req, rx);
        }
        Fwd::Settle { queue, how, seqs } => {
            if let Some(q) = local(fwd, &queue) {
                let cmd = match how {
                    Settle::Ack => QueueCmd::Ack(seqs),
                    Settle::Requeue => QueueCmd::Requeue(seqs),
                    Settle::Discard => QueueCmd::Discard(seqs),
                };
                q.send(cmd).await;
            }
        }
        Fwd::ChannelClosed { queue, channel } => {
            if let Some(q) = local(fwd, &queue) {
                if let Some(h) = held.get_mut(&(from, session)) {
                    h.remove(&(q.id, channel));
                }
                q.send(QueueCmd::ChannelClosed(channel)).await;
            }
        }
        Fwd::Stat { req, queue } => {
            let (tx, rx) = oneshot::channel();
            if let Some(q) = local(fwd, &queue) {
                tokio::spawn(async move {
                    if let Some(s) = q.ask(QueueCmd::Stat).await {
                        let _ = tx.send(Fwd::Counted {
                            req,
                            messages: s.messages,
                            consumers: s.consumers,
                        });
                    }
                });
            }
            answer(req, rx);
        }
        Fwd::Purge { req, queue } => {
            let (tx, rx) = oneshot::channel();
            if let Some(q) = local(fwd, &queue) {
                tokio::spawn(async move {
                    if let Some(messages) = q.ask(QueueCmd::Purge).await {
                        let _ = tx.send(Fwd::Purged { req, messages });
                    }
                });
            }
            answer(req, rx);
        }
        Fwd::Delete {
            req,
            queue,
            if_unused,
            if_empty,
        } => {
            let (tx, rx) = oneshot::channel();
            if let Some(q) = local(fwd, &queue) {
                tokio::spawn(async move {
                    let r = q.ask(|reply| QueueCmd::Delete {
                        if_unused,
                        if_empty,
                        reply,
                    });
                    if let Some(result) = r.await {
                        let _ = tx.send(Fwd::Deleted { req, result });
                    }
                });
            }
            answer(req, rx);
        }
    }
}

/// Enqueue forwarded publishes as a local publisher would: persistent messages to a durable
/// queue are written (and synced) before they count as taken. `done` gets the answer.
async fn publish(
    fwd: &Forwarder,
    queue: &QueueRef,
    req: u64,
    msgs: Vec<super::wire::WireMsg>,
    done: oneshot::Sender<Fwd>,
) {
    let n = msgs.len() as u32;
    let Some(q) = local(fwd, queue) else {
        let _ = done.send(Fwd::Taken {
            req,
            refused: (0..n).collect(),
        });
        return;
    };
    let mut batch = Batch::default();
    let mut out = Vec::with_capacity(msgs.len());
    for w in msgs {
        let mut m = w.into_message();
        if let Some(store) = &q.store {
            batch.publish(store, &mut m, std::slice::from_ref(&q));
        }
        out.push(Arc::new(m));
    }
    let synced = match &q.store {
        Some(store) if !batch.is_empty() => {
            store.wait_for_space().await;
            let (tx, rx) = oneshot::channel();
            // Submitted before the queue sees the messages, so an ack's dequeue can never
            // reach the store ahead of the enqueue.
            batch.submit(
                store,
                Box::new(move |r: Result<(), _>| {
                    let _ = tx.send(r.is_ok());
                }),
            );
            Some(rx)
        }
        _ => None,
    };
    let (events, mut taken) = mpsc::unbounded_channel();
    let tags = (0..n)
        .map(|at| ReceiptTag {
            at,
            tag: ConfirmTag {
                channel: 0,
                tag: u64::from(at),
            },
        })
        .collect();
    // A queue deleted meanwhile drops the batch, and its receipt refuses it all.
    q.send(QueueCmd::Publish(
        out,
        Some(Receipt::new(events, req, tags)),
    ))
    .await;
    tokio::spawn(async move {
        let mut refused: Vec<u32> = match taken.recv().await {
            Some(ConnEvent::Taken { nacks, .. }) => nacks.iter().map(|t| t.tag as u32).collect(),
            _ => (0..n).collect(),
        };
        if let Some(rx) = synced
            && !rx.await.unwrap_or(false)
        {
            refused = (0..n).collect();
        }
        let _ = done.send(Fwd::Taken { req, refused });
    });
}
