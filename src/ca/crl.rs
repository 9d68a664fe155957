//! CRL signing (RFC 5280 §5, version 2): revoked entries + CRL number + times in, DER out,
//! signed by the issuing CA's `hsm::Signer` (the HSM). Pure: it neither reads the store nor decides when
//! to re-sign (`web::revocation` does).
//!
//! Profile: issuer = the issuing CA's subject; thisUpdate / nextUpdate; extensions
//! authorityKeyIdentifier (the issuing CA's subjectKeyIdentifier) and cRLNumber; per entry
//! userCertificate, revocationDate and a reasonCode unless the reason is unspecified (0).
//! Certificates on hold are listed with reason certificateHold.
//!
//! The tbsCertList is encoded here, entry by entry, into one buffer ([`CrlBuilder`]): a CRL of
//! a million entries (about 50 MB of DER) is built from a stream of rows without ever holding
//! the rows, an entry struct per row, or a second copy of the list. rcgen's CRL builder wants
//! every entry as a struct first and then encodes a copy (several hundred bytes per entry in
//! memory); it is no longer used. Times are UTCTime through 2049 and GeneralizedTime from 2050
//! (RFC 5280 §5.1.2.4).

use super::CaError;
use super::issue::IssuingCa;
use super::revocation_reason::RevocationReason;
use crate::hsm::Signer;
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

/// The fields of a CRL other than its entries.
#[derive(Clone, Copy, Debug)]
pub struct CrlHeader {
    /// cRLNumber: monotonic per issuer (the caller keeps it in the store).
    pub number: u64,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
}

/// How many octets the length of `len` takes.
fn header_len(len: usize) -> usize {
    if len < 0x80 {
        1
    } else {
        1 + (8 - (len as u64).leading_zeros() as usize / 8)
    }
}

/// DER tags used here.
const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const BIT_STRING: u8 = 0x03;
const ENUMERATED: u8 = 0x0a;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const CONTEXT_0_CONSTRUCTED: u8 = 0xa0;
const CONTEXT_0_PRIMITIVE: u8 = 0x80;
/// id-ce-cRLReasons, id-ce-cRLNumber, id-ce-authorityKeyIdentifier (contents octets).
const OID_REASON_CODE: &[u8] = &[0x55, 0x1d, 0x15];
const OID_CRL_NUMBER: &[u8] = &[0x55, 0x1d, 0x14];
const OID_AUTHORITY_KEY_ID: &[u8] = &[0x55, 0x1d, 0x23];
/// Room left in front of the list for the headers written last (tag + length of at most
/// 4 GiB = 6 octets each): the CertificateList's and the tbsCertList's.
const FRONT: usize = 12;
/// Room between the fixed fields and the entries for the revokedCertificates header.
const LIST_GAP: usize = 6;

/// A DER tag and definite length.
fn header(tag: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(6);
    write_header(tag, len, &mut out);
    out
}

fn write_header(tag: u8, len: usize, out: &mut Vec<u8>) {
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let first = bytes.iter().position(|b| *b != 0).unwrap_or(7);
        out.push(0x80 | (8 - first) as u8);
        out.extend_from_slice(&bytes[first..]);
    }
}

fn tlv(tag: u8, content: &[u8], out: &mut Vec<u8>) {
    write_header(tag, content.len(), out);
    out.extend_from_slice(content);
}

/// `value` as `width` decimal digits.
fn push_digits(out: &mut Vec<u8>, value: u32, width: u32) {
    for i in (0..width).rev() {
        out.push(b'0' + ((value / 10u32.pow(i)) % 10) as u8);
    }
}

fn tlv_vec(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    tlv(tag, content, &mut out);
    out
}

/// The contents octets of a non-negative INTEGER whose magnitude is `magnitude` (big-endian).
fn unsigned_integer_contents(magnitude: &[u8]) -> Vec<u8> {
    let first = magnitude.iter().position(|b| *b != 0);
    let digits = match first {
        Some(i) => &magnitude[i..],
        None => return vec![0],
    };
    let mut out = Vec::with_capacity(digits.len() + 1);
    if digits[0] & 0x80 != 0 {
        out.push(0);
    }
    out.extend_from_slice(digits);
    out
}

