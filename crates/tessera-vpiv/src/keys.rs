//! Private keys held in PIV slots: generation, import, the card's public-key encodings,
//! signing (ECDSA over a given hash, raw RSA, Ed25519) and ECDH.

use p256::elliptic_curve::Generate;
use p256::elliptic_curve::sec1::ToSec1Point;
use rsa::traits::PublicKeyParts;
use serde::{Deserialize, Serialize};
use signature::hazmat::PrehashSigner;
use zeroize::Zeroizing;

use super::tlv;

/// Key algorithm, with the byte Yubico's PIV uses for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    Rsa1024,
    Rsa2048,
    Rsa3072,
    Rsa4096,
    EccP256,
    EccP384,
    Ed25519,
    X25519,
}

impl KeyAlgorithm {
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x06 => Self::Rsa1024,
            0x07 => Self::Rsa2048,
            0x05 => Self::Rsa3072,
            0x16 => Self::Rsa4096,
            0x11 => Self::EccP256,
            0x14 => Self::EccP384,
            0xE0 => Self::Ed25519,
            0xE1 => Self::X25519,
            _ => return None,
        })
    }

    pub fn byte(self) -> u8 {
        match self {
            Self::Rsa1024 => 0x06,
            Self::Rsa2048 => 0x07,
            Self::Rsa3072 => 0x05,
            Self::Rsa4096 => 0x16,
            Self::EccP256 => 0x11,
            Self::EccP384 => 0x14,
            Self::Ed25519 => 0xE0,
            Self::X25519 => 0xE1,
        }
    }

    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            Self::Rsa1024 => Some(1024),
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
            Self::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    /// Whether firmware `version` offers this algorithm (RSA 3072/4096 and Ed25519 from 5.7).
    pub fn supported_by(self, version: [u8; 3]) -> bool {
        match self {
            Self::Rsa3072 | Self::Rsa4096 | Self::Ed25519 | Self::X25519 => version >= [5, 7, 0],
            _ => true,
        }
    }
}

/// Why a key operation was refused (each maps to one status word in the card).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("input has the wrong length or value for this key")]
    BadInput,
    #[error("this key cannot do that operation")]
    WrongKeyType,
    #[error("key material is invalid")]
    InvalidKey,
}

/// A private key in a slot.
#[derive(Clone)]
pub enum SlotPrivateKey {
    EccP256(p256::SecretKey),
    EccP384(p384::SecretKey),
    Rsa(Box<rsa::RsaPrivateKey>),
    Ed25519(Box<ed25519_dalek::SigningKey>),
    X25519(Zeroizing<[u8; 32]>),
}

impl std::fmt::Debug for SlotPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotPrivateKey({:?}, [redacted])", self.algorithm())
    }
}

impl SlotPrivateKey {
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, KeyError> {
        let mut rng = rand::rng();
        Ok(match algorithm {
            KeyAlgorithm::EccP256 => Self::EccP256(p256::SecretKey::generate_from_rng(&mut rng)),
            KeyAlgorithm::EccP384 => Self::EccP384(p384::SecretKey::generate_from_rng(&mut rng)),
            KeyAlgorithm::Ed25519 => {
                Self::Ed25519(Box::new(ed25519_dalek::SigningKey::generate(&mut rng)))
            }
            KeyAlgorithm::X25519 => {
                use rand::RngExt;
                let mut k = Zeroizing::new([0u8; 32]);
                rng.fill(&mut k[..]);
                Self::X25519(k)
            }
            rsa_alg => {
                let bits = rsa_alg.rsa_bits().ok_or(KeyError::WrongKeyType)?;
                Self::Rsa(Box::new(
                    rsa::RsaPrivateKey::new(&mut rng, bits).map_err(|_| KeyError::InvalidKey)?,
                ))
            }
        })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        match self {
            Self::EccP256(_) => KeyAlgorithm::EccP256,
            Self::EccP384(_) => KeyAlgorithm::EccP384,
            Self::Ed25519(_) => KeyAlgorithm::Ed25519,
            Self::X25519(_) => KeyAlgorithm::X25519,
            Self::Rsa(k) => match k.size() * 8 {
                1024 => KeyAlgorithm::Rsa1024,
                3072 => KeyAlgorithm::Rsa3072,
                4096 => KeyAlgorithm::Rsa4096,
                _ => KeyAlgorithm::Rsa2048,
            },
        }
    }

