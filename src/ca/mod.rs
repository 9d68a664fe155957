//! The certificate authority: the CA ceremony (`init`), the chain on disk, certificate profiles,
//! and issuance with `rcgen` using the HSM as a remote signer. Keys are reached only through
//! [`crate::hsm::HsmSigningKey`]; this module never sees a PKCS#11 handle and never talks to
//! tokens.
//!
//! Why rcgen: its `SigningKey`/`PublicKeyData` traits are exactly "message in, signature out"
//! plus a public key, so the HSM plugs in without our own TBS encoder, and it writes the
//! extensions we need (AKI/SKI, basic constraints, KU/EKU, SANs, custom policy extension).
//! Issuance is split in two so the server can record before signing (DESIGN.md): [`CertificateAuthority::prepare`]
//! fixes the serial, validity and every field; [`CertificateAuthority::sign`] asks the HSM.
//!
//! Data directory layout: `DATA/ca/{root.pem, issuing.pem, chain.pem, ca.toml}`. `init` builds
//! it in `DATA/.ca-init-<pid>` and renames it into place only when everything succeeded; on
//! failure it removes that directory and destroys the keys it generated, so no partial CA is
//! left in either place.

pub mod profile;

pub use profile::CertificateProfile;
pub use rcgen::{DistinguishedName, DnType, SanType};

use crate::hsm::{Hsm, HsmError, HsmSigningKey, KeyAlgorithm, Pkcs11Uri};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Hsm(#[from] HsmError),
    #[error("certificate profile `{name}`: {reason}")]
    Profile { name: String, reason: String },
    #[error("a CA already exists in {}; refusing to overwrite it (choose another --data-dir)", .path.display())]
    AlreadyExists { path: PathBuf },
    #[error("no CA in {}; run `tessera ca init` first (or point --data-dir / TESSERA_DATA_DIR at the CA's data directory)", .path.display())]
    NotInitialised { path: PathBuf },
    #[error("{}: {reason}", .path.display())]
    Io { path: PathBuf, reason: String },
    #[error("CSR cannot be parsed ({0}); give a PKCS#10 request in PEM or DER")]
    CsrUnreadable(String),
    #[error("CSR signature does not verify; the request was altered or not signed by its own key")]
    CsrBadSignature,
    #[error("unsupported subject key: {0}; use EC P-256, EC P-384 or RSA (2048 bits or more)")]
    UnsupportedKey(String),
    #[error("building the certificate failed: {0}")]
    Certificate(String),
    #[error("the HSM key {uri} does not match the public key in {}; the data directory and the HSM config belong to different CAs", .cert.display())]
    KeyMismatch { uri: String, cert: PathBuf },
    #[error("{0}")]
    BadRequest(String),
}

/// What `tessera ca init` is asked to make.
#[derive(Clone, Debug)]
pub struct CaInitOptions {
    pub root_common_name: String,
    pub issuing_common_name: String,
    pub organization: Option<String>,
    pub root_algorithm: KeyAlgorithm,
    pub issuing_algorithm: KeyAlgorithm,
    pub root_validity_days: u32,
    pub issuing_validity_days: u32,
    /// basicConstraints pathLenConstraint of the issuing CA (0: it signs only end entities).
    pub issuing_path_len: u8,
}

impl Default for CaInitOptions {
    fn default() -> Self {
        CaInitOptions {
            root_common_name: "Tessera Root CA".into(),
            issuing_common_name: "Tessera Issuing CA".into(),
            organization: None,
            root_algorithm: KeyAlgorithm::EcP384,
            issuing_algorithm: KeyAlgorithm::EcP256,
            root_validity_days: 7300,
            issuing_validity_days: 3650,
            issuing_path_len: 0,
        }
    }
}

/// `DATA/ca/ca.toml`: which HSM keys belong to this CA.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaMetadata {
    pub root_key_uri: String,
    pub issuing_key_uri: String,
    pub root_algorithm: KeyAlgorithm,
    pub issuing_algorithm: KeyAlgorithm,
}

/// Paths inside a CA data directory.
pub struct CaFiles {
    pub dir: PathBuf,
}

