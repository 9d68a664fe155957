//! Table `audit_events`: the hash-chained audit log (the chain rules are in `audit`).
use super::{Result, Store, WriteTx, map_unique};
use sqlx::{Any, Executor};

/// One audit event as stored. `at` is kept as the exact text that was hashed (see
/// `audit::event_hash`): events written since migration 0004 hold a [`super::Timestamp`]'s
/// text, older ones the nanosecond RFC 3339 text they were hashed with, which is never
/// rewritten (that would break the chain).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditRow {
    pub sequence: i64,
    pub at: String,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub subject: String,
    pub before_json: String,
    pub after_json: String,
    pub request_id: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

const AUDIT_COLUMNS: &str = "sequence, at, actor, role, action, subject, before_json, after_json, request_id, \
     prev_hash, hash";

impl Store {
    /// Audit events with `sequence > after`, in order, at most `limit`.
    pub async fn audit_events(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>> {
        Ok(sqlx::query_as(sql!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE sequence > $1 ORDER BY sequence LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The last committed audit event (highest sequence), if any.
    pub async fn last_audit_event(&self) -> Result<Option<AuditRow>> {
        last_audit_event(&self.pool).await
    }

    /// The highest audit sequence (0 when empty).
    pub async fn audit_head_sequence(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT CAST(COALESCE(MAX(sequence), 0) AS BIGINT) FROM audit_events",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}

async fn last_audit_event<'e, E: Executor<'e, Database = Any>>(e: E) -> Result<Option<AuditRow>> {
    Ok(sqlx::query_as(sql!(
        "SELECT {AUDIT_COLUMNS} FROM audit_events ORDER BY sequence DESC LIMIT 1"
    ))
    .fetch_optional(e)
    .await?)
}

impl WriteTx {
    /// The last audit event (highest sequence), if any.
    pub async fn last_audit_event(&mut self) -> Result<Option<AuditRow>> {
        last_audit_event(&mut *self.tx).await
    }

    pub async fn insert_audit_event(&mut self, e: &AuditRow) -> Result<()> {
        let result = sqlx::query(sql!(
            "INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(e.sequence)
        .bind(&e.at)
        .bind(&e.actor)
        .bind(&e.role)
        .bind(&e.action)
        .bind(&e.subject)
        .bind(&e.before_json)
        .bind(&e.after_json)
        .bind(&e.request_id)
        .bind(e.prev_hash.clone())
        .bind(e.hash.clone())
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "audit event", &e.sequence.to_string())
    }

    /// Inserts consecutive events with multi-row statements (a batch from
    /// `audit::AuditBatch`, already chained); a sequence taken meanwhile is refused as
    /// [`super::StoreError::Duplicate`].
    pub async fn insert_audit_events(&mut self, events: &[AuditRow]) -> Result<()> {
        for chunk in events.chunks(super::BULK_ROWS) {
            let sql = super::multi_row_insert("audit_events", AUDIT_COLUMNS, 11, chunk.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for e in chunk {
                query = query
                    .bind(e.sequence)
                    .bind(&e.at)
                    .bind(&e.actor)
                    .bind(&e.role)
                    .bind(&e.action)
                    .bind(&e.subject)
                    .bind(&e.before_json)
                    .bind(&e.after_json)
                    .bind(&e.request_id)
                    .bind(e.prev_hash.as_slice())
                    .bind(e.hash.as_slice());
            }
            let first = chunk.first().map(|e| e.sequence).unwrap_or_default();
            map_unique(
                query.execute(&mut *self.tx).await,
                "audit event",
                &first.to_string(),
            )?;
        }
        Ok(())
    }
}
