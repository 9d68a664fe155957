//! Why a desk step did not succeed ([`EnrollmentRefusal`], [`DeskFailure`]) and the audit
//! record of a refusal.

use super::EnrollmentDesk;
use crate::audit::{self, Actor, Change};
use crate::enroll::EnrollError;
use crate::lifecycle::LifecycleError;
use crate::store::{StoreError, Timestamp, TokenRow, TokenState};
use std::collections::HashMap;

/// Why an enrollment request was refused or failed. Each variant has one stable reason
/// ([`EnrollmentRefusal::reason`], docs/api.md), the request field at fault
/// ([`EnrollmentRefusal::field`]) and the `ErrorInfo` metadata
/// ([`EnrollmentRefusal::metadata`]).
#[derive(Debug, thiserror::Error)]
pub enum EnrollmentRefusal {
    #[error("enrollment is not configured on this server; add the [ca] and [enrollment] sections")]
    NotConfigured,
    #[error("no enrollment {0:?}")]
    EnrollmentNotFound(String),
    #[error("person {person} is {state}; only an active person can be enrolled")]
    PersonNotActive { person: String, state: &'static str },
    #[error("unknown enrollment profile {profile:?}; known profiles: {known}")]
    ProfileUnknown { profile: String, known: String },
    #[error("firmware {0:?} is not major.minor.patch")]
    FirmwareInvalid(String),
    #[error("the token serial is not a decimal number")]
    TokenSerialInvalid,
    #[error("token {serial} is {state}; a lost, damaged or retired token is never enrolled again")]
    TokenNeverEnrollable { serial: String, state: &'static str },
    /// The token left `enrolling` while its enrollment was open (marked lost, damaged or
    /// retired by the help desk); it gets nothing more from that enrollment.
    #[error("token {serial} is {state}; its enrollment cannot go on")]
    TokenNotEnrolling { serial: String, state: &'static str },
    /// The token in the reader is the forgotten one: it was found.
    #[error(
        "token {serial} is forgotten; it was found: reinstate it (ReinstateToken) instead of enrolling it again"
    )]
    TokenForgotten { serial: String },
    /// A temporary enrollment profile for a person without a forgotten token.
    #[error(
        "profile {profile} is for a temporary token, and person {person} has no token in state forgotten; mark the forgotten token first (MarkTokenForgotten), or use a profile for a regular token"
    )]
    NoForgottenToken { profile: String, person: String },
    /// A second temporary token while one stands in for the forgotten token.
    #[error(
        "person {person} already has temporary token {temporary} ({state}) for forgotten token {forgotten}; retire it first (RetireToken, or MarkTokenLost), or reinstate the forgotten token"
    )]
    TemporaryTokenInUse {
        person: String,
        forgotten: String,
        temporary: String,
        state: &'static str,
    },
    #[error("token {serial} is {state} for another person; retire it first")]
    TokenHeldByAnotherPerson { serial: String, state: &'static str },
    #[error("token {serial} is {state}; the PUK is released only for an active token")]
    TokenNotActive { serial: String, state: &'static str },
    /// BeginRenewal (and Complete/Confirm of a renewal): the token is not active, or held by
    /// no one.
    #[error("token {serial} is {state}; only an active token held by an active person is renewed")]
    TokenNotRenewable { serial: String, state: String },
    /// BeginRenewal: an enrollment of the token is open (begun, not confirmed).
    #[error(
        "token {serial} is being enrolled (enrollment {enrollment} is open); confirm or abort that enrollment before renewing"
    )]
    TokenEnrollmentOpen { serial: String, enrollment: String },
    #[error("slot {0:?} is not a PIV key slot (9a, 9c, 9d, 9e, 82 to 95)")]
    SlotInvalid(String),
    /// BeginRenewal: the slot (or, none named, every slot) holds no good certificate that a
    /// confirmed enrollment of this token issued.
    #[error("{}", match slot {
        Some(slot) => format!("slot {slot} of token {serial} has no good certificate to renew; enroll the token to key it"),
        None => format!("token {serial} has no good certificate to renew; enroll it instead"),
    })]
    SlotNotRenewable {
        serial: String,
        slot: Option<String>,
    },
    /// BeginRenewal before the certificate's renewal window without `force`.
    #[error(
        "slot {}: certificate {} (profile {}) expires at {}; it may be renewed from {} ({} days before expiry, renewal_window_days of the profile); an admin may force an earlier renewal",
        .0.slot, .0.certificate, .0.profile, .0.not_after, .0.renewable_from, .0.window_days
    )]
    RenewalTooEarly(Box<RenewalWindow>),
    /// BeginRenewal with `force` by a caller who may not force.
    #[error("only an admin may force a renewal before its window")]
    RenewalForceRequiresAdmin,
    /// ConfirmPukRotation without a pending rotation.
    #[error(
        "token {0} has no PUK rotation waiting for confirmation (confirmed already, or discarded by a new enrollment); run `tessera station unblock` again"
    )]
    PukRotationNotPending(String),
    /// ConfirmPukRotation naming another generation than the pending one.
    #[error(
        "generation {given} is not the pending PUK rotation of token {serial} (that is generation {pending}); confirm the generation ReleasePuk answered last"
    )]
    PukRotationStale {
        serial: String,
        given: i64,
        pending: i64,
    },
    /// ConfirmPukRotation by another certificate than the one the new PUK was last handed to.
    #[error(
        "the pending PUK of token {0} was last handed to another client certificate; only the station that received it (ReleasePuk) confirms it"
    )]
    PukRotationOfAnotherCaller(String),
    #[error("Tessera holds no PUK for token {0}; it was not enrolled by this server")]
    CredentialsNotHeld(String),
    /// A wrapped PUK or management key of the token does not unwrap for its place (token,
    /// field, generation): a database writer copied or altered it. Nothing is released.
    #[error(
        "the stored credentials of token {0} do not belong to it (the database was altered); nothing was released"
    )]
    CredentialsTampered(String),
    #[error("reason exceeds 1024 bytes")]
    ReasonTooLong,
    /// ReleasePuk and ApprovePukRelease need a reason for the audit log.
    #[error("reason is empty; say why the PUK is released (it is recorded in the audit log)")]
    ReleaseReasonRequired,
    /// Dual control: the release waits for a second certificate's ApprovePukRelease. The
    /// request is stored (not rolled back); repeat ReleasePuk after the approval.
    #[error(
        "the PUK release of token {token_serial} waits for approval by a second operator: release id {release_id}, until {expires_at}; once it is approved (ApprovePukRelease), repeat ReleasePuk with the same certificate"
    )]
    PukReleasePendingApproval {
        release_id: String,
        token_serial: String,
        expires_at: Timestamp,
    },
    #[error("no PUK release {0:?}")]
    PukReleaseNotFound(String),
    #[error("PUK release {release_id} is not for token {token_serial:?}")]
    PukReleaseTokenMismatch {
        release_id: String,
        token_serial: String,
    },
    #[error(
        "PUK release {0} was asked for by this certificate or this operator; a second operator must approve it"
    )]
    ApproverIsRequester(String),
    #[error("PUK release {release_id} is {state}, not waiting for approval")]
    PukReleaseNotPending {
        release_id: String,
        state: &'static str,
    },
    #[error(
        "PUK release {release_id} expired at {expired_at} without approval; repeat ReleasePuk to ask again"
    )]
    PukReleaseExpired {
        release_id: String,
        expired_at: Timestamp,
    },
    #[error(
        "this client certificate has received {limit} PUK releases in the last 60 minutes, the limit ([enrollment] puk_releases_per_hour); the next is possible at {next_at}"
    )]
    PukReleaseRateLimited { limit: u32, next_at: Timestamp },
    /// A repeat (same request id, same caller) of a request whose answer carried secrets,
    /// which is no longer answered: too late, stored before request ids were bound to their
    /// caller, or the token's credentials changed since.
    #[error(
        "request id {request_id:?} is not answered again: {why}; its answer carried secrets, send a fresh request id"
    )]
    RepeatExpired { request_id: String, why: String },
    /// The CA failed while issuing; the cause is in the server log only (it may name
    /// internal detail: SQL, HSM or file errors), never in the answer.
    #[error(
        "issuing the certificate for slot {slot} of enrollment {enrollment} failed (see the server log); the enrollment was aborted, begin a new one"
    )]
    IssuanceFailed { slot: String, enrollment: String },
    #[error(transparent)]
    Step(#[from] EnrollError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// HSM, entropy or task failures: logged, answered as an internal error.
    #[error(transparent)]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl EnrollmentRefusal {
    pub(super) fn internal(e: impl std::error::Error + Send + Sync + 'static) -> EnrollmentRefusal {
        EnrollmentRefusal::Internal(Box::new(e))
    }

    /// Every reason [`EnrollmentRefusal::reason`] returns besides those of the wrapped
    /// [`EnrollError`] and [`LifecycleError`] (docs/api.md lists the same).
    pub const REASONS: &'static [&'static str] = &[
        "ENROLLMENT_NOT_CONFIGURED",
        "ENROLLMENT_NOT_FOUND",
        "PERSON_NOT_ACTIVE",
        "ENROLLMENT_PROFILE_UNKNOWN",
        "FIRMWARE_INVALID",
        "TOKEN_SERIAL_INVALID",
        "TOKEN_NOT_ENROLLABLE",
        "TOKEN_HELD_BY_ANOTHER_PERSON",
        "NO_FORGOTTEN_TOKEN",
        "TEMPORARY_TOKEN_IN_USE",
        "TOKEN_NOT_ACTIVE",
        "TOKEN_ENROLLMENT_OPEN",
        "SLOT_INVALID",
        "SLOT_NOT_RENEWABLE",
        "RENEWAL_TOO_EARLY",
        "RENEWAL_FORCE_REQUIRES_ADMIN",
        "CREDENTIALS_NOT_HELD",
        "PUK_ROTATION_NOT_PENDING",
        "PUK_ROTATION_STALE",
        "PUK_ROTATION_OF_ANOTHER_CALLER",
        "CREDENTIALS_TAMPERED",
        "FIELD_TOO_LONG",
        "RELEASE_REASON_REQUIRED",
        "PUK_RELEASE_PENDING_APPROVAL",
        "PUK_RELEASE_NOT_FOUND",
        "PUK_RELEASE_TOKEN_MISMATCH",
        "APPROVER_IS_REQUESTER",
        "PUK_RELEASE_NOT_PENDING",
        "PUK_RELEASE_EXPIRED",
        "PUK_RELEASE_RATE_LIMITED",
        "REQUEST_ID_EXPIRED",
        "ISSUANCE_FAILED",
        "INTERNAL",
    ];

    /// The stable reason string a station can act on.
    pub fn reason(&self) -> &'static str {
        use EnrollmentRefusal as R;
        match self {
            R::NotConfigured => "ENROLLMENT_NOT_CONFIGURED",
            R::EnrollmentNotFound(_) => "ENROLLMENT_NOT_FOUND",
            R::PersonNotActive { .. } => "PERSON_NOT_ACTIVE",
            R::ProfileUnknown { .. } => "ENROLLMENT_PROFILE_UNKNOWN",
            R::FirmwareInvalid(_) => "FIRMWARE_INVALID",
            R::TokenSerialInvalid => "TOKEN_SERIAL_INVALID",
            R::TokenNeverEnrollable { .. }
            | R::TokenNotEnrolling { .. }
            | R::TokenForgotten { .. } => "TOKEN_NOT_ENROLLABLE",
            R::NoForgottenToken { .. } => "NO_FORGOTTEN_TOKEN",
            R::TemporaryTokenInUse { .. } => "TEMPORARY_TOKEN_IN_USE",
            R::TokenHeldByAnotherPerson { .. } => "TOKEN_HELD_BY_ANOTHER_PERSON",
            R::TokenNotActive { .. } | R::TokenNotRenewable { .. } => "TOKEN_NOT_ACTIVE",
            R::TokenEnrollmentOpen { .. } => "TOKEN_ENROLLMENT_OPEN",
            R::SlotInvalid(_) => "SLOT_INVALID",
            R::SlotNotRenewable { .. } => "SLOT_NOT_RENEWABLE",
            R::RenewalTooEarly(_) => "RENEWAL_TOO_EARLY",
            R::RenewalForceRequiresAdmin => "RENEWAL_FORCE_REQUIRES_ADMIN",
            R::CredentialsNotHeld(_) => "CREDENTIALS_NOT_HELD",
            R::PukRotationNotPending(_) => "PUK_ROTATION_NOT_PENDING",
            R::PukRotationStale { .. } => "PUK_ROTATION_STALE",
            R::PukRotationOfAnotherCaller(_) => "PUK_ROTATION_OF_ANOTHER_CALLER",
            R::CredentialsTampered(_) => "CREDENTIALS_TAMPERED",
            R::ReasonTooLong => "FIELD_TOO_LONG",
            R::ReleaseReasonRequired => "RELEASE_REASON_REQUIRED",
            R::PukReleasePendingApproval { .. } => "PUK_RELEASE_PENDING_APPROVAL",
            R::PukReleaseNotFound(_) => "PUK_RELEASE_NOT_FOUND",
            R::PukReleaseTokenMismatch { .. } => "PUK_RELEASE_TOKEN_MISMATCH",
            R::ApproverIsRequester(_) => "APPROVER_IS_REQUESTER",
            R::PukReleaseNotPending { .. } => "PUK_RELEASE_NOT_PENDING",
            R::PukReleaseExpired { .. } => "PUK_RELEASE_EXPIRED",
            R::PukReleaseRateLimited { .. } => "PUK_RELEASE_RATE_LIMITED",
            R::RepeatExpired { .. } => "REQUEST_ID_EXPIRED",
            R::IssuanceFailed { .. } => "ISSUANCE_FAILED",
            R::Step(e) => e.reason(),
            R::Lifecycle(e) => e.reason(),
            R::Store(_) | R::Internal(_) => "INTERNAL",
        }
    }

    /// The request field at fault, when one is.
    pub fn field(&self) -> Option<&str> {
        use EnrollmentRefusal as R;
        match self {
            R::EnrollmentNotFound(_) => Some("enrollment_id"),
            R::ProfileUnknown { .. } | R::NoForgottenToken { .. } => Some("profile"),
            R::FirmwareInvalid(_) => Some("firmware"),
            R::TokenSerialInvalid => Some("token_serial"),
            R::ReasonTooLong | R::ReleaseReasonRequired => Some("reason"),
            R::PukReleaseNotFound(_) => Some("release_id"),
            R::PukReleaseTokenMismatch { .. } => Some("token_serial"),
            R::SlotInvalid(_) | R::SlotNotRenewable { slot: Some(_), .. } => Some("slots"),
            R::RenewalTooEarly(_) | R::RenewalForceRequiresAdmin => Some("force"),
            R::RepeatExpired { .. } => Some("request_id"),
            R::PukRotationStale { .. } => Some("generation"),
            R::Step(e) => e.slot().map(|_| "proofs"),
            R::Lifecycle(e) => e.field(),
            _ => None,
        }
    }

    /// `ErrorInfo` metadata: the slot at fault, policy reason codes, the attestation code.
    pub fn metadata(&self) -> HashMap<String, String> {
        use EnrollmentRefusal as R;
        let release = |release_id: &str, at: (&str, &Timestamp)| {
            HashMap::from([
                ("release_id".to_string(), release_id.to_string()),
                (at.0.to_string(), at.1.to_string()),
            ])
        };
        match self {
            R::Step(e) => e.metadata(),
            R::PukReleasePendingApproval {
                release_id,
                expires_at,
                ..
            } => release(release_id, ("expires_at", expires_at)),
            R::PukReleaseExpired {
                release_id,
                expired_at,
            } => release(release_id, ("expires_at", expired_at)),
            R::PukReleaseNotFound(id)
            | R::ApproverIsRequester(id)
            | R::PukReleaseTokenMismatch { release_id: id, .. }
            | R::PukReleaseNotPending { release_id: id, .. } => {
                HashMap::from([("release_id".to_string(), id.clone())])
            }
            R::PukReleaseRateLimited { next_at, .. } => {
                HashMap::from([("next_at".to_string(), next_at.to_string())])
            }
            R::TokenEnrollmentOpen { enrollment, .. } => {
                HashMap::from([("enrollment_id".to_string(), enrollment.clone())])
            }
            R::SlotInvalid(slot)
            | R::SlotNotRenewable {
                slot: Some(slot), ..
            } => HashMap::from([("slot".to_string(), slot.clone())]),
            R::RenewalTooEarly(w) => HashMap::from([
                ("slot".to_string(), w.slot.clone()),
                ("certificate_serial".to_string(), w.certificate.clone()),
                ("not_after".to_string(), w.not_after.to_string()),
                ("renewable_from".to_string(), w.renewable_from.to_string()),
                ("renewal_window_days".to_string(), w.window_days.to_string()),
            ]),
            _ => HashMap::new(),
        }
    }

    /// An internal error: the caller sees only that one happened (the log has the detail).
    pub fn is_internal(&self) -> bool {
        use EnrollmentRefusal as R;
        match self {
            R::Step(e) => e.is_internal(),
            R::Lifecycle(e) => e.reason() == "INTERNAL",
            R::Store(_) | R::Internal(_) => true,
            _ => false,
        }
    }

    /// The message a caller sees (internal errors are not described to the caller).
    pub fn public_message(&self) -> String {
        if self.is_internal() {
            "internal error; see the server log".to_string()
        } else {
            self.to_string()
        }
    }
}

