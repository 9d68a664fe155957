//! Issuance in two phases (Boulder's `Prepare`/`Issue`): subject names + the subject's public
//! key + a profile + a serial chosen by the caller → [`IssuingCa::prepare`] → a
//! [`PreparedCertificate`] holding the exact tbsCertificate DER; the caller records it, signs
//! those bytes with [`IssuingCa::signer`], and [`PreparedCertificate::assemble`]s the
//! certificate. `ca` itself neither stores nor waits: the server's order (reserve, sign,
//! record) lives in `lifecycle::issuance`.

use super::CaError;
use super::der_encoding;
use super::policy_oid::{self, CERTIFICATE_POLICIES_EXTENSION};
use super::profile::Profile;
use super::serial::SerialNumber;
use super::signing::{self, EncodeOnlyKey};
use super::subject_key::SubjectPublicKey;
use crate::hsm::{SignatureScheme, Signer};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, Issuer, PublicKeyData,
    SanType,
};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;

/// Who the certificate is for. The server fills this from the directory; `ca sign-csr` from the
/// request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectParams {
    pub common_name: String,
    pub organization: Option<String>,
    pub emails: Vec<String>,
    pub dns_names: Vec<String>,
    /// uniformResourceIdentifier SANs (the server's API client certificates carry their role
    /// as `tessera:role:<role>`).
    pub uris: Vec<String>,
    /// Microsoft user principal name (otherName 1.3.6.1.4.1.311.20.2.3 SAN); included when
    /// the profile says `include_upn`.
    pub upn: Option<String>,
    /// The hardware token holding the key (RFC 4108 HardwareModuleName otherName SAN);
    /// included when the profile says `bind_hardware_module`.
    pub hardware_module: Option<HardwareModule>,
    /// Windows security identifier ("S-1-5-21-…") for the KB5014754 SID extension; included
    /// when the profile says `windows_sid_extension`.
    pub windows_sid: Option<String>,
}

/// A hardware token, named as RFC 4108 HardwareModuleName: the kind of module (an OID) and its
/// serial number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HardwareModule {
    /// Dotted OID of the module type.
    pub hw_type: String,
    /// The serial as printed on the token (decimal for a YubiKey), as octets.
    pub serial: String,
}

impl HardwareModule {
    /// A YubiKey: hwType 1.3.6.1.4.1.41482.3 (Yubico's PIV attestation arc, whose .3.7
    /// extension carries the same serial), hwSerialNum the decimal serial in ASCII.
    pub fn yubikey(serial: u32) -> HardwareModule {
        HardwareModule {
            hw_type: YUBIKEY_HW_TYPE.to_string(),
            serial: serial.to_string(),
        }
    }
}

/// hwType of a YubiKey in HardwareModuleName.
pub const YUBIKEY_HW_TYPE: &str = "1.3.6.1.4.1.41482.3";
/// id-on-hardwareModuleName (RFC 4108).
pub const HARDWARE_MODULE_NAME_OID: &str = "1.3.6.1.5.5.7.8.4";
/// szOID_NT_PRINCIPAL_NAME: the UPN otherName.
pub const UPN_OID: &str = "1.3.6.1.4.1.311.20.2.3";
/// szOID_NTDS_CA_SECURITY_EXT (KB5014754) and its SID otherName.
pub const NTDS_CA_SECURITY_EXT: &[u64] = &[1, 3, 6, 1, 4, 1, 311, 25, 2];
pub const NTDS_OBJECTSID_OID: &str = "1.3.6.1.4.1.311.25.2.1";
const SUBJECT_ALT_NAME_EXTENSION: &[u64] = &[2, 5, 29, 17];

impl SubjectParams {
    pub fn new(common_name: impl Into<String>) -> SubjectParams {
        SubjectParams {
            common_name: common_name.into(),
            organization: None,
            emails: Vec::new(),
            dns_names: Vec::new(),
            uris: Vec::new(),
            upn: None,
            hardware_module: None,
            windows_sid: None,
        }
    }
}

/// Where the subject key came from; decides whether a profile may certify it, and which
/// provenance policy OID the certificate carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyProvenance {
    /// Generated on a hardware token whose attestation was verified (by `attest`).
    HardwareAttested,
    /// No attestation: a plain CSR. Only profiles with `allow_unattested_keys = true` accept it.
    Unattested,
}

