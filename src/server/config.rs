//! The server's configuration file (`tessera serve --config`, docs/operations.md): its
//! sections, how relative paths are resolved, and every error of start-up.
use crate::store::StoreError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    /// Signed audit checkpoints. Without this section they are still made when there is an
    /// HSM (`[ca]`), with the defaults of [`AuditConfig`]; `ServerConfig::load` always fills it
    /// in (with the checkpoint file's path resolved).
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
    /// Expiry and token notices to a webhook (`crate::notify`); without this section the
    /// outbox is written but nothing is delivered and no expiry scan runs.
    #[serde(default)]
    pub notifications: Option<crate::notify::NotificationsConfig>,
    /// Self-service (`tessera renew`): a listener of its own where a token authenticates with
    /// its own certificate; requires `[ca]`. Without this section it is not served.
    #[serde(default)]
    pub self_service: Option<SelfServiceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfServiceConfig {
    /// e.g. `0.0.0.0:8444`: TLS 1.3 with the `[tls]` server certificate and key; a client
    /// certificate is required and verified against the issuing CA of people's certificates
    /// (`[ca]`'s `issuing.pem`), never the operator CA, so API client certificates fail the
    /// handshake here. Only `SelfService` (and health) is served.
    pub listen: SocketAddr,
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
    /// Pre-signed OCSP responses (`web::revocation::OcspSettings`): nextUpdate − thisUpdate in
    /// hours (1..=168).
    #[serde(default = "default_ocsp_validity_hours")]
    pub ocsp_validity_hours: u32,
    /// A stored response is signed again this many hours after its thisUpdate (plus a spread
    /// per serial); 1..ocsp_validity_hours.
    #[serde(default = "default_ocsp_refresh_hours")]
    pub ocsp_refresh_hours: u32,
    /// HSM signatures per second the background OCSP signer may spend (1..=10000).
    #[serde(default = "default_ocsp_signatures_per_second")]
    pub ocsp_signatures_per_second: u32,
    /// HSM signatures per second requests may cause (nothing current stored, several
    /// certificates in one request, an unknown serial); more get tryLater (0..=10000).
    #[serde(default = "default_ocsp_live_signatures_per_second")]
    pub ocsp_live_signatures_per_second: u32,
    /// Pre-signed responses kept in each replica's memory (0..=10000000).
    #[serde(default = "default_ocsp_cache_entries")]
    pub ocsp_cache_entries: usize,
    /// Days a revoked or held certificate stays on the CRL after its notAfter (RFC 5280 §3.3
    /// lets a CA drop expired certificates); absent: it stays for ever. 1..=36500.
    #[serde(default)]
    pub crl_expired_grace_days: Option<u32>,
}

fn default_crl_validity_hours() -> u32 {
    24
}

fn default_ocsp_validity_hours() -> u32 {
    24
}

fn default_ocsp_refresh_hours() -> u32 {
    12
}

fn default_ocsp_signatures_per_second() -> u32 {
    100
}

fn default_ocsp_live_signatures_per_second() -> u32 {
    20
}

fn default_ocsp_cache_entries() -> usize {
    100_000
}

