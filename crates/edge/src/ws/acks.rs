//! The edge's one ack writer: every session hands it its coalesced ack (the highest seq, at
//! most one in flight per session, see [`super::limits::Acks`]), and it writes what has
//! gathered meanwhile in one store transaction ([`hubbub_store::InboxStore::acks`]). A
//! thousand sessions acknowledging four times a second cost a few transactions a second on
//! the store's single writer instead of four thousand (docs/benchmarks.md). An ack is a
//! hint for push notifications only (`sync` starts from the client's own seq), so a batch
//! lost to a failure is logged and not retried: the session's next ack carries a higher seq.
//!
//! After each batch the writer lets the next one gather for [`GATHER`]: the first ack after a
//! quiet spell is written at once, and under load a transaction carries every session's latest
//! ack of the window (1,000 sessions acknowledging ten times a second cost ten transactions a
//! second, not one per commit of the store's writer, whose time the messages' own commits
//! need). Nothing waits on an ack but a push notification, seconds later.

use hubbub_store::Store;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The most acks one transaction writes.
const MAX_BATCH: usize = 1024;
/// How long the acks after a written batch gather before the next is written.
const GATHER: Duration = Duration::from_millis(100);

/// A session's ack: the user, the seq, and the session's flag to clear once written.
pub(crate) struct AckJob {
    pub(crate) user: String,
    pub(crate) seq: u64,
    pub(crate) writing: Arc<AtomicBool>,
}

/// Write the acks as they come, each time all that gathered while the last batch was
/// written, until cancelled (then what is waiting is written once more) or every sender is
/// gone.
pub(crate) async fn write_acks(
    store: Arc<dyn Store>,
    mut jobs: mpsc::UnboundedReceiver<AckJob>,
    cancel: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            job = jobs.recv() => job,
            _ = cancel.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        crate::take_waiting(&mut jobs, &mut batch, MAX_BATCH);
        let full = batch.len() == MAX_BATCH;
        write(&*store, batch).await;
        if !full {
            tokio::select! {
                _ = tokio::time::sleep(GATHER) => {}
                _ = cancel.cancelled() => {}
            }
        }
    }
    // Shutting down: what the sessions handed over last.
    let mut rest = Vec::new();
    crate::take_waiting(&mut jobs, &mut rest, MAX_BATCH);
    if !rest.is_empty() {
        write(&*store, rest).await;
    }
}

async fn write(store: &dyn Store, batch: Vec<AckJob>) {
    let acks: Vec<(String, u64)> = batch.iter().map(|j| (j.user.clone(), j.seq)).collect();
    if let Err(e) = store.acks(&acks).await {
        tracing::debug!(error = %e, acks = acks.len(), "acks not recorded");
    }
    for job in batch {
        job.writing.store(false, Ordering::Release);
    }
}
