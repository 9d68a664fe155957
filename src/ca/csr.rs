//! PKCS#10 certificate requests: read PEM or DER, refuse unsupported key algorithms by name,
//! check the request's own signature (proof that the requester holds the private key), and take
//! the subject's common name and email / DNS names from it, within [`NAME_LIMITS`].

use super::CaError;
use super::issue::SubjectParams;
use super::subject_key::SubjectPublicKey;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// A request whose signature verified with its own public key.
#[derive(Clone, Debug)]
pub struct VerifiedCsr {
    pub subject: SubjectParams,
    /// The requester's SubjectPublicKeyInfo, DER.
    pub public_key_der: Vec<u8>,
    pub public_key: SubjectPublicKey,
    /// A YubiKey attestation carried in the request, not yet verified (docs/attestation.md,
    /// "Attested CSRs"). The caller must verify it or refuse the request: never issue it as
    /// unattested.
    pub attestation: Option<CsrAttestation>,
}

/// The attestation certificates a CSR carries, as DER, unverified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsrAttestation {
    /// The slot attestation certificate (under `.3.1`, or `.3.11` in older tools).
    pub slot_certificate: Vec<u8>,
    /// The device (F9) certificate under `.3.2`.
    pub device_certificate: Vec<u8>,
    /// Where the slot certificate was found, e.g. "extensionRequest 1.3.6.1.4.1.41482.3.1".
    pub form: String,
}

/// Yubico's OIDs for attestation material in a CSR: the slot certificate (`.3.1`; older tools
/// `.3.11`, which inside a CSR is not the CSPN flag of device certificates) and the device
/// certificate (`.3.2`).
pub const CSR_OID_SLOT_CERTIFICATE: &str = "1.3.6.1.4.1.41482.3.1";
pub const CSR_OID_SLOT_CERTIFICATE_OLD: &str = "1.3.6.1.4.1.41482.3.11";
pub const CSR_OID_DEVICE_CERTIFICATE: &str = "1.3.6.1.4.1.41482.3.2";

/// The attributes of a request with one of Yubico's OIDs (other than inside extensionRequest),
/// each as (OID, its single value's DER). x509-parser keeps no value for attributes it does not
/// know, so these are read with x509-cert.
fn yubico_attributes(der: &[u8]) -> Result<Vec<(String, Vec<u8>)>, CaError> {
    use der::{Decode, Encode};
    let request = x509_cert::request::CertReq::from_der(der)
        .map_err(|e| CaError::CsrUnreadable(format!("not a PKCS#10 request: {e}")))?;
    let mut out = Vec::new();
    for attribute in request.info.attributes.iter() {
        let oid = attribute.oid.to_string();
        if ![
            CSR_OID_SLOT_CERTIFICATE,
            CSR_OID_SLOT_CERTIFICATE_OLD,
            CSR_OID_DEVICE_CERTIFICATE,
        ]
        .contains(&oid.as_str())
        {
            continue;
        }
        let mut values = attribute.values.iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(CaError::CsrAttestationMalformed(format!(
                "attribute {oid} does not hold exactly one value"
            )));
        };
        let value = value
            .to_der()
            .map_err(|e| CaError::CsrAttestationMalformed(format!("attribute {oid}: {e}")))?;
        out.push((oid, value));
    }
    Ok(out)
}

