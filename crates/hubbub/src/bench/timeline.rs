//! `hubbub bench timeline`: timeline fetch latency for a user following few accounts and for
//! one following many (DESIGN.md: the second within 1.5× of the first).
//!
//! Loads `--accounts` accounts with `--posts-per-account` posts each (in bulk, through the
//! store's writer with the store's schema), a "small" user following `--small` of them and a
//! "large" user following `--large`. Both connect (the push after `hello` computes their
//! timelines once, a miss, timed and reported), then `--fresh` posts by followees are added
//! after the precompute so every fetch applies the real-time fixups. Then `--fetches`
//! `timeline.get` requests per user, alternating, each timed from send to reply over the
//! WebSocket. Server and client share this process and its cores.

use super::{ms, token};
use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Options of `hubbub bench timeline`.
#[derive(Debug, clap::Args)]
pub struct TimelineBenchArgs {
    /// Accounts that post.
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
    /// Posts per account.
    #[arg(long, default_value_t = 100)]
    posts_per_account: u64,
    /// Accounts the small user follows.
    #[arg(long, default_value_t = 10)]
    small: u64,
    /// Accounts the large user follows.
    #[arg(long, default_value_t = 10_000)]
    large: u64,
    /// Posts by followees added after the precompute (fixed up at every fetch).
    #[arg(long, default_value_t = 20)]
    fresh: u64,
    /// Timed fetches per user.
    #[arg(long, default_value_t = 1000)]
    fetches: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct UserReport {
    followees: u64,
    first_fetch_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    items: usize,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    posts: u64,
    load_s: f64,
    small: UserReport,
    large: UserReport,
    p99_ratio: f64,
}

use crate::bench::ClientWs as Ws;

/// Send a `timeline.get` and wait for its reply; returns the number of items.
async fn fetch(ws: &mut Ws, id: &str) -> anyhow::Result<usize> {
    let req = serde_json::json!({"type": "timeline.get", "id": id, "limit": 50}).to_string();
    ws.send(Message::Text(req.into())).await?;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if v["id"] == id {
                anyhow::ensure!(v["type"] == "ok", "timeline.get failed: {line}");
                return Ok(v["data"]["items"].as_array().map_or(0, Vec::len));
            }
        }
    }
    anyhow::bail!("connection closed")
}

/// Connect and read `hello` and the pushed timeline; returns the socket and how long the
/// timeline took to arrive after `hello` (the first computation).
async fn connect(url: &str) -> anyhow::Result<(Ws, f64)> {
    let mut ws = crate::bench::connect(url).await.context("connect")?;
    let mut hello_at = None;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        for line in text.lines() {
            if line.starts_with(r#"{"type":"hello""#) {
                hello_at = Some(Instant::now());
            } else if line.starts_with(r#"{"type":"timeline""#) {
                let took = hello_at.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0);
                return Ok((ws, took));
            }
        }
    }
    anyhow::bail!("closed before the timeline")
}

