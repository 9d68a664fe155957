//! `tessera-vpiv`: a virtual YubiKey-compatible PIV card on the vpcd driver of pcscd.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tessera_vpiv::attestation::{DeviceFacts, TestRoot, certificate_pem};
use tessera_vpiv::state::{CardState, parse_firmware};
use tessera_vpiv::transport::{self, SessionEnd};
use tessera_vpiv::{FaultPlan, VirtualCard};

/// A virtual YubiKey PIV card for tests and demos. It connects to pcscd's vpcd reader as a
/// TCP client. Never use it to hold real keys: its state file stores them in clear.
#[derive(Parser, Debug)]
#[command(name = "tessera-vpiv", version)]
struct Args {
    /// State file (JSON): keys, objects, PIN/PUK, counters. Made on first start. Without it
    /// the card forgets everything when it stops.
    #[arg(long)]
    state: Option<PathBuf>,
    /// vpcd host (pcscd's vpcd driver listens there).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// vpcd port: 35963 for reader "Virtual PCD 00 00", 35964 for "… 00 01", or the port in
    /// your reader config.
    #[arg(long, default_value_t = 35963)]
    port: u16,
    /// Emulated firmware for a new card, e.g. 5.4.3 (3DES default management key) or 5.7.4
    /// (AES-192 default, RSA 3072/4096 and Ed25519).
    #[arg(long)]
    firmware: Option<String>,
    /// Serial number for a new card (default: random).
    #[arg(long)]
    serial: Option<u32>,
    /// Form factor for a new card: usb-a-keychain, usb-a-nano, usb-c-keychain, usb-c-nano,
    /// usb-c-lightning, usb-a-bio, usb-c-bio, or a byte such as 0x03.
    #[arg(long)]
    form_factor: Option<String>,
    /// Emulate a FIPS model (form factor bit 0x80, extension .3.10 on the device certificate).
    #[arg(long)]
    fips: bool,
    /// Emulate a CSPN model (extension .3.11 on the device certificate).
    #[arg(long)]
    cspn: bool,
    /// Root certificate (PEM or DER) to issue the device attestation certificate from, for a
    /// new card; needs --attestation-root-key. Default: the card makes its own test root.
    #[arg(long, requires = "attestation_root_key")]
    attestation_root_cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8 RSA/P-256/P-384 or PKCS#1 RSA) of --attestation-root-cert.
    #[arg(long, requires = "attestation_root_cert")]
    attestation_root_key: Option<PathBuf>,
    /// Write the attestation root certificate (PEM) here at start, for verifiers to trust.
    #[arg(long, alias = "attestation-root-out")]
    export_root: Option<PathBuf>,
    /// Seconds to keep retrying the connection to vpcd (at start and after pcscd closes it).
    #[arg(long, default_value_t = 30)]
    connect_timeout: u64,
    /// Fault: drop the connection (card pulled) when APDU number N+1 arrives, then exit.
    #[arg(long, value_name = "N")]
    fault_disconnect_after: Option<u64>,
    /// Fault: drop the connection when an APDU with this instruction (hex, e.g. 87) arrives;
    /// `INS:N` waits for its Nth occurrence (e.g. 87:2).
    #[arg(long, value_name = "INS[:N]")]
    fault_disconnect_at_ins: Option<String>,
    /// Fault: answer instruction INS with status SW instead of running it (hex, e.g. 47=6A80).
    /// Repeatable.
    #[arg(long, value_name = "INS=SW")]
    fault_status: Vec<String>,
    /// Fault: touch never arrives; operations that need touch fail as on a timeout (6982).
    #[arg(long)]
    refuse_touch: bool,
}

fn parse_hex_u8(s: &str, what: &str) -> anyhow::Result<u8> {
    u8::from_str_radix(s.trim_start_matches("0x"), 16)
        .with_context(|| format!("{what} {s:?} is not a hex byte such as 87"))
}

fn parse_form_factor(s: &str) -> anyhow::Result<u8> {
    Ok(match s {
        "usb-a-keychain" => 0x01,
        "usb-a-nano" => 0x02,
        "usb-c-keychain" => 0x03,
        "usb-c-nano" => 0x04,
        "usb-c-lightning" => 0x05,
        "usb-a-bio" => 0x06,
        "usb-c-bio" => 0x07,
        other => match parse_hex_u8(other, "form factor") {
            Ok(b) if b & 0x7F <= 0x07 => b & 0x7F,
            _ => bail!(
                "form factor {other:?} is unknown; use usb-a-keychain, usb-a-nano, usb-c-keychain, usb-c-nano, usb-c-lightning, usb-a-bio, usb-c-bio or a byte 0x01..0x07"
            ),
        },
    })
}

fn fault_plan(args: &Args) -> anyhow::Result<FaultPlan> {
    let mut status_by_ins = BTreeMap::new();
    for spec in &args.fault_status {
        let (ins, sw) = spec
            .split_once('=')
            .with_context(|| format!("--fault-status {spec:?} is not INS=SW, e.g. 47=6A80"))?;
        let sw = u16::from_str_radix(sw, 16)
            .with_context(|| format!("--fault-status {spec:?}: SW is not 4 hex digits"))?;
        status_by_ins.insert(parse_hex_u8(ins, "--fault-status instruction")?, sw);
    }
    let (disconnect_at_ins, disconnect_at_ins_occurrence) = match args
        .fault_disconnect_at_ins
        .as_deref()
    {
        None => (None, 1),
        Some(spec) => {
            let (ins, nth) = spec.split_once(':').unwrap_or((spec, "1"));
            let nth = nth
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .with_context(|| {
                    format!("--fault-disconnect-at-ins {spec:?}: the occurrence after ':' must be a whole number from 1")
                })?;
            (Some(parse_hex_u8(ins, "--fault-disconnect-at-ins")?), nth)
        }
    };
    Ok(FaultPlan {
        disconnect_after: args.fault_disconnect_after,
        disconnect_at_ins,
        disconnect_at_ins_occurrence,
        status_by_ins,
        refuse_touch: args.refuse_touch,
    })
}

