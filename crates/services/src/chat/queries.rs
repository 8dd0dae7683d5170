//! The chat service's query side: the chat reads the edge serves (`conversation.list/get`,
//! `message.history`, `message.search`, `message.versions`, `conversation.pins`, `block.list`,
//! `contact.list`) and the inbox reads behind `hello`,
//! `sync` and gap fills. Straight from the store, never through a queue: reads need no
//! durability and must not wait behind writes. Their rules (page sizes, membership, what a
//! failure tells the client) sit here, beside the writes in [`super`].

use crate::Failure;
use async_trait::async_trait;
use hubbub_protocol::{Conversation, ConversationSummary, Message, MessageVersion};
use hubbub_registry::{ChatReads, EventPage, SignalError};
use hubbub_store::Store;
use std::sync::Arc;

/// `message.history` pages: the default and the most a client may ask for (PROTOCOL.md).
const HISTORY_DEFAULT: u32 = 50;
const HISTORY_MAX: u32 = 100;
/// `conversation.members` page sizes.
const MEMBERS_DEFAULT: u32 = 500;
const MEMBERS_MAX: u32 = 1000;
/// Most messages one `message.search` returns.
const SEARCH_LIMIT: usize = 50;

/// The chat reads, over the store.
#[derive(Clone)]
pub struct ChatQueries {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for ChatQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatQueries")
    }
}

impl ChatQueries {
    /// Reads over this store.
    pub fn new(store: Arc<dyn Store>) -> Self {
        ChatQueries { store }
    }
}

/// A store failure as the client may see it (internal details stay in the log).
fn fail(e: hubbub_store::StoreError) -> SignalError {
    SignalError::from(Failure::from(e))
}

#[async_trait]
impl ChatReads for ChatQueries {
    async fn conversations(&self, user: &str) -> Result<Vec<ConversationSummary>, SignalError> {
        self.store.conversations(user).await.map_err(fail)
    }

    async fn conversation(
        &self,
        user: &str,
        conversation: &str,
    ) -> Result<Conversation, SignalError> {
        self.store
            .conversation(user, conversation)
            .await
            .map_err(fail)
    }

    async fn members(
        &self,
        user: &str,
        conversation: &str,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(Vec<String>, bool), SignalError> {
        let limit = limit.unwrap_or(MEMBERS_DEFAULT).clamp(1, MEMBERS_MAX) as usize;
        self.store
            .members_page(user, conversation, after, limit)
            .await
            .map_err(fail)
    }

    async fn history(
        &self,
        user: &str,
        conversation: &str,
        thread: Option<&str>,
        before: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(Vec<Message>, bool), SignalError> {
        let limit = limit.unwrap_or(HISTORY_DEFAULT).clamp(1, HISTORY_MAX) as usize;
        match thread {
            Some(thread) => self
                .store
                .thread_history(user, conversation, thread, before, limit)
                .await
                .map_err(fail),
            None => self
                .store
                .history(user, conversation, before, limit)
                .await
                .map_err(fail),
        }
    }

    async fn versions(
        &self,
        user: &str,
        conversation: &str,
        message: &str,
    ) -> Result<Vec<MessageVersion>, SignalError> {
        self.store
            .message_versions(user, conversation, message)
            .await
            .map_err(fail)
    }

    async fn pins(&self, user: &str, conversation: &str) -> Result<Vec<Message>, SignalError> {
        self.store.pins(user, conversation).await.map_err(fail)
    }

    async fn search(
        &self,
        user: &str,
        query: &str,
        conversation: Option<&str>,
    ) -> Result<Vec<Message>, SignalError> {
        self.store
            .search(user, query, conversation, SEARCH_LIMIT)
            .await
            .map_err(fail)
    }

    async fn blocks(&self, user: &str) -> Result<Vec<String>, SignalError> {
        self.store.blocks(user).await.map_err(fail)
    }

    async fn contacts(&self, user: &str) -> Result<Vec<hubbub_protocol::Contact>, SignalError> {
        self.store.contacts(user).await.map_err(fail)
    }

    async fn channel_sync(
        &self,
        user: &str,
        channel: &str,
        after_offset: u64,
        limit: Option<u32>,
    ) -> Result<(Vec<hubbub_protocol::ServerFrame>, u64, bool), SignalError> {
        let limit = limit.map_or(hubbub_store::MAX_CHANNEL_SYNC, |l| l as usize);
        self.store
            .channel_messages(user, channel, after_offset, limit)
            .await
            .map_err(fail)
    }

    async fn last_seq(&self, user: &str) -> Result<u64, SignalError> {
        self.store.last_seq(user).await.map_err(fail)
    }

    async fn events_after(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<EventPage, SignalError> {
        let r = self
            .store
            .events_after(user, after_seq, limit)
            .await
            .map_err(fail)?;
        Ok(EventPage {
            frames: r.frames,
            last_seq: r.last_seq,
            truncated: r.truncated,
        })
    }
}
