//! The facts a YubiKey attestation states, and how each is read from Yubico's extensions
//! (arc 1.3.6.1.4.1.41482.3) and from the slot certificate's subject and public key.

use std::fmt;
use std::str::FromStr;

use const_oid::ObjectIdentifier;
use der::asn1::UintRef;
use der::{Decode, Encode};
use p256::elliptic_curve::sec1::ToSec1Point;
use serde::{Deserialize, Serialize};
use spki::SubjectPublicKeyInfoOwned;

use super::certificate::ParsedCertificate;
use super::error::{AttestError, CertificateRole, YubicoExtension};

pub(crate) const OID_FIRMWARE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.3");
pub(crate) const OID_SERIAL: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.7");
pub(crate) const OID_POLICY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.8");
pub(crate) const OID_FORM_FACTOR: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.9");
pub(crate) const OID_FIPS: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.10");
pub(crate) const OID_CSPN: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.11");

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_X25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.110");

/// Firmware version of the token, e.g. 5.7.4. Ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FirmwareVersion {
    pub major: u8,
    pub minor: u8,
    pub patch: u8,
}

impl FirmwareVersion {
    pub const fn new(major: u8, minor: u8, patch: u8) -> Self {
        FirmwareVersion {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for FirmwareVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('.').collect();
        let bad = || format!("firmware version {s:?} is not of the form 5.7.4");
        if parts.len() != 3 {
            return Err(bad());
        }
        let n = |p: &str| p.parse::<u8>().map_err(|_| bad());
        Ok(FirmwareVersion::new(
            n(parts[0])?,
            n(parts[1])?,
            n(parts[2])?,
        ))
    }
}

impl Serialize for FirmwareVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FirmwareVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// When the token asks for the PIN before using the key (first byte of extension .3.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinPolicy {
    Never,
    Once,
    Always,
    /// YubiKey Bio: fingerprint (or PIN) once per session.
    MatchOnce,
    /// YubiKey Bio: fingerprint (or PIN) for every use.
    MatchAlways,
}

impl PinPolicy {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => PinPolicy::Never,
            2 => PinPolicy::Once,
            3 => PinPolicy::Always,
            4 => PinPolicy::MatchOnce,
            5 => PinPolicy::MatchAlways,
            _ => return None,
        })
    }
    /// Strength for "minimum PIN policy": never < once = match-once < always = match-always.
    pub fn strength(self) -> u8 {
        match self {
            PinPolicy::Never => 0,
            PinPolicy::Once | PinPolicy::MatchOnce => 1,
            PinPolicy::Always | PinPolicy::MatchAlways => 2,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            PinPolicy::Never => "never",
            PinPolicy::Once => "once",
            PinPolicy::Always => "always",
            PinPolicy::MatchOnce => "match-once",
            PinPolicy::MatchAlways => "match-always",
        }
    }
}

/// When the token asks for a touch before using the key (second byte of extension .3.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TouchPolicy {
    Never,
    Always,
    /// A touch is remembered for 15 seconds.
    Cached,
}

impl TouchPolicy {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => TouchPolicy::Never,
            2 => TouchPolicy::Always,
            3 => TouchPolicy::Cached,
            _ => return None,
        })
    }
    /// Strength for "minimum touch policy": never < cached < always.
    pub fn strength(self) -> u8 {
        match self {
            TouchPolicy::Never => 0,
            TouchPolicy::Cached => 1,
            TouchPolicy::Always => 2,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TouchPolicy::Never => "never",
            TouchPolicy::Always => "always",
            TouchPolicy::Cached => "cached",
        }
    }
}

/// The token's physical model: low nibble of extension .3.9.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FormFactor {
    /// Code 0, or the extension is absent (firmware before 5).
    Unspecified,
    UsbAKeychain,
    UsbANano,
    UsbCKeychain,
    UsbCNano,
    UsbCLightning,
    UsbABio,
    UsbCBio,
    /// A code this version of Tessera does not know (8–15).
    Unknown,
}

impl FormFactor {
    pub(crate) fn from_code(code: u8) -> Self {
        match code & 0x0f {
            0 => FormFactor::Unspecified,
            1 => FormFactor::UsbAKeychain,
            2 => FormFactor::UsbANano,
            3 => FormFactor::UsbCKeychain,
            4 => FormFactor::UsbCNano,
            5 => FormFactor::UsbCLightning,
            6 => FormFactor::UsbABio,
            7 => FormFactor::UsbCBio,
            _ => FormFactor::Unknown,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            FormFactor::Unspecified => "unspecified",
            FormFactor::UsbAKeychain => "usb-a-keychain",
            FormFactor::UsbANano => "usb-a-nano",
            FormFactor::UsbCKeychain => "usb-c-keychain",
            FormFactor::UsbCNano => "usb-c-nano",
            FormFactor::UsbCLightning => "usb-c-lightning",
            FormFactor::UsbABio => "usb-a-bio",
            FormFactor::UsbCBio => "usb-c-bio",
            FormFactor::Unknown => "unknown",
        }
    }
}

