-- Renewal in place (issue 13, item 1), SQLite dialect; keep in step with
-- migrations/postgres/0015_renewal.sql.
-- kind: 'enrollment' (BeginEnrollment: the token keyed from its factory state or a reset) or
-- 'renewal' (BeginRenewal: new keys in the same slots of an active token, whose PIN, PUK and
-- management key stay as they are). Every existing row is an enrollment.
ALTER TABLE enrollments ADD COLUMN kind TEXT NOT NULL DEFAULT 'enrollment';

-- The certificates a renewal replaces, by slot: its ConfirmEnrollment revokes them
-- (superseded); abort and expiry leave them as they are (only the renewal's new certificates,
-- in enrollment_certificates, are revoked).
CREATE TABLE renewal_supersedes (
    enrollment_id BIGINT NOT NULL REFERENCES enrollments(id),
    slot TEXT NOT NULL,
    serial TEXT NOT NULL REFERENCES certificates(serial),
    PRIMARY KEY (enrollment_id, slot)
);
