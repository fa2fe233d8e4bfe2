//! Events from queues and the store to this connection: deliveries and server-sent cancels
//! go to their channel (deliveries for a channel that is gone go back to their queue), and
//! store syncs and queue receipts settle flushes of publishes.

use super::{Conn, End};
use crate::broker::queue::{ConnEvent, QueueCmd};
use crate::channel::Input;

impl Conn {
    pub(super) async fn on_event(&mut self, ev: ConnEvent) -> Result<(), End> {
        match ev {
            ConnEvent::Deliver {
                consumer,
                no_ack,
                queue,
                entries,
            } => {
                let ch = consumer.channel.channel;
                if !self.channels.contains_key(&ch) {
                    queue
                        .send(QueueCmd::Return {
                            consumer,
                            entries,
                            no_ack,
                        })
                        .await;
                    return Ok(());
                }
                let input = Input::Deliver {
                    consumer,
                    no_ack,
                    queue,
                    entries,
                };
                self.drive_event(ch, input).await?;
            }
            ConnEvent::Synced { token, ok } => self.on_synced(token, ok),
            ConnEvent::Taken { token, nacks, .. } => self.on_taken(token, nacks),
            ConnEvent::Wake { channel } => self.drive_event(channel, Input::Wake).await?,
            ConnEvent::Cancelled(consumer) => {
                let ch = consumer.channel.channel;
                self.drive_event(ch, Input::Cancelled(consumer)).await?;
            }
        }
        Ok(())
    }
}
