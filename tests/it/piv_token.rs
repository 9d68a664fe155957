//! The `piv` token driver against a real PC/SC stack: pcscd + vpcd + `tessera-vpiv`.
//! Run under `scripts/with-pcscd.sh` (scripts/test.sh does).

use crate::harness;

use harness::vpcd::{CardOptions, VirtualCard};
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use sha2::Digest as _;
use tessera::piv::{ManagementKey, PivError, PivToken, Secret};
use x509_cert::der::{Decode as _, Encode as _};
use yubikey::piv::{AlgorithmId, SlotId};
use yubikey::{MgmAlgorithmId, PinPolicy, TouchPolicy};

const DEFAULT_MGM_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];

fn default_key(algorithm: MgmAlgorithmId) -> ManagementKey {
    ManagementKey {
        algorithm,
        key: Secret::new(DEFAULT_MGM_KEY.to_vec()),
    }
}

fn secret(s: &str) -> Secret {
    Secret::new(s.as_bytes().to_vec())
}

fn open(card: &VirtualCard) -> PivToken {
    PivToken::open(Some(card.reader_name())).expect("open the virtual card")
}

#[test]
fn reads_serial_firmware_and_counters_without_trying_secrets() {
    let card = VirtualCard::start(CardOptions::firmware("5.4.3").serial(10_203_040));
    let mut token = open(&card);
    let info = token.info().unwrap();
    assert_eq!(info.serial, 10_203_040);
    assert_eq!(info.firmware, "5.4.3");
    assert_eq!(info.pin_tries_left, 3);
    assert_eq!(info.puk_tries_left, Some(3));
    assert!(info.is_factory_fresh(), "{info:?}");
    // Reading the info tried nothing: the counters are untouched.
    assert_eq!(token.info().unwrap().pin_tries_left, 3);
}

#[test]
fn no_token_behind_an_unknown_reader_name() {
    let err = PivToken::open(Some("no reader has this name")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no YubiKey found in a reader matching \"no reader has this name\"; insert the token or check the reader name"
    );
}

