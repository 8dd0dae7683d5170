-- API keys are listed in creation order; two created in the same millisecond were ordered by
-- their random ids (SQLite breaks the tie with its rowid). Existing keys are numbered in an
-- arbitrary order, new ones as they are created.
ALTER TABLE api_keys ADD COLUMN created_seq BIGSERIAL;
