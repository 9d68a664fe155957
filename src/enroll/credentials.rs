//! What the server hands a station for one token: a fresh PIV management key and PUK, and the
//! enrollment's nonce, all from the operating system's CSPRNG. Secrets are zeroized on drop and
//! print as `[redacted]`.

use crate::attest::FirmwareVersion;
use rand::TryRng as _;
use std::fmt;
use zeroize::Zeroizing;

/// PIV management key algorithms (names as stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagementKeyAlgorithm {
    TripleDes,
    Aes128,
    Aes192,
    Aes256,
}

impl ManagementKeyAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            ManagementKeyAlgorithm::TripleDes => "3des",
            ManagementKeyAlgorithm::Aes128 => "aes128",
            ManagementKeyAlgorithm::Aes192 => "aes192",
            ManagementKeyAlgorithm::Aes256 => "aes256",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            ManagementKeyAlgorithm::TripleDes,
            ManagementKeyAlgorithm::Aes128,
            ManagementKeyAlgorithm::Aes192,
            ManagementKeyAlgorithm::Aes256,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
    pub fn key_len(self) -> usize {
        match self {
            ManagementKeyAlgorithm::TripleDes | ManagementKeyAlgorithm::Aes192 => 24,
            ManagementKeyAlgorithm::Aes128 => 16,
            ManagementKeyAlgorithm::Aes256 => 32,
        }
    }
    /// AES-256 on firmware 5.4 and later (which accepts AES management keys), 3DES before.
    pub fn for_firmware(firmware: FirmwareVersion) -> Self {
        if firmware >= FirmwareVersion::new(5, 4, 0) {
            ManagementKeyAlgorithm::Aes256
        } else {
            ManagementKeyAlgorithm::TripleDes
        }
    }
}

/// A management key with its algorithm.
#[derive(Clone)]
pub struct ManagementKeySecret {
    pub algorithm: ManagementKeyAlgorithm,
    pub key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for ManagementKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ManagementKeySecret({}, [redacted])",
            self.algorithm.as_str()
        )
    }
}

/// A management key and a PUK for one token.
#[derive(Clone)]
pub struct TokenCredentials {
    pub management_key: ManagementKeySecret,
    /// 8 ASCII digits.
    pub puk: Zeroizing<String>,
}

impl fmt::Debug for TokenCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenCredentials([redacted])")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the operating system's random generator failed: {0}")]
pub struct EntropyError(String);

fn random_bytes(buf: &mut [u8]) -> Result<(), EntropyError> {
    rand::rngs::SysRng
        .try_fill_bytes(buf)
        .map_err(|e| EntropyError(e.to_string()))
}

impl TokenCredentials {
    /// A fresh random management key of `algorithm` and a PUK of 8 random digits.
    pub fn generate(algorithm: ManagementKeyAlgorithm) -> Result<TokenCredentials, EntropyError> {
        let mut key = Zeroizing::new(vec![0u8; algorithm.key_len()]);
        random_bytes(&mut key)?;
        let mut puk = Zeroizing::new(String::with_capacity(8));
        let mut byte = [0u8; 1];
        while puk.len() < 8 {
            random_bytes(&mut byte)?;
            // 250 = 25 × 10: reject the top values so every digit is equally likely.
            if byte[0] < 250 {
                puk.push(char::from(b'0' + byte[0] % 10));
            }
        }
        Ok(TokenCredentials {
            management_key: ManagementKeySecret { algorithm, key },
            puk,
        })
    }
}

/// 32 random bytes, used once (only a `begun` enrollment accepts a proof over it).
pub fn new_nonce() -> Result<[u8; 32], EntropyError> {
    let mut n = [0u8; 32];
    random_bytes(&mut n)?;
    Ok(n)
}

/// A PUK release's public id: `pkr_` and 16 random bytes in hex.
pub fn new_puk_release_id() -> Result<String, EntropyError> {
    let mut n = [0u8; 16];
    random_bytes(&mut n)?;
    Ok(format!("pkr_{}", hex::encode(n)))
}

/// An enrollment's public id: `enr_` and 16 random bytes in hex.
pub fn new_enrollment_id() -> Result<String, EntropyError> {
    let mut n = [0u8; 16];
    random_bytes(&mut n)?;
    Ok(format!("enr_{}", hex::encode(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_key_algorithm_follows_firmware() {
        let at = |s: &str| ManagementKeyAlgorithm::for_firmware(s.parse().unwrap());
        assert_eq!(at("5.3.4"), ManagementKeyAlgorithm::TripleDes);
        assert_eq!(at("4.3.7"), ManagementKeyAlgorithm::TripleDes);
        assert_eq!(at("5.4.3"), ManagementKeyAlgorithm::Aes256);
        assert_eq!(at("5.7.4"), ManagementKeyAlgorithm::Aes256);
    }

    #[test]
    fn credentials_are_fresh_and_well_formed() {
        let a = TokenCredentials::generate(ManagementKeyAlgorithm::Aes256).unwrap();
        let b = TokenCredentials::generate(ManagementKeyAlgorithm::TripleDes).unwrap();
        assert_eq!(a.management_key.key.len(), 32);
        assert_eq!(b.management_key.key.len(), 24);
        assert_ne!(*a.management_key.key, b.management_key.key[..]);
        for c in [&a, &b] {
            assert_eq!(c.puk.len(), 8);
            assert!(c.puk.bytes().all(|d| d.is_ascii_digit()));
        }
        assert_eq!(format!("{a:?}"), "TokenCredentials([redacted])");
        assert_eq!(
            format!("{:?}", a.management_key),
            "ManagementKeySecret(aes256, [redacted])"
        );
        assert_ne!(new_nonce().unwrap(), new_nonce().unwrap());
        let id = new_enrollment_id().unwrap();
        assert!(id.starts_with("enr_") && id.len() == 36, "{id}");
    }
}
