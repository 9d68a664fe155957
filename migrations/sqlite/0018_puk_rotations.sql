-- PUK rotation after an unblock (issue 13, item 5), SQLite dialect; keep in step with
-- migrations/postgres/0018_puk_rotations.sql.
--
-- The new PUK ReleasePuk handed out with the current one, waiting for the station to set it on
-- the card and confirm (ConfirmPukRotation): wrapped by the HSM AES key `wrapping_key_label`,
-- its associated data bound to the token serial, the field `puk-rotation` and `generation`
-- (enroll::desk::secrets). At most one per token; a repeat of ReleasePuk before the confirmation
-- hands out the same one again (the card may already hold it). `caller` is the serial (hex)
-- of the client certificate it was last handed to, the only one that may confirm
-- it. ConfirmPukRotation makes it the token's confirmed PUK and deletes the row; a new
-- BeginEnrollment of the token (which resets it) deletes it too.
CREATE TABLE puk_rotations (
    token_id BIGINT PRIMARY KEY REFERENCES tokens(id),
    generation BIGINT NOT NULL,
    wrapping_key_label TEXT NOT NULL,
    puk_wrapped BLOB NOT NULL,
    caller TEXT NOT NULL,
    created_at TEXT NOT NULL
);
