//! The publish path: content frames assembled into messages, routed against the vhost's
//! snapshot, staged per queue (one command per queue per read), written to the store when
//! persistent, and confirmed: at once, or after the store's sync.

use std::sync::Arc;

use bytes::Bytes;

use super::{Conn, End};
use crate::broker::consumer::ConnEvent;
use crate::broker::message::{Message, Persisted};
use crate::broker::queue::{QueueCmd, QueueHandle};
use crate::channel::State;
use crate::error::{Error, code};
use crate::protocol::encode;
use crate::store::Op;

impl Conn {
    pub(super) fn on_header(
        &mut self,
        ch: u16,
        class_id: u16,
        body_size: u64,
        properties: Bytes,
    ) -> Result<(), Error> {
        let max = self.broker.config.max_message_size;
        let Some(c) = self.channels.get_mut(&ch) else {
            return Err(Error::connection(
                code::CHANNEL_ERROR,
                format!("content header on closed channel {ch}"),
            ));
        };
        if c.state == State::Closing {
            return Ok(());
        }
        match c.assembler.header(class_id, body_size, properties, max)? {
            Some(content) => self.publish(ch, content),
            None => Ok(()),
        }
    }

    pub(super) fn on_body(&mut self, ch: u16, data: Bytes) -> Result<(), Error> {
        let Some(c) = self.channels.get_mut(&ch) else {
            return Err(Error::connection(
                code::CHANNEL_ERROR,
                format!("content body on closed channel {ch}"),
            ));
        };
        if c.state == State::Closing {
            return Ok(());
        }
        match c.assembler.body(data)? {
            Some(content) => self.publish(ch, content),
            None => Ok(()),
        }
    }

    /// Route a complete publish and stage it for its queues (sent at the end of the read).
    pub(super) fn publish(
        &mut self,
        ch: u16,
        content: crate::protocol::content::Content,
    ) -> Result<(), Error> {
        self.published = true;
        let p = &content.publish;
        let mandatory = p.mandatory;
        let exchange = std::str::from_utf8(&p.exchange).unwrap_or("\u{fffd}");
        let vhost = self.vhost().clone();
        let routes = vhost.routes();
        if !exchange.is_empty() {
            match routes.exchange(exchange) {
                None => {
                    return Err(Error::not_found(format!(
                        "no exchange '{exchange}' in vhost '{}'",
                        vhost.name
                    ))
                    .during(60, 40));
                }
                Some(x) if x.internal => {
                    return Err(Error::access_refused(format!(
                        "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                        vhost.name
                    ))
                    .during(60, 40));
                }
                Some(_) => {}
            }
        }
        let mut msg = Message {
            exchange: p.exchange.clone(),
            routing_key: p.routing_key.clone(),
            properties: content.properties,
            body: content.body,
            persistent: content.persistent,
            stored: None,
        };
        let mut targets = std::mem::take(&mut self.route_buf);
        routes.route(exchange, &msg, &mut targets);
        drop(routes);
        if let Some(tx) = self.channels.get_mut(&ch).and_then(|c| c.tx.as_mut()) {
            // Staged: routed now, written and made visible at tx.commit.
            tx.publishes.push(crate::channel::TxPublish {
                msg,
                targets: std::mem::take(&mut targets),
                mandatory,
            });
            self.route_buf = targets;
            return Ok(());
        }
        let mut ops = std::mem::take(&mut self.store_ops);
        self.persist(&mut msg, &targets, &mut ops);
        self.store_ops = ops;
        let msg = Arc::new(msg);
        if targets.is_empty() && mandatory {
            self.write_return(ch, &msg);
        }
        for q in targets.drain(..) {
            match self.pending.iter_mut().find(|(h, _)| h.id == q.id) {
                Some((_, batch)) => batch.push(msg.clone()),
                None => self.pending.push((q, vec![msg.clone()])),
            }
        }
        self.route_buf = targets;
        if let Some(c) = self.channels.get_mut(&ch)
            && let Some(next) = c.confirm_next.as_mut()
        {
            let tag = *next;
            *next += 1;
            match self.confirms.iter_mut().find(|(c, _, _)| *c == ch) {
                Some(entry) => {
                    entry.1 = tag;
                    entry.2 += 1;
                }
                None => self.confirms.push((ch, tag, 1)),
            }
        }
        Ok(())
    }

