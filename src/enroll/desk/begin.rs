//! BeginEnrollment: the token registered or re-enrolled, its open enrollments closed, its
//! credentials kept wrapped, a fresh nonce.

use super::closing::close_enrollment;
use super::refusal::{refused, token_unenrollable_for};
use super::secrets::refused_if_tampered;
use super::{DeskFailure, EnrollmentDesk, EnrollmentRefusal, json, record};
use crate::attest::FirmwareVersion;
use crate::audit::Actor;
use crate::enroll::{ManagementKeyAlgorithm, SlotPlan, TokenCredentials};
use crate::lifecycle::{LifecycleError, RevocationReason};
use crate::store::{
    EnrollmentKind, EnrollmentRow, EnrollmentState, NewEnrollment, NewToken, PersonRow,
    PersonState, TokenPrior, TokenRow, TokenState, WriteTx,
};

/// What BeginEnrollment asks for (already checked for presence and shape by the API).
pub struct BeginRequest<'a> {
    pub person_external_id: &'a str,
    pub token_serial: &'a str,
    pub profile: &'a str,
    pub firmware: &'a str,
    pub model: &'a str,
    pub request_id: &'a str,
}

/// A begun enrollment and the token's credentials: `current` (the confirmed ones, to
/// authenticate to the token) and `new` (to set).
pub struct BegunEnrollment {
    pub enrollment: EnrollmentRow,
    pub person: PersonRow,
    pub slots: Vec<SlotPlan>,
    pub current: Option<TokenCredentials>,
    pub new: TokenCredentials,
}

impl EnrollmentDesk {
    /// BeginEnrollment: registers or re-enrolls the token, closes its open enrollments, keeps
    /// (or resumes) its wrapped credentials and begins an enrollment with a fresh nonce.
    pub async fn begin(
        &self,
        tx: &mut WriteTx,
        actor: &Actor,
        req: &BeginRequest<'_>,
    ) -> Result<BegunEnrollment, DeskFailure> {
        let settings = &self.settings;
        let person = tx
            .person_by_external_id(req.person_external_id)
            .await?
            .ok_or_else(|| LifecycleError::PersonNotFound(req.person_external_id.to_string()))?;
        if person.state != PersonState::Active {
            return Err(refused(
                format!("person:{}", person.external_id),
                EnrollmentRefusal::PersonNotActive {
                    person: person.external_id.clone(),
                    state: person.state.as_str(),
                },
            ));
        }
        let Some(profile) = settings.profiles.get(req.profile) else {
            return Err(refused(
                format!("person:{}", person.external_id),
                EnrollmentRefusal::ProfileUnknown {
                    profile: req.profile.to_string(),
                    known: settings.profiles.names().join(", "),
                },
            ));
        };
        let firmware: FirmwareVersion = req
            .firmware
            .parse()
            .map_err(|_| EnrollmentRefusal::FirmwareInvalid(req.firmware.to_string()))?;
        let token_subject = format!("token:{}", req.token_serial);
        let existing = tx.token_by_serial(req.token_serial).await?;
        if let Some(refusal) = existing
            .as_ref()
            .and_then(|t| token_unenrollable_for(t, person.id))
        {
            return Err(refused(token_subject, refusal));
        }
        let stands_in_for = if profile.temporary {
            Some(
                forgotten_token_to_stand_in_for(
                    tx,
                    &person,
                    &profile.name,
                    existing.as_ref().map(|t| t.id),
                )
                .await?,
            )
        } else {
            None
        };
        // Checks done; changes follow. What abort or expiry of this enrollment puts back: the
        // token as an open enrollment it supersedes found it, else as it is now.
        let token_prior = match &existing {
            None => TokenPrior {
                state: TokenState::Enrolling,
                person_id: None,
            },
            Some(t) => tx
                .open_enrollments_of_token(t.id)
                .await?
                .iter()
                .find_map(|open| open.token_prior)
                .unwrap_or(TokenPrior {
                    state: t.state,
                    person_id: t.person_id,
                }),
        };
        let token = match existing {
            None => {
                let row = tx
                    .insert_token(&NewToken {
                        serial: req.token_serial.to_string(),
                        model: req.model.to_string(),
                        firmware: req.firmware.to_string(),
                        form_factor: String::new(),
                        state: TokenState::Enrolling,
                        person_id: Some(person.id),
                    })
                    .await?;
                record(
                    tx,
                    actor,
                    "token.register",
                    &token_subject,
                    None,
                    Some(json(&row)),
                    req.request_id,
                )
                .await?;
                row
            }
            Some(before) => {
                tx.update_token_hardware(before.id, req.model, req.firmware, &before.form_factor)
                    .await?;
                let mut after = before.clone();
                after.state = TokenState::Enrolling;
                after.person_id = Some(person.id);
                let row = tx.update_token(&after).await?;
                record(
                    tx,
                    actor,
                    "token.enroll",
                    &token_subject,
                    Some(json(&before)),
                    Some(json(&row)),
                    req.request_id,
                )
                .await?;
                row
            }
        };
        // A temporary token is recorded as standing in for the forgotten one; a token enrolled
        // under a regular profile stands in for nothing any more.
        match &stands_in_for {
            Some(forgotten) => tx.put_temporary_token(token.id, forgotten.id).await?,
            None => tx.delete_temporary_token(token.id).await?,
        }
        let now = tx.now();
        for open in tx.open_enrollments_of_token(token.id).await? {
            if open.expires_at <= now {
                // Past its time already: it expires (as the sweep would have done).
                close_enrollment(
                    tx,
                    &Actor::server(),
                    &format!("expire:{}", open.public_id),
                    &open,
                    EnrollmentState::Expired,
                    RevocationReason::CessationOfOperation,
                    "enrollment.expire",
                    None,
                )
                .await?;
            } else {
                close_enrollment(
                    tx,
                    actor,
                    req.request_id,
                    &open,
                    EnrollmentState::Aborted,
                    RevocationReason::Superseded,
                    "enrollment.supersede",
                    Some("superseded by a new enrollment of the same token"),
                )
                .await?;
            }
        }
        let stored = tx.token_credentials(token.id).await?;
        let unwrapped = match &stored {
            Some(row) => Some(
                self.unwrap_row(row, &token.serial)
                    .await
                    .map_err(|e| refused_if_tampered(&token_subject, e))?,
            ),
            None => None,
        };
        let (current, pending) = match unwrapped {
            Some(u) => (u.confirmed, u.pending),
            None => (None, None),
        };
        let (new, resumed) = match pending {
            Some(pending) => (pending, true),
            None => (
                TokenCredentials::generate(ManagementKeyAlgorithm::for_firmware(firmware))
                    .map_err(EnrollmentRefusal::internal)?,
                false,
            ),
        };
        // Everything re-wrapped under the configured key (a changed label takes effect here),
        // as new generations bound to the token.
        let row = self
            .wrap_row(
                token.id,
                &token.serial,
                stored.as_ref(),
                current.as_ref(),
                Some(&new),
            )
            .await?;
        tx.put_token_credentials(&row).await?;
        // A re-enrollment resets the token: a PUK rotation waiting for confirmation is void.
        tx.delete_puk_rotation(token.id).await?;

        let public_id =
            crate::enroll::credentials::new_enrollment_id().map_err(EnrollmentRefusal::internal)?;
        let nonce = crate::enroll::credentials::new_nonce().map_err(EnrollmentRefusal::internal)?;
        let enrollment = tx
            .insert_enrollment(&NewEnrollment {
                public_id: public_id.clone(),
                person_id: person.id,
                token_id: token.id,
                profile: profile.name.clone(),
                nonce: nonce.to_vec(),
                plan_json: crate::enroll::plan::plan_to_json(&profile.slots),
                firmware: req.firmware.to_string(),
                expires_at: now.checked_add(settings.expiry).unwrap_or(now),
                created_by: actor.name.clone(),
                token_prior,
                kind: EnrollmentKind::Enrollment,
            })
            .await?;
        let mut after = json(&enrollment);
        after["person"] = person.external_id.clone().into();
        after["token"] = token.serial.clone().into();
        after["management_key_algorithm"] = new.management_key.algorithm.as_str().into();
        after["credentials"] = if resumed { "resumed" } else { "fresh" }.into();
        if let Some(forgotten) = &stands_in_for {
            after["temporary_for"] = forgotten.serial.clone().into();
        }
        record(
            tx,
            actor,
            "enrollment.begin",
            &format!("enrollment:{public_id}"),
            None,
            Some(after),
            req.request_id,
        )
        .await?;
        Ok(BegunEnrollment {
            enrollment,
            person,
            slots: profile.slots.clone(),
            current,
            new,
        })
    }
}

