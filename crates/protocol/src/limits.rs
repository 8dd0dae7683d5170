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
        }
    }
}
