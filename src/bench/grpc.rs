//! `tessera bench --grpc`: certificate issuance through the gRPC API (`IssueFromCsr`, CSR path,
//! P-256 issuing key) next to the raw `C_Sign` ECDSA P-256 rate of the same token, in one run.
//!
//! The server is the real one (`BoundServer`, TLS 1.3, mutual authentication, the configured
//! database, the CA from `--data-dir`), started in this process on a loopback port with a
//! throwaway TLS PKI made for the run; the clients are tonic clients with an `admin`
//! certificate, each on its own connection, issuing one request after another. CSRs are made
//! before the clock starts. Measurements are interleaved round by round; each line is the
//! median round.
use super::{BenchKeys, Measurement, measure, median};
use crate::api::Role;
use crate::ca::SerialNumber;
use crate::hsm::{KeySpec, SignatureScheme};
use crate::protocol::pb::{self, certificate_service_client::CertificateServiceClient};
use crate::server::{BoundServer, ServerConfig};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Concurrent clients per gRPC measurement, and the raw-signing thread count each is compared
/// with.
const CLIENTS: [(usize, usize); 3] = [(1, 1), (4, 2), (16, 2)];
/// Distinct CSRs the clients cycle through (the key is certified again; request ids differ).
const CSR_POOL: usize = 64;

/// What to measure.
pub struct GrpcBench {
    /// HSM configuration file of the CA's token.
    pub hsm_config: PathBuf,
    /// The CA's data directory (`tessera ca init` on the same token).
    pub data_dir: PathBuf,
    /// A throwaway database (`sqlite:PATH` or `postgres://…`).
    pub database_url: String,
    /// Raw P-256 signatures per thread and measurement.
    pub count: u32,
    /// IssueFromCsr calls per client and measurement.
    pub grpc_count: u32,
    /// Interleaved rounds; each line reports the median round.
    pub rounds: u32,
}

/// A directory removed when the run ends.
pub(super) struct RunDir(pub(super) PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// TLS files for the run: a CA, a server certificate for 127.0.0.1, and an admin client.
pub(super) struct RunPki {
    ca_pem: String,
    client_cert_pem: String,
    client_cert_der: Vec<u8>,
    client_key_pem: zeroize::Zeroizing<String>,
}

pub(super) fn make_pki(dir: &Path) -> anyhow::Result<RunPki> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tessera bench TLS CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["localhost".to_string()])?;
    server
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_pem = server.signed_by(&server_key, &issuer)?.pem();

    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, "tessera bench");
    client
        .subject_alt_names
        .push(SanType::URI(Role::Admin.uri().try_into()?));
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            crate::ca::policy_oid::CERTIFICATE_POLICIES_EXTENSION,
            crate::ca::policy_oid::certificate_policies(&[crate::ca::policy_oid::OPERATOR_POLICY])
                .map_err(|e| anyhow::anyhow!(e))?,
        ));
    let client_cert = client.signed_by(&client_key, &issuer)?;
    let client_cert_pem = client_cert.pem();
    let client_cert_der = client_cert.der().to_vec();

    write_private(&dir.join("server.pem"), server_pem.as_bytes())?;
    write_private(
        &dir.join("server.key"),
        zeroize::Zeroizing::new(server_key.serialize_pem()).as_bytes(),
    )?;
    write_private(&dir.join("client-ca.pem"), ca_pem.as_bytes())?;
    Ok(RunPki {
        ca_pem,
        client_cert_pem,
        client_cert_der,
        client_key_pem: zeroize::Zeroizing::new(client_key.serialize_pem()),
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Records the run's admin client certificate in `store` as an operator certificate (the
/// server refuses callers whose certificate it does not know).
pub(super) async fn record_client(store: &crate::store::Store, pki: &RunPki) -> anyhow::Result<()> {
    use x509_parser::prelude::FromDer;
    let der = &pki.client_cert_der;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| anyhow::anyhow!("cannot read the bench client certificate: {e}"))?;
    let serial = hex::encode(cert.raw_serial());
    let time = |t: &x509_parser::time::ASN1Time| crate::store::Timestamp::from(t.to_datetime());
    let mut tx = store.begin_write().await?;
    tx.reserve_certificate(&crate::store::NewCertificate {
        serial: serial.clone(),
        person_id: None,
        token_id: None,
        profile: crate::ca::profile::OPERATOR_CLIENT_PROFILE.into(),
        tbs: cert.tbs_certificate.as_ref().to_vec(),
        not_before: time(&cert.validity().not_before),
        not_after: time(&cert.validity().not_after),
    })
    .await?;
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(der));
    tx.record_issued_certificate(&serial, der, &sha).await?;
    tx.commit().await?;
    Ok(())
}

