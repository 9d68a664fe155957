//! `BoundServer`: opens what the configuration names (database, CA and HSM, OCSP responder,
//! enrollment settings, checkpoint key), binds the ports, then wires and runs the edges — the
//! gRPC edge (`api`) and the HTTP edge (`web`) — with the background work: signed audit
//! checkpoints and the enrollment expiry sweep.
use super::config::{ServerConfig, ServerConfigError};
use super::tls::{accept_tls, self_service_tls_config, tls_server_config};
use crate::audit::{CheckpointFile, CheckpointVerifier, EcdsaP256Verifier, HsmCheckpointSigner};
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

/// How often the OCSP signer looks for due responses.
const OCSP_SIGNER_TICK: Duration = Duration::from_secs(1);

/// Signed audit checkpoints: the key, how often, and the file each is also appended to.
struct Checkpointing {
    signer: HsmCheckpointSigner,
    every: Duration,
    file: CheckpointFile,
}

/// A server with its database open and its port bound, not yet serving.
pub struct BoundServer {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    store: Store,
    checkpoints: Option<Arc<Checkpointing>>,
    http: Option<(TcpListener, Option<PathBuf>)>,
    /// `[http] metrics_listen`: `/metrics` is served here and not on the HTTP listener.
    metrics_listener: Option<TcpListener>,
    ca: Option<Arc<OnlineCa>>,
    /// The delegated OCSP responder (when the CA's data directory has one), the CRL
    /// policy (validity, expired-certificate grace) and the OCSP settings.
    revocation: Option<(
        Option<Arc<OcspResponder>>,
        crate::web::revocation::CrlPolicy,
        crate::web::revocation::OcspSettings,
    )>,
    enrollment: Option<Arc<EnrollmentSettings>>,
    notifier: Option<crate::notify::Notifier>,
    /// `[self_service]`: its listener and TLS (client certificates from the issuing CA).
    self_service: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
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
        let checkpoints = checkpointing(config, ca.as_deref())?.map(Arc::new);
        let revocation = match (&config.ca, &ca) {
            (Some(c), Some(online)) => {
                if !(1..=8760).contains(&c.crl_validity_hours) {
                    return Err(ServerConfigError::CrlValidity);
                }
                let ocsp = c.ocsp_settings()?;
                let responder =
                    OcspResponder::load(&online.hsm, &c.data_dir, &online.stored.issuing_der)?
                        .map(Arc::new);
                if responder.is_none() {
                    tracing::warn!(
                        data_dir = %c.data_dir.display(),
                        "no OCSP responder in the CA's data directory; /ocsp answers 404 (run `tessera ca init-ocsp`)"
                    );
                }
                if c.crl_expired_grace_days
                    .is_some_and(|days| !(1..=36500).contains(&days))
                {
                    return Err(ServerConfigError::CrlExpiredGrace);
                }
                Some((
                    responder,
                    crate::web::revocation::CrlPolicy {
                        validity: time::Duration::hours(i64::from(c.crl_validity_hours)),
                        expired_grace: c
                            .crl_expired_grace_days
                            .map(|days| time::Duration::days(i64::from(days))),
                    },
                    ocsp,
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
        let notifier = match &config.notifications {
            None => None,
            Some(n) => {
                Some(crate::notify::Notifier::new(n).map_err(ServerConfigError::Notifications)?)
            }
        };
        let store = Store::open_with(
            &config.database.url,
            clock,
            Duration::from_secs(config.database.acquire_timeout_seconds),
        )
        .await?;
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
        let self_service = match (&config.self_service, &ca) {
            (None, _) => None,
            (Some(_), None) => return Err(ServerConfigError::SelfServiceWithoutCa),
            (Some(s), Some(online)) => {
                let tls = self_service_tls_config(&config.tls, &online.stored.issuing_der)?;
                let listener = TcpListener::bind(s.listen).await.map_err(|source| {
                    ServerConfigError::Listen {
                        addr: s.listen,
                        source,
                    }
                })?;
                Some((listener, Arc::new(tls)))
            }
        };
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
            notifier,
            self_service,
        })
    }

    /// The self-service listener's address, when `[self_service]` is configured.
    pub fn self_service_addr(&self) -> Option<SocketAddr> {
        self.self_service
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
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
            (Some(ca), Some((responder, crl_policy, ocsp))) => {
                let counters = metrics.register_revocation(
                    ca.hsm.clone(),
                    responder.as_ref().map(|r| r.not_after_unix()),
                );
                Some(Arc::new(crate::web::revocation::Revocation::new(
                    store.clone(),
                    Arc::clone(ca),
                    responder,
                    crl_policy,
                    counters,
                    ocsp,
                )))
            }
            _ => None,
        };
        // The OCSP signer: stale responses (a status change) first, then refreshes before
        // nextUpdate, at most `ocsp_signatures_per_second` a second.
        let ocsp_signer = revocation.clone().filter(|r| r.has_responder()).map(|r| {
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(OCSP_SIGNER_TICK);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    match r.sign_due().await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(signed = n, "OCSP responses signed"),
                        Err(e) => tracing::warn!(error = %e, "OCSP signer failed"),
                    }
                }
            })
        });
        let rpc_latency = metrics.rpc_latency();
        // The checkpoint key's public half checks every checkpoint's signature in
        // VerifyAuditChain (whatever key id a checkpoint names: the signature is what counts).
        let audit_verifier: Option<Arc<dyn CheckpointVerifier>> =
            self.checkpoints.as_ref().and_then(|c| {
                use crate::hsm::Signer;
                let mut v = EcdsaP256Verifier::from_spki_der("", c.signer.public_key_der())?;
                v.key_id = None;
                Some(Arc::new(v) as Arc<dyn CheckpointVerifier>)
            });
        let checkpoint_file = self
            .checkpoints
            .as_ref()
            .map(|c| c.file.path().to_path_buf());
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
                    let app = crate::web::router(
                        store.clone(),
                        ca_chain,
                        revocation,
                        metrics,
                        checkpoint_file.clone(),
                    );
                    http_tasks.push(serve_http(listener, app));
                }
                Some(metrics_listener) => {
                    let (app, metrics_app) = crate::web::routers_with_separate_metrics(
                        store.clone(),
                        ca_chain,
                        revocation,
                        metrics,
                        checkpoint_file.clone(),
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
        let checkpoint_loop = self.checkpoints.clone().map(|c| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(c.every);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    sign_checkpoint(&store, &c).await;
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
        let notifier_loop = self.notifier.map(|n| n.spawn(store.clone()));
        let (stop_self_service, self_service_stopped) = tokio::sync::watch::channel(false);
        let self_service = self.self_service.map(|(listener, tls)| {
            let (accept_loop, connections) = accept_tls(listener, tls);
            let edge = crate::api::SelfServiceEdge {
                store: store.clone(),
                ca: self.ca.clone(),
                enrollment: desk(),
                rpc_latency: rpc_latency.clone(),
            };
            let mut stopped = self_service_stopped.clone();
            let serve = tokio::spawn(async move {
                let stopped = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                if let Err(e) = edge.serve(connections, stopped).await {
                    tracing::error!(error = %e, "self-service listener failed");
                }
            });
            (accept_loop, serve)
        });
        let shutdown = async move {
            shutdown.await;
            let _ = stop_self_service.send(true);
        };
        let grpc = crate::api::GrpcEdge {
            store: store.clone(),
            ca: self.ca.clone(),
            enrollment: desk(),
            rpc_latency,
            audit_verifier,
            checkpoint_file,
        };
        let result = grpc.serve(connections, shutdown).await;
        accept_loop.abort();
        if let Some((accept_loop, serve)) = self_service {
            accept_loop.abort();
            let _ = serve.await;
        }
        for task in http_tasks {
            let _ = task.await;
        }
        if let Some(task) = checkpoint_loop {
            task.abort();
        }
        if let Some(task) = expiry_loop {
            task.abort();
        }
        if let Some(task) = notifier_loop {
            task.abort();
        }
        if let Some(task) = ocsp_signer {
            task.abort();
        }
        if let Some(c) = &self.checkpoints {
            sign_checkpoint(&store, c).await;
        }
        store.close().await;
        result
    }
}

/// What `[audit]` (filled in by `ServerConfig::load`) and `[ca]` say about checkpoints: `None`
/// when they are turned off or there is no HSM (both logged).
fn checkpointing(
    config: &ServerConfig,
    ca: Option<&OnlineCa>,
) -> Result<Option<Checkpointing>, ServerConfigError> {
    let audit = config.audit.clone().unwrap_or_default();
    if audit.checkpoint_interval_seconds == 0 {
        return Err(ServerConfigError::CheckpointInterval);
    }
    if !audit.checkpoints {
        tracing::warn!(
            "audit checkpoints are turned off ([audit] checkpoints = false): a database writer can rewrite the audit log undetected"
        );
        return Ok(None);
    }
    let hsm = match (&audit.hsm_config, ca) {
        (Some(path), _) => crate::hsm::Hsm::open(&crate::hsm::HsmConfig::load(path)?)?,
        (None, Some(ca)) => ca.hsm.clone(),
        (None, None) if audit.checkpoint_key.is_some() => {
            return Err(ServerConfigError::CheckpointKeyWithoutHsm);
        }
        (None, None) => {
            tracing::warn!(
                "no HSM configured ([ca] or [audit] hsm_config): audit checkpoints are not signed"
            );
            return Ok(None);
        }
    };
    let key = match &audit.checkpoint_key {
        Some(uri) => hsm.find_key(uri)?,
        None => {
            let (key, made) = crate::audit::find_or_make_checkpoint_key(&hsm)?;
            if made {
                tracing::warn!(key = %key.uri(), "made the audit checkpoint key (none was in the HSM)");
            }
            if let (None, Some(c)) = (&audit.hsm_config, &config.ca) {
                write_checkpoint_public_key(&c.data_dir, &key);
            }
            key
        }
    };
    let file = audit
        .checkpoint_file
        .unwrap_or_else(|| super::config::DEFAULT_CHECKPOINT_FILE.into());
    let file = CheckpointFile::open(&file).map_err(ServerConfigError::CheckpointFile)?;
    tracing::info!(
        key = %key.uri(),
        file = %file.path().display(),
        "audit checkpoints signed every {} seconds",
        audit.checkpoint_interval_seconds
    );
    Ok(Some(Checkpointing {
        signer: HsmCheckpointSigner::new(key)?,
        every: Duration::from_secs(audit.checkpoint_interval_seconds),
        file,
    }))
}

/// Writes the default checkpoint key's public half into the CA's data directory when it is not
/// there yet (a CA made before `ca init` wrote it), for `tessera audit verify`.
fn write_checkpoint_public_key(data_dir: &std::path::Path, key: &crate::hsm::HsmKey) {
    let path = data_dir.join(crate::audit::CHECKPOINT_PUBLIC_KEY_FILE);
    if path.exists() {
        return;
    }
    let written = crate::audit::public_key_pem(key.public_key_der())
        .and_then(|pem| std::fs::write(&path, pem).map_err(|e| e.to_string()));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the audit checkpoint public key");
    }
}

async fn sign_checkpoint(store: &Store, c: &Checkpointing) {
    match crate::audit::checkpoint_to_file(store, &c.signer, Some(&c.file)).await {
        Ok(Some(c)) => tracing::info!(sequence = c.sequence, "audit checkpoint signed"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "audit checkpoint failed"),
    }
}
