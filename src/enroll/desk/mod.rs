//! The enrollment desk: every step of an enrollment on the server, over the store and the
//! online CA. `api::enrollment_service` authorizes, translates protobuf, keeps the stored
//! answers of repeated requests and maps [`EnrollmentRefusal`] to gRPC status; the rules, the
//! credential wrapping and the audit events (also of refusals) are here.
//!
//! Steps that change state work inside the caller's [`WriteTx`] and record their audit events
//! there; a refusal comes back as [`DeskFailure::Refused`] and is recorded with
//! [`EnrollmentDesk::record_refusal`] in a fresh transaction once the caller has dropped its own.
//! CompleteEnrollment opens its own transactions (the HSM signs between them). Repeats of the
//! answers that carry secrets are checked and audited again (`repeat.rs`).

mod begin;
mod closing;
mod complete;
mod puk_release;
mod puk_rotation;
mod refusal;
mod renewal;
mod repeat;
mod secrets;

pub use begin::{BeginRequest, BegunEnrollment};
pub use complete::{CompleteRequest, Completion};
pub use puk_release::{
    Caller, PendingRelease, PukReleaseView, RELEASE_REASON_MAX_BYTES, ReleaseReason,
};
pub use puk_rotation::PukRotation;
pub use refusal::{DeskFailure, EnrollmentRefusal, RenewalWindow};
pub use renewal::{BegunRenewal, RENEWAL_SLOTS_MAX, RenewalRequest};
pub use repeat::SecretRepeat;
pub use secrets::PukRelease;

use super::EnrollmentSettings;
use crate::audit::{self, Actor, Change};
use crate::ca::OnlineCa;
use crate::lifecycle::LifecycleError;
use crate::store::{
    CertificateRow, EnrollmentRow, PersonRow, Store, StoreError, TokenRow, WriteTx,
};
use std::sync::Arc;

/// An enrollment as the API shows it.
pub struct EnrollmentView {
    pub row: EnrollmentRow,
    pub person_external_id: String,
    pub token_serial: String,
    /// Slot and certificate.
    pub certificates: Vec<(String, CertificateRow)>,
}

/// The server side of enrollment: the store, the online CA and the checked settings.
pub struct EnrollmentDesk {
    pub store: Store,
    pub ca: Arc<OnlineCa>,
    pub settings: Arc<EnrollmentSettings>,
}

impl EnrollmentDesk {
    pub fn new(store: Store, ca: Arc<OnlineCa>, settings: Arc<EnrollmentSettings>) -> Self {
        EnrollmentDesk {
            store,
            ca,
            settings,
        }
    }

    /// GetEnrollment (after the caller expired it if due).
    pub async fn get(&self, enrollment_id: &str) -> Result<EnrollmentView, EnrollmentRefusal> {
        let row = self
            .store
            .enrollment_by_public_id(enrollment_id)
            .await?
            .ok_or_else(|| EnrollmentRefusal::EnrollmentNotFound(enrollment_id.to_string()))?;
        let mut certificates = Vec::new();
        for c in self.store.enrollment_certificates(row.id).await? {
            if let Some(cert) = self.store.certificate_by_serial(&c.serial).await? {
                certificates.push((c.slot, cert));
            }
        }
        Ok(EnrollmentView {
            person_external_id: self
                .store
                .person_external_id(row.person_id)
                .await?
                .unwrap_or_default(),
            token_serial: self
                .store
                .token_serial(row.token_id)
                .await?
                .unwrap_or_default(),
            certificates,
            row,
        })
    }
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

async fn record(
    tx: &mut WriteTx,
    actor: &Actor,
    action: &str,
    subject: &str,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
    request_id: &str,
) -> Result<(), LifecycleError> {
    audit::record(
        tx,
        actor,
        Change {
            action,
            subject: subject.to_string(),
            before,
            after,
            request_id,
        },
    )
    .await?;
    Ok(())
}

async fn enrollment_or_not_found(
    tx: &mut WriteTx,
    public_id: &str,
) -> Result<EnrollmentRow, EnrollmentRefusal> {
    tx.enrollment_by_public_id(public_id)
        .await?
        .ok_or_else(|| EnrollmentRefusal::EnrollmentNotFound(public_id.to_string()))
}

async fn person_of(tx: &mut WriteTx, id: i64) -> Result<PersonRow, StoreError> {
    tx.person_by_id(id)
        .await?
        .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
}

async fn token_of(tx: &mut WriteTx, id: i64) -> Result<TokenRow, StoreError> {
    tx.token_by_id(id)
        .await?
        .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
}

/// An enrollment with its person, token and certificates, read in `tx`.
async fn view_in(tx: &mut WriteTx, row: EnrollmentRow) -> Result<EnrollmentView, StoreError> {
    let person = person_of(tx, row.person_id).await?;
    let token = token_of(tx, row.token_id).await?;
    let mut certificates = Vec::new();
    for c in tx.enrollment_certificates(row.id).await? {
        if let Some(cert) = tx.certificate_by_serial(&c.serial).await? {
            certificates.push((c.slot, cert));
        }
    }
    Ok(EnrollmentView {
        row,
        person_external_id: person.external_id,
        token_serial: token.serial,
        certificates,
    })
}
