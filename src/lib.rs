//! Tessera: provisions hardware tokens. See `docs/ARCHITECTURE.md` for the code map.
#![forbid(unsafe_code)]

pub mod api;
pub mod attest;
pub mod audit;
pub mod ca;
pub mod cli;
pub mod enroll;
pub mod hsm;
pub mod lifecycle;
pub mod piv;
pub mod station;
pub mod store;
pub mod web;
