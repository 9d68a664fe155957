//! `tessera admin issue-client-cert`: a client certificate for the gRPC API, from the operator
//! CA (`tessera ca init-operators`), with the caller's role bound as a `tessera:role:<role>` URI
//! SAN and the operator policy OID (see docs/api.md).
use crate::api::Role;
use crate::audit::Actor;
use crate::ca::issue::certificate_pem;
use crate::ca::{KeyProvenance, OnlineCa, StoredOperatorCa, SubjectParams};
use crate::hsm::{Hsm, HsmConfig, HsmKey, KeySpec};
use crate::lifecycle::{IssueParams, issue_certificate};
use crate::server::ServerConfig;
use crate::store::Store;
use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(clap::Subcommand)]
pub enum AdminCommand {
    /// Issue a client certificate with a role; the key (P-256) is generated into a file
    /// (PKCS#8, --out-key) or inside a PKCS#11 token (--key-in-hsm-config and --key-label).
    #[command(group(clap::ArgGroup::new("key_destination").required(true).args(["out_key", "key_in_hsm_config"])))]
    IssueClientCert {
        /// hr, helpdesk, auditor, admin or relying-party.
        #[arg(long)]
        role: String,
        /// Subject common name: who holds it (recorded as the actor in the audit log).
        #[arg(long)]
        name: String,
        /// The server configuration file (its database records the certificate).
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
        #[arg(long, env = "TESSERA_HSM_CONFIG")]
        hsm_config: PathBuf,
        /// Directory of the CA's public files (ca.toml, root.pem, operator-ca.toml,
        /// operator-ca.pem), as made by `tessera ca init` and `tessera ca init-operators`.
        #[arg(long, env = "TESSERA_DATA_DIR")]
        data_dir: PathBuf,
        /// Where to write the certificate chain (PEM: the certificate, then the operator CA).
        #[arg(long)]
        out_cert: PathBuf,
        /// Where to write the private key (PEM, mode 0600). Must not exist.
        #[arg(long)]
        out_key: Option<PathBuf>,
        /// Generate the key inside the PKCS#11 token this HSM configuration names instead (the
        /// client's token, not the CA's); the key never leaves it. See docs/operations.md.
        #[arg(long, value_name = "FILE", requires = "key_label")]
        key_in_hsm_config: Option<PathBuf>,
        /// With --key-in-hsm-config: the label (CKA_LABEL) of the new key pair; must be unused.
        #[arg(long, value_name = "LABEL", requires = "key_in_hsm_config")]
        key_label: Option<String>,
    },
    /// Make the HSM AES-256 key that wraps per-token management keys and PUKs (the server's
    /// `enrollment.wrapping_key_label`). Refuses a label already in use.
    InitWrappingKey {
        #[arg(long, env = "TESSERA_HSM_CONFIG")]
        hsm_config: PathBuf,
        /// CKA_LABEL of the new key.
        #[arg(long, default_value = "tessera-wrap")]
        label: String,
    },
}

const OPERATOR_PROFILE_NAME: &str = crate::ca::profile::OPERATOR_CLIENT_PROFILE;

pub fn run(args: AdminArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AdminCommand::InitWrappingKey { hsm_config, label } => {
            init_wrapping_key(&hsm_config, &label)
        }
        command => issue_client_cert(command),
    }
}

fn init_wrapping_key(hsm_config: &Path, label: &str) -> anyhow::Result<ExitCode> {
    if label.trim().is_empty() {
        anyhow::bail!("--label must not be empty");
    }
    let hsm = crate::hsm::Hsm::open(&crate::hsm::HsmConfig::load(hsm_config)?)?;
    hsm.generate_wrapping_key(label)?;
    println!("made AES-256 wrapping key {label:?} in the HSM");
    Ok(ExitCode::SUCCESS)
}

