//! Crash test: a child process sends, receives and acks in a loop, reporting each step on a
//! pipe; it is killed with SIGKILL at random moments, many times over. After each kill the
//! parent opens the database itself and checks the guarantees:
//! - no send that returned is lost (it is still queued, or an ack for it had begun);
//! - an ack that returned is final: that message is never queued or delivered again;
//! - a received, unacked message comes back after its visibility timeout, restart or not.
//!
//! The child is this same test binary, run again with `HUBBUB_CRASH_CHILD` set to the
//! database path; its test function returns at once when that variable is absent.

use hubbub_queue::*;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const CHILD_ENV: &str = "HUBBUB_CRASH_CHILD";
const ROUNDS: usize = 25;
const VISIBILITY: Duration = Duration::from_millis(300);

/// The child: runs until killed. Lines: `@@SENT b`, `@@RECV b`, `@@ACKING b`, `@@ACKED b`.
#[test]
fn crash_child_process() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var("HUBBUB_CRASH_ROUND")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async move {
        let q = EmbeddedQueue::open(&path, EmbeddedConfig::default()).expect("open");
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let say = {
            let out = out.clone();
            move |line: String| {
                let mut o = out.lock().expect("stdout");
                let _ = writeln!(o, "@@{line}");
                let _ = o.flush();
            }
        };
        let mut tasks = Vec::new();
        for p in 0..3 {
            let (q, say) = (q.clone(), say.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let body = format!("r{round}-p{p}-{i}");
                    q.send("crash", body.clone().into_bytes(), SendOptions::default())
                        .await
                        .expect("send");
                    say(format!("SENT {body}"));
                }
            }));
        }
        for c in 0..2 {
            let (q, say) = (q.clone(), say.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let opts = ReceiveOptions {
                        max: 8,
                        wait: Duration::from_millis(20),
                        visibility: VISIBILITY,
                        max_run: 1,
                    };
                    let got = q.receive("crash", opts).await.expect("receive");
                    for (n, m) in got.into_iter().enumerate() {
                        let body = String::from_utf8(m.body).expect("utf8");
                        say(format!("RECV {body}"));
                        // Leave some unacked on purpose: they must come back.
                        if (n + c) % 5 == 4 {
                            continue;
                        }
                        say(format!("ACKING {body}"));
                        q.ack("crash", &m.receipt).await.expect("ack");
                        say(format!("ACKED {body}"));
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[derive(Default)]
struct Seen {
    sent: HashSet<String>,
    acking: HashSet<String>,
    acked: HashSet<String>,
}

/// What the database holds for the queue, read directly (the child is dead; nothing runs).
fn stored_bodies(path: &std::path::Path) -> HashSet<String> {
    let conn = rusqlite::Connection::open(path).expect("open after kill");
    // Killed before the schema was created: nothing can have been stored.
    let Ok(mut stmt) = conn.prepare("SELECT body FROM q_messages WHERE queue = 'crash'") else {
        return HashSet::new();
    };
    let rows = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .expect("query");
    rows.map(|r| String::from_utf8(r.expect("row")).expect("utf8"))
        .collect()
}

/// Receive everything with a clock an hour ahead: every lease has lapsed by then, so every
/// unacked message must come out.
fn drain_in_the_future(path: &std::path::Path) -> HashSet<String> {
    let clock = ManualClock::new(SystemClock.now_ms() + 3_600_000);
    let config = EmbeddedConfig {
        default_queue: QueueConfig {
            max_receives: u32::MAX,
        },
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let q = EmbeddedQueue::open_with_clock(path, config, Arc::new(clock)).expect("reopen");
        let mut bodies = HashSet::new();
        loop {
            let opts = ReceiveOptions {
                max: 1000,
                wait: Duration::ZERO,
                visibility: Duration::from_secs(600),
                max_run: 1,
            };
            let got = q.receive("crash", opts).await.expect("receive");
            if got.is_empty() {
                return bodies;
            }
            for m in got {
                assert!(
                    bodies.insert(String::from_utf8(m.body).expect("utf8")),
                    "delivered twice"
                );
            }
        }
    })
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hubbub.db");
    let exe = std::env::current_exe().expect("test binary");
    let seed = std::env::var("HUBBUB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    println!("crash test seed {seed} (HUBBUB_CRASH_SEED to repeat)");
    let mut seen = Seen::default();
    let mut redelivered_after_restart = 0usize;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "crash::crash_child_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .env("HUBBUB_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("pipe");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(rng.u64(80..400)));
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let lines = reader.join().expect("reader");
        for line in lines {
            // Reports start with a marker: libtest may print on the same line before it.
            let Some(at) = line.find("@@") else { continue };
            let Some((what, body)) = line[at + 2..].split_once(' ') else {
                continue;
            };
            let body = body.to_owned();
            match what {
                "SENT" => {
                    seen.sent.insert(body);
                }
                "RECV" => {
                    assert!(
                        !seen.acked.contains(&body),
                        "round {round}: {body} delivered after its ack returned"
                    );
                    if !body.starts_with(&format!("r{round}-")) {
                        redelivered_after_restart += 1;
                    }
                }
                "ACKING" => {
                    seen.acking.insert(body);
                }
                "ACKED" => {
                    seen.acked.insert(body);
                }
                _ => {}
            }
        }
        let queued = stored_bodies(&path);
        for body in &seen.acked {
            assert!(
                !queued.contains(body),
                "round {round}: acked {body} is queued again"
            );
        }
        for body in &seen.sent {
            assert!(
                queued.contains(body) || seen.acking.contains(body),
                "round {round}: {body} was sent (send returned) but is lost"
            );
        }
    }
    // Finally every message that was sent and not acked must be receivable once its lease ends.
    let drained = drain_in_the_future(&path);
    for body in &seen.sent {
        assert!(
            drained.contains(body) || seen.acking.contains(body),
            "{body} was sent, never acked, and did not come back"
        );
    }
    for body in &seen.acked {
        assert!(!drained.contains(body), "acked {body} came back");
    }
    assert!(
        seen.sent.len() > 100,
        "the child did real work ({} sends)",
        seen.sent.len()
    );
    assert!(
        seen.acked.len() > 50,
        "the child acked ({} acks)",
        seen.acked.len()
    );
    assert!(
        redelivered_after_restart > 0,
        "unacked messages came back after restarts"
    );
    println!(
        "crash test: {ROUNDS} kills, {} sends, {} acks, {} redeliveries across restarts",
        seen.sent.len(),
        seen.acked.len(),
        redelivered_after_restart
    );
}
