//! Table `renewal_supersedes` (migration 0015): the certificates a renewal replaces, by slot,
//! and the query that finds a token's renewable certificates. Rows only; the rules are in
//! `enroll::desk` (`renewal.rs`).
use super::{Result, Timestamp, WriteTx, map_unique};

/// A good certificate of a token, issued by one of its confirmed enrollments (or renewals) for
/// one slot, with the slot plan that enrollment stored (what a renewal generates again).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RenewableCertificateRow {
    pub slot: String,
    pub serial: String,
    pub profile: String,
    pub not_after: Timestamp,
    /// The issuing enrollment's public id, its enrollment profile and stored plan (JSON).
    pub enrollment_public_id: String,
    pub enrollment_profile: String,
    pub plan_json: String,
}

impl WriteTx {
    /// The good certificates of token `token_id` that its confirmed enrollments issued, by slot
    /// (newest notAfter first within a slot).
    pub async fn renewable_certificates_of_token(
        &mut self,
        token_id: i64,
    ) -> Result<Vec<RenewableCertificateRow>> {
        Ok(sqlx::query_as(
            "SELECT ec.slot, ec.serial, c.profile, c.not_after, e.public_id AS enrollment_public_id, \
             e.profile AS enrollment_profile, e.plan_json \
             FROM enrollment_certificates ec JOIN enrollments e ON e.id = ec.enrollment_id \
             JOIN certificates c ON c.serial = ec.serial \
             WHERE e.token_id = $1 AND e.state = 'confirmed' AND c.status = 'good' \
             ORDER BY ec.slot, c.not_after DESC, ec.serial",
        )
        .bind(token_id)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    /// Records that renewal `enrollment_id` replaces certificate `serial` in `slot`.
    pub async fn insert_renewal_supersedes(
        &mut self,
        enrollment_id: i64,
        slot: &str,
        serial: &str,
    ) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO renewal_supersedes (enrollment_id, slot, serial) VALUES ($1, $2, $3)",
        )
        .bind(enrollment_id)
        .bind(slot)
        .bind(serial)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "renewal supersedes", slot)
    }

    /// The certificates renewal `enrollment_id` replaces: (slot, serial), by slot.
    pub async fn renewal_supersedes(
        &mut self,
        enrollment_id: i64,
    ) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT slot, serial FROM renewal_supersedes WHERE enrollment_id = $1 ORDER BY slot",
        )
        .bind(enrollment_id)
        .fetch_all(&mut *self.tx)
        .await?)
    }
}
