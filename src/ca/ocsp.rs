//! OCSP responder (RFC 6960): reads an OCSPRequest, and signs a BasicOCSPResponse with a
//! delegated responder key (an `hsm::Signer`, in the HSM) whose certificate (issued by the issuing CA, EKU
//! id-kp-OCSPSigning, id-pkix-ocsp-nocheck) is included in every response. Pure: the caller
//! (`web`) looks the serials up in the store and hands in their states.
//!
//! The ASN.1 types follow RustCrypto's `x509-ocsp` 0.2 (which is built on der 0.7 / x509-cert
//! 0.2; no release for der 0.8 / x509-cert 0.3 exists), declared here with `der` derives.
//!
//! Response profile: responderID byKey (SHA-1 of the responder's public key); producedAt and
//! thisUpdate = now, nextUpdate = now + the validity the caller gives; good / revoked
//! (revocationTime, reason unless unspecified; a certificate on hold is revoked with
//! certificateHold) / unknown; signature ECDSA P-256 with SHA-256. Two forms:
//! [`OcspResponder::sign_one`] signs the response of one certificate ahead of any request
//! (RFC 5019's pre-produced responses: a CertID we build, SHA-1 or SHA-256, no nonce), which
//! `web` stores and serves to every request about it; [`OcspResponder::respond`] answers one
//! request (several certificates), echoing its nonce.

use super::CaError;
use super::issue::certificate_pem;
use super::revocation_reason::RevocationReason;
use super::signing::public_key_bits;
use crate::hsm::{Hsm, Signer};
use const_oid::ObjectIdentifier;
use der::asn1::{BitString, GeneralizedTime, Null, OctetString};
use der::{Choice, Decode, Encode, Enumerated, Sequence};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use std::path::Path;
use time::{Duration, OffsetDateTime};
use x509_cert::Certificate;
use x509_cert::ext::Extensions;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::serial_number::SerialNumber;

/// At most this many certificates in one request (more is answered malformedRequest).
pub const MAX_REQUESTS: usize = 16;
/// File names in the CA's data directory.
pub const OCSP_RECORD_FILE: &str = "ocsp.toml";
pub const OCSP_CERTIFICATE_FILE: &str = "ocsp.pem";

const ID_PKIX_OCSP_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
const ID_PKIX_OCSP_NONCE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");
const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");

// ---- RFC 6960 §4.1.1 / §4.2.1 ASN.1 ----

