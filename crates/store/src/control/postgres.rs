//! The control plane's SQL on PostgreSQL, and the process's `LISTEN hubbub_config`
//! connection: it carries each committed runtime config version (announced by `NOTIFY` in the
//! committing transaction) into the store's channel of versions, and on every (re)connection
//! reads the current version first, so a watcher that lost its connection catches up.

use super::{ApiKey, ControlTx, KeyRow, WebhookRow};
use crate::postgres::Tx;
use crate::{PgStore, Result};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};

super::impl_control_store!(PgStore);

/// The channel PostgreSQL announces runtime config versions on.
const CHANNEL: &str = "hubbub_config";
/// Reconnection back-off of the listening connection: from, to.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// The latest runtime config version this process knows, and (until the first watcher asks)
/// the sender its listening task will own.
pub(crate) struct ConfigWatch {
    url: String,
    versions: watch::Receiver<u64>,
    unstarted: Mutex<Option<watch::Sender<u64>>>,
}

impl ConfigWatch {
    pub(crate) fn new(url: &str) -> Self {
        let (tx, versions) = watch::channel(0);
        ConfigWatch {
            url: url.to_owned(),
            versions,
            unstarted: Mutex::new(Some(tx)),
        }
    }
}

impl PgStore {
    /// A change committed: its NOTIFY reaches every listener, this process's included.
    fn config_committed(&self, _version: u64) {}

    /// The channel of versions; the first call starts the listening task, which ends when
    /// the store's last handle (and every watcher) is gone.
    fn config_versions(&self) -> watch::Receiver<u64> {
        let w = &self.config_watch;
        if let Some(tx) = w.unstarted.lock().unwrap_or_else(|p| p.into_inner()).take() {
            tokio::spawn(listen(w.url.clone(), tx));
        }
        w.versions.clone()
    }
}

fn bump(tx: &watch::Sender<u64>, version: u64) {
    tx.send_if_modified(|v| {
        let newer = version > *v;
        if newer {
            *v = version;
        }
        newer
    });
}

/// Keep a listening connection until nobody watches; reconnect with back-off.
async fn listen(url: String, tx: watch::Sender<u64>) {
    let mut backoff = BACKOFF.0;
    loop {
        match listening(&url, &tx).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "runtime config listener lost its connection; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tx.closed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// One listening connection: `Ok` when nobody watches any more, `Err` when it failed.
async fn listening(url: &str, tx: &watch::Sender<u64>) -> Result<(), tokio_postgres::Error> {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await?;
    let (notes, mut notified) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = notes.send(n.payload().to_owned());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    let caught_up = async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        let row = client
            .query_one("SELECT version FROM runtime_config WHERE id = 1", &[])
            .await?;
        Ok::<i64, tokio_postgres::Error>(row.get(0))
    };
    match caught_up.await {
        Ok(v) => bump(tx, u64::try_from(v).unwrap_or(0)),
        Err(e) => {
            driver.abort();
            return Err(e);
        }
    }
    loop {
        tokio::select! {
            note = notified.recv() => match note {
                Some(payload) => {
                    if let Ok(v) = payload.parse::<u64>() {
                        bump(tx, v);
                    }
                }
                None => break,
            },
            _ = tx.closed() => {
                driver.abort();
                return Ok(());
            }
        }
    }
    // The connection ended: say why (a clean end is still a lost listener).
    match driver.await {
        Ok(Err(e)) => Err(e),
        _ => {
            // Ask the server anything to get an error value describing the closed connection.
            client.batch_execute("SELECT 1").await?;
            Ok(())
        }
    }
}

impl ControlTx for Tx<'_> {
    async fn insert_key(&self, key: &ApiKey, hash: &str) -> Result<()> {
        self.exec(
            "INSERT INTO api_keys (id, name, key_hash, scopes, created_ms) VALUES ($1, $2, $3, $4, $5)",
            &[&key.id, &key.name, &hash, &key.scopes.join(","), &key.created_ms],
        )
        .await?;
        Ok(())
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRow>> {
        Ok(self
            .opt(
                "SELECT id, name, scopes, created_ms FROM api_keys
                 WHERE key_hash = $1 AND revoked_ms IS NULL",
                &[&hash],
            )
            .await?
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))))
    }

    async fn live_keys(&self) -> Result<Vec<KeyRow>> {
        Ok(self
            .rows(
                "SELECT id, name, scopes, created_ms FROM api_keys
                 WHERE revoked_ms IS NULL ORDER BY created_ms, created_seq",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    async fn revoke_key(&self, id: &str, now: i64) -> Result<bool> {
        Ok(self
            .exec(
                "UPDATE api_keys SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL",
                &[&id, &now],
            )
            .await?
            == 1)
    }

    async fn config_row(&self) -> Result<(i64, String)> {
        let r = self
            .one("SELECT version, body FROM runtime_config WHERE id = 1", &[])
            .await?;
        Ok((r.get(0), r.get(1)))
    }

    async fn swap_config(&self, expected: i64, body: &str, now: i64) -> Result<bool> {
        let swapped = self
            .exec(
                "UPDATE runtime_config SET version = version + 1, body = $2, updated_ms = $3
                 WHERE id = 1 AND version = $1",
                &[&expected, &body, &now],
            )
            .await?
            == 1;
        if swapped {
            let version = (expected + 1).to_string();
            self.exec("SELECT pg_notify($1, $2)", &[&CHANNEL, &version])
                .await?;
        }
        Ok(swapped)
    }

    async fn count_active(&self, since_ms: i64) -> Result<i64> {
        Ok(self
            .one(
                "SELECT COUNT(*) FROM activity WHERE active_ms >= $1",
                &[&since_ms],
            )
            .await?
            .get(0))
    }

    async fn insert_webhook(&self, row: &WebhookRow) -> Result<()> {
        self.exec(
            "INSERT INTO webhooks (id, url, events, secret, created_ms) VALUES ($1, $2, $3, $4, $5)",
            &[&row.0, &row.1, &row.2, &row.3, &row.4],
        )
        .await?;
        Ok(())
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool> {
        Ok(self
            .exec("DELETE FROM webhooks WHERE id = $1", &[&id])
            .await?
            == 1)
    }

    async fn webhook_rows(&self) -> Result<Vec<WebhookRow>> {
        Ok(self
            .rows(
                "SELECT id, url, events, secret, created_ms FROM webhooks ORDER BY created_ms, id",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect())
    }

    async fn presence_row(&self, user: &str) -> Result<Option<bool>> {
        Ok(self
            .opt(
                "SELECT online FROM webhook_presence WHERE user_id = $1",
                &[&user],
            )
            .await?
            .map(|r| r.get(0)))
    }

    async fn upsert_presence(&self, user: &str, online: bool, now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO webhook_presence (user_id, online, changed_ms) VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE SET online = $2, changed_ms = $3",
            &[&user, &online, &now],
        )
        .await?;
        Ok(())
    }

    async fn online_after(&self, after: &str, limit: i64) -> Result<Vec<String>> {
        Ok(self
            .rows(
                "SELECT user_id FROM webhook_presence WHERE online AND user_id > $1
                 ORDER BY user_id LIMIT $2",
                &[&after, &limit],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
}
