//! The self-service channel: gRPC over TLS 1.3 where the client's private-key operation is
//! done by the token (`piv::CardTlsKey`). tonic's own TLS takes key files only, so the channel
//! is built over a connector of ours: TCP, then tokio-rustls with a client configuration whose
//! certificate resolver is the card's slot; tonic then speaks HTTP/2 over the finished stream.
use crate::piv::CardTlsKey;
use crate::protocol::pb::self_service_client::SelfServiceClient;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::transport::{Channel, Endpoint, Uri};

/// What went wrong before the first call.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "the server address {0:?} is not an https:// URL with a port (e.g. https://tessera.example:8444)"
    )]
    ServerUrl(String),
    #[error("the server CA certificate: {0}")]
    ServerCa(String),
    #[error("cannot connect to the self-service port at {server}: {detail}")]
    Connect { server: String, detail: String },
}

/// The TLS client configuration: TLS 1.3 only, the server verified against `server_ca` (PEM),
/// the client certificate and signatures from the card.
pub fn client_config(
    server_ca_pem: &[u8],
    key: Arc<CardTlsKey>,
    intermediates: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, ConnectError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(server_ca_pem) {
        let cert = cert.map_err(|e| ConnectError::ServerCa(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| ConnectError::ServerCa(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ConnectError::ServerCa("no certificate in the file".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConnectError::ServerCa(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(key.into_resolver(intermediates));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Connects to `server` (`https://host:port`; `server_name` overrides the name the server's
/// certificate must carry) and returns the SelfService client. The TLS handshake is done here,
/// so a card that cannot sign, or a certificate the server refuses in the handshake, fails
/// now.
pub async fn connect(
    server: &str,
    server_name: Option<&str>,
    config: rustls::ClientConfig,
) -> Result<SelfServiceClient<Channel>, ConnectError> {
    let uri: Uri = server
        .parse()
        .map_err(|_| ConnectError::ServerUrl(server.into()))?;
    let (Some("https"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(ConnectError::ServerUrl(server.into()));
    };
    if authority.port_u16().is_none() {
        return Err(ConnectError::ServerUrl(server.into()));
    }
    let name = server_name.unwrap_or(authority.host()).to_string();
    let name = ServerName::try_from(name).map_err(|_| ConnectError::ServerUrl(server.into()))?;
    let connector = CardTlsConnector {
        config: Arc::new(config),
        name,
    };
    // The scheme only tells tonic not to add TLS of its own: the connector does it.
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|_| ConnectError::ServerUrl(server.into()))?;
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| ConnectError::Connect {
            server: server.into(),
            detail: error_chain(&e),
        })?;
    Ok(SelfServiceClient::new(channel))
}

#[derive(Clone)]
struct CardTlsConnector {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

impl tower::Service<Uri> for CardTlsConnector {
    type Response = TokioIo<TlsStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let name = self.name.clone();
        Box::pin(async move {
            let authority = uri.authority().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "no host:port")
            })?;
            let port = authority.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((authority.host(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// An error and its causes on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
