//! `tessera serve`: configuration, TLS 1.3 with client certificates, and the gRPC server.
use super::audit_service::AuditLog;
use super::certificate_service::Certificates;
use super::directory_service::Directory;
use super::pb;
use super::token_service::Tokens;
use crate::ca::OnlineCa;
use crate::store::{Store, StoreError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The server's configuration file (TOML). Relative paths are taken from the file's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub grpc: GrpcConfig,
    pub tls: TlsConfig,
    pub database: DatabaseConfig,
    /// The HTTP side (health, CA chain, metrics); without this section it is not served.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// Signed audit checkpoints; without this section none are made.
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// The CA the server issues with (CSR issuance, enrollment, CRL, OCSP); without this
    /// section those RPCs answer FAILED_PRECONDITION and the HTTP side has no /crl or OCSP.
    #[serde(default)]
    pub ca: Option<CaConfig>,
    /// Help-desk enrollment (EnrollmentService); requires `[ca]`. Without this section the
    /// enrollment RPCs answer FAILED_PRECONDITION ENROLLMENT_NOT_CONFIGURED.
    #[serde(default)]
    pub enrollment: Option<crate::enroll::EnrollmentConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// The HSM configuration file (see docs/hsm.md).
    pub hsm_config: PathBuf,
    /// The CA's data directory, as made by `tessera ca init` (ca.toml, root.pem, issuing.pem).
    pub data_dir: PathBuf,
    /// Certificate profiles directory; the built-in profiles without it.
    #[serde(default)]
    pub profiles_dir: Option<PathBuf>,
    /// CRL validity (nextUpdate − thisUpdate) in hours; a new CRL is signed after half of it,
    /// and at once after any revocation change.
    #[serde(default = "default_crl_validity_hours")]
    pub crl_validity_hours: u32,
}

fn default_crl_validity_hours() -> u32 {
    24
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// e.g. `127.0.0.1:8080`; plain HTTP.
    pub listen: SocketAddr,
    /// PEM chain served at `/ca.pem` (the CA's `DATA/ca/chain.pem`).
    #[serde(default)]
    pub ca_chain: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The HSM configuration file (see docs/hsm.md).
    pub hsm_config: PathBuf,
    /// pkcs11: URI of the P-256 checkpoint key (`tessera audit init-key` makes it).
    pub checkpoint_key: String,
    /// How often the chain head is signed (when it moved); a last checkpoint is signed at
    /// shutdown.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_seconds: u64,
}

fn default_checkpoint_interval() -> u64 {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// e.g. `127.0.0.1:8443`; port 0 picks a free port (printed at start-up).
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM: the server certificate first, then its intermediates.
    pub certificate: PathBuf,
    /// PEM: the server's private key (PKCS#8, SEC1 or PKCS#1).
    pub private_key: PathBuf,
    /// PEM: the CA certificate(s) that issue client certificates (Tessera's CA).
    pub client_ca: PathBuf,
    /// true (default): the TLS handshake fails without a client certificate from `client_ca`.
    /// false: a connection without one is let through TLS (for load-balancer health checks
    /// over gRPC) and every Tessera RPC answers UNAUTHENTICATED.
    #[serde(default = "default_require_client_certificate")]
    pub require_client_certificate: bool,
}

