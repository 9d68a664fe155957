//! Table `idempotency`: the first answer given to each state-changing request id, and the
//! client certificate that asked for it.
use super::{Result, Store, Timestamp, WriteTx, map_unique};
use sqlx::{Any, Executor};

/// The first answer given to a state-changing request, kept so a retry gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IdempotencyRow {
    pub request_id: String,
    pub operation: String,
    pub request_hash: Vec<u8>,
    pub response: Vec<u8>,
    pub created_at: Timestamp,
    /// SHA-256 fingerprint (lower-case hex) of the caller's client certificate; `None` for
    /// answers stored before migration 0007.
    pub caller: Option<String>,
    /// ReleasePuk: the generation of the token's confirmed credentials the first answer
    /// released (`None` for every other operation).
    pub released_generation: Option<i64>,
}

async fn idempotency_record<'e, E: Executor<'e, Database = Any>>(
    e: E,
    request_id: &str,
) -> Result<Option<IdempotencyRow>> {
    Ok(sqlx::query_as(
        "SELECT request_id, operation, request_hash, response, created_at, caller, released_generation \
         FROM idempotency WHERE request_id = $1",
    )
    .bind(request_id)
    .fetch_optional(e)
    .await?)
}

impl Store {
    pub async fn idempotency_record(&self, request_id: &str) -> Result<Option<IdempotencyRow>> {
        idempotency_record(&self.pool, request_id).await
    }
}

impl WriteTx {
    pub async fn idempotency_record(&mut self, request_id: &str) -> Result<Option<IdempotencyRow>> {
        idempotency_record(&mut *self.tx, request_id).await
    }

    pub async fn insert_idempotency_record(&mut self, r: &IdempotencyRow) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO idempotency (request_id, operation, request_hash, response, created_at, caller, released_generation) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&r.request_id)
        .bind(&r.operation)
        .bind(r.request_hash.clone())
        .bind(r.response.clone())
        .bind(r.created_at)
        .bind(r.caller.clone())
        .bind(r.released_generation)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "request id", &r.request_id)
    }

    /// Replaces the stored answer of `request_id` (an issuance's answer becomes known only
    /// after the HSM signed, in a later transaction than the one that claimed the id).
    pub async fn complete_idempotency_record(
        &mut self,
        request_id: &str,
        response: &[u8],
    ) -> Result<()> {
        let done = sqlx::query("UPDATE idempotency SET response = $1 WHERE request_id = $2")
            .bind(response.to_vec())
            .bind(request_id)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        if done == 1 {
            Ok(())
        } else {
            Err(super::StoreError::Database(sqlx::Error::RowNotFound))
        }
    }
}
