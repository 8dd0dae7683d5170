//! The `hubbub` binary's library: configuration, the all-in-one server, the roles apart (with
//! the `cluster` feature), the client and CLI, and the benchmarks. `main.rs` only parses the
//! command line; everything it runs is here so the end-to-end tests can start the real
//! server in-process.
//!
//! How a process is put together: `lifecycle` (one service trait, one manager), the
//! services themselves in `parts` and `scheduler`, their settings in `wiring`, the runtime
//! config's watcher in `control`; [`serve`]
//! starts every service on the embedded backends, `roles` (feature `cluster`) the services
//! of one role on Redis and PostgreSQL.

pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
mod control;
pub mod fuzz;
mod lifecycle;
mod parts;
#[cfg(feature = "cluster")]
pub mod roles;
mod scheduler;
pub mod serve;
mod wiring;
