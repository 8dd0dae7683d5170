//! Authentication: passwords (argon2id), access tokens (JWT, HS256, with a key id so signing
//! keys can rotate), single-use refresh tokens (stored as SHA-256 hashes, in families: a
//! used token that comes back revokes every token of its family), and app tokens
//! signed by the app's own backend (bring your own auth).
//!
//! Signing keys live in `<data-dir>/keys.json` (mode 0600), created on first start. Rotating
//! adds a key and makes it current; older keys keep verifying tokens until they expire.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use hubbub_protocol::UserRef;
use hubbub_store::{RefreshOutcome, Store, StoreError};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const ISSUER: &str = "hubbub";

/// Auth settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Access token lifetime, seconds (900).
    pub access_ttl_s: u64,
    /// Refresh token lifetime, seconds (30 days).
    pub refresh_ttl_s: u64,
    /// HS256 secret of the app's own backend, for app tokens.
    pub app_hmac_secret: Option<String>,
    /// PEM public key (RS256 or ES256) of the app's own backend, for app tokens.
    pub app_public_key: Option<String>,
    /// When set, app tokens must carry this `aud` claim; when unset, app tokens with an
    /// `aud` claim are refused.
    pub app_audience: Option<String>,
    /// How long a session may outlive its token's expiry without an `auth` frame before it
    /// is closed with 4001, seconds (60, as PROTOCOL.md 1.1 says).
    pub expiry_grace_s: u64,
    /// Login and signup attempts a minute from one IP address (60), then `429`.
    pub attempts_per_ip_per_minute: u32,
    /// Burst of attempts from one IP address (20).
    pub attempts_per_ip_burst: u32,
    /// Login attempts a minute for one handle (10), then `429`.
    pub attempts_per_handle_per_minute: u32,
    /// Burst of login attempts for one handle (10).
    pub attempts_per_handle_burst: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            access_ttl_s: 900,
            refresh_ttl_s: 30 * 24 * 3600,
            app_hmac_secret: None,
            app_public_key: None,
            app_audience: None,
            expiry_grace_s: 60,
            attempts_per_ip_per_minute: 60,
            attempts_per_ip_burst: 20,
            attempts_per_handle_per_minute: 10,
            attempts_per_handle_burst: 10,
        }
    }
}

