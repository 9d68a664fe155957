//! Certificate revocation and hold (RFC 5280 reasons).
use super::{LifecycleError, invalid};
use crate::audit::{self, Actor, Change};
use crate::store::{
    CertificateOwner, CertificateRow, CertificateStatus, PersonState, Timestamp, TokenState,
    WriteTx,
};

/// RFC 5280 CRLReason, with the RFC's codes (one type, kept in `ca`).
pub use crate::ca::RevocationReason;

/// Which certificates a caller may revoke, hold and release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateScope {
    /// Every certificate (the `admin` role).
    Every,
    /// Every certificate except operator certificates: API client certificates and the OCSP
    /// responder's (the `helpdesk` role), so that the help desk cannot lock out HR, the
    /// auditors, the admins or the responder.
    ExceptOperators,
}

impl CertificateScope {
    /// Whether `certificate` is within this scope.
    pub fn covers(self, certificate: &CertificateRow) -> bool {
        self == CertificateScope::Every || !is_operator_certificate(certificate)
    }

    fn check(self, certificate: &CertificateRow) -> Result<(), LifecycleError> {
        if self.covers(certificate) {
            Ok(())
        } else {
            Err(LifecycleError::CertificateRequiresAdmin {
                serial: certificate.serial.clone(),
                profile: certificate.profile.clone(),
            })
        }
    }
}

/// An operator certificate: an API client certificate (`tessera admin issue-client-cert`) or
/// the OCSP responder's (`tessera ca init-ocsp`), told apart by the profile stored with it.
pub fn is_operator_certificate(certificate: &CertificateRow) -> bool {
    use crate::ca::profile::{OCSP_RESPONDER_PROFILE, OPERATOR_CLIENT_PROFILE};
    [OPERATOR_CLIENT_PROFILE, OCSP_RESPONDER_PROFILE].contains(&certificate.profile.as_str())
}

/// [`revoke_certificate`] for a caller limited to `scope`: a certificate outside it is refused
/// (`CERTIFICATE_REQUIRES_ADMIN`) and nothing changes.
pub async fn revoke_certificate_within(
    tx: &mut WriteTx,
    actor: &Actor,
    scope: CertificateScope,
    request_id: &str,
    serial: &str,
    reason: RevocationReason,
) -> Result<CertificateRow, LifecycleError> {
    if let Some(before) = tx.certificate_by_serial(serial).await? {
        scope.check(&before)?;
    }
    revoke_certificate(tx, actor, request_id, serial, reason).await
}

/// Takes one certificate off hold (on hold → good), audited as `certificate.release` with
/// `note` (at most 1024 bytes) in the event. Refused for a certificate outside `scope`
/// (`CERTIFICATE_REQUIRES_ADMIN`), one that is not on hold (`CERTIFICATE_NOT_ON_HOLD`, revoked
/// for good included), and one whose person or token is suspended
/// (`HOLD_IS_FROM_PERSON_OR_TOKEN`): that hold ends when the person or token is reinstated,
/// never certificate by certificate, or suspension would mean nothing.
pub async fn release_certificate_hold(
    tx: &mut WriteTx,
    actor: &Actor,
    scope: CertificateScope,
    request_id: &str,
    serial: &str,
    note: &str,
) -> Result<CertificateRow, LifecycleError> {
    if serial.is_empty() {
        return Err(invalid("serial", "FIELD_REQUIRED", "is empty"));
    }
    if note.len() > 1024 {
        return Err(invalid("reason", "FIELD_TOO_LONG", "exceeds 1024 bytes"));
    }
    let before = tx
        .certificate_by_serial(serial)
        .await?
        .ok_or_else(|| LifecycleError::CertificateNotFound(serial.to_string()))?;
    scope.check(&before)?;
    if before.status != CertificateStatus::OnHold {
        return Err(LifecycleError::CertificateNotOnHold {
            serial: before.serial.clone(),
            status: before.status.as_str(),
        });
    }
    if let Some(person_id) = before.person_id
        && let Some(person) = tx.person_by_id(person_id).await?
        && person.state == PersonState::Suspended
    {
        return Err(LifecycleError::HoldFromOwner {
            serial: before.serial.clone(),
            owner: "person",
            state: person.state.as_str(),
        });
    }
    if let Some(token_id) = before.token_id
        && let Some(token) = tx.token_by_id(token_id).await?
        && matches!(token.state, TokenState::Suspended | TokenState::Forgotten)
    {
        return Err(LifecycleError::HoldFromOwner {
            serial: before.serial.clone(),
            owner: "token",
            state: token.state.as_str(),
        });
    }
    let change = StatusChange {
        status: CertificateStatus::Good,
        reason: None,
        at: None,
        action: "certificate.release",
        note,
    };
    change_status(tx, actor, request_id, &before, change).await
}

/// Takes one certificate that its token's move to `forgotten` held off hold (the token was
/// reinstated), audited as `certificate.release`.
pub(super) async fn release_owner_hold(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    serial: &str,
) -> Result<CertificateRow, LifecycleError> {
    let before = tx
        .certificate_by_serial(serial)
        .await?
        .ok_or_else(|| LifecycleError::CertificateNotFound(serial.to_string()))?;
    let change = StatusChange {
        status: CertificateStatus::Good,
        reason: None,
        at: None,
        action: "certificate.release",
        note: "",
    };
    change_status(tx, actor, request_id, &before, change).await
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
    revoke_certificate_noted(tx, actor, request_id, serial, reason, "").await
}

/// [`revoke_certificate`] with `note` (why, e.g. the attestation rule a fleet re-check found
/// broken) kept in the audit event's `after` as `reason`.
pub async fn revoke_certificate_noted(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    serial: &str,
    reason: RevocationReason,
    note: &str,
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
        note,
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
/// returns the serials changed. Reserved (unsigned) and revoked certificates are left alone,
/// and a release leaves the holds of a forgotten token (they end when it is reinstated).
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
                if tx.is_forgotten_hold(&before.serial).await? {
                    continue;
                }
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
            note: "",
        };
        let row = change_status(tx, actor, request_id, &before, change).await?;
        changed.push(row.serial);
    }
    Ok(changed)
}

/// One status change of one certificate: the new status, reason code and time, and the audit
/// action that records it.
struct StatusChange<'a> {
    status: CertificateStatus,
    reason: Option<i64>,
    at: Option<Timestamp>,
    action: &'static str,
    /// The caller's reason text, kept in the event's `after` as `reason` when not empty.
    note: &'a str,
}

/// Applies `change` to the certificate `before` and audits it (before and after rows).
async fn change_status(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    before: &CertificateRow,
    change: StatusChange<'_>,
) -> Result<CertificateRow, LifecycleError> {
    let row = tx
        .update_certificate_status(&before.serial, change.status, change.reason, change.at)
        .await?;
    let mut after = serde_json::to_value(&row).unwrap_or_default();
    if !change.note.is_empty() {
        after["reason"] = serde_json::Value::String(change.note.to_string());
    }
    audit::record(
        tx,
        actor,
        Change {
            action: change.action,
            subject: format!("certificate:{}", row.serial),
            before: Some(serde_json::to_value(before).unwrap_or_default()),
            after: Some(after),
            request_id,
        },
    )
    .await?;
    Ok(row)
}