#[derive(Clone, Debug, Default, Copy, PartialEq, Eq, Enumerated)]
#[asn1(type = "INTEGER")]
#[repr(u8)]
enum Version {
    #[default]
    V1 = 0,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct OcspRequest {
    tbs_request: TbsRequest,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    optional_signature: Option<RequestSignature>,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct TbsRequest {
    #[asn1(
        context_specific = "0",
        default = "Default::default",
        tag_mode = "EXPLICIT"
    )]
    version: Version,
    #[asn1(context_specific = "1", optional = "true", tag_mode = "EXPLICIT")]
    requestor_name: Option<GeneralName>,
    request_list: Vec<Request>,
    #[asn1(context_specific = "2", optional = "true", tag_mode = "EXPLICIT")]
    request_extensions: Option<Extensions>,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct RequestSignature {
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    certs: Option<Vec<Certificate>>,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct Request {
    req_cert: CertId,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    single_request_extensions: Option<Extensions>,
}

/// CertID: which certificate a request (and its answer) is about.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct CertId {
    hash_algorithm: AlgorithmIdentifierOwned,
    issuer_name_hash: OctetString,
    issuer_key_hash: OctetString,
    serial_number: SerialNumber,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct OcspResponse {
    response_status: OcspResponseStatus,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    response_bytes: Option<ResponseBytes>,
}

/// OCSPResponseStatus (RFC 6960 §4.2.1).
#[derive(Enumerated, Copy, Clone, Debug, Eq, PartialEq)]
#[repr(u32)]
pub enum OcspResponseStatus {
    Successful = 0,
    MalformedRequest = 1,
    InternalError = 2,
    TryLater = 3,
    SigRequired = 5,
    Unauthorized = 6,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct ResponseBytes {
    response_type: ObjectIdentifier,
    response: OctetString,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct BasicOcspResponse {
    tbs_response_data: ResponseData,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    certs: Option<Vec<Certificate>>,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct ResponseData {
    #[asn1(
        context_specific = "0",
        default = "Default::default",
        tag_mode = "EXPLICIT"
    )]
    version: Version,
    responder_id: ResponderId,
    produced_at: GeneralizedTime,
    responses: Vec<SingleResponse>,
    #[asn1(context_specific = "1", optional = "true", tag_mode = "EXPLICIT")]
    response_extensions: Option<Extensions>,
}

#[derive(Clone, Debug, Eq, PartialEq, Choice)]
enum ResponderId {
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", constructed = "true")]
    ByKey(OctetString),
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct SingleResponse {
    cert_id: CertId,
    cert_status: CertStatus,
    this_update: GeneralizedTime,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    next_update: Option<GeneralizedTime>,
    #[asn1(context_specific = "1", optional = "true", tag_mode = "EXPLICIT")]
    single_extensions: Option<Extensions>,
}

#[derive(Clone, Debug, Eq, PartialEq, Choice)]
enum CertStatus {
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT")]
    Good(Null),
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", constructed = "true")]
    Revoked(RevokedInfo),
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT")]
    Unknown(Null),
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct RevokedInfo {
    revocation_time: GeneralizedTime,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    /// CRLReason ::= ENUMERATED
    revocation_reason: Option<RevocationReason>,
}

// ---- requests ----

/// Why a request gets no signed answer; each maps to an OCSPResponseStatus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OcspRefusal {
    #[error("the OCSP request is malformed: {0}")]
    Malformed(String),
    #[error("the OCSP request names a certificate of another issuer")]
    Unauthorized,
}

impl OcspRefusal {
    pub fn status(&self) -> OcspResponseStatus {
        match self {
            OcspRefusal::Malformed(_) => OcspResponseStatus::MalformedRequest,
            OcspRefusal::Unauthorized => OcspResponseStatus::Unauthorized,
        }
    }
}

/// The hash algorithm of a CertID (RFC 5019 clients use SHA-1; SHA-256 is accepted too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertIdHash {
    Sha1,
    Sha256,
}

impl CertIdHash {
    /// The name stored with a pre-signed response (`ocsp_responses.hash_algorithm`).
    pub fn as_str(self) -> &'static str {
        match self {
            CertIdHash::Sha1 => "sha1",
            CertIdHash::Sha256 => "sha256",
        }
    }

    pub fn from_name(name: &str) -> Option<CertIdHash> {
        match name {
            "sha1" => Some(CertIdHash::Sha1),
            "sha256" => Some(CertIdHash::Sha256),
            _ => None,
        }
    }

    fn from_oid(oid: ObjectIdentifier) -> Option<CertIdHash> {
        match oid {
            ID_SHA1 => Some(CertIdHash::Sha1),
            ID_SHA256 => Some(CertIdHash::Sha256),
            _ => None,
        }
    }

    fn oid(self) -> ObjectIdentifier {
        match self {
            CertIdHash::Sha1 => ID_SHA1,
            CertIdHash::Sha256 => ID_SHA256,
        }
    }

    fn digest(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            CertIdHash::Sha1 => Sha1::digest(bytes).to_vec(),
            CertIdHash::Sha256 => Sha256::digest(bytes).to_vec(),
        }
    }
}

/// A decoded OCSPRequest: what it asks about and its nonce.
#[derive(Clone, Debug)]
pub struct OcspQuery {
    cert_ids: Vec<CertId>,
    nonce: Option<x509_cert::ext::Extension>,
}

impl OcspQuery {
    /// Reads a DER OCSPRequest. A signed request is accepted and its signature ignored
    /// (RFC 6960 lets a responder that needs no signature do so).
    pub fn from_der(der: &[u8]) -> Result<OcspQuery, OcspRefusal> {
        let request =
            OcspRequest::from_der(der).map_err(|e| OcspRefusal::Malformed(e.to_string()))?;
        let list = request.tbs_request.request_list;
        if list.is_empty() {
            return Err(OcspRefusal::Malformed("the request list is empty".into()));
        }
        if list.len() > MAX_REQUESTS {
            return Err(OcspRefusal::Malformed(format!(
                "{} certificates in one request; at most {MAX_REQUESTS}",
                list.len()
            )));
        }
        let nonce = request
            .tbs_request
            .request_extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == ID_PKIX_OCSP_NONCE)
            .cloned();
        Ok(OcspQuery {
            cert_ids: list.into_iter().map(|r| r.req_cert).collect(),
            nonce,
        })
    }

