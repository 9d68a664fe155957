//! Unit tests of `verify`: every real sample, and each refusal with its exact reason.

use super::*;
use crate::{AttestError, CertificateRole, MAX_CERTIFICATE_INPUT_BYTES, YubicoExtension};
use rcgen::PublicKeyData;

#[path = "../../../tests/support/attestation_forge.rs"]
mod forge;
use forge::{ForgedPki, SlotSpec};

const SAMPLES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/data/attestation/samples"
);

fn sample(name: &str, stem: &str) -> Vec<u8> {
    let dir = std::path::Path::new(SAMPLES).join(name);
    std::fs::read(dir.join(format!("{stem}.pem")))
        .or_else(|_| std::fs::read(dir.join(format!("{stem}.der"))))
        .unwrap()
}

fn sample_input(name: &str) -> AttestationInput {
    AttestationInput::new(sample(name, "slot"), sample(name, "device"))
}

fn yubico() -> TrustAnchors {
    TrustAnchors::yubico().unwrap()
}

fn forged_trust(pki: &ForgedPki) -> TrustAnchors {
    TrustAnchors::builder()
        .with_anchors(&pki.root_der, "forged-root.der")
        .unwrap()
        .build()
        .unwrap()
}

fn der_of(pem_or_der: &[u8]) -> Vec<u8> {
    super::decode_one_certificate(pem_or_der, &CertificateRole::Slot)
        .unwrap()
        .der
}

/// Finds `needle` inside `haystack`, once only (so a test edits exactly what it means to).
fn position_once(haystack: &[u8], needle: &[u8]) -> usize {
    let hits: Vec<usize> = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "needle {needle:02x?} found {} times",
        hits.len()
    );
    hits[0]
}

#[test]
fn every_real_sample_matches_its_facts_json() {
    let mut checked = 0;
    for entry in std::fs::read_dir(SAMPLES).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let facts: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("facts.json")).unwrap()).unwrap();
        let result = verify(&sample_input(&name), &yubico());
        if name == "mismatched-device" {
            assert_eq!(result.unwrap_err(), AttestError::SlotSignatureInvalid);
            checked += 1;
            continue;
        }
        let v = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            v.serial().map(u64::from),
            facts["serial"].as_u64(),
            "{name}"
        );
        assert_eq!(v.firmware().to_string(), facts["firmware"], "{name}");
        assert_eq!(v.pin_policy().as_str(), facts["pin_policy"], "{name}");
        assert_eq!(v.touch_policy().as_str(), facts["touch_policy"], "{name}");
        assert_eq!(v.slot().to_string(), facts["slot"], "{name}");
        assert_eq!(v.key_algorithm().as_str(), facts["key_algorithm"], "{name}");
        assert_eq!(
            v.public_key_sha256_hex(),
            facts["public_key_sha256"],
            "{name}"
        );
        if let Some(byte) = facts["form_factor_byte"].as_str() {
            assert_eq!(
                format!("0x{:02x}", v.form_factor_code().unwrap()),
                byte,
                "{name}"
            );
        } else if facts["form_factor"].is_null() {
            assert_eq!(v.form_factor_code(), None, "{name}");
        } else {
            assert_eq!(facts["form_factor"], "usb-c-nano (0x04)");
            assert_eq!(v.form_factor(), FormFactor::UsbCNano);
        }
        if let Some(fips) = facts["device_fips"].as_bool() {
            assert_eq!(v.fips(), fips, "{name}");
            assert_eq!(v.cspn(), facts["device_cspn"].as_bool().unwrap(), "{name}");
        }
        if let Some(issuer) = facts["device_issuer"].as_str() {
            assert_eq!(v.chain_subjects()[2], issuer, "{name}");
        }
        checked += 1;
    }
    assert_eq!(checked, 7);
}

/// A genuine YubiKey 4 (firmware 4.3.7): its device certificate was signed by the U2F root and
/// has no basicConstraints, and its slot certificate has no serial or form-factor extension.
/// The chain is genuine and its facts are reported; the policy refuses it for the serial.
#[test]
fn yubikey4_chain_is_genuine_and_policy_refuses_the_missing_serial() {
    let v = verify(
        &sample_input("fw4.3.7-p256-9a-u2f-root-no-serial"),
        &yubico(),
    )
    .unwrap();
    assert_eq!(v.serial(), None);
    assert_eq!(v.firmware(), FirmwareVersion::new(4, 3, 7));
    assert_eq!(v.form_factor(), FormFactor::Unspecified);
    assert_eq!(v.anchor_subject(), "CN=Yubico U2F Root CA Serial 457200631");
    assert_eq!(v.facts().serial, None);
    // ECDSA on firmware before 5.7.0: the EUCLEAK advisory applies too.
    let decision = crate::Policy::default().evaluate(&v);
    assert_eq!(
        decision.reason_codes(),
        vec!["serial-missing", "advisory-ysa-2024-03"]
    );
    assert_eq!(
        crate::Policy::default()
            .evaluate_facts(&v.facts())
            .reason_codes(),
        vec!["serial-missing", "advisory-ysa-2024-03"]
    );
    // An expected serial cannot be compared; the policy still refuses.
    let input = sample_input("fw4.3.7-p256-9a-u2f-root-no-serial").expecting_serial(1);
    let v = verify(&input, &yubico()).unwrap();
    assert!(!crate::Policy::default().evaluate(&v).allowed());
}

