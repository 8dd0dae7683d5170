//! The control plane's SQL on SQLite, and the channel of runtime config versions of the one
//! process that owns the file (bumped after each change commits).

use super::{ApiKey, ControlTx, KeyRow};
use crate::sqlite::Tx;
use crate::{Result, SqliteStore};
use rusqlite::{OptionalExtension, params};
use tokio::sync::watch;

super::impl_control_store!(SqliteStore);

impl SqliteStore {
    /// A change of the runtime config to `version` committed.
    fn config_committed(&self, version: u64) {
        self.config_version.send_if_modified(|v| {
            let newer = version > *v;
            if newer {
                *v = version;
            }
            newer
        });
    }

    fn config_versions(&self) -> watch::Receiver<u64> {
        self.config_version.subscribe()
    }
}

impl ControlTx for Tx<'_> {
    async fn insert_key(&self, key: &ApiKey, hash: &str) -> Result<()> {
        self.prepare_cached(
            "INSERT INTO api_keys (id, name, key_hash, scopes, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![key.id, key.name, hash, key.scopes.join(","), key.created_ms])?;
        Ok(())
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRow>> {
        Ok(self
            .prepare_cached(
                "SELECT id, name, scopes, created_ms FROM api_keys
                 WHERE key_hash = ?1 AND revoked_ms IS NULL",
            )?
            .query_row([hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?)
    }

    async fn live_keys(&self) -> Result<Vec<KeyRow>> {
        Ok(self
            .prepare_cached(
                "SELECT id, name, scopes, created_ms FROM api_keys
                 WHERE revoked_ms IS NULL ORDER BY created_ms, id",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<Vec<_>, _>>()?)
    }

    async fn revoke_key(&self, id: &str, now: i64) -> Result<bool> {
        Ok(self
            .prepare_cached(
                "UPDATE api_keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
            )?
            .execute(params![id, now])?
            == 1)
    }

    async fn config_row(&self) -> Result<(i64, String)> {
        Ok(self
            .prepare_cached("SELECT version, body FROM runtime_config WHERE id = 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?)
    }

    async fn swap_config(&self, expected: i64, body: &str, now: i64) -> Result<bool> {
        Ok(self
            .prepare_cached(
                "UPDATE runtime_config SET version = version + 1, body = ?2, updated_ms = ?3
                 WHERE id = 1 AND version = ?1",
            )?
            .execute(params![expected, body, now])?
            == 1)
    }

    async fn count_active(&self, since_ms: i64) -> Result<i64> {
        Ok(self
            .prepare_cached("SELECT COUNT(*) FROM activity WHERE active_ms >= ?1")?
            .query_row([since_ms], |r| r.get(0))?)
    }
}
