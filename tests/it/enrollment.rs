//! Help-desk enrollment end to end on the server side: SoftHSM2 CA + the gRPC server + a real
//! virtual card (pcscd + vpcd + tessera-vpiv) driven with the `piv` module, as the station does.
//! Run under `scripts/with-pcscd.sh -- cargo nextest run --test enrollment`.
use crate::harness;

use harness::binary::tessera;
use harness::ca::TestCa;
use harness::config::{Enrollment, ServerToml};
use harness::pki::TestPki;
use harness::server::{ServerTask, connect};
use harness::softhsm::SoftHsmToken;
use harness::vpcd::{CardOptions, VirtualCard};
use sha2::Digest as _;
use std::path::{Path, PathBuf};
use tessera::piv::{ManagementKey, PivToken, Secret};
use tessera::protocol::pb;
use tessera::protocol::pb::directory_service_client::DirectoryServiceClient;
use tessera::protocol::pb::enrollment_service_client::EnrollmentServiceClient;
use tessera::server::{BoundServer, ServerConfig};
use tessera::store::{CertificateStatus, CertificatesQuery};
use tessera::store::{Clock, ManualClock, Store};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use yubikey::MgmAlgorithmId;
use yubikey::piv::{AlgorithmId, SlotId};

on_both_databases!(
    happy_path_enrolls_a_virtual_card,
    begin_refusals_name_their_reason,
    proof_over_a_wrong_nonce_is_refused,
    begin_for_another_person_is_refused_and_abort_restores_the_token,
    expiry_restores_the_token,
    wrapped_credentials_moved_to_another_token_are_refused,
    credentials_wrapped_before_migration_0006_are_released_and_rebound,
    repeated_release_puk_is_checked_audited_and_expires,
    repeated_begin_is_checked_audited_and_expires,
    puk_release_needs_a_reason_and_is_rate_limited_per_certificate,
    puk_release_under_dual_control,
    puk_release_requests_and_approvals_expire,
    repeat_of_an_approved_release_is_audited_and_rate_limited,
    forgotten_token_and_its_temporary_token,
    puk_rotation_is_confirmed_once_and_refusals_name_their_reason,
);

const FACTORY_MGM_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];
const FACTORY_PIN: &str = "123456";
const FACTORY_PUK: &str = "12345678";
pub(crate) const NEW_PIN: &str = "24681357";

/// A running server with a SoftHSM2 CA and enrollment configured, and the files around it.
pub(crate) struct Server {
    pub(crate) dir: tempfile::TempDir,
    _hsm: SoftHsmToken,
    pub(crate) pki: TestPki,
    pub(crate) data_dir: PathBuf,
    pub(crate) running: ServerTask,
}

impl Server {
    /// CA ceremony and wrapping key in a fresh SoftHSM2 token, then the server with
    /// `[ca]` and `enrollment` (the `[enrollment]` section) trusting `attestation_roots` (the
    /// virtual cards' roots) besides what `enrollment` says.
    pub(crate) async fn start(
        database_url: &str,
        attestation_roots: &[PathBuf],
        enrollment: Enrollment,
    ) -> Server {
        Server::start_with_clock(database_url, attestation_roots, enrollment, Clock::system()).await
    }

    /// [`Server::start`] with the server's times from `clock`.
    pub(crate) async fn start_with_clock(
        database_url: &str,
        attestation_roots: &[PathBuf],
        enrollment: Enrollment,
        clock: Clock,
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
        let config = ServerToml::new(database_url)
            .with_ca(&hsm.config_path, &data_dir)
            .with_enrollment(Enrollment {
                attestation_roots: attestation_roots.to_vec(),
                ..enrollment
            });
        let config_path = config.write(dir.path(), &pki);
        let running = ServerTask::start_with_clock(&config_path, clock).await;
        Server {
            dir,
            _hsm: hsm,
            pki,
            data_dir,
            running,
        }
    }

    pub(crate) async fn channel(&self, role: &str) -> Channel {
        let client = self.pki.client(role);
        connect(self.running.addr, &self.pki.ca_pem, Some(&client)).await
    }

    pub(crate) async fn enrollments(&self) -> EnrollmentServiceClient<Channel> {
        EnrollmentServiceClient::new(self.channel("helpdesk").await)
    }

    /// The enrollment service as one client certificate with common name `name` and `role`
    /// (every call of the returned client uses that one certificate).
    pub(crate) async fn enrollments_as(
        &self,
        name: &str,
        role: &str,
    ) -> EnrollmentServiceClient<Channel> {
        let client = self
            .pki
            .client_with_uris(name, &[&format!("tessera:role:{role}")]);
        EnrollmentServiceClient::new(
            connect(self.running.addr, &self.pki.ca_pem, Some(&client)).await,
        )
    }

    pub(crate) async fn create_person(&self, id: &str, sid: &str) {
        DirectoryServiceClient::new(self.channel("hr").await)
            .create_person(pb::CreatePersonRequest {
                request_id: format!("create-{id}"),
                person: Some(pb::PersonRecord {
                    external_id: id.into(),
                    display_name: format!("Person {id}"),
                    upn: format!("{}@corp.test", id.to_lowercase()),
                    email: format!("{}@corp.test", id.to_lowercase()),
                    windows_sid: sid.into(),
                    attributes: Default::default(),
                }),
            })
            .await
            .unwrap();
    }

    pub(crate) async fn stop(self) {
        self.running.stop().await;
    }
}

pub(crate) fn reason(s: &Status) -> String {
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

pub(crate) fn slot_id(slot: &str) -> SlotId {
    SlotId::try_from(u8::from_str_radix(slot, 16).unwrap()).unwrap()
}

pub(crate) fn yk_pin_policy(s: &str) -> yubikey::PinPolicy {
    match s {
        "NEVER" => yubikey::PinPolicy::Never,
        "ONCE" => yubikey::PinPolicy::Once,
        "ALWAYS" => yubikey::PinPolicy::Always,
        other => panic!("pin policy {other}"),
    }
}

pub(crate) fn yk_touch_policy(s: &str) -> yubikey::TouchPolicy {
    match s {
        "NEVER" => yubikey::TouchPolicy::Never,
        "ALWAYS" => yubikey::TouchPolicy::Always,
        "CACHED" => yubikey::TouchPolicy::Cached,
        other => panic!("touch policy {other}"),
    }
}

pub(crate) fn yk_algorithm(s: &str) -> AlgorithmId {
    match s {
        "ECCP256" => AlgorithmId::EccP256,
        "ECCP384" => AlgorithmId::EccP384,
        other => panic!("algorithm {other} is not used by these tests"),
    }
}

pub(crate) fn mgm_key(k: &pb::ManagementKey) -> ManagementKey {
    let algorithm = match pb::ManagementKeyAlgorithm::try_from(k.algorithm).unwrap() {
        pb::ManagementKeyAlgorithm::TripleDes => MgmAlgorithmId::ThreeDes,
        pb::ManagementKeyAlgorithm::Aes128 => MgmAlgorithmId::Aes128,
        pb::ManagementKeyAlgorithm::Aes192 => MgmAlgorithmId::Aes192,
        pb::ManagementKeyAlgorithm::Aes256 => MgmAlgorithmId::Aes256,
        pb::ManagementKeyAlgorithm::Unspecified => panic!("unspecified algorithm"),
    };
    ManagementKey {
        algorithm,
        key: Secret::new(k.key.clone()),
    }
}

pub(crate) fn secret(s: &str) -> Secret {
    Secret::new(s.as_bytes().to_vec())
}

/// How the station signs each slot's proof (the honest way, or the ways the refusal tests
/// need).
#[derive(Clone, Copy)]
enum Signing<'a> {
    Honest,
    /// Over this nonce instead of the enrollment's.
    OverNonce(&'a [u8]),
    /// Slot `.0`'s proof signed with slot `.1`'s key.
    WithKeyOf(&'a str, &'a str),
}

/// What the station does between Begin and Complete on a factory-fresh card: new management
/// key and PUK, each planned key generated and attested, the proof signed after PIN verify.
pub(crate) fn station_prepares(
    card: &VirtualCard,
    begin: &pb::BeginEnrollmentResponse,
) -> pb::CompleteEnrollmentRequest {
    station_prepares_signing(card, begin, Signing::Honest)
}

fn station_prepares_signing(
    card: &VirtualCard,
    begin: &pb::BeginEnrollmentResponse,
    signing: Signing<'_>,
) -> pb::CompleteEnrollmentRequest {
    let mut token = PivToken::open(Some(card.reader_name())).unwrap();
    let info = token.info().unwrap();
    assert!(info.is_factory_fresh(), "{info:?}");
    let factory = ManagementKey {
        algorithm: tessera::piv::default_management_algorithm(token.firmware()),
        key: Secret::new(FACTORY_MGM_KEY.to_vec()),
    };
    token.authenticate(&factory).unwrap();
    let new_key = mgm_key(begin.new_management_key.as_ref().unwrap());
    token.set_management_key(&new_key).unwrap();
    token.authenticate(&new_key).unwrap();
    token
        .change_puk(&secret(FACTORY_PUK), &secret(&begin.new_puk))
        .unwrap();
    station_generates_and_proves(token, begin, signing)
}

/// Key generation, attestation and proofs on a token already authenticated with the new key.
fn station_generates_and_proves(
    mut token: PivToken,
    begin: &pb::BeginEnrollmentResponse,
    signing: Signing<'_>,
) -> pb::CompleteEnrollmentRequest {
    let mut attestations = Vec::new();
    for plan in &begin.slots {
        token
            .generate(
                slot_id(&plan.slot),
                yk_algorithm(&plan.algorithm),
                yk_pin_policy(&plan.pin_policy),
                yk_touch_policy(&plan.touch_policy),
            )
            .unwrap();
        attestations.push(token.attest(slot_id(&plan.slot)).unwrap());
    }
    let intermediate = token.attestation_certificate().unwrap();
    let mut proofs = Vec::new();
    for (plan, attestation) in begin.slots.iter().zip(attestations) {
        let (nonce, signer) = match signing {
            Signing::Honest => (begin.nonce.as_slice(), plan.slot.as_str()),
            Signing::OverNonce(n) => (n, plan.slot.as_str()),
            Signing::WithKeyOf(slot, other) if slot == plan.slot => (begin.nonce.as_slice(), other),
            Signing::WithKeyOf(..) => (begin.nonce.as_slice(), plan.slot.as_str()),
        };
        token.verify_pin(&secret(FACTORY_PIN)).unwrap();
        let message = tessera::protocol::proof_message(&begin.enrollment_id, &plan.slot, nonce);
        let digest = sha2::Sha256::digest(&message);
        let signature = token
            .sign(slot_id(signer), yk_algorithm(&plan.algorithm), &digest)
            .unwrap();
        proofs.push(pb::EnrollmentProof {
            slot: plan.slot.clone(),
            attestation_certificate: attestation,
            signature,
        });
    }
    pb::CompleteEnrollmentRequest {
        request_id: format!("complete-{}", begin.enrollment_id),
        enrollment_id: begin.enrollment_id.clone(),
        attestation_intermediate: intermediate,
        proofs,
    }
}

/// After Complete: the certificates written to their slots, the person's PIN set.
pub(crate) fn station_finishes(
    card: &VirtualCard,
    begin: &pb::BeginEnrollmentResponse,
    done: &pb::CompleteEnrollmentResponse,
) {
    let mut token = PivToken::open(Some(card.reader_name())).unwrap();
    token
        .authenticate(&mgm_key(begin.new_management_key.as_ref().unwrap()))
        .unwrap();
    for c in &done.certificates {
        token
            .write_certificate(slot_id(&c.slot), &c.certificate.as_ref().unwrap().der)
            .unwrap();
    }
    token
        .change_pin(&secret(FACTORY_PIN), &secret(NEW_PIN))
        .unwrap();
}

pub(crate) fn begin_request(
    person: &str,
    serial: u32,
    profile: &str,
) -> pb::BeginEnrollmentRequest {
    pb::BeginEnrollmentRequest {
        request_id: format!("begin-{person}-{serial}-{profile}"),
        person_external_id: person.into(),
        profile: profile.into(),
        token_serial: serial.to_string(),
        firmware: "5.7.4".into(),
        model: "YubiKey 5 NFC".into(),
    }
}

fn pem(der: &[u8]) -> String {
    tessera::ca::issue::certificate_pem(der)
}

/// Runs pkilint's `lint_pkix_cert` on a certificate; returns its findings (ERROR and worse).
fn pkilint(dir: &Path, name: &str, der: &[u8]) -> String {
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, pem(der)).unwrap();
    let out = std::process::Command::new("lint_pkix_cert")
        .args(["lint", "-s", "ERROR"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run lint_pkix_cert (PyPI pkilint; scripts/install-deps.sh): {e}")
        });
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string()
}

/// The station misread the firmware (5.7.0); the attestation corrects it.
fn happy_begin_request() -> pb::BeginEnrollmentRequest {
    let mut r = begin_request("E100", 20_000_001, "piv-login");
    r.firmware = "5.7.0".into();
    r
}

