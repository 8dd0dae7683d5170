//! The edge's one channel-list loader: a load of a user's channels (the `channels` module)
//! is handed here, and what has gathered meanwhile is read in one store call
//! ([`hubbub_store::ChatStore::channels_of_users`], one statement on PostgreSQL).
//!
//! Why: a channel made with 100,000 members tells each of them so, and every edge loads the
//! channel list of each of its users it told before writing the event. One query each was
//! 17,000 queries at once per edge on a pool of 8 connections: loads timed out waiting for a
//! connection (those members were out of the channel until a retry), and so did the edge's
//! store probe, which then refused every write `unavailable` (docs/benchmarks.md). Batched,
//! they are a few dozen statements.
//!
//! Order: loads are taken in the order they were begun (the caller hands its job over under
//! the sessions' lock that numbered it), one batch at a time, so a load begun later is read
//! in the same batch or a later one, never from an older state.

use hubbub_store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The most users one batch reads.
const MAX_BATCH: usize = 1024;

/// One user's load: the user and where the list goes.
pub(crate) struct LoadJob {
    pub(crate) user: String,
    pub(crate) reply: oneshot::Sender<Result<Vec<String>, StoreError>>,
}

/// How long one batch may take before its loads are answered `unavailable` (the pool's own
/// wait bounds only getting a connection, not a statement that hangs): one stuck read must not
/// hold every session opening on this edge.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Answer loads as they come, each time all that gathered while the last batch was read,
/// until cancelled or every sender is gone (a load left waiting then is dropped: its caller
/// sees the edge stopping).
pub(crate) async fn load_channels(
    store: Arc<dyn Store>,
    mut jobs: mpsc::UnboundedReceiver<LoadJob>,
    cancel: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            job = jobs.recv() => job,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        crate::take_waiting(&mut jobs, &mut batch, MAX_BATCH);
        let users: Vec<String> = batch.iter().map(|j| j.user.clone()).collect();
        let read = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            read = tokio::time::timeout(BATCH_TIMEOUT, store.channels_of_users(&users)) => read,
        };
        match read {
            Ok(Ok(lists)) if lists.len() == batch.len() => {
                for (job, list) in batch.into_iter().zip(lists) {
                    let _ = job.reply.send(Ok(list));
                }
            }
            Ok(Ok(lists)) => answer_all(
                batch,
                &StoreError::Internal(format!(
                    "{} channel lists for {} users",
                    lists.len(),
                    users.len()
                )),
            ),
            Ok(Err(e)) => answer_all(batch, &e),
            Err(_) => answer_all(
                batch,
                &StoreError::Unavailable("channel lists not read in time".into()),
            ),
        }
    }
}

fn answer_all(batch: Vec<LoadJob>, e: &StoreError) {
    for job in batch {
        let _ = job.reply.send(Err(e.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hubbub_protocol::ConversationKind;
    use hubbub_queue::{EmbeddedConfig, EmbeddedQueue};
    use hubbub_store::{AccountStore, ChatStore, NewConversation, SqliteStore};

    #[tokio::test]
    async fn loads_gathered_together_are_answered_each_with_its_own_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = EmbeddedQueue::open(dir.path().join("hubbub.db"), EmbeddedConfig::default())
            .expect("queue");
        let store = SqliteStore::open(queue).await.expect("store");
        for u in ["owner", "fan", "other"] {
            store.ensure_user(u, Some(u)).await.expect("user");
        }
        store
            .create_conversation(NewConversation {
                id: "news".into(),
                creator: "owner".into(),
                kind: ConversationKind::Channel,
                members: vec!["fan".into()],
                title: None,
                ephemeral: false,
                public: true,
                max_members: 10,
            })
            .await
            .expect("channel");
        let store: Arc<dyn Store> = Arc::new(store);
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        // Queued before the loader runs: one batch answers all of them, each its own.
        let mut answers = Vec::new();
        for user in ["fan", "other", "owner", "fan"] {
            let (reply, answer) = oneshot::channel();
            tx.send(LoadJob {
                user: user.into(),
                reply,
            })
            .expect("queued");
            answers.push(answer);
        }
        let loader = tokio::spawn(load_channels(store, rx, cancel.clone()));
        let mut lists = Vec::new();
        for a in answers {
            lists.push(a.await.expect("answered").expect("read"));
        }
        assert_eq!(
            lists,
            [
                vec!["news".to_owned()],
                vec![],
                vec!["news".to_owned()],
                vec!["news".to_owned()]
            ]
        );
        // Stopped: a load handed over after that is dropped, never left waiting.
        cancel.cancel();
        loader.await.expect("loader");
        let (reply, answer) = oneshot::channel();
        let _ = tx.send(LoadJob {
            user: "fan".into(),
            reply,
        });
        assert!(answer.await.is_err(), "the caller sees the edge stopping");
    }
}
