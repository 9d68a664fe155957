//! `tessera attest verify` as a user runs it: the real binary on real Yubico samples and on
//! forged chains under a throwaway root given with --roots (as tests of `tessera-vpiv` will).

#[path = "../support/attestation_forge.rs"]
pub(crate) mod forge;

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use forge::{ForgedPki, SlotSpec};
use serde_json::Value;

const SAMPLES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/attestation/samples"
);
const EXAMPLE_POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/config/attestation-policy.toml"
);

/// slot and device certificate paths of a sample folder (PEM or DER).
fn sample_paths(name: &str) -> (PathBuf, PathBuf) {
    let dir = Path::new(SAMPLES).join(name);
    let pick = |stem: &str| {
        let pem = dir.join(format!("{stem}.pem"));
        if pem.exists() {
            pem
        } else {
            dir.join(format!("{stem}.der"))
        }
    };
    (pick("slot"), pick("device"))
}

fn tessera(args: &[&str]) -> Output {
    Command::cargo_bin("tessera")
        .unwrap()
        .args(args)
        .output()
        .unwrap()
}

fn verify_json(slot: &Path, device: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec![
        "attest",
        "verify",
        "--attestation",
        slot.to_str().unwrap(),
        "--intermediate",
        device.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = tessera(&args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stdout:?}"));
    (out.status.code().unwrap(), json)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A policy that allows every verified attestation (advisories off).
fn permissive_policy(dir: &Path) -> PathBuf {
    write(
        dir,
        "permissive.toml",
        b"minimum_rsa_bits = 1024\n[advisories]\nysa-2017-01 = false\nysa-2024-03 = false\n",
    )
}

#[test]
fn every_real_sample_gives_the_facts_its_source_states() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = permissive_policy(tmp.path());
    let mut seen = 0;
    for entry in std::fs::read_dir(SAMPLES).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let facts: Value =
            serde_json::from_slice(&std::fs::read(dir.join("facts.json")).unwrap()).unwrap();
        let (slot, device) = sample_paths(&name);
        let (code, json) = verify_json(&slot, &device, &["--policy", policy.to_str().unwrap()]);
        seen += 1;
        if name == "mismatched-device" {
            assert_eq!(code, 1, "{json}");
            assert_eq!(json["valid"], false);
            assert_eq!(json["allowed"], false);
            assert_eq!(
                json["reasons"],
                serde_json::json!(["slot-signature-invalid"])
            );
            continue;
        }
        if name == "fw4.3.7-p256-9a-u2f-root-no-serial" {
            // A genuine YubiKey 4 chain: valid, with its facts; refused for the missing serial.
            assert_eq!(code, 1, "{json}");
            assert_eq!(json["valid"], true, "{json}");
            assert_eq!(json["allowed"], false);
            assert_eq!(json["reasons"], serde_json::json!(["serial-missing"]));
            assert_eq!(json["serial"], Value::Null);
            assert_eq!(json["firmware"], "4.3.7");
            assert_eq!(json["public_key_sha256"], facts["public_key_sha256"]);
            assert_eq!(
                json["trust_anchor"],
                "CN=Yubico U2F Root CA Serial 457200631"
            );
            continue;
        }
        assert_eq!(code, 0, "{name}: {json}");
        assert_eq!(json["valid"], true, "{name}");
        assert_eq!(json["allowed"], true, "{name}");
        assert_eq!(json["reasons"], serde_json::json!([]), "{name}");
        for key in [
            "serial",
            "firmware",
            "pin_policy",
            "touch_policy",
            "slot",
            "key_algorithm",
            "public_key_sha256",
        ] {
            assert_eq!(json[key], facts[key], "{name}: {key}");
        }
        if facts.get("form_factor_byte").is_some() {
            assert_eq!(
                json["form_factor_code"], facts["form_factor_byte"],
                "{name}"
            );
            assert_eq!(json["fips"], facts["device_fips"], "{name}");
            assert_eq!(json["cspn"], facts["device_cspn"], "{name}");
        } else {
            assert_eq!(json["form_factor"], "usb-c-nano", "{name}");
            assert_eq!(json["form_factor_code"], "0x04", "{name}");
        }
    }
    assert_eq!(seen, 7);
}

#[test]
fn default_policy_denies_eucleak_keys_and_says_why() {
    let (slot, device) = sample_paths("fw5.4.3-p256-9a");
    let (code, json) = verify_json(&slot, &device, &[]);
    assert_eq!(code, 1);
    assert_eq!(json["valid"], true);
    assert_eq!(json["allowed"], false);
    assert_eq!(json["reasons"], serde_json::json!(["advisory-ysa-2024-03"]));
    assert_eq!(json["firmware"], "5.4.3");
}

#[test]
fn new_pki_sample_is_allowed_by_default_policy() {
    let (slot, device) = sample_paths("fw5.7.4-p384-slot82-new-pki");
    let (code, json) = verify_json(&slot, &device, &["--expect-serial", "33162554"]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["trust_anchor"], "CN=Yubico Attestation Root 1");
    assert_eq!(json["chain"].as_array().unwrap().len(), 5);
}

