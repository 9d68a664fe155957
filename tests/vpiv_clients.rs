//! Real clients against the virtual YubiKey `tessera-vpiv`: Yubico's `yubico-piv-tool` and `ykman`,
//! OpenSC's `pkcs11-tool`, the `yubikey` crate, and raw APDUs over PC/SC. Each test starts its own
//! card in its own reader and asserts what a real YubiKey 5 answers: exit codes, the tools' own
//! output lines (taken from the tools' sources), status words.
//!
//! Run under the harness: `scripts/with-pcscd.sh -- cargo nextest run -E 'binary(vpiv_clients)'`
//! (at the root, so that cargo also builds the card of the `tessera-vpiv` package).

mod harness;

use std::ffi::CString;
use std::path::{Path, PathBuf};

use harness::vpcd::{CardOptions, ToolRun, VirtualCard, run_tool};

const DEFAULT_PIN: &str = "123456";
const DEFAULT_MANAGEMENT_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];
/// Yubico's OID arc for PIV attestation extensions.
const OID_FIRMWARE: &str = "1.3.6.1.4.1.41482.3.3";
const OID_SERIAL: &str = "1.3.6.1.4.1.41482.3.7";
const OID_POLICY: &str = "1.3.6.1.4.1.41482.3.8";
const OID_FORM_FACTOR: &str = "1.3.6.1.4.1.41482.3.9";

// ---------------------------------------------------------------------------------------------
// Running the tools against one card

fn piv_tool(card: &VirtualCard, args: &[&str], stdin: Option<&str>) -> ToolRun {
    card.yubico_piv_tool(args, stdin)
}

fn ykman(card: &VirtualCard, args: &[&str], stdin: Option<&str>) -> ToolRun {
    card.ykman(args, stdin)
}

fn pkcs11_tool(card: &VirtualCard, args: &[&str], pin: Option<&str>) -> ToolRun {
    card.pkcs11_tool(args, pin)
}

