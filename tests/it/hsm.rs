//! The `hsm` module against a real SoftHSM2 token (one throwaway token per test; run with
//! `cargo nextest run --test hsm`).

use crate::harness;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use harness::softhsm::{SOFTHSM_MODULE, SoftHsmToken};
use tessera::hsm::{Hsm, HsmConfig, HsmError, HsmKey, KeySpec, SignatureScheme};

const MESSAGE: &[u8] = b"to be signed inside the HSM";

/// Associated data the wrapping tests bind their blobs to.
const AAD: &[u8] = b"tessera/test/place-1";

fn token_and_hsm(label: &str) -> (SoftHsmToken, Hsm) {
    let token = SoftHsmToken::create(label);
    let hsm = Hsm::open(&token.config()).expect("open the HSM");
    (token, hsm)
}

fn scheme_for(spec: KeySpec) -> SignatureScheme {
    match spec {
        KeySpec::EcP256 => SignatureScheme::EcdsaSha256,
        KeySpec::EcP384 => SignatureScheme::EcdsaSha384,
        _ => SignatureScheme::RsaPkcs1Sha256,
    }
}

/// Verifies with the RustCrypto verifiers; panics on a bad signature.
fn verify_rustcrypto(key: &HsmKey, scheme: SignatureScheme, message: &[u8], sig: &[u8]) {
    use signature::Verifier;
    use spki::DecodePublicKey;
    let der = key.public_key_der();
    match scheme {
        SignatureScheme::EcdsaSha256 if key.spec() == KeySpec::EcP256 => {
            let vk = p256::ecdsa::VerifyingKey::from_public_key_der(der).unwrap();
            let sig = p256::ecdsa::Signature::from_der(sig).unwrap();
            vk.verify(message, &sig).expect("P-256 signature verifies");
        }
        SignatureScheme::EcdsaSha384 if key.spec() == KeySpec::EcP384 => {
            let vk = p384::ecdsa::VerifyingKey::from_public_key_der(der).unwrap();
            let sig = p384::ecdsa::Signature::from_der(sig).unwrap();
            vk.verify(message, &sig).expect("P-384 signature verifies");
        }
        SignatureScheme::RsaPkcs1Sha256 => {
            let pk = rsa::RsaPublicKey::from_public_key_der(der).unwrap();
            let vk = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(pk);
            let sig = rsa::pkcs1v15::Signature::try_from(sig).unwrap();
            vk.verify(message, &sig)
                .expect("RSA PKCS#1 v1.5 signature verifies");
        }
        SignatureScheme::RsaPssSha256 => {
            let pk = rsa::RsaPublicKey::from_public_key_der(der).unwrap();
            let vk = rsa::pss::VerifyingKey::<sha2::Sha256>::new(pk);
            let sig = rsa::pss::Signature::try_from(sig).unwrap();
            vk.verify(message, &sig)
                .expect("RSA-PSS signature verifies");
        }
        other => panic!("no verifier for {other:?} with {:?}", key.spec()),
    }
}

/// Verifies with `openssl dgst -verify`; returns openssl's output line.
fn verify_openssl(
    dir: &Path,
    key: &HsmKey,
    scheme: SignatureScheme,
    message: &[u8],
    sig: &[u8],
) -> String {
    let der = dir.join("pub.der");
    let pem = dir.join("pub.pem");
    let msg = dir.join("msg");
    let sig_path = dir.join("sig");
    std::fs::write(&der, key.public_key_der()).unwrap();
    std::fs::write(&msg, message).unwrap();
    std::fs::write(&sig_path, sig).unwrap();
    let conv = Command::new("openssl")
        .args(["pkey", "-pubin", "-inform", "DER", "-in"])
        .arg(&der)
        .arg("-out")
        .arg(&pem)
        .output()
        .expect("openssl (scripts/install-deps.sh installs it)");
    assert!(
        conv.status.success(),
        "openssl pkey: {}",
        String::from_utf8_lossy(&conv.stderr)
    );
    let digest = if scheme == SignatureScheme::EcdsaSha384 {
        "-sha384"
    } else {
        "-sha256"
    };
    let mut cmd = Command::new("openssl");
    cmd.args(["dgst", digest, "-verify"])
        .arg(&pem)
        .arg("-signature")
        .arg(&sig_path);
    if scheme == SignatureScheme::RsaPssSha256 {
        cmd.args([
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:32",
        ]);
    }
    let out = cmd.arg(&msg).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "openssl dgst: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The private-key blocks of `pkcs11-tool -O`, keyed by label.
fn private_key_blocks(listing: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    for block in listing.split("Private Key Object").skip(1) {
        let block: String = block.split("Public Key Object").next().unwrap().to_string();
        let label = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("label:"))
            .map(|l| l.trim().to_string())
            .unwrap_or_default();
        blocks.push((label, block));
    }
    blocks
}

