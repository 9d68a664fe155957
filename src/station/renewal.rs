//! `tessera station renew`: renewal in place of the token in the reader (docs/help-desk.md,
//! "Renewal"). BeginRenewal, then the steps of an enrollment without the reset, the new
//! management key, the new PUK and the new PIN: authenticate with the management key the server
//! holds for the token, generate a new key in each planned slot (the same slot), attest it,
//! verify the person's PIN, sign the proof over the fresh nonce, CompleteEnrollment, write the
//! new certificates, ConfirmEnrollment (the server then revokes the old certificates as
//! superseded). Slots outside the plan, the PIN, the PUK, the management key and the CHUID are
//! left as they are.
//!
//! Any failure after BeginRenewal calls AbortEnrollment: the server revokes the renewal's new
//! certificates and leaves the old ones good. On a YubiKey, generating a key replaces the slot's
//! old key; after that step the old certificate is still good and still in the slot, but its key
//! is gone, so the operator renews again (the same command) to finish.
use super::enrollment::{describe_token, management_key, name_a_pulled_token};
use super::slot_plan::{PlannedKey, parse_slot, slot_name};
use super::{Operator, ServerConnection, ServerError, StationError, request_id};
use crate::piv::{ManagementKey, PivToken, Secret};
use crate::protocol::{pb, proof_message};

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct RenewRequest {
    /// The token the operator means; the token in the reader must be this one.
    pub token_serial: Option<String>,
    /// Slots to renew ("9a"); empty: every slot with a good certificate.
    pub slots: Vec<String>,
    /// Renew before the window (admin only, on the server's side).
    pub force: bool,
    /// For the audit log.
    pub reason: String,
}

/// What a renewal left behind.
#[derive(Debug, Clone)]
pub struct Renewed {
    pub enrollment_id: String,
    pub token_serial: String,
    pub certificates: Vec<pb::SlotCertificate>,
    pub superseded: Vec<pb::SlotCertificate>,
}

/// Renews the certificates of the token in the reader.
pub async fn renew(
    server: &mut ServerConnection,
    operator: &mut dyn Operator,
    reader: Option<&str>,
    request: &RenewRequest,
) -> Result<Renewed, StationError> {
    operator.step("read the token (serial, firmware, retry counters; no secret is tried)");
    let mut token = PivToken::open(reader).map_err(StationError::card("read the token"))?;
    let info = token.info().map_err(StationError::card("read the token"))?;
    describe_token(operator, &info);
    if let Some(expected) = &request.token_serial
        && expected.trim() != info.serial.to_string()
    {
        return Err(StationError::WrongToken {
            expected: expected.trim().to_string(),
            found: info.serial.to_string(),
        });
    }

    operator.step("the person's PIN (the new keys sign their proofs with it)");
    let pin = operator.pin()?;

    operator.step(&format!(
        "begin renewal of token {} (BeginRenewal){}",
        info.serial,
        if request.force {
            ", forced before the renewal window"
        } else {
            ""
        }
    ));
    let begun = server
        .enrollment
        .begin_renewal(pb::BeginRenewalRequest {
            request_id: request_id(),
            token_serial: info.serial.to_string(),
            slots: request.slots.clone(),
            force: request.force,
            reason: request.reason.clone(),
        })
        .await
        .map_err(|s| ServerError::from_status("BeginRenewal", &s))?
        .into_inner();
    operator.note(&format!(
        "renewal {} for {} ({})",
        begun.enrollment_id, begun.person_display_name, begun.person_external_id
    ));
    operator.note(&format!("expires at {} unless confirmed", begun.expires_at));
    for old in &begun.superseded {
        if let Some(c) = &old.certificate {
            operator.note(&format!(
                "slot {}: certificate {} ({}, valid until {}) is replaced at confirmation",
                old.slot, c.serial, c.profile, c.not_after
            ));
        }
    }
    if !begun.forced_slots.is_empty() {
        operator.note(&format!(
            "renewed before the window (forced): {}",
            begun.forced_slots.join(", ")
        ));
    }
    for slot in &begun.slots {
        operator.note(&format!(
            "plan: slot {} {} PIN {} touch {} -> certificate profile {}",
            slot.slot, slot.algorithm, slot.pin_policy, slot.touch_policy, slot.certificate_profile
        ));
    }

    let enrollment_id = begun.enrollment_id.clone();
    let expires_at = begun.expires_at.clone();
    match after_begin(server, operator, &mut token, begun, &pin).await {
        Ok(mut renewed) => {
            renewed.token_serial = info.serial.to_string();
            Ok(renewed)
        }
        Err(failure) => {
            let failure = name_a_pulled_token(failure, &token);
            let aftermath = abort(server, operator, &enrollment_id, &expires_at, &failure).await;
            Err(StationError::EnrollmentFailed {
                failure: Box::new(failure),
                aftermath,
            })
        }
    }
}

