//! The `tessera-vpiv` binary's command line: each refusal names the problem, and a new card
//! writes its state and exports its root before it looks for a reader. (Talking to pcscd is
//! covered by the tests that start pcscd + vpcd through the harness.)

use std::path::Path;
use std::process::Command as StdCommand;

use assert_cmd::Command;

fn card() -> Command {
    let mut cmd = Command::cargo_bin("tessera-vpiv").unwrap();
    cmd.env_remove("TESSERA_VPIV_LOG");
    cmd
}

/// A loopback port nobody listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn last_stderr_line(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

fn run_failing(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    last_stderr_line(&output)
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = StdCommand::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is missing: run scripts/install-deps.sh");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn fault_flags_that_do_not_parse_are_refused() {
    assert_eq!(
        run_failing(card().args(["--fault-status", "47"])),
        r#"tessera-vpiv: --fault-status "47" is not INS=SW, e.g. 47=6A80"#
    );
    assert_eq!(
        run_failing(card().args(["--fault-status", "47=zz"])),
        r#"tessera-vpiv: --fault-status "47=zz": SW is not 4 hex digits: invalid digit found in string"#
    );
    assert_eq!(
        run_failing(card().args(["--fault-disconnect-at-ins", "zz"])),
        r#"tessera-vpiv: --fault-disconnect-at-ins "zz" is not a hex byte such as 87: invalid digit found in string"#
    );
    assert_eq!(
        run_failing(card().args(["--fault-disconnect-at-ins", "87:0"])),
        r#"tessera-vpiv: --fault-disconnect-at-ins "87:0": the occurrence after ':' must be a whole number from 1"#
    );
}

#[test]
fn card_facts_that_do_not_parse_are_refused() {
    assert_eq!(
        run_failing(card().args(["--form-factor", "bogus"])),
        r#"tessera-vpiv: form factor "bogus" is unknown; use usb-a-keychain, usb-a-nano, usb-c-keychain, usb-c-nano, usb-c-lightning, usb-a-bio, usb-c-bio or a byte 0x01..0x07"#
    );
    assert_eq!(
        run_failing(card().args(["--firmware", "abc"])),
        r#"tessera-vpiv: --firmware "abc" is not a version such as 5.4.3"#
    );
    assert_eq!(
        run_failing(card().args(["--firmware", "4.3.7"])),
        "tessera-vpiv: --firmware 4.3.7: only YubiKey 5 firmware (5.x.y) is emulated"
    );
}

#[test]
fn a_new_card_saves_its_state_and_exports_its_root_then_waits_for_a_reader() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let state = dir.path().join("card.json");
    let root = dir.path().join("root.pem");
    let line = run_failing(card().args([
        "--state",
        state.to_str().unwrap(),
        "--serial",
        "12345678",
        "--port",
        &port.to_string(),
        "--connect-timeout",
        "0",
        "--export-root",
        root.to_str().unwrap(),
    ]));
    assert_eq!(
        line,
        format!(
            "tessera-vpiv: no vpcd reader answered at 127.0.0.1:{port} within 0.0 s: Connection refused (os error 111); is pcscd with the vpcd driver running (scripts/with-pcscd.sh)?"
        )
    );
    assert!(state.exists());
    assert_eq!(
        openssl(
            dir.path(),
            &["x509", "-in", "root.pem", "-noout", "-subject"]
        ),
        "subject=CN = Tessera Test PIV Attestation Root (NOT Yubico)"
    );

    // the same card again, but claiming another serial
    let line = run_failing(card().args([
        "--state",
        state.to_str().unwrap(),
        "--serial",
        "1",
        "--port",
        &port.to_string(),
    ]));
    assert_eq!(
        line,
        format!(
            "tessera-vpiv: state file {} holds a card with --serial 12345678; drop --serial or use a new --state file",
            state.display()
        )
    );
    let line =
        run_failing(card().args(["--state", state.to_str().unwrap(), "--firmware", "5.7.4"]));
    assert_eq!(
        line,
        format!(
            "tessera-vpiv: state file {} holds a card with --firmware 5.4.3; drop --firmware or use a new --state file",
            state.display()
        )
    );
}

#[test]
fn a_state_file_that_is_not_ours_or_not_writable_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{}").unwrap();
    assert_eq!(
        run_failing(card().args(["--state", bad.to_str().unwrap()])),
        format!(
            "tessera-vpiv: state file {} is not a tessera-vpiv state: missing field `format` at line 1 column 2; move it away to start a new card",
            bad.display()
        )
    );
    let nowhere = dir.path().join("missing-dir").join("card.json");
    assert_eq!(
        run_failing(card().args(["--state", nowhere.to_str().unwrap()])),
        format!(
            "tessera-vpiv: cannot write state file {}: No such file or directory (os error 2)",
            nowhere.display()
        )
    );
}

#[test]
fn a_given_attestation_root_is_used_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    openssl(
        dir.path(),
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "root.key",
        ],
    );
    openssl(
        dir.path(),
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "root.key",
            "-subj",
            "/CN=Given Test Root",
            "-days",
            "30",
            "-out",
            "given.pem",
        ],
    );
    let port = closed_port().to_string();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    run_failing(card().args([
        "--state",
        &path("card.json"),
        "--attestation-root-cert",
        &path("given.pem"),
        "--attestation-root-key",
        &path("root.key"),
        "--export-root",
        &path("exported.pem"),
        "--port",
        &port,
        "--connect-timeout",
        "0",
    ]));
    assert_eq!(
        openssl(
            dir.path(),
            &[
                "x509",
                "-in",
                "exported.pem",
                "-noout",
                "-fingerprint",
                "-sha256"
            ]
        ),
        openssl(
            dir.path(),
            &[
                "x509",
                "-in",
                "given.pem",
                "-noout",
                "-fingerprint",
                "-sha256"
            ]
        )
    );

    std::fs::write(dir.path().join("not-a-key.pem"), "hello").unwrap();
    assert_eq!(
        run_failing(card().args([
            "--state",
            &path("card2.json"),
            "--attestation-root-cert",
            &path("given.pem"),
            "--attestation-root-key",
            &path("not-a-key.pem"),
        ])),
        "tessera-vpiv: attestation root key is not an RSA, P-256 or P-384 private key in PEM (PKCS#8 or PKCS#1)"
    );
}
