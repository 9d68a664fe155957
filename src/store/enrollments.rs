//! Table `enrollments`: help-desk enrollments of one token for one person (migration 0003).
//! Rows only; the rules are in `enroll` (`enroll::desk`).
use super::{Result, Store, Timestamp, TokenState, WriteTx, map_unique, written};
use serde::Serialize;
use sqlx::{Any, Executor};

stored_enum!(EnrollmentState, "enrollments.state", {
    Begun => "begun", Completed => "completed", Confirmed => "confirmed",
    Aborted => "aborted", Expired => "expired",
});

stored_enum!(EnrollmentKind, "enrollments.kind", {
    Enrollment => "enrollment", Renewal => "renewal",
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    /// The token as it was before this enrollment (or the open one it superseded) moved it to
    /// `enrolling`: what abort and expiry put back (migration 0005). `None` for an enrollment
    /// begun before that migration.
    pub token_prior: Option<TokenPrior>,
    /// An enrollment (the token keyed as a whole) or a renewal in place (new keys in some of
    /// an active token's slots; migration 0015).
    pub kind: EnrollmentKind,
}

/// A token's state and holder before an enrollment moved it to `enrolling`. A token the
/// enrollment registered is recorded as `enrolling` with no holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TokenPrior {
    pub state: TokenState,
    #[serde(skip)]
    pub person_id: Option<i64>,
}

/// The stored columns of an enrollment row; [`EnrollmentRow`] gathers the token's prior state.
#[derive(sqlx::FromRow)]
struct StoredEnrollment {
    id: i64,
    public_id: String,
    person_id: i64,
    token_id: i64,
    profile: String,
    state: EnrollmentState,
    nonce: Vec<u8>,
    plan_json: String,
    firmware: String,
    expires_at: Timestamp,
    created_by: String,
    created_at: Timestamp,
    updated_at: Timestamp,
    token_prior_state: Option<TokenState>,
    token_prior_person_id: Option<i64>,
    kind: EnrollmentKind,
}

impl From<StoredEnrollment> for EnrollmentRow {
    fn from(s: StoredEnrollment) -> Self {
        EnrollmentRow {
            id: s.id,
            public_id: s.public_id,
            person_id: s.person_id,
            token_id: s.token_id,
            profile: s.profile,
            state: s.state,
            nonce: s.nonce,
            plan_json: s.plan_json,
            firmware: s.firmware,
            expires_at: s.expires_at,
            created_by: s.created_by,
            created_at: s.created_at,
            updated_at: s.updated_at,
            token_prior: s.token_prior_state.map(|state| TokenPrior {
                state,
                person_id: s.token_prior_person_id,
            }),
            kind: s.kind,
        }
    }
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
    pub token_prior: TokenPrior,
    pub kind: EnrollmentKind,
}

const ENROLLMENT_COLUMNS: &str = "id, public_id, person_id, token_id, profile, state, nonce, plan_json, \
     firmware, expires_at, created_by, created_at, updated_at, token_prior_state, token_prior_person_id, kind";

async fn enrollment_where<'e, E: Executor<'e, Database = Any>>(
    e: E,
    public_id: &str,
) -> Result<Option<EnrollmentRow>> {
    let row: Option<StoredEnrollment> = sqlx::query_as(sql!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE public_id = $1"
    ))
    .bind(public_id)
    .fetch_optional(e)
    .await?;
    Ok(row.map(EnrollmentRow::from))
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
             expires_at, created_by, created_at, updated_at, token_prior_state, token_prior_person_id, kind) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, $14)",
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
        .bind(n.token_prior.state.as_str())
        .bind(n.token_prior.person_id)
        .bind(n.kind.as_str())
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
        let rows: Vec<StoredEnrollment> = sqlx::query_as(sql!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE token_id = $1 AND state IN ('begun', 'completed') ORDER BY id"
        ))
        .bind(token_id)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.into_iter().map(EnrollmentRow::from).collect())
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
