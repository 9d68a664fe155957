//! The CA ceremony (`ca init`): root and issuing keys generated in the HSM, a self-signed root
//! certificate, the issuing certificate signed by the root, and the public chain written to the
//! data directory. All or nothing: on any failure the keys it generated are destroyed and the
//! files it wrote are removed. Also reads an existing CA back (`ca show`, issuance).

use super::CaError;
use super::issue::{IssuingCa, certificate_pem, whole_seconds};
use super::policy_oid::{self, CERTIFICATE_POLICIES_EXTENSION};
use super::serial::SerialNumber;
use super::signing::{EncodeOnlyKey, sign_encoded};
use crate::hsm::{Hsm, HsmKey, KeySpec};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, Issuer,
    KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// File names inside the data directory.
pub const CA_RECORD_FILE: &str = "ca.toml";
pub const ROOT_CERTIFICATE_FILE: &str = "root.pem";
pub const ISSUING_CERTIFICATE_FILE: &str = "issuing.pem";
/// issuing then root, for servers that send the chain.
pub const CHAIN_FILE: &str = "chain.pem";
const CA_FILES: [&str; 4] = [
    CA_RECORD_FILE,
    ROOT_CERTIFICATE_FILE,
    ISSUING_CERTIFICATE_FILE,
    CHAIN_FILE,
];

/// `ca.toml`: where the CA's keys are. The certificates sit beside it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CaRecord {
    /// RFC 7512 URI of the root CA private key.
    pub root_key: String,
    /// RFC 7512 URI of the issuing CA private key.
    pub issuing_key: String,
}

/// What the ceremony makes.
#[derive(Clone, Debug)]
pub struct CaInitParams {
    pub root_common_name: String,
    pub issuing_common_name: String,
    pub organization: Option<String>,
    pub root_key_spec: KeySpec,
    pub issuing_key_spec: KeySpec,
    pub root_validity_days: u32,
    pub issuing_validity_days: u32,
    /// pathLenConstraint of the root (None: unconstrained).
    pub root_path_len: Option<u8>,
    /// pathLenConstraint of the issuing CA (0: it issues end-entity certificates only).
    pub issuing_path_len: u8,
    pub root_key_label: String,
    pub issuing_key_label: String,
}

/// The result of a ceremony.
#[derive(Clone, Debug)]
pub struct InitializedCa {
    pub record: CaRecord,
    pub root_der: Vec<u8>,
    pub issuing_der: Vec<u8>,
}

impl CaInitParams {
    fn check(&self) -> Result<(), CaError> {
        let bad = |reason: String| Err(CaError::InitParameter(reason));
        if self.root_common_name.trim().is_empty() || self.issuing_common_name.trim().is_empty() {
            return bad("the root and issuing common names must not be empty".into());
        }
        if self.root_common_name == self.issuing_common_name {
            return bad("the root and issuing CAs need different common names".into());
        }
        if self.root_key_label == self.issuing_key_label {
            return bad("the root and issuing keys need different labels".into());
        }
        if self.root_validity_days == 0 || self.issuing_validity_days == 0 {
            return bad("validity must be at least one day".into());
        }
        if self.issuing_validity_days > self.root_validity_days {
            return bad(format!(
                "the issuing CA validity ({} days) exceeds the root's ({} days); shorten --issuing-validity-days",
                self.issuing_validity_days, self.root_validity_days
            ));
        }
        if let Some(root_len) = self.root_path_len
            && root_len <= self.issuing_path_len
        {
            return bad(format!(
                "the root path length ({root_len}) must exceed the issuing CA's ({})",
                self.issuing_path_len
            ));
        }
        Ok(())
    }
}

/// Refuses if any CA file is already in `data_dir`.
pub fn ensure_no_ca(data_dir: &Path) -> Result<(), CaError> {
    for name in CA_FILES {
        let path = data_dir.join(name);
        if path.exists() {
            return Err(CaError::CaExists { path });
        }
    }
    Ok(())
}

/// What the ceremony has made so far, undone on failure.
struct CeremonyLedger<'h> {
    hsm: &'h Hsm,
    keys: Vec<HsmKey>,
    files: Vec<PathBuf>,
    created_dir: Option<PathBuf>,
}

