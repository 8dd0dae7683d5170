//! `hubbub bench engagement`: who-is-writing events fanned out to many watching sockets.
//!
//! The server runs in this process. `--watchers` sockets watch `--posts` posts (every watcher
//! watches all of them); they live in child processes of `--per-process` sockets each (one
//! process may not hold 20,000 sockets here, and the server already holds one end of each).
//! `--writers` sockets in this process send `comment.typing` `--typing-per-s` times a second
//! each, spread over the posts. Once a round (`--probe-every-ms`, a second by default) a probe
//! writer types a marked word count on a post of its own that every watcher also watches, at
//! a random phase (300–700 ms into the round); each watcher notes when it first sees it,
//! which gives the lag from a `comment.typing` to the watchers' event through the whole path
//! (edge, partition and its 25 ms tick, the edge's fan-out, the sockets). On a post that
//! already had an event in the last second, add the wait for the next second (at most one
//! event per post per second): with rounds of a second, a probe typed earlier in its round
//! than the one before waits up to 400 ms for it. With rounds of 1,500 ms probes are at least
//! 1,100 ms apart, so nothing waits and the lag is the path alone. Reported: deliveries per second (engagement events received by all
//! watchers during the measured window) and the lag's p50, p99 and max.
//!
//! `--aggregator-only` measures the aggregator alone instead: `comment.typing` events per
//! second applied by one partition on one core (no sockets).

use super::{ms, token};
use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use hubbub_protocol::UserRef;
use hubbub_services::engagement::{Aggregator, EngagementConfig};
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "bench-app-secret-of-at-least-32-bytes";
const PROBE: &str = "bench-probe";
/// Probe word counts start here; ordinary writers stay below it.
const PROBE_BASE: u32 = 3000;

