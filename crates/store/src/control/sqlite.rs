//! The control plane's SQL on SQLite, and the channel of runtime config versions of the one
//! process that owns the file (bumped after each change commits).

use super::{ApiKey, ControlTx, KeyRow, WebhookRow};
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
                 WHERE revoked_ms IS NULL ORDER BY created_ms, rowid",
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

    async fn insert_webhook(&self, row: &WebhookRow) -> Result<()> {
        self.prepare_cached(
            "INSERT INTO webhooks (id, url, events, secret, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![row.0, row.1, row.2, row.3, row.4])?;
        Ok(())
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool> {
        Ok(self
            .prepare_cached("DELETE FROM webhooks WHERE id = ?1")?
            .execute([id])?
            == 1)
    }

    async fn webhook_rows(&self) -> Result<Vec<WebhookRow>> {
        Ok(self
            .prepare_cached(
                "SELECT id, url, events, secret, created_ms FROM webhooks ORDER BY created_ms, id",
            )?
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<Vec<_>, _>>()?)
    }

    async fn presence_row(&self, user: &str) -> Result<Option<bool>> {
        Ok(self
            .prepare_cached("SELECT online FROM webhook_presence WHERE user_id = ?1")?
            .query_row([user], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|v| v == 1))
    }

    async fn upsert_presence(&self, user: &str, online: bool, now: i64) -> Result<()> {
        self.prepare_cached(
            "INSERT INTO webhook_presence (user_id, online, changed_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (user_id) DO UPDATE SET online = ?2, changed_ms = ?3",
        )?
        .execute(params![user, i64::from(online), now])?;
        Ok(())
    }

    async fn online_after(&self, after: &str, limit: i64) -> Result<Vec<String>> {
        Ok(self
            .prepare_cached(
                "SELECT user_id FROM webhook_presence WHERE online = 1 AND user_id > ?1
                 ORDER BY user_id LIMIT ?2",
            )?
            .query_map(params![after, limit], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?)
    }
}
