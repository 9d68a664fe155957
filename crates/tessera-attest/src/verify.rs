//! Verifying an attestation: parse, check each signature link up to a trust anchor, read the
//! facts. The only way to get a [`VerifiedAttestation`].

use std::collections::HashSet;

use const_oid::ObjectIdentifier;
use der::{Decode, Encode};
use sha2::{Digest, Sha256};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};

use super::certificate::{ParsedCertificate, decode_certificates, decode_one_certificate};
use super::error::{AttestError, CertificateRole};
use super::facts::{
    self, FirmwareVersion, FormFactor, KeyAlgorithm, OID_CSPN, OID_FIPS, PinPolicy, Slot,
    TouchPolicy,
};
use super::signature::{LinkCheck, check_signature_algorithm, verify_link};
use super::trust::TrustAnchors;

/// Most further intermediates a caller may give (bounds the work of path building).
pub const MAX_GIVEN_INTERMEDIATES: usize = 8;

/// Most intermediates accepted between the device certificate and the root (Yubico's new PKI
/// uses three).
pub const MAX_CHAIN_ABOVE_DEVICE: usize = 6;

const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const OID_SUBJECT_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
const OID_AUTHORITY_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");
const YUBICO_ATTESTATION_ARC: &str = "1.3.6.1.4.1.41482.3.";

/// What the caller has: the bytes as received from the token (PEM or DER each).
#[derive(Clone, Debug, Default)]
pub struct AttestationInput {
    /// The slot's attestation certificate.
    pub slot_certificate: Vec<u8>,
    /// The device attestation certificate (object 5FFF01).
    pub device_certificate: Vec<u8>,
    /// Further intermediates, each PEM (one or more blocks) or one DER certificate. Yubico's
    /// published intermediates are in the trust bundle and need not be given.
    pub intermediates: Vec<Vec<u8>>,
    /// The serial the token reported; a different attested serial is refused.
    pub expected_serial: Option<u32>,
}

impl AttestationInput {
    pub fn new(
        slot_certificate: impl Into<Vec<u8>>,
        device_certificate: impl Into<Vec<u8>>,
    ) -> Self {
        AttestationInput {
            slot_certificate: slot_certificate.into(),
            device_certificate: device_certificate.into(),
            intermediates: Vec::new(),
            expected_serial: None,
        }
    }
    pub fn with_intermediate(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.intermediates.push(bytes.into());
        self
    }
    pub fn expecting_serial(mut self, serial: u32) -> Self {
        self.expected_serial = Some(serial);
        self
    }
}

/// The facts of a [`VerifiedAttestation`] as plain data, for storing with an enrollment or
/// printing. Having one proves nothing; only a `VerifiedAttestation` does. Stored facts are read
/// back (serde) to re-check a fleet against a new policy ([`crate::Policy::evaluate_facts`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttestationFacts {
    /// `None` when the slot certificate has no serial extension (firmware 4.3.x); the policy
    /// always refuses such an attestation (`serial-missing`).
    pub serial: Option<u32>,
    pub firmware: FirmwareVersion,
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
    pub form_factor: FormFactor,
    /// Raw form-factor byte as "0x83", when present.
    pub form_factor_code: Option<String>,
    pub fips: bool,
    pub cspn: bool,
    pub slot: Slot,
    pub key_algorithm: KeyAlgorithm,
    /// Hex SHA-256 of the attested SubjectPublicKeyInfo DER.
    pub public_key_sha256: String,
    pub trust_anchor: String,
    pub chain: Vec<String>,
}

/// An attestation whose chain verified up to a trust anchor, with the facts it states.
/// Only [`verify`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedAttestation {
    serial: Option<u32>,
    firmware: FirmwareVersion,
    pin_policy: PinPolicy,
    touch_policy: TouchPolicy,
    form_factor_code: Option<u8>,
    fips: bool,
    cspn: bool,
    slot: Slot,
    key_algorithm: KeyAlgorithm,
    public_key_spki_der: Vec<u8>,
    public_key_sha256: [u8; 32],
    chain_subjects: Vec<String>,
}

