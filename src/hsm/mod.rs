//! `hsm`: every PKCS#11 call Tessera makes goes through this module (over `cryptoki`).
//!
//! It loads the module named in an `hsm-config/*.toml` file, finds the token by label or
//! serial, keeps a pool of logged-in sessions, generates non-extractable key pairs, signs
//! (ECDSA with DER output, RSA PKCS#1 v1.5 and PSS), wraps secrets under an AES-256 key, and
//! re-opens sessions after the module reports a dead session or device. It knows nothing about
//! certificates or people. Nothing outside this module sees a PKCS#11 handle: the rest of Tessera
//! signs through the one [`Signer`] trait, which `HsmKey` implements.

mod config;
mod error;
mod keys;
mod pool;
mod signer;
mod uri;

pub use config::{HsmConfig, PinSource, TokenSelector};
pub use error::HsmError;
pub use keys::{HsmKey, KeySpec, SignatureScheme};
pub use pool::Hsm;
pub use signer::Signer;
pub use uri::Pkcs11Uri;