fn openssl(args: &[&str]) -> ToolRun {
    run_tool("openssl", args, None, &[])
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn write_file(card: &VirtualCard, name: &str, contents: &str) -> PathBuf {
    let path = card.dir().join(name);
    std::fs::write(&path, contents).expect("cannot write into the card's scratch directory");
    path
}

/// The value of a "Key: value" line of a tool's output (first match, both sides trimmed).
fn field<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    output.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

#[track_caller]
fn assert_field(run: &ToolRun, key: &str, expected: &str) {
    assert_eq!(
        field(&run.stdout, key),
        Some(expected),
        "field {key:?}; {run}"
    );
}

/// The SubjectPublicKeyInfo of a PEM certificate or public key, as openssl prints it (PEM).
fn public_key_of_certificate(cert: &Path) -> String {
    openssl(&["x509", "-in", path_str(cert), "-noout", "-pubkey"])
        .success()
        .stdout
}

fn public_key_of_pem(key: &Path) -> String {
    openssl(&["pkey", "-pubin", "-in", path_str(key)])
        .success()
        .stdout
}

/// `openssl verify` of `leaf` against the card's exported root with `intermediate` (object 5FFF01).
fn verify_attestation_chain(card: &VirtualCard, intermediate: &Path, leaf: &Path) {
    let root = card.attestation_root();
    assert!(
        root.exists(),
        "the card did not export its attestation root to {}",
        root.display()
    );
    openssl(&[
        "verify",
        "-CAfile",
        path_str(&root),
        "-untrusted",
        path_str(intermediate),
        path_str(leaf),
    ])
    .success()
    .has_line(&format!("{}: OK", path_str(leaf)));
}

// ---------------------------------------------------------------------------------------------
// yubico-piv-tool (Debian 2.2.0: 3DES management keys only, so the card emulates firmware 5.4.3)

fn card_5_4(serial: u32) -> VirtualCard {
    VirtualCard::start(
        CardOptions::firmware("5.4.3")
            .serial(serial)
            .form_factor("usb-a-keychain"),
    )
}

fn card_5_7(serial: u32) -> VirtualCard {
    VirtualCard::start(
        CardOptions::firmware("5.7.4")
            .serial(serial)
            .form_factor("usb-c-keychain"),
    )
}

/// Generates a key in 9a with yubico-piv-tool (default 3DES management key) and returns the
/// public key file it wrote.
fn piv_tool_generate(card: &VirtualCard, algorithm: &str) -> PathBuf {
    let public_key = card.dir().join(format!("9a-{algorithm}.pem"));
    piv_tool(
        card,
        &[
            "-a",
            "generate",
            "-s",
            "9a",
            "-A",
            algorithm,
            "-o",
            path_str(&public_key),
        ],
        None,
    )
    .success()
    .has_line("Successfully generated a new private key.");
    public_key
}

#[test]
fn piv_tool_status_and_version_on_a_fresh_card() {
    let card = card_5_4(11_223_344);
    piv_tool(&card, &["-a", "version"], None)
        .success()
        .has_line("Application version 5.4.3 found.");
    piv_tool(&card, &["-a", "status"], None)
        .success()
        .has_line("Version:\t5.4.3")
        .has_line("Serial Number:\t11223344")
        .has_line("CHUID:\tNo data available")
        .has_line("CCC:\tNo data available")
        .has_line("PIN tries left:\t3");
}

#[test]
fn piv_tool_generates_an_ec_p256_key_in_9a() {
    let card = card_5_4(11_223_345);
    let public_key = piv_tool_generate(&card, "ECCP256");
    openssl(&[
        "pkey",
        "-pubin",
        "-in",
        path_str(&public_key),
        "-noout",
        "-text",
    ])
    .success()
    .mentions("ASN1 OID: prime256v1");
}

#[test]
fn piv_tool_generates_an_rsa2048_key_in_9a() {
    let card = card_5_4(11_223_346);
    let public_key = piv_tool_generate(&card, "RSA2048");
    openssl(&[
        "pkey",
        "-pubin",
        "-in",
        path_str(&public_key),
        "-noout",
        "-text",
    ])
    .success()
    .mentions("Public-Key: (2048 bit)")
    .mentions("Exponent: 65537 (0x10001)");
}

#[test]
fn piv_tool_verify_pin_counts_down_and_a_right_pin_restores_the_counter() {
    let card = card_5_4(11_223_347);
    piv_tool(
        &card,
        &["--stdin-input", "-a", "verify-pin"],
        Some("654321\n"),
    )
    .exit_code(1)
    .has_line("Pin verification failed, 2 tries left before pin is blocked.");
    piv_tool(
        &card,
        &["--stdin-input", "-a", "verify-pin"],
        Some("000000\n"),
    )
    .exit_code(1)
    .has_line("Pin verification failed, 1 tries left before pin is blocked.");
    piv_tool(&card, &["-a", "status"], None)
        .success()
        .has_line("PIN tries left:\t1");
    piv_tool(
        &card,
        &["--stdin-input", "-a", "verify-pin"],
        Some("123456\n"),
    )
    .success()
    .has_line("Successfully verified PIN.");
    piv_tool(&card, &["-a", "status"], None)
        .success()
        .has_line("PIN tries left:\t3");
}

#[test]
fn piv_tool_attestation_verifies_against_the_exported_root_and_5fff01() {
    let card = card_5_4(11_223_348);
    let public_key = piv_tool_generate(&card, "ECCP256");
    let attestation = piv_tool(&card, &["-a", "attest", "-s", "9a"], None).success();
    assert!(
        attestation
            .stdout
            .starts_with("-----BEGIN CERTIFICATE-----"),
        "{attestation}"
    );
    let device = piv_tool(&card, &["-a", "read-certificate", "-s", "f9"], None).success();
    assert!(
        device.stdout.starts_with("-----BEGIN CERTIFICATE-----"),
        "{device}"
    );
    let attestation_pem = write_file(&card, "attestation-9a.pem", &attestation.stdout);
    let device_pem = write_file(&card, "f9.pem", &device.stdout);

    verify_attestation_chain(&card, &device_pem, &attestation_pem);
    assert_eq!(
        public_key_of_certificate(&attestation_pem),
        public_key_of_pem(&public_key)
    );
    let text = openssl(&["x509", "-in", path_str(&attestation_pem), "-noout", "-text"]).success();
    text.mentions("Subject: CN = YubiKey PIV Attestation 9a")
        .mentions(OID_FIRMWARE)
        .mentions(OID_SERIAL)
        .mentions(OID_POLICY)
        .mentions(OID_FORM_FACTOR);
}

/// Debian's yubico-piv-tool 2.2.0 cannot self-sign with OpenSSL 3: it fails inside OpenSSL before
/// it asks the card to sign (upstream issue "Failed signing certificate on Ubuntu 22.04"), so a
/// real YubiKey gets the same answer. The card must not have been asked to sign.
#[test]
fn piv_tool_selfsign_fails_in_the_client_before_reaching_the_card() {
    let card = card_5_4(11_223_349);
    let public_key = piv_tool_generate(&card, "ECCP256");
    let certificate = card.dir().join("9a-selfsigned.pem");
    piv_tool(
        &card,
        &[
            "--stdin-input",
            "-a",
            "verify-pin",
            "-a",
            "selfsign-certificate",
            "-s",
            "9a",
            "-S",
            "/CN=tessera selfsigned/",
            "-i",
            path_str(&public_key),
            "-o",
            path_str(&certificate),
        ],
        Some("123456\n"),
    )
    .exit_code(1)
    .has_line("Successfully verified PIN.")
    .has_line("Failed signing certificate.");
    let log = card.log();
    assert!(
        log.contains("command=0020008008"),
        "the PIN was verified on the card:\n{log}"
    );
    assert!(
        !log.contains("command=0087119A"),
        "yubico-piv-tool 2.2.0 never reaches the card's signing:\n{log}"
    );
}

#[test]
fn piv_tool_imports_a_certificate_and_reads_it_back() {
    let card = card_5_4(11_223_375);
    // Certificates for the card's 9a key, signed by the card (ykman can self-sign with OpenSSL 3).
    ykman_key_and_certificate(&card, "ECCP256", "CN=tessera first");
    let first = card.dir().join("9a-first.pem");
    ykman(
        &card,
        &["piv", "certificates", "export", "9a", path_str(&first)],
        None,
    )
    .success();
    let public_key = card.dir().join("9a-ECCP256-ykman.pem");
    ykman(
        &card,
        &[
            "piv",
            "certificates",
            "generate",
            "-s",
            "CN=tessera second",
            "9a",
            path_str(&public_key),
        ],
        Some(&format!("\n{DEFAULT_PIN}\n")),
    )
    .success();
    openssl(&["verify", "-CAfile", path_str(&first), path_str(&first)]).success();

    piv_tool(
        &card,
        &[
            "-a",
            "import-certificate",
            "-s",
            "9a",
            "-i",
            path_str(&first),
        ],
        None,
    )
    .success()
    .has_line("Successfully imported a new certificate.");
    let read = piv_tool(&card, &["-a", "read-certificate", "-s", "9a"], None).success();
    let written = std::fs::read_to_string(&first).expect("certificate file");
    assert_eq!(
        read.stdout, written,
        "read-certificate must give back the imported certificate"
    );
    piv_tool(&card, &["-a", "status"], None)
        .success()
        .has_line("Slot 9a:")
        .has_line("Algorithm:\tECCP256")
        .has_line("Subject DN:\tCN=tessera first");
}

#[test]
fn piv_tool_change_pin_refuses_a_wrong_pin_then_changes_it() {
    let card = card_5_4(11_223_350);
    piv_tool(
        &card,
        &["--stdin-input", "-a", "change-pin"],
        Some("000000\n24681357\n"),
    )
    .exit_code(1)
    .has_line("Failed verifying pin code, now 2 tries left before blocked.");
    piv_tool(
        &card,
        &["--stdin-input", "-a", "change-pin"],
        Some("123456\n24681357\n"),
    )
    .success()
    .has_line("Successfully changed the pin code.");
    piv_tool(
        &card,
        &["--stdin-input", "-a", "verify-pin"],
        Some("24681357\n"),
    )
    .success()
    .has_line("Successfully verified PIN.");
    piv_tool(
        &card,
        &["--stdin-input", "-a", "verify-pin"],
        Some("123456\n"),
    )
    .exit_code(1)
    .has_line("Pin verification failed, 2 tries left before pin is blocked.");
}

#[test]
fn piv_tool_change_puk_refuses_a_wrong_puk_then_changes_it() {
    let card = card_5_4(11_223_351);
    piv_tool(
        &card,
        &["--stdin-input", "-a", "change-puk"],
        Some("00000000\n87654321\n"),
    )
    .exit_code(1)
    .has_line("Failed verifying puk code, now 2 tries left before blocked.");
    piv_tool(
        &card,
        &["--stdin-input", "-a", "change-puk"],
        Some("12345678\n87654321\n"),
    )
    .success()
    .has_line("Successfully changed the puk code.");
    // The old PUK no longer works; the new one does.
    piv_tool(
        &card,
        &["--stdin-input", "-a", "change-puk"],
        Some("12345678\n11112222\n"),
    )
    .exit_code(1)
    .has_line("Failed verifying puk code, now 2 tries left before blocked.");
    piv_tool(
        &card,
        &["--stdin-input", "-a", "change-puk"],
        Some("87654321\n11112222\n"),
    )
    .success()
    .has_line("Successfully changed the puk code.");
}

/// Three wrong PINs block the PIN, as on a YubiKey with the default 3 retries.
fn block_pin_with_piv_tool(card: &VirtualCard) {
    piv_tool(
        card,
        &["--stdin-input", "-a", "verify-pin"],
        Some("000000\n"),
    )
    .exit_code(1)
    .has_line("Pin verification failed, 2 tries left before pin is blocked.");
    piv_tool(
        card,
        &["--stdin-input", "-a", "verify-pin"],
        Some("000000\n"),
    )
    .exit_code(1)
    .has_line("Pin verification failed, 1 tries left before pin is blocked.");
    piv_tool(
        card,
        &["--stdin-input", "-a", "verify-pin"],
        Some("000000\n"),
    )
    .exit_code(1)
    .has_line("Pin code blocked, use unblock-pin action to unblock.");
    // Blocked: even the right PIN is refused.
    piv_tool(
        card,
        &["--stdin-input", "-a", "verify-pin"],
        Some("123456\n"),
    )
    .exit_code(1)
    .has_line("Pin code blocked, use unblock-pin action to unblock.");
    piv_tool(
        card,
        &["--stdin-input", "-a", "change-pin"],
        Some("123456\n24681357\n"),
    )
    .exit_code(1)
    .has_line("The pin code is blocked, use the unblock-pin action to unblock it.");
}

#[test]
fn piv_tool_unblock_pin_with_the_puk() {
    let card = card_5_4(11_223_352);
    block_pin_with_piv_tool(&card);
    piv_tool(
        &card,
        &["--stdin-input", "-a", "unblock-pin"],
        Some("00000000\n24681357\n"),
    )
    .exit_code(1)
    .has_line("Failed verifying puk code, now 2 tries left before blocked.");
    piv_tool(
        &card,
        &["--stdin-input", "-a", "unblock-pin"],
        Some("12345678\n24681357\n"),
    )
    .success()
    .has_line("Successfully unblocked the pin code.");
    piv_tool(
        &card,
        &["--stdin-input", "-a", "verify-pin"],
        Some("24681357\n"),
    )
    .success()
    .has_line("Successfully verified PIN.");
}

#[test]
fn piv_tool_set_mgm_key_replaces_the_default_key() {
    let card = card_5_4(11_223_353);
    let new_key = "0f0e0d0c0b0a09080706050403020100f0e0d0c0b0a09080";
    piv_tool(
        &card,
        &["--stdin-input", "-a", "set-mgm-key"],
        Some(&format!("{new_key}\n")),
    )
    .success()
    .has_line("Successfully set new management key.");
    // The default key (yubico-piv-tool's built-in default for -k) no longer authenticates.
    piv_tool(
        &card,
        &["-a", "generate", "-s", "9a", "-A", "ECCP256"],
        None,
    )
    .exit_code(1)
    .has_line("Failed authentication with the application.");
    // `-k` without a value: the key is read from stdin.
    piv_tool(
        &card,
        &[
            "--stdin-input",
            "-k",
            "-a",
            "generate",
            "-s",
            "9a",
            "-A",
            "ECCP256",
        ],
        Some(&format!("{new_key}\n")),
    )
    .success()
    .has_line("Successfully generated a new private key.");
}

#[test]
fn piv_tool_reset_works_only_after_pin_and_puk_are_blocked() {
    let card = card_5_4(11_223_354);
    piv_tool_generate(&card, "ECCP256");
    let device_before = piv_tool(&card, &["-a", "read-certificate", "-s", "f9"], None)
        .success()
        .stdout;

    piv_tool(&card, &["-a", "reset"], None)
        .exit_code(1)
        .has_line("Reset failed, are pincodes blocked?");
    block_pin_with_piv_tool(&card);
    piv_tool(&card, &["-a", "reset"], None)
        .exit_code(1)
        .has_line("Reset failed, are pincodes blocked?");
    for tries_left in [2, 1, 0] {
        piv_tool(
            &card,
            &["--stdin-input", "-a", "unblock-pin"],
            Some("00000000\n24681357\n"),
        )
        .exit_code(1)
        .has_line(&format!(
            "Failed verifying puk code, now {tries_left} tries left before blocked."
        ));
    }
    piv_tool(
        &card,
        &["--stdin-input", "-a", "unblock-pin"],
        Some("12345678\n24681357\n"),
    )
    .exit_code(1)
    .has_line("The puk code is blocked, you will have to reinitialize the application.");
    piv_tool(&card, &["-a", "reset"], None)
        .success()
        .has_line("Successfully reset the application.");

    // Factory state again: default PIN, PUK and management key, 3 tries, no key in 9a …
    piv_tool(
        &card,
        &["--stdin-input", "-a", "verify-pin"],
        Some("123456\n"),
    )
    .success()
    .has_line("Successfully verified PIN.");
    piv_tool(
        &card,
        &["--stdin-input", "-a", "change-puk"],
        Some("12345678\n12345678\n"),
    )
    .success()
    .has_line("Successfully changed the puk code.");
    piv_tool(&card, &["-a", "status"], None)
        .success()
        .has_line("PIN tries left:\t3");
    piv_tool(&card, &["-a", "attest", "-s", "9a"], None)
        .exit_code(1)
        .has_line("Failed to attest data.");
    piv_tool_generate(&card, "ECCP256");
    // … but a PIV reset leaves the attestation key and its certificate (5FFF01) in place.
    let device_after = piv_tool(&card, &["-a", "read-certificate", "-s", "f9"], None)
        .success()
        .stdout;
    assert_eq!(
        device_before, device_after,
        "PIV reset must keep the F9 attestation certificate"
    );
}

// ---------------------------------------------------------------------------------------------
// ykman (PyPI yubikey-manager)

#[test]
fn ykman_info_shows_serial_firmware_and_form_factor() {
    let card = card_5_4(11_223_355);
    let info = ykman(&card, &["info"], None).success();
    assert_field(&info, "Serial number", "11223355");
    assert_field(&info, "Firmware version", "5.4.3");
    assert_field(&info, "Form factor", "Keychain (USB-A)");
    let piv_line = info
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some("PIV"));
    assert!(
        piv_line.is_some_and(|l| l.contains("Enabled")),
        "PIV must be listed as enabled; {info}"
    );
}

