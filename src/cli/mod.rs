//! Command-line front ends. Each file owns one subcommand group of the `tessera` binary and
//! turns library errors into one-line messages and exit codes; no business logic lives here.

pub mod admin;
pub mod attest;
pub mod audit;
pub mod bench;
pub mod ca;
pub mod renew;
pub mod report;
pub mod serve;
pub mod station;

/// Logs go to stderr, filtered by `RUST_LOG` (default `warn`). Secrets are never logged.
/// cryptoki logs every mechanism number it has no name for at ERROR level when a token's
/// mechanism list is read; that is noise, not an error, so it is off by default. The `yubikey`
/// crate logs every refused command at ERROR level; `piv` reports those errors itself (with the
/// ISO 7816 status), so its logs are off by default too.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,cryptoki::mechanism=off,yubikey=off")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
