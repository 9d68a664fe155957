//! The HTTP side (plain HTTP, its own port): `/healthz`, `/ca.pem`, `/metrics` (OpenMetrics
//! text of `crate::metrics`), `/audit/checkpoints` (the append-only checkpoint file, for
//! monitors), and with a CA configured `/crl` and OCSP (`GET /ocsp/{base64}`, `POST /ocsp`; see
//! [`revocation`]).
pub mod revocation;

use crate::metrics::{DatabaseReadings, Metrics};
use crate::store::Store;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use revocation::Revocation;
use std::path::PathBuf;
use std::sync::Arc;

struct WebState {
    store: Store,
    ca_chain: Option<PathBuf>,
    revocation: Option<Arc<Revocation>>,
    metrics: Arc<Metrics>,
    checkpoint_file: Option<PathBuf>,
}

/// Largest OCSP request body accepted (a request for [`crate::ca::ocsp::MAX_REQUESTS`]
/// certificates, signed, fits easily).
const MAX_OCSP_REQUEST_BYTES: usize = 64 * 1024;

/// The HTTP routes over `store`; `/ca.pem` serves the PEM file `ca_chain` (404 without one);
/// `/crl` and `/ocsp` answer 404 without `revocation` (no `[ca]` section); `/metrics` serves
/// `metrics` (what the server's parts record into it) with what it reads from the store;
/// `/audit/checkpoints` serves `checkpoint_file` (404 without one: no checkpoints signed).
pub fn router(
    store: Store,
    ca_chain: Option<PathBuf>,
    revocation: Option<Arc<Revocation>>,
    metrics: Arc<Metrics>,
    checkpoint_file: Option<PathBuf>,
) -> Router {
    public_routes()
        .route("/metrics", get(metrics_page))
        .with_state(Arc::new(WebState {
            store,
            ca_chain,
            revocation,
            metrics,
            checkpoint_file,
        }))
}

/// The routes of [`router`] split over two listeners (`[http] metrics_listen`): the first
/// serves everything but `/metrics` (which answers 404 there), the second only `/metrics`, so
/// that the metrics can be kept off the address relying parties reach.
pub fn routers_with_separate_metrics(
    store: Store,
    ca_chain: Option<PathBuf>,
    revocation: Option<Arc<Revocation>>,
    metrics: Arc<Metrics>,
    checkpoint_file: Option<PathBuf>,
) -> (Router, Router) {
    let state = Arc::new(WebState {
        store,
        ca_chain,
        revocation,
        metrics,
        checkpoint_file,
    });
    (
        public_routes().with_state(Arc::clone(&state)),
        Router::new()
            .route("/metrics", get(metrics_page))
            .with_state(state),
    )
}

/// Health, CA chain, audit checkpoints, CRL and OCSP.
fn public_routes() -> Router<Arc<WebState>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/ca.pem", get(ca_pem))
        .route("/audit/checkpoints", get(audit_checkpoints))
        .route("/crl", get(crl))
        .route("/ocsp", post(ocsp_post))
        .route("/ocsp/{*request}", get(ocsp_get))
        .layer(DefaultBodyLimit::max(MAX_OCSP_REQUEST_BYTES))
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

/// `GET /ocsp/{base64}`: a pre-signed response comes with RFC 5019 §6.2 caching headers
/// (`Cache-Control: max-age` = what is left until nextUpdate, `ETag`, `Last-Modified` =
/// thisUpdate, `Expires` = nextUpdate), and a request whose `If-None-Match` names its ETag
/// gets 304.
async fn ocsp_get(
    State(s): State<Arc<WebState>>,
    headers: HeaderMap,
    Path(request): Path<String>,
) -> Response {
    let Some(revocation) = s.revocation.as_ref().filter(|r| r.has_responder()) else {
        return (StatusCode::NOT_FOUND, no_ocsp(&s)).into_response();
    };
    let answer = match revocation::decode_get_request(&request) {
        Some(der) => revocation.ocsp(&der).await,
        None => {
            return ocsp_response(
                crate::ca::ocsp::error_response(
                    crate::ca::ocsp::OcspResponseStatus::MalformedRequest,
                )
                .into(),
            );
        }
    };
    let Some(cache) = answer.cache else {
        return ocsp_response(answer.der);
    };
    let caching = [
        (header::CACHE_CONTROL, cache.cache_control(revocation.now())),
        (header::ETAG, cache.etag.clone()),
        (header::LAST_MODIFIED, cache.last_modified.clone()),
        (header::EXPIRES, cache.expires.clone()),
    ];
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == cache.etag || t.trim() == "*")
        });
    if unchanged {
        return (StatusCode::NOT_MODIFIED, caching).into_response();
    }
    (
        caching,
        [(header::CONTENT_TYPE, "application/ocsp-response")],
        answer.der,
    )
        .into_response()
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
    ocsp_response(revocation.ocsp(&body).await.der)
}

fn no_ocsp(s: &WebState) -> &'static str {
    if s.revocation.is_some() {
        NO_RESPONDER
    } else {
        NO_CA
    }
}

fn ocsp_response(der: Bytes) -> Response {
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

/// The checkpoint file as it is (one JSON line per signed checkpoint, oldest first), so that a
/// monitor can keep every checkpoint outside the reach of the database's writers.
async fn audit_checkpoints(State(s): State<Arc<WebState>>) -> Response {
    let Some(path) = &s.checkpoint_file else {
        return (
            StatusCode::NOT_FOUND,
            "this server signs no audit checkpoints (no HSM configured, or [audit] checkpoints = false)\n",
        )
            .into_response();
    };
    match tokio::fs::read(path).await {
        Ok(lines) => ([(header::CONTENT_TYPE, "application/jsonl")], lines).into_response(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the checkpoint file");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the checkpoint file; see the server log\n",
            )
                .into_response()
        }
    }
}

async fn metrics_page(State(s): State<Arc<WebState>>) -> Response {
    let counts = match s.store.state_counts().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: database query failed");
            return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response();
        }
    };
    let certificates_signed = match s.store.certificates_signed().await {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: database query failed");
            None
        }
    };
    let crl_number = match &s.revocation {
        None => None,
        Some(_) => Some(match s.store.crl_state().await {
            Ok(state) => state.number,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: database query failed");
                -1
            }
        }),
    };
    let mut certificates_expiring = Vec::new();
    for days in crate::lifecycle::EXPIRY_GAUGE_WINDOWS_DAYS {
        let now = s.store.now();
        match s
            .store
            .count_expiring_certificates(now, now + time::Duration::days(days))
            .await
        {
            Ok(n) => certificates_expiring.push((days, n)),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: database query failed");
                certificates_expiring.clear();
                break;
            }
        }
    }
    let (pool_open, pool_idle) = s.store.pool_usage();
    let text = s.metrics.encode(DatabaseReadings {
        state_counts: counts,
        audit_head_sequence: s.store.audit_head_sequence().await.unwrap_or(-1),
        pool_open,
        pool_idle,
        group_commits: {
            let stats = s.store.group_commit_stats();
            (stats.groups, stats.writers)
        },
        certificates_signed,
        crl_number,
        certificates_expiring,
    });
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}
