//! Table `sync_state` (one row): the generation of the last full directory sync.
use super::{Result, WriteTx};

impl WriteTx {
    pub async fn last_sync_generation(&mut self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT generation FROM sync_state WHERE id = 1")
                .fetch_one(&mut *self.tx)
                .await?,
        )
    }

    pub async fn set_last_sync_generation(&mut self, generation: i64) -> Result<()> {
        sqlx::query("UPDATE sync_state SET generation = $1 WHERE id = 1")
            .bind(generation)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }
}
