//! `hubbub bench presence`: one user's presence change fanned out to N watching sockets.
//!
//! N watchers (app-token users, so no password hashing in the setup) each hold a WebSocket and
//! `presence.watch` the target. Then, round after round, the target comes online or flips
//! between `away` and `online`; each watcher records when the matching `presence` event
//! arrives. Reported: per-watcher latency (p50/p99/max) and the time until every watcher had
//! the event (p50/max over rounds). Server and watchers share this process and its cores.

use super::{ms, token};
use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Options of `hubbub bench presence`.
#[derive(Debug, clap::Args)]
pub struct PresenceBenchArgs {
    /// Watching sockets.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Status changes measured.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    watchers: usize,
    rounds: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    all_watchers_p50_ms: f64,
    all_watchers_max_ms: f64,
}

/// Run the benchmark.
pub async fn run(args: PresenceBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.watchers >= 1 && args.rounds >= 1);
    let dir = std::env::temp_dir().join(format!("hubbub-bench-presence-{}", std::process::id()));
    let secret = "bench-app-secret-of-at-least-32-bytes".to_owned();
    let mut config = crate::config::Config {
        data_dir: dir.clone(),
        listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    };
    config.auth.app_hmac_secret = Some(secret.clone());
    super::unthrottled(&mut config);
    let running = crate::serve::start(config).await?;
    let ws_base = format!("ws://{}/v1/ws", running.addr);

    // Watchers: connect, watch, then report (watcher, status) arrivals on a channel.
    let epoch = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, u64)>();
    let target = "bench-target";
    let mut readers = Vec::new();
    for i in 0..args.watchers {
        let url = format!(
            "{ws_base}?access_token={}",
            token(&secret, &format!("bench-watcher-{i}"))?
        );
        let ws = crate::bench::connect(url)
            .await
            .context("watcher connect")?;
        let (mut sink, mut stream) = ws.split();
        let watch =
            serde_json::json!({"type": "presence.watch", "id": "w", "users": [target]}).to_string();
        sink.send(Message::Text(watch.into())).await?;
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            let _sink = sink;
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let now = epoch.elapsed().as_micros() as u64;
                for line in text
                    .lines()
                    .filter(|l| l.starts_with(r#"{"type":"presence""#))
                {
                    let status = if line.contains(r#""status":"online""#) {
                        "online"
                    } else if line.contains(r#""status":"away""#) {
                        "away"
                    } else {
                        "offline"
                    };
                    let _ = tx.send((status.to_owned(), now));
                }
            }
        }));
    }
    // Let every watch land before the first change.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let url = format!("{ws_base}?access_token={}", token(&secret, target)?);
    let mut target_ws = None;
    for round in 0..args.rounds {
        let expected = match round {
            0 => "online",
            r if r % 2 == 1 => "away",
            _ => "online",
        };
        let start = epoch.elapsed().as_micros() as u64;
        if round == 0 {
            let ws = crate::bench::connect(url.clone()).await?;
            target_ws = Some(ws);
        } else if let Some(ws) = target_ws.as_mut() {
            let set = serde_json::json!({"type": "presence.set", "id": format!("p{round}"), "status": expected}).to_string();
            ws.send(Message::Text(set.into())).await?;
        }
        let mut got = 0;
        let mut last = start;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while got < args.watchers {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((status, at))) if status == expected => {
                    got += 1;
                    last = last.max(at);
                    if let Ok(mut h) = hist.lock() {
                        let _ = h.record(at.saturating_sub(start).max(1));
                    }
                }
                Ok(Some(_)) => {}
                _ => anyhow::bail!(
                    "round {round}: only {got} of {} watchers saw {expected}",
                    args.watchers
                ),
            }
        }
        all.record(last.saturating_sub(start).max(1))?;
        // Drain the target's own frames so its socket never backs up.
        if let Some(ws) = target_ws.as_mut() {
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(5), ws.next()).await
            {
            }
        }
    }
    let h = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock"))?
        .clone();
    let report = Report {
        watchers: args.watchers,
        rounds: args.rounds,
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
        all_watchers_p50_ms: ms(all.value_at_quantile(0.5)),
        all_watchers_max_ms: ms(all.max()),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "presence: {} watchers, {} changes: per watcher p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; all watchers had it after p50 {:.2} ms, max {:.2} ms",
            report.watchers,
            report.rounds,
            report.p50_ms,
            report.p99_ms,
            report.max_ms,
            report.all_watchers_p50_ms,
            report.all_watchers_max_ms
        );
    }
    for r in readers {
        r.abort();
    }
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
