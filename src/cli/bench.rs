//! `tessera bench` (placeholder: filled in by its issue).
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("tessera bench is not built yet")
}
