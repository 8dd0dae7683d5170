-- Contacts in PROTOCOL.md 1.1: each user's private address book. A note is sealed
-- (ChaCha20-Poly1305): the key's id, the nonce and the ciphertext, never the text.
CREATE TABLE contacts (
    owner      TEXT   NOT NULL,
    user_id    TEXT   NOT NULL,
    grp        TEXT,
    note_key   TEXT,                      -- the id of the key that sealed the note
    note_nonce BYTEA,
    note       BYTEA,                     -- ciphertext and tag
    ts         BIGINT NOT NULL,           -- when the contact was last set
    PRIMARY KEY (owner, user_id)
);
-- Re-sealing after a rotation finds the notes under older keys.
CREATE INDEX contacts_by_note_key ON contacts (note_key) WHERE note_key IS NOT NULL;
