//! The control plane's durable state: API keys and the versioned runtime config, with their
//! rules written once ([`ControlStore`]); `sqlite.rs` and `postgres.rs` hold the SQL.
//!
//! - An API key is `hbk_` and 64 hex digits (256 random bits), shown once at creation and
//!   stored as its SHA-256: with that much entropy an unkeyed hash is as strong as a keyed
//!   one, and a lookup is one indexed read. A revoked key is refused from the next request.
//! - The runtime config is one row: a version and a JSON body, changed only by compare and set
//!   (`UPDATE ... WHERE version = expected`, so two writers on several machines never both
//!   win). Version 0 is "none stored yet". This crate does not parse the body: callers
//!   validate it before storing and after reading (`hubbub_protocol::admin`).
//! - Watching: each backend keeps the latest version it knows in a `tokio::sync::watch`
//!   channel, and [`ControlStore::wait_runtime_config`] is a long poll on it. SQLite (one
//!   process) bumps it after its own commit; PostgreSQL sends `NOTIFY hubbub_config` in the
//!   committing transaction and a `LISTEN` connection per process bumps it, reconnecting
//!   (and reading the current version, to catch up) when the connection drops.

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
mod sqlite;

use crate::{Result, StoreError, new_id};
use async_trait::async_trait;
use std::time::Duration;
use tokio::sync::watch;

/// An API key, as stored (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Its id.
    pub id: String,
    /// Its name, for people.
    pub name: String,
    /// Its scopes (`server`, `admin`).
    pub scopes: Vec<String>,
    /// When it was created (ms).
    pub created_ms: i64,
}

impl ApiKey {
    /// Whether the key has `scope`.
    pub fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// The stored runtime config: its version (0: none stored) and its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConfig {
    /// The version.
    pub version: u64,
    /// The JSON body (`{}` at version 0).
    pub body: String,
}

/// A webhook endpoint of the server API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Its id.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// The HMAC-SHA256 signing secret.
    pub secret: String,
    /// When it was created (ms).
    pub created_ms: i64,
}

impl WebhookEndpoint {
    /// Whether it receives events of type `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.iter().any(|e| e == kind)
    }
}

/// API keys, the runtime config, webhook endpoints.
#[async_trait]
pub trait ControlStore: Send + Sync {
    /// Create an API key with a name (1–64 characters) and scopes (`server`, `admin`);
    /// returns it and the key, which is not stored and cannot be shown again.
    async fn create_api_key(&self, name: &str, scopes: &[String]) -> Result<(ApiKey, String)>;
    /// The live (not revoked) key `key` is, if any.
    async fn api_key(&self, key: &str) -> Result<Option<ApiKey>>;
    /// Every live key, oldest first.
    async fn api_keys(&self) -> Result<Vec<ApiKey>>;
    /// Revoke a key at once; `NotFound` when there is no live key with that id.
    async fn revoke_api_key(&self, id: &str) -> Result<()>;
    /// The runtime config now.
    async fn runtime_config(&self) -> Result<StoredConfig>;
    /// Replace the runtime config if its version is `expected` (else `Conflict`); returns the
    /// new version. The body is stored as given (validated by the caller).
    async fn put_runtime_config(&self, expected: u64, body: &str) -> Result<u64>;
    /// A long poll: the latest version this process knows, as soon as it is greater than
    /// `after`, or when `timeout` has passed.
    async fn wait_runtime_config(&self, after: u64, timeout: Duration) -> u64;
    /// How many users were active since `since_ms` (what a timeline precompute round costs).
    async fn active_user_count(&self, since_ms: i64) -> Result<u64>;
    /// Create a webhook endpoint for these event types (checked by the caller), with a new
    /// random secret.
    async fn create_webhook(&self, url: &str, events: &[String]) -> Result<WebhookEndpoint>;
    /// Delete an endpoint; `NotFound` when there is none with that id.
    async fn delete_webhook(&self, id: &str) -> Result<()>;
    /// Every endpoint, oldest first.
    async fn webhooks(&self) -> Result<Vec<WebhookEndpoint>>;
    /// The presence last announced for `user` by webhooks (`None`: never).
    async fn announced_presence(&self, user: &str) -> Result<Option<bool>>;
    /// Remember the presence announced for `user`.
    async fn set_announced_presence(&self, user: &str, online: bool) -> Result<()>;
    /// Up to `limit` users announced online, by id after `after` ("" first).
    async fn announced_online(&self, after: &str, limit: usize) -> Result<Vec<String>>;
}