#[test]
fn ykman_piv_info_on_a_fresh_5_4_card() {
    let card = card_5_4(11_223_356);
    let info = ykman(&card, &["piv", "info"], None).success();
    assert_field(&info, "PIV version", "5.4.3");
    assert_field(&info, "PIN tries remaining", "3/3");
    assert_field(&info, "PUK tries remaining", "3/3");
    assert_field(&info, "Management key algorithm", "TDES");
    assert_field(&info, "CHUID", "No data available");
    assert_field(&info, "CCC", "No data available");
    let info = info
        .has_line("WARNING: Using default PIN!")
        .has_line("WARNING: Using default PUK!")
        .has_line("WARNING: Using default Management key!");
    drop(info);
}

#[test]
fn ykman_piv_info_on_a_fresh_5_7_card_shows_the_aes192_default_key() {
    let card = card_5_7(11_223_357);
    let info = ykman(&card, &["piv", "info"], None).success();
    assert_field(&info, "PIV version", "5.7.4");
    assert_field(&info, "Management key algorithm", "AES192");
    info.has_line("WARNING: Using default Management key!");
}

/// `ykman piv keys generate` with the default management key (a blank answer to ykman's prompt).
fn ykman_generate(card: &VirtualCard, slot: &str, algorithm: &str, extra: &[&str]) -> PathBuf {
    let public_key = card.dir().join(format!("{slot}-{algorithm}-ykman.pem"));
    let mut args = vec!["piv", "keys", "generate", "-a", algorithm];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[slot, path_str(&public_key)]);
    let slot_name = match slot {
        "9a" => "9A (AUTHENTICATION)",
        "9c" => "9C (SIGNATURE)",
        other => panic!("no display name for slot {other} in this test"),
    };
    ykman(card, &args, Some("\n")).success().has_line(&format!(
        "Private key generated in slot {slot_name}, public key written to {}.",
        public_key.display()
    ));
    public_key
}

