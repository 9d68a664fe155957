//! `tessera renew`: a person renews their token's certificates from their own computer,
//! authenticated by the token itself (docs/self-service.md). The PIN is asked on the terminal
//! with echo off, or read from a 0600 file (`--pin-file`); never taken from the command line.
use crate::renew::renewal::{RenewSettings, renew};
use crate::station::TerminalOperator;
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct RenewArgs {
    /// The server's self-service address, https://HOST:PORT (its `[self_service] listen`).
    #[arg(long, env = "TESSERA_RENEW_SERVER")]
    pub server: String,
    /// PEM file of the CA that issued the server's TLS certificate.
    #[arg(long, env = "TESSERA_RENEW_CA_CERT")]
    pub ca_cert: PathBuf,
    /// The name in the server's certificate, when it is not the host of --server.
    #[arg(long, env = "TESSERA_RENEW_SERVER_NAME")]
    pub server_name: Option<String>,
    /// Part of the PC/SC reader's name, when several tokens are present.
    #[arg(long, env = "TESSERA_RENEW_READER")]
    pub reader: Option<String>,
    /// A slot to renew (repeatable, e.g. --slot 9a); default: every slot with a certificate.
    #[arg(long = "slot")]
    pub slots: Vec<String>,
    /// A file (mode 0600) whose first line is the token's PIN; without it the PIN is asked on
    /// the terminal.
    #[arg(long)]
    pub pin_file: Option<PathBuf>,
}

pub fn run(args: RenewArgs) -> anyhow::Result<ExitCode> {
    let settings = RenewSettings {
        server: args.server,
        server_ca: args.ca_cert,
        server_name: args.server_name,
        reader: args.reader,
        slots: args.slots,
    };
    let mut operator = TerminalOperator::new(args.pin_file, false);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let renewed = runtime.block_on(renew(&settings, &mut operator))?;
    for (slot, serial, not_after) in &renewed.certificates {
        println!("renewed slot {slot}: certificate {serial}, valid until {not_after}");
    }
    for serial in &renewed.superseded {
        println!("superseded: certificate {serial} (revoked)");
    }
    println!("token {} renewed", renewed.token_serial);
    Ok(ExitCode::SUCCESS)
}