/// One webhook row: id, url, events (comma-separated), secret, created.
pub(crate) type WebhookRow = (String, String, String, String, i64);

/// One API key row: id, name, scopes (comma-separated), created.
pub(crate) type KeyRow = (String, String, String, i64);

/// What the control rules need of a transaction; each backend implements it with its SQL.
pub(crate) trait ControlTx {
    /// Insert a key.
    async fn insert_key(&self, key: &ApiKey, hash: &str) -> Result<()>;
    /// The live key with this hash.
    async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRow>>;
    /// Every live key, oldest first.
    async fn live_keys(&self) -> Result<Vec<KeyRow>>;
    /// Mark a live key revoked; whether one was.
    async fn revoke_key(&self, id: &str, now: i64) -> Result<bool>;
    /// The config row: version and body.
    async fn config_row(&self) -> Result<(i64, String)>;
    /// Set the config row if its version is `expected`; whether it was. PostgreSQL also
    /// announces the new version (NOTIFY) in the same transaction.
    async fn swap_config(&self, expected: i64, body: &str, now: i64) -> Result<bool>;
    /// Users active since a time.
    async fn count_active(&self, since_ms: i64) -> Result<i64>;
    /// Insert a webhook endpoint.
    async fn insert_webhook(&self, row: &WebhookRow) -> Result<()>;
    /// Delete one; whether it existed.
    async fn delete_webhook(&self, id: &str) -> Result<bool>;
    /// Every endpoint, oldest first.
    async fn webhook_rows(&self) -> Result<Vec<WebhookRow>>;
    /// The announced presence of a user.
    async fn presence_row(&self, user: &str) -> Result<Option<bool>>;
    /// Set it.
    async fn upsert_presence(&self, user: &str, online: bool, now: i64) -> Result<()>;
    /// Users announced online after `after`, by id.
    async fn online_after(&self, after: &str, limit: i64) -> Result<Vec<String>>;
}

fn webhook_of(row: WebhookRow) -> WebhookEndpoint {
    let (id, url, events, secret, created_ms) = row;
    WebhookEndpoint {
        id,
        url,
        events: events
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        secret,
        created_ms,
    }
}

pub(crate) async fn create_webhook(
    tx: &impl ControlTx,
    url: &str,
    events: &[String],
    now: i64,
) -> Result<WebhookEndpoint> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| StoreError::Internal(format!("random: {e}")))?;
    let row = (
        new_id("wh")?,
        url.to_owned(),
        events.join(","),
        format!("whsec_{}", hex::encode(secret)),
        now,
    );
    tx.insert_webhook(&row).await?;
    Ok(webhook_of(row))
}

pub(crate) async fn delete_webhook(tx: &impl ControlTx, id: &str) -> Result<()> {
    if tx.delete_webhook(id).await? {
        Ok(())
    } else {
        Err(StoreError::NotFound("no such webhook".into()))
    }
}

pub(crate) async fn webhooks(tx: &impl ControlTx) -> Result<Vec<WebhookEndpoint>> {
    Ok(tx
        .webhook_rows()
        .await?
        .into_iter()
        .map(webhook_of)
        .collect())
}

/// Longest key name.
const MAX_KEY_NAME: usize = 64;

