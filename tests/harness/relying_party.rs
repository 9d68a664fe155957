//! A relying party for tests and the demo's checks: Debian's nginx with its own prefix,
//! configuration and pid file in a temp dir (TLS 1.3 only, `ssl_verify_client on`, the CA chain
//! and a CRL), and curl presenting a token's key through OpenSC's PKCS#11 module via the
//! OpenSSL pkcs11 engine (`libengine-pkcs11-openssl`), with the PIN read from a 0600 file named
//! in the key's `pkcs11:` URI (`pin-source`), never on the command line.
use std::path::{Path, PathBuf};
use std::process::Command;

pub const PKCS11_ENGINE: &str = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so";
const INSTALL_HINT: &str =
    "install nginx, curl and libengine-pkcs11-openssl with scripts/install-deps.sh (as root)";

/// A running nginx that requires a client certificate; stopped on drop.
pub struct Nginx {
    pub dir: PathBuf,
    pub port: u16,
    /// The server certificate (self-signed for localhost), for curl's --cacert.
    pub server_cert: PathBuf,
    crl: PathBuf,
}

impl Nginx {
    /// Starts nginx in `dir` trusting `client_chain` (PEM) and checking `crl` (PEM).
    pub fn start(dir: &Path, client_chain: &Path, crl: &Path) -> Nginx {
        assert!(
            Path::new("/usr/sbin/nginx").exists(),
            "nginx is missing; {INSTALL_HINT}"
        );
        let dir = dir.join("nginx");
        for d in ["logs", "tmp"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let server_cert = dir.join("server.pem");
        let server_key = dir.join("server.key");
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
            ])
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&server_key)
            .arg("-out")
            .arg(&server_cert)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let crl_copy = dir.join("crl.pem");
        std::fs::copy(crl, &crl_copy).unwrap();
        let port = free_port();
        let d = dir.display();
        let conf = format!(
            "daemon on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/logs/access.log;\n\
             client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy; fastcgi_temp_path {d}/tmp/fastcgi;\n\
             uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;\n\
             server {{\n    listen 127.0.0.1:{port} ssl;\n    server_name localhost;\n\
             ssl_certificate {cert};\n    ssl_certificate_key {key};\n    ssl_protocols TLSv1.3;\n\
             ssl_verify_client on;\n    ssl_verify_depth 3;\n    ssl_client_certificate {chain};\n    ssl_crl {crl};\n\
             location / {{\n      default_type text/plain;\n\
             return 200 \"verify=$ssl_client_verify subject=$ssl_client_s_dn\\n\";\n    }}\n  }}\n}}\n",
            cert = server_cert.display(),
            key = server_key.display(),
            chain = client_chain.display(),
            crl = crl_copy.display(),
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let nginx = Nginx {
            dir,
            port,
            server_cert,
            crl: crl_copy,
        };
        nginx.control(&[]);
        nginx
    }

    fn control(&self, extra: &[&str]) {
        let out = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .args(extra)
            .output()
            .expect("cannot run nginx");
        assert!(
            out.status.success(),
            "nginx {extra:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
        );
    }

    fn master_pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("nginx.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Installs a new CRL and reloads nginx; returns once the old worker is gone, so that every
    /// later connection meets the new CRL.
    pub fn reload_crl(&self, crl: &Path) {
        std::fs::copy(crl, &self.crl).unwrap();
        let master = self.master_pid();
        let before = children(master);
        self.control(&["-s", "reload"]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let now = children(master);
            if !now.is_empty() && now.iter().all(|p| !before.contains(p)) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not replace its workers after a reload"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}/", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .args(["-s", "stop"])
            .output();
    }
}

/// Processes whose parent is `pid` (from /proc/*/stat).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
            == Some(pid)
        {
            out.push(child);
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What curl got: exit code, body, and stderr.
#[derive(Debug)]
pub struct CurlRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// curl to `url` presenting the slot 9a key of the token through OpenSC (OPENSC_CONF limits it
/// to the test's reader), with `cert` (PEM) as the client certificate and the PIN from
/// `pin_file` (0600).
pub fn curl_with_token(
    url: &str,
    server_cert: &Path,
    cert: &Path,
    pin_file: &Path,
    opensc_conf: &Path,
    work: &Path,
) -> CurlRun {
    assert!(
        Path::new(PKCS11_ENGINE).exists(),
        "the OpenSSL pkcs11 engine is missing; {INSTALL_HINT}"
    );
    let openssl_conf = work.join("openssl-pkcs11.cnf");
    std::fs::write(
        &openssl_conf,
        format!(
            "openssl_conf = conf\n[conf]\nengines = engines\n[engines]\npkcs11 = pkcs11\n[pkcs11]\nengine_id = pkcs11\n\
             dynamic_path = {PKCS11_ENGINE}\nMODULE_PATH = {}\ninit = 0\n",
            super::vpcd::OPENSC_PKCS11_MODULE
        ),
    )
    .unwrap();
    let key = format!(
        "pkcs11:type=private;object=PIV%20AUTH%20key?pin-source=file:{}",
        pin_file.display()
    );
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "120", "--tlsv1.3"])
        .arg("--cacert")
        .arg(server_cert)
        .args(["--engine", "pkcs11", "--key-type", "ENG", "--key", &key])
        .arg("--cert")
        .arg(cert)
        .arg(url)
        .env("OPENSSL_CONF", &openssl_conf)
        .env("OPENSC_CONF", opensc_conf)
        .output()
        .expect("cannot run curl");
    CurlRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The root CA's CRL (empty, 30 days) from `tessera ca root-crl`, signed in the HSM with the
/// root key. nginx checks revocation for every certificate of the chain (OpenSSL's
/// CRL_CHECK_ALL), so it needs the root's CRL for the issuing CA besides Tessera's `/crl`.
/// Checked with `openssl crl -CAfile root.pem` before it is handed out.
pub fn root_crl(token: &super::softhsm::SoftHsmToken, data_dir: &Path, work: &Path) -> PathBuf {
    let out_path = work.join("root-crl.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["ca", "root-crl", "--days", "30"])
        .arg("--hsm-config")
        .arg(&token.config_path)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--out")
        .arg(&out_path)
        .env("SOFTHSM2_CONF", &token.softhsm2_conf)
        .output()
        .expect("cannot run tessera");
    assert!(
        out.status.success(),
        "tessera ca root-crl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verify = Command::new("openssl")
        .args(["crl", "-noout", "-in"])
        .arg(&out_path)
        .arg("-CAfile")
        .arg(data_dir.join("root.pem"))
        .output()
        .expect("cannot run openssl");
    assert!(
        String::from_utf8_lossy(&verify.stderr).contains("verify OK"),
        "the root CRL does not verify under root.pem: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    out_path
}

/// Tessera's CRL from `http://ADDR/crl` (DER) as PEM, after `prefix` (other CRLs, PEM).
pub fn fetch_crl(http_addr: &str, prefix: &Path, out: &Path) {
    let der = out.with_extension("der");
    let run = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            "60",
            "-o",
        ])
        .arg(&der)
        .arg(format!("http://{http_addr}/crl"))
        .output()
        .expect("cannot run curl");
    assert!(
        run.status.success(),
        "GET /crl failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let pem = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in"])
        .arg(&der)
        .output()
        .unwrap();
    assert!(
        pem.status.success(),
        "the server's /crl is not a DER CRL: {}",
        String::from_utf8_lossy(&pem.stderr)
    );
    let mut all = std::fs::read(prefix).unwrap();
    all.extend_from_slice(&pem.stdout);
    std::fs::write(out, all).unwrap();
}