impl VerifiedAttestation {
    /// Token serial, from the slot certificate (never the device certificate: one device
    /// certificate is shared by a production batch). `None` for firmware 4.3.x, which writes no
    /// serial extension; [`crate::Policy`] refuses such an attestation (`serial-missing`).
    pub fn serial(&self) -> Option<u32> {
        self.serial
    }
    pub fn firmware(&self) -> FirmwareVersion {
        self.firmware
    }
    pub fn pin_policy(&self) -> PinPolicy {
        self.pin_policy
    }
    pub fn touch_policy(&self) -> TouchPolicy {
        self.touch_policy
    }
    pub fn form_factor(&self) -> FormFactor {
        self.form_factor_code
            .map_or(FormFactor::Unspecified, FormFactor::from_code)
    }
    /// The raw form-factor byte (.3.9), when present; 0x80 marks a FIPS model.
    pub fn form_factor_code(&self) -> Option<u8> {
        self.form_factor_code
    }
    /// The device certificate carries extension .3.10 (FIPS-validated model).
    pub fn fips(&self) -> bool {
        self.fips
    }
    /// The device certificate carries extension .3.11 (CSPN-certified model).
    pub fn cspn(&self) -> bool {
        self.cspn
    }
    pub fn slot(&self) -> Slot {
        self.slot
    }
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.key_algorithm
    }
    /// The attested public key, SubjectPublicKeyInfo DER as in the slot certificate.
    pub fn public_key_spki_der(&self) -> &[u8] {
        &self.public_key_spki_der
    }
    /// SHA-256 of [`Self::public_key_spki_der`].
    pub fn public_key_sha256(&self) -> [u8; 32] {
        self.public_key_sha256
    }
    pub fn public_key_sha256_hex(&self) -> String {
        hex::encode(self.public_key_sha256)
    }
    /// Subjects from the slot certificate up to the trust anchor (RFC 4514 strings).
    pub fn chain_subjects(&self) -> &[String] {
        &self.chain_subjects
    }
    /// The trust anchor the chain ended at.
    pub fn anchor_subject(&self) -> &str {
        self.chain_subjects
            .last()
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// The facts as plain, serializable data.
    pub fn facts(&self) -> AttestationFacts {
        AttestationFacts {
            serial: self.serial,
            firmware: self.firmware,
            pin_policy: self.pin_policy,
            touch_policy: self.touch_policy,
            form_factor: self.form_factor(),
            form_factor_code: self.form_factor_code.map(|c| format!("0x{c:02x}")),
            fips: self.fips,
            cspn: self.cspn,
            slot: self.slot,
            key_algorithm: self.key_algorithm,
            public_key_sha256: self.public_key_sha256_hex(),
            trust_anchor: self.anchor_subject().to_string(),
            chain: self.chain_subjects.clone(),
        }
    }

    /// Does the presented public key (SubjectPublicKeyInfo DER, e.g. from a CSR or from the
    /// key that signed the enrollment nonce) equal the attested one? EC points compare equal
    /// whether compressed or not.
    pub fn require_public_key(&self, presented_spki_der: &[u8]) -> Result<(), AttestError> {
        let presented = SubjectPublicKeyInfoOwned::from_der(presented_spki_der).map_err(|e| {
            AttestError::MalformedPresentedKey {
                detail: e.to_string(),
            }
        })?;
        let attested =
            SubjectPublicKeyInfoOwned::from_der(&self.public_key_spki_der).map_err(|e| {
                AttestError::MalformedPresentedKey {
                    detail: e.to_string(),
                }
            })?;
        let presented_canonical = facts::canonical_public_key(&presented)
            .map_err(|detail| AttestError::MalformedPresentedKey { detail })?;
        let attested_canonical = facts::canonical_public_key(&attested)
            .map_err(|detail| AttestError::MalformedPresentedKey { detail })?;
        if presented_canonical == attested_canonical {
            Ok(())
        } else {
            Err(AttestError::PublicKeyMismatch {
                attested_sha256: self.public_key_sha256_hex(),
                presented_sha256: hex::encode(Sha256::digest(presented_spki_der)),
            })
        }
    }
}

