//! Table `puk_releases` (migration 0009): every ReleasePuk that handed out a token's PUK, and
//! under dual control every request for one, with its approval. Rows only; the rules (who may
//! approve, expiry, the rate limit) are in `enroll::desk::puk_release`.
use super::{Result, Timestamp, WriteTx, map_unique, written};

stored_enum!(PukReleaseState, "puk_releases.state", {
    Pending => "pending", Approved => "approved", Released => "released",
});

/// One release or request for one. Certificates are named by their serial (lower-case hex),
/// as the store keys certificates.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PukReleaseRow {
    pub id: i64,
    pub public_id: String,
    pub token_id: i64,
    pub state: PukReleaseState,
    pub reason: String,
    pub requester_certificate: String,
    pub requester_name: String,
    pub requested_at: Timestamp,
    /// A `pending` row expires unapproved at this time, an `approved` one uncollected.
    pub expires_at: Timestamp,
    pub approver_certificate: Option<String>,
    pub approver_name: Option<String>,
    pub approval_reason: Option<String>,
    pub approved_at: Option<Timestamp>,
    pub released_at: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct NewPukRelease {
    pub public_id: String,
    pub token_id: i64,
    /// `Pending` (dual control) or `Released` (released at once: `released_at` is now).
    pub state: PukReleaseState,
    pub reason: String,
    pub requester_certificate: String,
    pub requester_name: String,
    pub expires_at: Timestamp,
}

const PUK_RELEASE_COLUMNS: &str = "id, public_id, token_id, state, reason, requester_certificate, \
     requester_name, requested_at, expires_at, approver_certificate, approver_name, approval_reason, \
     approved_at, released_at";

impl WriteTx {
    pub async fn insert_puk_release(&mut self, n: &NewPukRelease) -> Result<PukReleaseRow> {
        let now = self.now();
        let released_at = (n.state == PukReleaseState::Released).then_some(now);
        let result = sqlx::query(
            "INSERT INTO puk_releases (public_id, token_id, state, reason, requester_certificate, \
             requester_name, requested_at, expires_at, released_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&n.public_id)
        .bind(n.token_id)
        .bind(n.state.as_str())
        .bind(&n.reason)
        .bind(&n.requester_certificate)
        .bind(&n.requester_name)
        .bind(now)
        .bind(n.expires_at)
        .bind(released_at)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "PUK release", &n.public_id)?;
        written(self.puk_release_by_public_id(&n.public_id).await?)
    }

    pub async fn puk_release_by_public_id(
        &mut self,
        public_id: &str,
    ) -> Result<Option<PukReleaseRow>> {
        Ok(sqlx::query_as(sql!(
            "SELECT {PUK_RELEASE_COLUMNS} FROM puk_releases WHERE public_id = $1"
        ))
        .bind(public_id)
        .fetch_optional(&mut *self.tx)
        .await?)
    }

    /// The newest `pending` or `approved` row of `token_id` asked for by `requester_certificate`
    /// that has not expired at `now`.
    pub async fn open_puk_release(
        &mut self,
        token_id: i64,
        requester_certificate: &str,
        now: Timestamp,
    ) -> Result<Option<PukReleaseRow>> {
        Ok(sqlx::query_as(sql!(
            "SELECT {PUK_RELEASE_COLUMNS} FROM puk_releases WHERE token_id = $1 \
             AND requester_certificate = $2 AND state IN ('pending', 'approved') AND expires_at > $3 \
             ORDER BY id DESC LIMIT 1"
        ))
        .bind(token_id)
        .bind(requester_certificate)
        .bind(now)
        .fetch_optional(&mut *self.tx)
        .await?)
    }

    /// When `requester_certificate`'s releases after `since` were made, oldest first.
    pub async fn puk_releases_since(
        &mut self,
        requester_certificate: &str,
        since: Timestamp,
    ) -> Result<Vec<Timestamp>> {
        Ok(sqlx::query_scalar(
            "SELECT released_at FROM puk_releases WHERE requester_certificate = $1 \
             AND released_at IS NOT NULL AND released_at > $2 ORDER BY released_at",
        )
        .bind(requester_certificate)
        .bind(since)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    /// Records the approval of row `id`, only while it is still `pending`; returns whether it
    /// moved.
    pub async fn approve_puk_release(
        &mut self,
        id: i64,
        approver_certificate: &str,
        approver_name: &str,
        approval_reason: &str,
        expires_at: Timestamp,
    ) -> Result<bool> {
        let now = self.now();
        let r = sqlx::query(
            "UPDATE puk_releases SET state = 'approved', approver_certificate = $1, approver_name = $2, \
             approval_reason = $3, approved_at = $4, expires_at = $5 WHERE id = $6 AND state = 'pending'",
        )
        .bind(approver_certificate)
        .bind(approver_name)
        .bind(approval_reason)
        .bind(now)
        .bind(expires_at)
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Marks row `id` released now, only while it is still `approved`; returns whether it moved.
    pub async fn mark_puk_release_released(&mut self, id: i64) -> Result<bool> {
        let now = self.now();
        let r = sqlx::query(
            "UPDATE puk_releases SET state = 'released', released_at = $1 WHERE id = $2 AND state = 'approved'",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
