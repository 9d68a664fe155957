//! How open enrollments end: aborted by the help desk or expired by the sweep; either way the
//! certificates they issued are revoked and the token goes back to its state before Begin.

use super::refusal::refused;
use super::{
    DeskFailure, EnrollmentDesk, EnrollmentRefusal, EnrollmentView, enrollment_or_not_found, json,
    record, token_of, view_in,
};
use crate::audit::Actor;
use crate::enroll::{EnrollError, LoadedEnrollment};
use crate::lifecycle::{self, LifecycleError, RevocationReason};
use crate::store::{CertificateStatus, EnrollmentRow, EnrollmentState, TokenState, WriteTx};

impl EnrollmentDesk {
    /// Expires open enrollments past their time (all of them, or only `only`): revokes their
    /// certificates and records `enrollment.expire` as the server.
    pub async fn expire_due(&self, only: Option<&str>) -> Result<Vec<String>, EnrollmentRefusal> {
        let now = self.store.now();
        let due = match only {
            Some(id) => match self.store.enrollment_by_public_id(id).await? {
                Some(row)
                    if matches!(
                        row.state,
                        EnrollmentState::Begun | EnrollmentState::Completed
                    ) && row.expires_at <= now =>
                {
                    vec![row.public_id]
                }
                _ => Vec::new(),
            },
            None => self.store.enrollments_expired_at(now).await?,
        };
        let mut expired = Vec::new();
        for id in due {
            let mut tx = self.store.begin_write().await?;
            let Some(row) = tx.enrollment_by_public_id(&id).await? else {
                continue;
            };
            let loaded = LoadedEnrollment::load(row)?;
            if !loaded.is_due_to_expire(tx.now()) {
                continue;
            }
            let row = loaded.row().clone();
            let request_id = format!("expire:{id}");
            if close_enrollment(
                &mut tx,
                &Actor::server(),
                &request_id,
                &row,
                EnrollmentState::Expired,
                RevocationReason::CessationOfOperation,
                "enrollment.expire",
                None,
            )
            .await?
            {
                restore_token(&mut tx, &Actor::server(), &request_id, &row).await?;
            }
            tx.commit().await?;
            tracing::info!(enrollment = %id, "enrollment expired; its certificates were revoked");
            expired.push(id);
        }
        Ok(expired)
    }

    /// AbortEnrollment: an open enrollment ends and the certificates it issued are revoked.
    pub async fn abort(
        &self,
        tx: &mut WriteTx,
        actor: &Actor,
        enrollment_id: &str,
        reason: &str,
        request_id: &str,
    ) -> Result<EnrollmentView, DeskFailure> {
        let subject = format!("enrollment:{enrollment_id}");
        if reason.len() > 1024 {
            return Err(DeskFailure::Error(EnrollmentRefusal::ReasonTooLong));
        }
        let row = enrollment_or_not_found(tx, enrollment_id).await?;
        let loaded = LoadedEnrollment::load(row)?;
        if let LoadedEnrollment::Closed(r) = &loaded {
            return Err(refused(subject, EnrollError::closed(r)));
        }
        let row = loaded.row().clone();
        if close_enrollment(
            tx,
            actor,
            request_id,
            &row,
            EnrollmentState::Aborted,
            RevocationReason::CessationOfOperation,
            "enrollment.abort",
            Some(reason).filter(|r| !r.is_empty()),
        )
        .await?
        {
            restore_token(tx, actor, request_id, &row).await?;
        }
        let row = enrollment_or_not_found(tx, enrollment_id).await?;
        Ok(view_in(tx, row).await?)
    }
}

/// Ends an open enrollment (aborted or expired): revokes the certificates it issued and records
/// `action`. Returns whether it ended it (false: another writer moved it first). The token is
/// left as it is: see [`restore_token`].
#[allow(clippy::too_many_arguments)]
pub(super) async fn close_enrollment(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    row: &EnrollmentRow,
    to: EnrollmentState,
    revocation: RevocationReason,
    action: &str,
    reason: Option<&str>,
) -> Result<bool, LifecycleError> {
    if !tx.move_enrollment_state(row.id, row.state, to).await? {
        return Ok(false);
    }
    let mut revoked = Vec::new();
    for c in tx.enrollment_certificates(row.id).await? {
        if let Some(cert) = tx.certificate_by_serial(&c.serial).await?
            && matches!(
                cert.status,
                CertificateStatus::Good | CertificateStatus::OnHold
            )
        {
            lifecycle::revoke_certificate(tx, actor, request_id, &cert.serial, revocation).await?;
            revoked.push(cert.serial);
        }
    }
    let mut after = serde_json::json!({ "state": to.as_str(), "revoked": revoked });
    if let Some(r) = reason {
        after["reason"] = r.into();
    }
    record(
        tx,
        actor,
        action,
        &format!("enrollment:{}", row.public_id),
        Some(serde_json::json!({ "state": row.state.as_str() })),
        Some(after),
        request_id,
    )
    .await?;
    Ok(true)
}

/// After an abort or expiry: puts the token back as it was before the enrollment moved it to
/// `enrolling` (state and holder, recorded at Begin), as `token.restore`. A token that is no
/// longer `enrolling` for the enrollment's person (marked lost meanwhile, released at
/// offboarding) is left as it is, and so is one whose enrollment was begun before migration
/// 0005 (nothing recorded).
async fn restore_token(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    row: &EnrollmentRow,
) -> Result<(), LifecycleError> {
    let Some(prior) = row.token_prior else {
        return Ok(());
    };
    let before = token_of(tx, row.token_id).await?;
    if before.state != TokenState::Enrolling || before.person_id != Some(row.person_id) {
        return Ok(());
    }
    let mut after = before.clone();
    after.state = prior.state;
    after.person_id = prior.person_id;
    let token = tx.update_token(&after).await?;
    record(
        tx,
        actor,
        "token.restore",
        &format!("token:{}", token.serial),
        Some(json(&before)),
        Some(json(&token)),
        request_id,
    )
    .await
}
