//! Everything `/metrics` says, in one prometheus-client [`Registry`] owned by the composition
//! root (`server`): it registers what this process counts and hands the handles down — the
//! gRPC latency histogram ([`RpcLatency`], fed by `api`'s tower layer), the CRL and OCSP
//! counters ([`RevocationCounters`], fed by `web::revocation`) and the CA's HSM pool (read at
//! each scrape) — and `web` serves [`Metrics::encode`] with the values it reads from the
//! database at that scrape ([`DatabaseReadings`]).
//!
//! The text is OpenMetrics 1.0 (served as `application/openmetrics-text`): counters are
//! declared without their `_total` suffix on the `# TYPE` line, histogram buckets put `le`
//! first among their labels, and the exposition ends with `# EOF`. Every sample name and
//! label is the one docs/operations.md lists.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The Content-Type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the RPC latency buckets; `+Inf` is implied.
pub const RPC_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Distinct method labels kept; calls to further paths (only unknown methods can add more)
/// are counted under `method="other"`, so a client cannot grow the metrics without bound.
const MAX_METHODS: usize = 128;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

fn rpc_histogram() -> Histogram {
    Histogram::new(RPC_BUCKETS)
}

/// gRPC call latency by method path (`/tessera.v1.DirectoryService/CreatePerson`).
#[derive(Clone)]
pub struct RpcLatency {
    histograms: Family<MethodLabel, Histogram, fn() -> Histogram>,
    methods: Arc<Mutex<HashSet<String>>>,
}

impl RpcLatency {
    fn new() -> RpcLatency {
        RpcLatency {
            histograms: Family::new_with_constructor(rpc_histogram),
            methods: Arc::default(),
        }
    }

    pub fn observe(&self, method: &str, seconds: f64) {
        let method = {
            let mut methods = self.methods.lock().unwrap_or_else(|p| p.into_inner());
            if methods.contains(method) || methods.len() < MAX_METHODS {
                methods.insert(method.to_string());
                method
            } else {
                "other"
            }
        };
        self.histograms
            .get_or_create(&MethodLabel {
                method: method.to_string(),
            })
            .observe(seconds);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PurposeLabel {
    purpose: &'static str,
}

/// CRLs this process signed, OCSP answers it gave and HSM signatures it spent on OCSP.
#[derive(Clone, Default)]
pub struct RevocationCounters {
    crls_signed: Counter,
    ocsp_responses: Family<ResultLabel, Counter>,
    ocsp_signatures: Family<PurposeLabel, Counter>,
}

impl RevocationCounters {
    pub fn crl_signed(&self) {
        self.crls_signed.inc();
    }
    /// An answer signed for this request (one HSM signature, counted by
    /// [`RevocationCounters::ocsp_signature_for_request`] too).
    pub fn ocsp_signed(&self) {
        self.ocsp_responses
            .get_or_create(&ResultLabel { result: "signed" })
            .inc();
    }
    /// An answer served from storage (memory or database): no HSM signature.
    pub fn ocsp_stored(&self) {
        self.ocsp_responses
            .get_or_create(&ResultLabel { result: "stored" })
            .inc();
    }
    /// An HSM signature made while a relying party waited (nothing current was stored).
    pub fn ocsp_signature_for_request(&self) {
        self.ocsp_signatures
            .get_or_create(&PurposeLabel { purpose: "request" })
            .inc();
    }
    /// `n` HSM signatures made by the background signer (status changes and refreshes).
    pub fn ocsp_signatures_in_background(&self, n: u64) {
        self.ocsp_signatures
            .get_or_create(&PurposeLabel {
                purpose: "background",
            })
            .inc_by(n);
    }
    pub fn ocsp_refused(&self) {
        self.ocsp_responses
            .get_or_create(&ResultLabel { result: "error" })
            .inc();
    }
}

/// The registry of this process's metrics.
pub struct Metrics {
    registry: Registry,
    rpc_latency: RpcLatency,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The registry with the gRPC latency histogram.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let rpc_latency = RpcLatency::new();
        registry.register(
            "tessera_rpc_duration_seconds",
            "gRPC call latency by method (request to response headers)",
            rpc_latency.histograms.clone(),
        );
        Metrics {
            registry,
            rpc_latency,
        }
    }

    /// The handle `api`'s latency layer records into.
    pub fn rpc_latency(&self) -> RpcLatency {
        self.rpc_latency.clone()
    }

    /// With a CA: the CRL and OCSP counters (the handle returned), the CA's HSM pool, and the
    /// OCSP responder certificate's notAfter when there is a responder.
    pub fn register_revocation(
        &mut self,
        hsm: crate::hsm::Hsm,
        responder_not_after_unix: Option<u64>,
    ) -> RevocationCounters {
        let counters = RevocationCounters::default();
        // Both results are shown from the start, at 0.
        for result in ["stored", "signed", "error"] {
            let _ = counters
                .ocsp_responses
                .get_or_create(&ResultLabel { result });
        }
        for purpose in ["request", "background"] {
            let _ = counters
                .ocsp_signatures
                .get_or_create(&PurposeLabel { purpose });
        }
        self.registry.register(
            "tessera_crls_signed",
            "CRLs this process signed",
            counters.crls_signed.clone(),
        );
        self.registry.register(
            "tessera_ocsp_responses",
            "OCSP answers by result (stored: pre-signed, no HSM call; signed: signed for the request; error: an unsigned error status)",
            counters.ocsp_responses.clone(),
        );
        self.registry.register(
            "tessera_ocsp_hsm_signatures",
            "HSM signatures spent on OCSP responses, by purpose (request: while a relying party waited; background: the signer task)",
            counters.ocsp_signatures.clone(),
        );
        self.registry.register_collector(Box::new(HsmPool(hsm)));
        if let Some(not_after) = responder_not_after_unix {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::try_from(not_after).unwrap_or(i64::MAX));
            self.registry.register(
                "tessera_ocsp_responder_not_after_seconds",
                "When the OCSP responder certificate expires (Unix time)",
                gauge,
            );
        }
        counters
    }

