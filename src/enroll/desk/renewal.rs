//! Renewal in place: new keys in the same slots of an active token, without resetting it.
//!
//! A renewal is an enrollment of kind `renewal` (store migration 0015), so CompleteEnrollment,
//! ConfirmEnrollment, AbortEnrollment, GetEnrollment and the expiry sweep carry it as they carry
//! an enrollment. What differs:
//! - [`EnrollmentDesk::begin_renewal`] takes a token that is `active` and held by an `active`
//!   person, with no open enrollment, and plans — for each slot asked for, or every slot that
//!   holds a good certificate from a confirmed enrollment — the same key (algorithm, PIN and
//!   touch policy, certificate profile) as the enrollment that made the current certificate.
//!   Each certificate must be within its profile's `renewal_window_days` of expiry, unless the
//!   caller forces it (`force`: the caller decides who may; the API allows only `admin`).
//!   It answers the token's *current* management key: no new management key, PUK or PIN.
//!   The token stays `active` throughout; the old certificates stay good.
//! - CompleteEnrollment verifies as for an enrollment (serial expected, today's attestation
//!   policy applied again, proofs over the fresh nonce) but needs the token `active`.
//! - [`confirm_renewal`] (ConfirmEnrollment of a renewal) revokes the certificates the renewal
//!   replaces (`superseded`, RFC 5280 reason 4) and writes a `renewal.done` notice to the
//!   outbox in the same transaction; the token's state and credentials are left alone.
//! - Abort and expiry revoke only the renewal's new certificates; the old ones stay good (and
//!   the token, never moved to `enrolling`, stays as it is).
//!
//! On a real YubiKey, generating a key in a slot replaces the slot's old key: once the station
//! has generated, the old certificate is still good and still in the slot, but its key is gone
//! from the token. Renewing again (the old certificate is still renewable) finishes the job.

use super::closing::close_enrollment;
use super::refusal::{RenewalWindow, refused};
use super::secrets::refused_if_tampered;
use super::{DeskFailure, EnrollmentDesk, EnrollmentRefusal, json, record, token_of};
use crate::attest::Slot;
use crate::audit::Actor;
use crate::enroll::plan::plan_from_json;
use crate::enroll::{EnrollError, LoadedEnrollment, SlotPlan, TokenCredentials};
use crate::lifecycle::{self, LifecycleError, RevocationReason};
use crate::store::{
    CertificateRow, CertificateStatus, EnrollmentKind, EnrollmentRow, EnrollmentState,
    NewEnrollment, NewNotification, PersonRow, PersonState, Timestamp, TokenPrior, TokenRow,
    TokenState, WriteTx,
};

/// Most slots a BeginRenewal may name (a YubiKey has 24 key slots).
pub const RENEWAL_SLOTS_MAX: usize = 24;

/// What BeginRenewal asks for (already checked for presence and shape by the caller).
pub struct RenewalRequest<'a> {
    pub token_serial: &'a str,
    /// Slot names ("9a"); empty: every slot holding a good certificate.
    pub slots: &'a [String],
    /// Renew even before the renewal window. The caller has decided that this caller may
    /// (the API edge: `admin` only; self-service: never).
    pub force: bool,
    /// Free text for the audit log (at most 1024 bytes).
    pub reason: &'a str,
    pub request_id: &'a str,
}

/// A begun renewal: the enrollment row (kind `renewal`), its slot plan, the certificates it
/// replaces at confirmation (slot, certificate), and the token's current credentials (its
/// management key authenticates the station; nothing new is set).
pub struct BegunRenewal {
    pub enrollment: EnrollmentRow,
    pub person: PersonRow,
    pub token: TokenRow,
    pub slots: Vec<SlotPlan>,
    pub superseded: Vec<(String, CertificateRow)>,
    pub current: TokenCredentials,
    /// Slots renewed before their window because `force` was given.
    pub forced_slots: Vec<String>,
}

/// One slot the renewal will re-key: its plan and the certificate it replaces.
struct PlannedRenewal {
    plan: SlotPlan,
    old: CertificateRow,
    enrollment_profile: String,
    early: Option<EnrollmentRefusal>,
}

