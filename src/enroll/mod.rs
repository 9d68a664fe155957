//! The enrollment state machine on the server: begin → complete → confirm (or abort /
//! expire), nonces, proof of possession, idempotency. It never touches PC/SC; the station
//! (`station`) drives the token and calls the server (`api::enrollment_service`, which calls
//! [`desk`]).
//!
//! - [`plan`]: enrollment profiles (slot plans) and the certificate profile of each slot.
//! - [`credentials`]: per-token management key and PUK, nonces, enrollment ids.
//! - [`state`]: `Enrollment<Begun>` / `Enrollment<Completed>` and every check of
//!   CompleteEnrollment ([`state::Enrollment::verify`]).
//! - [`proof`]: the proof-of-possession signature check.
//! - [`settings`]: the `[enrollment]` configuration section, checked at start-up.
//! - [`desk`]: [`EnrollmentDesk`], the steps over the store and the online CA (rows loaded,
//!   the checks above called, certificates issued, credentials wrapped, changes and refusals
//!   audited, the expiry sweep); errors are [`EnrollmentRefusal`].
//!
//! All but `desk` and `settings` are pure (no I/O). `api::enrollment_service` authorizes,
//! translates protobuf and maps refusals to gRPC status.

pub mod credentials;
pub mod desk;
pub mod plan;
pub mod proof;
pub mod settings;
pub mod state;

pub use credentials::{ManagementKeyAlgorithm, ManagementKeySecret, TokenCredentials};
pub use desk::{
    BeginRequest, BegunEnrollment, BegunRenewal, Caller, CompleteRequest, Completion, DeskFailure,
    EnrollmentDesk, EnrollmentRefusal, EnrollmentView, PendingRelease, PukRelease, PukReleaseView,
    PukRotation, RENEWAL_SLOTS_MAX, RenewalRequest, SecretRepeat,
};
pub use plan::{EnrollmentProfile, EnrollmentProfiles};
pub use settings::{EnrollmentConfig, EnrollmentSettings, PukReleaseRules};
pub use state::{
    Begun, Completed, Enrollment, LoadedEnrollment, SlotProof, VerifiedSlot, Verifier,
};

use crate::protocol::{SlotPlan, proof_message};
use crate::store::{EnrollmentRow, EnrollmentState};

/// Why an enrollment step was refused. Each variant has one stable reason (docs/api.md).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnrollError {
    #[error("enrollment profile {origin} is invalid: {reason}")]
    ProfileInvalid { origin: String, reason: String },
    #[error("the stored slot plan cannot be read: {0}")]
    StoredPlanInvalid(String),
    #[error(
        "enrollment {0} has already used its nonce (CompleteEnrollment succeeded once); read it with GetEnrollment or begin a new enrollment"
    )]
    NonceAlreadyUsed(String),
    #[error("enrollment {0} has not been completed; call CompleteEnrollment first")]
    NotCompleted(String),
    #[error(
        "enrollment {0} expired before it was confirmed; its certificates were revoked; begin a new enrollment"
    )]
    Expired(String),
    #[error("enrollment {0} was aborted; begin a new enrollment")]
    Aborted(String),
    #[error("enrollment {0} is already confirmed")]
    AlreadyConfirmed(String),
    #[error("slot {0} has a proof but is not in the enrollment's plan")]
    SlotNotPlanned(String),
    #[error("slot {0} has more than one proof")]
    SlotDuplicate(String),
    #[error(
        "slot {0} is planned but has no proof; generate its key and send its attestation and signature"
    )]
    SlotMissing(String),
    #[error(
        "slot {slot}: the attestation comes from token {found}, not from the enrolling token {expected}; use the token the enrollment began with"
    )]
    AttestationFromAnotherToken {
        slot: String,
        expected: u32,
        found: u32,
    },
    #[error("slot {slot}: the attestation is not valid ({code}): {detail}")]
    AttestationInvalid {
        slot: String,
        code: &'static str,
        detail: String,
    },
    #[error("slot {slot}: the attestation is for slot {attested}")]
    AttestationSlotMismatch { slot: String, attested: String },
    #[error(
        "slot {slot}: the attested key is not as planned: {differences}; generate it again as planned"
    )]
    AttestationNotAsPlanned { slot: String, differences: String },
    #[error(
        "slot {0}: the proof signature does not verify with the attested key over this enrollment's nonce; sign the proof message with the slot's new key"
    )]
    ProofSignatureInvalid(String),
    #[error("slot {slot}: the attestation policy refuses the key: {reasons}")]
    PolicyDenied {
        slot: String,
        /// Comma-separated policy reason codes (docs/attestation.md).
        codes: String,
        reasons: String,
    },
}

