//! The HSM configuration file (`hsm-config/*.toml`): which PKCS#11 module, which token, where the
//! user PIN comes from, how many sessions, and the keys as `pkcs11:` URIs. Pointing Tessera at a
//! different HSM is a different file, never different code. See `docs/hsm.md`.

use super::HsmError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HsmConfigFile {
    module: PathBuf,
    token_label: Option<String>,
    token_serial: Option<String>,
    pin_env: Option<String>,
    pin_file: Option<PathBuf>,
    #[serde(default = "default_pool_size")]
    pool_size: usize,
    #[serde(default)]
    keys: BTreeMap<String, String>,
}

fn default_pool_size() -> usize {
    4
}

/// Which token on the module's slots Tessera uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    Label(String),
    Serial(String),
}

/// Where the user PIN is read from at each login. The PIN itself is never stored in the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    Env(String),
    File(PathBuf),
}

impl PinSource {
    /// Reads the PIN now. The returned buffer is zeroized when dropped; callers drop it right
    /// after `C_Login`.
    pub fn read(&self) -> Result<Zeroizing<String>, HsmError> {
        match self {
            PinSource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Zeroizing::new(v)),
                _ => Err(HsmError::PinMissing { source_desc: format!("environment variable {var} is not set or empty") }),
            },
            PinSource::File(path) => {
                use std::os::unix::fs::PermissionsExt;
                let meta = std::fs::metadata(path).map_err(|e| HsmError::PinMissing {
                    source_desc: format!("PIN file {} cannot be read: {e}", path.display()),
                })?;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(HsmError::PinFileMode { path: path.clone(), mode });
                }
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| HsmError::PinMissing {
                    source_desc: format!("PIN file {} cannot be read: {e}", path.display()),
                })?);
                let pin = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string());
                if pin.is_empty() {
                    return Err(HsmError::PinMissing { source_desc: format!("PIN file {} is empty", path.display()) });
                }
                Ok(pin)
            }
        }
    }
}

/// A validated HSM configuration.
#[derive(Clone, Debug)]
pub struct HsmConfig {
    pub path: PathBuf,
    pub module: PathBuf,
    pub token: TokenSelector,
    pub pin: PinSource,
    pub pool_size: usize,
    /// Named keys (`root_ca`, `issuing_ca`, `wrapping`, …) as `pkcs11:` URIs.
    pub keys: BTreeMap<String, String>,
}

impl HsmConfig {
    pub fn load(path: &Path) -> Result<Self, HsmError> {
        let bad = |reason: String| HsmError::Config { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
        let file: HsmConfigFile = toml::from_str(&text).map_err(|e| bad(e.message().to_string()))?;
        let token = match (file.token_label, file.token_serial) {
            (Some(l), None) => TokenSelector::Label(l),
            (None, Some(s)) => TokenSelector::Serial(s),
            _ => return Err(bad("set exactly one of token_label or token_serial".into())),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let pin = match (file.pin_env, file.pin_file) {
            (Some(v), None) => PinSource::Env(v),
            (None, Some(f)) => PinSource::File(if f.is_absolute() { f } else { base.join(f) }),
            _ => return Err(bad("set exactly one of pin_env or pin_file (the PIN itself never goes in this file)".into())),
        };
        if file.pool_size == 0 || file.pool_size > 256 {
            return Err(bad(format!("pool_size {} is out of range 1..=256", file.pool_size)));
        }
        for (name, uri) in &file.keys {
            super::Pkcs11Uri::parse(uri).map_err(|e| bad(format!("keys.{name}: {e}")))?;
        }
        Ok(HsmConfig { path: path.to_path_buf(), module: file.module, token, pin, pool_size: file.pool_size, keys: file.keys })
    }

    /// The URI configured under `keys.<name>`.
    pub fn key_uri(&self, name: &str) -> Result<&str, HsmError> {
        self.keys.get(name).map(String::as_str).ok_or_else(|| HsmError::Config {
            path: self.path.clone(),
            reason: format!("no key named `{name}` under [keys]; add e.g. {name} = \"pkcs11:object=tessera-{};type=private\"", name.replace('_', "-")),
        })
    }
}
