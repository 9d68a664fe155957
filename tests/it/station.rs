//! `tessera station` end to end, as a help desk runs it: SoftHSM2 CA, `tessera serve` as a child
//! process, a virtual YubiKey (pcscd + vpcd + tessera-vpiv), and the station as a real process;
//! then the token is checked with yubico-piv-tool and openssl, and used to log in to nginx with
//! curl through OpenSC. Run under `scripts/with-pcscd.sh -- cargo nextest run --test station`.
use crate::harness;

use harness::config::{Enrollment, ServerToml};
use harness::pki::TestPki;
use harness::relying_party::{Nginx, curl_with_token};
use harness::server::connect;
use harness::softhsm::SoftHsmToken;
use harness::vpcd::{CardOptions, VirtualCard};
use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use tessera::piv::{PivToken, Secret};
use tessera::protocol::pb;
use tessera::protocol::pb::directory_service_client::DirectoryServiceClient;
use tonic::transport::Channel;

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
    hsm: SoftHsmToken,
    data_dir: PathBuf,
    server: Server,
    card: VirtualCard,
}

/// Extra `[enrollment]` lines, e.g. a test attestation policy.
#[derive(Default)]
struct Setup {
    attestation_policy: Option<&'static str>,
    /// `puk_release_approval = true` (dual control of ReleasePuk).
    puk_release_approval: bool,
}

impl World {
    fn start(card: CardOptions) -> World {
        World::start_with(card, Setup::default())
    }

    fn start_with(card: CardOptions, setup: Setup) -> World {
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
        let out = Command::new(TESSERA)
            .args(["admin", "init-wrapping-key", "--hsm-config"])
            .arg(&hsm.config_path)
            .output()
            .unwrap();
        assert_ok(&out, "tessera admin init-wrapping-key");
        // The card first: it exports its (test) attestation root, which the server must trust.
        let card = VirtualCard::start(card);
        let pki = TestPki::new();
        let mut enrollment = Enrollment {
            attestation_roots: vec![card.attestation_root()],
            trust_yubico_roots: Some(false),
            ..Enrollment::default()
        };
        if let Some(policy) = setup.attestation_policy {
            std::fs::write(dir.path().join("attestation-policy.toml"), policy).unwrap();
            enrollment.attestation_policy = Some("attestation-policy.toml".into());
        }
        if setup.puk_release_approval {
            enrollment.puk_release_approval = Some(true);
        }
        let config = ServerToml::new("sqlite:tessera.db")
            .with_http()
            .with_ca(&hsm.config_path, &data_dir)
            .with_enrollment(enrollment)
            .write(dir.path(), &pki);
        for role in ["helpdesk", "hr", "auditor", "admin"] {
            let c = pki.client(role);
            std::fs::write(dir.path().join(format!("{role}.pem")), &c.cert_pem).unwrap();
            write_private(&dir.path().join(format!("{role}.key")), &c.key_pem);
        }
        // A second desk: another helpdesk certificate in another name (`station_as("desk2")`).
        let c = pki.client_with_uris("desk 2", &["tessera:role:helpdesk"]);
        std::fs::write(dir.path().join("desk2.pem"), &c.cert_pem).unwrap();
        write_private(&dir.path().join("desk2.key"), &c.key_pem);
        std::fs::write(dir.path().join("server-ca.pem"), &pki.ca_pem).unwrap();
        let server = Server::start(&config);
        World {
            dir,
            pki,
            hsm,
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

    /// Runs `call` with a channel to the server as `role`, in a runtime of its own (the channel
    /// lives and dies with that runtime).
    fn rpc<T, Fut: std::future::Future<Output = T>>(
        &self,
        role: &str,
        call: impl FnOnce(Channel) -> Fut,
    ) -> T {
        let c = self.pki.client(role);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let channel = connect(
                self.server.grpc.parse().unwrap(),
                &self.pki.ca_pem,
                Some(&c),
            )
            .await;
            call(channel).await
        })
    }

