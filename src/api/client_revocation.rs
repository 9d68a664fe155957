//! Client certificates must be known to the store, good, and API client (operator)
//! certificates. The TLS handshake checks a client certificate's chain and validity; this tower
//! layer then looks the certificate up in the store by serial (Tessera issued it, so Tessera
//! knows its status) on every call, before any service (health and reflection too):
//! - not in the store, or a different certificate under that serial, or only reserved (never
//!   recorded as signed): UNAUTHENTICATED `CLIENT_CERTIFICATE_UNKNOWN`;
//! - revoked or on hold: UNAUTHENTICATED `CLIENT_CERTIFICATE_REVOKED`;
//! - good but of a profile other than `operator-client` (a person's or token's certificate, the
//!   OCSP responder's): PERMISSION_DENIED `NOT_AN_OPERATOR_CERTIFICATE`.
//!
//! It runs per call, not per connection, so a revocation takes effect on connections that are
//! already open; a following `StreamAuditEvents` asks again on each poll and ends with the same
//! answer.

use crate::ca::profile::OPERATOR_CLIENT_PROFILE;
use crate::store::{CertificateStatus, Store};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

#[derive(Clone)]
pub struct ClientRevocationLayer(pub Store);

impl<S> tower::Layer<S> for ClientRevocationLayer {
    type Service = ClientRevocationService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientRevocationService {
            inner,
            store: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ClientRevocationService<S> {
    inner: S,
    store: Store,
}

/// Lower-case hex serial of a DER certificate, as the store keys it.
fn serial_hex(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(hex::encode(cert.raw_serial()))
}

/// Why a client certificate may not be used, when it may not. Also asked by long-running
/// calls (a following `StreamAuditEvents`) on each poll, so a revocation ends them too.
pub(super) async fn refusal(store: &Store, leaf_der: &[u8]) -> Option<tonic::Status> {
    let Some(serial) = serial_hex(leaf_der) else {
        // Unparseable: `authorize` answers CLIENT_CERTIFICATE_INVALID.
        return None;
    };
    let unauthenticated = |reason: &str, message: String| {
        Some(super::status::with_metadata(
            tonic::Code::Unauthenticated,
            reason,
            &message,
            None,
            Default::default(),
        ))
    };
    let row = match store.certificate_by_serial(&serial).await {
        Ok(Some(row)) => row,
        Ok(None) => {
            return unauthenticated(
                "CLIENT_CERTIFICATE_UNKNOWN",
                format!(
                    "the client certificate (serial {serial}) is not in Tessera's store; use one issued by `tessera admin issue-client-cert`"
                ),
            );
        }
        Err(e) => return Some(super::status::internal(&e)),
    };
    if row.status == CertificateStatus::Reserved || row.der.as_deref() != Some(leaf_der) {
        return unauthenticated(
            "CLIENT_CERTIFICATE_UNKNOWN",
            format!(
                "the client certificate (serial {serial}) is not the certificate Tessera's store recorded under that serial; use one issued by `tessera admin issue-client-cert`"
            ),
        );
    }
    if matches!(
        row.status,
        CertificateStatus::Revoked | CertificateStatus::OnHold
    ) {
        return unauthenticated(
            "CLIENT_CERTIFICATE_REVOKED",
            format!(
                "the client certificate (serial {serial}) is {}; use a current one",
                if row.status == CertificateStatus::OnHold {
                    "on hold"
                } else {
                    "revoked"
                }
            ),
        );
    }
    if row.profile != OPERATOR_CLIENT_PROFILE {
        return Some(super::status::permission_denied(
            "NOT_AN_OPERATOR_CERTIFICATE",
            &format!(
                "the client certificate (serial {serial}) is a {} certificate, not an API client certificate; use one issued by `tessera admin issue-client-cert`",
                row.profile
            ),
        ));
    }
    None
}

impl<S, B> tower::Service<http::Request<B>> for ClientRevocationService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
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
        let leaf = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()));
        let store = self.store.clone();
        Box::pin(async move {
            if let Some(leaf) = leaf
                && let Some(status) = refusal(&store, &leaf).await
            {
                return Ok(status.into_http());
            }
            inner.call(request).await
        })
    }
}
