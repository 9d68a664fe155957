//! `tessera serve` configuration files for tests, written from typed values with `toml` (serde)
//! instead of TOML text pasted together: a test says which sections it wants. The field names
//! are the configuration keys of docs/operations.md; a key the server does not know is refused
//! when the file is loaded (`deny_unknown_fields`), so a typo here fails the test that uses it.
use super::pki::TestPki;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The whole file. `ServerToml::new` gives the minimal server (gRPC on an ephemeral port, TLS
/// files written by `write`, the database); the `with_*` methods add sections.
#[derive(Clone, Debug, Serialize)]
pub struct ServerToml {
    pub grpc: Grpc,
    pub tls: Tls,
    pub database: Database,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<Audit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<Ca>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<Enrollment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_service: Option<SelfService>,
}

/// `[self_service]`: the listener where tokens authenticate with their own certificates.
#[derive(Clone, Debug, Serialize)]
pub struct SelfService {
    pub listen: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Grpc {
    pub listen: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Tls {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub client_ca: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_client_certificate: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Database {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acquire_timeout_seconds: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Http {
    pub listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_chain: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
}

/// `[audit]`; `None` fields are left to the server's defaults (the `[ca]` HSM, the key
/// labelled `tessera-audit-checkpoint`, `audit-checkpoints.jsonl` next to the configuration).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Audit {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hsm_config: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_interval_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ca {
    pub hsm_config: PathBuf,
    pub data_dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profiles_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crl_validity_hours: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocsp_validity_hours: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocsp_refresh_hours: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocsp_signatures_per_second: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocsp_live_signatures_per_second: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocsp_cache_entries: Option<usize>,
    pub crl_expired_grace_days: Option<u32>,
}

/// `[enrollment]`; `None` fields are left to the server's defaults.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Enrollment {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attestation_roots: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_yubico_roots: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestation_policy: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrapping_key_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiry_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiry_sweep_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profiles_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_replay_minutes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub puk_release_approval: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub puk_release_approval_minutes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub puk_releases_per_hour: Option<u32>,
}

/// `url` as the server resolves it from a configuration in `dir` (a relative SQLite path is
/// taken from the configuration's directory).
fn database_url_from(dir: &Path, url: &str) -> String {
    match url.strip_prefix("sqlite:") {
        Some(rest) => {
            let file = rest.strip_prefix("//").unwrap_or(rest);
            if !file.is_empty() && Path::new(file).is_relative() {
                format!("sqlite:{}", dir.join(file).display())
            } else {
                url.to_string()
            }
        }
        None => url.to_string(),
    }
}

/// The file names `write` gives the server's TLS files, next to the configuration.
pub const SERVER_CERTIFICATE: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";
pub const CLIENT_CA: &str = "client-ca.pem";
/// The file name `write` gives the configuration.
pub const CONFIG_FILE: &str = "tessera.toml";

impl ServerToml {
    /// gRPC on 127.0.0.1:0 with mTLS (the TLS files `write` puts next to the configuration)
    /// and the database at `database_url`.
    pub fn new(database_url: &str) -> ServerToml {
        ServerToml {
            grpc: Grpc {
                listen: "127.0.0.1:0".into(),
            },
            tls: Tls {
                certificate: SERVER_CERTIFICATE.into(),
                private_key: SERVER_KEY.into(),
                client_ca: CLIENT_CA.into(),
                require_client_certificate: None,
            },
            database: Database {
                url: database_url.into(),
                acquire_timeout_seconds: None,
            },
            http: None,
            audit: None,
            ca: None,
            enrollment: None,
            self_service: None,
        }
    }

    /// `[tls] require_client_certificate` set explicitly.
    pub fn require_client_certificate(mut self, required: bool) -> ServerToml {
        self.tls.require_client_certificate = Some(required);
        self
    }

    /// `[http]` on 127.0.0.1:0, without a chain file.
    pub fn with_http(mut self) -> ServerToml {
        self.http = Some(Http {
            listen: "127.0.0.1:0".into(),
            ca_chain: None,
            metrics_listen: None,
        });
        self
    }

    /// `[http]` on 127.0.0.1:0 serving `ca_chain` at /ca.pem.
    pub fn with_http_chain(mut self, ca_chain: impl Into<PathBuf>) -> ServerToml {
        self.http = Some(Http {
            listen: "127.0.0.1:0".into(),
            ca_chain: Some(ca_chain.into()),
            metrics_listen: None,
        });
        self
    }

    /// `[http] metrics_listen` on 127.0.0.1:0 (after `with_http*`): `/metrics` moves there.
    pub fn with_separate_metrics(mut self) -> ServerToml {
        self.http.as_mut().expect("with_http first").metrics_listen = Some("127.0.0.1:0".into());
        self
    }

    /// `[ca]` with this HSM configuration and CA data directory (relative paths are taken from
    /// the configuration's directory by the server).
    pub fn with_ca(mut self, hsm_config: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> Self {
        self.ca = Some(Ca {
            hsm_config: hsm_config.into(),
            data_dir: data_dir.into(),
            profiles_dir: None,
            crl_validity_hours: None,
            ocsp_validity_hours: None,
            ocsp_refresh_hours: None,
            ocsp_signatures_per_second: None,
            ocsp_live_signatures_per_second: None,
            ocsp_cache_entries: None,
            crl_expired_grace_days: None,
        });
        self
    }

    pub fn with_enrollment(mut self, enrollment: Enrollment) -> ServerToml {
        self.enrollment = Some(enrollment);
        self
    }

    /// `[self_service]` on 127.0.0.1:0 (needs `[ca]`).
    pub fn with_self_service(mut self) -> ServerToml {
        self.self_service = Some(SelfService {
            listen: "127.0.0.1:0".into(),
        });
        self
    }

    pub fn with_audit(mut self, audit: Audit) -> ServerToml {
        self.audit = Some(audit);
        self
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the test configuration serialises")
    }

    /// Writes `pki`'s server certificate, key and client CA and this configuration into `dir`;
    /// returns the configuration file's path.
    /// Client certificates `pki` makes from then on are recorded in this configuration's
    /// database (as a real deployment's `tessera admin issue-client-cert` records them).
    pub fn write(&self, dir: &Path, pki: &TestPki) -> PathBuf {
        pki.record_clients_in(&database_url_from(dir, &self.database.url));
        std::fs::write(dir.join(SERVER_CERTIFICATE), &pki.server_cert_pem).unwrap();
        std::fs::write(dir.join(SERVER_KEY), &pki.server_key_pem).unwrap();
        std::fs::write(dir.join(CLIENT_CA), &pki.ca_pem).unwrap();
        let path = dir.join(CONFIG_FILE);
        std::fs::write(&path, self.to_toml()).unwrap();
        path
    }
}
