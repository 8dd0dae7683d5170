//! `hubbub bench config`: how far apart the processes of a deployment apply a runtime config
//! version (the consistency target of DESIGN.md: every process within 1 s, a spread under
//! 100 ms between the first and the last).
//!
//! The processes run apart and already up (`scripts/bench-config` starts five on Redis and
//! PostgreSQL). Each change is a `PUT /v1/admin/config` through one edge; then every process's
//! `/metrics` is read until it shows the new `hubbub_config_version`, and its
//! `hubbub_config_applied_timestamp_seconds` says when it applied it (one machine, one
//! clock). Reported over the changes: the spread (last apply less first), and the delay
//! from sending the `PUT` to the last apply.

use crate::client::Client;
use anyhow::Context;
use hdrhistogram::Histogram;
use hubbub_protocol::admin::Flag;
use std::time::Duration;

/// Options of `hubbub bench config`.
#[derive(Debug, clap::Args)]
pub struct ConfigBenchArgs {
    /// The edge whose admin API takes the changes.
    #[arg(long, default_value = "http://127.0.0.1:7700")]
    admin: String,
    /// An API key with the admin scope.
    #[arg(long, env = "HUBBUB_API_KEY", hide_env_values = true)]
    key: String,
    /// Comma-separated base URLs of every process's `/metrics` (its health or admin listener).
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<String>,
    /// Changes measured.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    processes: usize,
    changes: usize,
    spread_p50_ms: f64,
    spread_p99_ms: f64,
    spread_max_ms: f64,
    last_apply_p50_ms: f64,
    last_apply_p99_ms: f64,
    last_apply_max_ms: f64,
}

fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// When the process at `base` applied `version` (ms since the epoch), read from its metrics.
async fn applied_at(http: &reqwest::Client, base: &str, version: u64) -> anyhow::Result<f64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .with_context(|| format!("{base}/metrics"))?
            .text()
            .await?;
        let now = gauge(&text, hubbub_protocol::metrics::CONFIG_VERSION).unwrap_or(0.0);
        if now >= version as f64 {
            anyhow::ensure!(
                now == version as f64,
                "{base} went past version {version} (another writer?)"
            );
            let at = gauge(&text, hubbub_protocol::metrics::CONFIG_APPLIED)
                .context("no applied timestamp")?;
            return Ok(at * 1000.0);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{base} did not apply version {version} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Run the benchmark.
pub async fn run(args: ConfigBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.metrics.is_empty(), "--metrics names no process");
    let client = Client::new(&args.admin);
    let http = reqwest::Client::new();
    let current = client.runtime_config(&args.key).await?;
    let (mut version, mut config) = (current.version, current.config);
    let mut spread = Histogram::<u64>::new(3)?;
    let mut last = Histogram::<u64>::new(3)?;
    for i in 0..args.changes {
        config.flags.insert(
            "bench".into(),
            Flag {
                enabled: i % 2 == 0,
                percent: None,
                users: None,
            },
        );
        let sent = hubbub_queue::clock::now_ms() as f64;
        version = client
            .put_runtime_config(&args.key, version, &config)
            .await?;
        let mut times = Vec::with_capacity(args.metrics.len());
        for base in &args.metrics {
            times.push(applied_at(&http, base.trim_end_matches('/'), version).await?);
        }
        let first = times.iter().copied().fold(f64::INFINITY, f64::min);
        let latest = times.iter().copied().fold(0.0, f64::max);
        // Microseconds in the histograms (the timestamps have millisecond precision).
        spread.record(((latest - first) * 1000.0).max(0.0) as u64)?;
        last.record(((latest - sent) * 1000.0).max(0.0) as u64)?;
    }
    let ms = |h: &Histogram<u64>, q: f64| super::ms(h.value_at_quantile(q));
    let report = Report {
        processes: args.metrics.len(),
        changes: args.changes,
        spread_p50_ms: ms(&spread, 0.5),
        spread_p99_ms: ms(&spread, 0.99),
        spread_max_ms: super::ms(spread.max()),
        last_apply_p50_ms: ms(&last, 0.5),
        last_apply_p99_ms: ms(&last, 0.99),
        last_apply_max_ms: super::ms(last.max()),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} processes, {} changes: spread between the first and the last to apply p50 {:.1} ms, \
             p99 {:.1} ms, max {:.1} ms; from the PUT to the last apply p50 {:.1} ms, p99 {:.1} ms, \
             max {:.1} ms",
            report.processes,
            report.changes,
            report.spread_p50_ms,
            report.spread_p99_ms,
            report.spread_max_ms,
            report.last_apply_p50_ms,
            report.last_apply_p99_ms,
            report.last_apply_max_ms
        );
    }
    Ok(())
}
