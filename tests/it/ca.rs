//! The CA against a real SoftHSM2 token: the ceremony, issuance from CSRs made by OpenSSL,
//! `openssl verify`, pkilint, serial numbers, and every refusal with its exact message.
//! Each test makes its own throwaway token (nextest runs each test in its own process).

use crate::harness;

use harness::softhsm::SoftHsmToken;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tessera::ca::{
    self, CaInitParams, IssuanceRequest, KeyProvenance, ProfileSet, SerialNumber, StoredCa,
    SubjectParams,
};
use tessera::hsm::{Hsm, KeySpec};
use x509_parser::prelude::FromDer;

const INSTALL_HINT: &str = "run scripts/install-deps.sh (as root)";

fn tessera(token: &SoftHsmToken, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env("SOFTHSM2_CONF", &token.softhsm2_conf)
        .env("TESSERA_HSM_CONFIG", &token.config_path)
        .env_remove("TESSERA_DATA_DIR")
        .env_remove("TESSERA_PROFILES_DIR")
        .output()
        .expect("run tessera")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// Asserts a failed run whose stderr is exactly `error: MESSAGE` (one line).
fn assert_refused(out: &Output, message: &str) {
    assert!(
        !out.status.success(),
        "expected a refusal, got success: {}",
        stdout(out)
    );
    assert_eq!(stderr(out), format!("error: {message}\n"));
}

fn run_tool(program: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {INSTALL_HINT}"))
}

fn openssl(args: &[&str], dir: &Path) -> Output {
    let out = run_tool("openssl", args, dir);
    assert_ok(&out, &format!("openssl {args:?}"));
    out
}

/// `tessera ca init` with the default (P-384 root, P-256 issuing) keys into DIR/ca.
fn init_ca(token: &SoftHsmToken) -> PathBuf {
    let data_dir = token.dir.path().join("ca");
    let out = tessera(
        token,
        &["ca", "init", "--data-dir", data_dir.to_str().unwrap()],
    );
    assert_ok(&out, "ca init");
    data_dir
}

/// An EC P-256 key and a CSR for CN=alice, email alice@example.org, made by OpenSSL.
fn openssl_csr(dir: &Path, name: &str, key_args: &[&str]) -> PathBuf {
    let csr = dir.join(format!("{name}.csr"));
    let mut args = vec!["req", "-new", "-nodes", "-keyout"];
    let key = format!("{name}.key");
    args.push(&key);
    args.extend_from_slice(key_args);
    let csr_name = format!("{name}.csr");
    args.extend_from_slice(&[
        "-subj",
        "/CN=alice",
        "-addext",
        "subjectAltName=email:alice@example.org",
        "-out",
        &csr_name,
    ]);
    openssl(&args, dir);
    csr
}

fn p256_csr(dir: &Path, name: &str) -> PathBuf {
    openssl_csr(
        dir,
        name,
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    )
}

fn sign_csr(
    token: &SoftHsmToken,
    data_dir: &Path,
    profile: &str,
    csr: &Path,
    out: &Path,
) -> Output {
    tessera(
        token,
        &[
            "ca",
            "sign-csr",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--profile",
            profile,
            "--csr",
            csr.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--offline-ceremony",
        ],
    )
}

fn pem_to_der(path: &Path) -> Vec<u8> {
    let text = std::fs::read(path).expect("read PEM");
    der::pem::decode_vec(text.trim_ascii()).expect("PEM").1
}

fn serial_of(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).expect("certificate");
    cert.raw_serial().to_vec()
}

fn assert_good_serial(serial: &[u8]) {
    // DER INTEGER contents: positive (top bit clear), no leading zero octet, at least 64 bits.
    assert!(
        serial.len() >= 8,
        "serial {} is shorter than 64 bits",
        hex::encode(serial)
    );
    assert!(
        serial[0] & 0x80 == 0,
        "serial {} is negative",
        hex::encode(serial)
    );
    assert!(
        serial[0] != 0,
        "serial {} has a leading zero octet",
        hex::encode(serial)
    );
}

