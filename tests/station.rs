//! `tessera station` end to end, as a help desk runs it: SoftHSM2 CA, `tessera serve` as a child
//! process, a virtual YubiKey (pcscd + vpcd + tessera-vpiv), and the station as a real process;
//! then the token is checked with yubico-piv-tool and openssl, and used to log in to nginx with
//! curl through OpenSC. Run under `scripts/with-pcscd.sh -- cargo nextest run --test station`.
mod harness;

use harness::pki::TestPki;
use harness::relying_party::{Nginx, curl_with_token};
use harness::softhsm::SoftHsmToken;
use harness::vpcd::{CardOptions, VirtualCard};
use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use tessera::api::pb;
use tessera::api::pb::directory_service_client::DirectoryServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A failed run whose stderr ends with `error: MESSAGE`.
fn assert_refused(out: &Output, message: &str) {
    assert!(
        !out.status.success(),
        "expected a refusal, got success:\n{}",
        text(&out.stdout)
    );
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.lines().last().unwrap_or_default(),
        format!("error: {message}"),
        "stdout:\n{}",
        text(&out.stdout)
    );
}

fn write_private(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn openssl(args: &[&str], dir: &Path) -> Output {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("cannot run openssl");
    assert_ok(&out, &format!("openssl {args:?}"));
    out
}

/// `tessera serve` as a child process; killed on drop.
struct Server {
    child: Child,
    grpc: String,
    http: Option<String>,
}

impl Server {
    fn start(config: &Path) -> Server {
        let mut child = Command::new(TESSERA)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start tessera serve");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut grpc = None;
        let mut http = None;
        let wants_http = std::fs::read_to_string(config).unwrap().contains("[http]");
        while grpc.is_none() || (wants_http && http.is_none()) {
            let line = lines
                .next()
                .unwrap_or_else(|| {
                    panic!(
                        "tessera serve ended before it listened: {:?}",
                        child.try_wait()
                    )
                })
                .unwrap();
            if let Some(a) = line.strip_prefix("tessera: gRPC listening on ") {
                grpc = Some(a.to_string());
            }
            if let Some(a) = line.strip_prefix("tessera: HTTP listening on ") {
                http = Some(a.to_string());
            }
        }
        // Keep reading so that the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            grpc: grpc.unwrap(),
            http,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The help desk's world: a CA in SoftHSM2, the server, client certificates, one virtual card.
struct World {
    dir: tempfile::TempDir,
    pki: TestPki,
    _hsm: SoftHsmToken,
    data_dir: PathBuf,
    server: Server,
    card: VirtualCard,
}

impl World {
    fn start(card: CardOptions) -> World {
        let hsm = SoftHsmToken::create("station");
        let dir = tempfile::Builder::new()
            .prefix("tessera-station-")
            .tempdir()
            .unwrap();
        let data_dir = dir.path().join("ca");
        let out = Command::new(TESSERA)
            .args([
                "ca",
                "init",
                "--organization",
                "Tessera Station Test",
                "--data-dir",
            ])
            .arg(&data_dir)
            .env("TESSERA_HSM_CONFIG", &hsm.config_path)
            .output()
            .unwrap();
        assert_ok(&out, "tessera ca init");
        let pki = TestPki::new();
        let config = pki.write_server_config(dir.path(), "sqlite:tessera.db");
        let base = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            format!(
                "{base}\n[http]\nlisten = \"127.0.0.1:0\"\n\n[ca]\nhsm_config = \"{}\"\ndata_dir = \"{}\"\n",
                hsm.config_path.display(),
                data_dir.display()
            ),
        )
        .unwrap();
        for role in ["helpdesk", "hr", "auditor"] {
            let c = pki.client(role);
            std::fs::write(dir.path().join(format!("{role}.pem")), &c.cert_pem).unwrap();
            write_private(&dir.path().join(format!("{role}.key")), &c.key_pem);
        }
        std::fs::write(dir.path().join("server-ca.pem"), &pki.ca_pem).unwrap();
        let server = Server::start(&config);
        let card = VirtualCard::start(card);
        World {
            dir,
            pki,
            _hsm: hsm,
            data_dir,
            server,
            card,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `tessera station ARGS` as `role`, on this world's reader, with no terminal.
    fn station_as(&self, role: &str, args: &[&str]) -> Output {
        Command::new("setsid")
            .arg("--wait")
            .arg(TESSERA)
            .arg("station")
            .args(args)
            .env(
                "TESSERA_STATION_SERVER",
                format!("https://{}", self.server.grpc),
            )
            .env("TESSERA_STATION_CA_CERT", self.path("server-ca.pem"))
            .env(
                "TESSERA_STATION_CLIENT_CERT",
                self.path(&format!("{role}.pem")),
            )
            .env(
                "TESSERA_STATION_CLIENT_KEY",
                self.path(&format!("{role}.key")),
            )
            .env("TESSERA_STATION_READER", self.card.reader_name())
            .stdin(Stdio::null())
            .output()
            .expect("cannot run tessera station")
    }

    fn station(&self, args: &[&str]) -> Output {
        self.station_as("helpdesk", args)
    }

    fn channel(&self, role: &str) -> Channel {
        let c = self.pki.client(role);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.pki.ca_pem))
            .domain_name("localhost")
            .identity(Identity::from_pem(&c.cert_pem, &c.key_pem));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            Channel::from_shared(format!("https://{}", self.server.grpc))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .unwrap()
        })
    }

    fn create_person(&self, id: &str) {
        let channel = self.channel("hr");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            DirectoryServiceClient::new(channel)
                .create_person(pb::CreatePersonRequest {
                    request_id: format!("create-{id}"),
                    person: Some(pb::PersonRecord {
                        external_id: id.into(),
                        display_name: format!("Person {id}"),
                        upn: format!("{}@corp.test", id.to_lowercase()),
                        email: format!("{}@corp.test", id.to_lowercase()),
                        windows_sid: String::new(),
                        attributes: Default::default(),
                    }),
                })
                .await
                .unwrap();
        });
    }
}

