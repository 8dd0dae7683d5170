//! Each user's inbox: the durable events chat and the feed produce for them, numbered by the
//! user's `seq` (gapless, one counter per user), replayed on `sync`, acknowledged, pruned.
//!
//! The rules here are the only way an event enters an inbox: [`append_event`] (one frame for
//! one user, stored as JSON) and [`message_events`] over a backend's fan-out (a `message.new`
//! row only points at its message: the frame is rebuilt on replay, so a message to a big group
//! writes small rows; a group's messages are runs of seqs that follow the group's message
//! positions, and a message writes nothing for members already in a run on the group: see
//! `sqlite.rs` and `postgres.rs`).

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
mod sqlite;

use crate::chat::{MessageRow, message_from_row};
use crate::{Event, Result, StoreError, json_err, to_i64};
use async_trait::async_trait;
use hubbub_protocol::{Message, ServerFrame};

/// A `sync` replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// Events with seq > `after_seq`, in order (at most the requested number).
    pub frames: Vec<ServerFrame>,
    /// The user's latest seq.
    pub last_seq: u64,
    /// Events the client needed are gone (older than the retention window).
    pub truncated: bool,
}

/// Each user's durable events.
#[async_trait]
pub trait InboxStore: Send + Sync {
    /// The user's latest seq.
    async fn last_seq(&self, user: &str) -> Result<u64>;

    /// Durable events with seq > `after_seq`, at most `limit`.
    async fn events_after(&self, user: &str, after_seq: u64, limit: usize) -> Result<Replay>;

    /// The highest seq any device of the user acknowledged.
    async fn acked_seq(&self, user: &str) -> Result<u64>;

    /// Record that a device of the user processed everything up to `seq`. Committed, but not
    /// necessarily on disk when this returns (no fsync, no synchronous commit): a power
    /// failure may lose the latest acks, and losing one at worst sends a push notification
    /// for an event the user saw. No client waits on an ack (the frame has no reply).
    async fn ack(&self, user: &str, seq: u64) -> Result<()>;

    /// [`InboxStore::ack`] for several users in one transaction (an edge writes its
    /// sessions' acks together). A user named twice keeps the higher seq.
    async fn acks(&self, acks: &[(String, u64)]) -> Result<()>;

    /// Delete inbox events older than `before_ms`; returns how many.
    async fn prune_events(&self, before_ms: i64) -> Result<u64>;

    /// Whether the store answers now (readiness, and the edge's gate on writes).
    async fn ping(&self) -> Result<()>;
}

/// One stored inbox row's columns: its seq, and a frame as JSON or the columns of the message
/// a `message.new` points at (none if it was deleted).
pub(crate) type InboxRow = (i64, Option<String>, Option<MessageRow>);

/// What the inbox rules need of a transaction; each backend implements it with its SQL.
pub(crate) trait InboxTx {
    /// Take `user`'s next seq (the user's counter row stays locked until the commit).
    async fn next_seq(&self, user: &str) -> Result<u64>;
    /// Store a frame (as JSON) under `seq` in `user`'s inbox.
    async fn insert_event(&self, user: &str, seq: u64, now: i64, frame: &str) -> Result<()>;
    /// Take the next seq of each of `users` (ids once each; their counter rows stay locked
    /// until the commit): (user, seq) in any order.
    async fn next_seqs(&self, users: &[String]) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::with_capacity(users.len());
        for u in users {
            out.push((u.clone(), self.next_seq(u).await?));
        }
        Ok(out)
    }
    /// Store frames (JSON) under (user, seq).
    async fn insert_events(&self, rows: &[(String, u64, String)], now: i64) -> Result<()> {
        for (user, seq, frame) in rows {
            self.insert_event(user, *seq, now, frame).await?;
        }
        Ok(())
    }
    /// `message.new` rows for new messages: every member of each message's conversation,
    /// except those who block its sender, takes their next seq (one per message, in the order
    /// given) and gets a row under it pointing at the message. Returns each message's
    /// recipients with their seqs, in any order, one list per message in the order given.
    async fn fan_out(&self, messages: &[&Message], now: i64) -> Result<Vec<Vec<(String, u64)>>>;
    /// The user's `last_seq` and `acked_seq` (`None` for an unknown user).
    async fn counters(&self, user: &str) -> Result<Option<(u64, u64)>>;
    /// The oldest seq still in `user`'s inbox.
    async fn first_seq(&self, user: &str) -> Result<Option<u64>>;
    /// `user`'s rows with seq > `after`, in seq order, at most `limit`.
    async fn inbox_rows(&self, user: &str, after: i64, limit: usize) -> Result<Vec<InboxRow>>;
    /// Move `acked_seq` up to `seq`, never past `last_seq`.
    async fn raise_acked(&self, user: &str, seq: i64) -> Result<()>;
    /// [`InboxTx::raise_acked`] for several users, given in id order (each once): the order
    /// every write that locks users takes them in. A backend where each statement is a
    /// round trip does them all at once.
    async fn raise_acked_all(&self, acks: &[(&str, i64)]) -> Result<()> {
        for (user, seq) in acks {
            self.raise_acked(user, *seq).await?;
        }
        Ok(())
    }
    /// Delete rows older than `before_ms`; how many.
    async fn prune(&self, before_ms: i64) -> Result<u64>;
    /// One trivial statement.
    async fn ping(&self) -> Result<()>;
}

