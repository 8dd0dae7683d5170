//! `hubbub bench search`: full-text search latency over a large message store.
//!
//! Loads `--messages` messages into `--conversations` conversations of one user (the searcher
//! is in all of them: the worst case, every message is a candidate). Texts are 8 to 16 words
//! drawn from a 20,000-word synthetic vocabulary with a Zipf distribution, like real text: a
//! few words are in most messages, most words in few. Loading uses the store's own write path
//! (the queue's writer thread) with large transactions and the store's schema, so the FTS index
//! is built by the same triggers as in production. Then it times `Store::search` for a rare,
//! a medium and a very common word, and for two words together.
//!
//! `--data-dir` keeps the loaded database, and a later run on it skips the load.

use super::ms;
use hdrhistogram::Histogram;
use hubbub_protocol::ConversationKind;
use hubbub_queue::{EmbeddedConfig, EmbeddedQueue};
use hubbub_store::{AccountStore, ChatStore, NewConversation, SqliteStore};
use std::path::PathBuf;
use std::time::Instant;

/// Options of `hubbub bench search`.
#[derive(Debug, clap::Args)]
pub struct SearchBenchArgs {
    /// Messages to load.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Conversations they are spread over.
    #[arg(long, default_value_t = 100)]
    conversations: u64,
    /// Timed searches per query kind.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Keep the database here (reused if it holds the bench data already).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

const VOCABULARY: usize = 20_000;
const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ra", "ten", "su", "vo", "ne", "pri", "da", "gu", "shi", "bel", "ro", "fa",
    "zu", "ti", "mor", "en", "pa",
];

/// The word of rank `r` (0 is the most frequent): three or four syllables, all distinct.
fn word(r: usize) -> String {
    let n = SYLLABLES.len();
    let mut w = String::new();
    let mut x = r;
    for _ in 0..3 {
        w.push_str(SYLLABLES[x % n]);
        x /= n;
    }
    if x > 0 {
        w.push_str(SYLLABLES[x % n]);
    }
    w
}

/// A Zipf sampler over ranks 0..VOCABULARY.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new() -> Self {
        let mut cumulative = Vec::with_capacity(VOCABULARY);
        let mut sum = 0.0;
        for r in 1..=VOCABULARY {
            sum += 1.0 / r as f64;
            cumulative.push(sum);
        }
        Zipf { cumulative }
    }
    fn sample(&self, rng: &mut fastrand::Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let x = rng.f64() * total;
        self.cumulative
            .partition_point(|c| *c < x)
            .min(VOCABULARY - 1)
    }
}

#[derive(Debug, serde::Serialize)]
struct QueryReport {
    query: String,
    matches: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    messages: u64,
    conversations: u64,
    load_s: Option<f64>,
    queries: Vec<QueryReport>,
}

/// Run the benchmark.
pub async fn run(args: SearchBenchArgs) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("hubbub-bench-search-{}", std::process::id()));
    let dir = args.data_dir.clone().unwrap_or_else(|| tmp.clone());
    std::fs::create_dir_all(&dir)?;
    let queue = EmbeddedQueue::open(dir.join("hubbub.db"), EmbeddedConfig::default())?;
    let store = SqliteStore::open(queue.clone()).await?;
    let user = match store.user_by_handle("searcher").await? {
        Some(u) => u,
        None => {
            store
                .create_user("searcher", "not-a-password-hash", None)
                .await?
        }
    };
    let loaded: i64 = queue
        .transact(|conn, _| conn.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0)))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut load_s = None;
    if (loaded as u64) < args.messages {
        let start = Instant::now();
        let mut ids = Vec::new();
        for c in 0..args.conversations.max(1) {
            let new = NewConversation {
                id: format!("cbench{c}"),
                creator: user.id.clone(),
                kind: ConversationKind::Group,
                members: Vec::new(),
                title: Some(format!("bench {c}")),
                ephemeral: false,
                public: false,
                max_members: 10,
            };
            ids.push(store.create_conversation(new).await?.value.id);
        }
        let zipf = std::sync::Arc::new(Zipf::new());
        let batch = 20_000u64;
        let mut next = loaded as u64;
        while next < args.messages {
            let end = (next + batch).min(args.messages);
            let (ids, zipf, sender) = (ids.clone(), zipf.clone(), user.id.clone());
            queue
                .transact(move |conn, _| {
                    let mut rng = fastrand::Rng::with_seed(next);
                    let mut stmt = conn.prepare_cached(
                        "INSERT INTO messages (conversation_id, sender, client_msg_id, text, attachments, ts)
                         VALUES (?1, ?2, ?3, ?4, '[]', ?5)",
                    )?;
                    for n in next..end {
                        let words = 8 + rng.usize(0..9);
                        let text: Vec<String> = (0..words).map(|_| word(zipf.sample(&mut rng))).collect();
                        let conversation = &ids[(n % ids.len() as u64) as usize];
                        stmt.execute(rusqlite::params![conversation, sender, format!("bench-{n}"), text.join(" "), n as i64])?;
                    }
                    Ok::<_, rusqlite::Error>(())
                })
                .await
                .map_err(|e| anyhow::anyhow!("loading: {e}"))?;
            next = end;
            if !args.json && next.is_multiple_of(200_000) {
                eprintln!("loaded {next} messages");
            }
        }
        load_s = Some(start.elapsed().as_secs_f64());
    }

    let mut reports = Vec::new();
    let kinds = [
        ("rare word (rank 15,000)".to_owned(), word(15_000)),
        ("medium word (rank 300)".to_owned(), word(300)),
        ("common word (rank 1)".to_owned(), word(0)),
        (
            "two words (ranks 300 and 2,000)".to_owned(),
            format!("{} {}", word(300), word(2_000)),
        ),
    ];
    for (label, query) in kinds {
        let q = query.clone();
        let matches: i64 = queue
            .transact(move |conn, _| {
                let fts = q
                    .split(' ')
                    .map(|w| format!("\"{w}\""))
                    .collect::<Vec<_>>()
                    .join(" ");
                conn.query_row(
                    "SELECT COUNT(*) FROM messages_fts WHERE messages_fts MATCH ?1",
                    [fts],
                    |r| r.get(0),
                )
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        for _ in 0..args.queries {
            let t = Instant::now();
            let found = store.search(&user.id, &query, None, 50).await?;
            h.record(t.elapsed().as_micros().max(1) as u64)?;
            anyhow::ensure!(
                !found.is_empty() || matches == 0,
                "search found nothing for {query}"
            );
        }
        reports.push(QueryReport {
            query: label,
            matches: matches as u64,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        });
    }
    let report = Report {
        messages: args.messages,
        conversations: args.conversations,
        load_s,
        queries: reports,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        if let Some(s) = report.load_s {
            println!("search: loaded {} messages in {:.1} s", report.messages, s);
        }
        for q in &report.queries {
            println!(
                "search over {} messages: {} ({} matches): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                report.messages, q.query, q.matches, q.p50_ms, q.p99_ms, q.max_ms
            );
        }
    }
    drop(store);
    drop(queue);
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}