#[test]
fn ykman_generates_keys_with_policies_on_5_4() {
    let card = card_5_4(11_223_358);
    ykman_generate(
        &card,
        "9a",
        "ECCP256",
        &["--pin-policy", "ONCE", "--touch-policy", "NEVER"],
    );
    let info = ykman(&card, &["piv", "keys", "info", "9a"], None).success();
    assert_field(&info, "Algorithm", "ECCP256");
    assert_field(&info, "Origin", "GENERATED");
    assert_field(&info, "PIN required for use", "ONCE");
    assert_field(&info, "Touch required for use", "NEVER");

    ykman_generate(&card, "9c", "RSA2048", &[]);
    let info = ykman(&card, &["piv", "keys", "info", "9c"], None).success();
    assert_field(&info, "Algorithm", "RSA2048");
    // 9c's default PIN policy on a YubiKey is "always".
    assert_field(&info, "PIN required for use", "ALWAYS");
}

#[test]
fn ykman_generates_with_the_aes192_default_key_on_5_7() {
    let card = card_5_7(11_223_359);
    let public_key = ykman_generate(&card, "9a", "ECCP384", &[]);
    openssl(&[
        "pkey",
        "-pubin",
        "-in",
        path_str(&public_key),
        "-noout",
        "-text",
    ])
    .success()
    .mentions("ASN1 OID: secp384r1");
}

#[test]
fn ykman_attestation_verifies_against_the_exported_root() {
    let card = card_5_7(11_223_360);
    let public_key = ykman_generate(&card, "9a", "ECCP256", &[]);
    let attestation = card.dir().join("attestation-ykman.pem");
    ykman(
        &card,
        &["piv", "keys", "attest", "9a", path_str(&attestation)],
        None,
    )
    .success()
    .has_line(&format!(
        "Attestation certificate for slot 9A (AUTHENTICATION) written to {}.",
        attestation.display()
    ));
    let device = card.dir().join("f9-ykman.pem");
    ykman(
        &card,
        &["piv", "certificates", "export", "f9", path_str(&device)],
        None,
    )
    .success();
    verify_attestation_chain(&card, &device, &attestation);
    assert_eq!(
        public_key_of_certificate(&attestation),
        public_key_of_pem(&public_key)
    );
}

#[test]
fn ykman_change_management_key_3des() {
    let card = card_5_4(11_223_361);
    let new_key = "a1a2a3a4a5a6a7a8b1b2b3b4b5b6b7b8c1c2c3c4c5c6c7c8";
    ykman(
        &card,
        &["piv", "access", "change-management-key", "-a", "TDES"],
        Some(&format!("\n{new_key}\n{new_key}\n")),
    )
    .success()
    .has_line("New management key set.");
    let info = ykman(&card, &["piv", "info"], None).success();
    assert_field(&info, "Management key algorithm", "TDES");
    assert!(
        !info
            .stdout
            .contains("WARNING: Using default Management key!"),
        "{info}"
    );
    // The default key is refused now; the new one works.
    let public_key = card.dir().join("after-change.pem");
    ykman(
        &card,
        &[
            "piv",
            "keys",
            "generate",
            "-a",
            "ECCP256",
            "9a",
            path_str(&public_key),
        ],
        Some("\n"),
    )
    .exit_code(1)
    .has_line("ERROR: Authentication with management key failed.");
    ykman(
        &card,
        &[
            "piv",
            "keys",
            "generate",
            "-a",
            "ECCP256",
            "9a",
            path_str(&public_key),
        ],
        Some(&format!("{new_key}\n")),
    )
    .success();
}

#[test]
fn ykman_change_management_key_aes256_on_5_7() {
    let card = card_5_7(11_223_362);
    let new_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    ykman(
        &card,
        &["piv", "access", "change-management-key", "-a", "AES256"],
        Some(&format!("\n{new_key}\n{new_key}\n")),
    )
    .success()
    .has_line("New management key set.");
    let info = ykman(&card, &["piv", "info"], None).success();
    assert_field(&info, "Management key algorithm", "AES256");
    let public_key = card.dir().join("after-aes-change.pem");
    ykman(
        &card,
        &[
            "piv",
            "keys",
            "generate",
            "-a",
            "ECCP256",
            "9a",
            path_str(&public_key),
        ],
        Some(&format!("{new_key}\n")),
    )
    .success();
}

#[test]
fn ykman_change_management_key_aes128_on_5_4() {
    // YubiKeys accept AES management keys from firmware 5.4 on.
    let card = card_5_4(11_223_363);
    let new_key = "000102030405060708090a0b0c0d0e0f";
    ykman(
        &card,
        &["piv", "access", "change-management-key", "-a", "AES128"],
        Some(&format!("\n{new_key}\n{new_key}\n")),
    )
    .success()
    .has_line("New management key set.");
    let info = ykman(&card, &["piv", "info"], None).success();
    assert_field(&info, "Management key algorithm", "AES128");
}

#[test]
fn ykman_piv_reset_restores_factory_defaults() {
    let card = card_5_4(11_223_364);
    ykman(
        &card,
        &["piv", "access", "change-pin"],
        Some("123456\n24681357\n24681357\n"),
    )
    .success()
    .has_line("New PIN set.");
    ykman_generate(&card, "9a", "ECCP256", &[]);
    let info = ykman(&card, &["piv", "info"], None).success();
    assert!(
        !info.stdout.contains("WARNING: Using default PIN!"),
        "{info}"
    );

    ykman(&card, &["piv", "reset", "-f"], None)
        .success()
        .has_line("Resetting PIV data...")
        .has_line("Reset complete. All PIV data has been cleared from the YubiKey.")
        .has_line("Your YubiKey now has the default PIN, PUK and Management Key:");
    let info = ykman(&card, &["piv", "info"], None).success();
    assert_field(&info, "PIN tries remaining", "3/3");
    let info = info
        .has_line("WARNING: Using default PIN!")
        .has_line("WARNING: Using default Management key!");
    assert!(
        !info.stdout.contains("Slot 9A"),
        "the key in 9a must be gone after reset; {info}"
    );
}

