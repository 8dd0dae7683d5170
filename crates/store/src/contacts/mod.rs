//! Contacts: each user's private address book (a group and a note per contact), with the
//! rules written once ([`ContactStore`]); `sqlite.rs` and `postgres.rs` hold the SQL.
//!
//! Notes never reach the database in clear text. A note is sealed by [`NoteKeys`] (see
//! [`keys`]) with the row's (owner, user) as associated data, and stored as three columns:
//! the key id, the nonce, the ciphertext. The `contact.updated` event that carries a note is
//! sealed whole in the owner's inbox too (its row's JSON is `{"sealed":{...}}`, bound to the
//! (user, seq) it is stored under) and opened on replay. A store given no keys refuses a note
//! (`internal`) rather than keep it in clear.
//!
//! Nor in the queue: the edge seals a `contact.set`'s note before the request goes on the
//! `main` queue ([`seal_for_transit`], the note becomes `\u{1}sealed:<key>:<nonce>:<data>`,
//! bound to the owner and the user), and [`ContactStore::set_contact`] opens it. The edge
//! refuses a client's note that starts with U+0001, so no client can forge that form.
//!
//! Rotation ([`ContactStore::reseal_notes`], batch by batch) re-seals the notes, then the
//! sealed inbox rows, under the current key.
//!
//! `contact.set` merges: an absent group or note keeps the current one, an empty one clears
//! it. A set that changes nothing (a redelivery, a repeat) writes no event.

pub mod keys;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

pub use keys::{NoteKeys, Sealed};

use crate::accounts::{AccountTx, user_exists};
use crate::inbox::InboxTx;
use crate::{Event, Result, StoreError, Written, json_err};
use async_trait::async_trait;
use hubbub_protocol::{Contact, ServerFrame};

/// The longest contact group, in characters.
pub const MAX_GROUP_CHARS: usize = 64;
/// The longest contact note, in characters.
pub const MAX_NOTE_CHARS: usize = 1000;
/// The most notes one [`ContactStore::reseal_notes`] call re-seals.
pub const RESEAL_BATCH: usize = 500;

/// Each user's contacts.
#[async_trait]
pub trait ContactStore: Send + Sync {
    /// `contact.set`: add `user` to `owner`'s contacts or change the contact (an absent
    /// `group` or `note` keeps the current one, an empty one clears it). An unknown user is
    /// `NotFound`, oneself `BadRequest`, a group over 64 or a note over 1,000 characters
    /// `TooLarge`. A change appends `contact.updated` to the owner's inbox.
    async fn set_contact(
        &self,
        owner: &str,
        user: &str,
        group: Option<&str>,
        note: Option<&str>,
    ) -> Result<Written<Contact>>;

    /// `contact.remove` (idempotent; a removal appends `contact.updated` with `removed`).
    async fn remove_contact(&self, owner: &str, user: &str) -> Result<Written<()>>;

    /// `contact.list`: `owner`'s contacts by user id, notes opened.
    async fn contacts(&self, owner: &str) -> Result<Vec<Contact>>;

    /// Re-seal up to [`RESEAL_BATCH`] notes sealed under a key other than the current one,
    /// or, when no such note is left, up to as many sealed inbox events; how many (0 when
    /// none of either is left).
    async fn reseal_notes(&self) -> Result<u64>;
}

/// A stored contact: user, group, sealed note, ts.
pub(crate) type ContactRow = (String, Option<String>, Option<Sealed>, i64);

