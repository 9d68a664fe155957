//! Self-service (issue 13, item 2): a token authenticates with its own certificate, the TLS
//! handshake's signature made by the card (`piv::CardTlsKey` over a virtual card through
//! pcscd), on the `[self_service]` listener; who may act is decided per call
//! (`lifecycle::token_caller`). Run under `scripts/with-pcscd.sh`.
use crate::harness;

use harness::ca::TestCa;
use harness::config::{Enrollment, ServerToml};
use harness::pki::{ClientCert, TestPki};
use harness::server::{ServerTask, connect};
use harness::softhsm::SoftHsmToken;
use harness::vpcd::{CardOptions, VirtualCard};
use sha2::Digest as _;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tessera::piv::{CardTlsKey, ManagementKey, PivToken, Secret};
use tessera::protocol::pb;
use tessera::protocol::pb::certificate_service_client::CertificateServiceClient;
use tessera::protocol::pb::directory_service_client::DirectoryServiceClient;
use tessera::protocol::pb::enrollment_service_client::EnrollmentServiceClient;
use tessera::protocol::pb::self_service_client::SelfServiceClient;
use tessera::protocol::pb::token_service_client::TokenServiceClient;
use tessera::store::{Clock, ManualClock};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use yubikey::MgmAlgorithmId;
use yubikey::piv::{AlgorithmId, SlotId};

on_both_databases!(
    token_acts_for_itself_with_the_cards_own_key,
    refused_for_a_suspended_person_and_a_token_on_hold,
    refused_for_revoked_superseded_and_expired_certificates,
    refused_for_certificates_that_are_not_a_tokens_own,
    renewal_through_the_cards_own_key_then_nginx,
    tessera_renew_failures_name_the_problem,
    self_service_needs_a_ca,
);

const FACTORY_MGM_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];
const FACTORY_PIN: &str = "123456";
const FACTORY_PUK: &str = "12345678";
const PIN: &str = "24681357";

/// A server with a SoftHSM2 CA, enrollment and the self-service listener.
pub(crate) struct Server {
    dir: tempfile::TempDir,
    hsm: SoftHsmToken,
    data_dir: PathBuf,
    pub pki: TestPki,
    pub running: ServerTask,
}

impl Server {
    /// `tls.client_ca` also trusts the issuing CA of people's certificates (a configuration
    /// from before the operator CA), so that token certificates reach the operator port's
    /// per-call checks instead of failing its handshake.
    pub async fn start(url: &str, card_roots: &[PathBuf], clock: Clock) -> Server {
        Server::start_with(url, card_roots, clock, false).await
    }

