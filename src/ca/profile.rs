//! End-entity certificate profiles: TOML files (one per profile, named after the file) that set
//! key usage, extended key usage, validity, certificate policies and whether keys without a
//! verified hardware attestation may be certified. The profiles shipped in `profiles/` are built
//! into the binary; a directory of TOML files can replace them.

use super::{CaError, policy_oid};
use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The profiles shipped in `profiles/`, compiled in so the binary works from any directory.
const BUILT_IN_PROFILES: &[(&str, &str)] = &[
    (
        "smime-signing",
        include_str!("../../profiles/smime-signing.toml"),
    ),
    ("tls-client", include_str!("../../profiles/tls-client.toml")),
    (
        "piv-authentication",
        include_str!("../../profiles/piv-authentication.toml"),
    ),
    (
        "piv-signature",
        include_str!("../../profiles/piv-signature.toml"),
    ),
    (
        "smartcard-logon",
        include_str!("../../profiles/smartcard-logon.toml"),
    ),
    (
        "service-client",
        include_str!("../../profiles/service-client.toml"),
    ),
    (
        "temporary-piv-authentication",
        include_str!("../../profiles/temporary-piv-authentication.toml"),
    ),
];

/// The on-disk form of a profile.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    description: String,
    validity_days: u32,
    key_usage: Vec<String>,
    extended_key_usage: Vec<String>,
    #[serde(default)]
    certificate_policies: Vec<String>,
    attested_key_policy: String,
    unattested_key_policy: Option<String>,
    allow_unattested_keys: bool,
    #[serde(default)]
    require_email: bool,
    #[serde(default)]
    ocsp_no_check: bool,
    #[serde(default)]
    include_upn: bool,
    #[serde(default)]
    require_upn: bool,
    #[serde(default)]
    bind_hardware_module: bool,
    #[serde(default)]
    windows_sid_extension: bool,
    #[serde(default)]
    subject_from_csr: bool,
    #[serde(default)]
    allowed_names: Vec<String>,
    renewal_window_days: Option<u32>,
}

/// How many days before notAfter a certificate may be renewed in place, when a profile does
/// not say (or its validity, when that is shorter).
pub const DEFAULT_RENEWAL_WINDOW_DAYS: u32 = 30;

/// A checked end-entity profile.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub validity_days: u32,
    pub key_usage: Vec<KeyUsagePurpose>,
    pub extended_key_usage: Vec<ExtendedKeyUsagePurpose>,
    /// Dotted OIDs, each checked to encode.
    pub certificate_policies: Vec<String>,
    /// Policy OID added when the key's hardware attestation was verified.
    pub attested_key_policy: String,
    /// Policy OID added when the key was not attested (set iff `allow_unattested_keys`).
    pub unattested_key_policy: Option<String>,
    pub allow_unattested_keys: bool,
    pub require_email: bool,
    /// Adds id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1): for OCSP responder certificates only.
    pub ocsp_no_check: bool,
    /// Put the subject's UPN (when known) in an otherName SAN.
    pub include_upn: bool,
    /// Refuse a subject without a UPN (smart-card logon needs it).
    pub require_upn: bool,
    /// Put the token's serial in an RFC 4108 HardwareModuleName SAN; refuse without one.
    pub bind_hardware_module: bool,
    /// Add the KB5014754 SID extension when the subject has a Windows SID.
    pub windows_sid_extension: bool,
    /// A CSR without a person may be certified with the CSR's own names (service clients).
    /// When false, `IssueFromCsr` and `ca sign-csr` need a person, whose directory names the
    /// certificate carries.
    pub subject_from_csr: bool,
    /// When not empty, every name a CSR puts in the certificate (commonName, each email
    /// address, each DNS name) must match one of these patterns ([`NamePattern`]).
    pub allowed_names: Vec<NamePattern>,
    /// Renewal in place (`BeginRenewal`) is allowed from this many days before notAfter;
    /// earlier only when forced by an admin. 0..=validity_days (default 30, or validity_days
    /// when shorter).
    pub renewal_window_days: u32,
}

