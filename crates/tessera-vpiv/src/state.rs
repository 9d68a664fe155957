//! What the card remembers between insertions, and its JSON state file (written atomically:
//! a temporary file beside it, synced, then renamed over it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::attestation::{self, DeviceFacts, TestRoot};
use super::keys::{KeyAlgorithm, SlotPrivateKey};
use super::mgmkey::{ManagementAlgorithm, ManagementKey};

pub const DEFAULT_PIN: &[u8] = b"123456";
pub const DEFAULT_PUK: &[u8] = b"12345678";
pub const DEFAULT_RETRIES: u8 = 3;
/// Object tag of the device attestation certificate.
pub const ATTESTATION_OBJECT: u32 = 0x5F_FF01;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("cannot write state file {path}: {reason}")]
    Write {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error(
        "state file {path} is not a tessera-vpiv state: {reason}; move it away to start a new card"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Attestation(#[from] attestation::AttestationError),
}

/// PIN policy byte values (GENERATE/IMPORT tag AA and the attestation .3.8 extension).
pub const PIN_POLICY_DEFAULT: u8 = 0;
pub const PIN_POLICY_NEVER: u8 = 1;
pub const PIN_POLICY_ONCE: u8 = 2;
pub const PIN_POLICY_ALWAYS: u8 = 3;
/// Touch policy byte values (tag AB).
pub const TOUCH_POLICY_DEFAULT: u8 = 0;
pub const TOUCH_POLICY_NEVER: u8 = 1;
pub const TOUCH_POLICY_ALWAYS: u8 = 2;
pub const TOUCH_POLICY_CACHED: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyOrigin {
    Generated,
    Imported,
}

impl KeyOrigin {
    pub fn byte(self) -> u8 {
        match self {
            Self::Generated => 1,
            Self::Imported => 2,
        }
    }
}

/// A key in a slot with its policies (already resolved: never 0 "default").
#[derive(Clone, Debug)]
pub struct SlotKey {
    pub key: SlotPrivateKey,
    pub pin_policy: u8,
    pub touch_policy: u8,
    pub origin: KeyOrigin,
}

/// A PIN or PUK with its retry counters. `Debug` hides the value.
#[derive(Clone)]
pub struct ReferenceData {
    value: Zeroizing<Vec<u8>>,
    pub retries_total: u8,
    pub retries_left: u8,
    default: &'static [u8],
}

impl std::fmt::Debug for ReferenceData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ReferenceData([redacted], {}/{})",
            self.retries_left, self.retries_total
        )
    }
}

impl ReferenceData {
    pub fn factory(default: &'static [u8], retries: u8) -> Self {
        Self {
            value: Zeroizing::new(default.to_vec()),
            retries_total: retries,
            retries_left: retries,
            default,
        }
    }

    /// Compares with the 8-byte, FF-padded form clients send, in constant time.
    pub fn matches_padded(&self, padded: &[u8]) -> bool {
        bool::from(pad8(&self.value).as_slice().ct_eq(padded))
    }

    pub fn set(&mut self, value: &[u8]) {
        self.value = Zeroizing::new(value.to_vec());
    }

    pub fn is_default(&self) -> bool {
        bool::from(self.value.as_slice().ct_eq(self.default))
    }

    pub fn blocked(&self) -> bool {
        self.retries_left == 0
    }
}

/// Pads a PIN to 8 bytes with FF, as PIV clients send it.
pub fn pad8(value: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(value.to_vec());
    out.resize(8, 0xFF);
    out
}

/// Strips FF padding from an 8-byte PIN block.
pub fn unpad8(block: &[u8]) -> &[u8] {
    let end = block.iter().position(|b| *b == 0xFF).unwrap_or(block.len());
    &block[..end]
}

/// The card's lasting state.
#[derive(Clone, Debug)]
pub struct CardState {
    pub facts: DeviceFacts,
    pub pin: ReferenceData,
    pub puk: ReferenceData,
    pub management_key: ManagementKey,
    pub management_touch: bool,
    pub slots: BTreeMap<u8, SlotKey>,
    /// Data objects by tag, each holding the content of its 53 template.
    pub objects: BTreeMap<u32, Vec<u8>>,
    pub attestation_key: rsa::RsaPrivateKey,
    /// The root that issued the device certificate, exported for verifiers.
    pub attestation_root_der: Vec<u8>,
}

