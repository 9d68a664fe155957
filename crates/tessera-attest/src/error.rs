//! Why an attestation was refused. Each variant has a stable reason code (`code()`), used in the
//! CLI's JSON, in logs and by the enrollment server when it tells the station why.

use std::fmt;

/// Which certificate of the input an error is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateRole {
    /// The slot's attestation certificate (answer to the ATTEST instruction).
    Slot,
    /// The device's attestation certificate (PIV object 5FFF01, key F9).
    Device,
    /// A further intermediate given by the caller (0-based position).
    Intermediate(usize),
    /// A configured trust anchor or bundled intermediate, named by its source.
    Trusted(String),
}

impl fmt::Display for CertificateRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertificateRole::Slot => f.write_str("slot attestation certificate"),
            CertificateRole::Device => f.write_str("device attestation certificate (5FFF01)"),
            CertificateRole::Intermediate(n) => write!(f, "intermediate certificate #{}", n + 1),
            CertificateRole::Trusted(source) => write!(f, "trusted certificate {source}"),
        }
    }
}

/// Yubico attestation extensions the verifier requires on the slot certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum YubicoExtension {
    /// 1.3.6.1.4.1.41482.3.3
    Firmware,
    /// 1.3.6.1.4.1.41482.3.7
    Serial,
    /// 1.3.6.1.4.1.41482.3.8
    Policy,
    /// 1.3.6.1.4.1.41482.3.9
    FormFactor,
}

impl YubicoExtension {
    /// The extension's OID in dotted form.
    pub fn oid(self) -> &'static str {
        match self {
            YubicoExtension::Firmware => "1.3.6.1.4.1.41482.3.3",
            YubicoExtension::Serial => "1.3.6.1.4.1.41482.3.7",
            YubicoExtension::Policy => "1.3.6.1.4.1.41482.3.8",
            YubicoExtension::FormFactor => "1.3.6.1.4.1.41482.3.9",
        }
    }
    fn name(self) -> &'static str {
        match self {
            YubicoExtension::Firmware => "firmware",
            YubicoExtension::Serial => "serial",
            YubicoExtension::Policy => "policy",
            YubicoExtension::FormFactor => "form factor",
        }
    }
}

impl fmt::Display for YubicoExtension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} extension {}", self.name(), self.oid())
    }
}

/// Everything that makes an attestation unusable. Input errors (`is_input_error`) mean the bytes
/// could not be read as certificates at all; the others mean they were read and refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestError {
    #[error("{role}: the input is empty; give the certificate as PEM or DER")]
    EmptyInput { role: CertificateRole },

    #[error(
        "{role}: {size} bytes is more than the {limit}-byte limit for certificate input; \
         give the attestation certificate itself, not an archive or a log"
    )]
    InputTooLarge {
        role: CertificateRole,
        size: usize,
        limit: usize,
    },

    #[error(
        "{role}: invalid PEM ({detail}); give one or more -----BEGIN CERTIFICATE----- blocks or DER"
    )]
    InvalidPem {
        role: CertificateRole,
        detail: String,
    },

    #[error(
        "{role}: not a DER X.509 certificate ({detail}); is the file truncated or of another kind?"
    )]
    MalformedCertificate {
        role: CertificateRole,
        detail: String,
    },

    #[error("{count} further intermediate certificates given; at most {limit} are accepted")]
    TooManyIntermediates { count: usize, limit: usize },

    #[error("{role}: expected exactly one certificate, found {found}")]
    CertificateCount { role: CertificateRole, found: usize },

    #[error(
        "{role}: critical extension {oid} is not understood by Tessera; refusing the certificate"
    )]
    UnsupportedCriticalExtension { role: CertificateRole, oid: String },

    #[error("{role}: extension {oid} appears more than once")]
    DuplicateExtension { role: CertificateRole, oid: String },

    #[error("slot attestation certificate has no {extension}; it cannot be bound to a token")]
    MissingExtension { extension: YubicoExtension },

    #[error("{role}: malformed {extension}: {detail}")]
    MalformedExtension {
        role: CertificateRole,
        extension: YubicoExtension,
        detail: String,
    },

    #[error(
        "slot attestation certificate subject {subject:?} does not name a PIV key slot (expected \"YubiKey PIV Attestation 9a\" style)"
    )]
    UnknownSlot { subject: String },

    #[error("slot attestation certificate carries an unsupported public key: {detail}")]
    UnsupportedKeyAlgorithm { detail: String },

    #[error(
        "{role}: signature algorithm {oid} is not supported (RSA PKCS#1 v1.5 with SHA-256/384/512, ECDSA P-256/P-384 with SHA-256/384/512)"
    )]
    UnsupportedSignatureAlgorithm { role: CertificateRole, oid: String },

    #[error("{role}: the signature algorithm inside the signed part differs from the outer one")]
    SignatureAlgorithmMismatch { role: CertificateRole },

    #[error(
        "slot attestation certificate is not signed by the given device certificate: the two come \
         from different tokens, or the slot certificate was altered or re-signed"
    )]
    SlotSignatureInvalid,

    #[error(
        "{role}: signature does not verify under issuer {issuer:?}; the certificate was altered or forged"
    )]
    ChainSignatureInvalid {
        role: CertificateRole,
        issuer: String,
    },

    #[error(
        "{role}: names issuer {issuer:?} but is signed by {signer_subject:?}; RFC 5280 name \
         chaining fails, so the chain is refused"
    )]
    IssuerNameMismatch {
        role: CertificateRole,
        issuer: String,
        signer_subject: String,
    },

    #[error(
        "{role}: used as an issuer but its basicConstraints or keyUsage forbid signing certificates"
    )]
    IssuerNotCa { role: CertificateRole },

    #[error(
        "{role}: issuer {issuer:?} is neither a configured trust anchor nor a known intermediate; \
         add the root with --roots (or TrustAnchors) if it should be trusted"
    )]
    UnknownRoot {
        role: CertificateRole,
        issuer: String,
    },

    #[error("more than {limit} intermediates between the device certificate and the root")]
    ChainTooLong { limit: usize },

    #[error("attested serial {found} is not the expected serial {expected}")]
    SerialMismatch { expected: u32, found: u32 },

    #[error(
        "the attested public key (SHA-256 {attested_sha256}) is not the presented key (SHA-256 {presented_sha256})"
    )]
    PublicKeyMismatch {
        attested_sha256: String,
        presented_sha256: String,
    },

    #[error("presented public key is not a valid SubjectPublicKeyInfo: {detail}")]
    MalformedPresentedKey { detail: String },

    #[error(
        "bundled trust certificate {name} has SHA-256 {actual}, pinned {expected}; the build is corrupt"
    )]
    TrustBundlePinMismatch {
        name: String,
        expected: String,
        actual: String,
    },

    #[error("no trust anchors configured; give at least one root")]
    NoTrustAnchors,
}

