//! The notification outbox (`notification_outbox`): notices written in the transaction of the
//! change they announce, delivered later by the notifier of `tessera serve`.
use super::{Result, Store, Timestamp, WriteTx};
use serde::Serialize;

/// A notice to write: `event` (`token.suspended`, …), an optional `dedup_key` (a second row
/// with the same key is not written) and the JSON `payload`.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub event: &'static str,
    pub dedup_key: Option<String>,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct NotificationRow {
    pub id: i64,
    pub event: String,
    pub dedup_key: Option<String>,
    /// JSON text.
    pub payload: String,
    pub created_at: Timestamp,
    pub attempts: i64,
    pub next_attempt_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
    pub last_error: Option<String>,
}

const COLUMNS: &str = "id, event, dedup_key, payload, created_at, attempts, next_attempt_at, \
     delivered_at, last_error";

impl WriteTx {
    /// Writes a notice in this transaction; `false` when its `dedup_key` was already written.
    pub async fn enqueue_notification(&mut self, n: &NewNotification) -> Result<bool> {
        let now = self.now();
        let done = sqlx::query(
            "INSERT INTO notification_outbox (event, dedup_key, payload, created_at, next_attempt_at) \
             VALUES ($1, $2, $3, $4, $4) ON CONFLICT (dedup_key) DO NOTHING",
        )
        .bind(n.event)
        .bind(n.dedup_key.as_deref())
        .bind(n.payload.to_string())
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

impl Store {
    /// Undelivered notices whose next attempt is due at `now`, oldest first.
    pub async fn due_notifications(
        &self,
        now: Timestamp,
        limit: i64,
    ) -> Result<Vec<NotificationRow>> {
        Ok(sqlx::query_as(sql!(
            "SELECT {COLUMNS} FROM notification_outbox WHERE delivered_at IS NULL \
             AND next_attempt_at <= $1 ORDER BY id LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every notice, oldest first (tests and inspection).
    pub async fn notifications(&self) -> Result<Vec<NotificationRow>> {
        Ok(sqlx::query_as(sql!(
            "SELECT {COLUMNS} FROM notification_outbox ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// The webhook answered 2xx for notice `id`.
    pub async fn mark_notification_delivered(&self, id: i64) -> Result<()> {
        sqlx::query(
            "UPDATE notification_outbox SET delivered_at = $1, attempts = attempts + 1, \
             last_error = NULL WHERE id = $2",
        )
        .bind(self.now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An attempt for notice `id` failed (`error`, no secret in it); try again at `next`.
    pub async fn mark_notification_failed(
        &self,
        id: i64,
        next: Timestamp,
        error: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE notification_outbox SET attempts = attempts + 1, next_attempt_at = $1, \
             last_error = $2 WHERE id = $3 AND delivered_at IS NULL",
        )
        .bind(next)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