async fn happy_path_enrolls_a_virtual_card(url: &str) {
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(20_000_001));
    let server = Server::start(url, &[card.attestation_root()], Enrollment::default()).await;
    server.create_person("E100", "").await;
    let mut enroll = server.enrollments().await;

    let begin = enroll
        .begin_enrollment(happy_begin_request())
        .await
        .unwrap()
        .into_inner();
    assert!(begin.enrollment_id.starts_with("enr_"));
    assert_eq!(begin.nonce.len(), 32);
    assert_eq!(
        begin.current_management_key, None,
        "a new token has no key on the server"
    );
    let new_key = begin.new_management_key.clone().unwrap();
    assert_eq!(new_key.algorithm, pb::ManagementKeyAlgorithm::Aes256 as i32);
    assert_eq!(new_key.key.len(), 32);
    assert_eq!(begin.new_puk.len(), 8);
    assert!(begin.new_puk.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(begin.person_upn, "e100@corp.test");
    assert_eq!(
        begin
            .slots
            .iter()
            .map(|s| (s.slot.as_str(), s.certificate_profile.as_str()))
            .collect::<Vec<_>>(),
        [("9a", "piv-authentication"), ("9c", "piv-signature")]
    );
    // A repeated Begin (same request id, same client certificate) gets the same answer, secrets
    // included.
    let again = enroll
        .begin_enrollment(happy_begin_request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, begin);

    let complete = station_prepares(&card, &begin);
    let done = enroll
        .complete_enrollment(complete.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        done.certificates
            .iter()
            .map(|c| c.slot.as_str())
            .collect::<Vec<_>>(),
        ["9a", "9c"]
    );
    // Same request id again: the same answer, nothing issued twice.
    let repeat = enroll
        .complete_enrollment(complete.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(repeat, done);

    station_finishes(&card, &begin, &done);
    let confirmed = enroll
        .confirm_enrollment(pb::ConfirmEnrollmentRequest {
            request_id: "confirm-1".into(),
            enrollment_id: begin.enrollment_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let token = confirmed.token.unwrap();
    assert_eq!(token.state, pb::TokenState::Active as i32);
    assert_eq!(token.serial, "20000001");
    assert_eq!(token.firmware, "5.7.4", "the attested firmware");
    assert_eq!(token.person_external_id, "E100");
    assert_eq!(token.form_factor, pb::FormFactor::UsbAKeychain as i32);
    assert_eq!(token.certificate_serials.len(), 2);

    let got = enroll
        .get_enrollment(pb::GetEnrollmentRequest {
            enrollment_id: begin.enrollment_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    assert_eq!(got.state, pb::EnrollmentState::Confirmed as i32);
    assert_eq!(got.certificates, done.certificates);

    // The card holds the certificate, yubico-piv-tool reads it, and it chains to the CA.
    let nine_a = done.certificates[0].certificate.as_ref().unwrap();
    let read = card
        .yubico_piv_tool(&["-a", "read-certificate", "-s", "9a"], None)
        .success();
    assert_eq!(read.stdout.trim(), pem(&nine_a.der).trim());
    let dir = server.dir.path();
    for c in &done.certificates {
        let leaf = dir.join(format!("leaf-{}.pem", c.slot));
        std::fs::write(&leaf, pem(&c.certificate.as_ref().unwrap().der)).unwrap();
        let verify = std::process::Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(server.data_dir.join("root.pem"))
            .arg("-untrusted")
            .arg(server.data_dir.join("issuing.pem"))
            .arg(&leaf)
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "openssl verify {}: {}{}",
            c.slot,
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
    }

    // The certificate names the person and the token.
    {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(&nine_a.der).unwrap();
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "Person E100"
        );
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let mut names = Vec::new();
        for n in &san.value.general_names {
            names.push(match n {
                GeneralName::RFC822Name(e) => format!("email:{e}"),
                GeneralName::OtherName(oid, value) => format!("{oid}:{}", hex::encode(value)),
                other => format!("{other:?}"),
            });
        }
        // UPN: [0] { UTF8String "e100@corp.test" }; HardwareModuleName: [0] { SEQUENCE {
        // OID 1.3.6.1.4.1.41482.3, OCTET STRING "20000001" } }.
        assert_eq!(
            names,
            [
                format!(
                    "1.3.6.1.4.1.311.20.2.3:a0100c0e{}",
                    hex::encode("e100@corp.test")
                ),
                "email:e100@corp.test".to_string(),
                format!(
                    "1.3.6.1.5.5.7.8.4:a01730150609{}0408{}",
                    "2b0601040182c40a03",
                    hex::encode("20000001")
                ),
            ]
        );
        let policies: Vec<String> = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::CertificatePolicies(p) => Some(p),
                _ => None,
            })
            .unwrap()
            .iter()
            .map(|p| p.policy_id.to_id_string())
            .collect();
        assert_eq!(
            policies,
            ["1.3.6.1.4.1.32473.1.2.4", "1.3.6.1.4.1.32473.1.1.1"]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.email_protection);
    }
    // pkilint finds no error in either certificate.
    for c in &done.certificates {
        assert_eq!(
            pkilint(
                dir,
                &format!("lint-{}", c.slot),
                &c.certificate.as_ref().unwrap().der
            ),
            "",
            "pkilint findings for the {} certificate",
            c.slot
        );
    }

    // The store and the audit log tell the same story.
    let store = Store::open(url).await.unwrap();
    let actions: Vec<String> = store
        .audit_events(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .filter(|a| !a.starts_with("person."))
        .collect();
    assert_eq!(
        actions,
        [
            "token.register",
            "enrollment.begin",
            // The repeated Begin released the credentials again: audited, marked as a repeat.
            "enrollment.begin",
            "enrollment.verify",
            "certificate.reserve",
            "certificate.issue",
            "certificate.reserve",
            "certificate.issue",
            "enrollment.confirm",
            "token.activate",
        ]
    );
    let report = tessera::audit::verify(&store, None).await.unwrap();
    assert_eq!(report.first_bad, None, "the audit chain is intact");
    // Each certificate's attestation facts are kept for `tessera attest recheck`.
    for slot_cert in &done.certificates {
        let serial = &slot_cert.certificate.as_ref().unwrap().serial;
        let stored = store.certificate_attestation(serial).await.unwrap();
        let facts: tessera::attest::AttestationFacts =
            serde_json::from_str(&stored.unwrap_or_else(|| panic!("no facts for {serial}")))
                .unwrap();
        assert_eq!(facts.serial, 20_000_001);
        assert_eq!(facts.firmware.to_string(), "5.7.4");
        assert_eq!(facts.slot.to_string(), slot_cert.slot);
    }
    // No secret reached the database: neither the management key nor the PUK in any column
    // of the idempotency records or the audit log.
    for e in store.audit_events(0, 100).await.unwrap() {
        assert!(!e.after_json.contains(&begin.new_puk), "{e:?}");
    }
    let key_hex = hex::encode(&new_key.key);
    for id in ["begin-E100-20000001-piv-login"] {
        let record = store.idempotency_record(id).await.unwrap().unwrap();
        assert!(!hex::encode(&record.response).contains(&key_hex));
        assert!(
            !record
                .response
                .windows(begin.new_puk.len())
                .any(|w| w == begin.new_puk.as_bytes())
        );
    }
    store.close().await;
    server.stop().await;
}

pub(crate) fn metadata(s: &Status, key: &str) -> String {
    s.get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get(key).cloned())
        .unwrap_or_default()
}

/// The certificates in the store but the API client certificates the harness records
/// (profile `operator-client`).
async fn certificates(store: &Store) -> Vec<tessera::store::CertificateRow> {
    store
        .list_certificates(&CertificatesQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.profile != "operator-client")
        .collect()
}

/// A refusal: the exact code and reason, `certificates_before` certificates still (none
/// issued), and the refusal as the last audit event, naming its reason.
pub(crate) async fn assert_refused<T: std::fmt::Debug>(
    url: &str,
    result: Result<tonic::Response<T>, Status>,
    code: Code,
    expected_reason: &str,
    certificates_before: usize,
) -> Status {
    let status = result.expect_err("the call must be refused");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (code, expected_reason),
        "{status:?}"
    );
    let store = Store::open(url).await.unwrap();
    assert_eq!(
        certificates(&store).await.len(),
        certificates_before,
        "no certificate issued"
    );
    let events = store.audit_events(0, 1000).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.action, "enrollment.refuse", "{last:?}");
    let after: serde_json::Value = serde_json::from_str(&last.after_json).unwrap();
    assert_eq!(after["reason"], expected_reason);
    assert_eq!(after["message"], status.message());
    store.close().await;
    status
}

/// Begin → station → Complete on a factory-fresh card, for person `person`.
pub(crate) async fn enroll_until_complete(
    server: &Server,
    card: &VirtualCard,
    person: &str,
    profile: &str,
) -> (pb::BeginEnrollmentResponse, pb::CompleteEnrollmentResponse) {
    let mut enroll = server.enrollments().await;
    let mut request = begin_request(person, card.options().serial, profile);
    request.firmware = card.options().firmware.clone();
    let begin = enroll.begin_enrollment(request).await.unwrap().into_inner();
    let complete = station_prepares(card, &begin);
    let done = enroll
        .complete_enrollment(complete)
        .await
        .unwrap()
        .into_inner();
    (begin, done)
}