/// Finds the attestation certificates in a request: as extensions inside its extensionRequest
/// (how Yubico's and Windows tools write them) or as attributes of their own with the same OIDs.
/// Each OID may appear once; `.3.1` and `.3.11` together must hold the same certificate.
fn find_attestation(
    csr: &X509CertificationRequest<'_>,
    der: &[u8],
) -> Result<Option<CsrAttestation>, CaError> {
    use x509_parser::cri_attributes::ParsedCriAttribute;
    let mut found: Vec<(String, &'static str, Vec<u8>)> = Vec::new();
    for attribute in csr.certification_request_info.iter_attributes() {
        if let ParsedCriAttribute::ExtensionRequest(request) = attribute.parsed_attribute() {
            for extension in &request.extensions {
                let oid = extension.oid.to_id_string();
                if [
                    CSR_OID_SLOT_CERTIFICATE,
                    CSR_OID_SLOT_CERTIFICATE_OLD,
                    CSR_OID_DEVICE_CERTIFICATE,
                ]
                .contains(&oid.as_str())
                {
                    found.push((oid, "extensionRequest", extension.value.to_vec()));
                }
            }
        }
    }
    for (oid, value) in yubico_attributes(der)? {
        found.push((oid, "attribute", value));
    }
    if found.is_empty() {
        return Ok(None);
    }
    let one = |wanted: &str| -> Result<Option<(&'static str, Vec<u8>)>, CaError> {
        let mut hits = found.iter().filter(|(oid, _, _)| oid == wanted);
        let first = hits.next().map(|(_, place, der)| (*place, der.clone()));
        if hits.next().is_some() {
            return Err(CaError::CsrAttestationMalformed(format!(
                "{wanted} appears more than once"
            )));
        }
        Ok(first)
    };
    let new_form = one(CSR_OID_SLOT_CERTIFICATE)?;
    let old_form = one(CSR_OID_SLOT_CERTIFICATE_OLD)?;
    let device = one(CSR_OID_DEVICE_CERTIFICATE)?;
    let (form, slot_certificate) = match (new_form, old_form) {
        (Some(new), Some(old)) if new.1 != old.1 => {
            return Err(CaError::CsrAttestationMalformed(format!(
                "{CSR_OID_SLOT_CERTIFICATE} and {CSR_OID_SLOT_CERTIFICATE_OLD} hold different slot certificates"
            )));
        }
        (Some((place, der)), _) => (format!("{place} {CSR_OID_SLOT_CERTIFICATE}"), der),
        (None, Some((place, der))) => (format!("{place} {CSR_OID_SLOT_CERTIFICATE_OLD}"), der),
        (None, None) => {
            return Err(CaError::CsrAttestationMalformed(format!(
                "a device certificate ({CSR_OID_DEVICE_CERTIFICATE}) without a slot attestation certificate ({CSR_OID_SLOT_CERTIFICATE} or {CSR_OID_SLOT_CERTIFICATE_OLD})"
            )));
        }
    };
    let Some((_, device_certificate)) = device else {
        return Err(CaError::CsrAttestationMalformed(format!(
            "a slot attestation certificate without the device certificate ({CSR_OID_DEVICE_CERTIFICATE}) it chains to"
        )));
    };
    Ok(Some(CsrAttestation {
        slot_certificate,
        device_certificate,
        form,
    }))
}

/// Reads a CSR in PEM ("CERTIFICATE REQUEST" or "NEW CERTIFICATE REQUEST") or DER.
pub fn parse_and_verify_csr(input: &[u8]) -> Result<VerifiedCsr, CaError> {
    let der = if input.trim_ascii_start().starts_with(b"-----BEGIN") {
        let (label, der) = der::pem::decode_vec(input.trim_ascii())
            .map_err(|e| CaError::CsrUnreadable(format!("bad PEM: {e}")))?;
        if !matches!(label, "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST") {
            return Err(CaError::CsrUnreadable(format!(
                "the PEM block is a \"{label}\", not a \"CERTIFICATE REQUEST\""
            )));
        }
        der
    } else {
        input.to_vec()
    };
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| CaError::CsrUnreadable(format!("not a PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::CsrUnreadable(
            "trailing bytes after the request".into(),
        ));
    }
    let info = &csr.certification_request_info;
    let public_key_der = info.subject_pki.raw.to_vec();
    // The key algorithm first: a request with a key we do not certify is refused by name even
    // when its signature could not be checked.
    let public_key = SubjectPublicKey::from_spki_der(&public_key_der)?;
    csr.verify_signature()
        .map_err(|_| CaError::CsrSignatureInvalid)?;

    let common_name = info
        .subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .ok_or(CaError::CsrWithoutCommonName)?;
    let mut subject = SubjectParams::new(common_name);
    subject.emails.extend(
        info.subject
            .iter_email()
            .filter_map(|e| e.as_str().ok().map(str::to_string)),
    );
    if let Some(extensions) = csr.requested_extensions() {
        for ext in extensions {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::RFC822Name(email) => subject.emails.push(email.to_string()),
                        GeneralName::DNSName(dns) => subject.dns_names.push(dns.to_string()),
                        // Other name forms are not taken from a request: the directory supplies
                        // identities, a requester may not choose them.
                        _ => {}
                    }
                }
            }
        }
    }
    subject.emails.sort();
    subject.emails.dedup();
    check_names(&subject)?;
    let attestation = find_attestation(&csr, &der)?;
    Ok(VerifiedCsr {
        subject,
        public_key_der,
        public_key,
        attestation,
    })
}

