//! The admin API's bodies (PROTOCOL.md 1.1, "Runtime config" and "API keys"): the runtime
//! config with its parsing and validation, feature flags and their evaluation, debug entries,
//! the floors of the settings that drive periodic work, and API key bodies.
//!
//! Parsing is strict and names the field: an unknown key or a wrong value is a
//! [`ConfigError`] whose `field` is the dotted path (`limits.burst`, `flags.beta.percent`).
//! A flag's rollout is sticky per user: [`rollout_bucket`] is a stable hash (FNV-1a, 64 bits)
//! of the flag name and the user id, so any process, and any client author, computes the same
//! answer. Pure data and rules: no clock (callers pass `now_ms`), no I/O.

use crate::limits::Limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The scopes an API key may have.
pub const SCOPES: [&str; 2] = ["server", "admin"];

/// The longest `wait_s` of a long poll of the runtime config; longer asks are clamped.
pub const MAX_WAIT_S: u64 = 60;

/// The versioned runtime config, as `GET /v1/admin/config` gives it and `PUT` takes it.
/// Every section is optional in a `PUT`: a missing one (or field) takes its built-in default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// The protocol limits, as in the config file's `[limits]`.
    pub limits: Limits,
    /// The settings that drive periodic work, each with a floor ([`Intervals::floors`]).
    pub intervals: Intervals,
    /// Feature flags by name.
    pub flags: BTreeMap<String, Flag>,
    /// Per-user or per-session debug logging.
    pub debug: Vec<DebugEntry>,
}

/// Settings that drive periodic work. Each has a floor: a value under it is refused with the
/// cost it would cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Intervals {
    /// Every active user's timeline is recomputed this often, seconds (the file's
    /// `feed.precompute_interval_s`).
    pub precompute_interval_s: u64,
    /// WebSocket ping interval of new connections, seconds (the file's
    /// `server.ping_interval_s`).
    pub ping_interval_s: u64,
    /// How often the scheduler reads every queue's stats for the gauges, seconds.
    pub queue_gauges_s: u64,
    /// How often the scheduler sweeps expired ephemeral conversations, seconds.
    pub ephemeral_sweep_s: u64,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            precompute_interval_s: 300,
            ping_interval_s: 20,
            queue_gauges_s: 5,
            ephemeral_sweep_s: 60,
        }
    }
}

/// What a deployment does now, to say what an interval would cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Users active within the feed's active window (their timelines are precomputed).
    pub active_users: u64,
    /// Open connections (of the process asking).
    pub connections: u64,
}

/// The queues the scheduler reads stats of (for the cost of the gauges).
const GAUGED_QUEUES: u64 = 6;

impl Intervals {
    /// The floor of each interval: (field, floor in seconds).
    pub const FLOORS: [(&'static str, u64); 4] = [
        ("precompute_interval_s", 60),
        ("ping_interval_s", 1),
        ("queue_gauges_s", 1),
        ("ephemeral_sweep_s", 1),
    ];

    fn value(&self, field: &str) -> u64 {
        match field {
            "precompute_interval_s" => self.precompute_interval_s,
            "ping_interval_s" => self.ping_interval_s,
            "queue_gauges_s" => self.queue_gauges_s,
            _ => self.ephemeral_sweep_s,
        }
    }

    /// The first interval under its floor, as an error naming the cost under `load`.
    /// `section` is where the fields live (`intervals` in the runtime config).
    pub fn check_floors(&self, section: &str, load: Load) -> Result<(), ConfigError> {
        for (field, floor) in Self::FLOORS {
            let value = self.value(field);
            if value >= floor {
                continue;
            }
            let per_hour = 3600 / value.max(1);
            let cost = match field {
                "precompute_interval_s" => format!(
                    "{} timeline recomputations an hour for the {} active users",
                    per_hour.saturating_mul(load.active_users),
                    load.active_users
                ),
                "ping_interval_s" => format!(
                    "{} pings an hour for the {} open connections",
                    per_hour.saturating_mul(load.connections),
                    load.connections
                ),
                "queue_gauges_s" => format!(
                    "{} queue stats reads an hour",
                    per_hour.saturating_mul(GAUGED_QUEUES)
                ),
                _ => format!("{per_hour} scans for expired conversations an hour"),
            };
            return Err(ConfigError::new(
                format!("{section}.{field}"),
                format!("{value} s is below its floor of {floor} s: it would cost {cost}"),
            ));
        }
        Ok(())
    }
}

/// A feature flag: `enabled`, then an allow-list and a percentage rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    /// Off for everyone when false.
    pub enabled: bool,
    /// The share of users (0–100, sticky per user) who get it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Users who get it whatever `percent` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
}

