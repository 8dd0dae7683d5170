//! The settings of each part, read from the configuration the same way whatever the
//! backends: the edge's settings and listener limits, the routing table, the engagement
//! settings, the media store, the contact note keys, and the process-wide metrics recorder.

use crate::config::Config;
use anyhow::Context as _;
use hubbub_edge::EdgeConfig;
use hubbub_edge::PrometheusHandle;
use hubbub_router::RoutingTable;
use hubbub_services::chat::{CHAT_QUEUE, CHAT_TYPES};
use hubbub_services::engagement::EngagementConfig;
use hubbub_services::feed::{FEED_QUEUE, FEED_TYPES};
use hubbub_store::{LocalMedia, MediaStore};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The key file that seals contact notes: `<data_dir>/note-keys`.
pub(crate) fn note_keys_file(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("note-keys")
}

/// The contact note keys: read from `<data_dir>/note-keys`, or the file created with one
/// new key on first start. Nodes running roles apart share the file as they share
/// `keys.json`; `hubbub rotate-note-keys` adds a key.
pub(crate) fn note_keys(config: &Config) -> anyhow::Result<hubbub_store::NoteKeys> {
    let path = note_keys_file(config);
    hubbub_store::NoteKeys::load_or_create(&path)
        .with_context(|| format!("the note keys at {}", path.display()))
}

/// `hubbub rotate-note-keys`' first step: append a new current key to the note key file (every
/// older key stays, so every note still opens whatever happens next). Returns the new ring.
pub(crate) fn rotate_note_keys(config: &Config) -> anyhow::Result<hubbub_store::NoteKeys> {
    let path = note_keys_file(config);
    let keys = note_keys(config)?.rotated()?;
    keys.save(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(keys)
}

/// `hubbub rotate-note-keys`' second step: re-seal every note under the current key, a batch per
/// transaction; how many.
pub(crate) async fn reseal_all(store: &dyn hubbub_store::Store) -> anyhow::Result<u64> {
    let mut total = 0;
    loop {
        let n = store.reseal_notes().await?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}

/// How long an edge may stay silent before its sessions are dropped.
pub(crate) fn edge_ttl(config: &Config) -> Duration {
    Duration::from_secs(config.server.edge_ttl_s.max(1))
}

/// An edge's settings.
pub(crate) fn edge_config(config: &Config, edge_id: String) -> EdgeConfig {
    EdgeConfig {
        edge_id,
        limits: config.limits.clone(),
        auth: config.auth.clone(),
        key_file: config.data_dir.join("keys.json"),
        spool_dir: config.data_dir.join("spool"),
        request_timeout: Duration::from_millis(config.server.request_timeout_ms.max(1)),
        ping_interval: Duration::from_secs(config.server.ping_interval_s.max(1)),
        heartbeat_interval: edge_ttl(config) / 3,
        http: http_limits(config),
        max_sessions_per_user: config.server.max_sessions_per_user.max(1),
        operational_on_public: config.admin_listen.is_none(),
        client_ip_header: config.server.client_ip_header.clone(),
        max_inflight_writes: config.server.max_inflight_writes.max(1),
        max_envelope_bytes: config.queue.max_body_bytes,
        admission_wait: Duration::from_millis(config.server.admission_wait_ms.max(1)),
        admission_delivery: (config.server.admission_delivery_ms > 0)
            .then(|| Duration::from_millis(config.server.admission_delivery_ms)),
        bootstrap_key: config.api.bootstrap_key.clone(),
        active_window: Duration::from_secs(config.feed.active_window_s),
        queues: crate::scheduler::QUEUES
            .iter()
            .map(|q| (*q).to_owned())
            .collect(),
        demo: config.demo.enabled,
        note_keys: match note_keys(config) {
            Ok(keys) => Some(Arc::new(keys)),
            Err(e) => {
                // The store, which loads the same file, refuses to start on this error.
                tracing::error!(error = %format!("{e:#}"), "the edge has no note keys");
                None
            }
        },
    }
}

/// The public listener's connection caps and timeouts.
pub(crate) fn http_limits(config: &Config) -> hubbub_edge::listener::HttpLimits {
    let ceiling = hubbub_edge::listener::connection_ceiling();
    let max_connections = match config.server.max_connections {
        0 => ceiling,
        n => n.min(ceiling),
    };
    hubbub_edge::listener::HttpLimits {
        max_connections,
        max_per_ip: config.server.max_connections_per_ip.max(1),
        header_timeout: Duration::from_millis(config.server.header_timeout_ms.max(100)),
        body_timeout: Duration::from_millis(config.server.body_timeout_ms.max(100)),
    }
}

/// Which queue each write goes to.
pub(crate) fn routing_table() -> RoutingTable {
    RoutingTable::new()
        .route(CHAT_TYPES, CHAT_QUEUE)
        .route(FEED_TYPES, FEED_QUEUE)
}

/// The engagement aggregators' settings.
pub(crate) fn engagement_config(config: &Config) -> EngagementConfig {
    EngagementConfig {
        window_s: config.engagement.window_s.max(1),
        top_n: config.engagement.top_n,
        partitions: config.engagement.partitions.max(1),
        subscription_ttl: edge_ttl(config),
        max_words: config.limits.max_text_chars as u32,
        limits: None,
    }
}

/// The media store the configuration names.
pub(crate) fn media_store(
    config: &Config,
    sqlite: impl hubbub_store::MediaMeta + Clone + 'static,
) -> anyhow::Result<Arc<dyn MediaStore>> {
    use crate::config::MediaBackend;
    match config.media.backend {
        MediaBackend::Local => Ok(Arc::new(LocalMedia::new(
            config.data_dir.join("media"),
            sqlite,
        )?)),
        #[cfg(feature = "s3")]
        MediaBackend::S3 => {
            let s3 = config
                .media
                .s3
                .as_ref()
                .context("media.backend = \"s3\" needs a [media.s3] section")?;
            Ok(Arc::new(hubbub_store::ObjectMedia::s3(s3, sqlite)?))
        }
        #[cfg(not(feature = "s3"))]
        MediaBackend::S3 => anyhow::bail!("this build has no S3 support: build with --features s3"),
    }
}

/// The process-wide Prometheus recorder (installed once; servers in one process share it).
pub fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    // Servers starting at once in one process (tests): one installs, the others wait for it.
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let buckets = [
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                hubbub_protocol::metrics::DELIVERY_LATENCY.into(),
            ),
            &buckets,
        )?
        .build_recorder();
    let handle = recorder.handle();
    // Only the first server of the process installs it; later ones reuse the handle.
    if metrics::set_global_recorder(recorder).is_ok() {
        // Every unlabelled counter and gauge of the registry shows from the start (at 0), so
        // dashboards and alerts see it before the first event.
        for m in hubbub_protocol::metrics::ALL
            .iter()
            .filter(|m| m.labels.is_empty())
        {
            match m.kind {
                hubbub_protocol::metrics::Kind::Counter => metrics::counter!(m.name).absolute(0),
                hubbub_protocol::metrics::Kind::Gauge => metrics::gauge!(m.name).set(0.0),
                hubbub_protocol::metrics::Kind::Histogram => {}
            }
        }
        let _ = HANDLE.set(handle);
    }
    HANDLE.get().cloned().context("metrics recorder")
}