/// One entry of a profile's `allowed_names`: `*.suffix` (any name without `@` ending in
/// `.suffix`, e.g. `*.svc.corp.test` matches `build.svc.corp.test` and `a.b.svc.corp.test`),
/// `*@domain` (any email address at exactly that domain) or an exact name. Compared ignoring
/// ASCII case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamePattern {
    /// `*.suffix` or `*@domain`: the stored text is `.suffix` / `@domain`.
    EndsWith(String),
    Exact(String),
}

impl NamePattern {
    /// Parses one pattern; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<NamePattern, String> {
        if text.is_empty() || text.chars().any(|c| c.is_control()) || text.trim() != text {
            return Err(format!(
                "allowed_names entry {text:?} is empty or has control characters or surrounding blanks"
            ));
        }
        match text.strip_prefix('*') {
            Some(rest) if (rest.starts_with('.') || rest.starts_with('@')) && rest.len() > 1 => {
                if rest.contains('*') {
                    return Err(format!(
                        "allowed_names entry {text:?}: `*` may only start a pattern"
                    ));
                }
                Ok(NamePattern::EndsWith(rest.to_ascii_lowercase()))
            }
            Some(_) => Err(format!(
                "allowed_names entry {text:?}: a pattern is `*.suffix`, `*@domain` or an exact name"
            )),
            None if text.contains('*') => Err(format!(
                "allowed_names entry {text:?}: `*` may only start a pattern"
            )),
            None => Ok(NamePattern::Exact(text.to_ascii_lowercase())),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match self {
            // `*.suffix` matches host-like names only, `*@domain` one local part at the domain.
            NamePattern::EndsWith(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| !head.is_empty() && !head.contains('@')),
            NamePattern::Exact(exact) => name == *exact,
        }
    }
}

impl std::fmt::Display for NamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamePattern::EndsWith(suffix) => write!(f, "*{suffix}"),
            NamePattern::Exact(exact) => f.write_str(exact),
        }
    }
}

/// Longest end-entity validity a profile may ask for (about 5 years).
const MAX_VALIDITY_DAYS: u32 = 1826;