/// Run the benchmark.
pub async fn run(args: TimelineBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.small <= args.accounts && args.large <= args.accounts && args.fetches > 0,
        "followee counts must not exceed --accounts"
    );
    let dir = std::env::temp_dir().join(format!("hubbub-bench-timeline-{}", std::process::id()));
    let secret = "bench-app-secret-of-at-least-32-bytes".to_owned();
    let mut config = crate::config::Config {
        data_dir: dir.clone(),
        listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    };
    config.auth.app_hmac_secret = Some(secret.clone());
    super::unthrottled(&mut config);
    // The periodic precompute stays out of the measurement.
    config.feed.precompute_interval_s = 24 * 3600;
    let running = crate::serve::start(config).await?;
    let ws_base = format!("ws://{}/v1/ws", running.addr);

    // Bulk load: accounts' posts (interleaved in time, as real posting is), and the follows.
    let start = Instant::now();
    let total = args.accounts * args.posts_per_account;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let batch = 50_000u64;
    let mut next = 0u64;
    while next < total {
        let end = (next + batch).min(total);
        let accounts = args.accounts;
        running
            .queue
            .transact(move |conn, _| {
                let mut stmt = conn.prepare_cached(
                    "INSERT INTO posts (id, author, text, ts, likes, comments)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for n in next..end {
                    let author = n % accounts;
                    let ts = now_ms - (total - n) as i64 * 1000;
                    stmt.execute(rusqlite::params![
                        format!("pb{n}"),
                        format!("acct{author}"),
                        format!("post {n} by account {author}"),
                        ts,
                        (n % 7) as i64,
                        (n % 3) as i64
                    ])?;
                }
                Ok::<_, rusqlite::Error>(())
            })
            .await
            .map_err(|e| anyhow::anyhow!("loading posts: {e}"))?;
        next = end;
        if !args.json && next.is_multiple_of(200_000) {
            eprintln!("loaded {next} posts");
        }
    }
    let (small, large) = (args.small, args.large);
    running
        .queue
        .transact(move |conn, _| {
            let mut stmt = conn.prepare_cached(
                "INSERT INTO follows (follower, followee, ts) VALUES (?1, ?2, 0)",
            )?;
            for i in 0..small {
                stmt.execute(rusqlite::params!["bench-small", format!("acct{i}")])?;
            }
            for i in 0..large {
                stmt.execute(rusqlite::params!["bench-large", format!("acct{i}")])?;
            }
            Ok::<_, rusqlite::Error>(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("loading follows: {e}"))?;
    let load_s = start.elapsed().as_secs_f64();

    let (mut small_ws, small_first) = connect(&format!(
        "{ws_base}?access_token={}",
        token(&secret, "bench-small")?
    ))
    .await?;
    let (mut large_ws, large_first) = connect(&format!(
        "{ws_base}?access_token={}",
        token(&secret, "bench-large")?
    ))
    .await?;
    // Posts after the precompute: both users follow account 0.
    let fresh = args.fresh;
    running
        .queue
        .transact(move |conn, _| {
            for n in 0..fresh {
                conn.execute(
                    "INSERT INTO posts (id, author, text, ts) VALUES (?1, 'acct0', 'fresh', ?2)",
                    rusqlite::params![format!("pf{n}"), now_ms + n as i64],
                )?;
            }
            Ok::<_, rusqlite::Error>(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("fresh posts: {e}"))?;

    let mut hists = [
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
    ];
    let mut items = [0usize; 2];
    for i in 0..args.fetches {
        for (k, ws) in [&mut small_ws, &mut large_ws].into_iter().enumerate() {
            let t = Instant::now();
            items[k] = fetch(ws, &format!("t{i}")).await?;
            hists[k].record((t.elapsed().as_micros() as u64).max(1))?;
        }
    }
    let user = |k: usize, followees: u64, first: f64| UserReport {
        followees,
        first_fetch_ms: first,
        p50_ms: ms(hists[k].value_at_quantile(0.5)),
        p99_ms: ms(hists[k].value_at_quantile(0.99)),
        max_ms: ms(hists[k].max()),
        items: items[k],
    };
    let report = Report {
        posts: total,
        load_s,
        small: user(0, args.small, small_first),
        large: user(1, args.large, large_first),
        p99_ratio: hists[1].value_at_quantile(0.99) as f64
            / hists[0].value_at_quantile(0.99).max(1) as f64,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "timeline: {} posts (loaded in {:.1} s), {} fetches per user",
            report.posts, report.load_s, args.fetches
        );
        for (name, u) in [("small", &report.small), ("large", &report.large)] {
            println!(
                "  {name}: follows {:>6}: first (computed) {:.1} ms; fetch p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} items)",
                u.followees, u.first_fetch_ms, u.p50_ms, u.p99_ms, u.max_ms, u.items
            );
        }
        println!("  p99 ratio large/small: {:.2}", report.p99_ratio);
    }
    small_ws.close(None).await.ok();
    large_ws.close(None).await.ok();
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
