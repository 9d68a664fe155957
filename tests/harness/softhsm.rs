//! Throwaway SoftHSM2 tokens for tests: one token per test in a temp dir, made by
//! `softhsm/new-token.sh` (its own SOFTHSM2_CONF, random PINs in 0600 files, an hsm.toml).
//!
//! SoftHSM2 reads SOFTHSM2_CONF once, at C_Initialize, so a process can only use the tokens of
//! one configuration: tests run under `cargo nextest` (one process per test) and each test makes
//! its token before opening the HSM.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const INSTALL_HINT: &str = "install SoftHSM2 and OpenSC with scripts/install-deps.sh (as root)";

/// A SoftHSM2 token that lives as long as this value (its directory is removed on drop).
pub struct SoftHsmToken {
    pub dir: tempfile::TempDir,
    pub label: String,
    /// The token's own SoftHSM2 configuration file.
    pub softhsm2_conf: PathBuf,
    /// The Tessera HSM config written for it (pin_file = DIR/user-pin).
    pub config_path: PathBuf,
}

impl SoftHsmToken {
    /// Makes a token labelled `label` and points this process's SOFTHSM2_CONF at it.
    pub fn create(label: &str) -> SoftHsmToken {
        static CREATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        assert!(
            !CREATED.swap(true, std::sync::atomic::Ordering::SeqCst),
            "a second SoftHSM2 token in one test process: SoftHSM2 reads SOFTHSM2_CONF once per \
             process, so run the tests with `cargo nextest run` (one process per test)"
        );
        assert!(
            Path::new(SOFTHSM_MODULE).exists(),
            "SoftHSM2 module {SOFTHSM_MODULE} is missing; {INSTALL_HINT}"
        );
        let dir = tempfile::Builder::new()
            .prefix("tessera-softhsm-")
            .tempdir()
            .expect("temp dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("softhsm/new-token.sh");
        let out = Command::new(&script)
            .arg(dir.path())
            .arg(label)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "softhsm/new-token.sh failed ({}): {}; {INSTALL_HINT}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("export SOFTHSM2_CONF="),
            "unexpected output: {stdout}"
        );
        let softhsm2_conf = dir.path().join("softhsm2.conf");
        let config_path = dir.path().join("hsm.toml");
        #[allow(unsafe_code)]
        // SAFETY: nextest runs each test in its own process; this happens before any thread
        // that reads the environment (the PKCS#11 module) is started.
        unsafe {
            std::env::set_var("SOFTHSM2_CONF", &softhsm2_conf)
        };
        SoftHsmToken {
            dir,
            label: label.to_string(),
            softhsm2_conf,
            config_path,
        }
    }

    /// `tessera ca init --hsm-config <this token's hsm.toml> --data-dir DATA_DIR`: the CA
    /// ceremony in this token; panics with the command's stderr if it fails.
    pub fn init_ca(&self, data_dir: &Path) {
        let out = Command::new(assert_cmd::cargo::cargo_bin("tessera"))
            .args(["ca", "init", "--hsm-config"])
            .arg(&self.config_path)
            .arg("--data-dir")
            .arg(data_dir)
            .env("SOFTHSM2_CONF", &self.softhsm2_conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tessera ca init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The user PIN (for driving pkcs11-tool through its environment, never argv).
    pub fn user_pin(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("user-pin")).expect("user-pin")
    }

    /// The HSM config file written by new-token.sh, parsed.
    pub fn config(&self) -> tessera::hsm::HsmConfig {
        tessera::hsm::HsmConfig::load(&self.config_path).expect("hsm.toml parses")
    }

    /// Writes another HSM config into the token directory and returns its path.
    pub fn write_config(&self, name: &str, text: impl AsRef<str>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text.as_ref()).expect("write config");
        path
    }

    /// The token's serial number, as `pkcs11-tool -T` lists it.
    pub fn serial(&self) -> String {
        let out = self.pkcs11_tool_without_login(&["-T"]);
        let listing = String::from_utf8_lossy(&out.stdout).to_string();
        listing
            .lines()
            .find_map(|l| l.trim().strip_prefix("serial num"))
            .map(|s| s.trim_start_matches([' ', ':']).trim().to_string())
            .unwrap_or_else(|| panic!("no serial in pkcs11-tool -T output: {listing}"))
    }

    /// Runs OpenSC's pkcs11-tool with this token's SOFTHSM2_CONF, without logging in.
    pub fn pkcs11_tool_without_login(&self, args: &[&str]) -> Output {
        let out = Command::new("pkcs11-tool")
            .args(["--module", SOFTHSM_MODULE])
            .args(args)
            .env("SOFTHSM2_CONF", &self.softhsm2_conf)
            .output()
            .unwrap_or_else(|e| panic!("cannot run pkcs11-tool: {e}; {INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "pkcs11-tool {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs OpenSC's pkcs11-tool on this token, logged in; the PIN goes through `env:`.
    pub fn pkcs11_tool(&self, args: &[&str]) -> Output {
        let out = Command::new("pkcs11-tool")
            .args(["--module", SOFTHSM_MODULE, "--token-label", &self.label])
            .args(["--login", "--pin", "env:TESSERA_TEST_USER_PIN"])
            .args(args)
            .env("SOFTHSM2_CONF", &self.softhsm2_conf)
            .env("TESSERA_TEST_USER_PIN", self.user_pin())
            .output()
            .unwrap_or_else(|e| panic!("cannot run pkcs11-tool: {e}; {INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "pkcs11-tool {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}
