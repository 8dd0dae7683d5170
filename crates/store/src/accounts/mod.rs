//! Accounts: users and their credentials, refresh tokens in families (a used token that comes
//! back revokes its family), and per-user revocation; the rules of each, written once.
//!
//! A family is the chain of refresh tokens started by one login or signup: each refresh uses
//! up one token and issues the next in the same family. A used token is kept (marked used)
//! until it expires, so its second use is recognised. A family's row outlives its tokens by
//! [`FAMILY_GRACE_MS`], so a refresh racing a revocation still finds the family revoked.

#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

use crate::{Result, StoreError, valid_handle};
use async_trait::async_trait;
use hubbub_protocol::UserRef;

/// A user with the secret needed to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub user: UserRef,
    /// The argon2id hash, if the user has a password.
    pub password_hash: Option<String>,
}

/// What [`AccountStore::take_refresh_token`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was valid; it is used now. Issue the next one in the same family.
    Valid {
        /// The token's user.
        user: String,
        /// The token's family.
        family: String,
    },
    /// A used token came back: someone holds a copy. The whole family (every token issued
    /// from it too) is revoked now.
    Reused {
        /// The token's user.
        user: String,
        /// The family, now revoked.
        family: String,
    },
    /// Unknown, expired, or of a revoked family.
    Invalid,
}

/// Users, credentials, refresh tokens.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Create a user with a password hash. A taken handle is `Conflict`.
    async fn create_user(
        &self,
        handle: &str,
        password_hash: &str,
        email: Option<&str>,
    ) -> Result<UserRef>;

    /// The user with this exact id, creating it if missing (app tokens). The handle is
    /// `handle_hint` when valid and free, else generated.
    async fn ensure_user(&self, id: &str, handle_hint: Option<&str>) -> Result<UserRef>;

    /// A user and their password hash, by handle.
    async fn credentials(&self, handle: &str) -> Result<Option<Credentials>>;

    /// A user by id.
    async fn user(&self, id: &str) -> Result<Option<UserRef>>;

    /// A user by handle.
    async fn user_by_handle(&self, handle: &str) -> Result<Option<UserRef>>;

    /// Remember a refresh token (by its hash) of `family` until `expires_ms`. A login starts a
    /// family (a fresh random id); a refresh puts its new token in the family of the token it
    /// used. A token put in a family that was revoked meanwhile (a reuse was detected, or the
    /// user's tokens were revoked, while this refresh was under way) is stored but never valid.
    async fn put_refresh_token(
        &self,
        token_hash: &str,
        user: &str,
        family: &str,
        expires_ms: i64,
    ) -> Result<()>;

    /// Use up a refresh token. A valid token is marked used (and kept until it expires, so a
    /// second use is recognised); a used token that comes back revokes its whole family.
    async fn take_refresh_token(&self, token_hash: &str) -> Result<RefreshOutcome>;

    /// Revoke everything issued to `user` until `now_ms`: every refresh token of the user is
    /// deleted (their families revoked, so a refresh under way cannot issue a live one), and
    /// the user's `tokens_revoked_ms` becomes `now_ms` (never earlier than it was). An unknown
    /// user is `NotFound`.
    async fn revoke_tokens(&self, user: &str, now_ms: i64) -> Result<()>;

    /// When `user`'s tokens were last revoked (ms since the epoch); 0 when never (or for an
    /// unknown user). Access tokens issued before it are refused by the edge.
    async fn tokens_revoked_ms(&self, user: &str) -> Result<i64>;
}

/// How long a family's row outlives its last token: a refresh racing that token's expiry
/// still finds the family (and whether it was revoked) when it puts the next token.
pub(crate) const FAMILY_GRACE_MS: i64 = 3_600_000;

/// A user's columns: id, handle.
pub(crate) type UserRow = (String, String);

/// A user's columns with the secret: id, handle, password_hash.
pub(crate) type CredentialsRow = (String, String, Option<String>);

