//! CompleteEnrollment (every proof checked, the nonce used up, one certificate per slot) and
//! ConfirmEnrollment (the token active, superseded certificates revoked).

use super::closing::close_enrollment;
use super::refusal::{refused, token_not_enrolling};
use super::renewal::confirm_renewal;
use super::{
    DeskFailure, EnrollmentDesk, EnrollmentRefusal, enrollment_or_not_found, json, person_of,
    record, token_of,
};
use crate::audit::Actor;
use crate::ca::{HardwareModule, KeyProvenance, SubjectParams};
use crate::enroll::{EnrollError, LoadedEnrollment, SlotProof, Verifier};
use crate::lifecycle::{
    self, IssuanceError, IssueParams, LifecycleError, RequestKey, RevocationReason,
    issue_certificate,
};
use crate::store::{
    CertificateRow, CertificateStatus, EnrollmentKind, EnrollmentState, PersonState, TokenRow,
    TokenState, WriteTx,
};

/// What CompleteEnrollment asks for.
pub struct CompleteRequest<'a> {
    pub enrollment_id: &'a str,
    pub attestation_intermediate: &'a [u8],
    pub proofs: Vec<SlotProof>,
    pub request_id: &'a str,
}

/// CompleteEnrollment's outcome: the stored first answer of a repeat, or the certificates
/// issued per slot (the caller keeps its answer with [`lifecycle::remember`]).
pub enum Completion {
    Replayed(Vec<u8>),
    Issued(Vec<(String, CertificateRow)>),
}

impl EnrollmentDesk {
    /// CompleteEnrollment: checks every proof, uses up the nonce, then issues one certificate
    /// per slot through [`issue_certificate`]; a failed issuance aborts the enrollment. A
    /// repeat of `key` gets its stored answer.
    pub async fn complete(
        &self,
        actor: &Actor,
        req: &CompleteRequest<'_>,
        key: &RequestKey,
    ) -> Result<Completion, DeskFailure> {
        let settings = &self.settings;
        let subject = format!("enrollment:{}", req.enrollment_id);
        let mut tx = self.store.begin_write().await?;
        let stored = lifecycle::replay(&mut tx, key).await.map_err(|e| match e {
            // Another certificate's request id: recorded, as the other enrollment RPCs do.
            e @ LifecycleError::RequestIdOfAnotherCaller(_) => {
                refused(format!("request:{}", key.request_id), e)
            }
            e => e.into(),
        })?;
        if let Some(bytes) = stored {
            return Ok(Completion::Replayed(bytes));
        }
        let row = enrollment_or_not_found(&mut tx, req.enrollment_id).await?;
        let begun = LoadedEnrollment::load(row)?
            .into_begun()
            .map_err(|e| refused(subject.clone(), e))?;
        let person = person_of(&mut tx, begun.row().person_id).await?;
        if person.state != PersonState::Active {
            return Err(refused(
                subject,
                EnrollmentRefusal::PersonNotActive {
                    person: person.external_id.clone(),
                    state: person.state.as_str(),
                },
            ));
        }
        let token = token_of(&mut tx, begun.row().token_id).await?;
        match begun.row().kind {
            EnrollmentKind::Enrollment if token.state != TokenState::Enrolling => {
                return Err(refused(subject, token_not_enrolling(&token)));
            }
            // A renewal keeps the token active throughout.
            EnrollmentKind::Renewal if token.state != TokenState::Active => {
                return Err(refused(
                    subject,
                    EnrollmentRefusal::TokenNotRenewable {
                        serial: token.serial.clone(),
                        state: token.state.as_str().to_string(),
                    },
                ));
            }
            _ => {}
        }
        let serial: u32 = token
            .serial
            .parse()
            .map_err(|_| refused(subject.clone(), EnrollmentRefusal::TokenSerialInvalid))?;
        let verified = begun
            .verify(
                serial,
                req.attestation_intermediate,
                &req.proofs,
                &Verifier {
                    trust: &settings.trust,
                    policy: &settings.policy,
                },
            )
            .map_err(|e| refused(subject.clone(), e))?;
        // Every check passed: the nonce is used up now, before anything is signed.
        let mut enrollment = begun.row().clone();
        if !tx
            .move_enrollment_state(
                enrollment.id,
                EnrollmentState::Begun,
                EnrollmentState::Completed,
            )
            .await?
        {
            return Err(refused(
                subject,
                EnrollError::NonceAlreadyUsed(enrollment.public_id.clone()),
            ));
        }
        enrollment.state = EnrollmentState::Completed;
        if let Some(first) = verified
            .first()
            .filter(|_| enrollment.kind == EnrollmentKind::Enrollment)
        {
            // The attestation is authoritative for firmware and form factor (a renewal leaves
            // the token's row as the enrollment recorded it).
            let ff = first.facts.form_factor.as_str().replace('-', "_");
            tx.update_token_hardware(
                token.id,
                &token.model,
                &first.facts.firmware.to_string(),
                &ff,
            )
            .await?;
        }
        record(
            &mut tx,
            actor,
            "enrollment.verify",
            &subject,
            None,
            Some(serde_json::json!({
                "slots": verified.iter().map(|v| serde_json::json!({
                    "slot": v.plan.slot.to_string(),
                    "certificate_profile": v.plan.certificate_profile,
                    "attestation": v.facts,
                })).collect::<Vec<_>>(),
            })),
            req.request_id,
        )
        .await?;
        tx.commit().await?;

        let mut certificates = Vec::new();
        for slot in &verified {
            let mut subject_params = SubjectParams::new(person.display_name.as_str());
            if !person.email.is_empty() {
                subject_params.emails.push(person.email.clone());
            }
            subject_params.upn = Some(person.upn.clone()).filter(|u| !u.is_empty());
            subject_params.windows_sid = person.windows_sid.clone().filter(|s| !s.is_empty());
            subject_params.hardware_module = Some(HardwareModule::yubikey(serial));
            let issued = issue_certificate(
                &self.store,
                &self.ca,
                IssueParams {
                    subject: subject_params,
                    public_key_der: slot.public_key_der.clone(),
                    profile: slot.plan.certificate_profile.clone(),
                    provenance: KeyProvenance::HardwareAttested,
                    person_id: Some(person.id),
                    token_id: Some(token.id),
                    enrollment: Some(enrollment.public_id.clone()),
                },
                actor,
                req.request_id,
            )
            .await;
            let slot_name = slot.plan.slot.to_string();
            match issued {
                Ok(row) => {
                    let mut tx = self.store.begin_write().await?;
                    tx.insert_enrollment_certificate(enrollment.id, &slot_name, &row.serial)
                        .await?;
                    // Kept for `tessera attest recheck`: the facts this key was verified with.
                    tx.insert_certificate_attestation(
                        &row.serial,
                        &slot_name,
                        &json(&slot.facts).to_string(),
                    )
                    .await?;
                    tx.commit().await?;
                    certificates.push((slot_name, row));
                }
                Err(e) => {
                    tracing::error!(enrollment = %enrollment.public_id, slot = %slot_name, error = %e, "issuance failed; aborting the enrollment");
                    let mut tx = self.store.begin_write().await?;
                    close_enrollment(
                        &mut tx,
                        &Actor::server(),
                        req.request_id,
                        &enrollment,
                        EnrollmentState::Aborted,
                        RevocationReason::CessationOfOperation,
                        "enrollment.abort",
                        Some("certificate issuance failed"),
                    )
                    .await?;
                    tx.commit().await?;
                    // Person, token or enrollment changed while the HSM signed: the
                    // certificate is already recorded revoked or held; refuse as Begin would.
                    if let IssuanceError::Lifecycle(
                        e @ LifecycleError::StateChangedWhileSigning { .. },
                    ) = e
                    {
                        return Err(DeskFailure::Error(EnrollmentRefusal::Lifecycle(e)));
                    }
                    return Err(DeskFailure::Error(EnrollmentRefusal::IssuanceFailed {
                        slot: slot_name,
                        enrollment: enrollment.public_id.clone(),
                    }));
                }
            }
        }
        Ok(Completion::Issued(certificates))
    }