/// RFC 5280 Time: UTCTime for 1950–2049, GeneralizedTime otherwise; whole seconds, `Z`.
fn encode_time(t: OffsetDateTime, out: &mut Vec<u8>) -> Result<(), CaError> {
    let t = t.to_offset(time::UtcOffset::UTC);
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return Err(CaError::RevocationEncoding(format!(
            "year {year} cannot be written in a CRL"
        )));
    }
    let year = year as u32;
    if (1950..2050).contains(&year) {
        out.extend_from_slice(&[UTC_TIME, 13]);
        push_digits(out, year % 100, 2);
    } else {
        out.extend_from_slice(&[GENERALIZED_TIME, 15]);
        push_digits(out, year, 4);
    }
    for part in [
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    ] {
        push_digits(out, u32::from(part), 2);
    }
    out.push(b'Z');
    Ok(())
}

/// The RFC 5280 reason for a stored code; `None` for unspecified (0: no reasonCode written).
fn reason(code: i64) -> Result<Option<RevocationReason>, CaError> {
    let reason = RevocationReason::from_code(code).ok_or_else(|| {
        CaError::RevocationEncoding(format!(
            "revocation reason code {code} cannot appear on a CRL"
        ))
    })?;
    Ok((reason != RevocationReason::Unspecified).then_some(reason))
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

/// The issuer Name (DER, as in the certificate) of the CRLs `certificate_der` signs.
fn subject_name_der(certificate_der: &[u8]) -> Result<Vec<u8>, CaError> {
    let (_, cert) = X509Certificate::from_der(certificate_der)
        .map_err(|e| CaError::CaCertificateUnreadable(e.to_string()))?;
    Ok(cert.subject().as_raw().to_vec())
}

/// One extension: SEQUENCE { extnID, extnValue OCTET STRING { value } } (never critical).
fn extension(oid: &[u8], value: &[u8]) -> Vec<u8> {
    let mut content = tlv_vec(OID, oid);
    tlv(OCTET_STRING, value, &mut content);
    tlv_vec(SEQUENCE, &content)
}

/// A CRL being built: the fixed fields are encoded at [`CrlBuilder::new`], each entry is
/// encoded as it is [`push`](CrlBuilder::push)ed, all into one buffer (with room in front for
/// the headers whose lengths are known only at the end).
pub struct CrlBuilder {
    buf: Vec<u8>,
    /// `buf[FRONT..fixed_end]`: version, signature, issuer, thisUpdate, nextUpdate.
    fixed_end: usize,
    crl_extensions: Vec<u8>,
    algorithm: &'static [u8],
    count: u64,
}

impl CrlBuilder {
    /// Starts a CRL of `issuing` with `header`'s number and times.
    pub fn new(issuing: &IssuingCa, header: &CrlHeader) -> Result<CrlBuilder, CaError> {
        if header.next_update <= header.this_update {
            return Err(CaError::RevocationEncoding(
                "nextUpdate must be after thisUpdate".into(),
            ));
        }
        let algorithm = issuing.signer().algorithm_identifier_der();
        let mut buf = vec![0; FRONT];
        tlv(INTEGER, &[1], &mut buf); // v2
        buf.extend_from_slice(algorithm);
        buf.extend_from_slice(&subject_name_der(issuing.certificate_der())?);
        encode_time(header.this_update, &mut buf)?;
        encode_time(header.next_update, &mut buf)?;
        let fixed_end = buf.len();
        buf.resize(fixed_end + LIST_GAP, 0);
        let key_id = subject_key_identifier(issuing.certificate_der())?;
        let aki = tlv_vec(SEQUENCE, &tlv_vec(CONTEXT_0_PRIMITIVE, &key_id));
        let number = tlv_vec(
            INTEGER,
            &unsigned_integer_contents(&header.number.to_be_bytes()),
        );
        let mut extensions = extension(OID_AUTHORITY_KEY_ID, &aki);
        extensions.extend_from_slice(&extension(OID_CRL_NUMBER, &number));
        let crl_extensions = tlv_vec(CONTEXT_0_CONSTRUCTED, &tlv_vec(SEQUENCE, &extensions));
        Ok(CrlBuilder {
            buf,
            fixed_end,
            crl_extensions,
            algorithm,
            count: 0,
        })
    }

    /// Adds one revoked (or held) certificate: its serial's big-endian magnitude, when it was
    /// revoked, and its RFC 5280 reason code (0 writes no reasonCode).
    pub fn push(
        &mut self,
        serial: &[u8],
        revoked_at: OffsetDateTime,
        reason_code: i64,
    ) -> Result<(), CaError> {
        let reason = reason(reason_code)?;
        let digits = match serial.iter().position(|b| *b != 0) {
            Some(i) => &serial[i..],
            None => &[0][..],
        };
        let pad = usize::from(digits[0] & 0x80 != 0);
        // SEQUENCE { INTEGER, Time, [SEQUENCE { reasonCode extension }] }, written in place:
        // the entry's length is known before anything is written.
        let integer_len = 1 + header_len(digits.len() + pad) + digits.len() + pad;
        let time_len = if (1950..2050).contains(&revoked_at.year()) {
            15
        } else {
            17
        };
        let extensions_len = if reason.is_some() { 14 } else { 0 };
        write_header(
            SEQUENCE,
            integer_len + time_len + extensions_len,
            &mut self.buf,
        );
        write_header(INTEGER, digits.len() + pad, &mut self.buf);
        if pad == 1 {
            self.buf.push(0);
        }
        self.buf.extend_from_slice(digits);
        encode_time(revoked_at, &mut self.buf)?;
        if let Some(r) = reason {
            // SEQUENCE { SEQUENCE { OID cRLReasons, OCTET STRING { ENUMERATED code } } }
            self.buf
                .extend_from_slice(&[SEQUENCE, 12, SEQUENCE, 10, OID, 3]);
            self.buf.extend_from_slice(OID_REASON_CODE);
            self.buf
                .extend_from_slice(&[OCTET_STRING, 3, ENUMERATED, 1, r.code() as u8]);
        }
        self.count += 1;
        Ok(())
    }

    /// How many entries were added.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The tbsCertList, ready to be signed. Without entries the revokedCertificates field is
    /// absent (RFC 5280 §5.1.2.6).
    pub fn finish(mut self) -> UnsignedCrl {
        let entries_start = self.fixed_end + LIST_GAP;
        let list_header = if self.count == 0 {
            Vec::new()
        } else {
            header(SEQUENCE, self.buf.len() - entries_start)
        };
        // Close the gap: the list header goes right before the entries, the fixed fields
        // right before it.
        let list_at = entries_start - list_header.len();
        self.buf[list_at..entries_start].copy_from_slice(&list_header);
        let shift = LIST_GAP - list_header.len();
        self.buf.copy_within(FRONT..self.fixed_end, FRONT + shift);
        let fields_start = FRONT + shift;
        self.buf.extend_from_slice(&self.crl_extensions);
        let tbs_header = header(SEQUENCE, self.buf.len() - fields_start);
        let tbs_start = fields_start - tbs_header.len();
        self.buf[tbs_start..fields_start].copy_from_slice(&tbs_header);
        UnsignedCrl {
            buf: self.buf,
            tbs_start,
            algorithm: self.algorithm,
        }
    }
}

/// An encoded tbsCertList waiting for its signature.
pub struct UnsignedCrl {
    buf: Vec<u8>,
    tbs_start: usize,
    algorithm: &'static [u8],
}

impl UnsignedCrl {
    /// The DER tbsCertList (what is signed).
    pub fn to_be_signed(&self) -> &[u8] {
        &self.buf[self.tbs_start..]
    }

    /// Signs with `signer` (one signature, which must use the algorithm the CRL names) and
    /// returns the CertificateList DER.
    pub fn sign(mut self, signer: &dyn Signer) -> Result<Vec<u8>, CaError> {
        if signer.algorithm_identifier_der() != self.algorithm {
            return Err(CaError::RevocationEncoding(format!(
                "the signer's algorithm ({:?}) is not the one the CRL names",
                signer.scheme()
            )));
        }
        let signature = signer.sign(self.to_be_signed())?;
        let mut bits = Vec::with_capacity(signature.len() + 1);
        bits.push(0);
        bits.extend_from_slice(&signature);
        let mut tail = self.algorithm.to_vec();
        tlv(BIT_STRING, &bits, &mut tail);
        let outer = header(SEQUENCE, self.buf.len() - self.tbs_start + tail.len());
        let start = self.tbs_start - outer.len();
        self.buf[start..self.tbs_start].copy_from_slice(&outer);
        self.buf.extend_from_slice(&tail);
        self.buf.drain(..start);
        self.buf.shrink_to_fit();
        Ok(self.buf)
    }
}

/// Signs a CRL over `contents` with the issuing CA's signer (one signature); returns its DER.
pub fn sign_crl(issuing: &IssuingCa, contents: &CrlContents) -> Result<Vec<u8>, CaError> {
    let mut builder = CrlBuilder::new(
        issuing,
        &CrlHeader {
            number: contents.number,
            this_update: contents.this_update,
            next_update: contents.next_update,
        },
    )?;
    for e in &contents.entries {
        builder.push(&e.serial, e.revoked_at, e.reason_code)?;
    }
    builder.finish().sign(issuing.signer().as_ref())
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
    fn unsigned_integers_are_minimal_and_positive() {
        assert_eq!(unsigned_integer_contents(&0u64.to_be_bytes()), vec![0]);
        assert_eq!(unsigned_integer_contents(&[]), vec![0]);
        assert_eq!(unsigned_integer_contents(&1u64.to_be_bytes()), vec![1]);
        assert_eq!(
            unsigned_integer_contents(&[0, 0x12, 0x34]),
            vec![0x12, 0x34]
        );
        assert_eq!(unsigned_integer_contents(&[0x80]), vec![0, 0x80]);
        assert_eq!(
            unsigned_integer_contents(&u64::MAX.to_be_bytes()),
            [&[0u8][..], &[0xff; 8]].concat()
        );
    }

    #[test]
    fn lengths_and_times() {
        assert_eq!(header(0x30, 5), vec![0x30, 5]);
        assert_eq!(header(0x30, 0x80), vec![0x30, 0x81, 0x80]);
        assert_eq!(
            header(0x30, 50_000_000),
            vec![0x30, 0x84, 0x02, 0xfa, 0xf0, 0x80]
        );
        let mut out = Vec::new();
        encode_time(time::macros::datetime!(2049-12-31 23:59:59 UTC), &mut out).unwrap();
        assert_eq!(out, b"\x17\x0d491231235959Z");
        out.clear();
        encode_time(time::macros::datetime!(2050-01-01 00:00:00 UTC), &mut out).unwrap();
        assert_eq!(out, b"\x18\x0f20500101000000Z");
    }

    #[test]
    fn an_entry_is_what_the_generic_encoder_writes() {
        fn generic(serial: &[u8], at: OffsetDateTime, code: i64) -> Vec<u8> {
            let mut entry = Vec::new();
            tlv(INTEGER, &unsigned_integer_contents(serial), &mut entry);
            encode_time(at, &mut entry).unwrap();
            if let Some(r) = reason(code).unwrap() {
                let value = tlv_vec(ENUMERATED, &[r.code() as u8]);
                tlv(SEQUENCE, &extension(OID_REASON_CODE, &value), &mut entry);
            }
            tlv_vec(SEQUENCE, &entry)
        }
        let at = time::macros::datetime!(2026-06-01 12:34:56 UTC);
        let late = time::macros::datetime!(2051-01-01 00:00:00 UTC);
        let long = [0x7fu8; 130];
        let cases: [(&[u8], OffsetDateTime, i64); 6] = [
            (&[0x7e, 1, 2, 3], at, 1),
            (&[0x80, 0, 1], at, 0),
            (&[0, 0, 5], late, 6),
            (&[], at, 3),
            (&[0xff; 20], late, 10),
            (&long, at, 4),
        ];
        for (serial, at, code) in cases {
            let mut builder = CrlBuilder {
                buf: Vec::new(),
                fixed_end: 0,
                crl_extensions: Vec::new(),
                algorithm: &[],
                count: 0,
            };
            builder.push(serial, at, code).unwrap();
            assert_eq!(builder.buf, generic(serial, at, code), "{serial:02x?}");
        }
        assert_eq!(header_len(0x7f), 1);
        assert_eq!(header_len(0x80), 2);
        assert_eq!(header_len(0x1_0000), 4);
    }

    #[test]
    fn reason_codes() {
        assert_eq!(reason(0).unwrap(), None);
        assert_eq!(reason(6).unwrap(), Some(RevocationReason::CertificateHold));
        let err = reason(8).unwrap_err().to_string();
        assert_eq!(
            err,
            "building a CRL or OCSP response failed: revocation reason code 8 cannot appear on a CRL"
        );
        assert!(reason(7).is_err());
    }
}
