//! `hubbub bench chat`: G groups of M online members; S sends per second for D seconds,
//! spread over the members; every member's socket records when each `message.new` arrives.
//! Latency is send (the frame handed to the socket) → delivery (the event read by a
//! member), over real WebSockets on loopback, every member counted (the sender too).
//!
//! With `--reactions` the load is reactions instead (issue 15's benchmark): the first member
//! posts one message per group, then the sends are `reaction.add` / `reaction.remove` on it by
//! the first 40 members in turn (each removes what it added, so the message stays under 50
//! distinct emoji). An added emoji is the send time, and every member's `reaction.updated`
//! counts as a delivery; the latency is measured on the adds.
//!
//! Without `--server`, a server is started in this process on a temporary data directory,
//! with the per-connection rate limit raised so the load generator is not throttled.

use super::ms;
use crate::client::Client;
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use hubbub_protocol::{ClientFrame, ConversationKind, ReplyData, Request, ServerFrame};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Mutex as AsyncMutex;
use tokio_tungstenite::tungstenite::Message;

/// Options of `hubbub bench chat`.
#[derive(Debug, clap::Args)]
pub struct ChatBenchArgs {
    /// Groups.
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// Online members per group (the creator included).
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Sends per second, over all groups.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// A running server to load (default: start one in this process); several edges of one
    /// deployment, comma-separated, get the members' sockets in turn.
    #[arg(long)]
    server: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Reactions on one message per group instead of messages (see the module doc).
    #[arg(long)]
    reactions: bool,
}

/// Members of a group that react in `--reactions` mode (each holds at most one emoji of the
/// message at a time: fewer than the 50 distinct emoji a message may carry).
const REACTORS: usize = 40;

#[derive(Debug, serde::Serialize)]
struct Report {
    groups: usize,
    members: usize,
    rate: u64,
    duration_s: u64,
    sends: u64,
    acked_sends: u64,
    /// Sends answered with an error (`unavailable` past capacity, say), by code.
    refused: std::collections::BTreeMap<String, u64>,
    deliveries: u64,
    expected_deliveries: u64,
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

type Sink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

/// The send time carried in a bench message's text (`"text":"bench <micros>"`).
/// The send time in an added reaction's emoji (`"emoji":"t<micros>"`, an `add`).
fn reacted_at(line: &str) -> Option<u64> {
    if !line.contains(r#""op":"add""#) {
        return None;
    }
    let start = line.find(r#""emoji":"t"#)? + r#""emoji":"t"#.len();
    let digits = &line[start..];
    let end = digits.find('"')?;
    digits[..end].parse().ok()
}

/// A member's socket, shared by the sending loop's tasks.
type Shared = Arc<AsyncMutex<Sink>>;

fn sent_at(line: &str) -> Option<u64> {
    let start = line.find(r#""text":"bench "#)? + r#""text":"bench "#.len();
    let digits = &line[start..];
    let end = digits.find('"')?;
    digits[..end].parse().ok()
}

/// Run the benchmark.
pub async fn run(args: ChatBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.groups >= 1 && args.members >= 2 && args.rate >= 1 && args.duration >= 1);
    let tmp = std::env::temp_dir().join(format!("hubbub-bench-chat-{}", std::process::id()));
    let mut local = None;
    let base = match &args.server {
        Some(s) => s.clone(),
        None => {
            let mut config = crate::config::Config {
                data_dir: tmp.clone(),
                listen: "127.0.0.1:0".parse()?,
                ..Default::default()
            };
            super::unthrottled(&mut config);
            config.server.chat_workers = 4;
            let running = crate::serve::start(config).await?;
            let base = format!("http://{}", running.addr);
            local = Some(running);
            base
        }
    };
    let edges: Vec<String> = base.split(',').map(|s| s.trim().to_owned()).collect();
    let client = Client::new(&edges[0]);
    let run_id = std::process::id();
    let epoch = Instant::now();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let deliveries = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));

