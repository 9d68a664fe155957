//! Table `puk_rotations` (migration 0018): a token's new PUK, handed out by ReleasePuk and
//! wrapped by an HSM key, until the station confirms it is on the card. Rows only; the rules
//! are in `enroll::desk::puk_rotation`.
use super::{Result, Timestamp, WriteTx};

/// A pending PUK rotation. `puk_wrapped` is never the PUK in the clear.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PukRotationRow {
    pub token_id: i64,
    pub generation: i64,
    pub wrapping_key_label: String,
    pub puk_wrapped: Vec<u8>,
    /// The serial (lower-case hex) of the client certificate it was last handed to.
    pub caller: String,
    pub created_at: Timestamp,
}

impl std::fmt::Debug for PukRotationRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PukRotationRow")
            .field("token_id", &self.token_id)
            .field("generation", &self.generation)
            .field("wrapping_key_label", &self.wrapping_key_label)
            .field("caller", &self.caller)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl WriteTx {
    pub async fn puk_rotation(&mut self, token_id: i64) -> Result<Option<PukRotationRow>> {
        Ok(sqlx::query_as(
            "SELECT token_id, generation, wrapping_key_label, puk_wrapped, caller, created_at \
             FROM puk_rotations WHERE token_id = $1",
        )
        .bind(token_id)
        .fetch_optional(&mut *self.tx)
        .await?)
    }

    /// Inserts or replaces the token's pending rotation (`created_at` is now).
    pub async fn put_puk_rotation(&mut self, r: &PukRotationRow) -> Result<()> {
        self.delete_puk_rotation(r.token_id).await?;
        let now = self.now();
        sqlx::query(
            "INSERT INTO puk_rotations (token_id, generation, wrapping_key_label, puk_wrapped, \
             caller, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(r.token_id)
        .bind(r.generation)
        .bind(&r.wrapping_key_label)
        .bind(&r.puk_wrapped)
        .bind(&r.caller)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Hands the pending rotation of `token_id` to another certificate (`caller`).
    pub async fn set_puk_rotation_caller(&mut self, token_id: i64, caller: &str) -> Result<()> {
        sqlx::query("UPDATE puk_rotations SET caller = $1 WHERE token_id = $2")
            .bind(caller)
            .bind(token_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    pub async fn delete_puk_rotation(&mut self, token_id: i64) -> Result<()> {
        sqlx::query("DELETE FROM puk_rotations WHERE token_id = $1")
            .bind(token_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }
}