#[test]
fn generated_keys_of_every_spec_are_sensitive_and_never_extractable() {
    let (token, hsm) = token_and_hsm("keygen");
    let specs = [
        KeySpec::EcP256,
        KeySpec::EcP384,
        KeySpec::Rsa2048,
        KeySpec::Rsa3072,
        KeySpec::Rsa4096,
    ];
    for spec in specs {
        let label = format!("key-{spec}");
        let key = hsm.generate_key_pair(&label, spec).unwrap();
        assert_eq!(key.spec(), spec);
        assert_eq!(key.label(), label);
        // Every key signs, and the signature verifies against the SPKI we return.
        let scheme = scheme_for(spec);
        let sig = key.sign_with(scheme, MESSAGE).unwrap();
        verify_rustcrypto(&key, scheme, MESSAGE, &sig);
        // Found again through its URI, with the same public key.
        let again = hsm.find_key(&key.uri()).unwrap();
        assert_eq!(again.public_key_der(), key.public_key_der());
        assert_eq!(again.spec(), spec);
    }
    let out = token.pkcs11_tool(&["-O"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    let blocks = private_key_blocks(&listing);
    assert_eq!(
        blocks.len(),
        specs.len(),
        "pkcs11-tool -O listed:\n{listing}"
    );
    for (label, block) in &blocks {
        let access = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("Access:"))
            .unwrap_or_else(|| panic!("no Access line for {label}:\n{block}"))
            .trim();
        assert_eq!(
            access, "sensitive, always sensitive, never extractable, local",
            "key {label}:\n{block}"
        );
        let usage = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("Usage:"))
            .unwrap()
            .trim();
        assert_eq!(usage, "sign", "key {label}:\n{block}");
    }
    let mut labels: Vec<&str> = blocks.iter().map(|(l, _)| l.as_str()).collect();
    labels.sort();
    assert_eq!(
        labels,
        [
            "key-p256",
            "key-p384",
            "key-rsa2048",
            "key-rsa3072",
            "key-rsa4096"
        ]
    );
}

#[test]
fn ecdsa_signatures_verify_with_openssl_and_rustcrypto() {
    let (token, hsm) = token_and_hsm("ecdsa");
    for (spec, scheme) in [
        (KeySpec::EcP256, SignatureScheme::EcdsaSha256),
        (KeySpec::EcP384, SignatureScheme::EcdsaSha384),
    ] {
        let key = hsm.generate_key_pair(&format!("ec-{spec}"), spec).unwrap();
        let sig = key.sign_with(scheme, MESSAGE).unwrap();
        assert_eq!(sig[0], 0x30, "DER SEQUENCE");
        verify_rustcrypto(&key, scheme, MESSAGE, &sig);
        assert_eq!(
            verify_openssl(token.dir.path(), &key, scheme, MESSAGE, &sig),
            "Verified OK"
        );
        // A different message does not verify.
        let other = key.sign_with(scheme, b"another message").unwrap();
        let text = Command::new("openssl")
            .args([
                "dgst",
                if spec == KeySpec::EcP384 {
                    "-sha384"
                } else {
                    "-sha256"
                },
                "-verify",
            ])
            .arg(token.dir.path().join("pub.pem"))
            .arg("-signature")
            .arg({
                let p = token.dir.path().join("other.sig");
                std::fs::write(&p, &other).unwrap();
                p
            })
            .arg(token.dir.path().join("msg"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&text.stdout).trim(),
            "Verification failure"
        );
    }
}

