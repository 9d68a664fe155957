//! The card's attestation: a test root (made on first start, or given as files), the device
//! attestation certificate (object 5FFF01, key in slot F9), and the per-slot certificates that
//! ATTEST (INS F9) returns, laid out like the ones real YubiKeys make (see the samples under
//! the shared attestation data): RSA-2048 device key, sha256WithRSAEncryption, a 16-byte
//! serial starting 01, subject "YubiKey PIV Attestation <slot>", issuer and validity copied from
//! the device certificate, and Yubico's four non-critical extensions with raw values.

use der::{Decode, Encode};
use rsa::traits::PublicKeyParts;
use sha2::Digest;
use signature::{SignatureEncoding, Signer};

use super::keys::SlotPrivateKey;

/// Yubico's PIV attestation extension arc, 1.3.6.1.4.1.41482.3.
const OID_FIRMWARE: &str = "1.3.6.1.4.1.41482.3.3";
const OID_SERIAL: &str = "1.3.6.1.4.1.41482.3.7";
const OID_POLICY: &str = "1.3.6.1.4.1.41482.3.8";
const OID_FORM_FACTOR: &str = "1.3.6.1.4.1.41482.3.9";
const OID_FIPS: &str = "1.3.6.1.4.1.41482.3.10";
const OID_CSPN: &str = "1.3.6.1.4.1.41482.3.11";

/// Subject of the test root the card makes; it says plainly that it is not Yubico's.
pub const TEST_ROOT_SUBJECT_CN: &str = "Tessera Test PIV Attestation Root (NOT Yubico)";

/// Why attestation material could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    #[error(
        "attestation root key is not an RSA, P-256 or P-384 private key in PEM (PKCS#8 or PKCS#1)"
    )]
    UnsupportedRootKey,
    #[error("attestation root certificate is not a PEM or DER X.509 certificate: {0}")]
    BadRootCertificate(String),
    #[error("device attestation certificate in the state file cannot be parsed: {0}")]
    BadDeviceCertificate(String),
    #[error("could not make a key: {0}")]
    KeyGeneration(String),
    #[error("could not encode a certificate: {0}")]
    Encoding(String),
}

/// The model facts that device and slot certificates carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceFacts {
    pub firmware: [u8; 3],
    pub serial: u32,
    pub form_factor: u8,
    pub fips: bool,
    pub cspn: bool,
}

/// A key that signs certificates: the root (RSA, P-256 or P-384) or the device key (RSA).
pub enum CertificateSigner {
    Rsa(Box<rsa::RsaPrivateKey>),
    EccP256(p256::SecretKey),
    EccP384(p384::SecretKey),
}

impl CertificateSigner {
    fn algorithm_identifier(&self) -> Vec<u8> {
        match self {
            Self::Rsa(_) => seq(&[&oid("1.2.840.113549.1.1.11"), &[0x05, 0x00]]),
            Self::EccP256(_) => seq(&[&oid("1.2.840.10045.4.3.2")]),
            Self::EccP384(_) => seq(&[&oid("1.2.840.10045.4.3.3")]),
        }
    }

    fn sign(&self, tbs: &[u8]) -> Vec<u8> {
        match self {
            Self::Rsa(k) => {
                let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(k.as_ref().clone());
                signer.sign(tbs).to_vec()
            }
            Self::EccP256(k) => {
                let s: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from(k).sign(tbs);
                s.to_der().as_bytes().to_vec()
            }
            Self::EccP384(k) => {
                let s: p384::ecdsa::Signature = p384::ecdsa::SigningKey::from(k).sign(tbs);
                s.to_der().as_bytes().to_vec()
            }
        }
    }

    fn spki_der(&self) -> Result<Vec<u8>, AttestationError> {
        use p256::pkcs8::EncodePublicKey;
        let doc = match self {
            Self::Rsa(k) => k.to_public_key().to_public_key_der(),
            Self::EccP256(k) => k.public_key().to_public_key_der(),
            Self::EccP384(k) => k.public_key().to_public_key_der(),
        };
        doc.map(|d| d.as_bytes().to_vec())
            .map_err(|e| AttestationError::Encoding(e.to_string()))
    }