    /// [`Server::start`]; with `renewable_now`, also the HTTP side (for /crl) and profiles
    /// whose renewal window is their whole validity (a fresh certificate may be renewed).
    pub async fn start_with(
        url: &str,
        card_roots: &[PathBuf],
        clock: Clock,
        renewable_now: bool,
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::init(&dir.path().join("ca"));
        ca.init_wrapping_key();
        let TestCa {
            token: hsm,
            data_dir,
            ..
        } = ca;
        let pki = TestPki::new();
        let mut config = ServerToml::new(url)
            .with_ca(&hsm.config_path, &data_dir)
            .with_enrollment(Enrollment {
                attestation_roots: card_roots.to_vec(),
                ..Enrollment::default()
            })
            .with_self_service();
        config.tls.client_ca = "operators-and-people.pem".into();
        if renewable_now {
            let profiles = dir.path().join("profiles");
            std::fs::create_dir(&profiles).unwrap();
            let built_in = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
            for entry in std::fs::read_dir(built_in).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_none_or(|e| e != "toml") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let validity = text
                    .lines()
                    .find_map(|l| l.strip_prefix("validity_days = "))
                    .unwrap()
                    .trim()
                    .to_string();
                let text = text
                    .lines()
                    .map(|l| {
                        if l.starts_with("renewal_window_days") {
                            format!("renewal_window_days = {validity}")
                        } else {
                            l.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                std::fs::write(profiles.join(path.file_name().unwrap()), text).unwrap();
            }
            config.ca.as_mut().unwrap().profiles_dir = Some(profiles);
            config = config.with_http();
        }
        let config_path = config.write(dir.path(), &pki);
        std::fs::write(
            dir.path().join("operators-and-people.pem"),
            format!(
                "{}{}",
                pki.ca_pem,
                std::fs::read_to_string(data_dir.join("issuing.pem")).unwrap()
            ),
        )
        .unwrap();
        let running = ServerTask::start_with_clock(&config_path, clock).await;
        Server {
            dir,
            hsm,
            data_dir,
            pki,
            running,
        }
    }

    pub async fn channel(&self, role: &str) -> Channel {
        connect(
            self.running.addr,
            &self.pki.ca_pem,
            Some(&self.pki.client(role)),
        )
        .await
    }

    pub fn self_service_url(&self) -> String {
        format!("https://{}", self.running.self_service.unwrap())
    }

    pub async fn create_person(&self, id: &str) {
        DirectoryServiceClient::new(self.channel("hr").await)
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
    }

    pub async fn stop(self) {
        self.running.stop().await;
    }
}

fn secret(s: &str) -> Secret {
    Secret::new(s.as_bytes().to_vec())
}

fn slot_id(slot: &str) -> SlotId {
    SlotId::try_from(u8::from_str_radix(slot, 16).unwrap()).unwrap()
}

fn policy(s: &str) -> (yubikey::PinPolicy, yubikey::TouchPolicy) {
    let pin = match s {
        "NEVER" => yubikey::PinPolicy::Never,
        "ALWAYS" => yubikey::PinPolicy::Always,
        _ => yubikey::PinPolicy::Once,
    };
    let touch = match s {
        "ALWAYS" => yubikey::TouchPolicy::Always,
        "CACHED" => yubikey::TouchPolicy::Cached,
        _ => yubikey::TouchPolicy::Never,
    };
    (pin, touch)
}

fn algorithm(s: &str) -> AlgorithmId {
    match s {
        "ECCP384" => AlgorithmId::EccP384,
        _ => AlgorithmId::EccP256,
    }
}

fn management_key(k: &pb::ManagementKey) -> ManagementKey {
    let algorithm = match pb::ManagementKeyAlgorithm::try_from(k.algorithm).unwrap() {
        pb::ManagementKeyAlgorithm::TripleDes => MgmAlgorithmId::ThreeDes,
        pb::ManagementKeyAlgorithm::Aes128 => MgmAlgorithmId::Aes128,
        pb::ManagementKeyAlgorithm::Aes192 => MgmAlgorithmId::Aes192,
        _ => MgmAlgorithmId::Aes256,
    };
    ManagementKey {
        algorithm,
        key: Secret::new(k.key.clone()),
    }
}

/// Enrolls a factory-fresh card for `person` with the piv-login profile (9a, 9c) the way the
/// station does, PIN set to [`PIN`]; returns the certificates by slot.
pub(crate) async fn enroll(
    server: &Server,
    card: &VirtualCard,
    person: &str,
    serial: u32,
) -> HashMap<String, pb::Certificate> {
    let mut desk = EnrollmentServiceClient::new(server.channel("helpdesk").await);
    let begin = desk
        .begin_enrollment(pb::BeginEnrollmentRequest {
            request_id: format!("begin-{person}-{serial}"),
            person_external_id: person.into(),
            profile: "piv-login".into(),
            token_serial: serial.to_string(),
            firmware: "5.7.4".into(),
            model: "YubiKey 5 NFC".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let new_key = management_key(begin.new_management_key.as_ref().unwrap());
    let mut token = PivToken::open(Some(card.reader_name())).unwrap();
    token
        .authenticate(&ManagementKey {
            algorithm: tessera::piv::default_management_algorithm(token.firmware()),
            key: Secret::new(FACTORY_MGM_KEY.to_vec()),
        })
        .unwrap();
    token.set_management_key(&new_key).unwrap();
    token.authenticate(&new_key).unwrap();
    token
        .change_puk(&secret(FACTORY_PUK), &secret(&begin.new_puk))
        .unwrap();
    // Every key first: a PIN verify selects the application again, which ends the
    // management-key session generation needs.
    let mut attestations = Vec::new();
    for plan in &begin.slots {
        let (pin_policy, touch_policy) = (policy(&plan.pin_policy).0, policy(&plan.touch_policy).1);
        token
            .generate(
                slot_id(&plan.slot),
                algorithm(&plan.algorithm),
                pin_policy,
                touch_policy,
            )
            .unwrap();
        attestations.push(token.attest(slot_id(&plan.slot)).unwrap());
    }
    let mut proofs = Vec::new();
    for (plan, attestation) in begin.slots.iter().zip(attestations) {
        token.verify_pin(&secret(FACTORY_PIN)).unwrap();
        let message =
            tessera::protocol::proof_message(&begin.enrollment_id, &plan.slot, &begin.nonce);
        let signature = token
            .sign(
                slot_id(&plan.slot),
                algorithm(&plan.algorithm),
                &sha2::Sha256::digest(&message),
            )
            .unwrap();
        proofs.push(pb::EnrollmentProof {
            slot: plan.slot.clone(),
            attestation_certificate: attestation,
            signature,
        });
    }
    let done = desk
        .complete_enrollment(pb::CompleteEnrollmentRequest {
            request_id: format!("complete-{}", begin.enrollment_id),
            enrollment_id: begin.enrollment_id.clone(),
            attestation_intermediate: token.attestation_certificate().unwrap(),
            proofs,
        })
        .await
        .unwrap()
        .into_inner();
    token.authenticate(&new_key).unwrap();
    for c in &done.certificates {
        token
            .write_certificate(slot_id(&c.slot), &c.certificate.as_ref().unwrap().der)
            .unwrap();
    }
    token
        .change_pin(&secret(FACTORY_PIN), &secret(PIN))
        .unwrap();
    drop(token);
    desk.confirm_enrollment(pb::ConfirmEnrollmentRequest {
        request_id: format!("confirm-{}", begin.enrollment_id),
        enrollment_id: begin.enrollment_id,
    })
    .await
    .unwrap();
    done.certificates
        .into_iter()
        .map(|c| (c.slot, c.certificate.unwrap()))
        .collect()
}

/// The card's 9a key as a TLS client key; the touch prompts it printed are collected.
pub(crate) fn card_key(card: &VirtualCard) -> (Arc<CardTlsKey>, Arc<Mutex<Vec<String>>>) {
    let prompts = Arc::new(Mutex::new(Vec::new()));
    let seen = prompts.clone();
    let key = CardTlsKey::open(
        PivToken::open(Some(card.reader_name())).unwrap(),
        SlotId::Authentication,
        secret(PIN),
        Arc::new(move |slot: &str| seen.lock().unwrap().push(slot.to_string())),
    )
    .unwrap();
    (Arc::new(key), prompts)
}

/// The self-service client over a TLS handshake signed by the card's 9a key.
pub(crate) async fn as_token(server: &Server, card: &VirtualCard) -> SelfServiceClient<Channel> {
    let (key, _) = card_key(card);
    let config =
        tessera::renew::connection::client_config(server.pki.ca_pem.as_bytes(), key, vec![])
            .unwrap();
    tessera::renew::connection::connect(&server.self_service_url(), Some("localhost"), config)
        .await
        .unwrap()
}

/// Code, `ErrorInfo` reason and metadata of a refusal.
fn refusal(s: &Status) -> (Code, String, HashMap<String, String>) {
    let info = s.get_error_details().error_info().cloned();
    (
        s.code(),
        info.as_ref().map(|i| i.reason.clone()).unwrap_or_default(),
        info.map(|i| i.metadata).unwrap_or_default(),
    )
}

fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn my_token(
    client: &mut SelfServiceClient<Channel>,
) -> Result<pb::GetMyTokenResponse, Status> {
    client
        .get_my_token(pb::GetMyTokenRequest::default())
        .await
        .map(|r| r.into_inner())
}

const SERIAL: u32 = 31_000_001;

async fn begin(
    client: &mut SelfServiceClient<Channel>,
    request_id: &str,
) -> Result<pb::BeginRenewalResponse, Status> {
    client
        .begin_renewal(pb::BeginMyRenewalRequest {
            request_id: request_id.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn token_acts_for_itself_with_the_cards_own_key(url: &str) {
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    let server = Server::start(url, &[card.attestation_root()], Clock::system()).await;
    server.create_person("S1").await;
    let issued = enroll(&server, &card, "S1", SERIAL).await;

    let (key, prompts) = card_key(&card);
    assert_eq!(key.slot(), "9a");
    assert_eq!(key.certificate_der(), issued["9a"].der.as_slice());
    let config =
        tessera::renew::connection::client_config(server.pki.ca_pem.as_bytes(), key, vec![])
            .unwrap();
    let mut client =
        tessera::renew::connection::connect(&server.self_service_url(), Some("localhost"), config)
            .await
            .unwrap();
    let mine = my_token(&mut client).await.unwrap();
    // 9a's touch policy is NEVER: no prompt.
    assert!(prompts.lock().unwrap().is_empty());
    let token = mine.token.unwrap();
    assert_eq!(
        (token.serial.as_str(), token.state()),
        ("31000001", pb::TokenState::Active)
    );
    assert_eq!(
        (
            mine.person_external_id.as_str(),
            mine.person_display_name.as_str(),
            mine.caller_slot.as_str(),
            mine.caller_certificate_serial.as_str()
        ),
        ("S1", "Person S1", "9a", issued["9a"].serial.as_str())
    );
    let slots: Vec<(String, String, pb::CertificateStatus)> = mine
        .slots
        .iter()
        .map(|s| {
            let c = s.certificate.as_ref().unwrap();
            (s.slot.clone(), c.serial.clone(), c.status())
        })
        .collect();
    assert_eq!(
        slots,
        vec![
            (
                "9a".to_string(),
                issued["9a"].serial.clone(),
                pb::CertificateStatus::Good
            ),
            (
                "9c".to_string(),
                issued["9c"].serial.clone(),
                pb::CertificateStatus::Good
            ),
        ]
    );
    assert_eq!(
        mine.slots[0].certificate.as_ref().unwrap().not_after,
        issued["9a"].not_after
    );
    // Naming its own serial is fine; another is refused.
    client
        .get_my_token(pb::GetMyTokenRequest {
            token_serial: SERIAL.to_string(),
        })
        .await
        .unwrap();
    let s = client
        .get_my_token(pb::GetMyTokenRequest {
            token_serial: "31000002".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (refusal(&s), s.message()),
        (
            (
                Code::PermissionDenied,
                "SELF_SERVICE_OTHER_TOKEN".into(),
                meta(&[])
            ),
            "this call concerns token 31000002, but the certificate presented is token 31000001's; a token may only act for itself"
        )
    );

    // The person's certificate on the operator port: past the handshake (client_ca trusts the
    // issuing CA here), refused on every call by client_revocation before any service.
    let (key, _) = card_key(&card);
    let config =
        tessera::renew::connection::client_config(server.pki.ca_pem.as_bytes(), key, vec![])
            .unwrap();
    let mut on_operator_port = tessera::renew::connection::connect(
        &format!("https://{}", server.running.addr),
        Some("localhost"),
        config,
    )
    .await
    .unwrap();
    let s = my_token(&mut on_operator_port).await.unwrap_err();
    assert_eq!(
        (refusal(&s), s.message().to_string()),
        (
            (
                Code::PermissionDenied,
                "NOT_AN_OPERATOR_CERTIFICATE".into(),
                meta(&[])
            ),
            format!(
                "the client certificate (serial {}) is a piv-authentication certificate, not an API client certificate; use one issued by `tessera admin issue-client-cert`",
                issued["9a"].serial
            )
        )
    );
    // And a role certificate on the self-service port fails the handshake: its CA (the
    // operator CA) is not the issuing CA the listener trusts.
    let helpdesk = server.pki.client("helpdesk");
    assert_eq!(
        tls_answer(
            server.running.self_service.unwrap(),
            &server.pki.ca_pem,
            &helpdesk
        )
        .await,
        "received fatal alert: UnknownCA"
    );
    // On the operator port every role is refused by SelfService's own authorization.
    let s = my_token(&mut SelfServiceClient::new(server.channel("admin").await))
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&s),
        (
            Code::PermissionDenied,
            "SELF_SERVICE_NOT_A_TOKEN_CERTIFICATE".into(),
            meta(&[])
        )
    );
    server.stop().await;
}

/// Connects over TLS 1.3 presenting `client` (key in a file) and reads once: the server's
/// alert when it refused the certificate, else what an accepted connection gets.
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = match tokio_rustls::TlsConnector::from(Arc::new(config))
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

async fn token_transition(server: &Server, suspend: bool) {
    let mut tokens = TokenServiceClient::new(server.channel("helpdesk").await);
    if suspend {
        tokens
            .suspend_token(pb::SuspendTokenRequest {
                request_id: "suspend-token".into(),
                serial: SERIAL.to_string(),
                reason: "left at home".into(),
            })
            .await
            .unwrap();
    } else {
        tokens
            .reinstate_token(pb::ReinstateTokenRequest {
                request_id: "reinstate-token".into(),
                serial: SERIAL.to_string(),
                reason: "found".into(),
            })
            .await
            .unwrap();
    }
}

async fn person_transition(server: &Server, suspend: bool) {
    let mut people = DirectoryServiceClient::new(server.channel("hr").await);
    if suspend {
        people
            .suspend_person(pb::SuspendPersonRequest {
                request_id: "suspend-person".into(),
                external_id: "S1".into(),
                reason: "leave".into(),
            })
            .await
            .unwrap();
    } else {
        people
            .reinstate_person(pb::ReinstatePersonRequest {
                request_id: "reinstate-person".into(),
                external_id: "S1".into(),
                reason: "back".into(),
            })
            .await
            .unwrap();
    }
}

async fn refused_for_a_suspended_person_and_a_token_on_hold(url: &str) {
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    let server = Server::start(url, &[card.attestation_root()], Clock::system()).await;
    server.create_person("S1").await;
    enroll(&server, &card, "S1", SERIAL).await;
    let mut client = as_token(&server, &card).await;
    my_token(&mut client).await.unwrap();
    // Fresh certificates: self-service renewal only within the window, and never forced.
    let s = begin(&mut client, "too-early").await.unwrap_err();
    assert_eq!(
        (s.code(), refusal(&s).1),
        (Code::FailedPrecondition, "RENEWAL_TOO_EARLY".to_string())
    );

    // The token on hold (its certificates with it): refused on the open connection too.
    token_transition(&server, true).await;
    let s = begin(&mut client, "on-hold").await.unwrap_err();
    assert_eq!(
        refusal(&s),
        (
            Code::PermissionDenied,
            "SELF_SERVICE_TOKEN_NOT_ACTIVE".into(),
            meta(&[("token_state", "suspended")])
        )
    );
    let s = my_token(&mut client).await.unwrap_err();
    assert_eq!(
        (refusal(&s), s.message()),
        (
            (
                Code::PermissionDenied,
                "SELF_SERVICE_TOKEN_NOT_ACTIVE".into(),
                meta(&[("token_state", "suspended")])
            ),
            "token 31000001 is suspended; self-service needs an active token"
        )
    );
    token_transition(&server, false).await;
    my_token(&mut client).await.unwrap();

    // The person suspended by HR.
    person_transition(&server, true).await;
    let s = begin(&mut client, "suspended").await.unwrap_err();
    assert_eq!(
        refusal(&s),
        (
            Code::PermissionDenied,
            "SELF_SERVICE_PERSON_NOT_ACTIVE".into(),
            meta(&[("person_state", "suspended")])
        )
    );
    let s = my_token(&mut as_token(&server, &card).await)
        .await
        .unwrap_err();
    assert_eq!(
        (refusal(&s), s.message()),
        (
            (
                Code::PermissionDenied,
                "SELF_SERVICE_PERSON_NOT_ACTIVE".into(),
                meta(&[("person_state", "suspended")])
            ),
            "the person S1 is suspended; self-service needs an active person"
        )
    );
    person_transition(&server, false).await;
    my_token(&mut client).await.unwrap();
    server.stop().await;
}

async fn revoke(server: &Server, serial: &str, reason: pb::RevocationReason) {
    CertificateServiceClient::new(server.channel("helpdesk").await)
        .revoke_certificate(pb::RevokeCertificateRequest {
            request_id: format!("revoke-{serial}-{}", reason.as_str_name()),
            serial: serial.into(),
            reason: reason as i32,
        })
        .await
        .unwrap();
}

async fn refused_for_revoked_superseded_and_expired_certificates(url: &str) {
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    let clock = ManualClock::starting_now();
    let server = Server::start(url, &[card.attestation_root()], clock.clock()).await;
    server.create_person("S1").await;
    let issued = enroll(&server, &card, "S1", SERIAL).await;
    let serial = issued["9a"].serial.clone();
    let mut client = as_token(&server, &card).await;
    my_token(&mut client).await.unwrap();

    // By the server's clock the certificate has expired (the TLS handshake, on the system
    // clock, still passes).
    let now = clock.now();
    clock.set(tessera::store::Timestamp::parse(&issued["9a"].not_after).unwrap());
    let s = my_token(&mut client).await.unwrap_err();
    assert_eq!(
        (refusal(&s), s.message().to_string()),
        (
            (
                Code::Unauthenticated,
                "SELF_SERVICE_CERTIFICATE_EXPIRED".into(),
                meta(&[("not_after", &issued["9a"].not_after)])
            ),
            format!(
                "the client certificate (serial {serial}) is outside its validity ({} to {}); renew at the help desk",
                issued["9a"].not_before, issued["9a"].not_after
            )
        )
    );
    clock.set(now);
    my_token(&mut client).await.unwrap();

    // On hold by the help desk (certificateHold), then released.
    revoke(&server, &serial, pb::RevocationReason::CertificateHold).await;
    let s = my_token(&mut client).await.unwrap_err();
    assert_eq!(
        (refusal(&s), s.message().to_string()),
        (
            (
                Code::Unauthenticated,
                "SELF_SERVICE_CERTIFICATE_REVOKED".into(),
                meta(&[
                    ("certificate_status", "on hold"),
                    ("revocation_reason", "6")
                ])
            ),
            format!("the client certificate (serial {serial}) is on hold")
        )
    );
    CertificateServiceClient::new(server.channel("helpdesk").await)
        .release_certificate_hold(pb::ReleaseCertificateHoldRequest {
            request_id: "release".into(),
            serial: serial.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    my_token(&mut client).await.unwrap();

    // Superseded (as a renewal's confirm revokes the old certificate).
    revoke(&server, &serial, pb::RevocationReason::Superseded).await;
    let s = begin(&mut client, "superseded").await.unwrap_err();
    assert_eq!(
        refusal(&s).1,
        "SELF_SERVICE_CERTIFICATE_SUPERSEDED".to_string()
    );
    let s = my_token(&mut as_token(&server, &card).await)
        .await
        .unwrap_err();
    assert_eq!(
        (refusal(&s), s.message().to_string()),
        (
            (
                Code::Unauthenticated,
                "SELF_SERVICE_CERTIFICATE_SUPERSEDED".into(),
                meta(&[])
            ),
            format!(
                "the client certificate (serial {serial}) was superseded by a renewal; use the token's current certificate"
            )
        )
    );
    server.stop().await;
}

/// A person's certificate that no enrollment issued to a token (from a CSR, key in a file):
/// past the handshake (same issuing CA), refused per call.
async fn refused_for_certificates_that_are_not_a_tokens_own(url: &str) {
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    let server = Server::start(url, &[card.attestation_root()], Clock::system()).await;
    server.create_person("S1").await;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Person S1");
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    let issued = CertificateServiceClient::new(server.channel("helpdesk").await)
        .issue_from_csr(pb::IssueFromCsrRequest {
            request_id: "issue-S1".into(),
            csr,
            profile: "tls-client".into(),
            person_external_id: "S1".into(),
            token_serial: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    let from_csr = ClientCert {
        cert_pem: tessera::ca::issue::certificate_pem(&issued.der),
        key_pem: key.serialize_pem(),
    };
    let channel = connect(
        server.running.self_service.unwrap(),
        &server.pki.ca_pem,
        Some(&from_csr),
    )
    .await;
    let s = my_token(&mut SelfServiceClient::new(channel))
        .await
        .unwrap_err();
    assert_eq!(
        (refusal(&s), s.message().to_string()),
        (
            (
                Code::PermissionDenied,
                "SELF_SERVICE_NOT_A_TOKEN_CERTIFICATE".into(),
                meta(&[])
            ),
            format!(
                "the client certificate (serial {}, profile tls-client) was not issued to a token by an enrollment; self-service takes a token's own certificate only",
                issued.serial
            )
        )
    );
    // Revoked too: still not a token's certificate, which is what decides first.
    revoke(&server, &issued.serial, pb::RevocationReason::KeyCompromise).await;
    let channel = connect(
        server.running.self_service.unwrap(),
        &server.pki.ca_pem,
        Some(&from_csr),
    )
    .await;
    let s = my_token(&mut SelfServiceClient::new(channel))
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&s).1,
        "SELF_SERVICE_NOT_A_TOKEN_CERTIFICATE".to_string()
    );
    server.stop().await;
}

fn write_private(path: &std::path::Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Issue 13's end-to-end self-service renewal: two tokens of one person; each may only renew
/// itself; `tessera renew` (a real process) renews token A through its own key; nginx then
/// accepts the new certificate and refuses the superseded one (presented by a copy of the card
/// as it was before the renewal, old key and all), and so does the self-service port.
async fn renewal_through_the_cards_own_key_then_nginx(url: &str) {
    let mut card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    let other = VirtualCard::start(CardOptions::firmware("5.7.4").serial(SERIAL + 1));
    let server = Server::start_with(
        url,
        &[card.attestation_root(), other.attestation_root()],
        Clock::system(),
        true,
    )
    .await;
    server.create_person("S1").await;
    let old = enroll(&server, &card, "S1", SERIAL).await;
    enroll(&server, &other, "S1", SERIAL + 1).await;
    let mine = my_token(&mut as_token(&server, &card).await).await.unwrap();
    assert!(mine.slots.iter().all(|s| s.renewal_open), "{mine:?}");

    // Token B begins its own renewal; token A may neither touch it nor renew B.
    let mut b = as_token(&server, &other).await;
    let begun = b
        .begin_renewal(pb::BeginMyRenewalRequest {
            request_id: "b-renews".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        begun
            .slots
            .iter()
            .map(|s| s.slot.as_str())
            .collect::<Vec<_>>(),
        ["9a", "9c"]
    );
    let mut a = as_token(&server, &card).await;
    let s = a
        .begin_renewal(pb::BeginMyRenewalRequest {
            request_id: "a-renews-b".into(),
            token_serial: (SERIAL + 1).to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&s),
        (
            Code::PermissionDenied,
            "SELF_SERVICE_OTHER_TOKEN".into(),
            meta(&[])
        )
    );
    let s = a
        .confirm_renewal(pb::ConfirmEnrollmentRequest {
            request_id: "a-confirms-b".into(),
            enrollment_id: begun.enrollment_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (refusal(&s), s.message().to_string()),
        (
            (
                Code::PermissionDenied,
                "SELF_SERVICE_NOT_OWN_RENEWAL".into(),
                meta(&[])
            ),
            format!(
                "enrollment {} is not a renewal of token 31000001; a token may only complete, confirm or abort its own renewal",
                begun.enrollment_id
            )
        )
    );
    b.abort_renewal(pb::AbortEnrollmentRequest {
        request_id: "b-aborts".into(),
        enrollment_id: begun.enrollment_id.clone(),
        reason: "changed my mind".into(),
    })
    .await
    .unwrap();
    drop((a, b));

    // Keep a copy of token A as it is now (old keys and certificates).
    let before = server.dir.path().join("card-before-renewal.json");
    card.pull();
    std::fs::copy(card.state_file(), &before).unwrap();
    card.insert();

    // `tessera renew` as a real process, PIN from a 0600 file.
    let pin_file = server.dir.path().join("pin");
    write_private(&pin_file, PIN);
    let server_ca = server.dir.path().join("server-ca.pem");
    std::fs::write(&server_ca, &server.pki.ca_pem).unwrap();
    let out = tokio::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .arg("renew")
        .args([
            "--server",
            &server.self_service_url(),
            "--server-name",
            "localhost",
        ])
        .arg("--ca-cert")
        .arg(&server_ca)
        .args(["--reader", card.reader_name()])
        .arg("--pin-file")
        .arg(&pin_file)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tessera renew failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("touch the YubiKey now (it blinks)"),
        "{stdout}"
    );
    assert!(!stdout.contains(PIN), "the PIN is never printed");
    assert!(stdout.contains("token 31000001 renewed"), "{stdout}");

    // The token now speaks with its new 9a certificate.
    let mine = my_token(&mut as_token(&server, &card).await).await.unwrap();
    let new_9a = mine.slots[0].certificate.clone().unwrap();
    assert_eq!(mine.caller_certificate_serial, new_9a.serial);
    assert_ne!(new_9a.serial, old["9a"].serial);
    assert!(stdout.contains(&format!("renewed slot 9a: certificate {}", new_9a.serial)));
    assert!(stdout.contains(&format!(
        "superseded: certificate {} (revoked)",
        old["9a"].serial
    )));
    let superseded = CertificateServiceClient::new(server.channel("helpdesk").await)
        .get_certificate(pb::GetCertificateRequest {
            serial: old["9a"].serial.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    assert_eq!(
        (superseded.status(), superseded.revocation_reason()),
        (
            pb::CertificateStatus::Revoked,
            pb::RevocationReason::Superseded
        )
    );

    // nginx with the chain and the CRLs: the new certificate logs in.
    use harness::relying_party::{Nginx, curl_with_token, fetch_crl, root_crl};
    let d = server.dir.path();
    let root = root_crl(&server.hsm, &server.data_dir, d);
    let crl = d.join("crls.pem");
    fetch_crl(&server.running.http.unwrap().to_string(), &root, &crl);
    let nginx = Nginx::start(d, &server.data_dir.join("chain.pem"), &crl);
    let new_pem = d.join("new-9a.pem");
    std::fs::write(&new_pem, tessera::ca::issue::certificate_pem(&new_9a.der)).unwrap();
    let old_pem = d.join("old-9a.pem");
    std::fs::write(
        &old_pem,
        tessera::ca::issue::certificate_pem(&old["9a"].der),
    )
    .unwrap();
    let opensc_conf = card.opensc_conf();
    let login = |cert: &std::path::Path| {
        curl_with_token(
            &nginx.url(),
            &nginx.server_cert,
            cert,
            &pin_file,
            &opensc_conf,
            d,
        )
    };
    let run = login(&new_pem);
    assert!(run.stdout.starts_with("verify=SUCCESS subject="), "{run:?}");

    // The card as it was before (the old key still in it): its superseded certificate is
    // refused by nginx (revoked in the CRL) and by the self-service port.
    let after = d.join("card-after-renewal.json");
    card.pull();
    std::fs::copy(card.state_file(), &after).unwrap();
    std::fs::copy(&before, card.state_file()).unwrap();
    card.insert();
    let run = login(&old_pem);
    assert!(
        run.stdout.contains("400 The SSL certificate error"),
        "{run:?}"
    );
    let log = std::fs::read_to_string(nginx.dir.join("logs/error.log")).unwrap();
    assert!(log.contains("certificate revoked"), "{log}");
    let s = my_token(&mut as_token(&server, &card).await)
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&s),
        (
            Code::Unauthenticated,
            "SELF_SERVICE_CERTIFICATE_SUPERSEDED".into(),
            meta(&[])
        )
    );
    // And back to the renewed card: still in.
    card.pull();
    std::fs::copy(&after, card.state_file()).unwrap();
    card.insert();
    assert!(login(&new_pem).stdout.starts_with("verify=SUCCESS"));
    server.stop().await;
}

/// `tessera renew` (a real process) against `server` with the PIN from `pin_file`: exit code,
/// stdout, and the last line of stderr (the one-line error).
async fn renew_cli(
    server: &Server,
    card: &VirtualCard,
    pin_file: &std::path::Path,
) -> (i32, String, String) {
    let server_ca = server.dir.path().join("server-ca.pem");
    std::fs::write(&server_ca, &server.pki.ca_pem).unwrap();
    let out = tokio::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .arg("renew")
        .args([
            "--server",
            &server.self_service_url(),
            "--server-name",
            "localhost",
        ])
        .arg("--ca-cert")
        .arg(&server_ca)
        .args(["--reader", card.reader_name()])
        .arg("--pin-file")
        .arg(pin_file)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr.lines().last().unwrap_or_default().to_string(),
    )
}

/// Each way `tessera renew` stops says what is wrong in one line, and changes nothing.
async fn tessera_renew_failures_name_the_problem(url: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    let server = Server::start(url, &[card.attestation_root()], Clock::system()).await;
    server.create_person("S1").await;
    let issued = enroll(&server, &card, "S1", SERIAL).await;
    let d = server.dir.path();

    let loose = d.join("loose-pin");
    std::fs::write(&loose, PIN).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, error) = renew_cli(&server, &card, &loose).await;
    assert_eq!(
        (code, error),
        (
            1,
            format!(
                "error: the PIN file {0} can be read by other users (mode 644); run `chmod 600 {0}`",
                loose.display()
            )
        )
    );

    let wrong = d.join("wrong-pin");
    write_private(&wrong, "11111111");
    let (code, _, error) = renew_cli(&server, &card, &wrong).await;
    assert_eq!(
        (code, error.as_str()),
        (
            1,
            "error: read the 9a key and certificate: wrong PIN: 2 tries left before the PIN is blocked"
        )
    );

    // Fresh certificates: the window of piv-authentication opens 30 days before expiry.
    let pin = d.join("pin");
    write_private(&pin, PIN);
    let (code, stdout, error) = renew_cli(&server, &card, &pin).await;
    let not_after = &issued["9a"].not_after;
    let opens = tessera::store::Timestamp::parse(not_after)
        .unwrap()
        .checked_sub(std::time::Duration::from_secs(30 * 86_400))
        .unwrap();
    assert_eq!(
        (code, error),
        (
            1,
            format!(
                "error: the server refused SelfService.BeginRenewal: FAILED_PRECONDITION RENEWAL_TOO_EARLY: slot 9a: certificate {} (profile piv-authentication) expires at {not_after}; it may be renewed from {opens} (30 days before expiry, renewal_window_days of the profile); an admin may force an earlier renewal; run `tessera renew` again once the renewal window is open (the date above)",
                issued["9a"].serial
            )
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "slot 9a: certificate {} valid until {not_after}; renewal opens {opens}",
            issued["9a"].serial
        )),
        "{stdout}"
    );

    // The token on hold.
    token_transition(&server, true).await;
    let (code, _, error) = renew_cli(&server, &card, &pin).await;
    assert_eq!(
        (code, error.as_str()),
        (
            1,
            "error: the server refused SelfService.GetMyToken: PERMISSION_DENIED SELF_SERVICE_TOKEN_NOT_ACTIVE: token 31000001 is suspended; self-service needs an active token; see docs/self-service.md for this reason, or renew at the help desk"
        )
    );
    token_transition(&server, false).await;

    // Nothing changed: both certificates good, no renewal begun.
    let mine = my_token(&mut as_token(&server, &card).await).await.unwrap();
    assert_eq!(
        mine.slots
            .iter()
            .map(|s| {
                let c = s.certificate.as_ref().unwrap();
                (c.serial.clone(), c.status())
            })
            .collect::<Vec<_>>(),
        vec![
            (issued["9a"].serial.clone(), pb::CertificateStatus::Good),
            (issued["9c"].serial.clone(), pb::CertificateStatus::Good)
        ]
    );
    server.stop().await;
}

/// `[self_service]` without `[ca]`: the server does not start, and says why.
async fn self_service_needs_a_ca(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let path = ServerToml::new(url)
        .with_self_service()
        .write(dir.path(), &pki);
    let config = tessera::server::ServerConfig::load(&path).unwrap();
    let Err(e) = tessera::server::BoundServer::bind(&config).await else {
        panic!("a server with [self_service] and no [ca] started");
    };
    assert_eq!(
        e.to_string(),
        "the [self_service] section needs a [ca] section (its issuing CA verifies the tokens' certificates)"
    );
}
