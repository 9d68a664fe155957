-- Stored attestation facts (issue 13, item 6), PostgreSQL dialect; keep in step with
-- migrations/sqlite/0013_certificate_attestations.sql.
-- The attestation facts each certificate's key was verified with (firmware, serial, slot, PIN
-- and touch policy, form factor, FIPS/CSPN, key algorithm), as the JSON of
-- tessera_attest::AttestationFacts, so that the fleet can be re-checked against a new policy
-- (`tessera attest recheck`). Certificates issued before this migration have no row: their
-- facts are reported as unknown, never guessed.
CREATE TABLE certificate_attestations (
    certificate_serial TEXT PRIMARY KEY REFERENCES certificates(serial),
    slot TEXT NOT NULL,
    facts_json TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
