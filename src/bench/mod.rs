//! `tessera bench`: how fast the HSM signs and how fast Tessera issues, measured in one run
//! against one token. [`signing`] compares raw `C_Sign` with complete certificate issuance;
//! [`grpc`] compares raw signing with `IssueFromCsr` through the real server. The CLI
//! (`cli::bench`) only reads the flags and picks one. See docs/benchmarks.md.
use crate::hsm::{Hsm, HsmKey, KeySpec};
use std::time::{Duration, Instant};

pub mod grpc;
pub mod scale;
pub mod signing;

/// Most operations per thread and measurement.
pub const MAX_COUNT: u32 = 100_000;

/// One line of the table.
pub struct Measurement {
    pub operation: &'static str,
    pub threads: usize,
    pub operations: u64,
    pub elapsed: Duration,
}

impl Measurement {
    pub fn per_second(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `op` `count` times on each of `threads` threads at once; returns the wall time.
pub fn measure<F>(
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
pub struct BenchKeys {
    pub hsm: Hsm,
    pub keys: Vec<HsmKey>,
}

impl BenchKeys {
    pub fn generate(&mut self, label: String, spec: KeySpec) -> anyhow::Result<HsmKey> {
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

/// The median run of one measurement (by rate).
pub fn median(mut runs: Vec<Measurement>) -> Measurement {
    runs.sort_by(|a, b| a.per_second().total_cmp(&b.per_second()));
    runs.swap_remove(runs.len() / 2)
}