#[test]
fn example_policy_gives_every_reason() {
    let (slot, device) = sample_paths("fw5.7.4-p384-slot82-new-pki");
    let (code, json) = verify_json(&slot, &device, &["--policy", EXAMPLE_POLICY]);
    assert_eq!(code, 1);
    assert_eq!(
        json["reasons"],
        serde_json::json!(["slot-not-allowed", "pin-policy-below-minimum"])
    );
    assert_eq!(
        json["messages"][1],
        "PIN policy never is weaker than the required once"
    );
}

#[test]
fn expected_serial_mismatch_is_refused() {
    let (slot, device) = sample_paths("fw5.7.4-p384-slot82-new-pki");
    let (code, json) = verify_json(&slot, &device, &["--expect-serial", "33162555"]);
    assert_eq!(code, 1);
    assert_eq!(json["valid"], false);
    assert_eq!(json["reasons"], serde_json::json!(["serial-mismatch"]));
    assert_eq!(
        json["messages"][0],
        "attested serial 33162554 is not the expected serial 33162555"
    );
}

#[test]
fn forged_chain_is_trusted_only_under_its_root_given_with_roots() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = ForgedPki::new();
    let slot = write(tmp.path(), "slot.der", &pki.slot(&SlotSpec::typical()));
    let device = write(tmp.path(), "device.pem", pki.device_pem.as_bytes());
    let roots = tmp.path().join("roots");
    std::fs::create_dir(&roots).unwrap();
    let root_file = write(&roots, "test-root.pem", pki.root_pem.as_bytes());

    let (code, json) = verify_json(&slot, &device, &[]);
    assert_eq!(code, 1);
    assert_eq!(json["reasons"], serde_json::json!(["unknown-root"]));

    for roots_arg in [&root_file, &roots] {
        let (code, json) = verify_json(&slot, &device, &["--roots", roots_arg.to_str().unwrap()]);
        assert_eq!(code, 0, "{json}");
        assert_eq!(json["serial"], 12345678);
        assert_eq!(
            json["trust_anchor"],
            "CN=Tessera Forged Test Root (NOT Yubico)"
        );
    }

    // --roots replaces the Yubico roots; --add-roots keeps them.
    let (real_slot, real_device) = sample_paths("fw5.7.4-p384-slot82-new-pki");
    let (code, json) = verify_json(
        &real_slot,
        &real_device,
        &["--roots", root_file.to_str().unwrap()],
    );
    assert_eq!(
        (code, json["reasons"].clone()),
        (1, serde_json::json!(["unknown-root"]))
    );
    let (code, _) = verify_json(
        &real_slot,
        &real_device,
        &["--add-roots", root_file.to_str().unwrap()],
    );
    assert_eq!(code, 0);
    let (code, _) = verify_json(
        &slot,
        &device,
        &["--add-roots", root_file.to_str().unwrap()],
    );
    assert_eq!(code, 0);
}