    /// The one certificate a request asks about (serial as the store keys it) and its CertID
    /// hash, when it asks about exactly one: what a pre-signed response can answer.
    pub fn single(&self) -> Option<(String, CertIdHash)> {
        match self.cert_ids.as_slice() {
            [id] => Some((
                self.serials_hex().remove(0),
                CertIdHash::from_oid(id.hash_algorithm.oid)?,
            )),
            _ => None,
        }
    }

    /// Whether the request carries a nonce (RFC 8954).
    pub fn has_nonce(&self) -> bool {
        self.nonce.is_some()
    }

    /// The serials asked about, as lower-case hex of their magnitude (how the store keys them),
    /// in request order.
    pub fn serials_hex(&self) -> Vec<String> {
        self.cert_ids
            .iter()
            .map(|id| {
                let bytes = id.serial_number.as_bytes();
                let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
                hex::encode(&bytes[first..])
            })
            .collect()
    }
}

/// A certificate's status as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateState {
    Good,
    /// Revoked, or on hold (reason 6, certificateHold).
    Revoked {
        at: OffsetDateTime,
        reason_code: i64,
    },
    Unknown,
}

/// `ocsp.toml`: where the responder key is. The certificate sits beside it (`ocsp.pem`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OcspRecord {
    /// RFC 7512 URI of the responder's private key.
    pub key: String,
    /// Store serial (lower-case hex) of the responder certificate.
    pub serial: String,
}

/// The delegated responder: its key in the HSM, its certificate, and the issuing CA it answers
/// for.
pub struct OcspResponder {
    signer: Box<dyn Signer>,
    certificate: Certificate,
    /// SHA-1 of the responder's subjectPublicKey (responderID byKey).
    key_hash: [u8; 20],
    /// SHA-1 and SHA-256 of the issuing CA's name and key (what CertIDs carry), made once.
    issuer_sha1: (Vec<u8>, Vec<u8>),
    issuer_sha256: (Vec<u8>, Vec<u8>),
    signature_algorithm: AlgorithmIdentifierOwned,
}

fn unreadable(e: impl std::fmt::Display) -> CaError {
    CaError::CaCertificateUnreadable(e.to_string())
}

impl OcspResponder {
    /// `responder_der` must be the certificate of `key`, issued by `issuing_der`.
    pub fn new(
        key: impl Signer + 'static,
        responder_der: &[u8],
        issuing_der: &[u8],
    ) -> Result<OcspResponder, CaError> {
        let certificate = Certificate::from_der(responder_der).map_err(unreadable)?;
        let issuing = Certificate::from_der(issuing_der).map_err(unreadable)?;
        let key_bits = public_key_bits(&key)?;
        let responder_bits = certificate
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes()
            .to_vec();
        if responder_bits != key_bits {
            return Err(CaError::OcspKeyMismatch {
                key_uri: key.key_id(),
            });
        }
        signed_by(responder_der, issuing_der)?;
        let signature_algorithm =
            AlgorithmIdentifierOwned::from_der(key.algorithm_identifier_der())
                .map_err(unreadable)?;
        let issuer_name_der = issuing
            .tbs_certificate()
            .subject()
            .to_der()
            .map_err(unreadable)?;
        let issuer_key_bits = issuing
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes();
        let hashes =
            |hash: CertIdHash| (hash.digest(&issuer_name_der), hash.digest(issuer_key_bits));
        Ok(OcspResponder {
            key_hash: Sha1::digest(&responder_bits).into(),
            signer: Box::new(key),
            certificate,
            issuer_sha1: hashes(CertIdHash::Sha1),
            issuer_sha256: hashes(CertIdHash::Sha256),
            signature_algorithm,
        })
    }

    /// The responder of the CA in `data_dir` (made by `tessera ca init-ocsp`), its key found in
    /// `hsm`. `Ok(None)` when the CA has no responder yet.
    pub fn load(
        hsm: &Hsm,
        data_dir: &Path,
        issuing_der: &[u8],
    ) -> Result<Option<OcspResponder>, CaError> {
        let record_path = data_dir.join(OCSP_RECORD_FILE);
        if !record_path.exists() {
            return Ok(None);
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| CaError::Io { path, error }
        };
        let text = std::fs::read_to_string(&record_path).map_err(io(&record_path))?;
        let record: OcspRecord = toml::from_str(&text).map_err(|e| CaError::CaRecordInvalid {
            path: record_path.clone(),
            reason: e.message().replace('\n', " "),
        })?;
        let cert_path = data_dir.join(OCSP_CERTIFICATE_FILE);
        let pem = std::fs::read(&cert_path).map_err(io(&cert_path))?;
        let (label, der) =
            der::pem::decode_vec(pem.trim_ascii()).map_err(|e| CaError::CaRecordInvalid {
                path: cert_path.clone(),
                reason: format!("not a PEM certificate: {e}"),
            })?;
        if label != "CERTIFICATE" {
            return Err(CaError::CaRecordInvalid {
                path: cert_path,
                reason: format!("PEM block is \"{label}\", not \"CERTIFICATE\""),
            });
        }
        let key = hsm.find_key(&record.key)?;
        OcspResponder::new(key, &der, issuing_der).map(Some)
    }

