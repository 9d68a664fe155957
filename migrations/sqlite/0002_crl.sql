-- CRL state shared by every replica (one row). Keep in step with migrations/postgres/0002_crl.sql.
--   status_changes  bumped by every certificate status change (revoke, hold, release)
--   number          CRL number of the last CRL signed (monotonic; 0 = none yet)
--   built_from      status_changes the last CRL was built from
--   der, this_update, next_update  the last CRL (RFC 3339 times)
CREATE TABLE crl_state (
    id BIGINT PRIMARY KEY,
    status_changes BIGINT NOT NULL,
    number BIGINT NOT NULL,
    built_from BIGINT NOT NULL,
    der BLOB,
    this_update TEXT,
    next_update TEXT
);
INSERT INTO crl_state (id, status_changes, number, built_from) VALUES (1, 0, 0, 0);