// ---------------------------------------------------------------------------------------------
// OpenSC pkcs11-tool

/// A key in 9a and a self-signed certificate for it, made with ykman.
fn ykman_key_and_certificate(card: &VirtualCard, algorithm: &str, subject: &str) {
    let public_key = ykman_generate(card, "9a", algorithm, &[]);
    ykman(
        card,
        &[
            "piv",
            "certificates",
            "generate",
            "-s",
            subject,
            "9a",
            path_str(&public_key),
        ],
        Some(&format!("\n{DEFAULT_PIN}\n")),
    )
    .success()
    .has_line("Certificate generated in slot AUTHENTICATION.");
}

fn pkcs11_sign_and_verify(card: &VirtualCard, mechanism: &str, extra: &[&str]) {
    let data = write_file(
        card,
        "to-sign.txt",
        "tessera signs this with the card's 9a key\n",
    );
    let signature = card.dir().join(format!("signature-{mechanism}.bin"));
    let mut args = vec![
        "--login",
        "--pin",
        "env:TESSERA_TEST_PIN",
        "--sign",
        "--id",
        "01",
        "--mechanism",
        mechanism,
        "--input-file",
        path_str(&data),
        "--output-file",
        path_str(&signature),
    ];
    args.extend_from_slice(extra);
    pkcs11_tool(card, &args, Some(DEFAULT_PIN)).success();

    let certificate = card.dir().join("9a-from-pkcs11.der");
    pkcs11_tool(
        card,
        &[
            "--read-object",
            "--type",
            "cert",
            "--id",
            "01",
            "--output-file",
            path_str(&certificate),
        ],
        None,
    )
    .success();
    let public_key = card.dir().join("9a-from-pkcs11-pub.pem");
    let pem = openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        path_str(&certificate),
        "-noout",
        "-pubkey",
    ])
    .success()
    .stdout;
    std::fs::write(&public_key, pem).expect("write public key");
    openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        path_str(&public_key),
        "-signature",
        path_str(&signature),
        path_str(&data),
    ])
    .success()
    .has_line("Verified OK");
}

#[test]
fn pkcs11_tool_lists_the_9a_key_and_certificate_and_signs_with_ecdsa() {
    let card = card_5_4(11_223_365);
    ykman_key_and_certificate(&card, "ECCP256", "CN=tessera pkcs11");
    // Without login only the public objects show; OpenSC marks PIV private keys private.
    let public_only = pkcs11_tool(&card, &["--list-objects"], None).success();
    assert!(
        !public_only.stdout.contains("Private Key Object"),
        "{public_only}"
    );
    pkcs11_tool(
        &card,
        &["--login", "--pin", "env:TESSERA_TEST_PIN", "--list-objects"],
        Some(DEFAULT_PIN),
    )
    .success()
    .mentions("Private Key Object; EC")
    .mentions("Certificate Object; type = X.509 cert")
    .mentions("Certificate for PIV Authentication")
    .mentions("CN=tessera pkcs11");
    pkcs11_sign_and_verify(&card, "ECDSA-SHA256", &["--signature-format", "openssl"]);
}

#[test]
fn pkcs11_tool_signs_with_an_rsa2048_key() {
    let card = card_5_4(11_223_366);
    ykman_key_and_certificate(&card, "RSA2048", "CN=tessera pkcs11");
    pkcs11_tool(
        &card,
        &["--login", "--pin", "env:TESSERA_TEST_PIN", "--list-objects"],
        Some(DEFAULT_PIN),
    )
    .success()
    .mentions("Private Key Object; RSA");
    pkcs11_sign_and_verify(&card, "SHA256-RSA-PKCS", &[]);
}

// ---------------------------------------------------------------------------------------------
// The yubikey crate (what Tessera's own token driver uses)

fn open_with_yubikey_crate(card: &VirtualCard) -> yubikey::YubiKey {
    let mut context =
        yubikey::reader::Context::open().expect("PC/SC context for the yubikey crate");
    let readers: Vec<_> = context.iter().expect("list readers").collect();
    let reader = readers
        .iter()
        .find(|r| r.name() == card.reader_name())
        .unwrap_or_else(|| {
            panic!(
                "the yubikey crate does not list the reader {:?}",
                card.reader_name()
            )
        });
    reader
        .open()
        .expect("the yubikey crate opens the virtual card")
}

/// Finds an extension by dotted OID and returns its raw value bytes.
fn extension_value(certificate: &x509_cert::Certificate, oid: &str) -> Option<Vec<u8>> {
    let oid = const_oid::ObjectIdentifier::new(oid).expect("valid OID");
    certificate
        .tbs_certificate()
        .extensions()?
        .iter()
        .find(|e| e.extn_id == oid)
        .map(|e| e.extn_value.as_bytes().to_vec())
}