impl CaConfig {
    /// The `ocsp_*` keys, checked.
    pub fn ocsp_settings(&self) -> Result<crate::web::revocation::OcspSettings, ServerConfigError> {
        if !(1..=168).contains(&self.ocsp_validity_hours) {
            return Err(ServerConfigError::OcspValidity);
        }
        if self.ocsp_refresh_hours == 0 || self.ocsp_refresh_hours >= self.ocsp_validity_hours {
            return Err(ServerConfigError::OcspRefresh);
        }
        if !(1..=10_000).contains(&self.ocsp_signatures_per_second) {
            return Err(ServerConfigError::OcspSignaturesPerSecond);
        }
        if self.ocsp_live_signatures_per_second > 10_000 {
            return Err(ServerConfigError::OcspLiveSignaturesPerSecond);
        }
        if self.ocsp_cache_entries > 10_000_000 {
            return Err(ServerConfigError::OcspCacheEntries);
        }
        Ok(crate::web::revocation::OcspSettings {
            validity: time::Duration::hours(i64::from(self.ocsp_validity_hours)),
            refresh: time::Duration::hours(i64::from(self.ocsp_refresh_hours)),
            signatures_per_second: self.ocsp_signatures_per_second,
            live_signatures_per_second: self.ocsp_live_signatures_per_second,
            cache_entries: self.ocsp_cache_entries,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// e.g. `127.0.0.1:8080`; plain HTTP.
    pub listen: SocketAddr,
    /// PEM chain served at `/ca.pem` (the CA's `DATA/ca/chain.pem`).
    #[serde(default)]
    pub ca_chain: Option<PathBuf>,
    /// e.g. `127.0.0.1:9100`: when set, `/metrics` is served only here (plain HTTP) and not on
    /// `listen`, so it can stay on an address only the monitoring system reaches.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// true (default): sign checkpoints of the audit chain whenever an HSM is configured.
    /// false: none are signed (logged as a warning at every start).
    #[serde(default = "default_checkpoints")]
    pub checkpoints: bool,
    /// The HSM configuration file (see docs/hsm.md) holding the checkpoint key; default: the
    /// `[ca]` section's.
    #[serde(default)]
    pub hsm_config: Option<PathBuf>,
    /// pkcs11: URI of the P-256 checkpoint key; default: the key labelled
    /// `tessera-audit-checkpoint` (`tessera ca init` makes it; made at start-up if missing).
    #[serde(default)]
    pub checkpoint_key: Option<String>,
    /// How often the chain head is signed (when it moved); a last checkpoint is signed at
    /// shutdown.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_seconds: u64,
    /// The append-only file every checkpoint is also written to (one JSON line each, served
    /// at `GET /audit/checkpoints`); default `audit-checkpoints.jsonl` next to the
    /// configuration file.
    #[serde(default)]
    pub checkpoint_file: Option<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> AuditConfig {
        AuditConfig {
            checkpoints: default_checkpoints(),
            hsm_config: None,
            checkpoint_key: None,
            checkpoint_interval_seconds: default_checkpoint_interval(),
            checkpoint_file: None,
        }
    }
}

/// The checkpoint file's name when `[audit] checkpoint_file` is not set (next to the
/// configuration file).
pub const DEFAULT_CHECKPOINT_FILE: &str = "audit-checkpoints.jsonl";

fn default_checkpoints() -> bool {
    true
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
    /// PEM: the CA certificate(s) API client certificates must chain to: the operator CA
    /// (`operator-ca.pem`, `tessera ca init-operators`). When it also trusts the issuing CA of
    /// people's certificates (or the root), the server warns at start; people's certificates
    /// then pass the handshake and are refused per call (docs/operations.md).
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
    /// How long a call waits for a database connection before it answers UNAVAILABLE
    /// `DATABASE_UNAVAILABLE` (1 to 600 seconds; default 30).
    #[serde(default = "default_acquire_timeout_seconds")]
    pub acquire_timeout_seconds: u64,
}

fn default_acquire_timeout_seconds() -> u64 {
    crate::store::DEFAULT_ACQUIRE_TIMEOUT.as_secs()
}

/// The longest `[database] acquire_timeout_seconds` accepted.
pub const MAX_ACQUIRE_TIMEOUT_SECONDS: u64 = 600;

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
    #[error("ca.crl_expired_grace_days must be between 1 and 36500")]
    CrlExpiredGrace,
    #[error("ca.crl_validity_hours must be between 1 and 8760")]
    CrlValidity,
    #[error("ca.ocsp_validity_hours must be between 1 and 168")]
    OcspValidity,
    #[error("ca.ocsp_refresh_hours must be at least 1 and less than ca.ocsp_validity_hours")]
    OcspRefresh,
    #[error("ca.ocsp_signatures_per_second must be between 1 and 10000")]
    OcspSignaturesPerSecond,
    #[error("ca.ocsp_live_signatures_per_second must be between 0 and 10000")]
    OcspLiveSignaturesPerSecond,
    #[error("ca.ocsp_cache_entries must be between 0 and 10000000")]
    OcspCacheEntries,
    #[error("enrollment: {0}")]
    Enrollment(String),
    #[error(
        "database.acquire_timeout_seconds must be between 1 and {MAX_ACQUIRE_TIMEOUT_SECONDS}, not {0}"
    )]
    AcquireTimeout(u64),
    #[error("notifications: {0}")]
    Notifications(String),
    #[error("audit.checkpoint_interval_seconds must be at least 1")]
    CheckpointInterval,
    #[error(
        "audit.checkpoint_key needs an HSM: set audit.hsm_config, or add a [ca] section (its HSM is used)"
    )]
    CheckpointKeyWithoutHsm,
    #[error("audit checkpoint file: {0}")]
    CheckpointFile(crate::audit::AuditError),
    #[error(
        "the [self_service] section needs a [ca] section (its issuing CA verifies the tokens' certificates)"
    )]
    SelfServiceWithoutCa,
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
        if !(1..=MAX_ACQUIRE_TIMEOUT_SECONDS).contains(&config.database.acquire_timeout_seconds) {
            return Err(ServerConfigError::AcquireTimeout(
                config.database.acquire_timeout_seconds,
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(p) = config.http.as_mut().and_then(|h| h.ca_chain.as_mut())
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        let audit = config.audit.get_or_insert_with(AuditConfig::default);
        if let Some(p) = audit.hsm_config.as_mut()
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        let file = audit
            .checkpoint_file
            .get_or_insert_with(|| DEFAULT_CHECKPOINT_FILE.into());
        if file.is_relative() {
            *file = base.join(&*file);
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
        if let Some(n) = config.notifications.as_mut()
            && n.hmac_key_file.is_relative()
        {
            n.hmac_key_file = base.join(&n.hmac_key_file);
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
