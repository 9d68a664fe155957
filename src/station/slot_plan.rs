//! The server's slot plan in the `piv` driver's terms, and the proof-of-possession signature
//! input for each algorithm.
use crate::api::pb;
use sha2::Digest as _;
use yubikey::piv::{AlgorithmId, RetiredSlotId, SlotId};
use yubikey::{PinPolicy, TouchPolicy};

/// One planned key, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedKey {
    pub slot: SlotId,
    pub algorithm: AlgorithmId,
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
}

impl PlannedKey {
    pub fn parse(plan: &pb::SlotPlan) -> Result<PlannedKey, String> {
        Ok(PlannedKey {
            slot: parse_slot(&plan.slot)?,
            algorithm: match plan.algorithm.as_str() {
                "ECCP256" => AlgorithmId::EccP256,
                "ECCP384" => AlgorithmId::EccP384,
                "RSA2048" => AlgorithmId::Rsa2048,
                "RSA3072" => AlgorithmId::Rsa3072,
                "RSA4096" => AlgorithmId::Rsa4096,
                other => return Err(format!("slot {}: unknown algorithm {other:?}", plan.slot)),
            },
            pin_policy: match plan.pin_policy.as_str() {
                "NEVER" => PinPolicy::Never,
                "ONCE" => PinPolicy::Once,
                "ALWAYS" => PinPolicy::Always,
                other => return Err(format!("slot {}: unknown PIN policy {other:?}", plan.slot)),
            },
            touch_policy: match plan.touch_policy.as_str() {
                "NEVER" => TouchPolicy::Never,
                "ALWAYS" => TouchPolicy::Always,
                "CACHED" => TouchPolicy::Cached,
                other => {
                    return Err(format!(
                        "slot {}: unknown touch policy {other:?}",
                        plan.slot
                    ));
                }
            },
        })
    }

    pub fn needs_touch(&self) -> bool {
        !matches!(self.touch_policy, TouchPolicy::Never | TouchPolicy::Default)
    }

    /// What the card signs for `message`: the SHA-256 digest for ECDSA; for RSA the
    /// PKCS#1 v1.5 block (00 01 FF… 00 DigestInfo) of the modulus' size.
    pub fn signature_input(&self, message: &[u8]) -> Vec<u8> {
        let digest = sha2::Sha256::digest(message);
        let modulus_bytes = match self.algorithm {
            AlgorithmId::Rsa1024 => 128,
            AlgorithmId::Rsa2048 => 256,
            AlgorithmId::Rsa3072 => 384,
            AlgorithmId::Rsa4096 => 512,
            _ => return digest.to_vec(),
        };
        pkcs1_v15_sha256_block(&digest, modulus_bytes)
    }
}

/// "9a", "9c", "9d", "9e" or a retired slot "82".."95".
pub fn parse_slot(text: &str) -> Result<SlotId, String> {
    let byte = u8::from_str_radix(text, 16)
        .ok()
        .filter(|_| text.len() == 2)
        .ok_or_else(|| format!("slot {text:?} is not two hex digits"))?;
    match byte {
        0x9a => Ok(SlotId::Authentication),
        0x9c => Ok(SlotId::Signature),
        0x9d => Ok(SlotId::KeyManagement),
        0x9e => Ok(SlotId::CardAuthentication),
        0x82..=0x95 => RetiredSlotId::try_from(byte)
            .map(SlotId::Retired)
            .map_err(|_| format!("slot {text:?} is not a retired slot")),
        _ => Err(format!("slot {text:?} cannot hold an enrolled key")),
    }
}

/// The slot as two lower-case hex digits, as the protocol names it.
pub fn slot_name(slot: SlotId) -> String {
    format!("{:02x}", u8::from(slot))
}

const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

fn pkcs1_v15_sha256_block(digest: &[u8], modulus_bytes: usize) -> Vec<u8> {
    let t_len = SHA256_DIGEST_INFO.len() + digest.len();
    let mut block = vec![0xff; modulus_bytes];
    block[0] = 0x00;
    block[1] = 0x01;
    block[modulus_bytes - t_len - 1] = 0x00;
    block[modulus_bytes - t_len..modulus_bytes - digest.len()].copy_from_slice(&SHA256_DIGEST_INFO);
    block[modulus_bytes - digest.len()..].copy_from_slice(digest);
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(slot: &str, algorithm: &str, pin: &str, touch: &str) -> pb::SlotPlan {
        pb::SlotPlan {
            slot: slot.into(),
            algorithm: algorithm.into(),
            pin_policy: pin.into(),
            touch_policy: touch.into(),
            certificate_profile: "tls-client".into(),
        }
    }

    #[test]
    fn parses_the_protocol_names() {
        let k = PlannedKey::parse(&plan("9a", "ECCP256", "ONCE", "CACHED")).unwrap();
        assert_eq!(k.slot, SlotId::Authentication);
        assert_eq!(k.algorithm, AlgorithmId::EccP256);
        assert!(k.needs_touch());
        let k = PlannedKey::parse(&plan("82", "RSA2048", "ALWAYS", "NEVER")).unwrap();
        assert_eq!(slot_name(k.slot), "82");
        assert!(!k.needs_touch());
        assert_eq!(slot_name(SlotId::Signature), "9c");
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        assert_eq!(
            PlannedKey::parse(&plan("9a", "ED448", "ONCE", "NEVER")).unwrap_err(),
            "slot 9a: unknown algorithm \"ED448\""
        );
        assert_eq!(
            PlannedKey::parse(&plan("f9", "ECCP256", "ONCE", "NEVER")).unwrap_err(),
            "slot \"f9\" cannot hold an enrolled key"
        );
        assert_eq!(
            PlannedKey::parse(&plan("9a", "ECCP256", "SOMETIMES", "NEVER")).unwrap_err(),
            "slot 9a: unknown PIN policy \"SOMETIMES\""
        );
        assert_eq!(
            PlannedKey::parse(&plan("9", "ECCP256", "ONCE", "NEVER")).unwrap_err(),
            "slot \"9\" is not two hex digits"
        );
    }

    /// The RSA block verifies with the `rsa` crate's PKCS#1 v1.5 SHA-256 verifier when
    /// "signed" with a raw RSA private operation, as the card does.
    #[test]
    fn rsa_block_is_pkcs1_v15_sha256() {
        use rsa::signature::Verifier as _;
        use rsa::traits::PublicKeyParts as _;
        let mut rng = rand::rng();
        let key = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let k = PlannedKey::parse(&plan("9a", "RSA2048", "ONCE", "NEVER")).unwrap();
        let block = k.signature_input(b"message");
        assert_eq!(block.len(), 256);
        let m = rsa::BoxedUint::from_be_slice(&block, key.n().as_ref().bits_precision()).unwrap();
        let s = rsa::hazmat::rsa_decrypt_and_check(&key, Some(&mut rng), &m).unwrap();
        let signature = rsa::pkcs1v15::Signature::try_from(&s.to_be_bytes()[..]).unwrap();
        let verifying = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key.to_public_key());
        verifying.verify(b"message", &signature).unwrap();
    }
}
