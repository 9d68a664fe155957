//! The help-desk station: drives a YubiKey through the `piv` driver and calls the server's
//! enrollment, token and certificate services over mTLS. It holds no CA secret; the secrets it
//! handles (the new PIN, the management key and PUK the server sends) live in zeroizing
//! [`Secret`](crate::piv::Secret) values and are never printed or logged.
//!
//! Start at [`enrollment`] (the protocol of `proto/tessera/v1/enrollment.proto`, step by step);
//! [`renewal`] renews a token's certificates in place (BeginRenewal, then the same steps);
//! [`token_care`] has unblock, replace, retire and status; [`operator`] is the terminal (progress
//! lines, the new PIN, confirmations); [`connection`] the gRPC client; [`config`] where the
//! connection settings come from.

pub mod config;
pub mod connection;
pub mod enrollment;
pub mod operator;
pub mod renewal;
pub mod server_error;
pub mod slot_plan;
pub mod token_care;

use crate::piv::PivError;
use std::path::PathBuf;

pub use config::StationConfig;
pub use connection::ServerConnection;
pub use operator::{Operator, TerminalOperator};
pub use server_error::ServerError;

/// Everything that can stop a station command; each message names the problem and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StationError {
    #[error("{setting} is not set: give {flag}, {env} or `{key} = …` in the station's config file")]
    MissingSetting {
        setting: &'static str,
        flag: &'static str,
        env: &'static str,
        key: &'static str,
    },
    #[error("the server address {0:?} is not an https:// URL (e.g. https://tessera.example:8443)")]
    ServerUrl(String),
    #[error("cannot read {what} {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("station config file {path} is not valid: {message}")]
    ConfigFile { path: PathBuf, message: String },
    #[error(
        "cannot connect to the server at {server}: {detail}; check --server, the CA certificate, and that `tessera serve` runs"
    )]
    Connect { server: String, detail: String },
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("{step}: {source}")]
    Card {
        step: String,
        #[source]
        source: PivError,
    },
    #[error(
        "the PIN file {path} can be read by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    PinFileMode { path: PathBuf, mode: u32 },
    #[error(
        "{step}: the token left the reader (pulled, or it stopped answering); put it back and run the same command again"
    )]
    CardGone { step: String },
    #[error("the two PINs differ; nothing was changed, run the command again")]
    PinMismatch,
    #[error("the new PIN must be 6 to 8 characters")]
    PinLength,
    #[error("the PIN read is not 6 to 8 characters; a YubiKey PIN is")]
    CurrentPinLength,
    #[error("the new PIN must not be the factory PIN 123456")]
    PinIsFactoryDefault,
    #[error("no terminal to ask on ({what}); {instead}")]
    NoTerminal {
        what: &'static str,
        instead: &'static str,
    },
    #[error("terminal: {0}")]
    Terminal(std::io::Error),
    #[error("the reset was not confirmed; the token was not changed")]
    ResetNotConfirmed,
    #[error(
        "the server's answer is not usable: {0}; check the enrollment profile and the server's version"
    )]
    ServerAnswer(String),
    #[error("the token in the reader is the old token {0}; put the new token in the reader")]
    ReplacementIsOldToken(String),
    #[error(
        "the PUK of this token is blocked, so the PIN cannot be unblocked; retire the token (tessera station retire) and enroll it again"
    )]
    PukBlocked,
    #[error(
        "the token in the reader is {found}, not {expected} (--token-serial); put token {expected} in the reader"
    )]
    WrongToken { expected: String, found: String },
    /// A resumed PUK rotation with fewer than two PUK tries left: one wrong try of the two
    /// candidates could block the PUK.
    #[error(
        "the card holds either the escrowed PUK or the new one an earlier unblock set, and only {} PUK tries are left: trying both could block the PUK; nothing was tried. Retire the token (tessera station retire) and enroll it again",
        tries_left.map_or("an unknown number of".to_string(), |n| n.to_string())
    )]
    PukRotationUnsafe { tries_left: Option<u8> },
    #[error(
        "token {serial} is {state}, not forgotten; `found` reinstates only a forgotten token, nothing was changed"
    )]
    NotForgotten { serial: String, state: String },
    #[error("{failure}; {aftermath}")]
    EnrollmentFailed {
        failure: Box<StationError>,
        aftermath: String,
    },
}

impl StationError {
    pub(crate) fn card(step: impl Into<String>) -> impl FnOnce(PivError) -> StationError {
        let step = step.into();
        move |source| StationError::Card { step, source }
    }
}

/// A fresh request id for one state-changing RPC (the server replays a repeat of it).
pub(crate) fn request_id() -> String {
    use rand::TryRng as _;
    let mut bytes = [0u8; 16];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random source failed");
    format!("station-{}", hex::encode(bytes))
}