/// Everything after BeginRenewal; any error here makes the caller abort the renewal.
async fn after_begin(
    server: &mut ServerConnection,
    operator: &mut dyn Operator,
    token: &mut PivToken,
    mut begun: pb::BeginRenewalResponse,
    pin: &Secret,
) -> Result<Renewed, StationError> {
    let (plan, key) = renewal_plan(&begun)?;
    let enrollment_id = begun.enrollment_id.clone();
    let (intermediate, proofs) = generate_and_prove(
        operator,
        token,
        &plan,
        &key,
        &enrollment_id,
        &begun.nonce,
        pin,
    )?;

    operator.step("complete renewal (CompleteEnrollment): the server checks attestations, today's attestation policy and proofs, then its HSM signs");
    let completed = server
        .enrollment
        .complete_enrollment(pb::CompleteEnrollmentRequest {
            request_id: request_id(),
            enrollment_id: enrollment_id.clone(),
            attestation_intermediate: intermediate,
            proofs,
        })
        .await
        .map_err(|s| ServerError::from_status("CompleteEnrollment", &s))?
        .into_inner();
    for issued in &completed.certificates {
        if let Some(c) = &issued.certificate {
            operator.note(&format!(
                "slot {}: certificate {} ({}), valid until {}",
                issued.slot, c.serial, c.profile, c.not_after
            ));
        }
    }

    write_certificates(operator, token, &key, &completed.certificates)?;

    operator.step("confirm renewal (ConfirmEnrollment): the server revokes the replaced certificates (superseded)");
    server
        .enrollment
        .confirm_enrollment(pb::ConfirmEnrollmentRequest {
            request_id: request_id(),
            enrollment_id: enrollment_id.clone(),
        })
        .await
        .map_err(|s| ServerError::from_status("ConfirmEnrollment", &s))?;
    for old in &begun.superseded {
        if let Some(c) = &old.certificate {
            operator.note(&format!(
                "slot {}: certificate {} is revoked (superseded)",
                old.slot, c.serial
            ));
        }
    }
    Ok(Renewed {
        enrollment_id,
        token_serial: String::new(),
        certificates: completed.certificates,
        superseded: std::mem::take(&mut begun.superseded),
    })
}