/// The forgotten token a temporary token enrolled for `person` stands in for: their most
/// recently forgotten token. Refused when the person has no forgotten token
/// (`NO_FORGOTTEN_TOKEN`), or when a temporary token other than `enrolling_token_id` is in use
/// for any of them (`TEMPORARY_TOKEN_IN_USE`): one temporary token per person at a time. A
/// temporary token is in use while it is active, suspended or forgotten, or enrolling for the
/// person (an open enrollment); an aborted or expired enrollment leaves none.
async fn forgotten_token_to_stand_in_for(
    tx: &mut WriteTx,
    person: &PersonRow,
    profile: &str,
    enrolling_token_id: Option<i64>,
) -> Result<TokenRow, DeskFailure> {
    let subject = format!("person:{}", person.external_id);
    let forgotten = tx.forgotten_tokens_of_person(person.id).await?;
    let Some(most_recent) = forgotten.first().cloned() else {
        return Err(refused(
            subject,
            EnrollmentRefusal::NoForgottenToken {
                profile: profile.to_string(),
                person: person.external_id.clone(),
            },
        ));
    };
    for f in &forgotten {
        for temporary in tx.temporary_tokens_for(f.id).await? {
            if Some(temporary.id) == enrolling_token_id {
                continue;
            }
            let in_use = match temporary.state {
                TokenState::Active | TokenState::Suspended | TokenState::Forgotten => true,
                TokenState::Enrolling => temporary.person_id == Some(person.id),
                TokenState::Lost | TokenState::Damaged | TokenState::Retired => false,
            };
            if in_use {
                return Err(refused(
                    subject,
                    EnrollmentRefusal::TemporaryTokenInUse {
                        person: person.external_id.clone(),
                        forgotten: f.serial.clone(),
                        temporary: temporary.serial.clone(),
                        state: temporary.state.as_str(),
                    },
                ));
            }
        }
    }
    Ok(most_recent)
}
