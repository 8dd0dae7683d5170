//! The demo web app (issue 14) at `/demo/`: the files of `examples/web` built into the binary,
//! so that `hubbub serve` shows a working chat and feed on a machine with nothing but Rust.
//! It owns serving those files (a fixed list, each with its type); it knows nothing of what
//! the app does, which is plain JavaScript over the public API of the same origin.
//!
//! The SDK under `examples/web/sdk/` is compiled from `sdk/js` and committed (`npm run
//! build:demo`; an SDK test fails when the copy is stale), so building never needs node. A
//! unit test below checks that this list and the directory hold the same files.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use hubbub_protocol::ErrorCode;

/// The app's files, relative to `examples/web/` (the README apart, which is for people).
macro_rules! files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../../examples/web/", $path)))),*]
    };
}
const FILES: &[(&str, &str)] = files![
    "index.html",
    "app.js",
    "style.css",
    "sdk/backoff.js",
    "sdk/channels.js",
    "sdk/client.js",
    "sdk/connection.js",
    "sdk/emitter.js",
    "sdk/env.js",
    "sdk/errors.js",
    "sdk/generated/protocol.js",
    "sdk/http.js",
    "sdk/inbox.js",
    "sdk/index.js",
    "sdk/options.js",
    "sdk/outbox.js",
    "sdk/presence.js",
    "sdk/protocol.js",
    "sdk/requests.js",
    "sdk/storage.js",
    "sdk/token.js",
    "sdk/typing.js",
];

/// Scripts and styles from this origin only; the socket and the API are same-origin too.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The demo's routes, to merge into the public listener's router.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
        // Relative module paths (`./app.js`) need the trailing slash.
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route("/demo/", get(|| async { file("index.html") }))
        .route(
            "/demo/{*path}",
            get(|Path(path): Path<String>| async move { file(&path) }),
        )
}

/// One file of the app with its type, or the protocol's 404.
fn file(path: &str) -> Response {
    let Some((_, body)) = FILES.iter().find(|(p, _)| *p == path) else {
        return crate::http::error(ErrorCode::NotFound, "no such file in the demo");
    };
    let kind = match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "application/octet-stream",
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            // Revalidate each time: a new binary serves new files at the same paths.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        *body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of `examples/web` (its README apart) is served, and nothing else.
    #[test]
    fn the_list_is_the_directory() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/web");
        let mut on_disk = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("examples/web") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let rel = path.strip_prefix(&root).expect("under root");
                    on_disk.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        on_disk.retain(|p| p != "README.md");
        on_disk.sort();
        let mut listed: Vec<String> = FILES.iter().map(|(p, _)| (*p).to_owned()).collect();
        listed.sort();
        assert_eq!(
            listed, on_disk,
            "crates/edge/src/demo.rs lists the files of examples/web"
        );
    }

    #[test]
    fn files_have_their_types() {
        let ct = |p: &str| {
            file(p)
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            ct("index.html").as_deref(),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            ct("sdk/index.js").as_deref(),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(ct("style.css").as_deref(), Some("text/css; charset=utf-8"));
        assert_eq!(file("../Cargo.toml").status(), 404);
    }
}
