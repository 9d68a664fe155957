//! PIV instructions (NIST SP 800-73-4) and Yubico's extensions, as a YubiKey 5 answers them.

use rand::RngExt;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::apdu::{CommandApdu, StatusWord};
use super::attestation;
use super::card::{PendingAuth, VirtualCard};
use super::keys::{KeyAlgorithm, KeyError, SlotPrivateKey};
use super::mgmkey::{ManagementAlgorithm, ManagementKey};
use super::state::{
    self, ATTESTATION_OBJECT, KeyOrigin, PIN_POLICY_ALWAYS, PIN_POLICY_NEVER, PIN_POLICY_ONCE,
    SlotKey, TOUCH_POLICY_ALWAYS, TOUCH_POLICY_CACHED, TOUCH_POLICY_NEVER,
};
use super::tlv;

type PivResult = Result<Vec<u8>, StatusWord>;

pub const SLOT_MANAGEMENT: u8 = 0x9B;
pub const SLOT_ATTESTATION: u8 = 0xF9;
const P2_PIN: u8 = 0x80;
const P2_PUK: u8 = 0x81;

/// Largest content of one data object (the 53 template), as on a YubiKey 5.
pub const MAX_OBJECT_SIZE: usize = 3063;
/// Room for all data objects together.
pub const MAX_TOTAL_OBJECT_SIZE: usize = 51_200;

/// Discovery object (7E): PIV AID, PIN usage policy "PIV PIN only".
const DISCOVERY: [u8; 20] = [
    0x7E, 0x12, 0x4F, 0x0B, 0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00, 0x5F,
    0x2F, 0x02, 0x40, 0x00,
];

/// Slots that hold asymmetric keys: 9A, 9C, 9D, 9E and the retired 82–95.
pub fn is_key_slot(slot: u8) -> bool {
    matches!(slot, 0x9A | 0x9C | 0x9D | 0x9E | 0x82..=0x95)
}

/// The data object holding a key slot's certificate.
pub fn certificate_object_for(slot: u8) -> Option<u32> {
    Some(match slot {
        0x9A => 0x5F_C105,
        0x9C => 0x5F_C10A,
        0x9D => 0x5F_C10B,
        0x9E => 0x5F_C101,
        0x82..=0x95 => 0x5F_C10D + u32::from(slot - 0x82),
        SLOT_ATTESTATION => ATTESTATION_OBJECT,
        _ => return None,
    })
}

fn default_pin_policy(slot: u8) -> u8 {
    match slot {
        0x9C => PIN_POLICY_ALWAYS,
        0x9E => PIN_POLICY_NEVER,
        _ => PIN_POLICY_ONCE,
    }
}

/// Objects that need the PIN before GET DATA: printed information and biometrics.
fn object_needs_pin(tag: u32) -> bool {
    matches!(tag, 0x5F_C109 | 0x5F_C103 | 0x5F_C108 | 0x5F_C121)
}

fn parse_template(data: &[u8]) -> Result<Vec<tlv::Tlv<'_>>, StatusWord> {
    tlv::parse_all(data).map_err(|_| StatusWord::INCORRECT_DATA)
}

impl From<KeyError> for StatusWord {
    fn from(_: KeyError) -> Self {
        StatusWord::INCORRECT_DATA
    }
}

impl VirtualCard {
    pub(super) fn piv_command(&mut self, apdu: &CommandApdu) -> PivResult {
        match apdu.ins {
            0xCB => self.get_data(apdu),
            0xDB => self.put_data(apdu),
            0x20 => self.verify(apdu),
            0x24 => self.change_reference(apdu),
            0x2C => self.reset_retry_counter(apdu),
            0x87 => self.general_authenticate(apdu),
            0x47 => self.generate(apdu),
            0xF7 => self.get_metadata(apdu),
            0xF8 => self
                .expect_p1p2(apdu, 0, 0)
                .map(|_| self.state.facts.serial.to_be_bytes().to_vec()),
            0xF9 => self.attest(apdu),
            0xFA => self.set_pin_retries(apdu),
            0xFB => self.reset(apdu),
            0xFD => self
                .expect_p1p2(apdu, 0, 0)
                .map(|_| self.state.facts.firmware.to_vec()),
            0xFE => self.import_key(apdu),
            0xFF => self.set_management_key(apdu),
            0xF6 if self.state.facts.firmware >= [5, 7, 0] => self.move_key(apdu),
            _ => Err(StatusWord::INS_NOT_SUPPORTED),
        }
    }

