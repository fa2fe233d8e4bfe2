//! Publisher confirms as the channel keeps them: confirm.select, the sequence numbers of
//! confirm-mode publishes (from 1 per channel, as clients count them), the run of them in
//! each flush, and the confirms written as flushes settle: in publish order, one `multiple`
//! ack per run of taken publishes, one nack per refused one.

use std::collections::VecDeque;

use super::{Action, Channel, Routed, State};
use crate::error::Error;
use crate::protocol::{AMQPClass, confirm};

/// Confirm mode's state, from confirm.select on.
#[derive(Debug)]
pub(super) struct Confirms {
    /// The sequence number of the next publish.
    next: u64,
    /// Sequence numbers published since the last flush: `first..=last`.
    open: Option<(u64, u64)>,
    /// Flushes not yet confirmed, in publish order.
    runs: VecDeque<Run>,
}

#[derive(Debug)]
struct Run {
    token: u64,
    first: u64,
    last: u64,
    /// Set once the flush settled: (failed, refused sequence numbers).
    outcome: Option<(bool, Vec<u64>)>,
}

impl Channel {
    /// confirm.select; 406 on a transactional channel. Selecting again changes nothing.
    pub(super) fn confirm_select(
        &mut self,
        nowait: bool,
        out: &mut Vec<Action>,
    ) -> Result<(), Error> {
        if self.tx.is_some() {
            return Err(Error::precondition("cannot switch from tx to confirm mode"));
        }
        self.confirms.get_or_insert_with(|| {
            Box::new(Confirms {
                next: 1,
                open: None,
                runs: VecDeque::new(),
            })
        });
        if !nowait {
            out.push(Action::Send(AMQPClass::Confirm(
                confirm::AMQPMethod::SelectOk(confirm::SelectOk {}),
            )));
        }
        Ok(())
    }

    pub fn confirming(&self) -> bool {
        self.confirms.is_some()
    }

    /// A routed publish: staged in a transaction, else handed to its queues with its
    /// sequence number in confirm mode.
    pub(super) fn publish(&mut self, p: Routed, out: &mut Vec<Action>) {
        if let Some(tx) = self.tx.as_mut() {
            tx.publishes.push(p);
            return;
        }
        let confirm = self.confirms.as_mut().map(|c| {
            let tag = c.next;
            c.next += 1;
            c.open = Some(c.open.map_or((tag, tag), |(first, _)| (first, tag)));
            tag
        });
        out.push(Action::Publish {
            publish: p,
            confirm,
        });
    }

    /// The open run went out as flush `token`.
    pub(super) fn flushed(&mut self, token: u64) {
        let Some(c) = self.confirms.as_mut() else {
            return;
        };
        if let Some((first, last)) = c.open.take() {
            c.runs.push_back(Run {
                token,
                first,
                last,
                outcome: None,
            });
        }
    }

    /// Flush `token` settled: confirm every settled run at the front, in order.
    pub(super) fn confirmed(
        &mut self,
        token: u64,
        failed: bool,
        refused: Vec<u64>,
        out: &mut Vec<Action>,
    ) {
        let Some(c) = self.confirms.as_mut() else {
            return;
        };
        let runs = &mut c.runs;
        let Some(run) = runs.iter_mut().find(|r| r.token == token) else {
            return;
        };
        run.outcome = Some((failed, refused));
        while runs.front().is_some_and(|r| r.outcome.is_some()) {
            let Some(Run {
                first,
                last,
                outcome: Some((failed, mut refused)),
                ..
            }) = runs.pop_front()
            else {
                break;
            };
            // A closing channel's client waits for close-ok, not confirms.
            if self.state != State::Open {
                continue;
            }
            if failed {
                out.push(Action::Confirm {
                    tag: last,
                    multiple: last > first,
                    nack: true,
                });
                continue;
            }
            refused.sort_unstable();
            refused.dedup();
            confirm_range(out, first, last, &refused);
        }
    }
}

/// Confirm `first..=last`, all earlier ones being confirmed already: one `multiple` ack per
/// run of taken publishes, one nack per refused one (`refused` sorted).
fn confirm_range(out: &mut Vec<Action>, first: u64, last: u64, refused: &[u64]) {
    let mut from = first;
    for &tag in refused {
        if tag < from || tag > last {
            continue;
        }
        if tag > from {
            out.push(Action::Confirm {
                tag: tag - 1,
                multiple: tag - 1 > from,
                nack: false,
            });
        }
        out.push(Action::Confirm {
            tag,
            multiple: false,
            nack: true,
        });
        from = tag + 1;
    }
    if from <= last {
        out.push(Action::Confirm {
            tag: last,
            multiple: last > from,
            nack: false,
        });
    }
}
