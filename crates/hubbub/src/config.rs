//! The server's configuration: one typed struct, layered from defaults, then a TOML file,
//! then `HUBBUB_*` environment variables, then command-line flags.
//!
//! [`Config::load`] is a pure function of those four sources (tests never touch the process
//! environment). Environment variables name a setting by its path, sections joined by a
//! double underscore: `HUBBUB_LISTEN`, `HUBBUB_DATA_DIR`, `HUBBUB_LIMITS__FRAMES_PER_S`,
//! `HUBBUB_AUTH__APP_HMAC_SECRET`. Unknown settings are errors, so a typo never passes
//! silently; only `HUBBUB_LOG`, `HUBBUB_CONFIG`, the CLI's `HUBBUB_SERVER`, `HUBBUB_PROFILE`,
//! `HUBBUB_PASSWORD`, `HUBBUB_API_KEY`, and anything under `HUBBUB_TEST_` are not settings. `hubbub.example.toml` at the repository root lists every setting with its
//! default; a test checks that it parses to exactly the defaults.

use hubbub_edge::auth::AuthConfig;
use hubbub_protocol::limits::Limits;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Environment variables with this prefix belong to test harnesses, not to the server.
const TEST_PREFIX: &str = "HUBBUB_TEST_";

/// Environment variables that are not settings.
const NOT_SETTINGS: &[&str] = &[
    "HUBBUB_LOG",
    "HUBBUB_CONFIG",
    "HUBBUB_SERVER",
    "HUBBUB_PROFILE",
    "HUBBUB_PASSWORD",
    "HUBBUB_API_KEY",
];

/// Everything `hubbub serve` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the database (`hubbub.db`), the signing keys (`keys.json`) and the contact note
    /// keys (`note-keys`) live.
    pub data_dir: PathBuf,
    /// The public listener: WebSocket, HTTP API, health (and readiness and metrics when
    /// `admin_listen` is not set).
    pub listen: SocketAddr,
    /// The admin listener: `/healthz`, `/readyz`, `/metrics`. When set, the public listener
    /// answers `/readyz` and `/metrics` with 404.
    pub admin_listen: Option<SocketAddr>,
    /// Protocol limits.
    pub limits: Limits,
    /// Authentication.
    pub auth: AuthConfig,
    /// The durable queue.
    pub queue: QueueSettings,
    /// Roles and timings.
    pub server: ServerSettings,
    /// Push notifications for events no device acknowledged in time.
    pub notify: hubbub_services::notify::NotifyConfig,
    /// The server API's webhooks: delivery, retries, the offline grace.
    pub webhooks: hubbub_services::webhooks::WebhookConfig,
    /// Where uploaded media is kept.
    pub media: MediaSettings,
    /// The feed and its precomputed timelines.
    pub feed: FeedSettings,
    /// Who is writing a comment.
    pub engagement: EngagementSettings,
    /// Running roles apart (`hubbub edge`, `router`, `worker`, `scheduler`).
    pub cluster: ClusterSettings,
    /// API keys.
    pub api: ApiSettings,
    /// The demo web app.
    pub demo: DemoSettings,
}

/// The demo web app (issue 14, `examples/web`): a chat and feed client served at `/demo/` on
/// the public listener, built into the binary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoSettings {
    /// Serve it (env `HUBBUB_DEMO__ENABLED`); on by default, so a fresh `hubbub serve` shows
    /// something. Turn it off in production: it is a demo, not a product.
    pub enabled: bool,
}

impl Default for DemoSettings {
    fn default() -> Self {
        DemoSettings { enabled: true }
    }
}

/// API keys (PROTOCOL.md 1.1): the bootstrap key, with every scope. Others are created
/// through the admin API (or `hubbub apikey create`) and stored hashed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// A key with the `server` and `admin` scopes (env `HUBBUB_API__BOOTSTRAP_KEY`); at least
    /// 32 characters.
    pub bootstrap_key: Option<String>,
}