/// The slot plan of a BeginRenewal answer in the driver's terms, and the token's current
/// management key it carries.
pub fn renewal_plan(
    begun: &pb::BeginRenewalResponse,
) -> Result<(Vec<PlannedKey>, ManagementKey), StationError> {
    let plan = begun
        .slots
        .iter()
        .map(PlannedKey::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(StationError::ServerAnswer)?;
    if plan.is_empty() {
        return Err(StationError::ServerAnswer("the slot plan is empty".into()));
    }
    let key = begun
        .current_management_key
        .clone()
        .as_mut()
        .map(management_key)
        .transpose()?
        .ok_or_else(|| StationError::ServerAnswer("no current management key".into()))?;
    Ok((plan, key))
}

/// The card's part of a renewal between BeginRenewal and its completion, shared by the desk
/// (`tessera station renew`) and self-service (`tessera renew`): authenticate with the token's
/// management key, generate and attest a new key in each planned slot, read the attestation
/// intermediate, verify the PIN and sign each slot's proof over the renewal's nonce (a touch
/// asked for where the key needs one). Returns the intermediate and the proofs.
pub fn generate_and_prove(
    operator: &mut dyn Operator,
    token: &mut PivToken,
    plan: &[PlannedKey],
    key: &ManagementKey,
    enrollment_id: &str,
    nonce: &[u8],
    pin: &Secret,
) -> Result<(Vec<u8>, Vec<pb::EnrollmentProof>), StationError> {
    operator.step("authenticate to the token with the management key the server holds for it");
    token.authenticate(key).map_err(StationError::card(
        "authenticate with the token's management key",
    ))?;

    let mut attestations = Vec::new();
    for planned in plan {
        let slot = slot_name(planned.slot);
        operator.step(&format!(
            "generate a new key in slot {slot} ({:?}, PIN policy {:?}, touch policy {:?}); the slot's old key is replaced, its certificate stays until confirmation",
            planned.algorithm, planned.pin_policy, planned.touch_policy
        ));
        token
            .generate(
                planned.slot,
                planned.algorithm,
                planned.pin_policy,
                planned.touch_policy,
            )
            .map_err(StationError::card(format!(
                "generate the key in slot {slot}"
            )))?;
        operator.step(&format!(
            "attest slot {slot} (the token signs a certificate for the new key)"
        ));
        let attestation = token
            .attest(planned.slot)
            .map_err(StationError::card(format!("attest slot {slot}")))?;
        attestations.push(attestation);
    }
    operator.step("read the attestation intermediate (slot F9 certificate, object 5FFF01)");
    let intermediate = token
        .attestation_certificate()
        .map_err(StationError::card("read the attestation intermediate"))?;

    operator.step("verify the PIN");
    token
        .verify_pin(pin)
        .map_err(StationError::card("verify the PIN"))?;

    let mut proofs = Vec::new();
    for (planned, attestation) in plan.iter().zip(attestations) {
        let slot = slot_name(planned.slot);
        operator.step(&format!("sign the proof of possession with slot {slot}"));
        if planned.pin_policy == yubikey::PinPolicy::Always {
            token
                .verify_pin(pin)
                .map_err(StationError::card("verify the PIN"))?;
        }
        let input = planned.signature_input(&proof_message(enrollment_id, &slot, nonce));
        let signature = if planned.needs_touch() {
            operator.note("touch the YubiKey now (it blinks)");
            token.sign_with_touch(planned.slot, planned.algorithm, &input)
        } else {
            token.sign(planned.slot, planned.algorithm, &input)
        }
        .map_err(StationError::card(format!(
            "sign the proof with slot {slot}"
        )))?;
        proofs.push(pb::EnrollmentProof {
            slot,
            attestation_certificate: attestation,
            signature,
        });
    }
    Ok((intermediate, proofs))
}

/// The card's part after the renewal's certificates were issued: authenticate with the
/// management key again (the PIN verify selected the application anew) and write each
/// certificate to its slot. Shared like [`generate_and_prove`].
pub fn write_certificates(
    operator: &mut dyn Operator,
    token: &mut PivToken,
    key: &ManagementKey,
    certificates: &[pb::SlotCertificate],
) -> Result<(), StationError> {
    operator.step("write the new certificates to the token");
    token.authenticate(key).map_err(StationError::card(
        "authenticate with the token's management key",
    ))?;
    for issued in certificates {
        let slot = parse_slot(&issued.slot).map_err(StationError::ServerAnswer)?;
        let der = issued
            .certificate
            .as_ref()
            .map(|c| c.der.as_slice())
            .filter(|der| !der.is_empty())
            .ok_or_else(|| {
                StationError::ServerAnswer(format!("no certificate for slot {}", issued.slot))
            })?;
        token
            .write_certificate(slot, der)
            .map_err(StationError::card(format!(
                "write the certificate of slot {}",
                issued.slot
            )))?;
    }
    Ok(())
}

/// Aborts the renewal after `failure`; returns what the operator should know.
async fn abort(
    server: &mut ServerConnection,
    operator: &mut dyn Operator,
    enrollment_id: &str,
    expires_at: &str,
    failure: &StationError,
) -> String {
    operator.step(&format!("abort renewal {enrollment_id} (AbortEnrollment)"));
    let request = pb::AbortEnrollmentRequest {
        request_id: request_id(),
        enrollment_id: enrollment_id.into(),
        reason: format!("station: {failure}"),
    };
    match server.enrollment.abort_enrollment(request).await {
        Ok(response) => {
            let issued = response
                .into_inner()
                .enrollment
                .map(|e| e.certificates.len())
                .unwrap_or(0);
            format!(
                "renewal {enrollment_id} was aborted on the server ({issued} new certificate(s) revoked); \
                 the old certificates are still good; fix the cause and run the same command again \
                 (a slot whose new key was already generated needs it to work again)"
            )
        }
        Err(status) => format!(
            "renewal {enrollment_id} could not be aborted ({}); it expires at {expires_at} and its new certificates are then revoked; \
             the old certificates are still good",
            ServerError::from_status("AbortEnrollment", &status)
        ),
    }
}
