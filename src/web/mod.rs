//! The HTTP side (plain HTTP, its own port): `/healthz`, `/ca.pem` and `/metrics`
//! (Prometheus text). CRL and OCSP come with CRL signing in `ca`.
use crate::store::Store;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::Arc;

struct WebState {
    store: Store,
    ca_chain: Option<PathBuf>,
}

/// The HTTP routes over `store`; `/ca.pem` serves the PEM file `ca_chain` (404 without one).
pub fn router(store: Store, ca_chain: Option<PathBuf>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/ca.pem", get(ca_pem))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(WebState { store, ca_chain }))
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