impl CeremonyLedger<'_> {
    fn roll_back(self) {
        for path in self.files.iter().rev() {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::error!(path = %path.display(), error = %e, "ca init clean-up: could not remove file");
            }
        }
        if let Some(dir) = &self.created_dir
            && let Err(e) = std::fs::remove_dir(dir)
        {
            tracing::error!(path = %dir.display(), error = %e, "ca init clean-up: could not remove directory");
        }
        for key in self.keys.iter().rev() {
            if let Err(e) = self.hsm.destroy_key_pair(key) {
                tracing::error!(key = %key.uri(), error = %e, "ca init clean-up: could not destroy key");
            }
        }
    }

    fn write_new_file(&mut self, path: PathBuf, contents: &[u8]) -> Result<(), CaError> {
        let io = |source| CaError::Io {
            path: path.clone(),
            error: source,
        };
        // create_new: never overwrite, even if a file appeared since the first check.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        self.files.push(path.clone());
        file.write_all(contents).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(())
    }
}

/// Runs the ceremony; both certificates are valid from `now` (the caller's clock; its fraction
/// of a second dropped). Nothing is left behind on failure.
pub fn init_ca(
    hsm: &Hsm,
    data_dir: &Path,
    params: &CaInitParams,
    now: OffsetDateTime,
) -> Result<InitializedCa, CaError> {
    params.check()?;
    ensure_no_ca(data_dir)?;
    let mut ledger = CeremonyLedger {
        hsm,
        keys: Vec::new(),
        files: Vec::new(),
        created_dir: None,
    };
    match run_ceremony(&mut ledger, data_dir, params, whole_seconds(now)) {
        Ok(ca) => Ok(ca),
        Err(e) => {
            ledger.roll_back();
            Err(e)
        }
    }
}

fn ca_distinguished_name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ca_params(
    common_name: &str,
    organization: Option<&str>,
    not_before: OffsetDateTime,
    validity_days: u32,
    path_len: Option<u8>,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_distinguished_name(common_name, organization);
    params.not_before = not_before;
    params.not_after = not_before + Duration::days(i64::from(validity_days));
    params.serial_number = Some((&SerialNumber::random()?).into());
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn run_ceremony(
    ledger: &mut CeremonyLedger<'_>,
    data_dir: &Path,
    params: &CaInitParams,
    now: OffsetDateTime,
) -> Result<InitializedCa, CaError> {
    let root_key = ledger
        .hsm
        .generate_key_pair(&params.root_key_label, params.root_key_spec)?;
    ledger.keys.push(root_key.clone());
    let issuing_key = ledger
        .hsm
        .generate_key_pair(&params.issuing_key_label, params.issuing_key_spec)?;
    ledger.keys.push(issuing_key.clone());

    // rcgen encodes around the keys' public halves; each certificate is then signed once by
    // the root key through the signing seam.
    let root_public = EncodeOnlyKey::of(&root_key)?;
    let issuing_public = EncodeOnlyKey::of(&issuing_key)?;
    let org = params.organization.as_deref();

    let root_params = ca_params(
        &params.root_common_name,
        org,
        now,
        params.root_validity_days,
        params.root_path_len,
    )?;
    let root_der = sign_encoded(
        root_params
            .self_signed(&root_public)
            .map_err(|e| CaError::CertificateEncoding(e.to_string()))?
            .der(),
        &root_key,
    )?;

    let mut issuing_params = ca_params(
        &params.issuing_common_name,
        org,
        now,
        params.issuing_validity_days,
        Some(params.issuing_path_len),
    )?;
    let any_policy = policy_oid::certificate_policies(&[policy_oid::ANY_POLICY])
        .map_err(CaError::CertificateEncoding)?;
    issuing_params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            CERTIFICATE_POLICIES_EXTENSION,
            any_policy,
        ));
    let root_issuer = Issuer::from_params(&root_params, &root_public);
    let issuing_der = sign_encoded(
        issuing_params
            .signed_by(&issuing_public, &root_issuer)
            .map_err(|e| CaError::CertificateEncoding(e.to_string()))?
            .der(),
        &root_key,
    )?;
    // Proves the pair works before anything is written: the issuing key matches its certificate.
    IssuingCa::new(issuing_der.clone(), issuing_key.clone())?;

    let record = CaRecord {
        root_key: root_key.uri(),
        issuing_key: issuing_key.uri(),
    };
    let record_toml = format!(
        "# Written by `tessera ca init`. The private keys never leave the HSM; these RFC 7512 URIs name them.\n{}",
        toml::to_string(&record).map_err(|e| CaError::CertificateEncoding(e.to_string()))?
    );

    if !data_dir.exists() {
        std::fs::create_dir_all(data_dir).map_err(|source| CaError::Io {
            path: data_dir.to_path_buf(),
            error: source,
        })?;
        ledger.created_dir = Some(data_dir.to_path_buf());
    }
    let root_pem = certificate_pem(&root_der);
    let issuing_pem = certificate_pem(&issuing_der);
    ledger.write_new_file(data_dir.join(ROOT_CERTIFICATE_FILE), root_pem.as_bytes())?;
    ledger.write_new_file(
        data_dir.join(ISSUING_CERTIFICATE_FILE),
        issuing_pem.as_bytes(),
    )?;
    ledger.write_new_file(
        data_dir.join(CHAIN_FILE),
        format!("{issuing_pem}{root_pem}").as_bytes(),
    )?;
    // ca.toml last: its presence means a complete CA.
    ledger.write_new_file(data_dir.join(CA_RECORD_FILE), record_toml.as_bytes())?;
    Ok(InitializedCa {
        record,
        root_der,
        issuing_der,
    })
}