impl EnrollError {
    /// The refusal for an enrollment that is confirmed, aborted or expired.
    pub fn closed(row: &EnrollmentRow) -> EnrollError {
        let id = row.public_id.clone();
        match row.state {
            EnrollmentState::Confirmed => EnrollError::AlreadyConfirmed(id),
            EnrollmentState::Aborted => EnrollError::Aborted(id),
            _ => EnrollError::Expired(id),
        }
    }

    /// Every reason [`EnrollError::reason`] returns (docs/api.md lists the same).
    pub const REASONS: &'static [&'static str] = &[
        "INTERNAL",
        "NONCE_ALREADY_USED",
        "ENROLLMENT_NOT_COMPLETED",
        "ENROLLMENT_EXPIRED",
        "ENROLLMENT_ABORTED",
        "ENROLLMENT_ALREADY_CONFIRMED",
        "SLOT_NOT_PLANNED",
        "SLOT_DUPLICATE",
        "SLOT_MISSING",
        "ATTESTATION_FROM_ANOTHER_TOKEN",
        "ATTESTATION_INVALID",
        "ATTESTATION_SLOT_MISMATCH",
        "ATTESTATION_NOT_AS_PLANNED",
        "PROOF_SIGNATURE_INVALID",
        "ATTESTATION_POLICY_DENIED",
    ];

    /// The stable reason string a station can act on.
    pub fn reason(&self) -> &'static str {
        match self {
            EnrollError::ProfileInvalid { .. } | EnrollError::StoredPlanInvalid(_) => "INTERNAL",
            EnrollError::NonceAlreadyUsed(_) => "NONCE_ALREADY_USED",
            EnrollError::NotCompleted(_) => "ENROLLMENT_NOT_COMPLETED",
            EnrollError::Expired(_) => "ENROLLMENT_EXPIRED",
            EnrollError::Aborted(_) => "ENROLLMENT_ABORTED",
            EnrollError::AlreadyConfirmed(_) => "ENROLLMENT_ALREADY_CONFIRMED",
            EnrollError::SlotNotPlanned(_) => "SLOT_NOT_PLANNED",
            EnrollError::SlotDuplicate(_) => "SLOT_DUPLICATE",
            EnrollError::SlotMissing(_) => "SLOT_MISSING",
            EnrollError::AttestationFromAnotherToken { .. } => "ATTESTATION_FROM_ANOTHER_TOKEN",
            EnrollError::AttestationInvalid { .. } => "ATTESTATION_INVALID",
            EnrollError::AttestationSlotMismatch { .. } => "ATTESTATION_SLOT_MISMATCH",
            EnrollError::AttestationNotAsPlanned { .. } => "ATTESTATION_NOT_AS_PLANNED",
            EnrollError::ProofSignatureInvalid(_) => "PROOF_SIGNATURE_INVALID",
            EnrollError::PolicyDenied { .. } => "ATTESTATION_POLICY_DENIED",
        }
    }

    /// An error of the server (a broken profile or stored plan), not of the request.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            EnrollError::ProfileInvalid { .. } | EnrollError::StoredPlanInvalid(_)
        )
    }

    /// `ErrorInfo` metadata: `slot`, and `policy_reasons` or `attestation_code` when they apply.
    pub fn metadata(&self) -> std::collections::HashMap<String, String> {
        let mut metadata = std::collections::HashMap::new();
        if let Some(slot) = self.slot() {
            metadata.insert("slot".to_string(), slot.to_string());
        }
        match self {
            EnrollError::PolicyDenied { codes, .. } => {
                metadata.insert("policy_reasons".to_string(), codes.clone());
            }
            EnrollError::AttestationInvalid { code, .. } => {
                metadata.insert("attestation_code".to_string(), code.to_string());
            }
            _ => {}
        }
        metadata
    }

    /// The slot at fault, when one is.
    pub fn slot(&self) -> Option<&str> {
        match self {
            EnrollError::SlotNotPlanned(s)
            | EnrollError::SlotDuplicate(s)
            | EnrollError::SlotMissing(s)
            | EnrollError::ProofSignatureInvalid(s)
            | EnrollError::AttestationFromAnotherToken { slot: s, .. }
            | EnrollError::AttestationInvalid { slot: s, .. }
            | EnrollError::AttestationSlotMismatch { slot: s, .. }
            | EnrollError::AttestationNotAsPlanned { slot: s, .. }
            | EnrollError::PolicyDenied { slot: s, .. } => Some(s),
            _ => None,
        }
    }
}