/// TOML string literal (paths and URLs may hold quotes or backslashes).
pub(super) fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

async fn connect(
    addr: std::net::SocketAddr,
    pki: &RunPki,
) -> anyhow::Result<CertificateServiceClient<tonic::transport::Channel>> {
    Ok(CertificateServiceClient::new(channel(addr, pki).await?))
}

/// An mTLS channel to the in-process server with the run's admin certificate.
pub(super) async fn channel(
    addr: std::net::SocketAddr,
    pki: &RunPki,
) -> anyhow::Result<tonic::transport::Channel> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost")
        .identity(Identity::from_pem(
            &pki.client_cert_pem,
            pki.client_key_pem.as_bytes(),
        ));
    let channel = Channel::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await
        .context("cannot connect to the in-process server")?;
    Ok(channel)
}

/// `clients` clients at once, each issuing `count` certificates one after another.
async fn measure_grpc(
    addr: std::net::SocketAddr,
    pki: &RunPki,
    csrs: &std::sync::Arc<Vec<Vec<u8>>>,
    clients: usize,
    count: u32,
    tag: &str,
    round: u32,
) -> anyhow::Result<(Measurement, Latencies)> {
    let mut connected = Vec::with_capacity(clients);
    for _ in 0..clients {
        connected.push(connect(addr, pki).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for (c, mut client) in connected.into_iter().enumerate() {
        let csrs = csrs.clone();
        let prefix = format!("bench-{tag}-r{round}-n{clients}-c{c}");
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::with_capacity(count as usize);
            for i in 0..count as usize {
                let sent = Instant::now();
                client
                    .issue_from_csr(pb::IssueFromCsrRequest {
                        request_id: format!("{prefix}-{i}"),
                        csr: csrs[(c * 7 + i) % csrs.len()].clone(),
                        profile: "service-client".into(),
                        person_external_id: String::new(),
                        token_serial: String::new(),
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("IssueFromCsr failed: {}", s.message()))?;
                took.push(sent.elapsed());
            }
            anyhow::Ok(took)
        }));
    }
    let mut took = Vec::new();
    for t in tasks {
        took.extend(t.await.context("a bench client panicked")??);
    }
    let elapsed = start.elapsed();
    Ok((
        Measurement {
            operation: "gRPC IssueFromCsr (service-client, P-256 CA)",
            threads: clients,
            operations: u64::from(count) * clients as u64,
            elapsed,
        },
        Latencies::of(took),
    ))
}

/// Per-call latency of one measurement: median and 99th percentile.
#[derive(Debug, Clone, Copy)]
struct Latencies {
    p50: std::time::Duration,
    p99: std::time::Duration,
}

