-- Help-desk enrollment (issue 7), PostgreSQL dialect. Keep in step with
-- migrations/sqlite/0003_enrollment.sql.

-- One enrollment of one token for one person: begun → completed → confirmed, or aborted /
-- expired. `public_id` is what the API shows; `nonce` is single use (only a `begun`
-- enrollment accepts a proof over it). `plan_json` is the slot plan handed to the station.
CREATE TABLE enrollments (
    id BIGSERIAL PRIMARY KEY,
    public_id TEXT NOT NULL UNIQUE,
    person_id BIGINT NOT NULL REFERENCES people(id),
    token_id BIGINT NOT NULL REFERENCES tokens(id),
    profile TEXT NOT NULL,
    state TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    plan_json TEXT NOT NULL,
    firmware TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX enrollments_token ON enrollments(token_id);
CREATE INDEX enrollments_state_expires ON enrollments(state, expires_at);

-- The certificates an enrollment issued, by slot (abort and expiry revoke them).
CREATE TABLE enrollment_certificates (
    enrollment_id BIGINT NOT NULL REFERENCES enrollments(id),
    slot TEXT NOT NULL,
    serial TEXT NOT NULL REFERENCES certificates(serial),
    PRIMARY KEY (enrollment_id, slot)
);

-- Per-token secrets, each wrapped (AES-256-GCM) by the HSM key `wrapping_key_label`.
-- `management_key_*` / `puk_wrapped`: what the token is confirmed to hold (NULL before the
-- first confirmed enrollment). `pending_*`: what the last unconfirmed enrollment handed out
-- (the token may or may not hold them yet); Confirm moves them to the confirmed columns.
CREATE TABLE token_credentials (
    token_id BIGINT PRIMARY KEY REFERENCES tokens(id),
    wrapping_key_label TEXT NOT NULL,
    management_key_algorithm TEXT,
    management_key_wrapped BYTEA,
    puk_wrapped BYTEA,
    pending_management_key_algorithm TEXT,
    pending_management_key_wrapped BYTEA,
    pending_puk_wrapped BYTEA,
    updated_at TEXT NOT NULL
);
