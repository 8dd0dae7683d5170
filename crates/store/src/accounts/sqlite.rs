//! Accounts' SQL on SQLite.

use super::{AccountTx, Credentials, CredentialsRow, TokenRow, UserRow};
use crate::sqlite::Tx;
use crate::{Result, SqliteStore};
use rusqlite::{OptionalExtension, params};

super::impl_account_store!(SqliteStore);

impl AccountTx for Tx<'_> {
    async fn user(&self, id: &str) -> Result<Option<UserRow>> {
        Ok(self
            .prepare_cached("SELECT id, handle FROM users WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    async fn credentials(&self, handle: &str) -> Result<Option<CredentialsRow>> {
        Ok(self
            .prepare_cached("SELECT id, handle, password_hash FROM users WHERE handle = ?1")?
            .query_row([handle], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?)
    }

    async fn insert_user(&self, user: &Credentials, email: Option<&str>, now: i64) -> Result<bool> {
        let (id, handle) = (&user.user.id, &user.user.handle);
        let inserted = self
            .prepare_cached(
                "INSERT INTO users (id, handle, password_hash, email, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )?
            .execute(params![id, handle, user.password_hash, email, now])?;
        Ok(inserted > 0)
    }

    async fn tokens_revoked_ms(&self, user: &str) -> Result<Option<i64>> {
        let at: Option<Option<i64>> = self
            .prepare_cached("SELECT tokens_revoked_ms FROM users WHERE id = ?1")?
            .query_row([user], |r| r.get(0))
            .optional()?;
        Ok(at.flatten())
    }

    async fn prune_refresh(&self, tokens_before: i64, families_before: i64) -> Result<()> {
        self.prepare_cached("DELETE FROM refresh_tokens WHERE expires_ms <= ?1")?
            .execute([tokens_before])?;
        self.prepare_cached("DELETE FROM refresh_families WHERE expires_ms <= ?1")?
            .execute([families_before])?;
        Ok(())
    }

    async fn upsert_family(&self, family: &str, user: &str, expires_ms: i64) -> Result<String> {
        Ok(self
            .prepare_cached(
                "INSERT INTO refresh_families (family, user_id, expires_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (family) DO UPDATE SET expires_ms = MAX(expires_ms, excluded.expires_ms)
                 RETURNING user_id",
            )?
            .query_row(params![family, user, expires_ms], |r| r.get(0))?)
    }

    async fn insert_refresh_token(
        &self,
        token_hash: &str,
        user: &str,
        family: &str,
        expires_ms: i64,
    ) -> Result<()> {
        self.prepare_cached(
            "INSERT INTO refresh_tokens (token_hash, user_id, family, expires_ms)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![token_hash, user, family, expires_ms])?;
        Ok(())
    }

    async fn refresh_token(&self, token_hash: &str) -> Result<Option<TokenRow>> {
        // The single writer already serialises two uses of one token.
        Ok(self
            .prepare_cached(
                "SELECT t.user_id, t.family, t.expires_ms, t.used_ms IS NOT NULL,
                        f.family IS NOT NULL AND f.revoked_ms IS NULL
                 FROM refresh_tokens t LEFT JOIN refresh_families f ON f.family = t.family
                 WHERE t.token_hash = ?1",
            )?
            .query_row([token_hash], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?)
    }

    async fn mark_used(&self, token_hash: &str, now: i64) -> Result<()> {
        self.prepare_cached("UPDATE refresh_tokens SET used_ms = ?2 WHERE token_hash = ?1")?
            .execute(params![token_hash, now])?;
        Ok(())
    }

    async fn revoke_family(&self, family: &str, now: i64) -> Result<()> {
        self.prepare_cached("UPDATE refresh_families SET revoked_ms = ?2 WHERE family = ?1")?
            .execute(params![family, now])?;
        self.prepare_cached("DELETE FROM refresh_tokens WHERE family = ?1")?
            .execute([family])?;
        Ok(())
    }

    async fn raise_tokens_revoked(&self, user: &str, at: i64) -> Result<bool> {
        let updated = self
            .prepare_cached(
                "UPDATE users SET tokens_revoked_ms = MAX(COALESCE(tokens_revoked_ms, 0), ?2)
                 WHERE id = ?1",
            )?
            .execute(params![user, at])?;
        Ok(updated > 0)
    }

    async fn revoke_families_of(&self, user: &str, at: i64) -> Result<()> {
        self.prepare_cached("DELETE FROM refresh_tokens WHERE user_id = ?1")?
            .execute([user])?;
        self.prepare_cached(
            "UPDATE refresh_families SET revoked_ms = ?2 WHERE user_id = ?1 AND revoked_ms IS NULL",
        )?
        .execute(params![user, at])?;
        Ok(())
    }

    async fn mark_erased(&self, user: &str) -> Result<()> {
        self.prepare_cached(
            "UPDATE users SET handle = ?2 || id, password_hash = NULL, email = NULL,
               tokens_revoked_ms = ?3 WHERE id = ?1",
        )?
        .execute(params![user, super::ERASED_HANDLE, i64::MAX])?;
        Ok(())
    }
}
