//! The admin dashboard (`GET /admin`) in a real browser: headless Chromium (Debian's
//! `chromium`, which `scripts/test` installs), driven over the DevTools protocol. The page is
//! opened, logs in with the bootstrap key, shows the figures moving under a small load, flips
//! a flag (a connected client receives `flags`), redrives a dead letter and purges one. Without Chromium
//! on the machine the test says so and passes (the test script installs it).
//!
//! With `HUBBUB_DASHBOARD_SCREENSHOTS=<dir>` it saves screenshots there (docs/ holds them).

use crate::browser::Browser;
use crate::control::{BOOT, control_server};
use crate::support::*;
use hubbub_protocol::{ReplyData, ServerFrame};
use hubbub_queue::{Queue, ReceiveOptions, SendOptions};
use std::time::Duration;

/// Where screenshots go, when set.
const SHOTS: &str = "HUBBUB_DASHBOARD_SCREENSHOTS";

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
    if std::env::var(SHOTS).is_ok() {
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
    page.screenshot(SHOTS, "dashboard.png").await;
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
    page.screenshot(SHOTS, "dashboard-dlq.png").await;
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