/// A self-signed CA certificate (keyCertSign, cRLSign, pathLen 0) for `key`, valid from `now`
/// (the caller's clock) for `validity_days`: for `tessera bench` and tests that need an issuer
/// without a full ceremony.
pub fn self_signed_ca_certificate(
    key: &HsmKey,
    common_name: &str,
    validity_days: u32,
    now: OffsetDateTime,
) -> Result<Vec<u8>, CaError> {
    let params = ca_params(
        common_name,
        None,
        whole_seconds(now),
        validity_days,
        Some(0),
    )?;
    let encoded = params
        .self_signed(&EncodeOnlyKey::of(key)?)
        .map_err(|e| CaError::CertificateEncoding(e.to_string()))?;
    sign_encoded(encoded.der(), key)
}

/// A CA read back from its data directory (no HSM needed).
#[derive(Clone, Debug)]
pub struct StoredCa {
    pub record: CaRecord,
    pub root_der: Vec<u8>,
    pub issuing_der: Vec<u8>,
}

impl StoredCa {
    pub fn load(data_dir: &Path) -> Result<StoredCa, CaError> {
        let record_path = data_dir.join(CA_RECORD_FILE);
        if !record_path.exists() {
            return Err(CaError::NoCa {
                dir: data_dir.to_path_buf(),
            });
        }
        let text = read_file(&record_path)?;
        let record: CaRecord = toml::from_str(&String::from_utf8_lossy(&text)).map_err(|e| {
            CaError::CaRecordInvalid {
                path: record_path.clone(),
                reason: e.message().replace('\n', " "),
            }
        })?;
        Ok(StoredCa {
            record,
            root_der: read_certificate_pem(&data_dir.join(ROOT_CERTIFICATE_FILE))?,
            issuing_der: read_certificate_pem(&data_dir.join(ISSUING_CERTIFICATE_FILE))?,
        })
    }

    /// The issuing CA with its key found in the HSM by the URI in `ca.toml`.
    pub fn issuing_ca(&self, hsm: &Hsm) -> Result<IssuingCa, CaError> {
        let key = hsm.find_key(&self.record.issuing_key)?;
        IssuingCa::new(self.issuing_der.clone(), key)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, CaError> {
    std::fs::read(path).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        error: source,
    })
}

fn read_certificate_pem(path: &Path) -> Result<Vec<u8>, CaError> {
    let text = read_file(path)?;
    let (label, der) =
        der::pem::decode_vec(text.trim_ascii()).map_err(|e| CaError::CaRecordInvalid {
            path: path.to_path_buf(),
            reason: format!("not a PEM certificate: {e}"),
        })?;
    if label != "CERTIFICATE" {
        return Err(CaError::CaRecordInvalid {
            path: path.to_path_buf(),
            reason: format!("PEM block is \"{label}\", not \"CERTIFICATE\""),
        });
    }
    Ok(der)
}

