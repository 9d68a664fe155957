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
const DEFAULT_POOL_WAIT_SECONDS: u64 = 30;
const MAX_POOL_WAIT_SECONDS: u64 = 600;

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
    /// How long a caller waits for a free session before `HsmError::PoolTimeout`.
    pub pool_wait: std::time::Duration,
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
    pool_wait_seconds: Option<u64>,
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
        let invalid = |reason: String| HsmError::ConfigInvalid {
            path: path.to_path_buf(),
            reason,
        };
        let file: ConfigFile =
            toml::from_str(&text).map_err(|e| invalid(e.message().replace('\n', " ")))?;
        let token = match (file.token_label, file.token_serial) {
            (Some(l), None) if !l.is_empty() => TokenSelector::Label(l),
            (None, Some(s)) if !s.is_empty() => TokenSelector::Serial(s),
            (None, None) => return Err(invalid("set token_label or token_serial".into())),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "set only one of token_label and token_serial".into(),
                ));
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
            (None, None) => return Err(invalid(
                "set pin_env or pin_file (the PIN is never in the config or on the command line)"
                    .into(),
            )),
            (Some(_), Some(_)) => {
                return Err(invalid("set only one of pin_env and pin_file".into()));
            }
            _ => return Err(invalid("pin_env must name an environment variable".into())),
        };
        let pool_size = file.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
        if pool_size == 0 || pool_size > MAX_POOL_SIZE {
            return Err(invalid(format!(
                "pool_size must be between 1 and {MAX_POOL_SIZE}, not {pool_size}"
            )));
        }
        let wait = file.pool_wait_seconds.unwrap_or(DEFAULT_POOL_WAIT_SECONDS);
        if wait == 0 || wait > MAX_POOL_WAIT_SECONDS {
            return Err(invalid(format!(
                "pool_wait_seconds must be between 1 and {MAX_POOL_WAIT_SECONDS}, not {wait}"
            )));
        }
        let pool_wait = std::time::Duration::from_secs(wait);
        for (name, uri) in &file.keys {
            Pkcs11Uri::parse(uri).map_err(|e| invalid(format!("key `{name}`: {e}")))?;
        }
        Ok(HsmConfig {
            module: file.module,
            token,
            pin,
            pool_size,
            pool_wait,
            keys: file.keys,
        })
    }

    /// The `pkcs11:` URI configured under `[keys]` for `name`.
    pub fn key_uri(&self, name: &str) -> Result<&str, HsmError> {
        self.keys
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| HsmError::KeyNameUnknown {
                name: name.to_string(),
            })
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
                let value = Zeroizing::new(
                    value
                        .into_string()
                        .map_err(|_| HsmError::PinEnvUnset { name: name.clone() })?,
                );
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
                    return Err(HsmError::PinFileMode {
                        path: path.clone(),
                        mode,
                    });
                }
                let bytes = Zeroizing::new(std::fs::read(path).map_err(read_err)?);
                let text = std::str::from_utf8(&bytes).map_err(|_| HsmError::PinFileRead {
                    path: path.clone(),
                    reason: "not UTF-8 text".into(),
                })?;
                let trimmed = text.strip_suffix('\n').unwrap_or(text);
                let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
                (
                    Zeroizing::new(trimmed.to_string()),
                    format!("file {}", path.display()),
                )
            }
        };
        if pin.is_empty() {
            return Err(HsmError::PinEmpty { source_name });
        }
        Ok(pin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<HsmConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hsm.toml");
        std::fs::write(&path, text).unwrap();
        HsmConfig::load(&path)
            .map_err(|e| e.to_string().replace(&path.display().to_string(), "CFG"))
    }

    #[test]
    fn the_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("hsm-config/softhsm2.toml");
        let c = HsmConfig::load(&path).unwrap();
        assert_eq!(c.module, Path::new("/usr/lib/softhsm/libsofthsm2.so"));
        assert_eq!(c.token, TokenSelector::Label("tessera".into()));
        assert_eq!(c.pin, PinSource::Env("TESSERA_HSM_PIN".into()));
        assert_eq!(c.pool_size, 4);
        assert_eq!(c.pool_wait.as_secs(), 30);
        assert_eq!(
            c.key_uri("root").unwrap(),
            "pkcs11:token=tessera;object=tessera-root;type=private"
        );
    }

    #[test]
    fn relative_pin_file_is_beside_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hsm.toml");
        std::fs::write(
            &path,
            "module = \"/m.so\"\ntoken_label = \"t\"\npin_file = \"pin\"\n",
        )
        .unwrap();
        assert_eq!(
            HsmConfig::load(&path).unwrap().pin,
            PinSource::File(dir.path().join("pin"))
        );
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let base = "module = \"/m.so\"\n";
        let msg = |r: &str| {
            format!("HSM config CFG is invalid: {r}; see hsm-config/softhsm2.toml for the format")
        };
        assert_eq!(
            load(&format!("{base}pin_env = \"P\"")).unwrap_err(),
            msg("set token_label or token_serial")
        );
        assert_eq!(
            load(&format!(
                "{base}token_label = \"a\"\ntoken_serial = \"1\"\npin_env = \"P\""
            ))
            .unwrap_err(),
            msg("set only one of token_label and token_serial")
        );
        assert_eq!(
            load(&format!("{base}token_label = \"a\"")).unwrap_err(),
            msg("set pin_env or pin_file (the PIN is never in the config or on the command line)")
        );
        assert_eq!(
            load(&format!(
                "{base}token_label = \"a\"\npin_env = \"P\"\npin_file = \"f\""
            ))
            .unwrap_err(),
            msg("set only one of pin_env and pin_file")
        );
        assert_eq!(
            load(&format!(
                "{base}token_label = \"a\"\npin_env = \"P\"\npool_size = 0"
            ))
            .unwrap_err(),
            msg("pool_size must be between 1 and 256, not 0")
        );
        assert_eq!(
            load(&format!(
                "{base}token_label = \"a\"\npin_env = \"P\"\npool_wait_seconds = 0"
            ))
            .unwrap_err(),
            msg("pool_wait_seconds must be between 1 and 600, not 0")
        );
        let e = load(&format!("{base}token_label = \"a\"\npin = \"1234\"")).unwrap_err();
        assert!(
            e.starts_with("HSM config CFG is invalid: unknown field `pin`"),
            "{e}"
        );
        assert_eq!(
            load(&format!(
                "{base}token_label = \"a\"\npin_env = \"P\"\n[keys]\nroot = \"label=x\""
            ))
            .unwrap_err(),
            msg(
                "key `root`: invalid pkcs11: URI `label=x`: it does not start with pkcs11:; write it as pkcs11:token=LABEL;object=KEY;type=private (RFC 7512)"
            )
        );
        let e = HsmConfig::load(Path::new("/nonexistent/hsm.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read HSM config /nonexistent/hsm.toml: "),
            "{e}"
        );
        assert!(
            e.ends_with("; check the path given to --hsm-config or TESSERA_HSM_CONFIG"),
            "{e}"
        );
    }

    #[test]
    fn pin_sources() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pin");
        std::fs::write(&file, "1234\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            PinSource::File(file.clone()).read().unwrap().as_str(),
            "1234"
        );
        std::fs::write(&file, "\n").unwrap();
        assert_eq!(
            PinSource::File(file.clone())
                .read()
                .unwrap_err()
                .to_string(),
            format!(
                "HSM PIN from file {} is empty; put the token's user PIN there",
                file.display()
            )
        );
        let missing = dir.path().join("absent");
        let e = PinSource::File(missing.clone())
            .read()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "HSM PIN file {} cannot be read: ",
                missing.display()
            )),
            "{e}"
        );
    }
}
