-- The token's state and holder before an enrollment moved it to `enrolling` (issue 12,
-- finding 5), PostgreSQL dialect; keep in step with migrations/sqlite/0005_enrollment_token_prior.sql.
-- Abort and expiry put the token back as it was. A token the enrollment registered records
-- `enrolling` and no holder (it goes back to unassigned). NULL state: the enrollment was begun
-- before this migration; its token is left as it is when it ends.
ALTER TABLE enrollments ADD COLUMN token_prior_state TEXT;
ALTER TABLE enrollments ADD COLUMN token_prior_person_id BIGINT REFERENCES people(id);
