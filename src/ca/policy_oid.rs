//! Certificate policy OIDs and the certificatePolicies extension (RFC 5280 4.2.1.4).
//!
//! Profiles name their own policy OIDs (an organization's arc); every arc must fit in 32 bits,
//! because common X.509 parsers (pyasn1 in pkilint, older Go) reject wider arcs.

use super::der_encoding::{sequence, tagged};

/// anyPolicy (RFC 5280), carried by the issuing CA certificate.
pub const ANY_POLICY: &str = "2.5.29.32.0";

/// The policy OID that marks an API client (operator) certificate: carried by every certificate
/// of the `operator-client` profile (profiles/operator-client.toml) and by the operator CA's own
/// certificate, required by the gRPC edge's `authorize`, and refused in every other profile
/// (`IssuingCa::check_profile`). Fixed, not configurable: the operator profile is built in.
pub const OPERATOR_POLICY: &str = "1.3.6.1.4.1.32473.1.2.3";

/// certificatePolicies extension OID as rcgen wants it.
pub const CERTIFICATE_POLICIES_EXTENSION: &[u64] = &[2, 5, 29, 32];

/// DER of an OBJECT IDENTIFIER (tag, length, content) from its dotted form.
pub fn encode(dotted: &str) -> Result<Vec<u8>, String> {
    let arcs = dotted
        .split('.')
        .map(|a| {
            let arc = a
                .parse::<u128>()
                .map_err(|_| format!("arc \"{a}\" is not a number"))?;
            if arc > u128::from(u32::MAX) {
                return Err(format!(
                    "arc {arc} is wider than 32 bits, which many X.509 parsers reject"
                ));
            }
            Ok(arc as u64)
        })
        .collect::<Result<Vec<u64>, String>>()?;
    if arcs.len() < 2 {
        return Err("an OID has at least two arcs".into());
    }
    if arcs[0] > 2 || (arcs[0] < 2 && arcs[1] > 39) {
        return Err("the first two arcs are out of range".into());
    }
    let first = arcs[0]
        .checked_mul(40)
        .and_then(|v| v.checked_add(arcs[1]))
        .ok_or("the second arc is too large")?;
    let mut content: Vec<u8> = Vec::new();
    for arc in std::iter::once(first).chain(arcs[2..].iter().copied()) {
        let mut groups: Vec<u8> = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            groups.push((rest & 0x7f) as u8 | 0x80);
            rest >>= 7;
        }
        content.extend(groups.iter().rev());
    }
    Ok(tagged(0x06, &content))
}

/// The DER value of a certificatePolicies extension: one PolicyInformation (without
/// qualifiers) per OID, in order.
pub fn certificate_policies(oids: &[&str]) -> Result<Vec<u8>, String> {
    let mut infos = Vec::new();
    for oid in oids {
        infos.extend(sequence(&encode(oid)?));
    }
    Ok(sequence(&infos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_small_and_uuid_arcs() {
        // 2.5.29.32.0 (anyPolicy)
        assert_eq!(
            encode(ANY_POLICY).unwrap(),
            vec![0x06, 0x04, 0x55, 0x1d, 0x20, 0x00]
        );
        // 1.2.840.113549 (RSADSI)
        assert_eq!(
            encode("1.2.840.113549").unwrap(),
            vec![0x06, 0x06, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]
        );
        // 2.25.x (a UUID OID) has a 128-bit arc: refused.
        assert_eq!(
            encode("2.25.208155842566862967014583006257905655839").unwrap_err(),
            "arc 208155842566862967014583006257905655839 is wider than 32 bits, which many X.509 parsers reject"
        );
        assert_eq!(
            encode("1.3.4294967296").unwrap_err(),
            "arc 4294967296 is wider than 32 bits, which many X.509 parsers reject"
        );
        assert!(encode("3.1").is_err());
        assert!(encode("1").is_err());
    }

    #[test]
    fn the_operator_profile_carries_the_operator_policy() {
        let profile = crate::ca::Profile::from_toml(
            crate::ca::profile::OPERATOR_CLIENT_PROFILE,
            include_str!("../../profiles/operator-client.toml"),
            "built-in profile operator-client",
        )
        .unwrap();
        assert_eq!(profile.certificate_policies, [OPERATOR_POLICY]);
    }

    #[test]
    fn policies_extension_is_a_sequence_of_policy_information() {
        let der = certificate_policies(&[ANY_POLICY]).unwrap();
        assert_eq!(
            der,
            vec![0x30, 0x08, 0x30, 0x06, 0x06, 0x04, 0x55, 0x1d, 0x20, 0x00]
        );
    }
}
