//! Integration tests over real sockets: a broker per test on 127.0.0.1:0, driven by lapin
//! (and by a raw frame client for malformed input).

mod common;
mod basics;
mod connection;
mod exchanges;
mod queues;
mod messages;
