//! [`ChatStore`](super::ChatStore) for any backend, from the rules of `chat/mod.rs`: each
//! method runs its rule in one of the backend's transactions (see the crate's "How a use case
//! runs"). Only `message.send` is the backend's own (`send`): PostgreSQL batches sends.

/// `impl_chat_store!(Backend)`: the backend provides `now`, `read`, `write` and `send`.
macro_rules! impl_chat_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::chat::ChatStore for $store {
            async fn create_conversation(
                &self,
                new: $crate::chat::NewConversation,
            ) -> Result<$crate::Written<hubbub_protocol::Conversation>, $crate::StoreError> {
                let now = self.now();
                $crate::run!(self.write, |tx| $crate::chat::create_conversation(
                    tx, new, now
                ))
            }

            async fn conversation(
                &self,
                caller: &str,
                id: &str,
            ) -> Result<hubbub_protocol::Conversation, $crate::StoreError> {
                let (caller, id) = (caller.to_owned(), id.to_owned());
                $crate::run!(self.read, |tx| $crate::chat::member_view(tx, &caller, &id))
            }

            async fn conversations(
                &self,
                caller: &str,
            ) -> Result<Vec<hubbub_protocol::ConversationSummary>, $crate::StoreError> {
                let caller = caller.to_owned();
                $crate::run!(self.read, |tx| $crate::chat::conversations(tx, &caller))
            }

            async fn add_member(
                &self,
                caller: &str,
                conversation: &str,
                user: &str,
                max_members: usize,
            ) -> Result<$crate::Written<()>, $crate::StoreError> {
                self.add_members(caller, conversation, &[user.to_owned()], max_members)
                    .await
            }

            async fn add_members(
                &self,
                caller: &str,
                conversation: &str,
                users: &[String],
                max_members: usize,
            ) -> Result<$crate::Written<()>, $crate::StoreError> {
                let (caller, id, users) =
                    (caller.to_owned(), conversation.to_owned(), users.to_vec());
                let now = self.now();
                $crate::run!(self.write, |tx| {
                    $crate::chat::add_members(tx, &caller, &id, &users, max_members, now)
                })
            }

            async fn members_page(
                &self,
                caller: &str,
                conversation: &str,
                after: Option<&str>,
                limit: usize,
            ) -> Result<(Vec<String>, bool), $crate::StoreError> {
                let (caller, id, after) = (
                    caller.to_owned(),
                    conversation.to_owned(),
                    after.map(str::to_owned),
                );
                $crate::run!(self.read, |tx| {
                    $crate::chat::members_page(tx, &caller, &id, after.as_deref(), limit)
                })
            }

            async fn remove_member(
                &self,
                caller: &str,
                conversation: &str,
                user: &str,
            ) -> Result<$crate::Written<()>, $crate::StoreError> {
                let (caller, id, user) =
                    (caller.to_owned(), conversation.to_owned(), user.to_owned());
                let now = self.now();
                $crate::run!(self.write, |tx| {
                    $crate::chat::remove_member(tx, &caller, &id, &user, now)
                })
            }

            async fn leave(
                &self,
                caller: &str,
                conversation: &str,
            ) -> Result<$crate::Written<()>, $crate::StoreError> {
                let (caller, id, now) = (caller.to_owned(), conversation.to_owned(), self.now());
                $crate::run!(self.write, |tx| $crate::chat::leave(tx, &caller, &id, now))
            }

            async fn subscribe(
                &self,
                caller: &str,
                channel: &str,
            ) -> Result<$crate::Written<()>, $crate::StoreError> {
                let (caller, id, now) = (caller.to_owned(), channel.to_owned(), self.now());
                $crate::run!(self.write, |tx| $crate::chat::subscribe(
                    tx, &caller, &id, now
                ))
            }

            async fn unsubscribe(
                &self,
                caller: &str,
                channel: &str,
            ) -> Result<$crate::Written<()>, $crate::StoreError> {
                let (caller, id, now) = (caller.to_owned(), channel.to_owned(), self.now());
                $crate::run!(self.write, |tx| $crate::chat::unsubscribe(
                    tx, &caller, &id, now
                ))
            }

            async fn channels_of_users(
                &self,
                users: &[String],
            ) -> Result<Vec<Vec<String>>, $crate::StoreError> {
                let users = users.to_vec();
                $crate::run!(
                    self.read,
                    |tx| $crate::chat::ChatTx::channel_memberships_of(tx, &users)
                )
            }

            async fn channel_messages(
                &self,
                caller: &str,
                channel: &str,
                after: u64,
                limit: usize,
            ) -> Result<(Vec<hubbub_protocol::ServerFrame>, u64, bool), $crate::StoreError> {
                let (caller, id) = (caller.to_owned(), channel.to_owned());
                $crate::run!(self.read, |tx| {
                    $crate::chat::channel_sync(tx, &caller, &id, after, limit)
                })
            }

            async fn send_message(
                &self,
                new: $crate::chat::NewMessage,
            ) -> Result<$crate::Written<hubbub_protocol::Message>, $crate::StoreError> {
                self.send(new).await
            }

            async fn send_messages(
                &self,
                news: Vec<$crate::chat::NewMessage>,
            ) -> Result<
                Vec<Result<$crate::Written<hubbub_protocol::Message>, $crate::StoreError>>,
                $crate::StoreError,
            > {
                self.send_many(news).await
            }

            async fn conversation_by_id(
                &self,
                id: &str,
            ) -> Result<Option<hubbub_protocol::Conversation>, $crate::StoreError> {
                let id = id.to_owned();
                $crate::run!(self.read, |tx| $crate::chat::ChatTx::conversation(tx, &id))
            }

            async fn message_by_key(
                &self,
                sender: &str,
                client_msg_id: &str,
            ) -> Result<Option<hubbub_protocol::Message>, $crate::StoreError> {
                let (sender, key) = (sender.to_owned(), client_msg_id.to_owned());
                $crate::run!(self.read, |tx| $crate::chat::ChatTx::message_by_key(
                    tx, &sender, &key
                ))
            }

            async fn history(
                &self,
                caller: &str,
                conversation: &str,
                before: Option<&str>,
                limit: usize,
            ) -> Result<(Vec<hubbub_protocol::Message>, bool), $crate::StoreError> {
                let (caller, id) = (caller.to_owned(), conversation.to_owned());
                let before = before.map(str::to_owned);
                $crate::run!(self.read, |tx| {
                    $crate::chat::history(tx, &caller, &id, None, before.as_deref(), limit)
                })
            }

            async fn set_role(
                &self,
                caller: &str,
                conversation: &str,
                user: &str,
                role: hubbub_protocol::Role,
            ) -> Result<$crate::Written<()>, $crate::StoreError> {
                let (caller, id, user, now) = (
                    caller.to_owned(),
                    conversation.to_owned(),
                    user.to_owned(),
                    self.now(),
                );
                $crate::run!(self.write, |tx| {
                    $crate::chat::moderation::set_role(tx, &caller, &id, &user, role, now)
                })
            }

            async fn ban(
                &self,
                caller: &str,
                conversation: &str,
                user: &str,
                duration_s: Option<u64>,
            ) -> Result<$crate::Written<()>, $crate::StoreError> {
                let (caller, id, user, now) = (
                    caller.to_owned(),
                    conversation.to_owned(),
                    user.to_owned(),
                    self.now(),
                );
                $crate::run!(self.write, |tx| {
                    $crate::chat::moderation::ban(tx, &caller, &id, &user, duration_s, now)
                })
            }

            async fn unban(
                &self,
                caller: &str,
                conversation: &str,
                user: &str,
            ) -> Result<$crate::Written<()>, $crate::StoreError> {
                let (caller, id, user) =
                    (caller.to_owned(), conversation.to_owned(), user.to_owned());
                $crate::run!(self.write, |tx| {
                    $crate::chat::moderation::unban(tx, &caller, &id, &user)
                })
            }

            async fn mute_member(
                &self,
                caller: &str,
                conversation: &str,
                user: &str,
                duration_s: u64,
            ) -> Result<$crate::Written<()>, $crate::StoreError> {
                let (caller, id, user, now) = (
                    caller.to_owned(),
                    conversation.to_owned(),
                    user.to_owned(),
                    self.now(),
                );
                $crate::run!(self.write, |tx| {
                    $crate::chat::moderation::mute_member(tx, &caller, &id, &user, duration_s, now)
                })
            }

            async fn update_settings(
                &self,
                caller: &str,
                conversation: &str,
                title: Option<&str>,
                slow_mode_s: Option<u64>,
            ) -> Result<$crate::Written<hubbub_protocol::Conversation>, $crate::StoreError> {
                let (caller, id, title, now) = (
                    caller.to_owned(),
                    conversation.to_owned(),
                    title.map(str::to_owned),
                    self.now(),
                );
                $crate::run!(self.write, |tx| {
                    $crate::chat::moderation::settings(
                        tx,
                        &caller,
                        &id,
                        title.as_deref(),
                        slow_mode_s,
                        now,
                    )
                })
            }

            async fn thread_history(
                &self,
                caller: &str,
                conversation: &str,
                thread: &str,
                before: Option<&str>,
                limit: usize,
            ) -> Result<(Vec<hubbub_protocol::Message>, bool), $crate::StoreError> {
                let (caller, id, thread) = (
                    caller.to_owned(),
                    conversation.to_owned(),
                    thread.to_owned(),
                );
                let before = before.map(str::to_owned);
                $crate::run!(self.read, |tx| {
                    $crate::chat::history(tx, &caller, &id, Some(&thread), before.as_deref(), limit)
                })
            }

            async fn edit_message(
                &self,
                caller: &str,
                conversation: &str,
                message: &str,
                text: &str,
            ) -> Result<$crate::Written<hubbub_protocol::Message>, $crate::StoreError> {
                let (caller, id) = (caller.to_owned(), conversation.to_owned());
                let (message, text, now) = (message.to_owned(), text.to_owned(), self.now());
                $crate::run!(self.write, |tx| {
                    $crate::chat::messages::edit(tx, &caller, &id, &message, &text, now)
                })
            }

            async fn message_versions(
                &self,
                caller: &str,
                conversation: &str,
                message: &str,
            ) -> Result<Vec<hubbub_protocol::MessageVersion>, $crate::StoreError> {
                let (caller, id, message) = (
                    caller.to_owned(),
                    conversation.to_owned(),
                    message.to_owned(),
                );
                $crate::run!(self.snapshot, |tx| {
                    $crate::chat::messages::versions(tx, &caller, &id, &message)
                })
            }

            async fn delete_message(
                &self,
                caller: &str,
                conversation: &str,
                message: &str,
            ) -> Result<$crate::Written<()>, $crate::StoreError> {
                let (caller, id) = (caller.to_owned(), conversation.to_owned());
                let (message, now) = (message.to_owned(), self.now());
                $crate::run!(self.write, |tx| {
                    $crate::chat::messages::delete(tx, &caller, &id, &message, now)
                })
            }

            async fn react(
                &self,
                caller: &str,
                conversation: &str,
                message: &str,
                emoji: &str,
                add: bool,
            ) -> Result<$crate::Written<Vec<hubbub_protocol::ReactionCount>>, $crate::StoreError>
            {
                let (caller, id) = (caller.to_owned(), conversation.to_owned());
                let (message, emoji, now) = (message.to_owned(), emoji.to_owned(), self.now());
                $crate::run!(self.write, |tx| {
                    $crate::chat::messages::react(tx, &caller, &id, &message, &emoji, add, now)
                })
            }

            async fn pin(
                &self,
                caller: &str,
                conversation: &str,
                message: &str,
                pin: bool,
            ) -> Result<$crate::Written<()>, $crate::StoreError> {
                let (caller, id) = (caller.to_owned(), conversation.to_owned());
                let (message, now) = (message.to_owned(), self.now());
                $crate::run!(self.write, |tx| {
                    $crate::chat::messages::pin(tx, &caller, &id, &message, pin, now)
                })
            }

            async fn mute_conversation(
                &self,
                user: &str,
                conversation: &str,
                until_ms: Option<i64>,
            ) -> Result<(), $crate::StoreError> {
                let (user, id, now) = (user.to_owned(), conversation.to_owned(), self.now());
                $crate::run!(self.write, |tx| {
                    $crate::chat::messages::mute(tx, &user, &id, until_ms, now)
                })
            }

            async fn muted(
                &self,
                user: &str,
                conversation: &str,
                now: i64,
            ) -> Result<bool, $crate::StoreError> {
                let (user, id) = (user.to_owned(), conversation.to_owned());
                let until = $crate::run!(self.read, |tx| {
                    $crate::chat::ChatTx::mute_until(tx, &user, &id)
                })?;
                Ok(until.is_some_and(|u| u > now))
            }

            async fn report_message(
                &self,
                reporter: &str,
                conversation: &str,
                message: &str,
                reason: &str,
            ) -> Result<(hubbub_protocol::serverapi::Report, bool), $crate::StoreError> {
                let (reporter, id) = (reporter.to_owned(), conversation.to_owned());
                let (message, reason, now) = (message.to_owned(), reason.to_owned(), self.now());
                $crate::run!(self.write, |tx| {
                    $crate::chat::messages::report(tx, &reporter, &id, &message, &reason, now)
                })
            }

            async fn reports(
                &self,
                before: Option<&str>,
                limit: usize,
            ) -> Result<(Vec<hubbub_protocol::serverapi::Report>, bool), $crate::StoreError> {
                let before = before.map(str::to_owned);
                $crate::run!(self.read, |tx| {
                    $crate::chat::messages::reports(tx, before.as_deref(), limit)
                })
            }

            async fn pins(
                &self,
                caller: &str,
                conversation: &str,
            ) -> Result<Vec<hubbub_protocol::Message>, $crate::StoreError> {
                let (caller, id) = (caller.to_owned(), conversation.to_owned());
                $crate::run!(self.snapshot, |tx| {
                    $crate::chat::messages::pins(tx, &caller, &id)
                })
            }

            async fn mark_read(
                &self,
                caller: &str,
                conversation: &str,
                message: &str,
            ) -> Result<$crate::Written<()>, $crate::StoreError> {
                let (caller, id) = (caller.to_owned(), conversation.to_owned());
                let (message, now) = (message.to_owned(), self.now());
                $crate::run!(self.write, |tx| {
                    $crate::chat::mark_read(tx, &caller, &id, &message, now)
                })
            }

            async fn block(&self, caller: &str, user: &str) -> Result<(), $crate::StoreError> {
                let (caller, user, now) = (caller.to_owned(), user.to_owned(), self.now());
                $crate::run!(self.write, |tx| $crate::chat::block(
                    tx, &caller, &user, now
                ))
            }

            async fn unblock(&self, caller: &str, user: &str) -> Result<(), $crate::StoreError> {
                let (caller, user) = (caller.to_owned(), user.to_owned());
                $crate::run!(self.write, |tx| {
                    $crate::chat::ChatTx::delete_block(tx, &caller, &user)
                })
            }

            async fn blocks(&self, caller: &str) -> Result<Vec<String>, $crate::StoreError> {
                let caller = caller.to_owned();
                $crate::run!(self.read, |tx| $crate::chat::ChatTx::blocked_list(
                    tx, &caller
                ))
            }

            async fn blocked_by(
                &self,
                caller: &str,
                users: &[String],
            ) -> Result<Vec<String>, $crate::StoreError> {
                let (caller, users) = (caller.to_owned(), users.to_vec());
                $crate::run!(self.read, |tx| $crate::chat::blocked_by(
                    tx, &caller, &users
                ))
            }

            async fn search(
                &self,
                caller: &str,
                query: &str,
                conversation: Option<&str>,
                limit: usize,
            ) -> Result<Vec<hubbub_protocol::Message>, $crate::StoreError> {
                let (caller, query) = (caller.to_owned(), query.to_owned());
                let conversation = conversation.map(str::to_owned);
                $crate::run!(self.read, |tx| {
                    $crate::chat::search(tx, &caller, &query, conversation.as_deref(), limit)
                })
            }

            async fn typing_recipients(
                &self,
                sender: &str,
                conversation: &str,
            ) -> Result<Vec<String>, $crate::StoreError> {
                let (sender, id) = (sender.to_owned(), conversation.to_owned());
                $crate::run!(self.read, |tx| $crate::chat::typing_recipients(
                    tx, &sender, &id
                ))
            }

            async fn expire_ephemeral(
                &self,
                before_ms: i64,
            ) -> Result<$crate::Written<Vec<String>>, $crate::StoreError> {
                let now = self.now();
                $crate::run!(self.write, |tx| $crate::chat::expire_ephemeral(
                    tx, before_ms, now
                ))
            }
        }
    };
}
pub(crate) use impl_chat_store;
