//! Issue 12, finding 4: API clients are told apart from people by issuer, policy and store
//! record, not only by a URI SAN. The operator CA (`tessera ca init-operators`) issues the
//! operator-client profile and nothing else; the issuing CA of people's certificates never
//! issues it; the gRPC edge lets in only good, recorded operator certificates carrying the
//! operator policy OID.
use crate::harness;

use harness::ca::TestCa;
use harness::pki::ClientCert;
use harness::server::{TestServer, connect};
use tessera::ca::policy_oid::OPERATOR_POLICY;
use tessera::ca::{CaError, IssuanceRequest, KeyProvenance, OnlineCa, SerialNumber, SubjectParams};
use tessera::protocol::pb;
use tessera::protocol::pb::certificate_service_client::CertificateServiceClient;
use tessera::protocol::pb::directory_service_client::DirectoryServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The exact code, the reason from google.rpc.ErrorInfo and the fields from BadRequest.
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

fn serial_of(pem: &str) -> String {
    use x509_parser::prelude::FromDer;
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der.contents).unwrap();
    hex::encode(cert.raw_serial())
}

async fn health(channel: Channel) -> Result<(), Status> {
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
}

/// Connects over TLS 1.3 presenting `client` and reads: the server's alert when it refuses the
/// client certificate (TLS 1.3 client authentication ends after the client's side of the
/// handshake, so the alert arrives on the first read), else what an accepted connection gets.
async fn tls_answer(
    addr: std::net::SocketAddr,
    server_ca_pem: &str,
    client: &ClientCert,
) -> String {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(server_ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = match tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(tls) => tls,
        Err(e) => return e.to_string(),
    };
    let mut buf = [0u8; 64];
    match tls.read(&mut buf).await {
        Ok(n) if n > 0 => "the server speaks first (HTTP/2 settings)".into(),
        Ok(_) => "closed".into(),
        Err(e) => e.to_string(),
    }
}

fn person(id: &str) -> pb::PersonRecord {
    pb::PersonRecord {
        external_id: id.into(),
        display_name: format!("Person {id}"),
        upn: format!("{id}@corp.test"),
        email: format!("{id}@corp.test"),
        windows_sid: String::new(),
        attributes: Default::default(),
    }
}

fn csr(cn: &str) -> (rcgen::KeyPair, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let der = p.serialize_request(&key).unwrap().der().to_vec();
    (key, der)
}

