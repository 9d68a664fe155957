//! Table `certificate_attestations`: the attestation facts (JSON of
//! `tessera_attest::AttestationFacts`) each certificate's key was verified with, kept so that
//! the fleet can be re-checked against a new attestation policy. Certificates issued before
//! migration 0013 have no row.
use super::{Result, Store, Timestamp, WriteTx, map_unique};
use sqlx::{Any, Executor};

/// A good certificate of an active token, with the facts stored for its key (if any).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FleetCertificateRow {
    pub token_serial: String,
    /// The token's firmware as recorded at its last enrollment.
    pub token_firmware: String,
    pub person_external_id: Option<String>,
    pub person_display_name: Option<String>,
    pub certificate_serial: String,
    pub profile: String,
    pub not_after: Timestamp,
    /// The attested slot, when facts were stored.
    pub slot: Option<String>,
    /// `AttestationFacts` as JSON; `None` when none were stored (issued before migration 0013).
    pub facts_json: Option<String>,
}

async fn active_fleet_certificates<'e, E: Executor<'e, Database = Any>>(
    e: E,
) -> Result<Vec<FleetCertificateRow>> {
    Ok(sqlx::query_as(
        "SELECT t.serial AS token_serial, t.firmware AS token_firmware, \
         p.external_id AS person_external_id, p.display_name AS person_display_name, \
         c.serial AS certificate_serial, c.profile AS profile, c.not_after AS not_after, \
         a.slot AS slot, a.facts_json AS facts_json \
         FROM tokens t JOIN certificates c ON c.token_id = t.id \
         LEFT JOIN people p ON p.id = t.person_id \
         LEFT JOIN certificate_attestations a ON a.certificate_serial = c.serial \
         WHERE t.state = 'active' AND c.status = 'good' \
         ORDER BY t.serial, c.serial",
    )
    .fetch_all(e)
    .await?)
}

impl Store {
    /// Every good certificate of every active token, by token serial then certificate serial,
    /// with its stored attestation facts.
    pub async fn active_fleet_certificates(&self) -> Result<Vec<FleetCertificateRow>> {
        active_fleet_certificates(&self.pool).await
    }

    /// The stored facts of one certificate (JSON), if any.
    pub async fn certificate_attestation(
        &self,
        certificate_serial: &str,
    ) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT facts_json FROM certificate_attestations WHERE certificate_serial = $1",
        )
        .bind(certificate_serial)
        .fetch_optional(&self.pool)
        .await?)
    }
}

impl WriteTx {
    /// [`Store::active_fleet_certificates`] inside this transaction.
    pub async fn active_fleet_certificates(&mut self) -> Result<Vec<FleetCertificateRow>> {
        active_fleet_certificates(&mut *self.tx).await
    }

    /// Records the attestation facts `facts_json` of the key certified by `certificate_serial`.
    pub async fn insert_certificate_attestation(
        &mut self,
        certificate_serial: &str,
        slot: &str,
        facts_json: &str,
    ) -> Result<()> {
        let now = self.now();
        let result = sqlx::query(
            "INSERT INTO certificate_attestations (certificate_serial, slot, facts_json, recorded_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(certificate_serial)
        .bind(slot)
        .bind(facts_json)
        .bind(now)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "certificate attestation", certificate_serial)
    }
}
