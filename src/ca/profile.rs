//! Certificate profiles: TOML files (the repository's `profiles/` directory, or a directory the
//! operator names) that fix key usage, extended key usage, validity and policy OIDs. The
//! profiles shipped in the repository are also built into the binary, so `--profile tls-client`
//! works without a checkout.

use super::CaError;
use serde::Deserialize;
use std::path::Path;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: String,
    #[serde(default)]
    description: String,
    validity_days: u32,
    key_usage: Vec<String>,
    #[serde(default)]
    extended_key_usage: Vec<String>,
    #[serde(default)]
    policies: Vec<String>,
}

/// A validated certificate profile.
#[derive(Clone, Debug)]
pub struct CertificateProfile {
    pub name: String,
    pub description: String,
    pub validity_days: u32,
    pub key_usage: Vec<rcgen::KeyUsagePurpose>,
    pub extended_key_usage: Vec<rcgen::ExtendedKeyUsagePurpose>,
    /// Certificate policy OIDs, dotted.
    pub policies: Vec<String>,
}

const BUILT_IN: &[(&str, &str)] = &[
    ("tls-client", include_str!("../../profiles/tls-client.toml")),
    ("smartcard-logon", include_str!("../../profiles/smartcard-logon.toml")),
];

pub(crate) fn parse_oid(text: &str) -> Option<Vec<u128>> {
    let arcs: Option<Vec<u128>> = text.split('.').map(|a| a.parse().ok()).collect();
    arcs.filter(|a| a.len() >= 2 && a[0] <= 2)
}

impl CertificateProfile {
    /// Names of the profiles built into the binary.
    pub fn built_in_names() -> Vec<&'static str> {
        BUILT_IN.iter().map(|(n, _)| *n).collect()
    }

    /// Finds profile `name`: `DIR/NAME.toml` when a directory is given, else the built-in one.
    pub fn load(name: &str, dir: Option<&Path>) -> Result<Self, CaError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(CaError::Profile { name: name.into(), reason: "profile names use letters, digits, '-' and '_'".into() });
        }
        let text = match dir {
            Some(d) => {
                let path = d.join(format!("{name}.toml"));
                std::fs::read_to_string(&path).map_err(|e| CaError::Profile { name: name.into(), reason: format!("{}: {e}", path.display()) })?
            }
            None => BUILT_IN.iter().find(|(n, _)| *n == name).map(|(_, t)| t.to_string()).ok_or_else(|| CaError::Profile {
                name: name.into(),
                reason: format!("no such built-in profile (built in: {}); pass --profiles-dir for others", Self::built_in_names().join(", ")),
            })?,
        };
        Self::parse(name, &text)
    }

    pub fn parse(name: &str, text: &str) -> Result<Self, CaError> {
        let bad = |reason: String| CaError::Profile { name: name.into(), reason };
        let f: ProfileFile = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        if f.name != name {
            return Err(bad(format!("file says name = \"{}\"", f.name)));
        }
        if f.validity_days == 0 || f.validity_days > 3650 {
            return Err(bad(format!("validity_days {} is out of range 1..=3650", f.validity_days)));
        }
        use rcgen::KeyUsagePurpose as K;
        let key_usage = f
            .key_usage
            .iter()
            .map(|u| {
                Ok(match u.as_str() {
                    "digital-signature" => K::DigitalSignature,
                    "content-commitment" | "non-repudiation" => K::ContentCommitment,
                    "key-encipherment" => K::KeyEncipherment,
                    "data-encipherment" => K::DataEncipherment,
                    "key-agreement" => K::KeyAgreement,
                    other => return Err(bad(format!("unknown key_usage `{other}` (digital-signature, content-commitment, key-encipherment, data-encipherment, key-agreement)"))),
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        if key_usage.is_empty() {
            return Err(bad("key_usage is empty".into()));
        }
        use rcgen::ExtendedKeyUsagePurpose as E;
        let extended_key_usage = f
            .extended_key_usage
            .iter()
            .map(|u| {
                Ok(match u.as_str() {
                    "client-auth" => E::ClientAuth,
                    "server-auth" => E::ServerAuth,
                    "email-protection" => E::EmailProtection,
                    "code-signing" => E::CodeSigning,
                    other => E::Other(parse_oid(other).and_then(|a| a.into_iter().map(|x| u64::try_from(x).ok()).collect()).ok_or_else(|| bad(format!("extended_key_usage `{other}` is neither a known name nor a dotted OID")))?),
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        for p in &f.policies {
            parse_oid(p).ok_or_else(|| bad(format!("policy `{p}` is not a dotted OID")))?;
        }
        Ok(CertificateProfile { name: f.name, description: f.description, validity_days: f.validity_days, key_usage, extended_key_usage, policies: f.policies })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_profiles_parse() {
        for n in CertificateProfile::built_in_names() {
            CertificateProfile::load(n, None).unwrap();
        }
    }

    #[test]
    fn bad_profiles_are_refused_with_reason() {
        let e = CertificateProfile::parse("x", "name = \"x\"\nvalidity_days = 1\nkey_usage = [\"sign-everything\"]").unwrap_err().to_string();
        assert!(e.contains("unknown key_usage `sign-everything`"), "{e}");
        let e = CertificateProfile::load("nope", None).unwrap_err().to_string();
        assert!(e.contains("no such built-in profile"), "{e}");
        let e = CertificateProfile::load("../etc/passwd", None).unwrap_err().to_string();
        assert!(e.contains("profile names use"), "{e}");
    }
}
