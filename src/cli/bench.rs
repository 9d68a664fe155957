//! `tessera bench`: in one run against one token, the raw `C_Sign` rate (ECDSA P-256 and
//! RSA-2048, 1 and 2 threads) and the rate of complete certificate issuance (random serial,
//! profile, rcgen encoding, one HSM signature; P-256 issuing key, 1 and 2 threads), then the
//! ratio issuance / raw P-256 signing per thread count. Bounded: at most 100 000 operations per
//! thread and measurement. The keys it makes are destroyed when it ends.
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::ca::{
    IssuanceRequest, IssuingCa, KeyProvenance, ProfileSet, SerialNumber, SubjectParams,
    ceremony::self_signed_ca_certificate,
};
use crate::hsm::{Hsm, HsmConfig, HsmKey, KeySpec, SignatureScheme};

const MAX_COUNT: u32 = 100_000;
const THREAD_COUNTS: [usize; 2] = [1, 2];

#[derive(clap::Args)]
pub struct BenchArgs {
    /// HSM configuration file (see hsm-config/softhsm2.toml); use a throwaway token.
    #[arg(long, env = "TESSERA_HSM_CONFIG", value_name = "FILE")]
    pub(super) hsm_config: PathBuf,
    /// Operations per thread for ECDSA P-256 signing and for issuance.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=MAX_COUNT as i64))]
    pub(super) count: u32,
    /// Operations per thread for RSA-2048 signing (slower).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=MAX_COUNT as i64))]
    rsa_count: u32,
    /// Rounds; the measurements are interleaved round by round and each line reports the
    /// median round, so load from other processes hits all of them alike.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=21))]
    pub(super) rounds: u32,
    /// Measure issuance through the gRPC API instead (IssueFromCsr against an in-process
    /// server over TLS 1.3 on loopback) next to raw P-256 signing; see docs/benchmarks.md.
    #[arg(long, requires_all = ["data_dir", "database_url"])]
    grpc: bool,
    /// With --grpc: the CA's data directory (`tessera ca init` on the same token).
    #[arg(long, value_name = "DIR")]
    pub(super) data_dir: Option<PathBuf>,
    /// With --grpc: a throwaway database (`sqlite:PATH` or `postgres://…`); the benchmark's
    /// certificates are recorded in it.
    #[arg(long, value_name = "URL")]
    pub(super) database_url: Option<String>,
    /// With --grpc: IssueFromCsr calls per client and measurement.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=MAX_COUNT as i64))]
    pub(super) grpc_count: u32,
}

/// One line of the table.
pub(super) struct Measurement {
    pub(super) operation: &'static str,
    pub(super) threads: usize,
    pub(super) operations: u64,
    pub(super) elapsed: Duration,
}

impl Measurement {
    pub(super) fn per_second(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `op` `count` times on each of `threads` threads at once; returns the wall time.
pub(super) fn measure<F>(
    operation: &'static str,
    threads: usize,
    count: u32,
    op: F,
) -> anyhow::Result<Measurement>
where
    F: Fn(u32) -> anyhow::Result<()> + Sync,
{
    let start = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    for i in 0..count {
                        op(i)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| anyhow::anyhow!("a bench thread panicked"))?
        })
    })?;
    Ok(Measurement {
        operation,
        threads,
        operations: u64::from(count) * threads as u64,
        elapsed: start.elapsed(),
    })
}

/// Keys made for the run; destroyed on drop, also when a measurement fails.
pub(super) struct BenchKeys {
    pub(super) hsm: Hsm,
    pub(super) keys: Vec<HsmKey>,
}

impl BenchKeys {
    pub(super) fn generate(&mut self, label: String, spec: KeySpec) -> anyhow::Result<HsmKey> {
        let key = self.hsm.generate_key_pair(&label, spec)?;
        self.keys.push(key.clone());
        Ok(key)
    }
}

