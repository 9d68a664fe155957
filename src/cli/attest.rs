//! `tessera attest` (placeholder: filled in by its issue).
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct AttestArgs {}

pub fn run(_args: AttestArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("tessera attest is not built yet")
}