impl EnrollmentDesk {
    /// BeginRenewal: checks the token, its person and each slot's certificate (window), closes
    /// an open renewal of the token (its new certificates revoked), and begins a renewal with a
    /// fresh nonce. Works in `tx`; a refusal is [`DeskFailure::Refused`].
    pub async fn begin_renewal(
        &self,
        tx: &mut WriteTx,
        actor: &Actor,
        req: &RenewalRequest<'_>,
    ) -> Result<BegunRenewal, DeskFailure> {
        if req.reason.len() > 1024 {
            return Err(DeskFailure::Error(EnrollmentRefusal::ReasonTooLong));
        }
        let subject = format!("token:{}", req.token_serial);
        let mut asked: Vec<Slot> = Vec::new();
        for name in req.slots {
            let slot: Slot = name
                .trim()
                .to_ascii_lowercase()
                .parse()
                .map_err(|_| refused(&subject, EnrollmentRefusal::SlotInvalid(name.clone())))?;
            if !asked.contains(&slot) {
                asked.push(slot);
            }
        }
        let (token, person) = self.renewable_token(tx, req.token_serial).await?;
        let now = tx.now();
        // Open renewals of the token are replaced by this one (an interrupted station's).
        for open in tx.open_enrollments_of_token(token.id).await? {
            close_enrollment(
                tx,
                actor,
                req.request_id,
                &open,
                EnrollmentState::Aborted,
                RevocationReason::Superseded,
                "enrollment.supersede",
                Some("superseded by a new renewal of the same token"),
            )
            .await?;
        }
        let current = self.current_credentials(tx, &token).await?;
        let planned = self.plan_renewal(tx, &token, &asked, now).await?;
        let mut planned = planned;
        let mut forced_slots = Vec::new();
        for p in &mut planned {
            if let Some(early) = p.early.take() {
                if !req.force {
                    return Err(refused(&subject, early));
                }
                forced_slots.push(p.plan.slot.to_string());
            }
        }
        let slots: Vec<SlotPlan> = planned.iter().map(|p| p.plan.clone()).collect();
        let public_id =
            crate::enroll::credentials::new_enrollment_id().map_err(EnrollmentRefusal::internal)?;
        let nonce = crate::enroll::credentials::new_nonce().map_err(EnrollmentRefusal::internal)?;
        // The enrollment profile of the enrollment that made the first slot's certificate.
        let profile = planned
            .first()
            .map(|p| p.enrollment_profile.clone())
            .unwrap_or_default();
        let enrollment = tx
            .insert_enrollment(&NewEnrollment {
                public_id: public_id.clone(),
                person_id: person.id,
                token_id: token.id,
                profile,
                nonce: nonce.to_vec(),
                plan_json: crate::enroll::plan::plan_to_json(&slots),
                firmware: token.firmware.clone(),
                expires_at: now.checked_add(self.settings.expiry).unwrap_or(now),
                created_by: actor.name.clone(),
                token_prior: TokenPrior {
                    state: token.state,
                    person_id: token.person_id,
                },
                kind: EnrollmentKind::Renewal,
            })
            .await?;
        let mut superseded = Vec::new();
        for p in planned {
            let slot = p.plan.slot.to_string();
            tx.insert_renewal_supersedes(enrollment.id, &slot, &p.old.serial)
                .await?;
            superseded.push((slot, p.old));
        }
        let mut after = json(&enrollment);
        after["kind"] = "renewal".into();
        after["person"] = person.external_id.clone().into();
        after["token"] = token.serial.clone().into();
        after["supersedes"] = superseded
            .iter()
            .map(|(slot, c)| serde_json::json!({ "slot": slot, "serial": c.serial, "not_after": c.not_after }))
            .collect::<Vec<_>>()
            .into();
        after["forced"] = req.force.into();
        if !forced_slots.is_empty() {
            after["renewed_before_window"] = forced_slots.clone().into();
        }
        if !req.reason.trim().is_empty() {
            after["reason"] = req.reason.trim().into();
        }
        record(
            tx,
            actor,
            "renewal.begin",
            &format!("enrollment:{public_id}"),
            None,
            Some(after),
            req.request_id,
        )
        .await?;
        Ok(BegunRenewal {
            enrollment,
            person,
            token,
            slots,
            superseded,
            current,
            forced_slots,
        })
    }