impl Flag {
    /// Whether `user` gets the flag `name`: enabled and (listed, or within the first
    /// `percent` of the rollout); enabled with neither `percent` nor `users` is everyone.
    pub fn evaluate(&self, name: &str, user: &str) -> bool {
        if !self.enabled {
            return false;
        }
        if self.percent.is_none() && self.users.is_none() {
            return true;
        }
        if self
            .users
            .as_ref()
            .is_some_and(|u| u.iter().any(|u| u == user))
        {
            return true;
        }
        self.percent
            .is_some_and(|p| (rollout_bucket(name, user) as f64) < p * 100.0)
    }
}

/// A user's place in a flag's rollout, 0..10,000 (hundredths of a percent): FNV-1a (64 bits)
/// of the flag name, a zero byte and the user id, modulo 10,000. Stable across processes,
/// versions and machines.
pub fn rollout_bucket(flag: &str, user: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in flag.bytes().chain([0]).chain(user.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % 10_000
}

/// Every flag of `config` evaluated for `user`.
pub fn evaluate_flags(flags: &BTreeMap<String, Flag>, user: &str) -> BTreeMap<String, bool> {
    flags
        .iter()
        .map(|(name, f)| (name.clone(), f.evaluate(name, user)))
        .collect()
}

/// Debug logging for one user, or one of their sessions, until a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugEntry {
    /// The user.
    pub user: String,
    /// One session of the user; absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// When the entry lapses (ms since the epoch).
    pub until_ts: i64,
}

impl DebugEntry {
    /// Whether this entry covers `session` of `user` at `now_ms`.
    pub fn covers(&self, user: &str, session: &str, now_ms: i64) -> bool {
        self.user == user
            && self.session.as_deref().is_none_or(|s| s == session)
            && now_ms < self.until_ts
    }
}

/// Why a runtime config was refused: the field (a dotted path) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The field, e.g. `limits.burst`, `flags.beta.percent`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Longest flag name.
const MAX_FLAG_NAME: usize = 64;
/// Most flags, users in one flag's list, and debug entries.
const MAX_FLAGS: usize = 1_000;
const MAX_FLAG_USERS: usize = 10_000;
const MAX_DEBUG_ENTRIES: usize = 1_000;

impl RuntimeConfig {
    /// Parse and validate a runtime config (not the floors: see [`Intervals::check_floors`]).
    /// The error names the field.
    pub fn parse(value: serde_json::Value) -> Result<Self, ConfigError> {
        objects_only(&value, "config")?;
        let config: RuntimeConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "config".to_owned()
            } else {
                path
            };
            ConfigError::new(field, e.into_inner().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The rules serde does not check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        for (field, value) in [
            ("max_frame_bytes", l.max_frame_bytes as u64),
            ("max_text_chars", l.max_text_chars as u64),
            ("max_group_members", l.max_group_members as u64),
            ("frames_per_s", u64::from(l.frames_per_s)),
            ("burst", u64::from(l.burst)),
            ("max_outgoing_frames", l.max_outgoing_frames as u64),
            ("max_outgoing_bytes", l.max_outgoing_bytes as u64),
            ("acks_per_s", u64::from(l.acks_per_s)),
        ] {
            if value == 0 {
                return Err(ConfigError::new(
                    format!("limits.{field}"),
                    "must be at least 1",
                ));
            }
        }
        if self.flags.len() > MAX_FLAGS {
            return Err(ConfigError::new(
                "flags",
                format!("at most {MAX_FLAGS} flags"),
            ));
        }
        for (name, flag) in &self.flags {
            if name.is_empty()
                || name.len() > MAX_FLAG_NAME
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                return Err(ConfigError::new(
                    format!("flags.{name}"),
                    format!("a flag name is 1–{MAX_FLAG_NAME} characters of [A-Za-z0-9_.-]"),
                ));
            }
            if let Some(p) = flag.percent
                && !(0.0..=100.0).contains(&p)
            {
                return Err(ConfigError::new(
                    format!("flags.{name}.percent"),
                    format!("{p} is outside 0–100"),
                ));
            }
            if flag
                .users
                .as_ref()
                .is_some_and(|u| u.len() > MAX_FLAG_USERS)
            {
                return Err(ConfigError::new(
                    format!("flags.{name}.users"),
                    format!("at most {MAX_FLAG_USERS} users"),
                ));
            }
        }
        if self.debug.len() > MAX_DEBUG_ENTRIES {
            return Err(ConfigError::new(
                "debug",
                format!("at most {MAX_DEBUG_ENTRIES} entries"),
            ));
        }
        for (i, d) in self.debug.iter().enumerate() {
            if d.user.is_empty() {
                return Err(ConfigError::new(format!("debug[{i}].user"), "is empty"));
            }
        }
        Ok(())
    }
}