/// One certificate as `ca show` prints it.
#[derive(Clone, Debug)]
pub struct CertificateSummary {
    pub subject: String,
    pub issuer: String,
    pub serial_hex: String,
    pub not_before: String,
    pub not_after: String,
    pub signature_algorithm: String,
}

pub fn summarize_certificate(der: &[u8]) -> Result<CertificateSummary, CaError> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| CaError::CaCertificateUnreadable(e.to_string()))?;
    let sig_oid = cert.signature_algorithm.algorithm.to_id_string();
    let signature_algorithm = match sig_oid.as_str() {
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256".to_string(),
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384".to_string(),
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption".to_string(),
        other => other.to_string(),
    };
    Ok(CertificateSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial_hex: hex::encode_upper(cert.raw_serial()),
        not_before: cert.validity().not_before.to_string(),
        not_after: cert.validity().not_after.to_string(),
        signature_algorithm,
    })
}

/// The operator CA's files inside the data directory (beside the issuing CA's).
pub const OPERATOR_CA_RECORD_FILE: &str = "operator-ca.toml";
pub const OPERATOR_CA_CERTIFICATE_FILE: &str = "operator-ca.pem";

/// `operator-ca.toml`: where the operator CA's key is.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OperatorCaRecord {
    /// RFC 7512 URI of the operator CA private key.
    pub operator_key: String,
}

/// What `ca init-operators` makes.
#[derive(Clone, Debug)]
pub struct OperatorCaParams {
    pub common_name: String,
    pub organization: Option<String>,
    pub key_spec: KeySpec,
    pub validity_days: u32,
    pub key_label: String,
}

/// The operator CA read back from the data directory.
#[derive(Clone, Debug)]
pub struct StoredOperatorCa {
    pub record: OperatorCaRecord,
    pub certificate_der: Vec<u8>,
}

impl StoredOperatorCa {
    /// The operator CA in `data_dir`, made by `tessera ca init-operators`.
    pub fn load(data_dir: &Path) -> Result<StoredOperatorCa, CaError> {
        let record_path = data_dir.join(OPERATOR_CA_RECORD_FILE);
        if !record_path.exists() {
            return Err(CaError::NoOperatorCa {
                dir: data_dir.to_path_buf(),
            });
        }
        let text = read_file(&record_path)?;
        let record: OperatorCaRecord =
            toml::from_str(&String::from_utf8_lossy(&text)).map_err(|e| {
                CaError::CaRecordInvalid {
                    path: record_path.clone(),
                    reason: e.message().replace('\n', " "),
                }
            })?;
        Ok(StoredOperatorCa {
            record,
            certificate_der: read_certificate_pem(&data_dir.join(OPERATOR_CA_CERTIFICATE_FILE))?,
        })
    }

    /// The operator CA with its key found in the HSM; it issues the operator profile only.
    pub fn operator_ca(&self, hsm: &Hsm) -> Result<IssuingCa, CaError> {
        let key = hsm.find_key(&self.record.operator_key)?;
        Ok(IssuingCa::new(self.certificate_der.clone(), key)?.for_operators())
    }
}

