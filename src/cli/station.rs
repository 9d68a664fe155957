//! `tessera station …`: the help-desk CLI (docs/help-desk.md). Connection settings come from
//! flags, `TESSERA_STATION_*` environment variables or a TOML file (`--config`); key material
//! only ever as file paths.
use crate::station::config::{GivenSettings, StationFile};
use crate::station::enrollment::{EnrollRequest, Enrolled, enroll};
use crate::station::renewal::{RenewRequest, renew};
use crate::station::{ServerConnection, StationConfig, TerminalOperator, token_care};
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct StationArgs {
    /// Station config file (TOML: server, ca_cert, client_cert, client_key, reader).
    #[arg(long, env = "TESSERA_STATION_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// The server, https://HOST:PORT.
    #[arg(long, env = "TESSERA_STATION_SERVER", global = true)]
    pub server: Option<String>,
    /// PEM file of the CA that issued the server's certificate.
    #[arg(long, env = "TESSERA_STATION_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// PEM file of this station's client certificate (role helpdesk).
    #[arg(long, env = "TESSERA_STATION_CLIENT_CERT", global = true)]
    pub client_cert: Option<PathBuf>,
    /// PEM file of this station's private key (a path; never the key itself).
    #[arg(long, env = "TESSERA_STATION_CLIENT_KEY", global = true)]
    pub client_key: Option<PathBuf>,
    /// Part of the PC/SC reader's name, when several tokens are present.
    #[arg(long, env = "TESSERA_STATION_READER", global = true)]
    pub reader: Option<String>,
    #[command(subcommand)]
    pub command: StationCommand,
}

#[derive(clap::Subcommand)]
pub enum StationCommand {
    /// Enroll the token in the reader for a person: keys born on the token, attested, certified.
    Enroll {
        /// The person's external id (as HR knows them).
        #[arg(long)]
        person: String,
        /// The enrollment profile (slot plan), e.g. piv-login.
        #[arg(long)]
        profile: String,
        #[command(flatten)]
        pin: PinArgs,
        /// Confirm up front that a token that is not factory-fresh may be reset (erased).
        #[arg(long)]
        confirm_reset: bool,
    },
    /// Renew the certificates of the token in the reader in place: new keys in the same slots,
    /// attested and certified; PIN, PUK, management key and other slots are untouched.
    Renew {
        /// The token's serial; the token in the reader must be this one.
        #[arg(long)]
        token_serial: Option<String>,
        /// A slot to renew (9a, 9c, …); repeat for several; none: every slot with a good
        /// certificate.
        #[arg(long = "slot")]
        slots: Vec<String>,
        /// Renew before the certificates' renewal window (admin certificates only).
        #[arg(long)]
        force: bool,
        /// Why, for the audit log (e.g. "ticket 4711"). Not a secret.
        #[arg(long, default_value = "")]
        reason: String,
        /// Read the person's current PIN from this file (first line; mode 0600) instead of
        /// asking on the terminal.
        #[arg(long)]
        pin_file: Option<PathBuf>,
    },
    /// Unblock a forgotten or blocked PIN with the PUK the server holds (never shown).
    Unblock {
        #[command(flatten)]
        pin: PinArgs,
        /// Why the PUK is released, for the audit log (e.g. "forgotten PIN, ticket 4711");
        /// required. Not a secret.
        #[arg(long)]
        reason: String,
    },
    /// Dual control: approve another operator's pending PUK release (no token needed).
    ApprovePukRelease {
        /// The release id the other operator's `unblock` printed.
        #[arg(long)]
        release_id: String,
        /// The serial of the token the release is for (must match the request).
        #[arg(long)]
        token_serial: String,
        /// Why you approve it, for the audit log; required.
        #[arg(long)]
        reason: String,
    },
    /// Replace a lost token: mark the old one lost (revoked), enroll the one in the reader.
    Replace {
        /// Serial of the lost token.
        #[arg(long)]
        old_serial: String,
        #[arg(long)]
        person: String,
        #[arg(long)]
        profile: String,
        #[command(flatten)]
        pin: PinArgs,
        #[arg(long)]
        confirm_reset: bool,
    },
    /// Retire the token in the reader: revoke its certificates and wipe it.
    Retire {
        /// Confirm up front that the token may be revoked and wiped.
        #[arg(long)]
        confirm_reset: bool,
    },
    /// Show the token in the reader and what the server knows about it.
    Status,
    /// The person left their token at home: its certificates go on hold (no token needed);
    /// enroll a temporary token meanwhile with `enroll --profile temporary-piv-login`.
    Forgotten {
        /// Serial of the forgotten token.
        #[arg(long)]
        serial: String,
        /// Why, for the audit log (e.g. "left at home, ticket 4714").
        #[arg(long)]
        reason: String,
    },
    /// The forgotten token is back (in the reader): reinstate it; its temporary tokens are
    /// retired.
    Found {
        /// Why, for the audit log (e.g. "brought back, ticket 4714").
        #[arg(long)]
        reason: String,
    },
}

