//! `tessera-vpiv`: a virtual YubiKey-compatible PIV card for tests and demos (library and
//! binary `tessera-vpiv`; it shares no code with the `tessera` package).
//!
//! It speaks the `vpcd` protocol of pcscd's virtual smart-card driver (`transport`), handles
//! ISO 7816 framing and faults (`card`), the PIV application with Yubico's extensions (`piv`),
//! Yubico's Management application (`management_app`), and makes attestation certificates
//! under a test root (`attestation`). Its state lives in a JSON file (`state`). Nothing here
//! belongs in a production path: the state file holds private keys in clear.
//! See `docs/vpiv.md`.
#![forbid(unsafe_code)]

pub mod apdu;
pub mod attestation;
pub mod card;
pub mod keys;
pub mod management_app;
pub mod mgmkey;
pub mod piv;
pub mod state;
pub mod tlv;
pub mod transport;

pub use card::{CardReply, FaultPlan, VirtualCard};
pub use state::CardState;

#[cfg(test)]
mod tests;
