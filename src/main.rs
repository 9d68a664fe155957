//! The `tessera` command. Each subcommand group lives in `tessera::cli::<group>`.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tessera::cli;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Hardware-token provisioning: HSM-backed CA, attested YubiKey enrollment"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Certificate authority: ceremony, chain, issuance from a CSR.
    Ca(cli::ca::CaArgs),
    /// Verify a YubiKey PIV attestation and decide by policy.
    Attest(cli::attest::AttestArgs),
    /// Measure HSM signing and certificate issuance rates.
    Bench(cli::bench::BenchArgs),
    /// Run the gRPC server (TLS 1.3, client certificates) until SIGINT or SIGTERM.
    Serve(cli::serve::ServeArgs),
    /// The tamper-evident audit log.
    Audit(cli::audit::AuditArgs),
    /// Administration: client certificates for the API.
    Admin(cli::admin::AdminArgs),
    /// Reports read from the server's database: certificates about to expire.
    Report(cli::report::ReportArgs),
    /// The help-desk station: enroll, unblock, replace, retire a YubiKey; token status.
    Station(cli::station::StationArgs),
    /// Renew your own token's certificates, authenticated by the token itself.
    Renew(cli::renew::RenewArgs),
}

fn main() -> ExitCode {
    cli::init_tracing();
    let args = Cli::parse();
    let result = match args.command {
        Command::Ca(a) => cli::ca::run(a),
        Command::Attest(a) => cli::attest::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Serve(a) => cli::serve::run(a),
        Command::Audit(a) => cli::audit::run(a),
        Command::Admin(a) => cli::admin::run(a),
        Command::Report(a) => cli::report::run(a),
        Command::Station(a) => cli::station::run(a),
        Command::Renew(a) => cli::renew::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
