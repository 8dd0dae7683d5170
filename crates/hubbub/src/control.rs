//! The runtime config in a process: the [`ConfigWatcher`] service every process runs (`serve`
//! and every role apart), and the floors check of the configuration file at startup.
//!
//! The watcher long-polls the store for a version newer than the one it applies
//! (`ControlStore::wait_runtime_config`: in one process a channel the SQLite store bumps on
//! commit; apart, the PostgreSQL `LISTEN hubbub_config` connection), never by interval polling;
//! a new version is read, parsed and published on the process's [`Runtime`] channel, which the
//! edge and the scheduler follow. Each process exports the version it applies and when
//! (`hubbub_config_version`, `hubbub_config_applied_timestamp_seconds`). A version that cannot
//! be read is retried with back-off; one that does not parse is counted
//! (`hubbub_config_apply_failures_total`) and logged, and the process keeps the last config it
//! applied: nothing here can take the process down. Until a version is stored (version 0) the
//! runtime config is the configuration file's.

use crate::config::Config;
use crate::lifecycle::{Context, Service};
use anyhow::Context as _;
use hubbub_protocol::admin::{Intervals, Load, RuntimeConfig, VersionedConfig};
use hubbub_queue::clock::now_ms;
use hubbub_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The runtime config a process applies, published to its parts.
pub(crate) type Runtime = Arc<watch::Sender<Arc<VersionedConfig>>>;

/// The shortest `server.edge_ttl_s` (heartbeats every second).
const EDGE_TTL_FLOOR_S: u64 = 3;

/// How long one long poll waits before it is asked again (the store answers at once when a
/// newer version exists).
const POLL: Duration = Duration::from_secs(30);
/// Back-off after a failed read of the config: from, to.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

impl Config {
    /// The runtime config at version 0: the configuration file's limits and intervals, no
    /// flags, no debug entries.
    pub(crate) fn runtime_base(&self) -> RuntimeConfig {
        RuntimeConfig {
            limits: self.limits.clone(),
            intervals: Intervals {
                precompute_interval_s: self.feed.precompute_interval_s,
                ping_interval_s: self.server.ping_interval_s,
                queue_gauges_s: Intervals::default().queue_gauges_s,
                ephemeral_sweep_s: (self.server.ephemeral_ttl_s / 2).clamp(1, 60),
            },
            ..RuntimeConfig::default()
        }
    }

    /// The floors of the configuration file's intervals, with the cost under `load` (the same
    /// rule as a `PUT` of the runtime config, naming the file's settings).
    pub(crate) fn check_floors(&self, load: Load) -> Result<(), String> {
        // Heartbeats: each edge renews its registry entry and its engagement subscriptions
        // every third of the TTL (a file setting only: the registry's keys carry it).
        if self.server.edge_ttl_s < EDGE_TTL_FLOOR_S {
            return Err(format!(
                "server.edge_ttl_s: {} s is below its floor of {EDGE_TTL_FLOOR_S} s: it would cost \
                 {} heartbeats an hour per edge (each a registry write and a renewal of its \
                 subscriptions)",
                self.server.edge_ttl_s,
                3600 * 3 / self.server.edge_ttl_s.max(1)
            ));
        }
        self.runtime_base()
            .intervals
            .check_floors("intervals", load)
            .map_err(|e| {
                let field = match e.field.as_str() {
                    "intervals.precompute_interval_s" => "feed.precompute_interval_s",
                    "intervals.ping_interval_s" => "server.ping_interval_s",
                    "intervals.ephemeral_sweep_s" => "server.ephemeral_ttl_s",
                    other => other,
                };
                format!("{field}: {}", e.message)
            })
    }
}

/// A process's runtime channel, at version 0 (the configuration file's).
pub(crate) fn runtime(config: &Config) -> Runtime {
    Arc::new(watch::Sender::new(Arc::new(VersionedConfig {
        version: 0,
        config: config.runtime_base(),
    })))
}

/// Publish a version (and export which, and when).
fn publish(runtime: &Runtime, applied: VersionedConfig) {
    metrics::gauge!(hubbub_protocol::metrics::CONFIG_VERSION).set(applied.version as f64);
    metrics::gauge!(hubbub_protocol::metrics::CONFIG_APPLIED).set(now_ms() as f64 / 1000.0);
    tracing::info!(version = applied.version, "runtime config applied");
    runtime.send_replace(Arc::new(applied));
}

