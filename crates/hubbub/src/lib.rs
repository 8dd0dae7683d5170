//! The `hubbub` binary's library: configuration, the all-in-one server, the client and CLI,
//! and the benchmarks. `main.rs` only parses the command line; everything it runs is here so
//! the end-to-end tests can start the real server in-process.

pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod fuzz;
pub mod roles;
pub mod serve;
mod wiring;
