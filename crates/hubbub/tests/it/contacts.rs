//! PROTOCOL.md 1.1 contacts over real sockets: `contact.set/remove/list`, each change a
//! durable `contact.updated` to the owner's sessions only; bad input refused with its code,
//! changing nothing; notes never in clear text in the database files; and
//! `hubbub rotate-note-keys` keeping every old note readable.

use crate::support::*;
use hubbub::client::Socket;
use hubbub_protocol::{Contact, ReplyData, Request, ServerFrame};

fn set(user: &str, group: Option<&str>, note: Option<&str>) -> Request {
    Request::ContactSet {
        user: user.into(),
        group: group.map(str::to_owned),
        note: note.map(str::to_owned),
    }
}

fn contact_of(data: ReplyData) -> Contact {
    match data {
        ReplyData::Contact { contact } => contact,
        other => panic!("not a contact: {other:?}"),
    }
}

async fn list(socket: &mut Socket) -> Vec<Contact> {
    match ok(socket, Request::ContactList {}).await {
        ReplyData::Contacts { contacts } => contacts,
        other => panic!("not contacts: {other:?}"),
    }
}

fn is_contact_event(f: &ServerFrame) -> bool {
    matches!(f, ServerFrame::ContactUpdated { .. })
}

#[tokio::test]
async fn contact_changes_reach_only_the_owners_sessions() {
    let s = server().await;
    let (_alice, at) = s.user("ct_alice").await;
    let (bob, bt) = s.user("ct_bob").await;
    let (mut a1, _) = s.connect(&at).await;
    let (mut a2, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;

    let c = contact_of(ok(&mut a1, set(&bob.id, Some("work"), Some("met at the fair"))).await);
    assert_eq!(
        (c.user.as_str(), c.group.as_deref(), c.note.as_deref()),
        (bob.id.as_str(), Some("work"), Some("met at the fair"))
    );
    for sock in [&mut a1, &mut a2] {
        let f = until(sock, "contact.updated", is_contact_event).await;
        assert!(
            matches!(&f, ServerFrame::ContactUpdated { seq: 1, contact: Some(k), removed: false, .. } if *k == c),
            "{f:?}"
        );
    }
    // A group change keeps the note.
    let c2 = contact_of(ok(&mut a2, set(&bob.id, Some("friends"), None)).await);
    assert_eq!(c2.note.as_deref(), Some("met at the fair"));
    assert_eq!(list(&mut a1).await, vec![c2.clone()]);
    // Private: bob lists nothing.
    assert!(list(&mut b).await.is_empty());

    assert_eq!(
        ok(
            &mut a1,
            Request::ContactRemove {
                user: bob.id.clone()
            }
        )
        .await,
        ReplyData::Empty {}
    );
    let f = until(&mut a2, "the removal", |f| {
        matches!(f, ServerFrame::ContactUpdated { removed: true, .. })
    })
    .await;
    assert!(
        matches!(&f, ServerFrame::ContactUpdated { seq: 3, contact: None, user: Some(u), .. } if *u == bob.id),
        "{f:?}"
    );
    assert!(list(&mut a1).await.is_empty());
    // Removing again: `{}`, no event.
    ok(
        &mut a1,
        Request::ContactRemove {
            user: bob.id.clone(),
        },
    )
    .await;

    // The replay: three changes, gapless, the note included; bob has none.
    let events = all_events(&s, &at).await;
    let seqs: Vec<u64> = events.iter().filter_map(ServerFrame::seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert!(matches!(
        &events[0],
        ServerFrame::ContactUpdated { contact: Some(k), .. } if k.note.as_deref() == Some("met at the fair")
    ));
    assert!(!all_events(&s, &bt).await.iter().any(is_contact_event));
}

#[tokio::test]
async fn bad_contact_input_is_refused_and_changes_nothing() {
    let s = server().await;
    let (alice, at) = s.user("ctb_alice").await;
    let (bob, _) = s.user("ctb_bob").await;
    let (mut a, _) = s.connect(&at).await;
    let before = contact_of(ok(&mut a, set(&bob.id, Some("g"), Some("n"))).await);

    err(
        &mut a,
        set(&bob.id, Some(&"g".repeat(65)), None),
        "too_large",
    )
    .await;
    err(
        &mut a,
        set(&bob.id, None, Some(&"n".repeat(1001))),
        "too_large",
    )
    .await;
    err(&mut a, set("u_nobody", None, Some("n")), "not_found").await;
    err(&mut a, set(&alice.id, None, Some("me")), "bad_request").await;
    // The queue's sealed form cannot be forged.
    err(
        &mut a,
        set(&bob.id, None, Some("\u{1}sealed:k1:00:00")),
        "bad_request",
    )
    .await;

    assert_eq!(list(&mut a).await, vec![before]);
    let events = all_events(&s, &at).await;
    assert_eq!(events.len(), 1, "only the first set: {events:?}");
}

/// Every byte of the data directory's files (the database, its WAL): the secret must be in
/// none of them.
fn data_dir_holds(dir: &std::path::Path, secret: &[u8]) -> bool {
    std::fs::read_dir(dir)
        .expect("data dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .any(|e| {
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            let at = bytes.windows(secret.len()).position(|w| w == secret);
            if let Some(at) = at {
                eprintln!(
                    "{} at {at}: {:?}",
                    e.path().display(),
                    String::from_utf8_lossy(
                        &bytes[at.saturating_sub(300)..(at + 100).min(bytes.len())]
                    )
                );
            }
            at.is_some()
        })
}

#[tokio::test]
async fn notes_are_sealed_at_rest_and_survive_key_rotation() {
    let mut s = server().await;
    let (_alice, at) = s.user("ctk_alice").await;
    let (bob, _) = s.user("ctk_bob").await;
    let (carol, _) = s.user("ctk_carol").await;
    let secret = "zebra marmalade forty-two";
    {
        let (mut a, _) = s.connect(&at).await;
        ok(&mut a, set(&bob.id, Some("plain group"), Some(secret))).await;
        a.close().await;
    }
    let data_dir = s.config.data_dir.clone();
    // The test can fail: the group, which is not sealed, is found.
    assert!(data_dir_holds(&data_dir, b"plain group"));
    assert!(!data_dir_holds(&data_dir, secret.as_bytes()));

    // Stop, rotate, start again.
    let running = s.running.take().expect("running");
    let addr = running.addr;
    running.shutdown().await;
    let keys = std::fs::read_to_string(data_dir.join("note-keys")).expect("key file");
    assert!(keys.lines().any(|l| l.starts_with("k1 ")));
    let (current, resealed) = hubbub::serve::rotate_keys(&s.config).await.expect("rotate");
    // The note, and the event that carried it.
    assert_eq!((current.as_str(), resealed), ("k2", 2));
    let keys = std::fs::read_to_string(data_dir.join("note-keys")).expect("key file");
    assert!(keys.lines().any(|l| l.starts_with("k1 ")), "old keys stay");
    assert!(keys.lines().any(|l| l.starts_with("k2 ")));
    let mut config = s.config.clone();
    config.listen = addr;
    s.running = Some(hubbub::serve::start(config).await.expect("restart"));

    let (mut a, _) = s.connect(&at).await;
    let listed = list(&mut a).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].note.as_deref(),
        Some(secret),
        "the old note reads"
    );
    let newer = "okapi lantern nineteen";
    ok(&mut a, set(&carol.id, None, Some(newer))).await;
    assert_eq!(list(&mut a).await.len(), 2);
    a.close().await;
    // The event sealed under the old key still replays.
    let events = all_events(&s, &at).await;
    assert!(events.iter().any(|f| matches!(
        f,
        ServerFrame::ContactUpdated { contact: Some(k), .. } if k.note.as_deref() == Some(secret)
    )));
    assert!(!data_dir_holds(&data_dir, secret.as_bytes()));
    assert!(!data_dir_holds(&data_dir, newer.as_bytes()));
}