/// serde reads a struct from an array too (its fields in order): refuse that, so a section
/// is always an object with named fields. Arrays are `debug` and a flag's `users`.
fn objects_only(value: &serde_json::Value, path: &str) -> Result<(), ConfigError> {
    use serde_json::Value;
    let is_list = path == "debug" || (path.starts_with("flags.") && path.ends_with(".users"));
    match value {
        Value::Array(items) if is_list => {
            for (i, item) in items.iter().enumerate() {
                if path == "debug" && !item.is_object() {
                    return Err(ConfigError::new(format!("debug[{i}]"), "must be an object"));
                }
            }
            Ok(())
        }
        Value::Array(_) => Err(ConfigError::new(path, "must be an object, not a list")),
        Value::Object(map) => {
            for (k, v) in map {
                let child = if path == "config" {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                objects_only(v, &child)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `GET /v1/admin/config` and the long poll's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionedConfig {
    /// The version (0: none stored yet; the process's configuration file applies).
    pub version: u64,
    /// The runtime config.
    pub config: RuntimeConfig,
}

/// The body of `PUT /v1/admin/config`, before the config itself is parsed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutConfig {
    /// The version the change is based on (compare and set).
    pub version: u64,
    /// The whole new runtime config.
    pub config: serde_json::Value,
}

/// `PUT /v1/admin/config`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PutConfigResponse {
    /// The new version.
    pub version: u64,
}

/// `POST /v1/admin/apikeys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// A name for people (1–64 characters).
    pub name: String,
    /// `server` and/or `admin`.
    pub scopes: Vec<String>,
}

/// The answer to `POST /v1/admin/apikeys`: the key is shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    /// The key's id (for `DELETE /v1/admin/apikeys/{id}`).
    pub id: String,
    /// The key itself.
    pub key: String,
}