/// What reading the stored config gave.
enum Read {
    /// A version to apply.
    Apply(VersionedConfig),
    /// A version that does not parse: skip it, keep the last.
    Bad(u64),
}

async fn read(store: &dyn Store) -> Result<Read, hubbub_store::StoreError> {
    let stored = store.runtime_config().await?;
    let parsed = serde_json::from_str(&stored.body)
        .map_err(|e| e.to_string())
        .and_then(|v| RuntimeConfig::parse(v).map_err(|e| e.to_string()));
    Ok(match parsed {
        Ok(config) => Read::Apply(VersionedConfig {
            version: stored.version,
            config,
        }),
        Err(e) => {
            metrics::counter!(hubbub_protocol::metrics::CONFIG_APPLY_FAILURES).increment(1);
            tracing::error!(version = stored.version, error = %e,
                "runtime config not applied; keeping the last one");
            Read::Bad(stored.version)
        }
    })
}

/// Watches the stored runtime config and applies each new version in this process.
pub(crate) struct ConfigWatcher {
    store: Arc<dyn Store>,
    runtime: Runtime,
    /// The newest version seen (applied, or skipped as bad).
    seen: u64,
}

impl Service for ConfigWatcher {
    const NAME: &'static str = "config";

    /// Checks the configuration file's floors, then applies the stored config before the
    /// other services start, so they start on it.
    async fn build(ctx: &Context) -> anyhow::Result<Self> {
        let since = now_ms()
            .saturating_sub(i64::try_from(ctx.config.feed.active_window_s).unwrap_or(0) * 1000);
        let active_users = ctx
            .store
            .active_user_count(since)
            .await
            .context("counting active users (for the floors of the configured intervals)")?;
        ctx.config
            .check_floors(Load {
                active_users,
                connections: 0,
            })
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let runtime = ctx.runtime.clone();
        metrics::gauge!(hubbub_protocol::metrics::CONFIG_VERSION).set(0.0);
        metrics::gauge!(hubbub_protocol::metrics::CONFIG_APPLIED).set(now_ms() as f64 / 1000.0);
        let seen = match read(&*ctx.store)
            .await
            .context("reading the runtime config")?
        {
            Read::Apply(c) if c.version > 0 => {
                let v = c.version;
                publish(&runtime, c);
                v
            }
            Read::Apply(_) => 0,
            Read::Bad(v) => v,
        };
        Ok(ConfigWatcher {
            store: ctx.store.clone(),
            runtime,
            seen,
        })
    }

    async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = BACKOFF.0;
        loop {
            let known = tokio::select! {
                v = self.store.wait_runtime_config(self.seen, POLL) => v,
                _ = cancel.cancelled() => return Ok(()),
            };
            if known <= self.seen {
                continue;
            }
            match read(&*self.store).await {
                Ok(Read::Apply(c)) => {
                    backoff = BACKOFF.0;
                    if c.version > self.seen {
                        self.seen = c.version;
                        publish(&self.runtime, c);
                    }
                }
                Ok(Read::Bad(v)) => {
                    backoff = BACKOFF.0;
                    self.seen = self.seen.max(v);
                }
                Err(e) => {
                    metrics::counter!(hubbub_protocol::metrics::CONFIG_WATCH_ERRORS).increment(1);
                    tracing::warn!(error = %e, "runtime config not read; keeping the last one, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = cancel.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_s_intervals_have_floors_naming_the_setting() {
        let mut c = Config::default();
        assert!(c.check_floors(Load::default()).is_ok());
        c.feed.precompute_interval_s = 5;
        let e = c
            .check_floors(Load {
                active_users: 10,
                connections: 0,
            })
            .expect_err("refused");
        assert!(
            e.starts_with("feed.precompute_interval_s: 5 s is below its floor of 60 s"),
            "{e}"
        );
        assert!(
            e.contains("7200 timeline recomputations an hour for the 10 active users"),
            "{e}"
        );
        c.feed.precompute_interval_s = 60;
        c.server.edge_ttl_s = 1;
        let e = c.check_floors(Load::default()).expect_err("refused");
        assert!(e.contains("10800 heartbeats an hour per edge"), "{e}");
        c.server.edge_ttl_s = 3;
        c.server.ping_interval_s = 0;
        assert!(
            c.check_floors(Load::default())
                .expect_err("refused")
                .starts_with("server.ping_interval_s")
        );
    }
}
