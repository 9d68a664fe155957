//! Table `ocsp_responses`: the pre-signed OCSP response of each certificate (per CertID hash
//! algorithm), and `certificates.status_version`, which says whether a stored response still
//! tells the certificate's current status.
//!
//! A status change marks responses stale in its own transaction without any code here: the
//! trigger of migration 0019 bumps `certificates.status_version` and `ocsp_state`, adds the
//! certificate's SHA-1 row once it is signed and sets its rows due at once.
//!
//! The rows are derived data, re-made from `certificates` whenever needed: they are written
//! outside the write lock (no audit event, no HSM call inside any transaction), and every write
//! is conditional, so a response signed for an older status never counts as current.
use super::{CertificateStatus, Result, Store, Timestamp};

/// `due_at` of a row to sign at once (a status change, a new certificate): first in line.
pub const OCSP_DUE_NOW: &str = "1970-01-01T00:00:00Z";
/// `due_at` of a row the signer leaves alone (its certificate expired): signed only when a
/// relying party asks after its response's nextUpdate.
pub const OCSP_DUE_NEVER: &str = "9999-12-31T23:59:59Z";

/// A stored response with the status version of its certificate, read in one statement.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OcspResponseRow {
    pub der: Option<Vec<u8>>,
    pub signed_version: Option<i64>,
    pub this_update: Option<Timestamp>,
    pub next_update: Option<Timestamp>,
    pub due_at: Timestamp,
    /// `certificates.status_version` now.
    pub status_version: i64,
}

impl OcspResponseRow {
    /// The response, when it was signed for the certificate's current status.
    pub fn current(&self) -> Option<&[u8]> {
        match (&self.der, self.signed_version) {
            (Some(der), Some(v)) if v == self.status_version => Some(der),
            _ => None,
        }
    }
}

/// What a response is signed from: the certificate's status and its version, read together.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OcspSubjectRow {
    pub serial: String,
    pub status: CertificateStatus,
    pub revocation_reason: Option<i64>,
    pub revoked_at: Option<Timestamp>,
    pub updated_at: Timestamp,
    pub not_after: Timestamp,
    pub status_version: i64,
}

/// A row the signer task claimed: which response to sign, and from what.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DueOcspRow {
    pub hash_algorithm: String,
    pub due_at: Timestamp,
    #[sqlx(flatten)]
    pub subject: OcspSubjectRow,
}

/// A response just signed, to store.
#[derive(Debug, Clone)]
pub struct NewOcspResponse {
    pub serial: String,
    pub hash_algorithm: &'static str,
    /// The `status_version` of the subject it was signed from.
    pub signed_version: i64,
    pub der: Vec<u8>,
    pub this_update: Timestamp,
    pub next_update: Timestamp,
    /// When the signer task should sign it again.
    pub due_at: Timestamp,
}

const SUBJECT_COLUMNS: &str = "c.serial, c.status, c.revocation_reason, c.revoked_at, c.updated_at, \
     c.not_after, c.status_version";

impl Store {
    /// The counter every status change of a signed certificate bumps (`ocsp_state`, by the
    /// trigger of migration 0019): nothing changed while it stays put.
    pub async fn ocsp_status_changes(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT status_changes FROM ocsp_state WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The stored response for `serial` under `hash_algorithm`, with its certificate's current
    /// status version (one statement).
    pub async fn ocsp_response(
        &self,
        serial: &str,
        hash_algorithm: &str,
    ) -> Result<Option<OcspResponseRow>> {
        Ok(sqlx::query_as(
            "SELECT r.der, r.signed_version, r.this_update, r.next_update, r.due_at, c.status_version \
             FROM ocsp_responses r JOIN certificates c ON c.serial = r.serial \
             WHERE r.serial = $1 AND r.hash_algorithm = $2",
        )
        .bind(serial)
        .bind(hash_algorithm)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The certificate `serial`'s status and status version (one statement).
    pub async fn ocsp_subject(&self, serial: &str) -> Result<Option<OcspSubjectRow>> {
        Ok(sqlx::query_as(sql!(
            "SELECT {SUBJECT_COLUMNS} FROM certificates c WHERE c.serial = $1"
        ))
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Claims up to `limit` rows due at `now` (stale ones first) for this signer: each claimed
    /// row's `due_at` moves to `lease_until`, so another replica's signer skips it while this
    /// one signs (and signs it again after the lease if this one died). Due rows of
    /// certificates expired at `now` are parked (`OCSP_DUE_NEVER`) instead.
    pub async fn claim_due_ocsp_responses(
        &self,
        now: Timestamp,
        limit: i64,
        lease_until: Timestamp,
    ) -> Result<Vec<DueOcspRow>> {
        let mut tx = self.pool.begin().await?;
        // A write first, so that SQLite takes the write lock before this transaction reads
        // (a read transaction that later writes fails if another writer committed meanwhile).
        sqlx::query(
            "UPDATE ocsp_responses SET due_at = $1 WHERE due_at <= $2 AND EXISTS \
             (SELECT 1 FROM certificates c WHERE c.serial = ocsp_responses.serial AND c.not_after < $2)",
        )
        .bind(Timestamp::parse(OCSP_DUE_NEVER).expect("a fixed RFC 3339 time"))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let due: Vec<DueOcspRow> = sqlx::query_as(sql!(
            "SELECT r.hash_algorithm, r.due_at, {SUBJECT_COLUMNS} FROM ocsp_responses r \
             JOIN certificates c ON c.serial = r.serial WHERE r.due_at <= $1 \
             ORDER BY r.due_at, r.serial LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::with_capacity(due.len());
        for row in due {
            let done = sqlx::query(
                "UPDATE ocsp_responses SET due_at = $1 \
                 WHERE serial = $2 AND hash_algorithm = $3 AND due_at = $4",
            )
            .bind(lease_until)
            .bind(&row.subject.serial)
            .bind(&row.hash_algorithm)
            .bind(row.due_at)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                claimed.push(row);
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Stores responses just signed, in one transaction. Each is written only while its
    /// certificate's status version is still the one it was signed for (otherwise the row
    /// keeps waiting for the signer); returns how many were written.
    pub async fn store_ocsp_responses(&self, responses: &[NewOcspResponse]) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let mut written = 0;
        for r in responses {
            let done = sqlx::query(
                "INSERT INTO ocsp_responses \
                 (serial, hash_algorithm, signed_version, der, this_update, next_update, due_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7 FROM certificates \
                 WHERE serial = $1 AND status_version = $3 \
                 ON CONFLICT (serial, hash_algorithm) DO UPDATE SET \
                 signed_version = excluded.signed_version, der = excluded.der, \
                 this_update = excluded.this_update, next_update = excluded.next_update, \
                 due_at = excluded.due_at",
            )
            .bind(&r.serial)
            .bind(r.hash_algorithm)
            .bind(r.signed_version)
            .bind(r.der.clone())
            .bind(r.this_update)
            .bind(r.next_update)
            .bind(r.due_at)
            .execute(&mut *tx)
            .await?;
            written += usize::try_from(done.rows_affected()).unwrap_or(0);
        }
        tx.commit().await?;
        Ok(written)
    }
}
