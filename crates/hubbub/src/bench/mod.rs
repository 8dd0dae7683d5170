//! `hubbub bench ...`: the benchmarks behind the performance targets of DESIGN.md.
//!
//! Each prints human-readable figures, or with `--json` one JSON object on stdout, and is run
//! by hand; results are recorded in `docs/benchmarks.md`. Nothing here is a test.

mod chat;
mod config;
mod engagement;
mod fanout;
mod history;
mod idle;
mod presence;
mod queue;
mod search;
mod timeline;

use clap::Subcommand;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Durable queue throughput (batched send, receive, ack) and single-send latency.
    Queue(queue::QueueBenchArgs),
    /// Chat fan-out: groups of online members, a send rate, send-to-deliver latency.
    Chat(chat::ChatBenchArgs),
    /// Presence fan-out: one user's status change to N watching sockets.
    Presence(presence::PresenceBenchArgs),
    /// Engagement fan-out: N sockets watching posts while writers type comments.
    Engagement(engagement::EngagementBenchArgs),
    /// The server memory an idle WebSocket costs (clients in separate processes).
    Idle(idle::IdleBenchArgs),
    /// Full-text search latency over a large message store.
    Search(search::SearchBenchArgs),
    /// Timeline fetch latency: a user following 10 accounts against one following 10,000.
    Timeline(timeline::TimelineBenchArgs),
    /// `message.history` page latency in long conversations, with and without reactions.
    History(history::HistoryBenchArgs),
    /// One room of N receivers against hubbub, Socket.IO and nats-server, side by side.
    Fanout(fanout::FanoutBenchArgs),
    /// The spread of a runtime config change across the processes of a deployment.
    Config(config::ConfigBenchArgs),
}

/// Run one benchmark.
pub async fn run(which: Bench) -> anyhow::Result<()> {
    match which {
        Bench::Queue(args) => queue::run(args).await,
        Bench::Chat(args) => chat::run(args).await,
        Bench::Presence(args) => presence::run(args).await,
        Bench::Engagement(args) => engagement::run(args).await,
        Bench::Idle(args) => idle::run(args).await,
        Bench::Search(args) => search::run(args).await,
        Bench::Timeline(args) => timeline::run(args).await,
        Bench::History(args) => history::run(args).await,
        Bench::Fanout(args) => fanout::run(args).await,
        Bench::Config(args) => config::run(args).await,
    }
}

/// A load generator's WebSocket.
pub(crate) type ClientWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Open a load generator's WebSocket: a 4 KiB read buffer and no write buffering.
/// tungstenite's default 128 KiB read buffer is zeroed as it grows on reads, which cost the
/// engagement bench's clients about a seventh of the machine, taken from the server.
pub(crate) async fn connect<R>(
    request: R,
) -> Result<ClientWs, tokio_tungstenite::tungstenite::Error>
where
    R: tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
{
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
    Ok(ws)
}

/// Milliseconds of a histogram value recorded in microseconds.
pub(crate) fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// An app token (HS256 with `secret`) for user `sub`, valid for an hour: bench users need
/// no signup (no password hashing in the setup).
pub(crate) fn token(secret: &str, sub: &str) -> anyhow::Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"sub": sub, "exp": exp});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Lift the per-client limits a load generator on loopback would hit: frame rates, the
/// connections of one IP address (every client is 127.0.0.1), signup attempts.
pub(crate) fn unthrottled(config: &mut crate::config::Config) {
    config.limits.frames_per_s = 100_000;
    config.limits.burst = 100_000;
    config.limits.acks_per_s = 100_000;
    config.server.max_connections_per_ip = usize::MAX;
    config.server.max_sessions_per_user = usize::MAX;
    config.auth.attempts_per_ip_per_minute = u32::MAX;
    config.auth.attempts_per_ip_burst = u32::MAX;
}

/// A server in this process on a fresh temporary data directory (removed by the caller),
/// accepting app tokens signed with `secret`, with the per-client limits lifted.
pub(crate) async fn app_server(
    bench: &str,
    secret: &str,
) -> anyhow::Result<(std::path::PathBuf, crate::serve::Running)> {
    let dir = std::env::temp_dir().join(format!("hubbub-bench-{bench}-{}", std::process::id()));
    let mut config = crate::config::Config {
        data_dir: dir.clone(),
        listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    };
    config.auth.app_hmac_secret = Some(secret.to_owned());
    unthrottled(&mut config);
    Ok((dir, crate::serve::start(config).await?))
}

/// A client process of a benchmark (this binary again, in a client mode), ready: it printed
/// `ready` on stdout. Benchmarks hold thousands of sockets, more than one process may open.
pub(crate) struct ClientProcess {
    /// The process (killed when dropped).
    pub(crate) child: tokio::process::Child,
    /// Its stdin: what the benchmark tells it.
    pub(crate) stdin: tokio::process::ChildStdin,
    /// Its stdout, after the `ready` line: what it reports.
    pub(crate) stdout: tokio::io::BufReader<tokio::process::ChildStdout>,
}

/// Start `hubbub <args>` and wait (at most `ready_within`) for it to say `ready`.
pub(crate) async fn spawn_client(
    args: &[String],
    ready_within: std::time::Duration,
) -> anyhow::Result<ClientProcess> {
    use anyhow::Context;
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(args)
        .env("HUBBUB_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning a client process")?;
    let stdin = child.stdin.take().context("stdin")?;
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    tokio::time::timeout(ready_within, stdout.read_line(&mut line))
        .await
        .context("a client process did not get ready in time")??;
    anyhow::ensure!(line.trim() == "ready", "client process said {line:?}");
    Ok(ClientProcess {
        child,
        stdin,
        stdout,
    })
}
