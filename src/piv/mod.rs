//! The token driver: everything the help-desk station does to a YubiKey's PIV application, over
//! PC/SC through the `yubikey` crate. It never talks to the server and never decides policy.
//!
//! Rules it keeps for the people who use it:
//! - It never tries a PIN, PUK or management key it was not given. Before a PIN or PUK is tried
//!   it reads the retry counter, refuses when the counter is at zero, and says how many tries
//!   remain after a wrong value.
//! - A reset is the one operation that deliberately blocks the PIN and PUK (the card allows a
//!   reset only then); callers must have the operator's confirmation first.
//! - Secrets arrive as [`Secret`] values (zeroized on drop, `[redacted]` in `Debug`).

use std::fmt;

mod tls_key;
pub use tls_key::{CardTlsKey, TouchPrompt, slot_name};

use der::{Decode as _, Tagged as _};
use rand::TryRng as _;
use subtle::ConstantTimeEq;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use yubikey::piv::{self, AlgorithmId, ManagementSlotId, SlotId};
use yubikey::{MgmAlgorithmId, MgmKey, PinPolicy, TouchPolicy, YubiKey};
use zeroize::Zeroizing;

/// Object id of the attestation key's certificate (Yubico's 5FFF01).
const OBJECT_ATTESTATION_CERT: u32 = 0x5f_ff01;

/// A PIN, PUK or management key: zeroized on drop, never printed.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(Zeroizing::new(bytes.into()))
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// Constant-time equality, for "type the new PIN twice".
    pub fn matches(&self, other: &Secret) -> bool {
        self.0.len() == other.0.len() && bool::from(self.0.ct_eq(&other.0))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A management key and its algorithm (3DES on firmware before 5.7, AES-192 by default after).
#[derive(Clone, Debug)]
pub struct ManagementKey {
    pub algorithm: MgmAlgorithmId,
    pub key: Secret,
}

impl ManagementKey {
    /// A fresh random key of the given algorithm from the operating system's CSPRNG.
    pub fn generate(algorithm: MgmAlgorithmId) -> Self {
        let len = match algorithm {
            MgmAlgorithmId::ThreeDes | MgmAlgorithmId::Aes192 => 24,
            MgmAlgorithmId::Aes128 => 16,
            MgmAlgorithmId::Aes256 => 32,
        };
        let mut bytes = Zeroizing::new(vec![0u8; len]);
        rand::rngs::SysRng
            .try_fill_bytes(&mut bytes)
            .expect("the operating system's random source failed");
        Self {
            algorithm,
            key: Secret(bytes),
        }
    }

    fn to_mgm_key(&self) -> Result<MgmKey, PivError> {
        MgmKey::from_bytes(self.key.expose(), Some(self.algorithm)).map_err(|e| PivError::Card {
            operation: "parse management key",
            source: e,
        })
    }
}

/// The algorithm a management key uses by default on a firmware version.
pub fn default_management_algorithm(firmware: yubikey::Version) -> MgmAlgorithmId {
    if (firmware.major, firmware.minor) >= (5, 7) {
        MgmAlgorithmId::Aes192
    } else {
        MgmAlgorithmId::ThreeDes
    }
}

/// What the token says about itself before anything is changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub reader: String,
    pub serial: u32,
    pub firmware: String,
    pub pin_tries_left: u8,
    /// `None` on firmware without GET METADATA (before 5.3), which cannot say it without a try.
    pub puk_tries_left: Option<u8>,
    /// Whether PIN, PUK and management key still have their factory values (GET METADATA).
    pub pin_is_default: Option<bool>,
    pub puk_is_default: Option<bool>,
    pub management_key_is_default: Option<bool>,
    pub management_key_algorithm: Option<String>,
}

