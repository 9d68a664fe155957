//! IssueFromCsr with a YubiKey attestation carried in the CSR (issue 16): the slot certificate
//! under `.3.1` (or the older `.3.11`) and the device certificate under `.3.2` in the
//! extensionRequest, as Yubico's and Windows tools write them. The chains are forged under a
//! throwaway root the server's `[enrollment]` trusts, with CSRs made by rcgen (EC) and with an
//! OpenSSL-made RSA key; and keys generated, attested and signed on the virtual card
//! (`tessera-vpiv` over pcscd), RSA and EC. On SQLite and PostgreSQL.
#![allow(clippy::unwrap_used)]
use crate::attest::forge::{ForgedPki, SlotSpec, der_integer, yubico_oid};
use crate::harness;

use harness::ca::TestCa;
use harness::config::{Enrollment, ServerToml};
use harness::pki::TestPki;
use harness::server::ServerTask;
use harness::softhsm::SoftHsmToken;
use std::collections::HashMap;
use tessera::protocol::pb;
use tessera::protocol::pb::certificate_service_client::CertificateServiceClient;
use tessera::protocol::pb::directory_service_client::DirectoryServiceClient;
use tessera::protocol::pb::token_service_client::TokenServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

on_both_databases!(
    attested_csrs_issue_and_every_failed_attestation_is_refused,
    virtual_card_csrs_issue_in_both_forms_rsa_and_ec,
);

const ATTESTED_OID: &str = "1.3.6.1.4.1.32473.1.1.1";
const UNATTESTED_OID: &str = "1.3.6.1.4.1.32473.1.1.2";

struct Server {
    _dir: tempfile::TempDir,
    _hsm: SoftHsmToken,
    pki: TestPki,
    running: ServerTask,
}

impl Server {
    async fn start(url: &str, forged: &ForgedPki) -> Server {
        Server::start_trusting(url, forged.root_pem.as_bytes(), None).await
    }

    /// A server whose `[enrollment]` trusts only `root_pem`, with `policy` (TOML) when given.
    async fn start_trusting(url: &str, root_pem: &[u8], policy: Option<&str>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::init(&dir.path().join("ca"));
        ca.init_wrapping_key();
        let TestCa {
            token: hsm,
            data_dir,
            ..
        } = ca;
        let root = dir.path().join("attestation-root.pem");
        std::fs::write(&root, root_pem).unwrap();
        let attestation_policy = policy.map(|text| {
            let path = dir.path().join("attestation-policy.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let pki = TestPki::new();
        let config = ServerToml::new(url)
            .with_ca(&hsm.config_path, &data_dir)
            .with_enrollment(Enrollment {
                attestation_roots: vec![root],
                trust_yubico_roots: Some(false),
                attestation_policy,
                ..Enrollment::default()
            });
        let config_path = config.write(dir.path(), &pki);
        let running = ServerTask::start(&config_path).await;
        Server {
            _dir: dir,
            _hsm: hsm,
            pki,
            running,
        }
    }

    async fn channel(&self, role: &str) -> Channel {
        let client = self.pki.client(role);
        harness::server::connect(self.running.addr, &self.pki.ca_pem, Some(&client)).await
    }
}

/// Which OID carries the slot certificate in the CSR.
#[derive(Clone, Copy)]
enum Form {
    /// `1.3.6.1.4.1.41482.3.1`
    Current,
    /// `1.3.6.1.4.1.41482.3.11` (older tools)
    Old,
}

fn p256_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate().unwrap()
}

/// An RSA-2048 key made by OpenSSL (ring, under rcgen, does not generate RSA keys).
fn rsa_key() -> rcgen::KeyPair {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl genpkey failed");
    rcgen::KeyPair::from_pem_and_sign_algo(
        std::str::from_utf8(&out.stdout).unwrap(),
        &rcgen::PKCS_RSA_SHA256,
    )
    .unwrap()
}

fn spki_of(key: &rcgen::KeyPair) -> Vec<u8> {
    use rcgen::PublicKeyData;
    key.subject_public_key_info()
}

fn slot_spec(serial: u32, attested_spki: Vec<u8>) -> SlotSpec {
    SlotSpec {
        serial: Some(der_integer(serial)),
        subject_spki_der: Some(attested_spki),
        ..SlotSpec::typical()
    }
}

/// A CSR signed by `key`, carrying `slot` and (when given) `device` as extensions.
fn attested_csr(
    key: &rcgen::KeyPair,
    cn: &str,
    form: Form,
    slot: &[u8],
    device: Option<&[u8]>,
) -> String {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let slot_oid = match form {
        Form::Current => yubico_oid(1),
        Form::Old => yubico_oid(11),
    };
    p.custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            &slot_oid,
            slot.to_vec(),
        ));
    if let Some(device) = device {
        p.custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &yubico_oid(2),
                device.to_vec(),
            ));
    }
    p.serialize_request(key).unwrap().pem().unwrap()
}

