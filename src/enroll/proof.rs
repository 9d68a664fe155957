//! Proof of possession: does the attested public key verify the signature over the
//! enrollment's proof message? ECDSA P-256/P-384 over SHA-256 (DER signature), RSA PKCS#1 v1.5
//! over SHA-256.

use der::Decode as _;
use sha2::{Digest, Sha256};
use signature::Verifier as _;
use signature::hazmat::PrehashVerifier as _;
use spki::SubjectPublicKeyInfoRef;

const OID_EC_PUBLIC_KEY: spki::ObjectIdentifier =
    spki::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_RSA: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_P256: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// True when `signature` is a valid signature of `message` by the key `spki_der`.
pub fn signature_verifies(spki_der: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok(spki) = SubjectPublicKeyInfoRef::from_der(spki_der) else {
        return false;
    };
    let digest = Sha256::digest(message);
    if spki.algorithm.oid == OID_EC_PUBLIC_KEY {
        let Some(curve) = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<spki::ObjectIdentifier>().ok())
        else {
            return false;
        };
        let Some(point) = spki.subject_public_key.as_bytes() else {
            return false;
        };
        if curve == OID_P256 {
            let (Ok(key), Ok(sig)) = (
                p256::ecdsa::VerifyingKey::from_sec1_bytes(point),
                p256::ecdsa::DerSignature::from_bytes(signature),
            ) else {
                return false;
            };
            key.verify_prehash(&digest, &sig).is_ok()
        } else if curve == OID_P384 {
            let (Ok(key), Ok(sig)) = (
                p384::ecdsa::VerifyingKey::from_sec1_bytes(point),
                p384::ecdsa::DerSignature::from_bytes(signature),
            ) else {
                return false;
            };
            key.verify_prehash(&digest, &sig).is_ok()
        } else {
            false
        }
    } else if spki.algorithm.oid == OID_RSA {
        let Ok(key) = rsa::RsaPublicKey::try_from(spki) else {
            return false;
        };
        let Ok(sig) = rsa::pkcs1v15::Signature::try_from(signature) else {
            return false;
        };
        rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key)
            .verify(message, &sig)
            .is_ok()
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::EncodePublicKey as _;

    #[test]
    fn ecdsa_p256_proof_verifies_only_for_its_key_and_message() {
        use p256::ecdsa::signature::hazmat::PrehashSigner as _;
        let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let other = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let spki = key.verifying_key().to_public_key_der().unwrap();
        let message = crate::protocol::proof_message("enr_1", "9a", &[1; 32]);
        let sig: p256::ecdsa::Signature = key.sign_prehash(&Sha256::digest(&message)).unwrap();
        let der = sig.to_der();
        assert!(signature_verifies(
            spki.as_bytes(),
            &message,
            der.as_bytes()
        ));
        let wrong = crate::protocol::proof_message("enr_1", "9a", &[2; 32]);
        assert!(!signature_verifies(spki.as_bytes(), &wrong, der.as_bytes()));
        let other_spki = other.verifying_key().to_public_key_der().unwrap();
        assert!(!signature_verifies(
            other_spki.as_bytes(),
            &message,
            der.as_bytes()
        ));
        assert!(!signature_verifies(b"not a key", &message, der.as_bytes()));
    }

    #[test]
    fn ecdsa_p384_proof_over_sha256_verifies() {
        use p384::ecdsa::signature::hazmat::PrehashSigner as _;
        use p384::pkcs8::EncodePublicKey as _;
        let key = p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).unwrap();
        let spki = key.verifying_key().to_public_key_der().unwrap();
        let message = crate::protocol::proof_message("enr_1", "9c", &[1; 32]);
        let sig: p384::ecdsa::Signature = key.sign_prehash(&Sha256::digest(&message)).unwrap();
        assert!(signature_verifies(
            spki.as_bytes(),
            &message,
            sig.to_der().as_bytes()
        ));
        assert!(!signature_verifies(
            spki.as_bytes(),
            b"other",
            sig.to_der().as_bytes()
        ));
    }

    #[test]
    fn rsa_pkcs1v15_proof_over_sha256_verifies() {
        use rsa::pkcs8::EncodePublicKey as _;
        use signature::{SignatureEncoding as _, Signer as _};
        // 1024 bits keeps the test fast; the size is the attestation policy's business.
        let key = rsa::RsaPrivateKey::new(&mut rand::rng(), 1024).unwrap();
        let spki = key.to_public_key().to_public_key_der().unwrap();
        let message = crate::protocol::proof_message("enr_1", "9a", &[1; 32]);
        let sig = rsa::pkcs1v15::SigningKey::<Sha256>::new(key).sign(&message);
        assert!(signature_verifies(spki.as_bytes(), &message, &sig.to_vec()));
        assert!(!signature_verifies(
            spki.as_bytes(),
            b"other",
            &sig.to_vec()
        ));
    }
}