impl TokenInfo {
    /// Factory-fresh: PIN, PUK and management key all at their defaults.
    pub fn is_factory_fresh(&self) -> bool {
        self.pin_is_default == Some(true)
            && self.puk_is_default == Some(true)
            && self.management_key_is_default == Some(true)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PivError {
    #[error("cannot reach PC/SC (is pcscd running?): {0}")]
    PcscUnavailable(yubikey::Error),
    #[error("no YubiKey found in a reader{}; insert the token or check the reader name", filter_text(.0))]
    NoToken(Option<String>),
    #[error("several YubiKeys are present ({0}); name the reader to use")]
    SeveralTokens(String),
    #[error("wrong PIN: {tries_left} tries left before the PIN is blocked")]
    WrongPin { tries_left: u8 },
    #[error("wrong PUK: {tries_left} tries left before the PUK is blocked")]
    WrongPuk { tries_left: u8 },
    #[error("the PIN is blocked; unblock it with the PUK (tessera station unblock)")]
    PinBlocked,
    #[error("the PUK is blocked; the token can only be reset")]
    PukBlocked,
    #[error(
        "the management key was refused by the token; it is not the key Tessera holds for this token"
    )]
    ManagementKeyRefused,
    #[error("the new PIN must be 6 to 8 characters")]
    PinLength,
    #[error(
        "no touch: the token answered 6982 (security status not satisfied) while waiting for a touch; \
         touch the YubiKey when it blinks and run the command again"
    )]
    TouchTimeout,
    #[error(
        "the token was removed or stopped answering during {operation} (PC/SC: {source}); \
         put it back in the reader and run the command again"
    )]
    Removed {
        operation: &'static str,
        source: pcsc::Error,
    },
    #[error("the token refused {operation}: {}", describe_card_error(.source))]
    Card {
        operation: &'static str,
        source: yubikey::Error,
    },
    #[error("the token returned a malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("slot {0} holds no key (GET METADATA found none); the token was not enrolled for it")]
    NoKey(String),
    #[error("slot {0} holds no certificate; the token was not enrolled for it")]
    NoCertificate(String),
    #[error(
        "the certificate in slot {0} is not for the slot's key (the key was replaced and its certificate never written); renew at the help desk"
    )]
    CertificateKeyMismatch(String),
    #[error(
        "slot {slot} holds a {algorithm} key; a TLS client key on the card must be ECDSA P-256 or P-384"
    )]
    UnsupportedTlsKey { slot: String, algorithm: String },
}

/// What GET METADATA says about an asymmetric slot's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotKey {
    pub algorithm: AlgorithmId,
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
    /// SubjectPublicKeyInfo (DER), when the card says it.
    pub public_key_der: Option<Vec<u8>>,
}

fn filter_text(filter: &Option<String>) -> String {
    match filter {
        Some(f) => format!(" matching {f:?}"),
        None => String::new(),
    }
}

fn card(operation: &'static str) -> impl FnOnce(yubikey::Error) -> PivError {
    move |source| card_error(operation, source)
}

/// A card error, or [`PivError::Removed`] when PC/SC says the card is gone.
fn card_error(operation: &'static str, source: yubikey::Error) -> PivError {
    match source {
        yubikey::Error::PcscError { inner: Some(pcsc) } if is_removal(pcsc) => PivError::Removed {
            operation,
            source: pcsc,
        },
        source => PivError::Card { operation, source },
    }
}

/// PC/SC errors that mean the card left the reader (or stopped answering mid-command).
fn is_removal(error: pcsc::Error) -> bool {
    matches!(
        error,
        pcsc::Error::RemovedCard
            | pcsc::Error::ResetCard
            | pcsc::Error::NoSmartcard
            | pcsc::Error::ReaderUnavailable
            | pcsc::Error::UnresponsiveCard
            | pcsc::Error::UnpoweredCard
            | pcsc::Error::NotTransacted
            | pcsc::Error::CommError
            | pcsc::Error::UnknownReader
    )
}