/// A PIV key slot: 9a, 9c, 9d, 9e or a retired slot 82–95.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(u8);

impl Slot {
    pub fn new(id: u8) -> Option<Slot> {
        matches!(id, 0x9a | 0x9c | 0x9d | 0x9e | 0x82..=0x95).then_some(Slot(id))
    }
    pub fn id(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}", self.0)
    }
}

impl FromStr for Slot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a PIV key slot (9a, 9c, 9d, 9e, 82 … 95)");
        if s.len() != 2 {
            return Err(bad());
        }
        u8::from_str_radix(s, 16)
            .ok()
            .and_then(Slot::new)
            .ok_or_else(bad)
    }
}

impl Serialize for Slot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Slot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The attested key's algorithm and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlgorithm {
    P256,
    P384,
    Rsa1024,
    Rsa2048,
    Rsa3072,
    Rsa4096,
    Ed25519,
    X25519,
}

impl KeyAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::P256 => "p256",
            KeyAlgorithm::P384 => "p384",
            KeyAlgorithm::Rsa1024 => "rsa1024",
            KeyAlgorithm::Rsa2048 => "rsa2048",
            KeyAlgorithm::Rsa3072 => "rsa3072",
            KeyAlgorithm::Rsa4096 => "rsa4096",
            KeyAlgorithm::Ed25519 => "ed25519",
            KeyAlgorithm::X25519 => "x25519",
        }
    }
    /// RSA modulus size, `None` for other algorithms.
    pub fn rsa_bits(self) -> Option<u32> {
        match self {
            KeyAlgorithm::Rsa1024 => Some(1024),
            KeyAlgorithm::Rsa2048 => Some(2048),
            KeyAlgorithm::Rsa3072 => Some(3072),
            KeyAlgorithm::Rsa4096 => Some(4096),
            _ => None,
        }
    }
    /// Keys used with ECDSA (the subject of YSA-2024-03).
    pub fn is_ecdsa(self) -> bool {
        matches!(self, KeyAlgorithm::P256 | KeyAlgorithm::P384)
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for PinPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for TouchPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for FormFactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Facts read from the slot certificate (and the FIPS/CSPN flags from the device certificate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotFacts {
    pub(crate) firmware: FirmwareVersion,
    /// Absent on firmware 4.3.x, whose slot certificates carry no serial extension.
    pub(crate) serial: Option<u32>,
    pub(crate) pin_policy: PinPolicy,
    pub(crate) touch_policy: TouchPolicy,
    pub(crate) form_factor_code: Option<u8>,
    pub(crate) slot: Slot,
    pub(crate) key_algorithm: KeyAlgorithm,
}

fn extension_value(cert: &ParsedCertificate, oid: ObjectIdentifier) -> Option<&[u8]> {
    cert.certificate
        .tbs_certificate()
        .extensions()
        .and_then(|exts| exts.iter().find(|e| e.extn_id == oid))
        .map(|e| e.extn_value.as_bytes())
}

pub(crate) fn has_extension(cert: &ParsedCertificate, oid: ObjectIdentifier) -> bool {
    extension_value(cert, oid).is_some()
}

pub(crate) fn read_slot_facts(slot: &ParsedCertificate) -> Result<SlotFacts, AttestError> {
    let malformed = |extension, detail: String| AttestError::MalformedExtension {
        role: CertificateRole::Slot,
        extension,
        detail,
    };
    let firmware = extension_value(slot, OID_FIRMWARE).ok_or(AttestError::MissingExtension {
        extension: YubicoExtension::Firmware,
    })?;
    let firmware = match firmware {
        [major, minor, patch] => FirmwareVersion::new(*major, *minor, *patch),
        other => {
            return Err(malformed(
                YubicoExtension::Firmware,
                format!("{} bytes, expected 3 (major, minor, patch)", other.len()),
            ));
        }
    };

    // YubiKey 4 (firmware 4.3.x) writes no serial extension: the chain is still genuine and its
    // facts are reported; the policy refuses it (`serial-missing`), as a key that cannot be
    // bound to a token.
    let serial = extension_value(slot, OID_SERIAL)
        .map(|value| decode_serial(value).map_err(|d| malformed(YubicoExtension::Serial, d)))
        .transpose()?;

    let policy = extension_value(slot, OID_POLICY).ok_or(AttestError::MissingExtension {
        extension: YubicoExtension::Policy,
    })?;
    let (pin_policy, touch_policy) = match policy {
        [pin, touch] => (
            PinPolicy::from_byte(*pin).ok_or_else(|| {
                malformed(
                    YubicoExtension::Policy,
                    format!("unknown PIN policy byte 0x{pin:02x}"),
                )
            })?,
            TouchPolicy::from_byte(*touch).ok_or_else(|| {
                malformed(
                    YubicoExtension::Policy,
                    format!("unknown touch policy byte 0x{touch:02x}"),
                )
            })?,
        ),
        other => {
            return Err(malformed(
                YubicoExtension::Policy,
                format!(
                    "{} bytes, expected 2 (PIN policy, touch policy)",
                    other.len()
                ),
            ));
        }
    };

    let form_factor_code = match extension_value(slot, OID_FORM_FACTOR) {
        None => None,
        Some([code]) => Some(*code),
        Some(other) => {
            return Err(malformed(
                YubicoExtension::FormFactor,
                format!("{} bytes, expected 1", other.len()),
            ));
        }
    };

    let slot_id = slot_from_subject(slot)?;
    let key_algorithm = key_algorithm(
        &slot
            .certificate
            .tbs_certificate()
            .subject_public_key_info()
            .clone(),
    )?;

    Ok(SlotFacts {
        firmware,
        serial,
        pin_policy,
        touch_policy,
        form_factor_code,
        slot: slot_id,
        key_algorithm,
    })
}

/// The serial is a DER INTEGER (02 04 00 F0 0F 14 = 15732500) in every real sample. Leading
/// zero bytes beyond the minimal encoding are tolerated: the value is signed by the token, and
/// refusing a genuine token over an encoding detail would help no one.
fn decode_serial(value: &[u8]) -> Result<u32, String> {
    let not_integer = || format!("not a DER INTEGER ({})", hex::encode(value));
    let [0x02, len, content @ ..] = value else {
        return Err(not_integer());
    };
    if usize::from(*len) != content.len() || content.is_empty() {
        return Err(not_integer());
    }
    if content[0] & 0x80 != 0 {
        return Err("negative serial".into());
    }
    let start = content
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(content.len());
    let significant = &content[start..];
    if significant.len() > 4 {
        return Err(format!(
            "{} bytes is too large for a serial",
            significant.len()
        ));
    }
    Ok(significant
        .iter()
        .fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// The slot comes from the subject CN, "YubiKey PIV Attestation 9a": the last word, in hex.
fn slot_from_subject(slot: &ParsedCertificate) -> Result<Slot, AttestError> {
    let subject = slot.certificate.tbs_certificate().subject();
    let unknown = || AttestError::UnknownSlot {
        subject: subject.to_string(),
    };
    let cn = subject.common_name().ok().flatten().ok_or_else(unknown)?;
    let cn = cn.value();
    let last = cn
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    last.parse::<Slot>().map_err(|_| unknown())
}

#[derive(der::Sequence)]
struct RsaPublicKeyDer<'a> {
    modulus: UintRef<'a>,
    #[allow(dead_code)]
    public_exponent: UintRef<'a>,
}

/// Reads the algorithm and size from a SubjectPublicKeyInfo, checking that the key decodes.
pub(crate) fn key_algorithm(spki: &SubjectPublicKeyInfoOwned) -> Result<KeyAlgorithm, AttestError> {
    let unsupported = |detail: String| AttestError::UnsupportedKeyAlgorithm { detail };
    let key_bits = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| unsupported("public key bit string has unused bits".into()))?;
    let oid = spki.algorithm.oid;
    if oid == OID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            .ok_or_else(|| unsupported("EC key without a named curve".into()))?;
        if curve == OID_P256 {
            p256::PublicKey::from_sec1_bytes(key_bits)
                .map_err(|_| unsupported("P-256 point is not on the curve".into()))?;
            Ok(KeyAlgorithm::P256)
        } else if curve == OID_P384 {
            p384::PublicKey::from_sec1_bytes(key_bits)
                .map_err(|_| unsupported("P-384 point is not on the curve".into()))?;
            Ok(KeyAlgorithm::P384)
        } else {
            Err(unsupported(format!("EC curve {curve}")))
        }
    } else if oid == OID_RSA {
        let key = RsaPublicKeyDer::from_der(key_bits)
            .map_err(|e| unsupported(format!("RSA key does not decode ({e})")))?;
        let modulus = key.modulus.as_bytes();
        let bits = match modulus.first() {
            None => 0,
            Some(first) => (modulus.len() as u32 - 1) * 8 + (8 - first.leading_zeros()),
        };
        match bits {
            1024 => Ok(KeyAlgorithm::Rsa1024),
            2048 => Ok(KeyAlgorithm::Rsa2048),
            3072 => Ok(KeyAlgorithm::Rsa3072),
            4096 => Ok(KeyAlgorithm::Rsa4096),
            other => Err(unsupported(format!("RSA modulus of {other} bits"))),
        }
    } else if oid == OID_ED25519 && key_bits.len() == 32 {
        Ok(KeyAlgorithm::Ed25519)
    } else if oid == OID_X25519 && key_bits.len() == 32 {
        Ok(KeyAlgorithm::X25519)
    } else {
        Err(unsupported(format!("algorithm {oid}")))
    }
}

/// A canonical encoding of a public key for equality: EC points uncompressed, everything else
/// as its SubjectPublicKeyInfo DER.
pub(crate) fn canonical_public_key(spki: &SubjectPublicKeyInfoOwned) -> Result<Vec<u8>, String> {
    let bits = spki
        .subject_public_key
        .as_bytes()
        .ok_or("public key bit string has unused bits")?;
    if spki.algorithm.oid == OID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            .ok_or("EC key without a named curve")?;
        let mut out = curve.as_bytes().to_vec();
        if curve == OID_P256 {
            let key = p256::PublicKey::from_sec1_bytes(bits).map_err(|_| "invalid P-256 point")?;
            out.extend_from_slice(key.to_sec1_point(false).as_bytes());
        } else if curve == OID_P384 {
            let key = p384::PublicKey::from_sec1_bytes(bits).map_err(|_| "invalid P-384 point")?;
            out.extend_from_slice(key.to_sec1_point(false).as_bytes());
        } else {
            out.extend_from_slice(bits);
        }
        return Ok(out);
    }
    spki.to_der().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_orders_and_parses() {
        assert!(FirmwareVersion::new(5, 7, 0) > FirmwareVersion::new(5, 4, 3));
        assert_eq!(
            "5.7.4".parse::<FirmwareVersion>().unwrap().to_string(),
            "5.7.4"
        );
        assert!("5.7".parse::<FirmwareVersion>().is_err());
        assert!("5.7.x".parse::<FirmwareVersion>().is_err());
    }

    #[test]
    fn serial_decodes_as_der_integer() {
        assert_eq!(
            decode_serial(&[0x02, 0x04, 0x00, 0xF0, 0x0F, 0x14]),
            Ok(15732500)
        );
        assert_eq!(decode_serial(&[0x02, 0x03, 0x12, 0x34, 0x56]), Ok(0x123456));
        // Non-minimal leading zeros are tolerated.
        assert_eq!(
            decode_serial(&[0x02, 0x04, 0x00, 0x01, 0x23, 0x45]),
            Ok(0x12345)
        );
        let err = |bytes: &[u8]| decode_serial(bytes).unwrap_err();
        assert!(err(&[0x04, 0x01, 0x00]).contains("not a DER INTEGER"));
        assert!(err(&[0x02, 0x03, 0x01]).contains("not a DER INTEGER"));
        assert!(err(&[0x02, 0x00]).contains("not a DER INTEGER"));
        assert_eq!(
            err(&[0x02, 0x05, 0x01, 0, 0, 0, 0]),
            "5 bytes is too large for a serial"
        );
        assert_eq!(err(&[0x02, 0x01, 0x80]), "negative serial");
    }

    #[test]
    fn slots_are_the_piv_key_slots() {
        assert_eq!("9a".parse::<Slot>().unwrap().to_string(), "9a");
        assert_eq!("82".parse::<Slot>().unwrap().id(), 0x82);
        assert!("9b".parse::<Slot>().is_err());
        assert!("f9".parse::<Slot>().is_err());
        assert!("96".parse::<Slot>().is_err());
    }

    #[test]
    fn form_factor_uses_the_low_nibble() {
        assert_eq!(FormFactor::from_code(0x83), FormFactor::UsbCKeychain);
        assert_eq!(FormFactor::from_code(0x04), FormFactor::UsbCNano);
        assert_eq!(FormFactor::from_code(0x0e), FormFactor::Unknown);
    }

    #[test]
    fn policy_strengths() {
        assert!(PinPolicy::Always.strength() > PinPolicy::Once.strength());
        assert_eq!(PinPolicy::MatchOnce.strength(), PinPolicy::Once.strength());
        assert!(TouchPolicy::Always.strength() > TouchPolicy::Cached.strength());
        assert!(TouchPolicy::Cached.strength() > TouchPolicy::Never.strength());
    }
}
