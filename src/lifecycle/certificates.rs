//! Certificate revocation and hold (RFC 5280 reasons).
use super::{LifecycleError, invalid};
use crate::audit::{self, Actor, Change};
use crate::store::{CertificateRow, CertificateStatus, WriteTx, now_rfc3339};

/// RFC 5280 CRLReason, with the RFC's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationReason {
    Unspecified = 0,
    KeyCompromise = 1,
    CaCompromise = 2,
    AffiliationChanged = 3,
    Superseded = 4,
    CessationOfOperation = 5,
    CertificateHold = 6,
    PrivilegeWithdrawn = 9,
    AaCompromise = 10,
}

impl RevocationReason {
    pub fn code(self) -> i64 {
        self as i64
    }
}

/// Revokes a certificate, or puts it on hold when the reason is `CertificateHold`. A held
/// certificate may be revoked for good; a revoked one stays revoked; a reserved (unsigned)
/// certificate cannot be revoked.
pub async fn revoke_certificate(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    serial: &str,
    reason: RevocationReason,
) -> Result<CertificateRow, LifecycleError> {
    if serial.is_empty() {
        return Err(invalid("serial", "FIELD_REQUIRED", "is empty"));
    }
    let before = tx
        .certificate_by_serial(serial)
        .await?
        .ok_or_else(|| LifecycleError::CertificateNotFound(serial.to_string()))?;
    let (target, action) = match (before.status, reason) {
        (CertificateStatus::Good, RevocationReason::CertificateHold) => {
            (CertificateStatus::OnHold, "certificate.hold")
        }
        (CertificateStatus::Good | CertificateStatus::OnHold, r)
            if r != RevocationReason::CertificateHold =>
        {
            (CertificateStatus::Revoked, "certificate.revoke")
        }
        (from, _) => {
            return Err(LifecycleError::InvalidTransition {
                kind: "certificate",
                from: from.as_str(),
                action: if reason == RevocationReason::CertificateHold {
                    "put on hold"
                } else {
                    "revoke"
                },
            });
        }
    };
    let now = now_rfc3339();
    let row = tx
        .update_certificate_status(serial, target, Some(reason.code()), Some(&now))
        .await?;
    audit::record(
        tx,
        actor,
        Change {
            action,
            subject: format!("certificate:{serial}"),
            before: Some(serde_json::to_value(&before).unwrap_or_default()),
            after: Some(serde_json::to_value(&row).unwrap_or_default()),
            request_id,
        },
    )
    .await?;
    Ok(row)
}
