//! The client side of `hubbub bench fanout`: connections in each protocol, and the receiver
//! and publisher processes.

use super::*;

pub(super) use crate::bench::ClientWs as Ws;

/// The WebSocket URL of connection `i` of a client process.
pub(super) fn conn_url(peer: Peer, role: Role, base: &str, i: usize) -> anyhow::Result<String> {
    Ok(match (peer, role) {
        (Peer::Hubbub, _) => format!(
            "{base}?access_token={}",
            crate::bench::token(SECRET, &user_of(role, i))?
        ),
        (Peer::Socketio, Role::Pub) => format!("{base}&role=pub"),
        _ => base.to_owned(),
    })
}

/// The hubbub user of connection `i` (app tokens: made on first use).
pub(super) fn user_of(role: Role, i: usize) -> String {
    match role {
        Role::Recv => format!("fr{i}"),
        Role::Pub => format!("fp{i}"),
    }
}

/// Open a connection and get it to where it receives (hubbub: `hello` read; Socket.IO: the
/// namespace connected; NATS: `CONNECT` (and `SUB`) answered by a `PONG`).
pub(super) async fn open(peer: Peer, role: Role, url: &str) -> anyhow::Result<(Ws, NatsParser)> {
    let mut ws = crate::bench::connect(url)
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
pub(super) struct RecvStats {
    /// Deliveries per receiver.
    pub(super) counts: Vec<AtomicU64>,
    /// Latency, microseconds.
    pub(super) hists: Vec<Mutex<Histogram<u64>>>,
    /// The first and last delivery (µs since the epoch).
    pub(super) first_us: AtomicU64,
    pub(super) last_us: AtomicU64,
    /// Connections the server closed (or that failed) after they were ready.
    pub(super) closed: AtomicU64,
    /// Deliveries whose send time could not be read.
    pub(super) unreadable: AtomicU64,
}

impl RecvStats {
    pub(super) fn new(count: usize) -> anyhow::Result<Self> {
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
    pub(super) fn deliver(&self, i: usize, data: &[u8]) {
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

    pub(super) fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub(super) fn report(&self) -> RecvReport {
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
pub(super) struct RecvReport {
    pub(super) deliveries: u64,
    pub(super) min_per_receiver: u64,
    pub(super) max_per_receiver: u64,
    pub(super) first_us: u64,
    pub(super) last_us: u64,
    pub(super) closed: u64,
    pub(super) unreadable: u64,
    /// Latency histogram: (µs, count) pairs.
    pub(super) hist: Vec<(u64, u64)>,
}

/// Read one receiver's connection until it closes: count deliveries, answer pings, and for
/// hubbub acknowledge the highest seq seen at most every 100 ms.
pub(super) async fn receive(
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
                    if line.starts_with(r#"{"type":"message.new""#)
                        || line.starts_with(r#"{"type":"channel.message""#)
                    {
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
pub(super) async fn say(line: &str) -> anyhow::Result<()> {
    let mut out = tokio::io::stdout();
    out.write_all(line.as_bytes()).await?;
    out.write_all(b"\n").await?;
    out.flush().await?;
    Ok(())
}

/// A receiver process: open `count` connections, say `ready`, then answer `count` (the
/// deliveries so far) and `report` (a [`RecvReport`]) until stdin closes.
pub(super) async fn receiver_process(
    peer: Peer,
    base: &str,
    from: usize,
    count: usize,
) -> anyhow::Result<()> {
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
pub(super) struct Publisher {
    pub(super) sink: Arc<tokio::sync::Mutex<futures_util::stream::SplitSink<Ws, Message>>>,
    /// hubbub: the highest seq seen (the publisher's own messages come back to it).
    pub(super) seq: Arc<AtomicU64>,
    pub(super) acked: u64,
}

/// What the publishers' readers saw (replies to hubbub's `message.send`, NATS errors).
#[derive(Debug, Default)]
pub(super) struct PubReplies {
    pub(super) ok: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) first_error: Mutex<Option<String>>,
    /// Send → `ok` (hubbub: the write committed and its events handed to the edges), µs.
    pub(super) ok_us: Mutex<Option<Histogram<u64>>>,
}

impl PubReplies {
    pub(super) fn error(&self, e: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| e.chars().take(300).collect());
        }
    }
}

/// What the publisher process says when it is done publishing.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct PubDone {
    pub(super) sent: u64,
    pub(super) send_errors: u64,
    pub(super) start_us: u64,
    pub(super) end_us: u64,
}

/// What the publisher process answers to `report`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct PubReport {
    pub(super) replies_ok: u64,
    pub(super) replies_error: u64,
    pub(super) first_error: Option<String>,
    /// Send → `ok`, p50 and p99 in ms (hubbub only; none without replies).
    pub(super) ok_ms: Option<(f64, f64)>,
}

/// Read a publisher's connection: answer pings, count replies, remember the highest seq.
pub(super) async fn publisher_reader(
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
                        if let Some(sent) = sent_us(line.as_bytes())
                            && let Ok(mut h) = replies.ok_us.lock()
                        {
                            let h = h.get_or_insert_with(|| {
                                Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                                    .expect("static histogram bounds")
                            });
                            h.saturating_record(now_us().saturating_sub(sent).max(1));
                        }
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
pub(super) fn publish_frame(peer: Peer, conversation: &str, n: u64, text: String) -> Message {
    match peer {
        Peer::Hubbub => Message::Text(
            hubbub_protocol::ClientFrame {
                id: Some(format!("s{n}")),
                request: hubbub_protocol::Request::MessageSend {
                    conversation: conversation.to_owned(),
                    client_msg_id: format!("fanout-{}-{n}", std::process::id()),
                    text,
                    attachments: None,
                    reply_to: None,
                    thread: None,
                    mentions: None,
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
pub(super) async fn publisher_process(peer: Peer, base: &str, count: usize) -> anyhow::Result<()> {
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
                    ok_ms: replies.ok_us.lock().ok().and_then(|h| {
                        h.as_ref()
                            .filter(|h| !h.is_empty())
                            .map(|h| (ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99))))
                    }),
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
pub(super) async fn publish(
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