    /// The responder certificate's notAfter, in seconds since 1970 (for metrics: rotate with
    /// `ca init-ocsp --replace` before it).
    pub fn not_after_unix(&self) -> u64 {
        self.certificate
            .tbs_certificate()
            .validity()
            .not_after
            .to_unix_duration()
            .as_secs()
    }

    /// The responder certificate, PEM.
    pub fn certificate_pem(&self) -> Result<String, CaError> {
        Ok(certificate_pem(
            &self.certificate.to_der().map_err(unreadable)?,
        ))
    }

    /// Refuses a query about any certificate whose CertID does not name our issuing CA (by
    /// SHA-1 or SHA-256 hashes of its name and key).
    pub fn check_issuer(&self, query: &OcspQuery) -> Result<(), OcspRefusal> {
        for id in &query.cert_ids {
            let Some(hash) = CertIdHash::from_oid(id.hash_algorithm.oid) else {
                return Err(OcspRefusal::Unauthorized);
            };
            let (name_hash, key_hash) = self.issuer_hashes(hash);
            if id.issuer_name_hash.as_bytes() != name_hash
                || id.issuer_key_hash.as_bytes() != key_hash
            {
                return Err(OcspRefusal::Unauthorized);
            }
        }
        Ok(())
    }

    fn issuer_hashes(&self, hash: CertIdHash) -> (&[u8], &[u8]) {
        let (name, key) = match hash {
            CertIdHash::Sha1 => &self.issuer_sha1,
            CertIdHash::Sha256 => &self.issuer_sha256,
        };
        (name, key)
    }