impl Latencies {
    fn of(mut took: Vec<std::time::Duration>) -> Latencies {
        took.sort();
        let at = |q: f64| {
            took.get(((took.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        Latencies {
            p50: at(0.5),
            p99: at(0.99),
        }
    }
}

pub fn run(args: &GrpcBench) -> anyhow::Result<()> {
    let (data_dir, database_url) = (&args.data_dir, &args.database_url);
    let tag = SerialNumber::random()?.to_hex()[..8].to_string();
    let dir = RunDir(std::env::temp_dir().join(format!("tessera-bench-grpc-{tag}")));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir.0)
            .with_context(|| format!("cannot create {}", dir.0.display()))?;
    }
    let pki = make_pki(&dir.0)?;
    let hsm_config = std::path::absolute(&args.hsm_config)?;
    let data_dir = std::path::absolute(data_dir)?;
    let config_path = dir.0.join("tessera.toml");
    std::fs::write(
        &config_path,
        format!(
            "[grpc]\nlisten = \"127.0.0.1:0\"\n[tls]\ncertificate = \"server.pem\"\n\
             private_key = \"server.key\"\nclient_ca = \"client-ca.pem\"\n[database]\nurl = {}\n\
             [ca]\nhsm_config = {}\ndata_dir = {}\n",
            toml_string(database_url),
            toml_string(&hsm_config.to_string_lossy()),
            toml_string(&data_dir.to_string_lossy()),
        ),
    )?;
    let config = ServerConfig::load(&config_path)?;

    let mut csrs = Vec::with_capacity(CSR_POOL);
    for i in 0..CSR_POOL {
        let key = rcgen::KeyPair::generate()?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("bench client {i}"));
        csrs.push(p.serialize_request(&key)?.der().to_vec());
    }
    let csrs = std::sync::Arc::new(csrs);

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let server = runtime.block_on(BoundServer::bind(&config))?;
    let addr = server.local_addr();
    runtime.block_on(record_client(server.store(), &pki))?;
    let backend = server.store().backend();
    let ca = server
        .ca()
        .cloned()
        .context("the server configuration has no [ca]")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = runtime.spawn(server.run(async {
        let _ = stopped.await;
    }));

    // Raw signing on a P-256 key of the same token, through the server's own session pool.
    let mut keys = BenchKeys {
        hsm: ca.hsm.clone(),
        keys: Vec::new(),
    };
    let p256 = keys.generate(format!("tessera-bench-grpc-p256-{tag}"), KeySpec::EcP256)?;
    let message = vec![0x5a_u8; 400];
    let sign = |_| -> anyhow::Result<()> {
        p256.sign_with(SignatureScheme::EcdsaSha256, &message)?;
        Ok(())
    };

    let mut raw: Vec<Vec<Measurement>> = CLIENTS.iter().map(|_| Vec::new()).collect();
    let mut grpc: Vec<Vec<Measurement>> = CLIENTS.iter().map(|_| Vec::new()).collect();
    let mut latencies: Vec<Vec<Latencies>> = CLIENTS.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for (i, (clients, threads)) in CLIENTS.iter().enumerate() {
            raw[i].push(measure(
                "C_Sign ECDSA P-256 (SHA-256)",
                *threads,
                args.count,
                sign,
            )?);
            let (measured, latency) = runtime.block_on(measure_grpc(
                addr,
                &pki,
                &csrs,
                *clients,
                args.grpc_count,
                &tag,
                round,
            ))?;
            grpc[i].push(measured);
            latencies[i].push(latency);
        }
    }
    let _ = stop.send(());
    runtime
        .block_on(serving)
        .context("the server task panicked")?
        .context("the server failed")?;

    let raw: Vec<Measurement> = raw.into_iter().map(median).collect();
    let grpc: Vec<Measurement> = grpc.into_iter().map(median).collect();
    println!(
        "tessera bench --grpc: token \"{}\", database {}, median of {} interleaved rounds",
        ca.hsm.token_label(),
        match backend {
            crate::store::Backend::Sqlite => "SQLite",
            crate::store::Backend::Postgres => "PostgreSQL",
        },
        args.rounds
    );
    println!(
        "{:<42} {:>7} {:>8} {:>9} {:>11}",
        "operation", "threads", "count", "seconds", "per second"
    );
    for m in raw.iter().chain(grpc.iter()) {
        println!(
            "{:<42} {:>7} {:>8} {:>9.3} {:>11.1}",
            m.operation,
            m.threads,
            m.operations,
            m.elapsed.as_secs_f64(),
            m.per_second()
        );
    }
    for (r, g) in raw.iter().zip(grpc.iter()) {
        println!(
            "gRPC issuance ({} client(s)) / raw P-256 signing ({} thread(s)): {:.2}%",
            g.threads,
            r.threads,
            g.per_second() / r.per_second() * 100.0
        );
    }
    for ((clients, _), rounds) in CLIENTS.iter().zip(latencies) {
        let median_of = |pick: fn(&Latencies) -> std::time::Duration| {
            let mut v: Vec<_> = rounds.iter().map(pick).collect();
            v.sort();
            v[v.len() / 2]
        };
        println!(
            "gRPC IssueFromCsr latency ({clients} client(s)), median round: p50 {:.2} ms, p99 {:.2} ms",
            median_of(|l| l.p50).as_secs_f64() * 1000.0,
            median_of(|l| l.p99).as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