    /// A repeated BeginRenewal whose first answer began `enrollment_id`: the token and person
    /// checked again, the renewal still open, the current management key unwrapped again;
    /// audited as `renewal.begin` with `"repeat": true`.
    pub async fn begin_renewal_repeat(
        &self,
        tx: &mut WriteTx,
        actor: &Actor,
        token_serial: &str,
        enrollment_id: &str,
        repeat: &super::SecretRepeat,
    ) -> Result<TokenCredentials, DeskFailure> {
        let subject = format!("enrollment:{enrollment_id}");
        self.check_repeat(tx.now(), repeat, &subject)?;
        let (token, person) = self.renewable_token(tx, token_serial).await?;
        let row = tx
            .enrollment_by_public_id(enrollment_id)
            .await?
            .ok_or_else(|| EnrollError::StoredPlanInvalid("renewal vanished".into()))?;
        if row.token_id != token.id || row.kind != EnrollmentKind::Renewal {
            return Err(EnrollError::StoredPlanInvalid(
                "a stored BeginRenewal answer names another enrollment".into(),
            )
            .into());
        }
        if let LoadedEnrollment::Closed(r) = LoadedEnrollment::load(row)? {
            return Err(refused(subject, EnrollError::closed(&r)));
        }
        let current = self.current_credentials(tx, &token).await?;
        record(
            tx,
            actor,
            "renewal.begin",
            &subject,
            None,
            Some(serde_json::json!({
                "repeat": true,
                "person": person.external_id,
                "token": token.serial,
                "released": "current management key",
            })),
            &repeat.request_id,
        )
        .await?;
        Ok(current)
    }

    /// The token by serial, refused unless it is active, held by an active person and under no
    /// open enrollment (an open *renewal* is allowed: a new one replaces it).
    async fn renewable_token(
        &self,
        tx: &mut WriteTx,
        token_serial: &str,
    ) -> Result<(TokenRow, PersonRow), DeskFailure> {
        let subject = format!("token:{token_serial}");
        let token = tx
            .token_by_serial(token_serial)
            .await?
            .ok_or_else(|| LifecycleError::TokenNotFound(token_serial.to_string()))?;
        if let Some(open) = tx
            .open_enrollments_of_token(token.id)
            .await?
            .into_iter()
            .find(|e| e.kind == EnrollmentKind::Enrollment)
        {
            return Err(refused(
                subject,
                EnrollmentRefusal::TokenEnrollmentOpen {
                    serial: token.serial.clone(),
                    enrollment: open.public_id,
                },
            ));
        }
        let not_renewable = |state: String| {
            refused(
                &subject,
                EnrollmentRefusal::TokenNotRenewable {
                    serial: token.serial.clone(),
                    state,
                },
            )
        };
        if token.state != TokenState::Active {
            return Err(not_renewable(token.state.as_str().to_string()));
        }
        let Some(person_id) = token.person_id else {
            return Err(not_renewable("active but held by no one".into()));
        };
        let person = super::person_of(tx, person_id).await?;
        if person.state != PersonState::Active {
            return Err(refused(
                format!("person:{}", person.external_id),
                EnrollmentRefusal::PersonNotActive {
                    person: person.external_id.clone(),
                    state: person.state.as_str(),
                },
            ));
        }
        Ok((token, person))
    }

    /// The token's confirmed credentials (what it holds now), or why there are none.
    async fn current_credentials(
        &self,
        tx: &mut WriteTx,
        token: &TokenRow,
    ) -> Result<TokenCredentials, DeskFailure> {
        let subject = format!("token:{}", token.serial);
        let not_held = || {
            refused(
                &subject,
                EnrollmentRefusal::CredentialsNotHeld(token.serial.clone()),
            )
        };
        let Some(row) = tx.token_credentials(token.id).await? else {
            return Err(not_held());
        };
        if row.confirmed.is_none() {
            return Err(not_held());
        }
        let unwrapped = self
            .unwrap_row(&row, &token.serial)
            .await
            .map_err(|e| refused_if_tampered(&subject, e))?;
        unwrapped.confirmed.ok_or_else(not_held)
    }