    /// ConfirmEnrollment: the token becomes active, certificates of earlier enrollments for the
    /// re-keyed slots are revoked as superseded, and the new credentials become the confirmed
    /// ones. A renewal is confirmed by `renewal::confirm_renewal` (the certificates it replaces
    /// revoked, a `renewal.done` notice; token and credentials as they were). Returns the token.
    pub async fn confirm(
        &self,
        tx: &mut WriteTx,
        actor: &Actor,
        enrollment_id: &str,
        request_id: &str,
    ) -> Result<TokenRow, DeskFailure> {
        let subject = format!("enrollment:{enrollment_id}");
        let row = enrollment_or_not_found(tx, enrollment_id).await?;
        let completed = LoadedEnrollment::load(row)?
            .into_completed()
            .map_err(|e| refused(subject.clone(), e))?;
        let enrollment = completed.row().clone();
        if enrollment.kind == EnrollmentKind::Renewal {
            return confirm_renewal(tx, actor, &enrollment, request_id).await;
        }
        let token = token_of(tx, enrollment.token_id).await?;
        if token.state != TokenState::Enrolling {
            return Err(refused(subject, token_not_enrolling(&token)));
        }
        if !tx
            .move_enrollment_state(
                enrollment.id,
                EnrollmentState::Completed,
                EnrollmentState::Confirmed,
            )
            .await?
        {
            return Err(DeskFailure::Error(
                EnrollError::StoredPlanInvalid(
                    "the enrollment changed state during confirmation".into(),
                )
                .into(),
            ));
        }
        record(
            tx,
            actor,
            "enrollment.confirm",
            &subject,
            None,
            None,
            request_id,
        )
        .await?;
        // Certificates of earlier enrollments of this token for the slots just re-keyed are
        // superseded: those keys no longer exist on the token.
        let slots: Vec<String> = tx
            .enrollment_certificates(enrollment.id)
            .await?
            .into_iter()
            .map(|c| c.slot)
            .collect();
        for old in tx
            .earlier_enrollment_certificates(enrollment.token_id, enrollment.id)
            .await?
        {
            if !slots.contains(&old.slot) {
                continue;
            }
            if let Some(c) = tx.certificate_by_serial(&old.serial).await?
                && matches!(
                    c.status,
                    CertificateStatus::Good | CertificateStatus::OnHold
                )
            {
                lifecycle::revoke_certificate(
                    tx,
                    actor,
                    request_id,
                    &c.serial,
                    RevocationReason::Superseded,
                )
                .await?;
            }
        }
        let before = token_of(tx, enrollment.token_id).await?;
        let mut after = before.clone();
        after.state = TokenState::Active;
        let token = tx.update_token(&after).await?;
        record(
            tx,
            actor,
            "token.activate",
            &format!("token:{}", token.serial),
            Some(json(&before)),
            Some(json(&token)),
            request_id,
        )
        .await?;
        if let Some(mut c) = tx.token_credentials(token.id).await?
            && let Some(pending) = c.pending.take()
        {
            c.confirmed = Some(pending);
            tx.put_token_credentials(&c).await?;
        }
        Ok(token)
    }
}
