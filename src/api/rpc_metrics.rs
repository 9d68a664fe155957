//! gRPC call latency per method: a tower layer on the tonic server that times each call from
//! request to response headers (for unary RPCs: the whole call) into a Prometheus histogram,
//! rendered by `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::codegen::http;

/// Upper bounds (seconds) of the histogram buckets; `+Inf` is implied.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Distinct method labels kept; calls to further paths (only unknown methods can add more)
/// are counted under `method="other"`, so a client cannot grow the metrics without bound.
const MAX_METHODS: usize = 128;

#[derive(Clone, Default)]
struct Histogram {
    /// Per bucket (not cumulative); index BUCKETS.len() is beyond the last bound.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
}

/// Latency histograms by gRPC method path (`/tessera.v1.DirectoryService/CreatePerson`).
#[derive(Default)]
pub struct RpcLatency {
    methods: Mutex<BTreeMap<String, Histogram>>,
}

impl RpcLatency {
    pub fn observe(&self, method: &str, seconds: f64) {
        let mut methods = self.methods.lock().unwrap_or_else(|p| p.into_inner());
        let key = if methods.contains_key(method) || methods.len() < MAX_METHODS {
            method
        } else {
            "other"
        };
        let h = methods.entry(key.to_string()).or_default();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        h.counts[bucket] += 1;
        h.sum += seconds;
    }

    /// Prometheus text for `tessera_rpc_duration_seconds`.
    pub fn render(&self, out: &mut String) {
        let methods = self
            .methods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let _ = writeln!(
            out,
            "# HELP tessera_rpc_duration_seconds gRPC call latency by method (request to response headers).\n\
             # TYPE tessera_rpc_duration_seconds histogram"
        );
        for (method, h) in &methods {
            let method = method.replace('\\', "\\\\").replace('"', "\\\"");
            let mut cumulative = 0;
            for (i, count) in h.counts.iter().enumerate() {
                cumulative += count;
                let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "tessera_rpc_duration_seconds_bucket{{method=\"{method}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "tessera_rpc_duration_seconds_sum{{method=\"{method}\"}} {}\n\
                 tessera_rpc_duration_seconds_count{{method=\"{method}\"}} {cumulative}",
                h.sum
            );
        }
    }
}

/// The tower layer that feeds [`RpcLatency`].
#[derive(Clone)]
pub struct RpcLatencyLayer(pub Arc<RpcLatency>);

impl<S> tower::Layer<S> for RpcLatencyLayer {
    type Service = RpcLatencyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcLatencyService {
            inner,
            latency: Arc::clone(&self.0),
        }
    }
}

#[derive(Clone)]
pub struct RpcLatencyService<S> {
    inner: S,
    latency: Arc<RpcLatency>,
}

impl<S, B> tower::Service<http::Request<B>> for RpcLatencyService<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The service that was polled ready handles this call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let latency = Arc::clone(&self.latency);
        let method = request.uri().path().to_string();
        let started = Instant::now();
        Box::pin(async move {
            let response = inner.call(request).await;
            latency.observe(&method, started.elapsed().as_secs_f64());
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_per_method() {
        let l = RpcLatency::default();
        l.observe("/a/B", 0.0005);
        l.observe("/a/B", 0.2);
        l.observe("/a/B", 60.0);
        let mut out = String::new();
        l.render(&mut out);
        assert!(
            out.contains("tessera_rpc_duration_seconds_bucket{method=\"/a/B\",le=\"0.001\"} 1\n")
        );
        assert!(
            out.contains("tessera_rpc_duration_seconds_bucket{method=\"/a/B\",le=\"0.1\"} 1\n")
        );
        assert!(
            out.contains("tessera_rpc_duration_seconds_bucket{method=\"/a/B\",le=\"0.25\"} 2\n")
        );
        assert!(out.contains("tessera_rpc_duration_seconds_bucket{method=\"/a/B\",le=\"10\"} 2\n"));
        assert!(
            out.contains("tessera_rpc_duration_seconds_bucket{method=\"/a/B\",le=\"+Inf\"} 3\n")
        );
        assert!(out.contains("tessera_rpc_duration_seconds_count{method=\"/a/B\"} 3\n"));
    }

    #[test]
    fn method_labels_are_bounded() {
        let l = RpcLatency::default();
        for i in 0..MAX_METHODS + 5 {
            l.observe(&format!("/x/{i}"), 0.01);
        }
        let methods = l.methods.lock().unwrap();
        assert_eq!(methods.len(), MAX_METHODS + 1);
        assert_eq!(methods["other"].counts.iter().sum::<u64>(), 5);
    }
}