/// SHA-256 of a key, in hex: what is stored and looked up.
fn key_hash(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

fn key_of(row: KeyRow) -> ApiKey {
    let (id, name, scopes, created_ms) = row;
    ApiKey {
        id,
        name,
        scopes: scopes
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        created_ms,
    }
}

/// Check a key's name and scopes; the scopes deduplicated, in the protocol's order.
fn checked_scopes(name: &str, scopes: &[String]) -> Result<Vec<String>> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_KEY_NAME || name.chars().any(char::is_control) {
        return Err(StoreError::BadRequest(format!(
            "name: 1–{MAX_KEY_NAME} printable characters"
        )));
    }
    if let Some(bad) = scopes
        .iter()
        .find(|s| !hubbub_protocol::admin::SCOPES.contains(&s.as_str()))
    {
        return Err(StoreError::BadRequest(format!(
            "scopes: unknown scope {bad:?} (server, admin)"
        )));
    }
    let scopes: Vec<String> = hubbub_protocol::admin::SCOPES
        .iter()
        .filter(|s| scopes.iter().any(|t| t == *s))
        .map(|s| (*s).to_owned())
        .collect();
    if scopes.is_empty() {
        return Err(StoreError::BadRequest(
            "scopes: at least one of server, admin".into(),
        ));
    }
    Ok(scopes)
}

pub(crate) async fn create_key(
    tx: &impl ControlTx,
    name: &str,
    scopes: &[String],
    now: i64,
) -> Result<(ApiKey, String)> {
    let scopes = checked_scopes(name, scopes)?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| StoreError::Internal(format!("random: {e}")))?;
    let key = format!("hbk_{}", hex::encode(secret));
    let info = ApiKey {
        id: new_id("ak")?,
        name: name.to_owned(),
        scopes,
        created_ms: now,
    };
    tx.insert_key(&info, &key_hash(&key)).await?;
    Ok((info, key))
}

pub(crate) async fn find_key(tx: &impl ControlTx, key: &str) -> Result<Option<ApiKey>> {
    Ok(tx.key_by_hash(&key_hash(key)).await?.map(key_of))
}

pub(crate) async fn list_keys(tx: &impl ControlTx) -> Result<Vec<ApiKey>> {
    Ok(tx.live_keys().await?.into_iter().map(key_of).collect())
}

pub(crate) async fn revoke(tx: &impl ControlTx, id: &str, now: i64) -> Result<()> {
    if tx.revoke_key(id, now).await? {
        Ok(())
    } else {
        Err(StoreError::NotFound("no such API key".into()))
    }
}

pub(crate) async fn config(tx: &impl ControlTx) -> Result<StoredConfig> {
    let (version, body) = tx.config_row().await?;
    Ok(StoredConfig {
        version: u64::try_from(version).unwrap_or(0),
        body,
    })
}

pub(crate) async fn put_config(
    tx: &impl ControlTx,
    expected: u64,
    body: &str,
    now: i64,
) -> Result<u64> {
    let expected_i = i64::try_from(expected)
        .map_err(|_| StoreError::Conflict("the runtime config is at another version".into()))?;
    if tx.swap_config(expected_i, body, now).await? {
        Ok(expected + 1)
    } else {
        let now_at = config(tx).await?.version;
        Err(StoreError::Conflict(format!(
            "the runtime config is at version {now_at}, not {expected}: read it again and \
             reapply the change"
        )))
    }
}

pub(crate) async fn active_count(tx: &impl ControlTx, since_ms: i64) -> Result<u64> {
    Ok(u64::try_from(tx.count_active(since_ms).await?).unwrap_or(0))
}

/// The long poll on a backend's channel of versions.
pub(crate) async fn wait_version(
    mut versions: watch::Receiver<u64>,
    after: u64,
    timeout: Duration,
) -> u64 {
    let _ = tokio::time::timeout(timeout, versions.wait_for(|v| *v > after)).await;
    let current = versions.borrow();
    *current
}

