//! `tessera attest verify`: check a slot attestation and its device certificate, print the
//! facts and the policy decision. Exit 0 allowed, 1 denied (or chain invalid), 2 input unreadable.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::attest::{
    self, AttestError, AttestationInput, MAX_CERTIFICATE_INPUT_BYTES, Policy, TrustAnchors,
    VerifiedAttestation,
};
use serde::Serialize;

#[derive(clap::Args)]
pub struct AttestArgs {
    #[command(subcommand)]
    command: AttestCommand,
}

#[derive(clap::Subcommand)]
enum AttestCommand {
    /// Verify a slot attestation certificate up to a trusted root and decide by policy.
    Verify(VerifyArgs),
    /// Re-check every active token's stored attestation facts against a new policy (after an
    /// advisory): a dry-run report, or with --apply hold|notify, act on what it denies.
    Recheck(RecheckArgs),
}

#[derive(clap::Args)]
struct RecheckArgs {
    /// The server's configuration (for its database).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The new attestation policy (TOML, see config/attestation-policy.toml).
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// `hold`: put every denied certificate on hold (certificateHold, audited);
    /// `notify`: record an audit event per affected token. Without it: a dry run.
    #[arg(long, value_name = "hold|notify")]
    apply: Option<String>,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The slot's attestation certificate (PEM or DER).
    #[arg(long, value_name = "SLOT")]
    attestation: PathBuf,
    /// The device attestation certificate (object 5FFF01) first, then any further
    /// intermediates (PEM or DER). Yubico's published intermediates are built in.
    #[arg(long = "intermediate", value_name = "CERT", required = true)]
    intermediates: Vec<PathBuf>,
    /// Trust these roots INSTEAD of the bundled Yubico roots: a PEM/DER file, or a directory
    /// of *.pem, *.crt, *.cer, *.der files. Repeatable.
    #[arg(long = "roots", value_name = "DIR|FILE")]
    roots: Vec<PathBuf>,
    /// Trust these roots IN ADDITION to the bundled Yubico roots. Repeatable.
    #[arg(long = "add-roots", value_name = "DIR|FILE")]
    add_roots: Vec<PathBuf>,
    /// Attestation policy (TOML, see config/attestation-policy.toml). Without it: the default
    /// policy (advisories YSA-2017-01 and YSA-2024-03 blocked, RSA at least 2048 bits).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Refuse the attestation unless its serial is this one.
    #[arg(long, value_name = "N")]
    expect_serial: Option<u32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: AttestArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AttestCommand::Verify(v) => Ok(verify(&v)),
        AttestCommand::Recheck(r) => recheck(&r),
    }
}

/// Why the command could not even judge the attestation (exit 2).
/// The codes `tessera attest verify` adds to [`AttestError::CODES`] and
/// [`crate::attest::DenyReason::CODES`] for inputs it cannot read (docs/attestation.md).
pub const CLI_CODES: &[&str] = &[
    "input-unreadable",
    "input-too-large",
    "policy-unreadable",
    "policy-invalid",
    "apply-unknown",
];

struct Unreadable {
    code: &'static str,
    message: String,
}

