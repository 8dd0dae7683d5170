-- hubbub store on PostgreSQL, schema version 2: refresh token families and per-user
-- revocation. Applied after version 1; the same as the SQLite store's
-- sqlite/003_refresh_token_families.sql (see it for what each column holds).
ALTER TABLE refresh_tokens ADD COLUMN family TEXT;
ALTER TABLE refresh_tokens ADD COLUMN used_ms BIGINT;
-- Tokens issued before families existed: each is a family of its own.
UPDATE refresh_tokens SET family = token_hash;
ALTER TABLE refresh_tokens ALTER COLUMN family SET NOT NULL;
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_by_user ON refresh_tokens (user_id);
CREATE TABLE refresh_families (
    family     TEXT   PRIMARY KEY,
    user_id    TEXT   NOT NULL,
    expires_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE INDEX refresh_families_by_user ON refresh_families (user_id);
CREATE INDEX refresh_families_expiry ON refresh_families (expires_ms);
INSERT INTO refresh_families (family, user_id, expires_ms)
    SELECT token_hash, user_id, expires_ms FROM refresh_tokens;
ALTER TABLE users ADD COLUMN tokens_revoked_ms BIGINT;

-- Media usage per owner (the upload quota sums it).
CREATE INDEX media_owner ON media (owner);
