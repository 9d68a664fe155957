//! The enrollment state machine on the server: begin → complete → confirm (or abort /
//! expire), nonces, proof of possession, idempotency. It never touches PC/SC; the station
//! (`station`) drives the token and calls the server (`api::enrollment_service`).

/// Domain tag of the proof-of-possession message (see `proto/tessera/v1/enrollment.proto`).
pub const PROOF_DOMAIN: &[u8] = b"tessera-enrollment-proof-v1";

/// The bytes a new key signs to prove the station holds it for this enrollment and slot:
/// `"tessera-enrollment-proof-v1" 0x00 enrollment_id 0x00 slot 0x00 nonce`.
/// The station signs it (ECDSA/SHA-256 or RSA PKCS#1 v1.5/SHA-256); the server checks it
/// against the attested public key.
pub fn proof_message(enrollment_id: &str, slot: &str, nonce: &[u8]) -> Vec<u8> {
    let mut m =
        Vec::with_capacity(PROOF_DOMAIN.len() + enrollment_id.len() + slot.len() + 3 + nonce.len());
    m.extend_from_slice(PROOF_DOMAIN);
    m.push(0);
    m.extend_from_slice(enrollment_id.as_bytes());
    m.push(0);
    m.extend_from_slice(slot.as_bytes());
    m.push(0);
    m.extend_from_slice(nonce);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_message_separates_every_field() {
        let m = proof_message("e1", "9a", &[7; 32]);
        assert_eq!(&m[..PROOF_DOMAIN.len()], PROOF_DOMAIN);
        assert_eq!(m.len(), PROOF_DOMAIN.len() + 1 + 2 + 1 + 2 + 1 + 32);
        // Moving a byte from one field to the next changes the message.
        assert_ne!(proof_message("e19", "a", &[7; 32]), m);
    }
}