async fn begin_refusals_name_their_reason(url: &str) {
    let server = Server::start(url, &[], Enrollment::default()).await;
    server.create_person("E200", "").await;
    let mut enroll = server.enrollments().await;

    // An operator without the helpdesk (or admin) role is refused before anything happens.
    for role in ["hr", "auditor", "relying-party"] {
        let mut other = EnrollmentServiceClient::new(server.channel(role).await);
        let s = other
            .begin_enrollment(begin_request("E200", 30_000_001, "piv-login"))
            .await
            .unwrap_err();
        assert_eq!(
            (s.code(), reason(&s).as_str()),
            (Code::PermissionDenied, "ROLE_NOT_ALLOWED"),
            "{role}"
        );
    }
    let store = Store::open(url).await.unwrap();
    assert_eq!(
        store.audit_events(0, 100).await.unwrap().len(),
        1,
        "only person.create"
    );
    assert!(store.token_by_serial("30000001").await.unwrap().is_none());

    let mut bad = begin_request("E200", 30_000_001, "piv-login");
    bad.token_serial = "12a".into();
    let s = enroll.begin_enrollment(bad).await.unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::InvalidArgument, "TOKEN_SERIAL_INVALID")
    );
    let mut bad = begin_request("E200", 30_000_001, "piv-login");
    bad.firmware = "five".into();
    let s = enroll.begin_enrollment(bad).await.unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::InvalidArgument, "FIRMWARE_INVALID")
    );
    let s = enroll
        .begin_enrollment(begin_request("E999", 30_000_001, "piv-login"))
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::NotFound, "PERSON_NOT_FOUND")
    );

    let s = assert_refused(
        url,
        enroll
            .begin_enrollment(begin_request("E200", 30_000_001, "no-such-profile"))
            .await,
        Code::InvalidArgument,
        "ENROLLMENT_PROFILE_UNKNOWN",
        0,
    )
    .await;
    assert_eq!(
        s.message(),
        "unknown enrollment profile \"no-such-profile\"; known profiles: piv-login, temporary-piv-login, windows-logon"
    );

    // A suspended person is not enrolled; nothing but the refusal is recorded.
    DirectoryServiceClient::new(server.channel("hr").await)
        .suspend_person(pb::SuspendPersonRequest {
            request_id: "suspend-E200".into(),
            external_id: "E200".into(),
            reason: "leave".into(),
        })
        .await
        .unwrap();
    let s = assert_refused(
        url,
        enroll
            .begin_enrollment(begin_request("E200", 30_000_001, "piv-login"))
            .await,
        Code::FailedPrecondition,
        "PERSON_NOT_ACTIVE",
        0,
    )
    .await;
    assert_eq!(
        s.message(),
        "person E200 is suspended; only an active person can be enrolled"
    );
    assert!(store.token_by_serial("30000001").await.unwrap().is_none());

    // Suspended between Begin and Complete: Complete is refused, nothing is issued.
    server.create_person("E201", "").await;
    let begin = enroll
        .begin_enrollment(begin_request("E201", 30_000_002, "piv-login"))
        .await
        .unwrap()
        .into_inner();
    DirectoryServiceClient::new(server.channel("hr").await)
        .suspend_person(pb::SuspendPersonRequest {
            request_id: "suspend-E201".into(),
            external_id: "E201".into(),
            reason: "leave".into(),
        })
        .await
        .unwrap();
    assert_refused(
        url,
        enroll
            .complete_enrollment(pb::CompleteEnrollmentRequest {
                request_id: "complete-E201".into(),
                enrollment_id: begin.enrollment_id.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "PERSON_NOT_ACTIVE",
        0,
    )
    .await;
    // An unknown enrollment is named as such.
    let s = enroll
        .confirm_enrollment(pb::ConfirmEnrollmentRequest {
            request_id: "confirm-x".into(),
            enrollment_id: "enr_nothing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::NotFound, "ENROLLMENT_NOT_FOUND")
    );
    // Confirm before Complete is refused.
    server.create_person("E202", "").await;
    let begin = enroll
        .begin_enrollment(begin_request("E202", 30_000_003, "piv-login"))
        .await
        .unwrap()
        .into_inner();
    assert_refused(
        url,
        enroll
            .confirm_enrollment(pb::ConfirmEnrollmentRequest {
                request_id: "confirm-early".into(),
                enrollment_id: begin.enrollment_id.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "ENROLLMENT_NOT_COMPLETED",
        0,
    )
    .await;
    // A token marked lost while its enrollment is open gets nothing more from it, and is
    // never enrolled again.
    server.create_person("E203", "").await;
    let begin = enroll
        .begin_enrollment(begin_request("E203", 30_000_004, "piv-login"))
        .await
        .unwrap()
        .into_inner();
    tessera::protocol::pb::token_service_client::TokenServiceClient::new(
        server.channel("helpdesk").await,
    )
    .mark_token_lost(pb::MarkTokenLostRequest {
        request_id: "lost-30000004".into(),
        serial: "30000004".into(),
        reason: "left in a taxi".into(),
    })
    .await
    .unwrap();
    let s = assert_refused(
        url,
        enroll
            .complete_enrollment(pb::CompleteEnrollmentRequest {
                request_id: "complete-lost".into(),
                enrollment_id: begin.enrollment_id.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "TOKEN_NOT_ENROLLABLE",
        0,
    )
    .await;
    assert_eq!(
        s.message(),
        "token 30000004 is lost; its enrollment cannot go on"
    );
    // As if Complete had happened before the token was marked lost: Confirm is refused too.
    store
        .execute_raw(&format!(
            "UPDATE enrollments SET state = 'completed' WHERE public_id = '{}'",
            begin.enrollment_id
        ))
        .await
        .unwrap();
    assert_refused(
        url,
        enroll
            .confirm_enrollment(pb::ConfirmEnrollmentRequest {
                request_id: "confirm-lost".into(),
                enrollment_id: begin.enrollment_id.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "TOKEN_NOT_ENROLLABLE",
        0,
    )
    .await;
    assert_eq!(
        store
            .token_by_serial("30000004")
            .await
            .unwrap()
            .unwrap()
            .state,
        tessera::store::TokenState::Lost
    );
    let mut again = begin_request("E203", 30_000_004, "piv-login");
    again.request_id = "begin-lost-again".into();
    let s = assert_refused(
        url,
        enroll.begin_enrollment(again).await,
        Code::FailedPrecondition,
        "TOKEN_NOT_ENROLLABLE",
        0,
    )
    .await;
    assert_eq!(
        s.message(),
        "token 30000004 is lost; a lost, damaged or retired token is never enrolled again"
    );
    // A new Begin for a token whose open enrollment is past its time expires that one (its
    // certificates would be revoked) instead of superseding it.
    server.create_person("E204", "").await;
    let old = enroll
        .begin_enrollment(begin_request("E204", 30_000_005, "piv-login"))
        .await
        .unwrap()
        .into_inner();
    store
        .execute_raw(&format!(
            "UPDATE enrollments SET expires_at = '2000-01-01T00:00:00Z' WHERE public_id = '{}'",
            old.enrollment_id
        ))
        .await
        .unwrap();
    let mut again = begin_request("E204", 30_000_005, "piv-login");
    again.request_id = "begin-after-expiry".into();
    let new = enroll.begin_enrollment(again).await.unwrap().into_inner();
    assert_eq!(
        store
            .enrollment_by_public_id(&old.enrollment_id)
            .await
            .unwrap()
            .unwrap()
            .state,
        tessera::store::EnrollmentState::Expired
    );
    assert_eq!(
        store
            .enrollment_by_public_id(&new.enrollment_id)
            .await
            .unwrap()
            .unwrap()
            .state,
        tessera::store::EnrollmentState::Begun
    );
    store.close().await;
    server.stop().await;
}

async fn proof_over_a_wrong_nonce_is_refused(url: &str) {
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(30_000_010));
    let server = Server::start(url, &[card.attestation_root()], Enrollment::default()).await;
    server.create_person("E300", "").await;
    let mut enroll = server.enrollments().await;
    let begin = enroll
        .begin_enrollment(begin_request("E300", 30_000_010, "piv-login"))
        .await
        .unwrap()
        .into_inner();
    let other_nonce = [0x55u8; 32];
    let complete = station_prepares_signing(&card, &begin, Signing::OverNonce(&other_nonce));
    let s = assert_refused(
        url,
        enroll.complete_enrollment(complete).await,
        Code::InvalidArgument,
        "PROOF_SIGNATURE_INVALID",
        0,
    )
    .await;
    assert_eq!(metadata(&s, "slot"), "9a");
    // The enrollment is still waiting for a good proof.
    let got = enroll
        .get_enrollment(pb::GetEnrollmentRequest {
            enrollment_id: begin.enrollment_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    assert_eq!(got.state, pb::EnrollmentState::Begun as i32);
    server.stop().await;
}

/// Tests that need one database only: SQLite.
macro_rules! on_sqlite {
    ($($name:ident),+ $(,)?) => {
        mod sqlite_only {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::harness::database::TestDatabase::sqlite();
                    super::$name(db.url()).await;
                }
            )+
        }
    };
}

on_sqlite!(
    replayed_complete_is_refused,
    attestation_from_another_token_is_refused,
    key_that_did_not_sign_is_refused,
    policy_the_token_does_not_meet_is_refused,
    abort_revokes_the_certificates,
    unconfirmed_enrollment_expires_and_its_certificates_are_revoked,
    release_puk_then_re_enroll_the_same_token,
    enrollment_resumes_after_the_card_was_pulled,
    issuance_failure_aborts_the_enrollment,
);

async fn replayed_complete_is_refused(url: &str) {
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(30_000_020));
    let server = Server::start(url, &[card.attestation_root()], Enrollment::default()).await;
    server.create_person("E400", "").await;
    let mut enroll = server.enrollments().await;
    let begin = enroll
        .begin_enrollment(begin_request("E400", 30_000_020, "piv-login"))
        .await
        .unwrap()
        .into_inner();
    let mut complete = station_prepares(&card, &begin);
    enroll.complete_enrollment(complete.clone()).await.unwrap();
    // The same proofs under a new request id: the nonce was used.
    complete.request_id = "complete-again".into();
    assert_refused(
        url,
        enroll.complete_enrollment(complete).await,
        Code::FailedPrecondition,
        "NONCE_ALREADY_USED",
        2,
    )
    .await;
    server.stop().await;
}

async fn attestation_from_another_token_is_refused(url: &str) {
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(30_000_030));
    let other = VirtualCard::start(CardOptions::firmware("5.7.4").serial(30_000_031));
    let server = Server::start(
        url,
        &[card.attestation_root(), other.attestation_root()],
        Enrollment::default(),
    )
    .await;
    server.create_person("E500", "").await;
    let mut enroll = server.enrollments().await;
    let begin = enroll
        .begin_enrollment(begin_request("E500", 30_000_030, "piv-login"))
        .await
        .unwrap()
        .into_inner();
    // The station generated and attested on the other card.
    let complete = station_prepares(&other, &begin);
    let s = assert_refused(
        url,
        enroll.complete_enrollment(complete).await,
        Code::InvalidArgument,
        "ATTESTATION_FROM_ANOTHER_TOKEN",
        0,
    )
    .await;
    assert_eq!(
        s.message(),
        "slot 9a: the attestation comes from token 30000031, not from the enrolling token 30000030; use the token the enrollment began with"
    );
    server.stop().await;
}

async fn key_that_did_not_sign_is_refused(url: &str) {
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(30_000_040));
    let server = Server::start(url, &[card.attestation_root()], Enrollment::default()).await;
    server.create_person("E600", "").await;
    let mut enroll = server.enrollments().await;
    let begin = enroll
        .begin_enrollment(begin_request("E600", 30_000_040, "piv-login"))
        .await
        .unwrap()
        .into_inner();
    // 9a's proof signed by the 9c key: the attested 9a key did not sign it.
    let complete = station_prepares_signing(&card, &begin, Signing::WithKeyOf("9a", "9c"));
    let s = assert_refused(
        url,
        enroll.complete_enrollment(complete).await,
        Code::InvalidArgument,
        "PROOF_SIGNATURE_INVALID",
        0,
    )
    .await;
    assert_eq!(metadata(&s, "slot"), "9a");
    server.stop().await;
}

async fn policy_the_token_does_not_meet_is_refused(url: &str) {
    // Firmware 5.4.3 with ECDSA keys: YSA-2024-03 (EUCLEAK) in the default policy.
    let card = VirtualCard::start(CardOptions::firmware("5.4.3").serial(30_000_050));
    let server = Server::start(url, &[card.attestation_root()], Enrollment::default()).await;
    server.create_person("E700", "").await;
    let mut enroll = server.enrollments().await;
    let mut request = begin_request("E700", 30_000_050, "piv-login");
    request.firmware = "5.4.3".into();
    let begin = enroll.begin_enrollment(request).await.unwrap().into_inner();
    assert_eq!(
        begin.new_management_key.as_ref().unwrap().algorithm,
        pb::ManagementKeyAlgorithm::Aes256 as i32,
        "firmware 5.4 takes AES management keys"
    );
    let complete = station_prepares(&card, &begin);
    let s = assert_refused(
        url,
        enroll.complete_enrollment(complete).await,
        Code::FailedPrecondition,
        "ATTESTATION_POLICY_DENIED",
        0,
    )
    .await;
    assert_eq!(metadata(&s, "policy_reasons"), "advisory-ysa-2024-03");
    assert_eq!(
        s.message(),
        "slot 9a: the attestation policy refuses the key: ECDSA key on firmware 5.4.3 (before 5.7.0) is exposed to YSA-2024-03 (EUCLEAK)"
    );
    server.stop().await;
}

async fn abort_revokes_the_certificates(url: &str) {
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(30_000_060));
    let server = Server::start(url, &[card.attestation_root()], Enrollment::default()).await;
    server.create_person("E800", "").await;
    let (begin, done) = enroll_until_complete(&server, &card, "E800", "piv-login").await;
    assert_eq!(done.certificates.len(), 2);
    let mut enroll = server.enrollments().await;
    let aborted = enroll
        .abort_enrollment(pb::AbortEnrollmentRequest {
            request_id: "abort-1".into(),
            enrollment_id: begin.enrollment_id.clone(),
            reason: "card pulled".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    assert_eq!(aborted.state, pb::EnrollmentState::Aborted as i32);
    for c in &aborted.certificates {
        let c = c.certificate.as_ref().unwrap();
        assert_eq!(c.status, pb::CertificateStatus::Revoked as i32);
        assert_eq!(
            c.revocation_reason,
            pb::RevocationReason::CessationOfOperation as i32
        );
    }
    let store = Store::open(url).await.unwrap();
    assert!(
        certificates(&store)
            .await
            .iter()
            .all(|c| c.status == CertificateStatus::Revoked)
    );
    store.close().await;
    assert_refused(
        url,
        enroll
            .confirm_enrollment(pb::ConfirmEnrollmentRequest {
                request_id: "confirm-after-abort".into(),
                enrollment_id: begin.enrollment_id.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "ENROLLMENT_ABORTED",
        2,
    )
    .await;
    server.stop().await;
}

async fn unconfirmed_enrollment_expires_and_its_certificates_are_revoked(url: &str) {
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(30_000_070));
    // The server's time stands still until the test moves it past the expiry.
    let clock = ManualClock::starting_now();
    let server = Server::start_with_clock(
        url,
        &[card.attestation_root()],
        Enrollment {
            expiry_seconds: Some(8),
            expiry_sweep_seconds: Some(1),
            ..Enrollment::default()
        },
        clock.clock(),
    )
    .await;
    server.create_person("E900", "").await;
    let (begin, done) = enroll_until_complete(&server, &card, "E900", "piv-login").await;
    assert_eq!(done.certificates.len(), 2);
    clock.advance(std::time::Duration::from_secs(8));
    // The server's sweep (not a call) expires it: watch the store, not the API.
    let store = Store::open(url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let row = store
            .enrollment_by_public_id(&begin.enrollment_id)
            .await
            .unwrap()
            .unwrap();
        if row.state == tessera::store::EnrollmentState::Expired {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the enrollment never expired: {row:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for c in certificates(&store).await {
        assert_eq!(c.status, CertificateStatus::Revoked);
        assert_eq!(c.revocation_reason, Some(5), "cessationOfOperation");
    }
    let expire = store
        .audit_events(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.action == "enrollment.expire")
        .unwrap();
    assert_eq!(
        (expire.actor.as_str(), expire.role.as_str()),
        ("tessera", "server")
    );
    store.close().await;
    let mut enroll = server.enrollments().await;
    assert_refused(
        url,
        enroll
            .confirm_enrollment(pb::ConfirmEnrollmentRequest {
                request_id: "confirm-late".into(),
                enrollment_id: begin.enrollment_id.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "ENROLLMENT_EXPIRED",
        2,
    )
    .await;
    server.stop().await;
}

async fn release_puk_then_re_enroll_the_same_token(url: &str) {
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(30_000_080));
    let server = Server::start(url, &[card.attestation_root()], Enrollment::default()).await;
    server
        .create_person("E1000", "S-1-5-21-1004336348-1177238915-682003330-1001")
        .await;
    server.create_person("E1001", "").await;
    let mut enroll = server.enrollments().await;

    // Before the token is active there is no PUK to release.
    let s = enroll
        .release_puk(pb::ReleasePukRequest {
            request_id: "puk-0".into(),
            token_serial: "30000080".into(),
            reason: "forgotten PIN".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::NotFound, "TOKEN_NOT_FOUND")
    );

    let (begin, done) = enroll_until_complete(&server, &card, "E1000", "piv-login").await;
    let s = assert_refused(
        url,
        enroll
            .release_puk(pb::ReleasePukRequest {
                request_id: "puk-1".into(),
                token_serial: "30000080".into(),
                reason: "forgotten PIN".into(),
            })
            .await,
        Code::FailedPrecondition,
        "TOKEN_NOT_ACTIVE",
        2,
    )
    .await;
    assert_eq!(
        s.message(),
        "token 30000080 is enrolling; the PUK is released only for an active token"
    );
    station_finishes(&card, &begin, &done);
    enroll
        .confirm_enrollment(pb::ConfirmEnrollmentRequest {
            request_id: "confirm-1".into(),
            enrollment_id: begin.enrollment_id.clone(),
        })
        .await
        .unwrap();

    let released = enroll
        .release_puk(pb::ReleasePukRequest {
            request_id: "puk-2".into(),
            token_serial: "30000080".into(),
            reason: "forgotten PIN".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.puk, begin.new_puk);
    assert_eq!(released.management_key, begin.new_management_key);
    // A repeat gets the same secrets back (unwrapped again, never stored in the clear).
    let again = enroll
        .release_puk(pb::ReleasePukRequest {
            request_id: "puk-2".into(),
            token_serial: "30000080".into(),
            reason: "forgotten PIN".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, released);
    {
        // The released PUK is the card's PUK.
        let mut token = PivToken::open(Some(card.reader_name())).unwrap();
        token
            .change_puk(&secret(&released.puk), &secret(&released.puk))
            .unwrap();
    }
    let store = Store::open(url).await.unwrap();
    let event = store
        .audit_events(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.action == "token.release_puk")
        .unwrap();
    let after: serde_json::Value = serde_json::from_str(&event.after_json).unwrap();
    assert_eq!(after["reason"], "forgotten PIN");
    assert_eq!(after["released"], "puk");
    assert!(after["release_id"].as_str().unwrap().starts_with("pkr_"));
    assert!(after.get("approved_by").is_none());
    let record = store.idempotency_record("puk-2").await.unwrap().unwrap();
    assert!(
        !record
            .response
            .windows(8)
            .any(|w| w == released.puk.as_bytes())
    );

    // Another person cannot take the active token.
    assert_refused(
        url,
        enroll
            .begin_enrollment(begin_request("E1001", 30_000_080, "piv-login"))
            .await,
        Code::FailedPrecondition,
        "TOKEN_HELD_BY_ANOTHER_PERSON",
        2,
    )
    .await;

    // Re-enrollment of the same token: the server sends the key the token has now.
    let mut request = begin_request("E1000", 30_000_080, "windows-logon");
    request.request_id = "begin-again".into();
    let second = enroll.begin_enrollment(request).await.unwrap().into_inner();
    assert_eq!(second.current_management_key, begin.new_management_key);
    assert_ne!(second.new_management_key, begin.new_management_key);
    {
        let mut token = PivToken::open(Some(card.reader_name())).unwrap();
        token
            .authenticate(&mgm_key(second.current_management_key.as_ref().unwrap()))
            .unwrap();
        let new_key = mgm_key(second.new_management_key.as_ref().unwrap());
        token.set_management_key(&new_key).unwrap();
        token.authenticate(&new_key).unwrap();
        token
            .change_puk(&secret(&begin.new_puk), &secret(&second.new_puk))
            .unwrap();
        let plan = &second.slots[0];
        token
            .generate(
                slot_id(&plan.slot),
                yk_algorithm(&plan.algorithm),
                yk_pin_policy(&plan.pin_policy),
                yk_touch_policy(&plan.touch_policy),
            )
            .unwrap();
        let attestation = token.attest(slot_id(&plan.slot)).unwrap();
        let intermediate = token.attestation_certificate().unwrap();
        token.verify_pin(&secret(NEW_PIN)).unwrap();
        let digest = sha2::Sha256::digest(tessera::protocol::proof_message(
            &second.enrollment_id,
            &plan.slot,
            &second.nonce,
        ));
        let signature = token
            .sign(slot_id(&plan.slot), yk_algorithm(&plan.algorithm), &digest)
            .unwrap();
        let done = enroll
            .complete_enrollment(pb::CompleteEnrollmentRequest {
                request_id: "complete-again".into(),
                enrollment_id: second.enrollment_id.clone(),
                attestation_intermediate: intermediate,
                proofs: vec![pb::EnrollmentProof {
                    slot: plan.slot.clone(),
                    attestation_certificate: attestation,
                    signature,
                }],
            })
            .await
            .unwrap()
            .into_inner();
        let logon = done.certificates[0].certificate.as_ref().unwrap();
        assert_eq!(logon.profile, "smartcard-logon");
        // The person's SID from the directory is in the KB5014754 extension.
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(&logon.der).unwrap();
        let sid = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.4.1.311.25.2")
            .expect("the SID extension")
            .value;
        assert!(
            sid.ends_with(b"S-1-5-21-1004336348-1177238915-682003330-1001"),
            "{}",
            hex::encode(sid)
        );
        assert_eq!(pkilint(server.dir.path(), "logon", &logon.der), "");
    }
    enroll
        .confirm_enrollment(pb::ConfirmEnrollmentRequest {
            request_id: "confirm-again".into(),
            enrollment_id: second.enrollment_id.clone(),
        })
        .await
        .unwrap();
    // A repeat of the release before the re-enrollment does not release the new credentials.
    let s = assert_refused(
        url,
        enroll
            .release_puk(pb::ReleasePukRequest {
                request_id: "puk-2".into(),
                token_serial: "30000080".into(),
                reason: "forgotten PIN".into(),
            })
            .await,
        Code::FailedPrecondition,
        "REQUEST_ID_EXPIRED",
        3,
    )
    .await;
    assert_eq!(
        s.message(),
        "request id \"puk-2\" is not answered again: the token's credentials changed since (it was re-enrolled, or its PUK was rotated); its answer carried secrets, send a fresh request id"
    );
    // The old 9a certificate is superseded (its key is gone); the old 9c one stays good.
    let rows = certificates(&store).await;
    let status_of = |profile: &str| {
        rows.iter()
            .filter(|c| c.profile == profile)
            .map(|c| (c.status, c.revocation_reason))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        status_of("piv-authentication"),
        [(CertificateStatus::Revoked, Some(4))]
    );
    assert_eq!(
        status_of("piv-signature"),
        [(CertificateStatus::Good, None)]
    );
    assert_eq!(
        status_of("smartcard-logon"),
        [(CertificateStatus::Good, None)]
    );
    store.close().await;
    server.stop().await;
}

/// The three enrollment certificate profiles, issued by the SoftHSM2 CA for a software key
/// with every name they can carry, pass pkilint; their refusals name the missing piece.
#[test]
fn enrollment_certificate_profiles_pass_pkilint() {
    use tessera::ca::{
        HardwareModule, IssuanceRequest, KeyProvenance, OnlineCa, SerialNumber, SubjectParams,
    };
    use x509_parser::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsmToken::create("tessera");
    let data_dir = dir.path().join("ca");
    hsm.init_ca(&data_dir);
    let ca = OnlineCa::open(&hsm.config_path, &data_dir, None).unwrap();
    let key = p256::ecdsa::SigningKey::from_slice(&[11u8; 32]).unwrap();
    let spki = {
        use p256::pkcs8::EncodePublicKey as _;
        key.verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec()
    };
    let mut subject = SubjectParams::new("Ada Lovelace");
    subject.emails.push("ada@corp.test".into());
    subject.upn = Some("ada@corp.test".into());
    subject.windows_sid = Some("S-1-5-21-3623811015-3361044348-30300820-1013".into());
    subject.hardware_module = Some(HardwareModule::yubikey(20_000_001));
    let issue = |profile: &str, subject: &SubjectParams| {
        ca.issuing.issue(&IssuanceRequest {
            subject,
            public_key_der: &spki,
            profile: ca.profiles.get(profile).unwrap(),
            serial: &SerialNumber::random().unwrap(),
            provenance: KeyProvenance::HardwareAttested,
            now: ::time::OffsetDateTime::now_utc(),
        })
    };
    for profile in ["piv-authentication", "piv-signature", "smartcard-logon"] {
        let cert = issue(profile, &subject).unwrap();
        assert_eq!(
            pkilint(dir.path(), profile, &cert.der),
            "",
            "pkilint findings for {profile}"
        );
        let (_, parsed) = X509Certificate::from_der(&cert.der).unwrap();
        let sid_extension = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.4.1.311.25.2");
        let ekus = parsed.extended_key_usage().unwrap().unwrap().value;
        let key_usage = parsed.key_usage().unwrap().unwrap().value;
        match profile {
            "smartcard-logon" => {
                // SEQUENCE { [0] { OID 1.3.6.1.4.1.311.25.2.1, [0] { OCTET STRING sid } } }
                let sid = subject.windows_sid.as_deref().unwrap();
                let value = sid_extension.expect("the SID extension").value;
                let inner = format!(
                    "060a2b0601040182371902 01a0{:02x}04{:02x}{}",
                    sid.len() + 2,
                    sid.len(),
                    hex::encode(sid)
                )
                .replace(' ', "");
                let expected = format!(
                    "30{:02x}a0{:02x}{inner}",
                    inner.len() / 2 + 2,
                    inner.len() / 2
                );
                assert_eq!(hex::encode(value), expected);
                assert!(!sid_extension.unwrap().critical);
                assert!(ekus.client_auth);
                assert_eq!(
                    ekus.other
                        .iter()
                        .map(|o| o.to_id_string())
                        .collect::<Vec<_>>(),
                    ["1.3.6.1.4.1.311.20.2.2"]
                );
            }
            "piv-signature" => {
                assert!(sid_extension.is_none());
                assert!(ekus.email_protection && !ekus.client_auth);
                assert!(key_usage.digital_signature() && key_usage.non_repudiation());
            }
            _ => {
                assert!(
                    sid_extension.is_none(),
                    "only smart-card logon carries the SID"
                );
                assert!(ekus.client_auth && ekus.other.is_empty());
            }
        }
    }

    // What each profile refuses, named.
    let mut no_upn = subject.clone();
    no_upn.upn = None;
    assert_eq!(
        issue("smartcard-logon", &no_upn).unwrap_err().to_string(),
        "profile smartcard-logon needs the person's user principal name (UPN); set it in the directory"
    );
    // The UPN is optional for TLS client authentication.
    let cert = issue("piv-authentication", &no_upn).unwrap();
    assert_eq!(pkilint(dir.path(), "no-upn", &cert.der), "");
    let mut no_token = subject.clone();
    no_token.hardware_module = None;
    assert_eq!(
        issue("piv-authentication", &no_token)
            .unwrap_err()
            .to_string(),
        "profile piv-authentication binds the certificate to a hardware token and no token serial was given"
    );
    let mut bad_sid = subject.clone();
    bad_sid.windows_sid = Some("S-1-5-21-x".into());
    assert_eq!(
        issue("smartcard-logon", &bad_sid).unwrap_err().to_string(),
        "subject is invalid: windows SID \"S-1-5-21-x\" is not of the form S-1-5-21-…"
    );
    let mut no_email = subject.clone();
    no_email.emails.clear();
    assert_eq!(
        issue("piv-signature", &no_email).unwrap_err().to_string(),
        "profile piv-signature needs an email address for the subject; add an rfc822Name subjectAltName to the request"
    );
    let mut bad_upn = subject.clone();
    bad_upn.upn = Some("ada\n@corp.test".into());
    assert_eq!(
        issue("piv-authentication", &bad_upn)
            .unwrap_err()
            .to_string(),
        "subject is invalid: UPN \"ada\n@corp.test\" is not valid"
    );
}

/// Every `[enrollment]` setting that cannot work stops the server with a message naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_configuration_errors_name_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::init(&dir.path().join("ca"));
    let (env, hsm_config) = (&ca.env, ca.hsm_config_str());
    let db = harness::database::TestDatabase::sqlite();
    let config_path = TestPki::new().write_server_config(dir.path(), db.url());
    let base = ServerToml::new(db.url());
    let with_ca = base.clone().with_ca(ca.hsm_config(), &ca.data_dir);
    // The configuration with [ca] and this [enrollment] section, as TOML text.
    let enrollment = |e: Enrollment| with_ca.clone().with_enrollment(e).to_toml();
    let bind_error = |text: String| {
        std::fs::write(&config_path, &text).unwrap();
        let config_path = config_path.clone();
        async move {
            match ServerConfig::load(&config_path) {
                Err(e) => e.to_string(),
                Ok(config) => match BoundServer::bind(&config).await {
                    Err(e) => e.to_string(),
                    Ok(_) => panic!("the server started with {text}"),
                },
            }
        }
    };
    assert_eq!(
        bind_error(
            base.clone()
                .with_enrollment(Enrollment::default())
                .to_toml()
        )
        .await,
        "enrollment: the [enrollment] section needs a [ca] section (the CA that certifies the keys)"
    );
    let missing_key = bind_error(enrollment(Enrollment::default())).await;
    assert!(
        missing_key.starts_with("enrollment: enrollment.wrapping_key_label \"tessera-wrap\": ")
            && missing_key.ends_with("; make the key with `tessera admin init-wrapping-key`"),
        "{missing_key}"
    );

    let (code, out, err) = tessera(
        &["admin", "init-wrapping-key", "--hsm-config", hsm_config],
        env,
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "made AES-256 wrapping key \"tessera-wrap\" in the HSM\n"),
        "{err}"
    );
    // A second key with the same label is refused: the first one wraps stored secrets.
    let (code, _, err) = tessera(
        &["admin", "init-wrapping-key", "--hsm-config", hsm_config],
        env,
    );
    assert_eq!(code, 1);
    assert!(err.contains("tessera-wrap"), "{err}");

    let missing_root = dir.path().join("no-such-root.pem");
    assert!(
        bind_error(enrollment(Enrollment {
            attestation_roots: vec![missing_root.clone()],
            ..Enrollment::default()
        }))
        .await
        .starts_with(&format!(
            "enrollment: enrollment.attestation_roots: cannot read {}: ",
            missing_root.display()
        ))
    );
    std::fs::write(
        dir.path().join("policy.toml"),
        "minimum_pin_policy = \"sometimes\"\n",
    )
    .unwrap();
    assert!(
        bind_error(enrollment(Enrollment {
            attestation_policy: Some("policy.toml".into()),
            ..Enrollment::default()
        }))
        .await
        .starts_with("enrollment: attestation policy: "),
    );
    let profiles = dir.path().join("enrollment-profiles");
    std::fs::create_dir(&profiles).unwrap();
    std::fs::write(
        profiles.join("vpn.toml"),
        "description = \"VPN\"\n[[slots]]\nslot = \"9a\"\nalgorithm = \"ECCP256\"\npin_policy = \"ONCE\"\ntouch_policy = \"NEVER\"\ncertificate_profile = \"vpn-client\"\n",
    )
    .unwrap();
    assert_eq!(
        bind_error(enrollment(Enrollment {
            profiles_dir: Some("enrollment-profiles".into()),
            ..Enrollment::default()
        }))
        .await,
        "enrollment: enrollment profile vpn is invalid: slot 9a names certificate profile \"vpn-client\", which the CA does not have (known: piv-authentication, piv-signature, service-client, smartcard-logon, smime-signing, temporary-piv-authentication, tls-client)"
    );
    assert_eq!(
        bind_error(enrollment(Enrollment {
            expiry_seconds: Some(0),
            ..Enrollment::default()
        }))
        .await,
        "enrollment: enrollment.expiry_seconds and expiry_sweep_seconds must be at least 1"
    );
    assert_eq!(
        bind_error(enrollment(Enrollment {
            secret_replay_minutes: Some(24 * 60 + 1),
            ..Enrollment::default()
        }))
        .await,
        "enrollment: enrollment.secret_replay_minutes must be at most 1440 (0 never repeats secrets)"
    );
    assert_eq!(
        bind_error(enrollment(Enrollment {
            puk_releases_per_hour: Some(0),
            ..Enrollment::default()
        }))
        .await,
        "enrollment: enrollment.puk_releases_per_hour must be at least 1"
    );
    assert_eq!(
        bind_error(enrollment(Enrollment {
            puk_release_approval: Some(true),
            puk_release_approval_minutes: Some(0),
            ..Enrollment::default()
        }))
        .await,
        "enrollment: enrollment.puk_release_approval_minutes must be 1 to 1440 (minutes)"
    );
    assert!(
        // A key the server does not know cannot be typed: appended as text to [enrollment],
        // the last section.
        bind_error(format!("{}expiry = 5\n", enrollment(Enrollment::default())))
            .await
            .contains("unknown field `expiry`")
    );
    // With the key made, the same configuration starts.
    std::fs::write(&config_path, enrollment(Enrollment::default())).unwrap();
    let config = ServerConfig::load(&config_path).unwrap();
    BoundServer::bind(&config).await.unwrap();
}

async fn enrollment_resumes_after_the_card_was_pulled(url: &str) {
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(30_000_090));
    let server = Server::start(url, &[card.attestation_root()], Enrollment::default()).await;
    server.create_person("E1100", "").await;
    let mut enroll = server.enrollments().await;
    let first = enroll
        .begin_enrollment(begin_request("E1100", 30_000_090, "piv-login"))
        .await
        .unwrap()
        .into_inner();
    {
        // The station set the new management key and PUK, then the card was pulled.
        let mut token = PivToken::open(Some(card.reader_name())).unwrap();
        token
            .authenticate(&ManagementKey {
                algorithm: tessera::piv::default_management_algorithm(token.firmware()),
                key: Secret::new(FACTORY_MGM_KEY.to_vec()),
            })
            .unwrap();
        token
            .set_management_key(&mgm_key(first.new_management_key.as_ref().unwrap()))
            .unwrap();
        token
            .change_puk(&secret(FACTORY_PUK), &secret(&first.new_puk))
            .unwrap();
    }
    // A new Begin for the same token: the first enrollment is superseded, and the credentials
    // the token may already hold are handed out again.
    let mut request = begin_request("E1100", 30_000_090, "piv-login");
    request.request_id = "begin-resume".into();
    let second = enroll.begin_enrollment(request).await.unwrap().into_inner();
    assert_ne!(second.enrollment_id, first.enrollment_id);
    assert_ne!(second.nonce, first.nonce);
    assert_eq!(second.current_management_key, None);
    assert_eq!(second.new_management_key, first.new_management_key);
    assert_eq!(second.new_puk, first.new_puk);
    let superseded = enroll
        .get_enrollment(pb::GetEnrollmentRequest {
            enrollment_id: first.enrollment_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    assert_eq!(superseded.state, pb::EnrollmentState::Aborted as i32);

    let mut token = PivToken::open(Some(card.reader_name())).unwrap();
    assert_eq!(token.info().unwrap().management_key_is_default, Some(false));
    token
        .authenticate(&mgm_key(second.new_management_key.as_ref().unwrap()))
        .unwrap();
    let complete = station_generates_and_proves(token, &second, Signing::Honest);
    let done = enroll
        .complete_enrollment(complete)
        .await
        .unwrap()
        .into_inner();
    station_finishes(&card, &second, &done);
    let token = enroll
        .confirm_enrollment(pb::ConfirmEnrollmentRequest {
            request_id: "confirm-resume".into(),
            enrollment_id: second.enrollment_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(token.state, pb::TokenState::Active as i32);
    // The first enrollment's nonce is dead: its Complete is refused.
    assert_refused(
        url,
        enroll
            .complete_enrollment(pb::CompleteEnrollmentRequest {
                request_id: "complete-first".into(),
                enrollment_id: first.enrollment_id.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "ENROLLMENT_ABORTED",
        2,
    )
    .await;
    server.stop().await;
}

async fn issuance_failure_aborts_the_enrollment(url: &str) {
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(30_000_100));
    let server = Server::start(url, &[card.attestation_root()], Enrollment::default()).await;
    server.create_person("E1200", "").await;
    let mut enroll = server.enrollments().await;
    let begin = enroll
        .begin_enrollment(begin_request("E1200", 30_000_100, "piv-login"))
        .await
        .unwrap()
        .into_inner();
    let complete = station_prepares(&card, &begin);
    // The serial cannot be reserved (a trigger refuses new certificate rows; reads still work,
    // so the caller's own certificate is still checked): the HSM never signs, and the
    // enrollment is aborted.
    let store = Store::open(url).await.unwrap();
    store
        .execute_raw(
            "CREATE TRIGGER refuse_new_certificates BEFORE INSERT ON certificates \
             BEGIN SELECT RAISE(ABORT, 'injected: no new certificates'); END",
        )
        .await
        .unwrap();
    let s = enroll.complete_enrollment(complete).await.unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::Internal, "ISSUANCE_FAILED")
    );
    // The client learns which slot of which enrollment failed, never the internal cause (the
    // database's error text); that goes to the server log only.
    assert_eq!(
        s.message(),
        format!(
            "issuing the certificate for slot 9a of enrollment {} failed (see the server log); \
             the enrollment was aborted, begin a new one",
            begin.enrollment_id
        )
    );
    assert!(!s.message().contains("injected"), "{}", s.message());
    store
        .execute_raw("DROP TRIGGER refuse_new_certificates")
        .await
        .unwrap();
    assert!(certificates(&store).await.is_empty(), "nothing was signed");
    assert_eq!(
        store
            .enrollment_by_public_id(&begin.enrollment_id)
            .await
            .unwrap()
            .unwrap()
            .state,
        tessera::store::EnrollmentState::Aborted
    );
    let last = store.audit_events(0, 1000).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.action.as_str(), last.actor.as_str()),
        ("enrollment.abort", "tessera")
    );
    store.close().await;
    server.stop().await;
}

/// Begin → station → Complete → station writes → Confirm on a factory-fresh card.
pub(crate) async fn enroll_and_confirm(
    server: &Server,
    card: &VirtualCard,
    person: &str,
) -> (pb::BeginEnrollmentResponse, pb::CompleteEnrollmentResponse) {
    let (begin, done) = enroll_until_complete(server, card, person, "piv-login").await;
    station_finishes(card, &begin, &done);
    server
        .enrollments()
        .await
        .confirm_enrollment(pb::ConfirmEnrollmentRequest {
            request_id: format!("confirm-{}", begin.enrollment_id),
            enrollment_id: begin.enrollment_id.clone(),
        })
        .await
        .unwrap();
    (begin, done)
}

/// The token as GetToken shows it: state and holder.
pub(crate) async fn token_state(server: &Server, serial: u32) -> (pb::TokenState, String) {
    let token = pb::token_service_client::TokenServiceClient::new(server.channel("helpdesk").await)
        .get_token(pb::GetTokenRequest {
            serial: serial.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    (token.state(), token.person_external_id)
}

/// The status of each certificate of `done` as LookupCertificate shows it to a relying party.
async fn statuses(
    server: &Server,
    done: &pb::CompleteEnrollmentResponse,
) -> Vec<pb::CertificateStatus> {
    let mut lookup = pb::certificate_service_client::CertificateServiceClient::new(
        server.channel("relying-party").await,
    );
    let mut out = Vec::new();
    for c in &done.certificates {
        let serial = c.certificate.as_ref().unwrap().serial.clone();
        let found = lookup
            .lookup_certificate(pb::LookupCertificateRequest {
                key: Some(pb::lookup_certificate_request::Key::Serial(serial)),
            })
            .await
            .unwrap()
            .into_inner()
            .certificate
            .unwrap();
        out.push(found.status());
    }
    out
}

/// The `token.restore` events of `serial`: (actor, state before, state after, holder after).
async fn restores(url: &str, serial: u32) -> Vec<(String, String, String, serde_json::Value)> {
    let store = Store::open(url).await.unwrap();
    let events = store.audit_events(0, 10_000).await.unwrap();
    store.close().await;
    events
        .into_iter()
        .filter(|e| e.action == "token.restore" && e.subject == format!("token:{serial}"))
        .map(|e| {
            let before: serde_json::Value = serde_json::from_str(&e.before_json).unwrap();
            let after: serde_json::Value = serde_json::from_str(e.after_json.as_str()).unwrap();
            (
                e.actor,
                before["state"].as_str().unwrap_or_default().to_string(),
                after["state"].as_str().unwrap_or_default().to_string(),
                after["person_external_id"].clone(),
            )
        })
        .collect()
}

async fn abort(server: &Server, enrollment_id: &str) {
    server
        .enrollments()
        .await
        .abort_enrollment(pb::AbortEnrollmentRequest {
            request_id: format!("abort-{enrollment_id}"),
            enrollment_id: enrollment_id.into(),
            reason: "wrong card".into(),
        })
        .await
        .unwrap();
}

/// Issue 12, finding 5: an enrolling token is still its person's. Another person's Begin is
/// refused and changes nothing; abort puts the token back as it was before Begin.
async fn begin_for_another_person_is_refused_and_abort_restores_the_token(url: &str) {
    use pb::CertificateStatus as S;
    use pb::TokenState as T;
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(30_001_100));
    let server = Server::start(url, &[card.attestation_root()], Enrollment::default()).await;
    server.create_person("E1100", "").await;
    server.create_person("E1101", "").await;
    let mut enroll = server.enrollments().await;
    let (_, first) = enroll_and_confirm(&server, &card, "E1100").await;
    assert_eq!(
        token_state(&server, 30_001_100).await,
        (T::Active, "E1100".into())
    );
    assert_eq!(statuses(&server, &first).await, [S::Good, S::Good]);

    // E1100 re-enrolls the token (twice: the second Begin supersedes the first).
    let mut again = begin_request("E1100", 30_001_100, "piv-login");
    again.request_id = "re-begin-1".into();
    enroll.begin_enrollment(again.clone()).await.unwrap();
    again.request_id = "re-begin-2".into();
    let reenrolling = enroll.begin_enrollment(again).await.unwrap().into_inner();
    assert_eq!(
        token_state(&server, 30_001_100).await,
        (T::Enrolling, "E1100".into())
    );

    // Another person's Begin for the enrolling token is refused: no credentials, no move.
    let s = assert_refused(
        url,
        enroll
            .begin_enrollment(begin_request("E1101", 30_001_100, "piv-login"))
            .await,
        Code::FailedPrecondition,
        "TOKEN_HELD_BY_ANOTHER_PERSON",
        2,
    )
    .await;
    assert_eq!(
        s.message(),
        "token 30001100 is enrolling for another person; retire it first"
    );
    assert_eq!(
        token_state(&server, 30_001_100).await,
        (T::Enrolling, "E1100".into())
    );
    assert_eq!(statuses(&server, &first).await, [S::Good, S::Good]);
    let store = Store::open(url).await.unwrap();
    assert!(
        store
            .idempotency_record("begin-E1101-30001100-piv-login")
            .await
            .unwrap()
            .is_none(),
        "no answer (and no credentials) kept for the refused Begin"
    );
    store.close().await;

    // Abort: the token is active and E1100's again, the certificates untouched.
    abort(&server, &reenrolling.enrollment_id).await;
    assert_eq!(
        token_state(&server, 30_001_100).await,
        (T::Active, "E1100".into())
    );
    assert_eq!(statuses(&server, &first).await, [S::Good, S::Good]);
    assert_eq!(
        restores(url, 30_001_100).await,
        [(
            "helpdesk-client".to_string(),
            "enrolling".to_string(),
            "active".to_string(),
            serde_json::json!("E1100")
        )]
    );
    // Still E1100's: another person is refused as before.
    let mut other = begin_request("E1101", 30_001_100, "piv-login");
    other.request_id = "begin-other-after-abort".into();
    assert_refused(
        url,
        enroll.begin_enrollment(other).await,
        Code::FailedPrecondition,
        "TOKEN_HELD_BY_ANOTHER_PERSON",
        2,
    )
    .await;

    // A suspended token may be re-begun by its person (as before); abort suspends it again.
    pb::token_service_client::TokenServiceClient::new(server.channel("helpdesk").await)
        .suspend_token(pb::SuspendTokenRequest {
            request_id: "suspend-30001100".into(),
            serial: "30001100".into(),
            reason: "left at home".into(),
        })
        .await
        .unwrap();
    let held = statuses(&server, &first).await;
    assert_eq!(
        token_state(&server, 30_001_100).await,
        (T::Suspended, "E1100".into())
    );
    let mut again = begin_request("E1100", 30_001_100, "piv-login");
    again.request_id = "re-begin-suspended".into();
    let suspended = enroll.begin_enrollment(again).await.unwrap().into_inner();
    abort(&server, &suspended.enrollment_id).await;
    assert_eq!(
        token_state(&server, 30_001_100).await,
        (T::Suspended, "E1100".into())
    );
    assert_eq!(statuses(&server, &first).await, held);

    // A token Tessera never saw: begun for E1100, refused for E1101, aborted: unassigned, and
    // then E1101 may begin it.
    let fresh = enroll
        .begin_enrollment(begin_request("E1100", 30_001_101, "piv-login"))
        .await
        .unwrap()
        .into_inner();
    assert_refused(
        url,
        enroll
            .begin_enrollment(begin_request("E1101", 30_001_101, "piv-login"))
            .await,
        Code::FailedPrecondition,
        "TOKEN_HELD_BY_ANOTHER_PERSON",
        2,
    )
    .await;
    abort(&server, &fresh.enrollment_id).await;
    assert_eq!(
        token_state(&server, 30_001_101).await,
        (T::Enrolling, String::new())
    );
    assert_eq!(
        restores(url, 30_001_101).await,
        [(
            "helpdesk-client".to_string(),
            "enrolling".to_string(),
            "enrolling".to_string(),
            serde_json::Value::Null
        )]
    );
    let mut other = begin_request("E1101", 30_001_101, "piv-login");
    other.request_id = "begin-other-after-fresh-abort".into();
    enroll.begin_enrollment(other).await.unwrap();
    assert_eq!(
        token_state(&server, 30_001_101).await,
        (T::Enrolling, "E1101".into())
    );
    server.stop().await;
}

/// Issue 12, finding 5: expiry puts the token back as it was before Begin, as the server.
async fn expiry_restores_the_token(url: &str) {
    use pb::CertificateStatus as S;
    use pb::TokenState as T;
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(30_001_110));
    let clock = ManualClock::starting_now();
    let server = Server::start_with_clock(
        url,
        &[card.attestation_root()],
        Enrollment {
            expiry_seconds: Some(8),
            expiry_sweep_seconds: Some(1),
            ..Enrollment::default()
        },
        clock.clock(),
    )
    .await;
    server.create_person("E1110", "").await;
    let (_, first) = enroll_and_confirm(&server, &card, "E1110").await;
    let mut enroll = server.enrollments().await;
    let mut again = begin_request("E1110", 30_001_110, "piv-login");
    again.request_id = "re-begin".into();
    let reenrolling = enroll.begin_enrollment(again).await.unwrap().into_inner();
    let fresh = enroll
        .begin_enrollment(begin_request("E1110", 30_001_111, "piv-login"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        token_state(&server, 30_001_110).await,
        (T::Enrolling, "E1110".into())
    );
    assert_eq!(
        token_state(&server, 30_001_111).await,
        (T::Enrolling, "E1110".into())
    );

    clock.advance(std::time::Duration::from_secs(8));
    // The server's sweep (not a call) expires them: watch the store, not the API.
    let store = Store::open(url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    for id in [&reenrolling.enrollment_id, &fresh.enrollment_id] {
        loop {
            let row = store.enrollment_by_public_id(id).await.unwrap().unwrap();
            if row.state == tessera::store::EnrollmentState::Expired {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the enrollment never expired: {row:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    store.close().await;
    assert_eq!(
        token_state(&server, 30_001_110).await,
        (T::Active, "E1110".into())
    );
    assert_eq!(statuses(&server, &first).await, [S::Good, S::Good]);
    assert_eq!(
        token_state(&server, 30_001_111).await,
        (T::Enrolling, String::new())
    );
    assert_eq!(
        restores(url, 30_001_110).await,
        [(
            "tessera".to_string(),
            "enrolling".to_string(),
            "active".to_string(),
            serde_json::json!("E1110")
        )]
    );
    assert_eq!(
        restores(url, 30_001_111).await,
        [(
            "tessera".to_string(),
            "enrolling".to_string(),
            "enrolling".to_string(),
            serde_json::Value::Null
        )]
    );
    server.stop().await;
}

/// A connection to the test database for SQL a database writer would run.
pub(crate) async fn database_writer(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let connect_url = match url.strip_prefix("sqlite:") {
        Some(path) => format!("sqlite://{path}?mode=rwc"),
        None => url.to_string(),
    };
    sqlx::AnyPool::connect(&connect_url).await.unwrap()
}

/// `columns` of token `to`'s credentials row set to those of token `from`'s (SQL as a
/// database writer would run it).
async fn copy_credential_columns(url: &str, from: u32, to: u32, columns: &[&str]) {
    let pool = database_writer(url).await;
    for column in columns {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE token_credentials SET {column} = \
             (SELECT c.{column} FROM token_credentials c JOIN tokens t ON t.id = c.token_id WHERE t.serial = $1) \
             WHERE token_id = (SELECT id FROM tokens WHERE serial = $2)"
        )))
        .bind(from.to_string())
        .bind(to.to_string())
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
}

/// Token `serial`'s stored row: aad_version, generation, wrapped management key, wrapped PUK.
pub(crate) async fn stored_credentials(url: &str, serial: u32) -> (i64, i64, Vec<u8>, Vec<u8>) {
    use sqlx::Row;
    let pool = database_writer(url).await;
    let row = sqlx::query(
        "SELECT c.aad_version, c.generation, c.management_key_wrapped, c.puk_wrapped \
         FROM token_credentials c JOIN tokens t ON t.id = c.token_id WHERE t.serial = $1",
    )
    .bind(serial.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// Token `serial`'s row overwritten with these values.
pub(crate) async fn put_stored_credentials(
    url: &str,
    serial: u32,
    (aad_version, generation, management_key, puk): (i64, i64, Vec<u8>, Vec<u8>),
) {
    let pool = database_writer(url).await;
    sqlx::query(
        "UPDATE token_credentials SET aad_version = $1, generation = $2, management_key_wrapped = $3, puk_wrapped = $4 \
         WHERE token_id = (SELECT id FROM tokens WHERE serial = $5)",
    )
    .bind(aad_version)
    .bind(generation)
    .bind(management_key)
    .bind(puk)
    .bind(serial.to_string())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

fn release_request(request_id: &str, serial: u32) -> pb::ReleasePukRequest {
    pb::ReleasePukRequest {
        request_id: request_id.into(),
        token_serial: serial.to_string(),
        reason: "forgotten PIN".into(),
    }
}

/// Issue 12, finding 8: a database writer copies token A's wrapped PUK (with its generation)
/// into token B's row: ReleasePuk for B is refused as CREDENTIALS_TAMPERED (DATA_LOSS), audited,
/// and discloses nothing; the same for A's wrapped management key when B is re-enrolled, and
/// for B's own PUK blob put in B's management key column.
async fn wrapped_credentials_moved_to_another_token_are_refused(url: &str) {
    const A: u32 = 30_001_200;
    const B: u32 = 30_001_201;
    let card_a = VirtualCard::start(CardOptions::firmware("5.7.4").serial(A));
    let card_b = VirtualCard::start(CardOptions::firmware("5.7.4").serial(B));
    let server = Server::start(
        url,
        &[card_a.attestation_root(), card_b.attestation_root()],
        Enrollment::default(),
    )
    .await;
    server.create_person("E1200", "").await;
    server.create_person("E1201", "").await;
    let (begin_a, _) = enroll_and_confirm(&server, &card_a, "E1200").await;
    let (begin_b, _) = enroll_and_confirm(&server, &card_b, "E1201").await;
    let mut enroll = server.enrollments().await;
    let untouched = stored_credentials(url, B).await;

    copy_credential_columns(url, A, B, &["puk_wrapped", "generation"]).await;
    let s = assert_refused(
        url,
        enroll.release_puk(release_request("puk-moved", B)).await,
        Code::DataLoss,
        "CREDENTIALS_TAMPERED",
        4,
    )
    .await;
    assert_eq!(
        s.message(),
        format!(
            "the stored credentials of token {B} do not belong to it (the database was altered); nothing was released"
        )
    );
    assert!(!format!("{s:?}").contains(&begin_a.new_puk));
    let store = Store::open(url).await.unwrap();
    let releases = store
        .audit_events(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "token.release_puk")
        .count();
    assert_eq!(releases, 0, "nothing released");
    store.close().await;
    // A repeat of the refused request is refused again.
    let s = enroll
        .release_puk(release_request("puk-moved", B))
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::DataLoss, "CREDENTIALS_TAMPERED")
    );

    // Put back, B's own PUK is released.
    put_stored_credentials(url, B, untouched.clone()).await;
    let released = enroll
        .release_puk(release_request("puk-b", B))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.puk, begin_b.new_puk);
    let untouched = stored_credentials(url, B).await;

    // A's management key in B's row: re-enrolling B is refused and changes nothing.
    copy_credential_columns(url, A, B, &["management_key_wrapped", "generation"]).await;
    let mut again = begin_request("E1201", B, "piv-login");
    again.request_id = "re-begin-moved".into();
    assert_refused(
        url,
        enroll.begin_enrollment(again).await,
        Code::DataLoss,
        "CREDENTIALS_TAMPERED",
        4,
    )
    .await;
    assert_eq!(
        token_state(&server, B).await,
        (pb::TokenState::Active, "E1201".into())
    );

    // B's own PUK blob in B's management key column: refused too.
    let (version, generation, _, puk) = untouched.clone();
    put_stored_credentials(url, B, (version, generation, puk.clone(), puk)).await;
    assert_refused(
        url,
        enroll.release_puk(release_request("puk-swapped", B)).await,
        Code::DataLoss,
        "CREDENTIALS_TAMPERED",
        4,
    )
    .await;

    // B's own blobs claimed for another generation: refused as well.
    let (version, generation, key, puk) = untouched.clone();
    put_stored_credentials(url, B, (version, generation + 1, key, puk)).await;
    assert_refused(
        url,
        enroll
            .release_puk(release_request("puk-generation", B))
            .await,
        Code::DataLoss,
        "CREDENTIALS_TAMPERED",
        4,
    )
    .await;

    // And A is unaffected throughout.
    let released = enroll
        .release_puk(release_request("puk-a", A))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.puk, begin_a.new_puk);
    assert_eq!(released.management_key, begin_a.new_management_key);
    server.stop().await;
}

/// A row wrapped before migration 0006 (the fixed associated data `tessera-wrap-v1`,
/// aad_version 1) still releases the token's own PUK and management key, and is bound
/// (aad_version 2, a new generation) from then on.
async fn credentials_wrapped_before_migration_0006_are_released_and_rebound(url: &str) {
    const SERIAL: u32 = 30_001_210;
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    let server = Server::start(url, &[card.attestation_root()], Enrollment::default()).await;
    server.create_person("E1210", "").await;
    let (begin, _) = enroll_and_confirm(&server, &card, "E1210").await;
    let (version, generation, ..) = stored_credentials(url, SERIAL).await;
    assert_eq!((version, generation), (2, 2), "a new row is bound");

    // The row as the server wrote it before migration 0006.
    let hsm = &server.running.ca.as_ref().unwrap().hsm;
    let key = &begin.new_management_key.as_ref().unwrap().key;
    let old = (
        1,
        0,
        hsm.wrap_secret("tessera-wrap", key, b"tessera-wrap-v1")
            .unwrap(),
        hsm.wrap_secret("tessera-wrap", begin.new_puk.as_bytes(), b"tessera-wrap-v1")
            .unwrap(),
    );
    put_stored_credentials(url, SERIAL, old.clone()).await;

    let mut enroll = server.enrollments().await;
    let released = enroll
        .release_puk(release_request("puk-v1", SERIAL))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.puk, begin.new_puk);
    assert_eq!(released.management_key, begin.new_management_key);
    let (version, generation, key_wrapped, puk_wrapped) = stored_credentials(url, SERIAL).await;
    assert_eq!((version, generation), (2, 1), "re-wrapped bound");
    assert_ne!((key_wrapped, puk_wrapped), (old.2.clone(), old.3.clone()));
    // The bound row releases the same secrets; the old blobs put back as a bound row do not.
    let again = enroll
        .release_puk(release_request("puk-v2", SERIAL))
        .await
        .unwrap()
        .into_inner();
    // (The same new PUK too, now marked as handed out before.)
    assert_eq!(
        again,
        pb::ReleasePukResponse {
            new_puk_resumed: true,
            ..released.clone()
        }
    );
    put_stored_credentials(url, SERIAL, (2, 1, old.2, old.3)).await;
    assert_refused(
        url,
        enroll
            .release_puk(release_request("puk-v1-as-v2", SERIAL))
            .await,
        Code::DataLoss,
        "CREDENTIALS_TAMPERED",
        2,
    )
    .await;
    server.stop().await;
}

/// An EnrollmentService client presenting a `helpdesk` certificate of its own, named `name`
/// (each call of `Server::channel` makes a fresh certificate as well).
async fn desk(server: &Server, name: &str) -> (EnrollmentServiceClient<Channel>, Channel) {
    let client = server
        .pki
        .client_with_uris(name, &["tessera:role:helpdesk"]);
    let channel = connect(server.running.addr, &server.pki.ca_pem, Some(&client)).await;
    (EnrollmentServiceClient::new(channel.clone()), channel)
}

/// The audit events with this action and request id: (actor, after).
async fn events_of(url: &str, action: &str, request_id: &str) -> Vec<(String, serde_json::Value)> {
    let store = Store::open(url).await.unwrap();
    let events = store.audit_events(0, 10_000).await.unwrap();
    store.close().await;
    events
        .into_iter()
        .filter(|e| e.action == action && e.request_id == request_id)
        .map(|e| (e.actor, serde_json::from_str(&e.after_json).unwrap()))
        .collect()
}

/// Issue 12, finding 2: a repeated ReleasePuk (same request id) is a release of its own. From
/// the certificate that made it, within `secret_replay_minutes`, it gets the same secrets and is
/// audited as `token.release_puk` marked as a repeat; from another operator's certificate it is
/// refused (REQUEST_ID_OF_ANOTHER_CALLER); after the window, or once the token was declared
/// lost, it is refused as a first call would be (REQUEST_ID_EXPIRED, TOKEN_NOT_ACTIVE), each
/// refusal audited. Plain idempotent requests are repeated as before, without a window, and
/// also belong to their caller.
async fn repeated_release_puk_is_checked_audited_and_expires(url: &str) {
    use pb::token_service_client::TokenServiceClient;
    const SERIAL: u32 = 30_001_330;
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    let clock = ManualClock::starting_now();
    let server = Server::start_with_clock(
        url,
        &[card.attestation_root()],
        Enrollment::default(),
        clock.clock(),
    )
    .await;
    server.create_person("E1330", "").await;
    let (begin, _) = enroll_and_confirm(&server, &card, "E1330").await;
    let (mut desk_a, channel_a) = desk(&server, "desk-a").await;
    let (mut desk_b, channel_b) = desk(&server, "desk-b").await;

    let first = desk_a
        .release_puk(release_request("puk-r1", SERIAL))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.puk, begin.new_puk);
    clock.advance(std::time::Duration::from_secs(4 * 60 + 59));
    let again = desk_a
        .release_puk(release_request("puk-r1", SERIAL))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    let released = events_of(url, "token.release_puk", "puk-r1").await;
    assert_eq!(released.len(), 2, "{released:?}");
    for (actor, after) in &released {
        assert_eq!(actor, "desk-a");
        assert_eq!(after["reason"], "forgotten PIN");
        assert_eq!(after["released"], "puk");
    }
    assert_eq!(released[0].1["repeat"], serde_json::Value::Null);
    assert_eq!(released[1].1["repeat"], true);
    // The repeat is a release of its own (its own row, counted by the rate limit).
    assert_ne!(released[0].1["release_id"], released[1].1["release_id"]);

    // Another operator's certificate (same role) cannot repeat it, whatever it sends.
    let s = assert_refused(
        url,
        desk_b.release_puk(release_request("puk-r1", SERIAL)).await,
        Code::InvalidArgument,
        "REQUEST_ID_OF_ANOTHER_CALLER",
        2,
    )
    .await;
    assert_eq!(
        s.message(),
        "request id \"puk-r1\" was already used by another client certificate; use a fresh request id"
    );
    assert!(!format!("{s:?}").contains(&begin.new_puk));
    let mut other_reason = release_request("puk-r1", SERIAL);
    other_reason.reason = "something else".into();
    let s = desk_b.release_puk(other_reason).await.unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::InvalidArgument, "REQUEST_ID_OF_ANOTHER_CALLER")
    );

    // Past the window the repeat is refused, and so on; a fresh request id releases again.
    clock.advance(std::time::Duration::from_secs(1));
    let s = assert_refused(
        url,
        desk_a.release_puk(release_request("puk-r1", SERIAL)).await,
        Code::FailedPrecondition,
        "REQUEST_ID_EXPIRED",
        2,
    )
    .await;
    assert!(
        s.message().starts_with("request id \"puk-r1\" is not answered again: it was first answered at ")
            && s.message().ends_with(", and secrets are answered again only for 5 minutes (enrollment.secret_replay_minutes); its answer carried secrets, send a fresh request id"),
        "{}",
        s.message()
    );
    assert_eq!(events_of(url, "token.release_puk", "puk-r1").await.len(), 2);

    // Plain idempotent requests: repeated with their first answer however late, but only to
    // their caller.
    let mut tokens_a = TokenServiceClient::new(channel_a);
    let suspend = pb::SuspendTokenRequest {
        request_id: "suspend-r".into(),
        serial: SERIAL.to_string(),
        reason: "desk check".into(),
    };
    let suspended = tokens_a
        .suspend_token(suspend.clone())
        .await
        .unwrap()
        .into_inner();
    clock.advance(std::time::Duration::from_secs(3600));
    assert_eq!(
        tokens_a
            .suspend_token(suspend.clone())
            .await
            .unwrap()
            .into_inner(),
        suspended
    );
    let s = TokenServiceClient::new(channel_b)
        .suspend_token(suspend)
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::InvalidArgument, "REQUEST_ID_OF_ANOTHER_CALLER")
    );
    tokens_a
        .reinstate_token(pb::ReinstateTokenRequest {
            request_id: "reinstate-r".into(),
            serial: SERIAL.to_string(),
            reason: String::new(),
        })
        .await
        .unwrap();

    // Released, then the token is declared lost: the repeat gets the refusal a first call gets.
    desk_a
        .release_puk(release_request("puk-r2", SERIAL))
        .await
        .unwrap();
    tokens_a
        .mark_token_lost(pb::MarkTokenLostRequest {
            request_id: "lost-r".into(),
            serial: SERIAL.to_string(),
            reason: "left on a train".into(),
        })
        .await
        .unwrap();
    let repeat = assert_refused(
        url,
        desk_a.release_puk(release_request("puk-r2", SERIAL)).await,
        Code::FailedPrecondition,
        "TOKEN_NOT_ACTIVE",
        2,
    )
    .await;
    let fresh = assert_refused(
        url,
        desk_a.release_puk(release_request("puk-r3", SERIAL)).await,
        Code::FailedPrecondition,
        "TOKEN_NOT_ACTIVE",
        2,
    )
    .await;
    assert_eq!(repeat.message(), fresh.message());
    assert_eq!(
        repeat.message(),
        format!("token {SERIAL} is lost; the PUK is released only for an active token")
    );
    assert_eq!(events_of(url, "token.release_puk", "puk-r2").await.len(), 1);
    server.stop().await;
}

/// Issue 12, finding 2: a repeated BeginEnrollment is a release of its own too: the same
/// secrets to the same certificate within the window, audited as `enrollment.begin` marked as a
/// repeat; another certificate's repeat refused; the person suspended meanwhile gets the
/// refusal a first call gets (PERSON_NOT_ACTIVE); past the window REQUEST_ID_EXPIRED.
async fn repeated_begin_is_checked_audited_and_expires(url: &str) {
    const SERIAL: u32 = 30_001_340;
    let clock = ManualClock::starting_now();
    let server = Server::start_with_clock(
        url,
        &[],
        Enrollment {
            secret_replay_minutes: Some(2),
            ..Enrollment::default()
        },
        clock.clock(),
    )
    .await;
    server.create_person("E1340", "").await;
    let (mut desk_a, _) = desk(&server, "desk-a").await;
    let (mut desk_b, _) = desk(&server, "desk-b").await;
    let mut request = begin_request("E1340", SERIAL, "piv-login");
    request.request_id = "begin-r".into();

    let first = desk_a
        .begin_enrollment(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.new_puk.len(), 8);
    let again = desk_a
        .begin_enrollment(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    let subject = format!("enrollment:{}", first.enrollment_id);
    let store = Store::open(url).await.unwrap();
    let begins: Vec<_> = store
        .audit_events(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "enrollment.begin" && e.subject == subject)
        .map(|e| {
            (
                e.actor,
                serde_json::from_str::<serde_json::Value>(&e.after_json).unwrap(),
            )
        })
        .collect();
    store.close().await;
    assert_eq!(begins.len(), 2, "{begins:?}");
    assert_eq!(begins[0].1["repeat"], serde_json::Value::Null);
    assert_eq!(
        begins[1],
        (
            "desk-a".to_string(),
            serde_json::json!({
                "repeat": true,
                "person": "E1340",
                "token": SERIAL.to_string(),
                "released": "new credentials"
            })
        )
    );

    let s = assert_refused(
        url,
        desk_b.begin_enrollment(request.clone()).await,
        Code::InvalidArgument,
        "REQUEST_ID_OF_ANOTHER_CALLER",
        0,
    )
    .await;
    assert!(!format!("{s:?}").contains(&first.new_puk));

    DirectoryServiceClient::new(server.channel("hr").await)
        .suspend_person(pb::SuspendPersonRequest {
            request_id: "suspend-E1340".into(),
            external_id: "E1340".into(),
            reason: "leave".into(),
        })
        .await
        .unwrap();
    let s = assert_refused(
        url,
        desk_a.begin_enrollment(request.clone()).await,
        Code::FailedPrecondition,
        "PERSON_NOT_ACTIVE",
        0,
    )
    .await;
    assert_eq!(
        s.message(),
        "person E1340 is suspended; only an active person can be enrolled"
    );

    clock.advance(std::time::Duration::from_secs(2 * 60));
    let s = assert_refused(
        url,
        desk_a.begin_enrollment(request).await,
        Code::FailedPrecondition,
        "REQUEST_ID_EXPIRED",
        0,
    )
    .await;
    assert!(
        s.message().contains("only for 2 minutes"),
        "{}",
        s.message()
    );
    server.stop().await;
}

fn puk_request(request_id: &str, serial: u32, reason: &str) -> pb::ReleasePukRequest {
    pb::ReleasePukRequest {
        request_id: request_id.into(),
        token_serial: serial.to_string(),
        reason: reason.into(),
    }
}

fn approval(request_id: &str, release_id: &str, serial: u32) -> pb::ApprovePukReleaseRequest {
    pb::ApprovePukReleaseRequest {
        request_id: request_id.into(),
        release_id: release_id.into(),
        token_serial: serial.to_string(),
        reason: "called the person back on their desk phone".into(),
    }
}

/// The audit events with `action`, their `after` parsed, and the actor's name.
async fn events(url: &str, action: &str) -> Vec<(String, serde_json::Value)> {
    let store = Store::open(url).await.unwrap();
    let found = store
        .audit_events(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == action)
        .map(|e| (e.actor, serde_json::from_str(&e.after_json).unwrap()))
        .collect();
    store.close().await;
    found
}

/// The exact code and reason of a refusal that is not audited (a bad request).
fn assert_invalid<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, Status>,
    code: Code,
    expected_reason: &str,
) -> Status {
    let status = result.expect_err("the call must be refused");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (code, expected_reason),
        "{status:?}"
    );
    status
}

/// Issue 12, finding 9: ReleasePuk needs a reason (trimmed, bounded) and records it; one client
/// certificate receives at most `puk_releases_per_hour` releases in any 60 minutes, counted
/// from the store, and the refusal is audited; another certificate is not limited by it.
async fn puk_release_needs_a_reason_and_is_rate_limited_per_certificate(url: &str) {
    const SERIAL: u32 = 30_001_300;
    let clock = ManualClock::starting_now();
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    let server = Server::start_with_clock(
        url,
        &[card.attestation_root()],
        Enrollment {
            puk_releases_per_hour: Some(2),
            ..Enrollment::default()
        },
        clock.clock(),
    )
    .await;
    server.create_person("E1300", "").await;
    let (begin, _) = enroll_and_confirm(&server, &card, "E1300").await;
    let mut alice = server.enrollments_as("helpdesk-alice", "helpdesk").await;

    for (id, blank) in [("no-reason", ""), ("blank-reason", " \t\n ")] {
        let s = assert_invalid(
            alice.release_puk(puk_request(id, SERIAL, blank)).await,
            Code::InvalidArgument,
            "RELEASE_REASON_REQUIRED",
        );
        assert_eq!(
            s.message(),
            "reason is empty; say why the PUK is released (it is recorded in the audit log)"
        );
        assert_eq!(
            s.get_error_details()
                .bad_request()
                .unwrap()
                .field_violations[0]
                .field,
            "reason"
        );
    }
    let s = assert_invalid(
        alice
            .release_puk(puk_request("long-reason", SERIAL, &"x".repeat(1025)))
            .await,
        Code::InvalidArgument,
        "FIELD_TOO_LONG",
    );
    assert_eq!(s.message(), "reason exceeds 1024 bytes");
    assert!(events(url, "token.release_puk").await.is_empty());

    let first = clock.now();
    let released = alice
        .release_puk(puk_request(
            "puk-1",
            SERIAL,
            "  forgotten PIN, ticket 4711\n",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.puk, begin.new_puk);
    clock.advance(std::time::Duration::from_secs(600));
    alice
        .release_puk(puk_request("puk-2", SERIAL, "blocked again"))
        .await
        .unwrap();
    let released_events = events(url, "token.release_puk").await;
    assert_eq!(released_events.len(), 2);
    assert_eq!(released_events[0].0, "helpdesk-alice");
    assert_eq!(released_events[0].1["reason"], "forgotten PIN, ticket 4711");

    // The third within the hour: refused, audited, nothing released.
    let s = assert_refused(
        url,
        alice
            .release_puk(puk_request("puk-3", SERIAL, "third time"))
            .await,
        Code::ResourceExhausted,
        "PUK_RELEASE_RATE_LIMITED",
        2,
    )
    .await;
    let next_at = (first + time::Duration::hours(1)).to_string();
    assert_eq!(metadata(&s, "next_at"), next_at);
    assert_eq!(
        s.message(),
        format!(
            "this client certificate has received 2 PUK releases in the last 60 minutes, the limit ([enrollment] puk_releases_per_hour); the next is possible at {next_at}"
        )
    );
    assert!(!format!("{s:?}").contains(&begin.new_puk));
    assert_eq!(events(url, "token.release_puk").await.len(), 2);

    // Another certificate has its own count.
    let mut bob = server.enrollments_as("helpdesk-bob", "helpdesk").await;
    bob.release_puk(puk_request("puk-bob", SERIAL, "forgotten PIN"))
        .await
        .unwrap();

    // The window slides: an hour after the first release, one more.
    clock.set(first + time::Duration::hours(1));
    alice
        .release_puk(puk_request("puk-4", SERIAL, "forgotten PIN again"))
        .await
        .unwrap();
    assert_invalid(
        alice
            .release_puk(puk_request("puk-5", SERIAL, "and again"))
            .await,
        Code::ResourceExhausted,
        "PUK_RELEASE_RATE_LIMITED",
    );
    server.stop().await;
}

/// Issue 12, finding 9: with `puk_release_approval`, ReleasePuk stores a request and answers
/// PUK_RELEASE_PENDING_APPROVAL with its id; the requester cannot approve it (neither with the
/// same certificate nor with another certificate in the same name); a second operator approves
/// it; the requester then receives the secrets once. Every step and refusal is audited.
async fn puk_release_under_dual_control(url: &str) {
    const SERIAL: u32 = 30_001_310;
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    let server = Server::start(
        url,
        &[card.attestation_root()],
        Enrollment {
            puk_release_approval: Some(true),
            ..Enrollment::default()
        },
    )
    .await;
    server.create_person("E1310", "").await;
    let (begin, _) = enroll_and_confirm(&server, &card, "E1310").await;
    let mut alice = server.enrollments_as("helpdesk-alice", "helpdesk").await;
    let mut alice_second = server.enrollments_as("helpdesk-alice", "helpdesk").await;
    let mut bob = server.enrollments_as("helpdesk-bob", "helpdesk").await;
    let mut carol = server.enrollments_as("admin-carol", "admin").await;

    assert_invalid(
        alice.release_puk(puk_request("ask-0", SERIAL, "")).await,
        Code::InvalidArgument,
        "RELEASE_REASON_REQUIRED",
    );
    let s = assert_invalid(
        alice
            .release_puk(puk_request("ask-1", SERIAL, "forgotten PIN, ticket 4711"))
            .await,
        Code::FailedPrecondition,
        "PUK_RELEASE_PENDING_APPROVAL",
    );
    let release_id = metadata(&s, "release_id");
    assert!(release_id.starts_with("pkr_"), "{release_id}");
    assert!(s.message().contains(&release_id), "{}", s.message());
    assert!(!format!("{s:?}").contains(&begin.new_puk));
    let requested = events(url, "token.puk_release_request").await;
    assert_eq!(requested.len(), 1);
    assert_eq!(requested[0].0, "helpdesk-alice");
    assert_eq!(requested[0].1["release_id"], release_id.as_str());
    assert_eq!(requested[0].1["reason"], "forgotten PIN, ticket 4711");
    assert!(events(url, "token.release_puk").await.is_empty());

    // Asking again (a new request id) finds the same request.
    let s = assert_invalid(
        alice
            .release_puk(puk_request("ask-2", SERIAL, "forgotten PIN, ticket 4711"))
            .await,
        Code::FailedPrecondition,
        "PUK_RELEASE_PENDING_APPROVAL",
    );
    assert_eq!(metadata(&s, "release_id"), release_id);
    assert_eq!(events(url, "token.puk_release_request").await.len(), 1);

    // The requester cannot approve: not with the same certificate, not with another one in
    // the same name.
    for (client, id) in [(&mut alice, "self-1"), (&mut alice_second, "self-2")] {
        let s = assert_refused(
            url,
            client
                .approve_puk_release(approval(id, &release_id, SERIAL))
                .await,
            Code::PermissionDenied,
            "APPROVER_IS_REQUESTER",
            2,
        )
        .await;
        assert_eq!(metadata(&s, "release_id"), release_id);
    }
    // Bad approvals: another token's serial, an unknown id, no reason.
    assert_refused(
        url,
        bob.approve_puk_release(approval("wrong-token", &release_id, SERIAL + 1))
            .await,
        Code::InvalidArgument,
        "PUK_RELEASE_TOKEN_MISMATCH",
        2,
    )
    .await;
    assert_refused(
        url,
        bob.approve_puk_release(approval("unknown", "pkr_00", SERIAL))
            .await,
        Code::NotFound,
        "PUK_RELEASE_NOT_FOUND",
        2,
    )
    .await;
    let mut no_reason = approval("no-reason", &release_id, SERIAL);
    no_reason.reason = "  ".into();
    assert_invalid(
        bob.approve_puk_release(no_reason).await,
        Code::InvalidArgument,
        "RELEASE_REASON_REQUIRED",
    );
    assert_invalid(
        bob.approve_puk_release(approval("no-id", "", SERIAL)).await,
        Code::InvalidArgument,
        "FIELD_REQUIRED",
    );

    // A second operator approves.
    let approved = bob
        .approve_puk_release(approval("approve-1", &release_id, SERIAL))
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    assert_eq!(approved.release_id, release_id);
    assert_eq!(approved.token_serial, SERIAL.to_string());
    assert_eq!(approved.state, pb::PukReleaseState::Approved as i32);
    assert_eq!(approved.requested_by, "helpdesk-alice");
    assert_eq!(approved.approved_by, "helpdesk-bob");
    assert_eq!(approved.reason, "forgotten PIN, ticket 4711");
    let approvals = events(url, "token.puk_release_approve").await;
    assert_eq!(approvals.len(), 1);
    assert_eq!(approvals[0].0, "helpdesk-bob");
    assert_eq!(approvals[0].1["release_id"], release_id.as_str());
    assert_eq!(approvals[0].1["requested_by"], "helpdesk-alice");
    // Approving twice is refused.
    assert_refused(
        url,
        carol
            .approve_puk_release(approval("approve-2", &release_id, SERIAL))
            .await,
        Code::FailedPrecondition,
        "PUK_RELEASE_NOT_PENDING",
        2,
    )
    .await;
    // The approver does not receive the secrets: their ReleasePuk is a request of their own.
    let s = assert_invalid(
        bob.release_puk(puk_request("bob-asks", SERIAL, "curious"))
            .await,
        Code::FailedPrecondition,
        "PUK_RELEASE_PENDING_APPROVAL",
    );
    assert_ne!(metadata(&s, "release_id"), release_id);

    // The requester collects the secrets, once.
    let released = alice
        .release_puk(puk_request(
            "collect-1",
            SERIAL,
            "forgotten PIN, ticket 4711",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.puk, begin.new_puk);
    assert_eq!(released.management_key, begin.new_management_key);
    let releases = events(url, "token.release_puk").await;
    assert_eq!(releases.len(), 1);
    assert_eq!(releases[0].0, "helpdesk-alice");
    assert_eq!(releases[0].1["release_id"], release_id.as_str());
    assert_eq!(releases[0].1["approved_by"], "helpdesk-bob");
    assert_eq!(
        releases[0].1["approval_reason"],
        "called the person back on their desk phone"
    );
    let s = assert_invalid(
        alice
            .release_puk(puk_request("collect-2", SERIAL, "once more"))
            .await,
        Code::FailedPrecondition,
        "PUK_RELEASE_PENDING_APPROVAL",
    );
    let next_id = metadata(&s, "release_id");
    assert_ne!(next_id, release_id);
    // An admin may approve too.
    carol
        .approve_puk_release(approval("carol-approves", &next_id, SERIAL))
        .await
        .unwrap();
    alice
        .release_puk(puk_request("collect-3", SERIAL, "once more"))
        .await
        .unwrap();
    assert_eq!(events(url, "token.release_puk").await.len(), 2);
    server.stop().await;
}

/// Issue 12, findings 2 and 9 together: under dual control a ReleasePuk answered
/// PUK_RELEASE_PENDING_APPROVAL is not kept as an answer, so repeating its request id after the
/// approval is the first answer: the approval is collected and the secrets released once. A
/// further repeat of that request id is a release of its own: the same secrets, audited as
/// `token.release_puk` with `"repeat": true`, asking for and collecting no approval (the next
/// fresh request waits for a new one), and counted by the certificate's rate limit, which then
/// refuses the repeat (audited).
async fn repeat_of_an_approved_release_is_audited_and_rate_limited(url: &str) {
    const SERIAL: u32 = 30_001_350;
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    let server = Server::start(
        url,
        &[card.attestation_root()],
        Enrollment {
            puk_release_approval: Some(true),
            puk_releases_per_hour: Some(3),
            ..Enrollment::default()
        },
    )
    .await;
    server.create_person("E1350", "").await;
    let (begin, _) = enroll_and_confirm(&server, &card, "E1350").await;
    let mut alice = server.enrollments_as("helpdesk-alice", "helpdesk").await;
    let mut bob = server.enrollments_as("helpdesk-bob", "helpdesk").await;
    let collect = || puk_request("collect", SERIAL, "forgotten PIN, ticket 4711");

    // Asked, and asked again with the same request id before the approval: the same request.
    let s = assert_invalid(
        alice.release_puk(collect()).await,
        Code::FailedPrecondition,
        "PUK_RELEASE_PENDING_APPROVAL",
    );
    let release_id = metadata(&s, "release_id");
    let s = assert_invalid(
        alice.release_puk(collect()).await,
        Code::FailedPrecondition,
        "PUK_RELEASE_PENDING_APPROVAL",
    );
    assert_eq!(metadata(&s, "release_id"), release_id);
    assert_eq!(events(url, "token.puk_release_request").await.len(), 1);
    assert!(events(url, "token.release_puk").await.is_empty());

    bob.approve_puk_release(approval("approve", &release_id, SERIAL))
        .await
        .unwrap();
    // The same request id after the approval: the first answer, the approval collected.
    let first = alice.release_puk(collect()).await.unwrap().into_inner();
    assert_eq!(first.puk, begin.new_puk);
    assert_eq!(first.management_key, begin.new_management_key);
    // Once more: a repeat, the same secrets, audited as such.
    let again = alice.release_puk(collect()).await.unwrap().into_inner();
    assert_eq!(again, first);
    let released = events_of(url, "token.release_puk", "collect").await;
    assert_eq!(released.len(), 2, "{released:?}");
    assert_eq!(released[0].0, "helpdesk-alice");
    assert_eq!(released[0].1["release_id"], release_id.as_str());
    assert_eq!(released[0].1["approved_by"], "helpdesk-bob");
    assert_eq!(released[0].1["repeat"], serde_json::Value::Null);
    assert_eq!(released[1].0, "helpdesk-alice");
    assert_eq!(released[1].1["repeat"], true);
    assert_eq!(released[1].1["released"], "puk");
    assert_eq!(released[1].1["reason"], "forgotten PIN, ticket 4711");
    assert_ne!(released[1].1["release_id"], release_id.as_str());
    assert_eq!(released[1].1["approved_by"], serde_json::Value::Null);
    // The repeat asked for no approval and left none to collect: a fresh request waits.
    assert_eq!(events(url, "token.puk_release_request").await.len(), 1);
    assert_eq!(events(url, "token.puk_release_approve").await.len(), 1);
    let s = assert_invalid(
        alice
            .release_puk(puk_request("fresh", SERIAL, "forgotten PIN again"))
            .await,
        Code::FailedPrecondition,
        "PUK_RELEASE_PENDING_APPROVAL",
    );
    assert_ne!(metadata(&s, "release_id"), release_id);
    assert_eq!(events(url, "token.puk_release_request").await.len(), 2);

    // Repeats count towards the rate limit (3 an hour): the third release is a repeat, the
    // fourth is refused and audited.
    assert_eq!(
        alice.release_puk(collect()).await.unwrap().into_inner(),
        first
    );
    let s = assert_refused(
        url,
        alice.release_puk(collect()).await,
        Code::ResourceExhausted,
        "PUK_RELEASE_RATE_LIMITED",
        2,
    )
    .await;
    assert!(!format!("{s:?}").contains(&begin.new_puk));
    assert_eq!(events(url, "token.release_puk").await.len(), 3);
    server.stop().await;
}

/// Issue 12, finding 9: a request not approved within `puk_release_approval_minutes` cannot be
/// approved (PUK_RELEASE_EXPIRED); an approval not collected in as long gives nothing, and the
/// next ReleasePuk is a new request.
async fn puk_release_requests_and_approvals_expire(url: &str) {
    const SERIAL: u32 = 30_001_320;
    let clock = ManualClock::starting_now();
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    let server = Server::start_with_clock(
        url,
        &[card.attestation_root()],
        Enrollment {
            puk_release_approval: Some(true),
            puk_release_approval_minutes: Some(10),
            ..Enrollment::default()
        },
        clock.clock(),
    )
    .await;
    server.create_person("E1320", "").await;
    enroll_and_confirm(&server, &card, "E1320").await;
    let mut alice = server.enrollments_as("helpdesk-alice", "helpdesk").await;
    let mut bob = server.enrollments_as("helpdesk-bob", "helpdesk").await;

    let ask = |id: &str| puk_request(id, SERIAL, "forgotten PIN");
    let s = alice.release_puk(ask("ask-1")).await.unwrap_err();
    let first = metadata(&s, "release_id");
    assert_eq!(
        metadata(&s, "expires_at"),
        (clock.now() + time::Duration::minutes(10)).to_string()
    );
    clock.advance(std::time::Duration::from_secs(600));
    let s = assert_refused(
        url,
        bob.approve_puk_release(approval("late", &first, SERIAL))
            .await,
        Code::FailedPrecondition,
        "PUK_RELEASE_EXPIRED",
        2,
    )
    .await;
    assert_eq!(metadata(&s, "release_id"), first);

    // Asking again makes a new request; approved, but not collected in time.
    let s = alice.release_puk(ask("ask-2")).await.unwrap_err();
    let second = metadata(&s, "release_id");
    assert_ne!(second, first);
    clock.advance(std::time::Duration::from_secs(540));
    let approved = bob
        .approve_puk_release(approval("in-time", &second, SERIAL))
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    // The approval has its own ten minutes.
    assert_eq!(
        approved.expires_at,
        (clock.now() + time::Duration::minutes(10)).to_string()
    );
    clock.advance(std::time::Duration::from_secs(600));
    let s = assert_invalid(
        alice.release_puk(ask("too-late")).await,
        Code::FailedPrecondition,
        "PUK_RELEASE_PENDING_APPROVAL",
    );
    let third = metadata(&s, "release_id");
    assert!(third != first && third != second);
    assert!(events(url, "token.release_puk").await.is_empty());
    server.stop().await;
}

/// A certificate's status and reason code as the store keeps them.
async fn stored_status(url: &str, serial: &str) -> (CertificateStatus, Option<i64>) {
    let store = Store::open(url).await.unwrap();
    let c = store.certificate_by_serial(serial).await.unwrap().unwrap();
    store.close().await;
    (c.status, c.revocation_reason)
}

fn serials(done: &pb::CompleteEnrollmentResponse) -> Vec<String> {
    done.certificates
        .iter()
        .map(|c| c.certificate.as_ref().unwrap().serial.clone())
        .collect()
}

/// Issue 13, item 4: a forgotten token's certificates go on hold; a temporary token (profile
/// `temporary-piv-login`, 7-day certificate) is enrolled only for a person with a forgotten
/// token, one at a time; reinstating the forgotten token releases only the holds its move to
/// `forgotten` made and retires the temporary token; declared lost instead, its certificates are
/// revoked (held ones included) and the temporary token stays.
async fn forgotten_token_and_its_temporary_token(url: &str) {
    use pb::TokenState as T;
    use tessera::store::CertificateStatus as C;
    const ORIGINAL: u32 = 30_001_700;
    const TEMPORARY: u32 = 30_001_701;
    const SECOND_TEMPORARY: u32 = 30_001_702;
    let original = VirtualCard::start(CardOptions::firmware("5.7.4").serial(ORIGINAL));
    let temporary = VirtualCard::start(CardOptions::firmware("5.7.4").serial(TEMPORARY));
    let second = VirtualCard::start(CardOptions::firmware("5.7.4").serial(SECOND_TEMPORARY));
    let server = Server::start(
        url,
        &[
            original.attestation_root(),
            temporary.attestation_root(),
            second.attestation_root(),
        ],
        Enrollment::default(),
    )
    .await;
    server.create_person("E1700", "").await;
    let mut enroll = server.enrollments().await;
    let mut tokens =
        pb::token_service_client::TokenServiceClient::new(server.channel("helpdesk").await);
    let mut certs = pb::certificate_service_client::CertificateServiceClient::new(
        server.channel("helpdesk").await,
    );
    let (_, first) = enroll_and_confirm(&server, &original, "E1700").await;
    let [login, signing] = <[String; 2]>::try_from(serials(&first)).unwrap();

    // No forgotten token: the temporary profile is refused, naming the profile.
    let mut request = begin_request("E1700", TEMPORARY, "temporary-piv-login");
    request.request_id = "temp-before".into();
    let s = assert_refused(
        url,
        enroll.begin_enrollment(request).await,
        Code::FailedPrecondition,
        "NO_FORGOTTEN_TOKEN",
        2,
    )
    .await;
    assert_eq!(
        s.message(),
        "profile temporary-piv-login is for a temporary token, and person E1700 has no token in state forgotten; mark the forgotten token first (MarkTokenForgotten), or use a profile for a regular token"
    );

    // An operator's hold on the signing certificate, made for another reason.
    certs
        .revoke_certificate(pb::RevokeCertificateRequest {
            request_id: "hold-signing".into(),
            serial: signing.clone(),
            reason: pb::RevocationReason::CertificateHold as i32,
        })
        .await
        .unwrap();

    // MarkTokenForgotten's own refusals: no serial, an unknown one, a reason too long.
    let forgotten_request =
        |request_id: &str, serial: &str, reason: &str| pb::MarkTokenForgottenRequest {
            request_id: request_id.into(),
            serial: serial.into(),
            reason: reason.into(),
        };
    for (request, code, expected) in [
        (
            forgotten_request("forgot-empty", "", ""),
            Code::InvalidArgument,
            "FIELD_REQUIRED",
        ),
        (
            forgotten_request("forgot-unknown", "39999999", ""),
            Code::NotFound,
            "TOKEN_NOT_FOUND",
        ),
        (
            forgotten_request("forgot-long", &ORIGINAL.to_string(), &"x".repeat(1025)),
            Code::InvalidArgument,
            "FIELD_TOO_LONG",
        ),
        (
            forgotten_request("", &ORIGINAL.to_string(), ""),
            Code::InvalidArgument,
            "REQUEST_ID_MISSING",
        ),
    ] {
        assert_invalid(tokens.mark_token_forgotten(request).await, code, expected);
    }

    // Forgotten: the good certificate goes on hold, audited, with a notice.
    let forgotten = tokens
        .mark_token_forgotten(pb::MarkTokenForgottenRequest {
            request_id: "forgot-1".into(),
            serial: ORIGINAL.to_string(),
            reason: "left at home".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(forgotten.state(), T::Forgotten);
    assert_eq!(stored_status(url, &login).await, (C::OnHold, Some(6)));
    assert_eq!(events(url, "token.mark_forgotten").await.len(), 1);
    let store = Store::open(url).await.unwrap();
    let notices = store.notifications().await.unwrap();
    store.close().await;
    assert_eq!(
        notices
            .iter()
            .filter(|n| n.event == "token.forgotten")
            .count(),
        1
    );
    // Not from forgotten: forgotten again, suspend; the hold is the token's, not released alone.
    let s = tokens
        .mark_token_forgotten(pb::MarkTokenForgottenRequest {
            request_id: "forgot-again".into(),
            serial: ORIGINAL.to_string(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str(), s.message()),
        (
            Code::FailedPrecondition,
            "INVALID_STATE_TRANSITION",
            "cannot mark forgotten a token that is forgotten"
        )
    );
    let s = tokens
        .suspend_token(pb::SuspendTokenRequest {
            request_id: "suspend-forgotten".into(),
            serial: ORIGINAL.to_string(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::FailedPrecondition, "INVALID_STATE_TRANSITION")
    );
    let s = certs
        .release_certificate_hold(pb::ReleaseCertificateHoldRequest {
            request_id: "release-login".into(),
            serial: login.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str(), s.message().to_string()),
        (
            Code::FailedPrecondition,
            "HOLD_IS_FROM_PERSON_OR_TOKEN",
            format!(
                "certificate {login} is on hold because its token is forgotten; reinstate the token instead"
            )
        )
    );
    // The forgotten token itself is not enrolled again (it was found: reinstate it).
    let mut request = begin_request("E1700", ORIGINAL, "piv-login");
    request.request_id = "re-enroll-forgotten".into();
    let s = assert_refused(
        url,
        enroll.begin_enrollment(request).await,
        Code::FailedPrecondition,
        "TOKEN_NOT_ENROLLABLE",
        2,
    )
    .await;
    assert_eq!(
        s.message(),
        format!(
            "token {ORIGINAL} is forgotten; it was found: reinstate it (ReinstateToken) instead of enrolling it again"
        )
    );

    // The temporary token: one 9a certificate of 7 days, recorded for the forgotten token.
    let (begin, done) =
        enroll_until_complete(&server, &temporary, "E1700", "temporary-piv-login").await;
    assert_eq!(done.certificates.len(), 1);
    let stand_in = done.certificates[0].certificate.as_ref().unwrap().clone();
    assert_eq!(
        (
            done.certificates[0].slot.as_str(),
            stand_in.profile.as_str()
        ),
        ("9a", "temporary-piv-authentication")
    );
    let (from, to) = (
        tessera::store::Timestamp::parse(&stand_in.not_before).unwrap(),
        tessera::store::Timestamp::parse(&stand_in.not_after).unwrap(),
    );
    assert_eq!(
        to.unix_seconds() - from.unix_seconds(),
        7 * 24 * 3600,
        "{stand_in:?}"
    );
    station_finishes(&temporary, &begin, &done);
    enroll
        .confirm_enrollment(pb::ConfirmEnrollmentRequest {
            request_id: "confirm-temporary".into(),
            enrollment_id: begin.enrollment_id.clone(),
        })
        .await
        .unwrap();
    let shown = tokens
        .get_token(pb::GetTokenRequest {
            serial: TEMPORARY.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(
        (shown.state(), shown.temporary_for.as_str()),
        (T::Active, ORIGINAL.to_string().as_str())
    );
    let begun = events(url, "enrollment.begin").await;
    assert_eq!(
        begun.last().unwrap().1["temporary_for"],
        ORIGINAL.to_string()
    );

    // A second temporary token while this one is in use is refused.
    let mut request = begin_request("E1700", SECOND_TEMPORARY, "temporary-piv-login");
    request.request_id = "temp-second".into();
    let s = assert_refused(
        url,
        enroll.begin_enrollment(request).await,
        Code::FailedPrecondition,
        "TEMPORARY_TOKEN_IN_USE",
        3,
    )
    .await;
    assert_eq!(
        s.message(),
        format!(
            "person E1700 already has temporary token {TEMPORARY} (active) for forgotten token {ORIGINAL}; retire it first (RetireToken, or MarkTokenLost), or reinstate the forgotten token"
        )
    );

    // HR suspends and reinstates the person: the forgotten token's hold stays.
    let mut hr = DirectoryServiceClient::new(server.channel("hr").await);
    hr.suspend_person(pb::SuspendPersonRequest {
        request_id: "suspend-E1700".into(),
        external_id: "E1700".into(),
        reason: String::new(),
    })
    .await
    .unwrap();
    hr.reinstate_person(pb::ReinstatePersonRequest {
        request_id: "reinstate-E1700".into(),
        external_id: "E1700".into(),
        reason: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(stored_status(url, &login).await, (C::OnHold, Some(6)));
    assert_eq!(stored_status(url, &stand_in.serial).await, (C::Good, None));
    // (Reinstating a person releases every other hold of theirs, the operator's on the signing
    // certificate too, as before forgotten tokens existed; the operator holds it again.)
    assert_eq!(stored_status(url, &signing).await, (C::Good, None));
    certs
        .revoke_certificate(pb::RevokeCertificateRequest {
            request_id: "hold-signing-again".into(),
            serial: signing.clone(),
            reason: pb::RevocationReason::CertificateHold as i32,
        })
        .await
        .unwrap();

    // Found: reinstated. Its forgotten hold is released, the operator's hold stays, and the
    // temporary token is retired (its certificate revoked, cessationOfOperation).
    let reinstated = tokens
        .reinstate_token(pb::ReinstateTokenRequest {
            request_id: "found".into(),
            serial: ORIGINAL.to_string(),
            reason: "found in the car".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(reinstated.state(), T::Active);
    assert_eq!(stored_status(url, &login).await, (C::Good, None));
    assert_eq!(stored_status(url, &signing).await, (C::OnHold, Some(6)));
    assert_eq!(token_state(&server, TEMPORARY).await.0, T::Retired);
    assert_eq!(
        stored_status(url, &stand_in.serial).await,
        (C::Revoked, Some(5))
    );
    let retired = events(url, "token.retire").await;
    assert_eq!(
        retired.last().unwrap().1["reason"],
        format!("temporary token for token {ORIGINAL}, which was found and reinstated")
    );

    // Forgotten again, a new temporary token, then declared lost: every certificate of the
    // original revoked (keyCompromise), the held ones included; the temporary token stays.
    tokens
        .mark_token_forgotten(pb::MarkTokenForgottenRequest {
            request_id: "forgot-2".into(),
            serial: ORIGINAL.to_string(),
            reason: String::new(),
        })
        .await
        .unwrap();
    let (begin, done) =
        enroll_until_complete(&server, &second, "E1700", "temporary-piv-login").await;
    station_finishes(&second, &begin, &done);
    enroll
        .confirm_enrollment(pb::ConfirmEnrollmentRequest {
            request_id: "confirm-second".into(),
            enrollment_id: begin.enrollment_id.clone(),
        })
        .await
        .unwrap();
    let second_serial = serials(&done).remove(0);
    tokens
        .mark_token_lost(pb::MarkTokenLostRequest {
            request_id: "lost".into(),
            serial: ORIGINAL.to_string(),
            reason: "not found after all".into(),
        })
        .await
        .unwrap();
    assert_eq!(stored_status(url, &login).await, (C::Revoked, Some(1)));
    assert_eq!(stored_status(url, &signing).await, (C::Revoked, Some(1)));
    assert_eq!(token_state(&server, SECOND_TEMPORARY).await.0, T::Active);
    assert_eq!(stored_status(url, &second_serial).await, (C::Good, None));
    // Lost is final: reinstating it is refused.
    let s = tokens
        .reinstate_token(pb::ReinstateTokenRequest {
            request_id: "found-too-late".into(),
            serial: ORIGINAL.to_string(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::FailedPrecondition, "INVALID_STATE_TRANSITION")
    );
    server.stop().await;
}

fn confirm_rotation(
    request_id: &str,
    serial: u32,
    generation: i64,
) -> pb::ConfirmPukRotationRequest {
    pb::ConfirmPukRotationRequest {
        request_id: request_id.into(),
        token_serial: serial.to_string(),
        generation,
    }
}

/// Token `serial`'s pending PUK rotation as stored: generation and wrapped PUK.
async fn stored_rotation(url: &str, serial: u32) -> Option<(i64, Vec<u8>)> {
    use sqlx::Row;
    let pool = database_writer(url).await;
    let row = sqlx::query(
        "SELECT r.generation, r.puk_wrapped FROM puk_rotations r \
         JOIN tokens t ON t.id = r.token_id WHERE t.serial = $1",
    )
    .bind(serial.to_string())
    .fetch_optional(&pool)
    .await
    .unwrap();
    pool.close().await;
    row.map(|r| (r.get(0), r.get(1)))
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Issue 13, item 5: ReleasePuk hands out a new PUK with the escrowed one, the same one again
/// until ConfirmPukRotation (marked resumed); only the certificate it was last handed to
/// confirms it, and only its generation; once confirmed it is the escrowed PUK, the old one is
/// never released again (not even to a repeat), and the next release brings a fresh new PUK.
/// Wrapped, never in the clear; a rotation blob moved into another place does not unwrap.
async fn puk_rotation_is_confirmed_once_and_refusals_name_their_reason(url: &str) {
    use pb::token_service_client::TokenServiceClient;
    const SERIAL: u32 = 30_001_800;
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    let server = Server::start(url, &[card.attestation_root()], Enrollment::default()).await;
    server.create_person("E1800", "").await;
    let (begin, _) = enroll_and_confirm(&server, &card, "E1800").await;
    let (mut desk_a, channel_a) = desk(&server, "desk-a").await;
    let (mut desk_b, _) = desk(&server, "desk-b").await;

    let first = desk_a
        .release_puk(release_request("rot-r1", SERIAL))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.puk, begin.new_puk);
    assert_eq!(first.new_puk.len(), 8);
    assert!(first.new_puk.bytes().all(|b| b.is_ascii_digit()));
    assert_ne!(first.new_puk, first.puk);
    assert!(!first.new_puk_resumed);
    let generation = first.new_puk_generation;
    // Wrapped, never in the clear.
    let (stored_generation, wrapped) = stored_rotation(url, SERIAL).await.unwrap();
    assert_eq!(stored_generation, generation);
    assert!(!contains(&wrapped, &first.new_puk));
    let (_, _, _, escrowed) = stored_credentials(url, SERIAL).await;
    assert!(!contains(&escrowed, &first.puk));
    // Until confirmed, every release hands out the same new PUK again, marked resumed.
    let again = desk_a
        .release_puk(release_request("rot-r2", SERIAL))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            again.puk.as_str(),
            again.new_puk.as_str(),
            again.new_puk_generation,
            again.new_puk_resumed
        ),
        (first.puk.as_str(), first.new_puk.as_str(), generation, true)
    );
    let released = events(url, "token.release_puk").await;
    assert_eq!(
        released.last().unwrap().1["puk_rotation"],
        serde_json::json!({"generation": generation, "resumed": true})
    );

    // Refusals: field missing, unknown token, another certificate, another generation.
    assert_invalid(
        desk_a
            .confirm_puk_rotation(confirm_rotation("rot-c0", SERIAL, 0))
            .await,
        Code::InvalidArgument,
        "FIELD_REQUIRED",
    );
    assert_invalid(
        desk_a
            .confirm_puk_rotation(confirm_rotation("rot-c1", 39_999_999, generation))
            .await,
        Code::NotFound,
        "TOKEN_NOT_FOUND",
    );
    let s = assert_refused(
        url,
        desk_b
            .confirm_puk_rotation(confirm_rotation("rot-c2", SERIAL, generation))
            .await,
        Code::PermissionDenied,
        "PUK_ROTATION_OF_ANOTHER_CALLER",
        2,
    )
    .await;
    assert_eq!(
        s.message(),
        format!(
            "the pending PUK of token {SERIAL} was last handed to another client certificate; only the station that received it (ReleasePuk) confirms it"
        )
    );
    let s = assert_refused(
        url,
        desk_a
            .confirm_puk_rotation(confirm_rotation("rot-c3", SERIAL, generation + 7))
            .await,
        Code::FailedPrecondition,
        "PUK_ROTATION_STALE",
        2,
    )
    .await;
    assert_eq!(
        s.message(),
        format!(
            "generation {} is not the pending PUK rotation of token {SERIAL} (that is generation {generation}); confirm the generation ReleasePuk answered last",
            generation + 7
        )
    );
    let mut tokens = TokenServiceClient::new(channel_a.clone());
    tokens
        .suspend_token(pb::SuspendTokenRequest {
            request_id: "rot-suspend".into(),
            serial: SERIAL.to_string(),
            reason: String::new(),
        })
        .await
        .unwrap();
    assert_refused(
        url,
        desk_a
            .confirm_puk_rotation(confirm_rotation("rot-c4", SERIAL, generation))
            .await,
        Code::FailedPrecondition,
        "TOKEN_NOT_ACTIVE",
        2,
    )
    .await;
    tokens
        .reinstate_token(pb::ReinstateTokenRequest {
            request_id: "rot-reinstate".into(),
            serial: SERIAL.to_string(),
            reason: String::new(),
        })
        .await
        .unwrap();
    // Nothing of that changed the escrowed PUK.
    assert_eq!(stored_credentials(url, SERIAL).await.3, escrowed);

    // Confirmed: the new PUK is the escrowed one; a repeat gets the same answer.
    let confirmed = desk_a
        .confirm_puk_rotation(confirm_rotation("rot-c5", SERIAL, generation))
        .await
        .unwrap()
        .into_inner();
    assert!(confirmed.generation > generation, "{confirmed:?}");
    assert_eq!(
        desk_a
            .confirm_puk_rotation(confirm_rotation("rot-c5", SERIAL, generation))
            .await
            .unwrap()
            .into_inner(),
        confirmed
    );
    assert_eq!(stored_rotation(url, SERIAL).await, None);
    let rotated = events(url, "token.puk_rotate").await;
    assert_eq!(rotated.len(), 1);
    assert_eq!(rotated[0].1["generation"], confirmed.generation);
    assert_eq!(rotated[0].1["rotation_generation"], generation);
    let s = assert_refused(
        url,
        desk_a
            .confirm_puk_rotation(confirm_rotation("rot-c6", SERIAL, generation))
            .await,
        Code::FailedPrecondition,
        "PUK_ROTATION_NOT_PENDING",
        2,
    )
    .await;
    assert_eq!(
        s.message(),
        format!(
            "token {SERIAL} has no PUK rotation waiting for confirmation (confirmed already, or discarded by a new enrollment); run `tessera station unblock` again"
        )
    );
    // The old PUK is never released again: not to a repeat of an earlier release…
    let s = assert_refused(
        url,
        desk_a.release_puk(release_request("rot-r2", SERIAL)).await,
        Code::FailedPrecondition,
        "REQUEST_ID_EXPIRED",
        2,
    )
    .await;
    assert!(
        s.message().contains("or its PUK was rotated"),
        "{}",
        s.message()
    );
    // …and a fresh release hands out the new one, with a fresh rotation.
    let next = desk_a
        .release_puk(release_request("rot-r3", SERIAL))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.puk, first.new_puk);
    assert_ne!(next.new_puk, first.new_puk);
    assert!(!next.new_puk_resumed);
    assert!(next.new_puk_generation > confirmed.generation);
    let (_, _, _, escrowed) = stored_credentials(url, SERIAL).await;
    assert!(!contains(&escrowed, &next.puk));

    // A database writer moves the escrowed PUK's blob into the rotation: it does not unwrap
    // there (another field), and nothing is released.
    let pool = database_writer(url).await;
    sqlx::query(
        "UPDATE puk_rotations SET puk_wrapped = (SELECT c.puk_wrapped FROM token_credentials c \
         WHERE c.token_id = puk_rotations.token_id), generation = \
         (SELECT c.generation FROM token_credentials c WHERE c.token_id = puk_rotations.token_id)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let s = assert_refused(
        url,
        desk_a.release_puk(release_request("rot-r4", SERIAL)).await,
        Code::DataLoss,
        "CREDENTIALS_TAMPERED",
        2,
    )
    .await;
    assert!(!s.message().contains(&next.puk));

    // A new enrollment of the token (which resets it) discards the pending rotation.
    let mut enroll = server.enrollments().await;
    let mut request = begin_request("E1800", SERIAL, "piv-login");
    request.request_id = "rot-re-enroll".into();
    let reenrolling = enroll.begin_enrollment(request).await.unwrap().into_inner();
    abort(&server, &reenrolling.enrollment_id).await;
    assert_eq!(stored_rotation(url, SERIAL).await, None);
    assert_refused(
        url,
        desk_a
            .confirm_puk_rotation(confirm_rotation("rot-c7", SERIAL, next.new_puk_generation))
            .await,
        Code::FailedPrecondition,
        "PUK_ROTATION_NOT_PENDING",
        2,
    )
    .await;
    server.stop().await;
}
