//! The subject's public key as rcgen sees it: read from a SubjectPublicKeyInfo, refused by name
//! unless it is one of the kinds Tessera certifies.

use super::CaError;
use rcgen::{PublicKeyData, SignatureAlgorithm};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

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