#[test]
fn chain_and_issued_certificate_verify_with_openssl() {
    let token = SoftHsmToken::create("ca-verify");
    let data_dir = init_ca(&token);
    for file in ["ca.toml", "root.pem", "issuing.pem", "chain.pem"] {
        assert!(
            data_dir.join(file).is_file(),
            "{file} missing after ca init"
        );
    }
    let dir = token.dir.path();
    let out = openssl(&["verify", "-CAfile", "ca/root.pem", "ca/issuing.pem"], dir);
    assert_eq!(stdout(&out), "ca/issuing.pem: OK\n");

    let csr = p256_csr(dir, "alice");
    let leaf = dir.join("leaf.pem");
    let out = sign_csr(&token, &data_dir, "service-client", &csr, &leaf);
    assert_ok(&out, "ca sign-csr");
    assert!(
        stdout(&out).starts_with("issued certificate serial "),
        "{}",
        stdout(&out)
    );
    let out = openssl(
        &[
            "verify",
            "-CAfile",
            "ca/root.pem",
            "-untrusted",
            "ca/issuing.pem",
            "-purpose",
            "sslclient",
            "leaf.pem",
        ],
        dir,
    );
    assert_eq!(stdout(&out), "leaf.pem: OK\n");

    // The signature itself, checked by OpenSSL outside `verify`: tbsCertificate and signature
    // out of the certificate, the issuing CA's public key out of issuing.pem.
    let der = pem_to_der(&leaf);
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    std::fs::write(dir.join("tbs.der"), cert.tbs_certificate.as_ref()).unwrap();
    std::fs::write(dir.join("sig.der"), cert.signature_value.data.as_ref()).unwrap();
    assert_eq!(
        cert.signature_algorithm.algorithm.to_id_string(),
        "1.2.840.10045.4.3.2"
    );
    let out = openssl(&["x509", "-in", "ca/issuing.pem", "-noout", "-pubkey"], dir);
    std::fs::write(dir.join("issuing-pub.pem"), &out.stdout).unwrap();
    let out = openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            "issuing-pub.pem",
            "-signature",
            "sig.der",
            "tbs.der",
        ],
        dir,
    );
    assert_eq!(stdout(&out), "Verified OK\n");
    // ... and a flipped bit in the signed bytes is caught by the same check.
    let mut tbs = cert.tbs_certificate.as_ref().to_vec();
    let last = tbs.len() - 1;
    tbs[last] ^= 0x01;
    std::fs::write(dir.join("tbs-bad.der"), &tbs).unwrap();
    let out = run_tool(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            "issuing-pub.pem",
            "-signature",
            "sig.der",
            "tbs-bad.der",
        ],
        dir,
    );
    assert!(!out.status.success());

    // The leaf carries the profile's settings.
    let text = stdout(&openssl(
        &["x509", "-in", "leaf.pem", "-noout", "-text"],
        dir,
    ));
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("email:alice@example.org"), "{text}");
    assert!(text.contains("Policy: 1.3.6.1.4.1.32473.1.2.7"), "{text}");
    assert!(
        text.contains("Policy: 1.3.6.1.4.1.32473.1.1.2"),
        "unattested marker missing: {text}"
    );

    // `ca show` prints both certificates and the key URIs from ca.toml.
    let out = tessera(
        &token,
        &["ca", "show", "--data-dir", data_dir.to_str().unwrap()],
    );
    assert_ok(&out, "ca show");
    let shown = stdout(&out);
    let record: ca::CaRecord =
        toml::from_str(&std::fs::read_to_string(data_dir.join("ca.toml")).unwrap()).unwrap();
    assert!(shown.contains("subject:    CN=Tessera Root CA"), "{shown}");
    assert!(
        shown.contains("subject:    CN=Tessera Issuing CA"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("key:        {}", record.root_key)),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("key:        {}", record.issuing_key)),
        "{shown}"
    );
    assert!(
        record
            .root_key
            .starts_with("pkcs11:token=ca-verify;object=tessera-root;"),
        "{}",
        record.root_key
    );
    let root_serial = hex::encode_upper(serial_of(&pem_to_der(&data_dir.join("root.pem"))));
    assert!(
        shown.contains(&format!("serial:     {root_serial}")),
        "{shown}"
    );
}

#[test]
fn serials_are_positive_random_and_distinct() {
    let token = SoftHsmToken::create("ca-serials");
    let data_dir = init_ca(&token);
    let mut serials = vec![
        serial_of(&pem_to_der(&data_dir.join("root.pem"))),
        serial_of(&pem_to_der(&data_dir.join("issuing.pem"))),
    ];
    let dir = token.dir.path();
    let csr = p256_csr(dir, "alice");
    for i in 0..4 {
        let leaf = dir.join(format!("leaf{i}.pem"));
        assert_ok(
            &sign_csr(&token, &data_dir, "service-client", &csr, &leaf),
            "ca sign-csr",
        );
        serials.push(serial_of(&pem_to_der(&leaf)));
    }
    for serial in &serials {
        assert_good_serial(serial);
    }
    let mut unique = serials.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        serials.len(),
        "repeated serial among {serials:?}"
    );
}

fn pkilint(path: &Path) {
    let out = Command::new("lint_pkix_cert")
        .args(["lint", "-s", "ERROR"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run lint_pkix_cert (PyPI pkilint): {e}; {INSTALL_HINT}")
        });
    let report = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        out.status.success() && report.trim().is_empty(),
        "pkilint reports ERROR/FATAL findings for {}:\n{report}",
        path.display()
    );
}