/// Puts [`ControlStore`] on a backend: each method runs its rule in one of the backend's
/// transactions; `config_committed` (after a change commits) and `config_versions` (the
/// channel of versions) are the backend's.
macro_rules! impl_control_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::control::ControlStore for $store {
            async fn create_api_key(
                &self,
                name: &str,
                scopes: &[String],
            ) -> Result<($crate::control::ApiKey, String), $crate::StoreError> {
                let (name, scopes, now) = (name.to_owned(), scopes.to_vec(), self.now());
                $crate::run!(self.write, |tx| $crate::control::create_key(
                    tx, &name, &scopes, now
                ))
            }

            async fn api_key(
                &self,
                key: &str,
            ) -> Result<Option<$crate::control::ApiKey>, $crate::StoreError> {
                let key = key.to_owned();
                $crate::run!(self.read, |tx| $crate::control::find_key(tx, &key))
            }

            async fn api_keys(&self) -> Result<Vec<$crate::control::ApiKey>, $crate::StoreError> {
                $crate::run!(self.read, |tx| $crate::control::list_keys(tx))
            }

            async fn revoke_api_key(&self, id: &str) -> Result<(), $crate::StoreError> {
                let (id, now) = (id.to_owned(), self.now());
                $crate::run!(self.write, |tx| $crate::control::revoke(tx, &id, now))
            }

            async fn runtime_config(
                &self,
            ) -> Result<$crate::control::StoredConfig, $crate::StoreError> {
                $crate::run!(self.read, |tx| $crate::control::config(tx))
            }

            async fn put_runtime_config(
                &self,
                expected: u64,
                body: &str,
            ) -> Result<u64, $crate::StoreError> {
                let (body, now) = (body.to_owned(), self.now());
                let version = $crate::run!(self.write, |tx| $crate::control::put_config(
                    tx, expected, &body, now
                ))?;
                self.config_committed(version);
                Ok(version)
            }

            async fn wait_runtime_config(&self, after: u64, timeout: std::time::Duration) -> u64 {
                $crate::control::wait_version(self.config_versions(), after, timeout).await
            }

            async fn active_user_count(&self, since_ms: i64) -> Result<u64, $crate::StoreError> {
                $crate::run!(self.read, |tx| $crate::control::active_count(tx, since_ms))
            }

            async fn create_webhook(
                &self,
                url: &str,
                events: &[String],
            ) -> Result<$crate::control::WebhookEndpoint, $crate::StoreError> {
                let (url, events, now) = (url.to_owned(), events.to_vec(), self.now());
                $crate::run!(self.write, |tx| $crate::control::create_webhook(
                    tx, &url, &events, now
                ))
            }

            async fn delete_webhook(&self, id: &str) -> Result<(), $crate::StoreError> {
                let id = id.to_owned();
                $crate::run!(self.write, |tx| $crate::control::delete_webhook(tx, &id))
            }

            async fn webhooks(
                &self,
            ) -> Result<Vec<$crate::control::WebhookEndpoint>, $crate::StoreError> {
                $crate::run!(self.read, |tx| $crate::control::webhooks(tx))
            }

            async fn announced_presence(
                &self,
                user: &str,
            ) -> Result<Option<bool>, $crate::StoreError> {
                let user = user.to_owned();
                $crate::run!(self.read, |tx| $crate::control::ControlTx::presence_row(
                    tx, &user
                ))
            }

            async fn set_announced_presence(
                &self,
                user: &str,
                online: bool,
            ) -> Result<(), $crate::StoreError> {
                let (user, now) = (user.to_owned(), self.now());
                $crate::run!(
                    self.write,
                    |tx| $crate::control::ControlTx::upsert_presence(tx, &user, online, now)
                )
            }

            async fn announced_online(
                &self,
                after: &str,
                limit: usize,
            ) -> Result<Vec<String>, $crate::StoreError> {
                let after = after.to_owned();
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                $crate::run!(self.read, |tx| $crate::control::ControlTx::online_after(
                    tx, &after, limit
                ))
            }
        }
    };
}
pub(crate) use impl_control_store;
