//! `tessera audit verify`: recompute the audit hash chain, check the signed checkpoints (those
//! in the database and, with `--checkpoints`, those in the append-only checkpoint file) and
//! replay the log against the state tables. `init-key` and `checkpoint`: the checkpoint key and
//! a checkpoint signed by hand.
use crate::audit::{self, CheckpointFile, EcdsaP256Verifier, HsmCheckpointSigner};
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
    /// Exit 0 when the chain is intact and the log explains every row of people, tokens and
    /// certificates; exit 2 naming the first bad event, or every unexplained row, otherwise.
    Verify {
        /// The server configuration file; its database is checked.
        #[arg(long, env = "TESSERA_CONFIG")]
        config: PathBuf,
        /// A checkpoint file (the server's `[audit] checkpoint_file`, or a monitor's copy of
        /// `GET /audit/checkpoints`): the chain must match every checkpoint in it, and the
        /// database must still hold each.
        #[arg(long, value_name = "FILE")]
        checkpoints: Option<PathBuf>,
        /// PEM public key (P-256) of the checkpoint signing key; default: `audit-checkpoint.pem`
        /// in the `[ca]` data directory (written by `tessera ca init`) when `[audit]` names no
        /// other HSM or key. Without either, checkpoint signatures are not checked (their head
        /// hashes still are).
        #[arg(long)]
        checkpoint_public_key: Option<PathBuf>,
        /// Key id the checkpoints must name (the key's pkcs11: URI); any, when not given.
        #[arg(long, requires = "checkpoint_public_key")]
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
    /// Sign a checkpoint over the current head of the chain with the HSM key; it is also
    /// appended to the configuration's checkpoint file (unless `[audit] checkpoints = false`).
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
            let hsm = open_hsm(&hsm_config)?;
            let key = hsm.generate_key_pair(&label, KeySpec::EcP256)?;
            let pem = audit::public_key_pem(key.public_key_der())
                .map_err(|e| anyhow::anyhow!("the HSM returned a public key that is {e}"))?;
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
            let file = match &config.audit {
                Some(a) if a.checkpoints => match &a.checkpoint_file {
                    Some(path) => Some(CheckpointFile::open(path)?),
                    None => None,
                },
                _ => None,
            };
            runtime.block_on(async {
                let store = Store::open(&config.database.url).await?;
                let made = audit::checkpoint_to_file(&store, &signer, file.as_ref()).await?;
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
            checkpoints,
            checkpoint_public_key,
            checkpoint_key_id,
        } => {
            let config = ServerConfig::load(&config)?;
            // The PEM `ca init` wrote is the default key's: the one the server signs with when
            // `[audit]` names no other HSM or key.
            let default_key_in_use = config
                .audit
                .as_ref()
                .is_none_or(|a| a.hsm_config.is_none() && a.checkpoint_key.is_none());
            let default_key = config
                .ca
                .as_ref()
                .filter(|_| default_key_in_use)
                .map(|c| c.data_dir.join(audit::CHECKPOINT_PUBLIC_KEY_FILE))
                .filter(|p| p.exists());
            let verifier = match checkpoint_public_key.or(default_key) {
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
            let file_checkpoints = match &checkpoints {
                Some(path) => {
                    if verifier.is_none() {
                        anyhow::bail!(
                            "cannot check the signatures of the checkpoints in {}: no checkpoint public key \
                             (give --checkpoint-public-key; {} in the [ca] data directory is used when [audit] names no hsm_config or checkpoint_key)",
                            path.display(),
                            audit::CHECKPOINT_PUBLIC_KEY_FILE
                        );
                    }
                    audit::read_checkpoint_file(path)?
                }
                None => Vec::new(),
            };
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                let store = Store::open(&config.database.url).await?;
                let report = audit::verify_with_file(
                    &store,
                    verifier.as_ref().map(|v| v as _),
                    &file_checkpoints,
                )
                .await?;
                if let Some(bad) = report.first_bad {
                    store.close().await;
                    println!(
                        "audit chain broken at event {}: {}",
                        bad.sequence, bad.problem
                    );
                    return anyhow::Ok(ExitCode::from(2));
                }
                let replayed = audit::replay(&store).await?;
                store.close().await;
                let in_file = match &checkpoints {
                    Some(path) => format!(
                        ", {} in {}",
                        report.file_checkpoints,
                        path.file_name().unwrap_or_default().to_string_lossy()
                    ),
                    None => String::new(),
                };
                println!(
                    "audit chain intact: {} events, {} checkpoints{in_file}{}",
                    report.events,
                    report.checkpoints,
                    if verifier.is_some() {
                        " (signatures checked)"
                    } else {
                        " (signatures not checked)"
                    }
                );
                if replayed.unexplained.is_empty() {
                    println!(
                        "state tables explained by the audit log: {} people, {} tokens, {} certificates",
                        replayed.people, replayed.tokens, replayed.certificates
                    );
                    anyhow::Ok(ExitCode::SUCCESS)
                } else {
                    for row in &replayed.unexplained {
                        println!("row not explained by the audit log: {row}");
                    }
                    anyhow::Ok(ExitCode::from(2))
                }
            })
        }
    }
}
