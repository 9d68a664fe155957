//! Table `certificates`: every serial the CA reserved, what it was about to sign, the signed
//! certificate, and its status. Status changes bump `crl_state.status_changes`; the trigger of
//! migration 0019 also bumps the certificate's `status_version` (see `ocsp_responses`).
use super::{Result, Store, Timestamp, WriteTx, map_unique, written};
use serde::Serialize;
use sqlx::{Any, Executor};

stored_enum!(CertificateStatus, "certificates.status", {
    Reserved => "reserved", Good => "good", OnHold => "on_hold", Revoked => "revoked",
});

/// A certificate about to be signed: serial reserved and what will be signed recorded first.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    /// Lower-case hex.
    pub serial: String,
    pub person_id: Option<i64>,
    pub token_id: Option<i64>,
    pub profile: String,
    /// What the CA is about to sign (the to-be-signed certificate, or the request it is made from).
    pub tbs: Vec<u8>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct CertificateRow {
    pub serial: String,
    #[serde(skip)]
    pub person_id: Option<i64>,
    #[serde(skip)]
    pub token_id: Option<i64>,
    pub profile: String,
    pub status: CertificateStatus,
    #[serde(skip)]
    pub tbs: Vec<u8>,
    #[serde(skip)]
    pub der: Option<Vec<u8>>,
    /// Lower-case hex SHA-256 of the DER, once signed.
    pub sha256: Option<String>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// RFC 5280 CRLReason code.
    pub revocation_reason: Option<i64>,
    pub revoked_at: Option<Timestamp>,
    #[serde(skip)]
    pub created_at: Timestamp,
    #[serde(skip)]
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Default)]
pub struct CertificatesQuery {
    /// Rows with a greater serial (paging); empty starts at the first.
    pub after_serial: String,
    pub limit: i64,
    pub person_id: Option<i64>,
    pub token_id: Option<i64>,
}