/// Everything one issuance needs. The serial is chosen (and, in the server, reserved in the
/// store) before the HSM signs. So is the time: `ca` has no clock of its own.
#[derive(Clone, Debug)]
pub struct IssuanceRequest<'a> {
    pub subject: &'a SubjectParams,
    /// SubjectPublicKeyInfo, DER.
    pub public_key_der: &'a [u8],
    pub profile: &'a Profile,
    pub serial: &'a SerialNumber,
    pub provenance: KeyProvenance,
    /// The time of issuance: notBefore (its fraction of a second dropped), and where the
    /// profile's validity starts. The server takes it from the store's clock, the CLI from the
    /// system clock.
    pub now: OffsetDateTime,
}

/// A signed certificate.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    pub der: Vec<u8>,
    pub serial: SerialNumber,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl IssuedCertificate {
    pub fn to_pem(&self) -> String {
        certificate_pem(&self.der)
    }
}

/// PEM ("CERTIFICATE") of a DER certificate, LF line endings.
pub fn certificate_pem(der: &[u8]) -> String {
    der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der)
        .expect("PEM encoding of an in-memory buffer cannot fail")
}

/// A certificate ready to be signed: its serial, validity and the exact tbsCertificate DER the
/// issuing key will sign. Only [`IssuingCa::prepare`] makes one; the caller records it (the
/// server stores serial and bytes before anything is signed), has the issuing CA's
/// [`Signer`] sign [`PreparedCertificate::to_be_signed`], and then
/// [`PreparedCertificate::assemble`]s the certificate from these same bytes.
#[derive(Clone, Debug)]
pub struct PreparedCertificate {
    serial: SerialNumber,
    to_be_signed: Vec<u8>,
    scheme: SignatureScheme,
    signature_algorithm: &'static [u8],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl PreparedCertificate {
    pub fn serial(&self) -> &SerialNumber {
        &self.serial
    }

    /// The tbsCertificate, DER: exactly what the signature covers and the certificate holds.
    pub fn to_be_signed(&self) -> &[u8] {
        &self.to_be_signed
    }

    /// The scheme the issuing key signs with (named in the tbsCertificate).
    pub fn signature_scheme(&self) -> SignatureScheme {
        self.scheme
    }

    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }, with the
    /// prepared bytes as they are and `signature` from the issuing CA's signer.
    pub fn assemble(self, signature: &[u8]) -> Result<IssuedCertificate, CaError> {
        Ok(IssuedCertificate {
            der: signing::assemble(&self.to_be_signed, self.signature_algorithm, signature)?,
            serial: self.serial,
            not_before: self.not_before,
            not_after: self.not_after,
        })
    }
}

/// The issuing CA: its certificate and its key (a [`Signer`], the HSM in production). Built
/// once, then shared by every issuance (Send + Sync). It never signs on its own initiative:
/// [`IssuingCa::prepare`] only encodes; the caller signs with [`IssuingCa::signer`].
pub struct IssuingCa {
    certificate_der: Vec<u8>,
    not_after: OffsetDateTime,
    signer: Arc<dyn Signer>,
    issuer: Issuer<'static, EncodeOnlyKey>,
    /// The operator CA (API client certificates only) rather than the issuing CA of people's
    /// and tokens' certificates.
    operators: bool,
}

