//! Deliveries from queues to this connection's consumers: delivery tags assigned in the
//! order frames are written, consumer credit given back, server-sent cancels.

use std::sync::Arc;

use super::{Conn, End, FLUSH_AT};
use crate::broker::consumer::ConnEvent;
use crate::broker::queue::{QueueCmd, QueueHandle};
use crate::channel::State;
use crate::protocol::{AMQPClass, basic, encode};

impl Conn {
    pub(super) async fn on_event(&mut self, ev: ConnEvent) -> Result<(), End> {
        match ev {
            ConnEvent::Deliver {
                channel,
                consumer_tag,
                no_ack,
                queue,
                flow,
                entries,
            } => {
                let n = entries.len() as u32;
                let live = self.channels.get(&channel).is_some_and(|c| {
                    c.state == State::Open
                        && c.consumers
                            .get(&consumer_tag)
                            .is_some_and(|ci| Arc::ptr_eq(&ci.flow, &flow))
                });
                if !live {
                    if !no_ack
                        && let Some(c) = self.channels.get(&channel)
                        && c.limit.release(n)
                    {
                        self.wake_consumers(channel);
                    }
                    queue.send(QueueCmd::Return { entries, no_ack }).await;
                    if flow.done(n) {
                        queue.wake();
                    }
                    return Ok(());
                }
                let c = self.channels.get_mut(&channel).expect("checked live");
                if !c.active {
                    c.parked.push(crate::channel::Parked {
                        consumer_tag,
                        no_ack,
                        queue,
                        entries,
                    });
                    return Ok(());
                }
                self.write_deliveries(channel, &consumer_tag, no_ack, &queue, entries)
                    .await?;
                if flow.done(n) {
                    queue.wake();
                }
            }
            ConnEvent::Synced { token, ok } => self.on_synced(token, ok),
            ConnEvent::Taken { token, nacks } => self.on_taken(token, nacks),
            ConnEvent::Cancelled {
                channel,
                consumer_tag,
            } => {
                let Some(c) = self.channels.get_mut(&channel) else {
                    return Ok(());
                };
                if c.consumers.remove(&consumer_tag).is_some()
                    && c.state == State::Open
                    && self.caps.consumer_cancel_notify
                {
                    self.send_method(
                        channel,
                        AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                            consumer_tag: consumer_tag.to_string().into(),
                            nowait: true,
                        })),
                    );
                }
            }
        }
        Ok(())
    }

    /// Encode deliveries, handing output to the writer every FLUSH_AT bytes so that what a
    /// slow consumer has buffered stays bounded by the writer's byte budget.
    pub(crate) async fn write_deliveries(
        &mut self,
        channel: u16,
        consumer_tag: &str,
        no_ack: bool,
        queue: &QueueHandle,
        entries: Vec<crate::broker::queue::Entry>,
    ) -> Result<(), End> {
        for e in entries {
            let Some(c) = self.channels.get_mut(&channel) else {
                break;
            };
            let tag = c.deliver(queue, &e, no_ack, !no_ack);
            encode::deliver(
                &mut self.out,
                channel,
                consumer_tag.as_bytes(),
                tag,
                e.redelivered,
                &e.msg.exchange,
                &e.msg.routing_key,
            );
            encode::content(
                &mut self.out,
                channel,
                &e.msg.properties,
                &e.msg.body,
                self.frame_max,
            );
            if self.out.len() >= FLUSH_AT {
                self.flush().await?;
            }
        }
        Ok(())
    }

    pub(super) fn wake_consumers(&self, channel: u16) {
        if let Some(c) = self.channels.get(&channel) {
            for ci in c.consumers.values() {
                ci.queue.wake();
            }
        }
    }
}
