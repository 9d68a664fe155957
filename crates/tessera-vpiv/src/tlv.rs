//! BER-TLV as PIV uses it: one- or two-byte tags, lengths in 1..=3 bytes (81/82 forms).
//!
//! Written here rather than taken from a crate, because neither candidate reads what clients
//! send the card or writes what a YubiKey answers: the `der` crate (which `tessera`'s token
//! driver uses for the one TLV it reads) refuses universal-class tags it does not know, such as
//! 07 and 08 of IMPORT ASYMMETRIC KEY (the Ed25519 and X25519 private keys), and `iso7816-tlv`
//! parses every constructed tag recursively (tag 70 around a certificate too, without a depth
//! limit), copies every value and writes a 127-byte length as `81 7F` instead of `7F`.

/// One parsed TLV: tag (one or two bytes, big-endian) and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: u16,
    pub value: &'a [u8],
}

/// Why a TLV buffer could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlvError {
    #[error("TLV is cut short")]
    Truncated,
    #[error("TLV length form is not supported")]
    BadLength,
}

/// Parses one TLV from the start of `buf`, returning it and the rest.
pub fn parse_one(buf: &[u8]) -> Result<(Tlv<'_>, &[u8]), TlvError> {
    let (&first, mut rest) = buf.split_first().ok_or(TlvError::Truncated)?;
    let mut tag = u16::from(first);
    if first & 0x1F == 0x1F {
        let (&second, r) = rest.split_first().ok_or(TlvError::Truncated)?;
        tag = (tag << 8) | u16::from(second);
        rest = r;
    }
    let (&l0, r) = rest.split_first().ok_or(TlvError::Truncated)?;
    rest = r;
    let len = match l0 {
        0..=0x7F => usize::from(l0),
        0x81 => {
            let (&l, r) = rest.split_first().ok_or(TlvError::Truncated)?;
            rest = r;
            usize::from(l)
        }
        0x82 => {
            if rest.len() < 2 {
                return Err(TlvError::Truncated);
            }
            let l = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            rest = &rest[2..];
            l
        }
        _ => return Err(TlvError::BadLength),
    };
    if rest.len() < len {
        return Err(TlvError::Truncated);
    }
    Ok((
        Tlv {
            tag,
            value: &rest[..len],
        },
        &rest[len..],
    ))
}

/// Parses a sequence of TLVs filling `buf` exactly.
pub fn parse_all(mut buf: &[u8]) -> Result<Vec<Tlv<'_>>, TlvError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (tlv, rest) = parse_one(buf)?;
        out.push(tlv);
        buf = rest;
    }
    Ok(out)
}

/// Finds the first TLV with `tag` in a sequence.
pub fn find<'a>(tlvs: &[Tlv<'a>], tag: u16) -> Option<&'a [u8]> {
    tlvs.iter().find(|t| t.tag == tag).map(|t| t.value)
}

/// Appends the BER length of `len` to `out`.
pub fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xFF {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        let l = u16::try_from(len).unwrap_or(u16::MAX);
        out.push(0x82);
        out.extend_from_slice(&l.to_be_bytes());
    }
}

/// Encodes one TLV (tag of one or two bytes).
pub fn encode(tag: u16, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 5);
    if tag > 0xFF {
        out.extend_from_slice(&tag.to_be_bytes());
    } else {
        out.push(tag as u8);
    }
    push_len(&mut out, value.len());
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_short_and_long_forms() {
        for len in [0usize, 1, 0x7F, 0x80, 0xFF, 0x100, 3000] {
            let value = vec![0xAB; len];
            let enc = encode(0x7F49, &value);
            let (tlv, rest) = parse_one(&enc).unwrap();
            assert_eq!((tlv.tag, tlv.value.len(), rest.len()), (0x7F49, len, 0));
        }
    }

    #[test]
    fn refuses_truncated_and_odd_lengths() {
        assert_eq!(parse_one(&[0x53, 0x05, 1, 2]), Err(TlvError::Truncated));
        assert_eq!(parse_one(&[0x53, 0x83, 0, 0, 1]), Err(TlvError::BadLength));
        assert_eq!(parse_one(&[0x5F]), Err(TlvError::Truncated));
        assert_eq!(parse_one(&[]), Err(TlvError::Truncated));
    }
}