#[test]
fn slot_certificate_naming_another_issuer_is_refused() {
    let pki = ForgedPki::new();
    let slot = pki.slot_naming_issuer(&SlotSpec::typical(), "Yubico PIV Attestation");
    let input = AttestationInput::new(slot, pki.device_der.clone());
    let err = verify(&input, &forged_trust(&pki)).unwrap_err();
    assert_eq!(
        err,
        AttestError::IssuerNameMismatch {
            role: CertificateRole::Slot,
            issuer: "CN=Yubico PIV Attestation".into(),
            signer_subject: "CN=YubiKey PIV Attestation".into(),
        }
    );
    assert_eq!(err.code(), "issuer-name-mismatch");
}

#[test]
fn names_compare_ignoring_ascii_case() {
    let pki = ForgedPki::new();
    let slot = pki.slot_naming_issuer(&SlotSpec::typical(), "yubikey piv attestation");
    let input = AttestationInput::new(slot, pki.device_der.clone());
    verify(&input, &forged_trust(&pki)).unwrap();
}

#[test]
fn facts_serialize_with_the_documented_names() {
    let v = verify(&sample_input("fw5.4.3-p384-9c-fips"), &yubico()).unwrap();
    let json = serde_json::to_value(v.facts()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "serial": 25515003,
            "firmware": "5.4.3",
            "pin_policy": "always",
            "touch_policy": "never",
            "form_factor": "usb-c-keychain",
            "form_factor_code": "0x83",
            "fips": true,
            "cspn": false,
            "slot": "9c",
            "key_algorithm": "p384",
            "public_key_sha256": "52079f962c35d9153d0c7260c67461edf199dc208256d707eda2b78400edde5e",
            "trust_anchor": "CN=Yubico PIV Root CA Serial 263751",
            "chain": [
                "CN=YubiKey PIV Attestation 9c",
                "CN=Yubico PIV Attestation",
                "CN=Yubico PIV Root CA Serial 263751"
            ]
        })
    );
}

#[test]
fn new_pki_chain_uses_the_bundled_piv_attestation_b_1() {
    let v = verify(&sample_input("fw5.7.4-p384-slot82-new-pki"), &yubico()).unwrap();
    assert_eq!(
        v.chain_subjects(),
        [
            "CN=YubiKey PIV Attestation 82",
            "CN=YubiKey PIV Attestation",
            "CN=Yubico PIV Attestation B 1",
            "CN=Yubico Attestation Intermediate B 1",
            "CN=Yubico Attestation Root 1",
        ]
    );
}

#[test]
fn new_pki_chain_without_the_bundled_intermediates_has_an_unknown_root() {
    let roots_only = TrustAnchors::builder()
        .with_yubico_roots()
        .unwrap()
        .build()
        .unwrap();
    let err = verify(&sample_input("fw5.7.4-p384-slot82-new-pki"), &roots_only).unwrap_err();
    assert_eq!(
        err,
        AttestError::UnknownRoot {
            role: CertificateRole::Device,
            issuer: "CN=Yubico PIV Attestation B 1".into()
        }
    );
    assert_eq!(err.code(), "unknown-root");
}

#[test]
fn new_pki_chain_with_intermediates_given_by_the_caller() {
    let roots_only = TrustAnchors::builder()
        .with_yubico_roots()
        .unwrap()
        .build()
        .unwrap();
    let trust_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../trust/yubico/");
    let input = sample_input("fw5.7.4-p384-slot82-new-pki")
        .with_intermediate(
            std::fs::read(format!("{trust_dir}yubico-piv-attestation-b-1.pem")).unwrap(),
        )
        .with_intermediate(
            std::fs::read(format!(
                "{trust_dir}yubico-attestation-intermediate-b-1.pem"
            ))
            .unwrap(),
        );
    let v = verify(&input, &roots_only).unwrap();
    assert_eq!(v.anchor_subject(), "CN=Yubico Attestation Root 1");
}