/// Why authentication failed or could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Missing, bad or expired credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Invalid input (handle, password).
    #[error("{0}")]
    BadRequest(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The settings cannot be used safely (the server refuses to start).
    #[error("{0}")]
    Config(String),
    /// The key file could not be read or written.
    #[error("key file {path}: {reason}")]
    Keys {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyFile {
    current: String,
    keys: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    handle: Option<String>,
    exp: u64,
    #[serde(default)]
    iat: u64,
    /// Issue time in milliseconds (ours only): revocation compares it with the user's
    /// revocation time, so a token issued right after a revocation is not caught by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
}

/// Tokens issued to a user.
#[derive(Debug, Clone)]
pub struct Issued {
    /// JWT access token.
    pub access_token: String,
    /// Refresh token (only its hash is stored).
    pub refresh_token: String,
    /// Access token lifetime in seconds.
    pub expires_in: u64,
}

fn random_hex(bytes: usize) -> Result<String, AuthError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| AuthError::Keys {
        path: "random".into(),
        reason: e.to_string(),
    })?;
    Ok(hex::encode(buf))
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Now, milliseconds since the epoch (the one clock, as an unsigned number).
fn now_ms() -> u64 {
    u64::try_from(hubbub_queue::clock::now_ms()).unwrap_or(0)
}

/// Load the key file, creating it with one fresh key if missing.
fn load_or_create_keys(path: &Path) -> Result<KeyFile, AuthError> {
    let err = |reason: String| AuthError::Keys {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let keys: KeyFile = serde_json::from_str(&text)
                .map_err(|e| err(format!("not a hubbub key file: {e}")))?;
            if !keys.keys.contains_key(&keys.current) {
                return Err(err(format!(
                    "current key {:?} is not in the file",
                    keys.current
                )));
            }
            Ok(keys)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kid = format!("k{}", &random_hex(4)?);
            let keys = KeyFile {
                current: kid.clone(),
                keys: BTreeMap::from([(kid, random_hex(32)?)]),
            };
            write_keys(path, &keys)?;
            Ok(keys)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

fn write_keys(path: &Path, keys: &KeyFile) -> Result<(), AuthError> {
    let err = |reason: String| AuthError::Keys {
        path: path.display().to_string(),
        reason,
    };
    let text = serde_json::to_string_pretty(keys).map_err(|e| err(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(|e| err(e.to_string()))?;
        f.write_all(text.as_bytes())
            .map_err(|e| err(e.to_string()))?;
        f.sync_all().map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

/// Add a new signing key to the key file and make it current; returns its id.
pub fn rotate_keys(path: &Path) -> Result<String, AuthError> {
    let mut keys = load_or_create_keys(path)?;
    let kid = format!("k{}", &random_hex(4)?);
    keys.keys.insert(kid.clone(), random_hex(32)?);
    keys.current = kid.clone();
    write_keys(path, &keys)?;
    Ok(kid)
}

/// Whether an app token's `sub` is 1–64 characters of `[A-Za-z0-9_.-]`.
pub(crate) fn valid_app_sub(sub: &str) -> bool {
    (1..=64).contains(&sub.len())
        && sub
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

enum AppKey {
    Hmac(DecodingKey),
    Public(DecodingKey, Algorithm),
}

/// The shortest HMAC secret accepted for app tokens: a shorter key can be guessed or brute
/// forced, and whoever has it can sign in as any user.
pub const MIN_APP_SECRET_BYTES: usize = 32;

/// What a token says, once its signature and claims are checked (no store read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The user id (`sub`).
    pub sub: String,
    /// The handle claim, if any.
    pub handle: Option<String>,
    /// Expiry, seconds since the epoch.
    pub exp_s: u64,
    /// Issue time, milliseconds since the epoch (0 when the token has none; an app token's
    /// `iat` in seconds counts as the end of that second).
    pub iat_ms: u64,
    /// Whether the app's backend signed it (an app token) rather than this server.
    pub app: bool,
}

/// An authenticated user and what bounds the session.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The user.
    pub user: UserRef,
    /// When the token expires, ms since the epoch.
    pub expires_ms: i64,
}

/// Issues and checks credentials.
pub struct Auth {
    store: Arc<dyn Store>,
    config: AuthConfig,
    current: (String, EncodingKey),
    verify: BTreeMap<String, DecodingKey>,
    app: Option<AppKey>,
    /// A real argon2 hash, checked against when a handle does not exist or has no password,
    /// so those take as long as a wrong password.
    dummy_hash: String,
    /// Argon2 runs on at most this many threads at once: each run takes 19 MiB and a core
    /// for tens of milliseconds, so unbounded logins would exhaust memory and starve the rest.
    hashing: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("kid", &self.current.0)
            .finish()
    }
}

/// Check the auth settings: refuse what would make tokens forgeable.
pub fn check_config(config: &AuthConfig) -> Result<(), AuthError> {
    if let Some(secret) = &config.app_hmac_secret
        && secret.len() < MIN_APP_SECRET_BYTES
    {
        return Err(AuthError::Config(format!(
            "auth.app_hmac_secret is {} bytes; it must be at least {MIN_APP_SECRET_BYTES}: \
             a short HMAC key can be guessed, and whoever has it can sign tokens for any user",
            secret.len()
        )));
    }
    if config.app_audience.as_deref() == Some("") {
        return Err(AuthError::Config(
            "auth.app_audience is empty: leave it unset, or name the audience app tokens carry"
                .into(),
        ));
    }
    Ok(())
}

impl Auth {
    /// Auth with keys from `key_file` (created if missing).
    pub fn new(
        store: Arc<dyn Store>,
        config: AuthConfig,
        key_file: &Path,
    ) -> Result<Self, AuthError> {
        check_config(&config)?;
        let keys = load_or_create_keys(key_file)?;
        let secret = keys.keys.get(&keys.current).cloned().unwrap_or_default();
        let verify = keys
            .keys
            .iter()
            .map(|(kid, s)| (kid.clone(), DecodingKey::from_secret(s.as_bytes())))
            .collect();
        let app = match (&config.app_hmac_secret, &config.app_public_key) {
            (Some(secret), _) => Some(AppKey::Hmac(DecodingKey::from_secret(secret.as_bytes()))),
            (None, Some(pem)) => {
                let bad = |e: jsonwebtoken::errors::Error| AuthError::Keys {
                    path: "auth.app_public_key".into(),
                    reason: e.to_string(),
                };
                Some(match DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    Ok(k) => AppKey::Public(k, Algorithm::RS256),
                    Err(_) => AppKey::Public(
                        DecodingKey::from_ec_pem(pem.as_bytes()).map_err(bad)?,
                        Algorithm::ES256,
                    ),
                })
            }
            (None, None) => None,
        };
        let dummy_hash = hash_password("not a real password")?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Auth {
            store,
            current: (
                keys.current.clone(),
                EncodingKey::from_secret(secret.as_bytes()),
            ),
            verify,
            app,
            config,
            dummy_hash,
            hashing: tokio::sync::Semaphore::new(cores),
        })
    }

    /// Issue an access token and a refresh token for a user. The refresh token continues
    /// `family` (a refresh passes on the family of the token it used), or starts a new one
    /// (a login or signup: `None`).
    pub async fn issue(&self, user: &UserRef, family: Option<&str>) -> Result<Issued, AuthError> {
        let now_ms = now_ms();
        let now = now_ms / 1000;
        let claims = Claims {
            sub: user.id.clone(),
            handle: Some(user.handle.clone()),
            exp: now + self.config.access_ttl_s,
            iat: now,
            iat_ms: Some(now_ms),
            iss: Some(ISSUER.into()),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.current.0.clone());
        let access_token =
            jsonwebtoken::encode(&header, &claims, &self.current.1).map_err(|e| {
                AuthError::Keys {
                    path: "jwt".into(),
                    reason: e.to_string(),
                }
            })?;
        let refresh_token = random_hex(32)?;
        let family = match family {
            Some(f) => f.to_owned(),
            None => random_hex(16)?,
        };
        let expires_ms = ((now + self.config.refresh_ttl_s) * 1000) as i64;
        self.store
            .put_refresh_token(&sha256_hex(&refresh_token), &user.id, &family, expires_ms)
            .await?;
        Ok(Issued {
            access_token,
            refresh_token,
            expires_in: self.config.access_ttl_s,
        })
    }

    /// Run an argon2 job on the blocking pool, at most one per core at a time.
    async fn argon2<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let _permit = self.hashing.acquire().await.map_err(|e| AuthError::Keys {
            path: "hash permits".into(),
            reason: e.to_string(),
        })?;
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| AuthError::Keys {
                path: "hash task".into(),
                reason: e.to_string(),
            })
    }

    /// Sign up: validate, hash, create.
    pub async fn signup(
        &self,
        handle: &str,
        password: &str,
        email: Option<&str>,
    ) -> Result<UserRef, AuthError> {
        if !hubbub_store::valid_handle(handle) {
            return Err(AuthError::BadRequest(
                "handle must be 3-32 characters of [a-z0-9_]".into(),
            ));
        }
        if password.chars().count() < 8 || password.len() > 1024 {
            return Err(AuthError::BadRequest(
                "password must be 8 to 1024 characters".into(),
            ));
        }
        if let Some(email) = email
            && (email.len() > 254 || !email.contains('@'))
        {
            return Err(AuthError::BadRequest("email is not valid".into()));
        }
        let password = password.to_owned();
        let hash = self.argon2(move || hash_password(&password)).await??;
        Ok(self.store.create_user(handle, &hash, email).await?)
    }

    /// Log in: the same `Unauthorized`, after the same work, whether the handle exists,
    /// has no password (a user created by an app token), or the password is wrong.
    pub async fn login(&self, handle: &str, password: &str) -> Result<UserRef, AuthError> {
        if password.len() > 1024 {
            return Err(AuthError::Unauthorized("wrong handle or password".into()));
        }
        let creds = self.store.credentials(handle).await?;
        // Only a stored hash can ever succeed; the dummy hash is checked for timing alone.
        let (user, hash) = match creds {
            Some(c) => match c.password_hash {
                Some(h) => (Some(c.user), h),
                None => (None, self.dummy_hash.clone()),
            },
            None => (None, self.dummy_hash.clone()),
        };
        let password = password.to_owned();
        let ok = self
            .argon2(move || verify_password(&password, &hash))
            .await?;
        match user {
            Some(u) if ok => Ok(u),
            _ => Err(AuthError::Unauthorized("wrong handle or password".into())),
        }
    }

    /// Revoke every token of `user` issued until now: refresh tokens are deleted, access
    /// tokens issued before now are refused. (Closing the user's open sessions is the edge's.)
    pub async fn revoke(&self, user: &str) -> Result<(), AuthError> {
        let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        Ok(self.store.revoke_tokens(user, now).await?)
    }

    /// Use up a refresh token: its user and family, if it was valid. A used token coming
    /// back revokes its whole family (the store does it) and is refused like any bad token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<(UserRef, String), AuthError> {
        let bad = || AuthError::Unauthorized("refresh token is used, expired or unknown".into());
        let (user, family) = match self
            .store
            .take_refresh_token(&sha256_hex(refresh_token))
            .await?
        {
            RefreshOutcome::Valid { user, family } => (user, family),
            RefreshOutcome::Reused { user, family } => {
                tracing::warn!(%user, %family, "a used refresh token came back: its family is revoked");
                return Err(bad());
            }
            RefreshOutcome::Invalid => return Err(bad()),
        };
        Ok((self.store.user(&user).await?.ok_or_else(bad)?, family))
    }

    /// Check a token's signature and claims (ours, or an app token when an app key is
    /// configured). Pure: reads nothing, so it is also the fuzz target of the token path.
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let bad = |why: &str| AuthError::Unauthorized(format!("invalid token: {why}"));
        if token.len() > 8192 {
            return Err(bad("too long"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("not a JWT"))?;
        if let Some(key) = header.kid.as_deref().and_then(|kid| self.verify.get(kid)) {
            let mut v = Validation::new(Algorithm::HS256);
            v.set_issuer(&[ISSUER]);
            if let Ok(data) = jsonwebtoken::decode::<Claims>(token, key, &v) {
                let c = data.claims;
                return Ok(Verified {
                    sub: c.sub,
                    handle: c.handle,
                    exp_s: c.exp,
                    iat_ms: c.iat_ms.unwrap_or(c.iat.saturating_mul(1000)),
                    app: false,
                });
            }
        }
        let Some(app) = &self.app else {
            return Err(bad("bad signature or expired"));
        };
        let (key, alg) = match app {
            AppKey::Hmac(k) => (k, Algorithm::HS256),
            AppKey::Public(k, alg) => (k, *alg),
        };
        let mut v = Validation::new(alg);
        match &self.config.app_audience {
            Some(aud) => {
                v.set_required_spec_claims(&["exp", "sub", "aud"]);
                v.set_audience(&[aud]);
            }
            None => v.set_required_spec_claims(&["exp", "sub"]),
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| bad(&e.to_string()))?;
        let c = data.claims;
        if !valid_app_sub(&c.sub) {
            return Err(bad("sub must be 1-64 characters of [A-Za-z0-9_.-]"));
        }
        Ok(Verified {
            sub: c.sub,
            handle: c.handle,
            exp_s: c.exp,
            iat_ms: match c.iat {
                0 => 0,
                s => s.saturating_mul(1000).saturating_add(999),
            },
            app: true,
        })
    }

    /// Check an access token (ours, or an app token when an app key is configured) and
    /// find its user (an app token's user is created on first use). A token issued before
    /// the user's tokens were revoked is refused.
    pub async fn authenticate(&self, token: &str) -> Result<Authenticated, AuthError> {
        let v = self.verify(token)?;
        let revoked_ms = self.store.tokens_revoked_ms(&v.sub).await?;
        if revoked_ms > 0 && (v.iat_ms as i64) < revoked_ms {
            return Err(AuthError::Unauthorized("invalid token: revoked".into()));
        }
        let user =
            if v.app {
                self.store.ensure_user(&v.sub, v.handle.as_deref()).await?
            } else {
                match v.handle {
                    Some(handle) => UserRef { id: v.sub, handle },
                    None => self.store.user(&v.sub).await?.ok_or_else(|| {
                        AuthError::Unauthorized("invalid token: unknown user".into())
                    })?,
                }
            };
        Ok(Authenticated {
            user,
            expires_ms: i64::try_from(v.exp_s.saturating_mul(1000)).unwrap_or(i64::MAX),
        })
    }
}

fn hash_password(password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| AuthError::Keys {
        path: "random".into(),
        reason: e.to_string(),
    })?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Keys {
        path: "salt".into(),
        reason: e.to_string(),
    })?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Keys {
            path: "argon2".into(),
            reason: e.to_string(),
        })
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn key_file_is_created_rotated_and_checked() {
        let dir = std::env::temp_dir().join(format!("hubbub-keys-{}", random_hex(4).expect("r")));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("keys.json");
        let first = load_or_create_keys(&path).expect("create");
        assert_eq!(
            load_or_create_keys(&path).expect("reload").current,
            first.current
        );
        let kid = rotate_keys(&path).expect("rotate");
        let after = load_or_create_keys(&path).expect("reload");
        assert_eq!(
            (after.current.as_str(), after.keys.len()),
            (kid.as_str(), 2)
        );
        std::fs::write(&path, "garbage").expect("write");
        let e = load_or_create_keys(&path).expect_err("garbage");
        assert!(e.to_string().contains("keys.json"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn app_subs() {
        assert!(valid_app_sub("user-42.a_b"));
        assert!(!valid_app_sub(""));
        assert!(!valid_app_sub("a b"));
        assert!(!valid_app_sub(&"x".repeat(65)));
    }
}
