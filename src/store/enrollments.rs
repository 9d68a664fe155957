//! Table `enrollments`: help-desk enrollments of one token for one person (migration 0003).
//! Rows only; the rules are in `enroll` (`enroll::desk`).
use super::{Result, Store, Timestamp, WriteTx, map_unique, written};
use serde::Serialize;
use sqlx::{Any, Executor};

stored_enum!(EnrollmentState, "enrollments.state", {
    Begun => "begun", Completed => "completed", Confirmed => "confirmed",
    Aborted => "aborted", Expired => "expired",
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct EnrollmentRow {
    #[serde(skip)]
    pub id: i64,
    pub public_id: String,
    #[serde(skip)]
    pub person_id: i64,
    #[serde(skip)]
    pub token_id: i64,
    pub profile: String,
    pub state: EnrollmentState,
    #[serde(skip)]
    pub nonce: Vec<u8>,
    #[serde(skip)]
    pub plan_json: String,
    pub firmware: String,
    pub expires_at: Timestamp,
    pub created_by: String,
    #[serde(skip)]
    pub created_at: Timestamp,
    #[serde(skip)]
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewEnrollment {
    pub public_id: String,
    pub person_id: i64,
    pub token_id: i64,
    pub profile: String,
    pub nonce: Vec<u8>,
    pub plan_json: String,
    pub firmware: String,
    pub expires_at: Timestamp,
    pub created_by: String,
}

const ENROLLMENT_COLUMNS: &str = "id, public_id, person_id, token_id, profile, state, nonce, plan_json, \
     firmware, expires_at, created_by, created_at, updated_at";

async fn enrollment_where<'e, E: Executor<'e, Database = Any>>(
    e: E,
    public_id: &str,
) -> Result<Option<EnrollmentRow>> {
    Ok(sqlx::query_as(sql!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE public_id = $1"
    ))
    .bind(public_id)
    .fetch_optional(e)
    .await?)
}

impl Store {
    pub async fn enrollment_by_public_id(&self, public_id: &str) -> Result<Option<EnrollmentRow>> {
        enrollment_where(&self.pool, public_id).await
    }

    /// Public ids of enrollments in `begun` or `completed` whose `expires_at` is at or before
    /// `now` (compared as stored text, which orders as time: see [`Timestamp`]).
    pub async fn enrollments_expired_at(&self, now: Timestamp) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT public_id FROM enrollments WHERE state IN ('begun', 'completed') AND expires_at <= $1 ORDER BY id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }
}

impl WriteTx {
    pub async fn insert_enrollment(&mut self, n: &NewEnrollment) -> Result<EnrollmentRow> {
        let now = self.now();
        let result = sqlx::query(
            "INSERT INTO enrollments (public_id, person_id, token_id, profile, state, nonce, plan_json, firmware, \
             expires_at, created_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)",
        )
        .bind(&n.public_id)
        .bind(n.person_id)
        .bind(n.token_id)
        .bind(&n.profile)
        .bind(EnrollmentState::Begun.as_str())
        .bind(n.nonce.clone())
        .bind(&n.plan_json)
        .bind(&n.firmware)
        .bind(n.expires_at)
        .bind(&n.created_by)
        .bind(now)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "enrollment", &n.public_id)?;
        written(self.enrollment_by_public_id(&n.public_id).await?)
    }

    pub async fn enrollment_by_public_id(
        &mut self,
        public_id: &str,
    ) -> Result<Option<EnrollmentRow>> {
        enrollment_where(&mut *self.tx, public_id).await
    }

    /// Enrollments of a token still in `begun` or `completed`.
    pub async fn open_enrollments_of_token(&mut self, token_id: i64) -> Result<Vec<EnrollmentRow>> {
        Ok(sqlx::query_as(sql!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE token_id = $1 AND state IN ('begun', 'completed') ORDER BY id"
        ))
        .bind(token_id)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    /// Sets the state of enrollment `id`, but only when it is still `from` (so two writers
    /// cannot both move it); returns whether it moved.
    pub async fn move_enrollment_state(
        &mut self,
        id: i64,
        from: EnrollmentState,
        to: EnrollmentState,
    ) -> Result<bool> {
        let now = self.now();
        let r = sqlx::query(
            "UPDATE enrollments SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4",
        )
        .bind(to.as_str())
        .bind(now)
        .bind(id)
        .bind(from.as_str())
        .execute(&mut *self.tx)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