/// `ca init-operators`: a second CA under the root, for API client (operator) certificates
/// only. Its key is generated in the HSM; its certificate is signed by the root key (pathLen 0,
/// certificatePolicies the operator policy OID alone, so a certificate under it carrying a
/// person's policy does not validate for policy-checking relying parties). Writes
/// `operator-ca.pem` and, last, `operator-ca.toml`; all or nothing, as `init_ca`.
pub fn init_operator_ca(
    hsm: &Hsm,
    data_dir: &Path,
    params: &OperatorCaParams,
    now: OffsetDateTime,
) -> Result<StoredOperatorCa, CaError> {
    let stored = StoredCa::load(data_dir)?;
    if params.common_name.trim().is_empty() {
        return Err(CaError::InitParameter(
            "the operator CA common name must not be empty".into(),
        ));
    }
    if params.validity_days == 0 {
        return Err(CaError::InitParameter(
            "validity must be at least one day".into(),
        ));
    }
    for name in [OPERATOR_CA_RECORD_FILE, OPERATOR_CA_CERTIFICATE_FILE] {
        let path = data_dir.join(name);
        if path.exists() {
            return Err(CaError::OperatorCaExists { path });
        }
    }
    let root_not_after = {
        use x509_parser::prelude::FromDer;
        let (_, root) = x509_parser::certificate::X509Certificate::from_der(&stored.root_der)
            .map_err(|e| CaError::CaCertificateUnreadable(e.to_string()))?;
        root.validity().not_after.to_datetime()
    };
    if whole_seconds(now) + Duration::days(i64::from(params.validity_days)) > root_not_after {
        return Err(CaError::InitParameter(format!(
            "the operator CA validity ({} days) would outlast the root certificate (valid until {root_not_after}); shorten --validity-days",
            params.validity_days
        )));
    }
    let mut ledger = CeremonyLedger {
        hsm,
        keys: Vec::new(),
        files: Vec::new(),
        created_dir: None,
    };
    let result = run_operator_ceremony(&mut ledger, &stored, data_dir, params, whole_seconds(now));
    match result {
        Ok(made) => Ok(made),
        Err(e) => {
            ledger.roll_back();
            Err(e)
        }
    }
}

fn run_operator_ceremony(
    ledger: &mut CeremonyLedger<'_>,
    stored: &StoredCa,
    data_dir: &Path,
    params: &OperatorCaParams,
    now: OffsetDateTime,
) -> Result<StoredOperatorCa, CaError> {
    let issuing_subject = summarize_certificate(&stored.issuing_der)?.subject;
    let root_key = ledger.hsm.find_key(&stored.record.root_key)?;
    let operator_key = ledger
        .hsm
        .generate_key_pair(&params.key_label, params.key_spec)?;
    ledger.keys.push(operator_key.clone());
    let root_public = EncodeOnlyKey::of(&root_key)?;
    let operator_public = EncodeOnlyKey::of(&operator_key)?;
    let mut ca = ca_params(
        &params.common_name,
        params.organization.as_deref(),
        now,
        params.validity_days,
        Some(0),
    )?;
    let policies = policy_oid::certificate_policies(&[policy_oid::OPERATOR_POLICY])
        .map_err(CaError::CertificateEncoding)?;
    ca.custom_extensions.push(CustomExtension::from_oid_content(
        CERTIFICATE_POLICIES_EXTENSION,
        policies,
    ));
    let root_issuer = Issuer::from_ca_cert_der(&stored.root_der.clone().into(), root_public)
        .map_err(|e| CaError::CaCertificateUnreadable(e.to_string()))?;
    let der = sign_encoded(
        ca.signed_by(&operator_public, &root_issuer)
            .map_err(|e| CaError::CertificateEncoding(e.to_string()))?
            .der(),
        &root_key,
    )?;
    // The key matches its certificate before anything is written.
    IssuingCa::new(der.clone(), operator_key.clone())?;
    if summarize_certificate(&der)?.subject == issuing_subject {
        return Err(CaError::InitParameter(format!(
            "the operator CA needs a name other than the issuing CA's ({issuing_subject}); choose another --common-name"
        )));
    }
    let record = OperatorCaRecord {
        operator_key: operator_key.uri(),
    };
    let record_toml = format!(
        "# Written by `tessera ca init-operators`. The private key never leaves the HSM; this RFC 7512 URI names it.\n{}",
        toml::to_string(&record).map_err(|e| CaError::CertificateEncoding(e.to_string()))?
    );
    ledger.write_new_file(
        data_dir.join(OPERATOR_CA_CERTIFICATE_FILE),
        certificate_pem(&der).as_bytes(),
    )?;
    // operator-ca.toml last: its presence means a complete operator CA.
    ledger.write_new_file(
        data_dir.join(OPERATOR_CA_RECORD_FILE),
        record_toml.as_bytes(),
    )?;
    Ok(StoredOperatorCa {
        record,
        certificate_der: der,
    })
}
