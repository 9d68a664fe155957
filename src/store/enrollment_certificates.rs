//! Table `enrollment_certificates`: the certificate each enrollment issued, by slot (abort and
//! expiry revoke them).
use super::{Result, Store, WriteTx, map_unique};
use sqlx::{Any, Executor};

/// A certificate an enrollment issued for one slot.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EnrollmentCertificateRow {
    pub slot: String,
    pub serial: String,
}

async fn enrollment_certificates<'e, E: Executor<'e, Database = Any>>(
    e: E,
    enrollment_id: i64,
) -> Result<Vec<EnrollmentCertificateRow>> {
    Ok(sqlx::query_as(
        "SELECT slot, serial FROM enrollment_certificates WHERE enrollment_id = $1 ORDER BY slot",
    )
    .bind(enrollment_id)
    .fetch_all(e)
    .await?)
}

impl Store {
    pub async fn enrollment_certificates(
        &self,
        enrollment_id: i64,
    ) -> Result<Vec<EnrollmentCertificateRow>> {
        enrollment_certificates(&self.pool, enrollment_id).await
    }
}

impl WriteTx {
    pub async fn insert_enrollment_certificate(
        &mut self,
        enrollment_id: i64,
        slot: &str,
        serial: &str,
    ) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO enrollment_certificates (enrollment_id, slot, serial) VALUES ($1, $2, $3)",
        )
        .bind(enrollment_id)
        .bind(slot)
        .bind(serial)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "enrollment certificate", slot)
    }

    pub async fn enrollment_certificates(
        &mut self,
        enrollment_id: i64,
    ) -> Result<Vec<EnrollmentCertificateRow>> {
        enrollment_certificates(&mut *self.tx, enrollment_id).await
    }

    /// Certificates issued by the token's other enrollments (not `except_enrollment_id`).
    pub async fn earlier_enrollment_certificates(
        &mut self,
        token_id: i64,
        except_enrollment_id: i64,
    ) -> Result<Vec<EnrollmentCertificateRow>> {
        Ok(sqlx::query_as(
            "SELECT ec.slot, ec.serial FROM enrollment_certificates ec JOIN enrollments e ON e.id = ec.enrollment_id \
             WHERE e.token_id = $1 AND e.id <> $2 ORDER BY ec.serial",
        )
        .bind(token_id)
        .bind(except_enrollment_id)
        .fetch_all(&mut *self.tx)
        .await?)
    }
}
