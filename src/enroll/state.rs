//! An enrollment's state as a type: only an `Enrollment<Begun>` can be completed (its nonce is
//! unused), only an `Enrollment<Completed>` can be confirmed. Loading a stored row sorts it
//! into one of them, or says why it can do nothing more.

use super::plan::plan_from_json;
use super::{EnrollError, proof, proof_message};
use crate::attest::{self, AttestError, AttestationFacts, AttestationInput, Policy, TrustAnchors};
use crate::protocol::SlotPlan;
use crate::store::{EnrollmentRow, EnrollmentState, Timestamp};
use std::marker::PhantomData;

/// Nonce handed out, no proof accepted yet.
#[derive(Debug)]
pub struct Begun;
/// Certificates issued, waiting for the station's confirmation.
#[derive(Debug)]
pub struct Completed;

#[derive(Debug)]
pub struct Enrollment<S> {
    row: EnrollmentRow,
    plan: Vec<SlotPlan>,
    _state: PhantomData<S>,
}

/// A stored enrollment, sorted by what can still happen to it.
#[derive(Debug)]
pub enum LoadedEnrollment {
    Begun(Enrollment<Begun>),
    Completed(Enrollment<Completed>),
    /// Confirmed, aborted or expired: nothing more can happen.
    Closed(EnrollmentRow),
}

impl LoadedEnrollment {
    pub fn load(row: EnrollmentRow) -> Result<LoadedEnrollment, EnrollError> {
        Ok(match row.state {
            EnrollmentState::Begun => LoadedEnrollment::Begun(Enrollment::new(row)?),
            EnrollmentState::Completed => LoadedEnrollment::Completed(Enrollment::new(row)?),
            _ => LoadedEnrollment::Closed(row),
        })
    }

    pub fn row(&self) -> &EnrollmentRow {
        match self {
            LoadedEnrollment::Begun(e) => &e.row,
            LoadedEnrollment::Completed(e) => &e.row,
            LoadedEnrollment::Closed(r) => r,
        }
    }

    /// Open (begun or completed) and at or past its expiry time.
    pub fn is_due_to_expire(&self, now: Timestamp) -> bool {
        !matches!(self, LoadedEnrollment::Closed(_)) && self.row().expires_at <= now
    }

    /// The enrollment ready for CompleteEnrollment, or the reason it is not.
    pub fn into_begun(self) -> Result<Enrollment<Begun>, EnrollError> {
        match self {
            LoadedEnrollment::Begun(e) => Ok(e),
            LoadedEnrollment::Completed(e) => Err(EnrollError::NonceAlreadyUsed(e.row.public_id)),
            LoadedEnrollment::Closed(r) => Err(EnrollError::closed(&r)),
        }
    }

    /// The enrollment ready for ConfirmEnrollment, or the reason it is not.
    pub fn into_completed(self) -> Result<Enrollment<Completed>, EnrollError> {
        match self {
            LoadedEnrollment::Completed(e) => Ok(e),
            LoadedEnrollment::Begun(e) => Err(EnrollError::NotCompleted(e.row.public_id)),
            LoadedEnrollment::Closed(r) => Err(EnrollError::closed(&r)),
        }
    }
}

impl<S> Enrollment<S> {
    fn new(row: EnrollmentRow) -> Result<Self, EnrollError> {
        let plan = plan_from_json(&row.plan_json)?;
        Ok(Enrollment {
            row,
            plan,
            _state: PhantomData,
        })
    }
    pub fn row(&self) -> &EnrollmentRow {
        &self.row
    }
    pub fn plan(&self) -> &[SlotPlan] {
        &self.plan
    }
}

/// One slot's proof as the station sent it.
#[derive(Clone, Debug)]
pub struct SlotProof {
    pub slot: String,
    /// The slot's attestation certificate, DER.
    pub attestation_certificate: Vec<u8>,
    pub signature: Vec<u8>,
}

