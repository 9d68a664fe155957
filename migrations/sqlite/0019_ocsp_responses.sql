-- Pre-signed OCSP responses (issue 14, item 1). Keep in step with
-- migrations/postgres/0019_ocsp_responses.sql.
--
-- certificates.status_version moves on with every status change of the certificate (issued,
-- revoked, held, released; its reason or time), in the transaction of the change: the trigger
-- below does it, so no code path (nor a repair by hand) can change a status and leave a stored
-- response current. A stored response is served only while the status_version it was signed
-- for (signed_version) equals the certificate's current one: the check is a join read in one
-- statement, so a response signed before a status change committed is never served after it,
-- whichever replica signed it.
ALTER TABLE certificates ADD COLUMN status_version BIGINT NOT NULL DEFAULT 0;

-- One row per certificate and CertID hash algorithm ('sha1', signed for every certificate;
-- 'sha256', added when a relying party first asks with SHA-256 CertIDs):
--   signed_version  certificates.status_version the response was signed for (NULL: none yet)
--   der             the OCSPResponse (NULL: none yet)
--   this_update, next_update  of that response
--   due_at          when the signer task (re)signs it: 1970-01-01T00:00:00Z right after a
--                   status change (first in line), thisUpdate + refresh (spread) after signing,
--                   9999-12-31T23:59:59Z once the certificate expired (then only on request)
-- These rows are derived data (no audit event): they are written outside the write lock.
CREATE TABLE ocsp_responses (
    serial TEXT NOT NULL REFERENCES certificates(serial) ON DELETE CASCADE,
    hash_algorithm TEXT NOT NULL,
    signed_version BIGINT,
    der BLOB,
    this_update TEXT,
    next_update TEXT,
    due_at TEXT NOT NULL,
    PRIMARY KEY (serial, hash_algorithm)
);
CREATE INDEX ocsp_responses_due ON ocsp_responses (due_at);

-- Bumped with every status change of a certificate that had been signed (not for reserved ->
-- good): each replica keeps responses in memory only while this has not moved.
CREATE TABLE ocsp_state (
    id BIGINT PRIMARY KEY,
    status_changes BIGINT NOT NULL
);
INSERT INTO ocsp_state (id, status_changes) VALUES (1, 0);

-- Every certificate already signed gets its response signed by the first signer run.
INSERT INTO ocsp_responses (serial, hash_algorithm, due_at)
    SELECT serial, 'sha1', '1970-01-01T00:00:00Z' FROM certificates WHERE status <> 'reserved';

CREATE TRIGGER certificates_ocsp_stale
AFTER UPDATE OF status, revocation_reason, revoked_at ON certificates
WHEN OLD.status IS NOT NEW.status OR OLD.revocation_reason IS NOT NEW.revocation_reason
    OR OLD.revoked_at IS NOT NEW.revoked_at
BEGIN
    UPDATE certificates SET status_version = status_version + 1 WHERE serial = NEW.serial;
    UPDATE ocsp_state SET status_changes = status_changes + 1 WHERE id = 1 AND OLD.status <> 'reserved';
    INSERT OR IGNORE INTO ocsp_responses (serial, hash_algorithm, due_at)
        SELECT NEW.serial, 'sha1', '1970-01-01T00:00:00Z' WHERE NEW.status <> 'reserved';
    UPDATE ocsp_responses SET due_at = '1970-01-01T00:00:00Z' WHERE serial = NEW.serial;
END;