/// A refresh token's columns, with its family's state: user, family, expires_ms, whether it
/// was used, whether its family's row exists and is not revoked.
pub(crate) type TokenRow = (String, String, i64, bool, bool);

fn user_from_row((id, handle): UserRow) -> UserRef {
    UserRef { id, handle }
}

fn credentials_from_row((id, handle, password_hash): CredentialsRow) -> Credentials {
    Credentials {
        user: user_from_row((id, handle)),
        password_hash,
    }
}

/// What the account rules need of a transaction; each backend implements it with its SQL.
pub(crate) trait AccountTx {
    async fn user(&self, id: &str) -> Result<Option<UserRow>>;
    /// Which of `ids` name no user, in the order given.
    async fn missing_users(&self, ids: &[String]) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for id in ids {
            if self.user(id).await?.is_none() {
                missing.push(id.clone());
            }
        }
        Ok(missing)
    }
    async fn credentials(&self, handle: &str) -> Result<Option<CredentialsRow>>;
    /// Insert a user unless its id or its handle is taken; whether it was inserted.
    async fn insert_user(&self, user: &Credentials, email: Option<&str>, now: i64) -> Result<bool>;
    /// The user's `tokens_revoked_ms` (`None` when never, or for an unknown user).
    async fn tokens_revoked_ms(&self, user: &str) -> Result<Option<i64>>;
    /// Forget tokens that expired before `tokens_before`, and families before
    /// `families_before`.
    async fn prune_refresh(&self, tokens_before: i64, families_before: i64) -> Result<()>;
    /// Create the family, or move its expiry later (a revoked family stays revoked); its
    /// owner.
    async fn upsert_family(&self, family: &str, user: &str, expires_ms: i64) -> Result<String>;
    async fn insert_refresh_token(
        &self,
        token_hash: &str,
        user: &str,
        family: &str,
        expires_ms: i64,
    ) -> Result<()>;
    /// The token's row, locked until the commit where the backend has row locks: two uses of
    /// one token at once are one use, then a reuse, never two valid uses.
    async fn refresh_token(&self, token_hash: &str) -> Result<Option<TokenRow>>;
    async fn mark_used(&self, token_hash: &str, now: i64) -> Result<()>;
    /// Mark the family revoked and delete its tokens.
    async fn revoke_family(&self, family: &str, now: i64) -> Result<()>;
    /// Raise the user's `tokens_revoked_ms` to `at`; whether the user exists.
    async fn raise_tokens_revoked(&self, user: &str, at: i64) -> Result<bool>;
    /// Delete every refresh token of the user and mark their live families revoked.
    async fn revoke_families_of(&self, user: &str, at: i64) -> Result<()>;
    /// Make the user's row an erased account's: the handle [`ERASED_HANDLE`] and the id, no
    /// password or email, every token refused (`tokens_revoked_ms` the largest time).
    async fn mark_erased(&self, user: &str) -> Result<()>;
}

/// What an erased account's handle starts with (`DELETE /v1/server/users/{id}`, see
/// [`crate::erasure`]): its row stays so the id is never given again and every token of it is
/// refused, but no read finds it. No valid handle starts with `!`.
pub(crate) const ERASED_HANDLE: &str = "!erased:";

/// Whether a row's handle is an erased account's.
pub(crate) fn is_erased(handle: &str) -> bool {
    handle.starts_with(ERASED_HANDLE)
}

pub(crate) async fn user(tx: &impl AccountTx, id: &str) -> Result<Option<UserRef>> {
    Ok(tx
        .user(id)
        .await?
        .filter(|(_, handle)| !is_erased(handle))
        .map(user_from_row))
}

pub(crate) async fn credentials(tx: &impl AccountTx, handle: &str) -> Result<Option<Credentials>> {
    Ok(tx
        .credentials(handle)
        .await?
        .filter(|(_, handle, _)| !is_erased(handle))
        .map(credentials_from_row))
}

