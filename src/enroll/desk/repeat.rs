//! Repeats of the requests whose answers carry secrets (BeginEnrollment: the management keys and
//! the new PUK; ReleasePuk: the PUK and management key). The stored answer has no secrets, so a
//! repeat unwraps them again — and is then a release like the first: it is checked again as a
//! first call would be (person, token, enrollment, credentials; the same refusals, audited as
//! `enrollment.refuse`), recorded with the first call's audit action marked `"repeat": true`,
//! and answered only within `secret_replay_minutes` of the first answer, to the client
//! certificate that made it (`api` keys request ids to the caller), and — for ReleasePuk — only
//! while the token holds the credentials the first answer released. Otherwise it is refused with
//! `REQUEST_ID_EXPIRED` ([`EnrollmentRefusal::RepeatExpired`]).

use super::puk_release::Caller;
use super::puk_rotation::PukRotation;
use super::refusal::{refused, token_unenrollable_for};
use super::secrets::{PukRelease, refused_if_tampered};
use super::{DeskFailure, EnrollmentDesk, EnrollmentRefusal, record};
use crate::audit::Actor;
use crate::enroll::{BeginRequest, EnrollError, LoadedEnrollment, TokenCredentials};
use crate::lifecycle::LifecycleError;
use crate::store::{IdempotencyRow, PersonState, Timestamp, WriteTx};

/// A repeated request whose first answer carried secrets, as its stored record tells it.
#[derive(Debug, Clone)]
pub struct SecretRepeat {
    pub request_id: String,
    /// When the first answer was given (the store's clock).
    pub answered_at: Timestamp,
    /// Whether the record names its caller (stored after migration 0007); one that does not
    /// is never repeated with secrets.
    pub caller_bound: bool,
    /// ReleasePuk: the generation of the credentials the first answer released.
    pub released_generation: Option<i64>,
}

impl SecretRepeat {
    pub fn from_record(record: &IdempotencyRow) -> SecretRepeat {
        SecretRepeat {
            request_id: record.request_id.clone(),
            answered_at: record.created_at,
            caller_bound: record.caller.is_some(),
            released_generation: record.released_generation,
        }
    }

    pub(super) fn expired(&self, why: &str) -> EnrollmentRefusal {
        EnrollmentRefusal::RepeatExpired {
            request_id: self.request_id.clone(),
            why: why.to_string(),
        }
    }
}

impl EnrollmentDesk {
    /// Refuses a repeat that is past `secret_replay_minutes` at `now`, or that was stored
    /// before request ids were bound to their caller.
    pub(super) fn check_repeat(
        &self,
        now: Timestamp,
        repeat: &SecretRepeat,
        subject: &str,
    ) -> Result<(), DeskFailure> {
        if !repeat.caller_bound {
            return Err(refused(
                subject,
                repeat.expired(
                    "it was answered before request ids were bound to their caller (store migration 0007)",
                ),
            ));
        }
        let window = self.settings.secret_replay;
        let within = repeat
            .answered_at
            .checked_add(window)
            .is_some_and(|until| now < until);
        if window.is_zero() || !within {
            return Err(refused(
                subject,
                repeat.expired(&format!(
                    "it was first answered at {}, and secrets are answered again only for {} minutes (enrollment.secret_replay_minutes)",
                    repeat.answered_at,
                    window.as_secs() / 60
                )),
            ));
        }
        Ok(())
    }

