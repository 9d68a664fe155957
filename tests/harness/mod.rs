//! The one small harness that integration tests use to start real parts (SoftHSM2 tokens,
//! pcscd + vpcd + tessera-vpiv cards). Each test file includes it with `mod harness;`.
#![allow(dead_code)]

pub mod binary;
#[macro_use]
pub mod database;
pub mod pki;
pub mod relying_party;
pub mod server;
pub mod softhsm;
pub mod vpcd;
