-- hubbub store, schema version 3: refresh token families and per-user revocation. Applied
-- after version 2.
--
-- A family is the chain of refresh tokens started by one login or signup: each refresh uses
-- up one token and issues the next in the same family. A used token is kept (marked used)
-- until it expires, so its second use is recognised: someone holds a copy, and the whole
-- family is revoked.
ALTER TABLE refresh_tokens ADD COLUMN family TEXT NOT NULL DEFAULT '';
ALTER TABLE refresh_tokens ADD COLUMN used_ms INTEGER;  -- NULL until used
-- Tokens issued before families existed: each is a family of its own.
UPDATE refresh_tokens SET family = token_hash;
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_by_user ON refresh_tokens (user_id);

-- A family outlives its tokens' rows (kept an hour past its last token's expiry): a refresh
-- under way when its family is revoked puts its new token in a family marked revoked, and
-- that token is never valid.
CREATE TABLE refresh_families (
    family     TEXT    PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    expires_ms INTEGER NOT NULL,             -- the latest expiry of any of its tokens
    revoked_ms INTEGER                       -- set when revoked (reuse, or the user's revocation)
) WITHOUT ROWID;
CREATE INDEX refresh_families_by_user ON refresh_families (user_id);
CREATE INDEX refresh_families_expiry ON refresh_families (expires_ms);
INSERT INTO refresh_families (family, user_id, expires_ms)
    SELECT token_hash, user_id, expires_ms FROM refresh_tokens;

-- When the user's tokens were last revoked: access tokens issued before it are refused.
ALTER TABLE users ADD COLUMN tokens_revoked_ms INTEGER;  -- NULL: never

-- Media usage per owner (the upload quota sums it).
CREATE INDEX media_owner ON media (owner);
