//! warren: an AMQP 0-9-1 message broker.
//!
//! Data flows top to bottom; a layer calls only the one below it:
//! - `server` accepts sockets and runs one `connection` task per client;
//! - `protocol` turns bytes into frames and methods and back (the only user of amq-protocol);
//! - `connection` does the handshake, heartbeats, flow control and writes, and drives
//! - `channel` state (delivery tags, unacked messages, qos, credit, confirms, tx), calling into
//! - `broker`: vhosts (runtime around the pure `topology`), routing snapshots, and queues
//!   (a classic queue is a task around the pure `queue::state::QueueState`), which persist
//!   through
//! - `store`: RocksDB with group commit, read back at start.
//!
//! On a cluster node, `cluster` adds the node links and the Raft metadata group: `broker`
//! proposes topology changes through it (`broker::meta`) and uses queues of other nodes
//! over its links (`broker::remote`).
//!
//! `http` serves the status API (queues, quorum members and leaders) beside the broker.
//!
//! The pure cores (`QueueState`, `Topology`, `Channel`) take commands and return effects as
//! data, with no I/O, clock or tasks; their runtimes carry the effects out.

pub mod broker;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod error;
pub mod http;
pub mod protocol;
pub mod server;
pub mod store;
#[cfg(test)]
mod test_rng;

pub use config::Config;
pub use server::Server;