fn plain_csr(key: &rcgen::KeyPair, cn: &str) -> String {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.serialize_request(key).unwrap().pem().unwrap()
}

fn request(
    id: &str,
    csr: &str,
    profile: &str,
    person: &str,
    token_serial: &str,
) -> pb::IssueFromCsrRequest {
    pb::IssueFromCsrRequest {
        request_id: id.into(),
        csr: csr.as_bytes().to_vec(),
        profile: profile.into(),
        person_external_id: person.into(),
        token_serial: token_serial.into(),
    }
}

/// Code, reason, fields and ErrorInfo metadata of a refusal.
fn refusal(s: &Status) -> (Code, String, Vec<String>, HashMap<String, String>) {
    let d = s.get_error_details();
    (
        s.code(),
        d.error_info().map(|i| i.reason.clone()).unwrap_or_default(),
        d.bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default(),
        d.error_info()
            .map(|i| i.metadata.clone())
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

/// The hwSerialNum of the HardwareModuleName SAN (RFC 4108), when there is one.
fn hardware_module_serial(der: &[u8]) -> Option<String> {
    let cert = parse(der);
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::OtherName(oid, value)
            if oid.to_id_string() == "1.3.6.1.5.5.7.8.4" =>
        {
            // [0] { SEQUENCE { OID hwType, OCTET STRING hwSerialNum } }: the serial is the
            // value's last TLV.
            let octets = value.iter().rposition(|b| *b == 0x04)?;
            let len = usize::from(*value.get(octets + 1)?);
            let serial = value.get(octets + 2..octets + 2 + len)?;
            Some(String::from_utf8_lossy(serial).into_owned())
        }
        _ => None,
    })
}

