//! Every metric hubbub exports, in one registry: its name, kind, labels and meaning.
//!
//! Code names a metric only through these constants, so a metric cannot be emitted without
//! being listed here; `docs/protocol.md` shows this table, and a test checks both ways that
//! the docs and [`ALL`] agree, and that what `/metrics` shows under load is listed. Pure
//! data, like the rest of this crate.

/// How a metric behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution (Prometheus `_bucket`, `_sum`, `_count`).
    Histogram,
}

/// One exported metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// Its name on `/metrics`.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its labels.
    pub labels: &'static [&'static str],
    /// What it measures.
    pub help: &'static str,
}

macro_rules! registry {
    ($($konst:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal;)*) => {
        $(
            #[doc = $help]
            pub const $konst: &str = $name;
        )*
        /// Every metric, in the order of the docs' table.
        pub const ALL: &[Metric] = &[
            $(Metric { name: $name, kind: Kind::$kind, labels: &[$($label),*], help: $help },)*
        ];
    };
}

registry! {
    CONNECTIONS = "hubbub_connections", Gauge, [], "open WebSocket and SSE sessions on this edge";
    HTTP_CONNECTIONS = "hubbub_http_connections", Gauge, [], "TCP connections open on the listeners of this process";
    CONNECTIONS_REFUSED = "hubbub_connections_refused_total", Counter, ["reason"], "connections refused at the server-wide (`server`, 503) or per-IP (`ip`, 429) cap";
    SESSIONS_EVICTED = "hubbub_sessions_evicted_total", Counter, [], "sessions closed with 4000 because a newer one passed the per-user cap";
    FRAMES_IN = "hubbub_frames_in_total", Counter, ["type"], "client frames by request type (`invalid` for unparseable ones)";
    FRAMES_OUT = "hubbub_frames_out_total", Counter, ["type"], "server frames by type";
    DELIVERY_LATENCY = "hubbub_delivery_latency_seconds", Histogram, [], "from the edge accepting a request to a recipient's edge writing the resulting event";
    RATE_LIMITED = "hubbub_rate_limited_total", Counter, [], "frames, acks and login or signup attempts refused by a rate limit";
    GAP_FILLS = "hubbub_gap_fills_total", Counter, [], "store reads a session made for live events it missed (a push lost, or late past the reorder wait)";
    SLOW_CONSUMERS = "hubbub_slow_consumers_total", Counter, [], "connections cut off as too slow (1013)";
    QUEUE_VISIBLE = "hubbub_queue_visible", Gauge, ["queue"], "messages ready in `main`, `chat`, `feed`, `precompute`, `personalize`, `notify` and `webhooks`";
    QUEUE_IN_FLIGHT = "hubbub_queue_in_flight", Gauge, ["queue"], "messages received, not yet acked";
    QUEUE_DLQ_DEPTH = "hubbub_queue_dlq_depth", Gauge, ["queue"], "messages in the queue's dead-letter queue";
    QUEUE_OLDEST_AGE = "hubbub_queue_oldest_age_seconds", Gauge, ["queue"], "age of the oldest message (the scaling signal)";
    CHAT_HANDLED = "hubbub_chat_handled_total", Counter, ["type"], "chat requests handled";
    FEED_HANDLED = "hubbub_feed_handled_total", Counter, ["type"], "feed requests handled";
    WRITES_REFUSED = "hubbub_writes_refused_total", Counter, ["queue"], "writes a service answered `unavailable` (the store was down)";
    WRITES_SHED = "hubbub_writes_shed_total", Counter, [], "writes an edge refused at capacity (`rate_limited`, admission control)";
    ROUTER_UNROUTABLE = "hubbub_router_unroutable_total", Counter, [], "requests with no service in this build";
    ROUTER_DROPPED = "hubbub_router_dropped_total", Counter, [], "envelopes on `main` that could not be read (dropped, logged)";
    TIMELINE_COMPUTED = "hubbub_timeline_computed_total", Counter, [], "timelines computed by the timeline computer";
    TIMELINE_MISSES = "hubbub_timeline_misses_total", Counter, [], "fetches that found no precomputed timeline (computed on the spot)";
    ENGAGEMENT_PUBLISHED = "hubbub_engagement_published_total", Counter, [], "`engagement` events handed to edges (one per post per edge)";
    ENGAGEMENT_DROPPED = "hubbub_engagement_dropped_total", Counter, [], "`comment.typing` signals dropped because a partition was full";
    EPHEMERAL_EXPIRED = "hubbub_ephemeral_expired_total", Counter, [], "ephemeral conversations deleted by expiry";
    NOTIFY_SENT = "hubbub_notify_sent_total", Counter, ["provider"], "push notifications delivered";
    NOTIFY_FAILED = "hubbub_notify_failed_total", Counter, ["provider"], "failed attempts (retried or dead-lettered)";
    NOTIFY_SUPPRESSED = "hubbub_notify_suppressed_total", Counter, [], "notifications not sent because a device acked the event";
    NOTIFY_DEAD_LETTERED = "hubbub_notify_dead_lettered_total", Counter, [], "notifications moved to `notify.dlq`";
    NOTIFY_EXPIRED = "hubbub_notify_expired_total", Counter, [], "notifications dropped past their TTL";
    WEBHOOK_DELIVERED = "hubbub_webhook_delivered_total", Counter, [], "webhook events an endpoint answered with a 2xx";
    WEBHOOK_FAILED = "hubbub_webhook_failed_total", Counter, [], "webhook attempts that failed (non-2xx, timeout, refused): retried with back-off or dead-lettered";
    WEBHOOK_DEAD_LETTERED = "hubbub_webhook_dead_lettered_total", Counter, [], "webhook events moved to `webhooks.dlq` after their last attempt";
    CONFIG_VERSION = "hubbub_config_version", Gauge, [], "the runtime config version this process applies (0: its config file)";
    CONFIG_APPLIED = "hubbub_config_applied_timestamp_seconds", Gauge, [], "when this process applied its current runtime config version (Unix time, ms precision)";
    CONFIG_APPLY_FAILURES = "hubbub_config_apply_failures_total", Counter, [], "runtime config versions this process could not read or apply (it keeps the last one)";
    CONFIG_WATCH_ERRORS = "hubbub_config_watch_errors_total", Counter, [], "long polls of the runtime config that failed (the watcher retries and keeps the last config)";
    FLAGS_PUSHED = "hubbub_flags_pushed_total", Counter, [], "`flags` frames pushed to sessions whose flag evaluation changed";
    DEBUG_LOGGED = "hubbub_debug_frames_logged_total", Counter, [], "frames logged for sessions under a runtime config `debug` entry";
    ADMIN_REQUESTS = "hubbub_admin_requests_total", Counter, ["status"], "admin API requests by HTTP status";
    ERROR_REPLIES = "hubbub_error_replies_total", Counter, ["code"], "`error` frames sent to clients, by code";
}

/// The registered metric a `/metrics` series belongs to (`name`, or a histogram's
/// `name_bucket`, `name_sum`, `name_count`).
pub fn of_series(series: &str) -> Option<&'static Metric> {
    ALL.iter().find(|m| {
        series == m.name
            || (m.kind == Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| series.strip_suffix(s) == Some(m.name)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_prometheus_shaped() {
        for (i, m) in ALL.iter().enumerate() {
            assert!(m.name.starts_with("hubbub_"), "{}", m.name);
            assert!(
                m.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                m.name
            );
            if m.kind == Kind::Counter {
                assert!(
                    m.name.ends_with("_total"),
                    "counter {} ends with _total",
                    m.name
                );
            }
            assert!(
                ALL[..i].iter().all(|o| o.name != m.name),
                "{} twice",
                m.name
            );
        }
        assert_eq!(
            of_series("hubbub_delivery_latency_seconds_bucket").map(|m| m.name),
            Some(DELIVERY_LATENCY)
        );
        assert_eq!(of_series("hubbub_connections_bucket"), None);
    }
}
