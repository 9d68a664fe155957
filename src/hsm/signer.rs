//! The one signing seam. Every private key Tessera signs with — the issuing CA, the root (for
//! its CRL), the OCSP responder, the audit checkpoint key — is seen by the rest of the code as a
//! [`Signer`]: its public key, the one signature algorithm it uses, and `sign`. `HsmKey`
//! implements it in production; tests may implement it with a software key. (smallstep's
//! `kms/apiv1` answers every key store with one `crypto.Signer` in the same way.)

use super::error::HsmError;
use super::keys::{HsmKey, KeySpec, SignatureScheme};

/// A private key that signs with one fixed algorithm. `Send + Sync`, so one signer serves
/// every thread; `sign` may block (an HSM round trip): async callers run it on a blocking
/// thread.
pub trait Signer: Send + Sync {
    /// Names the key in messages and records (an RFC 7512 `pkcs11:` URI for HSM keys).
    fn key_id(&self) -> String;
    /// The public key, SubjectPublicKeyInfo DER.
    fn public_key_der(&self) -> &[u8];
    /// How every signature of this key is made.
    fn scheme(&self) -> SignatureScheme;
    /// Hashes and signs `message` (ECDSA signatures are DER ECDSA-Sig-Value).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError>;

    /// DER AlgorithmIdentifier of the signatures this key makes.
    fn algorithm_identifier_der(&self) -> &'static [u8] {
        self.scheme().algorithm_identifier_der()
    }
}

impl SignatureScheme {
    /// The scheme Tessera signs with for a key of this kind: ECDSA with the curve's hash,
    /// RSA PKCS#1 v1.5 with SHA-256.
    pub fn for_key(spec: KeySpec) -> SignatureScheme {
        match spec {
            KeySpec::EcP256 => SignatureScheme::EcdsaSha256,
            KeySpec::EcP384 => SignatureScheme::EcdsaSha384,
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
                SignatureScheme::RsaPkcs1Sha256
            }
        }
    }

    /// DER AlgorithmIdentifier of this scheme's signatures (RFC 5758, RFC 4055).
    pub fn algorithm_identifier_der(self) -> &'static [u8] {
        match self {
            // SEQUENCE { ecdsa-with-SHA256 }
            SignatureScheme::EcdsaSha256 => &[
                0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
            ],
            // SEQUENCE { ecdsa-with-SHA384 }
            SignatureScheme::EcdsaSha384 => &[
                0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
            ],
            // SEQUENCE { sha256WithRSAEncryption, NULL }
            SignatureScheme::RsaPkcs1Sha256 => &[
                0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05,
                0x00,
            ],
            // SEQUENCE { id-RSASSA-PSS, { SHA-256, MGF1 with SHA-256, salt length 32 } }
            SignatureScheme::RsaPssSha256 => &[
                0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30,
                0x34, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04,
                0x02, 0x01, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65,
                0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0xa2, 0x03, 0x02, 0x01, 0x20,
            ],
        }
    }
}

/// An HSM key signs with [`SignatureScheme::for_key`] of its kind, inside the HSM.
impl Signer for HsmKey {
    fn key_id(&self) -> String {
        self.uri()
    }

    fn public_key_der(&self) -> &[u8] {
        HsmKey::public_key_der(self)
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::for_key(self.spec())
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.sign_with(Signer::scheme(self), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Decode;

    #[test]
    fn algorithm_identifiers_are_well_formed_der() {
        for scheme in [
            SignatureScheme::EcdsaSha256,
            SignatureScheme::EcdsaSha384,
            SignatureScheme::RsaPkcs1Sha256,
            SignatureScheme::RsaPssSha256,
        ] {
            let id = spki::AlgorithmIdentifierOwned::from_der(scheme.algorithm_identifier_der())
                .unwrap_or_else(|e| panic!("{scheme:?}: {e}"));
            assert!(id.oid.to_string().starts_with("1.2.840."), "{scheme:?}");
        }
    }
}