/// The shortest bootstrap key accepted.
pub const MIN_BOOTSTRAP_KEY: usize = 32;

/// Running roles apart: the shared backends and the edges' internal listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// Redis: queues, logs, the session registry, the timeline cache.
    pub redis_url: Option<String>,
    /// PostgreSQL: the store.
    pub postgres_url: Option<String>,
    /// Connections per process to PostgreSQL.
    pub postgres_max_connections: usize,
    /// Every Redis key starts with this (several deployments can share a server).
    pub namespace: String,
    /// An edge's internal listener: services hand it batches of events here.
    pub internal_listen: SocketAddr,
    /// The address other roles use to reach this edge's internal listener (default: the
    /// address `internal_listen` is bound to).
    pub internal_advertise: Option<String>,
    /// The secret every internal request carries (required to run roles apart).
    pub internal_secret: Option<String>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            redis_url: None,
            postgres_url: None,
            postgres_max_connections: 16,
            namespace: "hubbub".into(),
            internal_listen: SocketAddr::from(([127, 0, 0, 1], 7701)),
            internal_advertise: None,
            internal_secret: None,
        }
    }
}

/// The feed and its precomputed timelines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedSettings {
    /// Feed service loops.
    pub workers: usize,
    /// Timeline computer and personalization loops (each).
    pub timeline_workers: usize,
    /// The scheduler recomputes the timeline of every recently active user this often,
    /// seconds.
    pub precompute_interval_s: u64,
    /// A user who opened a session within this is recently active, seconds.
    pub active_window_s: u64,
    /// Changes to one user's timeline within this share one recomputation, milliseconds.
    pub precompute_dedupe_ms: u64,
    /// Most posts a precomputed timeline keeps.
    pub timeline_len: usize,
}

impl Default for FeedSettings {
    fn default() -> Self {
        FeedSettings {
            workers: 1,
            timeline_workers: 1,
            precompute_interval_s: 300,
            active_window_s: 7 * 24 * 3600,
            precompute_dedupe_ms: 2000,
            timeline_len: 500,
        }
    }
}

/// Who is writing a comment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngagementSettings {
    /// The sliding window of writers, seconds.
    pub window_s: u32,
    /// How many writers `top` lists.
    pub top_n: usize,
    /// Partitions (tasks), each owning a share of the posts.
    pub partitions: usize,
}

impl Default for EngagementSettings {
    fn default() -> Self {
        EngagementSettings {
            window_s: 300,
            top_n: 10,
            partitions: 2,
        }
    }
}

/// Where uploaded media is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSettings {
    /// `local` (the `media` folder of the data directory) or `s3` (needs the `s3` feature).
    pub backend: MediaBackend,
    /// The bucket, for `backend = "s3"`.
    pub s3: Option<hubbub_store::S3Config>,
}

/// A media backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaBackend {
    /// A directory.
    #[default]
    Local,
    /// An S3-compatible bucket.
    S3,
}

impl Default for MediaSettings {
    fn default() -> Self {
        MediaSettings {
            backend: MediaBackend::Local,
            s3: None,
        }
    }
}

/// Queue settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    /// Largest message body.
    pub max_body_bytes: usize,
    /// Deliveries before a message moves to its dead-letter queue.
    pub max_receives: u32,
    /// How long a dedupe id is remembered, seconds.
    pub dedupe_window_s: u64,
}