    /// The whole exposition: `readings` (from the database, at this scrape), then the
    /// process's metrics, then `# EOF`.
    pub fn encode(&self, readings: DatabaseReadings) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(readings));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut out, &scrape)
            .and_then(|()| encode_registry(&mut out, &self.registry))
            .and_then(|()| encode_eof(&mut out));
        out
    }
}

/// What `/metrics` reads from the database (and the pool) at each scrape.
#[derive(Debug, Default)]
pub struct DatabaseReadings {
    /// `(table, state or status, rows)` for people, tokens and certificates.
    pub state_counts: Vec<(&'static str, String, i64)>,
    pub audit_head_sequence: i64,
    pub pool_open: u32,
    pub pool_idle: usize,
    /// (durable group commits, write transactions they carried) of this process.
    pub group_commits: (u64, u64),
    /// Certificates signed (all replicas); `None` when the query failed.
    pub certificates_signed: Option<i64>,
    /// The current CRL number (with a CA; −1 when the query failed).
    pub crl_number: Option<i64>,
    /// `(within_days, good certificates whose notAfter is within that many days from now)`;
    /// empty when the query failed.
    pub certificates_expiring: Vec<(i64, i64)>,
}

impl Collector for DatabaseReadings {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Status {
            status: String,
        }
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct State {
            state: String,
        }
        for (table, help) in [
            ("people", "People by state."),
            ("tokens", "Tokens by state."),
            ("certificates", "Certificates by status."),
        ] {
            let name = format!("tessera_{table}");
            let gauge = ConstGauge::new(0i64);
            let mut family = encoder.encode_descriptor(&name, help, None, gauge.metric_type())?;
            for (_, value, n) in self.state_counts.iter().filter(|(t, _, _)| *t == table) {
                let gauge = ConstGauge::new(*n);
                if table == "certificates" {
                    gauge.encode(family.encode_family(&Status {
                        status: value.clone(),
                    })?)?;
                } else {
                    gauge.encode(family.encode_family(&State {
                        state: value.clone(),
                    })?)?;
                }
            }
        }
        let head = ConstGauge::new(self.audit_head_sequence);
        head.encode(encoder.encode_descriptor(
            "tessera_audit_head_sequence",
            "Sequence of the last audit event.",
            None,
            head.metric_type(),
        )?)?;
        let mut pool = encoder.encode_descriptor(
            "tessera_db_pool_connections",
            "Database pool connections.",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        ConstGauge::new(i64::from(self.pool_open))
            .encode(pool.encode_family(&StateLabel { state: "open" })?)?;
        ConstGauge::new(i64::try_from(self.pool_idle).unwrap_or(i64::MAX))
            .encode(pool.encode_family(&StateLabel { state: "idle" })?)?;
        let (groups, writers) = self.group_commits;
        let groups = ConstCounter::new(groups);
        groups.encode(encoder.encode_descriptor(
            "tessera_db_group_commits",
            "Durable commits of the database's write group (this process); each carries one or more write transactions.",
            None,
            groups.metric_type(),
        )?)?;
        let writers = ConstCounter::new(writers);
        writers.encode(encoder.encode_descriptor(
            "tessera_db_write_transactions",
            "Write transactions committed (this process); divided by tessera_db_group_commits, the mean group size.",
            None,
            writers.metric_type(),
        )?)?;
        if let Some(n) = self.certificates_signed {
            let issued = ConstCounter::new(u64::try_from(n).unwrap_or(0));
            issued.encode(encoder.encode_descriptor(
                "tessera_certificates_issued",
                "Certificates signed (all replicas; revoked ones included).",
                None,
                issued.metric_type(),
            )?)?;
        }
        if !self.certificates_expiring.is_empty() {
            #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
            struct Within {
                within_days: i64,
            }
            let mut family = encoder.encode_descriptor(
                "tessera_certificates_expiring",
                "Good certificates whose notAfter is between now and now + within_days.",
                None,
                ConstGauge::new(0i64).metric_type(),
            )?;
            for (within_days, n) in &self.certificates_expiring {
                ConstGauge::new(*n).encode(family.encode_family(&Within {
                    within_days: *within_days,
                })?)?;
            }
        }
        if let Some(number) = self.crl_number {
            let number = ConstGauge::new(number);
            number.encode(encoder.encode_descriptor(
                "tessera_crl_number",
                "Number of the current CRL (shared by replicas; 0 before the first).",
                None,
                number.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// The CA's HSM session pool, read at each scrape.
struct HsmPool(crate::hsm::Hsm);

impl std::fmt::Debug for HsmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HsmPool")
    }
}

impl Collector for HsmPool {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let hsm = &self.0;
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let mut sessions = encoder.encode_descriptor(
            "tessera_hsm_sessions",
            "CA HSM sessions: open now, and the pool's maximum.",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        ConstGauge::new(as_i64(hsm.open_sessions()))
            .encode(sessions.encode_family(&StateLabel { state: "open" })?)?;
        ConstGauge::new(as_i64(hsm.pool_size()))
            .encode(sessions.encode_family(&StateLabel { state: "max" })?)?;
        let errors = ConstCounter::new(hsm.errors());
        errors.encode(encoder.encode_descriptor(
            "tessera_hsm_errors",
            "CA HSM operations that failed (after the one retry).",
            None,
            errors.metric_type(),
        )?)?;
        let recoveries = ConstCounter::new(hsm.recoveries());
        recoveries.encode(encoder.encode_descriptor(
            "tessera_hsm_recoveries",
            "Times the CA HSM pool found dead sessions and reopened them.",
            None,
            recoveries.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn histogram_is_cumulative_per_method() {
        let m = Metrics::new();
        let l = m.rpc_latency();
        l.observe("/a/B", 0.0005);
        l.observe("/a/B", 0.2);
        l.observe("/a/B", 60.0);
        let out = m.encode(DatabaseReadings::default());
        let lines = sample_lines(&out);
        for line in [
            "tessera_rpc_duration_seconds_bucket{le=\"0.001\",method=\"/a/B\"} 1",
            "tessera_rpc_duration_seconds_bucket{le=\"0.1\",method=\"/a/B\"} 1",
            "tessera_rpc_duration_seconds_bucket{le=\"0.25\",method=\"/a/B\"} 2",
            "tessera_rpc_duration_seconds_bucket{le=\"10.0\",method=\"/a/B\"} 2",
            "tessera_rpc_duration_seconds_bucket{le=\"+Inf\",method=\"/a/B\"} 3",
            "tessera_rpc_duration_seconds_count{method=\"/a/B\"} 3",
        ] {
            assert!(lines.contains(&line), "{line:?} missing from:\n{out}");
        }
        assert!(out.ends_with("# EOF\n"), "{out}");
    }

    #[test]
    fn method_labels_are_bounded() {
        let m = Metrics::new();
        let l = m.rpc_latency();
        for i in 0..MAX_METHODS + 5 {
            l.observe(&format!("/x/{i}"), 0.01);
        }
        let out = m.encode(DatabaseReadings::default());
        let counts: Vec<&str> = sample_lines(&out)
            .into_iter()
            .filter(|l| l.starts_with("tessera_rpc_duration_seconds_count"))
            .collect();
        assert_eq!(counts.len(), MAX_METHODS + 1, "{out}");
        assert!(
            counts.contains(&"tessera_rpc_duration_seconds_count{method=\"other\"} 5"),
            "{out}"
        );
    }

    #[test]
    fn database_readings_keep_their_names_and_labels() {
        let m = Metrics::new();
        let out = m.encode(DatabaseReadings {
            state_counts: vec![
                ("people", "active".into(), 1),
                ("people", "suspended".into(), 2),
                ("certificates", "revoked".into(), 3),
            ],
            audit_head_sequence: 7,
            pool_open: 2,
            pool_idle: 1,
            group_commits: (3, 8),
            certificates_signed: Some(4),
            crl_number: Some(5),
            certificates_expiring: vec![(7, 2), (30, 6)],
        });
        let lines = sample_lines(&out);
        for line in [
            "tessera_people{state=\"active\"} 1",
            "tessera_people{state=\"suspended\"} 2",
            "tessera_certificates{status=\"revoked\"} 3",
            "tessera_audit_head_sequence 7",
            "tessera_db_pool_connections{state=\"open\"} 2",
            "tessera_db_pool_connections{state=\"idle\"} 1",
            "tessera_db_group_commits_total 3",
            "tessera_db_write_transactions_total 8",
            "tessera_certificates_issued_total 4",
            "tessera_crl_number 5",
            "tessera_certificates_expiring{within_days=\"7\"} 2",
            "tessera_certificates_expiring{within_days=\"30\"} 6",
        ] {
            assert!(lines.contains(&line), "{line:?} missing from:\n{out}");
        }
        assert!(out.contains("# TYPE tessera_tokens gauge\n"), "{out}");
        assert!(
            out.contains("# TYPE tessera_certificates_issued counter\n"),
            "{out}"
        );
    }
}
