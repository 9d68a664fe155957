//! A CA for tests: `tessera ca init` in a fresh SoftHSM2 token, its files in a data directory,
//! and the environment that lets `tessera` child processes find the token.
use super::binary::tessera;
use super::softhsm::SoftHsmToken;
use std::path::{Path, PathBuf};

pub struct TestCa {
    pub token: SoftHsmToken,
    /// What `tessera ca init` wrote: root.pem, issuing.pem, chain.pem, …
    pub data_dir: PathBuf,
    /// `SOFTHSM2_CONF` for `tessera` child processes.
    pub env: Vec<(String, String)>,
}

impl TestCa {
    /// A SoftHSM2 token labelled "tessera" with the CA ceremony run in it (root, issuing and
    /// operator CA keys in the token: `ca init` then `ca init-operators`), the CA's files in
    /// `data_dir`.
    pub fn init(data_dir: &Path) -> TestCa {
        let token = SoftHsmToken::create("tessera");
        token.init_ca(data_dir);
        let env = vec![(
            "SOFTHSM2_CONF".to_string(),
            token.softhsm2_conf.to_str().unwrap().to_string(),
        )];
        let ca = TestCa {
            token,
            data_dir: data_dir.to_path_buf(),
            env,
        };
        let (code, _, err) = tessera(
            &[
                "ca",
                "init-operators",
                "--hsm-config",
                ca.hsm_config_str(),
                "--data-dir",
                data_dir.to_str().unwrap(),
            ],
            &ca.env,
        );
        assert_eq!(code, 0, "ca init-operators: {err}");
        ca
    }

    /// The operator CA's certificate (PEM), what `tls.client_ca` names in a real deployment.
    pub fn operator_ca_pem(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("operator-ca.pem")).unwrap()
    }

    /// The token's HSM configuration file (hsm.toml).
    pub fn hsm_config(&self) -> &Path {
        &self.token.config_path
    }

    pub fn hsm_config_str(&self) -> &str {
        self.token.config_path.to_str().unwrap()
    }

    /// `tessera admin init-wrapping-key`: the AES key enrollment wraps management keys and
    /// PUKs with; panics unless it was made.
    pub fn init_wrapping_key(&self) {
        let (code, out, err) = tessera(
            &[
                "admin",
                "init-wrapping-key",
                "--hsm-config",
                self.hsm_config_str(),
            ],
            &self.env,
        );
        assert_eq!(code, 0, "init-wrapping-key: {err}");
        assert_eq!(
            out,
            "made AES-256 wrapping key \"tessera-wrap\" in the HSM\n"
        );
    }
}
