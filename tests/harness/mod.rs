//! The one small harness that integration tests use to start real parts (SoftHSM2 tokens,
//! pcscd + vpcd + tessera-vpiv cards), and the typed fixtures built on them: a CA in SoftHSM2
//! (`ca::TestCa`), server configurations serialised from typed values (`config::ServerToml`) and
//! a running server with mTLS clients per role (`server::TestServer`). The integration tests
//! (tests/it) include it once, from their main.rs; tests/vpiv_clients.rs with `mod harness;`.
#![allow(dead_code)]

pub mod binary;
pub mod ca;
pub mod config;
#[macro_use]
pub mod database;
pub mod pki;
pub mod relying_party;
pub mod server;
pub mod softhsm;
pub mod vpcd;
