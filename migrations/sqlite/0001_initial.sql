-- Tessera schema, SQLite dialect. Keep in step with migrations/postgres/0001_initial.sql.
CREATE TABLE people (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    external_id TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    upn TEXT NOT NULL,
    email TEXT NOT NULL,
    windows_sid TEXT,
    attributes_json TEXT NOT NULL,
    state TEXT NOT NULL,
    sync_generation BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    serial TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    firmware TEXT NOT NULL,
    form_factor TEXT NOT NULL,
    state TEXT NOT NULL,
    person_id BIGINT REFERENCES people(id),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE certificates (
    serial TEXT PRIMARY KEY,
    person_id BIGINT REFERENCES people(id),
    token_id BIGINT REFERENCES tokens(id),
    profile TEXT NOT NULL,
    status TEXT NOT NULL,
    tbs BLOB NOT NULL,
    der BLOB,
    sha256 TEXT UNIQUE,
    not_before TEXT NOT NULL,
    not_after TEXT NOT NULL,
    revocation_reason BIGINT,
    revoked_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX certificates_person ON certificates(person_id);
CREATE INDEX certificates_token ON certificates(token_id);

CREATE TABLE idempotency (
    request_id TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    response BLOB NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE audit_events (
    sequence BIGINT PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    before_json TEXT NOT NULL,
    after_json TEXT NOT NULL,
    request_id TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);

CREATE TABLE audit_checkpoints (
    sequence BIGINT PRIMARY KEY,
    head_hash BLOB NOT NULL,
    key_id TEXT NOT NULL,
    signature BLOB NOT NULL,
    at TEXT NOT NULL
);

-- One row; every writing transaction updates it first, so writers are serialised on both
-- databases (the audit chain needs one writer at a time).
CREATE TABLE write_lock (id BIGINT PRIMARY KEY, counter BIGINT NOT NULL);
INSERT INTO write_lock (id, counter) VALUES (1, 0);

CREATE TABLE sync_state (id BIGINT PRIMARY KEY, generation BIGINT NOT NULL);
INSERT INTO sync_state (id, generation) VALUES (1, 0);