/// Good certificates whose notAfter falls in `[from, until]`, by notAfter then serial.
#[derive(Debug, Clone)]
pub struct ExpiringQuery {
    pub from: Timestamp,
    pub until: Timestamp,
    /// Rows after this `(not_after, serial)` (paging); `None` starts at the first.
    pub after: Option<(Timestamp, String)>,
    pub limit: i64,
    /// Only this profile (exact name) when set.
    pub profile: Option<String>,
    pub person_id: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateOwner {
    Person(i64),
    Token(i64),
}

const CERTIFICATE_COLUMNS: &str = "serial, person_id, token_id, profile, status, tbs, der, sha256, not_before, \
     not_after, revocation_reason, revoked_at, created_at, updated_at";

/// One certificate by a unique column (`serial` or `sha256`, never from input).
async fn certificate_where<'e, E: Executor<'e, Database = Any>>(
    e: E,
    column: &'static str,
    value: &str,
) -> Result<Option<CertificateRow>> {
    Ok(sqlx::query_as(sql!(
        "SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE {column} = $1"
    ))
    .bind(value)
    .fetch_optional(e)
    .await?)
}

impl Store {
    pub async fn certificate_serials_for_token(&self, token_id: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT serial FROM certificates WHERE token_id = $1 ORDER BY serial",
        )
        .bind(token_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn certificate_by_serial(&self, serial: &str) -> Result<Option<CertificateRow>> {
        certificate_where(&self.pool, "serial", serial).await
    }

    pub async fn certificate_by_sha256(&self, sha256_hex: &str) -> Result<Option<CertificateRow>> {
        certificate_where(&self.pool, "sha256", sha256_hex).await
    }

    /// Certificates with a serial greater than `after_serial`, ordered by serial, optionally
    /// only one person's or one token's.
    pub async fn list_certificates(&self, q: &CertificatesQuery) -> Result<Vec<CertificateRow>> {
        Ok(sqlx::query_as(sql!(
            "SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE serial > $1 \
             AND ($2 = 0 OR person_id = $2) AND ($3 = 0 OR token_id = $3) ORDER BY serial LIMIT $4"
        ))
        .bind(&q.after_serial)
        .bind(q.person_id.unwrap_or(0))
        .bind(q.token_id.unwrap_or(0))
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Good certificates expiring in a window (see [`ExpiringQuery`]); on hold, revoked and
    /// reserved ones are not listed, nor ones already expired.
    pub async fn expiring_certificates(&self, q: &ExpiringQuery) -> Result<Vec<CertificateRow>> {
        let (after_time, after_serial) = match &q.after {
            Some((t, serial)) => (Some(*t), serial.as_str()),
            None => (None, ""),
        };
        Ok(sqlx::query_as(sql!(
            "SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE status = $1 \
             AND not_after >= $2 AND not_after <= $3 \
             AND ($4 = '' OR not_after > $4 OR (not_after = $4 AND serial > $5)) \
             AND ($6 = '' OR profile = $6) AND ($7 = 0 OR person_id = $7) \
             ORDER BY not_after, serial LIMIT $8"
        ))
        .bind(CertificateStatus::Good.as_str())
        .bind(q.from)
        .bind(q.until)
        .bind(after_time.map(|t| t.to_string()).unwrap_or_default())
        .bind(after_serial)
        .bind(q.profile.as_deref().unwrap_or(""))
        .bind(q.person_id.unwrap_or(0))
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many good certificates expire in `[from, until]` (the `tessera_certificates_expiring`
    /// gauge).
    pub async fn count_expiring_certificates(
        &self,
        from: Timestamp,
        until: Timestamp,
    ) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM certificates WHERE status = $1 \
             AND not_after >= $2 AND not_after <= $3",
        )
        .bind(CertificateStatus::Good.as_str())
        .bind(from)
        .bind(until)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Certificates the CA has signed (any status but reserved).
    pub async fn certificates_signed(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM certificates WHERE der IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}

impl WriteTx {
    pub async fn certificate_by_serial(&mut self, serial: &str) -> Result<Option<CertificateRow>> {
        certificate_where(&mut *self.tx, "serial", serial).await
    }

    /// Records a certificate before it is signed (status `reserved`). A serial already used
    /// is refused with [`super::StoreError::Duplicate`].
    pub async fn reserve_certificate(&mut self, c: &NewCertificate) -> Result<CertificateRow> {
        let now = self.now();
        let result = sqlx::query(
            "INSERT INTO certificates (serial, person_id, token_id, profile, status, tbs, not_before, not_after, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(&c.serial)
        .bind(c.person_id)
        .bind(c.token_id)
        .bind(&c.profile)
        .bind(CertificateStatus::Reserved.as_str())
        .bind(c.tbs.clone())
        .bind(c.not_before)
        .bind(c.not_after)
        .bind(now)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "certificate serial", &c.serial)?;
        written(self.certificate_by_serial(&c.serial).await?)
    }

    /// [`WriteTx::reserve_certificate`] for many certificates, with multi-row statements and
    /// nothing read back (bulk loads: `tessera bench --scale`).
    pub async fn reserve_certificates(&mut self, certificates: &[NewCertificate]) -> Result<()> {
        let now = self.now();
        for chunk in certificates.chunks(super::BULK_ROWS) {
            let sql = super::multi_row_insert(
                "certificates",
                "serial, person_id, token_id, profile, status, tbs, not_before, not_after, \
                 created_at, updated_at",
                10,
                chunk.len(),
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for c in chunk {
                query = query
                    .bind(&c.serial)
                    .bind(c.person_id)
                    .bind(c.token_id)
                    .bind(&c.profile)
                    .bind(CertificateStatus::Reserved.as_str())
                    .bind(c.tbs.as_slice())
                    .bind(c.not_before)
                    .bind(c.not_after)
                    .bind(now)
                    .bind(now);
            }
            let first = chunk.first().map(|c| c.serial.as_str()).unwrap_or("");
            map_unique(
                query.execute(&mut *self.tx).await,
                "certificate serial",
                first,
            )?;
        }
        Ok(())
    }

    /// Stores the signed certificate of a reserved serial and marks it `good`.
    pub async fn record_issued_certificate(
        &mut self,
        serial: &str,
        der: &[u8],
        sha256_hex: &str,
    ) -> Result<CertificateRow> {
        let now = self.now();
        sqlx::query("UPDATE certificates SET der = $1, sha256 = $2, status = $3, updated_at = $4 WHERE serial = $5")
            .bind(der.to_vec())
            .bind(sha256_hex)
            .bind(CertificateStatus::Good.as_str())
            .bind(now)
            .bind(serial)
            .execute(&mut *self.tx)
            .await?;
        written(self.certificate_by_serial(serial).await?)
    }

    /// Every certificate of a person (`person_id`) or of a token (`token_id`), by serial.
    pub async fn certificates_of(
        &mut self,
        owner: CertificateOwner,
    ) -> Result<Vec<CertificateRow>> {
        let (column, id) = match owner {
            CertificateOwner::Person(id) => ("person_id", id),
            CertificateOwner::Token(id) => ("token_id", id),
        };
        Ok(sqlx::query_as(sql!(
            "SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE {column} = $1 ORDER BY serial"
        ))
        .bind(id)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    /// Writes status, revocation reason and time of the certificate `serial`.
    pub async fn update_certificate_status(
        &mut self,
        serial: &str,
        status: CertificateStatus,
        revocation_reason: Option<i64>,
        revoked_at: Option<Timestamp>,
    ) -> Result<CertificateRow> {
        let now = self.now();
        sqlx::query(
            "UPDATE certificates SET status = $1, revocation_reason = $2, revoked_at = $3, updated_at = $4 WHERE serial = $5",
        )
        .bind(status.as_str())
        .bind(revocation_reason)
        .bind(revoked_at)
        .bind(now)
        .bind(serial)
        .execute(&mut *self.tx)
        .await?;
        // Every replica's CRL cache sees the change (see `crl_state`).
        sqlx::query("UPDATE crl_state SET status_changes = status_changes + 1 WHERE id = 1")
            .execute(&mut *self.tx)
            .await?;
        written(self.certificate_by_serial(serial).await?)
    }

    /// Every certificate of the people with these ids, by person id then serial.
    pub async fn certificates_of_people(
        &mut self,
        person_ids: &[i64],
    ) -> Result<Vec<CertificateRow>> {
        let mut out = Vec::new();
        for chunk in person_ids.chunks(super::BULK_ROWS) {
            let list = super::placeholders(1, chunk.len());
            let mut query = sqlx::query_as(sql!(
                "SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE person_id IN ({list}) \
                 ORDER BY person_id, serial"
            ));
            for id in chunk {
                query = query.bind(*id);
            }
            out.extend(query.fetch_all(&mut *self.tx).await?);
        }
        Ok(out)
    }

    /// [`WriteTx::update_certificate_status`] for many certificates at once, all to the same
    /// status, reason and time; the CRL's status-change counter is bumped once per statement.
    pub async fn update_certificates_status(
        &mut self,
        serials: &[String],
        status: CertificateStatus,
        revocation_reason: Option<i64>,
        revoked_at: Option<Timestamp>,
    ) -> Result<()> {
        let now = self.now();
        for chunk in serials.chunks(super::BULK_ROWS) {
            let list = super::placeholders(5, chunk.len());
            let mut query = sqlx::query(sql!(
                "UPDATE certificates SET status = $1, revocation_reason = $2, revoked_at = $3, \
                 updated_at = $4 WHERE serial IN ({list})"
            ))
            .bind(status.as_str())
            .bind(revocation_reason)
            .bind(revoked_at)
            .bind(now);
            for serial in chunk {
                query = query.bind(serial);
            }
            query.execute(&mut *self.tx).await?;
            sqlx::query("UPDATE crl_state SET status_changes = status_changes + 1 WHERE id = 1")
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }
}
