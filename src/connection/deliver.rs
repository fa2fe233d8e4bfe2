//! Deliveries from queues to this connection's consumers: delivery tags assigned in the
//! order frames are written, consumer credit given back, server-sent cancels.

use super::{Conn, End, FLUSH_AT};
use crate::broker::ids::ConsumerId;
use crate::broker::queue::ConnEvent;
use crate::broker::queue::{QueueCmd, QueueHandle};
use crate::channel::State;
use crate::protocol::{AMQPClass, basic, encode};

impl Conn {
    pub(super) async fn on_event(&mut self, ev: ConnEvent) -> Result<(), End> {
        match ev {
            ConnEvent::Deliver {
                consumer,
                no_ack,
                queue,
                entries,
            } => {
                let n = entries.len() as u32;
                let channel = consumer.channel.channel;
                let live = self
                    .channels
                    .get(&channel)
                    .is_some_and(|c| c.state == State::Open && c.is_current(&consumer));
                if !live {
                    if !no_ack
                        && let Some(c) = self.channels.get(&channel)
                        && c.limit.release(n)
                    {
                        self.wake_consumers(channel);
                    }
                    queue
                        .send(QueueCmd::Return {
                            consumer,
                            entries,
                            no_ack,
                        })
                        .await;
                    return Ok(());
                }
                let c = self.channels.get_mut(&channel).expect("checked live");
                if !c.active {
                    c.parked.push(crate::channel::Parked {
                        consumer,
                        no_ack,
                        queue,
                        entries,
                    });
                    return Ok(());
                }
                self.write_deliveries(channel, &consumer.tag, no_ack, &queue, entries)
                    .await?;
                self.grant(&consumer, n, &queue);
            }
            ConnEvent::Synced { token, ok } => self.on_synced(token, ok),
            ConnEvent::Taken { token, nacks } => self.on_taken(token, nacks),
            ConnEvent::Wake { channel } => self.wake_consumers(channel),
            ConnEvent::Cancelled(consumer) => {
                let channel = consumer.channel.channel;
                let Some(c) = self.channels.get_mut(&channel) else {
                    return Ok(());
                };
                if !c.remove_consumer(&consumer) {
                    return Ok(());
                }
                if c.state == State::Open && self.caps.consumer_cancel_notify {
                    self.send_method(
                        channel,
                        AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                            consumer_tag: consumer.tag.to_string().into(),
                            nowait: true,
                        })),
                    );
                }
            }
        }
        Ok(())
    }

    /// `n` deliveries to `consumer` were written out: its queue may send `n` more (at most
    /// CONSUMER_CREDIT are ever in flight), and is woken if it was waiting for that.
    pub(super) fn grant(&mut self, consumer: &ConsumerId, n: u32, queue: &QueueHandle) {
        let grant = self
            .channels
            .get_mut(&consumer.channel.channel)
            .and_then(|c| c.written(consumer, n));
        if let Some(g) = grant
            && g.flow.grant(g.limit)
        {
            queue.wake();
        }
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