/// Verifies a slot attestation: the slot certificate is signed by the device certificate,
/// which chains by signatures to one of `trust`'s anchors (through given or bundled
/// intermediates); no certificate in the path has a critical extension we do not understand;
/// the slot certificate carries firmware, serial and policy; the serial is the expected one.
pub fn verify(
    input: &AttestationInput,
    trust: &TrustAnchors,
) -> Result<VerifiedAttestation, AttestError> {
    let slot = decode_one_certificate(&input.slot_certificate, &CertificateRole::Slot)?;
    let device = decode_one_certificate(&input.device_certificate, &CertificateRole::Device)?;
    let mut given = Vec::new();
    for (n, bytes) in input.intermediates.iter().enumerate() {
        let role = CertificateRole::Intermediate(n);
        for certificate in decode_certificates(bytes, &role)? {
            given.push((role.clone(), certificate));
        }
    }
    if given.len() > MAX_GIVEN_INTERMEDIATES {
        return Err(AttestError::TooManyIntermediates {
            count: given.len(),
            limit: MAX_GIVEN_INTERMEDIATES,
        });
    }

    check_certificate(&slot, &CertificateRole::Slot)?;
    check_certificate(&device, &CertificateRole::Device)?;

    // Link 1: the slot certificate must be signed by this very device certificate.
    check_issuer_may_sign(&device, &CertificateRole::Device)?;
    if verify_link(&slot, &device) != LinkCheck::Signed {
        return Err(AttestError::SlotSignatureInvalid);
    }
    check_name_chains(&slot, &CertificateRole::Slot, &device)?;

    let mut chain_subjects = vec![slot.subject_string(), device.subject_string()];
    let anchor = walk_to_anchor(&device, &given, trust, &mut chain_subjects)?;
    chain_subjects.push(anchor);

    let facts = facts::read_slot_facts(&slot)?;
    // Without an attested serial there is nothing to compare; the policy refuses the
    // attestation for that (`serial-missing`).
    if let (Some(expected), Some(found)) = (input.expected_serial, facts.serial)
        && expected != found
    {
        return Err(AttestError::SerialMismatch { expected, found });
    }
    let spki_der = slot
        .certificate
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| AttestError::MalformedCertificate {
            role: CertificateRole::Slot,
            detail: e.to_string(),
        })?;
    let public_key_sha256: [u8; 32] = Sha256::digest(&spki_der).into();
    Ok(VerifiedAttestation {
        serial: facts.serial,
        firmware: facts.firmware,
        pin_policy: facts.pin_policy,
        touch_policy: facts.touch_policy,
        form_factor_code: facts.form_factor_code,
        fips: facts::has_extension(&device, OID_FIPS),
        cspn: facts::has_extension(&device, OID_CSPN),
        slot: facts.slot,
        key_algorithm: facts.key_algorithm,
        public_key_spki_der: spki_der,
        public_key_sha256,
        chain_subjects,
    })
}

/// From the device certificate up: at each step find a certificate whose key verifies the
/// current one's signature; stop at a trust anchor. Returns the anchor's subject.
fn walk_to_anchor(
    device: &ParsedCertificate,
    given: &[(CertificateRole, ParsedCertificate)],
    trust: &TrustAnchors,
    chain_subjects: &mut Vec<String>,
) -> Result<String, AttestError> {
    // Candidate issuers above the device: caller's intermediates, then bundled ones.
    let mut candidates: Vec<(CertificateRole, &ParsedCertificate)> =
        given.iter().map(|(role, c)| (role.clone(), c)).collect();
    candidates.extend(
        trust
            .intermediates
            .iter()
            .map(|t| (t.role(), &t.certificate)),
    );

    let mut current: (CertificateRole, &ParsedCertificate) = (CertificateRole::Device, device);
    let mut used: HashSet<Vec<u8>> = HashSet::new();
    used.insert(device.der.clone());
    for _ in 0..=MAX_CHAIN_ABOVE_DEVICE {
        let (role, cert) = (&current.0, current.1);
        // A configured anchor may be the very certificate (e.g. a pinned test device cert).
        if let Some(anchor) = trust.anchors.iter().find(|a| a.certificate.der == cert.der) {
            return Ok(anchor.certificate.subject_string());
        }
        let issuer_name = cert.certificate.tbs_certificate().issuer();
        let mut name_matched = false;
        // Anchors first: trust is by key, the name only orders the search.
        let mut anchors: Vec<_> = trust.anchors.iter().collect();
        anchors
            .sort_by_key(|a| a.certificate.certificate.tbs_certificate().subject() != issuer_name);
        for anchor in anchors {
            name_matched |=
                anchor.certificate.certificate.tbs_certificate().subject() == issuer_name;
            if verify_link(cert, &anchor.certificate) == LinkCheck::Signed {
                check_name_chains(cert, role, &anchor.certificate)?;
                return Ok(anchor.certificate.subject_string());
            }
        }
        let mut next = None;
        let mut ordered: Vec<&(CertificateRole, &ParsedCertificate)> = candidates
            .iter()
            .filter(|(_, c)| !used.contains(&c.der))
            .collect();
        ordered.sort_by_key(|(_, c)| c.certificate.tbs_certificate().subject() != issuer_name);
        for candidate in ordered {
            name_matched |= candidate.1.certificate.tbs_certificate().subject() == issuer_name;
            if verify_link(cert, candidate.1) == LinkCheck::Signed {
                next = Some(candidate.clone());
                break;
            }
        }
        if let Some((_, issuer)) = &next {
            check_name_chains(cert, role, issuer)?;
        }
        let Some(next) = next else {
            return Err(if name_matched {
                AttestError::ChainSignatureInvalid {
                    role: role.clone(),
                    issuer: cert.issuer_string(),
                }
            } else {
                AttestError::UnknownRoot {
                    role: role.clone(),
                    issuer: cert.issuer_string(),
                }
            });
        };
        check_certificate(next.1, &next.0)?;
        check_issuer_may_sign(next.1, &next.0)?;
        used.insert(next.1.der.clone());
        chain_subjects.push(next.1.subject_string());
        current = next;
    }
    Err(AttestError::ChainTooLong {
        limit: MAX_CHAIN_ABOVE_DEVICE,
    })
}

