//! The admin dashboard (`GET /admin`) in a real browser: headless Chromium (Debian's
//! `chromium`, which `scripts/test` installs), driven over the DevTools protocol. The page is
//! opened, logs in with the bootstrap key, shows the figures moving under a small load, flips
//! a flag (a connected client receives `flags`), redrives a dead letter and purges one. Without Chromium
//! on the machine the test says so and passes (the test script installs it).
//!
//! With `HUBBUB_DASHBOARD_SCREENSHOTS=<dir>` it saves screenshots there (docs/ holds them).

use crate::control::{BOOT, control_server};
use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use hubbub_protocol::{ReplyData, ServerFrame};
use hubbub_queue::{Queue, ReceiveOptions, SendOptions};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium and one page of it, spoken to over the DevTools protocol.
struct Browser {
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
    async fn open(url: &str) -> Option<Browser> {
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
    async fn call(&mut self, method: &str, params: Value) -> Value {
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
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluate JavaScript in the page (awaiting a promise); its value.
    async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    /// Evaluate until the value is truthy (bounded); the value.
    async fn until(&mut self, what: &str, js: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE * 3;
        loop {
            let v = self.eval(js).await;
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&mut self, name: &str) {
        let Ok(dir) = std::env::var("HUBBUB_DASHBOARD_SCREENSHOTS") else {
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

/// A message in `notify.dlq`: received and let go until it is dead-lettered.
async fn dead_letter(q: &impl Queue) {
    q.send(
        "notify",
        b"{\"dead\":\"letter\"}".to_vec(),
        SendOptions::default(),
    )
    .await
    .expect("send");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while q.stats("notify").await.expect("stats").dlq_depth == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        let got = q
            .receive(
                "notify",
                ReceiveOptions {
                    max: 1,
                    wait: Duration::from_millis(100),
                    visibility: Duration::from_secs(30),
                    max_run: 1,
                },
            )
            .await
            .expect("receive");
        for d in got {
            q.nack("notify", &d.receipt, Duration::ZERO)
                .await
                .expect("nack");
        }
    }
}

#[tokio::test]
async fn the_dashboard_shows_the_figures_flips_a_flag_and_redrives() {
    let s = control_server().await;
    let Some(mut page) = Browser::open(&format!("{}/admin", s.base)).await else {
        eprintln!("no chromium on this machine: the dashboard's browser test did not run");
        return;
    };
    let queue = s.running.as_ref().expect("running").queue.clone();
    dead_letter(&queue).await;
    let (_alice, at) = s.user("alice").await;
    let (bob, bt) = s.user("bob").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;
    let ReplyData::Conversation { conversation } = ok(&mut a, group(vec![bob.id.clone()])).await
    else {
        panic!("no conversation")
    };
    // Log in.
    page.until("the login form", "!!document.querySelector('#login')")
        .await;
    page.eval(&format!(
        "document.querySelector('#key').value = {BOOT:?}; document.querySelector('#login').click(); true"
    ))
    .await;
    page.until(
        "the figures",
        "!document.querySelector('#main').hidden && /^[0-9]+$/.test(document.querySelector('#connections').textContent)",
    )
    .await;
    // Figures move under a small load.
    let before: f64 = page
        .eval("Number(document.querySelector('#deliveries-total').textContent)")
        .await
        .as_f64()
        .unwrap_or(0.0);
    for i in 0..10 {
        ok(
            &mut a,
            send(&conversation.id, &format!("dash-{i}"), "hello"),
        )
        .await;
    }
    page.until(
        "more deliveries",
        &format!(
            "Number(document.querySelector('#deliveries-total').textContent) >= {}",
            before + 20.0
        ),
    )
    .await;
    page.until(
        "a latency",
        "document.querySelector('#lat-p99').textContent.endsWith('ms')",
    )
    .await;
    page.until(
        "message.send in the requests table",
        "!!document.querySelector('#requests tr[data-key=\"message.send\"]')",
    )
    .await;
    if std::env::var("HUBBUB_DASHBOARD_SCREENSHOTS").is_ok() {
        // For the pictures: half a minute of varying load, so the charts have a history.
        for i in 0..150u32 {
            for j in 0..(1 + i % 7) {
                ok(
                    &mut a,
                    send(&conversation.id, &format!("shot-{i}-{j}"), "hi"),
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    page.screenshot("dashboard.png").await;
    // Flip a flag: the connected client is told.
    page.until(
        "the config",
        "document.querySelector('#config-version').textContent",
    )
    .await;
    page.eval(
        "document.querySelector('#flag-new-name').value = 'dashboard_flag';
         document.querySelector('#flag-add').click();
         document.querySelector('#config-save').click(); true",
    )
    .await;
    let pushed = until(&mut b, "flags", |f| matches!(f, ServerFrame::Flags { .. })).await;
    let ServerFrame::Flags { flags } = pushed else {
        unreachable!()
    };
    assert_eq!(flags.get("dashboard_flag"), Some(&true));
    page.until(
        "the new version",
        "document.querySelector('#config-version').textContent === 'version 1'",
    )
    .await;
    // Redrive the dead letter.
    page.until(
        "the dead letter",
        "!!document.querySelector('button.dlq-show[data-queue=\"notify\"]')",
    )
    .await;
    page.eval("document.querySelector('button.dlq-show[data-queue=\"notify\"]').click(); true")
        .await;
    page.until(
        "the dead letter's body",
        "document.querySelector('#dlq').textContent.includes('letter')",
    )
    .await;
    page.screenshot("dashboard-dlq.png").await;
    page.eval("document.querySelector('button.dlq-redrive').click(); true")
        .await;
    page.until(
        "the redrive",
        "document.querySelector('#dlq').textContent.includes('1 redriven')",
    )
    .await;
    let stats = queue.stats("notify").await.expect("stats");
    assert_eq!((stats.dlq_depth, stats.visible), (0, 1), "{stats:?}");
    // Another dead letter, purged (two clicks).
    let before = queue.stats("notify").await.expect("stats").visible;
    dead_letter(&queue).await;
    page.until(
        "the new dead letter",
        "!!document.querySelector('button.dlq-show[data-queue=\"notify\"]')",
    )
    .await;
    page.eval("document.querySelector('button.dlq-show[data-queue=\"notify\"]').click(); true")
        .await;
    page.until(
        "the purge button",
        "!!document.querySelector('button.dlq-purge')",
    )
    .await;
    page.eval(
        "document.querySelector('button.dlq-purge').click();
         document.querySelector('button.dlq-purge').click(); true",
    )
    .await;
    page.until(
        "the purge",
        "document.querySelector('#dlq').textContent.includes(' purged from notify.dlq')",
    )
    .await;
    let stats = queue.stats("notify").await.expect("stats");
    assert_eq!(stats.dlq_depth, 0, "{stats:?}");
    assert!(
        stats.visible <= before,
        "a purge sends nothing back: {stats:?}"
    );
}
