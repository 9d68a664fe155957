//! The HSM as rcgen's remote signer: an `HsmKey` seen through rcgen's `SigningKey` and
//! `PublicKeyData` traits, and public keys from a SubjectPublicKeyInfo for the certificate's
//! subject.

use super::CaError;
use crate::hsm::{HsmError, HsmKey, KeySpec, SignatureScheme};
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};
use std::cell::RefCell;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

thread_local! {
    /// The to-be-signed bytes rcgen handed to [`CapturingSigner`] on this thread.
    static CAPTURED_TO_BE_SIGNED: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    /// rcgen's `SigningKey::sign` can only return `rcgen::Error::RemoteKeyError`; the HSM's own
    /// error (which says what to check) is parked here by the thread that signed, and picked up
    /// by the same thread right after rcgen returns.
    static LAST_SIGNING_ERROR: RefCell<Option<HsmError>> = const { RefCell::new(None) };
}

/// rcgen's algorithm and the HSM mechanism for a CA key of this kind.
pub fn algorithm_for(spec: KeySpec) -> (&'static SignatureAlgorithm, SignatureScheme) {
    match spec {
        KeySpec::EcP256 => (&rcgen::PKCS_ECDSA_P256_SHA256, SignatureScheme::EcdsaSha256),
        KeySpec::EcP384 => (&rcgen::PKCS_ECDSA_P384_SHA384, SignatureScheme::EcdsaSha384),
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
            (&rcgen::PKCS_RSA_SHA256, SignatureScheme::RsaPkcs1Sha256)
        }
    }
}

/// A CA private key in the HSM, usable by rcgen. Cheap to clone (the `HsmKey` is).
#[derive(Clone)]
pub struct HsmSigningKey {
    key: HsmKey,
    algorithm: &'static SignatureAlgorithm,
    scheme: SignatureScheme,
    /// The subjectPublicKey BIT STRING contents of the key's SPKI.
    public_key_bits: Vec<u8>,
}

impl HsmSigningKey {
    pub fn new(key: HsmKey) -> Result<HsmSigningKey, CaError> {
        let (algorithm, scheme) = algorithm_for(key.spec());
        let (_, spki) = SubjectPublicKeyInfo::from_der(key.public_key_der()).map_err(|e| {
            CaError::HsmPublicKey(format!("the HSM returned an unreadable public key: {e}"))
        })?;
        let public_key_bits = spki.subject_public_key.data.to_vec();
        Ok(HsmSigningKey {
            key,
            algorithm,
            scheme,
            public_key_bits,
        })
    }

    pub fn hsm_key(&self) -> &HsmKey {
        &self.key
    }

    /// Turns rcgen's error into ours, recovering the HSM's error if the signer parked one.
    pub fn take_error(err: rcgen::Error) -> CaError {
        match LAST_SIGNING_ERROR.with(|slot| slot.borrow_mut().take()) {
            Some(hsm) if matches!(err, rcgen::Error::RemoteKeyError) => CaError::Hsm(hsm),
            _ => CaError::CertificateEncoding(err.to_string()),
        }
    }
}

impl PublicKeyData for HsmSigningKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key_bits
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

impl SigningKey for HsmSigningKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key.sign(self.scheme, msg).map_err(|e| {
            LAST_SIGNING_ERROR.with(|slot| *slot.borrow_mut() = Some(e));
            rcgen::Error::RemoteKeyError
        })
    }
}

/// The issuing CA key as rcgen sees it during issuance: it does not sign, it hands the
/// tbsCertificate bytes back (on the calling thread) so the CA can record them, sign them in the
/// HSM, and assemble the certificate itself. This is what lets the caller store the
/// to-be-signed certificate before the HSM signs.
#[derive(Clone)]
pub struct CapturingSigner {
    inner: HsmSigningKey,
}

impl CapturingSigner {
    pub fn new(inner: HsmSigningKey) -> CapturingSigner {
        CapturingSigner { inner }
    }

    pub fn signing_key(&self) -> &HsmSigningKey {
        &self.inner
    }

    /// The tbsCertificate captured by the last rcgen call on this thread.
    pub fn take_captured() -> Option<Vec<u8>> {
        CAPTURED_TO_BE_SIGNED.with(|slot| slot.borrow_mut().take())
    }
}

impl PublicKeyData for CapturingSigner {
    fn der_bytes(&self) -> &[u8] {
        self.inner.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.inner.algorithm()
    }
}

