//! The controls on releasing a token's PUK (issue 12, finding 9): a reason is required, each
//! client certificate receives at most `puk_releases_per_hour` releases in any 60 minutes
//! (counted from the `puk_releases` rows, so across restarts and replicas), and under dual
//! control (`[enrollment] puk_release_approval`) a release is first a pending request that a
//! second certificate — not the requester's, and not one with the requester's name — approves
//! with ApprovePukRelease before the requester collects it once with ReleasePuk. Requests and
//! approvals expire after `puk_release_approval_minutes`. A repeat of a ReleasePuk that was
//! answered (same request id, same certificate, `repeat.rs`) asks for no approval and collects
//! none, but it is a release: within the rate limit, and counted by it.
//!
//! [`EnrollmentDesk::release_puk`] (in `secrets.rs`) unwraps the secrets; this file holds the
//! rules around it and ApprovePukRelease.

use super::{DeskFailure, EnrollmentDesk, EnrollmentRefusal, record, refusal::refused, token_of};
use crate::audit::Actor;
use crate::enroll::PukReleaseRules;
use crate::enroll::credentials::new_puk_release_id;
use crate::store::{NewPukRelease, PukReleaseRow, PukReleaseState, Timestamp, TokenRow, WriteTx};

/// The longest reason kept, in bytes (after trimming).
pub const RELEASE_REASON_MAX_BYTES: usize = 1024;

/// Who calls: the audit actor and the serial (lower-case hex) of the client certificate the
/// call came with. The rate limit counts by certificate; dual control compares both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub actor: Actor,
    pub certificate_serial: String,
}

/// A reason for ReleasePuk or ApprovePukRelease: trimmed, not empty, at most
/// [`RELEASE_REASON_MAX_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseReason(String);

