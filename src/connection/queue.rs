//! The queue class: declare (with the declare-ok counts from the queue), bind, unbind,
//! purge, delete.

use super::Conn;
use super::methods::Binding;
use crate::broker::args::QueueArgs;
use crate::broker::exchange::DestName;
use crate::broker::queue::QueueCmd;
use crate::broker::vhost::QueueDecl;
use crate::error::{Error, code};
use crate::protocol::{AMQPClass, queue};

impl Conn {
    pub(super) async fn on_queue(&mut self, ch: u16, m: queue::AMQPMethod) -> Result<(), Error> {
        let vhost = self.vhost().clone();
        match m {
            queue::AMQPMethod::Declare(d) => self.declare(ch, d).await?,
            queue::AMQPMethod::Bind(b) => {
                let name = self.channel(ch).queue_name(b.queue.as_str())?;
                let key = if b.queue.as_str().is_empty() && b.routing_key.as_str().is_empty() {
                    name.clone()
                } else {
                    b.routing_key.to_string()
                };
                let dest = DestName::Queue(name.as_str().into());
                self.binding(Binding::Bind, b.exchange.as_str(), dest, &key, &b.arguments)
                    .await?;
                self.reply(
                    ch,
                    b.nowait,
                    AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                );
            }
            queue::AMQPMethod::Unbind(b) => {
                let name = self.channel(ch).queue_name(b.queue.as_str())?;
                let dest = DestName::Queue(name.as_str().into());
                self.binding(
                    Binding::Unbind,
                    b.exchange.as_str(),
                    dest,
                    b.routing_key.as_str(),
                    &b.arguments,
                )
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
                    .ok_or_else(|| q.gone(&vhost.name))?;
                self.reply(
                    ch,
                    p.nowait,
                    AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                        message_count: n,
                    })),
                );
            }
            queue::AMQPMethod::Delete(d) => self.delete(ch, d).await?,
            _ => {
                return Err(Error::connection(
                    code::COMMAND_INVALID,
                    "unexpected queue method",
                ));
            }
        }
        Ok(())
    }

    /// queue.declare: checked arguments, the declare (or a server-named one) written before
    /// declare-ok, which carries the queue's counts.
    async fn declare(&mut self, ch: u16, d: queue::Declare) -> Result<(), Error> {
        let vhost = self.vhost().clone();
        let mut decl = QueueDecl {
            name: d.queue.to_string(),
            passive: d.passive,
            durable: d.durable,
            exclusive: d.exclusive,
            auto_delete: d.auto_delete,
            arguments: d.arguments,
            quorum: None,
        };
        if !decl.passive
            && let Err(bad) = QueueArgs::parse(&decl.arguments)
        {
            return Err(Error::precondition(format!(
                "invalid arg '{}' for queue '{}' in vhost '{}': {}",
                bad.key, decl.name, vhost.name, bad.why
            )));
        }
        let q = if decl.name.is_empty() && !decl.passive {
            vhost.declare_server_named(&decl, self.id).await?
        } else {
            decl.name = self.channel(ch).queue_name(&decl.name)?;
            vhost.declare_queue(&decl, self.id).await?
        };
        if q.exclusive_owner == Some(self.id) && !self.exclusive.iter().any(|e| e.id == q.id) {
            self.exclusive.push(q.clone());
        }
        self.channel(ch).last_queue = Some(q.name.to_string());
        let stat = q
            .ask(QueueCmd::Stat)
            .await
            .ok_or_else(|| q.gone(&vhost.name))?;
        self.reply(
            ch,
            d.nowait,
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                queue: q.name.to_string().into(),
                message_count: stat.messages,
                consumer_count: stat.consumers,
            })),
        );
        Ok(())
    }

    /// queue.delete: a missing queue is deleted already (as in RabbitMQ).
    async fn delete(&mut self, ch: u16, d: queue::Delete) -> Result<(), Error> {
        let vhost = self.vhost().clone();
        let name = self.channel(ch).queue_name(d.queue.as_str())?;
        let n = match vhost.queue(&name, self.id) {
            // Deleting a missing queue succeeds, as in RabbitMQ.
            Err(e) if e.code() == code::NOT_FOUND => 0,
            Err(e) => return Err(e),
            Ok(q) => {
                let n = q
                    .ask(|reply| QueueCmd::Delete {
                        if_unused: d.if_unused,
                        if_empty: d.if_empty,
                        reply,
                    })
                    .await
                    .unwrap_or(Ok(0))?;
                vhost.forgotten(&name, q.id).await?;
                n
            }
        };
        self.exclusive.retain(|q| *q.name != *name);
        self.reply(
            ch,
            d.nowait,
            AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                message_count: n,
            })),
        );
        Ok(())
    }
}
