//! Accounts' SQL on PostgreSQL.

use super::{AccountTx, Credentials, CredentialsRow, TokenRow, UserRow};
use crate::postgres::Tx;
use crate::{PgStore, Result};

super::impl_account_store!(PgStore);

impl AccountTx for Tx<'_> {
    async fn user(&self, id: &str) -> Result<Option<UserRow>> {
        Ok(self
            .opt("SELECT id, handle FROM users WHERE id = $1", &[&id])
            .await?
            .map(|r| (r.get(0), r.get(1))))
    }

    async fn missing_users(&self, ids: &[String]) -> Result<Vec<String>> {
        // One statement for any number (a channel made with 100,000 members).
        Ok(self
            .rows(
                "SELECT u FROM unnest($1::text[]) WITH ORDINALITY AS t(u, n)
                 WHERE NOT EXISTS (SELECT 1 FROM users WHERE id = t.u) ORDER BY n",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn credentials(&self, handle: &str) -> Result<Option<CredentialsRow>> {
        Ok(self
            .opt(
                "SELECT id, handle, password_hash FROM users WHERE handle = $1",
                &[&handle],
            )
            .await?
            .map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    async fn insert_user(&self, user: &Credentials, email: Option<&str>, now: i64) -> Result<bool> {
        let (id, handle) = (&user.user.id, &user.user.handle);
        let inserted = self
            .exec(
                "INSERT INTO users (id, handle, password_hash, email, created_ms)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[id, handle, &user.password_hash, &email, &now],
            )
            .await?;
        Ok(inserted > 0)
    }

    async fn tokens_revoked_ms(&self, user: &str) -> Result<Option<i64>> {
        Ok(self
            .opt(
                "SELECT tokens_revoked_ms FROM users WHERE id = $1",
                &[&user],
            )
            .await?
            .and_then(|r| r.get(0)))
    }

    async fn prune_refresh(&self, tokens_before: i64, families_before: i64) -> Result<()> {
        self.exec(
            "DELETE FROM refresh_tokens WHERE expires_ms <= $1",
            &[&tokens_before],
        )
        .await?;
        self.exec(
            "DELETE FROM refresh_families WHERE expires_ms <= $1",
            &[&families_before],
        )
        .await?;
        Ok(())
    }

    async fn upsert_family(&self, family: &str, user: &str, expires_ms: i64) -> Result<String> {
        Ok(self
            .one(
                "INSERT INTO refresh_families (family, user_id, expires_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (family) DO UPDATE
                   SET expires_ms = GREATEST(refresh_families.expires_ms, excluded.expires_ms)
                 RETURNING user_id",
                &[&family, &user, &expires_ms],
            )
            .await?
            .get(0))
    }

    async fn insert_refresh_token(
        &self,
        token_hash: &str,
        user: &str,
        family: &str,
        expires_ms: i64,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO refresh_tokens (token_hash, user_id, family, expires_ms)
             VALUES ($1, $2, $3, $4)",
            &[&token_hash, &user, &family, &expires_ms],
        )
        .await?;
        Ok(())
    }

    async fn refresh_token(&self, token_hash: &str) -> Result<Option<TokenRow>> {
        Ok(self
            .opt(
                "SELECT t.user_id, t.family, t.expires_ms, t.used_ms IS NOT NULL,
                        f.family IS NOT NULL AND f.revoked_ms IS NULL
                 FROM refresh_tokens t LEFT JOIN refresh_families f ON f.family = t.family
                 WHERE t.token_hash = $1
                 FOR UPDATE OF t",
                &[&token_hash],
            )
            .await?
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))))
    }

    async fn mark_used(&self, token_hash: &str, now: i64) -> Result<()> {
        self.exec(
            "UPDATE refresh_tokens SET used_ms = $2 WHERE token_hash = $1",
            &[&token_hash, &now],
        )
        .await?;
        Ok(())
    }

    async fn revoke_family(&self, family: &str, now: i64) -> Result<()> {
        self.exec(
            "UPDATE refresh_families SET revoked_ms = $2 WHERE family = $1",
            &[&family, &now],
        )
        .await?;
        self.exec("DELETE FROM refresh_tokens WHERE family = $1", &[&family])
            .await?;
        Ok(())
    }

    async fn raise_tokens_revoked(&self, user: &str, at: i64) -> Result<bool> {
        let updated = self
            .exec(
                "UPDATE users SET tokens_revoked_ms = GREATEST(COALESCE(tokens_revoked_ms, 0), $2)
                 WHERE id = $1",
                &[&user, &at],
            )
            .await?;
        Ok(updated > 0)
    }

    async fn revoke_families_of(&self, user: &str, at: i64) -> Result<()> {
        self.exec("DELETE FROM refresh_tokens WHERE user_id = $1", &[&user])
            .await?;
        self.exec(
            "UPDATE refresh_families SET revoked_ms = $2
             WHERE user_id = $1 AND revoked_ms IS NULL",
            &[&user, &at],
        )
        .await?;
        Ok(())
    }

    async fn mark_erased(&self, user: &str) -> Result<()> {
        self.exec(
            "UPDATE users SET handle = $2 || id, password_hash = NULL, email = NULL,
               tokens_revoked_ms = $3 WHERE id = $1",
            &[&user, &super::ERASED_HANDLE, &i64::MAX],
        )
        .await?;
        Ok(())
    }
}