#[test]
fn rsa_pkcs1_and_pss_signatures_verify_with_openssl_and_rustcrypto() {
    let (token, hsm) = token_and_hsm("rsa");
    let key = hsm.generate_key_pair("rsa", KeySpec::Rsa2048).unwrap();
    for scheme in [
        SignatureScheme::RsaPkcs1Sha256,
        SignatureScheme::RsaPssSha256,
    ] {
        let sig = key.sign_with(scheme, MESSAGE).unwrap();
        assert_eq!(sig.len(), 256);
        verify_rustcrypto(&key, scheme, MESSAGE, &sig);
        assert_eq!(
            verify_openssl(token.dir.path(), &key, scheme, MESSAGE, &sig),
            "Verified OK"
        );
    }
    let err = key
        .sign_with(SignatureScheme::EcdsaSha256, MESSAGE)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "signature scheme EcdsaSha256 cannot be used with a Rsa2048 key; use an ECDSA scheme for EC keys and an RSA scheme for RSA keys"
    );
}

#[test]
fn key_uris_find_exactly_one_key() {
    let (token, hsm) = token_and_hsm("uris");
    let key = hsm.generate_key_pair("root", KeySpec::EcP256).unwrap();
    assert!(
        key.uri().starts_with("pkcs11:token=uris;object=root;id=%"),
        "{}",
        key.uri()
    );
    assert!(key.uri().ends_with(";type=private"));
    // By label alone, by label + id, by the full URI.
    for uri in [
        "pkcs11:object=root".to_string(),
        "pkcs11:token=uris;object=root;type=private".into(),
        key.uri(),
    ] {
        assert_eq!(
            hsm.find_key(&uri).unwrap().public_key_der(),
            key.public_key_der(),
            "{uri}"
        );
    }
    let none = hsm
        .find_key("pkcs11:token=uris;object=missing;type=private")
        .unwrap_err();
    assert_eq!(
        none.to_string(),
        "no private key matches pkcs11:token=uris;object=missing;type=private; check the URI (list keys with pkcs11-tool -O) or run `tessera ca init`"
    );
    assert!(matches!(none, HsmError::KeyNotFound { .. }));
    // Two key pairs with one label, made behind Tessera's back with pkcs11-tool.
    for id in ["01", "02"] {
        token.pkcs11_tool(&[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "dup",
            "--id",
            id,
        ]);
    }
    let several = hsm.find_key("pkcs11:object=dup;type=private").unwrap_err();
    assert_eq!(
        several.to_string(),
        "2 private keys match pkcs11:object=dup;type=private; add id= to the URI so that it names exactly one"
    );
    assert!(matches!(several, HsmError::KeyAmbiguous { count: 2, .. }));
    // With the id, it is one again, and it signs.
    let one = hsm
        .find_key("pkcs11:object=dup;id=%02;type=private")
        .unwrap();
    let sig = one
        .sign_with(SignatureScheme::EcdsaSha256, MESSAGE)
        .unwrap();
    verify_rustcrypto(&one, SignatureScheme::EcdsaSha256, MESSAGE, &sig);

    let wrong_token = hsm.find_key("pkcs11:token=other;object=root").unwrap_err();
    assert_eq!(
        wrong_token.to_string(),
        "key URI pkcs11:token=other;object=root names token `other` but the HSM config opens token `uris`; fix the URI or the config"
    );
    let not_private = hsm.find_key("pkcs11:object=root;type=public").unwrap_err();
    assert_eq!(
        not_private.to_string(),
        "invalid pkcs11: URI `pkcs11:object=root;type=public`: type=public does not name a private key; write it as pkcs11:token=LABEL;object=KEY;type=private (RFC 7512)"
    );
}

