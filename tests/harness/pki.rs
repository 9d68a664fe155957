//! Test certificates made with rcgen: an operator CA (the server's `tls.client_ca`), a server
//! certificate for localhost and 127.0.0.1, and API client certificates made as a real
//! deployment makes them (`tessera ca init-operators` + `tessera admin issue-client-cert`): from
//! the operator CA, carrying a `tessera:role:<role>` URI SAN and the operator policy OID, and
//! recorded as good `operator-client` certificates in the database of every server
//! configuration written for this PKI (`ServerToml::write`), so the server knows them.
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct TestPki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// Database URLs of the server configurations written for this PKI: client certificates
    /// made after are recorded in each.
    databases: Mutex<Vec<String>>,
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
            databases: Mutex::new(Vec::new()),
        }
    }

    /// Client certificates made from now on are recorded in the database at `url` (a server
    /// configuration for this PKI names it).
    pub fn record_clients_in(&self, url: &str) {
        let mut databases = self.databases.lock().unwrap();
        if !databases.iter().any(|d| d == url) {
            databases.push(url.to_string());
        }
    }

    /// A client certificate with common name `name` and these URI SANs (and the operator
    /// policy), recorded.
    pub fn client_with_uris(&self, name: &str, uris: &[&str]) -> ClientCert {
        let client = sign_client(&self.issuer, name, uris, true);
        self.record(&client);
        client
    }

    /// An API client certificate for `role` from the operator CA that the store does not know
    /// (as one issued outside Tessera would be).
    pub fn unrecorded_client(&self, role: &str) -> ClientCert {
        sign_client(
            &self.issuer,
            &format!("{role}-client"),
            &[&format!("tessera:role:{role}")],
            true,
        )
    }

    /// A client certificate for `role` without the operator policy OID, recorded as an
    /// operator certificate.
    pub fn client_without_operator_policy(&self, role: &str) -> ClientCert {
        let client = sign_client(
            &self.issuer,
            &format!("{role}-client"),
            &[&format!("tessera:role:{role}")],
            false,
        );
        self.record(&client);
        client
    }

    /// Records `client` as a good operator-client certificate in every registered database
    /// (as `tessera admin issue-client-cert` does), on a thread of its own so that it works
    /// from synchronous and asynchronous tests alike.
    fn record(&self, client: &ClientCert) {
        let databases = self.databases.lock().unwrap().clone();
        if databases.is_empty() {
            return;
        }
        let (_, pem) = x509_parser::pem::parse_x509_pem(client.cert_pem.as_bytes()).unwrap();
        let der = pem.contents;
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            for url in databases {
                runtime.block_on(record_operator_certificate(&url, &der));
            }
        })
        .join()
        .expect("recording the client certificate in the test database");
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
        sign_client(
            &issuer,
            "intruder",
            &[&format!("tessera:role:{role}")],
            true,
        )
    }

    /// Writes the server's TLS files and the minimal configuration for `database_url` into
    /// `dir` (`ServerToml::new(database_url).write(dir, self)`); returns the configuration's path.
    pub fn write_server_config(&self, dir: &Path, database_url: &str) -> PathBuf {
        super::config::ServerToml::new(database_url).write(dir, self)
    }
}

/// Records `der` as a good `operator-client` certificate in the database at `url`, unless a
/// certificate with its serial is there already.
pub async fn record_operator_certificate(url: &str, der: &[u8]) {
    use tessera::store::{NewCertificate, Store};
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    let serial = hex::encode(cert.raw_serial());
    let store = Store::open(url)
        .await
        .unwrap_or_else(|e| panic!("cannot open {url} to record a client certificate: {e}"));
    if store
        .certificate_by_serial(&serial)
        .await
        .unwrap()
        .is_none()
    {
        let validity = cert.validity();
        let time =
            |t: &x509_parser::time::ASN1Time| tessera::store::Timestamp::from(t.to_datetime());
        let mut tx = store.begin_write().await.unwrap();
        tx.reserve_certificate(&NewCertificate {
            serial: serial.clone(),
            person_id: None,
            token_id: None,
            profile: "operator-client".into(),
            tbs: cert.tbs_certificate.as_ref().to_vec(),
            not_before: time(&validity.not_before),
            not_after: time(&validity.not_after),
        })
        .await
        .unwrap();
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(der));
        tx.record_issued_certificate(&serial, der, &sha)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    store.close().await;
}

fn sign_client(
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    uris: &[&str],
    operator_policy: bool,
) -> ClientCert {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    for uri in uris {
        p.subject_alt_names
            .push(SanType::URI((*uri).try_into().unwrap()));
    }
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    // 16 random bytes after a first byte 01: recorded client certificates sort before the
    // serials tests choose ("0a01", …) in listings ordered by serial.
    let mut serial = tessera::ca::SerialNumber::random()
        .unwrap()
        .as_bytes()
        .to_vec();
    serial[0] = 0x01;
    p.serial_number = Some(serial.into());
    if operator_policy {
        p.custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                tessera::ca::policy_oid::CERTIFICATE_POLICIES_EXTENSION,
                tessera::ca::policy_oid::certificate_policies(&[
                    tessera::ca::policy_oid::OPERATOR_POLICY,
                ])
                .unwrap(),
            ));
    }
    let cert = p.signed_by(&key, issuer).unwrap();
    ClientCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}
