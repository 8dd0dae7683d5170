//! Contacts' SQL on SQLite.

use super::{ContactRow, ContactTx, Sealed};
use crate::sqlite::Tx;
use crate::{Result, SqliteStore};
use rusqlite::{OptionalExtension, params};

super::impl_contact_store!(SqliteStore);

const COLUMNS: &str = "user_id, grp, note_key, note_nonce, note, ts";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ContactRow> {
    let key: Option<String> = r.get(2)?;
    let nonce: Option<Vec<u8>> = r.get(3)?;
    let data: Option<Vec<u8>> = r.get(4)?;
    let note = match (key, nonce, data) {
        (Some(key), Some(nonce), Some(data)) => Some(Sealed { key, nonce, data }),
        _ => None,
    };
    Ok((r.get(0)?, r.get(1)?, note, r.get(5)?))
}

impl ContactTx for Tx<'_> {
    async fn contact_row(&self, owner: &str, user: &str) -> Result<Option<ContactRow>> {
        Ok(self
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM contacts WHERE owner = ?1 AND user_id = ?2"
            ))?
            .query_row(params![owner, user], row)
            .optional()?)
    }

    async fn put_contact(
        &self,
        owner: &str,
        user: &str,
        group: Option<&str>,
        note: Option<&Sealed>,
        ts: i64,
    ) -> Result<()> {
        self.prepare_cached(
            "INSERT OR REPLACE INTO contacts (owner, user_id, grp, note_key, note_nonce, note, ts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            owner,
            user,
            group,
            note.map(|n| &n.key),
            note.map(|n| &n.nonce),
            note.map(|n| &n.data),
            ts
        ])?;
        Ok(())
    }

    async fn delete_contact(&self, owner: &str, user: &str) -> Result<bool> {
        Ok(self
            .prepare_cached("DELETE FROM contacts WHERE owner = ?1 AND user_id = ?2")?
            .execute(params![owner, user])?
            > 0)
    }

    async fn contact_rows(&self, owner: &str) -> Result<Vec<ContactRow>> {
        let mut st = self.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM contacts WHERE owner = ?1 ORDER BY user_id"
        ))?;
        let rows = st.query_map([owner], row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    async fn notes_not_under(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Vec<(String, String, Sealed)>> {
        let mut st = self.prepare_cached(
            "SELECT owner, user_id, note_key, note_nonce, note FROM contacts
             WHERE note_key IS NOT NULL AND note_key <> ?1 LIMIT ?2",
        )?;
        let rows = st.query_map(params![key, limit as i64], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                Sealed {
                    key: r.get(2)?,
                    nonce: r.get(3)?,
                    data: r.get(4)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    async fn sealed_events_not(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, i64, String)>> {
        // `substr` rather than LIKE: a key id may hold `_` or `%`. A scan of the inbox, which
        // only the offline rotation command runs.
        let mut st = self.prepare_cached(
            "SELECT user_id, seq, frame FROM inbox
             WHERE substr(frame, 1, 10) = '{\"sealed\":' AND substr(frame, 1, length(?1)) <> ?1
             LIMIT ?2",
        )?;
        let rows = st.query_map(params![prefix, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    async fn set_event_json(&self, user: &str, seq: i64, json: &str) -> Result<()> {
        self.prepare_cached("UPDATE inbox SET frame = ?3 WHERE user_id = ?1 AND seq = ?2")?
            .execute(params![user, seq, json])?;
        Ok(())
    }

    async fn set_note(&self, owner: &str, user: &str, note: &Sealed) -> Result<()> {
        self.prepare_cached(
            "UPDATE contacts SET note_key = ?3, note_nonce = ?4, note = ?5
             WHERE owner = ?1 AND user_id = ?2",
        )?
        .execute(params![owner, user, note.key, note.nonce, note.data])?;
        Ok(())
    }
}
