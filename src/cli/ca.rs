//! `tessera ca init | show | sign-csr`.
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use crate::ca::{init_ca, CaInitOptions, CertificateAuthority, CertificateProfile};
use crate::hsm::{Hsm, KeyAlgorithm};

/// Where the HSM config and the CA's data directory are.
#[derive(clap::Args, Clone)]
pub struct CaLocation {
    /// HSM configuration file (see docs/hsm.md).
    #[arg(long, env = "TESSERA_HSM_CONFIG", value_name = "FILE")]
    pub hsm_config: PathBuf,
    /// Data directory; the CA lives in DATA/ca.
    #[arg(long, env = "TESSERA_DATA_DIR", value_name = "DIR")]
    pub data_dir: PathBuf,
}

#[derive(clap::Args)]
pub struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(clap::Subcommand)]
enum CaCommand {
    /// Make the root and issuing CA keys in the HSM and their certificates (refuses to overwrite).
    Init(InitArgs),
    /// Print the chain and the HSM key URIs.
    Show(ShowArgs),
    /// Issue a certificate for a PKCS#10 CSR under a profile.
    SignCsr(SignCsrArgs),
}

fn parse_algorithm(s: &str) -> Result<KeyAlgorithm, String> {
    KeyAlgorithm::parse(s).ok_or_else(|| format!("unknown algorithm `{s}` (ec-p256, ec-p384, rsa2048, rsa3072, rsa4096)"))
}

#[derive(clap::Args)]
struct InitArgs {
    #[command(flatten)]
    location: CaLocation,
    #[arg(long, default_value = "Tessera Root CA")]
    root_cn: String,
    #[arg(long, default_value = "Tessera Issuing CA")]
    issuing_cn: String,
    /// Organization (O) in both CA names.
    #[arg(long)]
    org: Option<String>,
    #[arg(long, default_value = "ec-p384", value_parser = parse_algorithm)]
    root_algorithm: KeyAlgorithm,
    #[arg(long, default_value = "ec-p256", value_parser = parse_algorithm)]
    issuing_algorithm: KeyAlgorithm,
    #[arg(long, default_value_t = 7300, value_parser = clap::value_parser!(u32).range(1..=36500))]
    root_validity_days: u32,
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
    issuing_validity_days: u32,
    /// Path length constraint of the issuing CA.
    #[arg(long, default_value_t = 0)]
    path_len: u8,
}

#[derive(clap::Args)]
struct ShowArgs {
    #[command(flatten)]
    location: CaLocation,
}

#[derive(clap::Args)]
struct SignCsrArgs {
    #[command(flatten)]
    location: CaLocation,
    /// Certificate profile name (built in: tls-client, smartcard-logon).
    #[arg(long)]
    profile: String,
    /// Directory of profile TOML files; built-in profiles are used when absent.
    #[arg(long, env = "TESSERA_PROFILES_DIR")]
    profiles_dir: Option<PathBuf>,
    /// The CSR, PEM or DER.
    #[arg(long)]
    csr: PathBuf,
    /// Where to write the certificate (PEM); stdout when absent.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: CaArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CaCommand::Init(a) => {
            let hsm = Hsm::open_config_file(&a.location.hsm_config)?;
            let options = CaInitOptions {
                root_common_name: a.root_cn,
                issuing_common_name: a.issuing_cn,
                organization: a.org,
                root_algorithm: a.root_algorithm,
                issuing_algorithm: a.issuing_algorithm,
                root_validity_days: a.root_validity_days,
                issuing_validity_days: a.issuing_validity_days,
                issuing_path_len: a.path_len,
            };
            let meta = init_ca(&hsm, &a.location.data_dir, &options)?;
            let dir = a.location.data_dir.join("ca");
            println!("CA created in {}", dir.display());
            println!("root key:    {} ({})", meta.root_key_uri, meta.root_algorithm.name());
            println!("issuing key: {} ({})", meta.issuing_key_uri, meta.issuing_algorithm.name());
            println!("chain:       {}", dir.join("chain.pem").display());
        }
        CaCommand::Show(a) => {
            let hsm = Hsm::open_config_file(&a.location.hsm_config)?;
            let ca = CertificateAuthority::load(&hsm, &a.location.data_dir)?;
            println!("# root key:    {} ({})", ca.metadata.root_key_uri, ca.metadata.root_algorithm.name());
            println!("# issuing key: {} ({})", ca.metadata.issuing_key_uri, ca.metadata.issuing_algorithm.name());
            print!("{}", ca.chain_pem());
        }
        CaCommand::SignCsr(a) => {
            let profile = CertificateProfile::load(&a.profile, a.profiles_dir.as_deref())?;
            let csr = std::fs::read(&a.csr).with_context(|| format!("cannot read CSR {}", a.csr.display()))?;
            // Check the CSR before touching the HSM: bad input fails fast and offline.
            let request = crate::ca::request_from_csr(&csr)?;
            let hsm = Hsm::open_config_file(&a.location.hsm_config)?;
            let ca = CertificateAuthority::load(&hsm, &a.location.data_dir)?;
            let cert = ca.issue(&request, &profile)?;
            match a.out {
                Some(p) => {
                    std::fs::write(&p, cert.pem()).with_context(|| format!("cannot write {}", p.display()))?;
                    eprintln!("issued serial {} under profile {} to {}", cert.serial_hex(), profile.name, p.display());
                }
                None => print!("{}", cert.pem()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
