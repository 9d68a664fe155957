-- Wrapped token credentials bound to their place (issue 12, finding 8), PostgreSQL dialect; keep in
-- step with migrations/sqlite/0006_token_credentials_aad.sql.
-- aad_version 1: the blobs were wrapped with the fixed associated data of before this migration
-- (every existing row); the server unwraps them so once more and re-wraps them as version 2 the
-- next time it uses them. aad_version 2: each blob's associated data names the token serial,
-- the field (PUK or management key) and the generation of its credentials (`generation` for
-- the confirmed ones, `pending_generation` for the pending ones), so a blob copied to another
-- row, field or generation no longer unwraps. A generation grows by one with each wrapping.
ALTER TABLE token_credentials ADD COLUMN aad_version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE token_credentials ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_credentials ADD COLUMN pending_generation BIGINT NOT NULL DEFAULT 0;