/// What a replay after `after` reads of one run (its first seq, first position and length),
/// given the rows it found so far.
pub(crate) enum RunRead {
    /// The run ends at or before `after`.
    Skip,
    /// `limit` events were found before the run: neither it nor a later one is among the
    /// first `limit`.
    Stop,
    /// Its group's messages at these positions (inclusive).
    Positions(i64, i64),
}

/// [`RunRead`] for a run, the same on every backend.
pub(crate) fn run_read(
    found: &[InboxRow],
    limit: usize,
    after: i64,
    (first_seq, first_pos, count): (i64, i64, i64),
) -> RunRead {
    if first_seq + count - 1 <= after {
        return RunRead::Skip;
    }
    if found.iter().filter(|r| r.0 < first_seq).count() >= limit {
        return RunRead::Stop;
    }
    RunRead::Positions(
        first_pos + (after + 1 - first_seq).max(0),
        first_pos + count - 1,
    )
}

/// Append one durable event to `user`'s inbox under their next seq.
pub(crate) async fn append_event(
    tx: &impl InboxTx,
    user: &str,
    now: i64,
    make: impl FnOnce(u64) -> ServerFrame,
) -> Result<Event> {
    let seq = tx.next_seq(user).await?;
    let frame = make(seq);
    let json = serde_json::to_string(&frame).map_err(json_err)?;
    tx.insert_event(user, seq, now, &json).await?;
    Ok(Event {
        user: user.to_owned(),
        frame,
    })
}

/// Append one durable event to each of `users` (ids once each) under their next seq: what
/// [`append_event`] does for one user, in two statements for all of them where the backend
/// can (a change to a message of a big group costs two round trips, not two per member).
pub(crate) async fn append_to_all(
    tx: &impl InboxTx,
    users: &[String],
    now: i64,
    make: impl Fn(u64) -> ServerFrame,
) -> Result<Vec<Event>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let seqs = tx.next_seqs(users).await?;
    let mut rows = Vec::with_capacity(seqs.len());
    let mut events = Vec::with_capacity(seqs.len());
    for (user, seq) in seqs {
        let frame = make(seq);
        rows.push((
            user.clone(),
            seq,
            serde_json::to_string(&frame).map_err(json_err)?,
        ));
        events.push(Event { user, frame });
    }
    tx.insert_events(&rows, now).await?;
    Ok(events)
}

/// The `message.new` events of new messages (one list per message, in `messages`' order;
/// each list by recipient), from a backend's fan-out.
pub(crate) async fn message_events(
    tx: &impl InboxTx,
    messages: &[&Message],
    now: i64,
) -> Result<Vec<Vec<Event>>> {
    let lists = tx.fan_out(messages, now).await?;
    if lists.len() != messages.len() {
        return Err(StoreError::Internal(format!(
            "a fan-out of {} messages answered {}",
            messages.len(),
            lists.len()
        )));
    }
    Ok(lists
        .into_iter()
        .zip(messages)
        .map(|(mut list, m)| {
            // In the recipients' order, whatever the backend's.
            list.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            // One copy of each message, shared by its recipients' frames.
            let message = std::sync::Arc::new((*m).clone());
            list.into_iter()
                .map(|(user, seq)| Event {
                    user,
                    frame: ServerFrame::MessageNew {
                        seq,
                        message: message.clone(),
                    },
                })
                .collect()
        })
        .collect())
}