    /// Loads a PEM private key: PKCS#8 (RSA, P-256, P-384) or PKCS#1 RSA.
    pub fn from_pem(pem: &str) -> Result<Self, AttestationError> {
        use p256::pkcs8::DecodePrivateKey;
        use rsa::pkcs1::DecodeRsaPrivateKey;
        if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_pem(pem) {
            return Ok(Self::Rsa(Box::new(k)));
        }
        if let Ok(k) = rsa::RsaPrivateKey::from_pkcs1_pem(pem) {
            return Ok(Self::Rsa(Box::new(k)));
        }
        if let Ok(k) = p256::SecretKey::from_pkcs8_pem(pem) {
            return Ok(Self::EccP256(k));
        }
        if let Ok(k) = p384::SecretKey::from_pkcs8_pem(pem) {
            return Ok(Self::EccP384(k));
        }
        Err(AttestationError::UnsupportedRootKey)
    }

    pub fn to_pkcs8_pem(&self) -> Result<zeroize::Zeroizing<String>, AttestationError> {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        match self {
            Self::Rsa(k) => k.to_pkcs8_pem(LineEnding::LF),
            Self::EccP256(k) => k.to_pkcs8_pem(LineEnding::LF),
            Self::EccP384(k) => k.to_pkcs8_pem(LineEnding::LF),
        }
        .map_err(|e| AttestationError::Encoding(e.to_string()))
    }
}

/// The test root made on first start: RSA-2048 key and self-signed certificate.
pub struct TestRoot {
    pub certificate_der: Vec<u8>,
    pub key: CertificateSigner,
}

impl TestRoot {
    pub fn generate() -> Result<Self, AttestationError> {
        let key = rsa::RsaPrivateKey::new(&mut rand::rng(), 2048)
            .map_err(|e| AttestationError::KeyGeneration(e.to_string()))?;
        let key = CertificateSigner::Rsa(Box::new(key));
        let spki = key.spki_der()?;
        let name = name_cn(TEST_ROOT_SUBJECT_CN);
        let validity = seq(&[&time(2016, 1, 1, 0, 0, 0), &time(9999, 12, 31, 23, 59, 59)]);
        let extensions = [
            extension(
                "2.5.29.19",
                true,
                &seq(&[&[0x01, 0x01, 0xFF], &integer(&[1])]),
            ),
            extension("2.5.29.15", true, &[0x03, 0x02, 0x01, 0x06]),
            extension("2.5.29.14", false, &der_tlv(0x04, &key_identifier(&spki))),
        ];
        let certificate_der = build_certificate(
            &key,
            &random_serial(8, None),
            &name,
            &validity,
            &name,
            &spki,
            &extensions,
        );
        Ok(Self {
            certificate_der,
            key,
        })
    }

    /// Reads a root certificate (PEM or DER) and its private key (PEM).
    pub fn from_files(cert: &[u8], key_pem: &str) -> Result<Self, AttestationError> {
        let certificate_der = certificate_to_der(cert)?;
        let key = CertificateSigner::from_pem(key_pem)?;
        Ok(Self {
            certificate_der,
            key,
        })
    }

    fn subject_der(&self) -> Result<Vec<u8>, AttestationError> {
        let cert = x509_cert::Certificate::from_der(&self.certificate_der)
            .map_err(|e| AttestationError::BadRootCertificate(e.to_string()))?;
        cert.tbs_certificate()
            .subject()
            .to_der()
            .map_err(|e| AttestationError::Encoding(e.to_string()))
    }

