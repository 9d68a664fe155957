//! `tessera ca init | init-operators | show | sign-csr | init-ocsp`: the CA ceremony, the
//! operator CA for API client certificates, the chain, issuance from a CSR, and the delegated
//! OCSP responder.
use crate::ca::{
    self, CaInitParams, IssuanceRequest, KeyProvenance, ProfileSet, SerialNumber, StoredCa,
    ceremony::summarize_certificate,
};
use crate::hsm::{Hsm, HsmConfig, KeySpec};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

/// Where the CA's public files (ca.toml, root.pem, issuing.pem, chain.pem) live.
#[derive(clap::Args)]
struct DataDirArg {
    /// Directory of the CA's public files.
    #[arg(long, env = "TESSERA_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
}

/// The HSM config (module, token, PIN source).
#[derive(clap::Args)]
struct HsmConfigArg {
    /// HSM configuration file (see hsm-config/softhsm2.toml).
    #[arg(long, env = "TESSERA_HSM_CONFIG", value_name = "FILE")]
    hsm_config: PathBuf,
}

#[derive(clap::Subcommand)]
enum CaCommand {
    /// CA ceremony: root and issuing keys in the HSM, root and issuing certificates, chain files;
    /// then the audit checkpoint key (label `tessera-audit-checkpoint`, kept if already there)
    /// and its public half, `audit-checkpoint.pem`, in the data directory.
    Init {
        #[command(flatten)]
        hsm: HsmConfigArg,
        #[command(flatten)]
        data: DataDirArg,
        /// Common name of the root CA.
        #[arg(long, default_value = "Tessera Root CA")]
        root_cn: String,
        /// Common name of the issuing CA.
        #[arg(long, default_value = "Tessera Issuing CA")]
        issuing_cn: String,
        /// Organization (O) of both CA names.
        #[arg(long)]
        organization: Option<String>,
        /// Root key algorithm: p256, p384, rsa2048, rsa3072, rsa4096.
        #[arg(long, default_value = "p384", value_parser = parse_key_spec)]
        root_algorithm: KeySpec,
        /// Issuing key algorithm: p256, p384, rsa2048, rsa3072, rsa4096.
        #[arg(long, default_value = "p256", value_parser = parse_key_spec)]
        issuing_algorithm: KeySpec,
        /// Root certificate validity in days.
        #[arg(long, default_value_t = 7305)]
        root_validity_days: u32,
        /// Issuing certificate validity in days (at most the root's).
        #[arg(long, default_value_t = 1826)]
        issuing_validity_days: u32,
        /// pathLenConstraint of the issuing CA (0: it certifies end entities only).
        #[arg(long, default_value_t = 0)]
        path_len: u8,
        /// pathLenConstraint of the root (default: none).
        #[arg(long)]
        root_path_len: Option<u8>,
        /// HSM label (CKA_LABEL) of the root key.
        #[arg(long, default_value = "tessera-root")]
        root_key_label: String,
        /// HSM label (CKA_LABEL) of the issuing key.
        #[arg(long, default_value = "tessera-issuing")]
        issuing_key_label: String,
    },
    /// The operator CA: a second CA under the root, its key in the HSM, that issues API client
    /// certificates only (`tessera admin issue-client-cert`). Writes operator-ca.pem (what the
    /// server's `tls.client_ca` names) and operator-ca.toml into the data directory.
    InitOperators {
        #[command(flatten)]
        hsm: HsmConfigArg,
        #[command(flatten)]
        data: DataDirArg,
        /// Common name of the operator CA.
        #[arg(long, default_value = "Tessera Operator CA")]
        common_name: String,
        /// Organization (O) of its name.
        #[arg(long)]
        organization: Option<String>,
        /// Key algorithm: p256, p384, rsa2048, rsa3072, rsa4096.
        #[arg(long, default_value = "p256", value_parser = parse_key_spec)]
        algorithm: KeySpec,
        /// Validity in days.
        #[arg(long, default_value_t = 1826)]
        validity_days: u32,
        /// HSM label (CKA_LABEL) of the operator CA key.
        #[arg(long, default_value = "tessera-operators")]
        key_label: String,
    },
    /// Prints the chain (subjects, serials, validity) and the HSM key URIs.
    Show {
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Issues a certificate for a PKCS#10 request (PEM or DER) under a profile that takes its
    /// subject from the CSR (subject_from_csr = true, e.g. service-client). With --config it is
    /// issued through the server's store like IssueFromCsr (reserved, recorded, audited,
    /// revocable) by the server's CA; without, --offline-ceremony is required.
    SignCsr {
        /// HSM configuration file (see hsm-config/softhsm2.toml); with --config, the server's
        /// [ca] hsm_config (this may be left out, or must name the same file).
        #[arg(long, env = "TESSERA_HSM_CONFIG", value_name = "FILE")]
        hsm_config: Option<PathBuf>,
        /// Directory of the CA's public files; with --config, the server's [ca] data_dir (this
        /// may be left out, or must name the same directory).
        #[arg(long, env = "TESSERA_DATA_DIR", value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Certificate profile name (service-client, …).
        #[arg(long)]
        profile: String,
        /// The request file.
        #[arg(long, value_name = "FILE")]
        csr: PathBuf,
        /// Where to write the certificate (PEM); stdout when absent.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Directory of profile TOML files replacing the built-in ones; with --config, the
        /// server's [ca] profiles_dir (this may be left out, or must name the same directory).
        #[arg(long, env = "TESSERA_PROFILES_DIR", value_name = "DIR")]
        profiles_dir: Option<PathBuf>,
        /// The server configuration file: the certificate is issued by the server's CA through
        /// its database (reserved, recorded, audited as "tessera ca sign-csr", revocable), and
        /// refused when the CSR names a directory person.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Without --config, required: says on purpose that this certificate is recorded
        /// nowhere (no database row, no audit event, never on a CRL).
        #[arg(long)]
        offline_ceremony: bool,
    },
    /// The root CA's CRL (PEM), signed in the HSM with the root key. It lists no certificate
    /// (the root certifies only the issuing CA); relying parties that check revocation for
    /// the whole chain (nginx, OpenSSL's CRL_CHECK_ALL) need it besides the server's `/crl`.
    /// Its CRL number is kept in `root-crl-number` in the data directory and grows each run.
    RootCrl {
        #[command(flatten)]
        hsm: HsmConfigArg,
        #[command(flatten)]
        data: DataDirArg,
        /// Days until nextUpdate; sign a new one before then.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Where to write the CRL (PEM). Replaced if it exists.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Delegated OCSP responder: a P-256 key in the HSM and its certificate from the issuing CA
    /// (profile ocsp-responder), recorded in the server's database; writes ocsp.pem and
    /// ocsp.toml into the CA's data directory, where `tessera serve` finds them.
    InitOcsp {
        #[command(flatten)]
        hsm: HsmConfigArg,
        #[command(flatten)]
        data: DataDirArg,
        /// The server configuration file (its database records the certificate).
        #[arg(long, env = "TESSERA_CONFIG", value_name = "FILE")]
        config: PathBuf,
        /// Common name of the responder certificate.
        #[arg(long, default_value = "Tessera OCSP Responder")]
        common_name: String,
        /// HSM label (CKA_LABEL) of the responder key; default `tessera-ocsp-<8 random hex>`,
        /// so a replacement never collides with the key it replaces.
        #[arg(long)]
        key_label: Option<String>,
        /// Replace an existing responder (ocsp.toml and ocsp.pem are rewritten; the old key
        /// stays in the HSM until you delete it).
        #[arg(long)]
        replace: bool,
    },
}

fn parse_key_spec(s: &str) -> Result<KeySpec, String> {
    s.parse::<KeySpec>().map_err(|e| e.to_string())
}

fn open_hsm(config: &Path) -> anyhow::Result<Hsm> {
    let config = HsmConfig::load(config)?;
    Ok(Hsm::open(&config)?)
}

pub fn run(args: CaArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CaCommand::Init {
            hsm,
            data,
            root_cn,
            issuing_cn,
            organization,
            root_algorithm,
            issuing_algorithm,
            root_validity_days,
            issuing_validity_days,
            path_len,
            root_path_len,
            root_key_label,
            issuing_key_label,
        } => {
            let params = CaInitParams {
                root_common_name: root_cn,
                issuing_common_name: issuing_cn,
                organization,
                root_key_spec: root_algorithm,
                issuing_key_spec: issuing_algorithm,
                root_validity_days,
                issuing_validity_days,
                root_path_len,
                issuing_path_len: path_len,
                root_key_label,
                issuing_key_label,
            };
            // Refuse before touching the HSM when a CA is already there.
            ca::ceremony::ensure_no_ca(&data.data_dir)?;
            let hsm = open_hsm(&hsm.hsm_config)?;
            let made = ca::init_ca(
                &hsm,
                &data.data_dir,
                &params,
                time::OffsetDateTime::now_utc(),
            )?;
            println!("CA created in {}", data.data_dir.display());
            print_chain(&made.root_der, &made.issuing_der, &made.record)?;
            // The audit checkpoint key (`tessera serve` signs checkpoints with it by default),
            // its public half beside the chain for `tessera audit verify`.
            let (key, _) = crate::audit::find_or_make_checkpoint_key(&hsm)?;
            let pem = crate::audit::public_key_pem(key.public_key_der())
                .map_err(|e| anyhow::anyhow!("the checkpoint key's public key is {e}"))?;
            let pem_path = data.data_dir.join(crate::audit::CHECKPOINT_PUBLIC_KEY_FILE);
            std::fs::write(&pem_path, pem)
                .with_context(|| format!("cannot write {}", pem_path.display()))?;
            println!("audit checkpoint key");
            println!("  key:        {}", key.uri());
            println!("  public key: {}", pem_path.display());
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::InitOperators {
            hsm,
            data,
            common_name,
            organization,
            algorithm,
            validity_days,
            key_label,
        } => {
            let hsm = open_hsm(&hsm.hsm_config)?;
            let made = ca::init_operator_ca(
                &hsm,
                &data.data_dir,
                &ca::OperatorCaParams {
                    common_name,
                    organization,
                    key_spec: algorithm,
                    validity_days,
                    key_label,
                },
                time::OffsetDateTime::now_utc(),
            )?;
            let summary = summarize_certificate(&made.certificate_der)?;
            println!(
                "operator CA created in {}: {} (serial {}, valid until {}), key {}",
                data.data_dir.display(),
                summary.subject,
                summary.serial_hex,
                summary.not_after,
                made.record.operator_key
            );
            println!(
                "point the server's tls.client_ca at {}",
                data.data_dir
                    .join(ca::ceremony::OPERATOR_CA_CERTIFICATE_FILE)
                    .display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::Show { data } => {
            let stored = StoredCa::load(&data.data_dir)?;
            print_chain(&stored.root_der, &stored.issuing_der, &stored.record)?;
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::SignCsr {
            hsm_config,
            data_dir,
            profile,
            csr,
            out,
            profiles_dir,
            config,
            offline_ceremony,
        } => {
            let request = SignCsrRequest {
                hsm_config,
                data_dir,
                profile,
                csr,
                out,
                profiles_dir,
            };
            match (config, offline_ceremony) {
                (Some(_), true) => anyhow::bail!(
                    "--config records the certificate and --offline-ceremony signs one recorded nowhere; pass one of them"
                ),
                (None, false) => anyhow::bail!("{SIGN_CSR_UNRECORDED}"),
                (Some(config), false) => sign_csr_recorded(&request, &config)?,
                (None, true) => sign_csr_offline(&request)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::RootCrl {
            hsm,
            data,
            days,
            out,
        } => {
            if !(1..=366).contains(&days) {
                anyhow::bail!("--days must be between 1 and 366, got {days}");
            }
            let stored = StoredCa::load(&data.data_dir)?;
            let number = ca::crl::next_root_crl_number(&data.data_dir)?;
            let hsm = open_hsm(&hsm.hsm_config)?;
            let root = ca::IssuingCa::new(
                stored.root_der.clone(),
                hsm.find_key(&stored.record.root_key)?,
            )?;
            let now = time::OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .expect("0 is a valid nanosecond");
            let der = ca::crl::sign_crl(
                &root,
                &ca::crl::CrlContents {
                    number,
                    this_update: now,
                    next_update: now + time::Duration::days(i64::from(days)),
                    entries: Vec::new(),
                },
            )?;
            let pem = der::pem::encode_string("X509 CRL", der::pem::LineEnding::LF, &der)
                .map_err(|e| anyhow::anyhow!("cannot encode the CRL as PEM: {e}"))?;
            std::fs::write(&out, pem).with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "root CRL number {number}, next update in {days} days, written to {}",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::InitOcsp {
            hsm,
            data,
            config,
            common_name,
            key_label,
            replace,
        } => {
            let key_label = match key_label {
                Some(label) => label,
                None => format!(
                    "tessera-ocsp-{}",
                    hex::encode(&SerialNumber::random()?.as_bytes()[..4])
                ),
            };
            init_ocsp(
                &hsm.hsm_config,
                &data.data_dir,
                &config,
                &common_name,
                &key_label,
                replace,
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The arguments of `ca sign-csr` both of its paths share.
struct SignCsrRequest {
    hsm_config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    profile: String,
    csr: PathBuf,
    out: Option<PathBuf>,
    profiles_dir: Option<PathBuf>,
}

impl SignCsrRequest {
    /// The CSR, read and its signature checked; refuses an existing `--out` before signing.
    fn read_csr(&self) -> anyhow::Result<ca::VerifiedCsr> {
        let csr_bytes = std::fs::read(&self.csr)
            .with_context(|| format!("cannot read the CSR {}", self.csr.display()))?;
        let request = ca::parse_and_verify_csr(&csr_bytes)?;
        // Not verified here (no attestation trust or policy on this path): refused rather than
        // issued as unattested.
        if let Some(attestation) = &request.attestation {
            anyhow::bail!(
                "the CSR carries a YubiKey attestation ({}); `ca sign-csr` does not verify attestations, so it refuses rather than certify the key as unattested; submit it with IssueFromCsr to a server with [enrollment] configured",
                attestation.form
            );
        }
        if let Some(out) = &self.out
            && out.exists()
        {
            anyhow::bail!(
                "{} already exists; refusing to overwrite it, choose another --out",
                out.display()
            );
        }
        Ok(request)
    }

    /// Writes the certificate to `--out` (with a summary line) or stdout.
    fn write(
        &self,
        der: &[u8],
        serial: &str,
        request: &ca::VerifiedCsr,
        profile: &str,
        recorded: &str,
    ) -> anyhow::Result<()> {
        let pem = ca::issue::certificate_pem(der);
        match &self.out {
            Some(path) => {
                std::fs::write(path, &pem)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                let not_after = x509_parser::parse_x509_certificate(der)
                    .ok()
                    .and_then(|(_, c)| {
                        c.validity()
                            .not_after
                            .to_datetime()
                            .format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default();
                println!(
                    "issued certificate serial {serial} for CN={} ({}, profile {profile}, valid until {not_after}{recorded}) to {}",
                    request.subject.common_name,
                    request.public_key.description,
                    path.display()
                );
            }
            None => print!("{pem}"),
        }
        Ok(())
    }
}

/// `ca sign-csr` takes the subject from the CSR and binds the certificate to nobody, so only a
/// profile with subject_from_csr = true is used, within its allowed names.
fn check_profile_takes_csr_subject(
    profile: &ca::Profile,
    subject: &ca::SubjectParams,
) -> anyhow::Result<()> {
    if !profile.allow_unattested_keys {
        return Err(ca::CaError::ProfileRequiresAttestation {
            profile: profile.name.clone(),
        }
        .into());
    }
    if !profile.subject_from_csr {
        anyhow::bail!(
            "profile {} certifies people (subject_from_csr = false); ca sign-csr binds the certificate to nobody with the CSR's names, so it needs a profile with subject_from_csr = true, such as service-client. Issue a person's certificate through the server (IssueFromCsr with person_external_id)",
            profile.name
        );
    }
    profile.check_allowed_names(subject)?;
    Ok(())
}

/// `ca sign-csr --offline-ceremony`: signs with the CA in `--data-dir`, records nothing.
fn sign_csr_offline(r: &SignCsrRequest) -> anyhow::Result<()> {
    let hsm_config = r
        .hsm_config
        .as_ref()
        .context("--hsm-config (or TESSERA_HSM_CONFIG) is required with --offline-ceremony")?;
    let data_dir = r
        .data_dir
        .as_ref()
        .context("--data-dir (or TESSERA_DATA_DIR) is required with --offline-ceremony")?;
    let profiles = match &r.profiles_dir {
        Some(dir) => ProfileSet::load_dir(dir)?,
        None => ProfileSet::built_in(),
    };
    let profile = profiles.get(&r.profile)?;
    let request = r.read_csr()?;
    check_profile_takes_csr_subject(profile, &request.subject)?;
    let stored = StoredCa::load(data_dir)?;
    let hsm = open_hsm(hsm_config)?;
    let issuing = stored.issuing_ca(&hsm)?;
    let serial = SerialNumber::random()?;
    let issued = issuing.issue(&IssuanceRequest {
        subject: &request.subject,
        public_key_der: &request.public_key_der,
        profile,
        serial: &serial,
        provenance: KeyProvenance::Unattested,
        now: time::OffsetDateTime::now_utc(),
    })?;
    r.write(
        &issued.der,
        &issued.serial.to_string(),
        &request,
        &profile.name,
        "",
    )
}

/// Whether `given` (when given) names the same file or directory as the server's `configured`.
fn same_as_configured(
    option: &str,
    given: Option<&Path>,
    configured: Option<&Path>,
    config: &Path,
) -> anyhow::Result<()> {
    let Some(given) = given else {
        return Ok(());
    };
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if configured.map(canonical) != Some(canonical(given)) {
        anyhow::bail!(
            "{option} {} is not the server's: with --config the certificate is issued by the CA of {}'s [ca] section ({}); leave {option} out",
            given.display(),
            config.display(),
            configured.map_or_else(
                || "built-in profiles".to_string(),
                |p| p.display().to_string()
            )
        );
    }
    Ok(())
}

/// `ca sign-csr --config`: the server's CA issues through `lifecycle::issue_certificate`
/// (reserve → HSM signs → record, each audited with "tessera ca sign-csr" as actor), after the
/// same checks as IssueFromCsr without a person (`lifecycle::check_csr_names`).
fn sign_csr_recorded(r: &SignCsrRequest, config_path: &Path) -> anyhow::Result<()> {
    use crate::audit::Actor;
    use crate::lifecycle::{IssueParams, check_csr_names, issue_certificate};
    use std::sync::Arc;

    let config = crate::server::ServerConfig::load(config_path)?;
    let Some(ca_config) = &config.ca else {
        anyhow::bail!(
            "{} has no [ca] section: that server issues nothing and publishes no CRL, so it cannot record this certificate; configure its CA (docs/operations.md)",
            config_path.display()
        );
    };
    same_as_configured(
        "--hsm-config",
        r.hsm_config.as_deref(),
        Some(&ca_config.hsm_config),
        config_path,
    )?;
    same_as_configured(
        "--data-dir",
        r.data_dir.as_deref(),
        Some(&ca_config.data_dir),
        config_path,
    )?;
    same_as_configured(
        "--profiles-dir",
        r.profiles_dir.as_deref(),
        ca_config.profiles_dir.as_deref(),
        config_path,
    )?;
    let profiles = match &ca_config.profiles_dir {
        Some(dir) => ProfileSet::load_dir(dir)?,
        None => ProfileSet::built_in(),
    };
    let profile = profiles.get(&r.profile)?.clone();
    let request = r.read_csr()?;
    check_profile_takes_csr_subject(&profile, &request.subject)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let row = runtime.block_on(async {
        let store = crate::store::Store::open(&config.database.url).await?;
        let result = async {
            check_csr_names(&store, &profile, &request.subject, None).await?;
            let online = Arc::new(ca::OnlineCa::open(
                &ca_config.hsm_config,
                &ca_config.data_dir,
                ca_config.profiles_dir.as_deref(),
            )?);
            let request_id = format!(
                "ca-sign-csr-{}",
                hex::encode(SerialNumber::random()?.as_bytes())
            );
            let row = issue_certificate(
                &store,
                &online,
                IssueParams {
                    subject: request.subject.clone(),
                    public_key_der: request.public_key_der.clone(),
                    profile: profile.name.clone(),
                    provenance: KeyProvenance::Unattested,
                    person_id: None,
                    token_id: None,
                    enrollment: None,
                },
                &Actor {
                    name: SIGN_CSR_ACTOR.into(),
                    role: "admin".into(),
                },
                &request_id,
            )
            .await?;
            anyhow::Ok(row)
        }
        .await;
        store.close().await;
        result
    })?;
    let der = row
        .der
        .context("the store returned the certificate without its DER")?;
    r.write(
        &der,
        &row.serial,
        &request,
        &profile.name,
        ", recorded in the server's database",
    )
}

/// The audit actor of certificates issued by `ca sign-csr --config`.
pub const SIGN_CSR_ACTOR: &str = "tessera ca sign-csr";

const OCSP_PROFILE: &str = include_str!("../../profiles/reserved/ocsp-responder.toml");
const OCSP_PROFILE_NAME: &str = crate::ca::profile::OCSP_RESPONDER_PROFILE;

/// `ca init-ocsp`: key in the HSM, certificate through `lifecycle::issue_certificate` (so the
/// store and the audit log know it), then ocsp.pem and ocsp.toml (last: its presence means a
/// complete responder). The key is destroyed again if anything before the files fails.
fn init_ocsp(
    hsm_config: &Path,
    data_dir: &Path,
    config: &Path,
    common_name: &str,
    key_label: &str,
    replace: bool,
) -> anyhow::Result<()> {
    use crate::audit::Actor;
    use crate::ca::ocsp::{OCSP_CERTIFICATE_FILE, OCSP_RECORD_FILE, OcspRecord, OcspResponder};
    use crate::lifecycle::{IssueParams, issue_certificate};
    use std::sync::Arc;

    if common_name.trim().is_empty() || common_name.chars().any(char::is_control) {
        anyhow::bail!("--common-name must be a non-empty printable name");
    }
    let record_path = data_dir.join(OCSP_RECORD_FILE);
    let cert_path = data_dir.join(OCSP_CERTIFICATE_FILE);
    if !replace && (record_path.exists() || cert_path.exists()) {
        anyhow::bail!(
            "an OCSP responder already exists in {}; pass --replace to make a new one",
            data_dir.display()
        );
    }
    let config = crate::server::ServerConfig::load(config)?;
    let mut online = ca::OnlineCa::open(hsm_config, data_dir, None)?;
    online.profiles = ProfileSet::from_profiles(vec![ca::Profile::from_toml(
        OCSP_PROFILE_NAME,
        OCSP_PROFILE,
        "built-in profile ocsp-responder",
    )?]);
    let online = Arc::new(online);
    let key = online.hsm.generate_key_pair(key_label, KeySpec::EcP256)?;
    let result = (|| -> anyhow::Result<(String, Vec<u8>)> {
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        let row = runtime.block_on(async {
            let store = crate::store::Store::open(&config.database.url).await?;
            let row = issue_certificate(
                &store,
                &online,
                IssueParams {
                    subject: ca::SubjectParams::new(common_name),
                    public_key_der: key.public_key_der().to_vec(),
                    profile: OCSP_PROFILE_NAME.into(),
                    provenance: KeyProvenance::Unattested,
                    person_id: None,
                    token_id: None,
                    enrollment: None,
                },
                &Actor {
                    name: "tessera ca init-ocsp".into(),
                    role: "admin".into(),
                },
                &format!(
                    "ca-init-ocsp-{}",
                    hex::encode(SerialNumber::random()?.as_bytes())
                ),
            )
            .await?;
            store.close().await;
            anyhow::Ok(row)
        })?;
        let der = row
            .der
            .context("the store returned the certificate without its DER")?;
        // Proves the key, the certificate and the issuing CA fit together before writing.
        OcspResponder::new(key.clone(), &der, &online.stored.issuing_der)?;
        Ok((row.serial, der))
    })();
    let (serial, der) = match result {
        Ok(r) => r,
        Err(e) => {
            if let Err(destroy) = online.hsm.destroy_key_pair(&key) {
                tracing::error!(key = %key.uri(), error = %destroy, "init-ocsp clean-up: could not destroy key");
            }
            return Err(e);
        }
    };
    let record = OcspRecord {
        key: key.uri(),
        serial: serial.clone(),
    };
    let record_toml = format!(
        "# Written by `tessera ca init-ocsp`. The private key never leaves the HSM; this RFC 7512 URI names it.\n{}",
        toml::to_string(&record)?
    );
    write_replacing(&cert_path, ca::issue::certificate_pem(&der).as_bytes())?;
    write_replacing(&record_path, record_toml.as_bytes())?;
    println!(
        "OCSP responder certificate serial {serial} written to {}; key {}",
        cert_path.display(),
        key.uri()
    );
    Ok(())
}

/// Writes `path` through a temporary file and a rename, so a reader never sees half a file.
fn write_replacing(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn print_chain(root_der: &[u8], issuing_der: &[u8], record: &ca::CaRecord) -> anyhow::Result<()> {
    for (role, der, uri) in [
        ("root", root_der, &record.root_key),
        ("issuing", issuing_der, &record.issuing_key),
    ] {
        let s = summarize_certificate(der)?;
        println!("{role} CA");
        println!("  subject:    {}", s.subject);
        println!("  issuer:     {}", s.issuer);
        println!("  serial:     {}", s.serial_hex);
        println!("  not before: {}", s.not_before);
        println!("  not after:  {}", s.not_after);
        println!("  signature:  {}", s.signature_algorithm);
        println!("  key:        {uri}");
    }
    Ok(())
}

/// Why `ca sign-csr` refuses without `--config` or `--offline-ceremony`.
const SIGN_CSR_UNRECORDED: &str = "ca sign-csr without --config keeps no record: the certificate \
would be in no database, no audit log and never on a CRL. Pass --config with the server's \
configuration to issue it through the server's database (recorded, audited, revocable), or \
--offline-ceremony to sign an unrecorded certificate on purpose";
