//! Which of this edge's users are members of which channels, so that a channel's message
//! (`ToEdge::Channel`) names the channel and the edge finds its recipients: the services read
//! no member list and ask the registry nothing per message, however big the channel.
//!
//! The store is the truth; the edge holds a copy per user with a session here, loaded
//! (`ChatStore::channels_of_users`, in batches: the `channel_loads` module):
//! - when a session opens, before its `hello` (a client that has its `hello` gets its
//!   channels' messages);
//! - when the user's own `channel.subscribe`, `channel.unsubscribe`, `conversation.leave` or
//!   `conversation.create` is answered `ok`, before that reply is written (a client that has
//!   its `ok` gets the channel's messages, or no more of them);
//! - when an event tells the user of a channel's change (`conversation.updated` of a channel:
//!   added, removed, banned, ownership passed), before the session writes it: a client told
//!   it was added gets the channel's messages from then on, and one told it was removed gets
//!   no more.
//!
//! Loads may finish out of order; each has a generation, and only one newer than the last
//! applied lands (a load started later read a state at least as new). A load the store does
//! not answer fails closed: the user is out of every channel here until a retry succeeds
//! (`Inner::load_channels`), so a member removed meanwhile receives nothing more. A member
//! who misses a live message (a load under way, an edge that started a moment ago) finds it
//! with `channel.sync`, as after any disconnect.
//!
//! Plain state, unit-tested here; the loading is in [`crate::Inner`].

use std::collections::{HashMap, HashSet};

/// A user's channels, as last loaded.
#[derive(Debug, Default)]
struct UserChannels {
    /// The channels.
    of: HashSet<String>,
    /// The latest load started.
    started: u64,
    /// The load whose result is applied.
    applied: u64,
}

/// The channel memberships of this edge's users.
#[derive(Debug, Default)]
pub(crate) struct Channels {
    /// channel → its members with a session on this edge.
    members: HashMap<String, HashSet<String>>,
    /// user (with a session here) → their channels.
    users: HashMap<String, UserChannels>,
}

impl Channels {
    /// The user has a session here: their channels are kept (once loaded).
    pub(crate) fn track(&mut self, user: &str) {
        if !self.users.contains_key(user) {
            self.users.insert(user.to_owned(), UserChannels::default());
        }
    }

    /// The user's last session here closed: their channels are forgotten.
    pub(crate) fn forget(&mut self, user: &str) {
        if let Some(u) = self.users.remove(user) {
            for c in &u.of {
                self.leave(c, user);
            }
        }
    }

    /// A load of the user's channels starts: its generation, or `None` when the user has no
    /// session here.
    pub(crate) fn begin_load(&mut self, user: &str) -> Option<u64> {
        let u = self.users.get_mut(user)?;
        u.started += 1;
        Some(u.started)
    }

    /// A load finished with `channels`: applied unless the user left, or a load started
    /// after it was applied already. Returns the channels the user joined or left, when
    /// applied.
    pub(crate) fn loaded(
        &mut self,
        user: &str,
        generation: u64,
        channels: Vec<String>,
    ) -> Option<Vec<String>> {
        let u = self.users.get_mut(user)?;
        if generation <= u.applied {
            return None;
        }
        u.applied = generation;
        let now: HashSet<String> = channels.into_iter().collect();
        let before = std::mem::take(&mut u.of);
        let mut changed = Vec::new();
        for c in now.difference(&before) {
            self.members
                .entry(c.clone())
                .or_default()
                .insert(user.to_owned());
            changed.push(c.clone());
        }
        for c in before.difference(&now) {
            self.leave(c, user);
            changed.push(c.clone());
        }
        if let Some(u) = self.users.get_mut(user) {
            u.of = now;
        }
        Some(changed)
    }

    /// The user's channels, as last loaded.
    pub(crate) fn of(&self, user: &str) -> impl Iterator<Item = &String> {
        self.users.get(user).into_iter().flat_map(|u| u.of.iter())
    }

    /// The channel's members with a session here.
    pub(crate) fn members(&self, channel: &str) -> impl Iterator<Item = &String> {
        self.members.get(channel).into_iter().flatten()
    }

    fn leave(&mut self, channel: &str, user: &str) {
        if let Some(set) = self.members.get_mut(channel) {
            set.remove(user);
            if set.is_empty() {
                self.members.remove(channel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(c: &Channels, channel: &str) -> Vec<String> {
        let mut m: Vec<String> = c.members(channel).cloned().collect();
        m.sort();
        m
    }

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn loads_apply_their_difference() {
        let mut c = Channels::default();
        c.track("u1");
        c.track("u2");
        let g = c.begin_load("u1").expect("tracked");
        assert!(c.loaded("u1", g, list(&["a", "b"])).is_some());
        let g = c.begin_load("u2").expect("tracked");
        assert!(c.loaded("u2", g, list(&["b"])).is_some());
        assert_eq!(members(&c, "a"), ["u1"]);
        assert_eq!(members(&c, "b"), ["u1", "u2"]);
        let g = c.begin_load("u1").expect("tracked");
        let mut changed = c.loaded("u1", g, list(&["b", "c"])).expect("applied");
        changed.sort();
        assert_eq!(changed, ["a", "c"], "what the user joined or left");
        assert_eq!(c.of("u1").count(), 2);
        assert!(members(&c, "a").is_empty());
        assert_eq!(members(&c, "b"), ["u1", "u2"]);
        assert_eq!(members(&c, "c"), ["u1"]);
        assert!(!c.members.contains_key("a"), "an empty channel is dropped");
    }

    #[test]
    fn an_older_load_finishing_last_is_dropped() {
        let mut c = Channels::default();
        c.track("u");
        let old = c.begin_load("u").expect("tracked");
        let new = c.begin_load("u").expect("tracked");
        assert!(c.loaded("u", new, list(&[])).is_some());
        // The older load read the state before the user left "a": it must not bring it back.
        assert!(c.loaded("u", old, list(&["a"])).is_none());
        assert!(members(&c, "a").is_empty());
        // In order, both land.
        let first = c.begin_load("u").expect("tracked");
        assert!(c.loaded("u", first, list(&["a"])).is_some());
        let second = c.begin_load("u").expect("tracked");
        assert!(c.loaded("u", second, list(&["a", "b"])).is_some());
        assert_eq!(members(&c, "b"), ["u"]);
    }

    #[test]
    fn a_user_without_sessions_is_not_loaded_and_is_forgotten() {
        let mut c = Channels::default();
        assert_eq!(c.begin_load("u"), None);
        c.track("u");
        let g = c.begin_load("u").expect("tracked");
        c.forget("u");
        assert!(
            c.loaded("u", g, list(&["a"])).is_none(),
            "gone before the load landed"
        );
        assert!(members(&c, "a").is_empty());
        c.track("u");
        let g = c.begin_load("u").expect("tracked");
        assert!(c.loaded("u", g, list(&["a"])).is_some());
        c.forget("u");
        assert!(c.members.is_empty() && c.users.is_empty());
    }
}