/// An API key as listed by `GET /v1/admin/apikeys` (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiKeyInfo {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// When it was created.
    pub created_ts: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_keys_and_bad_values_name_the_field() {
        let e = RuntimeConfig::parse(json!({"limits": {"bogus": 1}})).expect_err("refused");
        assert_eq!(e.field, "limits.bogus");
        assert!(e.message.contains("bogus"), "{e}");
        let e = RuntimeConfig::parse(json!({"limits": {"burst": "x"}})).expect_err("refused");
        assert_eq!(e.field, "limits.burst");
        let e = RuntimeConfig::parse(json!({"nope": {}})).expect_err("refused");
        assert_eq!(e.field, "nope");
        assert!(e.message.contains("nope"));
        let e = RuntimeConfig::parse(json!([])).expect_err("refused");
        assert_eq!(e.field, "config");
        let e = RuntimeConfig::parse(json!({"limits": [1, 2]})).expect_err("refused");
        assert_eq!(e.field, "limits");
        let e = RuntimeConfig::parse(json!({"debug": [[1]]})).expect_err("refused");
        assert_eq!(e.field, "debug[0]");
        assert!(
            RuntimeConfig::parse(json!({"flags": {"f": {"enabled": true, "users": ["u"]}}}))
                .is_ok()
        );
        let e = RuntimeConfig::parse(json!({"flags": {"beta": {"enabled": true, "percent": 101}}}))
            .expect_err("refused");
        assert_eq!(e.field, "flags.beta.percent");
        let e = RuntimeConfig::parse(json!({"flags": {"beta": {"enabled": true, "x": 1}}}))
            .expect_err("refused");
        assert_eq!(e.field, "flags.beta.x");
        let e = RuntimeConfig::parse(json!({"debug": [{"user": "", "until_ts": 1}]}))
            .expect_err("refused");
        assert_eq!(e.field, "debug[0].user");
        let e = RuntimeConfig::parse(json!({"limits": {"frames_per_s": 0}})).expect_err("refused");
        assert_eq!(e.field, "limits.frames_per_s");
        assert_eq!(
            RuntimeConfig::parse(json!({})).expect("accepted"),
            RuntimeConfig::default()
        );
    }

    #[test]
    fn floors_name_the_cost() {
        let mut i = Intervals {
            precompute_interval_s: 10,
            ..Intervals::default()
        };
        let load = Load {
            active_users: 1000,
            connections: 50,
        };
        let e = i.check_floors("intervals", load).expect_err("refused");
        assert_eq!(e.field, "intervals.precompute_interval_s");
        assert!(
            e.message
                .contains("360000 timeline recomputations an hour for the 1000 active users"),
            "{e}"
        );
        i.precompute_interval_s = 60;
        i.ping_interval_s = 0;
        let e = i.check_floors("intervals", load).expect_err("refused");
        assert!(e.message.contains("180000 pings an hour"), "{e}");
        i.ping_interval_s = 1;
        assert!(i.check_floors("intervals", load).is_ok());
        assert!(Intervals::default().check_floors("intervals", load).is_ok());
    }

    #[test]
    fn flags_evaluate_sticky_and_by_list() {
        let everyone = Flag {
            enabled: true,
            percent: None,
            users: None,
        };
        assert!(everyone.evaluate("f", "u1"));
        let off = Flag {
            enabled: false,
            ..everyone.clone()
        };
        assert!(!off.evaluate("f", "u1"));
        let listed = Flag {
            enabled: true,
            percent: None,
            users: Some(vec!["u1".into()]),
        };
        assert!(listed.evaluate("f", "u1"));
        assert!(!listed.evaluate("f", "u2"));
        let half = Flag {
            enabled: true,
            percent: Some(50.0),
            users: None,
        };
        let on = (0..10_000)
            .filter(|i| half.evaluate("f", &format!("user{i}")))
            .count();
        assert!((4_500..5_500).contains(&on), "{on}");
        // Sticky: raising the percentage keeps everyone who had it.
        let more = Flag {
            percent: Some(80.0),
            ..half.clone()
        };
        for i in 0..1_000 {
            let u = format!("user{i}");
            assert!(!half.evaluate("f", &u) || more.evaluate("f", &u));
        }
        assert_eq!(rollout_bucket("f", "u"), rollout_bucket("f", "u"));
        let none = Flag {
            percent: Some(0.0),
            ..half.clone()
        };
        assert!((0..1_000).all(|i| !none.evaluate("f", &format!("user{i}"))));
        let all = Flag {
            percent: Some(100.0),
            ..half
        };
        assert!((0..1_000).all(|i| all.evaluate("f", &format!("user{i}"))));
    }

    #[test]
    fn debug_entries_cover_a_user_or_a_session_until_they_lapse() {
        let d = DebugEntry {
            user: "u".into(),
            session: None,
            until_ts: 100,
        };
        assert!(d.covers("u", "s1", 99));
        assert!(!d.covers("u", "s1", 100));
        assert!(!d.covers("v", "s1", 0));
        let s = DebugEntry {
            session: Some("s1".into()),
            ..d
        };
        assert!(s.covers("u", "s1", 0));
        assert!(!s.covers("u", "s2", 0));
    }
}