pub(crate) async fn user_exists(tx: &impl AccountTx, id: &str) -> Result<bool> {
    Ok(tx.user(id).await?.is_some())
}

pub(crate) async fn create_user(
    tx: &impl AccountTx,
    id: String,
    handle: &str,
    password_hash: &str,
    email: Option<&str>,
    now: i64,
) -> Result<UserRef> {
    let new = Credentials {
        user: UserRef {
            id,
            handle: handle.to_owned(),
        },
        password_hash: Some(password_hash.to_owned()),
    };
    if !tx.insert_user(&new, email, now).await? {
        return Err(StoreError::Conflict(format!("handle {handle} is taken")));
    }
    Ok(new.user)
}

/// `ensure_user` in a transaction: `fallback` is the generated handle.
pub(crate) async fn ensure_user(
    tx: &impl AccountTx,
    id: &str,
    hint: Option<&str>,
    fallback: &str,
    now: i64,
) -> Result<UserRef> {
    // Another request may have created it meanwhile: this transaction decides.
    match tx.user(id).await? {
        Some((_, handle)) if is_erased(&handle) => {
            return Err(StoreError::Conflict(format!(
                "user {id} was erased; its id is not given again"
            )));
        }
        Some(row) => return Ok(user_from_row(row)),
        None => {}
    }
    let handle = match hint {
        Some(h) if valid_handle(h) && tx.credentials(h).await?.is_none() => h,
        _ => fallback,
    };
    // The hint may be taken by a concurrent writer (where there are several) between the
    // check and the insert; then the generated handle.
    for h in [handle, fallback] {
        let new = Credentials {
            user: UserRef {
                id: id.to_owned(),
                handle: h.to_owned(),
            },
            password_hash: None,
        };
        if tx.insert_user(&new, None, now).await? {
            return Ok(new.user);
        }
        if let Some(u) = user(tx, id).await? {
            return Ok(u);
        }
    }
    Err(StoreError::Internal(format!("user {id} not created")))
}

pub(crate) async fn put_refresh_token(
    tx: &impl AccountTx,
    token_hash: &str,
    user: &str,
    family: &str,
    expires_ms: i64,
    now: i64,
) -> Result<()> {
    tx.prune_refresh(now, now.saturating_sub(FAMILY_GRACE_MS))
        .await?;
    // A family revoked meanwhile stays revoked: only its expiry moves.
    if tx.upsert_family(family, user, expires_ms).await? != user {
        return Err(StoreError::Conflict(format!(
            "refresh token family {family} belongs to another user"
        )));
    }
    tx.insert_refresh_token(token_hash, user, family, expires_ms)
        .await
}

/// Expired, or of a revoked (or vanished) family: invalid. Used already: reused, unless it
/// expired (a used token is kept only until its expiry). Else valid.
pub(crate) async fn take_refresh_token(
    tx: &impl AccountTx,
    token_hash: &str,
    now: i64,
) -> Result<RefreshOutcome> {
    let Some((user, family, expires_ms, used, family_live)) = tx.refresh_token(token_hash).await?
    else {
        return Ok(RefreshOutcome::Invalid);
    };
    if expires_ms <= now || !family_live {
        Ok(RefreshOutcome::Invalid)
    } else if used {
        tx.revoke_family(&family, now).await?;
        Ok(RefreshOutcome::Reused { user, family })
    } else {
        tx.mark_used(token_hash, now).await?;
        Ok(RefreshOutcome::Valid { user, family })
    }
}

pub(crate) async fn revoke_tokens(tx: &impl AccountTx, user: &str, at: i64) -> Result<()> {
    if !tx.raise_tokens_revoked(user, at).await? {
        return Err(StoreError::NotFound(format!("no user {user}")));
    }
    tx.revoke_families_of(user, at).await
}

pub(crate) async fn tokens_revoked_ms(tx: &impl AccountTx, user: &str) -> Result<i64> {
    Ok(tx.tokens_revoked_ms(user).await?.unwrap_or(0))
}