impl CaFiles {
    pub fn in_data_dir(data_dir: &Path) -> Self {
        CaFiles { dir: data_dir.join("ca") }
    }
    pub fn root(&self) -> PathBuf {
        self.dir.join("root.pem")
    }
    pub fn issuing(&self) -> PathBuf {
        self.dir.join("issuing.pem")
    }
    pub fn chain(&self) -> PathBuf {
        self.dir.join("chain.pem")
    }
    pub fn metadata(&self) -> PathBuf {
        self.dir.join("ca.toml")
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> CaError + '_ {
    move |e| CaError::Io { path: path.to_path_buf(), reason: e.to_string() }
}

pub fn pem_encode(label: &str, der: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der).expect("PEM encoding of bytes cannot fail")
}

/// DER from PEM (first block) or DER input.
pub fn pem_or_der(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.starts_with(b"-----BEGIN") || bytes.iter().take(64).all(|b| b.is_ascii()) && bytes.windows(10).any(|w| w == b"-----BEGIN") {
        let text = std::str::from_utf8(bytes).map_err(|_| "PEM is not UTF-8".to_string())?;
        let start = text.find("-----BEGIN").unwrap_or(0);
        let (_, der) = der::pem::decode_vec(text[start..].as_bytes()).map_err(|e| format!("bad PEM: {e}"))?;
        Ok(der)
    } else {
        Ok(bytes.to_vec())
    }
}

fn spki_of_certificate(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    use der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(cert_der).map_err(|e| e.to_string())?;
    cert.tbs_certificate().subject_public_key_info().to_der().map_err(|e| e.to_string())
}

/// An HSM key as rcgen's remote signer.
struct RemoteSigner {
    key: HsmSigningKey,
    public_bits: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
    last_error: Mutex<Option<HsmError>>,
}

impl RemoteSigner {
    fn new(key: HsmSigningKey) -> Result<Self, CaError> {
        let spki = rcgen::SubjectPublicKeyInfo::from_der(key.spki_der()).map_err(|e| CaError::Certificate(format!("HSM public key: {e}")))?;
        use rcgen::PublicKeyData;
        let algorithm = match key.algorithm() {
            KeyAlgorithm::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            _ => &rcgen::PKCS_RSA_SHA256,
        };
        Ok(RemoteSigner { public_bits: spki.der_bytes().to_vec(), key, algorithm, last_error: Mutex::new(None) })
    }

    fn take_error(&self, e: rcgen::Error) -> CaError {
        match self.last_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(h) if matches!(e, rcgen::Error::RemoteKeyError) => CaError::Hsm(h),
            _ => CaError::Certificate(e.to_string()),
        }
    }
}

impl rcgen::PublicKeyData for RemoteSigner {
    fn der_bytes(&self) -> &[u8] {
        &self.public_bits
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

impl rcgen::SigningKey for RemoteSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key.sign(msg).map_err(|e| {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            rcgen::Error::RemoteKeyError
        })
    }
}

/// A positive serial: 16 bytes from the OS-seeded CSPRNG with the top bit cleared and the next
/// bit set (so the DER INTEGER is always 16 bytes, never negative): 126 random bits.
pub fn random_serial() -> Vec<u8> {
    let mut s: [u8; 16] = rand::random();
    s[0] = (s[0] & 0x7f) | 0x40;
    s.to_vec()
}

fn encode_oid(arcs: &[u128]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut push = |mut v: u128| {
        let mut tmp = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            tmp.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        tmp.reverse();
        body.extend(tmp);
    };
    push(arcs[0] * 40 + arcs[1]);
    for a in &arcs[2..] {
        push(*a);
    }
    crate::hsm::der::tlv(0x06, &body)
}

/// DER of a certificatePolicies extension value naming `oids` without qualifiers.
fn certificate_policies(oids: &[String]) -> Vec<u8> {
    let mut seq = Vec::new();
    for o in oids {
        let arcs = profile::parse_oid(o).expect("validated when the profile was loaded");
        seq.extend(crate::hsm::der::tlv(0x30, &encode_oid(&arcs)));
    }
    crate::hsm::der::tlv(0x30, &seq)
}

fn validity(days: u32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).expect("0 is a valid nanosecond");
    (now, now + time::Duration::days(i64::from(days)))
}

