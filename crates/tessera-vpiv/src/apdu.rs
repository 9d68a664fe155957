//! ISO 7816-4 command APDUs (short and extended) and status words.

/// A status word (SW1 SW2) as the card sends it after the response data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusWord(pub u16);

impl StatusWord {
    pub const SUCCESS: Self = Self(0x9000);
    /// Warning: state of non-volatile memory unchanged (used by a failed touch).
    pub const WRONG_LENGTH: Self = Self(0x6700);
    pub const LAST_COMMAND_OF_CHAIN_EXPECTED: Self = Self(0x6883);
    pub const SECURITY_STATUS_NOT_SATISFIED: Self = Self(0x6982);
    pub const AUTH_METHOD_BLOCKED: Self = Self(0x6983);
    pub const CONDITIONS_NOT_SATISFIED: Self = Self(0x6985);
    pub const COMMAND_NOT_ALLOWED: Self = Self(0x6986);
    pub const INCORRECT_DATA: Self = Self(0x6A80);
    pub const FUNCTION_NOT_SUPPORTED: Self = Self(0x6A81);
    pub const FILE_NOT_FOUND: Self = Self(0x6A82);
    pub const NOT_ENOUGH_MEMORY: Self = Self(0x6A84);
    pub const INCORRECT_P1P2: Self = Self(0x6A86);
    pub const REFERENCE_NOT_FOUND: Self = Self(0x6A88);
    pub const WRONG_P1P2: Self = Self(0x6B00);
    pub const INS_NOT_SUPPORTED: Self = Self(0x6D00);
    pub const CLA_NOT_SUPPORTED: Self = Self(0x6E00);
    pub const NO_PRECISE_DIAGNOSIS: Self = Self(0x6F00);

    /// 63Cx: verification failed, `retries` tries left (capped at 15 as the encoding allows).
    pub fn verify_failed(retries: u8) -> Self {
        Self(0x63C0 | u16::from(retries.min(15)))
    }

    pub fn to_bytes(self) -> [u8; 2] {
        self.0.to_be_bytes()
    }
}

impl std::fmt::Display for StatusWord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04X}", self.0)
    }
}

/// A parsed command APDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandApdu {
    pub cla: u8,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    pub data: Vec<u8>,
    /// Expected response length (Ne); 0 when absent.
    pub ne: usize,
    pub extended: bool,
}

impl CommandApdu {
    /// Parses the four ISO 7816-4 cases, short and extended; a length that does not add up is
    /// refused with 6700.
    pub fn parse(raw: &[u8]) -> Result<Self, StatusWord> {
        if raw.len() < 4 {
            return Err(StatusWord::WRONG_LENGTH);
        }
        let (cla, ins, p1, p2) = (raw[0], raw[1], raw[2], raw[3]);
        let body = &raw[4..];
        let mk = |data: &[u8], ne: usize, extended: bool| Self {
            cla,
            ins,
            p1,
            p2,
            data: data.to_vec(),
            ne,
            extended,
        };
        match body.len() {
            0 => Ok(mk(&[], 0, false)),
            1 => Ok(mk(
                &[],
                if body[0] == 0 { 256 } else { body[0] as usize },
                false,
            )),
            _ if body[0] != 0 => {
                let lc = body[0] as usize;
                if body.len() == 1 + lc {
                    Ok(mk(&body[1..], 0, false))
                } else if body.len() == 2 + lc {
                    let le = body[1 + lc];
                    Ok(mk(
                        &body[1..1 + lc],
                        if le == 0 { 256 } else { le as usize },
                        false,
                    ))
                } else {
                    Err(StatusWord::WRONG_LENGTH)
                }
            }
            3 => {
                // case 2E: 00 Le1 Le2
                let le = u16::from_be_bytes([body[1], body[2]]) as usize;
                Ok(mk(&[], if le == 0 { 65536 } else { le }, true))
            }
            n if n > 3 => {
                let lc = u16::from_be_bytes([body[1], body[2]]) as usize;
                if lc == 0 {
                    return Err(StatusWord::WRONG_LENGTH);
                }
                if n == 3 + lc {
                    Ok(mk(&body[3..], 0, true))
                } else if n == 5 + lc {
                    let le = u16::from_be_bytes([body[3 + lc], body[4 + lc]]) as usize;
                    Ok(mk(&body[3..3 + lc], if le == 0 { 65536 } else { le }, true))
                } else {
                    Err(StatusWord::WRONG_LENGTH)
                }
            }
            _ => Err(StatusWord::WRONG_LENGTH),
        }
    }

    /// Whether CLA announces that more of this command follows (ISO command chaining).
    pub fn is_chained(&self) -> bool {
        self.cla & 0x10 != 0
    }
}

/// A response: data and status word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseApdu {
    pub data: Vec<u8>,
    pub sw: StatusWord,
}

impl ResponseApdu {
    pub fn ok(data: Vec<u8>) -> Self {
        Self {
            data,
            sw: StatusWord::SUCCESS,
        }
    }

    pub fn status(sw: StatusWord) -> Self {
        Self {
            data: Vec::new(),
            sw,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.data.clone();
        out.extend_from_slice(&self.sw.to_bytes());
        out
    }
}

impl From<StatusWord> for ResponseApdu {
    fn from(sw: StatusWord) -> Self {
        Self::status(sw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_four_short_cases() {
        assert_eq!(CommandApdu::parse(&[0, 0xFD, 0, 0]).unwrap().ne, 0);
        assert_eq!(CommandApdu::parse(&[0, 0xFD, 0, 0, 0]).unwrap().ne, 256);
        let c3 = CommandApdu::parse(&[0, 0x20, 0, 0x80, 2, 1, 2]).unwrap();
        assert_eq!((c3.data.as_slice(), c3.ne), (&[1u8, 2][..], 0));
        let c4 = CommandApdu::parse(&[0, 0x20, 0, 0x80, 2, 1, 2, 0x10]).unwrap();
        assert_eq!((c4.data.as_slice(), c4.ne), (&[1u8, 2][..], 16));
    }

    #[test]
    fn parses_extended_cases() {
        let c2 = CommandApdu::parse(&[0, 0xCB, 0x3F, 0xFF, 0, 0, 0]).unwrap();
        assert_eq!((c2.ne, c2.extended), (65536, true));
        let c3 = CommandApdu::parse(&[0, 0xDB, 0x3F, 0xFF, 0, 0, 2, 9, 9]).unwrap();
        assert_eq!((c3.data.as_slice(), c3.ne), (&[9u8, 9][..], 0));
        let c4 = CommandApdu::parse(&[0, 0xDB, 0x3F, 0xFF, 0, 0, 1, 9, 0, 0]).unwrap();
        assert_eq!((c4.data.as_slice(), c4.ne), (&[9u8][..], 65536));
    }

    #[test]
    fn refuses_lengths_that_do_not_add_up() {
        for raw in [
            &[0u8, 1, 2][..],
            &[0, 0x20, 0, 0x80, 3, 1, 2],
            &[0, 0x20, 0, 0x80, 1, 1, 2, 3],
            &[0, 0x20, 0, 0x80, 0, 0],
            &[0, 0x20, 0, 0x80, 0, 0, 5, 1],
            &[0, 0x20, 0, 0x80, 0, 0, 0, 1],
        ] {
            assert_eq!(
                CommandApdu::parse(raw),
                Err(StatusWord::WRONG_LENGTH),
                "{raw:02X?}"
            );
        }
    }
}