async fn create_person(server: &Server, id: &str) {
    let mut d = DirectoryServiceClient::new(server.channel("hr").await);
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

async fn token_holder(server: &Server, serial: &str) -> Option<String> {
    let mut tokens = TokenServiceClient::new(server.channel("helpdesk").await);
    let token = tokens
        .get_token(pb::GetTokenRequest {
            serial: serial.into(),
        })
        .await
        .ok()?
        .into_inner()
        .token?;
    Some(token.person_external_id)
}

async fn attested_csrs_issue_and_every_failed_attestation_is_refused(url: &str) {
    let forged = ForgedPki::new();
    let server = Server::start(url, &forged).await;
    for person in ["alice", "bob", "carol", "dave"] {
        create_person(&server, person).await;
    }
    let mut certs = CertificateServiceClient::new(server.channel("helpdesk").await);

    // Both forms, EC and RSA, under an attested-only profile (piv-authentication) and one that
    // also takes unattested keys (tls-client): the attested OID, and the serial SAN where the
    // profile binds the token.
    let cases = [
        (
            "alice",
            Form::Current,
            p256_key(),
            10_000_001_u32,
            "piv-authentication",
        ),
        ("bob", Form::Old, p256_key(), 10_000_002, "tls-client"),
        ("carol", Form::Current, rsa_key(), 10_000_003, "tls-client"),
        (
            "dave",
            Form::Old,
            rsa_key(),
            10_000_004,
            "piv-authentication",
        ),
    ];
    for (person, form, key, serial, profile) in &cases {
        let slot = forged.slot(&slot_spec(*serial, spki_of(key)));
        let csr = attested_csr(key, person, *form, &slot, Some(&forged.device_der));
        // alice names her token; the others leave it to the attestation.
        let named = if *person == "alice" {
            serial.to_string()
        } else {
            String::new()
        };
        let issued = certs
            .issue_from_csr(request(
                &format!("att-{person}"),
                &csr,
                profile,
                person,
                &named,
            ))
            .await
            .unwrap_or_else(|e| panic!("{person}: {e:?}"))
            .into_inner()
            .certificate
            .unwrap();
        let oids = policies(&issued.der);
        assert!(
            oids.iter().any(|o| o == ATTESTED_OID) && !oids.iter().any(|o| o == UNATTESTED_OID),
            "{person}: {oids:?}"
        );
        // The serial SAN as the profile says (bind_hardware_module), as enrollment does:
        // piv-authentication binds the token, tls-client does not.
        let bound = (*profile == "piv-authentication").then(|| serial.to_string());
        assert_eq!(hardware_module_serial(&issued.der), bound, "{person}");
        assert_eq!(issued.token_serial, serial.to_string(), "{person}");
        assert_eq!(
            token_holder(&server, &serial.to_string()).await.as_deref(),
            Some(*person),
            "{person}: the attested token is registered as the person's"
        );
    }

    // A second attested CSR for alice's registered token is checked against it and issues.
    let key = p256_key();
    let slot = forged.slot(&slot_spec(10_000_001, spki_of(&key)));
    let csr = attested_csr(
        &key,
        "alice",
        Form::Current,
        &slot,
        Some(&forged.device_der),
    );
    certs
        .issue_from_csr(request("att-alice-2", &csr, "tls-client", "alice", ""))
        .await
        .unwrap();
    // … but not for bob: the token is alice's.
    let csr = attested_csr(&key, "bob", Form::Current, &slot, Some(&forged.device_der));
    let err = certs
        .issue_from_csr(request("att-bob-alices", &csr, "tls-client", "bob", ""))
        .await
        .unwrap_err();
    assert_eq!(refusal(&err).1, "TOKEN_OF_ANOTHER_PERSON");

    let refused = |id: &str, csr: String, profile: &str, token: &str| {
        let mut certs = certs.clone();
        let req = request(id, &csr, profile, "alice", token);
        async move { refusal(&certs.issue_from_csr(req).await.unwrap_err()) }
    };
    let meta = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);

    // An attestation for another key than the CSR's.
    let key = p256_key();
    let other = p256_key();
    let slot = forged.slot(&slot_spec(10_000_001, spki_of(&other)));
    let csr = attested_csr(
        &key,
        "alice",
        Form::Current,
        &slot,
        Some(&forged.device_der),
    );
    assert_eq!(
        refused("r-key", csr, "piv-authentication", "").await,
        (
            Code::InvalidArgument,
            "ATTESTATION_KEY_MISMATCH".into(),
            vec!["csr".into()],
            meta("attestation_code", "public-key-mismatch")
        )
    );

    // Another serial than the request's token_serial.
    let slot = forged.slot(&slot_spec(10_000_001, spki_of(&key)));
    let csr = attested_csr(&key, "alice", Form::Old, &slot, Some(&forged.device_der));
    assert_eq!(
        refused("r-serial", csr, "piv-authentication", "10000009").await,
        (
            Code::InvalidArgument,
            "ATTESTATION_FROM_ANOTHER_TOKEN".into(),
            vec!["token_serial".into()],
            meta("attestation_code", "serial-mismatch")
        )
    );

    // A chain under a root the server does not trust (a real YubiKey 5 chain; this server
    // trusts only the forged root) — refused, not issued as unattested, even under a profile
    // that takes unattested keys.
    let sample = |stem: &str| {
        let path = format!(
            "{}/tests/data/attestation/samples/fw5.4.3-p256-9a/{stem}.pem",
            env!("CARGO_MANIFEST_DIR")
        );
        let pem = std::fs::read(path).unwrap();
        x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents
    };
    let csr = attested_csr(
        &key,
        "alice",
        Form::Current,
        &sample("slot"),
        Some(&sample("device")),
    );
    assert_eq!(
        refused("r-root", csr, "tls-client", "").await,
        (
            Code::InvalidArgument,
            "ATTESTATION_INVALID".into(),
            vec!["csr".into()],
            meta("attestation_code", "unknown-root")
        )
    );
    // A forged chain under another root of the trusted root's name: its signature fails.
    let stranger = ForgedPki::new();
    let slot = stranger.slot(&slot_spec(10_000_001, spki_of(&key)));
    let csr = attested_csr(&key, "alice", Form::Old, &slot, Some(&stranger.device_der));
    assert_eq!(
        refused("r-forged", csr, "tls-client", "").await,
        (
            Code::InvalidArgument,
            "ATTESTATION_INVALID".into(),
            vec!["csr".into()],
            meta("attestation_code", "chain-signature-invalid")
        )
    );

    // The attestation policy (shipped policy: PIN at least once) refuses PIN policy never.
    let spec = SlotSpec {
        policy: Some(vec![1, 1]),
        ..slot_spec(10_000_001, spki_of(&key))
    };
    let csr = attested_csr(
        &key,
        "alice",
        Form::Current,
        &forged.slot(&spec),
        Some(&forged.device_der),
    );
    assert_eq!(
        refused("r-policy", csr, "tls-client", "").await,
        (
            Code::FailedPrecondition,
            "ATTESTATION_POLICY_DENIED".into(),
            vec!["csr".into()],
            meta("policy_reasons", "pin-policy-below-minimum")
        )
    );

    // A slot certificate without the device certificate it chains to.
    let slot = forged.slot(&slot_spec(10_000_001, spki_of(&key)));
    let csr = attested_csr(&key, "alice", Form::Current, &slot, None);
    assert_eq!(
        refused("r-no-device", csr, "tls-client", "").await,
        (
            Code::InvalidArgument,
            "CSR_ATTESTATION_MALFORMED".into(),
            vec!["csr".into()],
            HashMap::new()
        )
    );

    // Without attestation: refused by the attested-only profile, issued as unattested by the
    // other.
    let csr = plain_csr(&key, "alice");
    let (code, reason, fields, _) = refused("r-plain", csr.clone(), "piv-authentication", "").await;
    assert_eq!(
        (code, reason.as_str(), fields),
        (
            Code::FailedPrecondition,
            "PROFILE_REQUIRES_ATTESTATION",
            vec!["profile".to_string()]
        )
    );
    let issued = certs
        .issue_from_csr(request("plain", &csr, "tls-client", "alice", ""))
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    let oids = policies(&issued.der);
    assert!(
        oids.iter().any(|o| o == UNATTESTED_OID) && !oids.iter().any(|o| o == ATTESTED_OID),
        "{oids:?}"
    );
    assert_eq!(hardware_module_serial(&issued.der), None);
    server.running.stop().await;
}