#[test]
fn superseded_pathlen_zero_root_still_verifies_when_configured() {
    let old_root = include_bytes!(
        "../../../tests/data/attestation/roots-superseded/yubico-piv-root-ca-serial-263751-pre2018-pathlen0.pem"
    );
    let trust = TrustAnchors::builder()
        .with_anchors(old_root, "old-root.pem")
        .unwrap()
        .build()
        .unwrap();
    let v = verify(&sample_input("fw5.4.3-p256-9a"), &trust).unwrap();
    assert_eq!(v.serial(), Some(15732500));
}

#[test]
fn device_certificate_without_basic_constraints_is_accepted() {
    let v = verify(
        &sample_input("fw5.2.4-p384-slot93-device-cert-without-basicconstraints"),
        &yubico(),
    )
    .unwrap();
    assert_eq!(v.serial(), Some(11778047));
}

#[test]
fn unknown_root_real_sample_against_a_test_root() {
    let pki = ForgedPki::new();
    let err = verify(&sample_input("fw5.4.3-p256-9a"), &forged_trust(&pki)).unwrap_err();
    assert_eq!(
        err,
        AttestError::UnknownRoot {
            role: CertificateRole::Device,
            issuer: "CN=Yubico PIV Root CA Serial 263751".into()
        }
    );
}

#[test]
fn unknown_root_forged_chain_against_yubico() {
    let pki = ForgedPki::new();
    let input = AttestationInput::new(pki.slot(&SlotSpec::typical()), pki.device_der.clone());
    let err = verify(&input, &yubico()).unwrap_err();
    assert_eq!(err.code(), "unknown-root");
    assert!(
        err.to_string().contains("Tessera Forged Test Root"),
        "{err}"
    );
}

#[test]
fn forged_chain_under_a_configured_test_root_verifies() {
    let pki = ForgedPki::new();
    let input = AttestationInput::new(pki.slot(&SlotSpec::typical()), pki.device_pem.clone())
        .expecting_serial(12345678);
    let v = verify(&input, &forged_trust(&pki)).unwrap();
    assert_eq!(v.serial(), Some(12345678));
    assert_eq!(v.firmware(), FirmwareVersion::new(5, 7, 4));
    assert_eq!(v.slot().to_string(), "9a");
    assert_eq!(v.form_factor(), FormFactor::UsbCKeychain);
    assert_eq!(
        v.anchor_subject(),
        "CN=Tessera Forged Test Root (NOT Yubico)"
    );
}

#[test]
fn forged_device_without_basic_constraints_verifies() {
    let pki = ForgedPki::build(0, rcgen::IsCa::NoCa);
    let input = AttestationInput::new(pki.slot(&SlotSpec::typical()), pki.device_der.clone());
    assert!(verify(&input, &forged_trust(&pki)).is_ok());
}

#[test]
fn device_that_says_it_is_not_a_ca_is_refused() {
    let pki = ForgedPki::build(0, rcgen::IsCa::ExplicitNoCa);
    let input = AttestationInput::new(pki.slot(&SlotSpec::typical()), pki.device_der.clone());
    let err = verify(&input, &forged_trust(&pki)).unwrap_err();
    assert_eq!(
        err,
        AttestError::IssuerNotCa {
            role: CertificateRole::Device
        }
    );
}

#[test]
fn slot_certificate_re_signed_by_another_key_is_refused() {
    let pki = ForgedPki::new();
    let other = forge::fresh_p256_key();
    let input = AttestationInput::new(
        pki.slot_signed_by(&SlotSpec::typical(), &other),
        pki.device_der.clone(),
    );
    assert_eq!(
        verify(&input, &forged_trust(&pki)).unwrap_err(),
        AttestError::SlotSignatureInvalid
    );
}

#[test]
fn slot_certificate_forged_under_a_real_device_name_is_refused() {
    // A throwaway key signs a slot certificate that names the real device certificate's
    // subject as issuer, paired with that genuine device certificate.
    let slot = forge::forge_slot(
        &SlotSpec::typical(),
        &forge::params_named("Yubico PIV Attestation"),
        &forge::fresh_p256_key(),
    );
    let input = AttestationInput::new(slot, sample("fw5.4.3-p256-9a", "device"));
    let err = verify(&input, &yubico()).unwrap_err();
    assert_eq!(err.code(), "slot-signature-invalid");
}

#[test]
fn intermediate_from_another_device_is_refused() {
    let err = verify(&sample_input("mismatched-device"), &yubico()).unwrap_err();
    assert_eq!(err, AttestError::SlotSignatureInvalid);
    // And two genuine certificates from different tokens of the same firmware.
    let input = AttestationInput::new(
        sample("fw5.4.3-p256-9a", "slot"),
        sample("fw5.4.3-p384-9c-fips", "device"),
    );
    assert_eq!(
        verify(&input, &yubico()).unwrap_err(),
        AttestError::SlotSignatureInvalid
    );
}