impl ReleaseReason {
    pub fn parse(text: &str) -> Result<ReleaseReason, EnrollmentRefusal> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            Err(EnrollmentRefusal::ReleaseReasonRequired)
        } else if trimmed.len() > RELEASE_REASON_MAX_BYTES {
            Err(EnrollmentRefusal::ReasonTooLong)
        } else {
            Ok(ReleaseReason(trimmed.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A release request waiting for its approval (dual control), as ReleasePuk answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRelease {
    pub release_id: String,
    pub token_serial: String,
    pub expires_at: Timestamp,
}

/// What ReleasePuk may go on with, once the rules allow it.
pub(super) enum ReleaseGrant {
    /// Released at once (no dual control): a new `released` row is written with the release.
    Direct,
    /// An approved request of this caller for this token, collected now.
    Approved(PukReleaseRow),
    /// Dual control: the caller's request waits (made now, or made before and not yet
    /// approved). Nothing is released.
    Pending(PendingRelease),
}

/// A release request as ApprovePukRelease answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PukReleaseView {
    pub row: PukReleaseRow,
    pub token_serial: String,
}

fn new_release_id() -> Result<String, EnrollmentRefusal> {
    new_puk_release_id().map_err(EnrollmentRefusal::internal)
}

impl EnrollmentDesk {
    fn puk_rules(&self) -> PukReleaseRules {
        self.settings.puk_release
    }

    /// Refuses when `caller`'s certificate has received `per_hour` releases in the last 60
    /// minutes.
    pub(super) async fn check_release_rate(
        &self,
        tx: &mut WriteTx,
        caller: &Caller,
        subject: &str,
    ) -> Result<(), DeskFailure> {
        let rules = self.puk_rules();
        let now = tx.now();
        let window = time::Duration::seconds(PukReleaseRules::RATE_WINDOW.as_secs() as i64);
        let recent = tx
            .puk_releases_since(&caller.certificate_serial, now - window)
            .await?;
        if recent.len() >= rules.per_hour as usize {
            let next_at = recent.first().map_or(now, |oldest| *oldest + window);
            return Err(refused(
                subject,
                EnrollmentRefusal::PukReleaseRateLimited {
                    limit: rules.per_hour,
                    next_at,
                },
            ));
        }
        Ok(())
    }

    /// The rules before ReleasePuk unwraps anything: the rate limit, and under dual control the
    /// caller's request (made now and audited as `token.puk_release_request`, or found).
    pub(super) async fn grant_release(
        &self,
        tx: &mut WriteTx,
        caller: &Caller,
        token: &TokenRow,
        reason: &ReleaseReason,
        request_id: &str,
    ) -> Result<ReleaseGrant, DeskFailure> {
        let subject = format!("token:{}", token.serial);
        let rules = self.puk_rules();
        if !rules.approval {
            self.check_release_rate(tx, caller, &subject).await?;
            return Ok(ReleaseGrant::Direct);
        }
        let now = tx.now();
        match tx
            .open_puk_release(token.id, &caller.certificate_serial, now)
            .await?
        {
            Some(row) if row.state == PukReleaseState::Approved => {
                self.check_release_rate(tx, caller, &subject).await?;
                Ok(ReleaseGrant::Approved(row))
            }
            Some(row) => Ok(ReleaseGrant::Pending(PendingRelease {
                release_id: row.public_id,
                token_serial: token.serial.clone(),
                expires_at: row.expires_at,
            })),
            None => {
                // Asking is refused too once the limit is reached: the release could not be
                // collected.
                self.check_release_rate(tx, caller, &subject).await?;
                let expires_at = now
                    .checked_add(rules.approval_window)
                    .ok_or_else(|| EnrollmentRefusal::internal(TimeOverflow))?;
                let row = tx
                    .insert_puk_release(&NewPukRelease {
                        public_id: new_release_id()?,
                        token_id: token.id,
                        state: PukReleaseState::Pending,
                        reason: reason.as_str().to_string(),
                        requester_certificate: caller.certificate_serial.clone(),
                        requester_name: caller.actor.name.clone(),
                        expires_at,
                    })
                    .await?;
                record(
                    tx,
                    &caller.actor,
                    "token.puk_release_request",
                    &subject,
                    None,
                    Some(serde_json::json!({
                        "release_id": row.public_id,
                        "reason": row.reason,
                        "requester_certificate": row.requester_certificate,
                        "expires_at": row.expires_at.to_string(),
                    })),
                    request_id,
                )
                .await?;
                Ok(ReleaseGrant::Pending(PendingRelease {
                    release_id: row.public_id,
                    token_serial: token.serial.clone(),
                    expires_at: row.expires_at,
                }))
            }
        }
    }

    /// Records a release ReleasePuk hands out (after the secrets unwrapped): a `released` row
    /// for a direct release or a repeat (`approved` is `None`), the approved row marked
    /// `released` otherwise. Returns the `after` of the `token.release_puk` event.
    pub(super) async fn record_release(
        &self,
        tx: &mut WriteTx,
        caller: &Caller,
        token: &TokenRow,
        reason: &ReleaseReason,
        approved: Option<PukReleaseRow>,
    ) -> Result<serde_json::Value, DeskFailure> {
        let row = match approved {
            None => {
                let now = tx.now();
                tx.insert_puk_release(&NewPukRelease {
                    public_id: new_release_id()?,
                    token_id: token.id,
                    state: PukReleaseState::Released,
                    reason: reason.as_str().to_string(),
                    requester_certificate: caller.certificate_serial.clone(),
                    requester_name: caller.actor.name.clone(),
                    expires_at: now,
                })
                .await?
            }
            Some(row) => {
                if !tx.mark_puk_release_released(row.id).await? {
                    // Collected by a concurrent call of the same certificate: not twice.
                    return Err(refused(
                        format!("token:{}", token.serial),
                        EnrollmentRefusal::PukReleaseNotPending {
                            release_id: row.public_id,
                            state: "released",
                        },
                    ));
                }
                row
            }
        };
        let mut after = serde_json::json!({
            "released": "puk",
            "reason": reason.as_str(),
            "release_id": row.public_id,
            "requester_certificate": row.requester_certificate,
        });
        if let Some(approver) = &row.approver_name {
            after["approved_by"] = approver.clone().into();
            after["approver_certificate"] = row.approver_certificate.clone().into();
            after["approval_reason"] = row.approval_reason.clone().into();
            after["requested_reason"] = row.reason.clone().into();
        }
        Ok(after)
    }

    /// ApprovePukRelease: a second certificate approves `release_id`, which must be a pending,
    /// unexpired request for token `token_serial` made by another certificate with another
    /// name. Audited as `token.puk_release_approve`; the approval then waits
    /// `puk_release_approval_minutes` to be collected.
    pub async fn approve_puk_release(
        &self,
        tx: &mut WriteTx,
        caller: &Caller,
        release_id: &str,
        token_serial: &str,
        reason: &str,
        request_id: &str,
    ) -> Result<PukReleaseView, DeskFailure> {
        let reason = ReleaseReason::parse(reason)?;
        let subject = format!("puk-release:{release_id}");
        let Some(row) = tx.puk_release_by_public_id(release_id).await? else {
            return Err(refused(
                subject,
                EnrollmentRefusal::PukReleaseNotFound(release_id.to_string()),
            ));
        };
        let token = token_of(tx, row.token_id).await?;
        let subject = format!("token:{}", token.serial);
        if token.serial != token_serial.trim() {
            return Err(refused(
                subject,
                EnrollmentRefusal::PukReleaseTokenMismatch {
                    release_id: row.public_id,
                    token_serial: token_serial.trim().to_string(),
                },
            ));
        }
        if row.requester_certificate == caller.certificate_serial
            || row.requester_name == caller.actor.name
        {
            return Err(refused(
                subject,
                EnrollmentRefusal::ApproverIsRequester(row.public_id),
            ));
        }
        if row.state != PukReleaseState::Pending {
            return Err(refused(
                subject,
                EnrollmentRefusal::PukReleaseNotPending {
                    release_id: row.public_id,
                    state: row.state.as_str(),
                },
            ));
        }
        let now = tx.now();
        if row.expires_at <= now {
            return Err(refused(
                subject,
                EnrollmentRefusal::PukReleaseExpired {
                    release_id: row.public_id,
                    expired_at: row.expires_at,
                },
            ));
        }
        let expires_at = now
            .checked_add(self.puk_rules().approval_window)
            .ok_or_else(|| EnrollmentRefusal::internal(TimeOverflow))?;
        if !tx
            .approve_puk_release(
                row.id,
                &caller.certificate_serial,
                &caller.actor.name,
                reason.as_str(),
                expires_at,
            )
            .await?
        {
            return Err(refused(
                subject,
                EnrollmentRefusal::PukReleaseNotPending {
                    release_id: row.public_id,
                    state: "approved",
                },
            ));
        }
        let approved = tx
            .puk_release_by_public_id(release_id)
            .await?
            .ok_or(crate::store::StoreError::Database(sqlx::Error::RowNotFound))?;
        record(
            tx,
            &caller.actor,
            "token.puk_release_approve",
            &subject,
            Some(serde_json::json!({ "state": row.state.as_str() })),
            Some(serde_json::json!({
                "state": approved.state.as_str(),
                "release_id": approved.public_id,
                "reason": reason.as_str(),
                "approver_certificate": caller.certificate_serial,
                "requested_by": approved.requester_name,
                "requester_certificate": approved.requester_certificate,
                "requested_reason": approved.reason,
                "expires_at": approved.expires_at.to_string(),
            })),
            request_id,
        )
        .await?;
        Ok(PukReleaseView {
            row: approved,
            token_serial: token.serial,
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the approval window does not fit in a timestamp")]
struct TimeOverflow;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_trimmed_required_and_bounded() {
        assert_eq!(
            ReleaseReason::parse("  forgotten PIN \n").unwrap().as_str(),
            "forgotten PIN"
        );
        for empty in ["", "   ", "\t\n"] {
            assert_eq!(
                ReleaseReason::parse(empty).unwrap_err().reason(),
                "RELEASE_REASON_REQUIRED"
            );
        }
        let longest = "x".repeat(RELEASE_REASON_MAX_BYTES);
        assert!(ReleaseReason::parse(&format!(" {longest} ")).is_ok());
        assert_eq!(
            ReleaseReason::parse(&format!("{longest}x"))
                .unwrap_err()
                .reason(),
            "FIELD_TOO_LONG"
        );
    }
}