/// `tessera ca sign-csr` has no attestation trust or policy: it refuses a CSR that carries an
/// attestation (before opening the HSM) rather than certify its key as unattested.
#[test]
fn ca_sign_csr_refuses_an_attested_csr() {
    let forged = ForgedPki::new();
    let dir = tempfile::tempdir().unwrap();
    let key = p256_key();
    let slot = forged.slot(&slot_spec(10_000_001, spki_of(&key)));
    let csr_path = dir.path().join("attested.csr");
    std::fs::write(
        &csr_path,
        attested_csr(&key, "svc", Form::Old, &slot, Some(&forged.device_der)),
    )
    .unwrap();
    let missing = dir.path().join("no-such");
    let (code, _out, err) = harness::binary::tessera(
        &[
            "ca",
            "sign-csr",
            "--hsm-config",
            missing.to_str().unwrap(),
            "--data-dir",
            missing.to_str().unwrap(),
            "--profile",
            "tls-client",
            "--csr",
            csr_path.to_str().unwrap(),
            "--offline-ceremony",
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains(
            "the CSR carries a YubiKey attestation (extensionRequest 1.3.6.1.4.1.41482.3.11); \
             `ca sign-csr` does not verify attestations, so it refuses rather than certify the \
             key as unattested; submit it with IssueFromCsr to a server with [enrollment] configured"
        ),
        "{err}"
    );
}

/// DER: tag, definite length, content.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend([0x81, len as u8]);
    } else {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
    out
}

fn oid(dotted: &str) -> Vec<u8> {
    use x509_cert::der::Encode as _;
    x509_cert::der::asn1::ObjectIdentifier::new_unwrap(dotted)
        .to_der()
        .unwrap()
}