#[test]
fn slot_extension_altered_after_signing_breaks_the_signature() {
    let mut slot = der_of(&sample("fw5.4.3-p256-9a", "slot"));
    // Firmware extension value 05 04 03 -> 05 07 03 (OCTET STRING 04 03 05 04 03).
    let at = position_once(&slot, &[0x04, 0x03, 0x05, 0x04, 0x03]);
    slot[at + 3] = 0x07;
    let input = AttestationInput::new(slot, sample("fw5.4.3-p256-9a", "device"));
    assert_eq!(
        verify(&input, &yubico()).unwrap_err(),
        AttestError::SlotSignatureInvalid
    );
}

#[test]
fn policy_extension_altered_after_signing_breaks_the_signature() {
    let mut slot = der_of(&sample("fw5.2.6-p256-9c-pin-always-touch-always", "slot"));
    // Policy 03 03 (always, always) -> 01 01 (never, never).
    let at = position_once(&slot, &[0x04, 0x02, 0x03, 0x02]);
    slot[at + 2] = 0x01;
    let input = AttestationInput::new(
        slot,
        sample("fw5.2.6-p256-9c-pin-always-touch-always", "device"),
    );
    assert_eq!(
        verify(&input, &yubico()).unwrap_err(),
        AttestError::SlotSignatureInvalid
    );
}

#[test]
fn device_extension_altered_after_signing_breaks_the_chain() {
    let mut device = der_of(&sample("fw5.4.3-p384-9c-fips", "device"));
    // FIPS extension value 02 01 07 -> 02 01 08.
    let at = position_once(&device, &[0x04, 0x03, 0x02, 0x01, 0x07]);
    device[at + 4] = 0x08;
    let input = AttestationInput::new(sample("fw5.4.3-p384-9c-fips", "slot"), device);
    let err = verify(&input, &yubico()).unwrap_err();
    assert_eq!(
        err,
        AttestError::ChainSignatureInvalid {
            role: CertificateRole::Device,
            issuer: "CN=Yubico PIV Root CA Serial 263751".into()
        }
    );
    assert_eq!(err.code(), "chain-signature-invalid");
}

/// Firmware 4.3.x writes no serial: the chain verifies, the facts say so, the policy refuses.
#[test]
fn missing_serial_extension_verifies_and_the_policy_refuses_it() {
    let pki = ForgedPki::new();
    let spec = SlotSpec {
        serial: None,
        ..SlotSpec::typical()
    };
    let input = AttestationInput::new(pki.slot(&spec), pki.device_der.clone());
    let v = verify(&input, &forged_trust(&pki)).unwrap();
    assert_eq!(v.serial(), None);
    let decision = crate::Policy::default().evaluate(&v);
    assert_eq!(decision.reason_codes(), vec!["serial-missing"]);
    assert_eq!(
        decision.reasons()[0].to_string(),
        "the attestation states no token serial (firmware 4.3.x writes none), so the key cannot be bound to a token"
    );
}

#[test]
fn missing_policy_extension_is_refused() {
    let pki = ForgedPki::new();
    let spec = SlotSpec {
        policy: None,
        ..SlotSpec::typical()
    };
    let input = AttestationInput::new(pki.slot(&spec), pki.device_der.clone());
    let err = verify(&input, &forged_trust(&pki)).unwrap_err();
    assert_eq!(
        err,
        AttestError::MissingExtension {
            extension: YubicoExtension::Policy
        }
    );
    assert_eq!(err.code(), "missing-policy-extension");
}

#[test]
fn missing_firmware_extension_is_refused() {
    let pki = ForgedPki::new();
    let spec = SlotSpec {
        firmware: None,
        ..SlotSpec::typical()
    };
    let input = AttestationInput::new(pki.slot(&spec), pki.device_der.clone());
    let err = verify(&input, &forged_trust(&pki)).unwrap_err();
    assert_eq!(err.code(), "missing-firmware-extension");
}

#[test]
fn missing_form_factor_is_allowed_and_unspecified() {
    let pki = ForgedPki::new();
    let spec = SlotSpec {
        form_factor: None,
        ..SlotSpec::typical()
    };
    let input = AttestationInput::new(pki.slot(&spec), pki.device_der.clone());
    let v = verify(&input, &forged_trust(&pki)).unwrap();
    assert_eq!(v.form_factor(), FormFactor::Unspecified);
    assert_eq!(v.form_factor_code(), None);
}

