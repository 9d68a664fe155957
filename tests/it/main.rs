//! The integration tests, as one test binary: each file below was its own binary, and each
//! binary linked the whole library and its dependencies again. Run one file's tests with a
//! nextest filter on the module, e.g. `cargo nextest run --test it -E 'test(/^server::/)'`.
//! `tests/vpiv_clients.rs` stays a binary of its own (the virtual card against real clients,
//! which does not use the tessera library's server parts); the card's command-line tests are
//! in its own package (`crates/tessera-vpiv/tests/vpiv_cli.rs`).

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

mod attest;
mod audit;
mod ca;
mod config_examples;
mod edge_errors;
mod enrollment;
mod expiry;
mod group_commit;
mod hsm;
mod issuance_api;
mod layers;
mod notifications;
mod operator_ca;
mod piv_token;
mod reasons;
mod recheck;
mod renewal;
mod revocation;
mod self_service;
mod server;
mod station;
mod store;
