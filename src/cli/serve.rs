//! `tessera serve --config FILE`: the gRPC server until SIGINT or SIGTERM.
use crate::server::{BoundServer, ServerConfig};
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The server configuration file (TOML; see docs/operations.md).
    #[arg(long, env = "TESSERA_CONFIG")]
    pub config: PathBuf,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = ServerConfig::load(&args.config)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server = BoundServer::bind(&config).await?;
        println!("tessera: gRPC listening on {}", server.local_addr());
        if let Some(http) = server.http_addr() {
            println!("tessera: HTTP listening on {http}");
        }
        if let Some(metrics) = server.metrics_addr() {
            println!("tessera: metrics listening on {metrics}");
        }
        server
            .run(shutdown_signal())
            .await
            .context("gRPC server failed")?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