    /// Imports from IMPORT KEY's TLVs: RSA 01 p, 02 q (03–05 CRT values are recomputed and
    /// must match), EC 06 private scalar, Ed25519 07 seed.
    pub fn import<'a>(algorithm: KeyAlgorithm, tlvs: &[tlv::Tlv<'a>]) -> Result<Self, KeyError> {
        let get = |t: u16| tlv::find(tlvs, t).ok_or(KeyError::BadInput);
        let exact = |v: &'a [u8], n: usize| {
            if v.len() == n {
                Ok(v)
            } else {
                Err(KeyError::BadInput)
            }
        };
        Ok(match algorithm {
            KeyAlgorithm::EccP256 => Self::EccP256(
                p256::SecretKey::from_slice(exact(get(0x06)?, 32)?)
                    .map_err(|_| KeyError::BadInput)?,
            ),
            KeyAlgorithm::EccP384 => Self::EccP384(
                p384::SecretKey::from_slice(exact(get(0x06)?, 48)?)
                    .map_err(|_| KeyError::BadInput)?,
            ),
            KeyAlgorithm::Ed25519 => {
                let seed: [u8; 32] = get(0x07)?.try_into().map_err(|_| KeyError::BadInput)?;
                Self::Ed25519(Box::new(ed25519_dalek::SigningKey::from_bytes(&seed)))
            }
            KeyAlgorithm::X25519 => {
                let k: [u8; 32] = get(0x08)?.try_into().map_err(|_| KeyError::BadInput)?;
                Self::X25519(Zeroizing::new(k))
            }
            rsa_alg => {
                let bits = rsa_alg.rsa_bits().ok_or(KeyError::WrongKeyType)?;
                let (p, q) = (get(0x01)?, get(0x02)?);
                if p.len() * 16 != bits || q.len() * 16 != bits {
                    return Err(KeyError::BadInput);
                }
                let prec = (bits / 2) as u32;
                let to_uint = |b: &[u8]| {
                    rsa::BoxedUint::from_be_slice(b, prec).map_err(|_| KeyError::BadInput)
                };
                let e = rsa::BoxedUint::from_be_slice(&[1, 0, 1], 64)
                    .map_err(|_| KeyError::InvalidKey)?;
                let key = rsa::RsaPrivateKey::from_p_q(to_uint(p)?, to_uint(q)?, e)
                    .map_err(|_| KeyError::BadInput)?;
                if key.size() * 8 != bits {
                    return Err(KeyError::BadInput);
                }
                Self::Rsa(Box::new(key))
            }
        })
    }

    /// The public key as PIV encodes it inside 7F49 (and GET METADATA tag 04):
    /// RSA 81 modulus 82 exponent; EC 86 uncompressed point; Ed25519 86 raw key.
    pub fn public_key_tlvs(&self) -> Vec<u8> {
        match self {
            Self::EccP256(k) => tlv::encode(0x86, k.public_key().to_sec1_point(false).as_bytes()),
            Self::EccP384(k) => tlv::encode(0x86, k.public_key().to_sec1_point(false).as_bytes()),
            Self::Ed25519(k) => tlv::encode(0x86, k.verifying_key().as_bytes()),
            Self::X25519(k) => tlv::encode(0x86, &x25519_public(k)),
            Self::Rsa(k) => {
                let mut out = tlv::encode(0x81, &k.n().as_ref().to_be_bytes_trimmed_vartime());
                out.extend(tlv::encode(0x82, &k.e().to_be_bytes_trimmed_vartime()));
                out
            }
        }
    }

    /// SubjectPublicKeyInfo DER of the public key.
    pub fn public_key_spki_der(&self) -> Result<Vec<u8>, KeyError> {
        use p256::pkcs8::EncodePublicKey;
        let doc = match self {
            Self::EccP256(k) => k.public_key().to_public_key_der(),
            Self::EccP384(k) => k.public_key().to_public_key_der(),
            Self::Ed25519(k) => k.verifying_key().to_public_key_der(),
            Self::Rsa(k) => k.to_public_key().to_public_key_der(),
            Self::X25519(k) => {
                // SEQUENCE { SEQUENCE { OID 1.3.101.110 }, BIT STRING 00 || key }
                let mut spki = vec![
                    0x30, 0x2A, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x6E, 0x03, 0x21, 0x00,
                ];
                spki.extend_from_slice(&x25519_public(k));
                return Ok(spki);
            }
        };
        doc.map(|d| d.as_bytes().to_vec())
            .map_err(|_| KeyError::InvalidKey)
    }

    /// GENERAL AUTHENTICATE with tag 81: ECDSA over a hash (left-padded to the field size,
    /// DER signature out), raw RSA (input as long as the modulus), Ed25519 over the message.
    pub fn sign(&self, input: &[u8]) -> Result<Vec<u8>, KeyError> {
        fn field_pad(input: &[u8], n: usize) -> Result<Vec<u8>, KeyError> {
            if input.is_empty() || input.len() > n {
                return Err(KeyError::BadInput);
            }
            let mut out = vec![0u8; n - input.len()];
            out.extend_from_slice(input);
            Ok(out)
        }
        match self {
            Self::EccP256(k) => {
                let sk = p256::ecdsa::SigningKey::from(k);
                let sig: p256::ecdsa::Signature = sk
                    .sign_prehash(&field_pad(input, 32)?)
                    .map_err(|_| KeyError::BadInput)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            Self::EccP384(k) => {
                let sk = p384::ecdsa::SigningKey::from(k);
                let sig: p384::ecdsa::Signature = sk
                    .sign_prehash(&field_pad(input, 48)?)
                    .map_err(|_| KeyError::BadInput)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            Self::Ed25519(k) => {
                use ed25519_dalek::Signer;
                Ok(k.sign(input).to_bytes().to_vec())
            }
            Self::Rsa(k) => {
                let size = k.size();
                if input.len() != size {
                    return Err(KeyError::BadInput);
                }
                let prec = k.n().as_ref().bits_precision();
                let c =
                    rsa::BoxedUint::from_be_slice(input, prec).map_err(|_| KeyError::BadInput)?;
                let m = rsa::hazmat::rsa_decrypt_and_check(k.as_ref(), Some(&mut rand::rng()), &c)
                    .map_err(|_| KeyError::BadInput)?;
                let bytes = m.to_be_bytes();
                let mut out = Zeroizing::new(vec![0u8; size]);
                let src = &bytes[bytes.len().saturating_sub(size)..];
                out[size - src.len()..].copy_from_slice(src);
                Ok(out.to_vec())
            }
            Self::X25519(_) => Err(KeyError::WrongKeyType),
        }
    }

    /// GENERAL AUTHENTICATE with tag 85: ECDH with the peer's uncompressed point; returns the
    /// shared secret's x coordinate.
    pub fn ecdh(&self, peer_point: &[u8]) -> Result<Vec<u8>, KeyError> {
        macro_rules! ecdh {
            ($curve:ident, $k:expr, $n:expr) => {{
                let peer = $curve::PublicKey::from_sec1_bytes(peer_point)
                    .map_err(|_| KeyError::BadInput)?;
                let shared = (peer.to_projective() * *$k.to_nonzero_scalar()).to_affine();
                let pk = $curve::PublicKey::from_affine(shared).map_err(|_| KeyError::BadInput)?;
                Ok(pk.to_sec1_point(false).as_bytes()[1..1 + $n].to_vec())
            }};
        }
        match self {
            Self::EccP256(k) => ecdh!(p256, k, 32),
            Self::EccP384(k) => ecdh!(p384, k, 48),
            Self::X25519(k) => {
                let peer: [u8; 32] = peer_point.try_into().map_err(|_| KeyError::BadInput)?;
                let shared = x25519_dalek::x25519(**k, peer);
                if shared == [0u8; 32] {
                    return Err(KeyError::BadInput);
                }
                Ok(shared.to_vec())
            }
            _ => Err(KeyError::WrongKeyType),
        }
    }

    /// Private key bytes for the state file: EC scalar, Ed25519 seed, RSA PKCS#8 DER.
    pub fn to_stored(&self) -> Zeroizing<Vec<u8>> {
        match self {
            Self::EccP256(k) => Zeroizing::new(k.to_bytes().to_vec()),
            Self::EccP384(k) => Zeroizing::new(k.to_bytes().to_vec()),
            Self::Ed25519(k) => Zeroizing::new(k.to_bytes().to_vec()),
            Self::X25519(k) => Zeroizing::new(k.to_vec()),
            Self::Rsa(k) => {
                use rsa::pkcs8::EncodePrivateKey;
                Zeroizing::new(
                    k.to_pkcs8_der()
                        .map(|d| d.as_bytes().to_vec())
                        .unwrap_or_default(),
                )
            }
        }
    }

    pub fn from_stored(algorithm: KeyAlgorithm, bytes: &[u8]) -> Result<Self, KeyError> {
        Ok(match algorithm {
            KeyAlgorithm::EccP256 => {
                Self::EccP256(p256::SecretKey::from_slice(bytes).map_err(|_| KeyError::InvalidKey)?)
            }
            KeyAlgorithm::EccP384 => {
                Self::EccP384(p384::SecretKey::from_slice(bytes).map_err(|_| KeyError::InvalidKey)?)
            }
            KeyAlgorithm::Ed25519 => {
                let seed: [u8; 32] = bytes.try_into().map_err(|_| KeyError::InvalidKey)?;
                Self::Ed25519(Box::new(ed25519_dalek::SigningKey::from_bytes(&seed)))
            }
            KeyAlgorithm::X25519 => {
                let k: [u8; 32] = bytes.try_into().map_err(|_| KeyError::InvalidKey)?;
                Self::X25519(Zeroizing::new(k))
            }
            _ => {
                use rsa::pkcs8::DecodePrivateKey;
                Self::Rsa(Box::new(
                    rsa::RsaPrivateKey::from_pkcs8_der(bytes).map_err(|_| KeyError::InvalidKey)?,
                ))
            }
        })
    }
}

fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(*secret, x25519_dalek::X25519_BASEPOINT_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_signature_verifies_over_the_given_hash() {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        let key = SlotPrivateKey::generate(KeyAlgorithm::EccP256).unwrap();
        let hash = [0x5Au8; 32];
        let der = key.sign(&hash).unwrap();
        let SlotPrivateKey::EccP256(sk) = &key else {
            unreachable!()
        };
        let vk = p256::ecdsa::VerifyingKey::from(sk.public_key());
        let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
        vk.verify_prehash(&hash, &sig).unwrap();
        assert_eq!(key.sign(&[0u8; 33]), Err(KeyError::BadInput));
    }

    #[test]
    fn ecdh_agrees_between_two_keys() {
        let a = SlotPrivateKey::generate(KeyAlgorithm::EccP384).unwrap();
        let b = SlotPrivateKey::generate(KeyAlgorithm::EccP384).unwrap();
        let point = |k: &SlotPrivateKey| {
            tlv::parse_one(&k.public_key_tlvs())
                .unwrap()
                .0
                .value
                .to_vec()
        };
        assert_eq!(a.ecdh(&point(&b)).unwrap(), b.ecdh(&point(&a)).unwrap());
        assert_eq!(a.ecdh(&[4, 1, 2]), Err(KeyError::BadInput));
    }

    #[test]
    fn x25519_agrees_and_does_not_sign() {
        let a = SlotPrivateKey::generate(KeyAlgorithm::X25519).unwrap();
        let b = SlotPrivateKey::generate(KeyAlgorithm::X25519).unwrap();
        let point = |k: &SlotPrivateKey| {
            tlv::parse_one(&k.public_key_tlvs())
                .unwrap()
                .0
                .value
                .to_vec()
        };
        assert_eq!(a.ecdh(&point(&b)).unwrap(), b.ecdh(&point(&a)).unwrap());
        assert_eq!(a.sign(&[1; 32]), Err(KeyError::WrongKeyType));
        assert_eq!(a.ecdh(&[0; 32]), Err(KeyError::BadInput), "low-order point");
        assert_eq!(a.public_key_spki_der().unwrap().len(), 44);
    }

    #[test]
    fn stored_form_round_trips() {
        for alg in [
            KeyAlgorithm::EccP256,
            KeyAlgorithm::EccP384,
            KeyAlgorithm::Ed25519,
        ] {
            let k = SlotPrivateKey::generate(alg).unwrap();
            let back = SlotPrivateKey::from_stored(alg, &k.to_stored()).unwrap();
            assert_eq!(back.public_key_tlvs(), k.public_key_tlvs());
        }
    }
}