impl SigningKey for CapturingSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        CAPTURED_TO_BE_SIGNED.with(|slot| *slot.borrow_mut() = Some(msg.to_vec()));
        Ok(Vec::new())
    }
}

impl HsmSigningKey {
    /// Signs `message` in the HSM with the scheme matching the key.
    pub fn sign_in_hsm(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.key.sign(self.scheme, message)
    }

    /// DER AlgorithmIdentifier of the signatures this key makes (RFC 5758 / RFC 4055).
    pub fn signature_algorithm_identifier(&self) -> &'static [u8] {
        match self.scheme {
            // SEQUENCE { ecdsa-with-SHA256 }
            SignatureScheme::EcdsaSha256 => &[
                0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
            ],
            // SEQUENCE { ecdsa-with-SHA384 }
            SignatureScheme::EcdsaSha384 => &[
                0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
            ],
            // SEQUENCE { sha256WithRSAEncryption, NULL }; PSS is never chosen by algorithm_for
            SignatureScheme::RsaPkcs1Sha256 | SignatureScheme::RsaPssSha256 => &[
                0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05,
                0x00,
            ],
        }
    }
}

/// A subject public key that Tessera certifies: EC P-256, EC P-384 or RSA 2048/3072/4096.
#[derive(Clone, Debug)]
pub struct SubjectPublicKey {
    algorithm: &'static SignatureAlgorithm,
    public_key_bits: Vec<u8>,
    /// e.g. "EC P-256", "RSA 2048"
    pub description: String,
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";

impl SubjectPublicKey {
    /// Reads a SubjectPublicKeyInfo (DER) and refuses, by name, any algorithm Tessera does not
    /// certify.
    pub fn from_spki_der(der: &[u8]) -> Result<SubjectPublicKey, CaError> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| CaError::PublicKeyUnreadable(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CaError::PublicKeyUnreadable(
                "trailing bytes after the SubjectPublicKeyInfo".into(),
            ));
        }
        let alg_oid = spki.algorithm.algorithm.to_id_string();
        let (algorithm, description): (&'static SignatureAlgorithm, String) = match alg_oid.as_str()
        {
            OID_EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|oid| oid.to_id_string());
                match curve.as_deref() {
                    Some("1.2.840.10045.3.1.7") => {
                        (&rcgen::PKCS_ECDSA_P256_SHA256, "EC P-256".into())
                    }
                    Some("1.3.132.0.34") => (&rcgen::PKCS_ECDSA_P384_SHA384, "EC P-384".into()),
                    Some("1.3.132.0.35") => {
                        return Err(CaError::UnsupportedKeyAlgorithm("EC P-521".into()));
                    }
                    Some("1.3.132.0.10") => {
                        return Err(CaError::UnsupportedKeyAlgorithm("EC secp256k1".into()));
                    }
                    Some(other) => {
                        return Err(CaError::UnsupportedKeyAlgorithm(format!(
                            "EC curve {other}"
                        )));
                    }
                    None => {
                        return Err(CaError::UnsupportedKeyAlgorithm(
                            "EC with explicit curve parameters".into(),
                        ));
                    }
                }
            }
            OID_RSA_ENCRYPTION => {
                let bits = match spki.parsed() {
                    Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => rsa.key_size(),
                    _ => {
                        return Err(CaError::PublicKeyUnreadable(
                            "the RSA public key does not parse".into(),
                        ));
                    }
                };
                if ![2048, 3072, 4096].contains(&bits) {
                    return Err(CaError::UnsupportedKeyAlgorithm(format!("RSA {bits}")));
                }
                (&rcgen::PKCS_RSA_SHA256, format!("RSA {bits}"))
            }
            other => return Err(CaError::UnsupportedKeyAlgorithm(key_algorithm_name(other))),
        };
        Ok(SubjectPublicKey {
            algorithm,
            public_key_bits: spki.subject_public_key.data.to_vec(),
            description,
        })
    }
}

fn key_algorithm_name(oid: &str) -> String {
    match oid {
        "1.3.101.112" => "Ed25519".into(),
        "1.3.101.113" => "Ed448".into(),
        "1.3.101.110" => "X25519".into(),
        "1.3.101.111" => "X448".into(),
        "1.2.840.113549.1.1.10" => "RSASSA-PSS".into(),
        "1.2.840.10040.4.1" => "DSA".into(),
        "1.2.840.10046.2.1" => "Diffie-Hellman".into(),
        other => format!("with OID {other}"),
    }
}

impl PublicKeyData for SubjectPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key_bits
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}
