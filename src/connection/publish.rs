//! The publish path: content frames assembled into messages, routed against the vhost's
//! snapshot, staged per queue (one command per queue per read), written to the store when
//! persistent, and confirmed: at once, or after the store's sync.

use std::sync::Arc;

use bytes::Bytes;

use super::confirm::Flush;
use super::{Conn, End};
use crate::broker::message::Message;
use crate::broker::queue::ConnEvent;
use crate::broker::queue::receipt::{ConfirmTag, Receipt, ReceiptTag};
use crate::broker::queue::{QueueCmd, QueueHandle};
use crate::broker::routing::Routes;
use crate::channel::{Input, Routed, State};
use crate::error::{Error, code};
use crate::protocol::encode;

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
        // Bodies being assembled count against the memory alarm like queued messages: a
        // client streaming huge bodies on many channels is blocked like any publisher.
        let before = c.assembler.buffered() as usize;
        let done = c.assembler.body(data)?;
        let after = c.assembler.buffered() as usize;
        if after > before {
            self.broker.memory.add(after - before);
        } else {
            self.broker.memory.sub(before - after);
        }
        self.assembling = self.assembling + after - before;
        match done {
            Some(content) => self.publish(ch, content),
            None => Ok(()),
        }
    }

    /// Route a complete publish and give it to the channel, which stages it in a
    /// transaction or hands it over with its confirm number (sent at the end of the read).
    pub(super) fn publish(
        &mut self,
        ch: u16,
        content: crate::protocol::content::Content,
    ) -> Result<(), Error> {
        self.published = true;
        self.published_persistent |= content.persistent;
        let p = &content.publish;
        let mandatory = p.mandatory;
        let exchange = std::str::from_utf8(&p.exchange).unwrap_or("\u{fffd}");
        let vhost = self.vhost().clone();
        let routes = vhost.routes();
        check_exchange(&routes, exchange, &vhost.name)?;
        let msg = Arc::new(Message {
            exchange: p.exchange.clone(),
            routing_key: p.routing_key.clone(),
            properties: content.properties,
            body: content.body,
            persistent: content.persistent,
            stored: None,
        });
        let mut targets = std::mem::take(&mut self.route_buf);
        routes.route(exchange, &msg, &mut targets);
        drop(routes);
        let routed = Routed {
            msg,
            targets,
            mandatory,
        };
        self.drive_now(ch, Input::Publish(routed))
    }

    /// A publish out of the channel: persistent messages get their store rows, a mandatory
    /// one nothing took is returned, and it joins each queue's batch for this read, with
    /// its confirm number.
    pub(super) fn hand_over(&mut self, ch: u16, p: Routed, confirm: Option<u64>) {
        let Routed {
            mut msg,
            mut targets,
            mandatory,
        } = p;
        // Unique still: no copy.
        self.durable
            .publish(&self.broker.store, Arc::make_mut(&mut msg), &targets);
        if targets.is_empty() && mandatory {
            self.write_return(ch, &msg);
        }
        if confirm.is_some() && !self.flushing.contains(&ch) {
            self.flushing.push(ch);
        }
        for q in targets.drain(..) {
            let at = match self.pending.iter().position(|p| p.queue.id == q.id) {
                Some(at) => at,
                None => {
                    self.pending.push(Pending {
                        queue: q,
                        msgs: Vec::new(),
                        tags: Vec::new(),
                    });
                    self.pending.len() - 1
                }
            };
            let p = &mut self.pending[at];
            if let Some(tag) = confirm {
                p.tags.push(ReceiptTag {
                    at: p.msgs.len() as u32,
                    tag: ConfirmTag { channel: ch, tag },
                });
            }
            p.msgs.push(msg.clone());
        }
        // Kept for the next publish's routing.
        self.route_buf = targets;
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

    /// Hand staged publishes to their queues (one command per queue), then confirm them
    /// once every queue has taken them and the store has synced those it had to write.
    pub(super) async fn flush_publishes(&mut self) -> Result<(), End> {
        let t = self.next_token;
        self.next_token += 1;
        let syncing = !self.durable.is_empty();
        if syncing {
            let store = self.broker.store.clone();
            store.wait_for_space().await;
            let events = self.events_tx.clone();
            // Submitted before the queues see the messages, so a consumer's ack (a dequeue)
            // can never reach the store ahead of the enqueue it undoes.
            self.durable.submit(
                &store,
                Box::new(move |r: Result<(), _>| {
                    let ok = r.is_ok();
                    let _ = events.send(ConnEvent::Synced { token: t, ok });
                }),
            );
        }
        let mut receipts = 0;
        if !self.pending.is_empty() {
            let mut pending = std::mem::take(&mut self.pending);
            for p in pending.drain(..) {
                let receipt = (!p.tags.is_empty()).then(|| {
                    receipts += 1;
                    Receipt::new(self.events_tx.clone(), t, p.tags)
                });
                // A queue deleted meanwhile drops the batch, and its receipt nacks it.
                p.queue.send(QueueCmd::Publish(p.msgs, receipt)).await;
                if p.queue.is_busy() && !self.throttled.iter().any(|q| q.id == p.queue.id) {
                    self.throttled.push(p.queue);
                }
            }
            self.pending = pending;
        }
        if self.flushing.is_empty() {
            return Ok(());
        }
        // Each channel that published in confirm mode keeps this flush's run of numbers,
        // confirmed once the flush settles (in its publish order).
        let channels = std::mem::take(&mut self.flushing);
        for &ch in &channels {
            if let Some(c) = self.channels.get_mut(&ch) {
                let _ = c.handle(Input::Flushed { token: t }, &mut self.acts);
            }
        }
        self.awaiting.push(Flush {
            token: t,
            syncing,
            receipts,
            failed: false,
            channels,
            nacks: Vec::new(),
        });
        self.settle_flushes();
        Ok(())
    }
}

/// Publishes routed to one queue in this read; `tags` are the confirm-mode ones.
pub(super) struct Pending {
    pub queue: QueueHandle,
    pub msgs: Vec<Arc<Message>>,
    pub tags: Vec<ReceiptTag>,
}

/// A publish names an existing exchange (or the default one) that is not internal.
fn check_exchange(routes: &Routes, exchange: &str, vhost: &str) -> Result<(), Error> {
    if exchange.is_empty() {
        return Ok(());
    }
    match routes.exchange(exchange) {
        None => Err(
            Error::not_found(format!("no exchange '{exchange}' in vhost '{vhost}'")).during(60, 40),
        ),
        Some(x) if x.internal => Err(Error::access_refused(format!(
            "cannot publish to internal exchange '{exchange}' in vhost '{vhost}'"
        ))
        .during(60, 40)),
        Some(_) => Ok(()),
    }
}