#[test]
fn malformed_extensions_are_refused_with_details() {
    let pki = ForgedPki::new();
    let trust = forged_trust(&pki);
    let cases: [(SlotSpec, &str); 4] = [
        (
            SlotSpec {
                policy: Some(vec![2, 1, 0]),
                ..SlotSpec::typical()
            },
            "3 bytes, expected 2",
        ),
        (
            SlotSpec {
                policy: Some(vec![9, 1]),
                ..SlotSpec::typical()
            },
            "unknown PIN policy byte 0x09",
        ),
        (
            SlotSpec {
                firmware: Some(vec![5, 7]),
                ..SlotSpec::typical()
            },
            "2 bytes, expected 3",
        ),
        (
            SlotSpec {
                serial: Some(vec![0x04, 0x01, 0x05]),
                ..SlotSpec::typical()
            },
            "not a DER INTEGER",
        ),
    ];
    for (spec, detail) in cases {
        let input = AttestationInput::new(pki.slot(&spec), pki.device_der.clone());
        let err = verify(&input, &trust).unwrap_err();
        assert_eq!(err.code(), "malformed-extension");
        assert!(err.to_string().contains(detail), "{err} lacks {detail}");
    }
}

#[test]
fn unknown_critical_extension_is_refused() {
    let pki = ForgedPki::new();
    let mut spec = SlotSpec::typical();
    spec.extra_extensions
        .push((vec![1, 3, 6, 1, 4, 1, 99999, 1], vec![0x05, 0x00], true));
    let input = AttestationInput::new(pki.slot(&spec), pki.device_der.clone());
    let err = verify(&input, &forged_trust(&pki)).unwrap_err();
    assert_eq!(
        err,
        AttestError::UnsupportedCriticalExtension {
            role: CertificateRole::Slot,
            oid: "1.3.6.1.4.1.99999.1".into()
        }
    );
}

#[test]
fn unknown_non_critical_extension_is_ignored() {
    let pki = ForgedPki::new();
    let mut spec = SlotSpec::typical();
    spec.extra_extensions
        .push((vec![1, 3, 6, 1, 4, 1, 99999, 1], vec![0x05, 0x00], false));
    let input = AttestationInput::new(pki.slot(&spec), pki.device_der.clone());
    assert!(verify(&input, &forged_trust(&pki)).is_ok());
}

#[test]
fn duplicate_extension_is_refused() {
    let pki = ForgedPki::new();
    let mut spec = SlotSpec::typical();
    spec.extra_extensions
        .push((forge::yubico_oid(7), forge::der_integer(1), false));
    let input = AttestationInput::new(pki.slot(&spec), pki.device_der.clone());
    let err = verify(&input, &forged_trust(&pki)).unwrap_err();
    assert_eq!(
        err,
        AttestError::DuplicateExtension {
            role: CertificateRole::Slot,
            oid: "1.3.6.1.4.1.41482.3.7".into()
        }
    );
}

#[test]
fn subject_that_names_no_slot_is_refused() {
    let pki = ForgedPki::new();
    let spec = SlotSpec {
        common_name: "YubiKey PIV Attestation f9".into(),
        ..SlotSpec::typical()
    };
    let input = AttestationInput::new(pki.slot(&spec), pki.device_der.clone());
    let err = verify(&input, &forged_trust(&pki)).unwrap_err();
    assert_eq!(
        err,
        AttestError::UnknownSlot {
            subject: "CN=YubiKey PIV Attestation f9".into()
        }
    );
}

#[test]
fn rsa_slot_keys_are_read_with_their_size() {
    let pki = ForgedPki::new();
    let spki = include_bytes!("../../../tests/data/attestation/keys/rsa1024-spki.der").to_vec();
    let spec = SlotSpec {
        subject_spki_der: Some(spki),
        ..SlotSpec::typical()
    };
    let input = AttestationInput::new(pki.slot(&spec), pki.device_der.clone());
    let v = verify(&input, &forged_trust(&pki)).unwrap();
    assert_eq!(v.key_algorithm(), KeyAlgorithm::Rsa1024);
}

#[test]
fn rsa_slot_key_of_odd_size_is_unsupported() {
    let pki = ForgedPki::new();
    let spki = include_bytes!("../../../tests/data/attestation/keys/rsa1536-spki.der").to_vec();
    let spec = SlotSpec {
        subject_spki_der: Some(spki),
        ..SlotSpec::typical()
    };
    let input = AttestationInput::new(pki.slot(&spec), pki.device_der.clone());
    let err = verify(&input, &forged_trust(&pki)).unwrap_err();
    assert_eq!(
        err,
        AttestError::UnsupportedKeyAlgorithm {
            detail: "RSA modulus of 1536 bits".into()
        }
    );
}

