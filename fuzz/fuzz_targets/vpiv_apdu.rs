//! Feeds random APDU sequences to the virtual card's APDU handler (no sockets). Input: a series
//! of [length byte][that many bytes] frames, each one command APDU. The card starts from a
//! factory state with a P-256 key in 9A and the management key already authenticated, so the
//! fuzzer reaches key operations, PUT DATA and IMPORT without having to solve the challenge.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tessera_vpiv::attestation::{DeviceFacts, TestRoot};
use tessera_vpiv::{CardState, FaultPlan, VirtualCard};

fn base_state() -> &'static CardState {
    static STATE: OnceLock<CardState> = OnceLock::new();
    STATE.get_or_init(|| {
        let facts =
            DeviceFacts { firmware: [5, 7, 4], serial: 1234567, form_factor: 1, fips: false, cspn: false };
        let root = TestRoot::generate().expect("test root");
        let mut card = VirtualCard::new(CardState::factory(facts, &root).expect("state"), None, FaultPlan::default());
        card.assume_management_authenticated();
        let _ = card.process(&[0x00, 0x47, 0x00, 0x9A, 0x08, 0xAC, 0x06, 0x80, 0x01, 0x11, 0xAA, 0x01, 0x01]);
        card.state().clone()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut card = VirtualCard::new(base_state().clone(), None, FaultPlan::default());
    card.assume_management_authenticated();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let _ = card.process(&tail[..n]);
        rest = &tail[n..];
    }
});
