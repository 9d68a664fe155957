//! A `BoundServer` running inside the test's own runtime, and mTLS channels to it: what the
//! gRPC tests share to start a server from a configuration file, talk to it and stop it.
use super::pki::ClientCert;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tessera::ca::OnlineCa;
use tessera::server::{BoundServer, ServerConfig};
use tessera::store::Clock;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The server bound from one configuration file, serving on a task until `stop` (or until it
/// is dropped, which drops the shutdown sender and so also ends the server).
pub struct ServerTask {
    /// The gRPC listener.
    pub addr: SocketAddr,
    /// The `[http]` listener, when the configuration has one.
    pub http: Option<SocketAddr>,
    /// The `[http] metrics_listen` listener, when the configuration has one.
    pub metrics: Option<SocketAddr>,
    /// The online CA, when the configuration has a `[ca]` section.
    pub ca: Option<Arc<OnlineCa>>,
    /// The `[self_service]` listener, when the configuration has one.
    pub self_service: Option<SocketAddr>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ServerTask {
    /// Loads the configuration, binds and spawns the server; panics if any step fails.
    pub async fn start(config_path: &Path) -> ServerTask {
        ServerTask::start_with_clock(config_path, Clock::system()).await
    }

    /// [`ServerTask::start`] with the server's times from `clock` (a `ManualClock`'s, for
    /// tests that move time on instead of sleeping).
    pub async fn start_with_clock(config_path: &Path, clock: Clock) -> ServerTask {
        let config = ServerConfig::load(config_path).unwrap();
        let server = BoundServer::bind_with_clock(&config, clock).await.unwrap();
        let addr = server.local_addr();
        let http = server.http_addr();
        let metrics = server.metrics_addr();
        let ca = server.ca().cloned();
        let self_service = server.self_service_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        ServerTask {
            addr,
            http,
            metrics,
            ca,
            self_service,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Asks the server to shut down and waits until it has.
    pub async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

/// A TLS channel to `addr` trusting `ca_pem` for "localhost", presenting `client` when given.
pub async fn connect(addr: SocketAddr, ca_pem: &str, client: Option<&ClientCert>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(&c.cert_pem, &c.key_pem));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Kills the process with this id (a `tessera serve` child) when dropped, so a test that fails
/// before stopping its server does not leave it running.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// A server started from a typed configuration in a temp dir of its own, with mTLS channels per
/// role: `TestServer::builder(url).with_http().with_ca(&ca).start().await`.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub pki: super::pki::TestPki,
    pub config: super::config::ServerToml,
    pub config_path: std::path::PathBuf,
    pub task: ServerTask,
}

/// What a `TestServer` will be started with; `write` stops before starting it.
pub struct TestServerBuilder {
    pub dir: tempfile::TempDir,
    pub pki: super::pki::TestPki,
    pub config: super::config::ServerToml,
}

impl TestServer {
    /// The minimal server (gRPC, mTLS with a fresh `TestPki`, the database at `database_url`).
    pub fn builder(database_url: &str) -> TestServerBuilder {
        TestServerBuilder {
            dir: tempfile::tempdir().unwrap(),
            pki: super::pki::TestPki::new(),
            config: super::config::ServerToml::new(database_url),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.task.addr
    }

    /// A channel presenting `client` (none: no client certificate).
    pub async fn channel(&self, client: Option<&ClientCert>) -> Channel {
        connect(self.task.addr, &self.pki.ca_pem, client).await
    }

    /// A channel with a client certificate for `role`.
    pub async fn as_role(&self, role: &str) -> Channel {
        self.channel(Some(&self.pki.client(role))).await
    }

    pub async fn stop(self) {
        self.task.stop().await;
    }
}

impl TestServerBuilder {
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn require_client_certificate(mut self, required: bool) -> TestServerBuilder {
        self.config = self.config.require_client_certificate(required);
        self
    }

    pub fn with_http(mut self) -> TestServerBuilder {
        self.config = self.config.with_http();
        self
    }

    /// `[ca]` naming this CA's token and data directory.
    pub fn with_ca(mut self, ca: &super::ca::TestCa) -> TestServerBuilder {
        self.config = self.config.with_ca(ca.hsm_config(), &ca.data_dir);
        self
    }

    /// Any other change to the configuration.
    pub fn configure(
        mut self,
        change: impl FnOnce(&mut super::config::ServerToml),
    ) -> TestServerBuilder {
        change(&mut self.config);
        self
    }

    /// Writes the TLS files and the configuration; returns the configuration's path.
    pub fn write(&self) -> std::path::PathBuf {
        self.config.write(self.dir.path(), &self.pki)
    }

    pub async fn start(self) -> TestServer {
        let config_path = self.write();
        let task = ServerTask::start(&config_path).await;
        TestServer {
            dir: self.dir,
            pki: self.pki,
            config: self.config,
            config_path,
            task,
        }
    }
}