    // Users, sockets and groups.
    // Per group: its id, the message reacted to (`--reactions`), the members' sockets.
    let mut groups: Vec<(String, String, Vec<Shared>)> = Vec::new();
    // Per group and reactor, the emoji it holds on the message (`--reactions`).
    let mut held: Vec<Vec<Option<String>>> = vec![vec![None; REACTORS]; args.groups];
    let mut readers = Vec::new();
    for g in 0..args.groups {
        let mut tokens = Vec::new();
        let mut ids = Vec::new();
        for m in 0..args.members {
            let handle = format!("b{run_id}g{g}m{m}");
            let auth = client
                .signup(&handle, "bench-password")
                .await
                .with_context(|| format!("signing up {handle}"))?;
            ids.push(auth.user.id);
            tokens.push(auth.access_token);
        }
        let (mut creator, _) = client.connect(&tokens[0]).await?;
        let reply = creator
            .request(Request::ConversationCreate {
                kind: ConversationKind::Group,
                members: ids[1..].to_vec(),
                title: Some(format!("bench {g}")),
                ephemeral: None,
                idempotency_key: None,
                public: None,
            })
            .await?;
        let conversation = match reply {
            ServerFrame::Ok {
                data: ReplyData::Conversation { conversation },
                ..
            } => conversation.id,
            other => bail!("creating the group failed: {other:?}"),
        };
        let target = if args.reactions {
            let reply = creator
                .request(Request::MessageSend {
                    conversation: conversation.clone(),
                    client_msg_id: format!("bench-{run_id}-target-{g}"),
                    text: "react to me".into(),
                    attachments: None,
                    reply_to: None,
                    thread: None,
                    mentions: None,
                })
                .await?;
            match reply {
                ServerFrame::Ok {
                    data: ReplyData::Message { message },
                    ..
                } => message.id,
                other => bail!("posting the message to react to failed: {other:?}"),
            }
        } else {
            String::new()
        };
        creator.close().await;
        let mut sinks = Vec::new();
        for (m, token) in tokens.iter().enumerate() {
            let edge = &edges[m % edges.len()];
            let url = format!(
                "{}/v1/ws?access_token={token}",
                edge.replacen("http", "ws", 1)
            );
            let ws = crate::bench::connect(url).await?;
            let (sink, mut stream) = ws.split();
            sinks.push(Arc::new(AsyncMutex::new(sink)));
            let (hist, deliveries, acked) = (hist.clone(), deliveries.clone(), acked.clone());
            let refused = refused.clone();
            readers.push(tokio::spawn(async move {
                let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(text) = msg else { continue };
                    let now = epoch.elapsed().as_micros() as u64;
                    // The load generator shares the machine: it looks only at what it needs
                    // instead of decoding every frame.
                    for line in text.split('\n') {
                        if line.starts_with(r#"{"type":"reaction.updated""#) {
                            deliveries.fetch_add(1, Ordering::Relaxed);
                            if let (Some(sent), Some(h)) = (reacted_at(line), local.as_mut()) {
                                let _ = h.record(now.saturating_sub(sent).max(1));
                            }
                        } else if line.starts_with(r#"{"type":"ok""#)
                            && line.contains(r#""data":{"reactions""#)
                        {
                            acked.fetch_add(1, Ordering::Relaxed);
                        } else if line.starts_with(r#"{"type":"message.new""#) {
                            if let Some(sent) = sent_at(line) {
                                deliveries.fetch_add(1, Ordering::Relaxed);
                                if let Some(h) = local.as_mut() {
                                    let _ = h.record(now.saturating_sub(sent).max(1));
                                }
                            }
                        } else if line.starts_with(r#"{"type":"ok""#)
                            && line.contains(r#""data":{"message""#)
                        {
                            acked.fetch_add(1, Ordering::Relaxed);
                        } else if line.starts_with(r#"{"type":"error""#) {
                            let code = serde_json::from_str::<serde_json::Value>(line)
                                .ok()
                                .and_then(|v| v["code"].as_str().map(str::to_owned))
                                .unwrap_or_else(|| "?".into());
                            if let Ok(mut r) = refused.lock() {
                                *r.entry(code).or_default() += 1;
                            }
                        }
                    }
                }
                if let (Some(h), Ok(mut all)) = (local, hist.lock()) {
                    let _ = all.add(h);
                }
            }));
        }
        groups.push((conversation, target, sinks));
    }
    // Let the sockets settle (hello, initial frames) before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let start = Instant::now();
    let total = args.rate * args.duration;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        while sent < due {
            let g = (sent as usize) % groups.len();
            let (conversation, target, sinks) = &groups[g];
            let turn = sent as usize / groups.len();
            let request = if args.reactions {
                let r = turn % REACTORS.min(sinks.len());
                let (emoji, add) = match held[g][r].take() {
                    Some(e) => (e, false),
                    None => {
                        let e = format!("t{}", epoch.elapsed().as_micros());
                        held[g][r] = Some(e.clone());
                        (e, true)
                    }
                };
                let (conversation, message) = (conversation.clone(), target.clone());
                let request = if add {
                    Request::ReactionAdd {
                        conversation,
                        message,
                        emoji,
                    }
                } else {
                    Request::ReactionRemove {
                        conversation,
                        message,
                        emoji,
                    }
                };
                (sinks[r].clone(), request)
            } else {
                let sink = sinks[turn % sinks.len()].clone();
                (
                    sink,
                    Request::MessageSend {
                        conversation: conversation.clone(),
                        client_msg_id: format!("bench-{run_id}-{sent}"),
                        text: format!("bench {}", epoch.elapsed().as_micros()),
                        attachments: None,
                        reply_to: None,
                        thread: None,
                        mentions: None,
                    },
                )
            };
            let (sink, request) = request;
            let frame = ClientFrame {
                id: Some(format!("s{sent}")),
                request,
            };
            let text = frame.to_json();
            tokio::spawn(async move {
                let _ = sink.lock().await.send(Message::Text(text.into())).await;
            });
            sent += 1;
        }
    }
    let send_time = start.elapsed().as_secs_f64();
    let expected = sent * args.members as u64;
    // Wait for the tail, at most 10 s.
    let drain = Instant::now();
    while deliveries.load(Ordering::Relaxed) < expected && drain.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = deliveries.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64().max(send_time);
    for (_, _, sinks) in &groups {
        for s in sinks {
            let _ = s.lock().await.close().await;
        }
    }
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
    }
    let h = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock"))?
        .clone();
    let report = Report {
        groups: args.groups,
        members: args.members,
        rate: args.rate,
        duration_s: args.duration,
        sends: sent,
        acked_sends: acked.load(Ordering::Relaxed),
        refused: refused
            .lock()
            .map_err(|_| anyhow::anyhow!("refused lock"))?
            .clone(),
        deliveries: delivered,
        expected_deliveries: expected,
        deliveries_per_s: delivered as f64 / elapsed,
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "chat: {} groups x {} members, {} sends/s for {} s: {} sends ({} acked, refused {:?}), {}/{} deliveries, {:.0} deliveries/s",
            report.groups,
            report.members,
            report.rate,
            report.duration_s,
            report.sends,
            report.acked_sends,
            report.refused,
            report.deliveries,
            report.expected_deliveries,
            report.deliveries_per_s
        );
        println!(
            "chat: send -> deliver latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            report.p50_ms, report.p99_ms, report.max_ms
        );
    }
    if let Some(running) = local {
        running.shutdown().await;
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}
