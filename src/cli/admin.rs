//! `tessera admin issue-client-cert`: a client certificate for the gRPC API, from Tessera's CA,
//! with the caller's role bound as a `tessera:role:<role>` URI SAN (see docs/api.md).
use crate::api::{Role, ServerConfig};
use crate::audit::{self, Actor, Change};
use crate::ca::{
    CertificateAuthority, CertificateProfile, DistinguishedName, DnType, IssuanceRequest, SanType,
};
use crate::hsm::Hsm;
use crate::store::{NewCertificate, Store};
use anyhow::Context;
use sha2::Digest;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(clap::Subcommand)]
pub enum AdminCommand {
    /// Issue a client certificate with a role; the key is generated into a file (P-256, PKCS#8).
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
        /// Data directory holding the CA (DATA/ca).
        #[arg(long, env = "TESSERA_DATA_DIR")]
        data_dir: PathBuf,
        /// Where to write the certificate chain (PEM: the certificate, then the issuing CA).
        #[arg(long)]
        out_cert: PathBuf,
        /// Where to write the private key (PEM, mode 0600). Must not exist.
        #[arg(long)]
        out_key: PathBuf,
    },
}

const OPERATOR_PROFILE: &str = include_str!("../../profiles/operator-client.toml");

pub fn run(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let AdminCommand::IssueClientCert {
        role,
        name,
        config,
        hsm_config,
        data_dir,
        out_cert,
        out_key,
    } = args.command;
    let role = Role::parse(&role).with_context(|| {
        format!("unknown role {role:?}: use one of hr, helpdesk, auditor, admin, relying-party")
    })?;
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        anyhow::bail!("--name must be a non-empty printable name");
    }
    for p in [&out_cert, &out_key] {
        if p.exists() {
            anyhow::bail!(
                "{} already exists; choose another path or remove it first",
                p.display()
            );
        }
    }
    let config = ServerConfig::load(&config)?;
    let profile = CertificateProfile::parse("operator-client", OPERATOR_PROFILE)?;
    let key = rcgen::KeyPair::generate().context("cannot generate the client key")?;
    let spki_der = rcgen::PublicKeyData::subject_public_key_info(&key);
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, name.as_str());
    let role_uri = role.uri();
    let request = IssuanceRequest {
        spki_der: spki_der.clone(),
        subject,
        subject_alt_names: vec![SanType::URI(
            role_uri.as_str().try_into().context("role URI")?,
        )],
    };
    let hsm = Hsm::open_config_file(&hsm_config)?;
    let ca = CertificateAuthority::load(&hsm, &data_dir)?;
    let prepared = ca.prepare(&request, &profile)?;
    let serial = hex::encode(&prepared.serial);
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let actor = Actor {
        name: "tessera admin".into(),
        role: Role::Admin.as_str().into(),
    };
    let request_id = format!("admin-issue-client-cert-{serial}");
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let store = runtime.block_on(Store::open(&config.database.url))?;

    // 1. Reserve the serial and record what is about to be signed.
    runtime.block_on(async {
        let mut tx = store.begin_write().await?;
        let tbs = serde_json::json!({
            "subject_cn": name, "role_uri": role_uri, "spki": hex::encode(&spki_der), "profile": profile.name,
        });
        tx.reserve_certificate(&NewCertificate {
            serial: serial.clone(),
            person_id: None,
            token_id: None,
            profile: profile.name.clone(),
            tbs: tbs.to_string().into_bytes(),
            not_before: rfc3339(prepared.not_before),
            not_after: rfc3339(prepared.not_after),
        })
        .await?;
        audit::record(
            &mut tx,
            &actor,
            Change {
                action: "certificate.reserve",
                subject: format!("certificate:{serial}"),
                before: None,
                after: Some(tbs),
                request_id: &request_id,
            },
        )
        .await?;
        tx.commit().await?;
        anyhow::Ok(())
    })?;
    // 2. Sign in the HSM; 3. store the signed certificate.
    let issued = ca.sign(&prepared)?;
    let sha256 = hex::encode(sha2::Sha256::digest(&issued.der));
    runtime.block_on(async {
        let mut tx = store.begin_write().await?;
        tx.record_issued_certificate(&serial, &issued.der, &sha256).await?;
        audit::record(
            &mut tx,
            &actor,
            Change {
                action: "certificate.issue",
                subject: format!("certificate:{serial}"),
                before: None,
                after: Some(serde_json::json!({ "status": "good", "sha256": sha256, "role": role.as_str() })),
                request_id: &request_id,
            },
        )
        .await?;
        tx.commit().await?;
        store.close().await;
        anyhow::Ok(())
    })?;
    write_new(
        &out_key,
        zeroize::Zeroizing::new(key.serialize_pem()).as_bytes(),
        0o600,
    )?;
    let chain = format!(
        "{}{}",
        issued.pem(),
        crate::ca::pem_encode("CERTIFICATE", &ca.issuing_der)
    );
    write_new(&out_cert, chain.as_bytes(), 0o644)?;
    println!(
        "issued serial {serial} for role {} to {}",
        role.as_str(),
        out_cert.display()
    );
    Ok(ExitCode::SUCCESS)
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