/// Roles and timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Router loops. Keep 1: with more, two consecutive requests of one user can be
    /// forwarded at once and reach their service in the other order (`main` is not keyed).
    pub routers: usize,
    /// Chat service loops.
    pub chat_workers: usize,
    /// A request with no reply after this long is answered `internal`, milliseconds.
    pub request_timeout_ms: u64,
    /// Admission control: the most writes one edge has in flight (forwarded, not yet
    /// answered); past it writes are refused `rate_limited`.
    pub max_inflight_writes: usize,
    /// Admission control: when replies take longer than this on average, an edge refuses new
    /// writes (`rate_limited`) while any is in flight, milliseconds.
    pub admission_wait_ms: u64,
    /// Admission control: while most of an edge's sessions receive the events of writes it
    /// accepted later than this after acceptance, the edge refuses new writes
    /// (`rate_limited`), milliseconds; 0 turns this check off.
    pub admission_delivery_ms: u64,
    /// WebSocket ping interval, seconds; three silent intervals close the connection.
    pub ping_interval_s: u64,
    /// Durable events older than this are pruned (sync then reports `truncated`), days.
    pub event_retention_days: u64,
    /// Entries of the `archive` log (every routed request) older than this are removed, days.
    pub archive_retention_days: u64,
    /// The `archive` log keeps at most this many bytes of entries, newest first.
    pub archive_max_bytes: u64,
    /// Ephemeral conversations are deleted this long after their last message, seconds.
    pub ephemeral_ttl_s: u64,
    /// An edge sends a heartbeat every third of this; an edge silent this long loses its
    /// sessions (its users go offline), seconds.
    pub edge_ttl_s: u64,
    /// Most connections one listener holds at once; past it new ones are answered 503. 0
    /// means as many as the process's descriptor limit allows, less a reserve (1/32, at
    /// least 64) for its own files.
    pub max_connections: usize,
    /// Behind a reverse proxy: the header naming the client's address (its last entry, the
    /// one the proxy adds), for the per-IP limits of login and signup.
    pub client_ip_header: Option<String>,
    /// Most connections at once from one IP address; past it new ones are answered 429.
    pub max_connections_per_ip: usize,
    /// Most sessions one user holds on one edge; a new one past it closes the user's oldest
    /// with 4000.
    pub max_sessions_per_user: usize,
    /// A request head not received whole within this closes the connection, milliseconds.
    pub header_timeout_ms: u64,
    /// A request body that sends nothing for this long is answered 408, milliseconds.
    pub body_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("hubbub-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            admin_listen: None,
            limits: Limits::default(),
            auth: AuthConfig::default(),
            queue: QueueSettings::default(),
            server: ServerSettings::default(),
            notify: Default::default(),
            webhooks: Default::default(),
            media: MediaSettings::default(),
            feed: FeedSettings::default(),
            engagement: EngagementSettings::default(),
            cluster: ClusterSettings::default(),
            api: ApiSettings::default(),
            demo: DemoSettings::default(),
        }
    }
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            max_body_bytes: 256 * 1024,
            max_receives: 5,
            dedupe_window_s: 300,
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            routers: 1,
            chat_workers: 2,
            request_timeout_ms: 10_000,
            max_inflight_writes: 20_000,
            admission_wait_ms: 2_000,
            admission_delivery_ms: 500,
            ping_interval_s: 20,
            event_retention_days: 7,
            archive_retention_days: 7,
            archive_max_bytes: 1024 * 1024 * 1024,
            ephemeral_ttl_s: 24 * 3600,
            edge_ttl_s: 30,
            max_connections: 0,
            client_ip_header: None,
            max_connections_per_ip: 1000,
            max_sessions_per_user: 20,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file does not parse.
    #[error("config file: {0}")]
    File(String),
    /// A value has the wrong type, or a setting does not exist.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Set `path` in `root` to `raw`, typed like the value already there (text when absent).
