//! Certificate serial numbers: 16 bytes from the operating system's CSPRNG, encoded as a
//! positive INTEGER of exactly 16 octets (127 random bits, far above the 64 that RFC 5280
//! practice and the CA/Browser Forum require). The caller chooses the serial before signing,
//! so it can be reserved in the store first (a crash can never leave an unknown signed serial).

use rand::TryRng;
use rand::rngs::SysRng;
use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SerialNumber([u8; SerialNumber::LEN]);

impl SerialNumber {
    pub const LEN: usize = 16;

    /// A fresh random serial. Fails only when the OS has no entropy to give.
    pub fn random() -> Result<SerialNumber, super::CaError> {
        let mut bytes = [0u8; Self::LEN];
        SysRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| super::CaError::Entropy(e.to_string()))?;
        Ok(Self::from_random_bytes(bytes))
    }

    /// Clears the top bit (a positive INTEGER needs no leading 0x00) and keeps the first octet
    /// non-zero (so the DER INTEGER is exactly 16 octets and the value never shrinks).
    fn from_random_bytes(mut bytes: [u8; Self::LEN]) -> SerialNumber {
        bytes[0] &= 0x7f;
        if bytes[0] == 0 {
            bytes[0] = 0x01;
        }
        SerialNumber(bytes)
    }

    /// Big-endian magnitude, the octets of the DER INTEGER.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Upper-case hex, as `openssl x509 -serial` prints it.
    pub fn to_hex(&self) -> String {
        hex::encode_upper(self.0)
    }
}

impl fmt::Debug for SerialNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SerialNumber({})", self.to_hex())
    }
}

impl fmt::Display for SerialNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl From<&SerialNumber> for rcgen::SerialNumber {
    fn from(serial: &SerialNumber) -> rcgen::SerialNumber {
        rcgen::SerialNumber::from_slice(serial.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_is_positive_and_sixteen_octets() {
        let s = SerialNumber::from_random_bytes([0xff; 16]);
        assert_eq!(s.as_bytes()[0], 0x7f);
        let s = SerialNumber::from_random_bytes([0x80; 16]);
        assert_eq!(s.as_bytes()[0], 0x01);
        let s = SerialNumber::from_random_bytes([0x00; 16]);
        assert_eq!(s.as_bytes()[0], 0x01);
    }

    #[test]
    fn random_serials_differ() {
        let a = SerialNumber::random().unwrap();
        let b = SerialNumber::random().unwrap();
        assert_ne!(a, b);
        assert!(a.as_bytes()[0] != 0 && a.as_bytes()[0] < 0x80);
    }
}
