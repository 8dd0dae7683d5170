//! The keys that seal contact notes at rest: ChaCha20-Poly1305 (RustCrypto's
//! `chacha20poly1305`), a fresh random 96-bit nonce per seal, and associated data that binds
//! each ciphertext to its row (a sealed note moved to another row does not open).
//!
//! A key ring is an ordered list of (id, 256-bit key); the last one is current: new seals use
//! it, and any key still in the ring opens what it sealed. Its text form, the key file, is one
//! `id hex-key` per line (`#` starts a comment). Rotation appends a key and never drops one,
//! so nothing sealed earlier becomes unreadable.

use crate::{Result, StoreError};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use std::path::Path;

/// A sealed value as stored: the id of the key that sealed it, its nonce and its ciphertext
/// (with the tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The key id.
    pub key: String,
    /// 12 bytes.
    pub nonce: Vec<u8>,
    /// Ciphertext and tag.
    pub data: Vec<u8>,
}

/// The note keys; the last is current.
#[derive(Clone)]
pub struct NoteKeys {
    keys: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for NoteKeys {
    // Never print a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("NoteKeys").field("ids", &ids).finish()
    }
}

fn random_key() -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| StoreError::Internal(format!("random: {e}")))?;
    Ok(key)
}

fn bad(msg: impl Into<String>) -> StoreError {
    StoreError::Internal(format!("note keys: {}", msg.into()))
}

impl NoteKeys {
    /// A ring of one new random key, `k1`.
    pub fn generate() -> Result<Self> {
        Ok(NoteKeys {
            keys: vec![("k1".to_owned(), random_key()?)],
        })
    }

    /// Parse the key file's text (`id hex-key` per line, the last current).
    pub fn parse(text: &str) -> Result<Self> {
        let mut keys: Vec<(String, [u8; 32])> = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(id), Some(hex_key), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("each line is `id hex-key`"));
            };
            let bytes = hex::decode(hex_key).map_err(|_| bad(format!("key {id} is not hex")))?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| bad(format!("key {id} is not 32 bytes")))?;
            if keys.iter().any(|(k, _)| k == id) {
                return Err(bad(format!("key id {id} appears twice")));
            }
            keys.push((id.to_owned(), key));
        }
        if keys.is_empty() {
            return Err(bad("no key"));
        }
        Ok(NoteKeys { keys })
    }

    /// The key file's text.
    pub fn to_text(&self) -> String {
        let mut out = String::from(
            "# hubbub's note keys: `id hex-key` per line, the last one current. Keep every line:\n\
             # a note sealed under a key needs it to open. Add one with `hubbub rotate-note-keys`.\n",
        );
        for (id, key) in &self.keys {
            out.push_str(&format!("{id} {}\n", hex::encode(key)));
        }
        out
    }

    /// The ring with a new random key appended (the new current one), `k<n+1>`.
    pub fn rotated(&self) -> Result<Self> {
        let mut n = self.keys.len() + 1;
        while self.keys.iter().any(|(id, _)| *id == format!("k{n}")) {
            n += 1;
        }
        let mut keys = self.keys.clone();
        keys.push((format!("k{n}"), random_key()?));
        Ok(NoteKeys { keys })
    }

    /// Read the key file at `path`, or create it with one new key (mode 0600 on Unix).
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keys = Self::generate()?;
                keys.save(path)?;
                Ok(keys)
            }
            Err(e) => Err(bad(format!("reading {}: {e}", path.display()))),
        }
    }

    /// Write the key file (through a temporary file and a rename, so a crash leaves the old
    /// file or the new one).
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| bad(format!("writing {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(io)?;
        std::io::Write::write_all(&mut file, self.to_text().as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The current key's id.
    pub fn current(&self) -> &str {
        self.keys.last().map_or("", |(id, _)| id.as_str())
    }

    /// The key ids, oldest first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// Seal `plain` under the current key, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Sealed> {
        let (id, key) = self.keys.last().ok_or_else(|| bad("no key"))?;
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| StoreError::Internal(format!("random: {e}")))?;
        let data = ChaCha20Poly1305::new(Key::from_slice(key))
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| bad("sealing failed"))?;
        Ok(Sealed {
            key: id.clone(),
            nonce: nonce.to_vec(),
            data,
        })
    }

    /// Open what one of the ring's keys sealed, bound to `aad`.
    pub fn open(&self, aad: &[u8], sealed: &Sealed) -> Result<Vec<u8>> {
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| *id == sealed.key)
            .ok_or_else(|| bad(format!("no key {} to open a note", sealed.key)))?;
        if sealed.nonce.len() != 12 {
            return Err(bad("a sealed note's nonce is not 12 bytes"));
        }
        ChaCha20Poly1305::new(Key::from_slice(key))
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.data,
                    aad,
                },
            )
            .map_err(|_| bad(format!("a note sealed under {} does not open", sealed.key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_open_under_any_key_of_the_ring_and_only_for_their_row() {
        let old = NoteKeys::generate().expect("keys");
        let sealed = old.seal(b"row1", b"secret").expect("seal");
        assert_eq!(sealed.key, "k1");
        assert!(!sealed.data.windows(6).any(|w| w == b"secret"));
        let new = old.rotated().expect("rotate");
        assert_eq!(new.current(), "k2");
        assert_eq!(new.open(b"row1", &sealed).expect("open"), b"secret");
        assert!(new.open(b"row2", &sealed).is_err(), "bound to its row");
        assert_eq!(new.seal(b"row1", b"x").expect("seal").key, "k2");
        let again = NoteKeys::parse(&new.to_text()).expect("parse");
        assert_eq!(again.ids(), vec!["k1", "k2"]);
        assert_eq!(again.open(b"row1", &sealed).expect("open"), b"secret");
        assert!(NoteKeys::parse("k1 00").is_err());
        assert!(NoteKeys::parse("").is_err());
        assert!(!format!("{new:?}").contains(&hex::encode(new.keys[0].1)));
    }
}
