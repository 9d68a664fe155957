//! Test certificates made with rcgen: a client CA, a server certificate for localhost and
//! 127.0.0.1, and client certificates carrying a `tessera:role:<role>` URI SAN. Stands in for
//! `tessera admin issue-client-cert` until that command exists.
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

pub struct TestPki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl ClientCert {
    /// SHA-256 of the certificate (DER), lower-case hex: the caller the server keys this
    /// client's request ids to.
    pub fn sha256(&self) -> String {
        use sha2::Digest;
        let (_, pem) = x509_parser::pem::parse_x509_pem(self.cert_pem.as_bytes()).unwrap();
        hex::encode(sha2::Sha256::digest(&pem.contents))
    }
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(p, key))
}

impl TestPki {
    pub fn new() -> TestPki {
        let (ca_pem, issuer) = ca("Tessera Test CA");
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.distinguished_name
            .push(DnType::CommonName, "tessera server");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &issuer).unwrap();
        TestPki {
            ca_pem,
            issuer,
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
        }
    }

    /// A client certificate with common name `name` and these URI SANs.
    pub fn client_with_uris(&self, name: &str, uris: &[&str]) -> ClientCert {
        sign_client(&self.issuer, name, uris)
    }

    pub fn client(&self, role: &str) -> ClientCert {
        self.client_with_uris(
            &format!("{role}-client"),
            &[&format!("tessera:role:{role}")],
        )
    }

    /// A client certificate for `role` from a different CA than the server trusts.
    pub fn foreign_client(role: &str) -> ClientCert {
        let (_, issuer) = ca("Somebody Else's CA");
        sign_client(&issuer, "intruder", &[&format!("tessera:role:{role}")])
    }

    /// Writes the server's TLS files and the minimal configuration for `database_url` into
    /// `dir` (`ServerToml::new(database_url).write(dir, self)`); returns the configuration's path.
    pub fn write_server_config(&self, dir: &Path, database_url: &str) -> PathBuf {
        super::config::ServerToml::new(database_url).write(dir, self)
    }
}

fn sign_client(issuer: &Issuer<'static, KeyPair>, name: &str, uris: &[&str]) -> ClientCert {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    for uri in uris {
        p.subject_alt_names
            .push(SanType::URI((*uri).try_into().unwrap()));
    }
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, issuer).unwrap();
    ClientCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}
