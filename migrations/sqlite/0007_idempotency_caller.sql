-- Request ids bound to their caller, and repeats of answers that carry secrets (issue 12,
-- finding 2), SQLite dialect; keep in step with migrations/postgres/0007_idempotency_caller.sql.
-- caller: the SHA-256 fingerprint (lower-case hex) of the client certificate that made the
-- request; a repeat from another certificate is refused (REQUEST_ID_OF_ANOTHER_CALLER). NULL: the
-- answer was stored before this migration; its repeats are answered to any caller as before,
-- except answers that carry secrets (BeginEnrollment, ReleasePuk), which are no longer repeated
-- (REQUEST_ID_EXPIRED). Every existing row stays as it is.
-- released_generation: ReleasePuk only, the generation of the token's confirmed credentials the
-- first answer released; a repeat is answered only while the token still holds that generation.
ALTER TABLE idempotency ADD COLUMN caller TEXT;
ALTER TABLE idempotency ADD COLUMN released_generation BIGINT;
