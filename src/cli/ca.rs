//! `tessera ca` (placeholder: filled in by its issue).
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CaArgs {}

pub fn run(_args: CaArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("tessera ca is not built yet")
}
