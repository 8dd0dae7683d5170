//! Contacts' SQL on PostgreSQL.

use super::{ContactRow, ContactTx, Sealed};
use crate::postgres::{Row, Tx};
use crate::{PgStore, Result};

super::impl_contact_store!(PgStore);

const COLUMNS: &str = "user_id, grp, note_key, note_nonce, note, ts";

fn row(r: &Row) -> ContactRow {
    let key: Option<String> = r.get(2);
    let nonce: Option<Vec<u8>> = r.get(3);
    let data: Option<Vec<u8>> = r.get(4);
    let note = match (key, nonce, data) {
        (Some(key), Some(nonce), Some(data)) => Some(Sealed { key, nonce, data }),
        _ => None,
    };
    (r.get(0), r.get(1), note, r.get(5))
}

impl ContactTx for Tx<'_> {
    async fn contact_row(&self, owner: &str, user: &str) -> Result<Option<ContactRow>> {
        let r = self
            .opt(
                &format!("SELECT {COLUMNS} FROM contacts WHERE owner = $1 AND user_id = $2"),
                &[&owner, &user],
            )
            .await?;
        Ok(r.as_ref().map(row))
    }

    async fn put_contact(
        &self,
        owner: &str,
        user: &str,
        group: Option<&str>,
        note: Option<&Sealed>,
        ts: i64,
    ) -> Result<()> {
        let (key, nonce, data) = (
            note.map(|n| n.key.as_str()),
            note.map(|n| n.nonce.as_slice()),
            note.map(|n| n.data.as_slice()),
        );
        self.exec(
            "INSERT INTO contacts (owner, user_id, grp, note_key, note_nonce, note, ts)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (owner, user_id) DO UPDATE SET grp = $3, note_key = $4,
                 note_nonce = $5, note = $6, ts = $7",
            &[&owner, &user, &group, &key, &nonce, &data, &ts],
        )
        .await?;
        Ok(())
    }

    async fn delete_contact(&self, owner: &str, user: &str) -> Result<bool> {
        Ok(self
            .exec(
                "DELETE FROM contacts WHERE owner = $1 AND user_id = $2",
                &[&owner, &user],
            )
            .await?
            > 0)
    }

    async fn contact_rows(&self, owner: &str) -> Result<Vec<ContactRow>> {
        let rows = self
            .rows(
                &format!("SELECT {COLUMNS} FROM contacts WHERE owner = $1 ORDER BY user_id"),
                &[&owner],
            )
            .await?;
        Ok(rows.iter().map(row).collect())
    }

    async fn notes_not_under(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Vec<(String, String, Sealed)>> {
        let limit = limit as i64;
        let rows = self
            .rows(
                "SELECT owner, user_id, note_key, note_nonce, note FROM contacts
                 WHERE note_key IS NOT NULL AND note_key <> $1 LIMIT $2 FOR UPDATE",
                &[&key, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    Sealed {
                        key: r.get(2),
                        nonce: r.get(3),
                        data: r.get(4),
                    },
                )
            })
            .collect())
    }

    async fn sealed_events_not(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, i64, String)>> {
        // `left` rather than LIKE: a key id may hold `_` or `%`. A scan of the inbox, which
        // only the offline rotation command runs.
        let limit = limit as i64;
        let rows = self
            .rows(
                "SELECT user_id, seq, frame FROM inbox
                 WHERE left(frame, 10) = '{\"sealed\":' AND left(frame, length($1)) <> $1
                 LIMIT $2 FOR UPDATE",
                &[&prefix, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    async fn set_event_json(&self, user: &str, seq: i64, json: &str) -> Result<()> {
        self.exec(
            "UPDATE inbox SET frame = $3 WHERE user_id = $1 AND seq = $2",
            &[&user, &seq, &json],
        )
        .await?;
        Ok(())
    }

    async fn set_note(&self, owner: &str, user: &str, note: &Sealed) -> Result<()> {
        self.exec(
            "UPDATE contacts SET note_key = $3, note_nonce = $4, note = $5
             WHERE owner = $1 AND user_id = $2",
            &[&owner, &user, &note.key, &note.nonce, &note.data],
        )
        .await?;
        Ok(())
    }
}