impl Profile {
    /// Parses and checks one profile's TOML text. `source` names where it came from in errors.
    pub fn from_toml(name: &str, text: &str, source: &str) -> Result<Profile, CaError> {
        let invalid = |reason: String| CaError::ProfileInvalid {
            origin: source.to_string(),
            reason,
        };
        let file: ProfileFile =
            toml::from_str(text).map_err(|e| invalid(e.message().replace('\n', " ")))?;
        if file.validity_days == 0 || file.validity_days > MAX_VALIDITY_DAYS {
            return Err(invalid(format!(
                "validity_days = {} is outside 1..={MAX_VALIDITY_DAYS}",
                file.validity_days
            )));
        }
        if file.key_usage.is_empty() {
            return Err(invalid("key_usage is empty".into()));
        }
        let key_usage = file
            .key_usage
            .iter()
            .map(|u| {
                parse_key_usage(u).ok_or_else(|| invalid(format!("unknown key_usage \"{u}\"")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let extended_key_usage = file
            .extended_key_usage
            .iter()
            .map(|u| {
                parse_extended_key_usage(u)
                    .ok_or_else(|| invalid(format!("unknown extended_key_usage \"{u}\"")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for oid in file
            .certificate_policies
            .iter()
            .chain(std::iter::once(&file.attested_key_policy))
            .chain(file.unattested_key_policy.iter())
        {
            policy_oid::encode(oid)
                .map_err(|reason| invalid(format!("certificate policy \"{oid}\": {reason}")))?;
        }
        match (file.allow_unattested_keys, &file.unattested_key_policy) {
            (true, None) => {
                return Err(invalid(
                    "allow_unattested_keys = true needs unattested_key_policy, the OID that marks such certificates".into(),
                ));
            }
            (false, Some(_)) => {
                return Err(invalid(
                    "unattested_key_policy is set but allow_unattested_keys = false".into(),
                ));
            }
            _ => {}
        }
        if !file.allowed_names.is_empty() && !file.subject_from_csr {
            return Err(invalid(
                "allowed_names is set but subject_from_csr = false (the names come from the directory)".into(),
            ));
        }
        if file.subject_from_csr && !file.allow_unattested_keys {
            return Err(invalid(
                "subject_from_csr = true needs allow_unattested_keys = true (a CSR's key is not attested)".into(),
            ));
        }
        let renewal_window_days = match file.renewal_window_days {
            Some(days) if days > file.validity_days => {
                return Err(invalid(format!(
                    "renewal_window_days = {days} is more than validity_days = {}",
                    file.validity_days
                )));
            }
            Some(days) => days,
            None => DEFAULT_RENEWAL_WINDOW_DAYS.min(file.validity_days),
        };
        let allowed_names = file
            .allowed_names
            .iter()
            .map(|p| NamePattern::parse(p).map_err(invalid))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Profile {
            name: name.to_string(),
            description: file.description,
            validity_days: file.validity_days,
            key_usage,
            extended_key_usage,
            certificate_policies: file.certificate_policies,
            attested_key_policy: file.attested_key_policy,
            unattested_key_policy: file.unattested_key_policy,
            allow_unattested_keys: file.allow_unattested_keys,
            require_email: file.require_email,
            ocsp_no_check: file.ocsp_no_check,
            include_upn: file.include_upn || file.require_upn,
            require_upn: file.require_upn,
            bind_hardware_module: file.bind_hardware_module,
            windows_sid_extension: file.windows_sid_extension,
            subject_from_csr: file.subject_from_csr,
            allowed_names,
            renewal_window_days,
        })
    }
}

/// The profile of API client (operator) certificates, made by `tessera admin issue-client-cert`.
pub const OPERATOR_CLIENT_PROFILE: &str = "operator-client";
/// The reserved profile of the OCSP responder's certificate, made by `tessera ca init-ocsp`.
pub const OCSP_RESPONDER_PROFILE: &str = "ocsp-responder";

/// id-kp-OCSPSigning
const OCSP_SIGNING: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 3, 9];

impl Profile {
    /// Refuses a CSR subject with a name outside `allowed_names` (when the list is set),
    /// naming the name: the commonName, then each email address, then each DNS name.
    pub fn check_allowed_names(&self, subject: &super::SubjectParams) -> Result<(), CaError> {
        if self.allowed_names.is_empty() {
            return Ok(());
        }
        let names = std::iter::once(("commonName", &subject.common_name))
            .chain(subject.emails.iter().map(|e| ("email address", e)))
            .chain(subject.dns_names.iter().map(|d| ("DNS name", d)));
        for (kind, name) in names {
            if !self.allowed_names.iter().any(|p| p.matches(name)) {
                return Err(CaError::NameNotAllowed {
                    profile: self.name.clone(),
                    kind,
                    name: name.clone(),
                    allowed: self
                        .allowed_names
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(())
    }

    /// Whether certificates of this profile could sign OCSP responses for the CA. Only
    /// `tessera ca init-ocsp` issues such certificates; profile directories may not hold one.
    pub fn signs_ocsp(&self) -> bool {
        self.ocsp_no_check
            || self
                .extended_key_usage
                .iter()
                .any(|u| matches!(u, ExtendedKeyUsagePurpose::Other(arcs) if arcs[..] == OCSP_SIGNING[..]))
    }
}

fn parse_key_usage(name: &str) -> Option<KeyUsagePurpose> {
    Some(match name {
        "digital_signature" => KeyUsagePurpose::DigitalSignature,
        "content_commitment" | "non_repudiation" => KeyUsagePurpose::ContentCommitment,
        "key_encipherment" => KeyUsagePurpose::KeyEncipherment,
        "data_encipherment" => KeyUsagePurpose::DataEncipherment,
        "key_agreement" => KeyUsagePurpose::KeyAgreement,
        // keyCertSign / cRLSign belong to CA certificates, which profiles do not make.
        _ => return None,
    })
}

fn parse_extended_key_usage(name: &str) -> Option<ExtendedKeyUsagePurpose> {
    Some(match name {
        "client_auth" => ExtendedKeyUsagePurpose::ClientAuth,
        "server_auth" => ExtendedKeyUsagePurpose::ServerAuth,
        "email_protection" => ExtendedKeyUsagePurpose::EmailProtection,
        "code_signing" => ExtendedKeyUsagePurpose::CodeSigning,
        // Microsoft smart-card logon (szOID_KP_SMARTCARD_LOGON)
        "smartcard_logon" => ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 2]),
        dotted => {
            let arcs = dotted
                .split('.')
                .map(|a| a.parse::<u64>().ok())
                .collect::<Option<Vec<u64>>>()?;
            if arcs.len() < 2 || arcs[0] > 2 {
                return None;
            }
            ExtendedKeyUsagePurpose::Other(arcs)
        }
    })
}

/// The set of profiles a CA issues under, by name.
#[derive(Clone, Debug)]
pub struct ProfileSet {
    profiles: BTreeMap<String, Profile>,
}

impl ProfileSet {
    /// The profiles shipped with Tessera (`profiles/*.toml`, compiled in).
    pub fn built_in() -> ProfileSet {
        let profiles = BUILT_IN_PROFILES
            .iter()
            .map(|(name, text)| {
                let profile = Profile::from_toml(name, text, &format!("built-in profile {name}"))
                    .expect("shipped profiles are checked by unit tests");
                (name.to_string(), profile)
            })
            .collect();
        ProfileSet { profiles }
    }

    /// Exactly these profiles (e.g. the operator-client profile for API client certificates).
    pub fn from_profiles(list: Vec<Profile>) -> ProfileSet {
        ProfileSet {
            profiles: list.into_iter().map(|p| (p.name.clone(), p)).collect(),
        }
    }

    /// Every `*.toml` file in `dir`, each a profile named after its file.
    pub fn load_dir(dir: &Path) -> Result<ProfileSet, CaError> {
        let io = |source| CaError::Io {
            path: dir.to_path_buf(),
            error: source,
        };
        let mut profiles = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|source| CaError::Io {
                path: path.clone(),
                error: source,
            })?;
            let profile = Profile::from_toml(name, &text, &path.display().to_string())?;
            if profile.signs_ocsp() {
                return Err(CaError::ProfileInvalid {
                    origin: path.display().to_string(),
                    reason: "OCSP signing (id-kp-OCSPSigning, ocsp_no_check) is reserved for `tessera ca init-ocsp`; remove this profile".into(),
                });
            }
            profiles.insert(name.to_string(), profile);
        }
        if profiles.is_empty() {
            return Err(CaError::ProfileInvalid {
                origin: dir.display().to_string(),
                reason: "the directory holds no *.toml profile".into(),
            });
        }
        Ok(ProfileSet { profiles })
    }

    pub fn get(&self, name: &str) -> Result<&Profile, CaError> {
        self.profiles
            .get(name)
            .ok_or_else(|| CaError::UnknownProfile {
                name: name.to_string(),
                known: self.names().join(", "),
            })
    }

    pub fn names(&self) -> Vec<&str> {
        self.profiles.keys().map(String::as_str).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_profiles_parse() {
        let set = ProfileSet::built_in();
        assert_eq!(
            set.names(),
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
        // Only the service-client profile takes its subject from a CSR (issue 12, finding 1).
        for p in set.iter() {
            assert_eq!(p.subject_from_csr, p.name == "service-client", "{}", p.name);
        }
        let service = set.get("service-client").unwrap();
        assert_eq!(
            service.extended_key_usage,
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        );
        assert_eq!(service.certificate_policies, ["1.3.6.1.4.1.32473.1.2.7"]);
        assert!(service.allow_unattested_keys && service.allowed_names.is_empty());
        let temporary = set.get("temporary-piv-authentication").unwrap();
        assert_eq!(temporary.validity_days, 7);
        for name in [
            "piv-authentication",
            "piv-signature",
            "smartcard-logon",
            "temporary-piv-authentication",
        ] {
            let p = set.get(name).unwrap();
            assert!(p.bind_hardware_module && !p.allow_unattested_keys, "{name}");
        }
        let logon = set.get("smartcard-logon").unwrap();
        assert!(logon.require_upn && logon.include_upn && logon.windows_sid_extension);
        let tls = set.get("tls-client").unwrap();
        assert_eq!(
            tls.extended_key_usage,
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        );
        assert!(tls.allow_unattested_keys);
        let smime = set.get("smime-signing").unwrap();
        assert!(!smime.allow_unattested_keys);
        assert!(smime.require_email);
    }

    #[test]
    fn profile_directories_may_not_hold_ocsp_signing_profiles() {
        let reserved = include_str!("../../profiles/reserved/ocsp-responder.toml");
        let ocsp = Profile::from_toml("ocsp-responder", reserved, "reserved").unwrap();
        assert!(ocsp.signs_ocsp() && ocsp.ocsp_no_check);
        assert!(!ProfileSet::built_in().iter().any(Profile::signs_ocsp));
        let only_eku = reserved.replace("ocsp_no_check = true", "");
        for text in [reserved.to_string(), only_eku] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("responder.toml");
            std::fs::write(&path, text).unwrap();
            assert_eq!(
                ProfileSet::load_dir(dir.path()).unwrap_err().to_string(),
                format!(
                    "certificate profile {} is invalid: OCSP signing (id-kp-OCSPSigning, ocsp_no_check) is reserved for `tessera ca init-ocsp`; remove this profile",
                    path.display()
                )
            );
        }
    }

    #[test]
    fn unknown_profile_names_the_known_ones() {
        let err = ProfileSet::built_in().get("server").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown certificate profile \"server\"; known profiles: piv-authentication, piv-signature, service-client, smartcard-logon, smime-signing, temporary-piv-authentication, tls-client"
        );
    }

    #[test]
    fn bad_profiles_are_refused_with_the_reason() {
        let base = "description = \"x\"\nvalidity_days = 30\nextended_key_usage = []\nallow_unattested_keys = false\nattested_key_policy = \"1.2.3\"\n";
        let err = Profile::from_toml(
            "p",
            &format!("{base}key_usage = [\"key_cert_sign\"]\n"),
            "p.toml",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate profile p.toml is invalid: unknown key_usage \"key_cert_sign\""
        );
        let err = Profile::from_toml(
            "p",
            &format!(
                "{base}key_usage = [\"digital_signature\"]\ncertificate_policies = [\"1.x\"]\n"
            ),
            "p.toml",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate profile p.toml is invalid: certificate policy \"1.x\": arc \"x\" is not a number"
        );
        let err = Profile::from_toml(
            "p",
            &format!("{base}key_usage = [\"digital_signature\"]\n").replace("= 30", "= 0"),
            "p.toml",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate profile p.toml is invalid: validity_days = 0 is outside 1..=1826"
        );
        let err = Profile::from_toml(
            "p",
            &format!("{base}key_usage = [\"digital_signature\"]\n").replace(
                "allow_unattested_keys = false",
                "allow_unattested_keys = true",
            ),
            "p.toml",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate profile p.toml is invalid: allow_unattested_keys = true needs unattested_key_policy, the OID that marks such certificates"
        );
        let err = Profile::from_toml(
            "p",
            &format!("{base}key_usage = [\"digital_signature\"]\nrenewal_window_days = 31\n"),
            "p.toml",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate profile p.toml is invalid: renewal_window_days = 31 is more than validity_days = 30"
        );
    }

    #[test]
    fn renewal_window_defaults_to_30_days() {
        let base = "description = \"x\"\nvalidity_days = 365\nkey_usage = [\"digital_signature\"]\nextended_key_usage = []\nallow_unattested_keys = false\nattested_key_policy = \"1.2.3\"\n";
        let p = Profile::from_toml("p", base, "p.toml").unwrap();
        assert_eq!(p.renewal_window_days, DEFAULT_RENEWAL_WINDOW_DAYS);
        let p =
            Profile::from_toml("p", &format!("{base}renewal_window_days = 0\n"), "p.toml").unwrap();
        assert_eq!(p.renewal_window_days, 0);
        let shipped = ProfileSet::built_in();
        assert_eq!(
            shipped
                .get("piv-authentication")
                .unwrap()
                .renewal_window_days,
            30
        );
        // A profile shorter than the default window: its whole validity.
        let short = base.replace("validity_days = 365", "validity_days = 7");
        let p = Profile::from_toml("p", &short, "p.toml").unwrap();
        assert_eq!(p.renewal_window_days, 7);
    }

    #[test]
    fn allowed_names_patterns() {
        let service = include_str!("../../profiles/service-client.toml");
        let with = |names: &str| {
            Profile::from_toml(
                "svc",
                &format!("{service}allowed_names = {names}\n"),
                "svc.toml",
            )
        };
        let p = with(r#"["*.svc.corp.test", "*@svc.corp.test", "Build-Agent"]"#).unwrap();
        let subject = |cn: &str, emails: &[&str], dns: &[&str]| {
            let mut s = crate::ca::SubjectParams::new(cn);
            s.emails = emails.iter().map(|e| e.to_string()).collect();
            s.dns_names = dns.iter().map(|d| d.to_string()).collect();
            s
        };
        p.check_allowed_names(&subject(
            "build-agent",
            &["ci@SVC.corp.test"],
            &["a.b.svc.corp.test", "*.svc.corp.test"],
        ))
        .unwrap();
        p.check_allowed_names(&subject("x.svc.corp.test", &[], &[]))
            .unwrap();
        for (s, refused) in [
            (
                subject("svc.corp.test", &[], &[]),
                "commonName \"svc.corp.test\"",
            ),
            (
                subject("evilsvc.corp.test", &[], &[]),
                "commonName \"evilsvc.corp.test\"",
            ),
            (
                subject("build-agent", &["ci@x.svc.corp.test"], &[]),
                "email address \"ci@x.svc.corp.test\"",
            ),
            (
                subject("build-agent", &[], &["svc.corp.test.evil.test"]),
                "DNS name \"svc.corp.test.evil.test\"",
            ),
        ] {
            assert_eq!(
                p.check_allowed_names(&s).unwrap_err().to_string(),
                format!(
                    "the CSR's {refused} is not allowed by profile svc (allowed_names: *.svc.corp.test, *@svc.corp.test, build-agent)"
                )
            );
        }
        for (names, reason) in [
            (
                r#"["*"]"#,
                "allowed_names entry \"*\": a pattern is `*.suffix`, `*@domain` or an exact name",
            ),
            (
                r#"["a*.corp.test"]"#,
                "allowed_names entry \"a*.corp.test\": `*` may only start a pattern",
            ),
            (
                r#"["*.*.corp.test"]"#,
                "allowed_names entry \"*.*.corp.test\": `*` may only start a pattern",
            ),
            (
                r#"[""]"#,
                "allowed_names entry \"\" is empty or has control characters or surrounding blanks",
            ),
        ] {
            assert_eq!(
                with(names).unwrap_err().to_string(),
                format!("certificate profile svc.toml is invalid: {reason}"),
                "{names}"
            );
        }
        let tls = include_str!("../../profiles/tls-client.toml");
        assert_eq!(
            Profile::from_toml("t", &format!("{tls}allowed_names = [\"x\"]\n"), "t.toml")
                .unwrap_err()
                .to_string(),
            "certificate profile t.toml is invalid: allowed_names is set but subject_from_csr = false (the names come from the directory)"
        );
        let smime = include_str!("../../profiles/smime-signing.toml");
        assert_eq!(
            Profile::from_toml("s", &format!("{smime}subject_from_csr = true\n"), "s.toml")
                .unwrap_err()
                .to_string(),
            "certificate profile s.toml is invalid: subject_from_csr = true needs allow_unattested_keys = true (a CSR's key is not attested)"
        );
    }

    #[test]
    fn a_profile_directory_replaces_the_built_in_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let err = ProfileSet::load_dir(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "certificate profile {} is invalid: the directory holds no *.toml profile",
                dir.path().display()
            )
        );
        std::fs::write(
            dir.path().join("vpn.toml"),
            include_str!("../../profiles/tls-client.toml")
                .replace("validity_days = 365", "validity_days = 30"),
        )
        .unwrap();
        std::fs::write(dir.path().join("README"), "not a profile").unwrap();
        let set = ProfileSet::load_dir(dir.path()).unwrap();
        assert_eq!(set.names(), vec!["vpn"]);
        assert_eq!(set.get("vpn").unwrap().validity_days, 30);
    }
}
