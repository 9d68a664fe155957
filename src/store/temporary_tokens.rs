//! Tables `forgotten_token_holds` and `temporary_tokens` (migration 0017): which holds a token's
//! move to `forgotten` made, and which tokens stand in for a forgotten one. Rows only; the
//! rules are in `lifecycle::tokens` and `enroll::desk::begin`.
use super::{Result, Store, TokenRow, WriteTx};

impl Store {
    /// The serial of the forgotten token `token_id` stands in for, if it is a temporary token.
    pub async fn temporary_token_for(&self, token_id: i64) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT tokens.serial FROM temporary_tokens \
             JOIN tokens ON tokens.id = temporary_tokens.forgotten_token_id \
             WHERE temporary_tokens.token_id = $1",
        )
        .bind(token_id)
        .fetch_optional(&self.pool)
        .await?)
    }
}

impl WriteTx {
    /// Records that the forgotten token `token_id` put each of `serials` on hold.
    pub async fn insert_forgotten_holds(
        &mut self,
        token_id: i64,
        serials: &[String],
    ) -> Result<()> {
        let now = self.now();
        for serial in serials {
            sqlx::query(
                "INSERT INTO forgotten_token_holds (certificate_serial, token_id, held_at) \
                 VALUES ($1, $2, $3)",
            )
            .bind(serial)
            .bind(token_id)
            .bind(now)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    /// The certificates the move of `token_id` to `forgotten` put on hold, by serial.
    pub async fn forgotten_holds_of(&mut self, token_id: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT certificate_serial FROM forgotten_token_holds WHERE token_id = $1 \
             ORDER BY certificate_serial",
        )
        .bind(token_id)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    /// Whether the certificate `serial` is on hold because its token is forgotten.
    pub async fn is_forgotten_hold(&mut self, serial: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM forgotten_token_holds WHERE certificate_serial = $1",
        )
        .bind(serial)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(n > 0)
    }

    /// Forgets the holds of `token_id` (it left `forgotten`).
    pub async fn delete_forgotten_holds(&mut self, token_id: i64) -> Result<()> {
        sqlx::query("DELETE FROM forgotten_token_holds WHERE token_id = $1")
            .bind(token_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Records `token_id` as a temporary token standing in for `forgotten_token_id` (replacing
    /// what an earlier enrollment of the same token recorded).
    pub async fn put_temporary_token(
        &mut self,
        token_id: i64,
        forgotten_token_id: i64,
    ) -> Result<()> {
        let now = self.now();
        sqlx::query(
            "INSERT INTO temporary_tokens (token_id, forgotten_token_id, created_at) \
             VALUES ($1, $2, $3) ON CONFLICT (token_id) DO UPDATE \
             SET forgotten_token_id = excluded.forgotten_token_id, created_at = excluded.created_at",
        )
        .bind(token_id)
        .bind(forgotten_token_id)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Forgets that `token_id` stands in for a forgotten token (it is enrolled as a regular one).
    pub async fn delete_temporary_token(&mut self, token_id: i64) -> Result<()> {
        sqlx::query("DELETE FROM temporary_tokens WHERE token_id = $1")
            .bind(token_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// The temporary tokens recorded for the forgotten token `forgotten_token_id`, in any
    /// state, oldest first.
    pub async fn temporary_tokens_for(&mut self, forgotten_token_id: i64) -> Result<Vec<TokenRow>> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT token_id FROM temporary_tokens WHERE forgotten_token_id = $1 ORDER BY token_id",
        )
        .bind(forgotten_token_id)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(row) = self.token_by_id(id).await? {
                rows.push(row);
            }
        }
        Ok(rows)
    }

    /// The tokens of person `person_id` in state `forgotten`, most recently changed first.
    pub async fn forgotten_tokens_of_person(&mut self, person_id: i64) -> Result<Vec<TokenRow>> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM tokens WHERE person_id = $1 AND state = 'forgotten' \
             ORDER BY updated_at DESC, id DESC",
        )
        .bind(person_id)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(row) = self.token_by_id(id).await? {
                rows.push(row);
            }
        }
        Ok(rows)
    }
}
