-- Expiry (issue 13, item 3), SQLite dialect; keep in step with
-- migrations/postgres/0014_certificates_expiring.sql. `Store::expiring_certificates` and the
-- `tessera_certificates_expiring` gauge ask for good certificates whose notAfter falls in a
-- window, ordered by notAfter; this index keeps that a range scan, not a scan of every
-- certificate ever issued (stored times are fixed-width text, so text order is time order).
CREATE INDEX certificates_status_not_after ON certificates (status, not_after, serial);