impl CardState {
    /// A factory-fresh card with a new attestation key and device certificate from `root`.
    pub fn factory(facts: DeviceFacts, root: &TestRoot) -> Result<Self, StateError> {
        let attestation_key = rsa::RsaPrivateKey::new(&mut rand::rng(), 2048).map_err(|e| {
            StateError::Attestation(attestation::AttestationError::KeyGeneration(e.to_string()))
        })?;
        let device_cert = root.issue_device_certificate(&attestation_key, &facts)?;
        let mut objects = BTreeMap::new();
        objects.insert(ATTESTATION_OBJECT, certificate_object(&device_cert));
        Ok(Self {
            facts,
            pin: ReferenceData::factory(DEFAULT_PIN, DEFAULT_RETRIES),
            puk: ReferenceData::factory(DEFAULT_PUK, DEFAULT_RETRIES),
            management_key: ManagementKey::factory_default(facts.firmware >= [5, 7, 0]),
            management_touch: false,
            slots: BTreeMap::new(),
            objects,
            attestation_key,
            attestation_root_der: root.certificate_der.clone(),
        })
    }

    /// PIV RESET: everything back to factory values except the attestation key, its
    /// certificate and the device facts.
    pub fn reset_piv(&mut self) {
        self.pin = ReferenceData::factory(DEFAULT_PIN, DEFAULT_RETRIES);
        self.puk = ReferenceData::factory(DEFAULT_PUK, DEFAULT_RETRIES);
        self.management_key = ManagementKey::factory_default(self.facts.firmware >= [5, 7, 0]);
        self.management_touch = false;
        self.slots.clear();
        self.objects.retain(|tag, _| *tag == ATTESTATION_OBJECT);
    }

    /// The device attestation certificate (DER) from object 5FFF01.
    pub fn device_certificate(&self) -> Option<Vec<u8>> {
        let content = self.objects.get(&ATTESTATION_OBJECT)?;
        let tlvs = super::tlv::parse_all(content).ok()?;
        super::tlv::find(&tlvs, 0x70).map(<[u8]>::to_vec)
    }

    pub fn load(path: &Path) -> Result<Self, StateError> {
        let text = std::fs::read_to_string(path).map_err(|reason| StateError::Read {
            path: path.to_owned(),
            reason,
        })?;
        let corrupt = |reason: String| StateError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let stored: StoredState =
            serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        stored.into_state().map_err(corrupt)
    }

    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        use std::io::Write;
        let write_err = |reason| StateError::Write {
            path: path.to_owned(),
            reason,
        };
        let json = Zeroizing::new(
            serde_json::to_string_pretty(&StoredState::from_state(self))
                .map_err(|e| write_err(std::io::Error::other(e)))?,
        );
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
        let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
        // owner-only: the file holds every private key, PIN and management key in clear
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(write_err)?;
        file.write_all(json.as_bytes()).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(write_err)
    }
}

/// The 53 content of a certificate object: 70 cert, 71 00 (uncompressed), FE 00 (LRC).
pub fn certificate_object(cert_der: &[u8]) -> Vec<u8> {
    let mut out = super::tlv::encode(0x70, cert_der);
    out.extend_from_slice(&[0x71, 0x01, 0x00, 0xFE, 0x00]);
    out
}

// --- the JSON form: secrets and keys as hex; the file is as secret as a card's chip ---

#[derive(Serialize, Deserialize)]
struct StoredState {
    format: u32,
    serial: u32,
    firmware: String,
    form_factor: u8,
    fips: bool,
    cspn: bool,
    pin: StoredReference,
    puk: StoredReference,
    management_key: StoredManagementKey,
    slots: BTreeMap<String, StoredSlotKey>,
    objects: BTreeMap<String, String>,
    attestation_key_pkcs8: String,
    attestation_root: String,
}

#[derive(Serialize, Deserialize)]
struct StoredReference {
    value: String,
    retries_total: u8,
    retries_left: u8,
}

#[derive(Serialize, Deserialize)]
struct StoredManagementKey {
    algorithm: ManagementAlgorithm,
    key: String,
    touch: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredSlotKey {
    algorithm: KeyAlgorithm,
    private_key: String,
    pin_policy: u8,
    touch_policy: u8,
    origin: KeyOrigin,
}

const STATE_FORMAT: u32 = 1;

/// The hex strings of secrets are wiped when the JSON form is dropped.
impl Drop for StoredState {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.pin.value.zeroize();
        self.puk.value.zeroize();
        self.management_key.key.zeroize();
        self.attestation_key_pkcs8.zeroize();
        for slot in self.slots.values_mut() {
            slot.private_key.zeroize();
        }
    }
}

