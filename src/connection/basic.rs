//! The basic class: qos, consume, cancel, get, and settlement (ack, nack, reject, recover),
//! with the channel's state deciding and the queues told.

use std::sync::Arc;

use super::Conn;
use crate::broker::ids::ConsumerId;
use crate::broker::queue::ConsumerSpec;
use crate::broker::queue::{QueueCmd, QueueHandle};
use crate::channel::{Settle, Settled, by_queue};
use crate::error::{Error, code};
use crate::protocol::{AMQPClass, basic, encode};

fn consumer_tag() -> String {
    use rand::RngExt;
    let n: u128 = rand::rng().random();
    format!("amq.ctag-{n:032x}")
}

impl Conn {
    pub(super) async fn on_basic(&mut self, ch: u16, m: basic::AMQPMethod) -> Result<(), Error> {
        match m {
            basic::AMQPMethod::Qos(q) => {
                self.channel(ch).qos(u32::from(q.prefetch_count), q.global);
                self.wake_consumers(ch);
                self.send_method(
                    ch,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
                Ok(())
            }
            basic::AMQPMethod::Consume(c) => self.consume(ch, c).await,
            basic::AMQPMethod::Cancel(c) => {
                let tag: Arc<str> = c.consumer_tag.as_str().into();
                let channel = self.key(ch);
                if let Some(info) = self.channel(ch).consumers.remove(&tag) {
                    // The queue forgets it too before cancel-ok, so nothing more arrives.
                    let consumer = ConsumerId {
                        channel,
                        tag,
                        serial: info.serial,
                    };
                    let _ = info
                        .queue
                        .ask(|reply| QueueCmd::Cancel { consumer, reply })
                        .await;
                }
                self.reply(
                    ch,
                    c.nowait,
                    AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: c.consumer_tag,
                    })),
                );
                Ok(())
            }
            basic::AMQPMethod::Get(g) => self.get(ch, g).await,
            basic::AMQPMethod::Ack(a) => {
                self.settle(ch, a.delivery_tag, a.multiple, Settle::Ack)
                    .await
            }
            basic::AMQPMethod::Nack(n) => {
                let how = if n.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                };
                self.settle(ch, n.delivery_tag, n.multiple, how).await
            }
            basic::AMQPMethod::Reject(r) => {
                let how = if r.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                };
                self.settle(ch, r.delivery_tag, false, how).await
            }
            basic::AMQPMethod::Recover(basic::Recover { requeue })
            | basic::AMQPMethod::RecoverAsync(basic::RecoverAsync { requeue }) => {
                let is_async = matches!(m, basic::AMQPMethod::RecoverAsync(_));
                if !requeue {
                    return Err(Error::connection(code::NOT_IMPLEMENTED, "requeue=false"));
                }
                let all = self.channel(ch).settle_all();
                self.apply_settle(ch, all, Settle::Requeue).await;
                if !is_async {
                    self.send_method(
                        ch,
                        AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                    );
                }
                Ok(())
            }
            _ => Err(Error::connection(
                code::COMMAND_INVALID,
                "unexpected basic method",
            )),
        }
    }

    async fn consume(&mut self, ch: u16, c: basic::Consume) -> Result<(), Error> {
        let vhost = self.vhost().clone();
        let name = self.channel(ch).queue_name(c.queue.as_str())?;
        let tag: Arc<str> = if c.consumer_tag.as_str().is_empty() {
            consumer_tag().into()
        } else {
            c.consumer_tag.as_str().into()
        };
        self.channel(ch).tag_free(&tag)?;
        let q = vhost.queue(&name, self.id)?;
        let channel = self.key(ch);
        let events = self.events_tx.clone();
        let chan = self.channel(ch);
        // Register first: deliveries may arrive as soon as the queue has the consumer, and
        // they are processed only after consume-ok is written below.
        let (serial, flow) = chan.add_consumer(&tag, &q, c.no_ack)?;
        let id = ConsumerId {
            channel,
            tag: tag.clone(),
            serial,
        };
        let spec = ConsumerSpec {
            id,
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch: chan.consumer_prefetch,
            arguments: c.arguments,
            events,
            flow,
            channel_limit: chan.limit.clone(),
        };
        let r = q.ask(|reply| QueueCmd::Consume(spec, reply)).await;
        match r {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                self.channel(ch).consumers.remove(&tag);
                return Err(e);
            }
            None => {
                self.channel(ch).consumers.remove(&tag);
                return Err(q.gone(&vhost.name));
            }
        }
        self.reply(
            ch,
            c.nowait,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: tag.to_string().into(),
            })),
        );
        Ok(())
    }

    async fn get(&mut self, ch: u16, g: basic::Get) -> Result<(), Error> {
        let vhost = self.vhost().clone();
        let name = self.channel(ch).queue_name(g.queue.as_str())?;
        let q: QueueHandle = vhost.queue(&name, self.id)?;
        let channel = self.key(ch);
        let got = q
            .ask(|reply| QueueCmd::Get {
                channel,
                no_ack: g.no_ack,
                reply,
            })
            .await
            .ok_or_else(|| q.gone(&vhost.name))?;
        let Some((entry, remaining)) = got else {
            self.send_method(
                ch,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            );
            return Ok(());
        };
        let chan = self.channel(ch);
        if !g.no_ack {
            chan.touched.insert(q.id, q.clone());
        }
        let tag = chan.deliver(&q, &entry, g.no_ack, false);
        encode::get_ok(
            &mut self.out,
            ch,
            tag,
            entry.redelivered,
            &entry.msg.exchange,
            &entry.msg.routing_key,
            remaining,
        );
        encode::content(
            &mut self.out,
            ch,
            &entry.msg.properties,
            &entry.msg.body,
            self.frame_max,
        );
        Ok(())
    }

    async fn settle(
        &mut self,
        ch: u16,
        tag: u64,
        multiple: bool,
        how: Settle,
    ) -> Result<(), Error> {
        if let Settled::Now(settled) = self.channel(ch).settle(how, tag, multiple)? {
            self.apply_settle(ch, settled, how).await;
        }
        Ok(())
    }

    pub(super) async fn apply_settle(
        &mut self,
        ch: u16,
        settled: Vec<crate::channel::Unacked>,
        how: Settle,
    ) {
        let limited = settled.iter().filter(|u| u.limited).count() as u32;
        for s in by_queue(settled) {
            let cmd = match how {
                Settle::Ack => QueueCmd::Ack(s.seqs),
                Settle::Requeue => QueueCmd::Requeue(s.seqs),
                Settle::Discard => QueueCmd::Discard(s.seqs),
            };
            s.queue.send(cmd).await;
        }
        if limited > 0 && self.channel(ch).limit.release(limited) {
            self.wake_consumers(ch);
        }
    }
}