#[test]
fn every_profile_and_the_ca_certificates_pass_pkilint() {
    let token = SoftHsmToken::create("ca-lint");
    let data_dir = init_ca(&token);
    pkilint(&data_dir.join("root.pem"));
    pkilint(&data_dir.join("issuing.pem"));

    let hsm = Hsm::open(&token.config()).expect("open HSM");
    let issuing = StoredCa::load(&data_dir).unwrap().issuing_ca(&hsm).unwrap();
    let subject_key = hsm.generate_key_pair("subject", KeySpec::EcP256).unwrap();
    let rsa_subject_key = hsm
        .generate_key_pair("rsa-subject", KeySpec::Rsa2048)
        .unwrap();
    let mut subject = SubjectParams::new("Alice Example");
    subject.organization = Some("Example Org".into());
    subject.emails.push("alice@example.org".into());
    // The names the enrollment profiles add (UPN, token serial, Windows SID); other profiles
    // leave them out.
    subject.upn = Some("alice@example.org".into());
    subject.hardware_module = Some(tessera::ca::HardwareModule::yubikey(20_000_001));
    subject.windows_sid = Some("S-1-5-21-3623811015-3361044348-30300820-1013".into());
    let profiles = ProfileSet::built_in();
    assert_eq!(
        profiles.names(),
        vec![
            "piv-authentication",
            "piv-signature",
            "service-client",
            "smartcard-logon",
            "smime-signing",
            "temporary-piv-authentication",
            "tls-client"
        ]
    );
    let mut linted = 0;
    for profile in profiles.iter() {
        let mut provenances = vec![KeyProvenance::HardwareAttested];
        if profile.allow_unattested_keys {
            provenances.push(KeyProvenance::Unattested);
        }
        for provenance in provenances {
            for key in [&subject_key, &rsa_subject_key] {
                let serial = SerialNumber::random().unwrap();
                let issued = issuing
                    .issue(&IssuanceRequest {
                        subject: &subject,
                        public_key_der: key.public_key_der(),
                        profile,
                        serial: &serial,
                        provenance: provenance.clone(),
                        now: time::OffsetDateTime::now_utc(),
                    })
                    .unwrap_or_else(|e| panic!("profile {}: {e}", profile.name));
                let path = token
                    .dir
                    .path()
                    .join(format!("{}-{linted}.pem", profile.name));
                std::fs::write(&path, issued.to_pem()).unwrap();
                pkilint(&path);
                linted += 1;
            }
        }
    }
    // 6 profiles, 2 keys each; the 2 that take unattested keys (tls-client, service-client)
    // twice more.
    assert_eq!(linted, 18);
}

#[test]
fn init_twice_refuses_to_overwrite() {
    let token = SoftHsmToken::create("ca-twice");
    let data_dir = init_ca(&token);
    let before = std::fs::read(data_dir.join("root.pem")).unwrap();
    let out = tessera(
        &token,
        &["ca", "init", "--data-dir", data_dir.to_str().unwrap()],
    );
    assert_refused(
        &out,
        &format!(
            "a CA already exists ({}/ca.toml is present); refusing to overwrite it, use another --data-dir",
            data_dir.display()
        ),
    );
    assert_eq!(std::fs::read(data_dir.join("root.pem")).unwrap(), before);
}

fn token_objects(token: &SoftHsmToken) -> String {
    stdout(&token.pkcs11_tool(&["-O"]))
}

#[test]
fn failed_init_leaves_no_keys_and_no_files() {
    let token = SoftHsmToken::create("ca-rollback");
    // A key already holds the issuing key's label: the ceremony makes the root key, then fails
    // on the issuing key, and must destroy the root key it made.
    token.pkcs11_tool(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "tessera-issuing",
        "--id",
        "01",
    ]);
    let before = token_objects(&token);
    let data_dir = token.dir.path().join("ca");
    let out = tessera(
        &token,
        &["ca", "init", "--data-dir", data_dir.to_str().unwrap()],
    );
    assert_refused(
        &out,
        "a key labelled `tessera-issuing` already exists on token ca-rollback; choose another label or destroy the old key first",
    );
    let after = token_objects(&token);
    assert!(
        !after.contains("tessera-root"),
        "root key left behind:\n{after}"
    );
    assert_eq!(after, before, "token objects changed by a failed ceremony");
    assert!(!data_dir.exists(), "data directory left behind");

    // A failure after both keys and both certificates were made: the data directory path is a
    // regular file, so writing root.pem fails. Both keys are destroyed again.
    let not_a_dir = token.dir.path().join("not-a-dir");
    std::fs::write(&not_a_dir, b"").unwrap();
    let out = tessera(
        &token,
        &[
            "ca",
            "init",
            "--data-dir",
            not_a_dir.to_str().unwrap(),
            "--issuing-key-label",
            "issuing-2",
        ],
    );
    assert_refused(
        &out,
        &format!(
            "{}/root.pem: Not a directory (os error 20)",
            not_a_dir.display()
        ),
    );
    assert_eq!(std::fs::read(&not_a_dir).unwrap(), b"");
    assert_eq!(token_objects(&token), before);
}

