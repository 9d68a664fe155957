//! Certificate revocation and hold (RFC 5280 reasons).
use super::{LifecycleError, invalid};
use crate::audit::{self, Actor, Change};
use crate::store::{CertificateOwner, CertificateRow, CertificateStatus, Timestamp, WriteTx};

/// RFC 5280 CRLReason, with the RFC's codes (one type, kept in `ca`).
pub use crate::ca::RevocationReason;

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
    let now = tx.now();
    let change = StatusChange {
        status: target,
        reason: Some(reason.code()),
        at: Some(now),
        action,
    };
    let row = change_status(tx, actor, request_id, &before, change).await?;
    Ok(row)
}

/// What a person or token transition does to the certificates it owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateEffect {
    /// Good → on hold (certificateHold).
    Hold,
    /// On hold → good.
    Release,
    /// Good or on hold → revoked with this reason.
    Revoke(RevocationReason),
}

/// Applies `effect` to every certificate of `owner` that it concerns, each change audited;
/// returns the serials changed. Reserved (unsigned) and revoked certificates are left alone.
pub async fn apply_certificate_effect(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    owner: CertificateOwner,
    effect: CertificateEffect,
) -> Result<Vec<String>, LifecycleError> {
    let mut changed = Vec::new();
    for before in tx.certificates_of(owner).await? {
        let now = tx.now();
        let (status, reason, at, action) = match (effect, before.status) {
            (CertificateEffect::Hold, CertificateStatus::Good) => (
                CertificateStatus::OnHold,
                Some(RevocationReason::CertificateHold.code()),
                Some(now),
                "certificate.hold",
            ),
            (CertificateEffect::Release, CertificateStatus::OnHold) => {
                (CertificateStatus::Good, None, None, "certificate.release")
            }
            (CertificateEffect::Revoke(r), CertificateStatus::Good | CertificateStatus::OnHold) => {
                (
                    CertificateStatus::Revoked,
                    Some(r.code()),
                    Some(now),
                    "certificate.revoke",
                )
            }
            _ => continue,
        };
        let change = StatusChange {
            status,
            reason,
            at,
            action,
        };
        let row = change_status(tx, actor, request_id, &before, change).await?;
        changed.push(row.serial);
    }
    Ok(changed)
}

/// One status change of one certificate: the new status, reason code and time, and the audit
/// action that records it.
struct StatusChange {
    status: CertificateStatus,
    reason: Option<i64>,
    at: Option<Timestamp>,
    action: &'static str,
}

/// Applies `change` to the certificate `before` and audits it (before and after rows).
async fn change_status(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    before: &CertificateRow,
    change: StatusChange,
) -> Result<CertificateRow, LifecycleError> {
    let row = tx
        .update_certificate_status(&before.serial, change.status, change.reason, change.at)
        .await?;
    audit::record(
        tx,
        actor,
        Change {
            action: change.action,
            subject: format!("certificate:{}", row.serial),
            before: Some(serde_json::to_value(before).unwrap_or_default()),
            after: Some(serde_json::to_value(&row).unwrap_or_default()),
            request_id,
        },
    )
    .await?;
    Ok(row)
}