    /// Issues the device attestation certificate for a new attestation key.
    pub fn issue_device_certificate(
        &self,
        device_key: &rsa::RsaPrivateKey,
        facts: &DeviceFacts,
    ) -> Result<Vec<u8>, AttestationError> {
        let issuer = self.subject_der()?;
        let new_pki = facts.firmware >= [5, 7, 4];
        let subject = name_cn(if new_pki {
            "YubiKey PIV Attestation"
        } else {
            "Yubico PIV Attestation"
        });
        let validity = if new_pki {
            seq(&[&time(2024, 12, 1, 0, 0, 0), &time(9999, 12, 31, 23, 59, 59)])
        } else {
            seq(&[&time(2016, 3, 14, 0, 0, 0), &time(2052, 4, 17, 0, 0, 0)])
        };
        use p256::pkcs8::EncodePublicKey;
        let spki = device_key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| AttestationError::Encoding(e.to_string()))?;
        let mut extensions = vec![extension(OID_FIRMWARE, false, &facts.firmware)];
        if facts.fips {
            // the value seen on a real YubiKey 5 FIPS device certificate
            extensions.push(extension(OID_FIPS, false, &[0x02, 0x01, 0x07]));
        }
        if facts.cspn {
            extensions.push(extension(OID_CSPN, false, &[0x02, 0x01, 0x07]));
        }
        extensions.push(extension(
            "2.5.29.19",
            true,
            &seq(&[&[0x01, 0x01, 0xFF], &integer(&[0])]),
        ));
        Ok(build_certificate(
            &self.key,
            &random_serial(8, None),
            &issuer,
            &validity,
            &subject,
            spki.as_bytes(),
            &extensions,
        ))
    }
}

/// Makes the per-slot attestation certificate.
pub fn attest_slot(
    device_key: &rsa::RsaPrivateKey,
    device_certificate_der: &[u8],
    slot: u8,
    slot_key: &SlotPrivateKey,
    pin_policy: u8,
    touch_policy: u8,
    facts: &DeviceFacts,
) -> Result<Vec<u8>, AttestationError> {
    let device = x509_cert::Certificate::from_der(device_certificate_der)
        .map_err(|e| AttestationError::BadDeviceCertificate(e.to_string()))?;
    let enc = |r: der::Result<Vec<u8>>| r.map_err(|e| AttestationError::Encoding(e.to_string()));
    let issuer = enc(device.tbs_certificate().subject().to_der())?;
    let validity = enc(device.tbs_certificate().validity().to_der())?;
    let subject = name_cn(&format!("YubiKey PIV Attestation {slot:02x}"));
    let spki = slot_key
        .public_key_spki_der()
        .map_err(|e| AttestationError::Encoding(e.to_string()))?;
    let serial_der = integer(&facts.serial.to_be_bytes());
    let extensions = [
        extension(OID_FIRMWARE, false, &facts.firmware),
        extension(OID_SERIAL, false, &serial_der),
        extension(OID_POLICY, false, &[pin_policy, touch_policy]),
        extension(OID_FORM_FACTOR, false, &[facts.form_factor]),
    ];
    let signer = CertificateSigner::Rsa(Box::new(device_key.clone()));
    Ok(build_certificate(
        &signer,
        &random_serial(16, Some(0x01)),
        &issuer,
        &validity,
        &subject,
        &spki,
        &extensions,
    ))
}

/// PEM of a DER certificate.
pub fn certificate_pem(der: &[u8]) -> String {
    der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der).unwrap_or_default()
}

fn certificate_to_der(bytes: &[u8]) -> Result<Vec<u8>, AttestationError> {
    let der = if bytes.starts_with(b"-----") {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| AttestationError::BadRootCertificate(e.to_string()))?;
        let (label, der) = der::pem::decode_vec(text.as_bytes())
            .map_err(|e| AttestationError::BadRootCertificate(e.to_string()))?;
        if label != "CERTIFICATE" {
            return Err(AttestationError::BadRootCertificate(format!(
                "PEM label is {label}"
            )));
        }
        der
    } else {
        bytes.to_vec()
    };
    x509_cert::Certificate::from_der(&der)
        .map_err(|e| AttestationError::BadRootCertificate(e.to_string()))?;
    Ok(der)
}

/// The RSA public modulus length of the device key (for tests and metadata).
pub fn rsa_modulus_len(key: &rsa::RsaPrivateKey) -> usize {
    key.size()
}