fn distinguished_name(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(dn: DistinguishedName, days: u32, path_len: Option<u8>) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    let (nb, na) = validity(days);
    p.not_before = nb;
    p.not_after = na;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
    p.distinguished_name = dn;
    p.is_ca = rcgen::IsCa::Ca(match path_len {
        Some(n) => rcgen::BasicConstraints::Constrained(n),
        None => rcgen::BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    p
}

fn label_of(uri: &str) -> Result<String, CaError> {
    Pkcs11Uri::parse(uri)?.object.ok_or_else(|| CaError::BadRequest(format!("key URI {uri} must name the key by label (object=) so `ca init` can create it")))
}

/// The CA ceremony: two key pairs in the HSM, a self-signed root, an issuing certificate signed
/// by the root, the public chain written to `DATA/ca`. All or nothing.
pub fn init_ca(hsm: &Hsm, data_dir: &Path, options: &CaInitOptions) -> Result<CaMetadata, CaError> {
    let files = CaFiles::in_data_dir(data_dir);
    if files.dir.exists() {
        return Err(CaError::AlreadyExists { path: files.dir });
    }
    let root_uri = hsm.config().key_uri("root_ca")?.to_string();
    let issuing_uri = hsm.config().key_uri("issuing_ca")?.to_string();
    let root_label = label_of(&root_uri)?;
    let issuing_label = label_of(&issuing_uri)?;
    if root_label == issuing_label {
        return Err(CaError::BadRequest("keys.root_ca and keys.issuing_ca name the same label; give them different ones".into()));
    }
    for label in [&root_label, &issuing_label] {
        if hsm.label_exists(label)? {
            return Err(HsmError::KeyExists { label: label.clone() }.into());
        }
    }
    std::fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
    let staging = data_dir.join(format!(".ca-init-{}", std::process::id()));
    let mut made_keys: Vec<&str> = Vec::new();
    let result = (|| -> Result<CaMetadata, CaError> {
        hsm.generate_key_pair(&root_label, options.root_algorithm)?;
        made_keys.push(&root_label);
        hsm.generate_key_pair(&issuing_label, options.issuing_algorithm)?;
        made_keys.push(&issuing_label);
        let root_signer = RemoteSigner::new(hsm.signing_key(&root_uri)?)?;
        let issuing_signer = RemoteSigner::new(hsm.signing_key(&issuing_uri)?)?;

        let root_params = ca_params(distinguished_name(&options.root_common_name, options.organization.as_deref()), options.root_validity_days, None);
        let root_cert = root_params.self_signed(&root_signer).map_err(|e| root_signer.take_error(e))?;
        let issuer = rcgen::Issuer::from_params(&root_params, &root_signer);
        let mut issuing_params = ca_params(distinguished_name(&options.issuing_common_name, options.organization.as_deref()), options.issuing_validity_days, Some(options.issuing_path_len));
        if issuing_params.not_after > root_params.not_after {
            issuing_params.not_after = root_params.not_after;
        }
        let issuing_cert = issuing_params.signed_by(&issuing_signer, &issuer).map_err(|e| root_signer.take_error(e))?;

        let meta = CaMetadata { root_key_uri: root_uri.clone(), issuing_key_uri: issuing_uri.clone(), root_algorithm: options.root_algorithm, issuing_algorithm: options.issuing_algorithm };
        std::fs::create_dir(&staging).map_err(io_err(&staging))?;
        let staged = CaFiles { dir: staging.clone() };
        let root_pem = pem_encode("CERTIFICATE", root_cert.der());
        let issuing_pem = pem_encode("CERTIFICATE", issuing_cert.der());
        std::fs::write(staged.root(), &root_pem).map_err(io_err(&staged.root()))?;
        std::fs::write(staged.issuing(), &issuing_pem).map_err(io_err(&staged.issuing()))?;
        std::fs::write(staged.chain(), format!("{issuing_pem}{root_pem}")).map_err(io_err(&staged.chain()))?;
        let meta_text = toml::to_string(&meta).map_err(|e| CaError::Certificate(e.to_string()))?;
        std::fs::write(staged.metadata(), meta_text).map_err(io_err(&staged.metadata()))?;
        std::fs::rename(&staging, &files.dir).map_err(io_err(&files.dir))?;
        Ok(meta)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
        for label in made_keys {
            if let Err(e) = hsm.destroy_objects_labelled(label) {
                tracing::error!(label, error = %e, "could not destroy a key of the failed CA ceremony; delete it by hand");
            }
        }
    }
    result
}

/// A subject's request: its public key and names. Profile-independent.
#[derive(Clone, Debug)]
pub struct IssuanceRequest {
    /// DER SubjectPublicKeyInfo of the subject's key.
    pub spki_der: Vec<u8>,
    pub subject: DistinguishedName,
    pub subject_alt_names: Vec<SanType>,
}

/// Everything about a certificate decided before the HSM signs: record it, then sign it.
#[derive(Clone, Debug)]
pub struct PreparedCertificate {
    pub serial: Vec<u8>,
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
    pub profile: String,
    params: rcgen::CertificateParams,
    public_key: Vec<u8>,
}

/// A signed certificate.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    pub serial: Vec<u8>,
    pub der: Vec<u8>,
}

impl IssuedCertificate {
    pub fn pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }
    pub fn serial_hex(&self) -> String {
        hex::encode(&self.serial)
    }
}

/// A loaded CA: its chain and the issuing key in the HSM. `Send + Sync`; share it.
pub struct CertificateAuthority {
    pub metadata: CaMetadata,
    pub root_der: Vec<u8>,
    pub issuing_der: Vec<u8>,
    issuer: rcgen::Issuer<'static, RemoteSigner>,
}

fn check_subject_key(spki_der: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo, CaError> {
    use rcgen::PublicKeyData;
    let key = rcgen::SubjectPublicKeyInfo::from_der(spki_der).map_err(|_| CaError::UnsupportedKey("the key's algorithm is not one Tessera certifies".into()))?;
    let alg = key.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 || alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        Ok(key)
    } else if alg == &rcgen::PKCS_RSA_SHA256 || alg == &rcgen::PKCS_RSA_SHA384 || alg == &rcgen::PKCS_RSA_SHA512 {
        // RSAPublicKey of a 2048-bit modulus is ~270 bytes; anything under 250 is < 2048 bits.
        if key.der_bytes().len() < 250 { Err(CaError::UnsupportedKey("RSA key shorter than 2048 bits".into())) } else { Ok(key) }
    } else if alg == &rcgen::PKCS_ED25519 {
        Err(CaError::UnsupportedKey("Ed25519 (PIV tokens and the CA profiles do not use it)".into()))
    } else {
        Err(CaError::UnsupportedKey("the key's algorithm is not one Tessera certifies".into()))
    }
}

impl CertificateAuthority {
    /// Loads `DATA/ca` and the issuing key it names; checks the key matches `issuing.pem`.
    pub fn load(hsm: &Hsm, data_dir: &Path) -> Result<Self, CaError> {
        let files = CaFiles::in_data_dir(data_dir);
        if !files.metadata().exists() {
            return Err(CaError::NotInitialised { path: data_dir.to_path_buf() });
        }
        let meta_text = std::fs::read_to_string(files.metadata()).map_err(io_err(&files.metadata()))?;
        let metadata: CaMetadata = toml::from_str(&meta_text).map_err(|e| CaError::Io { path: files.metadata(), reason: e.message().to_string() })?;
        let read_cert = |p: PathBuf| -> Result<Vec<u8>, CaError> {
            let bytes = std::fs::read(&p).map_err(io_err(&p))?;
            pem_or_der(&bytes).map_err(|reason| CaError::Io { path: p.clone(), reason })
        };
        let root_der = read_cert(files.root())?;
        let issuing_der = read_cert(files.issuing())?;
        let key = hsm.signing_key(&metadata.issuing_key_uri)?;
        let cert_spki = spki_of_certificate(&issuing_der).map_err(|reason| CaError::Io { path: files.issuing(), reason })?;
        if cert_spki != key.spki_der() {
            return Err(CaError::KeyMismatch { uri: metadata.issuing_key_uri.clone(), cert: files.issuing() });
        }
        let signer = RemoteSigner::new(key)?;
        let issuer = rcgen::Issuer::from_ca_cert_der(&issuing_der.clone().into(), signer).map_err(|e| CaError::Io { path: files.issuing(), reason: e.to_string() })?;
        Ok(CertificateAuthority { metadata, root_der, issuing_der, issuer })
    }

    /// Fixes serial, validity and all fields of a certificate for `request` under `profile`,
    /// without signing. The caller may record the result before calling [`Self::sign`].
    pub fn prepare(&self, request: &IssuanceRequest, profile: &CertificateProfile) -> Result<PreparedCertificate, CaError> {
        check_subject_key(&request.spki_der)?;
        if request.subject.iter().next().is_none() && request.subject_alt_names.is_empty() {
            return Err(CaError::BadRequest("the request has neither a subject name nor a subject alternative name".into()));
        }
        let mut p = rcgen::CertificateParams::default();
        let serial = random_serial();
        let (nb, na) = validity(profile.validity_days);
        p.not_before = nb;
        p.not_after = na;
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        p.distinguished_name = request.subject.clone();
        p.subject_alt_names = request.subject_alt_names.clone();
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        p.key_usages = profile.key_usage.clone();
        p.extended_key_usages = profile.extended_key_usage.clone();
        p.use_authority_key_identifier_extension = true;
        if !profile.policies.is_empty() {
            p.custom_extensions.push(rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 32], certificate_policies(&profile.policies)));
        }
        Ok(PreparedCertificate { serial, not_before: nb, not_after: na, profile: profile.name.clone(), params: p, public_key: request.spki_der.clone() })
    }

    /// Has the HSM sign a prepared certificate.
    pub fn sign(&self, prepared: &PreparedCertificate) -> Result<IssuedCertificate, CaError> {
        let key = rcgen::SubjectPublicKeyInfo::from_der(&prepared.public_key).map_err(|e| CaError::UnsupportedKey(e.to_string()))?;
        let cert = prepared.params.signed_by(&key, &self.issuer).map_err(|e| self.issuer_signer().take_error(e))?;
        Ok(IssuedCertificate { serial: prepared.serial.clone(), der: cert.der().to_vec() })
    }

    fn issuer_signer(&self) -> &RemoteSigner {
        self.issuer.key()
    }

    /// `prepare` then `sign`.
    pub fn issue(&self, request: &IssuanceRequest, profile: &CertificateProfile) -> Result<IssuedCertificate, CaError> {
        self.sign(&self.prepare(request, profile)?)
    }

    /// Issues for a PKCS#10 CSR (PEM or DER) after checking its own signature. Subject and SANs
    /// come from the CSR; everything else from the profile.
    pub fn issue_for_csr(&self, csr: &[u8], profile: &CertificateProfile) -> Result<IssuedCertificate, CaError> {
        let request = request_from_csr(csr)?;
        self.issue(&request, profile)
    }

    pub fn chain_pem(&self) -> String {
        format!("{}{}", pem_encode("CERTIFICATE", &self.issuing_der), pem_encode("CERTIFICATE", &self.root_der))
    }
}

