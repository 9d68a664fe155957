//! CertificateService.IssueFromCsr and GetCaChain against a server whose `[ca]` is a CA made by
//! `tessera ca init` in a throwaway SoftHSM2 token, on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used)]
use crate::harness;

use harness::ca::TestCa;
use harness::config::ServerToml;
use harness::pki::{ClientCert, TestPki};
use harness::server::{KillOnDrop, ServerTask};
use harness::softhsm::SoftHsmToken;
use prost::Message;
use tessera::protocol::pb;
use tessera::protocol::pb::certificate_service_client::CertificateServiceClient;
use tessera::protocol::pb::directory_service_client::DirectoryServiceClient;
use tessera::store::{
    CertificateStatus, Clock, ManualClock, NewToken, Store, Timestamp, TokenState,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Status};
use tonic_types::StatusExt;

on_both_databases!(
    issue_from_csr_subjects_policy_and_chain,
    issued_validity_starts_at_the_store_clock,
    issue_from_csr_is_idempotent_across_its_transactions,
    issue_from_csr_refusals_name_reason_and_field,
    csr_names_are_bound_to_the_people_they_name,
    ca_sign_csr_with_config_records_audits_and_refuses,
    client_key_in_a_pkcs11_token_authenticates_over_mtls,
    kill_minus_9_under_load_loses_no_signed_certificate,
);

/// A CA in SoftHSM2 (`tessera ca init`) and the server configuration that names it.
struct CaSetup {
    dir: tempfile::TempDir,
    token: SoftHsmToken,
    pki: TestPki,
    config: ServerToml,
    config_path: std::path::PathBuf,
    data_dir: std::path::PathBuf,
}

impl CaSetup {
    fn new(url: &str) -> CaSetup {
        let dir = tempfile::tempdir().unwrap();
        let TestCa {
            token, data_dir, ..
        } = TestCa::init(&dir.path().join("data"));
        let pki = TestPki::new();
        let config = ServerToml::new(url).with_ca(&token.config_path, &data_dir);
        let config_path = config.write(dir.path(), &pki);
        CaSetup {
            dir,
            token,
            pki,
            config,
            config_path,
            data_dir,
        }
    }

    /// Changes the configuration and writes it again.
    fn reconfigure(&mut self, change: impl FnOnce(&mut ServerToml)) {
        change(&mut self.config);
        self.config_path = self.config.write(self.dir.path(), &self.pki);
    }
}

struct Running {
    setup: CaSetup,
    addr: std::net::SocketAddr,
    server: ServerTask,
}

impl Running {
    async fn start(setup: CaSetup) -> Running {
        Running::start_with_clock(setup, Clock::system()).await
    }

    /// [`Running::start`] with the server's times from `clock`.
    async fn start_with_clock(setup: CaSetup, clock: Clock) -> Running {
        let server = ServerTask::start_with_clock(&setup.config_path, clock).await;
        Running {
            setup,
            addr: server.addr,
            server,
        }
    }

    async fn certificates(&self, role: &str) -> CertificateServiceClient<Channel> {
        CertificateServiceClient::new(connect(self.addr, &self.setup.pki, role).await)
    }

    /// Stops the server; the CA (token, files, configuration) stays for further checks.
    async fn stop(self) -> CaSetup {
        self.server.stop().await;
        self.setup
    }
}

async fn connect(addr: std::net::SocketAddr, pki: &TestPki, role: &str) -> Channel {
    connect_as(addr, &pki.ca_pem, &pki.client(role)).await
}

async fn connect_as(addr: std::net::SocketAddr, ca_pem: &str, client: &ClientCert) -> Channel {
    harness::server::connect(addr, ca_pem, Some(client)).await
}

/// A P-256 key and its PKCS#10 request (PEM) with this CN and email addresses.
fn csr(cn: &str, emails: &[&str]) -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    for e in emails {
        p.subject_alt_names
            .push(rcgen::SanType::Rfc822Name((*e).try_into().unwrap()));
    }
    let pem = p.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

/// DER: tag, definite length, content.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend(content);
    out
}

/// A well-formed PKCS#10 structure for CN=x whose rsaEncryption key is three garbage bytes.
fn csr_with_unreadable_rsa_key() -> Vec<u8> {
    let seq = |parts: &[Vec<u8>]| tlv(0x30, &parts.concat());
    let rsa_oid = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    let sha256_rsa_oid = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b,
    ];
    let null = vec![0x05, 0x00];
    let name = seq(&[tlv(
        0x31,
        &seq(&[vec![0x06, 0x03, 0x55, 0x04, 0x03], tlv(0x0c, b"x")]),
    )]);
    let spki = seq(&[
        seq(&[rsa_oid.to_vec(), null.clone()]),
        tlv(0x03, &[0x00, 0x01, 0x02, 0x03]),
    ]);
    let info = seq(&[vec![0x02, 0x01, 0x00], name, spki, vec![0xa0, 0x00]]);
    seq(&[
        info,
        seq(&[sha256_rsa_oid.to_vec(), null]),
        tlv(0x03, &[0x00, 0xde, 0xad]),
    ])
}

fn issue_request(request_id: &str, csr_pem: &str, profile: &str) -> pb::IssueFromCsrRequest {
    pb::IssueFromCsrRequest {
        request_id: request_id.into(),
        csr: csr_pem.as_bytes().to_vec(),
        profile: profile.into(),
        person_external_id: String::new(),
        token_serial: String::new(),
    }
}

/// Code, reason (google.rpc.ErrorInfo) and fields (google.rpc.BadRequest) of a refusal.
fn refusal(s: &Status) -> (Code, String, Vec<String>) {
    let d = s.get_error_details();
    (
        s.code(),
        d.error_info().map(|i| i.reason.clone()).unwrap_or_default(),
        d.bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default(),
    )
}

fn parse(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
    use x509_parser::prelude::FromDer;
    x509_parser::certificate::X509Certificate::from_der(der)
        .unwrap()
        .1
}

fn policies(der: &[u8]) -> Vec<String> {
    let cert = parse(der);
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let x509_parser::extensions::ParsedExtension::CertificatePolicies(ps) =
            ext.parsed_extension()
        {
            out.extend(ps.iter().map(|p| p.policy_id.to_id_string()));
        }
    }
    out
}

fn emails(der: &[u8]) -> Vec<String> {
    let cert = parse(der);
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::RFC822Name(e) => Some(e.to_string()),
            _ => None,
        })
        .collect()
}