impl AttestError {
    /// Every code [`AttestError::code`] returns (docs/attestation.md lists the same; a test
    /// compares the two and scans `code` for codes missing here).
    pub const CODES: &'static [&'static str] = &[
        "input-empty",
        "input-too-large",
        "input-pem-invalid",
        "input-malformed",
        "input-certificate-count",
        "input-too-many-certificates",
        "unsupported-critical-extension",
        "duplicate-extension",
        "missing-firmware-extension",
        "missing-serial-extension",
        "missing-policy-extension",
        "missing-form-factor-extension",
        "malformed-extension",
        "unknown-slot",
        "unsupported-key-algorithm",
        "unsupported-signature-algorithm",
        "signature-algorithm-mismatch",
        "slot-signature-invalid",
        "chain-signature-invalid",
        "issuer-name-mismatch",
        "issuer-not-ca",
        "unknown-root",
        "chain-too-long",
        "serial-mismatch",
        "public-key-mismatch",
        "presented-key-malformed",
        "trust-bundle-pin-mismatch",
        "no-trust-anchors",
    ];

    /// Stable reason code (kebab-case). Documented in docs/attestation.md; never renamed.
    pub fn code(&self) -> &'static str {
        match self {
            AttestError::EmptyInput { .. } => "input-empty",
            AttestError::InputTooLarge { .. } => "input-too-large",
            AttestError::InvalidPem { .. } => "input-pem-invalid",
            AttestError::MalformedCertificate { .. } => "input-malformed",
            AttestError::CertificateCount { .. } => "input-certificate-count",
            AttestError::TooManyIntermediates { .. } => "input-too-many-certificates",
            AttestError::UnsupportedCriticalExtension { .. } => "unsupported-critical-extension",
            AttestError::DuplicateExtension { .. } => "duplicate-extension",
            AttestError::MissingExtension { extension } => match extension {
                YubicoExtension::Firmware => "missing-firmware-extension",
                YubicoExtension::Serial => "missing-serial-extension",
                YubicoExtension::Policy => "missing-policy-extension",
                YubicoExtension::FormFactor => "missing-form-factor-extension",
            },
            AttestError::MalformedExtension { .. } => "malformed-extension",
            AttestError::UnknownSlot { .. } => "unknown-slot",
            AttestError::UnsupportedKeyAlgorithm { .. } => "unsupported-key-algorithm",
            AttestError::UnsupportedSignatureAlgorithm { .. } => "unsupported-signature-algorithm",
            AttestError::SignatureAlgorithmMismatch { .. } => "signature-algorithm-mismatch",
            AttestError::SlotSignatureInvalid => "slot-signature-invalid",
            AttestError::ChainSignatureInvalid { .. } => "chain-signature-invalid",
            AttestError::IssuerNameMismatch { .. } => "issuer-name-mismatch",
            AttestError::IssuerNotCa { .. } => "issuer-not-ca",
            AttestError::UnknownRoot { .. } => "unknown-root",
            AttestError::ChainTooLong { .. } => "chain-too-long",
            AttestError::SerialMismatch { .. } => "serial-mismatch",
            AttestError::PublicKeyMismatch { .. } => "public-key-mismatch",
            AttestError::MalformedPresentedKey { .. } => "presented-key-malformed",
            AttestError::TrustBundlePinMismatch { .. } => "trust-bundle-pin-mismatch",
            AttestError::NoTrustAnchors => "no-trust-anchors",
        }
    }

    /// True when the bytes could not be read as certificates at all (CLI exit code 2), as
    /// opposed to certificates that were read and refused.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            AttestError::EmptyInput { .. }
                | AttestError::InputTooLarge { .. }
                | AttestError::InvalidPem { .. }
                | AttestError::MalformedCertificate { .. }
                | AttestError::CertificateCount { .. }
                | AttestError::TooManyIntermediates { .. }
                | AttestError::MalformedPresentedKey { .. }
                | AttestError::TrustBundlePinMismatch { .. }
                | AttestError::NoTrustAnchors
        )
    }
}
