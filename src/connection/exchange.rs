//! The exchange class: declare, delete, bind, unbind, as the vhost's topology decides.

use super::Conn;
use super::methods::Binding;
use crate::broker::exchange::DestName;
use crate::broker::vhost::ExchangeDecl;
use crate::error::{Error, code};
use crate::protocol::{AMQPClass, exchange};

impl Conn {
    pub(super) async fn on_exchange(
        &mut self,
        ch: u16,
        m: exchange::AMQPMethod,
    ) -> Result<(), Error> {
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
                    })
                    .await?;
                self.reply(
                    ch,
                    d.nowait,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
                );
            }
            exchange::AMQPMethod::Delete(d) => {
                vhost
                    .delete_exchange(d.exchange.as_str(), d.if_unused)
                    .await?;
                self.reply(
                    ch,
                    d.nowait,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                );
            }
            exchange::AMQPMethod::Bind(b) => {
                let dest = DestName::Exchange(b.destination.as_str().into());
                self.binding(
                    Binding::Bind,
                    b.source.as_str(),
                    dest,
                    b.routing_key.as_str(),
                    &b.arguments,
                )
                .await?;
                self.reply(
                    ch,
                    b.nowait,
                    AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                );
            }
            exchange::AMQPMethod::Unbind(b) => {
                let dest = DestName::Exchange(b.destination.as_str().into());
                self.binding(
                    Binding::Unbind,
                    b.source.as_str(),
                    dest,
                    b.routing_key.as_str(),
                    &b.arguments,
                )
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
}