#[test]
fn generating_over_an_existing_label_is_refused_and_destroy_removes_both_halves() {
    let (token, hsm) = token_and_hsm("labels");
    let key = hsm.generate_key_pair("ca", KeySpec::EcP256).unwrap();
    let err = hsm.generate_key_pair("ca", KeySpec::EcP384).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a key labelled `ca` already exists on token labels; choose another label or destroy the old key first"
    );
    hsm.destroy_key_pair(&key).unwrap();
    let listing = String::from_utf8_lossy(&token.pkcs11_tool(&["-O"]).stdout).to_string();
    assert!(!listing.contains("label:      ca"), "{listing}");
    assert!(matches!(
        hsm.find_key("pkcs11:object=ca").unwrap_err(),
        HsmError::KeyNotFound { .. }
    ));
    // The label is free again.
    hsm.generate_key_pair("ca", KeySpec::EcP256).unwrap();
}

#[test]
fn wrapped_secrets_round_trip_and_tampering_is_refused() {
    let (token, hsm) = token_and_hsm("wrap");
    hsm.generate_wrapping_key("secrets").unwrap();
    let secret = b"management key 0123456789abcdef";
    let wrapped = hsm.wrap_secret("secrets", secret, AAD).unwrap();
    assert_eq!(wrapped.len(), 12 + secret.len() + 16);
    assert!(!wrapped.windows(secret.len()).any(|w| w == secret));
    let again = hsm.wrap_secret("secrets", secret, AAD).unwrap();
    assert_ne!(wrapped, again, "a fresh IV each time");
    assert_eq!(
        hsm.unwrap_secret("secrets", &wrapped, AAD)
            .unwrap()
            .as_slice(),
        secret
    );

    let refused = "wrapped secret refused by key `secrets` (C_Decrypt returned CKR_GENERAL_ERROR: the authentication tag does not match); the blob is damaged, was tampered with, or was wrapped by another key";
    for i in [0, 12, wrapped.len() - 1] {
        let mut tampered = wrapped.clone();
        tampered[i] ^= 0x01;
        assert_eq!(
            hsm.unwrap_secret("secrets", &tampered, AAD)
                .unwrap_err()
                .to_string(),
            refused,
            "byte {i}"
        );
    }
    assert_eq!(
        hsm.unwrap_secret("secrets", &wrapped[..20], AAD)
            .unwrap_err()
            .to_string(),
        "wrapped secret refused by key `secrets` (20 bytes is too short for IV and tag); the blob is damaged, was tampered with, or was wrapped by another key"
    );
    // Other associated data (another place for the secret) cannot open it, nor none.
    for other in [&b"tessera/test/place-2"[..], b"", b"tessera-wrap-v1"] {
        assert_eq!(
            hsm.unwrap_secret("secrets", &wrapped, other)
                .unwrap_err()
                .to_string(),
            refused,
            "{}",
            String::from_utf8_lossy(other)
        );
    }
    // Another key cannot open it.
    hsm.generate_wrapping_key("other").unwrap();
    assert_eq!(
        hsm.unwrap_secret("other", &wrapped, AAD)
            .unwrap_err()
            .to_string(),
        refused.replace("`secrets`", "`other`")
    );
    assert_eq!(
        hsm.wrap_secret("absent", secret, AAD)
            .unwrap_err()
            .to_string(),
        "no AES wrapping key labelled `absent` on token wrap; create it with generate_wrapping_key"
    );
    // The wrapping key is sensitive and never extractable too.
    let listing = String::from_utf8_lossy(&token.pkcs11_tool(&["-O", "--type", "secrkey"]).stdout)
        .to_string();
    assert!(
        listing.contains("Secret Key Object; AES length 32"),
        "{listing}"
    );
    assert!(
        listing.contains("Access:     sensitive, always sensitive, never extractable, local"),
        "{listing}"
    );
}

