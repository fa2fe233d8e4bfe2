//! Integration tests over real sockets: a broker per test on 127.0.0.1:0, driven by lapin
//! (and by a raw frame client for malformed input).

mod basics;
mod cli;
mod cluster;
mod common;
mod connection;
mod crash;
mod disk;
mod durability;
mod errors;
mod exchanges;
mod flow;
mod hostile;
mod limits;
mod membership;
mod messages;
mod metadata;
mod partition;
mod queues;
mod quiet;
mod quorum;
mod scale;
mod snapshot;
mod ttl;
mod tx;
