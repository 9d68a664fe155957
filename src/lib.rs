//! Tessera: provisions hardware tokens. See `docs/ARCHITECTURE.md` for the code map.
#![forbid(unsafe_code)]

pub mod api;
pub use tessera_attest as attest;
pub mod audit;
pub mod bench;
pub mod ca;
pub mod cli;
pub mod enroll;
pub mod hsm;
pub mod lifecycle;
pub mod metrics;
pub mod notify;
pub mod piv;
pub mod protocol;
pub mod renew;
pub mod server;
pub mod station;
pub mod store;
pub mod web;
