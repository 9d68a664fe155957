-- The current CRL's DER in parts (crl_state.der is no longer written). Keep in step with
-- migrations/postgres/0020_crl_parts_tokens_person.sql.
--   number  the CRL number (crl_state.number) the parts belong to
--   part    0, 1, … in order; each at most 4 MiB
CREATE TABLE crl_parts (
    number BIGINT NOT NULL,
    part BIGINT NOT NULL,
    der BLOB NOT NULL,
    PRIMARY KEY (number, part)
);
INSERT INTO crl_parts (number, part, der) SELECT number, 0, der FROM crl_state WHERE id = 1 AND der IS NOT NULL;
UPDATE crl_state SET der = NULL;
-- Offboarding takes back the tokens a person holds (`WHERE person_id IN (…)`).
CREATE INDEX tokens_person ON tokens(person_id);