/// A PKCS#10 request for the key in slot 9a of the virtual card, signed by the card, carrying
/// the card's slot attestation (under `slot_oid`) and F9 certificate (`.3.2`) in its
/// extensionRequest. Made the way a script around yubico-piv-tool's generate / attest /
/// read-certificate f9 / sign actions would, with Tessera's own PIV driver talking to the card
/// over PC/SC in their place (neither yubico-piv-tool nor ykman writes these extensions itself).
fn card_csr(
    token: &mut tessera::piv::PivToken,
    algorithm: yubikey::piv::AlgorithmId,
    slot_oid: &str,
    cn: &str,
) -> String {
    use sha2::Digest as _;
    use x509_cert::der::Encode as _;
    use yubikey::piv::{AlgorithmId, SlotId};
    let spki = token
        .generate(
            SlotId::Authentication,
            algorithm,
            yubikey::PinPolicy::Once,
            yubikey::TouchPolicy::Never,
        )
        .unwrap()
        .to_der()
        .unwrap();
    let slot = token.attest(SlotId::Authentication).unwrap();
    let device = token.attestation_certificate().unwrap();
    let extension = |id: &str, value: &[u8]| tlv(0x30, &[oid(id), tlv(0x04, value)].concat());
    let extensions = tlv(
        0x30,
        &[
            extension(slot_oid, &slot),
            extension("1.3.6.1.4.1.41482.3.2", &device),
        ]
        .concat(),
    );
    let extension_request = tlv(
        0x30,
        &[oid("1.2.840.113549.1.9.14"), tlv(0x31, &extensions)].concat(),
    );
    let name = tlv(
        0x30,
        &tlv(
            0x31,
            &tlv(0x30, &[oid("2.5.4.3"), tlv(0x0c, cn.as_bytes())].concat()),
        ),
    );
    let info = tlv(
        0x30,
        &[tlv(0x02, &[0]), name, spki, tlv(0xa0, &extension_request)].concat(),
    );
    let digest = sha2::Sha256::digest(&info);
    token
        .verify_pin(&tessera::piv::Secret::new(b"123456".to_vec()))
        .unwrap();
    let (algorithm_id, signature) = match algorithm {
        AlgorithmId::Rsa2048 => {
            // EMSA-PKCS1-v1_5 with SHA-256: the card signs the padded block.
            let digest_info = [
                hex::decode("3031300d060960864801650304020105000420").unwrap(),
                digest.to_vec(),
            ]
            .concat();
            let mut block = vec![0x00, 0x01];
            block.resize(256 - digest_info.len() - 1, 0xff);
            block.push(0x00);
            block.extend(digest_info);
            (
                tlv(
                    0x30,
                    &[oid("1.2.840.113549.1.1.11"), vec![0x05, 0x00]].concat(),
                ),
                token
                    .sign(SlotId::Authentication, algorithm, &block)
                    .unwrap(),
            )
        }
        _ => (
            tlv(0x30, &oid("1.2.840.10045.4.3.2")),
            token
                .sign(SlotId::Authentication, algorithm, &digest)
                .unwrap(),
        ),
    };
    let csr = tlv(
        0x30,
        &[
            info,
            algorithm_id,
            tlv(0x03, &[&[0u8][..], &signature].concat()),
        ]
        .concat(),
    );
    let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&csr);
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE REQUEST-----\n");
    pem
}

/// The virtual card (pcscd + vpcd + tessera-vpiv): keys generated on it, attested by it, CSRs
/// signed by it in both extension forms, RSA and EC, issue with the attested OID and the serial
/// SAN, and the card is registered as the person's token.
async fn virtual_card_csrs_issue_in_both_forms_rsa_and_ec(url: &str) {
    use harness::vpcd::{CardOptions, VirtualCard};
    use yubikey::piv::AlgorithmId;
    const SERIAL: u32 = 20_202_020;
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(SERIAL));
    let root = std::fs::read(card.attestation_root()).unwrap();
    // The card's form factor is not what the shipped policy expects of a person's token.
    let server = Server::start_trusting(url, &root, Some("minimum_pin_policy = \"once\"\n")).await;
    create_person(&server, "erin").await;
    let mut certs = CertificateServiceClient::new(server.channel("helpdesk").await);
    let mut token = tessera::piv::PivToken::open(Some(card.reader_name())).unwrap();
    for (n, (algorithm, slot_oid)) in [
        (AlgorithmId::EccP256, "1.3.6.1.4.1.41482.3.1"),
        (AlgorithmId::EccP256, "1.3.6.1.4.1.41482.3.11"),
        (AlgorithmId::Rsa2048, "1.3.6.1.4.1.41482.3.1"),
        (AlgorithmId::Rsa2048, "1.3.6.1.4.1.41482.3.11"),
    ]
    .into_iter()
    .enumerate()
    {
        // Signing in the previous round ended the management key's authentication.
        token
            .authenticate(&tessera::piv::ManagementKey {
                algorithm: yubikey::MgmAlgorithmId::Aes192,
                key: tessera::piv::Secret::new(
                    [
                        1u8, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
                    ]
                    .to_vec(),
                ),
            })
            .unwrap();
        let csr = card_csr(&mut token, algorithm, slot_oid, "erin");
        let issued = certs
            .issue_from_csr(request(
                &format!("card-{n}"),
                &csr,
                "piv-authentication",
                "erin",
                "",
            ))
            .await
            .unwrap_or_else(|e| panic!("{algorithm:?} {slot_oid}: {e:?}"))
            .into_inner()
            .certificate
            .unwrap();
        assert!(
            policies(&issued.der).iter().any(|o| o == ATTESTED_OID),
            "{algorithm:?} {slot_oid}"
        );
        assert_eq!(
            hardware_module_serial(&issued.der),
            Some(SERIAL.to_string()),
            "{algorithm:?} {slot_oid}"
        );
        assert_eq!(issued.token_serial, SERIAL.to_string());
    }
    assert_eq!(
        token_holder(&server, &SERIAL.to_string()).await.as_deref(),
        Some("erin")
    );
    server.running.stop().await;
}