pub(crate) async fn user_by_handle(tx: &impl AccountTx, handle: &str) -> Result<Option<UserRef>> {
    Ok(credentials(tx, handle).await?.map(|c| c.user))
}

/// [`AccountStore`] for a backend: each method runs its rule in one of the backend's
/// transactions (see the crate's "How a use case runs").
macro_rules! impl_account_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::accounts::AccountStore for $store {
            async fn create_user(
                &self,
                handle: &str,
                password_hash: &str,
                email: Option<&str>,
            ) -> Result<hubbub_protocol::UserRef, $crate::StoreError> {
                let id = $crate::new_id("u")?;
                let (handle, hash) = (handle.to_owned(), password_hash.to_owned());
                let (email, now) = (email.map(str::to_owned), self.now());
                $crate::run!(self.write, |tx| {
                    $crate::accounts::create_user(tx, id, &handle, &hash, email.as_deref(), now)
                })
            }

            async fn ensure_user(
                &self,
                id: &str,
                handle_hint: Option<&str>,
            ) -> Result<hubbub_protocol::UserRef, $crate::StoreError> {
                // Most calls find the user: a read, not a write.
                if let Some(u) = $crate::accounts::AccountStore::user(self, id).await? {
                    return Ok(u);
                }
                let (id, hint) = (id.to_owned(), handle_hint.map(str::to_owned));
                let (fallback, now) = ($crate::new_id("user_")?, self.now());
                $crate::run!(self.write, |tx| {
                    $crate::accounts::ensure_user(tx, &id, hint.as_deref(), &fallback, now)
                })
            }

            async fn credentials(
                &self,
                handle: &str,
            ) -> Result<Option<$crate::Credentials>, $crate::StoreError> {
                let handle = handle.to_owned();
                $crate::run!(self.read, |tx| $crate::accounts::credentials(tx, &handle))
            }

            async fn user(
                &self,
                id: &str,
            ) -> Result<Option<hubbub_protocol::UserRef>, $crate::StoreError> {
                let id = id.to_owned();
                $crate::run!(self.read, |tx| $crate::accounts::user(tx, &id))
            }

            async fn user_by_handle(
                &self,
                handle: &str,
            ) -> Result<Option<hubbub_protocol::UserRef>, $crate::StoreError> {
                let handle = handle.to_owned();
                $crate::run!(self.read, |tx| $crate::accounts::user_by_handle(
                    tx, &handle
                ))
            }

            async fn put_refresh_token(
                &self,
                token_hash: &str,
                user: &str,
                family: &str,
                expires_ms: i64,
            ) -> Result<(), $crate::StoreError> {
                let (hash, user) = (token_hash.to_owned(), user.to_owned());
                let (family, now) = (family.to_owned(), self.now());
                $crate::run!(self.write, |tx| {
                    $crate::accounts::put_refresh_token(tx, &hash, &user, &family, expires_ms, now)
                })
            }

            async fn take_refresh_token(
                &self,
                token_hash: &str,
            ) -> Result<$crate::RefreshOutcome, $crate::StoreError> {
                let (hash, now) = (token_hash.to_owned(), self.now());
                $crate::run!(self.write, |tx| {
                    $crate::accounts::take_refresh_token(tx, &hash, now)
                })
            }

            async fn revoke_tokens(
                &self,
                user: &str,
                now_ms: i64,
            ) -> Result<(), $crate::StoreError> {
                let user = user.to_owned();
                $crate::run!(self.write, |tx| $crate::accounts::revoke_tokens(
                    tx, &user, now_ms
                ))
            }

            async fn tokens_revoked_ms(&self, user: &str) -> Result<i64, $crate::StoreError> {
                let user = user.to_owned();
                $crate::run!(self.read, |tx| $crate::accounts::tokens_revoked_ms(
                    tx, &user
                ))
            }
        }
    };
}
pub(crate) use impl_account_store;