#[test]
fn init_refuses_an_issuing_validity_beyond_the_root() {
    let token = SoftHsmToken::create("ca-params");
    let data_dir = token.dir.path().join("ca");
    let out = tessera(
        &token,
        &[
            "ca",
            "init",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--root-validity-days",
            "100",
            "--issuing-validity-days",
            "200",
        ],
    );
    assert_refused(
        &out,
        "ca init: the issuing CA validity (200 days) exceeds the root's (100 days); shorten --issuing-validity-days",
    );
    assert!(!data_dir.exists());
    let out = tessera(
        &token,
        &[
            "ca",
            "init",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--issuing-algorithm",
            "ed25519",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "unknown key spec `ed25519`; use one of p256, p384, rsa2048, rsa3072, rsa4096"
        ),
        "{}",
        stderr(&out)
    );
    assert!(!data_dir.exists());
}

#[test]
fn csr_with_a_bad_signature_is_refused() {
    let token = SoftHsmToken::create("ca-badsig");
    let data_dir = init_ca(&token);
    let dir = token.dir.path();
    let csr = p256_csr(dir, "alice");
    openssl(
        &[
            "req",
            "-in",
            "alice.csr",
            "-outform",
            "DER",
            "-out",
            "alice.der",
        ],
        dir,
    );
    // Change the subject (CN=alice → CN=alicf) after signing: the signature no longer covers it.
    let mut der = std::fs::read(dir.join("alice.der")).unwrap();
    let at = der
        .windows(5)
        .position(|w| w == b"alice")
        .expect("CN in the request");
    der[at + 4] = b'f';
    let tampered = dir.join("tampered.der");
    std::fs::write(&tampered, &der).unwrap();
    let out = sign_csr(
        &token,
        &data_dir,
        "service-client",
        &tampered,
        &dir.join("leaf.pem"),
    );
    assert_refused(
        &out,
        "CSR signature does not verify: the request was altered or not signed by its own key; make a new CSR",
    );
    assert!(!dir.join("leaf.pem").exists());
    // The untouched request (PEM) is accepted.
    assert_ok(
        &sign_csr(
            &token,
            &data_dir,
            "service-client",
            &csr,
            &dir.join("leaf.pem"),
        ),
        "ca sign-csr",
    );
}

#[test]
fn csr_with_an_unsupported_key_is_refused_by_name() {
    let token = SoftHsmToken::create("ca-badkey");
    let data_dir = init_ca(&token);
    let dir = token.dir.path();
    let ed = openssl_csr(dir, "ed", &["-newkey", "ed25519"]);
    assert_refused(
        &sign_csr(
            &token,
            &data_dir,
            "service-client",
            &ed,
            &dir.join("leaf.pem"),
        ),
        "unsupported key algorithm Ed25519; Tessera certifies EC P-256, EC P-384 and RSA 2048/3072/4096 keys",
    );
    let p521 = openssl_csr(
        dir,
        "p521",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
    );
    assert_refused(
        &sign_csr(
            &token,
            &data_dir,
            "service-client",
            &p521,
            &dir.join("leaf.pem"),
        ),
        "unsupported key algorithm EC P-521; Tessera certifies EC P-256, EC P-384 and RSA 2048/3072/4096 keys",
    );
    assert!(!dir.join("leaf.pem").exists());
}

