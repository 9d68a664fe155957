//! Yubico's Management application (AID A000000527471117): READ CONFIG, so `ykman info`
//! shows the serial, firmware, form factor and capabilities.

use super::apdu::{CommandApdu, StatusWord};
use super::card::VirtualCard;
use super::tlv;

/// Capabilities a YubiKey 5 supports over USB: OTP, U2F, OpenPGP, PIV, OATH, FIDO2.
const USB_SUPPORTED: u16 = 0x0001 | 0x0002 | 0x0008 | 0x0010 | 0x0020 | 0x0200;
/// What this card enables: PIV only, the one application it emulates.
const USB_ENABLED: u16 = 0x0010;

impl VirtualCard {
    pub(super) fn management_command(&mut self, apdu: &CommandApdu) -> Result<Vec<u8>, StatusWord> {
        match apdu.ins {
            0x1D => self.read_config(apdu),
            _ => Err(StatusWord::INS_NOT_SUPPORTED),
        }
    }

    fn read_config(&self, apdu: &CommandApdu) -> Result<Vec<u8>, StatusWord> {
        if apdu.p2 != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let f = &self.state.facts;
        let mut body = Vec::new();
        if apdu.p1 == 0 {
            let form_factor = f.form_factor | if f.fips { 0x80 } else { 0 };
            body.extend(tlv::encode(0x01, &USB_SUPPORTED.to_be_bytes()));
            body.extend(tlv::encode(0x02, &f.serial.to_be_bytes()));
            body.extend(tlv::encode(0x03, &USB_ENABLED.to_be_bytes()));
            body.extend(tlv::encode(0x04, &[form_factor]));
            body.extend(tlv::encode(0x05, &f.firmware));
            body.extend(tlv::encode(0x06, &[0, 0]));
            body.extend(tlv::encode(0x07, &[0x0F]));
            body.extend(tlv::encode(0x08, &[0x00]));
            body.extend(tlv::encode(0x0A, &[0x00]));
        }
        let mut out = vec![body.len() as u8];
        out.extend(body);
        Ok(out)
    }
}
