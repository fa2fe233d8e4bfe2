//! warren: an AMQP 0-9-1 message broker.
//!
//! Data flows top to bottom; a layer calls only the one below it:
//! - `server` accepts sockets and runs one `connection` task per client;
//! - `protocol` turns bytes into frames and methods and back (the only user of amq-protocol);
//! - `connection` does the handshake, heartbeats, flow control and writes, and drives
//! - `channel` state (delivery tags, unacked messages, qos, confirms), calling into
//! - `broker`: vhosts, exchanges and routing snapshots, and one task per queue, which persist
//!   through
//! - `store`: RocksDB with group commit, read back at start.

pub mod broker;
pub mod channel;
pub mod config;
pub mod connection;
pub mod error;
pub mod protocol;
pub mod server;
pub mod store;

pub use config::Config;
pub use server::Server;
