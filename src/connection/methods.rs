//! Dispatch of channel-level methods to their class (exchange.rs, queue.rs, basic.rs,
//! tx.rs), and the small classes handled here: channel, confirm, access.

use super::Conn;
use crate::broker::exchange::DestName;
use crate::broker::vhost::BindDecl;
use crate::channel::Input;
use crate::error::{Error, code};
use crate::protocol::{AMQPClass, FieldTable, access, channel, confirm};

/// Which of queue.bind/exchange.bind and their unbinds.
#[derive(Debug, Clone, Copy)]
pub(super) enum Binding {
    Bind,
    Unbind,
}

impl Conn {
    /// A bind or unbind of either class: the vhost decides, and a durable change is on disk
    /// before the -ok.
    pub(super) async fn binding(
        &mut self,
        how: Binding,
        source: &str,
        dest: DestName,
        key: &str,
        arguments: &FieldTable,
    ) -> Result<(), Error> {
        let vhost = self.vhost().clone();
        let b = BindDecl {
            source: source.to_string(),
            dest,
            key: key.to_string(),
            arguments: arguments.clone(),
        };
        vhost
            .binding(matches!(how, Binding::Bind), b, self.id)
            .await
    }

    pub(super) fn channel(&mut self, ch: u16) -> &mut crate::channel::Channel {
        self.channels
            .get_mut(&ch)
            .expect("method dispatched to an open channel")
    }

    pub(super) fn reply(&mut self, ch: u16, nowait: bool, m: AMQPClass) {
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
                self.drive(ch, Input::ConfirmSelect { nowait: s.nowait })
                    .await
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
                let r = self.drive(ch, Input::Close).await;
                self.channels.remove(&ch);
                r
            }
            channel::AMQPMethod::Flow(f) => self.drive(ch, Input::Flow { active: f.active }).await,
            // A close-ok for a close we never sent, or a flow-ok: nothing to do.
            _ => Ok(()),
        }
    }
}