    /// The CertID of our certificate `serial_hex` (lower-case hex of the serial's magnitude, as
    /// the store keys it) hashed with `hash`, as RFC 5019 clients send it (parameters NULL).
    pub fn cert_id(&self, serial_hex: &str, hash: CertIdHash) -> Result<CertId, CaError> {
        let serial = hex::decode(serial_hex).map_err(|_| {
            CaError::RevocationEncoding(format!("serial {serial_hex:?} is not hex"))
        })?;
        let (name_hash, key_hash) = self.issuer_hashes(hash);
        Ok(CertId {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: hash.oid(),
                parameters: Some(der::Any::from(Null)),
            },
            issuer_name_hash: OctetString::new(name_hash).map_err(encoding)?,
            issuer_key_hash: OctetString::new(key_hash).map_err(encoding)?,
            serial_number: SerialNumber::new(&serial).map_err(encoding)?,
        })
    }

    /// Signs (one HSM signature) the response about one certificate, without a nonce, to be
    /// stored and served to every request about it until it is replaced: thisUpdate = `now`,
    /// nextUpdate = `now + validity`.
    pub fn sign_one(
        &self,
        cert_id: &CertId,
        state: &CertificateState,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<Vec<u8>, CaError> {
        self.sign_responses(
            std::slice::from_ref(cert_id),
            std::slice::from_ref(state),
            now,
            validity,
            None,
        )
    }

    /// Signs (one HSM signature) a successful response answering `query` with `states` (one per
    /// certificate, in request order), produced at `now`, valid for `validity`, echoing the
    /// request's nonce.
    pub fn respond(
        &self,
        query: &OcspQuery,
        states: &[CertificateState],
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<Vec<u8>, CaError> {
        self.sign_responses(&query.cert_ids, states, now, validity, query.nonce.clone())
    }

    fn sign_responses(
        &self,
        cert_ids: &[CertId],
        states: &[CertificateState],
        now: OffsetDateTime,
        validity: Duration,
        nonce: Option<x509_cert::ext::Extension>,
    ) -> Result<Vec<u8>, CaError> {
        if states.len() != cert_ids.len() {
            return Err(CaError::RevocationEncoding(format!(
                "{} states for {} certificates",
                states.len(),
                cert_ids.len()
            )));
        }
        let this_update = generalized_time(now)?;
        let next_update = generalized_time(now + validity)?;
        let responses = cert_ids
            .iter()
            .zip(states)
            .map(|(id, state)| {
                let cert_status = match state {
                    CertificateState::Good => CertStatus::Good(Null),
                    CertificateState::Unknown => CertStatus::Unknown(Null),
                    CertificateState::Revoked { at, reason_code } => {
                        CertStatus::Revoked(RevokedInfo {
                            revocation_time: generalized_time(*at)?,
                            // RFC 5280 §5.3.1: absent rather than unspecified.
                            revocation_reason: match RevocationReason::from_code(*reason_code) {
                                Some(RevocationReason::Unspecified) => None,
                                Some(reason) => Some(reason),
                                None => {
                                    return Err(CaError::RevocationEncoding(format!(
                                        "revocation reason code {reason_code} cannot appear in an OCSP response"
                                    )));
                                }
                            },
                        })
                    }
                };
                Ok(SingleResponse {
                    cert_id: id.clone(),
                    cert_status,
                    this_update,
                    next_update: Some(next_update),
                    single_extensions: None,
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        let tbs = ResponseData {
            version: Version::V1,
            responder_id: ResponderId::ByKey(
                OctetString::new(self.key_hash.to_vec()).map_err(encoding)?,
            ),
            produced_at: this_update,
            responses,
            response_extensions: nonce.map(|n| vec![n]),
        };
        let tbs_der = tbs.to_der().map_err(encoding)?;
        let signature = self.signer.sign(&tbs_der)?;
        let basic = BasicOcspResponse {
            tbs_response_data: tbs,
            signature_algorithm: self.signature_algorithm.clone(),
            signature: BitString::from_bytes(&signature).map_err(encoding)?,
            certs: Some(vec![self.certificate.clone()]),
        };
        OcspResponse {
            response_status: OcspResponseStatus::Successful,
            response_bytes: Some(ResponseBytes {
                response_type: ID_PKIX_OCSP_BASIC,
                response: OctetString::new(basic.to_der().map_err(encoding)?).map_err(encoding)?,
            }),
        }
        .to_der()
        .map_err(encoding)
    }
}

/// Refuses a responder certificate that `issuing_der` did not sign.
fn signed_by(responder_der: &[u8], issuing_der: &[u8]) -> Result<(), CaError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, responder) = X509Certificate::from_der(responder_der).map_err(unreadable)?;
    let (_, issuing) = X509Certificate::from_der(issuing_der).map_err(unreadable)?;
    if responder.issuer() != issuing.subject()
        || responder
            .verify_signature(Some(issuing.public_key()))
            .is_err()
    {
        return Err(CaError::OcspResponderForeign);
    }
    Ok(())
}

/// An unsigned OCSPResponse carrying only an error status.
pub fn error_response(status: OcspResponseStatus) -> Vec<u8> {
    OcspResponse {
        response_status: status,
        response_bytes: None,
    }
    .to_der()
    .expect("a two-field SEQUENCE always encodes")
}

fn encoding(e: der::Error) -> CaError {
    CaError::RevocationEncoding(e.to_string())
}

fn generalized_time(t: OffsetDateTime) -> Result<GeneralizedTime, CaError> {
    let secs = u64::try_from(t.unix_timestamp())
        .map_err(|_| CaError::RevocationEncoding(format!("time {t} is before 1970")))?;
    GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(secs)).map_err(encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_are_status_only() {
        assert_eq!(
            error_response(OcspResponseStatus::MalformedRequest),
            vec![0x30, 0x03, 0x0a, 0x01, 0x01]
        );
        assert_eq!(
            error_response(OcspResponseStatus::Unauthorized),
            vec![0x30, 0x03, 0x0a, 0x01, 0x06]
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let err = OcspQuery::from_der(b"not DER").unwrap_err();
        assert!(matches!(err, OcspRefusal::Malformed(_)), "{err:?}");
        assert_eq!(err.status(), OcspResponseStatus::MalformedRequest);
    }

    #[test]
    fn empty_request_list_is_malformed() {
        // OCSPRequest { TBSRequest { requestList SEQUENCE {} } }
        let der = [0x30, 0x04, 0x30, 0x02, 0x30, 0x00];
        assert_eq!(
            OcspQuery::from_der(&der).unwrap_err(),
            OcspRefusal::Malformed("the request list is empty".into())
        );
    }
}