impl IssuingCa {
    /// `certificate_der` must be the certificate of `key`; a mismatch is refused (it would make
    /// every issued certificate unverifiable).
    pub fn new(certificate_der: Vec<u8>, key: impl Signer + 'static) -> Result<IssuingCa, CaError> {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&certificate_der)
            .map_err(|e| CaError::CaCertificateUnreadable(e.to_string()))?;
        let encode_only = EncodeOnlyKey::of(&key)?;
        if cert
            .tbs_certificate
            .subject_pki
            .subject_public_key
            .data
            .as_ref()
            != encode_only.der_bytes()
        {
            return Err(CaError::CaKeyMismatch {
                key_uri: key.key_id(),
            });
        }
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&certificate_der.clone().into(), encode_only)
            .map_err(|e| CaError::CaCertificateUnreadable(e.to_string()))?;
        Ok(IssuingCa {
            certificate_der,
            not_after,
            signer: Arc::new(key),
            issuer,
            operators: false,
        })
    }

    /// This CA as the operator CA: it issues the `operator-client` profile and nothing else.
    pub fn for_operators(mut self) -> IssuingCa {
        self.operators = true;
        self
    }

    /// Whether this is the operator CA.
    pub fn is_operator_ca(&self) -> bool {
        self.operators
    }

    /// Refuses a profile this CA must not issue: operator certificates (the `operator-client`
    /// profile, or any profile carrying the operator policy OID) come only from the operator
    /// CA, and the operator CA issues nothing else.
    pub fn check_profile(&self, profile: &Profile) -> Result<(), CaError> {
        let operator_profile = profile.name == super::profile::OPERATOR_CLIENT_PROFILE
            || profile
                .certificate_policies
                .iter()
                .any(|p| p == super::policy_oid::OPERATOR_POLICY);
        match (self.operators, operator_profile) {
            (false, true) => Err(CaError::ProfileNeedsOperatorCa {
                profile: profile.name.clone(),
            }),
            (true, false) => Err(CaError::ProfileNotForOperatorCa {
                profile: profile.name.clone(),
            }),
            _ => Ok(()),
        }
    }

    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// The issuing CA's key: what signs [`PreparedCertificate::to_be_signed`] (and CRLs).
    pub fn signer(&self) -> &Arc<dyn Signer> {
        &self.signer
    }

    /// One-shot issuance without recording (`ca sign-csr`, benchmarks, tests): prepare, sign
    /// once with the issuing key (blocking on the HSM), assemble.
    pub fn issue(&self, request: &IssuanceRequest<'_>) -> Result<IssuedCertificate, CaError> {
        let prepared = self.prepare(request)?;
        let signature = self.signer.sign(prepared.to_be_signed())?;
        prepared.assemble(&signature)
    }

    /// Checks the request against its profile and encodes the certificate: serial, validity,
    /// and the exact tbsCertificate the issuing key is to sign. Pure: nothing is signed,
    /// nothing is stored.
    pub fn prepare(&self, request: &IssuanceRequest<'_>) -> Result<PreparedCertificate, CaError> {
        let profile = request.profile;
        self.check_profile(profile)?;
        let public_key = SubjectPublicKey::from_spki_der(request.public_key_der)?;
        let provenance_policy = match request.provenance {
            KeyProvenance::HardwareAttested => profile.attested_key_policy.as_str(),
            KeyProvenance::Unattested => match &profile.unattested_key_policy {
                Some(policy) if profile.allow_unattested_keys => policy.as_str(),
                _ => {
                    return Err(CaError::ProfileRequiresAttestation {
                        profile: profile.name.clone(),
                    });
                }
            },
        };
        let subject = request.subject;
        if subject.common_name.trim().is_empty() {
            return Err(CaError::SubjectInvalid("the common name is empty".into()));
        }
        if profile.require_email && subject.emails.is_empty() {
            return Err(CaError::ProfileRequiresEmail {
                profile: profile.name.clone(),
            });
        }

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(org) = &subject.organization {
            dn.push(DnType::OrganizationName, org.as_str());
        }
        dn.push(DnType::CommonName, subject.common_name.as_str());
        params.distinguished_name = dn;
        if profile.require_upn && subject.upn.as_deref().is_none_or(str::is_empty) {
            return Err(CaError::ProfileRequiresUpn {
                profile: profile.name.clone(),
            });
        }
        let upn = subject.upn.as_ref().filter(|_| profile.include_upn);
        let hardware_module = if profile.bind_hardware_module {
            Some(subject.hardware_module.as_ref().ok_or_else(|| {
                CaError::ProfileRequiresHardwareModule {
                    profile: profile.name.clone(),
                }
            })?)
        } else {
            None
        };
        if upn.is_some() || hardware_module.is_some() {
            // rcgen writes otherName values only as UTF8String; HardwareModuleName is a
            // SEQUENCE, so this subjectAltName is encoded here.
            let san = subject_alt_names_der(subject, upn.map(String::as_str), hardware_module)?;
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    SUBJECT_ALT_NAME_EXTENSION,
                    san,
                ));
        } else {
            for email in &subject.emails {
                let name = email.as_str().try_into().map_err(|_| {
                    CaError::SubjectInvalid(format!("email \"{email}\" is not ASCII"))
                })?;
                params.subject_alt_names.push(SanType::Rfc822Name(name));
            }
            for dns in &subject.dns_names {
                let name = dns.as_str().try_into().map_err(|_| {
                    CaError::SubjectInvalid(format!("DNS name \"{dns}\" is not ASCII"))
                })?;
                params.subject_alt_names.push(SanType::DnsName(name));
            }
            for uri in &subject.uris {
                let name = uri
                    .as_str()
                    .try_into()
                    .map_err(|_| CaError::SubjectInvalid(format!("URI \"{uri}\" is not ASCII")))?;
                params.subject_alt_names.push(SanType::URI(name));
            }
        }

        let now = whole_seconds(request.now);
        let not_after =
            (now + Duration::days(i64::from(profile.validity_days))).min(self.not_after);
        if not_after <= now {
            return Err(CaError::IssuingCaExpired);
        }
        params.not_before = now;
        params.not_after = not_after;
        params.serial_number = Some(request.serial.into());
        // ExplicitNoCa writes basicConstraints (cA false) and the subject key identifier.
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = profile.key_usage.clone();
        params.extended_key_usages = profile.extended_key_usage.clone();

        let mut policies: Vec<&str> = profile
            .certificate_policies
            .iter()
            .map(String::as_str)
            .collect();
        policies.push(provenance_policy);
        let policies_der =
            policy_oid::certificate_policies(&policies).map_err(CaError::CertificateEncoding)?;
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                CERTIFICATE_POLICIES_EXTENSION,
                policies_der,
            ));

        if profile.ocsp_no_check {
            // id-pkix-ocsp-nocheck, value NULL
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5],
                    vec![0x05, 0x00],
                ));
        }

        if profile.windows_sid_extension
            && let Some(sid) = subject.windows_sid.as_deref().filter(|s| !s.is_empty())
        {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    NTDS_CA_SECURITY_EXT,
                    sid_extension_der(sid)?,
                ));
        }

        // rcgen encodes around the issuing key's public half; the placeholder signature it
        // writes is cut away with everything but the tbsCertificate.
        let encoded = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| CaError::CertificateEncoding(e.to_string()))?;
        let to_be_signed = signing::to_be_signed(encoded.der(), self.signer.as_ref())?;
        Ok(PreparedCertificate {
            serial: request.serial.clone(),
            to_be_signed,
            scheme: self.signer.scheme(),
            signature_algorithm: self.signer.algorithm_identifier_der(),
            not_before: now,
            not_after,
        })
    }
}