fn yubikey_crate_round_trip(card: &VirtualCard, firmware: (u8, u8, u8), serial: u32) {
    use der::{Decode, Encode};
    use yubikey::piv::{self, AlgorithmId, SlotId};
    use yubikey::{MgmKey, PinPolicy, TouchPolicy};

    let mut yk = open_with_yubikey_crate(card);
    let version = yk.version();
    assert_eq!((version.major, version.minor, version.patch), firmware);
    assert_eq!(yk.serial().0, serial);

    yk.authenticate(&MgmKey::get_default(&yk).expect("default management key for this firmware"))
        .expect("the default management key authenticates");
    let generated = piv::generate(
        &mut yk,
        SlotId::Authentication,
        AlgorithmId::EccP256,
        PinPolicy::Once,
        TouchPolicy::Never,
    )
    .expect("generate P-256 in 9a");

    let attestation_der = piv::attest(&mut yk, SlotId::Authentication).expect("attest 9a");
    let attestation =
        x509_cert::Certificate::from_der(&attestation_der).expect("attestation is a certificate");
    assert_eq!(
        attestation
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .expect("encode SPKI"),
        generated.to_der().expect("encode SPKI"),
        "the attestation certifies the generated key"
    );
    assert_eq!(
        extension_value(&attestation, OID_FIRMWARE),
        Some(vec![firmware.0, firmware.1, firmware.2])
    );
    let serial_der = der::asn1::Int::new(&serial.to_be_bytes())
        .expect("serial as INTEGER")
        .to_der()
        .expect("DER");
    let serial_value = extension_value(&attestation, OID_SERIAL).expect("serial extension");
    assert_eq!(
        der::asn1::Int::from_der(&serial_value).expect("serial extension is a DER INTEGER"),
        der::asn1::Int::from_der(&serial_der).expect("DER")
    );
    // PIN policy once (2), touch policy never (1), as Yubico encodes them.
    assert_eq!(
        extension_value(&attestation, OID_POLICY),
        Some(vec![0x02, 0x01])
    );

    let device = yubikey::certificate::Certificate::read(&mut yk, SlotId::Attestation)
        .expect("read the F9 certificate");
    let dir = card.dir();
    let attestation_pem = dir.join("crate-attestation.der");
    let device_pem = dir.join("crate-f9.der");
    std::fs::write(&attestation_pem, attestation_der.as_slice()).expect("write");
    std::fs::write(&device_pem, device.cert.to_der().expect("encode F9")).expect("write");
    let to_pem = |der_path: &Path| {
        let pem_path = der_path.with_extension("pem");
        openssl(&[
            "x509",
            "-inform",
            "DER",
            "-in",
            path_str(der_path),
            "-out",
            path_str(&pem_path),
        ])
        .success();
        pem_path
    };
    verify_attestation_chain(card, &to_pem(&device_pem), &to_pem(&attestation_pem));

    // Sign a digest with the new key after PIN verification; verify with the generated public key.
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use sha2::Digest;
    use spki::DecodePublicKey;
    yk.verify_pin(DEFAULT_PIN.as_bytes()).expect("default PIN");
    let digest = sha2::Sha256::digest(b"tessera proof of possession");
    let signature_der = piv::sign_data(
        &mut yk,
        &digest,
        AlgorithmId::EccP256,
        SlotId::Authentication,
    )
    .expect("sign");
    let verifying_key =
        p256::ecdsa::VerifyingKey::from_public_key_der(&generated.to_der().expect("SPKI"))
            .expect("P-256 public key");
    let signature = p256::ecdsa::Signature::from_der(&signature_der).expect("DER ECDSA signature");
    verifying_key
        .verify_prehash(&digest, &signature)
        .expect("the card's signature verifies");
}

#[test]
fn yubikey_crate_generates_attests_and_signs_on_5_4() {
    let card = card_5_4(11_223_367);
    yubikey_crate_round_trip(&card, (5, 4, 3), 11_223_367);
}

#[test]
fn yubikey_crate_generates_attests_and_signs_on_5_7_with_aes192_default() {
    let card = card_5_7(11_223_368);
    yubikey_crate_round_trip(&card, (5, 7, 4), 11_223_368);
}

// ---------------------------------------------------------------------------------------------
// Raw APDUs over PC/SC: bad input gets the status a YubiKey returns, and the card keeps answering

struct RawCard {
    card: pcsc::Card,
}

impl RawCard {
    fn connect(card: &VirtualCard) -> RawCard {
        let context = pcsc::Context::establish(pcsc::Scope::User).expect("PC/SC context");
        let reader = CString::new(card.reader_name()).expect("reader name");
        let card = context
            .connect(&reader, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
            .expect("connect to the card");
        RawCard { card }
    }

    /// Sends one APDU exactly as given; returns the response data and the status word.
    fn transmit(&self, apdu: &[u8]) -> (Vec<u8>, u16) {
        let mut buffer = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
        let response = self
            .card
            .transmit(apdu, &mut buffer)
            .unwrap_or_else(|e| panic!("transmit {apdu:02X?}: {e}"));
        assert!(
            response.len() >= 2,
            "response without a status word: {response:02X?}"
        );
        let (data, sw) = response.split_at(response.len() - 2);
        (data.to_vec(), u16::from_be_bytes([sw[0], sw[1]]))
    }

    /// Like [`RawCard::transmit`], but collects a long answer: while the card says 61xx ("more
    /// bytes available"), GET RESPONSE fetches the rest, as every PIV client does.
    fn transmit_collecting(&self, apdu: &[u8]) -> (Vec<u8>, u16) {
        let (mut data, mut sw) = self.transmit(apdu);
        while sw >> 8 == 0x61 {
            let (more, next) = self.transmit(&[0x00, 0xC0, 0x00, 0x00, (sw & 0xFF) as u8]);
            data.extend_from_slice(&more);
            sw = next;
        }
        (data, sw)
    }

    #[track_caller]
    fn expect_sw(&self, apdu: &[u8], expected: u16) -> Vec<u8> {
        let (data, sw) = self.transmit_collecting(apdu);
        assert_eq!(
            sw, expected,
            "APDU {apdu:02X?} answered {sw:04X}, expected {expected:04X}"
        );
        data
    }

    fn select_piv(&self) -> Vec<u8> {
        self.expect_sw(
            &[
                0x00, 0xA4, 0x04, 0x00, 0x09, 0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00,
            ],
            0x9000,
        )
    }

    /// GET VERSION answers with the firmware: proof that the card still works.
    #[track_caller]
    fn still_answers(&self) {
        let version = self.expect_sw(&[0x00, 0xFD, 0x00, 0x00, 0x00], 0x9000);
        assert_eq!(version, [5, 4, 3]);
    }

    /// Management-key authentication with the default 3DES key (mutual, as yubico-piv-tool does).
    fn authenticate_default_3des(&self) {
        use cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
        let cipher = des::TdesEde3::new_from_slice(&DEFAULT_MANAGEMENT_KEY).expect("3DES key");
        let witness = self.expect_sw(
            &[0x00, 0x87, 0x03, 0x9B, 0x04, 0x7C, 0x02, 0x80, 0x00],
            0x9000,
        );
        assert_eq!(
            &witness[..4],
            &[0x7C, 0x0A, 0x80, 0x08],
            "witness template: {witness:02X?}"
        );
        let mut decrypted = [0u8; 8];
        decrypted.copy_from_slice(&witness[4..12]);
        cipher.decrypt_block((&mut decrypted).into());
        let challenge = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
        let mut apdu = vec![0x00, 0x87, 0x03, 0x9B, 0x16, 0x7C, 0x14, 0x80, 0x08];
        apdu.extend_from_slice(&decrypted);
        apdu.extend_from_slice(&[0x81, 0x08]);
        apdu.extend_from_slice(&challenge);
        let response = self.expect_sw(&apdu, 0x9000);
        let mut expected = challenge;
        cipher.encrypt_block((&mut expected).into());
        assert_eq!(&response[..4], &[0x7C, 0x0A, 0x82, 0x08]);
        assert_eq!(
            &response[4..12],
            &expected,
            "the card proves it knows the key"
        );
    }
}

/// PUT DATA for object 5FC105 (the 9a certificate) carrying `len` bytes of filler in tag 53,
/// split into command-chaining pieces of at most 255 bytes.
fn put_data_chain(len: usize) -> Vec<Vec<u8>> {
    let mut body = vec![0x5C, 0x03, 0x5F, 0xC1, 0x05, 0x53, 0x82];
    body.extend_from_slice(&u16::try_from(len).expect("fits").to_be_bytes());
    body.extend(std::iter::repeat_n(0xA5, len));
    let pieces: Vec<&[u8]> = body.chunks(255).collect();
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let cla = if i + 1 < pieces.len() { 0x10 } else { 0x00 };
            let mut apdu = vec![cla, 0xDB, 0x3F, 0xFF, piece.len() as u8];
            apdu.extend_from_slice(piece);
            apdu
        })
        .collect()
}