fn default_require_client_certificate() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite:PATH` (relative to the configuration file) or `postgres://…`.
    pub url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot read {what} from {path}: {message}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{path} holds no {what}")]
    EmptyPem { what: &'static str, path: PathBuf },
    #[error("TLS configuration is not usable: {0}")]
    Tls(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit checkpoint key: {0}")]
    CheckpointKey(#[from] crate::hsm::HsmError),
    #[error(transparent)]
    CheckpointSigner(#[from] crate::audit::AuditError),
    #[error("ca: {0}")]
    Ca(#[from] crate::ca::CaError),
    #[error("ca.crl_validity_hours must be between 1 and 8760")]
    CrlValidity,
    #[error("enrollment: {0}")]
    Enrollment(String),
    #[error("audit.checkpoint_interval_seconds must be at least 1")]
    CheckpointInterval,
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl ServerConfig {
    pub fn load(path: &Path) -> Result<ServerConfig, ServerConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServerConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: ServerConfig =
            toml::from_str(&text).map_err(|e| ServerConfigError::Parse {
                path: path.to_path_buf(),
                message: e.message().to_string(),
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(p) = config.http.as_mut().and_then(|h| h.ca_chain.as_mut())
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        if let Some(a) = config.audit.as_mut()
            && a.hsm_config.is_relative()
        {
            a.hsm_config = base.join(&a.hsm_config);
        }
        if let Some(ca) = config.ca.as_mut() {
            for p in [
                Some(&mut ca.hsm_config),
                Some(&mut ca.data_dir),
                ca.profiles_dir.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        if let Some(e) = config.enrollment.as_mut() {
            for p in e
                .attestation_roots
                .iter_mut()
                .chain(e.attestation_policy.as_mut())
                .chain(e.profiles_dir.as_mut())
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        for p in [
            &mut config.tls.certificate,
            &mut config.tls.private_key,
            &mut config.tls.client_ca,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(rest) = config.database.url.strip_prefix("sqlite:") {
            let file = rest.strip_prefix("//").unwrap_or(rest);
            if !file.is_empty() && Path::new(file).is_relative() {
                config.database.url = format!("sqlite:{}", base.join(file).display());
            }
        }
        Ok(config)
    }
}

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

/// TLS 1.3 only (ring provider); client certificates are verified against `client_ca`. Without
/// one the handshake fails, unless `require_client_certificate = false`: then the connection is
/// let through TLS (health checks work) and every Tessera RPC answers UNAUTHENTICATED.
pub fn tls_server_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, ServerConfigError> {
    let chain = read_certificates("server certificate", &tls.certificate)?;
    let key =
        PrivateKeyDer::from_pem_file(&tls.private_key).map_err(|e| ServerConfigError::Pem {
            what: "private key",
            path: tls.private_key.clone(),
            message: e.to_string(),
        })?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certificates("client CA certificate", &tls.client_ca)? {
        roots.add(ca).map_err(|e| {
            ServerConfigError::Tls(format!("client CA in {}: {e}", tls.client_ca.display()))
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    );
    if !tls.require_client_certificate {
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

/// A server with its database open and its port bound, not yet serving.
pub struct BoundServer {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    store: Store,
    checkpoints: Option<(Arc<crate::audit::HsmCheckpointSigner>, Duration)>,
    http: Option<(TcpListener, Option<PathBuf>)>,
    ca: Option<Arc<OnlineCa>>,
    /// The delegated OCSP responder (when the CA's data directory has one) and the CRL
    /// validity.
    revocation: Option<(Option<Arc<crate::ca::ocsp::OcspResponder>>, time::Duration)>,
    enrollment: Option<Arc<crate::enroll::EnrollmentSettings>>,
}

impl BoundServer {
    pub async fn bind(config: &ServerConfig) -> Result<BoundServer, ServerConfigError> {
        BoundServer::bind_with_clock(config, crate::store::Clock::system()).await
    }

    /// [`BoundServer::bind`] with the clock the store, and so every stored or compared time,
    /// reads (a `store::ManualClock` in tests).
    pub async fn bind_with_clock(
        config: &ServerConfig,
        clock: crate::store::Clock,
    ) -> Result<BoundServer, ServerConfigError> {
        let tls = Arc::new(tls_server_config(&config.tls)?);
        let checkpoints = match &config.audit {
            None => None,
            Some(a) => {
                if a.checkpoint_interval_seconds == 0 {
                    return Err(ServerConfigError::CheckpointInterval);
                }
                let hsm_config = crate::hsm::HsmConfig::load(&a.hsm_config)?;
                let hsm = crate::hsm::Hsm::open(&hsm_config)?;
                let key = hsm.find_key(&a.checkpoint_key)?;
                Some((
                    Arc::new(crate::audit::HsmCheckpointSigner::new(key)?),
                    Duration::from_secs(a.checkpoint_interval_seconds),
                ))
            }
        };
        let ca = match &config.ca {
            None => None,
            Some(c) => Some(Arc::new(OnlineCa::open(
                &c.hsm_config,
                &c.data_dir,
                c.profiles_dir.as_deref(),
            )?)),
        };
        let revocation = match (&config.ca, &ca) {
            (Some(c), Some(online)) => {
                if !(1..=8760).contains(&c.crl_validity_hours) {
                    return Err(ServerConfigError::CrlValidity);
                }
                let responder = crate::ca::ocsp::OcspResponder::load(
                    &online.hsm,
                    &c.data_dir,
                    &online.stored.issuing_der,
                )?
                .map(Arc::new);
                if responder.is_none() {
                    tracing::warn!(
                        data_dir = %c.data_dir.display(),
                        "no OCSP responder in the CA's data directory; /ocsp answers 404 (run `tessera ca init-ocsp`)"
                    );
                }
                Some((
                    responder,
                    time::Duration::hours(i64::from(c.crl_validity_hours)),
                ))
            }
            _ => None,
        };
        let enrollment = match (&config.enrollment, &ca) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(ServerConfigError::Enrollment(
                    "the [enrollment] section needs a [ca] section (the CA that certifies the keys)"
                        .into(),
                ));
            }
            (Some(e), Some(ca)) => Some(Arc::new(
                crate::enroll::EnrollmentSettings::load(e, ca)
                    .map_err(ServerConfigError::Enrollment)?,
            )),
        };
        let store = Store::open_with_clock(&config.database.url, clock).await?;
        let http = match &config.http {
            None => None,
            Some(h) => Some((
                TcpListener::bind(h.listen)
                    .await
                    .map_err(|source| ServerConfigError::Listen {
                        addr: h.listen,
                        source,
                    })?,
                h.ca_chain.clone(),
            )),
        };
        let listener = TcpListener::bind(config.grpc.listen)
            .await
            .map_err(|source| ServerConfigError::Listen {
                addr: config.grpc.listen,
                source,
            })?;
        Ok(BoundServer {
            listener,
            tls,
            store,
            checkpoints,
            http,
            ca,
            revocation,
            enrollment,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The HTTP side's address, when configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The CA, when the configuration has a `[ca]` section.
    pub fn ca(&self) -> Option<&Arc<OnlineCa>> {
        self.ca.as_ref()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<pb::directory_service_server::DirectoryServiceServer<Directory>>()
            .await;
        health_reporter
            .set_serving::<pb::token_service_server::TokenServiceServer<Tokens>>()
            .await;
        health_reporter
            .set_serving::<pb::audit_service_server::AuditServiceServer<AuditLog>>()
            .await;
        health_reporter
            .set_serving::<pb::certificate_service_server::CertificateServiceServer<Certificates>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("descriptor sets built by build.rs are valid");

        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls);
        let (sender, receiver) = tokio::sync::mpsc::channel(128);
        let listener = self.listener;
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
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(stream)) => {
                            let _ = sender.send(Ok::<_, std::io::Error>(stream)).await;
                        }
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });

        let store = self.store.clone();
        let rpc_latency = Arc::new(super::rpc_metrics::RpcLatency::default());
        let (stop_http, mut http_stopped) = tokio::sync::watch::channel(false);
        let revocation = match (&self.ca, self.revocation) {
            (Some(ca), Some((responder, crl_validity))) => {
                Some(Arc::new(crate::web::revocation::Revocation::new(
                    store.clone(),
                    Arc::clone(ca),
                    responder,
                    crl_validity,
                )))
            }
            _ => None,
        };
        let http_task = self.http.map(|(listener, ca_chain)| {
            let app = crate::web::router(
                store.clone(),
                ca_chain,
                revocation,
                Arc::clone(&rpc_latency),
            );
            tokio::spawn(async move {
                let stopped = async move {
                    let _ = http_stopped.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
                {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            })
        });
        let (stop_streams, streams_stopping) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            shutdown.await;
            let _ = stop_http.send(true);
            let _ = stop_streams.send(true);
        };
        let checkpoint_loop = self.checkpoints.clone().map(|(signer, every)| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    sign_checkpoint(&store, &signer).await;
                }
            })
        });
        let enrollments = Arc::new(super::enrollment_service::Enrollments {
            store: store.clone(),
            desk: self
                .ca
                .clone()
                .zip(self.enrollment.clone())
                .map(|(ca, settings)| {
                    crate::enroll::EnrollmentDesk::new(store.clone(), ca, settings)
                }),
        });
        let expiry_loop = self.enrollment.as_ref().map(|settings| {
            let enrollments = Arc::clone(&enrollments);
            let every = settings.sweep;
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                loop {
                    ticks.tick().await;
                    if let Err(e) = enrollments.expire_due(None).await {
                        tracing::warn!(error = %e.message(), "enrollment expiry sweep failed");
                    }
                }
            })
        });
        health_reporter
            .set_serving::<pb::enrollment_service_server::EnrollmentServiceServer<
                super::enrollment_service::Enrollments,
            >>()
            .await;
        let result = tonic::transport::Server::builder()
            .layer(super::rpc_metrics::RpcLatencyLayer(Arc::clone(
                &rpc_latency,
            )))
            .layer(super::client_revocation::ClientRevocationLayer(
                store.clone(),
            ))
            .add_service(health)
            .add_service(reflection)
            .add_service(pb::directory_service_server::DirectoryServiceServer::new(
                Directory {
                    store: store.clone(),
                },
            ))
            .add_service(pb::token_service_server::TokenServiceServer::new(Tokens {
                store: store.clone(),
            }))
            .add_service(pb::audit_service_server::AuditServiceServer::new(
                AuditLog {
                    store: store.clone(),
                    verifier: None,
                    stopping: streams_stopping,
                },
            ))
            .add_service(
                pb::certificate_service_server::CertificateServiceServer::new(Certificates {
                    store: store.clone(),
                    ca: self.ca.clone(),
                }),
            )
            .add_service(
                pb::enrollment_service_server::EnrollmentServiceServer::from_arc(enrollments),
            )
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(receiver),
                shutdown,
            )
            .await;
        accept_loop.abort();
        if let Some(task) = http_task {
            let _ = task.await;
        }
        if let Some(task) = checkpoint_loop {
            task.abort();
        }
        if let Some(task) = expiry_loop {
            task.abort();
        }
        if let Some((signer, _)) = &self.checkpoints {
            sign_checkpoint(&store, signer).await;
        }
        store.close().await;
        result
    }
}

async fn sign_checkpoint(store: &Store, signer: &Arc<crate::audit::HsmCheckpointSigner>) {
    match crate::audit::checkpoint(store, signer.as_ref()).await {
        Ok(Some(c)) => tracing::info!(sequence = c.sequence, "audit checkpoint signed"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "audit checkpoint failed"),
    }
}
