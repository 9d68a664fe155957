//! Table `audit_checkpoints`: signed heads of the audit chain.
use super::{Result, Store, Timestamp, WriteTx, map_unique};
use sqlx::{Any, Executor};

const LAST_SEQUENCE: &str =
    "SELECT CAST(COALESCE(MAX(sequence), 0) AS BIGINT) FROM audit_checkpoints";

async fn last_checkpoint_sequence<'e, E: Executor<'e, Database = Any>>(e: E) -> Result<i64> {
    Ok(sqlx::query_scalar(LAST_SEQUENCE).fetch_one(e).await?)
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CheckpointRow {
    pub sequence: i64,
    pub head_hash: Vec<u8>,
    pub key_id: String,
    pub signature: Vec<u8>,
    pub at: Timestamp,
}

impl Store {
    pub async fn audit_checkpoints(&self) -> Result<Vec<CheckpointRow>> {
        Ok(sqlx::query_as(
            "SELECT sequence, head_hash, key_id, signature, at FROM audit_checkpoints ORDER BY sequence",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The sequence the latest checkpoint signs (0 when there is none).
    pub async fn last_checkpoint_sequence(&self) -> Result<i64> {
        last_checkpoint_sequence(&self.pool).await
    }
}

impl WriteTx {
    /// The sequence the latest checkpoint signs (0 when there is none), in this transaction.
    pub async fn last_checkpoint_sequence(&mut self) -> Result<i64> {
        last_checkpoint_sequence(&mut *self.tx).await
    }

    pub async fn insert_checkpoint(&mut self, c: &CheckpointRow) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO audit_checkpoints (sequence, head_hash, key_id, signature, at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(c.sequence)
        .bind(c.head_hash.clone())
        .bind(&c.key_id)
        .bind(c.signature.clone())
        .bind(c.at)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "audit checkpoint", &c.sequence.to_string())
    }
}