#[test]
fn expected_serial_mismatch_is_refused() {
    let input = sample_input("fw5.4.3-p256-9a").expecting_serial(15732501);
    let err = verify(&input, &yubico()).unwrap_err();
    assert_eq!(
        err,
        AttestError::SerialMismatch {
            expected: 15732501,
            found: 15732500
        }
    );
    assert_eq!(err.code(), "serial-mismatch");
    assert!(
        verify(
            &sample_input("fw5.4.3-p256-9a").expecting_serial(15732500),
            &yubico()
        )
        .is_ok()
    );
}

#[test]
fn presented_key_must_be_the_attested_key() {
    let v = verify(&sample_input("fw5.4.3-p256-9a"), &yubico()).unwrap();
    assert!(v.require_public_key(v.public_key_spki_der()).is_ok());
    let other = forge::fresh_p256_key();
    let err = v
        .require_public_key(&other.subject_public_key_info())
        .unwrap_err();
    assert_eq!(err.code(), "public-key-mismatch");
    assert!(
        err.to_string().contains(&v.public_key_sha256_hex()),
        "{err}"
    );
    // The key from another real sample (same algorithm) is refused too.
    let other_sample = verify(
        &sample_input("fw5.2.6-p256-9c-pin-always-touch-always"),
        &yubico(),
    )
    .unwrap();
    assert_eq!(
        v.require_public_key(other_sample.public_key_spki_der())
            .unwrap_err()
            .code(),
        "public-key-mismatch"
    );
}

#[test]
fn presented_key_compressed_point_equals_the_attested_key() {
    use p256::elliptic_curve::sec1::ToSec1Point;
    use spki::EncodePublicKey;
    let v = verify(&sample_input("fw5.4.3-p256-9a"), &yubico()).unwrap();
    let spki = SubjectPublicKeyInfoOwned::from_der(v.public_key_spki_der()).unwrap();
    let key =
        p256::PublicKey::from_sec1_bytes(spki.subject_public_key.as_bytes().unwrap()).unwrap();
    let compressed = key.to_sec1_point(true);
    let mut compressed_spki = spki.clone();
    compressed_spki.subject_public_key =
        der::asn1::BitString::from_bytes(compressed.as_bytes()).unwrap();
    let compressed_der = compressed_spki.to_der().unwrap();
    assert_ne!(compressed_der, v.public_key_spki_der());
    assert!(v.require_public_key(&compressed_der).is_ok());
    assert!(
        v.require_public_key(key.to_public_key_der().unwrap().as_bytes())
            .is_ok()
    );
}

#[test]
fn presented_key_that_is_not_a_key_is_refused() {
    let v = verify(&sample_input("fw5.4.3-p256-9a"), &yubico()).unwrap();
    let err = v.require_public_key(b"not a key").unwrap_err();
    assert_eq!(err.code(), "presented-key-malformed");
}

#[test]
fn inner_and_outer_signature_algorithms_must_agree() {
    let mut slot = der_of(&sample("fw5.4.3-p256-9a", "slot"));
    let sha256_with_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    let first = slot.windows(9).position(|w| w == sha256_with_rsa).unwrap();
    slot[first + 8] = 0x0c; // inner one only: sha384WithRSAEncryption
    let input = AttestationInput::new(slot, sample("fw5.4.3-p256-9a", "device"));
    let err = verify(&input, &yubico()).unwrap_err();
    assert_eq!(
        err,
        AttestError::SignatureAlgorithmMismatch {
            role: CertificateRole::Slot
        }
    );
}

#[test]
fn unsupported_signature_algorithm_is_named() {
    let mut slot = der_of(&sample("fw5.4.3-p256-9a", "slot"));
    let sha256_with_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    let hits: Vec<usize> = slot
        .windows(9)
        .enumerate()
        .filter(|(_, w)| *w == sha256_with_rsa)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 2);
    for at in hits {
        slot[at + 8] = 0x05; // sha1WithRSAEncryption, inner and outer
    }
    let input = AttestationInput::new(slot, sample("fw5.4.3-p256-9a", "device"));
    let err = verify(&input, &yubico()).unwrap_err();
    assert_eq!(
        err,
        AttestError::UnsupportedSignatureAlgorithm {
            role: CertificateRole::Slot,
            oid: "1.2.840.113549.1.1.5".into()
        }
    );
}

#[test]
fn forged_chain_with_given_intermediates_verifies() {
    let pki = ForgedPki::build(2, rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained));
    let mut input = AttestationInput::new(pki.slot(&SlotSpec::typical()), pki.device_der.clone());
    for der in pki.intermediates_der.iter().rev() {
        input = input.with_intermediate(der.clone());
    }
    let v = verify(&input, &forged_trust(&pki)).unwrap();
    assert_eq!(v.chain_subjects().len(), 5);
}

