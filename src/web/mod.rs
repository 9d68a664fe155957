//! The HTTP side (plain HTTP, its own port): `/healthz`, `/ca.pem`, `/metrics` (Prometheus
//! text), and with a CA configured `/crl` and OCSP (`GET /ocsp/{base64}`, `POST /ocsp`; see
//! [`revocation`]).
pub mod revocation;

use crate::api::rpc_metrics::RpcLatency;
use crate::store::Store;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use revocation::Revocation;
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::Arc;

struct WebState {
    store: Store,
    ca_chain: Option<PathBuf>,
    revocation: Option<Arc<Revocation>>,
    rpc_latency: Arc<RpcLatency>,
}

/// Largest OCSP request body accepted (a request for [`crate::ca::ocsp::MAX_REQUESTS`]
/// certificates, signed, fits easily).
const MAX_OCSP_REQUEST_BYTES: usize = 64 * 1024;

/// The HTTP routes over `store`; `/ca.pem` serves the PEM file `ca_chain` (404 without one);
/// `/crl` and `/ocsp` answer 404 without `revocation` (no `[ca]` section); `/metrics` includes
/// the gRPC latencies the server records into `rpc_latency`.
pub fn router(
    store: Store,
    ca_chain: Option<PathBuf>,
    revocation: Option<Arc<Revocation>>,
    rpc_latency: Arc<RpcLatency>,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/ca.pem", get(ca_pem))
        .route("/metrics", get(metrics))
        .route("/crl", get(crl))
        .route("/ocsp", post(ocsp_post))
        .route("/ocsp/{*request}", get(ocsp_get))
        .layer(DefaultBodyLimit::max(MAX_OCSP_REQUEST_BYTES))
        .with_state(Arc::new(WebState {
            store,
            ca_chain,
            revocation,
            rpc_latency,
        }))
}

const NO_CA: &str = "no CA configured (the server configuration has no [ca] section)\n";
const NO_RESPONDER: &str =
    "no OCSP responder (run `tessera ca init-ocsp` for this CA and restart the server)\n";

async fn crl(State(s): State<Arc<WebState>>) -> Response {
    let Some(revocation) = &s.revocation else {
        return (StatusCode::NOT_FOUND, NO_CA).into_response();
    };
    match revocation.current_crl().await {
        Ok(der) => ([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "CRL could not be made");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the CRL cannot be made right now; see the server log\n",
            )
                .into_response()
        }
    }
}

async fn ocsp_get(State(s): State<Arc<WebState>>, Path(request): Path<String>) -> Response {
    let Some(revocation) = s.revocation.as_ref().filter(|r| r.has_responder()) else {
        return (StatusCode::NOT_FOUND, no_ocsp(&s)).into_response();
    };
    let body = match revocation::decode_get_request(&request) {
        Some(der) => revocation.ocsp(&der).await,
        None => {
            crate::ca::ocsp::error_response(crate::ca::ocsp::OcspResponseStatus::MalformedRequest)
        }
    };
    ocsp_response(body)
}

async fn ocsp_post(State(s): State<Arc<WebState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(revocation) = s.revocation.as_ref().filter(|r| r.has_responder()) else {
        return (StatusCode::NOT_FOUND, no_ocsp(&s)).into_response();
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/ocsp-request" {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST /ocsp needs Content-Type: application/ocsp-request\n",
        )
            .into_response();
    }
    ocsp_response(revocation.ocsp(&body).await)
}

fn no_ocsp(s: &WebState) -> &'static str {
    if s.revocation.is_some() {
        NO_RESPONDER
    } else {
        NO_CA
    }
}

fn ocsp_response(der: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/ocsp-response")], der).into_response()
}

async fn healthz(State(s): State<Arc<WebState>>) -> Response {
    match s.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
        }
    }
}

async fn ca_pem(State(s): State<Arc<WebState>>) -> Response {
    let Some(path) = &s.ca_chain else {
        return (
            StatusCode::NOT_FOUND,
            "no CA chain configured (http.ca_chain)\n",
        )
            .into_response();
    };
    match tokio::fs::read(path).await {
        Ok(pem) => (
            [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
            pem,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read CA chain");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the CA chain; see the server log\n",
            )
                .into_response()
        }
    }
}

async fn metrics(State(s): State<Arc<WebState>>) -> Response {
    let counts = match s.store.state_counts().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: database query failed");
            return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response();
        }
    };
    let head = s.store.audit_head_sequence().await.unwrap_or(-1);
    let (open, idle) = s.store.pool_usage();
    let mut out = String::new();
    for (table, help) in [
        ("people", "People by state."),
        ("tokens", "Tokens by state."),
        ("certificates", "Certificates by status."),
    ] {
        let label = if table == "certificates" {
            "status"
        } else {
            "state"
        };
        let _ = writeln!(
            out,
            "# HELP tessera_{table} {help}\n# TYPE tessera_{table} gauge"
        );
        for (t, value, n) in counts.iter().filter(|(t, _, _)| *t == table) {
            let _ = t;
            let _ = writeln!(out, "tessera_{table}{{{label}=\"{value}\"}} {n}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP tessera_audit_head_sequence Sequence of the last audit event."
    );
    let _ = writeln!(
        out,
        "# TYPE tessera_audit_head_sequence gauge\ntessera_audit_head_sequence {head}"
    );
    let _ = writeln!(
        out,
        "# HELP tessera_db_pool_connections Database pool connections."
    );
    let _ = writeln!(out, "# TYPE tessera_db_pool_connections gauge");
    let _ = writeln!(out, "tessera_db_pool_connections{{state=\"open\"}} {open}");
    let _ = writeln!(out, "tessera_db_pool_connections{{state=\"idle\"}} {idle}");
    match s.store.certificates_signed().await {
        Ok(n) => {
            let _ = writeln!(
                out,
                "# HELP tessera_certificates_issued_total Certificates signed (all replicas; revoked ones included).\n\
                 # TYPE tessera_certificates_issued_total counter\ntessera_certificates_issued_total {n}"
            );
        }
        Err(e) => tracing::warn!(error = %e, "metrics: database query failed"),
    }
    s.rpc_latency.render(&mut out);
    if let Some(r) = &s.revocation {
        r.render_metrics(&mut out).await;
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
