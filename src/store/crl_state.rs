//! Tables `crl_state` (one row: the current CRL's number, times and the status-change counter
//! it was built from, shared by every replica) and `crl_parts` (the current CRL's DER in
//! parts of at most [`CRL_PART_BYTES`], so that neither writing nor reading a CRL of tens of
//! megabytes makes the database driver copy it whole).
use super::{Result, Store, StoreError, Timestamp};
use sqlx::{Any, Executor};
use tokio_stream::StreamExt;

/// The largest part of a stored CRL (the driver copies each bound value once or twice).
pub const CRL_PART_BYTES: usize = 4 << 20;

/// The shared CRL state.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CrlStateRow {
    /// Bumped by every certificate status change.
    pub status_changes: i64,
    /// CRL number of the last CRL signed; 0 before the first.
    pub number: i64,
    /// `status_changes` the last CRL was built from (read before its entries were read).
    pub built_from: i64,
    pub this_update: Option<Timestamp>,
    pub next_update: Option<Timestamp>,
}

/// A CRL just signed, to be published as the current one.
#[derive(Debug, Clone)]
pub struct NewCrl {
    pub number: i64,
    pub built_from: i64,
    pub this_update: Timestamp,
    pub next_update: Timestamp,
}

/// One line of a CRL, as little as it takes: serial, reason, when.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CrlEntryRow {
    /// Lower-case hex.
    pub serial: String,
    pub revocation_reason: Option<i64>,
    /// When it was revoked or put on hold (its last change for rows from before revocation
    /// times were kept).
    pub revoked_at: Timestamp,
}

async fn crl_state<'e, E: Executor<'e, Database = Any>>(e: E) -> Result<CrlStateRow> {
    Ok(sqlx::query_as(
        "SELECT status_changes, number, built_from, this_update, next_update FROM crl_state WHERE id = 1",
    )
    .fetch_one(e)
    .await?)
}

impl Store {
    /// The CRL state (current CRL number and times, the status-change counter), without the
    /// CRL itself.
    pub async fn crl_state(&self) -> Result<CrlStateRow> {
        crl_state(&self.pool).await
    }

    /// The DER of the CRL numbered `number` if it is the one stored (`None` once a newer one
    /// replaced it, or before the first).
    pub async fn crl_der(&self, number: i64) -> Result<Option<Vec<u8>>> {
        let mut parts = sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT der FROM crl_parts WHERE number = $1 ORDER BY part",
        )
        .bind(number)
        .fetch(&self.pool);
        let mut der: Option<Vec<u8>> = None;
        while let Some(part) = parts.next().await {
            der.get_or_insert_with(Vec::new).extend_from_slice(&part?);
        }
        Ok(der)
    }

    /// Calls `each` with every revoked or on-hold certificate (what a CRL lists) as the
    /// database returns them, in no particular order, never holding more than a few rows.
    /// With `expired_since`, certificates whose notAfter is before it are left out. One
    /// statement: it sees one committed state of the table. Returns how many rows it read.
    pub async fn each_crl_entry<E: From<StoreError>>(
        &self,
        expired_since: Option<Timestamp>,
        mut each: impl FnMut(CrlEntryRow) -> std::result::Result<(), E>,
    ) -> std::result::Result<u64, E> {
        let mut rows = sqlx::query_as::<_, CrlEntryRow>(
            "SELECT serial, revocation_reason, COALESCE(revoked_at, updated_at) AS revoked_at \
             FROM certificates \
             WHERE (status = $1 OR status = $2) AND not_after >= $3",
        )
        .bind(super::CertificateStatus::Revoked.as_str())
        .bind(super::CertificateStatus::OnHold.as_str())
        .bind(expired_since.map(|t| t.to_string()).unwrap_or_default())
        .fetch(&self.pool);
        let mut count = 0;
        while let Some(row) = rows.next().await {
            each(row.map_err(StoreError::from)?)?;
            count += 1;
        }
        Ok(count)
    }

    /// Publishes `crl` (its DER `der`) as the current CRL if the current one is still number
    /// `replaces`; returns `false` (and changes nothing) when another replica published a CRL
    /// since. A short write: one conditional update and the parts, under the write lock.
    pub async fn publish_crl(&self, crl: &NewCrl, replaces: i64, der: &[u8]) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE crl_state SET number = $1, built_from = $2, der = NULL, this_update = $3, \
             next_update = $4 WHERE id = 1 AND number = $5",
        )
        .bind(crl.number)
        .bind(crl.built_from)
        .bind(crl.this_update)
        .bind(crl.next_update)
        .bind(replaces)
        .execute(&mut *tx.tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM crl_parts")
            .execute(&mut *tx.tx)
            .await?;
        for (part, bytes) in der.chunks(CRL_PART_BYTES).enumerate() {
            sqlx::query("INSERT INTO crl_parts (number, part, der) VALUES ($1, $2, $3)")
                .bind(crl.number)
                .bind(part as i64)
                .bind(bytes)
                .execute(&mut *tx.tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
