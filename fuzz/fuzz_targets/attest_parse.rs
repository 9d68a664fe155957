//! Feeds arbitrary bytes to the attestation parser and verifier: no input may panic.
//! The first byte picks where the rest splits into slot and device certificate.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tessera_attest::{self as attest, AttestationInput, TrustAnchors};

static TRUST: OnceLock<TrustAnchors> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let _ = attest::count_certificates(data);
    let trust = TRUST.get_or_init(|| TrustAnchors::yubico().expect("bundled trust anchors load"));
    if let Some((&selector, rest)) = data.split_first() {
        let cut = rest.len() * usize::from(selector) / 256;
        let (slot, device) = rest.split_at(cut);
        let input = AttestationInput::new(slot, device).with_intermediate(rest);
        if let Ok(verified) = attest::verify(&input, trust) {
            let _ = verified.require_public_key(slot);
            let _ = attest::Policy::default().evaluate(&verified);
        }
    }
});