impl StoredState {
    fn from_state(s: &CardState) -> Self {
        use rsa::pkcs8::EncodePrivateKey;
        let f = &s.facts;
        let reference = |r: &ReferenceData| StoredReference {
            value: hex::encode(&*r.value),
            retries_total: r.retries_total,
            retries_left: r.retries_left,
        };
        Self {
            format: STATE_FORMAT,
            serial: f.serial,
            firmware: format!("{}.{}.{}", f.firmware[0], f.firmware[1], f.firmware[2]),
            form_factor: f.form_factor,
            fips: f.fips,
            cspn: f.cspn,
            pin: reference(&s.pin),
            puk: reference(&s.puk),
            management_key: StoredManagementKey {
                algorithm: s.management_key.algorithm,
                key: hex::encode(s.management_key.secret_bytes()),
                touch: s.management_touch,
            },
            slots: s
                .slots
                .iter()
                .map(|(slot, k)| {
                    (
                        format!("{slot:02x}"),
                        StoredSlotKey {
                            algorithm: k.key.algorithm(),
                            private_key: hex::encode(&*k.key.to_stored()),
                            pin_policy: k.pin_policy,
                            touch_policy: k.touch_policy,
                            origin: k.origin,
                        },
                    )
                })
                .collect(),
            objects: s
                .objects
                .iter()
                .map(|(t, v)| (format!("{t:06x}"), hex::encode(v)))
                .collect(),
            attestation_key_pkcs8: s
                .attestation_key
                .to_pkcs8_der()
                .map(|d| hex::encode(d.as_bytes()))
                .unwrap_or_default(),
            attestation_root: hex::encode(&s.attestation_root_der),
        }
    }

    fn into_state(self) -> Result<CardState, String> {
        use rsa::pkcs8::DecodePrivateKey;
        if self.format != STATE_FORMAT {
            return Err(format!("format {} is not {STATE_FORMAT}", self.format));
        }
        let unhex = |what: &str, h: &str| hex::decode(h).map_err(|e| format!("{what}: {e}"));
        let firmware = parse_firmware(&self.firmware).ok_or("firmware is not N.N.N")?;
        let reference = |what: &str, r: &StoredReference, default: &'static [u8]| {
            Ok::<_, String>(ReferenceData {
                value: Zeroizing::new(unhex(what, &r.value)?),
                retries_total: r.retries_total,
                retries_left: r.retries_left.min(r.retries_total),
                default,
            })
        };
        let mgm_bytes = Zeroizing::new(unhex("management key", &self.management_key.key)?);
        let management_key = ManagementKey::new(self.management_key.algorithm, &mgm_bytes)
            .ok_or("management key length does not fit its algorithm")?;
        let mut slots = BTreeMap::new();
        for (slot, k) in &self.slots {
            let slot = u8::from_str_radix(slot, 16).map_err(|e| format!("slot {slot}: {e}"))?;
            let bytes = Zeroizing::new(unhex("slot key", &k.private_key)?);
            let key = SlotPrivateKey::from_stored(k.algorithm, &bytes)
                .map_err(|e| format!("slot {slot:02x}: {e}"))?;
            slots.insert(
                slot,
                SlotKey {
                    key,
                    pin_policy: k.pin_policy,
                    touch_policy: k.touch_policy,
                    origin: k.origin,
                },
            );
        }
        let mut objects = BTreeMap::new();
        for (tag, v) in &self.objects {
            let tag = u32::from_str_radix(tag, 16).map_err(|e| format!("object {tag}: {e}"))?;
            objects.insert(tag, unhex("object", v)?);
        }
        let ak = Zeroizing::new(unhex("attestation key", &self.attestation_key_pkcs8)?);
        let attestation_key =
            rsa::RsaPrivateKey::from_pkcs8_der(&ak).map_err(|e| format!("attestation key: {e}"))?;
        Ok(CardState {
            facts: DeviceFacts {
                firmware,
                serial: self.serial,
                form_factor: self.form_factor,
                fips: self.fips,
                cspn: self.cspn,
            },
            pin: reference("pin", &self.pin, DEFAULT_PIN)?,
            puk: reference("puk", &self.puk, DEFAULT_PUK)?,
            management_key,
            management_touch: self.management_key.touch,
            slots,
            objects,
            attestation_key,
            attestation_root_der: unhex("attestation root", &self.attestation_root)?,
        })
    }
}

/// Parses "5.4.3".
pub fn parse_firmware(s: &str) -> Option<[u8; 3]> {
    let mut parts = s.split('.').map(|p| p.parse::<u8>().ok());
    let v = [parts.next()??, parts.next()??, parts.next()??];
    parts.next().is_none().then_some(v)
}
