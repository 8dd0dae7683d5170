//! The `token` target: `Auth::verify` on our access tokens and app tokens.

use super::*;

pub(super) const KID: &str = "kfuzz";
pub(super) const APP_SECRET: &str = "fuzz-app-secret-0123456789abcdef-0123456789";
pub(super) const APP_AUDIENCE: &str = "fuzz-app";
/// 2100-01-01: far enough for every generated "valid" token, and the same every run.
pub(super) const FAR_EXP: u64 = 4_102_444_800;

pub(super) struct TokenTarget {
    pub(super) auth: Auth,
    our_secret: String,
    _dir: TempDir,
    // Keeps the store's writer alive while `auth` holds the store.
    _runtime: tokio::runtime::Runtime,
}

/// A directory under the system's temporary directory, removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("hubbub-fuzz-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TokenTarget {
    pub(super) fn new(seed: u64) -> anyhow::Result<Self> {
        let dir = TempDir::new("token")?;
        // Our signing key, from the seed, so a run's tokens are the same every time.
        let mut rng = Rng::with_seed(seed);
        let our_secret: String = (0..64).map(|_| rng.digit(16)).collect();
        let key_file = dir.0.join("keys.json");
        let keys = serde_json::json!({"current": KID, "keys": {KID: our_secret}});
        std::fs::write(&key_file, keys.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let store: Arc<dyn hubbub_store::Store> = runtime.block_on(async {
            let queue = hubbub_queue::EmbeddedQueue::open(
                dir.0.join("hubbub.db"),
                hubbub_queue::EmbeddedConfig::default(),
            )?;
            anyhow::Ok(Arc::new(hubbub_store::SqliteStore::open(queue).await?))
        })?;
        let config = AuthConfig {
            app_hmac_secret: Some(APP_SECRET.into()),
            app_audience: Some(APP_AUDIENCE.into()),
            ..AuthConfig::default()
        };
        let auth = Auth::new(store, config, &key_file)?;
        Ok(TokenTarget {
            auth,
            our_secret,
            _dir: dir,
            _runtime: runtime,
        })
    }

    fn json_str(s: &str) -> String {
        serde_json::to_string(s).unwrap_or_default()
    }

    /// A time claim: valid, expired, or not a u64 at all.
    fn time_literal(rng: &mut Rng) -> String {
        match rng.u8(0..6) {
            0..=2 => FAR_EXP.to_string(),
            3 => any_u64(rng).to_string(),
            4 => odd_number(rng).to_string(),
            _ => pick(rng, &["null", "\"4102444800\"", "[]", "{}", "true", "-1"]).to_string(),
        }
    }

    fn header(&self, rng: &mut Rng, alg: &str) -> String {
        let mut fields = vec![format!("\"alg\":{alg}")];
        if rng.u8(0..4) != 0 {
            fields.push("\"typ\":\"JWT\"".into());
        }
        match rng.u8(0..6) {
            0..=2 => fields.push(format!("\"kid\":\"{KID}\"")),
            3 => fields.push(format!("\"kid\":{}", Self::json_str(&any_string(rng)))),
            4 => fields.push(format!("\"kid\":{}", any_json(rng, 2))),
            _ => {}
        }
        if rng.u8(0..8) == 0 {
            let name = pick(
                rng,
                &["crit", "jku", "jwk", "x5u", "x5c", "cty", "b64", "enc"],
            );
            fields.push(format!("\"{name}\":{}", any_json(rng, 3)));
        }
        if rng.u8(0..16) == 0 {
            fields.push(format!("\"n\":{}", deep_json(rng)));
        }
        rng.shuffle(&mut fields);
        format!("{{{}}}", fields.join(","))
    }

    fn claims(&self, rng: &mut Rng, ours: bool) -> String {
        let mut fields = Vec::new();
        let sub = match rng.u8(0..8) {
            0..=4 => Self::json_str(&format!("u{}", rng.u32(..))),
            5 => Self::json_str(&any_string(rng)),
            6 => any_json(rng, 2).to_string(),
            _ => String::new(),
        };
        if !sub.is_empty() {
            fields.push(format!("\"sub\":{sub}"));
        }
        match rng.u8(0..4) {
            0 | 1 => fields.push(format!("\"handle\":{}", Self::json_str(&any_string(rng)))),
            2 => fields.push(format!("\"handle\":{}", any_json(rng, 1))),
            _ => {}
        }
        if rng.u8(0..8) != 0 {
            fields.push(format!("\"exp\":{}", Self::time_literal(rng)));
        }
        if rng.bool() {
            fields.push(format!("\"iat\":{}", Self::time_literal(rng)));
        }
        if rng.u8(0..4) == 0 {
            fields.push(format!("\"iat_ms\":{}", Self::time_literal(rng)));
        }
        if rng.u8(0..8) == 0 {
            fields.push(format!("\"nbf\":{}", Self::time_literal(rng)));
        }
        let iss = if ours && rng.u8(0..4) != 0 {
            Some("\"hubbub\"".to_string())
        } else {
            match rng.u8(0..4) {
                0 => Some(any_json(rng, 1).to_string()),
                1 => Some("[\"hubbub\",\"other\"]".into()),
                _ => None,
            }
        };
        if let Some(iss) = iss {
            fields.push(format!("\"iss\":{iss}"));
        }
        let aud = if !ours && rng.u8(0..4) != 0 {
            Some(format!("\"{APP_AUDIENCE}\""))
        } else {
            match rng.u8(0..6) {
                0 => Some(any_json(rng, 1).to_string()),
                1 => Some(format!("[\"{APP_AUDIENCE}\",\"x\"]")),
                2 => Some("[]".into()),
                _ => None,
            }
        };
        if let Some(aud) = aud {
            fields.push(format!("\"aud\":{aud}"));
        }
        if rng.u8(0..8) == 0 {
            fields.push(format!(
                "\"{}\":{}",
                field_name(rng).replace('"', ""),
                any_json(rng, 4)
            ));
        }
        if rng.u8(0..32) == 0 {
            fields.push(format!("\"deep\":{}", deep_json(rng)));
        }
        rng.shuffle(&mut fields);
        format!("{{{}}}", fields.join(","))
    }
}