/// A certificate renewed before its window: when it expires and from when it may be renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalWindow {
    pub slot: String,
    pub certificate: String,
    pub profile: String,
    pub not_after: Timestamp,
    pub renewable_from: Timestamp,
    pub window_days: u32,
}

/// How a desk step did not succeed: refused (the caller rolls back and records the refusal
/// with [`EnrollmentDesk::record_refusal`]) or failed (nothing to record).
#[derive(Debug)]
pub enum DeskFailure {
    Refused {
        /// The audit subject, e.g. `enrollment:<id>`, `token:<serial>`, `person:<id>`.
        subject: String,
        refusal: EnrollmentRefusal,
    },
    Error(EnrollmentRefusal),
}

impl<E: Into<EnrollmentRefusal>> From<E> for DeskFailure {
    fn from(e: E) -> DeskFailure {
        DeskFailure::Error(e.into())
    }
}

pub(super) fn refused(
    subject: impl Into<String>,
    refusal: impl Into<EnrollmentRefusal>,
) -> DeskFailure {
    DeskFailure::Refused {
        subject: subject.into(),
        refusal: refusal.into(),
    }
}

impl EnrollmentDesk {
    /// Records a refusal's `enrollment.refuse` event in a fresh transaction (the request's own
    /// changes were rolled back) and returns the refusal, or the error that kept it from being
    /// recorded. A failure that is no refusal comes back as it is.
    pub async fn record_refusal(
        &self,
        actor: &Actor,
        operation: &str,
        request_id: &str,
        failure: DeskFailure,
    ) -> EnrollmentRefusal {
        let (subject, refusal) = match failure {
            DeskFailure::Error(e) => return e,
            DeskFailure::Refused { subject, refusal } => (subject, refusal),
        };
        let result: Result<(), EnrollmentRefusal> = async {
            let mut tx = self.store.begin_write().await?;
            audit::record(
                &mut tx,
                actor,
                Change {
                    action: "enrollment.refuse",
                    subject,
                    before: None,
                    after: Some(serde_json::json!({
                        "operation": operation,
                        "reason": refusal.reason(),
                        "message": refusal.public_message(),
                    })),
                    request_id,
                },
            )
            .await
            .map_err(LifecycleError::from)?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => refusal,
            Err(e) => e,
        }
    }
}