/// What the contact rules need of a transaction; each backend implements it with its SQL.
pub(crate) trait ContactTx {
    /// One contact of `owner`.
    async fn contact_row(&self, owner: &str, user: &str) -> Result<Option<ContactRow>>;
    /// Insert or replace a contact.
    async fn put_contact(
        &self,
        owner: &str,
        user: &str,
        group: Option<&str>,
        note: Option<&Sealed>,
        ts: i64,
    ) -> Result<()>;
    /// Delete a contact; whether there was one.
    async fn delete_contact(&self, owner: &str, user: &str) -> Result<bool>;
    /// `owner`'s contacts by user id.
    async fn contact_rows(&self, owner: &str) -> Result<Vec<ContactRow>>;
    /// Up to `limit` (owner, user, note) whose note is sealed under a key other than `key`.
    async fn notes_not_under(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Vec<(String, String, Sealed)>>;
    /// Replace a contact's sealed note.
    async fn set_note(&self, owner: &str, user: &str, note: &Sealed) -> Result<()>;
    /// Up to `limit` sealed inbox rows (user, seq, JSON) whose JSON does not start with
    /// `prefix` (the sealed form under the current key).
    async fn sealed_events_not(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, i64, String)>>;
    /// Replace an inbox row's JSON.
    async fn set_event_json(&self, user: &str, seq: i64, json: &str) -> Result<()>;
}

/// The associated data of a contact's note: its row.
fn note_aad(owner: &str, user: &str) -> Vec<u8> {
    format!("contact\0{owner}\0{user}").into_bytes()
}

/// What a note sealed for the queue starts with (a client's note may not).
pub const TRANSIT_PREFIX: &str = "\u{1}sealed:";

fn transit_aad(owner: &str, user: &str) -> Vec<u8> {
    format!("transit\0{owner}\0{user}").into_bytes()
}

/// A `contact.set` note sealed for its trip through the queue (the edge calls it).
pub fn seal_for_transit(keys: &NoteKeys, owner: &str, user: &str, note: &str) -> Result<String> {
    let s = keys.seal(&transit_aad(owner, user), note.as_bytes())?;
    Ok(format!(
        "{TRANSIT_PREFIX}{}:{}:{}",
        s.key,
        hex::encode(s.nonce),
        hex::encode(s.data)
    ))
}

/// A note as the client wrote it: opened if it was sealed for transit.
fn from_transit(keys: Option<&NoteKeys>, owner: &str, user: &str, note: &str) -> Result<String> {
    let Some(rest) = note.strip_prefix(TRANSIT_PREFIX) else {
        return Ok(note.to_owned());
    };
    let bad = || StoreError::BadRequest("a malformed sealed note".into());
    let mut parts = rest.splitn(3, ':');
    let (Some(key), Some(nonce), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let sealed = Sealed {
        key: key.to_owned(),
        nonce: hex::decode(nonce).map_err(|_| bad())?,
        data: hex::decode(data).map_err(|_| bad())?,
    };
    let plain = need(keys)?.open(&transit_aad(owner, user), &sealed)?;
    String::from_utf8(plain).map_err(|_| bad())
}

/// The associated data of a sealed inbox row.
fn event_aad(user: &str, seq: u64) -> Vec<u8> {
    format!("inbox\0{user}\0{seq}").into_bytes()
}

fn need(keys: Option<&NoteKeys>) -> Result<&NoteKeys> {
    keys.ok_or_else(|| StoreError::Internal("no note keys are configured".into()))
}

fn open_note(keys: Option<&NoteKeys>, owner: &str, user: &str, s: &Sealed) -> Result<String> {
    let plain = need(keys)?.open(&note_aad(owner, user), s)?;
    String::from_utf8(plain).map_err(|_| StoreError::Internal("a note is not UTF-8".into()))
}

fn contact_of(keys: Option<&NoteKeys>, owner: &str, row: ContactRow) -> Result<Contact> {
    let (user, group, note, ts) = row;
    let note = match note {
        Some(s) => Some(open_note(keys, owner, &user, &s)?),
        None => None,
    };
    Ok(Contact {
        user,
        group,
        note,
        ts,
    })
}

/// The JSON an inbox row holds for a sealed frame.
#[derive(serde::Serialize, serde::Deserialize)]
struct SealedRow {
    sealed: SealedJson,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SealedJson {
    key: String,
    nonce: String,
    data: String,
}

/// Whether an inbox row's JSON is a sealed frame (a frame's JSON starts with its `type`).
pub(crate) fn is_sealed_row(json: &str) -> bool {
    json.starts_with("{\"sealed\":")
}

/// Open a sealed inbox row stored under (user, seq).
pub(crate) fn open_row(
    keys: Option<&NoteKeys>,
    user: &str,
    seq: u64,
    json: &str,
) -> Result<ServerFrame> {
    let row: SealedRow = serde_json::from_str(json).map_err(json_err)?;
    let hex_err = |_| StoreError::Internal("a sealed inbox row is not hex".into());
    let sealed = Sealed {
        key: row.sealed.key,
        nonce: hex::decode(row.sealed.nonce).map_err(hex_err)?,
        data: hex::decode(row.sealed.data).map_err(hex_err)?,
    };
    let plain = need(keys)?.open(&event_aad(user, seq), &sealed)?;
    serde_json::from_slice(&plain).map_err(json_err)
}

/// A frame's JSON sealed for the inbox row (user, seq).
fn seal_row(keys: &NoteKeys, user: &str, seq: u64, json: &str) -> Result<String> {
    let s = keys.seal(&event_aad(user, seq), json.as_bytes())?;
    serde_json::to_string(&SealedRow {
        sealed: SealedJson {
            key: s.key,
            nonce: hex::encode(s.nonce),
            data: hex::encode(s.data),
        },
    })
    .map_err(json_err)
}

/// How a sealed inbox row under `key` starts (the fields serialize in order).
fn sealed_row_prefix(key: &str) -> String {
    format!("{{\"sealed\":{{\"key\":\"{key}\",")
}

/// Append `contact.updated` to `owner`'s inbox, sealed when it carries a note.
async fn contact_event(
    tx: &impl InboxTx,
    keys: Option<&NoteKeys>,
    owner: &str,
    now: i64,
    make: impl FnOnce(u64) -> ServerFrame,
) -> Result<Event> {
    let seq = tx.next_seq(owner).await?;
    let frame = make(seq);
    let json = serde_json::to_string(&frame).map_err(json_err)?;
    let has_note = matches!(
        &frame,
        ServerFrame::ContactUpdated { contact: Some(c), .. } if c.note.is_some()
    );
    let stored = if has_note {
        seal_row(need(keys)?, owner, seq, &json)?
    } else {
        json
    };
    tx.insert_event(owner, seq, now, &stored).await?;
    Ok(Event {
        user: owner.to_owned(),
        frame,
    })
}

/// `None` for absent, `Some(None)` to clear, `Some(Some(v))` to set.
fn change(v: Option<&str>) -> Option<Option<String>> {
    v.map(|v| (!v.is_empty()).then(|| v.to_owned()))
}

pub(crate) async fn set_contact(
    tx: &(impl ContactTx + InboxTx + AccountTx),
    keys: Option<&NoteKeys>,
    owner: &str,
    user: &str,
    group: Option<&str>,
    note: Option<&str>,
    now: i64,
) -> Result<Written<Contact>> {
    let note = note
        .map(|n| from_transit(keys, owner, user, n))
        .transpose()?;
    let note = note.as_deref();
    if group.is_some_and(|g| g.chars().count() > MAX_GROUP_CHARS) {
        return Err(StoreError::TooLarge(format!(
            "a group is at most {MAX_GROUP_CHARS} characters"
        )));
    }
    if note.is_some_and(|n| n.chars().count() > MAX_NOTE_CHARS) {
        return Err(StoreError::TooLarge(format!(
            "a note is at most {MAX_NOTE_CHARS} characters"
        )));
    }
    if owner == user {
        return Err(StoreError::BadRequest(
            "you cannot be your own contact".into(),
        ));
    }
    if !user_exists(tx, user).await? {
        return Err(StoreError::NotFound(format!("no user {user}")));
    }
    let current = match tx.contact_row(owner, user).await? {
        Some(row) => Some(contact_of(keys, owner, row)?),
        None => None,
    };
    let (old_group, old_note) = current
        .as_ref()
        .map_or((None, None), |c| (c.group.clone(), c.note.clone()));
    let new_group = change(group).unwrap_or(old_group);
    let new_note = change(note).unwrap_or(old_note);
    if let Some(c) = current
        && c.group == new_group
        && c.note == new_note
    {
        return Ok(Written::nothing(c));
    }
    let sealed = match &new_note {
        Some(n) => Some(need(keys)?.seal(&note_aad(owner, user), n.as_bytes())?),
        None => None,
    };
    tx.put_contact(owner, user, new_group.as_deref(), sealed.as_ref(), now)
        .await?;
    let contact = Contact {
        user: user.to_owned(),
        group: new_group,
        note: new_note,
        ts: now,
    };
    let event = contact_event(tx, keys, owner, now, |seq| ServerFrame::ContactUpdated {
        seq,
        contact: Some(contact.clone()),
        user: None,
        removed: false,
    })
    .await?;
    Ok(Written::new(contact, vec![event]))
}

pub(crate) async fn remove_contact(
    tx: &(impl ContactTx + InboxTx),
    owner: &str,
    user: &str,
    now: i64,
) -> Result<Written<()>> {
    if !tx.delete_contact(owner, user).await? {
        return Ok(Written::nothing(()));
    }
    let event = contact_event(tx, None, owner, now, |seq| ServerFrame::ContactUpdated {
        seq,
        contact: None,
        user: Some(user.to_owned()),
        removed: true,
    })
    .await?;
    Ok(Written::new((), vec![event]))
}

pub(crate) async fn contacts(
    tx: &impl ContactTx,
    keys: Option<&NoteKeys>,
    owner: &str,
) -> Result<Vec<Contact>> {
    tx.contact_rows(owner)
        .await?
        .into_iter()
        .map(|row| contact_of(keys, owner, row))
        .collect()
}

pub(crate) async fn reseal_notes(tx: &impl ContactTx, keys: Option<&NoteKeys>) -> Result<u64> {
    let keys = need(keys)?;
    let due = tx.notes_not_under(keys.current(), RESEAL_BATCH).await?;
    for (owner, user, old) in &due {
        let aad = note_aad(owner, user);
        let plain = keys.open(&aad, old)?;
        tx.set_note(owner, user, &keys.seal(&aad, &plain)?).await?;
    }
    if !due.is_empty() {
        return Ok(due.len() as u64);
    }
    let rows = tx
        .sealed_events_not(&sealed_row_prefix(keys.current()), RESEAL_BATCH)
        .await?;
    for (user, seq, json) in &rows {
        let seq = u64::try_from(*seq).map_err(|_| StoreError::Internal("a negative seq".into()))?;
        let frame = open_row(Some(keys), user, seq, json)?;
        let plain = serde_json::to_string(&frame).map_err(json_err)?;
        tx.set_event_json(
            user,
            crate::to_i64(seq),
            &seal_row(keys, user, seq, &plain)?,
        )
        .await?;
    }
    Ok(rows.len() as u64)
}

/// [`ContactStore`] for a backend (which has a `note_keys: Option<Arc<NoteKeys>>` field).
macro_rules! impl_contact_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::contacts::ContactStore for $store {
            async fn set_contact(
                &self,
                owner: &str,
                user: &str,
                group: Option<&str>,
                note: Option<&str>,
            ) -> Result<$crate::Written<hubbub_protocol::Contact>, $crate::StoreError> {
                let (owner, user) = (owner.to_owned(), user.to_owned());
                let (group, note) = (group.map(str::to_owned), note.map(str::to_owned));
                let keys = self.note_keys.clone();
                let now = self.now();
                $crate::run!(self.write, |tx| $crate::contacts::set_contact(
                    tx,
                    keys.as_deref(),
                    &owner,
                    &user,
                    group.as_deref(),
                    note.as_deref(),
                    now
                ))
            }

            async fn remove_contact(
                &self,
                owner: &str,
                user: &str,
            ) -> Result<$crate::Written<()>, $crate::StoreError> {
                let (owner, user) = (owner.to_owned(), user.to_owned());
                let now = self.now();
                $crate::run!(self.write, |tx| $crate::contacts::remove_contact(
                    tx, &owner, &user, now
                ))
            }

            async fn contacts(
                &self,
                owner: &str,
            ) -> Result<Vec<hubbub_protocol::Contact>, $crate::StoreError> {
                let owner = owner.to_owned();
                let keys = self.note_keys.clone();
                $crate::run!(self.read, |tx| $crate::contacts::contacts(
                    tx,
                    keys.as_deref(),
                    &owner
                ))
            }

            async fn reseal_notes(&self) -> Result<u64, $crate::StoreError> {
                let keys = self.note_keys.clone();
                $crate::run!(self.write, |tx| $crate::contacts::reseal_notes(
                    tx,
                    keys.as_deref()
                ))
            }
        }
    };
}
pub(crate) use impl_contact_store;
