//! `hsm-config/*.toml`: which PKCS#11 module, which token, where the user PIN comes from, how
//! many sessions, and the keys by name as RFC 7512 `pkcs11:` URIs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use super::error::HsmError;
use super::uri::Pkcs11Uri;

const DEFAULT_POOL_SIZE: usize = 4;
const MAX_POOL_SIZE: usize = 256;

/// Which token of the module to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    Label(String),
    Serial(String),
}

/// Where the user PIN is read from at login. The PIN itself is never stored in the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// The named environment variable.
    Env(String),
    /// A file readable only by its owner (mode 0600 or stricter); one trailing newline is removed.
    File(PathBuf),
}

/// A parsed HSM configuration (see `hsm-config/softhsm2.toml`).
#[derive(Clone, Debug)]
pub struct HsmConfig {
    pub module: PathBuf,
    pub token: TokenSelector,
    pub pin: PinSource,
    pub pool_size: usize,
    pub keys: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    module: PathBuf,
    token_label: Option<String>,
    token_serial: Option<String>,
    pin_env: Option<String>,
    pin_file: Option<PathBuf>,
    pool_size: Option<usize>,
    #[serde(default)]
    keys: BTreeMap<String, String>,
}

impl HsmConfig {
    /// Reads and checks an HSM config file. A relative `pin_file` is taken relative to the
    /// config file's directory. The PIN is not read here (only at login).
    pub fn load(path: &Path) -> Result<HsmConfig, HsmError> {
        let text = std::fs::read_to_string(path).map_err(|e| HsmError::ConfigRead {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let invalid = |reason: String| HsmError::ConfigInvalid { path: path.to_path_buf(), reason };
        let file: ConfigFile =
            toml::from_str(&text).map_err(|e| invalid(e.message().replace('\n', " ")))?;
        let token = match (file.token_label, file.token_serial) {
            (Some(l), None) if !l.is_empty() => TokenSelector::Label(l),
            (None, Some(s)) if !s.is_empty() => TokenSelector::Serial(s),
            (None, None) => return Err(invalid("set token_label or token_serial".into())),
            (Some(_), Some(_)) => {
                return Err(invalid("set only one of token_label and token_serial".into()));
            }
            _ => return Err(invalid("token_label/token_serial must not be empty".into())),
        };
        let pin = match (file.pin_env, file.pin_file) {
            (Some(name), None) if !name.is_empty() => PinSource::Env(name),
            (None, Some(p)) => {
                let p = if p.is_relative() {
                    path.parent().unwrap_or(Path::new(".")).join(p)
                } else {
                    p
                };
                PinSource::File(p)
            }
            (None, None) => return Err(invalid("set pin_env or pin_file (the PIN is never in the config or on the command line)".into())),
            (Some(_), Some(_)) => return Err(invalid("set only one of pin_env and pin_file".into())),
            _ => return Err(invalid("pin_env must name an environment variable".into())),
        };
        let pool_size = file.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
        if pool_size == 0 || pool_size > MAX_POOL_SIZE {
            return Err(invalid(format!("pool_size must be between 1 and {MAX_POOL_SIZE}, not {pool_size}")));
        }
        for (name, uri) in &file.keys {
            Pkcs11Uri::parse(uri)
                .map_err(|e| invalid(format!("key `{name}`: {e}")))?;
        }
        Ok(HsmConfig { module: file.module, token, pin, pool_size, keys: file.keys })
    }

    /// The `pkcs11:` URI configured under `[keys]` for `name`.
    pub fn key_uri(&self, name: &str) -> Result<&str, HsmError> {
        self.keys
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| HsmError::KeyNameUnknown { name: name.to_string() })
    }

    /// A human name of the token this config opens (its label, or `serial N`).
    pub fn token_display(&self) -> String {
        match &self.token {
            TokenSelector::Label(l) => format!("`{l}`"),
            TokenSelector::Serial(s) => format!("with serial {s}"),
        }
    }
}

impl PinSource {
    /// Reads the PIN. The returned buffer is wiped when dropped; callers drop it right after login.
    pub(crate) fn read(&self) -> Result<Zeroizing<String>, HsmError> {
        let (pin, source_name) = match self {
            PinSource::Env(name) => {
                let value = std::env::var_os(name)
                    .ok_or_else(|| HsmError::PinEnvUnset { name: name.clone() })?;
                let value = Zeroizing::new(value.into_string().map_err(|_| HsmError::PinEnvUnset {
                    name: name.clone(),
                })?);
                (value, format!("environment variable {name}"))
            }
            PinSource::File(path) => {
                use std::os::unix::fs::MetadataExt;
                let read_err = |e: std::io::Error| HsmError::PinFileRead {
                    path: path.clone(),
                    reason: e.to_string(),
                };
                let meta = std::fs::metadata(path).map_err(read_err)?;
                let mode = meta.mode() & 0o7777;
                if mode & 0o077 != 0 {
                    return Err(HsmError::PinFileMode { path: path.clone(), mode });
                }
                let bytes = Zeroizing::new(std::fs::read(path).map_err(read_err)?);
                let text = std::str::from_utf8(&bytes).map_err(|_| HsmError::PinFileRead {
                    path: path.clone(),
                    reason: "not UTF-8 text".into(),
                })?;
                let trimmed = text.strip_suffix('\n').unwrap_or(text);
                let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
                (Zeroizing::new(trimmed.to_string()), format!("file {}", path.display()))
            }
        };
        if pin.is_empty() {
            return Err(HsmError::PinEmpty { source_name });
        }
        Ok(pin)
    }
}