/// A person's clientAuth certificate from the issuing CA of people's certificates, recorded
/// and good, is refused on every call (health included) when the server's `tls.client_ca`
/// still trusts that CA (a configuration from before the operator CA), and fails the TLS
/// handshake when `tls.client_ca` names the operator CA only.
async fn person_certificate_from_the_people_ca_is_refused_at_the_api(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::init(&dir.path().join("data"));
    let root = std::fs::read_to_string(ca.data_dir.join("root.pem")).unwrap();
    let issuing = std::fs::read_to_string(ca.data_dir.join("issuing.pem")).unwrap();
    let builder = TestServer::builder(url).with_ca(&ca).configure(|c| {
        c.tls.client_ca = "operators-and-people.pem".into();
    });
    // The old configuration: client_ca trusts the root above people's issuing CA too.
    std::fs::write(
        builder.dir().join("operators-and-people.pem"),
        format!("{}{root}", builder.pki.ca_pem),
    )
    .unwrap();
    let server = builder.start().await;
    DirectoryServiceClient::new(server.as_role("hr").await)
        .create_person(pb::CreatePersonRequest {
            request_id: "create-E1".into(),
            person: Some(person("E1")),
        })
        .await
        .unwrap();
    let (key, csr) = csr("Person E1");
    let issued = CertificateServiceClient::new(server.as_role("helpdesk").await)
        .issue_from_csr(pb::IssueFromCsrRequest {
            request_id: "issue-E1".into(),
            csr,
            profile: "tls-client".into(),
            person_external_id: "E1".into(),
            token_serial: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    let people = ClientCert {
        cert_pem: format!(
            "{}{issuing}",
            tessera::ca::issue::certificate_pem(&issued.der)
        ),
        key_pem: key.serialize_pem(),
    };
    let expected = (
        Code::PermissionDenied,
        "NOT_AN_OPERATOR_CERTIFICATE".to_string(),
        Vec::<String>::new(),
    );
    let message = format!(
        "the client certificate (serial {}) is a tls-client certificate, not an API client certificate; use one issued by `tessera admin issue-client-cert`",
        issued.serial
    );
    let s = health(server.channel(Some(&people)).await)
        .await
        .unwrap_err();
    assert_eq!(
        (refusal(&s), s.message()),
        (expected.clone(), message.as_str())
    );
    let s = CertificateServiceClient::new(server.channel(Some(&people)).await)
        .lookup_certificate(pb::LookupCertificateRequest {
            key: Some(pb::lookup_certificate_request::Key::Serial(
                issued.serial.clone(),
            )),
        })
        .await
        .unwrap_err();
    assert_eq!((refusal(&s), s.message()), (expected, message.as_str()));
    server.stop().await;

    // The configuration the operator CA is for: client_ca names only the operator CA (here the
    // test PKI's), so the person's certificate does not get through TLS.
    let server = TestServer::builder(url).with_ca(&ca).start().await;
    health(server.as_role("auditor").await).await.unwrap();
    assert_eq!(
        tls_answer(server.addr(), &server.pki.ca_pem, &people).await,
        "received fatal alert: UnknownCA",
        "the person's certificate fails the handshake"
    );
    let operator = server.pki.client("auditor");
    assert_eq!(
        tls_answer(server.addr(), &server.pki.ca_pem, &operator).await,
        "the server speaks first (HTTP/2 settings)"
    );
    server.stop().await;
}

/// A certificate from the operator CA, recorded as an operator certificate, but without the
/// operator policy OID: PERMISSION_DENIED before any role is looked at.
async fn operator_certificate_without_the_operator_policy_is_refused(url: &str) {
    let server = TestServer::builder(url).start().await;
    let client = server.pki.client_without_operator_policy("hr");
    let s = DirectoryServiceClient::new(server.channel(Some(&client)).await)
        .list_people(pb::ListPeopleRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (refusal(&s), s.message()),
        (
            (
                Code::PermissionDenied,
                "NOT_AN_OPERATOR_CERTIFICATE".to_string(),
                vec![]
            ),
            format!(
                "the client certificate does not carry the operator policy {OPERATOR_POLICY}, so it is not an API client certificate; use one from `tessera admin issue-client-cert`"
            )
            .as_str()
        )
    );
    // The same role with the policy gets in.
    DirectoryServiceClient::new(server.as_role("hr").await)
        .list_people(pb::ListPeopleRequest::default())
        .await
        .unwrap();
    server.stop().await;
}

/// A certificate from the operator CA that the store does not know (issued outside Tessera)
/// is refused on every call, health included, before the role check.
async fn client_certificate_unknown_to_the_store_is_refused(url: &str) {
    let server = TestServer::builder(url).start().await;
    let stranger = server.pki.unrecorded_client("admin");
    let serial = serial_of(&stranger.cert_pem);
    let expected = (
        (
            Code::Unauthenticated,
            "CLIENT_CERTIFICATE_UNKNOWN".to_string(),
            Vec::<String>::new(),
        ),
        format!(
            "the client certificate (serial {serial}) is not in Tessera's store; use one issued by `tessera admin issue-client-cert`"
        ),
    );
    let channel = connect(server.addr(), &server.pki.ca_pem, Some(&stranger)).await;
    let s = DirectoryServiceClient::new(channel.clone())
        .list_people(pb::ListPeopleRequest::default())
        .await
        .unwrap_err();
    assert_eq!((refusal(&s), s.message().to_string()), expected);
    let s = health(channel).await.unwrap_err();
    assert_eq!((refusal(&s), s.message().to_string()), expected);
    server.stop().await;
}

/// The issuing CA of people's certificates refuses the operator profile (IssueFromCsr with a
/// profiles directory that holds it, and any profile carrying the operator policy OID); the
/// operator CA refuses every other profile. Nothing is reserved or audited for a refusal.
async fn operator_profile_is_issued_only_by_the_operator_ca(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::init(&dir.path().join("data"));
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    let operator = include_str!("../../profiles/operator-client.toml");
    std::fs::write(profiles.join("operator-client.toml"), operator).unwrap();
    // Another name, the same policy.
    std::fs::write(profiles.join("api-client.toml"), operator).unwrap();
    std::fs::write(
        profiles.join("tls-client.toml"),
        include_str!("../../profiles/tls-client.toml"),
    )
    .unwrap();
    let server = TestServer::builder(url)
        .with_ca(&ca)
        .configure(|c| c.ca.as_mut().unwrap().profiles_dir = Some(profiles.clone()))
        .start()
        .await;
    let store = tessera::store::Store::open(url).await.unwrap();
    let events_before = store.audit_events(0, 1000).await.unwrap().len();
    let mut helpdesk = CertificateServiceClient::new(server.as_role("admin").await);
    for profile in ["operator-client", "api-client"] {
        let (_, csr) = csr("HR system");
        let s = helpdesk
            .issue_from_csr(pb::IssueFromCsrRequest {
                request_id: format!("issue-{profile}"),
                csr,
                profile: profile.into(),
                person_external_id: String::new(),
                token_serial: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (refusal(&s), s.message()),
            (
                (
                    Code::FailedPrecondition,
                    "PROFILE_NEEDS_OPERATOR_CA".to_string(),
                    vec!["profile".to_string()]
                ),
                format!(
                    "profile {profile} makes API client (operator) certificates, which only the operator CA issues; issue them with `tessera admin issue-client-cert` (after `tessera ca init-operators`)"
                )
                .as_str()
            )
        );
    }
    assert_eq!(
        store.audit_events(0, 1000).await.unwrap().len(),
        events_before,
        "a refused issuance reserves and audits nothing"
    );
    store.close().await;
    server.stop().await;

    // The operator CA itself: the operator profile only.
    let operators = OnlineCa::open_operators(ca.hsm_config(), &ca.data_dir).unwrap();
    assert!(operators.issuing.is_operator_ca());
    let people = OnlineCa::open(ca.hsm_config(), &ca.data_dir, None).unwrap();
    let tls_client = people.profiles.get("tls-client").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let public_key_der = rcgen::PublicKeyData::subject_public_key_info(&key);
    let subject = SubjectParams::new("someone");
    let serial = SerialNumber::random().unwrap();
    let request = |profile| IssuanceRequest {
        subject: &subject,
        public_key_der: &public_key_der,
        profile,
        serial: &serial,
        provenance: KeyProvenance::Unattested,
        now: time::OffsetDateTime::now_utc(),
    };
    let e = operators.issuing.prepare(&request(tls_client)).unwrap_err();
    assert!(
        matches!(&e, CaError::ProfileNotForOperatorCa { profile } if profile == "tls-client"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "the operator CA issues only the operator-client profile, not tls-client; people's and tokens' certificates come from the issuing CA"
    );
    let operator_profile = operators.profiles.get("operator-client").unwrap();
    let e = people
        .issuing
        .prepare(&request(operator_profile))
        .unwrap_err();
    assert!(
        matches!(&e, CaError::ProfileNeedsOperatorCa { profile } if profile == "operator-client"),
        "{e}"
    );
    // The operator CA signs its own profile, under the root, with the operator policy.
    let issued = operators.issuing.issue(&request(operator_profile)).unwrap();
    {
        use x509_parser::prelude::FromDer;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&issued.der).unwrap();
        let (_, operator_ca) = x509_parser::certificate::X509Certificate::from_der(
            operators.issuing.certificate_der(),
        )
        .unwrap();
        let (_, root) =
            x509_parser::certificate::X509Certificate::from_der(&people.stored.root_der).unwrap();
        assert_eq!(cert.issuer(), operator_ca.subject());
        assert_eq!(operator_ca.issuer(), root.subject());
        operator_ca
            .verify_signature(Some(root.public_key()))
            .unwrap();
        cert.verify_signature(Some(operator_ca.public_key()))
            .unwrap();
        let policies = |c: &x509_parser::certificate::X509Certificate<'_>| -> Vec<String> {
            c.extensions()
                .iter()
                .filter_map(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::CertificatePolicies(p) => Some(
                        p.iter()
                            .map(|p| p.policy_id.to_id_string())
                            .collect::<Vec<_>>(),
                    ),
                    _ => None,
                })
                .flatten()
                .collect()
        };
        assert_eq!(policies(&operator_ca), [OPERATOR_POLICY]);
        assert!(policies(&cert).contains(&OPERATOR_POLICY.to_string()));
        let constraints = operator_ca.basic_constraints().unwrap().unwrap().value;
        assert_eq!(
            (constraints.ca, constraints.path_len_constraint),
            (true, Some(0))
        );
    }
}

/// `ca init-operators` refuses, naming the problem and writing nothing, without a CA in the
/// data directory and when the operator CA would outlast the root.
#[test]
fn init_operators_refuses_what_it_cannot_make() {
    use harness::binary::tessera;
    let dir = tempfile::tempdir().unwrap();
    let token = harness::softhsm::SoftHsmToken::create("tessera");
    let env = vec![(
        "SOFTHSM2_CONF".to_string(),
        token.softhsm2_conf.to_str().unwrap().to_string(),
    )];
    let data = dir.path().join("data");
    let init = |extra: &[&str]| {
        let mut args = vec![
            "ca",
            "init-operators",
            "--hsm-config",
            token.config_path.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tessera(&args, &env)
    };
    let (code, _, err) = init(&[]);
    assert_eq!(
        (code, err),
        (
            1,
            format!(
                "error: no CA in {} (ca.toml not found); run `tessera ca init` first or point --data-dir at the CA\n",
                data.display()
            )
        )
    );
    token.init_ca(&data);
    let (code, _, err) = init(&["--validity-days", "7306"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("error: ca init: the operator CA validity (7306 days) would outlast the root certificate (valid until ")
            && err.ends_with("); shorten --validity-days\n"),
        "{err}"
    );
    assert!(!data.join("operator-ca.pem").exists() && !data.join("operator-ca.toml").exists());
    let (code, _, err) = init(&[]);
    assert_eq!(code, 0, "{err}");
}

on_both_databases!(
    person_certificate_from_the_people_ca_is_refused_at_the_api,
    operator_certificate_without_the_operator_policy_is_refused,
    client_certificate_unknown_to_the_store_is_refused,
    operator_profile_is_issued_only_by_the_operator_ca,
);
