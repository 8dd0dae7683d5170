//! User erasure (`DELETE /v1/server/users/{id}`, issue 14): what of a user is erased, in
//! what order, in steps small enough that no transaction holds the writer for long. It
//! touches every domain's rows; it never deletes media bytes (the [`MediaStore`]'s
//! `erase_owner` does, beside it) and delivers nothing (the caller pushes each step's
//! events).
//!
//! # What a step does
//! [`ErasureStore::erase_user`] does the first thing left to do, of, in order:
//! 1. **The account.** The user's row is kept, as an erased account's (its handle becomes
//!    `!erased:<id>`, which no read finds and no valid handle can be; no password, no email,
//!    every token refused): the handle is free again, the id is never given again (an app
//!    token or `POST /v1/server/users` naming it is refused). Refresh tokens are deleted.
//! 2. **Memberships**, up to `batch` conversations: the user leaves each; members hear of it
//!    as of a removal; ownership passes as when an owner leaves (to the longest-standing
//!    admin, else member; told even in a large group); a conversation left empty is deleted.
//! 3. **Messages**, up to `batch` (fewer in a big conversation: about [`EVENT_BUDGET`]
//!    events a step), of one conversation: each becomes a tombstone exactly as
//!    `message.delete` makes one (text, attachments, mentions, versions and reactions gone,
//!    unpinned, no longer found by search), and members are told so as by `message.delete`
//!    (`message.updated` under their next seq; `channel.updated` in a channel).
//! 4. **Reactions** the user put on others' messages, up to `batch`: each summary loses them,
//!    silently.
//! 5. **The rest**, in one transaction: contacts the user keeps and every contact naming them,
//!    blocks either way, mutes, bans of the user, reports the user made (reports of their messages stay, the
//!    reporters'), their posts with the comments and likes on them, their comments and likes
//!    (each post's counts follow), follows either way, activity, webhook presence, refresh
//!    token families, and their inbox (all of it counted as seen, so no push still due reaches
//!    them). (Media rows go with their bytes, by
//!    [`MediaStore::erase_owner`].)
//!
//! A step that finds its stage done goes to the next, so calling until [`Erasure::Done`] is
//! both the erasure and its resumption after a crash: a repeat finds every stage done.

#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

use crate::accounts::{AccountTx, is_erased};
use crate::chat::ChatTx;
use crate::inbox::InboxTx;
use crate::{Result, Written};
use async_trait::async_trait;

#[cfg(doc)]
use crate::MediaStore;

/// The most inbox events one step's tombstones append (about): a step in a group of 10,000
/// tombstones 2 messages, not its whole batch.
const EVENT_BUDGET: u64 = 20_000;

/// Where an erasure stands after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Erasure {
    /// No such user, erased or not: nothing was done.
    Unknown,
    /// The step did some of it; call again.
    More,
    /// Nothing of the user is left (but the erased account's row).
    Done,
}

/// Erasing users.
#[async_trait]
pub trait ErasureStore: Send + Sync {
    /// One step of erasing `user` (the module's "What a step does"): at most `batch`
    /// conversations, messages or reactions. Returns where the erasure stands and the events
    /// the step produced, to deliver.
    async fn erase_user(&self, user: &str, batch: usize) -> Result<Written<Erasure>>;
}

/// What the erasure rules need of a transaction beyond the domains' own.
pub(crate) trait ErasureTx {
    /// Stage 5: delete every other row of `user` (see the module doc).
    async fn erase_rest(&self, user: &str) -> Result<()>;
}

/// One step of erasing `user`.
pub(crate) async fn erase_user(
    tx: &(impl AccountTx + ChatTx + InboxTx + ErasureTx),
    user: &str,
    batch: usize,
    now: i64,
) -> Result<Written<Erasure>> {
    let batch = batch.max(1);
    let Some((_, handle)) = tx.user(user).await? else {
        return Ok(Written::nothing(Erasure::Unknown));
    };
    if !is_erased(&handle) {
        tx.mark_erased(user).await?;
        tx.revoke_families_of(user, now).await?;
        return Ok(Written::nothing(Erasure::More));
    }
    let mut joined = tx.memberships(user).await?;
    // In id order: each takes its conversation's membership lock, and two erasures sharing
    // conversations take them in the same order.
    joined.sort();
    if !joined.is_empty() {
        let mut events = Vec::new();
        for (id, _) in joined.iter().take(batch) {
            events.extend(crate::chat::erase_membership(tx, id, user, now).await?);
        }
        return Ok(Written::new(Erasure::More, events));
    }
    let mut sent = tx.live_messages_of(user, batch).await?;
    if let Some(first) = sent.first() {
        let id = first.conversation.clone();
        // Each tombstone is told to every member: fewer of them a step in a big group.
        let members = tx.member_count(&id).await?.max(1);
        let fits = (EVENT_BUDGET / members).clamp(1, batch as u64);
        sent.truncate(fits as usize);
        let written = crate::chat::messages::erase_messages(tx, &id, user, &sent, now).await?;
        return Ok(written.map(|()| Erasure::More));
    }
    let reactions = tx.reactions_of(user, batch).await?;
    if !reactions.is_empty() {
        crate::chat::messages::erase_reactions(tx, user, &reactions).await?;
        return Ok(Written::nothing(Erasure::More));
    }
    tx.erase_rest(user).await?;
    Ok(Written::nothing(Erasure::Done))
}

/// [`ErasureStore`] for a backend: each step in one write transaction.
macro_rules! impl_erasure_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::erasure::ErasureStore for $store {
            async fn erase_user(
                &self,
                user: &str,
                batch: usize,
            ) -> Result<$crate::Written<$crate::erasure::Erasure>, $crate::StoreError> {
                let (user, now) = (user.to_owned(), self.now());
                $crate::run!(self.write, |tx| $crate::erasure::erase_user(
                    tx, &user, batch, now
                ))
            }
        }
    };
}
pub(crate) use impl_erasure_store;
