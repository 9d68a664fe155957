-- One format for every stored time (PostgreSQL dialect; keep in step with
-- migrations/sqlite/0004_timestamps.sql): whole seconds, UTC, fixed-width RFC 3339
-- (YYYY-MM-DDTHH:MM:SSZ), so comparing the text compares the times. Until now created_at,
-- updated_at, revoked_at and the checkpoints' `at` kept a variable-length fraction of a second
-- (2026-01-02T03:04:05.123456789Z), which sorts wrongly against whole seconds; this drops it.
-- Truncating keeps order, and every time that left in a certificate, CRL or OCSP answer was
-- already whole seconds. audit_events.at is left as it is: it is hashed into the audit chain
-- (before_json and after_json too), so rewriting it would break verification of every event
-- written before this migration.

UPDATE people SET created_at = substr(created_at, 1, 19) || 'Z' WHERE created_at LIKE '____-__-__T__:__:__.%Z';
UPDATE people SET updated_at = substr(updated_at, 1, 19) || 'Z' WHERE updated_at LIKE '____-__-__T__:__:__.%Z';
UPDATE tokens SET created_at = substr(created_at, 1, 19) || 'Z' WHERE created_at LIKE '____-__-__T__:__:__.%Z';
UPDATE tokens SET updated_at = substr(updated_at, 1, 19) || 'Z' WHERE updated_at LIKE '____-__-__T__:__:__.%Z';
UPDATE certificates SET not_before = substr(not_before, 1, 19) || 'Z' WHERE not_before LIKE '____-__-__T__:__:__.%Z';
UPDATE certificates SET not_after = substr(not_after, 1, 19) || 'Z' WHERE not_after LIKE '____-__-__T__:__:__.%Z';
UPDATE certificates SET revoked_at = substr(revoked_at, 1, 19) || 'Z' WHERE revoked_at LIKE '____-__-__T__:__:__.%Z';
UPDATE certificates SET created_at = substr(created_at, 1, 19) || 'Z' WHERE created_at LIKE '____-__-__T__:__:__.%Z';
UPDATE certificates SET updated_at = substr(updated_at, 1, 19) || 'Z' WHERE updated_at LIKE '____-__-__T__:__:__.%Z';
UPDATE idempotency SET created_at = substr(created_at, 1, 19) || 'Z' WHERE created_at LIKE '____-__-__T__:__:__.%Z';
UPDATE audit_checkpoints SET at = substr(at, 1, 19) || 'Z' WHERE at LIKE '____-__-__T__:__:__.%Z';
UPDATE crl_state SET this_update = substr(this_update, 1, 19) || 'Z' WHERE this_update LIKE '____-__-__T__:__:__.%Z';
UPDATE crl_state SET next_update = substr(next_update, 1, 19) || 'Z' WHERE next_update LIKE '____-__-__T__:__:__.%Z';
UPDATE enrollments SET expires_at = substr(expires_at, 1, 19) || 'Z' WHERE expires_at LIKE '____-__-__T__:__:__.%Z';
UPDATE enrollments SET created_at = substr(created_at, 1, 19) || 'Z' WHERE created_at LIKE '____-__-__T__:__:__.%Z';
UPDATE enrollments SET updated_at = substr(updated_at, 1, 19) || 'Z' WHERE updated_at LIKE '____-__-__T__:__:__.%Z';
UPDATE token_credentials SET updated_at = substr(updated_at, 1, 19) || 'Z' WHERE updated_at LIKE '____-__-__T__:__:__.%Z';
