//! A channel's state under arbitrary sequences of what its client, its queues and the
//! connection's flushes do to it: `warren::channel::model` decodes the input into those
//! inputs, feeds them to `Channel::handle`, and checks every action against its reference
//! model (tags, the unacked set, settlements per queue, 406/530/540, credit, channel.flow,
//! consumers, transactions, confirms in order with the right outcome). No panic allowed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| warren::channel::model::run(data));