fn common_name(der: &[u8]) -> String {
    parse(der)
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

async fn create_person(server: &Running, id: &str) {
    let mut d = DirectoryServiceClient::new(connect(server.addr, &server.setup.pki, "hr").await);
    d.create_person(pb::CreatePersonRequest {
        request_id: format!("create-{id}"),
        person: Some(pb::PersonRecord {
            external_id: id.into(),
            display_name: format!("Person {id}"),
            upn: format!("{id}@corp.test"),
            email: format!("{id}@corp.test"),
            windows_sid: String::new(),
            attributes: Default::default(),
        }),
    })
    .await
    .unwrap();
}

async fn issue_from_csr_subjects_policy_and_chain(url: &str) {
    let server = Running::start(CaSetup::new(url)).await;
    let mut helpdesk = server.certificates("helpdesk").await;

    // Without a person, under service-client: subject from the CSR; the service-client policy
    // OID and the unattested-key policy OID are in it.
    let (_, pem) = csr("build-agent-7", &["agent7@corp.test"]);
    let cert = helpdesk
        .issue_from_csr(issue_request("r1", &pem, "service-client"))
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    assert_eq!(cert.status, pb::CertificateStatus::Good as i32);
    assert_eq!(cert.profile, "service-client");
    assert_eq!(common_name(&cert.der), "build-agent-7");
    assert_eq!(emails(&cert.der), ["agent7@corp.test"]);
    assert_eq!(
        policies(&cert.der),
        ["1.3.6.1.4.1.32473.1.2.7", "1.3.6.1.4.1.32473.1.1.2"]
    );
    let store = Store::open(url).await.unwrap();
    let row = store
        .certificate_by_serial(&cert.serial)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, CertificateStatus::Good);
    assert_eq!(row.der.as_deref(), Some(cert.der.as_slice()));
    assert_eq!(row.tbs, parse(&cert.der).tbs_certificate.as_ref());
    assert_eq!(row.person_id, None);

    // With a person (tls-client): subject from the directory, whatever the CSR says.
    create_person(&server, "E1").await;
    let (_, pem) = csr("ignored", &["ignored@corp.test"]);
    let mut req = issue_request("r2", &pem, "tls-client");
    req.person_external_id = "E1".into();
    let cert2 = helpdesk
        .issue_from_csr(req)
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    assert_eq!(common_name(&cert2.der), "Person E1");
    assert_eq!(emails(&cert2.der), ["E1@corp.test"]);
    assert_eq!(cert2.person_external_id, "E1");

    // A token of that person may be named too.
    let owner = store.person_by_external_id("E1").await.unwrap().unwrap();
    let mut tx = store.begin_write().await.unwrap();
    tx.insert_token(&NewToken {
        serial: "2001".into(),
        model: "YubiKey 5C NFC".into(),
        firmware: "5.7.4".into(),
        form_factor: "usb_c_keychain".into(),
        state: TokenState::Active,
        person_id: Some(owner.id),
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (_, pem) = csr("x", &[]);
    let mut req = issue_request("r3", &pem, "tls-client");
    req.person_external_id = "E1".into();
    req.token_serial = "2001".into();
    let cert3 = helpdesk
        .issue_from_csr(req)
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    assert_eq!(
        (
            cert3.person_external_id.as_str(),
            cert3.token_serial.as_str()
        ),
        ("E1", "2001")
    );
    // Listed under the person, as any certificate.
    let listed = helpdesk
        .list_certificates(pb::ListCertificatesRequest {
            person_external_id: "E1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .certificates;
    assert_eq!(listed.len(), 2);

    // The chain, for every role including relying parties; it verifies what was issued.
    let chain = server
        .certificates("relying-party")
        .await
        .get_ca_chain(pb::GetCaChainRequest {})
        .await
        .unwrap()
        .into_inner();
    let issuing_pem = std::fs::read_to_string(server.setup.data_dir.join("issuing.pem")).unwrap();
    let root_pem = std::fs::read_to_string(server.setup.data_dir.join("root.pem")).unwrap();
    assert_eq!(chain.der.len(), 2);
    let pem_der = |pem: &str| {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents
    };
    assert_eq!(chain.der[0], pem_der(&issuing_pem));
    assert_eq!(chain.der[1], pem_der(&root_pem));
    assert!(chain.pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let dir = server.setup.dir.path();
    std::fs::write(dir.join("chain.pem"), &chain.pem).unwrap();
    std::fs::write(dir.join("root-only.pem"), &root_pem).unwrap();
    std::fs::write(
        dir.join("leaf.pem"),
        tessera::ca::issue::certificate_pem(&cert.der),
    )
    .unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            "root-only.pem",
            "-untrusted",
            "chain.pem",
            "-purpose",
            "sslclient",
            "leaf.pem",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "leaf.pem: OK\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}

/// `ca` has no clock: the server hands it the store's time, so a certificate issued while the
/// store's clock stands at a fixed time is valid from exactly that time (no backdating), for
/// the profile's days, and its row says the same.
async fn issued_validity_starts_at_the_store_clock(url: &str) {
    // A time the system clock cannot give during the test: a day ahead (the CA, made now by
    // `tessera ca init`, is already valid then).
    let fixed = Timestamp::from_datetime(time::OffsetDateTime::now_utc() + time::Duration::days(1));
    let clock = ManualClock::new(fixed);
    let server = Running::start_with_clock(CaSetup::new(url), clock.clock()).await;
    let mut helpdesk = server.certificates("helpdesk").await;
    let (_, pem) = csr("build-agent-8", &[]);
    let cert = helpdesk
        .issue_from_csr(issue_request("r1", &pem, "service-client"))
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    let validity = parse(&cert.der).validity().clone();
    let one_year = time::Duration::days(365); // profiles/service-client.toml's validity_days
    assert_eq!(validity.not_before.timestamp(), fixed.unix_seconds());
    assert_eq!(
        validity.not_after.timestamp(),
        (fixed + one_year).unix_seconds()
    );
    let store = Store::open(url).await.unwrap();
    let row = store
        .certificate_by_serial(&cert.serial)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.not_before, row.not_after, row.created_at),
        (fixed, fixed + one_year, fixed)
    );
    store.close().await;
    server.stop().await;
}

async fn issue_from_csr_is_idempotent_across_its_transactions(url: &str) {
    let server = Running::start(CaSetup::new(url)).await;
    let admin = server.setup.pki.client("admin");
    let mut c = CertificateServiceClient::new(
        connect_as(server.addr, &server.setup.pki.ca_pem, &admin).await,
    );
    let store = Store::open(url).await.unwrap();
    let (_, pem) = csr("svc", &[]);
    let first = c
        .issue_from_csr(issue_request("same", &pem, "service-client"))
        .await
        .unwrap()
        .into_inner();
    let events = store.audit_head_sequence().await.unwrap();
    // Not counting the API client certificates the harness records.
    let count = |store: Store| async move {
        store
            .list_certificates(&tessera::store::CertificatesQuery {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .iter()
            .filter(|c| c.profile != "operator-client")
            .count()
    };
    assert_eq!(count(store.clone()).await, 1);
    // A repeat gets the same certificate; nothing is reserved, signed or audited again.
    let again = c
        .issue_from_csr(issue_request("same", &pem, "service-client"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(count(store.clone()).await, 1);
    assert_eq!(store.audit_head_sequence().await.unwrap(), events);
    // The same id for another request is refused.
    let (_, other) = csr("other", &[]);
    let s = c
        .issue_from_csr(issue_request("same", &other, "service-client"))
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&s),
        (
            Code::InvalidArgument,
            "REQUEST_ID_REUSED".into(),
            vec!["request_id".into()]
        )
    );

    // Concurrent repeats of one new request: one certificate; every answer is it, or
    // REQUEST_IN_PROGRESS while the first one has not recorded it.
    let (_, pem) = csr("concurrent", &[]);
    let mut calls = Vec::new();
    for _ in 0..4 {
        let mut c = c.clone();
        let req = issue_request("burst", &pem, "service-client");
        calls.push(tokio::spawn(async move { c.issue_from_csr(req).await }));
    }
    let mut serials = std::collections::BTreeSet::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(r) => {
                serials.insert(r.into_inner().certificate.unwrap().serial);
            }
            Err(s) => assert_eq!(
                refusal(&s),
                (
                    Code::Aborted,
                    "REQUEST_IN_PROGRESS".into(),
                    vec!["request_id".into()]
                ),
                "{s:?}"
            ),
        }
    }
    assert!(serials.len() <= 1, "{serials:?}");
    assert_eq!(count(store.clone()).await, 2);
    let settled = c
        .issue_from_csr(issue_request("burst", &pem, "service-client"))
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    if let Some(s) = serials.first() {
        assert_eq!(&settled.serial, s);
    }

    // An issuance interrupted after its reservation (its id claimed, no certificate recorded):
    // a repeat is told so and nothing new is signed.
    let (_, pem) = csr("interrupted", &[]);
    let req = issue_request("cut", &pem, "service-client");
    let key = tessera::lifecycle::RequestKey::new(
        "cut",
        "IssueFromCsr",
        &req.encode_to_vec(),
        &admin.sha256(),
    )
    .unwrap();
    let mut tx = store.begin_write().await.unwrap();
    tessera::lifecycle::remember(&mut tx, &key, tessera::lifecycle::pending_answer("0abc"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let s = c.issue_from_csr(req).await.unwrap_err();
    assert_eq!(
        refusal(&s),
        (
            Code::Aborted,
            "REQUEST_IN_PROGRESS".into(),
            vec!["request_id".into()]
        )
    );
    assert_eq!(count(store.clone()).await, 2);
    server.stop().await;
}

async fn issue_from_csr_refusals_name_reason_and_field(url: &str) {
    // The shipped profiles plus one that needs an email address.
    let mut setup = CaSetup::new(url);
    let profiles = setup.dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    for name in ["tls-client", "service-client", "smime-signing"] {
        std::fs::copy(
            shipped.join(format!("{name}.toml")),
            profiles.join(format!("{name}.toml")),
        )
        .unwrap();
    }
    let tls = std::fs::read_to_string(shipped.join("service-client.toml")).unwrap();
    assert!(tls.contains("require_email = false\n"));
    std::fs::write(
        profiles.join("mail-client.toml"),
        tls.replace("require_email = false\n", "require_email = true\n"),
    )
    .unwrap();
    setup.reconfigure(|c| c.ca.as_mut().unwrap().profiles_dir = Some(profiles));
    let server = Running::start(setup).await;
    let mut c = server.certificates("helpdesk").await;
    let (_, pem) = csr("svc", &[]);
    let mut n = 0;
    let client = c.clone();
    let mut refuse = |mut req: pb::IssueFromCsrRequest| {
        n += 1;
        req.request_id = format!("refused-{n}");
        let mut c = client.clone();
        async move { refusal(&c.issue_from_csr(req).await.unwrap_err()) }
    };
    let fields = |f: &str| vec![f.to_string()];

    assert_eq!(
        refuse(issue_request("", &pem, "smime-signing")).await,
        (
            Code::FailedPrecondition,
            "PROFILE_REQUIRES_ATTESTATION".into(),
            fields("profile")
        )
    );
    assert_eq!(
        refuse(issue_request("", &pem, "no-such-profile")).await,
        (
            Code::InvalidArgument,
            "UNKNOWN_PROFILE".into(),
            fields("profile")
        )
    );
    assert_eq!(
        refuse(issue_request("", "not a csr", "service-client")).await,
        (
            Code::InvalidArgument,
            "CSR_UNREADABLE".into(),
            fields("csr")
        )
    );
    // A CSR whose signature does not match its content.
    let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .unwrap()
        .1
        .contents;
    let mut tampered = der.clone();
    let cn_at = tampered.windows(3).position(|w| w == b"svc").unwrap();
    tampered[cn_at] = b'x';
    let mut req = issue_request("", "", "service-client");
    req.csr = tampered;
    assert_eq!(
        refuse(req).await,
        (
            Code::InvalidArgument,
            "CSR_SIGNATURE_INVALID".into(),
            fields("csr")
        )
    );
    // No common name, and no person to take the subject from.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "no name");
    let no_cn = params.serialize_request(&key).unwrap().pem().unwrap();
    assert_eq!(
        refuse(issue_request("", &no_cn, "service-client")).await,
        (
            Code::InvalidArgument,
            "CSR_WITHOUT_COMMON_NAME".into(),
            fields("csr")
        )
    );
    // A key type Tessera does not certify.
    let (_, ed25519) = {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "ed");
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        (key, pem)
    };
    assert_eq!(
        refuse(issue_request("", &ed25519, "service-client")).await,
        (
            Code::InvalidArgument,
            "UNSUPPORTED_KEY_ALGORITHM".into(),
            fields("csr")
        )
    );
    // An RSA key whose BIT STRING is not an RSAPublicKey (checked before the signature).
    let mut req = issue_request("", "", "service-client");
    req.csr = csr_with_unreadable_rsa_key();
    assert_eq!(
        refuse(req).await,
        (
            Code::InvalidArgument,
            "PUBLIC_KEY_UNREADABLE".into(),
            fields("csr")
        )
    );
    // A common name of blanks only.
    let (_, blank) = csr("   ", &[]);
    assert_eq!(
        refuse(issue_request("", &blank, "service-client")).await,
        (
            Code::InvalidArgument,
            "SUBJECT_INVALID".into(),
            fields("csr")
        )
    );
    // Names beyond the limits (issue 12, finding 10): a 65-character CN, a control character
    // in the CN, 17 email addresses, a DNS name that is not a host name.
    let (_, long_cn) = csr(&"a".repeat(65), &[]);
    let s = c
        .issue_from_csr(issue_request("long-cn", &long_cn, "service-client"))
        .await
        .unwrap_err();
    assert_eq!(
        (refusal(&s), s.message()),
        (
            (
                Code::InvalidArgument,
                "FIELD_TOO_LONG".into(),
                fields("csr")
            ),
            "CSR commonName exceeds 64 characters"
        )
    );
    let (_, control) = csr("svc\u{1b}[31m", &[]);
    assert_eq!(
        refuse(issue_request("", &control, "service-client")).await,
        (
            Code::InvalidArgument,
            "SUBJECT_INVALID".into(),
            fields("csr")
        )
    );
    let emails: Vec<String> = (0..17).map(|i| format!("u{i}@corp.test")).collect();
    let (_, many) = csr(
        "svc",
        &emails.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(
        refuse(issue_request("", &many, "service-client")).await,
        (
            Code::InvalidArgument,
            "TOO_MANY_ITEMS".into(),
            fields("csr")
        )
    );
    let bad_dns = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["bad_host.corp.test".to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "svc");
        p.serialize_request(&key).unwrap().pem().unwrap()
    };
    assert_eq!(
        refuse(issue_request("", &bad_dns, "service-client")).await,
        (
            Code::InvalidArgument,
            "SUBJECT_INVALID".into(),
            fields("csr")
        )
    );
    // A profile that needs an email address, and a CSR without one.
    assert_eq!(
        refuse(issue_request("", &pem, "mail-client")).await,
        (
            Code::InvalidArgument,
            "PROFILE_REQUIRES_EMAIL".into(),
            fields("csr")
        )
    );
    // DER is accepted as well as PEM.
    let mut req = issue_request("der-ok", "", "service-client");
    req.csr = der;
    c.issue_from_csr(req).await.unwrap();

    let mut req = issue_request("", &pem, "service-client");
    req.person_external_id = "NOBODY".into();
    assert_eq!(
        refuse(req).await,
        (Code::NotFound, "PERSON_NOT_FOUND".into(), vec![])
    );
    create_person(&server, "E1").await;
    create_person(&server, "E2").await;
    let mut d = DirectoryServiceClient::new(connect(server.addr, &server.setup.pki, "hr").await);
    d.suspend_person(pb::SuspendPersonRequest {
        request_id: "suspend-E2".into(),
        external_id: "E2".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut req = issue_request("", &pem, "service-client");
    req.person_external_id = "E2".into();
    assert_eq!(
        refuse(req).await,
        (
            Code::FailedPrecondition,
            "PERSON_NOT_ACTIVE".into(),
            fields("person_external_id")
        )
    );

    let store = Store::open(url).await.unwrap();
    let e2 = store.person_by_external_id("E2").await.unwrap().unwrap();
    let mut tx = store.begin_write().await.unwrap();
    for (serial, state, person_id) in [
        ("3001", TokenState::Lost, None),
        ("3002", TokenState::Active, Some(e2.id)),
        ("3003", TokenState::Forgotten, None),
    ] {
        tx.insert_token(&NewToken {
            serial: serial.into(),
            model: "YubiKey 5C NFC".into(),
            firmware: "5.7.4".into(),
            form_factor: "usb_c_keychain".into(),
            state,
            person_id,
        })
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let mut req = issue_request("", &pem, "service-client");
    req.token_serial = "9999".into();
    assert_eq!(
        refuse(req).await,
        (Code::NotFound, "TOKEN_NOT_FOUND".into(), vec![])
    );
    for serial in ["3001", "3003"] {
        // Lost, and forgotten (its key is not at hand; its certificates are on hold).
        let mut req = issue_request("", &pem, "service-client");
        req.token_serial = serial.into();
        assert_eq!(
            refuse(req).await,
            (
                Code::FailedPrecondition,
                "TOKEN_NOT_USABLE".into(),
                fields("token_serial")
            ),
            "token {serial}"
        );
    }
    let mut req = issue_request("", &pem, "service-client");
    req.person_external_id = "E1".into();
    req.token_serial = "3002".into();
    assert_eq!(
        refuse(req).await,
        (
            Code::FailedPrecondition,
            "TOKEN_OF_ANOTHER_PERSON".into(),
            fields("token_serial")
        )
    );
    let s = c
        .issue_from_csr(issue_request("", &pem, "service-client"))
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&s),
        (
            Code::InvalidArgument,
            "REQUEST_ID_MISSING".into(),
            fields("request_id")
        )
    );
    // Only the DER issuance above reached the store (besides the API client certificates the
    // harness records).
    let all = store
        .list_certificates(&tessera::store::CertificatesQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter()
            .filter(|c| c.profile != "operator-client")
            .count(),
        1
    );
    server.stop().await;
}

/// Issue 12, finding 1: a CSR without a person only under a profile with
/// `subject_from_csr = true`, within its `allowed_names`; a CSR whose commonName or email
/// address is a directory person's only for that person. Each refusal: exact code, reason,
/// field and message; a refused request reserves nothing.
async fn csr_names_are_bound_to_the_people_they_name(url: &str) {
    let mut setup = CaSetup::new(url);
    let profiles = setup.dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    for name in ["tls-client", "service-client"] {
        std::fs::copy(
            shipped.join(format!("{name}.toml")),
            profiles.join(format!("{name}.toml")),
        )
        .unwrap();
    }
    let service = std::fs::read_to_string(shipped.join("service-client.toml")).unwrap();
    std::fs::write(
        profiles.join("agents.toml"),
        format!("{service}allowed_names = [\"*.svc.corp.test\", \"*@svc.corp.test\"]\n"),
    )
    .unwrap();
    setup.reconfigure(|c| c.ca.as_mut().unwrap().profiles_dir = Some(profiles));
    let server = Running::start(setup).await;
    create_person(&server, "E1").await;
    create_person(&server, "E2").await;
    create_person(&server, "E3").await;
    let mut d = DirectoryServiceClient::new(connect(server.addr, &server.setup.pki, "hr").await);
    d.offboard_person(pb::OffboardPersonRequest {
        request_id: "offboard-E3".into(),
        external_id: "E3".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let c = server.certificates("helpdesk").await;
    let n = std::sync::atomic::AtomicUsize::new(0);
    // (code, reason, fields) and the message of the refusal of `csr` under `profile` for
    // `person` ("" for none).
    let refuse = |names: (&str, &[&str]), profile: &str, person: &str| {
        let (_, pem) = csr(names.0, names.1);
        let mut req = issue_request(
            &format!(
                "refused-{}",
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            &pem,
            profile,
        );
        req.person_external_id = person.into();
        let mut c = c.clone();
        async move {
            let s = c.issue_from_csr(req).await.unwrap_err();
            (refusal(&s), s.message().to_string())
        }
    };
    let fields = |f: &str| vec![f.to_string()];

    // A person's profile without a person (before: issued with the CSR's names, bound to nobody).
    assert_eq!(
        refuse(("Person E1", &["E1@corp.test"]), "tls-client", "").await,
        (
            (
                Code::FailedPrecondition,
                "PROFILE_REQUIRES_PERSON".into(),
                fields("person_external_id")
            ),
            "profile tls-client certifies people: name the person (person_external_id), whose directory names the certificate then carries; a certificate with names from the CSR and bound to nobody needs a profile with subject_from_csr = true, such as service-client".into()
        )
    );
    // A service client named like a person: each field of the directory, ASCII case ignored.
    let names_a_person = |csr_field: &str, name: &str, person_field: &str| {
        (
            (
                Code::FailedPrecondition,
                "CSR_NAMES_A_PERSON".to_string(),
                fields("csr"),
            ),
            format!(
                "the CSR's {csr_field} {name:?} is the {person_field} of a person in the directory; a CSR naming a person is certified only for that person (person_external_id), with the directory's names"
            ),
        )
    };
    assert_eq!(
        refuse(("Person E1", &[]), "service-client", "").await,
        names_a_person("commonName", "Person E1", "display name")
    );
    assert_eq!(
        refuse(("PERSON e1", &[]), "service-client", "").await,
        names_a_person("commonName", "PERSON e1", "display name")
    );
    assert_eq!(
        refuse(("svc", &["e1@CORP.test"]), "service-client", "").await,
        names_a_person("email address", "e1@CORP.test", "email")
    );
    assert_eq!(
        refuse(("e1", &[]), "service-client", "").await,
        names_a_person("commonName", "e1", "external id")
    );
    // An offboarded person's names stay theirs.
    assert_eq!(
        refuse(("Person E3", &[]), "service-client", "").await,
        names_a_person("commonName", "Person E3", "display name")
    );
    // Issued to another person than the one the CSR names.
    assert_eq!(
        refuse(("Person E1", &[]), "tls-client", "E2").await,
        names_a_person("commonName", "Person E1", "display name")
    );
    // The allow-list of a service profile, naming the name.
    assert_eq!(
        refuse(("build-agent", &[]), "agents", "").await,
        (
            (Code::InvalidArgument, "NAME_NOT_ALLOWED".into(), fields("csr")),
            "the CSR's commonName \"build-agent\" is not allowed by profile agents (allowed_names: *.svc.corp.test, *@svc.corp.test)".into()
        )
    );
    assert_eq!(
        refuse(("build.svc.corp.test", &["ci@corp.test"]), "agents", "").await,
        (
            (Code::InvalidArgument, "NAME_NOT_ALLOWED".into(), fields("csr")),
            "the CSR's email address \"ci@corp.test\" is not allowed by profile agents (allowed_names: *.svc.corp.test, *@svc.corp.test)".into()
        )
    );
    // Only ASCII letters are folded, the same on both databases: other letters compare exactly.
    d.create_person(pb::CreatePersonRequest {
        request_id: "create-E4".into(),
        person: Some(pb::PersonRecord {
            external_id: "E4".into(),
            display_name: "Émile Dupont".into(),
            upn: "emile@corp.test".into(),
            email: "emile@corp.test".into(),
            windows_sid: String::new(),
            attributes: Default::default(),
        }),
    })
    .await
    .unwrap();
    assert_eq!(
        refuse(("ÉMILE DUPONT", &[]), "service-client", "").await,
        names_a_person("commonName", "ÉMILE DUPONT", "display name")
    );
    let mut c = c.clone();
    let (_, pem) = csr("éMILE DUPONT", &[]);
    c.issue_from_csr(issue_request("other-case", &pem, "service-client"))
        .await
        .unwrap();

    let store = Store::open(url).await.unwrap();
    let all = |store: Store| async move {
        store
            .list_certificates(&tessera::store::CertificatesQuery {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.profile != "operator-client")
            .collect::<Vec<_>>()
    };
    assert_eq!(all(store.clone()).await.len(), 1);

    // What is allowed: the CSR naming E1 issued to E1 (the directory's names); service clients
    // with their own names.
    let (_, pem) = csr("Person E1", &["e1@corp.test"]);
    let mut req = issue_request("to-e1", &pem, "tls-client");
    req.person_external_id = "E1".into();
    let to_e1 = c.issue_from_csr(req).await.unwrap().into_inner();
    assert_eq!(to_e1.certificate.unwrap().person_external_id, "E1");
    let (_, pem) = csr("build.svc.corp.test", &["ci@svc.corp.test"]);
    let agent = c
        .issue_from_csr(issue_request("agent", &pem, "agents"))
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    assert_eq!(common_name(&agent.der), "build.svc.corp.test");
    assert_eq!(
        policies(&agent.der),
        ["1.3.6.1.4.1.32473.1.2.7", "1.3.6.1.4.1.32473.1.1.2"]
    );
    let (_, pem) = csr("Person E1 (build)", &[]);
    c.issue_from_csr(issue_request("near", &pem, "service-client"))
        .await
        .unwrap();
    assert_eq!(all(store.clone()).await.len(), 4);
    store.close().await;
    server.stop().await;
}

/// Issue 12, finding 10: `tessera ca sign-csr --config` issues through the server's database
/// (reserved, recorded good, audited with the CLI as actor, revocable) with the checks of
/// IssueFromCsr; without --config, --offline-ceremony stays required.
async fn ca_sign_csr_with_config_records_audits_and_refuses(url: &str) {
    let setup = CaSetup::new(url);
    let config = setup.config_path.to_str().unwrap().to_string();
    let dir = setup.dir.path().to_path_buf();
    let softhsm2_conf = setup.token.softhsm2_conf.clone();
    let server = Running::start(setup).await;
    create_person(&server, "E1").await;
    let write_csr = |name: &str, cn: &str, emails: &[&str]| {
        let path = dir.join(format!("{name}.csr"));
        std::fs::write(&path, csr(cn, emails).1).unwrap();
        path.to_str().unwrap().to_string()
    };
    let sign = |extra: &[&str]| {
        let mut args = vec!["ca", "sign-csr"];
        args.extend_from_slice(extra);
        std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"))
            .args(&args)
            .env("SOFTHSM2_CONF", &softhsm2_conf)
            .env_remove("TESSERA_HSM_CONFIG")
            .env_remove("TESSERA_DATA_DIR")
            .env_remove("TESSERA_PROFILES_DIR")
            .output()
            .unwrap()
    };
    let err = |out: &std::process::Output| {
        assert!(
            !out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let store = Store::open(url).await.unwrap();
    let head = store.audit_head_sequence().await.unwrap();

    let agent = write_csr("agent", "build-agent-9", &["agent9@corp.test"]);
    let leaf = dir.join("agent.pem");
    let out = sign(&[
        "--config",
        &config,
        "--profile",
        "service-client",
        "--csr",
        &agent,
        "--out",
        leaf.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let der = x509_parser::pem::parse_x509_pem(&std::fs::read(&leaf).unwrap())
        .unwrap()
        .1
        .contents;
    let serial = hex::encode(parse(&der).raw_serial());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!(
            "issued certificate serial {serial} for CN=build-agent-9 (EC P-256, profile service-client, valid until "
        )) && stdout.ends_with(&format!(
            ", recorded in the server's database) to {}\n",
            leaf.display()
        )),
        "{stdout}"
    );
    let row = store.certificate_by_serial(&serial).await.unwrap().unwrap();
    assert_eq!(row.status, CertificateStatus::Good);
    assert_eq!(row.der.as_deref(), Some(der.as_slice()));
    assert_eq!(row.profile, "service-client");
    let events = store.audit_events(head, 100).await.unwrap();
    let ours: Vec<(&str, &str, &str)> = events
        .iter()
        .filter(|e| e.subject.contains(&serial))
        .map(|e| (e.actor.as_str(), e.role.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        ours,
        [
            ("tessera ca sign-csr", "admin", "certificate.reserve"),
            ("tessera ca sign-csr", "admin", "certificate.issue"),
        ]
    );
    // Revocable like any recorded certificate.
    let revoked = server
        .certificates("admin")
        .await
        .revoke_certificate(pb::RevokeCertificateRequest {
            request_id: "revoke-agent".into(),
            serial: serial.clone(),
            reason: pb::RevocationReason::KeyCompromise as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    assert_eq!(revoked.status, pb::CertificateStatus::Revoked as i32);

    // Refusals, each before anything is reserved.
    let person = write_csr("person", "Person E1", &[]);
    let refused_leaf = dir.join("refused.pem");
    let with_config = |profile: &str, csr: &str| {
        sign(&[
            "--config",
            &config,
            "--profile",
            profile,
            "--csr",
            csr,
            "--out",
            refused_leaf.to_str().unwrap(),
        ])
    };
    assert_eq!(
        err(&with_config("service-client", &person)),
        "error: the CSR's commonName \"Person E1\" is the display name of a person in the directory; a CSR naming a person is certified only for that person (person_external_id), with the directory's names\n"
    );
    assert_eq!(
        err(&with_config("tls-client", &agent)),
        "error: profile tls-client certifies people (subject_from_csr = false); ca sign-csr binds the certificate to nobody with the CSR's names, so it needs a profile with subject_from_csr = true, such as service-client. Issue a person's certificate through the server (IssueFromCsr with person_external_id)\n"
    );
    assert_eq!(
        err(&sign(&[
            "--config",
            &config,
            "--offline-ceremony",
            "--profile",
            "service-client",
            "--csr",
            &agent,
        ])),
        "error: --config records the certificate and --offline-ceremony signs one recorded nowhere; pass one of them\n"
    );
    let other_dir = dir.join("elsewhere");
    std::fs::create_dir(&other_dir).unwrap();
    assert_eq!(
        err(&sign(&[
            "--config",
            &config,
            "--data-dir",
            other_dir.to_str().unwrap(),
            "--profile",
            "service-client",
            "--csr",
            &agent,
        ])),
        format!(
            "error: --data-dir {} is not the server's: with --config the certificate is issued by the CA of {config}'s [ca] section ({}); leave --data-dir out\n",
            other_dir.display(),
            server.setup.data_dir.display()
        )
    );
    assert_eq!(
        err(&sign(&["--profile", "service-client", "--csr", &agent])),
        "error: ca sign-csr without --config keeps no record: the certificate would be in no database, no audit log and never on a CRL. Pass --config with the server's configuration to issue it through the server's database (recorded, audited, revocable), or --offline-ceremony to sign an unrecorded certificate on purpose\n"
    );
    assert!(!refused_leaf.exists());
    // Nothing but the one certificate was reserved or signed (besides the harness's API
    // client certificates).
    let rows = store
        .list_certificates(&tessera::store::CertificatesQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.profile != "operator-client")
        .collect::<Vec<_>>();
    assert_eq!(rows.len(), 1);
    store.close().await;
    server.stop().await;
}

/// A server without `[ca]` answers both RPCs with FAILED_PRECONDITION / CA_NOT_CONFIGURED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ca_section_issuing_is_a_failed_precondition() {
    let db = harness::database::TestDatabase::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let server = ServerTask::start(&pki.write_server_config(dir.path(), db.url())).await;
    let mut c = CertificateServiceClient::new(connect(server.addr, &pki, "admin").await);
    let (_, pem) = csr("svc", &[]);
    let expected = (Code::FailedPrecondition, "CA_NOT_CONFIGURED".into(), vec![]);
    assert_eq!(
        refusal(
            &c.issue_from_csr(issue_request("r", &pem, "service-client"))
                .await
                .unwrap_err()
        ),
        expected
    );
    assert_eq!(
        refusal(&c.get_ca_chain(pb::GetCaChainRequest {}).await.unwrap_err()),
        expected
    );
    server.stop().await;
}

/// Starts `tessera serve` as a child process; returns it and its gRPC address.
fn spawn_serve(config: &std::path::Path) -> (std::process::Child, std::net::SocketAddr) {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("tessera: gRPC listening on ")
        .unwrap_or_else(|| panic!("start-up line: {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

/// What one client saw for one request id.
#[derive(Debug)]
enum Outcome {
    Issued(pb::Certificate),
    /// Transport error or server gone: the request may or may not have been carried out.
    Unknown(pb::IssueFromCsrRequest),
}

/// Issue 6, "Storage": `tessera serve` is killed with SIGKILL at random moments while several
/// clients issue from CSRs, and restarted, many times. Afterwards every certificate a client
/// received is in the store as good with identical DER, every reserved row holds its
/// tbsCertificate, no serial is used twice, and the audit chain verifies.
async fn kill_minus_9_under_load_loses_no_signed_certificate(url: &str) {
    const KILLS: usize = 18;
    const CLIENTS: usize = 4;
    let setup = CaSetup::new(url);
    let admin = std::sync::Arc::new((setup.pki.ca_pem.clone(), setup.pki.client("admin")));
    let mut received: Vec<pb::Certificate> = Vec::new();
    let mut unknown: Vec<pb::IssueFromCsrRequest> = Vec::new();
    let mut next_id = 0usize;
    for round in 0..=KILLS {
        let (child, addr) = spawn_serve(&setup.config_path);
        let guard = KillOnDrop(child.id());
        // Requests whose outcome a client did not learn are repeated (same request id): the
        // answer is the first certificate, or REQUEST_IN_PROGRESS, never a second one.
        let mut c = CertificateServiceClient::new(connect_as(addr, &admin.0, &admin.1).await);
        for req in std::mem::take(&mut unknown) {
            match c.issue_from_csr(req.clone()).await {
                Ok(r) => received.push(r.into_inner().certificate.unwrap()),
                Err(s) if s.code() == Code::Aborted => {
                    assert_eq!(refusal(&s).1, "REQUEST_IN_PROGRESS", "{s:?}")
                }
                Err(s) => panic!("repeat of {}: {s:?}", req.request_id),
            }
        }
        if round == KILLS {
            drop(guard);
            break;
        }
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let admin = admin.clone();
            let first = next_id;
            next_id += 10_000;
            clients.push(tokio::spawn(async move {
                let mut out = Vec::new();
                // The server may already be gone (killed before this client got going).
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&admin.0))
                    .domain_name("localhost")
                    .identity(Identity::from_pem(&admin.1.cert_pem, &admin.1.key_pem));
                let Ok(ch) = Channel::from_shared(format!("https://{addr}"))
                    .unwrap()
                    .tls_config(tls)
                    .unwrap()
                    .connect()
                    .await
                else {
                    return out;
                };
                let mut c = CertificateServiceClient::new(ch);
                for i in first.. {
                    let (_, pem) = csr(&format!("svc-{i}"), &[]);
                    let req = issue_request(&format!("k-{i}"), &pem, "service-client");
                    match c.issue_from_csr(req.clone()).await {
                        Ok(r) => out.push(Outcome::Issued(r.into_inner().certificate.unwrap())),
                        // No Tessera error details: the transport failed (server killed).
                        Err(s) if s.get_error_details().error_info().is_none() => {
                            out.push(Outcome::Unknown(req));
                            break;
                        }
                        Err(s) => panic!("issuing {i}: {s:?}"),
                    }
                }
                out
            }));
        }
        // Let the clients run a random while, then kill.
        let wait = 150 + rand::random::<u64>() % 600;
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        drop(guard);
        let mut child = child;
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "round {round}: the server was killed, not stopped"
        );
        for client in clients {
            for outcome in client.await.unwrap() {
                match outcome {
                    Outcome::Issued(cert) => received.push(cert),
                    Outcome::Unknown(req) => unknown.push(req),
                }
            }
        }
    }
    assert!(
        received.len() > KILLS,
        "the load issued too little to mean anything: {}",
        received.len()
    );

    let store = Store::open(url).await.unwrap();
    let mut rows = Vec::new();
    loop {
        let page = store
            .list_certificates(&tessera::store::CertificatesQuery {
                after_serial: rows
                    .last()
                    .map(|r: &tessera::store::CertificateRow| r.serial.clone())
                    .unwrap_or_default(),
                limit: 500,
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        rows.extend(page);
    }
    let by_serial: std::collections::BTreeMap<_, _> =
        rows.iter().map(|r| (r.serial.clone(), r)).collect();
    assert_eq!(by_serial.len(), rows.len(), "a serial is stored twice");
    let mut seen = std::collections::BTreeMap::new();
    for cert in &received {
        if let Some(der) = seen.insert(cert.serial.clone(), cert.der.clone()) {
            assert_eq!(
                der, cert.der,
                "serial {} answered with two certificates",
                cert.serial
            );
        }
        let row = by_serial
            .get(&cert.serial)
            .unwrap_or_else(|| panic!("received certificate {} is not in the store", cert.serial));
        assert_eq!(row.status, CertificateStatus::Good, "{}", cert.serial);
        assert_eq!(
            row.der.as_deref(),
            Some(cert.der.as_slice()),
            "{}",
            cert.serial
        );
    }
    let mut reserved = 0;
    for row in &rows {
        use x509_parser::prelude::FromDer;
        let (_, tbs) = x509_parser::certificate::TbsCertificate::from_der(&row.tbs)
            .unwrap_or_else(|e| panic!("row {} holds no tbsCertificate: {e}", row.serial));
        assert_eq!(tbs.raw_serial_as_string().replace(':', ""), row.serial);
        match row.status {
            CertificateStatus::Reserved => {
                reserved += 1;
                assert_eq!(row.der, None);
            }
            _ => {
                let der = row.der.as_deref().unwrap();
                assert_eq!(parse(der).tbs_certificate.as_ref(), row.tbs.as_slice());
            }
        }
    }
    eprintln!(
        "{KILLS} kills: {} certificates received, {} stored, {reserved} left reserved",
        received.len(),
        rows.len()
    );
    // The harness wrote its API client certificates into the table without the events
    // `tessera admin issue-client-cert` logs; take them out so the replay judges only the
    // certificates this test issued (as serve_signs_a_checkpoint_at_shutdown does).
    store
        .execute_raw("DELETE FROM certificates WHERE profile = 'operator-client'")
        .await
        .unwrap();
    store.close().await;
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .args(["audit", "verify", "--config"])
        .arg(&setup.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit verify: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tessera admin issue-client-cert` with the key generated in a PKCS#11 token: only the
/// certificate is written; pkcs11-tool finds the key and its public key is the certificate's;
/// curl (HTTP/2, OpenSSL's pkcs11 engine, PIN from a file) calls LookupCertificate over mTLS
/// with it and is let in as a relying party.
async fn client_key_in_a_pkcs11_token_authenticates_over_mtls(url: &str) {
    let setup = CaSetup::new(url);
    let dir = setup.dir.path().to_path_buf();
    // Client certificates come from Tessera's operator CA here.
    std::fs::copy(
        setup.data_dir.join("operator-ca.pem"),
        dir.join("client-ca.pem"),
    )
    .unwrap();
    let hsm_config = setup.token.config_path.clone();
    let issue = |label: Option<&str>, out_cert: &str| {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"));
        cmd.args(["admin", "issue-client-cert", "--role", "relying-party"])
            .args(["--name", "door controller", "--config"])
            .arg(&setup.config_path)
            .arg("--hsm-config")
            .arg(&hsm_config)
            .arg("--data-dir")
            .arg(&setup.data_dir)
            .arg("--out-cert")
            .arg(dir.join(out_cert));
        if let Some(label) = label {
            cmd.arg("--key-in-hsm-config")
                .arg(&hsm_config)
                .args(["--key-label", label]);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Neither a key file nor a token: refused by the argument parser.
    let (code, _, err) = issue(None, "none.pem");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("error: the following required arguments were not provided:"),
        "{err}"
    );
    let (code, out, err) = issue(Some("door-client"), "door.pem");
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    let first = lines.next().unwrap();
    let serial = first
        .strip_prefix("issued serial ")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        first,
        format!(
            "issued serial {serial} for role relying-party to {}",
            dir.join("door.pem").display()
        )
    );
    let uri = lines
        .next()
        .unwrap()
        .strip_prefix("private key in the token: ")
        .unwrap()
        .to_string();
    assert!(
        uri.starts_with("pkcs11:token=tessera;object=door-client;")
            && uri.ends_with(";type=private"),
        "{uri}"
    );
    assert_eq!(lines.next(), None);
    // The key is in the token, and the certificate certifies it.
    let listing = setup
        .token
        .pkcs11_tool(&["--list-objects", "--type", "privkey"]);
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains("label:      door-client"),
        "{}",
        String::from_utf8_lossy(&listing.stdout)
    );
    let pubkey = dir.join("door-pub.der");
    setup.token.pkcs11_tool(&[
        "--read-object",
        "--type",
        "pubkey",
        "--label",
        "door-client",
        "-o",
        pubkey.to_str().unwrap(),
    ]);
    let chain = std::fs::read(dir.join("door.pem")).unwrap();
    let cert_der = x509_parser::pem::parse_x509_pem(&chain).unwrap().1.contents;
    assert_eq!(
        std::fs::read(&pubkey).unwrap(),
        parse(&cert_der).tbs_certificate.subject_pki.raw
    );
    // The same label again: refused, nothing written.
    let (code, _, err) = issue(Some("door-client"), "door2.pem");
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: ") && err.contains("door-client"),
        "{err}"
    );
    assert!(!dir.join("door2.pem").exists());

    // A real mTLS client with the key in the token: curl over HTTP/2 with the pkcs11 engine.
    let server = Running::start(setup).await;
    let dir = server.setup.dir.path();
    std::fs::write(
        dir.join("openssl-pkcs11.cnf"),
        "openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n\
         [engine_section]\npkcs11 = pkcs11_section\n[pkcs11_section]\nengine_id = pkcs11\n\
         dynamic_path = /usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so\n\
         MODULE_PATH = /usr/lib/softhsm/libsofthsm2.so\ninit = 0\n",
    )
    .unwrap();
    // LookupCertificateRequest { serial } as a gRPC frame: no compression, length, message.
    let message = pb::LookupCertificateRequest {
        key: Some(pb::lookup_certificate_request::Key::Serial(serial.clone())),
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend(&message);
    std::fs::write(dir.join("request.bin"), &frame).unwrap();
    let pin_file = server.setup.token.dir.path().join("user-pin");
    let key = format!(
        "pkcs11:token=tessera;object=door-client;type=private;pin-source=file:{}",
        pin_file.display()
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert", "server.pem"])
        .args(["--engine", "pkcs11", "--key-type", "ENG", "--key", &key])
        .args(["--cert", "door.pem"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args([
            "--data-binary",
            "@request.bin",
            "-D",
            "headers.txt",
            "-o",
            "body.bin",
        ])
        .arg(format!(
            "https://localhost:{}/tessera.v1.CertificateService/LookupCertificate",
            server.addr.port()
        ))
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", server.addr.port()),
        ])
        .env("OPENSSL_CONF", dir.join("openssl-pkcs11.cnf"))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let headers = std::fs::read_to_string(dir.join("headers.txt")).unwrap();
    assert!(headers.contains("grpc-status: 0"), "{headers}");
    let body = std::fs::read(dir.join("body.bin")).unwrap();
    assert_eq!(body[0], 0);
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let answer = pb::LookupCertificateResponse::decode(&body[5..5 + len]).unwrap();
    let cert = answer.certificate.unwrap();
    assert_eq!(cert.serial, serial);
    assert_eq!(cert.status, pb::CertificateStatus::Good as i32);
    assert_eq!(cert.der, cert_der);
    let setup = server.stop().await;

    // When the certificate cannot be issued (here: the store cannot record the reservation),
    // the key just generated in the token is removed again.
    let store = Store::open(url).await.unwrap();
    store
        .execute_raw("ALTER TABLE certificates RENAME TO certificates_elsewhere")
        .await
        .unwrap();
    store.close().await;
    let (code, out, err) = issue_again(&setup, "door-broken");
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.starts_with(
            "error: the certificate was not signed: recording it before signing failed: "
        ),
        "{err}"
    );
    let listing = setup
        .token
        .pkcs11_tool(&["--list-objects", "--type", "privkey"]);
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("label:      door-client"), "{listing}");
    assert!(!listing.contains("door-broken"), "{listing}");
}

/// issue-client-cert for relying-party with the key in the CA's own token (as a test stand-in
/// for the client's token), label `label`.
fn issue_again(setup: &CaSetup, label: &str) -> (i32, String, String) {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .args(["admin", "issue-client-cert", "--role", "relying-party"])
        .args(["--name", "door controller", "--config"])
        .arg(&setup.config_path)
        .arg("--hsm-config")
        .arg(&setup.token.config_path)
        .arg("--data-dir")
        .arg(&setup.data_dir)
        .arg("--out-cert")
        .arg(setup.dir.path().join(format!("{label}.pem")))
        .arg("--key-in-hsm-config")
        .arg(&setup.token.config_path)
        .args(["--key-label", label])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