const GET_DATA_9A_CERTIFICATE: [u8; 11] = [
    0x00, 0xCB, 0x3F, 0xFF, 0x05, 0x5C, 0x03, 0x5F, 0xC1, 0x05, 0x00,
];

#[test]
fn select_piv_answers_like_a_yubikey() {
    let card = card_5_4(11_223_369);
    let raw = RawCard::connect(&card);
    // Yubico's documented answer: application property template with the PIX and the NIST RID.
    let expected = [
        0x61, 0x11, 0x4F, 0x06, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00, 0x79, 0x07, 0x4F, 0x05, 0xA0,
        0x00, 0x00, 0x03, 0x08,
    ];
    assert_eq!(raw.select_piv(), expected);
    // An application the card does not have.
    raw.expect_sw(
        &[0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x09, 0x99],
        0x6A82,
    );
    raw.select_piv();
    raw.still_answers();
}

#[test]
fn unknown_instruction_gets_6d00_and_the_card_keeps_answering() {
    let mut card = card_5_4(11_223_370);
    let raw = RawCard::connect(&card);
    raw.select_piv();
    raw.expect_sw(&[0x00, 0x12, 0x00, 0x00], 0x6D00);
    raw.expect_sw(&[0x00, 0x12, 0x00, 0x00, 0x02, 0x01, 0x02], 0x6D00);
    raw.still_answers();
    assert!(card.is_running());
}

#[test]
fn unsupported_class_gets_6e00_and_the_card_keeps_answering() {
    let mut card = card_5_4(11_223_371);
    let raw = RawCard::connect(&card);
    raw.select_piv();
    raw.expect_sw(&[0x80, 0xFD, 0x00, 0x00, 0x00], 0x6E00);
    raw.expect_sw(
        &[
            0xA0, 0xCB, 0x3F, 0xFF, 0x05, 0x5C, 0x03, 0x5F, 0xC1, 0x05, 0x00,
        ],
        0x6E00,
    );
    raw.still_answers();
    assert!(card.is_running());
}

#[test]
fn malformed_lengths_get_6700_and_do_not_count_as_pin_tries() {
    let mut card = card_5_4(11_223_372);
    let raw = RawCard::connect(&card);
    raw.select_piv();
    // Lc says 8 bytes of PIN, 4 arrive.
    raw.expect_sw(
        &[0x00, 0x20, 0x00, 0x80, 0x08, 0x31, 0x32, 0x33, 0x34],
        0x6700,
    );
    // Lc says 2, 5 bytes follow (not a valid Le either).
    raw.expect_sw(
        &[0x00, 0x20, 0x00, 0x80, 0x02, 0x31, 0x32, 0x33, 0x34, 0x35],
        0x6700,
    );
    // Too short to be an APDU at all.
    raw.expect_sw(&[0x00, 0x20], 0x6700);
    // The PIN counter is untouched: the "verified?" probe still reports 3 tries.
    raw.expect_sw(&[0x00, 0x20, 0x00, 0x80], 0x63C3);
    raw.still_answers();
    assert!(card.is_running());
}

#[test]
fn a_chained_command_cut_short_is_dropped_and_stores_nothing() {
    let mut card = card_5_4(11_223_373);
    let raw = RawCard::connect(&card);
    raw.select_piv();
    raw.authenticate_default_3des();
    let chain = put_data_chain(600);
    assert!(chain.len() >= 3);
    raw.expect_sw(&chain[0], 0x9000);
    // Another instruction arrives before the chain ends: ISO 7816-4 "last command of the chain expected".
    raw.expect_sw(&[0x00, 0xFD, 0x00, 0x00, 0x00], 0x6883);
    // Nothing of the unfinished PUT DATA was stored.
    raw.expect_sw(&GET_DATA_9A_CERTIFICATE, 0x6A82);
    raw.still_answers();
    assert!(card.is_running());
}

#[test]
fn an_oversized_object_gets_6a84_and_stores_nothing() {
    let mut card = card_5_4(11_223_374);
    let raw = RawCard::connect(&card);
    raw.select_piv();
    raw.authenticate_default_3des();
    // A YubiKey 5 holds objects up to 3063 bytes (yubico-piv-tool's and the yubikey crate's
    // CB_OBJ_MAX); this one is bigger. Chain it until the card refuses.
    let mut refusal = None;
    for apdu in put_data_chain(4000) {
        let (_, sw) = raw.transmit(&apdu);
        if sw != 0x9000 {
            refusal = Some(sw);
            break;
        }
    }
    assert_eq!(
        refusal,
        Some(0x6A84),
        "an oversized PUT DATA must end in 6A84 (not enough memory)"
    );
    raw.expect_sw(&GET_DATA_9A_CERTIFICATE, 0x6A82);
    // A certificate-sized object still fits afterwards.
    let mut last_sw = 0;
    for apdu in put_data_chain(1200) {
        last_sw = raw.transmit(&apdu).1;
    }
    assert_eq!(last_sw, 0x9000);
    let stored = raw.expect_sw(&GET_DATA_9A_CERTIFICATE, 0x9000);
    assert_eq!(
        stored.len(),
        4 + 1200,
        "53 82 04 B0 + 1200 bytes: {} bytes",
        stored.len()
    );
    raw.still_answers();
    assert!(card.is_running());
}

// ---------------------------------------------------------------------------------------------
// Faults on demand, seen through real clients

#[test]
fn a_card_pulled_during_generate_fails_the_client_and_comes_back_without_the_key() {
    let mut card = VirtualCard::start(
        CardOptions::firmware("5.4.3")
            .serial(33_000_001)
            .arg("--fault-disconnect-at-ins")
            .arg("47"),
    );
    let public_key = card.dir().join("never.pem");
    ykman(
        &card,
        &[
            "piv",
            "keys",
            "generate",
            "-a",
            "ECCP256",
            "9a",
            path_str(&public_key),
        ],
        Some("\n"),
    )
    .failure();
    // The fault pulls the card: the process ends by itself, successfully.
    card.pull();
    assert_eq!(
        card.exit_status().map(|s| s.code()),
        None,
        "pull() reaps the process"
    );
    card.options_mut().extra_args.clear();
    card.insert();
    ykman(&card, &["piv", "keys", "info", "9a"], None)
        .exit_code(1)
        .has_line("ERROR: No key stored in slot 9A (AUTHENTICATION).");
    ykman_generate(&card, "9a", "ECCP256", &[]);
}

