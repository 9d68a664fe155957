//! The few DER encodings the `hsm` module needs to turn PKCS#11 attributes into standard forms:
//! SubjectPublicKeyInfo for EC and RSA public keys, and ECDSA signatures (raw r||s → DER).

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER holding the unsigned big-endian `magnitude`.
pub(crate) fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let trimmed: &[u8] = {
        let skip = magnitude.iter().take_while(|b| **b == 0).count();
        if skip == magnitude.len() { &[0] } else { &magnitude[skip..] }
    };
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed[0] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    tlv(0x02, &content)
}

/// ECDSA signature as PKCS#11 returns it (r||s, each the curve size) → X.509's DER SEQUENCE.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || raw.len() % 2 != 0 {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut seq = unsigned_integer(r);
    seq.extend(unsigned_integer(s));
    Some(tlv(0x30, &seq))
}

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// SubjectPublicKeyInfo for an EC key given the DER of its named-curve OID (CKA_EC_PARAMS) and
/// the uncompressed point.
pub fn ec_spki(ec_params: &[u8], point: &[u8]) -> Vec<u8> {
    let mut alg = tlv(0x06, OID_EC_PUBLIC_KEY);
    alg.extend_from_slice(ec_params);
    let mut bits = vec![0u8];
    bits.extend_from_slice(point);
    let mut seq = tlv(0x30, &alg);
    seq.extend(tlv(0x03, &bits));
    tlv(0x30, &seq)
}

/// SubjectPublicKeyInfo for an RSA key from modulus and public exponent.
pub fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let mut alg = tlv(0x06, OID_RSA_ENCRYPTION);
    alg.extend_from_slice(&[0x05, 0x00]);
    let mut key = unsigned_integer(modulus);
    key.extend(unsigned_integer(exponent));
    let mut bits = vec![0u8];
    bits.extend(tlv(0x30, &key));
    let mut seq = tlv(0x30, &alg);
    seq.extend(tlv(0x03, &bits));
    tlv(0x30, &seq)
}

/// CKA_EC_POINT is a DER OCTET STRING around the point on conforming modules; some return the
/// bare point. Either way, return the bare uncompressed point.
pub fn ec_point_from_attribute(attr: &[u8], field_bytes: usize) -> Option<Vec<u8>> {
    let bare_len = 1 + 2 * field_bytes;
    if attr.len() == bare_len && attr[0] == 0x04 {
        return Some(attr.to_vec());
    }
    if attr.first() == Some(&0x04) {
        let (len, header) = match attr.get(1)? {
            n if *n < 0x80 => (*n as usize, 2),
            0x81 => (*attr.get(2)? as usize, 3),
            _ => return None,
        };
        if attr.len() == header + len && len == bare_len {
            return Some(attr[header..].to_vec());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_der_adds_sign_byte_and_strips_zeros() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r has its high bit set: needs a 0x00 prefix
        raw[63] = 0x01; // s is 1: leading zeros stripped
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(&der[..5], &[0x30, 0x26, 0x02, 0x21, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x01]);
    }

    #[test]
    fn long_lengths_are_encoded() {
        let t = tlv(0x04, &[0u8; 300]);
        assert_eq!(&t[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn ec_point_accepts_wrapped_and_bare() {
        let mut bare = vec![0x04];
        bare.extend([7u8; 64]);
        assert_eq!(ec_point_from_attribute(&bare, 32).unwrap(), bare);
        let wrapped = tlv(0x04, &bare);
        assert_eq!(ec_point_from_attribute(&wrapped, 32).unwrap(), bare);
        assert!(ec_point_from_attribute(&[0x04, 0x01, 0x00], 32).is_none());
    }
}
