//! PKCS#10 certificate requests: read PEM or DER, refuse unsupported key algorithms by name,
//! check the request's own signature (proof that the requester holds the private key), and take
//! the subject's common name and email / DNS names from it.

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
    Ok(VerifiedCsr {
        subject,
        public_key_der,
        public_key,
    })
}
