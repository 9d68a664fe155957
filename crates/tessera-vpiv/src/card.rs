//! The card as pcscd's vpcd driver sees it: power and ATR control, ISO 7816 framing (command
//! chaining, GET RESPONSE), application selection, injected faults, and persistence of the
//! state after each change. Instructions themselves live in `piv` and `management_app`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use super::apdu::{CommandApdu, ResponseApdu, StatusWord};
use super::state::CardState;

/// ATR of a YubiKey 5 NFC over USB: ykman needs F in the high nibble of the second byte.
pub const YUBIKEY5_ATR: [u8; 23] = [
    0x3B, 0xFD, 0x13, 0x00, 0x00, 0x81, 0x31, 0xFE, 0x15, 0x80, 0x73, 0xC0, 0x21, 0xC0, 0x57, 0x59,
    0x75, 0x62, 0x69, 0x4B, 0x65, 0x79, 0x40,
];

pub const PIV_AID: [u8; 11] = [
    0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];
pub const MANAGEMENT_AID: [u8; 8] = [0xA0, 0x00, 0x00, 0x05, 0x27, 0x47, 0x11, 0x17];

/// Largest command a chain may build (bigger than any PIV object or key import).
const MAX_CHAINED_COMMAND: usize = 16 * 1024;
/// Largest response data in one frame: a vpcd frame length is 16 bits and carries the SW too.
const MAX_EXTENDED_RESPONSE: usize = 0xFFFF - 2;
/// How long a "cached" touch lasts.
pub const TOUCH_CACHE_SECONDS: u64 = 15;

/// Faults to inject on demand (tests of the token code's error paths).
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    /// Drop the connection (card pulled) when APDU number N+1 arrives.
    pub disconnect_after: Option<u64>,
    /// Drop the connection when an APDU with this INS arrives…
    pub disconnect_at_ins: Option<u8>,
    /// …for the Nth time (1 = the first; 0 is taken as 1), e.g. the second GENERAL
    /// AUTHENTICATE of an enrollment is the first signature after the management-key one.
    pub disconnect_at_ins_occurrence: u32,
    /// Answer these instructions with this status word instead of running them.
    pub status_by_ins: BTreeMap<u8, u16>,
    /// Touch never arrives: operations needing touch fail as on a timeout (6982).
    pub refuse_touch: bool,
}

/// What the transport should do with an APDU's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CardReply {
    Response(Vec<u8>),
    /// A fault fired: close the connection as if the card were pulled.
    Disconnect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Applet {
    Piv,
    Management,
}

/// What GENERAL AUTHENTICATE with the management key left pending between its two steps.
pub(super) enum PendingAuth {
    /// The card sent Enc(witness) and waits for the witness back.
    Witness(zeroize::Zeroizing<Vec<u8>>),
    /// The card sent a challenge and waits for its encryption.
    Challenge(zeroize::Zeroizing<Vec<u8>>),
}

struct Chain {
    ins: u8,
    p1: u8,
    p2: u8,
    data: Vec<u8>,
}

/// Security state and buffers that live only while the card is powered.
#[derive(Default)]
pub(super) struct Session {
    pub selected: Option<Applet>,
    pub pin_verified: bool,
    /// Set by a successful VERIFY, consumed by the next PIN-policy "always" key operation.
    pub pin_fresh: bool,
    pub management_authenticated: bool,
    pub pending_auth: Option<PendingAuth>,
    chain: Option<Chain>,
    pending_response: Vec<u8>,
}

/// A command APDU for the log: header and length always, data only for instructions that
/// carry no PIN, PUK or key (VERIFY, CHANGE REFERENCE, RESET RETRY, IMPORT KEY and SET
/// MANAGEMENT KEY data show as [redacted]).
pub fn loggable_command(raw: &[u8]) -> String {
    let secret = matches!(raw.get(1), Some(0x20 | 0x24 | 0x2C | 0xFE | 0xFF));
    if secret && raw.len() > 5 {
        format!(
            "{} [redacted {} bytes]",
            hex::encode_upper(&raw[..5]),
            raw.len() - 5
        )
    } else {
        hex::encode_upper(raw)
    }
}

/// The virtual card.
pub struct VirtualCard {
    pub(super) state: CardState,
    state_path: Option<PathBuf>,
    pub(super) faults: FaultPlan,
    pub(super) session: Session,
    apdu_count: u64,
    /// APDUs seen so far with the fault's disconnect instruction.
    disconnect_ins_seen: u32,
    pub(super) last_touch: Option<Instant>,
    /// Set by handlers that changed `state`; the card then saves it.
    pub(super) dirty: bool,
}