#[derive(clap::Args)]
pub struct PinArgs {
    /// Read the person's new PIN from this file (first line; the file must be mode 0600)
    /// instead of asking twice on the terminal.
    #[arg(long)]
    pub pin_file: Option<PathBuf>,
}

pub fn run(args: StationArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(path) => StationFile::load(path)?,
        None => StationFile::default(),
    };
    let config = StationConfig::resolve(
        GivenSettings {
            server: args.server,
            ca_cert: args.ca_cert,
            client_cert: args.client_cert,
            client_key: args.client_key,
            reader: args.reader,
        },
        file,
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut server = ServerConnection::connect(&config).await?;
        let reader = config.reader.as_deref();
        match args.command {
            StationCommand::Enroll {
                person,
                profile,
                pin,
                confirm_reset,
            } => {
                let mut operator = TerminalOperator::new(pin.pin_file, confirm_reset);
                let enrolled = enroll(
                    &mut server,
                    &mut operator,
                    reader,
                    &EnrollRequest { person, profile },
                )
                .await?;
                print_enrolled(&enrolled);
            }
            StationCommand::Replace {
                old_serial,
                person,
                profile,
                pin,
                confirm_reset,
            } => {
                let mut operator = TerminalOperator::new(pin.pin_file, confirm_reset);
                let enrolled = token_care::replace(
                    &mut server,
                    &mut operator,
                    reader,
                    &old_serial,
                    &EnrollRequest { person, profile },
                )
                .await?;
                print_enrolled(&enrolled);
            }
            StationCommand::Renew {
                token_serial,
                slots,
                force,
                reason,
                pin_file,
            } => {
                let mut operator = TerminalOperator::new(pin_file, false);
                let renewed = renew(
                    &mut server,
                    &mut operator,
                    reader,
                    &RenewRequest {
                        token_serial,
                        slots,
                        force,
                        reason,
                    },
                )
                .await?;
                println!(
                    "station: token {} renewed (renewal {}); certificates: {}; superseded: {}",
                    renewed.token_serial,
                    renewed.enrollment_id,
                    slot_certificates(&renewed.certificates),
                    slot_certificates(&renewed.superseded)
                );
            }
            StationCommand::Unblock { pin, reason } => {
                let mut operator = TerminalOperator::new(pin.pin_file, false);
                token_care::unblock(&mut server, &mut operator, reader, &reason).await?;
                println!("station: the PIN is unblocked and set");
            }
            StationCommand::ApprovePukRelease {
                release_id,
                token_serial,
                reason,
            } => {
                let mut operator = TerminalOperator::new(None, false);
                let release = token_care::approve_puk_release(
                    &mut server,
                    &mut operator,
                    &release_id,
                    &token_serial,
                    &reason,
                )
                .await?;
                println!(
                    "station: PUK release {} of token {} approved (asked by {}: {:?}); {} collects it with `tessera station unblock` until {}",
                    release.release_id,
                    release.token_serial,
                    release.requested_by,
                    release.reason,
                    release.requested_by,
                    release.expires_at
                );
            }
            StationCommand::Retire { confirm_reset } => {
                let mut operator = TerminalOperator::new(None, confirm_reset);
                token_care::retire(&mut server, &mut operator, reader).await?;
                println!("station: the token is retired and wiped");
            }
            StationCommand::Status => {
                let mut operator = TerminalOperator::new(None, false);
                token_care::status(&mut server, &mut operator, reader).await?;
            }
            StationCommand::Forgotten { serial, reason } => {
                let mut operator = TerminalOperator::new(None, false);
                token_care::mark_forgotten(&mut server, &mut operator, &serial, &reason).await?;
                println!(
                    "station: token {} is forgotten; its certificates are on hold until it is found",
                    serial.trim()
                );
            }
            StationCommand::Found { reason } => {
                let mut operator = TerminalOperator::new(None, false);
                token_care::found(&mut server, &mut operator, reader, &reason).await?;
                println!("station: the token is reinstated; its certificates are usable again");
            }
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

fn print_enrolled(enrolled: &Enrolled) {
    println!(
        "station: token {} enrolled (enrollment {}); certificates: {}",
        enrolled.token_serial,
        enrolled.enrollment_id,
        slot_certificates(&enrolled.certificates)
    );
}

/// "SERIAL in slot 9a, SERIAL in slot 9c".
fn slot_certificates(certificates: &[crate::protocol::pb::SlotCertificate]) -> String {
    certificates
        .iter()
        .map(|c| {
            format!(
                "{} in slot {}",
                c.certificate
                    .as_ref()
                    .map(|c| c.serial.as_str())
                    .unwrap_or("?"),
                c.slot
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