fn config_text(token: &SoftHsmToken, module: &str, token_line: &str, pin_line: &str) -> String {
    let _ = token;
    format!("module = \"{module}\"\n{token_line}\n{pin_line}\npool_size = 2\n")
}

#[test]
fn open_errors_name_the_problem() {
    let token = SoftHsmToken::create("errors");
    let pin_file = token.dir.path().join("user-pin");
    let pin_line = format!("pin_file = \"{}\"", pin_file.display());
    let open = |name: &str, text: String| -> String {
        let path = token.write_config(name, &text);
        Hsm::open(&HsmConfig::load(&path).unwrap())
            .unwrap_err()
            .to_string()
    };

    assert_eq!(
        open(
            "nomodule.toml",
            config_text(
                &token,
                "/nonexistent/libpkcs11.so",
                "token_label = \"errors\"",
                &pin_line
            )
        ),
        "cannot load PKCS#11 module /nonexistent/libpkcs11.so: no such file; check `module` in the HSM config (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so, installed by scripts/install-deps.sh)"
    );
    let not_pkcs11 = [
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/aarch64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("zlib (a shared library that is not a PKCS#11 module)");
    assert_eq!(
        open(
            "wrongmodule.toml",
            config_text(&token, not_pkcs11, "token_label = \"errors\"", &pin_line)
        ),
        format!(
            "cannot load PKCS#11 module {not_pkcs11}: it has no C_GetFunctionList, so it is not a PKCS#11 module; check `module` in the HSM config (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so, installed by scripts/install-deps.sh)"
        )
    );
    let missing = open(
        "notoken.toml",
        config_text(
            &token,
            SOFTHSM_MODULE,
            "token_label = \"absent\"",
            &pin_line,
        ),
    );
    assert_eq!(
        missing,
        format!(
            "no token labelled `absent` in PKCS#11 module /usr/lib/softhsm/libsofthsm2.so (tokens present: `errors` serial {}); check token_label/token_serial in the HSM config (SoftHSM2: SOFTHSM2_CONF)",
            token.serial()
        )
    );
    let by_serial = open(
        "noserial.toml",
        config_text(&token, SOFTHSM_MODULE, "token_serial = \"0000\"", &pin_line),
    );
    assert!(
        by_serial.starts_with("no token with serial 0000 in PKCS#11 module"),
        "{by_serial}"
    );

    // Wrong PIN (in a 0600 file).
    let wrong = token.dir.path().join("wrong-pin");
    std::fs::write(&wrong, "not-the-pin\n").unwrap();
    set_mode(&wrong, 0o600);
    assert_eq!(
        open(
            "wrongpin.toml",
            config_text(
                &token,
                SOFTHSM_MODULE,
                "token_label = \"errors\"",
                &format!("pin_file = \"{}\"", wrong.display())
            )
        ),
        "HSM login to token errors failed: wrong user PIN (CKR_PIN_INCORRECT); fix the PIN source in the HSM config before the token locks"
    );
    // A PIN file others can read is refused before it is read.
    let loose = token.dir.path().join("loose-pin");
    std::fs::write(&loose, token.user_pin()).unwrap();
    set_mode(&loose, 0o644);
    let loose_s = loose.display().to_string();
    assert_eq!(
        open(
            "loose.toml",
            config_text(
                &token,
                SOFTHSM_MODULE,
                "token_label = \"errors\"",
                &format!("pin_file = \"{loose_s}\"")
            )
        ),
        format!("HSM PIN file {loose_s} has mode 0644; it must be 0600 (chmod 600 {loose_s})")
    );
    set_mode(&loose, 0o640);
    assert_eq!(
        open(
            "loose2.toml",
            config_text(
                &token,
                SOFTHSM_MODULE,
                "token_label = \"errors\"",
                &format!("pin_file = \"{loose_s}\"")
            )
        ),
        format!("HSM PIN file {loose_s} has mode 0640; it must be 0600 (chmod 600 {loose_s})")
    );
    set_mode(&loose, 0o400);
    Hsm::open(
        &HsmConfig::load(&token.write_config(
            "strict.toml",
            config_text(
                &token,
                SOFTHSM_MODULE,
                "token_label = \"errors\"",
                &format!("pin_file = \"{loose_s}\""),
            ),
        ))
        .unwrap(),
    )
    .expect("mode 0400 is stricter than 0600 and accepted");
    // PIN from an environment variable that is not set.
    assert_eq!(
        open(
            "noenv.toml",
            config_text(
                &token,
                SOFTHSM_MODULE,
                "token_label = \"errors\"",
                "pin_env = \"TESSERA_TEST_PIN_NEVER_SET\""
            )
        ),
        "HSM PIN environment variable TESSERA_TEST_PIN_NEVER_SET is not set; export it or use pin_file in the HSM config"
    );
}

#[test]
fn pin_from_environment_and_token_by_serial() {
    let token = SoftHsmToken::create("by-serial");
    let serial = token.serial();
    #[allow(unsafe_code)]
    // SAFETY: one process per test (nextest); no other thread reads the environment yet.
    unsafe {
        std::env::set_var("TESSERA_TEST_PIN", token.user_pin())
    };
    let path = token.write_config(
        "serial.toml",
        format!("module = \"{SOFTHSM_MODULE}\"\ntoken_serial = \"{serial}\"\npin_env = \"TESSERA_TEST_PIN\"\n\n[keys]\nroot = \"pkcs11:object=r\"\n"),
    );
    let config = HsmConfig::load(&path).unwrap();
    assert_eq!(config.key_uri("root").unwrap(), "pkcs11:object=r");
    assert_eq!(
        config.key_uri("issuing").unwrap_err().to_string(),
        "HSM config has no key named `issuing`; add it under [keys] as a pkcs11: URI"
    );
    let hsm = Hsm::open(&config).unwrap();
    assert_eq!(hsm.token_label(), "by-serial");
    let key = hsm.generate_key_pair("r", KeySpec::EcP256).unwrap();
    hsm.find_key(config.key_uri("root").unwrap()).unwrap();
    key.sign_with(SignatureScheme::EcdsaSha256, MESSAGE)
        .unwrap();
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Closes every session this process has on the token, through a second handle on the same
/// PKCS#11 module (cryptoki does not wrap C_CloseAllSessions, so cryptoki-sys is used here).
struct SessionKiller {
    lib: cryptoki_sys::Pkcs11,
    slot: cryptoki_sys::CK_SLOT_ID,
}

impl SessionKiller {
    fn new(token_label: &str) -> SessionKiller {
        let ctx = cryptoki::context::Pkcs11::new(SOFTHSM_MODULE).unwrap();
        // Already initialised by the Hsm in this process: CKR_CRYPTOKI_ALREADY_INITIALIZED is fine.
        let _ = ctx.initialize(cryptoki::context::CInitializeArgs::new(
            cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
        ));
        let slot = ctx
            .get_slots_with_initialized_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == token_label)
            .expect("the test token");
        #[allow(unsafe_code)]
        // SAFETY: loads the same module again (dlopen returns the already loaded copy).
        let lib = unsafe { cryptoki_sys::Pkcs11::new(SOFTHSM_MODULE) }.unwrap();
        SessionKiller {
            lib,
            slot: slot.id() as cryptoki_sys::CK_SLOT_ID,
        }
    }

    /// C_CloseAllSessions on the token, between two PKCS#11 calls of `hsm` (never during one:
    /// SoftHSM2 would free a session under a running C_Sign and crash; see
    /// `Hsm::with_no_call_in_flight`). Sessions borrowed by signing threads die all the same.
    fn close_all_sessions(&self, hsm: &Hsm) {
        #[allow(unsafe_code)]
        // SAFETY: a plain PKCS#11 call with a valid slot id on an initialised module.
        let rv = hsm.with_no_call_in_flight(|| unsafe { self.lib.C_CloseAllSessions(self.slot) });
        assert_eq!(rv, cryptoki_sys::CKR_OK, "C_CloseAllSessions");
    }
}

#[test]
fn signing_recovers_after_all_sessions_are_closed() {
    let (_token, hsm) = token_and_hsm("recover-one");
    let key = hsm.generate_key_pair("k", KeySpec::EcP256).unwrap();
    key.sign_with(SignatureScheme::EcdsaSha256, MESSAGE)
        .unwrap();
    assert_eq!(hsm.recoveries(), 0);
    let killer = SessionKiller::new("recover-one");
    killer.close_all_sessions(&hsm);
    // The pooled session is dead and the login gone; the next call reopens, logs in, retries.
    let sig = key
        .sign_with(SignatureScheme::EcdsaSha256, MESSAGE)
        .unwrap();
    verify_rustcrypto(&key, SignatureScheme::EcdsaSha256, MESSAGE, &sig);
    assert!(
        hsm.recoveries() >= 1,
        "the dead session was noticed and replaced"
    );
    // Wrapping keys and lookups work again too.
    hsm.generate_wrapping_key("w").unwrap();
    killer.close_all_sessions(&hsm);
    let wrapped = hsm.wrap_secret("w", b"s", AAD).unwrap();
    killer.close_all_sessions(&hsm);
    assert_eq!(
        hsm.unwrap_secret("w", &wrapped, AAD).unwrap().as_slice(),
        b"s"
    );
    killer.close_all_sessions(&hsm);
    hsm.find_key(&key.uri()).unwrap();
}

#[test]
fn signing_under_load_recovers_while_sessions_are_closed_repeatedly() {
    let (_token, hsm) = token_and_hsm("recover-load");
    let key = hsm.generate_key_pair("k", KeySpec::EcP256).unwrap();
    let killer = SessionKiller::new("recover-load");
    let stop = Arc::new(AtomicBool::new(false));
    let signed = Arc::new(AtomicUsize::new(0));
    let retryable = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (key, stop, signed, retryable) =
                (key.clone(), stop.clone(), signed.clone(), retryable.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match key.sign_with(SignatureScheme::EcdsaSha256, MESSAGE) {
                        Ok(sig) => {
                            verify_rustcrypto(&key, SignatureScheme::EcdsaSha256, MESSAGE, &sig);
                            signed.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) if e.is_retryable() => {
                            assert!(
                                e.to_string()
                                    .starts_with("HSM session lost during C_Sign (CKR_"),
                                "{e}"
                            );
                            retryable.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("non-retryable error under session loss: {e}"),
                    }
                }
                // After the storm every signature succeeds and verifies.
                for _ in 0..20 {
                    let sig = key
                        .sign_with(SignatureScheme::EcdsaSha256, MESSAGE)
                        .expect("signing after recovery");
                    verify_rustcrypto(&key, SignatureScheme::EcdsaSha256, MESSAGE, &sig);
                }
            })
        })
        .collect();
    // Bounded by count, not time: 200 closes, each after some signatures went through.
    for _ in 0..200 {
        let before = signed.load(Ordering::SeqCst);
        let failed_before = retryable.load(Ordering::SeqCst);
        killer.close_all_sessions(&hsm);
        while signed.load(Ordering::SeqCst) < before + 2
            && retryable.load(Ordering::SeqCst) == failed_before
        {
            std::thread::yield_now();
            if workers.iter().all(|w| w.is_finished()) {
                break;
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("no signing thread panicked");
    }
    assert!(
        hsm.recoveries() >= 100,
        "sessions were replaced: {}",
        hsm.recoveries()
    );
    eprintln!(
        "signed {} times, {} retryable errors, {} recoveries",
        signed.load(Ordering::SeqCst),
        retryable.load(Ordering::SeqCst),
        hsm.recoveries()
    );
    // One more signature from this thread, after all of it.
    key.sign_with(SignatureScheme::EcdsaSha256, MESSAGE)
        .unwrap();
}

#[test]
fn many_tokio_tasks_share_a_small_pool() {
    let token = SoftHsmToken::create("tokio");
    let pin_file = token.dir.path().join("user-pin");
    let path = token.write_config(
        "small.toml",
        format!(
            "module = \"{SOFTHSM_MODULE}\"\ntoken_label = \"tokio\"\npin_file = \"{}\"\npool_size = 2\n",
            pin_file.display()
        ),
    );
    let hsm = Hsm::open(&HsmConfig::load(&path).unwrap()).unwrap();
    let key = hsm.generate_key_pair("k", KeySpec::EcP256).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let results = runtime.block_on(async {
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let key = key.clone();
                tokio::task::spawn_blocking(move || {
                    let message = format!("message {i}");
                    let sig = key.sign_with(SignatureScheme::EcdsaSha256, message.as_bytes());
                    (message, sig)
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.expect("task did not panic"));
        }
        results
    });
    assert_eq!(results.len(), 32);
    for (message, sig) in results {
        let sig = sig.expect("every task signs");
        verify_rustcrypto(&key, SignatureScheme::EcdsaSha256, message.as_bytes(), &sig);
    }
    // The pool never opened more than pool_size sessions (SoftHSM2 does not report its
    // session count, so the pool's own count is checked).
    let open = hsm.open_sessions();
    assert!((1..=2).contains(&open), "{open} sessions open");
}

#[test]
fn a_caller_that_finds_no_free_session_gets_a_retryable_timeout() {
    let token = SoftHsmToken::create("busy");
    let pin_file = token.dir.path().join("user-pin");
    let path = token.write_config(
        "one.toml",
        format!(
            "module = \"{SOFTHSM_MODULE}\"\ntoken_label = \"busy\"\npin_file = \"{}\"\npool_size = 1\npool_wait_seconds = 1\n",
            pin_file.display()
        ),
    );
    let hsm = Hsm::open(&HsmConfig::load(&path).unwrap()).unwrap();
    let key = hsm.generate_key_pair("k", KeySpec::EcP256).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // While no call may run, two signers compete for the one session: the one that gets it
    // waits for the pause to end, the other one finds no free session and gives up.
    let first = hsm.with_no_call_in_flight(|| {
        for _ in 0..2 {
            let (key, tx) = (key.clone(), tx.clone());
            std::thread::spawn(move || {
                let _ = tx.send(key.sign_with(SignatureScheme::EcdsaSha256, MESSAGE));
            });
        }
        rx.recv().unwrap()
    });
    let err = first.unwrap_err();
    assert_eq!(
        err.to_string(),
        "no HSM session became free within 1 s for C_Sign; raise pool_size in the HSM config or retry later"
    );
    assert!(err.is_retryable());
    // The other signer goes on once the pause is over.
    let sig = rx
        .recv()
        .unwrap()
        .expect("the signer holding the session succeeds");
    verify_rustcrypto(&key, SignatureScheme::EcdsaSha256, MESSAGE, &sig);
}

#[test]
fn a_module_that_fails_to_initialise_is_named() {
    #[allow(unsafe_code)]
    // No token made here: SoftHSM2 is pointed at a configuration file that does not exist.
    // SAFETY: one process per test (nextest); no other thread reads the environment yet.
    unsafe {
        std::env::set_var("SOFTHSM2_CONF", "/nonexistent/softhsm2.conf")
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hsm.toml");
    std::fs::write(
        &path,
        format!("module = \"{SOFTHSM_MODULE}\"\ntoken_label = \"t\"\npin_env = \"TESSERA_TEST_PIN_NEVER_SET\"\n"),
    )
    .unwrap();
    let err = Hsm::open(&HsmConfig::load(&path).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "PKCS#11 module /usr/lib/softhsm/libsofthsm2.so failed to initialise (CKR_GENERAL_ERROR); check that it is the right module for this HSM and its own configuration (SOFTHSM2_CONF for SoftHSM2)"
    );
}
