//! Channel-level methods: channel, exchange, queue, basic, confirm and tx classes. Each one
//! validates against the channel state, calls the broker, and encodes its reply.

use std::sync::Arc;

use super::Conn;
use crate::broker::args::QueueArgs;
use crate::broker::consumer::{CONSUMER_CREDIT, ConsumerFlow, ConsumerSpec};
use crate::broker::exchange::DestName;
use crate::broker::ids::ConsumerId;
use crate::broker::queue::{QueueCmd, QueueHandle};
use crate::broker::vhost::{ExchangeDecl, QueueDecl};
use crate::channel::{ConsumerInfo, Settle, by_queue};
use crate::error::{Error, code};
use crate::protocol::{AMQPClass, access, basic, channel, confirm, encode, exchange, queue};

fn gone(name: &str, vhost: &str) -> Error {
    Error::not_found(format!("no queue '{name}' in vhost '{vhost}'"))
}

fn consumer_tag() -> String {
    use rand::RngExt;
    let n: u128 = rand::rng().random();
    format!("amq.ctag-{n:032x}")
}

impl Conn {
    pub(super) fn channel(&mut self, ch: u16) -> &mut crate::channel::Channel {
        self.channels
            .get_mut(&ch)
            .expect("method dispatched to an open channel")
    }

    fn reply(&mut self, ch: u16, nowait: bool, m: AMQPClass) {
        if !nowait {
            self.send_method(ch, m);
        }
    }