fn set_path(
    root: &mut toml::Table,
    path: &[String],
    raw: &str,
    source: &str,
) -> Result<(), ConfigError> {
    let Some((last, parents)) = path.split_last() else {
        return Err(ConfigError::Invalid(format!(
            "{source}: empty setting name"
        )));
    };
    let mut table = root;
    for p in parents {
        let entry = table
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError::Invalid(format!("{source}: {p} is not a section")))?;
    }
    let bad = |ty: &str| ConfigError::Invalid(format!("{source}: {raw:?} is not a {ty}"));
    let value = match table.get(last) {
        Some(toml::Value::Integer(_)) => {
            toml::Value::Integer(raw.parse().map_err(|_| bad("whole number"))?)
        }
        Some(toml::Value::Float(_)) => toml::Value::Float(raw.parse().map_err(|_| bad("number"))?),
        Some(toml::Value::Boolean(_)) => {
            toml::Value::Boolean(raw.parse().map_err(|_| bad("boolean"))?)
        }
        _ => toml::Value::String(raw.to_owned()),
    };
    table.insert(last.clone(), value);
    Ok(())
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Config {
    /// Defaults, then `file` (TOML text), then `env` (`HUBBUB_*` pairs), then `flags`
    /// (setting path → value, e.g. `("listen", "0.0.0.0:7700")`).
    pub fn load(
        file: Option<&str>,
        env: &[(String, String)],
        flags: &[(&str, String)],
    ) -> Result<Config, ConfigError> {
        let mut root = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(text) = file {
            let table: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::File(e.to_string()))?;
            merge(&mut root, table);
        }
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("HUBBUB_") else {
                continue;
            };
            if NOT_SETTINGS.contains(&name.as_str()) || name.starts_with(TEST_PREFIX) {
                continue;
            }
            let path: Vec<String> = rest
                .to_ascii_lowercase()
                .split("__")
                .map(str::to_owned)
                .collect();
            set_path(&mut root, &path, value, name)?;
        }
        for (path, value) in flags {
            let path: Vec<String> = path.split('.').map(str::to_owned).collect();
            set_path(&mut root, &path, value, "flag")?;
        }
        let config: Config = toml::Value::Table(root)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))?;
        if let Some(k) = &config.api.bootstrap_key
            && k.chars().count() < MIN_BOOTSTRAP_KEY
        {
            return Err(ConfigError::Invalid(format!(
                "api.bootstrap_key: at least {MIN_BOOTSTRAP_KEY} characters (it opens the admin API)"
            )));
        }
        Ok(config)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let file = "listen = \"127.0.0.1:9000\"\n[limits]\nframes_per_s = 30\nburst = 60\n";
        let env = vec![
            ("HUBBUB_LIMITS__FRAMES_PER_S".to_owned(), "40".to_owned()),
            (
                "HUBBUB_AUTH__APP_HMAC_SECRET".to_owned(),
                "s3cret".to_owned(),
            ),
            ("HUBBUB_LOG".to_owned(), "debug".to_owned()),
            (
                "HUBBUB_TEST_S3_ENDPOINT".to_owned(),
                "http://127.0.0.1:1".to_owned(),
            ),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let flags = [("listen", "127.0.0.1:9100".to_owned())];
        let c = Config::load(Some(file), &env, &flags).expect("load");
        assert_eq!(c.listen.port(), 9100, "flags beat the file");
        assert_eq!(c.limits.frames_per_s, 40, "env beats the file");
        assert_eq!(c.limits.burst, 60, "the file beats defaults");
        assert_eq!(c.auth.app_hmac_secret.as_deref(), Some("s3cret"));
        assert_eq!(c.limits.max_text_chars, 4000, "defaults stay");
    }

    #[test]
    fn mistakes_are_errors() {
        let e = Config::load(Some("lisen = \"x\""), &[], &[]).expect_err("typo in file");
        assert!(e.to_string().contains("lisen"), "{e}");
        let env = vec![("HUBBUB_LIMITS__FRAMES_PER_S".to_owned(), "many".to_owned())];
        let e = Config::load(None, &env, &[]).expect_err("not a number");
        assert!(e.to_string().contains("HUBBUB_LIMITS__FRAMES_PER_S"), "{e}");
        let env = vec![("HUBBUB_NO_SUCH_THING".to_owned(), "1".to_owned())];
        assert!(Config::load(None, &env, &[]).is_err());
        assert!(Config::load(Some("listen = 5"), &[], &[]).is_err());
        assert!(Config::load(Some("[limits"), &[], &[]).is_err());
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../../../hubbub.example.toml");
        assert_eq!(
            Config::load(Some(text), &[], &[]).expect("example parses"),
            Config::default()
        );
    }
}
