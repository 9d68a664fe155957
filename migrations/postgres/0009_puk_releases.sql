-- PUK release controls (issue 12, finding 9), PostgreSQL dialect; keep in step with
-- migrations/sqlite/0009_puk_releases.sql.
-- One row per ReleasePuk that handed out a token's PUK or, under dual control
-- (`[enrollment] puk_release_approval`), asked for it. `requester_certificate` is the serial
-- (lower-case hex) of the caller's client certificate: the per-operator rate limit counts the
-- rows it released (`released_at`) in the last hour, across restarts and replicas. Under dual
-- control a row is `pending` until a second certificate approves it (`approved`, with the
-- approver's certificate, name and reason), then `released` when the requester collects the
-- secrets once; `expires_at` ends a pending request and then an approval that was not used.
CREATE TABLE puk_releases (
    id BIGSERIAL PRIMARY KEY,
    public_id TEXT NOT NULL UNIQUE,
    token_id BIGINT NOT NULL REFERENCES tokens(id),
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    requester_certificate TEXT NOT NULL,
    requester_name TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    approver_certificate TEXT,
    approver_name TEXT,
    approval_reason TEXT,
    approved_at TEXT,
    released_at TEXT
);
CREATE INDEX puk_releases_requester_released ON puk_releases(requester_certificate, released_at);
CREATE INDEX puk_releases_token_requester ON puk_releases(token_id, requester_certificate, state);