/// Names the ISO 7816 status behind a `yubikey` error where the driver maps one status to it
/// (it keeps only the error kind), with what to check; otherwise the driver's own name.
pub fn describe_card_error(error: &yubikey::Error) -> String {
    use yubikey::Error as E;
    match error {
        E::AuthenticationError => {
            "ISO 7816 status 6982 (security status not satisfied): the management key, \
             PIN or touch this needs was not given"
                .into()
        }
        E::PinLocked => "ISO 7816 status 6983 (authentication method blocked)".into(),
        E::WrongPin { tries } => {
            format!("ISO 7816 status 63C{tries:X} (verification failed, {tries} tries left)")
        }
        E::NotFound => "ISO 7816 status 6A82/6A88 (data object or key not found)".into(),
        E::NotSupported => {
            "ISO 7816 status 6D00 (instruction not supported): this firmware lacks it".into()
        }
        E::AlgorithmError => {
            "ISO 7816 status 6A80 (incorrect data): algorithm, PIN or touch policy \
             not supported by this firmware"
                .into()
        }
        E::KeyError => "ISO 7816 status 6B00 (wrong slot)".into(),
        E::PcscError { inner: Some(pcsc) } => {
            format!("PC/SC error: {pcsc}; check the reader and pcscd")
        }
        other => match other.name() {
            Some(name) => format!("{other} ({name}); the driver reports no ISO 7816 status for it"),
            None => other.to_string(),
        },
    }
}

/// An open PIV token in a PC/SC reader.
pub struct PivToken {
    yubikey: YubiKey,
    reader: String,
}

impl fmt::Debug for PivToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PivToken")
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

