//! CRL signing (RFC 5280 §5, version 2): revoked entries + CRL number + times in, DER out,
//! signed by the issuing CA's `hsm::Signer` (the HSM). Pure: it neither reads the store nor decides when
//! to re-sign (`web::revocation` does).
//!
//! Profile: issuer = the issuing CA's subject; thisUpdate / nextUpdate; extensions
//! authorityKeyIdentifier (the issuing CA's subjectKeyIdentifier) and cRLNumber; per entry
//! userCertificate, revocationDate and a reasonCode unless the reason is unspecified (0).
//! Certificates on hold are listed with reason certificateHold.

use super::CaError;
use super::issue::IssuingCa;
use super::revocation_reason::RevocationReason;
use super::signing::{self, EncodeOnlyKey};
use rcgen::{CertificateRevocationListParams, Issuer, KeyIdMethod, RevokedCertParams};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

/// One revoked (or held) certificate on a CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Big-endian magnitude of the serial (the INTEGER's octets, no sign byte needed).
    pub serial: Vec<u8>,
    pub revoked_at: OffsetDateTime,
    /// RFC 5280 CRLReason code; 0 (unspecified) writes no reasonCode extension.
    pub reason_code: i64,
}

/// What one CRL says.
#[derive(Clone, Debug)]
pub struct CrlContents {
    /// cRLNumber: monotonic per issuer (the caller keeps it in the store).
    pub number: u64,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
    pub entries: Vec<RevokedEntry>,
}

/// rcgen's reason for an RFC 5280 code; 0 (unspecified) writes no reasonCode extension.
fn reason(code: i64) -> Result<Option<rcgen::RevocationReason>, CaError> {
    use rcgen::RevocationReason as R;
    let reason = RevocationReason::from_code(code).ok_or_else(|| {
        CaError::RevocationEncoding(format!(
            "revocation reason code {code} cannot appear on a CRL"
        ))
    })?;
    Ok(Some(match reason {
        RevocationReason::Unspecified => return Ok(None),
        RevocationReason::KeyCompromise => R::KeyCompromise,
        RevocationReason::CaCompromise => R::CaCompromise,
        RevocationReason::AffiliationChanged => R::AffiliationChanged,
        RevocationReason::Superseded => R::Superseded,
        RevocationReason::CessationOfOperation => R::CessationOfOperation,
        RevocationReason::CertificateHold => R::CertificateHold,
        RevocationReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        RevocationReason::AaCompromise => R::AaCompromise,
    }))
}

/// The subjectKeyIdentifier of a certificate (the CRL's authorityKeyIdentifier must match it).
pub fn subject_key_identifier(certificate_der: &[u8]) -> Result<Vec<u8>, CaError> {
    let (_, cert) = X509Certificate::from_der(certificate_der)
        .map_err(|e| CaError::CaCertificateUnreadable(e.to_string()))?;
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
        .ok_or_else(|| {
            CaError::CaCertificateUnreadable(
                "the issuing CA certificate has no subjectKeyIdentifier".into(),
            )
        })
}

/// Signs a CRL over `contents` with the issuing CA's signer (one signature); returns its DER.
/// rcgen encodes the CertificateList; its tbsCertList is signed as a certificate's is
/// (`signing.rs`).
pub fn sign_crl(issuing: &IssuingCa, contents: &CrlContents) -> Result<Vec<u8>, CaError> {
    if contents.next_update <= contents.this_update {
        return Err(CaError::RevocationEncoding(
            "nextUpdate must be after thisUpdate".into(),
        ));
    }
    let signer = issuing.signer().as_ref();
    let issuer = Issuer::from_ca_cert_der(
        &issuing.certificate_der().to_vec().into(),
        EncodeOnlyKey::of(signer)?,
    )
    .map_err(|e| CaError::CaCertificateUnreadable(e.to_string()))?;
    let revoked_certs = contents
        .entries
        .iter()
        .map(|e| {
            Ok(RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&e.serial),
                revocation_time: e.revoked_at,
                reason_code: reason(e.reason_code)?,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, CaError>>()?;
    let params = CertificateRevocationListParams {
        this_update: contents.this_update,
        next_update: contents.next_update,
        crl_number: rcgen::SerialNumber::from_slice(&minimal_unsigned(contents.number)),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::PreSpecified(subject_key_identifier(
            issuing.certificate_der(),
        )?),
    };
    let encoded = params
        .signed_by(&issuer)
        .map_err(|e| CaError::CertificateEncoding(e.to_string()))?;
    signing::sign_encoded(encoded.der(), signer)
}

/// The file in a CA data directory that holds the last root CRL number.
pub const ROOT_CRL_NUMBER_FILE: &str = "root-crl-number";

/// Takes the next root CRL number: reads the last one from `data_dir/root-crl-number` (none:
/// 0), writes the next one back (atomically, before anything is signed, so a number is never
/// used twice) and returns it.
pub fn next_root_crl_number(data_dir: &std::path::Path) -> Result<u64, CaError> {
    let path = data_dir.join(ROOT_CRL_NUMBER_FILE);
    let io = |error| CaError::Io {
        path: path.clone(),
        error,
    };
    let last = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|_| CaError::CaRecordInvalid {
                path: path.clone(),
                reason: format!("{:?} is not a CRL number", text.trim()),
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io(e)),
    };
    let next = last
        .checked_add(1)
        .ok_or_else(|| CaError::CaRecordInvalid {
            path: path.clone(),
            reason: "the CRL number cannot grow any further".into(),
        })?;
    let tmp = data_dir.join(format!("{ROOT_CRL_NUMBER_FILE}.tmp"));
    std::fs::write(&tmp, format!("{next}\n")).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(next)
}

/// Big-endian octets of `n` without leading zero octets (one 0x00 for zero).
fn minimal_unsigned(n: u64) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    bytes[first..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_crl_numbers_grow_and_a_damaged_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_root_crl_number(dir.path()).unwrap(), 1);
        assert_eq!(next_root_crl_number(dir.path()).unwrap(), 2);
        std::fs::write(dir.path().join(ROOT_CRL_NUMBER_FILE), "two\n").unwrap();
        let e = next_root_crl_number(dir.path()).unwrap_err().to_string();
        assert!(e.contains("\"two\" is not a CRL number"), "{e}");
    }

    #[test]
    fn minimal_unsigned_octets() {
        assert_eq!(minimal_unsigned(0), vec![0]);
        assert_eq!(minimal_unsigned(1), vec![1]);
        assert_eq!(minimal_unsigned(0x1234), vec![0x12, 0x34]);
        assert_eq!(minimal_unsigned(u64::MAX), vec![0xff; 8]);
    }

    #[test]
    fn reason_codes() {
        assert_eq!(reason(0).unwrap(), None);
        assert_eq!(
            reason(6).unwrap(),
            Some(rcgen::RevocationReason::CertificateHold)
        );
        let err = reason(8).unwrap_err().to_string();
        assert_eq!(
            err,
            "building a CRL or OCSP response failed: revocation reason code 8 cannot appear on a CRL"
        );
        assert!(reason(7).is_err());
    }
}