#[test]
fn sign_csr_refusals_name_the_problem() {
    let token = SoftHsmToken::create("ca-refusals");
    let dir = token.dir.path();
    let csr = p256_csr(dir, "alice");
    let leaf = dir.join("leaf.pem");

    // No CA yet.
    let missing = dir.join("ca");
    assert_refused(
        &sign_csr(&token, &missing, "service-client", &csr, &leaf),
        &format!(
            "no CA in {} (ca.toml not found); run `tessera ca init` first or point --data-dir at the CA",
            missing.display()
        ),
    );
    let data_dir = init_ca(&token);
    // Without --offline-ceremony nothing is signed: the certificate would be recorded nowhere
    // (issue 12, finding 10).
    assert_refused(
        &tessera(
            &token,
            &[
                "ca",
                "sign-csr",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--profile",
                "service-client",
                "--csr",
                csr.to_str().unwrap(),
                "--out",
                leaf.to_str().unwrap(),
            ],
        ),
        "ca sign-csr without --config keeps no record: the certificate would be in no database, \
         no audit log and never on a CRL. Pass --config with the server's configuration to issue \
         it through the server's database (recorded, audited, revocable), or --offline-ceremony \
         to sign an unrecorded certificate on purpose",
    );
    // The CSR's names bound to nobody: only a profile that takes its subject from the CSR
    // (issue 12, finding 1).
    assert_refused(
        &sign_csr(&token, &data_dir, "tls-client", &csr, &leaf),
        "profile tls-client certifies people (subject_from_csr = false); ca sign-csr binds the \
         certificate to nobody with the CSR's names, so it needs a profile with subject_from_csr = \
         true, such as service-client. Issue a person's certificate through the server \
         (IssueFromCsr with person_external_id)",
    );
    assert!(!leaf.exists());
    assert_refused(
        &sign_csr(&token, &data_dir, "server", &csr, &leaf),
        "unknown certificate profile \"server\"; known profiles: piv-authentication, piv-signature, service-client, smartcard-logon, smime-signing, temporary-piv-authentication, tls-client",
    );
    assert_refused(
        &sign_csr(&token, &data_dir, "smime-signing", &csr, &leaf),
        "profile smime-signing certifies only hardware-attested keys and this key has no attestation; use a profile with allow_unattested_keys = true",
    );
    let garbage = dir.join("garbage.csr");
    std::fs::write(&garbage, b"not a request").unwrap();
    let out = sign_csr(&token, &data_dir, "service-client", &garbage, &leaf);
    assert!(!out.status.success());
    assert!(
        stderr(&out).starts_with("error: CSR cannot be read: not a PKCS#10 request: ")
            && stderr(&out).ends_with("; give a PKCS#10 request in PEM or DER\n"),
        "{}",
        stderr(&out)
    );
    openssl(
        &[
            "req",
            "-new",
            "-key",
            "alice.key",
            "-subj",
            "/O=No Name",
            "-out",
            "nocn.csr",
        ],
        dir,
    );
    assert_refused(
        &sign_csr(
            &token,
            &data_dir,
            "service-client",
            &dir.join("nocn.csr"),
            &leaf,
        ),
        "CSR subject has no commonName; make the request with a CN",
    );
    assert!(!leaf.exists());
    assert_ok(
        &sign_csr(&token, &data_dir, "service-client", &csr, &leaf),
        "ca sign-csr",
    );
    assert_refused(
        &sign_csr(&token, &data_dir, "service-client", &csr, &leaf),
        &format!(
            "{} already exists; refusing to overwrite it, choose another --out",
            leaf.display()
        ),
    );
    assert_refused(
        &tessera(
            &token,
            &[
                "ca",
                "show",
                "--data-dir",
                missing.join("nothing").to_str().unwrap(),
            ],
        ),
        &format!(
            "no CA in {} (ca.toml not found); run `tessera ca init` first or point --data-dir at the CA",
            missing.join("nothing").display()
        ),
    );
}