/// `events_after`: the frames after `after`, and whether some the client needed are gone.
pub(crate) async fn replay(
    tx: &impl InboxTx,
    keys: Option<&crate::contacts::NoteKeys>,
    user: &str,
    after: u64,
    limit: usize,
) -> Result<Replay> {
    let last_seq = tx.counters(user).await?.map_or(0, |(last, _)| last);
    let first = tx.first_seq(user).await?;
    // Something after `after` existed but the oldest row left is past the next one wanted.
    let truncated = last_seq > after && first.is_none_or(|f| f > after + 1);
    let frames = tx
        .inbox_rows(user, to_i64(after), limit)
        .await?
        .into_iter()
        .map(|(seq, frame, message)| match (frame, message) {
            (_, Some(message)) => Ok(ServerFrame::MessageNew {
                seq: seq as u64,
                message: message_from_row(message)?.into(),
            }),
            (Some(json), None) if crate::contacts::is_sealed_row(&json) => {
                crate::contacts::open_row(keys, user, seq as u64, &json)
            }
            (Some(json), None) => serde_json::from_str::<ServerFrame>(&json).map_err(json_err),
            (None, None) => Err(StoreError::Internal(format!(
                "inbox event {seq} lost its message"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Replay {
        frames,
        last_seq,
        truncated,
    })
}

pub(crate) async fn last_seq(tx: &impl InboxTx, user: &str) -> Result<u64> {
    Ok(tx.counters(user).await?.map_or(0, |(last, _)| last))
}

pub(crate) async fn acked_seq(tx: &impl InboxTx, user: &str) -> Result<u64> {
    Ok(tx.counters(user).await?.map_or(0, |(_, acked)| acked))
}

pub(crate) async fn ack(tx: &impl InboxTx, user: &str, seq: u64) -> Result<()> {
    tx.raise_acked(user, to_i64(seq)).await
}

pub(crate) async fn acks(tx: &impl InboxTx, acks: &[(String, u64)]) -> Result<()> {
    // In user id order, the order every write that locks users takes them in (PostgreSQL);
    // the highest seq of each.
    let mut highest: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for (user, seq) in acks {
        let e = highest.entry(user.as_str()).or_insert(*seq);
        *e = (*e).max(*seq);
    }
    let highest: Vec<(&str, i64)> = highest
        .into_iter()
        .map(|(user, seq)| (user, to_i64(seq)))
        .collect();
    tx.raise_acked_all(&highest).await
}

/// [`InboxStore`] for a backend: each method runs its rule in one of the backend's
/// transactions (see the crate's "How a use case runs").
macro_rules! impl_inbox_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::inbox::InboxStore for $store {
            async fn last_seq(&self, user: &str) -> Result<u64, $crate::StoreError> {
                let user = user.to_owned();
                $crate::run!(self.read, |tx| $crate::inbox::last_seq(tx, &user))
            }

            async fn events_after(
                &self,
                user: &str,
                after_seq: u64,
                limit: usize,
            ) -> Result<$crate::inbox::Replay, $crate::StoreError> {
                let user = user.to_owned();
                let keys = self.note_keys.clone();
                $crate::run!(self.snapshot, |tx| {
                    $crate::inbox::replay(tx, keys.as_deref(), &user, after_seq, limit)
                })
            }

            async fn acked_seq(&self, user: &str) -> Result<u64, $crate::StoreError> {
                let user = user.to_owned();
                $crate::run!(self.read, |tx| $crate::inbox::acked_seq(tx, &user))
            }

            async fn ack(&self, user: &str, seq: u64) -> Result<(), $crate::StoreError> {
                let user = user.to_owned();
                $crate::run!(self.write_lazy, |tx| $crate::inbox::ack(tx, &user, seq))
            }

            async fn acks(&self, acks: &[(String, u64)]) -> Result<(), $crate::StoreError> {
                let acks = acks.to_vec();
                $crate::run!(self.write_lazy, |tx| $crate::inbox::acks(tx, &acks))
            }

            async fn prune_events(&self, before_ms: i64) -> Result<u64, $crate::StoreError> {
                $crate::run!(self.write, |tx| $crate::inbox::InboxTx::prune(
                    tx, before_ms
                ))
            }

            async fn ping(&self) -> Result<(), $crate::StoreError> {
                $crate::run!(self.read, |tx| $crate::inbox::InboxTx::ping(tx))
            }
        }
    };
}
pub(crate) use impl_inbox_store;