    pub(super) async fn on_method(&mut self, ch: u16, m: AMQPClass) -> Result<(), Error> {
        match m {
            AMQPClass::Channel(m) => self.on_channel(ch, m).await,
            AMQPClass::Exchange(m) => self.on_exchange(ch, m).await,
            AMQPClass::Queue(m) => self.on_queue(ch, m).await,
            AMQPClass::Basic(m) => self.on_basic(ch, m).await,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                let c = self.channel(ch);
                if c.tx.is_some() {
                    return Err(Error::precondition("cannot switch from tx to confirm mode"));
                }
                if c.confirm_next.is_none() {
                    c.confirm_next = Some(1);
                }
                self.reply(
                    ch,
                    s.nowait,
                    AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                );
                Ok(())
            }
            AMQPClass::Tx(m) => self.on_tx(ch, m).await,
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                self.send_method(
                    ch,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
                Ok(())
            }
            other => {
                let (c, m) = crate::protocol::method_ids(&other);
                Err(Error::connection(
                    code::COMMAND_INVALID,
                    format!("unexpected method {c}.{m}"),
                ))
            }
        }
    }

    async fn on_channel(&mut self, ch: u16, m: channel::AMQPMethod) -> Result<(), Error> {
        match m {
            channel::AMQPMethod::Open(_) => Err(Error::connection(
                code::CHANNEL_ERROR,
                "second 'channel.open' seen",
            )),
            channel::AMQPMethod::Close(_) => {
                self.release_channel(ch).await;
                self.channels.remove(&ch);
                self.send_method(
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                Ok(())
            }
            channel::AMQPMethod::Flow(f) => {
                self.channel(ch).active = f.active;
                self.send_method(
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: f.active,
                    })),
                );
                if f.active {
                    let parked = std::mem::take(&mut self.channel(ch).parked);
                    for p in parked {
                        let n = p.entries.len() as u32;
                        self.write_deliveries(ch, &p.consumer.tag, p.no_ack, &p.queue, p.entries)
                            .await
                            .map_err(|_| {
                                Error::connection(code::INTERNAL_ERROR, "connection is closing")
                            })?;
                        self.grant(&p.consumer, n, &p.queue);
                    }
                }
                Ok(())
            }
            // A close-ok for a close we never sent, or a flow-ok: nothing to do.
            _ => Ok(()),
        }
    }

    async fn on_exchange(&mut self, ch: u16, m: exchange::AMQPMethod) -> Result<(), Error> {
        let vhost = self.vhost().clone();
        match m {
            exchange::AMQPMethod::Declare(d) => {
                vhost
                    .declare_exchange(&ExchangeDecl {
                        name: d.exchange.to_string(),
                        kind: d.kind.to_string(),
                        passive: d.passive,
                        durable: d.durable,
                        auto_delete: d.auto_delete,
                        internal: d.internal,
                        arguments: d.arguments,
                    })?
                    .wait()
                    .await?;
                self.reply(
                    ch,
                    d.nowait,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
                );
            }
            exchange::AMQPMethod::Delete(d) => {
                vhost
                    .delete_exchange(d.exchange.as_str(), d.if_unused)?
                    .wait()
                    .await?;
                self.reply(
                    ch,
                    d.nowait,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                );
            }
            exchange::AMQPMethod::Bind(b) => {
                vhost
                    .bind(
                        b.source.as_str(),
                        DestName::Exchange(b.destination.as_str().into()),
                        b.routing_key.as_str(),
                        &b.arguments,
                        self.id,
                    )?
                    .wait()
                    .await?;
                self.reply(
                    ch,
                    b.nowait,
                    AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                );
            }
            exchange::AMQPMethod::Unbind(b) => {
                vhost
                    .unbind(
                        b.source.as_str(),
                        DestName::Exchange(b.destination.as_str().into()),
                        b.routing_key.as_str(),
                        &b.arguments,
                        self.id,
                    )?
                    .wait()
                    .await?;
                self.reply(
                    ch,
                    b.nowait,
                    AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                );
            }
            _ => {
                return Err(Error::connection(
                    code::COMMAND_INVALID,
                    "unexpected exchange method",
                ));
            }
        }
        Ok(())
    }

    async fn on_queue(&mut self, ch: u16, m: queue::AMQPMethod) -> Result<(), Error> {
        let vhost = self.vhost().clone();
        match m {
            queue::AMQPMethod::Declare(d) => {
                let mut decl = QueueDecl {
                    name: d.queue.to_string(),
                    passive: d.passive,
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    arguments: d.arguments,
                };
                if !decl.passive
                    && let Err(bad) = QueueArgs::parse(&decl.arguments)
                {
                    return Err(Error::precondition(format!(
                        "invalid arg '{}' for queue '{}' in vhost '{}': {}",
                        bad.key, decl.name, vhost.name, bad.why
                    )));
                }
                let (q, written) = if decl.name.is_empty() && !decl.passive {
                    vhost.declare_server_named(&decl, self.id)
                } else {
                    decl.name = self.channel(ch).queue_name(&decl.name)?;
                    vhost.declare_queue(&decl, self.id)?
                };
                written.wait().await?;
                if q.exclusive_owner == Some(self.id)
                    && !self.exclusive.iter().any(|e| e.id == q.id)
                {
                    self.exclusive.push(q.clone());
                }
                self.channel(ch).last_queue = Some(q.name.to_string());
                let stat = q
                    .ask(QueueCmd::Stat)
                    .await
                    .ok_or_else(|| gone(&q.name, &vhost.name))?;
                self.reply(
                    ch,
                    d.nowait,
                    AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: q.name.to_string().into(),
                        message_count: stat.messages,
                        consumer_count: stat.consumers,
                    })),
                );
            }
            queue::AMQPMethod::Bind(b) => {
                let name = self.channel(ch).queue_name(b.queue.as_str())?;
                let key = if b.queue.as_str().is_empty() && b.routing_key.as_str().is_empty() {
                    name.clone()
                } else {
                    b.routing_key.to_string()
                };
                vhost
                    .bind(
                        b.exchange.as_str(),
                        DestName::Queue(name.as_str().into()),
                        &key,
                        &b.arguments,
                        self.id,
                    )?
                    .wait()
                    .await?;
                self.reply(
                    ch,
                    b.nowait,
                    AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                );
            }
            queue::AMQPMethod::Unbind(b) => {
                let name = self.channel(ch).queue_name(b.queue.as_str())?;
                vhost
                    .unbind(
                        b.exchange.as_str(),
                        DestName::Queue(name.as_str().into()),
                        b.routing_key.as_str(),
                        &b.arguments,
                        self.id,
                    )?
                    .wait()
                    .await?;
                self.send_method(
                    ch,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                );
            }
            queue::AMQPMethod::Purge(p) => {
                let name = self.channel(ch).queue_name(p.queue.as_str())?;
                let q = vhost.queue(&name, self.id)?;
                let n = q
                    .ask(QueueCmd::Purge)
                    .await
                    .ok_or_else(|| gone(&name, &vhost.name))?;
                self.reply(
                    ch,
                    p.nowait,
                    AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                        message_count: n,
                    })),
                );
            }
            queue::AMQPMethod::Delete(d) => {
                let name = self.channel(ch).queue_name(d.queue.as_str())?;
                let n = match vhost.queue(&name, self.id) {
                    // Deleting a missing queue succeeds, as in RabbitMQ.
                    Err(e) if e.code() == code::NOT_FOUND => 0,
                    Err(e) => return Err(e),
                    Ok(q) => q
                        .ask(|reply| QueueCmd::Delete {
                            if_unused: d.if_unused,
                            if_empty: d.if_empty,
                            reply,
                        })
                        .await
                        .unwrap_or(Ok(0))?,
                };
                self.exclusive.retain(|q| *q.name != *name);
                self.reply(
                    ch,
                    d.nowait,
                    AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                        message_count: n,
                    })),
                );
            }
            _ => {
                return Err(Error::connection(
                    code::COMMAND_INVALID,
                    "unexpected queue method",
                ));
            }
        }
        Ok(())
    }

    async fn on_basic(&mut self, ch: u16, m: basic::AMQPMethod) -> Result<(), Error> {
        match m {
            basic::AMQPMethod::Qos(q) => {
                let c = self.channel(ch);
                if q.global {
                    c.limit.set_limit(q.prefetch_count as u32);
                } else {
                    c.consumer_prefetch = q.prefetch_count as u32;
                }
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
        if self.channel(ch).consumers.contains_key(&tag) {
            return Err(Error::connection(
                code::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let q = vhost.queue(&name, self.id)?;
        let flow = Arc::new(ConsumerFlow::new(u64::from(CONSUMER_CREDIT)));
        self.consumers_created += 1;
        let serial = self.consumers_created;
        let id = ConsumerId {
            channel: self.key(ch),
            tag: tag.clone(),
            serial,
        };
        let events = self.events_tx.clone();
        let chan = self.channel(ch);
        let spec = ConsumerSpec {
            id,
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch: chan.consumer_prefetch,
            arguments: c.arguments,
            events,
            flow: flow.clone(),
            channel_limit: chan.limit.clone(),
        };
        // Register first: deliveries may arrive as soon as the queue has the consumer, and
        // they are processed only after consume-ok is written below.
        chan.consumers.insert(
            tag.clone(),
            ConsumerInfo {
                queue: q.clone(),
                no_ack: c.no_ack,
                serial,
                flow,
                written: 0,
            },
        );
        chan.touched.insert(q.id, q.clone());
        let r = q.ask(|reply| QueueCmd::Consume(spec, reply)).await;
        match r {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                self.channel(ch).consumers.remove(&tag);
                return Err(e);
            }
            None => {
                self.channel(ch).consumers.remove(&tag);
                return Err(gone(&name, &vhost.name));
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
            .ok_or_else(|| gone(&name, &vhost.name))?;
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
        let c = self.channel(ch);
        if c.tx.is_some() {
            // Checked now (406 for an unknown tag), applied at commit.
            let settled = c.settle_tagged(tag, multiple)?;
            if let Some(tx) = c.tx.as_mut() {
                tx.settles.push((how, settled));
            }
            return Ok(());
        }
        let settled = c.settle(tag, multiple)?;
        self.apply_settle(ch, settled, how).await;
        Ok(())
    }

    pub(super) async fn apply_settle(
        &mut self,
        ch: u16,
        settled: Vec<crate::channel::Unacked>,
        how: Settle,
    ) {
        let limited = settled.iter().filter(|u| u.limited).count() as u32;
        for (q, seqs) in by_queue(settled) {
            let cmd = match how {
                Settle::Ack => QueueCmd::Ack(seqs),
                Settle::Requeue => QueueCmd::Requeue(seqs),
                Settle::Discard => QueueCmd::Discard(seqs),
            };
            q.send(cmd).await;
        }
        if limited > 0 && self.channel(ch).limit.release(limited) {
            self.wake_consumers(ch);
        }
    }
}
