//! The basic class: the broker's part of consume and get (finding the queue, asking it),
//! the rest handed to the channel.

use std::sync::Arc;

use super::Conn;
use crate::broker::queue::{QueueCmd, QueueHandle};
use crate::channel::{Consume, Input, Settle};
use crate::error::{Error, code};
use crate::protocol::basic;

fn consumer_tag() -> String {
    use rand::RngExt;
    let n: u128 = rand::rng().random();
    format!("amq.ctag-{n:032x}")
}

fn requeue_or_discard(requeue: bool) -> Settle {
    if requeue {
        Settle::Requeue
    } else {
        Settle::Discard
    }
}

impl Conn {
    pub(super) async fn on_basic(&mut self, ch: u16, m: basic::AMQPMethod) -> Result<(), Error> {
        let input = match m {
            basic::AMQPMethod::Qos(q) => Input::Qos {
                prefetch: u32::from(q.prefetch_count),
                global: q.global,
            },
            basic::AMQPMethod::Consume(c) => return self.consume(ch, c).await,
            basic::AMQPMethod::Cancel(c) => Input::Cancel {
                tag: c.consumer_tag.as_str().into(),
                nowait: c.nowait,
            },
            basic::AMQPMethod::Get(g) => return self.get(ch, g).await,
            basic::AMQPMethod::Ack(a) => Input::Settle {
                how: Settle::Ack,
                tag: a.delivery_tag,
                multiple: a.multiple,
            },
            basic::AMQPMethod::Nack(n) => Input::Settle {
                how: requeue_or_discard(n.requeue),
                tag: n.delivery_tag,
                multiple: n.multiple,
            },
            basic::AMQPMethod::Reject(r) => Input::Settle {
                how: requeue_or_discard(r.requeue),
                tag: r.delivery_tag,
                multiple: false,
            },
            basic::AMQPMethod::Recover(basic::Recover { requeue }) => Input::Recover {
                requeue,
                reply: true,
            },
            basic::AMQPMethod::RecoverAsync(basic::RecoverAsync { requeue }) => Input::Recover {
                requeue,
                reply: false,
            },
            _ => {
                return Err(Error::connection(
                    code::COMMAND_INVALID,
                    "unexpected basic method",
                ));
            }
        };
        self.drive(ch, input).await
    }

    async fn consume(&mut self, ch: u16, c: basic::Consume) -> Result<(), Error> {
        let vhost = self.vhost().clone();
        let name = self.channel(ch).queue_name(c.queue.as_str())?;
        let tag: Arc<str> = if c.consumer_tag.as_str().is_empty() {
            consumer_tag().into()
        } else {
            c.consumer_tag.as_str().into()
        };
        // A tag in use is 530 even when the queue is missing.
        self.channel(ch).tag_free(&tag)?;
        let queue = vhost.queue(&name, self.id)?;
        let consume = Consume {
            tag,
            queue,
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            arguments: c.arguments,
            nowait: c.nowait,
        };
        self.drive(ch, Input::Consume(consume)).await
    }

    async fn get(&mut self, ch: u16, g: basic::Get) -> Result<(), Error> {
        let vhost = self.vhost().clone();
        let name = self.channel(ch).queue_name(g.queue.as_str())?;
        let queue: QueueHandle = vhost.queue(&name, self.id)?;
        let channel = self.key(ch);
        let got = queue
            .ask(|reply| QueueCmd::Get {
                channel,
                no_ack: g.no_ack,
                reply,
            })
            .await
            .ok_or_else(|| queue.gone(&vhost.name))?;
        let input = Input::Got {
            queue,
            no_ack: g.no_ack,
            got,
        };
        self.drive(ch, input).await
    }
}