#[test]
fn chain_at_the_length_limit_verifies() {
    let pki = ForgedPki::build(
        MAX_CHAIN_ABOVE_DEVICE,
        rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
    );
    let mut input = AttestationInput::new(pki.slot(&SlotSpec::typical()), pki.device_der.clone());
    for der in &pki.intermediates_der {
        input = input.with_intermediate(der.clone());
    }
    let v = verify(&input, &forged_trust(&pki)).unwrap();
    assert_eq!(v.chain_subjects().len(), MAX_CHAIN_ABOVE_DEVICE + 3);
}

#[test]
fn chain_longer_than_the_limit_is_refused() {
    let pki = ForgedPki::build(
        MAX_CHAIN_ABOVE_DEVICE + 1,
        rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
    );
    let mut input = AttestationInput::new(pki.slot(&SlotSpec::typical()), pki.device_der.clone());
    for der in &pki.intermediates_der {
        input = input.with_intermediate(der.clone());
    }
    let err = verify(&input, &forged_trust(&pki)).unwrap_err();
    assert_eq!(
        err,
        AttestError::ChainTooLong {
            limit: MAX_CHAIN_ABOVE_DEVICE
        }
    );
}

#[test]
fn too_many_intermediates_are_refused() {
    let device = sample("fw5.4.3-p256-9a", "device");
    let mut bundle = Vec::new();
    for _ in 0..=MAX_GIVEN_INTERMEDIATES {
        bundle.extend_from_slice(&device);
    }
    let input = sample_input("fw5.4.3-p256-9a").with_intermediate(bundle);
    let err = verify(&input, &yubico()).unwrap_err();
    assert_eq!(
        err,
        AttestError::TooManyIntermediates {
            count: MAX_GIVEN_INTERMEDIATES + 1,
            limit: MAX_GIVEN_INTERMEDIATES
        }
    );
    assert_eq!(err.code(), "input-too-many-certificates");
}

#[test]
fn empty_input_is_refused() {
    let input = AttestationInput::new(Vec::new(), sample("fw5.4.3-p256-9a", "device"));
    assert_eq!(
        verify(&input, &yubico()).unwrap_err(),
        AttestError::EmptyInput {
            role: CertificateRole::Slot
        }
    );
    let input = AttestationInput::new(sample("fw5.4.3-p256-9a", "slot"), b"  \n".to_vec());
    assert_eq!(
        verify(&input, &yubico()).unwrap_err(),
        AttestError::EmptyInput {
            role: CertificateRole::Device
        }
    );
}

#[test]
fn huge_input_is_refused_before_parsing() {
    let input = AttestationInput::new(vec![0x30; MAX_CERTIFICATE_INPUT_BYTES + 1], Vec::new());
    let err = verify(&input, &yubico()).unwrap_err();
    assert_eq!(
        err,
        AttestError::InputTooLarge {
            role: CertificateRole::Slot,
            size: MAX_CERTIFICATE_INPUT_BYTES + 1,
            limit: MAX_CERTIFICATE_INPUT_BYTES
        }
    );
    assert!(err.is_input_error());
}

#[test]
fn truncated_der_is_refused() {
    let slot = der_of(&sample("fw5.4.3-p256-9a", "slot"));
    let input = AttestationInput::new(
        slot[..slot.len() - 10].to_vec(),
        sample("fw5.4.3-p256-9a", "device"),
    );
    let err = verify(&input, &yubico()).unwrap_err();
    assert_eq!(err.code(), "input-malformed");
    assert!(
        err.to_string()
            .starts_with("slot attestation certificate: not a DER X.509 certificate"),
        "{err}"
    );
}

#[test]
fn non_der_binary_is_refused() {
    let input = AttestationInput::new(
        vec![0x30, 0x03, 0x02, 0x01, 0x01],
        sample("fw5.4.3-p256-9a", "device"),
    );
    assert_eq!(
        verify(&input, &yubico()).unwrap_err().code(),
        "input-malformed"
    );
    let input = AttestationInput::new(
        vec![0xde, 0xad, 0xbe, 0xef],
        sample("fw5.4.3-p256-9a", "device"),
    );
    assert_eq!(
        verify(&input, &yubico()).unwrap_err().code(),
        "input-malformed"
    );
}