impl PivToken {
    /// Opens the one YubiKey whose reader name contains `reader_filter` (or the only one present).
    pub fn open(reader_filter: Option<&str>) -> Result<Self, PivError> {
        let mut context = yubikey::reader::Context::open().map_err(PivError::PcscUnavailable)?;
        let readers = context.iter().map_err(PivError::PcscUnavailable)?;
        let mut found = Vec::new();
        for reader in readers {
            let name = reader.name().into_owned();
            if reader_filter.is_some_and(|f| !name.contains(f)) {
                continue;
            }
            // A reader with no card, or a card without PIV, is not a token.
            if let Ok(yubikey) = reader.open() {
                found.push((name, yubikey));
            }
        }
        match found.len() {
            0 => Err(PivError::NoToken(reader_filter.map(str::to_owned))),
            1 => {
                let (reader, yubikey) = found.pop().expect("one element");
                Ok(Self { yubikey, reader })
            }
            _ => Err(PivError::SeveralTokens(
                found
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    pub fn reader(&self) -> &str {
        &self.reader
    }

    pub fn serial(&self) -> u32 {
        self.yubikey.serial().into()
    }

    pub fn firmware(&self) -> yubikey::Version {
        self.yubikey.version()
    }

    /// Serial, firmware and retry counters, read without trying any secret.
    pub fn info(&mut self) -> Result<TokenInfo, PivError> {
        let pin = piv::metadata(&mut self.yubikey, SlotId::Management(ManagementSlotId::Pin)).ok();
        let puk = piv::metadata(&mut self.yubikey, SlotId::Management(ManagementSlotId::Puk)).ok();
        let mgm = piv::metadata(
            &mut self.yubikey,
            SlotId::Management(ManagementSlotId::Management),
        )
        .ok();
        let pin_tries_left = match pin.as_ref().and_then(|m| m.retries.as_ref()) {
            Some(r) => r.remaining_count,
            None => self
                .yubikey
                .get_pin_retries()
                .map_err(card("read the PIN retry counter"))?,
        };
        let puk_tries_left = puk
            .as_ref()
            .and_then(|m| m.retries.as_ref())
            .map(|r| r.remaining_count);
        Ok(TokenInfo {
            reader: self.reader.clone(),
            serial: self.serial(),
            firmware: self.firmware().to_string(),
            pin_tries_left,
            puk_tries_left,
            pin_is_default: pin.as_ref().and_then(|m| m.default),
            puk_is_default: puk.as_ref().and_then(|m| m.default),
            management_key_is_default: mgm.as_ref().and_then(|m| m.default),
            management_key_algorithm: mgm.as_ref().map(|m| format!("{:?}", m.algorithm)),
        })
    }

    fn pin_tries_left(&mut self) -> Result<u8, PivError> {
        self.yubikey
            .get_pin_retries()
            .map_err(card("read the PIN retry counter"))
    }

    fn puk_tries_left(&mut self) -> Result<Option<u8>, PivError> {
        Ok(
            piv::metadata(&mut self.yubikey, SlotId::Management(ManagementSlotId::Puk))
                .ok()
                .and_then(|m| m.retries)
                .map(|r| r.remaining_count),
        )
    }

    /// The key in `slot`: algorithm, PIN and touch policy and public key (GET METADATA, firmware
    /// 5.3 and later); tries no secret.
    pub fn slot_key(&mut self, slot: SlotId) -> Result<SlotKey, PivError> {
        use der::Encode as _;
        let metadata = match piv::metadata(&mut self.yubikey, slot) {
            Ok(m) => m,
            Err(yubikey::Error::NotFound) => return Err(PivError::NoKey(slot_name(slot))),
            Err(other) => return Err(card_error("read the slot's metadata", other)),
        };
        let piv::SlotAlgorithmId::Asymmetric(algorithm) = metadata.algorithm else {
            return Err(PivError::NoKey(slot_name(slot)));
        };
        let (pin_policy, touch_policy) = metadata.policy.ok_or_else(|| PivError::Malformed {
            what: "slot metadata",
            detail: "no PIN and touch policy".into(),
        })?;
        Ok(SlotKey {
            algorithm,
            pin_policy,
            touch_policy,
            public_key_der: metadata.public.and_then(|p| p.to_der().ok()),
        })
    }

    /// Authenticates with a management key the operator gave or the server sent.
    pub fn authenticate(&mut self, key: &ManagementKey) -> Result<(), PivError> {
        let mgm = key.to_mgm_key()?;
        self.yubikey.authenticate(&mgm).map_err(|e| match e {
            yubikey::Error::AuthenticationError => PivError::ManagementKeyRefused,
            other => card_error("management-key authentication", other),
        })
    }

    /// Replaces the management key (after [`authenticate`](Self::authenticate)).
    pub fn set_management_key(&mut self, new_key: &ManagementKey) -> Result<(), PivError> {
        let mgm = new_key.to_mgm_key()?;
        mgm.set_manual(&mut self.yubikey, false)
            .map_err(card("set the management key"))
    }

    /// Verifies the PIN; refuses to try when the PIN is already blocked.
    pub fn verify_pin(&mut self, pin: &Secret) -> Result<(), PivError> {
        if self.pin_tries_left()? == 0 {
            return Err(PivError::PinBlocked);
        }
        self.yubikey.verify_pin(pin.expose()).map_err(|e| match e {
            yubikey::Error::WrongPin { tries: 0 } | yubikey::Error::PinLocked => {
                PivError::PinBlocked
            }
            yubikey::Error::WrongPin { tries } => PivError::WrongPin { tries_left: tries },
            other => card_error("PIN verification", other),
        })
    }

    pub fn change_pin(&mut self, current: &Secret, new: &Secret) -> Result<(), PivError> {
        check_pin_length(new)?;
        if self.pin_tries_left()? == 0 {
            return Err(PivError::PinBlocked);
        }
        self.yubikey
            .change_pin(current.expose(), new.expose())
            .map_err(|e| match e {
                yubikey::Error::WrongPin { tries: 0 } | yubikey::Error::PinLocked => {
                    PivError::PinBlocked
                }
                yubikey::Error::WrongPin { tries } => PivError::WrongPin { tries_left: tries },
                other => card_error("PIN change", other),
            })
    }

    pub fn change_puk(&mut self, current: &Secret, new: &Secret) -> Result<(), PivError> {
        if self.puk_tries_left()? == Some(0) {
            return Err(PivError::PukBlocked);
        }
        self.yubikey
            .change_puk(current.expose(), new.expose())
            .map_err(puk_error("PUK change"))
    }

    /// Sets a new PIN with the PUK (the escrowed PUK the server sends; never shown).
    pub fn unblock_pin(&mut self, puk: &Secret, new_pin: &Secret) -> Result<(), PivError> {
        check_pin_length(new_pin)?;
        if self.puk_tries_left()? == Some(0) {
            return Err(PivError::PukBlocked);
        }
        self.yubikey
            .unblock_pin(puk.expose(), new_pin.expose())
            .map_err(puk_error("PIN unblock"))
    }

    /// Resets the PIV application to factory state. The card allows it only with PIN and PUK
    /// blocked, so this blocks both with values that are not the real ones. Only after the
    /// operator confirmed. The attestation key (F9) and its certificate survive a reset.
    pub fn reset(&mut self) -> Result<(), PivError> {
        // Block the PIN by verifying a value no PIN policy allows (too short to be accepted).
        for _ in 0..16 {
            match self.yubikey.verify_pin(b"\x00\x00\x00\x00\x00\x00\x00\x00") {
                Err(yubikey::Error::WrongPin { tries: 0 }) | Err(yubikey::Error::PinLocked) => {
                    break;
                }
                Err(yubikey::Error::WrongPin { .. }) => continue,
                Ok(()) => continue,
                Err(other) => return Err(card_error("block the PIN for reset", other)),
            }
        }
        self.yubikey
            .block_puk()
            .map_err(card("block the PUK for reset"))?;
        self.yubikey
            .reset_device()
            .map_err(card("reset the PIV application"))
    }

    /// Connects again to the same token (a PC/SC reconnect that resets the card and selects
    /// PIV), as needed after [`reset`](Self::reset); the handle stays the only one open.
    pub fn reconnect(&mut self) -> Result<(), PivError> {
        self.yubikey
            .reconnect()
            .map_err(card("reconnect to the token"))
    }

    /// Whether a token still answers in this handle's reader (after a failed command: was the
    /// token pulled?). Opens a fresh connection; tries no secret.
    pub fn still_present(&self) -> bool {
        PivToken::open(Some(&self.reader)).is_ok()
    }

    /// Generates a key pair on the token (after [`authenticate`](Self::authenticate)).
    pub fn generate(
        &mut self,
        slot: SlotId,
        algorithm: AlgorithmId,
        pin_policy: PinPolicy,
        touch_policy: TouchPolicy,
    ) -> Result<SubjectPublicKeyInfoOwned, PivError> {
        piv::generate(&mut self.yubikey, slot, algorithm, pin_policy, touch_policy)
            .map_err(card("key generation"))
    }

    /// The slot's attestation certificate (DER), signed by the token's attestation key.
    pub fn attest(&mut self, slot: SlotId) -> Result<Vec<u8>, PivError> {
        let der = piv::attest(&mut self.yubikey, slot).map_err(card("attestation"))?;
        Ok(der.to_vec())
    }

    /// The attestation key's own certificate (object 5FFF01), DER.
    pub fn attestation_certificate(&mut self) -> Result<Vec<u8>, PivError> {
        let object = self
            .yubikey
            .fetch_object(OBJECT_ATTESTATION_CERT)
            .map_err(card("read the attestation certificate (5FFF01)"))?;
        certificate_from_object(&object, "attestation certificate object")
    }

    /// Signs a digest (ECDSA) or a padded block (RSA) with the slot's key; the PIN must have
    /// been verified when the key's PIN policy needs it.
    pub fn sign(
        &mut self,
        slot: SlotId,
        algorithm: AlgorithmId,
        input: &[u8],
    ) -> Result<Vec<u8>, PivError> {
        let signature =
            piv::sign_data(&mut self.yubikey, input, algorithm, slot).map_err(card("signing"))?;
        Ok(signature.to_vec())
    }

    /// [`sign`](Self::sign) with a key whose touch policy needs a touch; the caller has told the
    /// operator to touch the token. The card answers 6982 when no touch came in time, which is
    /// reported as [`PivError::TouchTimeout`].
    pub fn sign_with_touch(
        &mut self,
        slot: SlotId,
        algorithm: AlgorithmId,
        input: &[u8],
    ) -> Result<Vec<u8>, PivError> {
        match piv::sign_data(&mut self.yubikey, input, algorithm, slot) {
            Ok(signature) => Ok(signature.to_vec()),
            Err(yubikey::Error::AuthenticationError) => Err(PivError::TouchTimeout),
            Err(other) => Err(card_error("signing", other)),
        }
    }

    /// Stores a certificate (DER) in a slot's certificate object.
    pub fn write_certificate(&mut self, slot: SlotId, der: &[u8]) -> Result<(), PivError> {
        let certificate = yubikey::Certificate::from_bytes(der.to_vec())
            .map_err(card("parse the certificate to store"))?;
        certificate
            .write(
                &mut self.yubikey,
                slot,
                yubikey::certificate::CertInfo::Uncompressed,
            )
            .map_err(card("store the certificate"))
    }

    /// Reads the certificate stored in a slot (DER); `None` when the slot's object is absent.
    pub fn read_certificate(&mut self, slot: SlotId) -> Result<Option<Vec<u8>>, PivError> {
        match self.yubikey.fetch_object(certificate_object_id(slot)) {
            Ok(object) => certificate_from_object(&object, "certificate object").map(Some),
            Err(yubikey::Error::NotFound) => Ok(None),
            Err(other) => Err(card_error("read a certificate", other)),
        }
    }

    /// Writes a fresh CHUID with a random card GUID (Windows uses it to tell cards apart).
    pub fn write_new_chuid(&mut self) -> Result<(), PivError> {
        let mut chuid = CHUID_TEMPLATE;
        rand::rngs::SysRng
            .try_fill_bytes(&mut chuid[CHUID_GUID_OFFSET..CHUID_GUID_OFFSET + 16])
            .expect("the operating system's random source failed");
        yubikey::ChuId(chuid)
            .set(&mut self.yubikey)
            .map_err(card("write the CHUID"))
    }
}

fn puk_error(operation: &'static str) -> impl FnOnce(yubikey::Error) -> PivError {
    move |e| match e {
        yubikey::Error::WrongPin { tries: 0 } | yubikey::Error::PinLocked => PivError::PukBlocked,
        yubikey::Error::WrongPin { tries } => PivError::WrongPuk { tries_left: tries },
        other => card_error(operation, other),
    }
}

fn check_pin_length(pin: &Secret) -> Result<(), PivError> {
    if (6..=8).contains(&pin.expose().len()) {
        Ok(())
    } else {
        Err(PivError::PinLength)
    }
}

/// A certificate data object is `70 <cert> 71 <info> FE <lrc>`; returns the DER in tag 70.
fn certificate_from_object(object: &[u8], what: &'static str) -> Result<Vec<u8>, PivError> {
    let malformed = |detail: &str| PivError::Malformed {
        what,
        detail: detail.to_owned(),
    };
    // The first TLV, read by the der crate (tag 70 is [APPLICATION 16], constructed); the 71
    // and FE TLVs after it are left unread.
    let first = der::SliceReader::new(object)
        .and_then(|mut reader| der::asn1::AnyRef::decode(&mut reader))
        .map_err(|_| malformed("not a TLV"))?;
    if first.tag() != CERTIFICATE_TAG {
        return Err(malformed("no certificate (tag 70)"));
    }
    let value = first.value();
    x509_cert::Certificate::from_der(value).map_err(|e| malformed(&e.to_string()))?;
    Ok(value.to_vec())
}

/// Tag 70 of a certificate data object: the certificate itself.
const CERTIFICATE_TAG: der::Tag = der::Tag::Application {
    constructed: true,
    number: der::TagNumber(16),
};

/// The data object that holds a slot's certificate (SP 800-73-4 table 3; retired slots 82–95
/// map to 5FC10D–5FC120).
fn certificate_object_id(slot: SlotId) -> u32 {
    match slot {
        SlotId::Authentication => 0x5f_c105,
        SlotId::Signature => 0x5f_c10a,
        SlotId::KeyManagement => 0x5f_c10b,
        SlotId::CardAuthentication => 0x5f_c101,
        SlotId::Retired(retired) => 0x5f_c10d + u32::from(u8::from(retired) - 0x82),
        SlotId::Attestation => OBJECT_ATTESTATION_CERT,
        SlotId::Management(_) => 0,
    }
}

const CHUID_GUID_OFFSET: usize = 29;
/// SP 800-73-4 CHUID as YubiKey tools write it: FASC-N, GUID (random), expiry 2030-01-01,
/// empty signature, error detection code.
const CHUID_TEMPLATE: [u8; 59] = [
    0x30, 0x19, 0xd4, 0xe7, 0x39, 0xda, 0x73, 0x9c, 0xed, 0x39, 0xce, 0x73, 0x9d, 0x83, 0x68, 0x58,
    0x21, 0x08, 0x42, 0x10, 0x84, 0x21, 0xc8, 0x42, 0x10, 0xc3, 0xeb, 0x34, 0x10, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x35, 0x08, 0x32,
    0x30, 0x33, 0x30, 0x30, 0x31, 0x30, 0x31, 0x3e, 0x00, 0xfe, 0x00,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(
            format!("{:?}", Secret::new(b"123456".to_vec())),
            "[redacted]"
        );
        let key = ManagementKey::generate(MgmAlgorithmId::Aes192);
        assert!(!format!("{key:?}").contains(&hex::encode(key.key.expose())));
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(Secret::new(b"123456".to_vec()).matches(&Secret::new(b"123456".to_vec())));
        assert!(!Secret::new(b"123456".to_vec()).matches(&Secret::new(b"123457".to_vec())));
        assert!(!Secret::new(b"123456".to_vec()).matches(&Secret::new(b"1234567".to_vec())));
    }

    #[test]
    fn generated_management_keys_have_the_algorithm_length() {
        assert_eq!(
            ManagementKey::generate(MgmAlgorithmId::ThreeDes)
                .key
                .expose()
                .len(),
            24
        );
        assert_eq!(
            ManagementKey::generate(MgmAlgorithmId::Aes128)
                .key
                .expose()
                .len(),
            16
        );
        assert_eq!(
            ManagementKey::generate(MgmAlgorithmId::Aes256)
                .key
                .expose()
                .len(),
            32
        );
        let a = ManagementKey::generate(MgmAlgorithmId::Aes192);
        let b = ManagementKey::generate(MgmAlgorithmId::Aes192);
        assert!(!a.key.matches(&b.key), "two random keys must differ");
        assert!(a.to_mgm_key().is_ok());
    }

    #[test]
    fn default_management_algorithm_follows_firmware() {
        assert_eq!(
            default_management_algorithm(yubikey::Version::new([5, 4, 3])),
            MgmAlgorithmId::ThreeDes
        );
        assert_eq!(
            default_management_algorithm(yubikey::Version::new([5, 7, 4])),
            MgmAlgorithmId::Aes192
        );
    }

    #[test]
    fn pin_length_is_checked_before_the_card_sees_it() {
        assert!(matches!(
            check_pin_length(&Secret::new(b"12345".to_vec())),
            Err(PivError::PinLength)
        ));
        assert!(matches!(
            check_pin_length(&Secret::new(b"123456789".to_vec())),
            Err(PivError::PinLength)
        ));
        assert!(check_pin_length(&Secret::new(b"123456".to_vec())).is_ok());
    }

    #[test]
    fn certificate_object_must_hold_a_certificate() {
        let err = certificate_from_object(&[0x53, 0x01, 0x00], "attestation certificate object")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the token returned a malformed attestation certificate object: no certificate (tag 70)"
        );
        let err = certificate_from_object(&[0x70, 0x05, 0x01], "attestation certificate object")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the token returned a malformed attestation certificate object: not a TLV"
        );
        let err =
            certificate_from_object(&[0x70, 0x02, 0x30, 0x00], "attestation certificate object")
                .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the token returned a malformed attestation certificate object: ")
        );
    }

    #[test]
    fn certificate_objects_follow_sp_800_73() {
        use yubikey::piv::RetiredSlotId;
        assert_eq!(certificate_object_id(SlotId::Authentication), 0x5fc105);
        assert_eq!(certificate_object_id(SlotId::Signature), 0x5fc10a);
        assert_eq!(
            certificate_object_id(SlotId::Retired(RetiredSlotId::R1)),
            0x5fc10d
        );
        assert_eq!(
            certificate_object_id(SlotId::Retired(RetiredSlotId::R20)),
            0x5fc120
        );
    }

    #[test]
    fn chuid_template_has_a_guid_field() {
        assert_eq!(CHUID_TEMPLATE[CHUID_GUID_OFFSET - 2], 0x34);
        assert_eq!(CHUID_TEMPLATE[CHUID_GUID_OFFSET - 1], 0x10);
    }
}
