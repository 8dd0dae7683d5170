//! Everything that runs only when hubbub's roles run apart (`hubbub edge`, `router`,
//! `worker`, `scheduler`), in one place and under one name: the implementations of the core
//! traits on Redis and over HTTP. `hubbub serve` does not link this crate (the `hubbub`
//! binary has it behind its `cluster` feature), so a default build carries no Redis or
//! PostgreSQL driver.
//!
//! | trait (crate)                      | in one process (`serve`)      | apart (here)                  |
//! |------------------------------------|-------------------------------|-------------------------------|
//! | `Queue`, `Log` (queue)             | `EmbeddedQueue` (SQLite)      | [`RedisQueue`]                |
//! | `Registry` (registry)              | `LocalRegistry`               | [`RedisRegistry`]             |
//! | `EdgeLink` (registry)              | `LocalEdges` (a channel)      | [`HttpEdges`] + [`edge_link::receiver`] |
//! | `Signals` (registry)               | `SignalService`               | [`ClusterSignals`]            |
//! | `Engagement` (registry)            | `EngagementService`           | [`RemoteEngagement`] + [`EngagementWorker`] |
//! | `TimelineCache` (services)         | `LocalTimelineCache`          | [`RedisTimelineCache`]        |
//! | `Store`, `FeedStore`, ... (store)  | `SqliteStore`                 | [`PgStore`] (the store's `postgres` feature) |
//!
//! The store's PostgreSQL backend stays in the store crate, beside the SQLite one in each
//! domain, so the two can be read (and their rules kept) side by side; this crate is what
//! turns it on and re-exports it.
//!
//! Each implementation passes the conformance suite of its trait, on a real Redis and
//! PostgreSQL (`tests/`).

pub mod edge_link;
pub mod engagement;
pub mod queue;
pub mod registry;
pub mod signals;
pub mod timeline_cache;

pub use edge_link::HttpEdges;
pub use engagement::{EngagementWorker, RemoteEngagement};
pub use hubbub_store::PgStore;
pub use queue::{RedisConfig, RedisQueue};
pub use registry::RedisRegistry;
pub use signals::ClusterSignals;
pub use timeline_cache::RedisTimelineCache;
