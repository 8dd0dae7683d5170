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
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The most users one batch reads.
const MAX_BATCH: usize = 1024;

/// One user's load: the user and where the list goes.
pub(crate) struct LoadJob {
    pub(crate) user: String,
    pub(crate) reply: oneshot::Sender<Result<Vec<String>, StoreError>>,
}

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
            job = jobs.recv() => job,
            _ = cancel.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let users: Vec<String> = batch.iter().map(|j| j.user.clone()).collect();
        match store.channels_of_users(&users).await {
            Ok(lists) => {
                for (job, list) in batch.into_iter().zip(lists) {
                    let _ = job.reply.send(Ok(list));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Unavailable(why.clone())));
                }
            }
        }
    }
}
