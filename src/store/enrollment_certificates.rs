//! Table `enrollment_certificates`: the certificate each enrollment issued, by slot (abort and
//! expiry revoke them).
use super::{EnrollmentState, Result, Store, WriteTx, map_unique};
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

/// The enrollment that issued a certificate, and for which slot (self-service: is this
/// certificate a token's own, and which token's).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CertificateEnrollmentRow {
    pub enrollment_id: i64,
    pub token_id: i64,
    pub person_id: i64,
    pub state: EnrollmentState,
    pub slot: String,
}

impl Store {
    /// The enrollment that issued the certificate with this serial, if one did.
    pub async fn enrollment_of_certificate(
        &self,
        serial: &str,
    ) -> Result<Option<CertificateEnrollmentRow>> {
        Ok(sqlx::query_as(
            "SELECT e.id AS enrollment_id, e.token_id, e.person_id, e.state, ec.slot \
             FROM enrollment_certificates ec JOIN enrollments e ON e.id = ec.enrollment_id \
             WHERE ec.serial = $1 ORDER BY e.id DESC LIMIT 1",
        )
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// For each slot of the token, the certificate the token's latest confirmed enrollment
    /// (first enrollment or renewal) that covered that slot issued; ordered by slot.
    pub async fn current_slot_certificates(
        &self,
        token_id: i64,
    ) -> Result<Vec<EnrollmentCertificateRow>> {
        Ok(sqlx::query_as(
            "SELECT ec.slot, ec.serial FROM enrollment_certificates ec \
             JOIN enrollments e ON e.id = ec.enrollment_id \
             WHERE e.token_id = $1 AND e.state = 'confirmed' AND e.id = ( \
               SELECT MAX(e2.id) FROM enrollment_certificates ec2 \
               JOIN enrollments e2 ON e2.id = ec2.enrollment_id \
               WHERE e2.token_id = $1 AND e2.state = 'confirmed' AND ec2.slot = ec.slot) \
             ORDER BY ec.slot",
        )
        .bind(token_id)
        .fetch_all(&self.pool)
        .await?)
    }

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
