//! `tessera bench`: in one run against one token, the raw `C_Sign` rate (ECDSA P-256 and
//! RSA-2048, 1 and 2 threads) and the rate of complete certificate issuance (random serial,
//! profile, rcgen encoding, one HSM signature; P-256 issuing key, 1 and 2 threads), then the
//! ratio issuance / raw P-256 signing per thread count. Bounded: at most 100 000 operations per
//! thread and measurement. The keys it makes are destroyed when it ends.
use super::{BenchKeys, Measurement, measure, median};
use crate::ca::{
    IssuanceRequest, IssuingCa, KeyProvenance, ProfileSet, SerialNumber, SubjectParams,
    ceremony::self_signed_ca_certificate,
};
use crate::hsm::{Hsm, HsmConfig, KeySpec, SignatureScheme};
use anyhow::Context;
use std::path::PathBuf;

const THREAD_COUNTS: [usize; 2] = [1, 2];

/// What to measure.
pub struct SigningBench {
    /// HSM configuration file; use a throwaway token.
    pub hsm_config: PathBuf,
    /// Operations per thread for ECDSA P-256 signing and for issuance.
    pub count: u32,
    /// Operations per thread for RSA-2048 signing.
    pub rsa_count: u32,
    /// Interleaved rounds; each line reports the median round.
    pub rounds: u32,
}

pub fn run(args: &SigningBench) -> anyhow::Result<()> {
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
    let mut table: Vec<Measurement> = rounds.into_iter().map(median).collect();
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
    Ok(())
}
