//! `tessera admin issue-client-cert`: a client certificate for the gRPC API, from Tessera's CA,
//! with the caller's role bound as a `tessera:role:<role>` URI SAN (see docs/api.md).
use crate::api::{Role, ServerConfig};
use crate::audit::{self, Actor, Change};
use crate::ca::issue::certificate_pem;
use crate::ca::{IssuanceRequest, KeyProvenance, Profile, SerialNumber, StoredCa, SubjectParams};
use crate::hsm::{Hsm, HsmConfig};
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
        /// Directory of the CA's public files (ca.toml, root.pem, issuing.pem), as made by
        /// `tessera ca init`.
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
    let profile = Profile::from_toml(
        "operator-client",
        OPERATOR_PROFILE,
        "built-in profile operator-client",
    )?;
    let stored_ca = StoredCa::load(&data_dir)?;
    let key = rcgen::KeyPair::generate().context("cannot generate the client key")?;
    let spki_der = rcgen::PublicKeyData::subject_public_key_info(&key);
    let role_uri = role.uri();
    let mut subject = SubjectParams::new(name.as_str());
    subject.uris.push(role_uri.clone());
    let serial = SerialNumber::random()?;
    let serial_hex = hex::encode(serial.as_bytes());
    let request = IssuanceRequest {
        subject: &subject,
        public_key_der: &spki_der,
        profile: &profile,
        serial: &serial,
        provenance: KeyProvenance::Unattested,
    };
    let hsm = Hsm::open(&HsmConfig::load(&hsm_config)?)?;
    let ca = stored_ca.issuing_ca(&hsm)?;
    let actor = Actor {
        name: "tessera admin".into(),
        role: Role::Admin.as_str().into(),
    };
    let request_id = format!("admin-issue-client-cert-{serial_hex}");
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let store = runtime.block_on(Store::open(&config.database.url))?;

    // 1. Reserve the serial and record the exact tbsCertificate; the HSM signs only after this
    //    commits, so no signed certificate exists that the store does not know.
    let reserve = |tbs: &[u8]| {
        runtime.block_on(async {
            let (not_before, not_after) = validity_of(tbs)?;
            let mut tx = store.begin_write().await?;
            tx.reserve_certificate(&NewCertificate {
                serial: serial_hex.clone(),
                person_id: None,
                token_id: None,
                profile: profile.name.clone(),
                tbs: tbs.to_vec(),
                not_before,
                not_after,
            })
            .await?;
            audit::record(
                &mut tx,
                &actor,
                Change {
                    action: "certificate.reserve",
                    subject: format!("certificate:{serial_hex}"),
                    before: None,
                    after: Some(serde_json::json!({
                        "subject_cn": name,
                        "role_uri": role_uri,
                        "profile": profile.name,
                        "tbs_sha256": hex::encode(sha2::Sha256::digest(tbs)),
                    })),
                    request_id: &request_id,
                },
            )
            .await?;
            tx.commit().await?;
            anyhow::Ok(())
        })
    };
    // 2. Sign in the HSM; 3. store the signed certificate.
    let issued = ca.issue_recorded(&request, |_, tbs| {
        reserve(tbs).map_err(|e| format!("{e:#}"))
    })?;
    let sha256 = hex::encode(sha2::Sha256::digest(&issued.der));
    runtime.block_on(async {
        let mut tx = store.begin_write().await?;
        tx.record_issued_certificate(&serial_hex, &issued.der, &sha256)
            .await?;
        audit::record(
            &mut tx,
            &actor,
            Change {
                action: "certificate.issue",
                subject: format!("certificate:{serial_hex}"),
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
        issued.to_pem(),
        certificate_pem(&stored_ca.issuing_der)
    );
    write_new(&out_cert, chain.as_bytes(), 0o644)?;
    println!(
        "issued serial {serial_hex} for role {} to {}",
        role.as_str(),
        out_cert.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// notBefore and notAfter of a DER tbsCertificate, RFC 3339.
fn validity_of(tbs: &[u8]) -> anyhow::Result<(String, String)> {
    use x509_parser::prelude::FromDer;
    let (_, tbs) = x509_parser::certificate::TbsCertificate::from_der(tbs)
        .map_err(|e| anyhow::anyhow!("the CA produced an unreadable tbsCertificate: {e}"))?;
    let rfc3339 = |t: x509_parser::time::ASN1Time| {
        t.to_datetime()
            .format(&time::format_description::well_known::Rfc3339)
            .context("validity time out of range")
    };
    Ok((
        rfc3339(tbs.validity.not_before)?,
        rfc3339(tbs.validity.not_after)?,
    ))
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
