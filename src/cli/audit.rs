//! `tessera audit verify`: recompute the audit hash chain and check the signed checkpoints.
use crate::audit::{self, EcdsaP256Verifier, HsmCheckpointSigner};
use crate::hsm::{Hsm, HsmConfig, KeySpec};
use crate::server::ServerConfig;
use crate::store::Store;
use anyhow::Context;
use std::path::{Path, PathBuf};
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
        #[arg(long, requires = "checkpoint_key_id")]
        checkpoint_public_key: Option<PathBuf>,
        /// Key id the checkpoints were signed with, as recorded in them (the key's pkcs11: URI).
        #[arg(long)]
        checkpoint_key_id: Option<String>,
    },
    /// Generate the P-256 checkpoint signing key in the HSM; prints its pkcs11: URI and writes
    /// its public key (PEM) for `verify --checkpoint-public-key`.
    InitKey {
        /// The HSM configuration file (see docs/hsm.md).
        #[arg(long, env = "TESSERA_HSM_CONFIG")]
        hsm_config: PathBuf,
        #[arg(long, default_value = "tessera-audit-checkpoint")]
        label: String,
        /// Where to write the public key.
        #[arg(long)]
        public_key_out: PathBuf,
    },
    /// Sign a checkpoint over the current head of the chain with the HSM key.
    Checkpoint {
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
        #[arg(long, env = "TESSERA_HSM_CONFIG")]
        hsm_config: PathBuf,
        /// The checkpoint key's pkcs11: URI (printed by `init-key`).
        #[arg(long)]
        key: String,
    },
}

fn open_hsm(config: &Path) -> anyhow::Result<Hsm> {
    let config = HsmConfig::load(config)?;
    Ok(Hsm::open(&config)?)
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AuditCommand::InitKey {
            hsm_config,
            label,
            public_key_out,
        } => {
            use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
            let hsm = open_hsm(&hsm_config)?;
            let key = hsm.generate_key_pair(&label, KeySpec::EcP256)?;
            let pem = p256::PublicKey::from_public_key_der(key.public_key_der())
                .map_err(|e| {
                    anyhow::anyhow!("the HSM returned a public key that is not P-256: {e}")
                })?
                .to_public_key_pem(p256::pkcs8::LineEnding::LF)
                .map_err(|e| anyhow::anyhow!("cannot encode the public key: {e}"))?;
            std::fs::write(&public_key_out, pem)
                .with_context(|| format!("cannot write {}", public_key_out.display()))?;
            println!("{}", key.uri());
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Checkpoint {
            config,
            hsm_config,
            key,
        } => {
            let config = ServerConfig::load(&config)?;
            let hsm = open_hsm(&hsm_config)?;
            let signer = HsmCheckpointSigner::new(hsm.find_key(&key)?)?;
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                let store = Store::open(&config.database.url).await?;
                let made = audit::checkpoint(&store, &signer).await?;
                store.close().await;
                match made {
                    Some(c) => {
                        println!("checkpoint at event {} signed by {}", c.sequence, c.key_id)
                    }
                    None => println!("no new events since the last checkpoint"),
                }
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
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
                    let key_id = checkpoint_key_id
                        .context("--checkpoint-key-id is needed with --checkpoint-public-key")?;
                    Some(EcdsaP256Verifier { key_id, key })
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