    fn create_person(&self, id: &str) {
        self.rpc("hr", |channel| async {
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

// ---------------------------------------------------------------------------------------------
// Enrollment end to end.

const NEW_PIN: &str = "24681357";

impl World {
    /// A 0600 PIN file holding `pin`.
    fn pin_file(&self, pin: &str) -> PathBuf {
        static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = FILES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = self.path(&format!("new-pin-{n}"));
        write_private(&path, &format!("{pin}\n"));
        path
    }

    fn enroll(&self, person: &str, extra: &[&str]) -> Output {
        let pin = self.pin_file(NEW_PIN);
        let mut args = vec![
            "enroll",
            "--person",
            person,
            "--profile",
            "piv-login",
            "--pin-file",
            pin.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.station(&args)
    }

    fn certificates_of_token(&self, serial: u32) -> Vec<pb::Certificate> {
        use tessera::protocol::pb::certificate_service_client::CertificateServiceClient;
        self.rpc("auditor", |channel| async move {
            CertificateServiceClient::new(channel)
                .list_certificates(pb::ListCertificatesRequest {
                    page_size: 1000,
                    token_serial: serial.to_string(),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().certificates)
                .or_else(|s| {
                    if s.code() == tonic::Code::NotFound {
                        Ok(Vec::new())
                    } else {
                        Err(s)
                    }
                })
                .unwrap()
        })
    }

    fn token(&self, serial: u32) -> Option<pb::Token> {
        use tessera::protocol::pb::token_service_client::TokenServiceClient;
        self.rpc("hr", |channel| async move {
            match TokenServiceClient::new(channel)
                .get_token(pb::GetTokenRequest {
                    serial: serial.to_string(),
                })
                .await
            {
                Ok(r) => r.into_inner().token,
                Err(s) if s.code() == tonic::Code::NotFound => None,
                Err(s) => panic!("GetToken: {s:?}"),
            }
        })
    }

    fn person_transition(&self, id: &str, suspend: bool, request_id: &str) {
        self.rpc("hr", |channel| async move {
            let mut d = DirectoryServiceClient::new(channel);
            if suspend {
                d.suspend_person(pb::SuspendPersonRequest {
                    request_id: request_id.into(),
                    external_id: id.into(),
                    reason: "test".into(),
                })
                .await
                .unwrap();
            } else {
                d.reinstate_person(pb::ReinstatePersonRequest {
                    request_id: request_id.into(),
                    external_id: id.into(),
                    reason: "test".into(),
                })
                .await
                .unwrap();
            }
        });
    }

    /// Serials (lower-case hex) of the certificates in slots 9a and 9c of the card.
    fn certificates_on_card(&self) -> Vec<String> {
        let mut token = tessera::piv::PivToken::open(Some(self.card.reader_name())).unwrap();
        let mut out = Vec::new();
        for slot in [
            yubikey::piv::SlotId::Authentication,
            yubikey::piv::SlotId::Signature,
        ] {
            if let Some((serial, _)) =
                tessera::station::enrollment::certificate_on_token(&mut token, slot).unwrap()
            {
                out.push(serial);
            }
        }
        out
    }

    /// The server's GOOD certificates for the card's serial are exactly those on the card.
    fn assert_good_certificates_are_on_the_card(&self) {
        let on_card = self.certificates_on_card();
        let good: Vec<String> = self
            .certificates_of_token(self.card.options().serial)
            .into_iter()
            .filter(|c| c.status == pb::CertificateStatus::Good as i32)
            .map(|c| c.serial)
            .collect();
        for serial in &good {
            assert!(
                on_card
                    .iter()
                    .any(|s| s.trim_start_matches('0') == serial.trim_start_matches('0')),
                "GOOD certificate {serial} is not on the card (card has {on_card:?})"
            );
        }
    }

    /// `yubico-piv-tool -a read-certificate -s SLOT` passes `openssl verify` with Tessera's chain.
    fn verify_slot_certificate(&self, slot: &str) -> String {
        let read = self
            .card
            .yubico_piv_tool(&["-a", "read-certificate", "-s", slot], None)
            .success();
        let pem = self.path(&format!("slot-{slot}.pem"));
        std::fs::write(&pem, &read.stdout).unwrap();
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(self.data_dir.join("root.pem"))
            .arg("-untrusted")
            .arg(self.data_dir.join("issuing.pem"))
            .arg(&pem)
            .output()
            .unwrap();
        assert_ok(&out, &format!("openssl verify of slot {slot}"));
        assert_eq!(text(&out.stdout), format!("{}: OK\n", pem.display()));
        read.stdout
    }
}

fn stdout_has_line(out: &Output, line: &str) {
    let stdout = text(&out.stdout);
    assert!(
        stdout.lines().any(|l| l == line),
        "{line:?} missing from:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
}

/// The job Tessera exists for: enroll, verify, log in to nginx, suspend → refused, reinstate →
/// allowed again. AES management key (firmware 5.7.4).
#[test]
fn enroll_aes_token_then_log_in_to_nginx_until_suspended() {
    let world = World::start(CardOptions::firmware("5.7.4").serial(32_000_001));
    world.create_person("ALICE");
    let out = world.enroll("ALICE", &[]);
    assert_ok(&out, "station enroll");
    for line in [
        "[ 1] read the token (serial, firmware, retry counters; no secret is tried)",
        "     PIN: 3 tries left (factory default)",
        "     factory management key: the token's metadata says PIN, PUK and management key are the factory defaults",
        "[ 5] set the new management key (AES-256, from the server, which keeps it wrapped by its HSM; not shown)",
        "     touch the YubiKey now (it blinks)",
    ] {
        stdout_has_line(&out, line);
    }
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("confirm enrollment (ConfirmEnrollment)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("token 32000001 is TOKEN_STATE_ACTIVE"),
        "{stdout}"
    );
    assert!(!stdout.contains(NEW_PIN), "the PIN must never be printed");

    // The card holds the certificates; they verify; the new PIN works.
    world.verify_slot_certificate("9a");
    world.verify_slot_certificate("9c");
    world
        .card
        .yubico_piv_tool(
            &["--stdin-input", "-a", "verify-pin"],
            Some(&format!("{NEW_PIN}\n")),
        )
        .success()
        .has_line("Successfully verified PIN.");
    world.assert_good_certificates_are_on_the_card();
    assert_eq!(
        world.token(32_000_001).unwrap().state,
        pb::TokenState::Active as i32
    );

    // Status shows both sides.
    let status = world.station(&["status"]);
    assert_ok(&status, "station status");
    let status_text = text(&status.stdout);
    assert!(
        status_text.contains("token 32000001 is TOKEN_STATE_ACTIVE, held by person ALICE"),
        "{status_text}"
    );
    assert_eq!(
        status_text.matches("CERTIFICATE_STATUS_GOOD").count(),
        2,
        "{status_text}"
    );
    assert_eq!(
        status_text.matches(", on the token").count(),
        2,
        "{status_text}"
    );

    // Log in to nginx with the token's key through OpenSC.
    let d = world.dir.path();
    let chain = world.data_dir.join("chain.pem");
    let root_crl = harness::relying_party::root_crl(&world.hsm, &world.data_dir, d);
    let http = world.server.http.clone().expect("the server's HTTP side");
    let crl = d.join("crls.pem");
    harness::relying_party::fetch_crl(&http, &root_crl, &crl);
    let nginx = Nginx::start(d, &chain, &crl);
    let cert = world.path("slot-9a.pem");
    // libp11's pin-source=file takes the whole file as the PIN: no trailing newline.
    let pin = world.path("curl-pin");
    write_private(&pin, NEW_PIN);
    let login = || {
        curl_with_token(
            &nginx.url(),
            &nginx.server_cert,
            &cert,
            &pin,
            &world.card.opensc_conf(),
            d,
        )
    };
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let subject = text(&subject.stdout)
        .trim()
        .trim_start_matches("subject=")
        .to_string();
    let run = login();
    assert_eq!(
        run.stdout,
        format!("verify=SUCCESS subject={subject}\n"),
        "{run:?}"
    );

    // HR suspends the person: after a CRL refresh nginx refuses the same login.
    world.person_transition("ALICE", true, "suspend-alice");
    harness::relying_party::fetch_crl(&http, &root_crl, &crl);
    nginx.reload_crl(&crl);
    let run = login();
    assert!(
        run.stdout.contains("400 The SSL certificate error"),
        "{run:?}"
    );
    let log = std::fs::read_to_string(nginx.dir.join("logs/error.log")).unwrap();
    assert!(log.contains("certificate revoked"), "{log}");

    // Reinstated: allowed again.
    world.person_transition("ALICE", false, "reinstate-alice");
    harness::relying_party::fetch_crl(&http, &root_crl, &crl);
    nginx.reload_crl(&crl);
    let run = login();
    assert_eq!(
        run.stdout,
        format!("verify=SUCCESS subject={subject}\n"),
        "{run:?}"
    );
}

/// Firmware 5.2.7: 3DES management key and no GET METADATA, so the station cannot know the
/// token is factory-fresh and resets it, but only once the reset is confirmed.
#[test]
fn enroll_3des_token_without_metadata_needs_a_confirmed_reset() {
    // The virtual card's ECDSA is not EUCLEAK-affected; this test is about 3DES, so the policy
    // does not apply that advisory.
    let policy = include_str!("../../config/attestation-policy.toml")
        .replace("ysa-2024-03 = true", "ysa-2024-03 = false");
    let policy: &'static str = Box::leak(policy.into_boxed_str());
    let world = World::start_with(
        CardOptions::firmware("5.2.7").serial(32_000_002),
        Setup {
            attestation_policy: Some(policy),
            ..Setup::default()
        },
    );
    world.create_person("BOB");
    let refused = world.enroll("BOB", &[]);
    let stderr = text(&refused.stderr);
    assert!(
        stderr.starts_with("error: no terminal to ask on (a confirmation); pass --confirm-reset to confirm up front; enrollment "),
        "{stderr}"
    );
    assert!(
        stderr.contains("was aborted on the server (0 certificate(s) issued for it are revoked)"),
        "{stderr}"
    );
    stdout_has_line(
        &refused,
        "     the token must be reset: firmware 5.2.7 cannot say whether its PIN, PUK and management key are the factory defaults (no GET METADATA before 5.3), and the station never tries a secret nobody gave",
    );
    world
        .card
        .yubico_piv_tool(&["-a", "status"], None)
        .success()
        .has_line("PIN tries left:\t3");

    let out = world.enroll("BOB", &["--confirm-reset"]);
    assert_ok(&out, "station enroll --confirm-reset");
    stdout_has_line(
        &out,
        "     Reset token 32000002? This erases every key and certificate on it (a reset first blocks its PIN and PUK, as the card requires). yes (--confirm-reset)",
    );
    assert!(
        text(&out.stdout).contains("set the new management key (3DES,"),
        "{}",
        text(&out.stdout)
    );
    world.verify_slot_certificate("9a");
    world.assert_good_certificates_are_on_the_card();
    world
        .card
        .yubico_piv_tool(
            &["--stdin-input", "-a", "verify-pin"],
            Some(&format!("{NEW_PIN}\n")),
        )
        .success();
}

/// A forgotten PIN: blocked with wrong PINs, unblocked with the escrowed PUK.
#[test]
fn unblock_a_blocked_pin_with_the_escrowed_puk() {
    let world = World::start(CardOptions::firmware("5.7.4").serial(32_000_003));
    world.create_person("CAROL");
    assert_ok(&world.enroll("CAROL", &[]), "station enroll");
    for _ in 0..3 {
        world
            .card
            .yubico_piv_tool(&["--stdin-input", "-a", "verify-pin"], Some("11111111\n"))
            .failure();
    }
    world
        .card
        .yubico_piv_tool(&["-a", "status"], None)
        .success()
        .has_line("PIN tries left:\t0");
    let new_pin = world.pin_file("97531864");
    let out = world.station(&[
        "unblock",
        "--pin-file",
        new_pin.to_str().unwrap(),
        "--reason",
        "forgotten PIN, ticket 4711",
    ]);
    assert_ok(&out, "station unblock");
    stdout_has_line(&out, "     PIN: 0 tries left (changed)");
    stdout_has_line(
        &out,
        "     PIN set; 3 tries left; PUK rotated (3 tries left)",
    );
    assert!(!text(&out.stdout).contains("97531864"));
    world
        .card
        .yubico_piv_tool(&["--stdin-input", "-a", "verify-pin"], Some("97531864\n"))
        .success()
        .has_line("Successfully verified PIN.");
}

// ---------------------------------------------------------------------------------------------
// PUK rotation after an unblock (issue 13, item 5).

impl World {
    /// ReleasePuk as `role` (its own client certificate): (PUK, new PUK, its generation, resumed).
    fn release_puk_as(&self, role: &str, serial: u32) -> (String, String, i64, bool) {
        use tessera::protocol::pb::enrollment_service_client::EnrollmentServiceClient;
        let r = self
            .rpc(role, |channel| async move {
                EnrollmentServiceClient::new(channel)
                    .release_puk(pb::ReleasePukRequest {
                        request_id: format!("test-release-{}", std::process::id())
                            + &format!("-{:?}", std::time::Instant::now()),
                        token_serial: serial.to_string(),
                        reason: "test: which PUK does the server release".into(),
                    })
                    .await
            })
            .unwrap()
            .into_inner();
        (r.puk, r.new_puk, r.new_puk_generation, r.new_puk_resumed)
    }

    /// PUK tries left on the card, read without trying a PUK.
    fn puk_tries_left(&self) -> Option<u8> {
        PivToken::open(Some(self.card.reader_name()))
            .unwrap()
            .info()
            .unwrap()
            .puk_tries_left
    }

    /// Tries `puk` on the card (CHANGE REFERENCE DATA to itself): Ok, or the card's answer.
    fn try_puk(&self, puk: &str) -> Result<(), tessera::piv::PivError> {
        let secret = Secret::new(puk.as_bytes().to_vec());
        PivToken::open(Some(self.card.reader_name()))
            .unwrap()
            .change_puk(&secret, &secret)
    }

    /// Blocks the person's PIN with wrong PINs.
    fn block_pin(&self) {
        for _ in 0..3 {
            self.card
                .yubico_piv_tool(&["--stdin-input", "-a", "verify-pin"], Some("11111111\n"))
                .failure();
        }
    }

    /// Every byte of the SQLite database files (main file, WAL).
    fn database_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("tessera.db") {
                all.extend(std::fs::read(&path).unwrap());
            }
        }
        assert!(!all.is_empty(), "no database file in {:?}", self.dir.path());
        all
    }

    fn unblock(&self, pin: &str) -> Output {
        let pin = self.pin_file(pin);
        self.station(&[
            "unblock",
            "--pin-file",
            pin.to_str().unwrap(),
            "--reason",
            "forgotten PIN, ticket 4713",
        ])
    }
}

fn in_clear(haystack: &[u8], secret: &str) -> bool {
    haystack
        .windows(secret.len())
        .any(|w| w == secret.as_bytes())
}

/// After `unblock` the card's PUK is the new one the server generated and ReleasePuk hands it
/// out; the old PUK no longer works on the card. Here an earlier release (another operator's)
/// had already handed out the new PUK, so the station tries it first: the card still holds the
/// old one, which costs one try that the old PUK's success restores. No PUK is ever in the
/// clear in the database.
#[test]
fn unblock_rotates_the_puk_and_the_old_one_no_longer_works() {
    const SERIAL: u32 = 32_000_021;
    let world = World::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    world.create_person("RUTH");
    assert_ok(&world.enroll("RUTH", &[]), "station enroll");
    world.block_pin();
    let (old, new, generation, resumed) = world.release_puk_as("admin", SERIAL);
    assert!(!resumed);
    assert_ne!(old, new);

    let out = world.unblock("97531864");
    assert_ok(&out, "station unblock");
    stdout_has_line(
        &out,
        "     an earlier unblock of this token did not confirm its new PUK: the card holds the new PUK or the escrowed one; trying the new one first",
    );
    stdout_has_line(
        &out,
        "     the card does not hold the new PUK (2 tries left); trying the escrowed one",
    );
    stdout_has_line(
        &out,
        "     PIN set; 3 tries left; PUK rotated (3 tries left)",
    );
    assert!(!text(&out.stdout).contains(&new) && !text(&out.stdout).contains(&old));

    // The server now releases the new PUK (and a fresh rotation); the card holds it.
    let (released, next, next_generation, resumed) = world.release_puk_as("admin", SERIAL);
    assert_eq!(released, new);
    assert!(next_generation > generation && !resumed && next != new);
    assert!(matches!(
        world.try_puk(&old),
        Err(tessera::piv::PivError::WrongPuk { tries_left: 2 })
    ));
    world.try_puk(&new).unwrap();
    assert_eq!(world.puk_tries_left(), Some(3));
    world
        .card
        .yubico_piv_tool(&["--stdin-input", "-a", "verify-pin"], Some("97531864\n"))
        .success();
    let db = world.database_bytes();
    for secret in [&old, &new, &next] {
        assert!(
            !in_clear(&db, secret),
            "a PUK is in the clear in the database"
        );
    }
}

/// The card is pulled after its PUK was changed and before ConfirmPukRotation: the station
/// stops, the server still releases the old PUK and the same new one (resumed); run again, the
/// station finds the new PUK on the card (its first try), confirms, and no try is lost.
#[test]
fn unblock_finishes_after_the_card_was_pulled_between_change_and_confirm() {
    const SERIAL: u32 = 32_000_022;
    let mut world = World::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    world.create_person("SAM");
    assert_ok(&world.enroll("SAM", &[]), "station enroll");
    world.block_pin();
    // GET METADATA: three when the token is read, one before the unblock and one before the
    // PUK change (the driver checks the PUK is not blocked), the sixth reads the counters after.
    world.card.pull();
    world
        .card
        .options_mut()
        .extra_args
        .extend(["--fault-disconnect-at-ins".to_string(), "F7:6".to_string()]);
    world.card.insert();
    let out = world.unblock("97531864");
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("error: read the retry counters: "),
        "{stderr}\n{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains("set the new PUK generated by the server"),
        "{}",
        text(&out.stdout)
    );
    world.card.pull();
    let options = world.card.options_mut();
    let at = options
        .extra_args
        .iter()
        .position(|a| a == "--fault-disconnect-at-ins")
        .unwrap();
    options.extra_args.drain(at..at + 2);
    world.card.insert();

    let out = world.unblock("86420975");
    assert_ok(&out, "station unblock, run again");
    stdout_has_line(
        &out,
        "     the card already holds the new PUK (set by the earlier unblock)",
    );
    stdout_has_line(
        &out,
        "     PIN set; 3 tries left; PUK rotated (3 tries left)",
    );
    let (released, _, _, _) = world.release_puk_as("admin", SERIAL);
    world.try_puk(&released).unwrap();
    assert_eq!(world.puk_tries_left(), Some(3));
    world
        .card
        .yubico_piv_tool(&["--stdin-input", "-a", "verify-pin"], Some("86420975\n"))
        .success();
}

/// A resumed rotation (the card may hold either PUK) with one PUK try left: the station tries
/// nothing rather than risk blocking the PUK, and says so.
#[test]
fn unblock_refuses_to_guess_with_one_puk_try_left() {
    const SERIAL: u32 = 32_000_023;
    let world = World::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    world.create_person("TINA");
    assert_ok(&world.enroll("TINA", &[]), "station enroll");
    let (_, _, _, _) = world.release_puk_as("admin", SERIAL);
    for left in [2, 1] {
        assert!(matches!(
            world.try_puk("00000000"),
            Err(tessera::piv::PivError::WrongPuk { tries_left }) if tries_left == left
        ));
    }
    let out = world.unblock("97531864");
    assert_refused(
        &out,
        "the card holds either the escrowed PUK or the new one an earlier unblock set, and only 1 PUK tries are left: trying both could block the PUK; nothing was tried. Retire the token (tessera station retire) and enroll it again",
    );
    assert_eq!(world.puk_tries_left(), Some(1));
}

/// A token left at home: `forgotten` (no token needed) puts its certificates on hold, `found`
/// (the token back in the reader) reinstates it. `found` on a token that is not forgotten and
/// `forgotten` on an unknown serial are refused with what to do.
#[test]
fn forgotten_then_found_at_the_desk() {
    const SERIAL: u32 = 32_000_024;
    let world = World::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    world.create_person("UMA");
    assert_ok(&world.enroll("UMA", &[]), "station enroll");
    let statuses = |world: &World| {
        world
            .certificates_of_token(SERIAL)
            .iter()
            .map(|c| c.status)
            .collect::<Vec<_>>()
    };
    let out = world.station(&[
        "forgotten",
        "--serial",
        &SERIAL.to_string(),
        "--reason",
        "left at home, ticket 4714",
    ]);
    assert_ok(&out, "station forgotten");
    stdout_has_line(&out, "     token 32000024 is TOKEN_STATE_FORGOTTEN");
    stdout_has_line(
        &out,
        "station: token 32000024 is forgotten; its certificates are on hold until it is found",
    );
    let held = pb::CertificateStatus::OnHold as i32;
    assert_eq!(statuses(&world), [held, held]);

    let out = world.station(&["found", "--reason", "brought back, ticket 4714"]);
    assert_ok(&out, "station found");
    stdout_has_line(&out, "     token 32000024 is TOKEN_STATE_ACTIVE");
    let good = pb::CertificateStatus::Good as i32;
    assert_eq!(statuses(&world), [good, good]);

    assert_refused(
        &world.station(&["found", "--reason", "again"]),
        "token 32000024 is TOKEN_STATE_ACTIVE, not forgotten; `found` reinstates only a forgotten token, nothing was changed",
    );
    assert_refused(
        &world.station(&["forgotten", "--serial", "39999999", "--reason", "x"]),
        "the server refused MarkTokenForgotten: NOT_FOUND TOKEN_NOT_FOUND: no token with serial \"39999999\"; check the person id or token serial (tessera station status shows what the server knows)",
    );
}

/// Issue 12, finding 9: under dual control `unblock` first stops with the release id; the
/// same desk cannot approve it, a second desk does (`approve-puk-release`), then `unblock`
/// again releases the PUK and sets the PIN. `unblock` without `--reason` is refused by the CLI.
#[test]
fn unblock_under_dual_control() {
    let world = World::start_with(
        CardOptions::firmware("5.7.4").serial(32_000_013),
        Setup {
            puk_release_approval: true,
            ..Setup::default()
        },
    );
    world.create_person("OSCAR");
    assert_ok(&world.enroll("OSCAR", &[]), "station enroll");
    let new_pin = world.pin_file("97531864");
    let pin = new_pin.to_str().unwrap();
    let out = world.station(&["unblock", "--pin-file", pin]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--reason"),
        "{}",
        text(&out.stderr)
    );

    let unblock = [
        "unblock",
        "--pin-file",
        pin,
        "--reason",
        "forgotten PIN, ticket 4712",
    ];
    let out = world.station(&unblock);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with(
            "error: the server refused ReleasePuk: FAILED_PRECONDITION PUK_RELEASE_PENDING_APPROVAL: the PUK release of token 32000013 waits for approval by a second operator: release id pkr_"
        ),
        "{stderr}"
    );
    assert!(
        last.contains("tessera station approve-puk-release"),
        "{last}"
    );
    let release_id: String = last[last.find("pkr_").unwrap()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    assert_eq!(release_id.len(), 4 + 32, "{release_id}");

    let approve = |role: &str| {
        world.station_as(
            role,
            &[
                "approve-puk-release",
                "--release-id",
                &release_id,
                "--token-serial",
                "32000013",
                "--reason",
                "person seen at desk 1",
            ],
        )
    };
    let own = approve("helpdesk");
    assert!(!own.status.success());
    assert!(
        text(&own.stderr).contains("PERMISSION_DENIED APPROVER_IS_REQUESTER"),
        "{}",
        text(&own.stderr)
    );
    let approved = approve("desk2");
    assert_ok(&approved, "station approve-puk-release");
    assert!(
        text(&approved.stdout).contains(&format!(
            "station: PUK release {release_id} of token 32000013 approved (asked by helpdesk-client: \"forgotten PIN, ticket 4712\")"
        )),
        "{}",
        text(&approved.stdout)
    );

    let out = world.station(&unblock);
    assert_ok(&out, "station unblock after the approval");
    stdout_has_line(
        &out,
        "     PIN set; 3 tries left; PUK rotated (3 tries left)",
    );
    world
        .card
        .yubico_piv_tool(&["--stdin-input", "-a", "verify-pin"], Some("97531864\n"))
        .success()
        .has_line("Successfully verified PIN.");
}

/// Retire: revoked on the server, wiped on the card.
#[test]
fn retire_revokes_and_wipes() {
    let world = World::start(CardOptions::firmware("5.7.4").serial(32_000_004));
    world.create_person("DAVE");
    assert_ok(&world.enroll("DAVE", &[]), "station enroll");
    let refused = world.station(&["retire"]);
    assert_refused(
        &refused,
        "no terminal to ask on (a confirmation); pass --confirm-reset to confirm up front",
    );
    assert_eq!(
        world.token(32_000_004).unwrap().state,
        pb::TokenState::Active as i32
    );

    let out = world.station(&["retire", "--confirm-reset"]);
    assert_ok(&out, "station retire");
    assert_eq!(
        world.token(32_000_004).unwrap().state,
        pb::TokenState::Retired as i32
    );
    let certs = world.certificates_of_token(32_000_004);
    assert_eq!(certs.len(), 2);
    assert!(
        certs
            .iter()
            .all(|c| c.status == pb::CertificateStatus::Revoked as i32),
        "{certs:?}"
    );
    assert!(world.certificates_on_card().is_empty());
    let status = world.station(&["status"]);
    stdout_has_line(&status, "     PIN: 3 tries left (factory default)");
    stdout_has_line(&status, "     no certificate in slots 9a, 9c, 9d, 9e");
}

/// Replace: the lost token is marked lost (its certificates revoked), the one in the reader is
/// enrolled. Both virtual cards get their attestation key from one test root, which the server
/// trusts.
#[test]
fn replace_a_lost_token() {
    let roots = tempfile::tempdir().unwrap();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "root.key",
            "-out",
            "root.pem",
            "-days",
            "30",
            "-subj",
            "/CN=Station Test Attestation Root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
        roots.path(),
    );
    let shared_root = |options: CardOptions| {
        options
            .arg("--attestation-root-cert")
            .arg(roots.path().join("root.pem").to_str().unwrap())
            .arg("--attestation-root-key")
            .arg(roots.path().join("root.key").to_str().unwrap())
    };
    let world = World::start(shared_root(
        CardOptions::firmware("5.7.4").serial(32_000_005),
    ));
    world.create_person("ERIN");
    assert_ok(&world.enroll("ERIN", &[]), "station enroll");
    let second = VirtualCard::start(shared_root(
        CardOptions::firmware("5.7.4").serial(32_000_006),
    ));
    let pin = world.pin_file(NEW_PIN);
    let out = Command::new("setsid")
        .arg("--wait")
        .arg(TESSERA)
        .args([
            "station",
            "replace",
            "--old-serial",
            "32000005",
            "--person",
            "ERIN",
            "--profile",
            "piv-login",
            "--pin-file",
        ])
        .arg(&pin)
        .env(
            "TESSERA_STATION_SERVER",
            format!("https://{}", world.server.grpc),
        )
        .env("TESSERA_STATION_CA_CERT", world.path("server-ca.pem"))
        .env("TESSERA_STATION_CLIENT_CERT", world.path("helpdesk.pem"))
        .env("TESSERA_STATION_CLIENT_KEY", world.path("helpdesk.key"))
        .env("TESSERA_STATION_READER", second.reader_name())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ok(&out, "station replace");
    stdout_has_line(&out, "     token 32000005 is TOKEN_STATE_LOST");
    assert_eq!(
        world.token(32_000_005).unwrap().state,
        pb::TokenState::Lost as i32
    );
    let old = world.certificates_of_token(32_000_005);
    assert_eq!(old.len(), 2);
    assert!(
        old.iter()
            .all(|c| c.status == pb::CertificateStatus::Revoked as i32),
        "{old:?}"
    );
    assert_eq!(
        world.token(32_000_006).unwrap().state,
        pb::TokenState::Active as i32
    );
    let new = world.certificates_of_token(32_000_006);
    assert_eq!(
        new.iter()
            .filter(|c| c.status == pb::CertificateStatus::Good as i32)
            .count(),
        2,
        "{new:?}"
    );
}

/// Refusals that leave nothing behind: the wrong role, a person who is not active, the old
/// token offered as its own replacement.
#[test]
fn refusals_name_their_reason() {
    let world = World::start(CardOptions::firmware("5.7.4").serial(32_000_007));
    world.create_person("FRANK");
    let pin = world.pin_file(NEW_PIN);
    let out = world.station_as(
        "hr",
        &[
            "enroll",
            "--person",
            "FRANK",
            "--profile",
            "piv-login",
            "--pin-file",
            pin.to_str().unwrap(),
        ],
    );
    assert_refused(
        &out,
        "the server refused BeginEnrollment: PERMISSION_DENIED ROLE_NOT_ALLOWED: role hr may not call /tessera.v1.EnrollmentService/BeginEnrollment; \
         check that the station's client certificate carries the helpdesk role (tessera admin issue-client-cert --role helpdesk)",
    );
    world.person_transition("FRANK", true, "suspend-frank");
    let out = world.enroll("FRANK", &[]);
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(
            "error: the server refused BeginEnrollment: FAILED_PRECONDITION PERSON_NOT_ACTIVE: "
        ),
        "{stderr}"
    );
    assert!(
        world
            .token(32_000_007)
            .is_none_or(|t| t.state != pb::TokenState::Active as i32)
    );
    assert!(world.certificates_of_token(32_000_007).is_empty());
    // Nothing was tried on the card.
    world
        .card
        .yubico_piv_tool(&["-a", "status"], None)
        .success()
        .has_line("PIN tries left:\t3");

    let out = world.station(&[
        "replace",
        "--old-serial",
        "32000007",
        "--person",
        "FRANK",
        "--profile",
        "piv-login",
        "--pin-file",
        pin.to_str().unwrap(),
    ]);
    assert_refused(
        &out,
        "the token in the reader is the old token 32000007; put the new token in the reader",
    );

    let open = world.pin_file("1234");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = world.station(&[
        "enroll",
        "--person",
        "FRANK",
        "--profile",
        "piv-login",
        "--pin-file",
        open.to_str().unwrap(),
    ]);
    assert_refused(
        &out,
        &format!(
            "the PIN file {0} can be read by other users (mode 644); run `chmod 600 {0}`",
            open.display()
        ),
    );
}

/// Touch never comes: the station said "touch the YubiKey now", names the timeout, aborts.
#[test]
fn no_touch_aborts_with_a_clear_message() {
    let world = World::start(
        CardOptions::firmware("5.7.4")
            .serial(32_000_008)
            .arg("--refuse-touch"),
    );
    world.create_person("GRACE");
    let out = world.enroll("GRACE", &[]);
    stdout_has_line(&out, "     touch the YubiKey now (it blinks)");
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(
            "error: sign the proof with slot 9c: no touch: the token answered 6982 (security status not satisfied) while waiting for a touch; \
             touch the YubiKey when it blinks and run the command again; enrollment "
        ),
        "{stderr}"
    );
    assert!(stderr.contains("was aborted on the server"), "{stderr}");
    assert!(
        world
            .certificates_of_token(32_000_008)
            .iter()
            .all(|c| c.status != pb::CertificateStatus::Good as i32)
    );
}

/// The card is pulled at one instruction of the enrollment; the station aborts, the server keeps
/// no GOOD certificate that is not on the card, and a retry (with the card back) enrolls.
fn card_pulled_at(ins: &str, serial: u32, expect_step: &str) {
    let mut world = World::start(
        CardOptions::firmware("5.7.4")
            .serial(serial)
            .arg("--fault-disconnect-at-ins")
            .arg(ins),
    );
    world.create_person("HEIDI");
    let out = world.enroll("HEIDI", &[]);
    assert!(
        !out.status.success(),
        "the enrollment cannot succeed with the card pulled:\n{}",
        text(&out.stdout)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("error: {expect_step}: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains("the token left the reader (pulled, or it stopped answering)")
            || stderr.contains("the token was removed or stopped answering during"),
        "{stderr}"
    );
    assert!(stderr.contains("was aborted on the server"), "{stderr}");
    // The card is back (without the fault).
    world.card.pull();
    let options = world.card.options_mut();
    let at = options
        .extra_args
        .iter()
        .position(|a| a == "--fault-disconnect-at-ins")
        .unwrap();
    options.extra_args.drain(at..at + 2);
    world.card.insert();
    world.assert_good_certificates_are_on_the_card();
    assert!(
        world
            .certificates_of_token(serial)
            .iter()
            .all(|c| c.status != pb::CertificateStatus::Good as i32),
        "an aborted enrollment leaves no GOOD certificate"
    );

    let retry = world.enroll("HEIDI", &["--confirm-reset"]);
    assert_ok(&retry, "the retry");
    world.verify_slot_certificate("9a");
    world.assert_good_certificates_are_on_the_card();
    let good = world
        .certificates_of_token(serial)
        .into_iter()
        .filter(|c| c.status == pb::CertificateStatus::Good as i32)
        .count();
    assert_eq!(good, 2);
    world
        .card
        .yubico_piv_tool(
            &["--stdin-input", "-a", "verify-pin"],
            Some(&format!("{NEW_PIN}\n")),
        )
        .success();
}

#[test]
fn card_pulled_at_authentication() {
    card_pulled_at(
        "87",
        32_100_001,
        "authenticate with the factory management key",
    );
}

#[test]
fn card_pulled_at_set_management_key() {
    card_pulled_at("FF", 32_100_002, "set the management key");
}

#[test]
fn card_pulled_at_set_puk() {
    card_pulled_at("24", 32_100_003, "set the PUK");
}

#[test]
fn card_pulled_at_generate() {
    card_pulled_at("47", 32_100_004, "generate the key in slot 9a");
}

#[test]
fn card_pulled_at_attest() {
    card_pulled_at("F9", 32_100_005, "attest slot 9a");
}

#[test]
fn card_pulled_at_write_certificate() {
    card_pulled_at("DB", 32_100_006, "write the certificate of slot 9a");
}

#[test]
fn card_pulled_at_proof_signature() {
    // GENERAL AUTHENTICATE also authenticates the management key (twice: old and new key);
    // its fifth occurrence is the first proof-of-possession signature.
    card_pulled_at("87:5", 32_100_008, "sign the proof with slot 9a");
}

#[test]
fn card_pulled_at_set_pin() {
    // CHANGE REFERENCE DATA sets the PUK first; its second occurrence sets the person's PIN,
    // after the certificates were issued and written.
    card_pulled_at("24:2", 32_100_009, "set the PIN");
}

#[test]
fn card_pulled_at_verify_pin() {
    card_pulled_at("20", 32_100_007, "verify the PIN");
}

// ---------------------------------------------------------------------------------------------
// At a terminal: the PIN typed twice without echo, and confirmations (tests/python/pty_operator.py
// plays the operator on a pseudo-terminal).

impl World {
    fn station_at_terminal(&self, script: &[(&str, &str)], args: &[&str]) -> Output {
        let script: Vec<[&str; 2]> = script
            .iter()
            .map(|(prompt, answer)| [*prompt, *answer])
            .collect();
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/pty_operator.py"))
            .arg(serde_json::to_string(&script).unwrap())
            .arg(TESSERA)
            .arg("station")
            .args(args)
            .env(
                "TESSERA_STATION_SERVER",
                format!("https://{}", self.server.grpc),
            )
            .env("TESSERA_STATION_CA_CERT", self.path("server-ca.pem"))
            .env("TESSERA_STATION_CLIENT_CERT", self.path("helpdesk.pem"))
            .env("TESSERA_STATION_CLIENT_KEY", self.path("helpdesk.key"))
            .env("TESSERA_STATION_READER", self.card.reader_name())
            .stdin(Stdio::null())
            .output()
            .expect("cannot run python3 tests/python/pty_operator.py")
    }
}

#[test]
fn pin_typed_twice_at_the_terminal_is_never_echoed() {
    let world = World::start(CardOptions::firmware("5.7.4").serial(32_000_009));
    world.create_person("IVAN");
    let enroll = ["enroll", "--person", "IVAN", "--profile", "piv-login"];

    // Two different PINs: nothing happens, not even BeginEnrollment.
    let out = world.station_at_terminal(
        &[
            ("New PIN for the token (6-8 characters): ", NEW_PIN),
            ("The same PIN again: ", "13572468"),
        ],
        &enroll,
    );
    let transcript = text(&out.stdout);
    assert!(!out.status.success(), "{transcript}");
    assert!(
        transcript
            .contains("error: the two PINs differ; nothing was changed, run the command again"),
        "{transcript}"
    );
    assert!(world.token(32_000_009).is_none(), "no enrollment began");
    world
        .card
        .yubico_piv_tool(&["-a", "status"], None)
        .success()
        .has_line("PIN tries left:\t3");

    let out = world.station_at_terminal(
        &[
            ("New PIN for the token (6-8 characters): ", NEW_PIN),
            ("The same PIN again: ", NEW_PIN),
        ],
        &enroll,
    );
    let transcript = text(&out.stdout);
    assert!(out.status.success(), "{transcript}");
    assert!(transcript.contains("The same PIN again: "), "{transcript}");
    assert!(
        !transcript.contains(NEW_PIN),
        "the terminal echoed the PIN:\n{transcript}"
    );
    assert!(
        transcript.contains("token 32000009 is TOKEN_STATE_ACTIVE"),
        "{transcript}"
    );
    world
        .card
        .yubico_piv_tool(
            &["--stdin-input", "-a", "verify-pin"],
            Some(&format!("{NEW_PIN}\n")),
        )
        .success();
}

#[test]
fn reset_is_asked_at_the_terminal_and_no_means_no() {
    let policy = include_str!("../../config/attestation-policy.toml")
        .replace("ysa-2024-03 = true", "ysa-2024-03 = false");
    let policy: &'static str = Box::leak(policy.into_boxed_str());
    let world = World::start_with(
        CardOptions::firmware("5.2.7").serial(32_000_010),
        Setup {
            attestation_policy: Some(policy),
            ..Setup::default()
        },
    );
    world.create_person("JUDY");
    let pin = world.pin_file(NEW_PIN);
    let enroll = [
        "enroll",
        "--person",
        "JUDY",
        "--profile",
        "piv-login",
        "--pin-file",
        pin.to_str().unwrap(),
    ];
    let out = world.station_at_terminal(&[("[y/N] ", "n")], &enroll);
    let transcript = text(&out.stdout);
    assert!(!out.status.success(), "{transcript}");
    assert!(
        transcript.contains("Reset token 32000010? This erases every key and certificate on it"),
        "{transcript}"
    );
    assert!(
        transcript
            .contains("error: the reset was not confirmed; the token was not changed; enrollment "),
        "{transcript}"
    );
    world
        .card
        .yubico_piv_tool(&["-a", "status"], None)
        .success()
        .has_line("PIN tries left:\t3");

    let out = world.station_at_terminal(&[("[y/N] ", "y")], &enroll);
    let transcript = text(&out.stdout);
    assert!(out.status.success(), "{transcript}");
    assert!(
        transcript.contains("reset the token's PIV application"),
        "{transcript}"
    );
    world.verify_slot_certificate("9a");
}

// ---------------------------------------------------------------------------------------------
// Renewal in place (`tessera station renew`).

impl World {
    /// `tessera station renew` as `role` with the person's PIN from a file.
    fn renew_as(&self, role: &str, extra: &[&str]) -> Output {
        let pin = self.pin_file(NEW_PIN);
        let mut args = vec![
            "renew",
            "--pin-file",
            pin.to_str().unwrap(),
            "--reason",
            "ticket 4711",
        ];
        args.extend_from_slice(extra);
        self.station_as(role, &args)
    }

    /// (serial, status, revocation reason) of each certificate of the token, as the server
    /// lists them.
    fn statuses(&self, serial: u32) -> Vec<(String, i32, i32)> {
        self.certificates_of_token(serial)
            .into_iter()
            .map(|c| (c.serial, c.status, c.revocation_reason))
            .collect()
    }
}

fn status_in(statuses: &[(String, i32, i32)], serial: &str) -> (pb::CertificateStatus, i32) {
    let (_, status, reason) = statuses
        .iter()
        .find(|(s, _, _)| s.trim_start_matches('0') == serial.trim_start_matches('0'))
        .unwrap_or_else(|| panic!("no certificate {serial} in {statuses:?}"));
    (pb::CertificateStatus::try_from(*status).unwrap(), *reason)
}

/// The desk renews slot 9a of an enrolled token: refused within the window's rules for the help
/// desk, forced by an admin; the PIN and the 9c certificate are kept, the old 9a certificate is
/// revoked as superseded.
#[test]
fn renew_slot_9a_at_the_desk_keeps_the_pin_and_the_9c_certificate() {
    let serial = 32_200_001;
    let world = World::start(CardOptions::firmware("5.7.4").serial(serial));
    world.create_person("RITA");
    assert_ok(&world.enroll("RITA", &[]), "station enroll");
    let before = world.certificates_on_card();
    assert_eq!(before.len(), 2);

    let early = world.renew_as("helpdesk", &["--slot", "9a"]);
    let stderr = text(&early.stderr);
    assert!(
        stderr.contains("the server refused BeginRenewal: FAILED_PRECONDITION RENEWAL_TOO_EARLY: slot 9a: certificate ")
            && stderr.contains("(30 days before expiry, renewal_window_days of the profile); an admin may force an earlier renewal; renew within the renewal window, or ask an admin to renew with --force"),
        "{stderr}"
    );
    let forced = world.renew_as("helpdesk", &["--slot", "9a", "--force"]);
    assert_refused(
        &forced,
        "the server refused BeginRenewal: PERMISSION_DENIED RENEWAL_FORCE_REQUIRES_ADMIN: only an admin may force a renewal before its window; renew within the renewal window, or ask an admin to renew with --force (an admin client certificate)",
    );
    let wrong = world.renew_as("admin", &["--token-serial", "32200999", "--force"]);
    assert_refused(
        &wrong,
        "the token in the reader is 32200001, not 32200999 (--token-serial); put token 32200999 in the reader",
    );
    assert_eq!(world.certificates_on_card(), before, "nothing changed");

    let out = world.renew_as(
        "admin",
        &["--token-serial", "32200001", "--slot", "9a", "--force"],
    );
    assert_ok(&out, "station renew");
    let stdout = text(&out.stdout);
    for line in [
        "     renewed before the window (forced): 9a",
        "     plan: slot 9a ECCP256 PIN ONCE touch NEVER -> certificate profile piv-authentication",
    ] {
        stdout_has_line(&out, line);
    }
    assert!(
        stdout.contains(&format!(
            "slot 9a: certificate {} is revoked (superseded)",
            before[0]
        )) || stdout.contains("is revoked (superseded)"),
        "{stdout}"
    );
    assert!(!stdout.contains(NEW_PIN), "the PIN must never be printed");
    let after = world.certificates_on_card();
    assert_ne!(after[0], before[0], "9a renewed");
    assert_eq!(after[1], before[1], "9c untouched");
    world.assert_good_certificates_are_on_the_card();
    let statuses = world.statuses(serial);
    assert_eq!(
        status_in(&statuses, &before[0]),
        (
            pb::CertificateStatus::Revoked,
            pb::RevocationReason::Superseded as i32
        )
    );
    assert_eq!(
        status_in(&statuses, &after[0]).0,
        pb::CertificateStatus::Good
    );
    assert_eq!(
        status_in(&statuses, &before[1]).0,
        pb::CertificateStatus::Good
    );
    world.verify_slot_certificate("9a");
    world
        .card
        .yubico_piv_tool(
            &["--stdin-input", "-a", "verify-pin"],
            Some(&format!("{NEW_PIN}\n")),
        )
        .success()
        .has_line("Successfully verified PIN.");
    assert_eq!(
        world.token(serial).unwrap().state,
        pb::TokenState::Active as i32
    );
}

/// The card is pulled at one instruction of a renewal (forced by an admin, every slot): the
/// station aborts, the old certificates are still good in the store, no good certificate is
/// missing from the card, and renewing again (card back) finishes.
fn renewal_card_pulled_at(ins: &str, serial: u32, expect_step: &str) {
    let mut world = World::start(CardOptions::firmware("5.7.4").serial(serial));
    world.create_person("IVAN");
    assert_ok(&world.enroll("IVAN", &[]), "station enroll");
    let before = world.certificates_on_card();
    // The card comes back with the fault armed (its state file keeps the enrollment).
    world.card.pull();
    world
        .card
        .options_mut()
        .extra_args
        .extend(["--fault-disconnect-at-ins".to_string(), ins.to_string()]);
    world.card.insert();

    let out = world.renew_as("admin", &["--force"]);
    assert!(
        !out.status.success(),
        "the renewal cannot succeed with the card pulled:\n{}",
        text(&out.stdout)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("error: {expect_step}: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains("was aborted on the server")
            && stderr.contains("the old certificates are still good"),
        "{stderr}"
    );
    world.card.pull();
    let options = world.card.options_mut();
    let at = options
        .extra_args
        .iter()
        .position(|a| a == "--fault-disconnect-at-ins")
        .unwrap();
    options.extra_args.drain(at..at + 2);
    world.card.insert();

    let statuses = world.statuses(serial);
    for old in &before {
        assert_eq!(
            status_in(&statuses, old).0,
            pb::CertificateStatus::Good,
            "the old certificate {old} stays good"
        );
    }
    world.assert_good_certificates_are_on_the_card();
    assert_eq!(
        statuses
            .iter()
            .filter(|(_, s, _)| *s == pb::CertificateStatus::Good as i32)
            .count(),
        2,
        "no new certificate stays good: {statuses:?}"
    );

    let retry = world.renew_as("admin", &["--force"]);
    assert_ok(&retry, "the renewal again");
    world.assert_good_certificates_are_on_the_card();
    let statuses = world.statuses(serial);
    for old in &before {
        assert_eq!(
            status_in(&statuses, old),
            (
                pb::CertificateStatus::Revoked,
                pb::RevocationReason::Superseded as i32
            )
        );
    }
    world.verify_slot_certificate("9a");
    world.verify_slot_certificate("9c");
}

#[test]
fn renewal_card_pulled_at_authentication() {
    renewal_card_pulled_at(
        "87",
        32_200_101,
        "authenticate with the token's management key",
    );
}

#[test]
fn renewal_card_pulled_at_generate() {
    renewal_card_pulled_at("47", 32_200_102, "generate the key in slot 9a");
}

#[test]
fn renewal_card_pulled_at_attest() {
    renewal_card_pulled_at("F9", 32_200_103, "attest slot 9a");
}

#[test]
fn renewal_card_pulled_at_verify_pin() {
    renewal_card_pulled_at("20", 32_200_104, "verify the PIN");
}

#[test]
fn renewal_card_pulled_at_proof_signature() {
    // The third GENERAL AUTHENTICATE: after the management key's two.
    renewal_card_pulled_at("87:3", 32_200_105, "sign the proof with slot 9a");
}

#[test]
fn renewal_card_pulled_at_write_certificate() {
    renewal_card_pulled_at("DB", 32_200_106, "write the certificate of slot 9a");
}
