//! `hubbub bench history`: the latency of a 50-message `message.history` page in a long
//! conversation, with and without reactions and edits (issue 15: a page's cost must not grow
//! with the number of reactions, since reads take the per-message summary and never count).
//!
//! Two conversations of `--messages` messages each are loaded into one store, both with the
//! reader as a member: `plain` (text only) and `busy`, where every `--every`-th message has
//! `--reactions` reactions over five emoji (the reader's among them, so `my_reactions` is read
//! too) and every `--every`-th message (offset by half) was edited once. Loading writes the
//! rows with SQL in large transactions on the store's own schema (the reaction summary column
//! as `reaction.add` keeps it). Then it times `ChatStore::history` pages from random points of
//! each conversation, alternating between them.
//!
//! `--data-dir` keeps the loaded database, and a later run on it skips the load.

use super::ms;
use hdrhistogram::Histogram;
use hubbub_protocol::ConversationKind;
use hubbub_queue::{EmbeddedConfig, EmbeddedQueue};
use hubbub_store::{AccountStore, ChatStore, NewConversation, SqliteStore};
use std::path::PathBuf;
use std::time::Instant;

/// Options of `hubbub bench history`.
#[derive(Debug, clap::Args)]
pub struct HistoryBenchArgs {
    /// Messages per conversation.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Reactions on each reacted message of the busy conversation.
    #[arg(long, default_value_t = 100)]
    reactions: u64,
    /// Every how many messages one is reacted to (and, offset by half, one edited).
    #[arg(long, default_value_t = 10)]
    every: u64,
    /// Timed pages per conversation.
    #[arg(long, default_value_t = 500)]
    pages: usize,
    /// Keep the database here (reused if it holds the bench data already).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Page {
    conversation: &'static str,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    messages_per_conversation: u64,
    reactions_per_reacted_message: u64,
    every: u64,
    load_s: Option<f64>,
    pages: Vec<Page>,
}

const EMOJI: [&str; 5] = ["👍", "❤️", "😂", "🎉", "👀"];

