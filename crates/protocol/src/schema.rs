//! The JSON Schema documents of the protocol, generated from the types of this crate.
//!
//! `hubbub schema` writes them to `docs/schema/` (the binary does the writing: this crate
//! does no I/O); a test fails when the committed files differ from what the types generate,
//! so the schema can never drift from the code.

use crate::client::ClientFrame;
use crate::http::{
    AuthResponse, HttpError, LoginRequest, MediaResponse, RefreshRequest, SignupRequest,
};
use crate::server::ServerFrame;
use schemars::schema_for;

/// Every schema document: its file name and its pretty-printed JSON text (with a final newline).
pub fn documents() -> Vec<(&'static str, String)> {
    let docs = [
        ("client-frame.json", schema_for!(ClientFrame)),
        ("server-frame.json", schema_for!(ServerFrame)),
        ("http-signup-request.json", schema_for!(SignupRequest)),
        ("http-login-request.json", schema_for!(LoginRequest)),
        ("http-refresh-request.json", schema_for!(RefreshRequest)),
        ("http-auth-response.json", schema_for!(AuthResponse)),
        ("http-media-response.json", schema_for!(MediaResponse)),
        ("http-error.json", schema_for!(HttpError)),
    ];
    docs.into_iter()
        .map(|(name, schema)| {
            // A schema is plain JSON data: pretty-printing it cannot fail.
            let text = serde_json::to_string_pretty(&schema).unwrap_or_default();
            (name, text + "\n")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The names of the documents in `dir` that are missing or differ from the generated ones.
    fn stale(dir: &Path) -> Vec<&'static str> {
        documents()
            .into_iter()
            .filter(|(name, text)| {
                std::fs::read_to_string(dir.join(name)).ok().as_deref() != Some(text)
            })
            .map(|(name, _)| name)
            .collect()
    }

    #[test]
    fn committed_schema_is_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/schema");
        let stale = stale(&dir);
        assert!(
            stale.is_empty(),
            "docs/schema is stale ({stale:?}): run `cargo run -p hubbub -- schema` and commit"
        );
    }

    #[test]
    fn schema_names_every_request_type() {
        let (_, client) = &documents()[0];
        for ty in crate::Request::TYPES {
            assert!(
                client.contains(&format!("\"{ty}\"")),
                "{ty} missing from the schema"
            );
        }
    }
}