/// Why `token` cannot be enrolled for the person with id `person_id`, if it cannot: it is lost,
/// damaged or retired, it is forgotten (found: it is reinstated, not enrolled again), or it is
/// held by someone else — whatever its state, since an
/// `enrolling` token is held too, by the person its open enrollment is for. Checked by a first
/// BeginEnrollment and again by a repeat of one.
pub(super) fn token_unenrollable_for(
    token: &TokenRow,
    person_id: i64,
) -> Option<EnrollmentRefusal> {
    let (serial, state) = (token.serial.clone(), token.state.as_str());
    if matches!(
        token.state,
        TokenState::Lost | TokenState::Damaged | TokenState::Retired
    ) {
        Some(EnrollmentRefusal::TokenNeverEnrollable { serial, state })
    } else if token.state == TokenState::Forgotten {
        Some(EnrollmentRefusal::TokenForgotten { serial })
    } else if token.person_id.is_some_and(|p| p != person_id) {
        Some(EnrollmentRefusal::TokenHeldByAnotherPerson { serial, state })
    } else {
        None
    }
}

pub(super) fn token_not_enrolling(token: &TokenRow) -> EnrollmentRefusal {
    EnrollmentRefusal::TokenNotEnrolling {
        serial: token.serial.clone(),
        state: token.state.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_reasons_fields_and_metadata() {
        let cases: Vec<(EnrollmentRefusal, &str, Option<&str>)> = vec![
            (
                EnrollmentRefusal::NotConfigured,
                "ENROLLMENT_NOT_CONFIGURED",
                None,
            ),
            (
                EnrollmentRefusal::EnrollmentNotFound("e1".into()),
                "ENROLLMENT_NOT_FOUND",
                Some("enrollment_id"),
            ),
            (
                EnrollmentRefusal::ProfileUnknown {
                    profile: "x".into(),
                    known: "piv-login".into(),
                },
                "ENROLLMENT_PROFILE_UNKNOWN",
                Some("profile"),
            ),
            (
                EnrollmentRefusal::FirmwareInvalid("5.x".into()),
                "FIRMWARE_INVALID",
                Some("firmware"),
            ),
            (
                EnrollmentRefusal::TokenSerialInvalid,
                "TOKEN_SERIAL_INVALID",
                Some("token_serial"),
            ),
            (
                EnrollmentRefusal::TokenNeverEnrollable {
                    serial: "1".into(),
                    state: "lost",
                },
                "TOKEN_NOT_ENROLLABLE",
                None,
            ),
            (
                EnrollmentRefusal::TokenNotEnrolling {
                    serial: "1".into(),
                    state: "retired",
                },
                "TOKEN_NOT_ENROLLABLE",
                None,
            ),
            (
                EnrollmentRefusal::CredentialsTampered("1".into()),
                "CREDENTIALS_TAMPERED",
                None,
            ),
            (
                EnrollmentRefusal::ReasonTooLong,
                "FIELD_TOO_LONG",
                Some("reason"),
            ),
            (
                EnrollmentRefusal::RepeatExpired {
                    request_id: "r".into(),
                    why: "it was answered more than 5 minutes ago".into(),
                },
                "REQUEST_ID_EXPIRED",
                Some("request_id"),
            ),
            (
                EnrollmentRefusal::IssuanceFailed {
                    slot: "9a".into(),
                    enrollment: "e".into(),
                },
                "ISSUANCE_FAILED",
                None,
            ),
            (
                EnrollmentRefusal::SlotInvalid("9z".into()),
                "SLOT_INVALID",
                Some("slots"),
            ),
            (
                EnrollmentRefusal::SlotNotRenewable {
                    serial: "1".into(),
                    slot: None,
                },
                "SLOT_NOT_RENEWABLE",
                None,
            ),
            (
                EnrollmentRefusal::TokenNotRenewable {
                    serial: "1".into(),
                    state: "suspended".into(),
                },
                "TOKEN_NOT_ACTIVE",
                None,
            ),
            (
                EnrollmentRefusal::RenewalForceRequiresAdmin,
                "RENEWAL_FORCE_REQUIRES_ADMIN",
                Some("force"),
            ),
            (
                EnrollError::SlotMissing("9c".into()).into(),
                "SLOT_MISSING",
                Some("proofs"),
            ),
            (
                LifecycleError::TokenNotFound("7".into()).into(),
                "TOKEN_NOT_FOUND",
                None,
            ),
        ];
        for (refusal, reason, field) in cases {
            assert_eq!(refusal.reason(), reason, "{refusal}");
            assert_eq!(refusal.field(), field, "{refusal}");
            assert!(!refusal.is_internal(), "{refusal}");
            assert_eq!(refusal.public_message(), refusal.to_string());
        }
    }

    #[test]
    fn policy_refusal_carries_slot_and_reason_codes() {
        let r: EnrollmentRefusal = EnrollError::PolicyDenied {
            slot: "9a".into(),
            codes: "EUCLEAK".into(),
            reasons: "firmware".into(),
        }
        .into();
        let m = r.metadata();
        assert_eq!(m.get("slot").map(String::as_str), Some("9a"));
        assert_eq!(m.get("policy_reasons").map(String::as_str), Some("EUCLEAK"));
        assert_eq!(r.reason(), "ATTESTATION_POLICY_DENIED");
    }

    #[test]
    fn internal_errors_are_not_described_to_the_caller() {
        let r: EnrollmentRefusal = EnrollError::StoredPlanInvalid("bad".into()).into();
        assert!(r.is_internal());
        assert_eq!(r.reason(), "INTERNAL");
        assert_eq!(r.public_message(), "internal error; see the server log");
        let r = EnrollmentRefusal::Store(StoreError::Database(sqlx::Error::RowNotFound));
        assert!(r.is_internal());
        assert_eq!(r.reason(), "INTERNAL");
    }
}
