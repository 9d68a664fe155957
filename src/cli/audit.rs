//! `tessera audit verify`: recompute the audit hash chain and check the signed checkpoints.
use crate::api::ServerConfig;
use crate::audit::{self, EcdsaP256Verifier};
use crate::store::Store;
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Exit 0 when the chain is intact; exit 2 naming the first bad event otherwise.
    Verify {
        /// The server configuration file; its database is checked.
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
        /// PEM public key (P-256) of the checkpoint signing key; without it checkpoint
        /// signatures are not checked (their head hashes still are).
        #[arg(long)]
        checkpoint_public_key: Option<PathBuf>,
        /// Key id the checkpoints were signed with (as recorded in them).
        #[arg(long, default_value = "audit-checkpoint")]
        checkpoint_key_id: String,
    },
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AuditCommand::Verify {
            config,
            checkpoint_public_key,
            checkpoint_key_id,
        } => {
            let config = ServerConfig::load(&config)?;
            let verifier = match checkpoint_public_key {
                Some(path) => {
                    use p256::pkcs8::DecodePublicKey;
                    let pem = std::fs::read_to_string(&path).with_context(|| {
                        format!("cannot read checkpoint public key {}", path.display())
                    })?;
                    let key =
                        p256::ecdsa::VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
                            anyhow::anyhow!(
                                "{} is not a P-256 public key in PEM: {e}",
                                path.display()
                            )
                        })?;
                    Some(EcdsaP256Verifier {
                        key_id: checkpoint_key_id,
                        key,
                    })
                }
                None => None,
            };
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                let store = Store::open(&config.database.url).await?;
                let report = audit::verify(&store, verifier.as_ref().map(|v| v as _)).await?;
                store.close().await;
                match report.first_bad {
                    None => {
                        println!(
                            "audit chain intact: {} events, {} checkpoints{}",
                            report.events,
                            report.checkpoints,
                            if verifier.is_some() {
                                " (signatures checked)"
                            } else {
                                " (signatures not checked)"
                            }
                        );
                        anyhow::Ok(ExitCode::SUCCESS)
                    }
                    Some(bad) => {
                        println!(
                            "audit chain broken at event {}: {}",
                            bad.sequence, bad.problem
                        );
                        anyhow::Ok(ExitCode::from(2))
                    }
                }
            })
        }
    }
}
