//! `hubbub bench queue`: the durable queue's throughput and single-send latency.
//!
//! Phase 1 (throughput): `--producers` tasks send `--messages` in batches of `--batch` while
//! `--consumers` tasks receive batches of the same size and ack them in one call each; the
//! figure is messages fully through (sent, received, acked) per second.
//! Phase 2 (latency): `--senders` tasks each send single, un-batched messages; every send's
//! latency (call to durable return) goes into a histogram.
//!
//! With `--redis-url`, the same two phases run against Redis Streams (XADD, XREADGROUP,
//! XACK + XDEL), for comparison; start Redis with `appendfsync always` for a fair match.

use super::ms;
use anyhow::Context;
use hdrhistogram::Histogram;
use hubbub_queue::{EmbeddedConfig, EmbeddedQueue, Outgoing, Queue, ReceiveOptions, SendOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Options of `hubbub bench queue`.
#[derive(Debug, clap::Args)]
pub struct QueueBenchArgs {
    /// Messages through the queue in the throughput phase.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Batch size for send, receive and ack.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 4)]
    producers: u64,
    /// Concurrent consumers.
    #[arg(long, default_value_t = 4)]
    consumers: u64,
    /// Concurrent un-batched senders in the latency phase.
    #[arg(long, default_value_t = 16)]
    senders: u64,
    /// Sends in the latency phase, over all senders.
    #[arg(long, default_value_t = 20_000)]
    latency_sends: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 200)]
    body_bytes: usize,
    /// Where the database goes (default: a new temporary directory, removed afterwards).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also run the workload against Redis Streams at this URL (builds with the `cluster`
    /// feature).
    #[arg(long)]
    redis_url: Option<String>,
    /// Print one JSON object per backend instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    backend: String,
    messages: u64,
    batch: usize,
    producers: u64,
    consumers: u64,
    msgs_per_s: f64,
    senders: u64,
    send_p50_ms: f64,
    send_p99_ms: f64,
    send_max_ms: f64,
}

impl Report {
    fn new(
        backend: &str,
        args: &QueueBenchArgs,
        messages: u64,
        msgs_per_s: f64,
        hist: &Histogram<u64>,
    ) -> Self {
        Report {
            backend: backend.to_owned(),
            messages,
            batch: args.batch,
            producers: args.producers,
            consumers: args.consumers,
            msgs_per_s,
            senders: args.senders,
            send_p50_ms: ms(hist.value_at_quantile(0.5)),
            send_p99_ms: ms(hist.value_at_quantile(0.99)),
            send_max_ms: ms(hist.max()),
        }
    }

    fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
        } else {
            println!(
                "{}: {:.0} msgs/s sent+received+acked ({} msgs, batch {}, {} producers, {} consumers)",
                self.backend,
                self.msgs_per_s,
                self.messages,
                self.batch,
                self.producers,
                self.consumers
            );
            println!(
                "{}: single send with {} concurrent senders: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                self.backend, self.senders, self.send_p50_ms, self.send_p99_ms, self.send_max_ms
            );
        }
        Ok(())
    }
}

