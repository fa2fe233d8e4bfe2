//! A queue's answer to a batch of confirm-mode publishes: which of them it took. The
//! publisher's connection holds the batch's confirms until every queue has answered, then
//! acks what all took and nacks the rest. A batch the queue never saw (deleted meanwhile,
//! its inbox dropped) answers by itself when dropped: all refused.

use super::{ConnEvent, ConnSender};

/// A confirm-mode publish: its channel and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfirmTag {
    pub channel: u16,
    pub tag: u64,
}

/// A confirm-mode publish in a batch sent to a queue, by its position in the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiptTag {
    pub at: u32,
    pub tag: ConfirmTag,
}

#[derive(Debug)]
pub struct Receipt {
    events: ConnSender,
    token: u64,
    /// The batch's confirm-mode messages.
    tags: Vec<ReceiptTag>,
    answered: bool,
}

impl Receipt {
    pub fn new(events: ConnSender, token: u64, tags: Vec<ReceiptTag>) -> Self {
        Receipt {
            events,
            token,
            tags,
            answered: false,
        }
    }

    /// The queue took the batch except the messages at `refused` (positions, ascending).
    pub fn answer(mut self, refused: &[u32]) {
        let nacks = self
            .tags
            .iter()
            .filter(|t| refused.binary_search(&t.at).is_ok())
            .map(|t| t.tag)
            .collect();
        self.send(nacks, false);
    }

    fn send(&mut self, nacks: Vec<ConfirmTag>, lost: bool) {
        self.answered = true;
        let _ = self.events.send(ConnEvent::Taken {
            token: self.token,
            nacks,
            lost,
        });
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if !self.answered {
            let nacks = self.tags.iter().map(|t| t.tag).collect();
            self.send(nacks, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::broker::message::Message;
    use crate::broker::queue::{QueueCmd, QueueHandle};
    use crate::broker::vhost::{QueueDecl, QueueSettings, VHost};

    async fn queue() -> (Arc<VHost>, QueueHandle) {
        let settings = QueueSettings {
            inbox: 8,
            memory_budget: 1 << 20,
            flow_messages: 1 << 16,
            quorum: Default::default(),
        };
        let memory = Arc::new(crate::broker::memory::MemoryMonitor::new(0));
        let v = VHost::new("/", settings, memory, None, 0);
        let d = QueueDecl {
            name: "q".into(),
            ..Default::default()
        };
        let q = v
            .declare_queue(&d, crate::broker::ids::ConnId { node: 0, seq: 1 })
            .await
            .unwrap();
        (v, q)
    }

    fn msg() -> Arc<Message> {
        Arc::new(Message {
            exchange: Bytes::new(),
            routing_key: Bytes::from_static(b"q"),
            properties: Bytes::from_static(&[0, 0]),
            body: Bytes::from_static(b"x"),
            persistent: false,
            stored: None,
        })
    }

    fn ct(channel: u16, tag: u64) -> ConfirmTag {
        ConfirmTag { channel, tag }
    }

    fn rt(at: u32, channel: u16, tag: u64) -> ReceiptTag {
        ReceiptTag {
            at,
            tag: ct(channel, tag),
        }
    }

    async fn answer(rx: &mut mpsc::UnboundedReceiver<ConnEvent>) -> (u64, Vec<ConfirmTag>) {
        match rx.recv().await {
            Some(ConnEvent::Taken { token, nacks, .. }) => (token, nacks),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_live_queue_takes_the_batch() {
        let (_v, q) = queue().await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let r = Receipt::new(tx, 3, vec![rt(0, 1, 7), rt(1, 1, 8)]);
        assert!(q.send(QueueCmd::Publish(vec![msg(), msg()], Some(r))).await);
        assert_eq!(answer(&mut rx).await, (3, vec![]));
    }

    /// The publish is in the inbox when the queue is deleted: the queue never takes it.
    #[tokio::test]
    async fn a_queue_deleted_under_a_publish_refuses_it() {
        let (_v, q) = queue().await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (reply, deleted) = oneshot::channel();
        assert!(
            q.send(QueueCmd::Delete {
                if_unused: false,
                if_empty: false,
                reply,
            })
            .await
        );
        let r = Receipt::new(tx.clone(), 4, vec![rt(0, 2, 1)]);
        assert!(q.send(QueueCmd::Publish(vec![msg()], Some(r))).await);
        assert_eq!(deleted.await.unwrap().unwrap(), 0);
        assert_eq!(answer(&mut rx).await, (4, vec![ct(2, 1)]));
        // Once the queue is gone, a send fails and the receipt still answers.
        let r = Receipt::new(tx, 5, vec![rt(0, 2, 2)]);
        assert!(!q.send(QueueCmd::Publish(vec![msg()], Some(r))).await);
        assert_eq!(answer(&mut rx).await, (5, vec![ct(2, 2)]));
    }
}
