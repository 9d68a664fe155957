-- Pre-signed OCSP responses (issue 14, item 1). Keep in step with
-- migrations/postgres/0019_ocsp_responses.sql.
--
-- certificates.status_version is bumped in the transaction of every status change (issued,
-- revoked, held, released). A stored response is served only while the status_version it was
-- signed for (signed_version) equals the certificate's current one: the check is a join read
-- in one statement, so a response signed before a status change committed is never served
-- after it, whichever replica signed it.
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

-- Every certificate already signed gets its response signed by the first signer run.
INSERT INTO ocsp_responses (serial, hash_algorithm, due_at)
    SELECT serial, 'sha1', '1970-01-01T00:00:00Z' FROM certificates WHERE status <> 'reserved';
