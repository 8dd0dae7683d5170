//! The protocol's limits with their defaults (PROTOCOL.md, "Limits"); all configurable.

use serde::{Deserialize, Serialize};

/// Size and rate limits enforced by the edge and the services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest client frame, in bytes (64 KiB).
    pub max_frame_bytes: usize,
    /// Longest message or post text, in characters (4,000).
    pub max_text_chars: usize,
    /// Most members of a group, the creator included (1,000).
    pub max_group_members: usize,
    /// Sustained frames per second per connection (20); `ack` frames do not count.
    pub frames_per_s: u32,
    /// Burst of frames per connection (50).
    pub burst: u32,
    /// Frames sent to a connection not yet written to its socket before it is cut off
    /// with close code 1013 (a slow reader).
    pub max_outgoing_frames: usize,
    /// Largest media upload, in bytes (10 MiB).
    pub max_media_bytes: usize,
    /// Bytes sent to a connection not yet written to its socket before it is cut off with
    /// 1013 (1 MiB): the bound that holds whatever the size of the frames.
    pub max_outgoing_bytes: usize,
    /// `ack` frames a second per connection (100): they have a limit of their own, and a
    /// connection sending more than 5 times it in a second is closed with 1008. Acks are
    /// coalesced, so at most one store write per session is in flight.
    pub acks_per_s: u32,
    /// Users one session may watch with `presence.watch`, in all (1,000).
    pub max_presence_watches: usize,
    /// Bytes of media one user may store, in all (1 GiB); 0 means no quota.
    pub media_quota_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_text_chars: 4000,
            max_group_members: 1000,
            frames_per_s: 20,
            burst: 50,
            max_outgoing_frames: 4096,
            max_media_bytes: 10 * 1024 * 1024,
            max_outgoing_bytes: 1024 * 1024,
            acks_per_s: 100,
            max_presence_watches: 1000,
            media_quota_bytes: 1024 * 1024 * 1024,
        }
    }
}