    /// For each slot asked for (or every renewable one): the plan of the enrollment that made
    /// its good certificate, that certificate, and whether it is too early to renew it.
    async fn plan_renewal(
        &self,
        tx: &mut WriteTx,
        token: &TokenRow,
        asked: &[Slot],
        now: Timestamp,
    ) -> Result<Vec<PlannedRenewal>, DeskFailure> {
        let subject = format!("token:{}", token.serial);
        let renewable = tx.renewable_certificates_of_token(token.id).await?;
        let mut slots: Vec<String> = Vec::new();
        if asked.is_empty() {
            for r in &renewable {
                if !slots.contains(&r.slot) {
                    slots.push(r.slot.clone());
                }
            }
            if slots.is_empty() {
                return Err(refused(
                    &subject,
                    EnrollmentRefusal::SlotNotRenewable {
                        serial: token.serial.clone(),
                        slot: None,
                    },
                ));
            }
        } else {
            slots = asked.iter().map(ToString::to_string).collect();
        }
        let mut planned = Vec::new();
        for slot in slots {
            let Some(current) = renewable.iter().find(|r| r.slot == slot) else {
                return Err(refused(
                    &subject,
                    EnrollmentRefusal::SlotNotRenewable {
                        serial: token.serial.clone(),
                        slot: Some(slot),
                    },
                ));
            };
            let plan = plan_from_json(&current.plan_json)?
                .into_iter()
                .find(|p| p.slot.to_string() == slot)
                .ok_or_else(|| {
                    EnrollError::StoredPlanInvalid(format!(
                        "enrollment {} issued a certificate for slot {slot} that its plan does not hold",
                        current.enrollment_public_id
                    ))
                })?;
            let old = tx
                .certificate_by_serial(&current.serial)
                .await?
                .ok_or_else(|| LifecycleError::CertificateNotFound(current.serial.clone()))?;
            let window_days = self
                .ca
                .profiles
                .get(&old.profile)
                .map(|p| p.renewal_window_days)
                .unwrap_or(crate::ca::profile::DEFAULT_RENEWAL_WINDOW_DAYS);
            let window = std::time::Duration::from_secs(u64::from(window_days) * 86_400);
            let renewable_from = old.not_after.checked_sub(window).unwrap_or(old.not_after);
            let early = (now < renewable_from).then(|| {
                EnrollmentRefusal::RenewalTooEarly(Box::new(RenewalWindow {
                    slot: slot.clone(),
                    certificate: old.serial.clone(),
                    profile: old.profile.clone(),
                    not_after: old.not_after,
                    renewable_from,
                    window_days,
                }))
            });
            planned.push(PlannedRenewal {
                plan,
                old,
                enrollment_profile: current.enrollment_profile.clone(),
                early,
            });
        }
        Ok(planned)
    }
}

/// ConfirmEnrollment of a renewal (the caller loaded it `completed`): the enrollment becomes
/// `confirmed`, the certificates it replaces are revoked as superseded, and a `renewal.done`
/// notice is written, all in `tx`. The token must still be active and its person active; its
/// state and credentials are left as they are. Returns the token.
pub(super) async fn confirm_renewal(
    tx: &mut WriteTx,
    actor: &Actor,
    enrollment: &EnrollmentRow,
    request_id: &str,
) -> Result<TokenRow, DeskFailure> {
    let subject = format!("enrollment:{}", enrollment.public_id);
    let token = token_of(tx, enrollment.token_id).await?;
    if token.state != TokenState::Active {
        return Err(refused(
            subject,
            EnrollmentRefusal::TokenNotRenewable {
                serial: token.serial.clone(),
                state: token.state.as_str().to_string(),
            },
        ));
    }
    let person = super::person_of(tx, enrollment.person_id).await?;
    if person.state != PersonState::Active {
        return Err(refused(
            subject,
            EnrollmentRefusal::PersonNotActive {
                person: person.external_id.clone(),
                state: person.state.as_str(),
            },
        ));
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
            EnrollError::StoredPlanInvalid("the renewal changed state during confirmation".into())
                .into(),
        ));
    }
    let mut renewed = Vec::new();
    for c in tx.enrollment_certificates(enrollment.id).await? {
        if let Some(cert) = tx.certificate_by_serial(&c.serial).await? {
            renewed.push(serde_json::json!({
                "slot": c.slot,
                "serial": cert.serial,
                "profile": cert.profile,
                "not_after": cert.not_after,
            }));
        }
    }
    let mut superseded = Vec::new();
    for (slot, serial) in tx.renewal_supersedes(enrollment.id).await? {
        if let Some(c) = tx.certificate_by_serial(&serial).await?
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
            superseded.push(serde_json::json!({ "slot": slot, "serial": c.serial }));
        }
    }
    record(
        tx,
        actor,
        "enrollment.confirm",
        &subject,
        None,
        Some(serde_json::json!({
            "kind": "renewal",
            "renewed": renewed,
            "superseded": superseded,
        })),
        request_id,
    )
    .await?;
    // The notice commits with the confirmation or not at all (docs/operations.md).
    tx.enqueue_notification(&NewNotification {
        event: "renewal.done",
        dedup_key: Some(format!("renewal.done/{}", enrollment.public_id)),
        payload: serde_json::json!({
            "enrollment_id": enrollment.public_id,
            "token_serial": token.serial,
            "person_external_id": person.external_id,
            "renewed": renewed,
            "superseded": superseded,
            "request_id": request_id,
        }),
    })
    .await?;
    Ok(token)
}
