//! One link of a chain: does `issuer`'s key sign `child`? Implemented here, not by a path
//! validator, so that Yubico's non-textbook certificates (no basicConstraints, pathlen 0 roots)
//! are judged by the rules in docs/attestation.md.

use const_oid::ObjectIdentifier;
use der::Encode;
use sha2::{Digest, Sha256, Sha384, Sha512};
use signature::Verifier;
use signature::hazmat::PrehashVerifier;

use super::certificate::ParsedCertificate;
use super::error::{AttestError, CertificateRole};

const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_WITH_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// Outcome of checking one link.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LinkCheck {
    /// The issuer's key made the child's signature.
    Signed,
    /// The signature does not verify under the issuer's key (or the key cannot check it).
    NotSigned,
}

#[derive(Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// Checks the child's own signature-algorithm fields (supported, inner = outer). Done once per
/// certificate, before any issuer is tried.
pub(crate) fn check_signature_algorithm(
    child: &ParsedCertificate,
    role: &CertificateRole,
) -> Result<(), AttestError> {
    let outer = child.certificate.signature_algorithm();
    let inner = child.certificate.tbs_certificate().signature();
    if outer.to_der().ok() != inner.to_der().ok() {
        return Err(AttestError::SignatureAlgorithmMismatch { role: role.clone() });
    }
    scheme(outer.oid)
        .map(|_| ())
        .ok_or_else(|| AttestError::UnsupportedSignatureAlgorithm {
            role: role.clone(),
            oid: outer.oid.to_string(),
        })
}

fn scheme(oid: ObjectIdentifier) -> Option<(bool, Hash)> {
    // (is_rsa, hash)
    Some(match oid {
        o if o == SHA256_WITH_RSA => (true, Hash::Sha256),
        o if o == SHA384_WITH_RSA => (true, Hash::Sha384),
        o if o == SHA512_WITH_RSA => (true, Hash::Sha512),
        o if o == ECDSA_WITH_SHA256 => (false, Hash::Sha256),
        o if o == ECDSA_WITH_SHA384 => (false, Hash::Sha384),
        o if o == ECDSA_WITH_SHA512 => (false, Hash::Sha512),
        _ => return None,
    })
}

/// Does `issuer`'s public key verify `child`'s signature? Call `check_signature_algorithm` first.
pub(crate) fn verify_link(child: &ParsedCertificate, issuer: &ParsedCertificate) -> LinkCheck {
    let Some((is_rsa, hash)) = scheme(child.certificate.signature_algorithm().oid) else {
        return LinkCheck::NotSigned;
    };
    let Some(signature) = child.certificate.signature().as_bytes() else {
        return LinkCheck::NotSigned;
    };
    let spki = issuer
        .certificate
        .tbs_certificate()
        .subject_public_key_info();
    let message = child.tbs_der.as_slice();
    let ok = if is_rsa {
        verify_rsa(spki, hash, message, signature)
    } else {
        verify_ecdsa(spki, hash, message, signature)
    };
    if ok {
        LinkCheck::Signed
    } else {
        LinkCheck::NotSigned
    }
}

fn verify_rsa(
    spki: &spki::SubjectPublicKeyInfoOwned,
    hash: Hash,
    message: &[u8],
    signature: &[u8],
) -> bool {
    let Ok(spki_der) = spki.to_der() else {
        return false;
    };
    let Ok(spki_ref) = spki::SubjectPublicKeyInfoRef::try_from(spki_der.as_slice()) else {
        return false;
    };
    let Ok(key) = rsa::RsaPublicKey::try_from(spki_ref) else {
        return false;
    };
    let Ok(signature) = rsa::pkcs1v15::Signature::try_from(signature) else {
        return false;
    };
    match hash {
        Hash::Sha256 => rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key)
            .verify(message, &signature)
            .is_ok(),
        Hash::Sha384 => rsa::pkcs1v15::VerifyingKey::<Sha384>::new(key)
            .verify(message, &signature)
            .is_ok(),
        Hash::Sha512 => rsa::pkcs1v15::VerifyingKey::<Sha512>::new(key)
            .verify(message, &signature)
            .is_ok(),
    }
}

fn verify_ecdsa(
    spki: &spki::SubjectPublicKeyInfoOwned,
    hash: Hash,
    message: &[u8],
    signature: &[u8],
) -> bool {
    if spki.algorithm.oid != OID_EC_PUBLIC_KEY {
        return false;
    }
    let Some(curve) = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
    else {
        return false;
    };
    let Some(point) = spki.subject_public_key.as_bytes() else {
        return false;
    };
    let digest: Vec<u8> = match hash {
        Hash::Sha256 => Sha256::digest(message).to_vec(),
        Hash::Sha384 => Sha384::digest(message).to_vec(),
        Hash::Sha512 => Sha512::digest(message).to_vec(),
    };
    if curve == OID_P256 {
        let Ok(key) = p256::ecdsa::VerifyingKey::from_sec1_bytes(point) else {
            return false;
        };
        let Ok(sig) = p256::ecdsa::DerSignature::from_bytes(signature) else {
            return false;
        };
        key.verify_prehash(&digest, &sig).is_ok()
    } else if curve == OID_P384 {
        let Ok(key) = p384::ecdsa::VerifyingKey::from_sec1_bytes(point) else {
            return false;
        };
        let Ok(sig) = p384::ecdsa::DerSignature::from_bytes(signature) else {
            return false;
        };
        key.verify_prehash(&digest, &sig).is_ok()
    } else {
        false
    }
}