fn new_card_state(args: &Args) -> anyhow::Result<CardState> {
    let firmware = match &args.firmware {
        Some(f) => parse_firmware(f)
            .with_context(|| format!("--firmware {f:?} is not a version such as 5.4.3"))?,
        None => [5, 4, 3],
    };
    if firmware < [5, 0, 0] {
        bail!(
            "--firmware {}.{}.{}: only YubiKey 5 firmware (5.x.y) is emulated",
            firmware[0],
            firmware[1],
            firmware[2]
        );
    }
    let facts = DeviceFacts {
        firmware,
        serial: args.serial.unwrap_or_else(|| {
            use rand::RngExt;
            rand::rng().random_range(10_000_000..40_000_000)
        }),
        form_factor: args
            .form_factor
            .as_deref()
            .map(parse_form_factor)
            .transpose()?
            .unwrap_or(0x01),
        fips: args.fips,
        cspn: args.cspn,
    };
    let root = match (&args.attestation_root_cert, &args.attestation_root_key) {
        (Some(cert), Some(key)) => {
            let cert_bytes = std::fs::read(cert).with_context(|| {
                format!("cannot read --attestation-root-cert {}", cert.display())
            })?;
            let key_pem =
                zeroize::Zeroizing::new(std::fs::read_to_string(key).with_context(|| {
                    format!("cannot read --attestation-root-key {}", key.display())
                })?);
            TestRoot::from_files(&cert_bytes, &key_pem)?
        }
        _ => {
            tracing::info!("making a test attestation root (RSA-2048)");
            TestRoot::generate()?
        }
    };
    Ok(CardState::factory(facts, &root)?)
}

/// A flag that would change an existing card: refuse rather than silently ignore it.
fn check_flags_match(args: &Args, state: &CardState, path: &std::path::Path) -> anyhow::Result<()> {
    let f = &state.facts;
    let conflict = |flag: &str, card: String| {
        anyhow::anyhow!(
            "state file {} holds a card with {flag} {card}; drop {flag} or use a new --state file",
            path.display()
        )
    };
    if let Some(fw) = &args.firmware
        && parse_firmware(fw) != Some(f.firmware)
    {
        return Err(conflict(
            "--firmware",
            format!("{}.{}.{}", f.firmware[0], f.firmware[1], f.firmware[2]),
        ));
    }
    if args.serial.is_some_and(|s| s != f.serial) {
        return Err(conflict("--serial", f.serial.to_string()));
    }
    if let Some(ff) = &args.form_factor
        && parse_form_factor(ff)? != f.form_factor
    {
        return Err(conflict(
            "--form-factor",
            format!("0x{:02x}", f.form_factor),
        ));
    }
    if args.attestation_root_cert.is_some() {
        return Err(conflict(
            "--attestation-root-cert",
            "its own attestation root".into(),
        ));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // one line: the error and its causes
            eprintln!("tessera-vpiv: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TESSERA_VPIV_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let faults = fault_plan(&args)?;

    let state = match &args.state {
        Some(path) if path.exists() => {
            let state = CardState::load(path)?;
            check_flags_match(&args, &state, path)?;
            state
        }
        Some(path) => {
            let state = new_card_state(&args)?;
            state.save(path)?;
            tracing::info!(path = %path.display(), "new card state written");
            state
        }
        None => {
            tracing::warn!("no --state: this card forgets everything when it stops");
            new_card_state(&args)?
        }
    };
    if let Some(path) = &args.export_root {
        std::fs::write(path, certificate_pem(&state.attestation_root_der))
            .with_context(|| format!("cannot write --export-root {}", path.display()))?;
        tracing::info!(path = %path.display(), "attestation root exported");
    }
    let f = state.facts;
    tracing::info!(
        serial = f.serial,
        firmware = format_args!("{}.{}.{}", f.firmware[0], f.firmware[1], f.firmware[2]),
        form_factor = format_args!("0x{:02x}", f.form_factor),
        "card ready"
    );

    let address = format!("{}:{}", args.host, args.port);
    let timeout = Duration::from_secs(args.connect_timeout);
    let mut card = VirtualCard::new(state, args.state.clone(), faults);
    loop {
        tracing::info!(%address, "connecting to vpcd");
        let mut stream = transport::connect(&address, timeout)?;
        tracing::info!(%address, "card inserted");
        match transport::serve(&mut stream, &mut card, &address) {
            Ok(SessionEnd::CardPulled) => {
                tracing::info!("card pulled by fault; exiting");
                return Ok(());
            }
            Ok(SessionEnd::ReaderClosed) => {
                tracing::warn!("vpcd closed the connection; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "connection lost; reconnecting"),
        }
        card.power_cycle();
    }
}
