//! The conformance suite on the embedded backend, plus what only a file-backed queue has:
//! reopening, bad files, a full disk.

use hubbub_queue::conformance::ConformanceEnv;
use hubbub_queue::*;
use std::sync::Arc;
use std::time::Duration;

async fn embedded_env() -> ConformanceEnv {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_700_000_000_000);
    let q = EmbeddedQueue::open_with_clock(
        dir.path().join("hubbub.db"),
        EmbeddedConfig::default(),
        Arc::new(clock.clone()),
    )
    .expect("open");
    ConformanceEnv {
        queue: Arc::new(q.clone()),
        log: Arc::new(q),
        clock: Arc::new(clock),
        unit: Duration::from_secs(1),
        guard: Box::new(dir),
    }
}

mod conformance {
    use super::*;
    hubbub_queue::queue_conformance_tests!(embedded_env());
}

#[tokio::test]
async fn state_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hubbub.db");
    let clock = ManualClock::new(1_000_000);
    let q =
        EmbeddedQueue::open_with_clock(&path, EmbeddedConfig::default(), Arc::new(clock.clone()))
            .expect("open");
    q.send("q", b"kept".to_vec(), SendOptions::default().dedupe("d"))
        .await
        .expect("send");
    q.send("q", b"leased".to_vec(), SendOptions::default())
        .await
        .expect("send");
    q.send("q", b"acked".to_vec(), SendOptions::default())
        .await
        .expect("send");
    let got = q
        .receive(
            "q",
            ReceiveOptions {
                max: 3,
                ..Default::default()
            },
        )
        .await
        .expect("r");
    q.ack("q", &got[2].receipt).await.expect("ack");
    q.nack("q", &got[0].receipt, Duration::ZERO)
        .await
        .expect("nack");
    Log::append(&q, "l", vec![b"entry".to_vec()])
        .await
        .expect("append");
    drop(q);

    let q =
        EmbeddedQueue::open_with_clock(&path, EmbeddedConfig::default(), Arc::new(clock.clone()))
            .expect("reopen");
    // The lease on "leased" is still running after the restart...
    let now = q
        .receive(
            "q",
            ReceiveOptions {
                max: 10,
                ..Default::default()
            },
        )
        .await
        .expect("r");
    assert_eq!(
        now.iter().map(|m| m.body.as_slice()).collect::<Vec<_>>(),
        [&b"kept"[..]]
    );
    // ...and ends on time; the dedupe id is still remembered; the acked one never returns.
    clock.advance(Duration::from_secs(31));
    let later = q
        .receive(
            "q",
            ReceiveOptions {
                max: 10,
                ..Default::default()
            },
        )
        .await
        .expect("r");
    let mut names: Vec<_> = later.iter().map(|m| m.body.clone()).collect();
    names.sort();
    assert_eq!(names, [b"kept".to_vec(), b"leased".to_vec()]);
    assert!(
        q.send("q", b"kept".to_vec(), SendOptions::default().dedupe("d"))
            .await
            .expect("s")
            .duplicate
    );
    assert_eq!(Log::read(&q, "l", 0, 10).await.expect("read").len(), 1);
}

#[test]
fn a_foreign_file_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hubbub.db");
    std::fs::write(
        &path,
        b"this is not a database, it is a shopping list\n".repeat(200),
    )
    .expect("write");
    let e = EmbeddedQueue::open(&path, EmbeddedConfig::default()).expect_err("garbage file");
    let msg = e.to_string();
    assert!(matches!(e, QueueError::Corrupt { .. }), "{e:?}");
    assert!(
        msg.contains("hubbub.db") && msg.contains("not a hubbub database"),
        "{msg}"
    );

    let other = dir.path().join("other.db");
    {
        let conn = rusqlite::Connection::open(&other).expect("open");
        conn.execute_batch("CREATE TABLE notes (t TEXT); INSERT INTO notes VALUES ('x');")
            .expect("other app");
    }
    let e = EmbeddedQueue::open(&other, EmbeddedConfig::default()).expect_err("foreign db");
    assert!(e.to_string().contains("another application"), "{e}");
    assert!(e.to_string().contains("other.db"), "{e}");
}

/// Wait (bounded) until the last connection closed: SQLite then removes the WAL file.
fn wait_closed(path: &std::path::Path) {
    let wal = path.with_extension("db-wal");
    for _ in 0..200 {
        if !wal.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} still open", path.display());
}

#[test]
fn a_damaged_header_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hubbub.db");
    drop(EmbeddedQueue::open(&path, EmbeddedConfig::default()).expect("create"));
    wait_closed(&path);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[..16].copy_from_slice(b"garbage garbage!");
    std::fs::write(&path, bytes).expect("write");
    let e = EmbeddedQueue::open(&path, EmbeddedConfig::default()).expect_err("damaged");
    assert!(matches!(e, QueueError::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("hubbub.db"), "{e}");
}

