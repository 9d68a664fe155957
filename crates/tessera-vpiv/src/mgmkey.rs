//! The PIV card management key (slot 9B): 3DES or AES-128/192/256, block encryption for the
//! GENERAL AUTHENTICATE challenge-response.

use cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The factory management key: 01 02 … 08 three times (3DES, or AES-192 from firmware 5.7).
pub const DEFAULT_MANAGEMENT_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];

/// Management key algorithm, with the byte Yubico uses for it (P1 of GENERAL AUTHENTICATE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagementAlgorithm {
    TripleDes,
    Aes128,
    Aes192,
    Aes256,
}

impl ManagementAlgorithm {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x03 => Some(Self::TripleDes),
            0x08 => Some(Self::Aes128),
            0x0A => Some(Self::Aes192),
            0x0C => Some(Self::Aes256),
            _ => None,
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            Self::TripleDes => 0x03,
            Self::Aes128 => 0x08,
            Self::Aes192 => 0x0A,
            Self::Aes256 => 0x0C,
        }
    }

    pub fn key_len(self) -> usize {
        match self {
            Self::TripleDes | Self::Aes192 => 24,
            Self::Aes128 => 16,
            Self::Aes256 => 32,
        }
    }

    /// Challenge/witness length: one cipher block.
    pub fn block_len(self) -> usize {
        match self {
            Self::TripleDes => 8,
            _ => 16,
        }
    }
}

/// A management key: algorithm and secret bytes. `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ManagementKey {
    pub algorithm: ManagementAlgorithm,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ManagementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManagementKey({:?}, [redacted])", self.algorithm)
    }
}

impl ManagementKey {
    /// A key of `algorithm`; `None` when the length does not fit the algorithm.
    pub fn new(algorithm: ManagementAlgorithm, key: &[u8]) -> Option<Self> {
        (key.len() == algorithm.key_len()).then(|| Self {
            algorithm,
            key: Zeroizing::new(key.to_vec()),
        })
    }

    /// The factory default for a firmware version: AES-192 from 5.7, 3DES before.
    pub fn factory_default(aes_default: bool) -> Self {
        let algorithm = if aes_default {
            ManagementAlgorithm::Aes192
        } else {
            ManagementAlgorithm::TripleDes
        };
        Self {
            algorithm,
            key: Zeroizing::new(DEFAULT_MANAGEMENT_KEY.to_vec()),
        }
    }

    pub fn is_default_value(&self) -> bool {
        self.key.len() == 24 && bool::from(self.key.as_slice().ct_eq(&DEFAULT_MANAGEMENT_KEY))
    }

    pub fn secret_bytes(&self) -> &[u8] {
        &self.key
    }

    /// Encrypts one block in ECB mode; `None` when `block` is not one block long.
    pub fn encrypt_block(&self, block: &[u8]) -> Option<Vec<u8>> {
        self.crypt(block, true)
    }

    pub fn decrypt_block(&self, block: &[u8]) -> Option<Vec<u8>> {
        self.crypt(block, false)
    }

    fn crypt(&self, block: &[u8], encrypt: bool) -> Option<Vec<u8>> {
        if block.len() != self.algorithm.block_len() {
            return None;
        }
        let mut buf = block.to_vec();
        macro_rules! run {
            ($c:ty) => {{
                let c = <$c>::new_from_slice(&self.key).ok()?;
                let b = (&mut buf[..]).try_into().ok()?;
                if encrypt {
                    c.encrypt_block(b)
                } else {
                    c.decrypt_block(b)
                }
            }};
        }
        match self.algorithm {
            ManagementAlgorithm::TripleDes => run!(des::TdesEde3),
            ManagementAlgorithm::Aes128 => run!(aes::Aes128),
            ManagementAlgorithm::Aes192 => run!(aes::Aes192),
            ManagementAlgorithm::Aes256 => run!(aes::Aes256),
        }
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_then_decrypt_is_identity_for_each_algorithm() {
        for alg in [
            ManagementAlgorithm::TripleDes,
            ManagementAlgorithm::Aes128,
            ManagementAlgorithm::Aes192,
            ManagementAlgorithm::Aes256,
        ] {
            let key = ManagementKey::new(alg, &vec![7u8; alg.key_len()]).unwrap();
            let block = vec![0x42; alg.block_len()];
            let enc = key.encrypt_block(&block).unwrap();
            assert_ne!(enc, block);
            assert_eq!(key.decrypt_block(&enc).unwrap(), block);
            assert_eq!(key.encrypt_block(&[0; 3]), None);
        }
    }

    #[test]
    fn default_key_is_recognised_and_debug_is_redacted() {
        let key = ManagementKey::factory_default(true);
        assert!(key.is_default_value());
        assert_eq!(format!("{key:?}"), "ManagementKey(Aes192, [redacted])");
        assert!(ManagementKey::new(ManagementAlgorithm::Aes128, &[0; 24]).is_none());
    }
}
