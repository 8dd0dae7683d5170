//! `hubbub bench idle`: the memory an idle WebSocket costs the server.
//!
//! The server runs in this process on the embedded backends; client processes (this binary
//! again, `--client-url`) each open their share of the connections (one process may hold at
//! most ~19,900 sockets here) with app tokens, read `hello` and the timeline, and then stay
//! idle. The server's resident memory is read from `/proc/self/status` before the first
//! connection (after a warm-up connection) and once every connection is open and the server
//! has settled; the difference over the number of connections is the cost of one.

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const SECRET: &str = "bench-idle-secret-of-at-least-32-bytes";

/// Options of `hubbub bench idle`.
#[derive(Debug, Args)]
pub struct IdleBenchArgs {
    /// Idle connections in all.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections per client process (a process holds at most ~19,900 sockets here).
    #[arg(long, default_value_t = 5_000)]
    per_process: usize,
    /// Distinct users the connections belong to (0: one user per connection). Fewer users
    /// than connections separates what a socket costs from what a user costs.
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// Seconds to let the server settle once every connection is open.
    #[arg(long, default_value_t = 3)]
    settle_s: u64,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Internal: be a client process connecting to this WebSocket URL.
    #[arg(long, hide = true)]
    client_url: Option<String>,
    /// Internal: the first user number of a client process.
    #[arg(long, hide = true, default_value_t = 0)]
    client_from: usize,
}

/// This process's resident memory, KiB.
fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/self/status")
}

/// Run the benchmark (or, with `--client-url`, one client process of it).
pub async fn run(args: IdleBenchArgs) -> anyhow::Result<()> {
    if let Some(url) = args.client_url.clone() {
        return client_process(&url, args.client_from, args.per_process, args.users).await;
    }
    anyhow::ensure!(args.connections >= 1 && args.per_process >= 1);
    let (dir, running) = super::app_server("idle", SECRET).await?;
    let ws_base = format!("ws://{}/v1/ws", running.addr);

    // Warm up (first allocations of the paths a connection takes), then measure.
    let url = format!(
        "{ws_base}?access_token={}",
        super::token(SECRET, "bench-idle-warmup")?
    );
    let (mut warm, _) = tokio_tungstenite::connect_async(url).await?;
    for _ in 0..2 {
        warm.next().await;
    }
    drop(warm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib()?;

    let mut children = Vec::new();
    let mut from = 0;
    while from < args.connections {
        let count = args.per_process.min(args.connections - from);
        let args_of_child: Vec<String> = [
            "bench",
            "idle",
            "--client-url",
            &ws_base,
            "--client-from",
            &from.to_string(),
            "--per-process",
            &count.to_string(),
            "--users",
            &args.users.to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        children.push(super::spawn_client(&args_of_child, Duration::from_secs(300)).await?);
        from += count;
        if !args.json {
            eprintln!("{from} connections open");
        }
    }
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    let after = rss_kib()?;
    let per = (after.saturating_sub(before)) as f64 / args.connections as f64;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "connections": args.connections,
                "rss_before_kib": before, "rss_after_kib": after, "kib_per_connection": per,
            })
        );
    } else {
        println!(
            "idle: {} connections of {} users (each past hello), server RSS {before} KiB -> {after} KiB: {per:.1} KiB per connection",
            args.connections,
            if args.users == 0 {
                args.connections
            } else {
                args.users
            },
        );
    }
    for mut c in children {
        let _ = c.stdin.shutdown().await;
        let _ = c.child.kill().await;
    }
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// A client process: open `count` connections, say "ready", hold them until stdin closes.
async fn client_process(url: &str, from: usize, count: usize, users: usize) -> anyhow::Result<()> {
    let mut sockets = Vec::with_capacity(count);
    for i in from..from + count {
        let full = format!(
            "{url}?access_token={}",
            super::token(
                SECRET,
                &format!("bench-idle-{}", if users == 0 { i } else { i % users })
            )?
        );
        let mut ws = crate::bench::connect(full)
            .await
            .with_context(|| format!("connection {i}"))?;
        // hello, then the timeline.
        for _ in 0..2 {
            ws.next().await;
        }
        sockets.push(ws);
    }
    let mut out = tokio::io::stdout();
    out.write_all(b"ready\n").await?;
    out.flush().await?;
    // Idle: answer pings (reading does that) until told to stop.
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let reader = async {
        let mut line = String::new();
        let _ = stdin.read_line(&mut line).await;
    };
    let keep = async {
        loop {
            for ws in sockets.iter_mut() {
                while let Ok(Some(_)) =
                    tokio::time::timeout(Duration::from_millis(0), ws.next()).await
                {
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = keep => {}
    }
    Ok(())
}