fn issue_client_cert(command: AdminCommand) -> anyhow::Result<ExitCode> {
    let AdminCommand::IssueClientCert {
        role,
        name,
        config,
        hsm_config,
        data_dir,
        out_cert,
        out_key,
        key_in_hsm_config,
        key_label,
    } = command
    else {
        unreachable!("run() dispatches the other commands")
    };
    let role = Role::parse(&role).with_context(|| {
        format!("unknown role {role:?}: use one of hr, helpdesk, auditor, admin, relying-party")
    })?;
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        anyhow::bail!("--name must be a non-empty printable name");
    }
    for p in std::iter::once(&out_cert).chain(out_key.as_ref()) {
        if p.exists() {
            anyhow::bail!(
                "{} already exists; choose another path or remove it first",
                p.display()
            );
        }
    }
    let config = ServerConfig::load(&config)?;
    // Before any key is made: API client certificates come only from the operator CA.
    let operator_ca = StoredOperatorCa::load(&data_dir)?;
    let key = match (&key_in_hsm_config, &key_label) {
        (Some(hsm_config), Some(label)) => ClientKey::in_token(hsm_config, label)?,
        _ => ClientKey::File(Box::new(
            rcgen::KeyPair::generate().context("cannot generate the client key")?,
        )),
    };
    let mut subject = SubjectParams::new(name.as_str());
    subject.uris.push(role.uri());
    let ca = match OnlineCa::open_operators(&hsm_config, &data_dir) {
        Ok(ca) => Arc::new(ca),
        Err(e) => {
            key.discard();
            return Err(e.into());
        }
    };
    let actor = Actor {
        name: "tessera admin".into(),
        role: Role::Admin.as_str().into(),
    };
    let request_id = format!("admin-issue-client-cert-{}", random_request_id()?);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    // Reserve the serial and record the exact tbsCertificate, then sign in the HSM, then store
    // the certificate (lifecycle::issue_certificate).
    let issued = runtime.block_on(async {
        let store = Store::open(&config.database.url).await?;
        let row = issue_certificate(
            &store,
            &ca,
            IssueParams {
                subject,
                public_key_der: key.public_key_der(),
                profile: OPERATOR_PROFILE_NAME.into(),
                provenance: KeyProvenance::Unattested,
                person_id: None,
                token_id: None,
                enrollment: None,
            },
            &actor,
            &request_id,
        )
        .await?;
        store.close().await;
        anyhow::Ok(row)
    });
    let row = match issued {
        Ok(row) => row,
        Err(e) => {
            key.discard();
            return Err(e);
        }
    };
    let der = row
        .der
        .clone()
        .context("the store returned the certificate without its DER")?;
    if let (ClientKey::File(key), Some(out_key)) = (&key, &out_key) {
        write_new(
            out_key,
            zeroize::Zeroizing::new(key.serialize_pem()).as_bytes(),
            0o600,
        )?;
    }
    let chain = format!(
        "{}{}",
        certificate_pem(&der),
        certificate_pem(&operator_ca.certificate_der)
    );
    write_new(&out_cert, chain.as_bytes(), 0o644)?;
    println!(
        "issued serial {} for role {} to {}",
        row.serial,
        role.as_str(),
        out_cert.display()
    );
    if let ClientKey::Token { key, .. } = &key {
        println!("private key in the token: {}", key.uri());
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the client's private key lives.
enum ClientKey {
    File(Box<rcgen::KeyPair>),
    /// Generated in a PKCS#11 token; only its public key is read out.
    Token {
        hsm: Hsm,
        key: HsmKey,
    },
}

impl ClientKey {
    fn in_token(hsm_config: &Path, label: &str) -> anyhow::Result<ClientKey> {
        let hsm = Hsm::open(&HsmConfig::load(hsm_config)?)?;
        let key = hsm.generate_key_pair(label, KeySpec::EcP256)?;
        Ok(ClientKey::Token { hsm, key })
    }

    fn public_key_der(&self) -> Vec<u8> {
        match self {
            ClientKey::File(k) => rcgen::PublicKeyData::subject_public_key_info(k.as_ref()),
            ClientKey::Token { key, .. } => key.public_key_der().to_vec(),
        }
    }

    /// Removes a token key whose certificate could not be issued (a file key was never
    /// written).
    fn discard(&self) {
        if let ClientKey::Token { hsm, key } = self
            && let Err(e) = hsm.destroy_key_pair(key)
        {
            eprintln!(
                "warning: could not remove the unused key {}: {e}",
                key.uri()
            );
        }
    }
}

/// A random request id for the audit log (this command is not retried by request id).
fn random_request_id() -> anyhow::Result<String> {
    Ok(hex::encode(crate::ca::SerialNumber::random()?.as_bytes()))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