/// What verification needs besides the proofs.
pub struct Verifier<'a> {
    pub trust: &'a TrustAnchors,
    pub policy: &'a Policy,
}

/// A planned slot whose key passed every check: attested on this token, as planned, signed the
/// proof, allowed by policy. Only [`Enrollment::<Begun>::verify`] makes one.
#[derive(Clone, Debug)]
pub struct VerifiedSlot {
    pub plan: SlotPlan,
    /// The attested key (SubjectPublicKeyInfo DER).
    pub public_key_der: Vec<u8>,
    pub facts: AttestationFacts,
}

impl Enrollment<Begun> {
    /// Every check of CompleteEnrollment, in order, for every planned slot; the first failure
    /// is the answer. `token_serial` is the token's serial as Begin recorded it.
    pub fn verify(
        &self,
        token_serial: u32,
        intermediate: &[u8],
        proofs: &[SlotProof],
        verifier: &Verifier<'_>,
    ) -> Result<Vec<VerifiedSlot>, EnrollError> {
        for (i, p) in proofs.iter().enumerate() {
            if !self.plan.iter().any(|s| s.slot.to_string() == p.slot) {
                return Err(EnrollError::SlotNotPlanned(p.slot.clone()));
            }
            if proofs[..i].iter().any(|q| q.slot == p.slot) {
                return Err(EnrollError::SlotDuplicate(p.slot.clone()));
            }
        }
        let mut verified = Vec::new();
        for plan in &self.plan {
            let slot = plan.slot.to_string();
            let proof = proofs
                .iter()
                .find(|p| p.slot == slot)
                .ok_or_else(|| EnrollError::SlotMissing(slot.clone()))?;
            let input = AttestationInput::new(proof.attestation_certificate.clone(), intermediate)
                .expecting_serial(token_serial);
            let attestation = attest::verify(&input, verifier.trust).map_err(|e| match e {
                AttestError::SerialMismatch { expected, found } => {
                    EnrollError::AttestationFromAnotherToken {
                        slot: slot.clone(),
                        expected,
                        found,
                    }
                }
                other => EnrollError::AttestationInvalid {
                    slot: slot.clone(),
                    code: other.code(),
                    detail: other.to_string(),
                },
            })?;
            if attestation.slot() != plan.slot {
                return Err(EnrollError::AttestationSlotMismatch {
                    slot: slot.clone(),
                    attested: attestation.slot().to_string(),
                });
            }
            let mut differences = Vec::new();
            if attestation.key_algorithm() != plan.algorithm {
                differences.push(format!(
                    "algorithm {} (planned {})",
                    attestation.key_algorithm(),
                    plan.algorithm
                ));
            }
            if attestation.pin_policy() != plan.pin_policy {
                differences.push(format!(
                    "PIN policy {} (planned {})",
                    attestation.pin_policy(),
                    plan.pin_policy
                ));
            }
            if attestation.touch_policy() != plan.touch_policy {
                differences.push(format!(
                    "touch policy {} (planned {})",
                    attestation.touch_policy(),
                    plan.touch_policy
                ));
            }
            if !differences.is_empty() {
                return Err(EnrollError::AttestationNotAsPlanned {
                    slot: slot.clone(),
                    differences: differences.join(", "),
                });
            }
            let message = proof_message(&self.row.public_id, &slot, &self.row.nonce);
            if !proof::signature_verifies(
                attestation.public_key_spki_der(),
                &message,
                &proof.signature,
            ) {
                return Err(EnrollError::ProofSignatureInvalid(slot.clone()));
            }
            let decision = verifier.policy.evaluate(&attestation);
            if !decision.allowed() {
                return Err(EnrollError::PolicyDenied {
                    slot: slot.clone(),
                    codes: decision.reason_codes().join(","),
                    reasons: decision
                        .reasons()
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
            verified.push(VerifiedSlot {
                plan: plan.clone(),
                public_key_der: attestation.public_key_spki_der().to_vec(),
                facts: attestation.facts(),
            });
        }
        Ok(verified)
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