#[test]
fn enrollment_steps_with_a_3des_token() {
    let card = VirtualCard::start(CardOptions::firmware("5.4.3").serial(11_111_111));
    let mut token = open(&card);

    // A management key Tessera did not set is refused and named as such.
    let wrong = ManagementKey::generate(MgmAlgorithmId::ThreeDes);
    assert!(matches!(
        token.authenticate(&wrong),
        Err(PivError::ManagementKeyRefused)
    ));

    token
        .authenticate(&default_key(MgmAlgorithmId::ThreeDes))
        .unwrap();
    let per_token = ManagementKey::generate(MgmAlgorithmId::ThreeDes);
    token.set_management_key(&per_token).unwrap();
    drop(token);

    let mut token = open(&card);
    assert!(matches!(
        token.authenticate(&default_key(MgmAlgorithmId::ThreeDes)),
        Err(PivError::ManagementKeyRefused)
    ));
    token.authenticate(&per_token).unwrap();
    assert_eq!(token.info().unwrap().management_key_is_default, Some(false));

    let spki = token
        .generate(
            SlotId::Authentication,
            AlgorithmId::EccP256,
            PinPolicy::Once,
            TouchPolicy::Never,
        )
        .unwrap();
    let attestation = token.attest(SlotId::Authentication).unwrap();
    let device = token.attestation_certificate().unwrap();

    // The attestation names the generated key and chains to the card's root.
    let slot_cert = x509_cert::Certificate::from_der(&attestation).unwrap();
    assert_eq!(
        slot_cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .unwrap(),
        spki.to_der().unwrap()
    );
    let dir = card.dir();
    std::fs::write(dir.join("slot.der"), &attestation).unwrap();
    std::fs::write(dir.join("device.der"), &device).unwrap();
    for f in ["slot", "device"] {
        let out = std::process::Command::new("openssl")
            .args(["x509", "-inform", "DER", "-in"])
            .arg(dir.join(format!("{f}.der")))
            .arg("-out")
            .arg(dir.join(format!("{f}.pem")))
            .status()
            .unwrap();
        assert!(out.success());
    }
    let verify = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(card.attestation_root())
        .arg("-untrusted")
        .arg(dir.join("device.pem"))
        .arg(dir.join("slot.pem"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // A wrong PIN says how many tries remain; the right one lets the key sign.
    assert!(matches!(
        token.verify_pin(&secret("999999")),
        Err(PivError::WrongPin { tries_left: 2 })
    ));
    token.verify_pin(&secret("123456")).unwrap();
    assert_eq!(
        token.info().unwrap().pin_tries_left,
        3,
        "a good PIN resets the counter"
    );
    token.verify_pin(&secret("123456")).unwrap();
    let nonce = [7u8; 32];
    let digest = sha2::Sha256::digest(nonce);
    let signature = token
        .sign(SlotId::Authentication, AlgorithmId::EccP256, &digest)
        .unwrap();
    let key =
        p256::ecdsa::VerifyingKey::from_sec1_bytes(spki.subject_public_key.raw_bytes()).unwrap();
    let signature = p256::ecdsa::Signature::from_der(&signature).unwrap();
    key.verify_prehash(&digest, &signature).unwrap();

    // Certificates written to a slot read back unchanged.
    token.authenticate(&per_token).unwrap();
    token
        .write_certificate(SlotId::Authentication, &attestation)
        .unwrap();
    assert_eq!(
        token.read_certificate(SlotId::Authentication).unwrap(),
        Some(attestation.clone())
    );
    assert_eq!(token.read_certificate(SlotId::Signature).unwrap(), None);
    token.write_new_chuid().unwrap();
}

#[test]
fn pin_and_puk_changes_and_unblock() {
    let card = VirtualCard::start(CardOptions::firmware("5.4.3").serial(12_121_212));
    let mut token = open(&card);
    assert!(matches!(
        token.change_pin(&secret("123456"), &secret("123")),
        Err(PivError::PinLength)
    ));
    assert_eq!(
        token.info().unwrap().pin_tries_left,
        3,
        "a too-short new PIN never reaches the card"
    );
    token
        .change_puk(&secret("12345678"), &secret("87654321"))
        .unwrap();
    assert!(matches!(
        token.change_puk(&secret("12345678"), &secret("11111111")),
        Err(PivError::WrongPuk { tries_left: 2 })
    ));
    token
        .change_pin(&secret("123456"), &secret("24681357"))
        .unwrap();
    for tries_left in [2, 1] {
        match token.verify_pin(&secret("000000")) {
            Err(PivError::WrongPin { tries_left: t }) => assert_eq!(t, tries_left),
            other => panic!("expected a wrong-PIN error, got {other:?}"),
        }
    }
    assert!(matches!(
        token.verify_pin(&secret("000000")),
        Err(PivError::PinBlocked)
    ));
    // Blocked: the driver refuses to try again, even the right PIN, and says why.
    let err = token.verify_pin(&secret("24681357")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the PIN is blocked; unblock it with the PUK (tessera station unblock)"
    );
    token
        .unblock_pin(&secret("87654321"), &secret("13572468"))
        .unwrap();
    token.verify_pin(&secret("13572468")).unwrap();
}

#[test]
fn reset_returns_to_factory_state_and_keeps_the_attestation_key() {
    let card = VirtualCard::start(CardOptions::firmware("5.4.3").serial(13_131_313));
    let mut token = open(&card);
    let device_before = token.attestation_certificate().unwrap();
    token
        .change_pin(&secret("123456"), &secret("11223344"))
        .unwrap();
    token
        .authenticate(&default_key(MgmAlgorithmId::ThreeDes))
        .unwrap();
    token
        .set_management_key(&ManagementKey::generate(MgmAlgorithmId::ThreeDes))
        .unwrap();
    assert!(!token.info().unwrap().is_factory_fresh());

    token.reset().unwrap();
    drop(token);
    let mut token = open(&card);
    let info = token.info().unwrap();
    assert!(info.is_factory_fresh(), "{info:?}");
    assert_eq!(info.pin_tries_left, 3);
    assert_eq!(token.attestation_certificate().unwrap(), device_before);
    token
        .authenticate(&default_key(MgmAlgorithmId::ThreeDes))
        .unwrap();
}

#[test]
fn aes_management_key_on_firmware_5_7() {
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(14_141_414));
    let mut token = open(&card);
    assert_eq!(
        tessera::piv::default_management_algorithm(token.firmware()),
        MgmAlgorithmId::Aes192
    );
    token
        .authenticate(&default_key(MgmAlgorithmId::Aes192))
        .unwrap();
    let per_token = ManagementKey::generate(MgmAlgorithmId::Aes256);
    token.set_management_key(&per_token).unwrap();
    drop(token);
    let mut token = open(&card);
    assert!(matches!(
        token.authenticate(&default_key(MgmAlgorithmId::Aes192)),
        Err(PivError::ManagementKeyRefused)
    ));
    token.authenticate(&per_token).unwrap();
    let spki = token
        .generate(
            SlotId::Signature,
            AlgorithmId::EccP384,
            PinPolicy::Always,
            TouchPolicy::Always,
        )
        .unwrap();
    let attestation = token.attest(SlotId::Signature).unwrap();
    let slot_cert = x509_cert::Certificate::from_der(&attestation).unwrap();
    assert_eq!(
        slot_cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .unwrap(),
        spki.to_der().unwrap()
    );
}

/// What the card attests, Tessera's own verifier accepts — under the card's test root only —
/// and reads the same facts back. This is the join the enrollment server relies on.
#[test]
fn card_attestation_passes_the_attest_verifier() {
    use tessera::attest::{self, AttestationInput, Policy, TrustAnchors};
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(15_151_515));
    let mut token = open(&card);
    token
        .authenticate(&default_key(MgmAlgorithmId::Aes192))
        .unwrap();
    let spki = token
        .generate(
            SlotId::Authentication,
            AlgorithmId::EccP256,
            PinPolicy::Once,
            TouchPolicy::Cached,
        )
        .unwrap();
    let slot = token.attest(SlotId::Authentication).unwrap();
    let device = token.attestation_certificate().unwrap();
    let root = std::fs::read(card.attestation_root()).unwrap();

    // Yubico's roots do not vouch for a virtual card.
    let yubico = TrustAnchors::yubico().unwrap();
    let err = attest::verify(
        &AttestationInput::new(slot.clone(), device.clone()),
        &yubico,
    )
    .unwrap_err();
    assert_eq!(err.code(), "unknown-root");

    let anchors = TrustAnchors::builder()
        .with_anchors(&root, "vpiv test root")
        .unwrap()
        .build()
        .unwrap();
    let verified = attest::verify(
        &AttestationInput::new(slot.clone(), device.clone()).expecting_serial(15_151_515),
        &anchors,
    )
    .unwrap();
    assert_eq!(verified.serial(), Some(15_151_515));
    assert_eq!(verified.firmware().to_string(), "5.7.4");
    assert_eq!(verified.pin_policy().as_str(), "once");
    assert_eq!(verified.touch_policy().as_str(), "cached");
    assert_eq!(verified.slot().id(), 0x9a);
    assert_eq!(verified.key_algorithm().as_str(), "p256");
    verified
        .require_public_key(&spki.to_der().unwrap())
        .unwrap();

    // Another token's serial is refused.
    let err = attest::verify(
        &AttestationInput::new(slot, device).expecting_serial(1),
        &anchors,
    )
    .unwrap_err();
    assert_eq!(err.code(), "serial-mismatch");

    // Firmware 5.7.4 is past EUCLEAK: the shipped example policy allows this key.
    let policy = Policy::from_toml(include_str!("../../config/attestation-policy.toml")).unwrap();
    let decision = policy.evaluate(&verified);
    assert!(decision.allowed(), "{:?}", decision.reason_codes());
}
