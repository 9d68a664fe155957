//! The few DER encodings the CA writes by hand: definite lengths, SEQUENCE and BIT STRING.

/// Appends a DER definite length.
pub(crate) fn push_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend(&bytes[skip..]);
    }
}

/// SEQUENCE { content } where `content` is already DER.
pub(crate) fn sequence(content: &[u8]) -> Vec<u8> {
    tagged(0x30, content)
}

/// BIT STRING with no unused bits.
pub(crate) fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0x00);
    content.extend_from_slice(bytes);
    tagged(0x03, &content)
}

pub(crate) fn tagged(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut der = Vec::with_capacity(content.len() + 6);
    der.push(tag);
    push_length(&mut der, content.len());
    der.extend_from_slice(content);
    der
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_short_and_long() {
        assert_eq!(sequence(&[]), vec![0x30, 0x00]);
        assert_eq!(sequence(&[0u8; 0x80])[..3], [0x30, 0x81, 0x80]);
        assert_eq!(sequence(&[0u8; 0x1234])[..4], [0x30, 0x82, 0x12, 0x34]);
        assert_eq!(bit_string(&[0xab]), vec![0x03, 0x02, 0x00, 0xab]);
    }
}
