//! The server's slot plan (`protocol::SlotPlan`, read once from the wire) in the `piv`
//! driver's terms, and the proof-of-possession signature input for each algorithm.
use crate::attest::{
    KeyAlgorithm, PinPolicy as PlannedPinPolicy, Slot, TouchPolicy as PlannedTouchPolicy,
};
use crate::protocol::{SlotPlan, pb};
use sha2::Digest as _;
use yubikey::piv::{AlgorithmId, SlotId};
use yubikey::{PinPolicy, TouchPolicy};

/// One planned key in the driver's types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedKey {
    pub slot: SlotId,
    pub algorithm: AlgorithmId,
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
}

impl PlannedKey {
    /// The key the server planned, read from its answer.
    pub fn parse(plan: &pb::SlotPlan) -> Result<PlannedKey, String> {
        PlannedKey::from_plan(&SlotPlan::try_from(plan)?)
    }

    pub fn from_plan(plan: &SlotPlan) -> Result<PlannedKey, String> {
        let cannot = |what: String| format!("slot {}: {what} cannot be generated", plan.slot);
        Ok(PlannedKey {
            slot: slot_id(plan.slot)?,
            algorithm: match plan.algorithm {
                KeyAlgorithm::P256 => AlgorithmId::EccP256,
                KeyAlgorithm::P384 => AlgorithmId::EccP384,
                KeyAlgorithm::Rsa1024 => AlgorithmId::Rsa1024,
                KeyAlgorithm::Rsa2048 => AlgorithmId::Rsa2048,
                KeyAlgorithm::Rsa3072 => AlgorithmId::Rsa3072,
                KeyAlgorithm::Rsa4096 => AlgorithmId::Rsa4096,
                KeyAlgorithm::Ed25519 => AlgorithmId::Ed25519,
                KeyAlgorithm::X25519 => AlgorithmId::X25519,
            },
            pin_policy: match plan.pin_policy {
                PlannedPinPolicy::Never => PinPolicy::Never,
                PlannedPinPolicy::Once => PinPolicy::Once,
                PlannedPinPolicy::Always => PinPolicy::Always,
                other => return Err(cannot(format!("PIN policy {other}"))),
            },
            touch_policy: match plan.touch_policy {
                PlannedTouchPolicy::Never => TouchPolicy::Never,
                PlannedTouchPolicy::Always => TouchPolicy::Always,
                PlannedTouchPolicy::Cached => TouchPolicy::Cached,
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

/// A slot the server names ("9a", "9c", "9d", "9e" or a retired slot "82".."95").
pub fn parse_slot(text: &str) -> Result<SlotId, String> {
    slot_id(text.parse()?)
}

fn slot_id(slot: Slot) -> Result<SlotId, String> {
    SlotId::try_from(slot.id()).map_err(|_| format!("slot {slot} cannot hold an enrolled key"))
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
    fn maps_the_plan_to_the_driver() {
        let k = PlannedKey::parse(&plan("9a", "ECCP256", "ONCE", "CACHED")).unwrap();
        assert_eq!(k.slot, SlotId::Authentication);
        assert_eq!(k.algorithm, AlgorithmId::EccP256);
        assert_eq!(k.pin_policy, PinPolicy::Once);
        assert!(k.needs_touch());
        let k = PlannedKey::parse(&plan("82", "RSA2048", "ALWAYS", "NEVER")).unwrap();
        assert_eq!(slot_name(k.slot), "82");
        assert_eq!(k.algorithm, AlgorithmId::Rsa2048);
        assert!(!k.needs_touch());
        assert_eq!(slot_name(SlotId::Signature), "9c");
        assert_eq!(parse_slot("9d").unwrap(), SlotId::KeyManagement);
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        assert_eq!(
            PlannedKey::parse(&plan("9a", "ED448", "ONCE", "NEVER")).unwrap_err(),
            "slot 9a: algorithm \"ED448\" is not one of ECCP256, ECCP384, RSA2048, RSA3072, RSA4096"
        );
        assert_eq!(
            PlannedKey::parse(&plan("f9", "ECCP256", "ONCE", "NEVER")).unwrap_err(),
            "slot f9: \"f9\" is not a PIV key slot (9a, 9c, 9d, 9e, 82 … 95)"
        );
        assert_eq!(
            parse_slot("9").unwrap_err(),
            "\"9\" is not a PIV key slot (9a, 9c, 9d, 9e, 82 … 95)"
        );
        let mut bio = SlotPlan::try_from(&plan("9a", "ECCP256", "ONCE", "NEVER")).unwrap();
        bio.pin_policy = PlannedPinPolicy::MatchOnce;
        assert_eq!(
            PlannedKey::from_plan(&bio).unwrap_err(),
            "slot 9a: PIN policy match-once cannot be generated"
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
