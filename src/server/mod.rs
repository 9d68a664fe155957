//! The composition root of `tessera serve`: reads the configuration ([`config`]), sets up TLS
//! 1.3 with client certificates ([`tls`]), opens the store, the CA and its HSM, the OCSP
//! responder, the enrollment settings and the checkpoint key, owns the metrics registry, and
//! wires and runs the edges — `api` (gRPC) and `web` (HTTP) — with the scheduled work (audit
//! checkpoints, the enrollment expiry sweep) in [`run`]. It is the only module that knows all
//! the parts; the edges know neither it nor each other.

pub mod config;
pub mod run;
pub mod tls;

pub use config::{
    AuditConfig, CaConfig, DatabaseConfig, GrpcConfig, HttpConfig, ServerConfig, ServerConfigError,
    TlsConfig,
};
pub use run::BoundServer;
pub use tls::tls_server_config;
