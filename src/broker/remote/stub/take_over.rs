//! A quorum queue replica whose node left the queue's members goes on as a stub on the
//! same inbox (`quorum/leave.rs` hands it over): its channels keep the queue's handle, so
//! their consumers, acks and closes reach the stub, which registers the consumers again
//! through a member after moving the channels the queue knows there.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::Stub;
use crate::broker::ids::{ChannelId, NodeId};
use crate::broker::queue::{ConnEvent, ConsumerSpec, QueueCmd, QueueHandle};
use crate::broker::remote::Forwarder;
use crate::broker::remote::wire::Fwd;

/// A quorum queue replica of a node that left the queue's members, to go on as a stub.
pub struct TakeOver {
    pub shared: QueueHandle,
    pub vhost: String,
    pub members: Vec<NodeId>,
    pub fwd: Arc<Forwarder>,
    /// The replica's consumers: registered again through a member.
    pub consumers: Vec<ConsumerSpec>,
    /// This node's channels the queue knows (consuming, or holding messages got): moved to
    /// that member first, so that what they held comes back (redelivered) rather than wait
    /// for a replica that is gone.
    pub channels: Vec<ChannelId>,
    /// Commands the replica had not carried out, asked again through the member.
    pub again: Vec<QueueCmd>,
}

/// Serve a replica's inbox from now on by the stub of a node that left the queue's members:
/// channels keep the queue's handle, so their consumers, acks and closes reach the stub.
pub fn take_over(t: TakeOver, rx: mpsc::Receiver<QueueCmd>) {
    tokio::spawn(taken_over(t, rx));
}

async fn taken_over(t: TakeOver, rx: mpsc::Receiver<QueueCmd>) {
    let Some(home) = t.members.first().copied() else {
        return;
    };
    let mut stub = Stub::new(t.shared, &t.vhost, (home, t.members), t.fwd);
    match stub.session().await {
        Some(session) => {
            for channel in t.channels {
                let queue = stub.queue.clone();
                stub.fwd
                    .send(stub.home, session, &Fwd::Move { queue, channel })
                    .await;
            }
            for spec in t.consumers {
                stub.consume(session, spec, None).await;
            }
        }
        None => {
            for spec in t.consumers {
                let _ = spec.events.send(ConnEvent::Cancelled(spec.id));
            }
        }
    }
    for cmd in t.again {
        stub.handle(cmd).await;
    }
    tracing::info!(queue = %stub.queue.name, member = stub.home, "this node left the quorum queue's members: used through a member now");
    stub.run(rx).await;
}
