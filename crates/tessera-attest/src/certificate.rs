//! Reading certificates from bytes (PEM or DER), bounded, without panics.

use der::{AnyRef, Decode, Encode, Reader, SliceReader, Tag, Tagged};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use super::error::{AttestError, CertificateRole};

/// Largest input accepted for one certificate (or one PEM bundle of intermediates). Real
/// attestation certificates are under 2 KiB; anything near this limit is the wrong file.
pub const MAX_CERTIFICATE_INPUT_BYTES: usize = 64 * 1024;

/// A decoded certificate together with the exact bytes it came from.
#[derive(Clone, Debug)]
pub(crate) struct ParsedCertificate {
    pub(crate) certificate: Certificate,
    /// The whole certificate, DER.
    pub(crate) der: Vec<u8>,
    /// The signed part (tbsCertificate), exactly as it appeared in the input.
    pub(crate) tbs_der: Vec<u8>,
}

impl ParsedCertificate {
    pub(crate) fn from_der(der: &[u8], role: &CertificateRole) -> Result<Self, AttestError> {
        let malformed = |e: der::Error| AttestError::MalformedCertificate {
            role: role.clone(),
            detail: e.to_string(),
        };
        let certificate = Certificate::from_der(der).map_err(malformed)?;
        let tbs_der = raw_tbs(der).map_err(malformed)?;
        Ok(ParsedCertificate {
            certificate,
            der: der.to_vec(),
            tbs_der,
        })
    }

    pub(crate) fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(&self.der))
    }

    /// Subject as an RFC 4514 string, for messages.
    pub(crate) fn subject_string(&self) -> String {
        self.certificate.tbs_certificate().subject().to_string()
    }

    pub(crate) fn issuer_string(&self) -> String {
        self.certificate.tbs_certificate().issuer().to_string()
    }
}

/// The tbsCertificate TLV as it appears in `der`. Header bytes are re-encoded, which is exact
/// because the DER decoder has already refused non-minimal lengths.
fn raw_tbs(der: &[u8]) -> der::Result<Vec<u8>> {
    let outer = AnyRef::from_der(der)?;
    if outer.tag() != Tag::Sequence {
        return Err(der::Error::from(der::ErrorKind::TagUnexpected {
            expected: Some(Tag::Sequence),
            actual: outer.tag(),
        }));
    }
    let mut reader = SliceReader::new(outer.value())?;
    let tbs: AnyRef<'_> = reader.decode()?;
    tbs.to_der()
}

/// Decodes one or more certificates from PEM (any number of CERTIFICATE blocks; explanatory
/// text between blocks is allowed) or from a single DER certificate.
pub(crate) fn decode_certificates(
    bytes: &[u8],
    role: &CertificateRole,
) -> Result<Vec<ParsedCertificate>, AttestError> {
    if bytes.len() > MAX_CERTIFICATE_INPUT_BYTES {
        return Err(AttestError::InputTooLarge {
            role: role.clone(),
            size: bytes.len(),
            limit: MAX_CERTIFICATE_INPUT_BYTES,
        });
    }
    let trimmed = bytes.trim_ascii_start();
    if trimmed.is_empty() {
        return Err(AttestError::EmptyInput { role: role.clone() });
    }
    if trimmed[0] == 0x30 {
        return Ok(vec![ParsedCertificate::from_der(bytes, role)?]);
    }
    if find(bytes, b"-----BEGIN").is_none() {
        return Err(AttestError::MalformedCertificate {
            role: role.clone(),
            detail: "neither DER (starts with 0x30) nor PEM (no -----BEGIN line)".into(),
        });
    }
    decode_pem_blocks(bytes, role)
}

/// Decodes exactly one certificate.
pub(crate) fn decode_one_certificate(
    bytes: &[u8],
    role: &CertificateRole,
) -> Result<ParsedCertificate, AttestError> {
    let mut all = decode_certificates(bytes, role)?;
    if all.len() != 1 {
        return Err(AttestError::CertificateCount {
            role: role.clone(),
            found: all.len(),
        });
    }
    Ok(all.remove(0))
}

/// Splits PEM input into its blocks and decodes each with the der crate's PEM decoder
/// (`der::pem::decode_vec`, RFC 7468), keeping each certificate's exact DER.
///
/// Only the splitting is ours. x509-cert's `Certificate::load_pem_chain` would do it but cannot
/// keep what docs/attestation.md promises: it refuses explanatory text after the last block
/// (RFC 7468 allows it), lets binary bytes before a block pass as preamble, cannot name a wrong
/// label (it only looks for `-----END CERTIFICATE-----`, so a PRIVATE KEY block is a missing
/// boundary), and returns re-encoded certificates rather than the bytes that were signed.
fn decode_pem_blocks(
    bytes: &[u8],
    role: &CertificateRole,
) -> Result<Vec<ParsedCertificate>, AttestError> {
    let invalid = |detail: String| AttestError::InvalidPem {
        role: role.clone(),
        detail,
    };
    let mut certificates = Vec::new();
    let mut rest = bytes;
    loop {
        let Some(begin) = find(rest, b"-----BEGIN ") else {
            check_outside_text(rest).map_err(invalid)?;
            break;
        };
        check_outside_text(&rest[..begin]).map_err(invalid)?;
        let block_start = &rest[begin..];
        let Some(end) = find(block_start, b"-----END ") else {
            return Err(invalid(
                "a BEGIN line has no matching END line (truncated?)".into(),
            ));
        };
        let after_end = &block_start[end + b"-----END ".len()..];
        let Some(close) = find(after_end, b"-----") else {
            return Err(invalid("the END line is not closed with -----".into()));
        };
        let block_len = end + b"-----END ".len() + close + b"-----".len();
        let block = &block_start[..block_len];
        let (label, der) = der::pem::decode_vec(block).map_err(|e| invalid(format!("{e}")))?;
        if label != "CERTIFICATE" {
            return Err(invalid(format!(
                "a block is labelled {label:?}, expected \"CERTIFICATE\""
            )));
        }
        certificates.push(ParsedCertificate::from_der(&der, role)?);
        rest = &block_start[block_len..];
    }
    if certificates.is_empty() {
        return Err(invalid("no CERTIFICATE block".into()));
    }
    Ok(certificates)
}