#[test]
fn pem_with_garbage_in_the_base64_is_refused() {
    let pem = String::from_utf8(sample("fw5.4.3-p256-9a", "slot")).unwrap();
    let garbled = pem.replacen("MIIC", "MI!C", 1);
    let input = AttestationInput::new(garbled.into_bytes(), sample("fw5.4.3-p256-9a", "device"));
    let err = verify(&input, &yubico()).unwrap_err();
    assert_eq!(err.code(), "input-pem-invalid");
    assert!(
        err.to_string()
            .starts_with("slot attestation certificate: invalid PEM"),
        "{err}"
    );
}

#[test]
fn intermediate_input_errors_name_the_intermediate() {
    let input = sample_input("fw5.4.3-p256-9a").with_intermediate(b"garbage".to_vec());
    let err = verify(&input, &yubico()).unwrap_err();
    assert_eq!(err.code(), "input-malformed");
    assert!(
        err.to_string().starts_with("intermediate certificate #1:"),
        "{err}"
    );
}

/// Deterministic xorshift64, so a failure reproduces.
struct Mutator(u64);

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(3) {
            match self.below(6) {
                0 => {
                    let at = self.below(out.len());
                    if let Some(b) = out.get_mut(at) {
                        *b ^= 1 << self.below(8);
                    }
                }
                1 => {
                    let at = self.below(out.len());
                    if let Some(b) = out.get_mut(at) {
                        *b = self.next() as u8;
                    }
                }
                2 => {
                    let keep = self.below(out.len());
                    out.truncate(keep);
                }
                3 => {
                    let at = self.below(out.len() + 1);
                    out.insert(at.min(out.len()), self.next() as u8);
                }
                4 => {
                    let at = self.below(out.len());
                    if at < out.len() {
                        out.remove(at);
                    }
                }
                _ => {
                    // Length-byte edits: the most interesting for DER.
                    let at = self.below(out.len());
                    if let Some(b) = out.get_mut(at) {
                        *b = [0x00, 0x7f, 0x80, 0x81, 0x82, 0x84, 0xff][self.below(7)];
                    }
                }
            }
        }
        out
    }
}

#[test]
fn mutated_real_samples_never_panic() {
    let trust = yubico();
    let names = [
        "fw5.2.4-p384-slot93-device-cert-without-basicconstraints",
        "fw5.2.6-p256-9c-pin-always-touch-always",
        "fw5.4.3-p256-9a",
        "fw5.4.3-p384-9c-fips",
        "fw5.7.4-p384-slot82-new-pki",
        "mismatched-device",
    ];
    let mut mutator = Mutator(0x5eed_1234_abcd_ef01);
    let mut codes = std::collections::BTreeMap::<&'static str, usize>::new();
    let mut runs = 0;
    for name in names {
        let slot = sample(name, "slot");
        let device = sample(name, "device");
        let forms = [slot.clone(), der_of(&slot)];
        for base in &forms {
            for _ in 0..1000 {
                let mutated = mutator.mutate(base);
                let input = AttestationInput::new(mutated.clone(), device.clone());
                let code = verify(&input, &trust)
                    .map(|_| "ok")
                    .unwrap_or_else(|e| e.code());
                if code == "ok" {
                    // Only changes outside the signed certificate (PEM whitespace, text) may pass.
                    assert_eq!(
                        der_of(&mutated),
                        der_of(&slot),
                        "{name}: a changed certificate verified"
                    );
                }
                *codes.entry(code).or_default() += 1;
                runs += 1;
            }
        }
        for _ in 0..1000 {
            let input = AttestationInput::new(slot.clone(), mutator.mutate(&device))
                .with_intermediate(mutator.mutate(&device));
            let code = verify(&input, &trust)
                .map(|_| "ok")
                .unwrap_or_else(|e| e.code());
            *codes.entry(code).or_default() += 1;
            runs += 1;
        }
    }
    assert_eq!(runs, 6 * 3000);
    // The loop reached both the parser and the signature checks.
    for expected in [
        "input-malformed",
        "input-pem-invalid",
        "slot-signature-invalid",
    ] {
        assert!(
            codes.contains_key(expected),
            "no {expected} among {codes:?}"
        );
    }
}

/// Only for policy tests: a verified attestation with chosen facts.
pub(crate) fn for_policy_tests(
    firmware: FirmwareVersion,
    pin_policy: PinPolicy,
    touch_policy: TouchPolicy,
    form_factor_code: Option<u8>,
    fips: bool,
    slot: Slot,
    key_algorithm: KeyAlgorithm,
) -> VerifiedAttestation {
    VerifiedAttestation {
        serial: Some(1),
        firmware,
        pin_policy,
        touch_policy,
        form_factor_code,
        fips,
        cspn: false,
        slot,
        key_algorithm,
        public_key_spki_der: Vec::new(),
        public_key_sha256: [0; 32],
        chain_subjects: Vec::new(),
    }
}