impl Drop for BenchKeys {
    fn drop(&mut self) {
        for key in &self.keys {
            if let Err(e) = self.hsm.destroy_key_pair(key) {
                eprintln!("bench: could not destroy {}: {e}", key.uri());
            }
        }
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.grpc {
        return super::bench_grpc::run(&args);
    }
    let config = HsmConfig::load(&args.hsm_config)?;
    let hsm = Hsm::open(&config)?;
    let tag = SerialNumber::random()?.to_hex()[..8].to_string();
    let mut keys = BenchKeys {
        hsm: hsm.clone(),
        keys: Vec::new(),
    };
    let p256 = keys.generate(format!("tessera-bench-p256-{tag}"), KeySpec::EcP256)?;
    let rsa = keys.generate(format!("tessera-bench-rsa2048-{tag}"), KeySpec::Rsa2048)?;
    let ca_key = keys.generate(format!("tessera-bench-ca-p256-{tag}"), KeySpec::EcP256)?;
    let ca_der = self_signed_ca_certificate(
        &ca_key,
        "Tessera Bench CA",
        30,
        time::OffsetDateTime::now_utc(),
    )?;
    let issuing = IssuingCa::new(ca_der, ca_key)?;
    let profiles = ProfileSet::built_in();
    let profile = profiles.get("tls-client")?;
    // A to-be-signed certificate is a few hundred bytes; sign messages of that size.
    let message = vec![0x5a_u8; 400];
    let subject_key = p256.public_key_der().to_vec();

    let sign_p256 = |_| -> anyhow::Result<()> {
        p256.sign_with(SignatureScheme::EcdsaSha256, &message)?;
        Ok(())
    };
    let sign_rsa = |_| -> anyhow::Result<()> {
        rsa.sign_with(SignatureScheme::RsaPkcs1Sha256, &message)?;
        Ok(())
    };
    let issue = |i: u32| -> anyhow::Result<()> {
        let subject = SubjectParams::new(format!("bench user {i}"));
        let serial = SerialNumber::random()?;
        issuing
            .issue(&IssuanceRequest {
                subject: &subject,
                public_key_der: &subject_key,
                profile,
                serial: &serial,
                provenance: KeyProvenance::Unattested,
                now: time::OffsetDateTime::now_utc(),
            })
            .context("issuance failed")?;
        Ok(())
    };
    type Op<'a> = &'a (dyn Fn(u32) -> anyhow::Result<()> + Sync);
    let plan: Vec<(&'static str, usize, u32, Op<'_>)> = THREAD_COUNTS
        .iter()
        .flat_map(|&t| {
            [
                (
                    "C_Sign ECDSA P-256 (SHA-256)",
                    t,
                    args.count,
                    &sign_p256 as Op<'_>,
                ),
                (
                    "issue certificate (P-256 CA, tls-client)",
                    t,
                    args.count,
                    &issue as Op<'_>,
                ),
                (
                    "C_Sign RSA-2048 PKCS#1 v1.5 (SHA-256)",
                    t,
                    args.rsa_count,
                    &sign_rsa as Op<'_>,
                ),
            ]
        })
        .collect();
    let mut rounds: Vec<Vec<Measurement>> = plan.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.rounds {
        for (i, (name, threads, count, op)) in plan.iter().enumerate() {
            rounds[i].push(measure(name, *threads, *count, op)?);
        }
    }
    let mut table: Vec<Measurement> = rounds
        .into_iter()
        .map(|mut runs| {
            runs.sort_by(|a, b| a.per_second().total_cmp(&b.per_second()));
            runs.swap_remove(runs.len() / 2)
        })
        .collect();
    table.sort_by_key(|m| (m.operation, m.threads));

    println!(
        "tessera bench: token \"{}\", median of {} interleaved rounds",
        hsm.token_label(),
        args.rounds
    );
    println!(
        "{:<42} {:>7} {:>8} {:>9} {:>11}",
        "operation", "threads", "count", "seconds", "per second"
    );
    for m in &table {
        println!(
            "{:<42} {:>7} {:>8} {:>9.3} {:>11.0}",
            m.operation,
            m.threads,
            m.operations,
            m.elapsed.as_secs_f64(),
            m.per_second()
        );
    }
    for threads in THREAD_COUNTS {
        let rate = |name: &str| {
            table
                .iter()
                .find(|m| m.operation.starts_with(name) && m.threads == threads)
                .map(Measurement::per_second)
                .unwrap_or(f64::NAN)
        };
        let ratio = rate("issue certificate") / rate("C_Sign ECDSA P-256");
        println!(
            "issuance / raw P-256 signing, {threads} thread(s): {:.0}%",
            ratio * 100.0
        );
    }
    Ok(ExitCode::SUCCESS)
}
