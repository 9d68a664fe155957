//! What the station and the server both speak: the gRPC messages and services generated from
//! `proto/tessera/v1` ([`pb`]), the proof-of-possession message a new key signs
//! ([`proof_message`]) and the slot plan as types ([`SlotPlan`]). Pure: no I/O. The station,
//! `api` and `enroll` all use it; it knows neither of them.

pub mod slot_plan;

pub use slot_plan::SlotPlan;

/// Code generated from `proto/tessera/v1` by `build.rs` (never committed).
pub mod pb {
    tonic::include_proto!("tessera.v1");
    /// Served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tessera_v1_descriptor");
}

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
