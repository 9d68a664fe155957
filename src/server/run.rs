//! `BoundServer`: opens what the configuration names (database, CA and HSM, OCSP responder,
//! enrollment settings, checkpoint key), binds the ports, then wires and runs the edges — the
//! gRPC edge (`api`) and the HTTP edge (`web`) — with the background work: signed audit
//! checkpoints and the enrollment expiry sweep.
use super::config::{ServerConfig, ServerConfigError};
use super::tls::{accept_tls, tls_server_config};
use crate::audit::HsmCheckpointSigner;
use crate::ca::OnlineCa;
use crate::ca::ocsp::OcspResponder;
use crate::enroll::{EnrollmentDesk, EnrollmentSettings};
use crate::metrics::Metrics;
use crate::store::Store;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A server with its database open and its port bound, not yet serving.
pub struct BoundServer {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    store: Store,
    checkpoints: Option<(Arc<HsmCheckpointSigner>, Duration)>,
    http: Option<(TcpListener, Option<PathBuf>)>,
    /// `[http] metrics_listen`: `/metrics` is served here and not on the HTTP listener.
    metrics_listener: Option<TcpListener>,
    ca: Option<Arc<OnlineCa>>,
    /// The delegated OCSP responder (when the CA's data directory has one) and the CRL
    /// validity.
    revocation: Option<(Option<Arc<OcspResponder>>, time::Duration)>,
    enrollment: Option<Arc<EnrollmentSettings>>,
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
                    Arc::new(HsmCheckpointSigner::new(key)?),
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
        if let Some(online) = &ca
            && super::tls::client_ca_holds_any(
                &config.tls,
                &[&online.stored.issuing_der, &online.stored.root_der],
            )?
        {
            // Kept working for configurations written before the operator CA existed; every
            // call with a certificate that is not a good operator certificate is still refused.
            tracing::warn!(
                client_ca = %config.tls.client_ca.display(),
                "tls.client_ca trusts the issuing CA of people's certificates (or the root above it), so people's certificates pass the TLS handshake (each call with one is refused, NOT_AN_OPERATOR_CERTIFICATE); run `tessera ca init-operators`, reissue the API client certificates and point tls.client_ca at operator-ca.pem (docs/operations.md)"
            );
        }
        let revocation = match (&config.ca, &ca) {
            (Some(c), Some(online)) => {
                if !(1..=8760).contains(&c.crl_validity_hours) {
                    return Err(ServerConfigError::CrlValidity);
                }
                let responder =
                    OcspResponder::load(&online.hsm, &c.data_dir, &online.stored.issuing_der)?
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
                EnrollmentSettings::load(e, ca).map_err(ServerConfigError::Enrollment)?,
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
        let metrics_listener = match config.http.as_ref().and_then(|h| h.metrics_listen) {
            None => None,
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerConfigError::Listen { addr, source })?,
            ),
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
            metrics_listener,
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

    /// The `/metrics` listener, when `[http] metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
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
        let store = self.store.clone();
        let mut metrics = Metrics::new();
        let revocation = match (&self.ca, self.revocation) {
            (Some(ca), Some((responder, crl_validity))) => {
                let counters = metrics.register_revocation(
                    ca.hsm.clone(),
                    responder.as_ref().map(|r| r.not_after_unix()),
                );
                Some(Arc::new(crate::web::revocation::Revocation::new(
                    store.clone(),
                    Arc::clone(ca),
                    responder,
                    crl_validity,
                    counters,
                )))
            }
            _ => None,
        };
        let rpc_latency = metrics.rpc_latency();
        let metrics = Arc::new(metrics);

        let (accept_loop, connections) = accept_tls(self.listener, self.tls);
        let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
        let serve_http = |listener: TcpListener, app: axum::Router| {
            let mut stopped = http_stopped.clone();
            tokio::spawn(async move {
                let stopped = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
                {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            })
        };
        let mut http_tasks = Vec::new();
        if let Some((listener, ca_chain)) = self.http {
            match self.metrics_listener {
                None => {
                    let app = crate::web::router(store.clone(), ca_chain, revocation, metrics);
                    http_tasks.push(serve_http(listener, app));
                }
                Some(metrics_listener) => {
                    let (app, metrics_app) = crate::web::routers_with_separate_metrics(
                        store.clone(),
                        ca_chain,
                        revocation,
                        metrics,
                    );
                    http_tasks.push(serve_http(listener, app));
                    http_tasks.push(serve_http(metrics_listener, metrics_app));
                }
            }
        }
        let shutdown = async move {
            shutdown.await;
            let _ = stop_http.send(true);
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
        let desk = || {
            self.ca
                .clone()
                .zip(self.enrollment.clone())
                .map(|(ca, settings)| EnrollmentDesk::new(store.clone(), ca, settings))
        };
        let expiry_loop = desk().map(|desk| {
            let every = desk.settings.sweep;
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                loop {
                    ticks.tick().await;
                    if let Err(e) = desk.expire_due(None).await {
                        tracing::warn!(error = %e, "enrollment expiry sweep failed");
                    }
                }
            })
        });
        let grpc = crate::api::GrpcEdge {
            store: store.clone(),
            ca: self.ca.clone(),
            enrollment: desk(),
            rpc_latency,
        };
        let result = grpc.serve(connections, shutdown).await;
        accept_loop.abort();
        for task in http_tasks {
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

async fn sign_checkpoint(store: &Store, signer: &Arc<HsmCheckpointSigner>) {
    match crate::audit::checkpoint(store, signer.as_ref()).await {
        Ok(Some(c)) => tracing::info!(sequence = c.sequence, "audit checkpoint signed"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "audit checkpoint failed"),
    }
}