// --- a minimal DER writer: the exact bytes matter here, so each value is tagged by hand; the
// tag and length are the `der` crate's encoding ---

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    der::Tag::from_der(&[tag])
        .and_then(|tag| der::asn1::AnyRef::new(tag, content)?.to_der())
        .expect("attestation values are small and their tags one octet")
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    der_tlv(0x30, &parts.concat())
}

/// DER INTEGER from unsigned big-endian bytes.
fn integer(unsigned: &[u8]) -> Vec<u8> {
    let skip = unsigned
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(unsigned.len().saturating_sub(1));
    let mut content = unsigned[skip..].to_vec();
    if content.is_empty() {
        content.push(0);
    }
    if content[0] & 0x80 != 0 {
        content.insert(0, 0);
    }
    der_tlv(0x02, &content)
}

fn oid(dotted: &str) -> Vec<u8> {
    const_oid::ObjectIdentifier::new(dotted)
        .ok()
        .and_then(|o| o.to_der().ok())
        .unwrap_or_default()
}

fn name_cn(cn: &str) -> Vec<u8> {
    let atv = seq(&[&oid("2.5.4.3"), &der_tlv(0x0C, cn.as_bytes())]);
    seq(&[&der_tlv(0x31, &atv)])
}

fn time(y: u32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Vec<u8> {
    if (1950..2050).contains(&y) {
        der_tlv(
            0x17,
            format!("{:02}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z", y % 100).as_bytes(),
        )
    } else {
        der_tlv(
            0x18,
            format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z").as_bytes(),
        )
    }
}

fn extension(id: &str, critical: bool, value: &[u8]) -> Vec<u8> {
    let octets = der_tlv(0x04, value);
    if critical {
        seq(&[&oid(id), &[0x01, 0x01, 0xFF], &octets])
    } else {
        seq(&[&oid(id), &octets])
    }
}

fn key_identifier(spki_der: &[u8]) -> Vec<u8> {
    // RFC 5280 method 1 over the whole SPKI is fine for a test root: any stable id will do.
    sha1::Sha1::digest(spki_der).to_vec()
}

fn random_serial(len: usize, first: Option<u8>) -> Vec<u8> {
    use rand::RngExt;
    let mut bytes = vec![0u8; len];
    rand::rng().fill(&mut bytes[..]);
    bytes[0] = first.unwrap_or((bytes[0] & 0x7F) | 0x01);
    integer(&bytes)
}

fn build_certificate(
    signer: &CertificateSigner,
    serial_der: &[u8],
    issuer: &[u8],
    validity: &[u8],
    subject: &[u8],
    spki: &[u8],
    extensions: &[Vec<u8>],
) -> Vec<u8> {
    let alg = signer.algorithm_identifier();
    let version = der_tlv(0xA0, &integer(&[2]));
    let exts = der_tlv(
        0xA3,
        &seq(&extensions.iter().map(Vec::as_slice).collect::<Vec<_>>()),
    );
    let tbs = seq(&[
        &version, serial_der, &alg, issuer, validity, subject, spki, &exts,
    ]);
    let signature = signer.sign(&tbs);
    let mut bits = vec![0u8];
    bits.extend_from_slice(&signature);
    seq(&[&tbs, &alg, &der_tlv(0x03, &bits)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_integer_is_minimal_and_positive() {
        assert_eq!(integer(&[0, 0, 0x7F]), vec![2, 1, 0x7F]);
        assert_eq!(integer(&[0x80]), vec![2, 2, 0, 0x80]);
        // the serial as a real 5.4.3 card encodes 15732500
        assert_eq!(
            integer(&15_732_500u32.to_be_bytes()),
            vec![2, 4, 0, 0xF0, 0x0F, 0x14]
        );
        assert_eq!(integer(&[0, 0]), vec![2, 1, 0]);
    }

    #[test]
    fn times_switch_to_generalized_from_2050() {
        assert_eq!(time(2016, 3, 14, 0, 0, 0), der_tlv(0x17, b"160314000000Z"));
        assert_eq!(
            time(2052, 4, 17, 0, 0, 0),
            der_tlv(0x18, b"20520417000000Z")
        );
    }
}
