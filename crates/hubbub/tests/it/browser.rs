//! A headless Chromium driven over the DevTools protocol, for the tests of the web pages
//! hubbub serves (the admin dashboard, the demo app). Debian's `chromium` (which
//! `scripts/test` installs, or `HUBBUB_TEST_CHROMIUM`); without one, [`Browser::open`] gives
//! `None` and the test says so and passes. Each browser has its own temporary profile, so two
//! of them are two users with separate storage.

use crate::support::PATIENCE;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium and one page of it, spoken to over the DevTools protocol.
pub struct Browser {
    child: tokio::process::Child,
    ws: Ws,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

fn chromium() -> Option<String> {
    if let Ok(p) = std::env::var("HUBBUB_TEST_CHROMIUM") {
        return Some(p);
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_owned)
}

impl Browser {
    pub async fn open(url: &str) -> Option<Browser> {
        let bin = chromium()?;
        let profile = tempfile::tempdir().expect("tempdir");
        let mut child = tokio::process::Command::new(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=1400,1100",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let endpoint = tokio::time::timeout(PATIENCE * 3, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(at) = line.find("ws://") {
                    return line[at..].trim().to_owned();
                }
            }
            panic!("chromium said no DevTools address")
        })
        .await
        .expect("chromium started in time");
        // Keep reading its stderr, so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws, _) = tokio_tungstenite::connect_async(&endpoint)
            .await
            .expect("devtools");
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = b.call("Target.createTarget", json!({"url": url})).await;
        let target = target["targetId"].as_str().expect("target").to_owned();
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        b.session = attached["sessionId"].as_str().expect("session").to_owned();
        Some(b)
    }

    /// A DevTools command (on the page once attached); its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let v = self.call_raw(method, params).await;
        assert!(v.get("error").is_none(), "{method}: {v}");
        v["result"].clone()
    }

    /// A DevTools command's whole answer (`result` or `error`).
    async fn call_raw(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .expect("send");
        loop {
            let m = tokio::time::timeout(PATIENCE * 3, self.ws.next())
                .await
                .expect("devtools answered in time")
                .expect("open")
                .expect("read");
            let Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(&text).expect("json");
            if v["id"] == json!(id) {
                return v;
            }
        }
    }

    /// Evaluate JavaScript in the page (awaiting a promise); its value.
    pub async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    /// Evaluate until the value is truthy (bounded); the value. A failed evaluation (the page
    /// is loading, an element is not there yet) counts as not yet.
    pub async fn until(&mut self, what: &str, js: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE * 3;
        loop {
            let r = self
                .call_raw(
                    "Runtime.evaluate",
                    json!({"expression": js, "awaitPromise": true, "returnByValue": true}),
                )
                .await;
            let failed = r.get("error").is_some() || r["result"].get("exceptionDetails").is_some();
            let v = if failed {
                Value::Null
            } else {
                r["result"]["result"]["value"].clone()
            };
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            if tokio::time::Instant::now() >= deadline {
                // What the page showed instead, for the failure's message.
                let text = self
                    .call_raw(
                        "Runtime.evaluate",
                        json!({"expression": "document.body.innerText", "returnByValue": true}),
                    )
                    .await;
                panic!(
                    "the page never showed {what}; it showed:\n{}\n(last evaluation: {r})",
                    text["result"]["result"]["value"].as_str().unwrap_or("?")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reload the page (what a user's F5 does; storage is kept).
    pub async fn reload(&mut self) {
        self.call("Page.reload", json!({})).await;
    }

    /// A PNG of the page, saved as `name` in the directory the environment variable `var`
    /// names; nothing when it is unset.
    pub async fn screenshot(&mut self, var: &str, name: &str) {
        let Ok(dir) = std::env::var(var) else {
            return;
        };
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let data = shot["data"].as_str().expect("png");
        let bytes = base64_decode(data);
        std::fs::write(std::path::Path::new(&dir).join(name), bytes).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Standard base64, as DevTools sends screenshots.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, c)| {
            acc | (u32::from(val(*c)) << (18 - 6 * i))
        });
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}
