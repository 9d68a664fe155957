-- Expiry (issue 13, item 3), PostgreSQL dialect; keep in step with
-- migrations/sqlite/0014_expiry_and_outbox.sql. `Store::expiring_certificates` and the
-- `tessera_certificates_expiring` gauge ask for good certificates whose notAfter falls in a
-- window, ordered by notAfter; this index keeps that a range scan, not a scan of every
-- certificate ever issued (stored times are fixed-width text, so text order is time order).
CREATE INDEX certificates_status_not_after ON certificates (status, not_after, serial);

-- The notification outbox: one row per notice, written in the transaction of the change it
-- announces (a token suspended or lost) or by the expiry scan (once per certificate and
-- threshold: `dedup_key` is unique, NULL for notices that need no deduplication). The
-- notifier of `tessera serve` delivers rows whose `next_attempt_at` has come and sets
-- `delivered_at` only after the webhook answered 2xx; `id` is the idempotency key it sends.
CREATE TABLE notification_outbox (
    id BIGSERIAL PRIMARY KEY,
    event TEXT NOT NULL,
    dedup_key TEXT UNIQUE,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    delivered_at TEXT,
    last_error TEXT
);
CREATE INDEX notification_outbox_due ON notification_outbox (delivered_at, next_attempt_at, id);