/// RFC 5280 name chaining: a certificate's issuer name must be its signer's subject. Every real
/// Yubico chain (firmware 4.3 to 5.7, old and new PKI) chains names exactly, so no quirk is
/// tolerated. Names are equal when their DER is, or when their RFC 4514 forms are equal ignoring
/// ASCII case (RFC 5280 section 7.1 compares PrintableString and UTF8String values that way).
fn check_name_chains(
    cert: &ParsedCertificate,
    role: &CertificateRole,
    signer: &ParsedCertificate,
) -> Result<(), AttestError> {
    let issuer = cert.certificate.tbs_certificate().issuer();
    let subject = signer.certificate.tbs_certificate().subject();
    if issuer == subject
        || cert
            .issuer_string()
            .eq_ignore_ascii_case(&signer.subject_string())
    {
        Ok(())
    } else {
        Err(AttestError::IssuerNameMismatch {
            role: role.clone(),
            issuer: cert.issuer_string(),
            signer_subject: signer.subject_string(),
        })
    }
}

/// Per-certificate checks that do not depend on the issuer: signature algorithm fields,
/// no duplicate extensions, no critical extension we do not understand.
fn check_certificate(cert: &ParsedCertificate, role: &CertificateRole) -> Result<(), AttestError> {
    check_signature_algorithm(cert, role)?;
    let extensions = cert
        .certificate
        .tbs_certificate()
        .extensions()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut seen = HashSet::new();
    for extension in extensions {
        if !seen.insert(extension.extn_id) {
            return Err(AttestError::DuplicateExtension {
                role: role.clone(),
                oid: extension.extn_id.to_string(),
            });
        }
        if extension.critical && !understood(extension.extn_id) {
            return Err(AttestError::UnsupportedCriticalExtension {
                role: role.clone(),
                oid: extension.extn_id.to_string(),
            });
        }
    }
    Ok(())
}

/// Extensions whose meaning Tessera applies: basicConstraints and keyUsage (on issuers), the
/// key identifiers (informational) and Yubico's attestation arc.
fn understood(oid: ObjectIdentifier) -> bool {
    oid == OID_BASIC_CONSTRAINTS
        || oid == OID_KEY_USAGE
        || oid == OID_SUBJECT_KEY_ID
        || oid == OID_AUTHORITY_KEY_ID
        || oid.to_string().starts_with(YUBICO_ATTESTATION_ARC)
}

/// An issuer may lack basicConstraints and keyUsage (device certificates of some firmware),
/// but if it has them they must allow signing certificates. pathLenConstraint is not applied.
fn check_issuer_may_sign(
    cert: &ParsedCertificate,
    role: &CertificateRole,
) -> Result<(), AttestError> {
    let tbs = cert.certificate.tbs_certificate();
    let not_ca = || AttestError::IssuerNotCa { role: role.clone() };
    match tbs.get_extension::<BasicConstraints>() {
        Ok(Some((_, bc))) if !bc.ca => return Err(not_ca()),
        Ok(_) => {}
        Err(e) => {
            return Err(AttestError::MalformedCertificate {
                role: role.clone(),
                detail: format!("basicConstraints: {e}"),
            });
        }
    }
    match tbs.get_extension::<KeyUsage>() {
        Ok(Some((_, ku))) if !ku.key_cert_sign() => Err(not_ca()),
        Ok(_) => Ok(()),
        Err(e) => Err(AttestError::MalformedCertificate {
            role: role.clone(),
            detail: format!("keyUsage: {e}"),
        }),
    }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
pub(crate) mod tests;