/// The limits on the names a CSR may carry (docs/api.md): a common name of 1–64 characters
/// (RFC 5280's upper bound) without control characters; at most 16 email addresses of at most
/// 254 bytes, printable ASCII without spaces, `local@domain`; at most 64 DNS names of at most
/// 253 bytes, dot-separated labels of 1–63 letters, digits and hyphens (not at a label's ends),
/// the first label may be `*`. Other name forms (URIs, IP addresses, …) are never taken from a
/// request.
pub const NAME_LIMITS: NameLimits = NameLimits {
    common_name_chars: 64,
    emails: 16,
    email_bytes: 254,
    dns_names: 64,
    dns_name_bytes: 253,
};

/// See [`NAME_LIMITS`].
#[derive(Clone, Copy, Debug)]
pub struct NameLimits {
    pub common_name_chars: usize,
    pub emails: usize,
    pub email_bytes: usize,
    pub dns_names: usize,
    pub dns_name_bytes: usize,
}

/// Refuses names beyond [`NAME_LIMITS`]: too long (`CsrNameTooLong`), too many
/// (`CsrTooManyNames`) or with characters a certificate should not carry (`SubjectInvalid`).
fn check_names(subject: &SubjectParams) -> Result<(), CaError> {
    let l = NAME_LIMITS;
    let cn = &subject.common_name;
    if cn.chars().count() > l.common_name_chars {
        return Err(CaError::CsrNameTooLong(format!(
            "commonName exceeds {} characters",
            l.common_name_chars
        )));
    }
    if cn.chars().any(char::is_control) {
        return Err(CaError::SubjectInvalid(
            "the CSR's commonName contains control characters".into(),
        ));
    }
    if subject.emails.len() > l.emails {
        return Err(CaError::CsrTooManyNames(format!(
            "has more than {} email addresses",
            l.emails
        )));
    }
    for email in &subject.emails {
        if email.len() > l.email_bytes {
            return Err(CaError::CsrNameTooLong(format!(
                "email address exceeds {} bytes",
                l.email_bytes
            )));
        }
        let well_formed = email.bytes().all(|b| b.is_ascii_graphic())
            && matches!(email.split_once('@'), Some((local, domain))
                if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
        if !well_formed {
            return Err(CaError::SubjectInvalid(format!(
                "the CSR's email address {email:?} is not local@domain in printable ASCII"
            )));
        }
    }
    if subject.dns_names.len() > l.dns_names {
        return Err(CaError::CsrTooManyNames(format!(
            "has more than {} DNS names",
            l.dns_names
        )));
    }
    for dns in &subject.dns_names {
        if dns.len() > l.dns_name_bytes {
            return Err(CaError::CsrNameTooLong(format!(
                "DNS name exceeds {} bytes",
                l.dns_name_bytes
            )));
        }
        if !is_dns_name(dns) {
            return Err(CaError::SubjectInvalid(format!(
                "the CSR's DNS name {dns:?} is not a host name (labels of letters, digits and hyphens)"
            )));
        }
    }
    Ok(())
}

/// `label(.label)*`, each label 1–63 letters, digits or hyphens not at its ends; the first
/// label may be the wildcard `*`.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(cn: &str, emails: &[&str], dns: &[&str]) -> SubjectParams {
        let mut s = SubjectParams::new(cn.to_string());
        s.emails = emails.iter().map(|e| e.to_string()).collect();
        s.dns_names = dns.iter().map(|d| d.to_string()).collect();
        s
    }

    fn refusal(s: &SubjectParams) -> String {
        check_names(s).unwrap_err().to_string()
    }

    #[test]
    fn names_within_the_limits_pass() {
        let cn = "é".repeat(64);
        let email = format!("{}@corp.test", "a".repeat(244));
        let dns = format!(
            "{}.{}.{}.test",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63)
        );
        let emails: Vec<String> = (0..16).map(|i| format!("u{i}@corp.test")).collect();
        let many_dns: Vec<String> = (0..64).map(|i| format!("h{i}.corp.test")).collect();
        check_names(&subject(&cn, &[&email], &[&dns, "*.corp.test"])).unwrap();
        let mut s = subject("svc", &[], &[]);
        s.emails = emails;
        s.dns_names = many_dns;
        check_names(&s).unwrap();
    }

    #[test]
    fn names_beyond_the_limits_are_refused() {
        assert_eq!(
            refusal(&subject(&"a".repeat(65), &[], &[])),
            "CSR commonName exceeds 64 characters"
        );
        assert_eq!(
            refusal(&subject("a\u{7}b", &[], &[])),
            "subject is invalid: the CSR's commonName contains control characters"
        );
        assert_eq!(
            refusal(&subject(
                "a",
                &[&format!("{}@corp.test", "a".repeat(245))],
                &[]
            )),
            "CSR email address exceeds 254 bytes"
        );
        assert_eq!(
            refusal(&subject("a", &["two words@corp.test"], &[])),
            "subject is invalid: the CSR's email address \"two words@corp.test\" is not local@domain in printable ASCII"
        );
        assert_eq!(
            refusal(&subject("a", &["no-at-sign"], &[])),
            "subject is invalid: the CSR's email address \"no-at-sign\" is not local@domain in printable ASCII"
        );
        let mut many = subject("a", &[], &[]);
        many.emails = (0..17).map(|i| format!("u{i}@corp.test")).collect();
        assert_eq!(refusal(&many), "CSR has more than 16 email addresses");
        let mut many = subject("a", &[], &[]);
        many.dns_names = (0..65).map(|i| format!("h{i}.corp.test")).collect();
        assert_eq!(refusal(&many), "CSR has more than 64 DNS names");
        let long = format!("{}.test", vec!["a".repeat(63); 4].join("."));
        assert_eq!(
            refusal(&subject("a", &[], &[&long])),
            "CSR DNS name exceeds 253 bytes"
        );
        for bad in ["a_b.test", "-a.test", "a..test", "a.test\n", "a*.test", "*"] {
            assert_eq!(
                refusal(&subject("a", &[], &[bad])),
                format!(
                    "subject is invalid: the CSR's DNS name {bad:?} is not a host name (labels of letters, digits and hyphens)"
                ),
                "{bad:?}"
            );
        }
    }
}