    /// A repeated ReleasePuk: the checks of a first call, the credentials of the generation the
    /// first answer released, audited as `token.release_puk` with `"repeat": true`. No approval
    /// is asked for or collected (the first call did that under dual control); the repeat is
    /// within the caller certificate's rate limit and counts towards it.
    pub async fn release_puk_repeat(
        &self,
        tx: &mut WriteTx,
        caller: &Caller,
        token_serial: &str,
        reason: &str,
        repeat: &SecretRepeat,
    ) -> Result<(TokenCredentials, PukRotation), DeskFailure> {
        self.check_repeat(tx.now(), repeat, &format!("token:{token_serial}"))?;
        match self
            .release(
                tx,
                caller,
                token_serial,
                reason,
                &repeat.request_id,
                Some(repeat),
            )
            .await?
        {
            PukRelease::Released {
                credentials,
                rotation,
                ..
            } => Ok((credentials, rotation)),
            PukRelease::Pending(_) => Err(EnrollmentRefusal::internal(PendingOnRepeat).into()),
        }
    }

    /// A repeated BeginEnrollment, whose first answer began `enrollment_id`: the checks of a
    /// first call (person active, profile known, token neither lost, damaged nor retired nor
    /// another person's, credentials intact), the enrollment still open, then its credentials
    /// unwrapped again — the current ones when the first answer had them, and the new ones —
    /// audited as `enrollment.begin` with `"repeat": true`.
    pub async fn begin_repeat(
        &self,
        tx: &mut WriteTx,
        actor: &Actor,
        req: &BeginRequest<'_>,
        enrollment_id: &str,
        with_current: bool,
        repeat: &SecretRepeat,
    ) -> Result<(Option<TokenCredentials>, TokenCredentials), DeskFailure> {
        let subject = format!("enrollment:{enrollment_id}");
        self.check_repeat(tx.now(), repeat, &subject)?;
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
        if self.settings.profiles.get(req.profile).is_none() {
            return Err(refused(
                format!("person:{}", person.external_id),
                EnrollmentRefusal::ProfileUnknown {
                    profile: req.profile.to_string(),
                    known: self.settings.profiles.names().join(", "),
                },
            ));
        }
        let token_subject = format!("token:{}", req.token_serial);
        let token = tx
            .token_by_serial(req.token_serial)
            .await?
            .ok_or_else(|| LifecycleError::TokenNotFound(req.token_serial.to_string()))?;
        if let Some(refusal) = token_unenrollable_for(&token, person.id) {
            return Err(refused(token_subject, refusal));
        }
        let row = tx
            .enrollment_by_public_id(enrollment_id)
            .await?
            .ok_or_else(|| EnrollError::StoredPlanInvalid("enrollment vanished".into()))?;
        let loaded = LoadedEnrollment::load(row)?;
        if let LoadedEnrollment::Closed(r) = &loaded {
            return Err(refused(subject, EnrollError::closed(r)));
        }
        if loaded.row().token_id != token.id || loaded.row().person_id != person.id {
            return Err(EnrollError::StoredPlanInvalid(
                "a stored BeginEnrollment answer names another enrollment".into(),
            )
            .into());
        }
        let stored = tx
            .token_credentials(token.id)
            .await?
            .filter(|c| c.pending.is_some());
        let Some(stored) = stored else {
            return Err(refused(subject, EnrollError::closed(loaded.row())));
        };
        let unwrapped = self
            .unwrap_row(&stored, &token.serial)
            .await
            .map_err(|e| refused_if_tampered(&token_subject, e))?;
        let Some(new) = unwrapped.pending else {
            return Err(refused(subject, EnrollError::closed(loaded.row())));
        };
        let current = if with_current {
            unwrapped.confirmed
        } else {
            None
        };
        record(
            tx,
            actor,
            "enrollment.begin",
            &subject,
            None,
            Some(serde_json::json!({
                "repeat": true,
                "person": person.external_id,
                "token": token.serial,
                "released": if current.is_some() {
                    "current and new credentials"
                } else {
                    "new credentials"
                },
            })),
            &repeat.request_id,
        )
        .await?;
        Ok((current, new))
    }
}

/// `release` never answers a repeat with a pending request: it skips the approval rules.
#[derive(Debug, thiserror::Error)]
#[error("a repeated ReleasePuk was answered with a pending request")]
struct PendingOnRepeat;
