//! YubiKey PIV attestation: verify that a key was generated on a genuine token, read what the
//! token says about it, and decide by policy. Pure: no file, network or clock access; callers
//! pass bytes in. Rules and reason codes: docs/attestation.md.
//!
//! ```no_run
//! use tessera_attest::{self as attest, AttestationInput, Policy, TrustAnchors};
//! # fn demo(slot: Vec<u8>, f9: Vec<u8>, csr_spki: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! let trust = TrustAnchors::yubico()?;
//! let input = AttestationInput::new(slot, f9).expecting_serial(15732500);
//! let verified = attest::verify(&input, &trust)?;       // chain, extensions, serial
//! verified.require_public_key(csr_spki)?;               // the key we are certifying
//! let decision = Policy::from_toml("minimum_pin_policy = \"once\"")?.evaluate(&verified);
//! if !decision.allowed() { println!("{:?}", decision.reason_codes()); }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod certificate;
mod error;
mod facts;
mod policy;
mod signature;
mod trust;
mod verify;

pub use certificate::MAX_CERTIFICATE_INPUT_BYTES;
pub use error::{AttestError, CertificateRole, YubicoExtension};
pub use facts::{FirmwareVersion, FormFactor, KeyAlgorithm, PinPolicy, Slot, TouchPolicy};
pub use policy::{Advisories, Decision, DenyReason, Policy, PolicyError, SlotRule};
pub use trust::{TrustAnchors, TrustAnchorsBuilder};
pub use verify::{
    AttestationFacts, AttestationInput, MAX_CHAIN_ABOVE_DEVICE, MAX_GIVEN_INTERMEDIATES,
    VerifiedAttestation, verify,
};

/// Decodes certificate bytes (PEM bundle or one DER certificate) the way [`verify`] does and
/// returns how many certificates they hold. For fuzzing and for checking files early.
pub fn count_certificates(bytes: &[u8]) -> Result<usize, AttestError> {
    certificate::decode_certificates(bytes, &CertificateRole::Intermediate(0)).map(|c| c.len())
}