#[tokio::test]
async fn a_full_disk_fails_the_send_and_keeps_what_was_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hubbub.db");
    let config = EmbeddedConfig {
        max_db_bytes: Some(512 * 1024),
        ..Default::default()
    };
    let q = EmbeddedQueue::open(&path, config.clone()).expect("open");
    let body = vec![7u8; 16 * 1024];
    let mut accepted = 0;
    let mut full = None;
    for _ in 0..200 {
        match q.send("q", body.clone(), SendOptions::default()).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    assert!(matches!(full, Some(QueueError::DiskFull)), "{full:?}");
    assert!(accepted > 0);
    // A receive leases rows, which is a write too; whatever fails, fails whole. After a
    // restart with room to spare, exactly the accepted messages are there, intact.
    drop(q);
    wait_closed(&path);
    let q = EmbeddedQueue::open(&path, EmbeddedConfig::default()).expect("reopen");
    assert_eq!(q.stats("q").await.expect("stats").visible, accepted as u64);
    let got = q
        .receive(
            "q",
            ReceiveOptions {
                max: 1000,
                ..Default::default()
            },
        )
        .await
        .expect("r");
    assert_eq!(got.len(), accepted);
    assert!(got.iter().all(|m| m.body == body));
    q.send("q", body.clone(), SendOptions::default())
        .await
        .expect("room again");
}

#[tokio::test]
async fn concurrent_senders_share_commits_and_all_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q =
        EmbeddedQueue::open(dir.path().join("hubbub.db"), EmbeddedConfig::default()).expect("open");
    let mut tasks = Vec::new();
    for t in 0..16 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                q.send("q", format!("{t}-{i}").into_bytes(), SendOptions::default())
                    .await
                    .expect("send");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    assert_eq!(q.stats("q").await.expect("stats").visible, 800);
}

/// A service's own rows and its outgoing messages commit together, or not at all.
#[tokio::test]
async fn transact_is_a_transactional_outbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q =
        EmbeddedQueue::open(dir.path().join("hubbub.db"), EmbeddedConfig::default()).expect("open");
    q.transact(|conn, _| conn.execute_batch("CREATE TABLE notes (t TEXT NOT NULL)"))
        .await
        .expect("create table");
    q.transact(|conn, outbox| {
        conn.execute("INSERT INTO notes VALUES ('kept')", [])?;
        outbox
            .send("events", vec![Outgoing::new("note kept")])
            .expect("send");
        outbox
            .append("archive", vec![b"note kept".to_vec()])
            .expect("append");
        Ok::<_, rusqlite::Error>(())
    })
    .await
    .expect("commit");
    // A failing closure keeps neither its rows nor its messages.
    let err = q
        .transact(|conn, outbox| {
            conn.execute("INSERT INTO notes VALUES ('dropped')", [])?;
            outbox
                .send("events", vec![Outgoing::new("note dropped")])
                .expect("send");
            conn.execute("INSERT INTO no_such_table VALUES (1)", [])?;
            Ok::<_, rusqlite::Error>(())
        })
        .await
        .expect_err("fails");
    assert!(matches!(err, TransactError::Caller(_)), "{err:?}");
    // A queue error inside (an oversized body) also keeps nothing.
    let err = q
        .transact(|conn, outbox| {
            conn.execute("INSERT INTO notes VALUES ('dropped too')", [])
                .expect("insert");
            outbox
                .send("events", vec![Outgoing::new(vec![0u8; 300 * 1024])])
                .map(|_| ())
        })
        .await
        .expect_err("too large");
    assert!(
        matches!(err, TransactError::Caller(QueueError::TooLarge { .. })),
        "{err:?}"
    );

    let notes: Vec<String> = q
        .transact(|conn, _| {
            let mut stmt = conn.prepare("SELECT t FROM notes")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<Result<Vec<String>, _>>()
        })
        .await
        .expect("read");
    assert_eq!(notes, ["kept"]);
    let got = q
        .receive(
            "events",
            ReceiveOptions {
                max: 10,
                ..Default::default()
            },
        )
        .await
        .expect("r");
    assert_eq!(
        got.iter().map(|m| m.body.as_slice()).collect::<Vec<_>>(),
        [&b"note kept"[..]]
    );
    assert_eq!(
        Log::read(&q, "archive", 0, 10).await.expect("read").len(),
        1
    );
}

/// After a crash, the sole owner of the file releases the dead process's leases at once,
/// keeping receive counts; per-key order holds.
#[tokio::test]
async fn release_all_leases_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hubbub.db");
    let q = EmbeddedQueue::open(&path, EmbeddedConfig::default()).expect("open");
    for (body, key) in [("a1", "a"), ("a2", "a"), ("free", "z")] {
        q.send(
            "q",
            body.as_bytes().to_vec(),
            SendOptions::default().key(key),
        )
        .await
        .expect("send");
    }
    q.send(
        "q",
        b"later".to_vec(),
        SendOptions::default().delay(Duration::from_secs(3600)),
    )
    .await
    .expect("send");
    let opts = ReceiveOptions {
        max: 10,
        visibility: Duration::from_secs(3600),
        ..Default::default()
    };
    assert_eq!(
        q.receive("q", opts).await.expect("receive").len(),
        2,
        "a1 and free leased"
    );
    drop(q);
    let q = EmbeddedQueue::open(&path, EmbeddedConfig::default()).expect("reopen");
    assert!(
        q.receive("q", opts).await.expect("receive").is_empty(),
        "still leased"
    );
    assert_eq!(q.release_all_leases().await.expect("release"), 2);
    let again = q.receive("q", opts).await.expect("receive");
    let mut names: Vec<_> = again
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(&m.body).into_owned(),
                m.receive_count,
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [("a1".to_owned(), 2), ("free".to_owned(), 2)],
        "delayed and key-waiting ones untouched"
    );
}
