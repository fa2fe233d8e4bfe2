//! Ending channels and connections: channel.close for a soft error, giving back what a
//! channel holds (consumers, unacked deliveries, parked deliveries), deleting a closing
//! connection's exclusive queues, and connection.close with a bounded wait for close-ok.

use super::{CLOSE_TIMEOUT, Conn, End};
use crate::broker::queue::QueueCmd;
use crate::channel::Input;
use crate::error::{Error, code};
use crate::protocol::codec::{Frame, Method};
use crate::protocol::{AMQPClass, connection};

impl Conn {
    /// Close a channel for a soft error: channel.close now, release its consumers and
    /// deliveries, and drop everything until the client's close-ok.
    pub(super) async fn close_channel(&mut self, ch: u16, err: Error) -> Result<(), End> {
        tracing::debug!(conn = %self.id, channel = ch, "channel error: {err}");
        self.drive_event(ch, Input::Fail(err)).await
    }

    /// The connection is ending: release every channel and delete its exclusive queues.
    pub(super) async fn release_all(&mut self) {
        let _ = self.flush_publishes().await;
        let chans: Vec<u16> = self.channels.keys().copied().collect();
        for ch in chans {
            // Only commands to queues come of it; the socket may be gone already.
            let _ = self.drive_event(ch, Input::Release).await;
        }
        self.channels.clear();
        for q in std::mem::take(&mut self.exclusive) {
            let _ = q
                .ask(|reply| QueueCmd::Delete {
                    if_unused: false,
                    if_empty: false,
                    reply,
                })
                .await;
        }
    }

    /// Send connection.close for `err` and wait (bounded) for the client's close-ok.
    pub(super) async fn close_connection(&mut self, err: Error) {
        if err.code() != code::CONNECTION_FORCED {
            tracing::info!(conn = %self.id, peer = %self.peer, "closing connection: {err}");
        }
        let (class_id, method_id) = err.ids();
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: err.code(),
                reply_text: err.reply_text().into(),
                class_id,
                method_id,
            })),
        );
        if self.flush().await.is_err() {
            return;
        }
        let wait = async {
            loop {
                loop {
                    match self.decode_frame() {
                        Ok(Some(Frame::Method(
                            0,
                            Method::Other(AMQPClass::Connection(
                                connection::AMQPMethod::CloseOk(_)
                                | connection::AMQPMethod::Close(_),
                            )),
                        ))) => return,
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(_) => {
                            self.rbuf.clear();
                            break;
                        }
                    }
                }
                if self.read_more().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, wait).await;
    }
}