    /// A persistent message routed to durable queues is written once, referenced by each
    /// durable queue's index entry, and shared by reference count.
    pub(crate) fn persist(&self, msg: &mut Message, targets: &[QueueHandle], ops: &mut Vec<Op>) {
        let durable = targets.iter().filter(|q| q.store.is_some()).count() as u32;
        if durable == 0 || !msg.persistent {
            return;
        }
        let id = self.broker.store.next_message_id();
        ops.push(Op::PutMessage {
            id,
            msg: msg.to_stored(),
        });
        for q in targets.iter().filter(|q| q.store.is_some()) {
            ops.push(Op::Enqueue {
                queue: q.id,
                msg: id,
            });
        }
        msg.stored = Some(Arc::new(Persisted::new(id, durable)));
    }

    /// basic.return 312 NO_ROUTE with the message, for a mandatory publish nothing took.
    pub(crate) fn write_return(&mut self, ch: u16, msg: &Message) {
        encode::basic_return(
            &mut self.out,
            ch,
            code::NO_ROUTE,
            "NO_ROUTE",
            &msg.exchange,
            &msg.routing_key,
        );
        encode::content(
            &mut self.out,
            ch,
            &msg.properties,
            &msg.body,
            self.frame_max,
        );
    }

    /// Hand staged publishes to their queues (one command per queue), then confirm them: at
    /// once for transient ones, after the store's sync for those it had to write.
    pub(super) async fn flush_publishes(&mut self) -> Result<(), End> {
        let mut token = None;
        if !self.store_ops.is_empty() {
            let store = self.broker.store.clone();
            store.wait_for_space().await;
            let t = self.next_token;
            self.next_token += 1;
            let events = self.events_tx.clone();
            // Submitted before the queues see the messages, so a consumer's ack (a dequeue)
            // can never reach the store ahead of the enqueue it undoes.
            store.submit(
                std::mem::take(&mut self.store_ops),
                true,
                Some(Box::new(move |ok| {
                    let _ = events.send(ConnEvent::Synced { token: t, ok });
                })),
            );
            token = Some(t);
        }
        if !self.pending.is_empty() {
            let mut pending = std::mem::take(&mut self.pending);
            for (q, msgs) in pending.drain(..) {
                // A queue deleted meanwhile drops the message, as in RabbitMQ.
                q.send(QueueCmd::Publish(msgs)).await;
            }
            self.pending = pending;
        }
        if self.confirms.is_empty() {
            return Ok(());
        }
        if token.is_none() && self.awaiting.is_empty() {
            for (ch, tag, count) in self.confirms.drain(..) {
                encode::confirm(&mut self.out, ch, tag, count > 1, false);
            }
        } else {
            // Confirms go out in order per channel (`multiple` covers earlier tags), so even
            // transient ones wait behind a pending sync.
            let batch = std::mem::take(&mut self.confirms);
            self.awaiting.push_back((token, batch));
        }
        Ok(())
    }

    /// A store sync finished: release the confirms that waited for it (nack if it failed).
    pub(super) fn on_synced(&mut self, done: u64, ok: bool) {
        while let Some((token, _)) = self.awaiting.front() {
            if token.is_some_and(|t| t > done) {
                break;
            }
            let nack = !ok && *token == Some(done);
            let Some((_, batch)) = self.awaiting.pop_front() else {
                break;
            };
            for (ch, tag, count) in batch {
                if self
                    .channels
                    .get(&ch)
                    .is_some_and(|c| c.state == State::Open)
                {
                    encode::confirm(&mut self.out, ch, tag, count > 1, nack);
                }
            }
        }
    }
}