#[test]
fn slot_certificate_re_signed_by_another_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = ForgedPki::new();
    let slot = write(
        tmp.path(),
        "slot.der",
        &pki.slot_signed_by(&SlotSpec::typical(), &forge::fresh_p256_key()),
    );
    let device = write(tmp.path(), "device.der", &pki.device_der);
    let root = write(tmp.path(), "root.der", &pki.root_der);
    let (code, json) = verify_json(&slot, &device, &["--roots", root.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(
        json["reasons"],
        serde_json::json!(["slot-signature-invalid"])
    );
}

#[test]
fn rsa_key_below_policy_is_denied() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = ForgedPki::new();
    let spec = SlotSpec {
        subject_spki_der: Some(
            include_bytes!("../data/attestation/keys/rsa1024-spki.der").to_vec(),
        ),
        ..SlotSpec::typical()
    };
    let slot = write(tmp.path(), "slot.der", &pki.slot(&spec));
    let device = write(tmp.path(), "device.der", &pki.device_der);
    let root = write(tmp.path(), "root.pem", pki.root_pem.as_bytes());
    let (code, json) = verify_json(&slot, &device, &["--roots", root.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(json["valid"], true);
    assert_eq!(json["key_algorithm"], "rsa1024");
    assert_eq!(
        json["reasons"],
        serde_json::json!(["rsa-key-below-minimum"])
    );
}

#[test]
fn unknown_critical_extension_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = ForgedPki::new();
    let mut spec = SlotSpec::typical();
    spec.extra_extensions
        .push((vec![1, 2, 3, 4, 5], vec![0x05, 0x00], true));
    let slot = write(tmp.path(), "slot.der", &pki.slot(&spec));
    let device = write(tmp.path(), "device.der", &pki.device_der);
    let root = write(tmp.path(), "root.pem", pki.root_pem.as_bytes());
    let (code, json) = verify_json(&slot, &device, &["--roots", root.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(
        json["reasons"],
        serde_json::json!(["unsupported-critical-extension"])
    );
    assert!(
        json["messages"][0].as_str().unwrap().contains("1.2.3.4.5"),
        "{json}"
    );
}

#[test]
fn unreadable_inputs_exit_2_with_their_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (slot, device) = sample_paths("fw5.4.3-p256-9a");
    let slot_pem = std::fs::read_to_string(&slot).unwrap();
    let slot_der = {
        let body: String = slot_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        base64_decode(&body)
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.pem", Vec::new(), "input-empty"),
        ("huge.der", vec![0x30; 64 * 1024 + 1], "input-too-large"),
        (
            "truncated.der",
            slot_der[..slot_der.len() / 2].to_vec(),
            "input-malformed",
        ),
        (
            "text.txt",
            b"not a certificate at all".to_vec(),
            "input-malformed",
        ),
        (
            "garbage.pem",
            slot_pem.replacen("MIIC", "M@IC", 1).into_bytes(),
            "input-pem-invalid",
        ),
    ];
    for (file, bytes, reason) in cases {
        let bad = write(tmp.path(), file, &bytes);
        let (code, json) = verify_json(&bad, &device, &[]);
        assert_eq!(code, 2, "{file}: {json}");
        assert_eq!(json["reasons"], serde_json::json!([reason]), "{file}");
        assert_eq!(json["valid"], false);
        // The device certificate position reports the same way.
        let (code, json) = verify_json(&slot, &bad, &[]);
        assert_eq!(
            (code, json["reasons"][0].as_str().unwrap()),
            (2, reason),
            "{file} as device"
        );
    }
    let missing = tmp.path().join("missing.pem");
    let (code, json) = verify_json(&missing, &device, &[]);
    assert_eq!(code, 2);
    assert_eq!(json["reasons"], serde_json::json!(["input-unreadable"]));
    assert!(
        json["messages"][0]
            .as_str()
            .unwrap()
            .contains("missing.pem")
    );
}

#[test]
fn policy_with_unknown_key_exits_2_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = write(
        tmp.path(),
        "policy.toml",
        b"minimum_pin_policy = \"once\"\nrequire_touch = true\n",
    );
    let (slot, device) = sample_paths("fw5.4.3-p256-9a");
    let (code, json) = verify_json(&slot, &device, &["--policy", policy.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_eq!(json["reasons"], serde_json::json!(["policy-invalid"]));
    assert!(
        json["messages"][0]
            .as_str()
            .unwrap()
            .contains("require_touch"),
        "{json}"
    );
}

#[test]
fn unreadable_roots_or_policy_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let (slot, device) = sample_paths("fw5.4.3-p256-9a");
    let bad_root = write(
        tmp.path(),
        "root.pem",
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    let (code, json) = verify_json(&slot, &device, &["--roots", bad_root.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_eq!(json["reasons"], serde_json::json!(["input-pem-invalid"]));
    let message = json["messages"][0].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "trusted certificate {}: invalid PEM",
            bad_root.display()
        )),
        "{message}"
    );

    let missing = tmp.path().join("policy.toml");
    let (code, json) = verify_json(&slot, &device, &["--policy", missing.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_eq!(json["reasons"], serde_json::json!(["policy-unreadable"]));
    assert!(
        json["messages"][0]
            .as_str()
            .unwrap()
            .starts_with("cannot read policy"),
        "{json}"
    );
}

#[test]
fn roots_directory_without_certificates_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let (slot, device) = sample_paths("fw5.4.3-p256-9a");
    let (code, json) = verify_json(&slot, &device, &["--roots", tmp.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        json["messages"][0]
            .as_str()
            .unwrap()
            .contains("has no .pem, .crt, .cer or .der file")
    );
}

#[test]
fn human_output_names_the_decision_and_reasons() {
    let (slot, device) = sample_paths("fw5.4.3-p256-9a");
    let out = tessera(&[
        "attest",
        "verify",
        "--attestation",
        slot.to_str().unwrap(),
        "--intermediate",
        device.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("attestation:  VALID, chain to CN=Yubico PIV Root CA Serial 263751"),
        "{text}"
    );
    assert!(
        text.contains("decision:     DENIED\n  advisory-ysa-2024-03: "),
        "{text}"
    );
    assert!(text.contains("serial:       15732500"), "{text}");

    let (slot, device) = sample_paths("mismatched-device");
    let out = tessera(&[
        "attest",
        "verify",
        "--attestation",
        slot.to_str().unwrap(),
        "--intermediate",
        device.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("attestation: INVALID (slot-signature-invalid)"),
        "{text}"
    );

    let out = tessera(&[
        "attest",
        "verify",
        "--attestation",
        "/nonexistent/slot.pem",
        "--intermediate",
        device.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("error: cannot read /nonexistent/slot.pem"),
        "{err}"
    );
}

/// Standard base64 without padding checks (test input only).
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