#[cfg(test)]
mod attestation_tests {
    use super::*;

    const SLOT: &[u64] = &[1, 3, 6, 1, 4, 1, 41482, 3, 1];
    const SLOT_OLD: &[u64] = &[1, 3, 6, 1, 4, 1, 41482, 3, 11];
    const DEVICE: &[u64] = &[1, 3, 6, 1, 4, 1, 41482, 3, 2];

    fn some_certificate(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn csr_with(extensions: &[(&[u64], Vec<u8>)], attributes: Vec<rcgen::Attribute>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "x");
        for (oid, value) in extensions {
            p.custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(oid, value.clone()));
        }
        p.serialize_request_with_attributes(&key, attributes)
            .unwrap()
            .der()
            .to_vec()
    }

    /// rcgen takes an attribute's values as the DER `SET OF` itself.
    fn set_of(value: Vec<u8>) -> Vec<u8> {
        let len = value.len();
        let mut out = vec![0x31];
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend([0x81, len as u8]);
        } else {
            out.extend([0x82, (len >> 8) as u8, len as u8]);
        }
        out.extend(value);
        out
    }

    fn malformed(csr: &[u8]) -> String {
        match parse_and_verify_csr(csr) {
            Err(CaError::CsrAttestationMalformed(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_attestation_is_none() {
        let csr = csr_with(&[], Vec::new());
        assert_eq!(parse_and_verify_csr(&csr).unwrap().attestation, None);
    }

    #[test]
    fn both_extension_forms_are_read() {
        let (slot, device) = (some_certificate("slot"), some_certificate("device"));
        for (oid, name) in [
            (SLOT, CSR_OID_SLOT_CERTIFICATE),
            (SLOT_OLD, CSR_OID_SLOT_CERTIFICATE_OLD),
        ] {
            let csr = csr_with(&[(oid, slot.clone()), (DEVICE, device.clone())], Vec::new());
            let a = parse_and_verify_csr(&csr).unwrap().attestation.unwrap();
            assert_eq!(a.slot_certificate, slot);
            assert_eq!(a.device_certificate, device);
            assert_eq!(a.form, format!("extensionRequest {name}"));
        }
        // Both forms holding the same certificate: the current one is named.
        let csr = csr_with(
            &[
                (SLOT, slot.clone()),
                (SLOT_OLD, slot.clone()),
                (DEVICE, device.clone()),
            ],
            Vec::new(),
        );
        let a = parse_and_verify_csr(&csr).unwrap().attestation.unwrap();
        assert_eq!(
            a.form,
            format!("extensionRequest {CSR_OID_SLOT_CERTIFICATE}")
        );
    }

    #[test]
    fn attribute_form_is_read() {
        let (slot, device) = (some_certificate("slot"), some_certificate("device"));
        let csr = csr_with(
            &[],
            vec![
                rcgen::Attribute {
                    oid: SLOT,
                    values: set_of(slot.clone()),
                },
                rcgen::Attribute {
                    oid: DEVICE,
                    values: set_of(device.clone()),
                },
            ],
        );
        let a = parse_and_verify_csr(&csr).unwrap().attestation.unwrap();
        assert_eq!(a.slot_certificate, slot);
        assert_eq!(a.device_certificate, device);
        assert_eq!(a.form, format!("attribute {CSR_OID_SLOT_CERTIFICATE}"));
    }

    #[test]
    fn incomplete_or_ambiguous_material_is_refused() {
        let (slot, device) = (some_certificate("slot"), some_certificate("device"));
        assert_eq!(
            malformed(&csr_with(&[(SLOT, slot.clone())], Vec::new())),
            "a slot attestation certificate without the device certificate (1.3.6.1.4.1.41482.3.2) it chains to"
        );
        assert_eq!(
            malformed(&csr_with(&[(DEVICE, device.clone())], Vec::new())),
            "a device certificate (1.3.6.1.4.1.41482.3.2) without a slot attestation certificate (1.3.6.1.4.1.41482.3.1 or 1.3.6.1.4.1.41482.3.11)"
        );
        assert_eq!(
            malformed(&csr_with(
                &[
                    (SLOT, slot.clone()),
                    (SLOT_OLD, device.clone()),
                    (DEVICE, device.clone())
                ],
                Vec::new()
            )),
            "1.3.6.1.4.1.41482.3.1 and 1.3.6.1.4.1.41482.3.11 hold different slot certificates"
        );
        let twice = csr_with(
            &[(SLOT, slot.clone()), (DEVICE, device.clone())],
            vec![rcgen::Attribute {
                oid: SLOT,
                values: set_of(slot),
            }],
        );
        assert_eq!(
            malformed(&twice),
            "1.3.6.1.4.1.41482.3.1 appears more than once"
        );
    }
}