#[test]
fn station_needs_a_server_address() {
    let out = Command::new(TESSERA)
        .args(["station", "status"])
        .env_remove("TESSERA_STATION_SERVER")
        .env_remove("TESSERA_STATION_CONFIG")
        .output()
        .unwrap();
    assert_refused(
        &out,
        "the server address is not set: give --server, TESSERA_STATION_SERVER or `server = …` in the station's config file",
    );
}

#[test]
fn status_of_a_token_the_server_does_not_know() {
    let world = World::start(CardOptions::firmware("5.7.4").serial(31_000_001));
    let out = world.station(&["status"]);
    assert_ok(&out, "station status");
    let stdout = text(&out.stdout);
    for line in [
        "     serial 31000001, firmware 5.7.4",
        "     PIN: 3 tries left (factory default)",
        "     PUK: 3 tries left (factory default)",
        "     no certificate in slots 9a, 9c, 9d, 9e",
        "     the server has no record of token 31000001",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?} missing from:\n{stdout}"
        );
    }
}

#[test]
fn a_foreign_client_certificate_is_named_as_the_problem() {
    let world = World::start(CardOptions::firmware("5.7.4").serial(31_000_002));
    let foreign = TestPki::foreign_client("helpdesk");
    std::fs::write(world.path("foreign.pem"), &foreign.cert_pem).unwrap();
    write_private(&world.path("foreign.key"), &foreign.key_pem);
    let out = world.station_as("foreign", &["status"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    // TLS 1.3: the client learns of the refusal only with its first request, as a broken
    // connection (CANCELLED or UNKNOWN, depending on timing); the hint names the certificate.
    assert!(
        stderr.starts_with("error: the server refused GetToken: "),
        "{stderr}"
    );
    assert!(
        stderr.trim_end().ends_with(
            "the server closed the connection: check that --client-cert was issued by the CA the server trusts for clients"
        ),
        "{stderr}"
    );
}

/// nginx and curl through OpenSC with a CA and CRL made by openssl (the mechanics the
/// enrollment tests use with Tessera's own chain and /crl).
#[test]
fn relying_party_mechanics_with_an_openssl_ca() {
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(31_000_003));
    let dir = tempfile::Builder::new()
        .prefix("tessera-rp-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=RP Test CA",
            "-days",
            "2",
        ],
        d,
    );
    card.ykman(
        &[
            "piv",
            "keys",
            "generate",
            "-a",
            "ECCP256",
            "--pin-policy",
            "ONCE",
            "--touch-policy",
            "NEVER",
            "9a",
            d.join("pub.pem").to_str().unwrap(),
        ],
        Some("\n"),
    )
    .success();
    card.ykman(
        &[
            "piv",
            "certificates",
            "request",
            "-s",
            "CN=Relying Test",
            "9a",
            d.join("pub.pem").to_str().unwrap(),
            d.join("user.csr").to_str().unwrap(),
        ],
        Some("123456\n"),
    )
    .success();
    std::fs::write(d.join("ext.cnf"), "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "user.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "user.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
        d,
    );
    card.ykman(
        &[
            "piv",
            "certificates",
            "import",
            "9a",
            d.join("user.pem").to_str().unwrap(),
        ],
        Some("\n"),
    )
    .success();
    std::fs::write(d.join("ca.cnf"), format!("[ca]\ndefault_ca=d\n[d]\ndatabase={0}/index.txt\ncrlnumber={0}/crlnumber\ndefault_md=sha256\ndefault_crl_days=1\n", d.display())).unwrap();
    std::fs::write(d.join("index.txt"), "").unwrap();
    std::fs::write(d.join("crlnumber"), "01\n").unwrap();
    openssl(
        &[
            "ca", "-config", "ca.cnf", "-gencrl", "-keyfile", "ca.key", "-cert", "ca.pem", "-out",
            "crl.pem",
        ],
        d,
    );

    let nginx = Nginx::start(d, &d.join("ca.pem"), &d.join("crl.pem"));
    let pin = d.join("pin");
    write_private(&pin, "123456");
    let login = || {
        curl_with_token(
            &nginx.url(),
            &nginx.server_cert,
            &d.join("user.pem"),
            &pin,
            &card.opensc_conf(),
            d,
        )
    };
    let run = login();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "verify=SUCCESS subject=CN=Relying Test\n");

    openssl(
        &[
            "ca", "-config", "ca.cnf", "-revoke", "user.pem", "-keyfile", "ca.key", "-cert",
            "ca.pem",
        ],
        d,
    );
    openssl(
        &[
            "ca", "-config", "ca.cnf", "-gencrl", "-keyfile", "ca.key", "-cert", "ca.pem", "-out",
            "crl.pem",
        ],
        d,
    );
    nginx.reload_crl(&d.join("crl.pem"));
    let run = login();
    assert!(
        run.stdout.contains("400 The SSL certificate error"),
        "{run:?}"
    );
    assert!(!run.stdout.contains("verify=SUCCESS"), "{run:?}");
    let log = std::fs::read_to_string(nginx.dir.join("logs/error.log")).unwrap();
    assert!(log.contains("certificate revoked"), "{log}");

    std::fs::write(d.join("index.txt"), "").unwrap();
    openssl(
        &[
            "ca", "-config", "ca.cnf", "-gencrl", "-keyfile", "ca.key", "-cert", "ca.pem", "-out",
            "crl.pem",
        ],
        d,
    );
    nginx.reload_crl(&d.join("crl.pem"));
    let run = login();
    assert_eq!(
        run.stdout, "verify=SUCCESS subject=CN=Relying Test\n",
        "{run:?}"
    );
}