    fn expect_p1p2(&self, apdu: &CommandApdu, p1: u8, p2: u8) -> Result<(), StatusWord> {
        if (apdu.p1, apdu.p2) == (p1, p2) {
            Ok(())
        } else {
            Err(StatusWord::INCORRECT_P1P2)
        }
    }

    fn require_management(&self) -> Result<(), StatusWord> {
        if self.session.management_authenticated {
            Ok(())
        } else {
            Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED)
        }
    }

    fn object_tag(data: &[u8]) -> Result<(u32, &[u8]), StatusWord> {
        let (t, rest) = tlv::parse_one(data).map_err(|_| StatusWord::INCORRECT_DATA)?;
        if t.tag != 0x5C || t.value.is_empty() || t.value.len() > 3 {
            return Err(StatusWord::INCORRECT_DATA);
        }
        Ok((
            t.value
                .iter()
                .fold(0u32, |acc, b| (acc << 8) | u32::from(*b)),
            rest,
        ))
    }

    fn get_data(&mut self, apdu: &CommandApdu) -> PivResult {
        self.expect_p1p2(apdu, 0x3F, 0xFF)?;
        let (tag, rest) = Self::object_tag(&apdu.data)?;
        if !rest.is_empty() {
            return Err(StatusWord::INCORRECT_DATA);
        }
        if tag == 0x7E {
            return Ok(DISCOVERY.to_vec());
        }
        if object_needs_pin(tag) && !self.session.pin_verified {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        let content = self
            .state
            .objects
            .get(&tag)
            .ok_or(StatusWord::FILE_NOT_FOUND)?;
        Ok(tlv::encode(0x53, content))
    }

    fn put_data(&mut self, apdu: &CommandApdu) -> PivResult {
        self.expect_p1p2(apdu, 0x3F, 0xFF)?;
        self.require_management()?;
        if apdu.data.first() == Some(&0x7E) {
            // the discovery object is fixed on this card
            return Err(StatusWord::FUNCTION_NOT_SUPPORTED);
        }
        let (tag, rest) = Self::object_tag(&apdu.data)?;
        if !(0x5F_C101..=0x5F_C123).contains(&tag) && !(0x5F_FF00..=0x5F_FF15).contains(&tag) {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let (content, tail) = tlv::parse_one(rest).map_err(|_| StatusWord::INCORRECT_DATA)?;
        if content.tag != 0x53 || !tail.is_empty() {
            return Err(StatusWord::INCORRECT_DATA);
        }
        if content.value.is_empty() {
            self.state.objects.remove(&tag);
        } else {
            let others: usize = self
                .state
                .objects
                .iter()
                .filter(|(t, _)| **t != tag)
                .map(|(_, v)| v.len())
                .sum();
            if content.value.len() > MAX_OBJECT_SIZE
                || others + content.value.len() > MAX_TOTAL_OBJECT_SIZE
            {
                return Err(StatusWord::NOT_ENOUGH_MEMORY);
            }
            self.state.objects.insert(tag, content.value.to_vec());
        }
        self.dirty = true;
        Ok(Vec::new())
    }

    fn verify(&mut self, apdu: &CommandApdu) -> PivResult {
        if apdu.p2 != P2_PIN {
            return Err(StatusWord::REFERENCE_NOT_FOUND);
        }
        match apdu.p1 {
            0xFF if apdu.data.is_empty() => {
                self.session.pin_verified = false;
                self.session.pin_fresh = false;
                return Ok(Vec::new());
            }
            0x00 => {}
            _ => return Err(StatusWord::INCORRECT_P1P2),
        }
        if apdu.data.is_empty() {
            return if self.state.pin.blocked() {
                Err(StatusWord::AUTH_METHOD_BLOCKED)
            } else if self.session.pin_verified {
                Ok(Vec::new())
            } else {
                Err(StatusWord::verify_failed(self.state.pin.retries_left))
            };
        }
        if apdu.data.len() != 8 {
            return Err(StatusWord::INCORRECT_DATA);
        }
        if self.state.pin.blocked() {
            return Err(StatusWord::AUTH_METHOD_BLOCKED);
        }
        if self.state.pin.matches_padded(&apdu.data) {
            if self.state.pin.retries_left != self.state.pin.retries_total {
                self.state.pin.retries_left = self.state.pin.retries_total;
                self.dirty = true;
            }
            self.session.pin_verified = true;
            self.session.pin_fresh = true;
            Ok(Vec::new())
        } else {
            self.session.pin_verified = false;
            self.session.pin_fresh = false;
            self.state.pin.retries_left -= 1;
            self.dirty = true;
            Err(StatusWord::verify_failed(self.state.pin.retries_left))
        }
    }

    /// Checks an 8-byte new PIN/PUK block: 6 to 8 characters before the FF padding, nothing
    /// after it.
    fn new_reference_value(block: &[u8]) -> Result<Zeroizing<Vec<u8>>, StatusWord> {
        let value = state::unpad8(block);
        if value.len() < 6 || block[value.len()..].iter().any(|b| *b != 0xFF) {
            return Err(StatusWord::INCORRECT_DATA);
        }
        Ok(Zeroizing::new(value.to_vec()))
    }

    fn change_reference(&mut self, apdu: &CommandApdu) -> PivResult {
        if apdu.p1 != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let is_pin = match apdu.p2 {
            P2_PIN => true,
            P2_PUK => false,
            _ => return Err(StatusWord::REFERENCE_NOT_FOUND),
        };
        if apdu.data.len() != 16 {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let (old, new) = apdu.data.split_at(8);
        let reference = if is_pin {
            &mut self.state.pin
        } else {
            &mut self.state.puk
        };
        if reference.blocked() {
            return Err(StatusWord::AUTH_METHOD_BLOCKED);
        }
        if !reference.matches_padded(old) {
            reference.retries_left -= 1;
            let left = reference.retries_left;
            if is_pin {
                self.session.pin_verified = false;
            }
            self.dirty = true;
            return Err(StatusWord::verify_failed(left));
        }
        let new = Self::new_reference_value(new)?;
        reference.set(&new);
        reference.retries_left = reference.retries_total;
        self.dirty = true;
        Ok(Vec::new())
    }

    fn reset_retry_counter(&mut self, apdu: &CommandApdu) -> PivResult {
        if apdu.p1 != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        if apdu.p2 != P2_PIN {
            return Err(StatusWord::REFERENCE_NOT_FOUND);
        }
        if apdu.data.len() != 16 {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let (puk, new) = apdu.data.split_at(8);
        if self.state.puk.blocked() {
            return Err(StatusWord::AUTH_METHOD_BLOCKED);
        }
        if !self.state.puk.matches_padded(puk) {
            self.state.puk.retries_left -= 1;
            self.dirty = true;
            return Err(StatusWord::verify_failed(self.state.puk.retries_left));
        }
        let new = Self::new_reference_value(new)?;
        self.state.pin.set(&new);
        self.state.pin.retries_left = self.state.pin.retries_total;
        self.state.puk.retries_left = self.state.puk.retries_total;
        self.dirty = true;
        Ok(Vec::new())
    }

    fn set_pin_retries(&mut self, apdu: &CommandApdu) -> PivResult {
        self.require_management()?;
        if !self.session.pin_verified {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        if apdu.p1 == 0 || apdu.p2 == 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        self.state.pin = state::ReferenceData::factory(state::DEFAULT_PIN, apdu.p1);
        self.state.puk = state::ReferenceData::factory(state::DEFAULT_PUK, apdu.p2);
        self.session.pin_verified = false;
        self.dirty = true;
        Ok(Vec::new())
    }

    fn reset(&mut self, apdu: &CommandApdu) -> PivResult {
        self.expect_p1p2(apdu, 0, 0)?;
        if !(self.state.pin.blocked() && self.state.puk.blocked()) {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        self.state.reset_piv();
        self.power_cycle();
        self.dirty = true;
        tracing::info!("PIV application reset");
        Ok(Vec::new())
    }

    fn get_metadata(&mut self, apdu: &CommandApdu) -> PivResult {
        if self.state.facts.firmware < [5, 3, 0] {
            return Err(StatusWord::INS_NOT_SUPPORTED);
        }
        if apdu.p1 != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let mut out = Vec::new();
        let reference = |r: &state::ReferenceData, out: &mut Vec<u8>| {
            out.extend(tlv::encode(0x01, &[0xFF]));
            out.extend(tlv::encode(0x05, &[u8::from(r.is_default())]));
            out.extend(tlv::encode(0x06, &[r.retries_total, r.retries_left]));
        };
        match apdu.p2 {
            P2_PIN => reference(&self.state.pin, &mut out),
            P2_PUK => reference(&self.state.puk, &mut out),
            SLOT_MANAGEMENT => {
                let touch = if self.state.management_touch {
                    TOUCH_POLICY_ALWAYS
                } else {
                    TOUCH_POLICY_NEVER
                };
                out.extend(tlv::encode(
                    0x01,
                    &[self.state.management_key.algorithm.byte()],
                ));
                out.extend(tlv::encode(0x02, &[0x00, touch]));
                out.extend(tlv::encode(
                    0x05,
                    &[u8::from(self.state.management_key.is_default_value())],
                ));
            }
            SLOT_ATTESTATION => {
                let key = SlotPrivateKey::Rsa(Box::new(self.state.attestation_key.clone()));
                out.extend(tlv::encode(0x01, &[KeyAlgorithm::Rsa2048.byte()]));
                out.extend(tlv::encode(0x02, &[PIN_POLICY_NEVER, TOUCH_POLICY_NEVER]));
                out.extend(tlv::encode(0x03, &[KeyOrigin::Imported.byte()]));
                out.extend(tlv::encode(0x04, &key.public_key_tlvs()));
            }
            slot if is_key_slot(slot) => {
                let k = self
                    .state
                    .slots
                    .get(&slot)
                    .ok_or(StatusWord::REFERENCE_NOT_FOUND)?;
                out.extend(tlv::encode(0x01, &[k.key.algorithm().byte()]));
                out.extend(tlv::encode(0x02, &[k.pin_policy, k.touch_policy]));
                out.extend(tlv::encode(0x03, &[k.origin.byte()]));
                out.extend(tlv::encode(0x04, &k.key.public_key_tlvs()));
            }
            _ => return Err(StatusWord::REFERENCE_NOT_FOUND),
        }
        Ok(out)
    }

    /// Reads the AA / AB policy tags; 0 means the slot's default.
    fn policies(slot: u8, tlvs: &[tlv::Tlv<'_>]) -> Result<(u8, u8), StatusWord> {
        let one = |tag: u16| -> Result<Option<u8>, StatusWord> {
            match tlv::find(tlvs, tag) {
                None => Ok(None),
                Some([b]) => Ok(Some(*b)),
                Some(_) => Err(StatusWord::INCORRECT_DATA),
            }
        };
        let pin = match one(0xAA)?.unwrap_or(0) {
            0 => default_pin_policy(slot),
            p @ (PIN_POLICY_NEVER | PIN_POLICY_ONCE | PIN_POLICY_ALWAYS) => p,
            _ => return Err(StatusWord::INCORRECT_DATA),
        };
        let touch = match one(0xAB)?.unwrap_or(0) {
            0 => TOUCH_POLICY_NEVER,
            t @ (TOUCH_POLICY_NEVER | TOUCH_POLICY_ALWAYS | TOUCH_POLICY_CACHED) => t,
            _ => return Err(StatusWord::INCORRECT_DATA),
        };
        Ok((pin, touch))
    }

    fn generate(&mut self, apdu: &CommandApdu) -> PivResult {
        if apdu.p1 != 0 || !is_key_slot(apdu.p2) {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        self.require_management()?;
        let outer = parse_template(&apdu.data)?;
        let template = tlv::find(&outer, 0xAC).ok_or(StatusWord::INCORRECT_DATA)?;
        let inner = parse_template(template)?;
        let algorithm = match tlv::find(&inner, 0x80) {
            Some([b]) => KeyAlgorithm::from_byte(*b)
                .filter(|a| a.supported_by(self.state.facts.firmware))
                .ok_or(StatusWord::INCORRECT_DATA)?,
            _ => return Err(StatusWord::INCORRECT_DATA),
        };
        let (pin_policy, touch_policy) = Self::policies(apdu.p2, &inner)?;
        tracing::info!(
            slot = format_args!("{:02x}", apdu.p2),
            ?algorithm,
            "generating key"
        );
        let key =
            SlotPrivateKey::generate(algorithm).map_err(|_| StatusWord::NO_PRECISE_DIAGNOSIS)?;
        let response = tlv::encode(0x7F49, &key.public_key_tlvs());
        self.state.slots.insert(
            apdu.p2,
            SlotKey {
                key,
                pin_policy,
                touch_policy,
                origin: KeyOrigin::Generated,
            },
        );
        self.dirty = true;
        Ok(response)
    }

    fn import_key(&mut self, apdu: &CommandApdu) -> PivResult {
        if !is_key_slot(apdu.p2) && apdu.p2 != SLOT_ATTESTATION {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let algorithm = KeyAlgorithm::from_byte(apdu.p1)
            .filter(|a| a.supported_by(self.state.facts.firmware))
            .ok_or(StatusWord::INCORRECT_P1P2)?;
        self.require_management()?;
        let tlvs = parse_template(&apdu.data)?;
        let (pin_policy, touch_policy) = Self::policies(apdu.p2, &tlvs)?;
        let key = SlotPrivateKey::import(algorithm, &tlvs)?;
        if apdu.p2 == SLOT_ATTESTATION {
            match key {
                SlotPrivateKey::Rsa(k) if algorithm == KeyAlgorithm::Rsa2048 => {
                    self.state.attestation_key = *k;
                }
                _ => return Err(StatusWord::INCORRECT_DATA),
            }
        } else {
            self.state.slots.insert(
                apdu.p2,
                SlotKey {
                    key,
                    pin_policy,
                    touch_policy,
                    origin: KeyOrigin::Imported,
                },
            );
        }
        self.dirty = true;
        Ok(Vec::new())
    }

    /// MOVE KEY (5.7): P1 destination slot (FF: delete), P2 source slot.
    fn move_key(&mut self, apdu: &CommandApdu) -> PivResult {
        if !is_key_slot(apdu.p2) || !(apdu.p1 == 0xFF || is_key_slot(apdu.p1)) || apdu.p1 == apdu.p2
        {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        self.require_management()?;
        let key = self
            .state
            .slots
            .remove(&apdu.p2)
            .ok_or(StatusWord::REFERENCE_NOT_FOUND)?;
        if apdu.p1 != 0xFF {
            self.state.slots.insert(apdu.p1, key);
        }
        self.dirty = true;
        Ok(Vec::new())
    }

    fn set_management_key(&mut self, apdu: &CommandApdu) -> PivResult {
        let touch = match (apdu.p1, apdu.p2) {
            (0xFF, 0xFF) => false,
            (0xFF, 0xFE) => true,
            _ => return Err(StatusWord::INCORRECT_P1P2),
        };
        self.require_management()?;
        let [alg, rest @ ..] = apdu.data.as_slice() else {
            return Err(StatusWord::INCORRECT_DATA);
        };
        let algorithm = ManagementAlgorithm::from_byte(*alg).ok_or(StatusWord::INCORRECT_DATA)?;
        if algorithm != ManagementAlgorithm::TripleDes && self.state.facts.firmware < [5, 4, 0] {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let (t, tail) = tlv::parse_one(rest).map_err(|_| StatusWord::INCORRECT_DATA)?;
        if t.tag != u16::from(SLOT_MANAGEMENT) || !tail.is_empty() {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let key = ManagementKey::new(algorithm, t.value).ok_or(StatusWord::INCORRECT_DATA)?;
        self.state.management_key = key;
        self.state.management_touch = touch;
        self.dirty = true;
        Ok(Vec::new())
    }

    fn attest(&mut self, apdu: &CommandApdu) -> PivResult {
        if apdu.p2 != 0 || !is_key_slot(apdu.p1) {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let slot = self
            .state
            .slots
            .get(&apdu.p1)
            .ok_or(StatusWord::REFERENCE_NOT_FOUND)?;
        if slot.origin == KeyOrigin::Imported {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let device_cert = self
            .state
            .device_certificate()
            .ok_or(StatusWord::REFERENCE_NOT_FOUND)?;
        attestation::attest_slot(
            &self.state.attestation_key,
            &device_cert,
            apdu.p1,
            &slot.key,
            slot.pin_policy,
            slot.touch_policy,
            &self.state.facts,
        )
        .map_err(|e| {
            tracing::error!(error = %e, "attestation failed");
            StatusWord::NO_PRECISE_DIAGNOSIS
        })
    }

    fn general_authenticate(&mut self, apdu: &CommandApdu) -> PivResult {
        let outer = parse_template(&apdu.data)?;
        let [dyn_auth] = outer.as_slice() else {
            return Err(StatusWord::INCORRECT_DATA);
        };
        if dyn_auth.tag != 0x7C {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let inner = parse_template(dyn_auth.value)?;
        if apdu.p2 == SLOT_MANAGEMENT {
            self.management_authenticate(apdu.p1, &inner)
        } else if is_key_slot(apdu.p2) {
            self.private_key_operation(apdu.p1, apdu.p2, &inner)
        } else {
            Err(StatusWord::INCORRECT_P1P2)
        }
    }

    fn management_authenticate(&mut self, p1: u8, inner: &[tlv::Tlv<'_>]) -> PivResult {
        let key = self.state.management_key.clone();
        if p1 != key.algorithm.byte() {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let block = key.algorithm.block_len();
        let tags: Vec<(u16, usize)> = inner.iter().map(|t| (t.tag, t.value.len())).collect();
        let random_block = || {
            let mut b = Zeroizing::new(vec![0u8; block]);
            rand::rng().fill(&mut b[..]);
            b
        };
        let wrap = |tag: u16, v: &[u8]| tlv::encode(0x7C, &tlv::encode(tag, v));
        match tags.as_slice() {
            // step 1 of mutual authentication: the card sends an encrypted witness
            [(0x80, 0)] => {
                self.session.management_authenticated = false;
                if self.state.management_touch {
                    self.touch(false)?;
                }
                let witness = random_block();
                let encrypted = key
                    .encrypt_block(&witness)
                    .ok_or(StatusWord::NO_PRECISE_DIAGNOSIS)?;
                self.session.pending_auth = Some(PendingAuth::Witness(witness));
                Ok(wrap(0x80, &encrypted))
            }
            // step 2: the host returns the decrypted witness and sends its own challenge
            [(0x80, w), (0x81, c)] if *w == block && *c == block => {
                let Some(PendingAuth::Witness(expected)) = self.session.pending_auth.take() else {
                    return Err(StatusWord::INCORRECT_DATA);
                };
                if !bool::from(expected.as_slice().ct_eq(inner[0].value)) {
                    return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
                }
                let response = key
                    .encrypt_block(inner[1].value)
                    .ok_or(StatusWord::NO_PRECISE_DIAGNOSIS)?;
                self.session.management_authenticated = true;
                Ok(wrap(0x82, &response))
            }
            // external authentication: the card sends a challenge in clear ...
            [(0x81, 0)] => {
                self.session.management_authenticated = false;
                if self.state.management_touch {
                    self.touch(false)?;
                }
                let challenge = random_block();
                let out = wrap(0x81, &challenge);
                self.session.pending_auth = Some(PendingAuth::Challenge(challenge));
                Ok(out)
            }
            // ... and checks its encryption
            [(0x82, r)] if *r == block => {
                let Some(PendingAuth::Challenge(challenge)) = self.session.pending_auth.take()
                else {
                    return Err(StatusWord::INCORRECT_DATA);
                };
                let expected = key
                    .encrypt_block(&challenge)
                    .ok_or(StatusWord::NO_PRECISE_DIAGNOSIS)?;
                if !bool::from(expected.as_slice().ct_eq(inner[0].value)) {
                    return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
                }
                self.session.management_authenticated = true;
                Ok(Vec::new())
            }
            _ => {
                self.session.pending_auth = None;
                Err(StatusWord::INCORRECT_DATA)
            }
        }
    }

    fn private_key_operation(&mut self, p1: u8, slot: u8, inner: &[tlv::Tlv<'_>]) -> PivResult {
        let (algorithm, pin_policy, touch_policy) = {
            let k = self
                .state
                .slots
                .get(&slot)
                .ok_or(StatusWord::INCORRECT_DATA)?;
            (k.key.algorithm(), k.pin_policy, k.touch_policy)
        };
        if p1 != algorithm.byte() {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let response_requested =
            matches!(inner.first(), Some(t) if t.tag == 0x82 && t.value.is_empty());
        let (op_tag, input) = match inner {
            [_, t] if response_requested && matches!(t.tag, 0x81 | 0x85) => (t.tag, t.value),
            _ => return Err(StatusWord::INCORRECT_DATA),
        };
        match pin_policy {
            PIN_POLICY_ONCE if !self.session.pin_verified => {
                return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
            }
            PIN_POLICY_ALWAYS if !self.session.pin_fresh => {
                return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
            }
            _ => {}
        }
        match touch_policy {
            TOUCH_POLICY_ALWAYS => self.touch(false)?,
            TOUCH_POLICY_CACHED => self.touch(true)?,
            _ => {}
        }
        if pin_policy == PIN_POLICY_ALWAYS {
            self.session.pin_fresh = false;
        }
        let key = &self
            .state
            .slots
            .get(&slot)
            .ok_or(StatusWord::INCORRECT_DATA)?
            .key;
        let output = if op_tag == 0x81 {
            key.sign(input)?
        } else {
            key.ecdh(input)?
        };
        Ok(tlv::encode(0x7C, &tlv::encode(0x82, &output)))
    }
}
