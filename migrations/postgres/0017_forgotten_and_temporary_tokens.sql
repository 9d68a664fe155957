-- Forgotten tokens and temporary tokens (issue 13, item 4), PostgreSQL dialect; keep in step with
-- migrations/sqlite/0017_forgotten_and_temporary_tokens.sql.
--
-- The holds a token's move to `forgotten` made: one row per certificate that MarkTokenForgotten
-- put on hold (it was good). ReinstateToken releases exactly these, so a hold made for another
-- reason (a fleet re-check, an operator's RevokeCertificate with certificateHold) stays; the
-- rows go when the token leaves `forgotten` (reinstated, lost, damaged or retired).
CREATE TABLE forgotten_token_holds (
    certificate_serial TEXT PRIMARY KEY REFERENCES certificates(serial),
    token_id BIGINT NOT NULL REFERENCES tokens(id),
    held_at TEXT NOT NULL
);
CREATE INDEX forgotten_token_holds_token ON forgotten_token_holds (token_id);

-- Temporary tokens: a token enrolled under a temporary enrollment profile (e.g.
-- `temporary-piv-login`) for a person whose token `forgotten_token_id` is forgotten. Written by
-- BeginEnrollment; ReinstateToken of the forgotten token retires the temporary tokens recorded
-- for it. A row stays after its token is retired (the history of who stood in for whom).
CREATE TABLE temporary_tokens (
    token_id BIGINT PRIMARY KEY REFERENCES tokens(id),
    forgotten_token_id BIGINT NOT NULL REFERENCES tokens(id),
    created_at TEXT NOT NULL
);
CREATE INDEX temporary_tokens_forgotten ON temporary_tokens (forgotten_token_id);