#[test]
fn profile_requiring_email_refuses_a_subject_without_one() {
    let token = SoftHsmToken::create("ca-email");
    let data_dir = init_ca(&token);
    let hsm = Hsm::open(&token.config()).expect("open HSM");
    let issuing = StoredCa::load(&data_dir).unwrap().issuing_ca(&hsm).unwrap();
    let key = hsm.generate_key_pair("subject", KeySpec::EcP256).unwrap();
    let profiles = ProfileSet::built_in();
    let err = issuing
        .issue(&IssuanceRequest {
            subject: &SubjectParams::new("Alice"),
            public_key_der: key.public_key_der(),
            profile: profiles.get("smime-signing").unwrap(),
            serial: &SerialNumber::random().unwrap(),
            provenance: KeyProvenance::HardwareAttested,
            now: time::OffsetDateTime::now_utc(),
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "profile smime-signing needs an email address for the subject; add an rfc822Name subjectAltName to the request"
    );
}

#[test]
fn ceremony_with_rsa_keys_and_path_lengths() {
    let token = SoftHsmToken::create("ca-rsa");
    let hsm = Hsm::open(&token.config()).expect("open HSM");
    let data_dir = token.dir.path().join("ca");
    let made = ca::init_ca(
        &hsm,
        &data_dir,
        &CaInitParams {
            root_common_name: "RSA Root".into(),
            issuing_common_name: "RSA Issuing".into(),
            organization: Some("Example Org".into()),
            root_key_spec: KeySpec::Rsa3072,
            issuing_key_spec: KeySpec::Rsa2048,
            root_validity_days: 3650,
            issuing_validity_days: 365,
            root_path_len: Some(1),
            issuing_path_len: 0,
            root_key_label: "rsa-root".into(),
            issuing_key_label: "rsa-issuing".into(),
        },
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert!(made.record.issuing_key.contains("object=rsa-issuing"));
    let dir = token.dir.path();
    let text = stdout(&openssl(
        &["x509", "-in", "ca/issuing.pem", "-noout", "-text"],
        dir,
    ));
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("sha256WithRSAEncryption"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    let text = stdout(&openssl(
        &["x509", "-in", "ca/root.pem", "-noout", "-text"],
        dir,
    ));
    assert!(text.contains("CA:TRUE, pathlen:1"), "{text}");
    assert!(
        text.contains("Issuer: O = Example Org, CN = RSA Root"),
        "{text}"
    );
    let csr = p256_csr(dir, "alice");
    assert_ok(
        &sign_csr(
            &token,
            &data_dir,
            "service-client",
            &csr,
            &dir.join("leaf.pem"),
        ),
        "ca sign-csr",
    );
    let out = openssl(
        &[
            "verify",
            "-CAfile",
            "ca/root.pem",
            "-untrusted",
            "ca/issuing.pem",
            "leaf.pem",
        ],
        dir,
    );
    assert_eq!(stdout(&out), "leaf.pem: OK\n");
    pkilint(&dir.join("ca/root.pem"));
    pkilint(&dir.join("ca/issuing.pem"));
    pkilint(&dir.join("leaf.pem"));
}

#[test]
fn bench_prints_the_table_and_ratios_and_leaves_no_keys() {
    let token = SoftHsmToken::create("ca-bench");
    let out = tessera(
        &token,
        &[
            "bench",
            "--count",
            "20",
            "--rsa-count",
            "2",
            "--rounds",
            "1",
        ],
    );
    assert_ok(&out, "tessera bench");
    let table = stdout(&out);
    for (operation, count) in [
        ("C_Sign ECDSA P-256 (SHA-256)", 20),
        ("C_Sign RSA-2048 PKCS#1 v1.5 (SHA-256)", 2),
        ("issue certificate (P-256 CA, tls-client)", 20),
    ] {
        for threads in [1, 2] {
            let line = table
                .lines()
                .find(|l| {
                    l.starts_with(operation)
                        && l[operation.len()..]
                            .split_whitespace()
                            .take(2)
                            .collect::<Vec<_>>()
                            == vec![threads.to_string(), (count * threads).to_string()]
                })
                .unwrap_or_else(|| panic!("no line for {operation} x{threads}:\n{table}"));
            assert_eq!(
                line.split_whitespace().count(),
                operation.split_whitespace().count() + 4,
                "{line}"
            );
        }
    }
    assert!(
        table.contains("issuance / raw P-256 signing, 1 thread(s): "),
        "{table}"
    );
    assert!(
        table.contains("issuance / raw P-256 signing, 2 thread(s): "),
        "{table}"
    );
    let objects = token_objects(&token);
    assert!(
        !objects.contains("tessera-bench"),
        "bench keys left in the token:\n{objects}"
    );
}

#[test]
fn bench_refuses_counts_beyond_its_bound() {
    let token = SoftHsmToken::create("ca-bench-bound");
    let out = tessera(&token, &["bench", "--count", "100001"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains("invalid value '100001' for '--count <COUNT>': 100001 is not in 1..=100000"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_to_be_signed_certificate_is_recorded_before_the_hsm_signs() {
    let token = SoftHsmToken::create("ca-record");
    let data_dir = init_ca(&token);
    let hsm = Hsm::open(&token.config()).expect("open HSM");
    let issuing = StoredCa::load(&data_dir).unwrap().issuing_ca(&hsm).unwrap();
    let key = hsm.generate_key_pair("subject", KeySpec::EcP256).unwrap();
    let profiles = ProfileSet::built_in();
    let subject = SubjectParams::new("Alice");
    let serial = SerialNumber::random().unwrap();
    let request = IssuanceRequest {
        subject: &subject,
        public_key_der: key.public_key_der(),
        profile: profiles.get("tls-client").unwrap(),
        serial: &serial,
        provenance: KeyProvenance::HardwareAttested,
        now: time::OffsetDateTime::now_utc(),
    };
    // Phase 1: the exact tbsCertificate, before anything is signed (the server records it).
    let prepared = issuing.prepare(&request).unwrap();
    let (recorded_serial, recorded_tbs) =
        (prepared.serial().clone(), prepared.to_be_signed().to_vec());
    assert_eq!(recorded_serial, serial);
    // Phase 2: the issuing key signs exactly those bytes; the certificate is assembled around them.
    let signature = issuing.signer().sign(prepared.to_be_signed()).unwrap();
    let issued = prepared.assemble(&signature).unwrap();
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&issued.der).unwrap();
    assert_eq!(cert.tbs_certificate.as_ref(), recorded_tbs.as_slice());
    assert_eq!(cert.raw_serial(), serial.as_bytes());
    assert_eq!(cert.validity().not_before.to_datetime(), issued.not_before);
    assert_eq!(cert.validity().not_after.to_datetime(), issued.not_after);
    // The hand-assembled certificate verifies with OpenSSL.
    let dir = token.dir.path();
    std::fs::write(dir.join("leaf.pem"), issued.to_pem()).unwrap();
    let out = openssl(
        &[
            "verify",
            "-CAfile",
            "ca/root.pem",
            "-untrusted",
            "ca/issuing.pem",
            "leaf.pem",
        ],
        dir,
    );
    assert_eq!(stdout(&out), "leaf.pem: OK\n");

    // What the server answers when recording fails: nothing was signed.
    let err = tessera::ca::CaError::RecordBeforeSigning("database is read-only".into());
    assert_eq!(
        err.to_string(),
        "the certificate was not signed: recording it before signing failed: database is read-only"
    );
}

#[test]
fn a_damaged_ca_directory_is_refused_by_name() {
    let token = SoftHsmToken::create("ca-damaged");
    let data_dir = init_ca(&token);
    let dir = token.dir.path();
    let csr = p256_csr(dir, "alice");
    let leaf = dir.join("leaf.pem");
    let missing_csr = dir.join("missing.csr");
    assert_refused(
        &sign_csr(&token, &data_dir, "service-client", &missing_csr, &leaf),
        &format!(
            "cannot read the CSR {}: No such file or directory (os error 2)",
            missing_csr.display()
        ),
    );

    // ca.toml naming the root key as the issuing key: the key does not match issuing.pem.
    let record_path = data_dir.join("ca.toml");
    let original = std::fs::read_to_string(&record_path).unwrap();
    let record: ca::CaRecord = toml::from_str(&original).unwrap();
    std::fs::write(
        &record_path,
        toml::to_string(&ca::CaRecord {
            root_key: record.root_key.clone(),
            issuing_key: record.root_key.clone(),
        })
        .unwrap(),
    )
    .unwrap();
    assert_refused(
        &sign_csr(&token, &data_dir, "service-client", &csr, &leaf),
        &format!(
            "the HSM key {} does not match the issuing CA certificate; check issuing_key in ca.toml",
            record.root_key
        ),
    );
    std::fs::write(&record_path, "issuing_key = 1\n").unwrap();
    assert_refused(
        &tessera(
            &token,
            &["ca", "show", "--data-dir", data_dir.to_str().unwrap()],
        ),
        &format!(
            "{} is invalid: invalid type: integer `1`, expected a string",
            record_path.display()
        ),
    );
    std::fs::write(&record_path, &original).unwrap();
    std::fs::write(data_dir.join("issuing.pem"), "garbage").unwrap();
    let out = tessera(
        &token,
        &["ca", "show", "--data-dir", data_dir.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).starts_with(&format!(
            "error: {} is invalid: not a PEM certificate: ",
            data_dir.join("issuing.pem").display()
        )),
        "{}",
        stderr(&out)
    );
    assert!(!leaf.exists());
}

#[test]
fn init_parameter_refusals() {
    let token = SoftHsmToken::create("ca-init-params");
    let data_dir = token.dir.path().join("ca");
    let d = data_dir.to_str().unwrap();
    for (flags, message) in [
        (
            vec!["--root-cn", "Same", "--issuing-cn", "Same"],
            "ca init: the root and issuing CAs need different common names",
        ),
        (
            vec!["--root-key-label", "k", "--issuing-key-label", "k"],
            "ca init: the root and issuing keys need different labels",
        ),
        (
            vec!["--root-path-len", "0"],
            "ca init: the root path length (0) must exceed the issuing CA's (0)",
        ),
        (
            vec!["--issuing-validity-days", "0"],
            "ca init: validity must be at least one day",
        ),
        (
            vec!["--root-cn", " "],
            "ca init: the root and issuing common names must not be empty",
        ),
    ] {
        let mut args = vec!["ca", "init", "--data-dir", d];
        args.extend(flags);
        assert_refused(&tessera(&token, &args), message);
    }
    assert!(!data_dir.exists());
    assert!(!token_objects(&token).contains("Private Key Object"));
}

#[test]
fn a_subject_email_that_is_not_ascii_is_refused() {
    let token = SoftHsmToken::create("ca-subject");
    let data_dir = init_ca(&token);
    let hsm = Hsm::open(&token.config()).expect("open HSM");
    let issuing = StoredCa::load(&data_dir).unwrap().issuing_ca(&hsm).unwrap();
    let key = hsm.generate_key_pair("subject", KeySpec::EcP256).unwrap();
    let profiles = ProfileSet::built_in();
    let mut subject = SubjectParams::new("Zoë");
    subject.emails.push("zoë@example.org".into());
    let err = issuing
        .issue(&IssuanceRequest {
            subject: &subject,
            public_key_der: key.public_key_der(),
            profile: profiles.get("tls-client").unwrap(),
            serial: &SerialNumber::random().unwrap(),
            provenance: KeyProvenance::HardwareAttested,
            now: time::OffsetDateTime::now_utc(),
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "subject is invalid: email \"zoë@example.org\" is not ASCII"
    );
}

#[test]
fn a_subject_uri_that_is_not_ascii_is_refused() {
    let token = SoftHsmToken::create("ca-subject");
    let data_dir = init_ca(&token);
    let hsm = Hsm::open(&token.config()).expect("open HSM");
    let issuing = StoredCa::load(&data_dir).unwrap().issuing_ca(&hsm).unwrap();
    let key = hsm.generate_key_pair("subject", KeySpec::EcP256).unwrap();
    let profiles = ProfileSet::built_in();
    let mut subject = SubjectParams::new("Zoë");
    subject.uris.push("tessera:role:zoë".into());
    let err = issuing
        .issue(&IssuanceRequest {
            subject: &subject,
            public_key_der: key.public_key_der(),
            profile: profiles.get("tls-client").unwrap(),
            serial: &SerialNumber::random().unwrap(),
            provenance: KeyProvenance::HardwareAttested,
            now: time::OffsetDateTime::now_utc(),
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "subject is invalid: URI \"tessera:role:zoë\" is not ASCII"
    );
}

#[test]
fn concurrent_issuance_from_one_issuing_ca_gives_correct_certificates() {
    let token = SoftHsmToken::create("ca-concurrent");
    let data_dir = init_ca(&token);
    let hsm = Hsm::open(&token.config()).expect("open HSM");
    let issuing = StoredCa::load(&data_dir).unwrap().issuing_ca(&hsm).unwrap();
    let key = hsm.generate_key_pair("subject", KeySpec::EcP256).unwrap();
    let profiles = ProfileSet::built_in();
    let profile = profiles.get("tls-client").unwrap();
    let issued: Vec<(String, Vec<u8>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let (issuing, key) = (&issuing, &key);
                scope.spawn(move || {
                    (0..5)
                        .map(|i| {
                            let cn = format!("user {t}-{i}");
                            let cert = issuing
                                .issue(&IssuanceRequest {
                                    subject: &SubjectParams::new(cn.clone()),
                                    public_key_der: key.public_key_der(),
                                    profile,
                                    serial: &SerialNumber::random().unwrap(),
                                    provenance: KeyProvenance::HardwareAttested,
                                    now: time::OffsetDateTime::now_utc(),
                                })
                                .unwrap();
                            (cn, cert.der)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(issued.len(), 20);
    let dir = token.dir.path();
    let mut files = Vec::new();
    for (n, (cn, der)) in issued.iter().enumerate() {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
        assert_eq!(cert.subject().to_string(), format!("CN={cn}"));
        let name = format!("leaf{n}.pem");
        std::fs::write(dir.join(&name), tessera::ca::issue::certificate_pem(der)).unwrap();
        files.push(name);
    }
    let mut args = vec![
        "verify",
        "-CAfile",
        "ca/root.pem",
        "-untrusted",
        "ca/issuing.pem",
    ];
    args.extend(files.iter().map(String::as_str));
    let out = openssl(&args, dir);
    let expected: String = files.iter().map(|f| format!("{f}: OK\n")).collect();
    assert_eq!(stdout(&out), expected);
}

/// `ca root-crl`: an empty CRL signed by the root key in the HSM, verified by openssl under
/// root.pem, clean under pkilint, its number growing run by run; bad input named.
#[test]
fn root_crl_is_signed_by_the_root_and_its_number_grows() {
    let token = SoftHsmToken::create("rootcrl");
    let data_dir = init_ca(&token);
    let dir = token.dir.path();
    let out_path = dir.join("root-crl.pem");
    let args = [
        "ca",
        "root-crl",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
    ];
    let out = tessera(&token, &args);
    assert_ok(&out, "ca root-crl");
    assert_eq!(
        stdout(&out),
        format!(
            "root CRL number 1, next update in 30 days, written to {}\n",
            out_path.display()
        )
    );
    let out = run_tool(
        "openssl",
        &[
            "crl",
            "-in",
            out_path.to_str().unwrap(),
            "-CAfile",
            data_dir.join("root.pem").to_str().unwrap(),
            "-noout",
            "-text",
        ],
        dir,
    );
    assert!(stderr(&out).contains("verify OK"), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("No Revoked Certificates."), "{text}");
    assert!(text.contains("Issuer: CN = Tessera Root CA"), "{text}");
    assert!(
        text.contains("X509v3 CRL Number: \n                1\n"),
        "{text}"
    );

    let der = pem_to_der(&out_path);
    let der_path = dir.join("root-crl.der");
    std::fs::write(&der_path, der).unwrap();
    let lint = run_tool(
        "lint_crl",
        &[
            "lint",
            "-t",
            "CRL",
            "-p",
            "PKIX",
            "-s",
            "INFO",
            der_path.to_str().unwrap(),
        ],
        dir,
    );
    assert_eq!(
        (
            lint.status.code(),
            stdout(&lint).trim(),
            stderr(&lint).as_str()
        ),
        (Some(0), "", "")
    );

    let out = tessera(&token, &args);
    assert_ok(&out, "ca root-crl (second)");
    assert!(
        stdout(&out).starts_with("root CRL number 2,"),
        "{}",
        stdout(&out)
    );

    let mut bad_days = args.to_vec();
    bad_days.extend(["--days", "0"]);
    assert_refused(
        &tessera(&token, &bad_days),
        "--days must be between 1 and 366, got 0",
    );
    std::fs::write(data_dir.join("root-crl-number"), "two\n").unwrap();
    assert_refused(
        &tessera(&token, &args),
        &format!(
            "{} is invalid: \"two\" is not a CRL number",
            data_dir.join("root-crl-number").display()
        ),
    );
}
