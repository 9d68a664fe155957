//! The certificate authority: profiles, serial numbers, two-phase issuance (prepare the exact
//! tbsCertificate, then assemble it with a signature), CSR checking, CRL and OCSP signing, and
//! the CA ceremony. Pure of storage, runtime and clock: it never sees the store, never waits on
//! a runtime, never reads the time (every issuance, ceremony, CRL and OCSP answer is given its
//! time by the caller), never calls back into its caller. It never talks to tokens and never sees a
//! PKCS#11 handle: every private-key operation goes through the one `crate::hsm::Signer` seam.
//! rcgen encodes; the signer signs (`signing.rs`).
//!
//! Start reading at [`issue::IssuingCa::prepare`] (one certificate) and
//! [`ceremony::init_ca`] (the ceremony).

pub mod ceremony;
pub mod crl;
pub mod csr;
mod der_encoding;
pub mod issue;
pub mod ocsp;
pub mod online;
pub mod policy_oid;
pub mod profile;
mod revocation_reason;
pub mod serial;
mod signing;
pub mod subject_key;

pub use ceremony::{
    CaInitParams, CaRecord, OperatorCaParams, StoredCa, StoredOperatorCa, init_ca, init_operator_ca,
};
pub use csr::{CsrAttestation, VerifiedCsr, parse_and_verify_csr};
pub use issue::{
    HardwareModule, IssuanceRequest, IssuedCertificate, IssuingCa, KeyProvenance,
    PreparedCertificate, SubjectParams,
};
pub use online::OnlineCa;
pub use profile::{Profile, ProfileSet};
pub use revocation_reason::RevocationReason;
pub use serial::SerialNumber;

use crate::hsm::HsmError;
use std::path::PathBuf;

/// Every way the CA refuses or fails; each message is one line naming the problem and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Hsm(#[from] HsmError),
    #[error("unknown certificate profile \"{name}\"; known profiles: {known}")]
    UnknownProfile { name: String, known: String },
    #[error("certificate profile {origin} is invalid: {reason}")]
    ProfileInvalid { origin: String, reason: String },
    #[error(
        "profile {profile} certifies only hardware-attested keys and this key has no attestation; use a profile with allow_unattested_keys = true"
    )]
    ProfileRequiresAttestation { profile: String },
    #[error(
        "profile {profile} needs an email address for the subject; add an rfc822Name subjectAltName to the request"
    )]
    ProfileRequiresEmail { profile: String },
    #[error(
        "profile {profile} certifies people: name the person (person_external_id), whose directory names the certificate then carries; a certificate with names from the CSR and bound to nobody needs a profile with subject_from_csr = true, such as service-client"
    )]
    ProfileRequiresPerson { profile: String },
    #[error(
        "the CSR's {kind} {name:?} is not allowed by profile {profile} (allowed_names: {allowed})"
    )]
    NameNotAllowed {
        profile: String,
        kind: &'static str,
        name: String,
        allowed: String,
    },
    #[error(
        "profile {profile} needs the person's user principal name (UPN); set it in the directory"
    )]
    ProfileRequiresUpn { profile: String },
    #[error(
        "profile {profile} binds the certificate to a hardware token and no token serial was given"
    )]
    ProfileRequiresHardwareModule { profile: String },
    #[error(
        "profile {profile} makes API client (operator) certificates, which only the operator CA issues; issue them with `tessera admin issue-client-cert` (after `tessera ca init-operators`)"
    )]
    ProfileNeedsOperatorCa { profile: String },
    #[error(
        "the operator CA issues only the operator-client profile, not {profile}; people's and tokens' certificates come from the issuing CA"
    )]
    ProfileNotForOperatorCa { profile: String },
    #[error(
        "no operator CA in {dir} (operator-ca.toml not found); run `tessera ca init-operators` first"
    )]
    NoOperatorCa { dir: PathBuf },
    #[error("an operator CA already exists ({path} is present); refusing to overwrite it")]
    OperatorCaExists { path: PathBuf },
    #[error("subject is invalid: {0}")]
    SubjectInvalid(String),
    #[error("CSR cannot be read: {0}; give a PKCS#10 request in PEM or DER")]
    CsrUnreadable(String),
    #[error(
        "CSR signature does not verify: the request was altered or not signed by its own key; make a new CSR"
    )]
    CsrSignatureInvalid,
    #[error("CSR subject has no commonName; make the request with a CN")]
    CsrWithoutCommonName,
    /// The CSR carries YubiKey attestation material that cannot be used as it stands.
    #[error("CSR attestation is incomplete or ambiguous: {0}")]
    CsrAttestationMalformed(String),
    /// A name in the CSR is longer than [`csr::NAME_LIMITS`] allows.
    #[error("CSR {0}")]
    CsrNameTooLong(String),
    /// The CSR carries more names of one kind than [`csr::NAME_LIMITS`] allows.
    #[error("CSR {0}")]
    CsrTooManyNames(String),
    #[error(
        "unsupported key algorithm {0}; Tessera certifies EC P-256, EC P-384 and RSA 2048/3072/4096 keys"
    )]
    UnsupportedKeyAlgorithm(String),
    #[error("public key cannot be read: {0}")]
    PublicKeyUnreadable(String),
    #[error("{0}")]
    HsmPublicKey(String),
    #[error("the operating system's random generator failed: {0}")]
    Entropy(String),
    #[error("building the certificate failed: {0}")]
    CertificateEncoding(String),
    #[error("the CA certificate cannot be read: {0}")]
    CaCertificateUnreadable(String),
    #[error(
        "the HSM key {key_uri} does not match the issuing CA certificate; check issuing_key in ca.toml"
    )]
    CaKeyMismatch { key_uri: String },
    #[error("the issuing CA certificate has expired; run a new CA ceremony")]
    IssuingCaExpired,
    #[error(
        "a CA already exists ({path} is present); refusing to overwrite it, use another --data-dir"
    )]
    CaExists { path: PathBuf },
    #[error(
        "no CA in {dir} (ca.toml not found); run `tessera ca init` first or point --data-dir at the CA"
    )]
    NoCa { dir: PathBuf },
    #[error("{path} is invalid: {reason}")]
    CaRecordInvalid { path: PathBuf, reason: String },
    #[error("the certificate was not signed: recording it before signing failed: {0}")]
    RecordBeforeSigning(String),
    #[error("building a CRL or OCSP response failed: {0}")]
    RevocationEncoding(String),
    #[error(
        "the HSM key {key_uri} does not match the OCSP responder certificate; run `tessera ca init-ocsp --replace`"
    )]
    OcspKeyMismatch { key_uri: String },
    #[error(
        "the OCSP responder certificate was not issued by this issuing CA; run `tessera ca init-ocsp --replace`"
    )]
    OcspResponderForeign,
    #[error("ca init: {0}")]
    InitParameter(String),
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}