/// Parses a PKCS#10 CSR (PEM or DER), checks its signature, returns subject, SANs and key.
pub fn request_from_csr(csr: &[u8]) -> Result<IssuanceRequest, CaError> {
    let der = pem_or_der(csr).map_err(CaError::CsrUnreadable)?;
    let parsed = rcgen::CertificateSigningRequestParams::from_der(&der.into()).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => CaError::CsrBadSignature,
        rcgen::Error::UnsupportedSignatureAlgorithm => CaError::UnsupportedKey("the CSR's key or signature algorithm is not supported".into()),
        rcgen::Error::UnsupportedExtension => CaError::CsrUnreadable("it requests an extension Tessera does not understand; request only subjectAltName/keyUsage/extendedKeyUsage".into()),
        other => CaError::CsrUnreadable(other.to_string()),
    })?;
    use rcgen::PublicKeyData;
    let spki_der = parsed.public_key.subject_public_key_info();
    Ok(IssuanceRequest { spki_der, subject: parsed.params.distinguished_name, subject_alt_names: parsed.params.subject_alt_names })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_and_16_bytes() {
        for _ in 0..100 {
            let s = random_serial();
            assert_eq!(s.len(), 16);
            assert_eq!(s[0] & 0xc0, 0x40);
        }
        assert_ne!(random_serial(), random_serial());
    }

    #[test]
    fn oids_encode_like_der() {
        // 2.5.29.32 → 06 03 55 1d 20
        assert_eq!(encode_oid(&[2, 5, 29, 32]), vec![0x06, 0x03, 0x55, 0x1d, 0x20]);
        // 1.2.840.113549 → 06 06 2a 86 48 86 f7 0d
        assert_eq!(encode_oid(&[1, 2, 840, 113549]), vec![0x06, 0x06, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]);
    }

    #[test]
    fn garbage_csr_is_refused() {
        let e = request_from_csr(b"not a csr").unwrap_err().to_string();
        assert!(e.starts_with("CSR cannot be parsed"), "{e}");
    }
}
