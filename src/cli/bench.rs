//! `tessera bench` (docs/benchmarks.md): reads the flags and runs `crate::bench::signing`,
//! `crate::bench::grpc` with `--grpc`, or `crate::bench::scale` with `--crl`, `--sync-people`
//! or `--offboard`.
use crate::bench::scale::{MAX_SCALE, ScaleBench};
use crate::bench::{MAX_COUNT, grpc::GrpcBench, signing::SigningBench};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// HSM configuration file (see hsm-config/softhsm2.toml); use a throwaway token.
    #[arg(long, env = "TESSERA_HSM_CONFIG", value_name = "FILE")]
    pub hsm_config: PathBuf,
    /// Operations per thread for ECDSA P-256 signing and for issuance.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=MAX_COUNT as i64))]
    pub count: u32,
    /// Operations per thread for RSA-2048 signing (slower).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=MAX_COUNT as i64))]
    pub rsa_count: u32,
    /// Rounds; the measurements are interleaved round by round and each line reports the
    /// median round, so load from other processes hits all of them alike.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=21))]
    pub rounds: u32,
    /// Measure issuance through the gRPC API instead (IssueFromCsr against an in-process
    /// server over TLS 1.3 on loopback) next to raw P-256 signing; see docs/benchmarks.md.
    #[arg(long, requires_all = ["data_dir", "database_url"])]
    pub grpc: bool,
    /// With --grpc: the CA's data directory (`tessera ca init` on the same token).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// With --grpc: a throwaway database (`sqlite:PATH` or `postgres://…`); the benchmark's
    /// certificates are recorded in it.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// With --grpc: IssueFromCsr calls per client and measurement.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=MAX_COUNT as i64))]
    pub grpc_count: u32,
    /// Fleet scale: load this many revoked certificates in bulk (placeholder rows, no HSM) and
    /// time the first and second `GET /crl` and the server's peak memory; needs --data-dir and
    /// --database-url.
    #[arg(long, value_name = "N", requires_all = ["data_dir", "database_url"], value_parser = clap::value_parser!(u32).range(1..=MAX_SCALE as i64))]
    pub crl: Option<u32>,
    /// Fleet scale: one SyncPeople of N new people, then the same N unchanged.
    #[arg(long, value_name = "N", requires_all = ["data_dir", "database_url"], value_parser = clap::value_parser!(u32).range(1..=200_000))]
    pub sync_people: Option<u32>,
    /// Fleet scale, with --sync-people: M of those people get 3 certificates each, then a
    /// SyncPeople without them offboards them; the next `GET /crl` is timed.
    #[arg(long, value_name = "M", requires = "sync_people", value_parser = clap::value_parser!(u32).range(1..=200_000))]
    pub offboard: Option<u32>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.crl.is_some() || args.sync_people.is_some() {
        let (Some(data_dir), Some(database_url)) = (args.data_dir, args.database_url) else {
            anyhow::bail!("--crl and --sync-people need --data-dir and --database-url");
        };
        crate::bench::scale::run(&ScaleBench {
            hsm_config: args.hsm_config,
            data_dir,
            database_url,
            crl: args.crl,
            sync_people: args.sync_people,
            offboard: args.offboard,
        })?;
    } else if args.grpc {
        let (Some(data_dir), Some(database_url)) = (args.data_dir, args.database_url) else {
            anyhow::bail!("--grpc needs --data-dir and --database-url");
        };
        crate::bench::grpc::run(&GrpcBench {
            hsm_config: args.hsm_config,
            data_dir,
            database_url,
            count: args.count,
            grpc_count: args.grpc_count,
            rounds: args.rounds,
        })?;
    } else {
        crate::bench::signing::run(&SigningBench {
            hsm_config: args.hsm_config,
            count: args.count,
            rsa_count: args.rsa_count,
            rounds: args.rounds,
        })?;
    }
    Ok(ExitCode::SUCCESS)
}