/// Run the benchmark.
pub async fn run(args: HistoryBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.messages >= 100 && args.every >= 2 && args.pages >= 1);
    let tmp = std::env::temp_dir().join(format!("hubbub-bench-history-{}", std::process::id()));
    let dir = args.data_dir.clone().unwrap_or_else(|| tmp.clone());
    std::fs::create_dir_all(&dir)?;
    let queue = EmbeddedQueue::open(dir.join("hubbub.db"), EmbeddedConfig::default())?;
    let store = SqliteStore::open(queue.clone()).await?;
    let reader = match store.user_by_handle("reader").await? {
        Some(u) => u,
        None => {
            store
                .create_user("reader", "not-a-password-hash", None)
                .await?
        }
    };
    let loaded: i64 = queue
        .transact(|conn, _| conn.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0)))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut load_s = None;
    if (loaded as u64) < 2 * args.messages {
        let start = Instant::now();
        for id in ["hplain", "hbusy"] {
            let new = NewConversation {
                id: id.into(),
                creator: reader.id.clone(),
                kind: ConversationKind::Group,
                members: Vec::new(),
                title: Some(id.into()),
                ephemeral: false,
                public: false,
                max_members: 10,
            };
            store.create_conversation(new).await?;
        }
        let batch = 10_000u64;
        for (conversation, busy) in [("hplain", false), ("hbusy", true)] {
            let mut next = 0;
            while next < args.messages {
                let end = (next + batch).min(args.messages);
                let (sender, reactions, every) = (reader.id.clone(), args.reactions, args.every);
                queue
                    .transact(move |conn, _| {
                        let mut message = conn.prepare_cached(
                            "INSERT INTO messages (conversation_id, sender, client_msg_id, text,
                                                   attachments, ts, reactions, edited_ms)
                             VALUES (?1, ?2, ?3, ?4, '[]', ?5, ?6, ?7)",
                        )?;
                        let mut reaction = conn.prepare_cached(
                            "INSERT INTO reactions (message_id, user_id, emoji, ts)
                             VALUES (?1, ?2, ?3, ?4)",
                        )?;
                        let mut version = conn.prepare_cached(
                            "INSERT INTO message_versions (message_id, n, text, ts)
                             VALUES (?1, 1, ?2, ?3)",
                        )?;
                        for n in next..end {
                            let reacted = busy && n % every == 0;
                            let edited = busy && n % every == every / 2;
                            let summary = if reacted {
                                let counts: Vec<serde_json::Value> = EMOJI
                                    .iter()
                                    .enumerate()
                                    .map(|(i, e)| {
                                        let count =
                                            reactions / 5 + u64::from((i as u64) < reactions % 5);
                                        serde_json::json!({"emoji": e, "count": count})
                                    })
                                    .filter(|v| v["count"].as_u64().unwrap_or(0) > 0)
                                    .collect();
                                serde_json::Value::Array(counts).to_string()
                            } else {
                                "[]".to_owned()
                            };
                            let edited_ms = edited.then_some(n as i64 + 1);
                            message.execute(rusqlite::params![
                                conversation,
                                sender,
                                format!("{conversation}-{n}"),
                                format!("message {n} of the history benchmark"),
                                n as i64,
                                summary,
                                edited_ms
                            ])?;
                            let id = conn.last_insert_rowid();
                            if reacted {
                                for r in 0..reactions {
                                    let user = if r == 0 {
                                        sender.clone()
                                    } else {
                                        format!("reactor{r}")
                                    };
                                    reaction.execute(rusqlite::params![
                                        id,
                                        user,
                                        EMOJI[(r % 5) as usize],
                                        n as i64
                                    ])?;
                                }
                            }
                            if edited {
                                version.execute(rusqlite::params![
                                    id,
                                    format!("first text of {n}"),
                                    n as i64
                                ])?;
                            }
                        }
                        Ok::<_, rusqlite::Error>(())
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("loading: {e}"))?;
                next = end;
            }
        }
        load_s = Some(start.elapsed().as_secs_f64());
    }

    // Page starts: message ids of each conversation, read once.
    let mut starts = Vec::new();
    for conversation in ["hplain", "hbusy"] {
        let ids: Vec<i64> = queue
            .transact(move |conn, _| {
                let mut st = conn.prepare("SELECT id FROM messages WHERE conversation_id = ?1")?;
                let ids = st
                    .query_map([conversation], |r| r.get(0))?
                    .collect::<Result<Vec<i64>, _>>()?;
                Ok::<_, rusqlite::Error>(ids)
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(!ids.is_empty(), "no messages in {conversation}");
        starts.push(ids);
    }
    let mut hists = [
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?,
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?,
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..args.pages {
        for (c, conversation) in ["hplain", "hbusy"].into_iter().enumerate() {
            let before = starts[c][rng.usize(..starts[c].len())].to_string();
            let t = Instant::now();
            let (page, _) = store
                .history(&reader.id, conversation, Some(&before), 50)
                .await?;
            let us = t.elapsed().as_micros() as u64;
            std::hint::black_box(page);
            hists[c].record(us.max(1))?;
        }
    }
    let pages = ["plain", "busy"]
        .into_iter()
        .zip(&hists)
        .map(|(conversation, h)| Page {
            conversation,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        })
        .collect();
    let report = Report {
        messages_per_conversation: args.messages,
        reactions_per_reacted_message: args.reactions,
        every: args.every,
        load_s,
        pages,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        if let Some(s) = report.load_s {
            println!(
                "history: loaded 2 x {} messages in {s:.1} s",
                report.messages_per_conversation
            );
        }
        for p in &report.pages {
            println!(
                "history: {} conversation, 50-message pages: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                p.conversation, p.p50_ms, p.p99_ms, p.max_ms
            );
        }
    }
    if args.data_dir.is_none() {
        drop(store);
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}