impl TokenTarget {
    /// A token that verifies, encoded by jsonwebtoken: one of ours (any `sub`, a handle),
    /// or an app token (a valid `sub`, the audience).
    fn valid(&self, rng: &mut Rng) -> String {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let handle = maybe(rng, any_string);
        let (header, claims, secret) = if rng.bool() {
            let header = Header {
                kid: Some(KID.into()),
                ..Header::default()
            };
            let claims = serde_json::json!({
                "sub": any_string(rng), "handle": handle, "exp": FAR_EXP,
                "iat": any_u64(rng), "iss": "hubbub",
            });
            let mut claims = claims;
            if rng.bool() {
                claims["iat_ms"] = Value::from(any_u64(rng));
            }
            (header, claims, self.our_secret.as_str())
        } else {
            const SUB: &[u8] = b"abcXYZ019_.-";
            let sub: String = (0..rng.usize(1..=64))
                .map(|_| char::from(*pick(rng, SUB)))
                .collect();
            let mut claims = serde_json::json!({"sub": sub, "exp": FAR_EXP, "aud": APP_AUDIENCE});
            if let Some(h) = handle {
                claims["handle"] = Value::String(h);
            }
            (Header::default(), claims, APP_SECRET)
        };
        encode(
            &header,
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap_or_default()
    }
}

/// Base64url without padding, as JWTs use it.
pub(super) fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(chunk[0]) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

impl Target for TokenTarget {
    fn alphabet(&self) -> &'static [u8] {
        B64_ALPHABET
    }

    fn structured(&mut self, rng: &mut Rng) -> Input {
        use jsonwebtoken::{Algorithm, EncodingKey};
        if rng.u8(0..4) == 0 {
            return Input::one(self.valid(rng));
        }
        // Who signs: us, the app, a stranger, or nobody.
        let signer = rng.u8(0..10);
        let ours = signer < 4 || (signer >= 7 && rng.bool());
        let alg = match rng.u8(0..8) {
            0..=4 => "\"HS256\"",
            _ => pick(
                rng,
                &[
                    "\"HS384\"",
                    "\"HS512\"",
                    "\"RS256\"",
                    "\"ES256\"",
                    "\"none\"",
                    "\"None\"",
                    "\"\"",
                    "null",
                    "256",
                    "[\"HS256\"]",
                ],
            ),
        };
        let header = self.header(rng, alg);
        let claims = self.claims(rng, ours);
        let message = format!(
            "{}.{}",
            b64url(header.as_bytes()),
            b64url(claims.as_bytes())
        );
        let sign_alg = match rng.u8(0..8) {
            0 => Algorithm::HS384,
            1 => Algorithm::HS512,
            _ => Algorithm::HS256,
        };
        let secret = match signer {
            0..=3 => self.our_secret.clone(),
            4..=6 => APP_SECRET.to_string(),
            7 => "a-stranger's-secret-that-is-at-least-32-bytes".to_string(),
            _ => String::new(),
        };
        let signature = match signer {
            8 => String::new(),
            9 => {
                let mut junk = vec![0u8; rng.usize(0..600)];
                rng.fill(&mut junk);
                b64url(&junk)
            }
            _ => jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(secret.as_bytes()),
                sign_alg,
            )
            .unwrap_or_default(),
        };
        let token = match rng.u8(0..12) {
            0 => message,
            1 => format!("{message}.{signature}.{signature}"),
            2 => format!("{message}.{signature}{}", "A".repeat(rng.usize(0..9000))),
            _ => format!("{message}.{signature}"),
        };
        Input::one(token)
    }

    fn feed(&mut self, parts: &[Vec<u8>]) -> bool {
        let token = lossy(parts.first().map_or(&[][..], Vec::as_slice));
        match self.auth.verify(&token) {
            Ok(v) => {
                if v.app {
                    assert!(
                        (1..=64).contains(&v.sub.len())
                            && v.sub
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
                        "app token accepted with sub {:?}",
                        v.sub
                    );
                }
                assert!(token.len() <= 8192, "a token over 8 KiB accepted");
                true
            }
            Err(_) => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// config: Config::load.