/// Run the benchmark.
pub async fn run(args: QueueBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.batch >= 1 && args.producers >= 1 && args.consumers >= 1 && args.senders >= 1
    );
    let tmp = tempfile_dir()?;
    let dir = args.data_dir.clone().unwrap_or_else(|| tmp.clone());
    let q = EmbeddedQueue::open(dir.join("bench.db"), EmbeddedConfig::default())
        .context("opening the embedded queue")?;
    let q: Arc<dyn Queue> = Arc::new(q);
    let msgs_per_s = throughput(&q, &args).await?;
    let hist = latency(&q, &args).await?;
    Report::new("embedded", &args, args.messages, msgs_per_s, &hist).print(args.json)?;
    drop(q);
    let _ = std::fs::remove_dir_all(&tmp);
    if let Some(url) = &args.redis_url {
        #[cfg(feature = "cluster")]
        redis_streams::run(url, &args).await?.print(args.json)?;
        #[cfg(not(feature = "cluster"))]
        anyhow::bail!(
            "--redis-url {url}: this build has no Redis client; build with --features cluster"
        );
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("hubbub-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn throughput(q: &Arc<dyn Queue>, args: &QueueBenchArgs) -> anyhow::Result<f64> {
    let body = vec![b'x'; args.body_bytes];
    let per_producer = args.messages / args.producers;
    let total = per_producer * args.producers;
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.producers {
        let (q, body, batch) = (q.clone(), body.clone(), args.batch as u64);
        tasks.spawn(async move {
            let mut sent = 0;
            while sent < per_producer {
                let n = batch.min(per_producer - sent);
                let msgs = (0..n).map(|_| Outgoing::new(body.clone())).collect();
                q.send_batch("bench", msgs).await?;
                sent += n;
            }
            anyhow::Ok(())
        });
    }
    for _ in 0..args.consumers {
        let (q, done, batch) = (q.clone(), done.clone(), args.batch);
        tasks.spawn(async move {
            let opts = ReceiveOptions {
                max: batch,
                wait: Duration::from_millis(50),
                visibility: Duration::from_secs(60),
                max_run: 1,
            };
            while done.load(Ordering::Relaxed) < total {
                let got = q.receive("bench", opts).await?;
                if got.is_empty() {
                    continue;
                }
                let receipts: Vec<_> = got.into_iter().map(|m| m.receipt).collect();
                let acked = q.ack_batch("bench", &receipts).await?;
                done.fetch_add(
                    acked.iter().filter(|r| r.is_ok()).count() as u64,
                    Ordering::Relaxed,
                );
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

async fn latency(q: &Arc<dyn Queue>, args: &QueueBenchArgs) -> anyhow::Result<Histogram<u64>> {
    let per_sender = (args.latency_sends / args.senders).max(1);
    let body = vec![b'x'; args.body_bytes];
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.senders {
        let (q, body) = (q.clone(), body.clone());
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            for _ in 0..per_sender {
                let t = Instant::now();
                q.send("bench-latency", body.clone(), SendOptions::default())
                    .await?;
                h.record(t.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok(h)
        });
    }
    merge(tasks).await
}

/// One histogram from every latency task's.
async fn merge(
    mut tasks: tokio::task::JoinSet<anyhow::Result<Histogram<u64>>>,
) -> anyhow::Result<Histogram<u64>> {
    let mut all = Histogram::<u64>::new(3)?;
    while let Some(h) = tasks.join_next().await {
        all.add(h??)?;
    }
    Ok(all)
}

#[cfg(feature = "cluster")]
mod redis_streams {
    //! The same workload on Redis Streams, as a peer to compare with.
    use super::*;
    use redis::AsyncCommands;

    pub(super) async fn run(url: &str, args: &QueueBenchArgs) -> anyhow::Result<Report> {
        let client = redis::Client::open(url).context("redis url")?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .context("connecting to redis")?;
        let fsync: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        let aof: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        eprintln!(
            "redis: appendonly={:?} appendfsync={:?}",
            aof.get(1),
            fsync.get(1)
        );
        let stream = format!("hubbub-bench-{}", std::process::id());
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg("g")
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await?;
        let body = vec![b'x'; args.body_bytes];
        let per_producer = args.messages / args.producers;
        let total = per_producer * args.producers;
        let done = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.producers {
            let (mut conn, body, stream, batch) = (
                client.get_multiplexed_async_connection().await?,
                body.clone(),
                stream.clone(),
                args.batch as u64,
            );
            tasks.spawn(async move {
                let mut sent = 0;
                while sent < per_producer {
                    let n = batch.min(per_producer - sent);
                    let mut pipe = redis::pipe();
                    pipe.atomic();
                    for _ in 0..n {
                        pipe.cmd("XADD")
                            .arg(&stream)
                            .arg("*")
                            .arg("b")
                            .arg(&body)
                            .ignore();
                    }
                    let _: () = pipe.query_async(&mut conn).await?;
                    sent += n;
                }
                anyhow::Ok(())
            });
        }
        for c in 0..args.consumers {
            let (mut conn, done, stream, batch) = (
                client.get_multiplexed_async_connection().await?,
                done.clone(),
                stream.clone(),
                args.batch,
            );
            tasks.spawn(async move {
                let consumer = format!("c{c}");
                while done.load(Ordering::Relaxed) < total {
                    let opts = redis::streams::StreamReadOptions::default()
                        .group("g", &consumer)
                        .count(batch)
                        .block(50);
                    let reply: redis::streams::StreamReadReply =
                        conn.xread_options(&[&stream], &[">"], &opts).await?;
                    let ids: Vec<String> = reply
                        .keys
                        .into_iter()
                        .flat_map(|k| k.ids.into_iter().map(|i| i.id))
                        .collect();
                    if ids.is_empty() {
                        continue;
                    }
                    let mut pipe = redis::pipe();
                    pipe.atomic();
                    pipe.cmd("XACK").arg(&stream).arg("g").arg(&ids).ignore();
                    pipe.cmd("XDEL").arg(&stream).arg(&ids).ignore();
                    let _: () = pipe.query_async(&mut conn).await?;
                    done.fetch_add(ids.len() as u64, Ordering::Relaxed);
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        let msgs_per_s = total as f64 / start.elapsed().as_secs_f64();
        let per_sender = (args.latency_sends / args.senders).max(1);
        let mut lat = tokio::task::JoinSet::new();
        for _ in 0..args.senders {
            let (mut conn, body, stream) = (
                client.get_multiplexed_async_connection().await?,
                body.clone(),
                format!("{stream}-latency"),
            );
            lat.spawn(async move {
                let mut h = Histogram::<u64>::new(3)?;
                for _ in 0..per_sender {
                    let t = Instant::now();
                    let _: String = redis::cmd("XADD")
                        .arg(&stream)
                        .arg("*")
                        .arg("b")
                        .arg(&body)
                        .query_async(&mut conn)
                        .await?;
                    h.record(t.elapsed().as_micros() as u64)?;
                }
                anyhow::Ok(h)
            });
        }
        let hist = merge(lat).await?;
        let _: () = redis::cmd("DEL")
            .arg(&stream)
            .arg(format!("{stream}-latency"))
            .query_async(&mut conn)
            .await?;
        Ok(Report::new("redis-streams", args, total, msgs_per_s, &hist))
    }
}