/// `t` without its fraction of a second: certificate times are whole seconds.
pub(super) fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).expect("0 is a valid nanosecond")
}

/// GeneralNames with the subject's emails, DNS names, URIs, and the UPN and
/// HardwareModuleName otherNames (RFC 5280 4.2.1.6; RFC 4108 5).
fn subject_alt_names_der(
    subject: &SubjectParams,
    upn: Option<&str>,
    hardware_module: Option<&HardwareModule>,
) -> Result<Vec<u8>, CaError> {
    use der_encoding::{sequence, tagged};
    let ascii = |kind: &str, v: &str| {
        if v.is_ascii() && !v.is_empty() {
            Ok(v.as_bytes().to_vec())
        } else {
            Err(CaError::SubjectInvalid(format!(
                "{kind} \"{v}\" is not ASCII"
            )))
        }
    };
    let oid = |dotted: &str| policy_oid::encode(dotted).map_err(CaError::CertificateEncoding);
    let other_name = |type_id: &str, value: Vec<u8>| -> Result<Vec<u8>, CaError> {
        let mut content = oid(type_id)?;
        content.extend(tagged(0xa0, &value));
        Ok(tagged(0xa0, &content))
    };
    let mut names = Vec::new();
    if let Some(upn) = upn {
        if upn.is_empty() || upn.chars().any(char::is_control) {
            return Err(CaError::SubjectInvalid(format!(
                "UPN \"{upn}\" is not valid"
            )));
        }
        names.extend(other_name(UPN_OID, tagged(0x0c, upn.as_bytes()))?);
    }
    for email in &subject.emails {
        names.extend(tagged(0x81, &ascii("email", email)?));
    }
    for dns in &subject.dns_names {
        names.extend(tagged(0x82, &ascii("DNS name", dns)?));
    }
    for uri in &subject.uris {
        names.extend(tagged(0x86, &ascii("URI", uri)?));
    }
    if let Some(hw) = hardware_module {
        let mut value = oid(&hw.hw_type)?;
        value.extend(tagged(0x04, hw.serial.as_bytes()));
        names.extend(other_name(HARDWARE_MODULE_NAME_OID, sequence(&value))?);
    }
    Ok(sequence(&names))
}

/// The KB5014754 security extension: a SEQUENCE holding one otherName
/// (1.3.6.1.4.1.311.25.2.1) whose value is the SID string as an OCTET STRING.
fn sid_extension_der(sid: &str) -> Result<Vec<u8>, CaError> {
    use der_encoding::{sequence, tagged};
    let well_formed = sid.strip_prefix("S-1-").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .split('-')
                .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
    });
    if !well_formed {
        return Err(CaError::SubjectInvalid(format!(
            "windows SID \"{sid}\" is not of the form S-1-5-21-…"
        )));
    }
    let mut content =
        policy_oid::encode(NTDS_OBJECTSID_OID).map_err(CaError::CertificateEncoding)?;
    content.extend(tagged(0xa0, &tagged(0x04, sid.as_bytes())));
    Ok(sequence(&tagged(0xa0, &content)))
}
