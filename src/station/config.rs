//! Where the station finds the server and its own client certificate: command-line flags, the
//! `TESSERA_STATION_*` environment (both through clap), then a small TOML file. Only paths are
//! taken, never key material itself.
use super::StationError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The station's config file (TOML). Relative paths are taken from the file's directory.
///
/// ```toml
/// server = "https://tessera.corp.test:8443"
/// ca_cert = "chain.pem"          # the CA that issued the server's certificate
/// client_cert = "helpdesk.pem"   # this station's certificate (role helpdesk)
/// client_key = "helpdesk.key"    # its private key, mode 0600
/// reader = "Yubico YubiKey"      # optional: part of the reader's name
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationFile {
    pub server: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub reader: Option<String>,
}

impl StationFile {
    pub fn load(path: &Path) -> Result<StationFile, StationError> {
        let text = std::fs::read_to_string(path).map_err(|source| StationError::ReadFile {
            what: "station config file",
            path: path.to_path_buf(),
            source,
        })?;
        let mut file: StationFile =
            toml::from_str(&text).map_err(|e| StationError::ConfigFile {
                path: path.to_path_buf(),
                message: e.message().to_string(),
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut file.ca_cert,
            &mut file.client_cert,
            &mut file.client_key,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(file)
    }
}

/// What the flags and the environment gave (each may be missing).
#[derive(Debug, Default, Clone)]
pub struct GivenSettings {
    pub server: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub reader: Option<String>,
}

/// The settings a station command runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StationConfig {
    /// `https://host:port`
    pub server: String,
    pub ca_cert: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub reader: Option<String>,
}

impl StationConfig {
    /// Flags and environment first, then the file.
    pub fn resolve(given: GivenSettings, file: StationFile) -> Result<StationConfig, StationError> {
        let server = given
            .server
            .or(file.server)
            .ok_or(StationError::MissingSetting {
                setting: "the server address",
                flag: "--server",
                env: "TESSERA_STATION_SERVER",
                key: "server",
            })?;
        if !server.starts_with("https://") || server.len() <= "https://".len() {
            return Err(StationError::ServerUrl(server));
        }
        let ca_cert = given
            .ca_cert
            .or(file.ca_cert)
            .ok_or(StationError::MissingSetting {
                setting: "the CA certificate",
                flag: "--ca-cert",
                env: "TESSERA_STATION_CA_CERT",
                key: "ca_cert",
            })?;
        let client_cert =
            given
                .client_cert
                .or(file.client_cert)
                .ok_or(StationError::MissingSetting {
                    setting: "the station's client certificate",
                    flag: "--client-cert",
                    env: "TESSERA_STATION_CLIENT_CERT",
                    key: "client_cert",
                })?;
        let client_key =
            given
                .client_key
                .or(file.client_key)
                .ok_or(StationError::MissingSetting {
                    setting: "the station's client key",
                    flag: "--client-key",
                    env: "TESSERA_STATION_CLIENT_KEY",
                    key: "client_key",
                })?;
        Ok(StationConfig {
            server,
            ca_cert,
            client_cert,
            client_key,
            reader: given.reader.or(file.reader),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given() -> GivenSettings {
        GivenSettings {
            server: Some("https://127.0.0.1:8443".into()),
            ca_cert: Some("ca.pem".into()),
            client_cert: Some("c.pem".into()),
            client_key: Some("c.key".into()),
            reader: None,
        }
    }

    #[test]
    fn flags_win_over_the_file_and_file_paths_are_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("station.toml");
        std::fs::write(
            &path,
            "server = \"https://other:1\"\nca_cert = \"chain.pem\"\nreader = \"Yubico\"\n",
        )
        .unwrap();
        let file = StationFile::load(&path).unwrap();
        assert_eq!(
            file.ca_cert.as_deref(),
            Some(dir.path().join("chain.pem").as_path())
        );
        let mut g = given();
        g.ca_cert = None;
        let config = StationConfig::resolve(g, file).unwrap();
        assert_eq!(config.server, "https://127.0.0.1:8443");
        assert_eq!(config.ca_cert, dir.path().join("chain.pem"));
        assert_eq!(config.reader.as_deref(), Some("Yubico"));
    }

    #[test]
    fn a_missing_setting_names_flag_env_and_key() {
        let mut g = given();
        g.client_key = None;
        let err = StationConfig::resolve(g, StationFile::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the station's client key is not set: give --client-key, TESSERA_STATION_CLIENT_KEY or `client_key = …` in the station's config file"
        );
    }

    #[test]
    fn the_server_must_be_https() {
        let mut g = given();
        g.server = Some("http://127.0.0.1:8443".into());
        let err = StationConfig::resolve(g, StationFile::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the server address \"http://127.0.0.1:8443\" is not an https:// URL (e.g. https://tessera.example:8443)"
        );
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("station.toml");
        std::fs::write(&path, "client_key_pem = \"-----BEGIN\"\n").unwrap();
        let err = StationFile::load(&path).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "station config file {} is not valid: unknown field `client_key_pem`",
                path.display()
            )),
            "{err}"
        );
    }
}