#[test]
fn a_disconnect_fault_ends_the_card_process_with_success() {
    let mut card = VirtualCard::start(
        CardOptions::firmware("5.4.3")
            .serial(33_000_002)
            .arg("--fault-disconnect-after")
            .arg("3"),
    );
    // yubico-piv-tool connects with 3 APDUs (SELECT, the PIN-tries probe, GET VERSION); the card
    // is pulled at the 4th (GET SERIAL). `-a status` reports what it could not read and exits 0,
    // as it does when a real token is pulled at that moment.
    piv_tool(&card, &["-a", "status"], None)
        .success()
        .has_line("Version:\t5.4.3")
        .has_line("Serial Number:\tNo data available");
    let mut status = None;
    for _ in 0..100 {
        status = card.exit_status();
        if status.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "card log:\n{}",
        card.log()
    );
}

#[test]
fn a_forced_status_word_reaches_yubico_piv_tool() {
    let card = VirtualCard::start(
        CardOptions::firmware("5.4.3")
            .serial(33_000_003)
            .arg("--fault-status")
            .arg("47=6A80"),
    );
    piv_tool(
        &card,
        &["-a", "generate", "-s", "9a", "-A", "ECCP256"],
        None,
    )
    .exit_code(1)
    .has_line("Key generation failed.");
    // Everything else still works.
    piv_tool(&card, &["-a", "status"], None)
        .success()
        .has_line("Serial Number:\t33000003");
}

#[test]
fn refused_touch_fails_signing_with_a_touch_policy_key() {
    let card = VirtualCard::start(
        CardOptions::firmware("5.4.3")
            .serial(33_000_004)
            .arg("--refuse-touch"),
    );
    let public_key = ykman_generate(&card, "9a", "ECCP256", &["--touch-policy", "ALWAYS"]);
    ykman(
        &card,
        &[
            "piv",
            "certificates",
            "generate",
            "-s",
            "CN=no touch",
            "9a",
            path_str(&public_key),
        ],
        Some(&format!("\n{DEFAULT_PIN}\n")),
    )
    .exit_code(1)
    .has_line("ERROR: Certificate generation failed.");
}

// ---------------------------------------------------------------------------------------------
// The harness itself: cards side by side, and a card pulled out and put back

#[test]
fn two_cards_side_by_side_each_answer_in_their_own_reader() {
    let first = card_5_4(22_000_001);
    let second = card_5_7(22_000_002);
    assert_ne!(first.reader_name(), second.reader_name());
    piv_tool(&first, &["-a", "status"], None)
        .success()
        .has_line("Serial Number:\t22000001");
    piv_tool(&second, &["-a", "status"], None)
        .success()
        .has_line("Serial Number:\t22000002");
}

#[test]
fn a_card_pulled_and_put_back_keeps_its_keys() {
    let mut card = card_5_4(22_000_003);
    let public_key = piv_tool_generate(&card, "ECCP256");
    card.pull();
    piv_tool(&card, &["-a", "status"], None)
        .exit_code(1)
        .has_line("Failed to connect to yubikey.");
    card.insert();
    let attestation = piv_tool(&card, &["-a", "attest", "-s", "9a"], None).success();
    let attestation_pem = write_file(&card, "after-reinsert.pem", &attestation.stdout);
    assert_eq!(
        public_key_of_certificate(&attestation_pem),
        public_key_of_pem(&public_key)
    );
}

#[test]
fn card_tests_outside_the_harness_fail_with_the_way_to_run_them() {
    // Run one card test of this very binary again, without the harness' environment.
    let test_binary = std::env::current_exe().expect("path of this test binary");
    let output = std::process::Command::new(test_binary)
        .args([
            "--exact",
            "piv_tool_status_and_version_on_a_fresh_card",
            "--nocapture",
        ])
        .env_remove("TESSERA_VPCD_PORTS")
        .env_remove("TESSERA_VPCD_READERS")
        .env_remove("TESSERA_VPCD_LOCK_DIR")
        .output()
        .expect("run the test binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(101), "{stderr}");
    assert!(
        stderr.contains(
            "run the tests under scripts/with-pcscd.sh (see README): TESSERA_VPCD_PORTS, TESSERA_VPCD_READERS or TESSERA_VPCD_LOCK_DIR is not set"
        ),
        "{stderr}"
    );
}

fn with_pcscd(args: &[&str]) -> ToolRun {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/with-pcscd.sh");
    run_tool(script, args, None, &[])
}

#[test]
fn with_pcscd_refuses_bad_options_with_the_reason() {
    with_pcscd(&["--readers", "2"]).exit_code(2).has_line(
        "with-pcscd: no command given; put it after --, e.g. scripts/with-pcscd.sh -- bash",
    );
    with_pcscd(&["--readers", "17", "--", "true"])
        .exit_code(2)
        .has_line("with-pcscd: --readers must be 1..16 (pcscd allows 16 readers), got '17'");
    with_pcscd(&["--base-port", "80", "--", "true"])
        .exit_code(2)
        .has_line("with-pcscd: --base-port must leave room for 8 ports in 1024..65535, got '80'");
    with_pcscd(&["--verbose", "--", "true"])
        .exit_code(2)
        .has_line("with-pcscd: unknown option '--verbose' (the command goes after --)");
}

#[test]
fn with_pcscd_offers_its_readers_and_passes_the_exit_code_on() {
    // A nested run: its own namespace, pcscd and free ports, beside the one this test runs in.
    let run = with_pcscd(&[
        "--readers",
        "3",
        "--",
        "sh",
        "-c",
        "echo \"ports=$TESSERA_VPCD_PORTS\"; echo \"readers=$TESSERA_VPCD_READERS\"; pcsc_scan -r; exit 7",
    ])
    .exit_code(7);
    let ports: Vec<u16> = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("ports="))
        .expect("ports line")
        .split(',')
        .map(|p| p.parse().expect("port"))
        .collect();
    assert_eq!(ports.len(), 3, "{run}");
    assert_eq!(ports[1], ports[0] + 1);
    assert_eq!(ports[2], ports[0] + 2);
    let readers = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("readers="))
        .expect("readers line");
    let expected = [
        format!("Yubico YubiKey OTP+FIDO+CCID vpcd {} 00 00", ports[0]),
        format!("Yubico YubiKey OTP+FIDO+CCID vpcd {} 00 01", ports[0]),
        format!("Yubico YubiKey OTP+FIDO+CCID vpcd {} 00 00", ports[2]),
    ];
    assert_eq!(
        readers.split(';').collect::<Vec<_>>(),
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for name in &expected {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.ends_with(&format!(": {name}"))),
            "pcsc_scan lists {name}; {run}"
        );
    }
}