impl From<AttestError> for Unreadable {
    fn from(e: AttestError) -> Self {
        Unreadable {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

fn verify(args: &VerifyArgs) -> ExitCode {
    let prepared = prepare(args);
    let (input, trust, policy) = match prepared {
        Ok(p) => p,
        Err(u) => {
            if args.json {
                println!("{}", to_json(&Report::failed(u.code, &u.message)));
            } else {
                eprintln!("error: {}", u.message);
            }
            return ExitCode::from(2);
        }
    };
    match attest::verify(&input, &trust) {
        Ok(verified) => {
            let decision = policy.evaluate(&verified);
            let report = Report::verified(&verified, &decision);
            if args.json {
                println!("{}", to_json(&report));
            } else {
                print_human(&verified, &decision);
            }
            ExitCode::from(if decision.allowed() { 0 } else { 1 })
        }
        Err(e) => {
            let code = if e.is_input_error() { 2 } else { 1 };
            if args.json {
                println!("{}", to_json(&Report::failed(e.code(), &e.to_string())));
            } else if code == 2 {
                eprintln!("error: {e}");
            } else {
                println!("attestation: INVALID ({})\n  {e}", e.code());
            }
            ExitCode::from(code)
        }
    }
}

/// `tessera attest recheck`. Exit 0 when the policy denies no certificate, 1 when it denies
/// some (listed; held or notified with --apply), 2 when the policy or --apply is unusable.
fn recheck(args: &RecheckArgs) -> anyhow::Result<ExitCode> {
    use crate::lifecycle::{self, RecheckApply};
    let refuse = |u: Unreadable| {
        if args.json {
            println!(
                "{}",
                serde_json::json!({"error": u.code, "message": u.message})
            );
        } else {
            eprintln!("error: {}", u.message);
        }
        Ok(ExitCode::from(2))
    };
    let apply = match args.apply.as_deref().map(str::parse::<RecheckApply>) {
        None => None,
        Some(Ok(apply)) => Some(apply),
        Some(Err(e)) => {
            return refuse(Unreadable {
                code: "apply-unknown",
                message: e.to_string(),
            });
        }
    };
    let (policy, source) = match read_policy(&args.policy) {
        Ok(p) => p,
        Err(u) => return refuse(u),
    };
    let config = crate::server::ServerConfig::load(&args.config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(async {
        let store = crate::store::Store::open(&config.database.url).await?;
        let report = match apply {
            None => lifecycle::recheck_fleet_dry_run(&store, &policy).await?,
            Some(apply) => {
                let actor = crate::audit::Actor {
                    name: "tessera attest recheck".into(),
                    role: "admin".into(),
                };
                let request_id = format!(
                    "attest-recheck-{}",
                    hex::encode(crate::ca::SerialNumber::random()?.as_bytes())
                );
                let mut tx = store.begin_write().await?;
                let report = lifecycle::recheck_fleet_apply(
                    &mut tx,
                    &actor,
                    &request_id,
                    &policy,
                    &source,
                    apply,
                )
                .await?;
                tx.commit().await?;
                report
            }
        };
        store.close().await;
        anyhow::Ok(report)
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
    } else {
        print_recheck(&report, &source);
    }
    Ok(ExitCode::from(if report.denied.is_empty() { 0 } else { 1 }))
}

fn print_recheck(report: &crate::lifecycle::RecheckReport, source: &str) {
    let mode = match report.applied {
        None => "dry run, nothing changed".to_string(),
        Some(a) => format!("applied: {}", a.as_str()),
    };
    println!("policy:       {source}");
    println!(
        "checked:      {} good certificates of {} active tokens ({mode})",
        report.certificates_checked, report.tokens_checked
    );
    println!(
        "denied:       {} certificates of {} tokens",
        report.denied.len(),
        report.affected_tokens().len()
    );
    if !report.denied.is_empty() {
        println!("TOKEN\tPERSON\tFIRMWARE\tSLOT\tCERTIFICATE\tREASONS");
    }
    for e in &report.denied {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            e.token_serial,
            e.person.as_deref().unwrap_or("-"),
            e.firmware,
            e.slot.as_deref().unwrap_or("-"),
            e.certificate_serial,
            e.reasons.join(",")
        );
        for m in &e.messages {
            println!("  {m}");
        }
    }
    if !report.unknown.is_empty() {
        println!(
            "unknown:      {} certificates have no stored attestation facts (not judged, not changed)",
            report.unknown.len()
        );
        for e in &report.unknown {
            println!(
                "{}\t{}\t{}\t-\t{}\tfacts unknown",
                e.token_serial,
                e.person.as_deref().unwrap_or("-"),
                e.firmware,
                e.certificate_serial
            );
        }
    }
}

/// Reads and parses a policy file; also returns how audit events name it (path and SHA-256).
fn read_policy(path: &Path) -> Result<(Policy, String), Unreadable> {
    use sha2::Digest;
    let text = std::fs::read_to_string(path).map_err(|e| Unreadable {
        code: "policy-unreadable",
        message: format!("cannot read policy {}: {e}", path.display()),
    })?;
    let policy = Policy::from_toml(&text).map_err(|e| Unreadable {
        code: "policy-invalid",
        message: format!("{}: {e}", path.display()),
    })?;
    let digest = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    Ok((policy, format!("{} sha256:{digest}", path.display())))
}

fn prepare(args: &VerifyArgs) -> Result<(AttestationInput, TrustAnchors, Policy), Unreadable> {
    let slot = read_limited(&args.attestation)?;
    let (device_path, further) = args.intermediates.split_first().ok_or_else(|| Unreadable {
        code: "input-unreadable",
        message: "give the device certificate (5FFF01) with --intermediate".into(),
    })?;
    let mut input = AttestationInput::new(slot, read_limited(device_path)?);
    for path in further {
        input = input.with_intermediate(read_limited(path)?);
    }
    input.expected_serial = args.expect_serial;

    let mut builder = TrustAnchors::builder().with_yubico_intermediates()?;
    if args.roots.is_empty() {
        builder = builder.with_yubico_roots()?;
    }
    for path in args.roots.iter().chain(&args.add_roots) {
        for file in certificate_files(path)? {
            let bytes = read_limited(&file)?;
            builder = builder.with_anchors(&bytes, &file.display().to_string())?;
        }
    }
    let trust = builder.build()?;

    let policy = match &args.policy {
        None => Policy::default(),
        Some(path) => read_policy(path)?.0,
    };
    Ok((input, trust, policy))
}

/// A file, or the certificate files of a directory (sorted by name).
fn certificate_files(path: &Path) -> Result<Vec<PathBuf>, Unreadable> {
    let unreadable = |e: std::io::Error| Unreadable {
        code: "input-unreadable",
        message: format!("cannot read roots {}: {e}", path.display()),
    };
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(unreadable)? {
        let file = entry.map_err(unreadable)?.path();
        let ext = file
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if file.is_file() && matches!(ext.as_str(), "pem" | "crt" | "cer" | "der") {
            files.push(file);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Unreadable {
            code: "input-unreadable",
            message: format!(
                "roots directory {} has no .pem, .crt, .cer or .der file",
                path.display()
            ),
        });
    }
    Ok(files)
}

/// Reads at most the certificate size limit (plus one byte, so the library reports the size).
fn read_limited(path: &Path) -> Result<Vec<u8>, Unreadable> {
    let unreadable = |e: std::io::Error| Unreadable {
        code: "input-unreadable",
        message: format!("cannot read {}: {e}", path.display()),
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(MAX_CERTIFICATE_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() > MAX_CERTIFICATE_INPUT_BYTES {
        return Err(Unreadable {
            code: "input-too-large",
            message: format!(
                "{} is larger than the {MAX_CERTIFICATE_INPUT_BYTES}-byte limit for certificate \
                 input; give the attestation certificate itself",
                path.display()
            ),
        });
    }
    Ok(bytes)
}

/// The `--json` object. Field names are a stable interface (docs/attestation.md).
#[derive(Serialize)]
struct Report {
    valid: bool,
    allowed: bool,
    reasons: Vec<&'static str>,
    messages: Vec<String>,
    serial: Option<u32>,
    firmware: Option<String>,
    pin_policy: Option<&'static str>,
    touch_policy: Option<&'static str>,
    form_factor: Option<&'static str>,
    form_factor_code: Option<String>,
    fips: Option<bool>,
    cspn: Option<bool>,
    slot: Option<String>,
    key_algorithm: Option<&'static str>,
    public_key_sha256: Option<String>,
    trust_anchor: Option<String>,
    chain: Vec<String>,
}

impl Report {
    fn verified(v: &VerifiedAttestation, decision: &attest::Decision) -> Report {
        Report {
            valid: true,
            allowed: decision.allowed(),
            reasons: decision.reason_codes(),
            messages: decision.reasons().iter().map(ToString::to_string).collect(),
            serial: v.serial(),
            firmware: Some(v.firmware().to_string()),
            pin_policy: Some(v.pin_policy().as_str()),
            touch_policy: Some(v.touch_policy().as_str()),
            form_factor: Some(v.form_factor().as_str()),
            form_factor_code: v.form_factor_code().map(|c| format!("0x{c:02x}")),
            fips: Some(v.fips()),
            cspn: Some(v.cspn()),
            slot: Some(v.slot().to_string()),
            key_algorithm: Some(v.key_algorithm().as_str()),
            public_key_sha256: Some(v.public_key_sha256_hex()),
            trust_anchor: Some(v.anchor_subject().to_string()),
            chain: v.chain_subjects().to_vec(),
        }
    }

    fn failed(code: &'static str, message: &str) -> Report {
        Report {
            valid: false,
            allowed: false,
            reasons: vec![code],
            messages: vec![message.to_string()],
            serial: None,
            firmware: None,
            pin_policy: None,
            touch_policy: None,
            form_factor: None,
            form_factor_code: None,
            fips: None,
            cspn: None,
            slot: None,
            key_algorithm: None,
            public_key_sha256: None,
            trust_anchor: None,
            chain: Vec::new(),
        }
    }
}

fn to_json(report: &Report) -> String {
    serde_json::to_string(report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn print_human(v: &VerifiedAttestation, decision: &attest::Decision) {
    println!("attestation:  VALID, chain to {}", v.anchor_subject());
    if decision.allowed() {
        println!("decision:     ALLOWED");
    } else {
        println!("decision:     DENIED");
        for reason in decision.reasons() {
            println!("  {}: {reason}", reason.code());
        }
    }
    match v.serial() {
        Some(serial) => println!("serial:       {serial}"),
        None => println!("serial:       none (firmware 4.3.x states none)"),
    }
    println!("firmware:     {}", v.firmware());
    println!("slot:         {}", v.slot());
    println!("key:          {}", v.key_algorithm());
    println!(
        "key SHA-256:  {} (SubjectPublicKeyInfo DER)",
        v.public_key_sha256_hex()
    );
    println!("PIN policy:   {}", v.pin_policy());
    println!("touch policy: {}", v.touch_policy());
    match v.form_factor_code() {
        Some(code) => println!("form factor:  {} (0x{code:02x})", v.form_factor()),
        None => println!("form factor:  {}", v.form_factor()),
    }
    println!("FIPS: {}, CSPN: {}", yes_no(v.fips()), yes_no(v.cspn()));
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