/// Text outside PEM blocks is allowed (RFC 7468 §2), binary bytes are not.
fn check_outside_text(bytes: &[u8]) -> Result<(), String> {
    let is_text = std::str::from_utf8(bytes)
        .map(|text| !text.chars().any(|c| c.is_control() && !c.is_whitespace()))
        .unwrap_or(false);
    if is_text {
        Ok(())
    } else {
        Err("binary bytes outside the PEM blocks".into())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOT_PEM: &[u8] =
        include_bytes!("../../../tests/data/attestation/samples/fw5.4.3-p256-9a/slot.pem");

    #[test]
    fn pem_and_der_give_the_same_certificate() {
        let pem = decode_one_certificate(SLOT_PEM, &CertificateRole::Slot).unwrap();
        let der = decode_one_certificate(&pem.der, &CertificateRole::Slot).unwrap();
        assert_eq!(pem.der, der.der);
        assert_eq!(
            pem.tbs_der,
            pem.certificate.tbs_certificate().to_der().unwrap()
        );
    }

    #[test]
    fn explanatory_text_around_pem_is_allowed() {
        let mut input = b"Slot 9a attestation\n".to_vec();
        input.extend_from_slice(SLOT_PEM);
        input.extend_from_slice(b"\ntrailing note\n");
        assert!(decode_one_certificate(&input, &CertificateRole::Slot).is_ok());
    }

    #[test]
    fn crlf_line_endings_and_utf8_notes_are_accepted() {
        let text = String::from_utf8(SLOT_PEM.to_vec())
            .unwrap()
            .replace('\n', "\r\n");
        let input = format!("Attestierung für Slot 9a\r\n{text}");
        let crlf = decode_one_certificate(input.as_bytes(), &CertificateRole::Slot).unwrap();
        let lf = decode_one_certificate(SLOT_PEM, &CertificateRole::Slot).unwrap();
        assert_eq!(crlf.der, lf.der);
    }

    #[test]
    fn binary_outside_pem_is_refused() {
        let mut input = SLOT_PEM.to_vec();
        input.extend_from_slice(&[0, 1, 2, 0xff]);
        let err = decode_one_certificate(&input, &CertificateRole::Slot).unwrap_err();
        assert_eq!(err.code(), "input-pem-invalid");
        assert!(err.to_string().contains("binary bytes outside"), "{err}");
    }

    #[test]
    fn wrong_pem_label_is_refused() {
        let text = String::from_utf8(SLOT_PEM.to_vec())
            .unwrap()
            .replace("CERTIFICATE", "PRIVATE KEY");
        let err = decode_one_certificate(text.as_bytes(), &CertificateRole::Slot).unwrap_err();
        assert_eq!(err.code(), "input-pem-invalid");
        assert!(err.to_string().contains("\"PRIVATE KEY\""), "{err}");
    }

    #[test]
    fn pem_without_end_line_is_refused() {
        let text = String::from_utf8(SLOT_PEM.to_vec()).unwrap();
        let cut = &text[..text.find("-----END").unwrap()];
        let err = decode_one_certificate(cut.as_bytes(), &CertificateRole::Slot).unwrap_err();
        assert_eq!(err.code(), "input-pem-invalid");
        assert!(err.to_string().contains("no matching END"), "{err}");
    }

    #[test]
    fn two_certificates_where_one_is_expected() {
        let mut input = SLOT_PEM.to_vec();
        input.extend_from_slice(SLOT_PEM);
        assert_eq!(
            decode_certificates(&input, &CertificateRole::Intermediate(0))
                .unwrap()
                .len(),
            2
        );
        let err = decode_one_certificate(&input, &CertificateRole::Slot).unwrap_err();
        assert_eq!(
            err,
            AttestError::CertificateCount {
                role: CertificateRole::Slot,
                found: 2
            }
        );
    }

    #[test]
    fn trailing_bytes_after_der_are_refused() {
        let mut der = decode_one_certificate(SLOT_PEM, &CertificateRole::Slot)
            .unwrap()
            .der;
        der.push(0);
        let err = decode_one_certificate(&der, &CertificateRole::Slot).unwrap_err();
        assert_eq!(err.code(), "input-malformed");
    }

    #[test]
    fn plain_text_is_neither_pem_nor_der() {
        let err = decode_one_certificate(b"hello", &CertificateRole::Device).unwrap_err();
        assert_eq!(err.code(), "input-malformed");
        assert!(err.to_string().contains("neither DER"), "{err}");
    }
}
