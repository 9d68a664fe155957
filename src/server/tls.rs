//! TLS 1.3 with client certificates: the rustls configuration from `[tls]`, and the accept
//! loop that hands connections which passed the handshake to the gRPC edge.
use super::config::{ServerConfigError, TlsConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ServerConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServerConfigError::Pem {
            what,
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ServerConfigError::EmptyPem {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Whether the `client_ca` bundle holds one of `certificates` (DER): with the issuing CA of
/// people's certificates or the root above it in the bundle, people's certificates pass the
/// handshake (and are refused per call by the gRPC edge).
pub fn client_ca_holds_any(
    tls: &TlsConfig,
    certificates: &[&[u8]],
) -> Result<bool, ServerConfigError> {
    Ok(read_certificates("client CA certificate", &tls.client_ca)?
        .iter()
        .any(|c| certificates.contains(&c.as_ref())))
}

/// TLS 1.3 only (ring provider); client certificates are verified against `client_ca`. Without
/// one the handshake fails, unless `require_client_certificate = false`: then the connection is
/// let through TLS (health checks work) and every Tessera RPC answers UNAUTHENTICATED.
pub fn tls_server_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, ServerConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certificates("client CA certificate", &tls.client_ca)? {
        roots.add(ca).map_err(|e| {
            ServerConfigError::Tls(format!("client CA in {}: {e}", tls.client_ca.display()))
        })?;
    }
    server_config_verifying(tls, roots, tls.require_client_certificate)
}

/// The self-service listener's TLS 1.3: the `[tls]` server certificate and key; a client
/// certificate is required and verified by rustls's WebPKI client verifier with the issuing CA
/// of people's certificates (`issuing_der`) as its one trust anchor — not the operator CA, and
/// not the root (under which the operator CA also sits), so an API client certificate fails the
/// handshake here. Which token certificate may act is decided per call
/// (`lifecycle::token_caller`).
pub fn self_service_tls_config(
    tls: &TlsConfig,
    issuing_der: &[u8],
) -> Result<rustls::ServerConfig, ServerConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(issuing_der.to_vec()))
        .map_err(|e| ServerConfigError::Tls(format!("issuing CA certificate: {e}")))?;
    server_config_verifying(tls, roots, true)
}

fn server_config_verifying(
    tls: &TlsConfig,
    roots: rustls::RootCertStore,
    require_client_certificate: bool,
) -> Result<rustls::ServerConfig, ServerConfigError> {
    let chain = read_certificates("server certificate", &tls.certificate)?;
    let key =
        PrivateKeyDer::from_pem_file(&tls.private_key).map_err(|e| ServerConfigError::Pem {
            what: "private key",
            path: tls.private_key.clone(),
            message: e.to_string(),
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    );
    if !require_client_certificate {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| ServerConfigError::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ServerConfigError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| ServerConfigError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts TCP connections on `listener` until the returned task is aborted: sets TCP_NODELAY,
/// runs each TLS handshake on its own task (at most 10 seconds) and sends the connections that
/// pass it to the returned receiver.
pub(super) fn accept_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> (tokio::task::JoinHandle<()>, crate::api::TlsConnections) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let (sender, receiver) = tokio::sync::mpsc::channel(128);
    let accept_loop = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Small gRPC frames must not wait for delayed ACKs (Nagle): ~40 ms per call.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(%peer, error = %e, "cannot set TCP_NODELAY");
            }
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok::<_, std::io::Error>(stream)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    (accept_loop, receiver)
}
