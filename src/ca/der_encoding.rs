//! The few DER values the CA writes from parts (subjectAltName otherNames, the SID extension,
//! certificatePolicies): one tag around already-encoded content. Tags and lengths are the `der`
//! crate's encoders; nothing here writes a length by hand.

use der::asn1::AnyRef;
use der::{Decode, Encode, Tag};

/// SEQUENCE { content } where `content` is already DER.
pub(crate) fn sequence(content: &[u8]) -> Vec<u8> {
    tagged(0x30, content)
}

/// `content` (already DER, or a primitive value's octets) under the one-octet identifier
/// `tag` (e.g. 0x30 SEQUENCE, 0x04 OCTET STRING, 0xa0 [0] constructed, 0x81 [1] primitive).
pub(crate) fn tagged(tag: u8, content: &[u8]) -> Vec<u8> {
    Tag::from_der(&[tag])
        .and_then(|tag| AnyRef::new(tag, content)?.to_der())
        .expect("the CA only tags small values with one-octet identifiers")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_short_and_long() {
        assert_eq!(sequence(&[]), vec![0x30, 0x00]);
        assert_eq!(sequence(&[0u8; 0x7f])[..2], [0x30, 0x7f]);
        assert_eq!(sequence(&[0u8; 0x80])[..3], [0x30, 0x81, 0x80]);
        assert_eq!(sequence(&[0u8; 0x1234])[..4], [0x30, 0x82, 0x12, 0x34]);
        assert_eq!(tagged(0x81, b"a@b"), vec![0x81, 0x03, b'a', b'@', b'b']);
        assert_eq!(tagged(0xa0, &[0x05, 0x00]), vec![0xa0, 0x02, 0x05, 0x00]);
        assert_eq!(tagged(0x06, &[0x2a]), vec![0x06, 0x01, 0x2a]);
    }
}