/// Options of `hubbub bench engagement`.
#[derive(Debug, clap::Args)]
pub struct EngagementBenchArgs {
    /// Watching sockets.
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,
    /// Posts every watcher watches (at most 50).
    #[arg(long, default_value_t = 1)]
    posts: usize,
    /// Writing sockets.
    #[arg(long, default_value_t = 1000)]
    writers: usize,
    /// `comment.typing` frames per second per writer.
    #[arg(long, default_value_t = 2.0)]
    typing_per_s: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// One probe per this many milliseconds (at least 1,000; 1,500 keeps the once-a-second
    /// publication limit out of the lag).
    #[arg(long, default_value_t = 1000)]
    probe_every_ms: u64,
    /// Watching sockets per child process.
    #[arg(long, default_value_t = 5000)]
    per_process: usize,
    /// Measure the aggregator alone (events per second on one core), no sockets.
    #[arg(long)]
    aggregator_only: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Internal: run as a watcher process against this WebSocket URL.
    #[arg(long, hide = true)]
    watcher_url: Option<String>,
    /// Internal: the first watcher index of this process.
    #[arg(long, hide = true, default_value_t = 0)]
    watcher_from: usize,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct WatcherReport {
    connected: usize,
    deliveries: u64,
    lags_us: Vec<u64>,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    watchers: usize,
    posts: usize,
    writers: usize,
    typing_per_s: f64,
    seconds: f64,
    deliveries: u64,
    deliveries_per_s: f64,
    lag_p50_ms: f64,
    lag_p99_ms: f64,
    lag_max_ms: f64,
    lag_samples: usize,
}

fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The posts watchers watch: the written ones, then the probe's.
fn post_ids(n: usize) -> Vec<String> {
    let mut posts: Vec<String> = (0..n).map(|i| format!("pe{i}")).collect();
    posts.push(PROBE_POST.to_owned());
    posts
}

const PROBE_POST: &str = "pe-probe";

/// Run the benchmark (or, with `--watcher-url`, one watcher process of it).
pub async fn run(args: EngagementBenchArgs) -> anyhow::Result<()> {
    if let Some(url) = args.watcher_url.clone() {
        return watcher_process(&url, &args).await;
    }
    if args.aggregator_only {
        return aggregator_only(&args);
    }
    anyhow::ensure!(
        (1..=49).contains(&args.posts),
        "--posts is 1 to 49 (watchers also watch the probe's post)"
    );
    anyhow::ensure!(args.watchers >= 1 && args.writers >= 1 && args.per_process >= 1);
    let (dir, running) = super::app_server("engagement", SECRET).await?;
    let ws_base = format!("ws://{}/v1/ws", running.addr);
    let posts = post_ids(args.posts);
    let ids = posts.clone();
    running
        .queue
        .transact(move |conn, _| {
            for id in &ids {
                conn.execute(
                    "INSERT INTO posts (id, author, text, ts) VALUES (?1, 'bench-author', 'watch me', 0)",
                    [id],
                )?;
            }
            Ok::<_, rusqlite::Error>(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating posts: {e}"))?;

    // Watcher processes: each connects its share and says "ready".
    let mut children = Vec::new();
    let mut from = 0;
    while from < args.watchers {
        let count = args.per_process.min(args.watchers - from);
        let args_of_child: Vec<String> = [
            "bench",
            "engagement",
            "--json",
            "--watcher-url",
            &ws_base,
            "--watcher-from",
            &from.to_string(),
            "--watchers",
            &count.to_string(),
            "--posts",
            &args.posts.to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        let c = super::spawn_client(&args_of_child, Duration::from_secs(120)).await?;
        children.push((c.child, c.stdin, c.stdout));
        from += count;
        if !args.json {
            eprintln!("{from} watchers connected");
        }
    }

    // Writers, and the probe.
    let mut writers = Vec::new();
    for i in 0..args.writers {
        let url = format!(
            "{ws_base}?access_token={}",
            token(SECRET, &format!("bench-writer-{i}"))?
        );
        let ws = crate::bench::connect(url).await.context("writer connect")?;
        writers.push(ws);
    }
    let probe_url = format!("{ws_base}?access_token={}", token(SECRET, PROBE)?);
    let mut probe = crate::bench::connect(probe_url).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for (i, ws) in writers.into_iter().enumerate() {
        let (mut sink, mut stream) = ws.split();
        let post = posts[i % args.posts].clone();
        let stop = stop.clone();
        let period = Duration::from_secs_f64(1.0 / args.typing_per_s.max(0.01));
        tasks.push(tokio::spawn(async move {
            // Spread the writers over the period, then type at a steady rate.
            tokio::time::sleep(period.mul_f64(i as f64 / 1000.0 % 1.0)).await;
            let mut tick = tokio::time::interval(period);
            let mut words = (i % 100) as u32;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        words = (words + 1) % 2000;
                        let f = format!(r#"{{"type":"comment.typing","post":"{post}","words":{words}}}"#);
                        if sink.send(Message::Text(f.into())).await.is_err() { break; }
                    }
                    _ = stream.next() => {}
                }
            }
        }));
    }
    for (_, stdin, _) in children.iter_mut() {
        stdin.write_all(b"go\n").await?;
    }
    let started = Instant::now();
    let every = args.probe_every_ms.max(1000);
    for round in 0..(args.seconds * 1000 / every) {
        tokio::time::sleep_until(
            // A random phase, so the samples do not all meet the partition's tick alike.
            tokio::time::Instant::from_std(started)
                + Duration::from_millis(round * every + 300 + fastrand::u64(0..400)),
        )
        .await;
        let words = PROBE_BASE + round as u32;
        let sent = wall_us();
        let f = format!(r#"{{"type":"comment.typing","post":"{PROBE_POST}","words":{words}}}"#);
        probe.send(Message::Text(f.into())).await?;
        for (_, stdin, _) in children.iter_mut() {
            stdin
                .write_all(format!("probe {words} {sent}\n").as_bytes())
                .await?;
        }
        // Keep the probe's socket drained.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1), probe.next()).await {
        }
    }
    tokio::time::sleep_until(
        tokio::time::Instant::from_std(started) + Duration::from_secs(args.seconds),
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    for (_, stdin, _) in children.iter_mut() {
        stdin.write_all(b"stop\n").await?;
        stdin.flush().await?;
    }
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }

    let mut deliveries = 0u64;
    let mut lags = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for (mut child, stdin, mut stdout) in children {
        drop(stdin);
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(60), stdout.read_line(&mut line))
            .await
            .context("a watcher process did not report")??;
        let r: WatcherReport = serde_json::from_str(line.trim())
            .with_context(|| format!("watcher report {line:?}"))?;
        deliveries += r.deliveries;
        for lag in r.lags_us {
            lags.record(lag.max(1))?;
        }
        let _ = child.wait().await;
    }
    let report = Report {
        watchers: args.watchers,
        posts: args.posts,
        writers: args.writers,
        typing_per_s: args.typing_per_s,
        seconds,
        deliveries,
        deliveries_per_s: deliveries as f64 / seconds,
        lag_p50_ms: ms(lags.value_at_quantile(0.5)),
        lag_p99_ms: ms(lags.value_at_quantile(0.99)),
        lag_max_ms: ms(lags.max()),
        lag_samples: lags.len() as usize,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "engagement: {} watchers x {} posts, {} writers at {}/s: {} deliveries in {:.1} s = {:.0}/s; typing-to-watchers lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
            report.watchers,
            report.posts,
            report.writers,
            report.typing_per_s,
            report.deliveries,
            report.seconds,
            report.deliveries_per_s,
            report.lag_p50_ms,
            report.lag_p99_ms,
            report.lag_max_ms,
            report.lag_samples
        );
    }
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The probe's word count in an engagement line, if the probe is in its `top`.
fn probe_words(line: &str) -> Option<u32> {
    let at = line.find(r#""user":"bench-probe""#)?;
    let rest = &line[at..];
    let w = rest.find(r#""words":"#)? + r#""words":"#.len();
    let digits: String = rest[w..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// One watcher process: connect, watch, count, and report on stdout.
async fn watcher_process(url: &str, args: &EngagementBenchArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let posts = post_ids(args.posts);
    let counting = Arc::new(AtomicBool::new(false));
    let deliveries = Arc::new(AtomicU64::new(0));
    // (probe words, arrival wall time) of the first sighting per socket and round.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u32, u64)>();
    let mut tasks = Vec::new();
    for i in 0..args.watchers {
        let user = format!("bench-watcher-{}", args.watcher_from + i);
        let full = format!("{url}?access_token={}", token(SECRET, &user)?);
        let ws = crate::bench::connect(full)
            .await
            .context("watcher connect")?;
        let (mut sink, mut stream) = ws.split();
        let watch = serde_json::json!({"type": "post.watch", "id": "w", "posts": posts});
        sink.send(Message::Text(watch.to_string().into())).await?;
        let (counting, deliveries, tx) = (counting.clone(), deliveries.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let _sink = sink;
            let mut last_probe = 0u32;
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let now = wall_us();
                for line in text.lines() {
                    if !line.starts_with(r#"{"type":"engagement""#) {
                        continue;
                    }
                    if counting.load(Ordering::Relaxed) {
                        deliveries.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(w) = probe_words(line)
                        && w >= PROBE_BASE
                        && w != last_probe
                    {
                        last_probe = w;
                        let _ = tx.send((w, now));
                    }
                }
            }
        }));
    }
    drop(tx);
    println!("ready");
    std::io::stdout().flush()?;
    // Control lines from the parent: go, probe <words> <sent_us>, stop.
    let mut sent: std::collections::HashMap<u32, u64> = Default::default();
    let mut control = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = control.next_line().await? {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("go") => counting.store(true, Ordering::Relaxed),
            Some("stop") => break,
            Some("probe") => {
                if let (Some(w), Some(t)) = (parts.next(), parts.next())
                    && let (Ok(w), Ok(t)) = (w.parse::<u32>(), t.parse::<u64>())
                {
                    sent.insert(w, t);
                }
            }
            _ => {}
        }
    }
    counting.store(false, Ordering::Relaxed);
    let total = deliveries.load(Ordering::Relaxed);
    let mut lags_us = Vec::new();
    while let Ok((w, at)) = rx.try_recv() {
        if let Some(t) = sent.get(&w) {
            lags_us.push(at.saturating_sub(*t));
        }
    }
    for t in tasks {
        t.abort();
    }
    let report = WatcherReport {
        connected: args.watchers,
        deliveries: total,
        lags_us,
    };
    println!("{}", serde_json::to_string(&report)?);
    std::io::stdout().flush()?;
    Ok(())
}

/// The aggregator alone: typing events applied per second by one partition.
fn aggregator_only(args: &EngagementBenchArgs) -> anyhow::Result<()> {
    let mut agg = Aggregator::new(EngagementConfig::default());
    let mut posts = post_ids(args.posts.clamp(1, 49));
    posts.pop();
    for p in &posts {
        agg.load(p, Some(0), 0);
        agg.subscribe("edge", p, 0);
    }
    let users: Vec<UserRef> = (0..args.writers.max(1))
        .map(|i| UserRef {
            id: format!("u{i}"),
            handle: format!("writer{i}"),
        })
        .collect();
    let events = 5_000_000u64;
    let mut published = 0usize;
    let start = Instant::now();
    for n in 0..events {
        // Simulated time: 1 µs per event, a tick every 100 ms of it.
        let now = (n / 1000) as i64;
        let user = &users[(n as usize) % users.len()];
        agg.typing(
            &posts[(n as usize) % posts.len()],
            user,
            (n % 2000) as u32,
            now,
        );
        if n % 100_000 == 0 {
            published += agg.tick(now).values().map(Vec::len).sum::<usize>();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = events as f64 / secs;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"events": events, "seconds": secs, "events_per_s": rate,
                               "writers": users.len(), "posts": posts.len(), "published": published})
        );
    } else {
        println!(
            "engagement aggregator: {events} typing events from {} writers on {} posts in {:.2} s = {:.0} events/s on one core ({published} events published)",
            users.len(),
            posts.len(),
            secs,
            rate
        );
    }
    Ok(())
}