impl VirtualCard {
    pub fn new(state: CardState, state_path: Option<PathBuf>, faults: FaultPlan) -> Self {
        Self {
            state,
            state_path,
            faults,
            session: Session {
                selected: Some(Applet::Piv),
                ..Session::default()
            },
            apdu_count: 0,
            disconnect_ins_seen: 0,
            last_touch: None,
            dirty: false,
        }
    }

    /// Marks the management key as authenticated, as if GENERAL AUTHENTICATE had succeeded.
    /// For the fuzz target, which cannot answer the card's challenge.
    #[doc(hidden)]
    pub fn assume_management_authenticated(&mut self) {
        self.session.management_authenticated = true;
    }

    pub fn state(&self) -> &CardState {
        &self.state
    }

    pub fn atr(&self) -> &'static [u8] {
        &YUBIKEY5_ATR
    }

    /// Power off / on / reset: the security state and buffers go; the PIV applet is selected.
    pub fn power_cycle(&mut self) {
        self.session = Session {
            selected: Some(Applet::Piv),
            ..Session::default()
        };
    }

    /// Handles one command APDU (raw bytes) and returns the response bytes (data + SW) or
    /// the order to disconnect. Never panics, whatever the bytes.
    pub fn process(&mut self, raw: &[u8]) -> CardReply {
        self.apdu_count += 1;
        if self
            .faults
            .disconnect_after
            .is_some_and(|n| self.apdu_count > n)
        {
            tracing::warn!(
                count = self.apdu_count,
                "fault: card pulled after the configured APDU count"
            );
            return CardReply::Disconnect;
        }
        if let Some(&ins) = raw.get(1) {
            if self.faults.disconnect_at_ins == Some(ins) && {
                self.disconnect_ins_seen += 1;
                self.disconnect_ins_seen >= self.faults.disconnect_at_ins_occurrence.max(1)
            } {
                tracing::warn!(
                    ins = format_args!("{ins:02X}"),
                    "fault: card pulled at instruction"
                );
                return CardReply::Disconnect;
            }
            if let Some(&sw) = self.faults.status_by_ins.get(&ins) {
                tracing::warn!(
                    ins = format_args!("{ins:02X}"),
                    sw = format_args!("{sw:04X}"),
                    "fault: forced status"
                );
                return CardReply::Response(sw.to_be_bytes().to_vec());
            }
        }
        let response = self.process_apdu(raw);
        tracing::debug!(
            command = %loggable_command(raw),
            sw = %response.sw,
            response_len = response.data.len(),
            "apdu"
        );
        tracing::trace!(response = %hex::encode_upper(&response.data), "apdu response data");
        CardReply::Response(response.to_bytes())
    }

    fn process_apdu(&mut self, raw: &[u8]) -> ResponseApdu {
        let apdu = match CommandApdu::parse(raw) {
            Ok(a) => a,
            Err(sw) => return sw.into(),
        };
        if apdu.cla & !0x10 != 0 {
            return StatusWord::CLA_NOT_SUPPORTED.into();
        }
        if apdu.ins == 0xC0 {
            return self.get_response(&apdu);
        }
        self.session.pending_response.clear();

        let Some(apdu) = (match self.assemble_chain(apdu) {
            Ok(a) => a,
            Err(sw) => return sw.into(),
        }) else {
            return StatusWord::SUCCESS.into();
        };

        let result = if apdu.ins == 0xA4 {
            self.select(&apdu)
        } else {
            match self.session.selected {
                Some(Applet::Piv) => self.piv_command(&apdu),
                Some(Applet::Management) => self.management_command(&apdu),
                None => Err(StatusWord::INS_NOT_SUPPORTED),
            }
        };
        if self.dirty {
            self.dirty = false;
            if let Some(path) = &self.state_path
                && let Err(e) = self.state.save(path)
            {
                tracing::error!(error = %e, "state not saved");
                return StatusWord(0x6581).into();
            }
        }
        match result {
            Ok(data) => self.limit_response(data, &apdu),
            Err(sw) => sw.into(),
        }
    }

    /// Collects a chained command. `Ok(None)`: more is expected (answer 9000).
    fn assemble_chain(&mut self, apdu: CommandApdu) -> Result<Option<CommandApdu>, StatusWord> {
        let continues = self
            .session
            .chain
            .as_ref()
            .map(|c| (c.ins, c.p1, c.p2) == (apdu.ins, apdu.p1, apdu.p2));
        if continues == Some(false) {
            self.session.chain = None;
            if apdu.ins != 0xA4 {
                return Err(StatusWord::LAST_COMMAND_OF_CHAIN_EXPECTED);
            }
        }
        if apdu.is_chained() {
            let chain = self.session.chain.get_or_insert_with(|| Chain {
                ins: apdu.ins,
                p1: apdu.p1,
                p2: apdu.p2,
                data: Vec::new(),
            });
            if chain.data.len() + apdu.data.len() > MAX_CHAINED_COMMAND {
                self.session.chain = None;
                return Err(StatusWord::NOT_ENOUGH_MEMORY);
            }
            chain.data.extend_from_slice(&apdu.data);
            return Ok(None);
        }
        match self.session.chain.take() {
            Some(mut chain) => {
                if chain.data.len() + apdu.data.len() > MAX_CHAINED_COMMAND {
                    return Err(StatusWord::NOT_ENOUGH_MEMORY);
                }
                chain.data.extend_from_slice(&apdu.data);
                Ok(Some(CommandApdu {
                    data: chain.data,
                    ..apdu
                }))
            }
            None => Ok(Some(apdu)),
        }
    }

    /// Sends at most what the command allows; the rest waits for GET RESPONSE (61xx).
    fn limit_response(&mut self, mut data: Vec<u8>, apdu: &CommandApdu) -> ResponseApdu {
        let limit = match (apdu.extended, apdu.ne) {
            (true, 0) => MAX_EXTENDED_RESPONSE,
            (true, n) => n.min(MAX_EXTENDED_RESPONSE),
            (false, 0) => 256,
            (false, n) => n,
        };
        if data.len() <= limit {
            return ResponseApdu::ok(data);
        }
        let rest = data.split_off(limit);
        let announced = if rest.len() >= 256 {
            0
        } else {
            rest.len() as u16
        };
        let sw = StatusWord(0x6100 | announced);
        self.session.pending_response = rest;
        ResponseApdu { data, sw }
    }

    fn get_response(&mut self, apdu: &CommandApdu) -> ResponseApdu {
        if apdu.p1 != 0 || apdu.p2 != 0 {
            return StatusWord::INCORRECT_P1P2.into();
        }
        if self.session.pending_response.is_empty() {
            return StatusWord::CONDITIONS_NOT_SATISFIED.into();
        }
        let pending = std::mem::take(&mut self.session.pending_response);
        let fake = CommandApdu {
            ne: apdu.ne,
            extended: apdu.extended,
            ..apdu.clone()
        };
        self.limit_response(pending, &fake)
    }

    fn select(&mut self, apdu: &CommandApdu) -> Result<Vec<u8>, StatusWord> {
        if apdu.p1 != 0x04 {
            return Err(StatusWord::FILE_NOT_FOUND);
        }
        let aid = apdu.data.as_slice();
        let is_prefix_of = |full: &[u8]| aid.len() >= 5 && full.starts_with(aid);
        // Like a YubiKey (and unlike SP 800-73-4 3.1.1), every SELECT, even of the PIV AID
        // again or of an AID the card lacks, resets the PIV security status (PIN verified,
        // management key authenticated); OpenSC knows this of YubiKeys.
        if is_prefix_of(&PIV_AID) {
            self.power_cycle();
            // Application property template: PIX of the PIV applet and its authority.
            let mut aid_tlv = super::tlv::encode(0x4F, &PIV_AID[5..]);
            aid_tlv.extend(super::tlv::encode(
                0x79,
                &super::tlv::encode(0x4F, &PIV_AID[..5]),
            ));
            return Ok(super::tlv::encode(0x61, &aid_tlv));
        }
        if aid == MANAGEMENT_AID {
            self.session = Session {
                selected: Some(Applet::Management),
                ..Session::default()
            };
            let f = self.state.facts.firmware;
            return Ok(format!("{}.{}.{}", f[0], f[1], f[2]).into_bytes());
        }
        let selected = self.session.selected;
        self.session = Session {
            selected,
            ..Session::default()
        };
        Err(StatusWord::FILE_NOT_FOUND)
    }

    /// Whether touch arrives for an operation with `policy` (auto-confirmed unless refused).
    pub(super) fn touch(&mut self, cached: bool) -> Result<(), StatusWord> {
        if cached
            && self
                .last_touch
                .is_some_and(|t| t.elapsed().as_secs() < TOUCH_CACHE_SECONDS)
        {
            return Ok(());
        }
        tracing::info!("touch requested");
        if self.faults.refuse_touch {
            tracing::warn!("fault: touch refused, answering as a touch timeout");
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        self.last_touch = Some(Instant::now());
        Ok(())
    }
}
