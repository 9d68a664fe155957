//! PKCS#11 through `cryptoki`: module loading from `hsm-config/*.toml`, a pool of logged-in
//! sessions, key generation (sensitive, never extractable), signing, AES-256-GCM wrapping of
//! stored secrets, and recovery from dead sessions. Nothing outside this module sees a PKCS#11
//! handle; other modules sign through [`HsmSigningKey`] ("key in, signature out").
//!
//! Concurrency: the pool is synchronous. A `Session` is `Send` but not `Sync`, so each pooled
//! session is lent to one caller at a time ([`SessionPool`]); callers on tokio wrap HSM calls in
//! `tokio::task::spawn_blocking` (or use the `*_blocking`-free async helpers on [`Hsm`]).
//!
//! Dead sessions: when a call fails with a code that means the session or device is gone
//! (`CKR_SESSION_HANDLE_INVALID`, `CKR_SESSION_CLOSED`, `CKR_DEVICE_REMOVED`, `CKR_DEVICE_ERROR`,
//! `CKR_TOKEN_NOT_PRESENT`, `CKR_USER_NOT_LOGGED_IN`, …) the session is dropped, a fresh one is
//! opened and logged in, and the operation is retried once, transparently (every operation here
//! is safe to repeat). If the retry fails too, the caller gets [`HsmError::SessionLost`], which
//! [`HsmError::is_retryable`] reports as retryable.

mod config;
pub mod der;
mod uri;

pub use config::{HsmConfig, PinSource, TokenSelector};
pub use uri::{ObjectKind, Pkcs11Uri};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use sha2::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// Everything that can go wrong talking to the HSM. Each message is one line naming the problem
/// and what to check.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error("HSM config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("cannot load PKCS#11 module {path}: {reason}; check `module` in the HSM config names the vendor's .so (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so, install with scripts/install-deps.sh)")]
    ModuleLoad { path: PathBuf, reason: String },
    #[error("bad key URI `{uri}`: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("HSM user PIN unavailable: {source_desc}")]
    PinMissing { source_desc: String },
    #[error("HSM PIN file {} has mode {mode:04o}; it must be 0600 (chmod 600 {})", path.display(), path.display())]
    PinFileMode { path: PathBuf, mode: u32 },
    #[error("no token {selector} on PKCS#11 module {module}; tokens present: {present}; check token_label/token_serial in the HSM config (and SOFTHSM2_CONF for SoftHSM2)")]
    TokenNotFound { selector: String, module: PathBuf, present: String },
    #[error("HSM rejected the user PIN (CKR_PIN_INCORRECT) for token {token}; check the PIN source named in the HSM config")]
    PinIncorrect { token: String },
    #[error("HSM user PIN of token {token} is locked (CKR_PIN_LOCKED); the security officer must unblock it")]
    PinLocked { token: String },
    #[error("no object matches {uri}; check the label/id in the URI (pkcs11-tool --module MODULE --login -O lists objects)")]
    KeyNotFound { uri: String },
    #[error("{count} objects match {uri}; make the URI unique by adding id= or type=")]
    KeyAmbiguous { uri: String, count: usize },
    #[error("a key labelled `{label}` already exists on the token; refusing to create another (delete it or choose another label)")]
    KeyExists { label: String },
    #[error("HSM session lost during {op} ({rv}) and the retry on a fresh session failed too; the HSM may be unreachable: retry later and check the device")]
    SessionLost { op: &'static str, rv: String },
    #[error("PKCS#11 {op} failed: {rv}")]
    Pkcs11 { op: &'static str, rv: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("wrapped secret is malformed or was not made by this key ({0})")]
    Unwrap(String),
}

impl HsmError {
    /// True when repeating the operation later may succeed (the device or session went away).
    pub fn is_retryable(&self) -> bool {
        matches!(self, HsmError::SessionLost { .. })
    }
}

/// `CKR_SESSION_HANDLE_INVALID` from cryptoki's `SessionHandleInvalid`.
pub fn ckr_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn rv_of(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

fn describe(e: &CkError) -> String {
    match rv_of(e) {
        Some(rv) => ckr_name(rv),
        None => e.to_string(),
    }
}

/// Codes after which the session (or the device behind it) is no longer usable.
pub fn is_dead_session(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::UserNotLoggedIn
            | RvError::CryptokiNotInitialized
            | RvError::GeneralError
    )
}

/// Key algorithms the HSM generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    EcP256,
    EcP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyAlgorithm {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ec-p256" | "p256" | "p-256" => KeyAlgorithm::EcP256,
            "ec-p384" | "p384" | "p-384" => KeyAlgorithm::EcP384,
            "rsa2048" | "rsa-2048" => KeyAlgorithm::Rsa2048,
            "rsa3072" | "rsa-3072" => KeyAlgorithm::Rsa3072,
            "rsa4096" | "rsa-4096" => KeyAlgorithm::Rsa4096,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcP256 => "ec-p256",
            KeyAlgorithm::EcP384 => "ec-p384",
            KeyAlgorithm::Rsa2048 => "rsa2048",
            KeyAlgorithm::Rsa3072 => "rsa3072",
            KeyAlgorithm::Rsa4096 => "rsa4096",
        }
    }
    /// The signature scheme certificates signed by this key use.
    pub fn default_scheme(self) -> SignatureScheme {
        match self {
            KeyAlgorithm::EcP256 => SignatureScheme::EcdsaSha256,
            KeyAlgorithm::EcP384 => SignatureScheme::EcdsaSha384,
            _ => SignatureScheme::RsaPkcs1Sha256,
        }
    }
    fn ec_params(self) -> Option<(&'static [u8], usize)> {
        match self {
            // DER OIDs prime256v1 and secp384r1
            KeyAlgorithm::EcP256 => Some((&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07], 32)),
            KeyAlgorithm::EcP384 => Some((&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22], 48)),
            _ => None,
        }
    }
    fn rsa_bits(self) -> Option<u64> {
        match self {
            KeyAlgorithm::Rsa2048 => Some(2048),
            KeyAlgorithm::Rsa3072 => Some(3072),
            KeyAlgorithm::Rsa4096 => Some(4096),
            _ => None,
        }
    }
}

/// How a message is signed. ECDSA hashes on the host and sends the digest (`CKM_ECDSA`, which
/// every HSM has); RSA hashes inside the HSM (`CKM_SHA256_RSA_PKCS`, `CKM_SHA256_RSA_PKCS_PSS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureScheme {
    EcdsaSha256,
    EcdsaSha384,
    RsaPkcs1Sha256,
    RsaPssSha256,
}

/// A logged-in session lent from the pool; returned on drop unless found dead.
struct PooledSession<'a> {
    pool: &'a SessionPool,
    session: Option<Session>,
}

impl PooledSession<'_> {
    fn get(&self) -> &Session {
        self.session.as_ref().expect("present until drop or discard")
    }
    fn discard(mut self) {
        if let Some(s) = self.session.take() {
            drop(s); // C_CloseSession; errors ignored, the handle is dead anyway
        }
        let mut st = self.pool.state.lock().unwrap_or_else(|e| e.into_inner());
        st.open -= 1;
        self.pool.available.notify_one();
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let mut st = self.pool.state.lock().unwrap_or_else(|e| e.into_inner());
            st.idle.push(s);
            self.pool.available.notify_one();
        }
    }
}

struct PoolState {
    idle: Vec<Session>,
    open: usize,
}

/// At most `size` sessions, each used by one caller at a time; callers beyond that wait.
struct SessionPool {
    state: Mutex<PoolState>,
    available: Condvar,
    size: usize,
}

struct HsmInner {
    pkcs11: Pkcs11,
    config: HsmConfig,
    token_label: String,
    slot: Mutex<Slot>,
    pool: SessionPool,
    handles: Mutex<HashMap<String, ObjectHandle>>,
}

/// A connection to one token of one PKCS#11 module. Cheap to clone; share it between tasks.
#[derive(Clone)]
pub struct Hsm {
    inner: Arc<HsmInner>,
}

/// One `Pkcs11` context per module path per process: `C_Initialize` may run only once, and the
/// context is never finalized while the process lives.
fn module_context(path: &Path) -> Result<Pkcs11, HsmError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut map = MODULES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = map.get(path) {
        return Ok(p.clone());
    }
    if !path.exists() {
        return Err(HsmError::ModuleLoad { path: path.into(), reason: "no such file".into() });
    }
    let pkcs11 = Pkcs11::new(path).map_err(|e| HsmError::ModuleLoad { path: path.into(), reason: e.to_string() })?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(HsmError::ModuleLoad { path: path.into(), reason: format!("C_Initialize: {}", describe(&e)) }),
    }
    map.insert(path.to_path_buf(), pkcs11.clone());
    Ok(pkcs11)
}

/// What a freshly generated key pair is called and its public half.
#[derive(Clone, Debug)]
pub struct GeneratedKeyPair {
    pub uri: String,
    pub label: String,
    pub algorithm: KeyAlgorithm,
    pub spki_der: Vec<u8>,
}

impl Hsm {
    /// Loads the module, finds the token, opens one session and logs in (so a wrong PIN or a
    /// missing token is reported now, not at the first signature).
    pub fn open(config: HsmConfig) -> Result<Self, HsmError> {
        let pkcs11 = module_context(&config.module)?;
        let (slot, token_label) = find_slot(&pkcs11, &config)?;
        let pool = SessionPool { state: Mutex::new(PoolState { idle: Vec::new(), open: 0 }), available: Condvar::new(), size: config.pool_size };
        let hsm = Hsm { inner: Arc::new(HsmInner { pkcs11, config, token_label, slot: Mutex::new(slot), pool, handles: Mutex::new(HashMap::new()) }) };
        drop(hsm.acquire()?);
        Ok(hsm)
    }

    /// Loads the config file and opens the HSM it names.
    pub fn open_config_file(path: &Path) -> Result<Self, HsmError> {
        Self::open(HsmConfig::load(path)?)
    }

    pub fn config(&self) -> &HsmConfig {
        &self.inner.config
    }

    pub fn token_label(&self) -> &str {
        &self.inner.token_label
    }

    fn open_logged_in_session(&self) -> Result<Session, HsmError> {
        let inner = &*self.inner;
        let slot = *inner.slot.lock().unwrap_or_else(|e| e.into_inner());
        let session = match inner.pkcs11.open_rw_session(slot) {
            Ok(s) => s,
            Err(e) if matches!(rv_of(&e), Some(RvError::SlotIdInvalid | RvError::TokenNotPresent | RvError::DeviceRemoved)) => {
                // The device may have come back in another slot.
                let (slot, _) = find_slot(&inner.pkcs11, &inner.config)?;
                *inner.slot.lock().unwrap_or_else(|e| e.into_inner()) = slot;
                inner.pkcs11.open_rw_session(slot).map_err(|e| HsmError::SessionLost { op: "C_OpenSession", rv: describe(&e) })?
            }
            Err(e) => return Err(HsmError::Pkcs11 { op: "C_OpenSession", rv: describe(&e) }),
        };
        let token = &inner.token_label;
        if let Ok(info) = inner.pkcs11.get_token_info(slot) {
            if info.user_pin_locked() {
                return Err(HsmError::PinLocked { token: token.clone() });
            }
        }
        let pin = inner.config.pin.read()?;
        let auth = AuthPin::from(pin.as_str());
        drop(pin);
        match session.login(UserType::User, Some(&auth)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange, _)) => Err(HsmError::PinIncorrect { token: token.clone() }),
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(HsmError::PinLocked { token: token.clone() }),
            Err(e) => Err(HsmError::Pkcs11 { op: "C_Login", rv: describe(&e) }),
        }
        // `auth` (a SecretString) is zeroized when it goes out of scope here.
    }

    fn acquire(&self) -> Result<PooledSession<'_>, HsmError> {
        let pool = &self.inner.pool;
        let mut st = pool.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(s) = st.idle.pop() {
                return Ok(PooledSession { pool, session: Some(s) });
            }
            if st.open < pool.size {
                st.open += 1;
                drop(st);
                return match self.open_logged_in_session() {
                    Ok(s) => Ok(PooledSession { pool, session: Some(s) }),
                    Err(e) => {
                        let mut st = pool.state.lock().unwrap_or_else(|e| e.into_inner());
                        st.open -= 1;
                        pool.available.notify_one();
                        Err(e)
                    }
                };
            }
            st = pool.available.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Runs `op` on a pooled session; on a dead-session code, drops that session and retries
    /// once on a fresh logged-in one.
    fn with_session<T>(&self, op_name: &'static str, op: impl Fn(&Session) -> Result<T, CkError>) -> Result<T, HsmError> {
        let mut last = String::new();
        for _attempt in 0..2 {
            let session = self.acquire()?;
            match op(session.get()) {
                Ok(v) => return Ok(v),
                Err(e) => match rv_of(&e) {
                    Some(rv) if is_dead_session(rv) => {
                        tracing::warn!(op = op_name, rv = %ckr_name(rv), "HSM session dead; reopening");
                        session.discard();
                        last = ckr_name(rv);
                    }
                    _ => return Err(HsmError::Pkcs11 { op: op_name, rv: describe(&e) }),
                },
            }
        }
        Err(HsmError::SessionLost { op: op_name, rv: last })
    }

    /// Logs the whole application out of the token (`C_Logout`): every pooled session loses its
    /// login at once. An operator's "lock the HSM now"; the pool logs in again on next use.
    pub fn log_out_everywhere(&self) -> Result<(), HsmError> {
        let s = self.acquire()?;
        match s.get().logout() {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserNotLoggedIn, _)) => Ok(()),
            Err(e) => Err(HsmError::Pkcs11 { op: "C_Logout", rv: describe(&e) }),
        }
    }

    /// Closes every idle pooled session (`C_CloseSession`) without telling the pool's users;
    /// sessions lent out are closed when their callers return them and next find them dead.
    /// Used by tests and by an operator who suspects stale sessions.
    pub fn close_idle_sessions(&self) {
        let pool = &self.inner.pool;
        let mut st = pool.state.lock().unwrap_or_else(|e| e.into_inner());
        let n = st.idle.len();
        st.idle.clear();
        st.open -= n;
        pool.available.notify_all();
    }

    /// All objects matching `uri` (label, id, type).
    fn find(&self, uri_text: &str) -> Result<ObjectHandle, HsmError> {
        let uri = Pkcs11Uri::parse(uri_text)?;
        if let Some(t) = &uri.token {
            if t != &self.inner.token_label {
                return Err(HsmError::KeyNotFound { uri: format!("{uri_text} (it names token `{t}`, the configured token is `{}`)", self.inner.token_label) });
            }
        }
        let mut template = Vec::new();
        if let Some(l) = &uri.object {
            template.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(id) = &uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        if let Some(k) = uri.kind {
            template.push(Attribute::Class(match k {
                ObjectKind::PrivateKey => ObjectClass::PRIVATE_KEY,
                ObjectKind::PublicKey => ObjectClass::PUBLIC_KEY,
                ObjectKind::SecretKey => ObjectClass::SECRET_KEY,
                ObjectKind::Certificate => ObjectClass::CERTIFICATE,
            }));
        }
        let found = self.with_session("C_FindObjects", |s| s.find_objects(&template))?;
        match found.len() {
            0 => Err(HsmError::KeyNotFound { uri: uri_text.to_string() }),
            1 => Ok(found[0]),
            n => Err(HsmError::KeyAmbiguous { uri: uri_text.to_string(), count: n }),
        }
    }

    /// Finds `uri` once and caches the handle (object handles stay valid across sessions).
    fn handle(&self, uri: &str) -> Result<ObjectHandle, HsmError> {
        if let Some(h) = self.inner.handles.lock().unwrap_or_else(|e| e.into_inner()).get(uri) {
            return Ok(*h);
        }
        let h = self.find(uri)?;
        self.inner.handles.lock().unwrap_or_else(|e| e.into_inner()).insert(uri.to_string(), h);
        Ok(h)
    }

    fn forget_handles(&self) {
        self.inner.handles.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// True if any object carries `label`.
    pub fn label_exists(&self, label: &str) -> Result<bool, HsmError> {
        let template = [Attribute::Label(label.as_bytes().to_vec())];
        Ok(!self.with_session("C_FindObjects", |s| s.find_objects(&template))?.is_empty())
    }

    /// Generates a key pair on the token: private half `CKA_TOKEN`, `CKA_PRIVATE`,
    /// `CKA_SENSITIVE` true and `CKA_EXTRACTABLE` false. Refuses a label already in use.
    pub fn generate_key_pair(&self, label: &str, algorithm: KeyAlgorithm) -> Result<GeneratedKeyPair, HsmError> {
        if self.label_exists(label)? {
            return Err(HsmError::KeyExists { label: label.to_string() });
        }
        let id = self.random(16)?;
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ];
        let private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ];
        let mechanism = if let Some((params, _)) = algorithm.ec_params() {
            public.push(Attribute::EcParams(params.to_vec()));
            Mechanism::EccKeyPairGen
        } else {
            public.push(Attribute::ModulusBits(algorithm.rsa_bits().unwrap_or(2048).into()));
            public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            Mechanism::RsaPkcsKeyPairGen
        };
        let (pub_handle, _priv_handle) = self.with_session("C_GenerateKeyPair", |s| s.generate_key_pair(&mechanism, &public, &private))?;
        let spki_der = self.public_key_spki(pub_handle, algorithm)?;
        Ok(GeneratedKeyPair { uri: Pkcs11Uri::for_label(&self.inner.token_label, label, ObjectKind::PrivateKey), label: label.to_string(), algorithm, spki_der })
    }

    fn public_key_spki(&self, handle: ObjectHandle, algorithm: KeyAlgorithm) -> Result<Vec<u8>, HsmError> {
        let bad = |what: &str| HsmError::Unsupported(format!("the HSM returned a malformed public key ({what})"));
        if let Some((params, field)) = algorithm.ec_params() {
            let attrs = self.with_session("C_GetAttributeValue", |s| s.get_attributes(handle, &[AttributeType::EcPoint]))?;
            let point = attrs.into_iter().find_map(|a| if let Attribute::EcPoint(p) = a { Some(p) } else { None }).ok_or_else(|| bad("no CKA_EC_POINT"))?;
            let point = der::ec_point_from_attribute(&point, field).ok_or_else(|| bad("CKA_EC_POINT"))?;
            Ok(der::ec_spki(params, &point))
        } else {
            let attrs = self.with_session("C_GetAttributeValue", |s| s.get_attributes(handle, &[AttributeType::Modulus, AttributeType::PublicExponent]))?;
            let (mut n, mut e) = (None, None);
            for a in attrs {
                match a {
                    Attribute::Modulus(m) => n = Some(m),
                    Attribute::PublicExponent(x) => e = Some(x),
                    _ => {}
                }
            }
            Ok(der::rsa_spki(&n.ok_or_else(|| bad("no CKA_MODULUS"))?, &e.ok_or_else(|| bad("no CKA_PUBLIC_EXPONENT"))?))
        }
    }

    /// A signing handle for the private key named by `uri`: finds the key once, reads its public
    /// half (the public key object with the same label/id) and caches both.
    pub fn signing_key(&self, uri: &str) -> Result<HsmSigningKey, HsmError> {
        let handle = self.handle(uri)?;
        let attrs = self.with_session("C_GetAttributeValue", |s| s.get_attributes(handle, &[AttributeType::KeyType, AttributeType::Id, AttributeType::Label, AttributeType::EcParams, AttributeType::ModulusBits, AttributeType::Modulus]))?;
        let (mut key_type, mut id, mut label, mut ec_params, mut modulus_len) = (None, None, None, None, None);
        for a in attrs {
            match a {
                Attribute::KeyType(k) => key_type = Some(k),
                Attribute::Id(i) => id = Some(i),
                Attribute::Label(l) => label = Some(l),
                Attribute::EcParams(p) => ec_params = Some(p),
                Attribute::ModulusBits(b) => modulus_len = Some(u64::from(b) as usize),
                Attribute::Modulus(m) => modulus_len = modulus_len.or(Some(m.len() * 8)),
                _ => {}
            }
        }
        let algorithm = match key_type {
            Some(KeyType::EC) => match ec_params.as_deref() {
                Some(p) if Some(p) == KeyAlgorithm::EcP256.ec_params().map(|x| x.0) => KeyAlgorithm::EcP256,
                Some(p) if Some(p) == KeyAlgorithm::EcP384.ec_params().map(|x| x.0) => KeyAlgorithm::EcP384,
                _ => return Err(HsmError::Unsupported(format!("key {uri} is on a curve Tessera does not sign with (P-256 and P-384 are supported)"))),
            },
            Some(KeyType::RSA) => match modulus_len {
                Some(2048) => KeyAlgorithm::Rsa2048,
                Some(3072) => KeyAlgorithm::Rsa3072,
                Some(4096) => KeyAlgorithm::Rsa4096,
                Some(n) => return Err(HsmError::Unsupported(format!("key {uri} is RSA-{n}; Tessera signs with RSA 2048, 3072 or 4096"))),
                None => KeyAlgorithm::Rsa2048,
            },
            _ => return Err(HsmError::Unsupported(format!("key {uri} is not an EC or RSA private key"))),
        };
        // The public key object shares the private key's id (or label when it has no id).
        let mut template = vec![Attribute::Class(ObjectClass::PUBLIC_KEY)];
        match (&id, &label) {
            (Some(i), _) if !i.is_empty() => template.push(Attribute::Id(i.clone())),
            (_, Some(l)) => template.push(Attribute::Label(l.clone())),
            _ => return Err(HsmError::Unsupported(format!("key {uri} has neither CKA_ID nor CKA_LABEL to find its public key by"))),
        }
        let publics = self.with_session("C_FindObjects", |s| s.find_objects(&template))?;
        let pub_handle = match publics.as_slice() {
            [one] => *one,
            [] => return Err(HsmError::KeyNotFound { uri: format!("{uri} (its public key object, same id)") }),
            many => return Err(HsmError::KeyAmbiguous { uri: format!("{uri} (its public key object, same id)"), count: many.len() }),
        };
        let spki_der = self.public_key_spki(pub_handle, algorithm)?;
        Ok(HsmSigningKey { hsm: self.clone(), uri: uri.to_string(), algorithm, scheme: algorithm.default_scheme(), spki_der })
    }

    fn sign_with(&self, uri: &str, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let (mechanism, data): (Mechanism, Vec<u8>) = match scheme {
            SignatureScheme::EcdsaSha256 => (Mechanism::Ecdsa, sha2::Sha256::digest(message).to_vec()),
            SignatureScheme::EcdsaSha384 => (Mechanism::Ecdsa, sha2::Sha384::digest(message).to_vec()),
            SignatureScheme::RsaPkcs1Sha256 => (Mechanism::Sha256RsaPkcs, message.to_vec()),
            SignatureScheme::RsaPssSha256 => (
                Mechanism::Sha256RsaPkcsPss(PkcsPssParams { hash_alg: MechanismType::SHA256, mgf: PkcsMgfType::MGF1_SHA256, s_len: 32u64.into() }),
                message.to_vec(),
            ),
        };
        let mut handle = self.handle(uri)?;
        let mut result = self.with_session("C_Sign", |s| s.sign(&mechanism, handle, &data));
        if let Err(HsmError::Pkcs11 { rv, .. }) = &result {
            if rv == "CKR_KEY_HANDLE_INVALID" || rv == "CKR_OBJECT_HANDLE_INVALID" {
                // Handles can change when the device reconnects: find the key again, once.
                self.forget_handles();
                handle = self.handle(uri)?;
                result = self.with_session("C_Sign", |s| s.sign(&mechanism, handle, &data));
            }
        }
        let raw = result?;
        match scheme {
            SignatureScheme::EcdsaSha256 | SignatureScheme::EcdsaSha384 => der::ecdsa_raw_to_der(&raw).ok_or_else(|| HsmError::Unsupported("the HSM returned a malformed ECDSA signature".into())),
            _ => Ok(raw),
        }
    }

    /// Random bytes from the token's RNG.
    pub fn random(&self, len: usize) -> Result<Vec<u8>, HsmError> {
        self.with_session("C_GenerateRandom", |s| s.generate_random_vec(len as u32))
    }

    /// Generates the AES-256 key that wraps stored secrets (sensitive, never extractable).
    pub fn generate_wrapping_key(&self, label: &str) -> Result<String, HsmError> {
        if self.label_exists(label)? {
            return Err(HsmError::KeyExists { label: label.to_string() });
        }
        let id = self.random(16)?;
        let template = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::ValueLen(32u64.into()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id),
        ];
        self.with_session("C_GenerateKey", |s| s.generate_key(&Mechanism::AesKeyGen, &template))?;
        Ok(Pkcs11Uri::for_label(&self.inner.token_label, label, ObjectKind::SecretKey))
    }

    /// Wraps `secret` under the AES key `uri` with AES-256-GCM (`C_Encrypt`, 96-bit IV from the
    /// token's RNG, 128-bit tag, `context` as associated data so a blob cannot be moved to
    /// another purpose). Output: `0x01 || iv || ciphertext || tag`.
    pub fn wrap_secret(&self, uri: &str, context: &[u8], secret: &[u8]) -> Result<Vec<u8>, HsmError> {
        let key = self.handle(uri)?;
        let iv = self.random(12)?;
        let ct = self.with_session("C_Encrypt", |s| {
            let mut iv = iv.clone();
            let params = cryptoki::mechanism::aead::GcmParams::new(&mut iv, context, 128u64.into())?;
            s.encrypt(&Mechanism::AesGcm(params), key, secret)
        })?;
        let mut out = Vec::with_capacity(1 + iv.len() + ct.len());
        out.push(1);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Reverses [`Hsm::wrap_secret`]; a wrong key, context or a tampered blob is an error.
    pub fn unwrap_secret(&self, uri: &str, context: &[u8], wrapped: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, HsmError> {
        if wrapped.len() < 1 + 12 + 16 || wrapped[0] != 1 {
            return Err(HsmError::Unwrap("too short or unknown version".into()));
        }
        let key = self.handle(uri)?;
        let (iv, ct) = wrapped[1..].split_at(12);
        let pt = self.with_session("C_Decrypt", |s| {
            let mut iv = iv.to_vec();
            let params = cryptoki::mechanism::aead::GcmParams::new(&mut iv, context, 128u64.into())?;
            s.decrypt(&Mechanism::AesGcm(params), key, ct)
        });
        match pt {
            Ok(p) => Ok(zeroize::Zeroizing::new(p)),
            Err(HsmError::Pkcs11 { rv, .. }) => Err(HsmError::Unwrap(rv)),
            Err(e) => Err(e),
        }
    }

    /// Destroys every object labelled `label` (both halves of a key pair). Used to roll back a
    /// CA ceremony that failed half-way.
    pub fn destroy_objects_labelled(&self, label: &str) -> Result<usize, HsmError> {
        let template = [Attribute::Label(label.as_bytes().to_vec())];
        let found = self.with_session("C_FindObjects", |s| s.find_objects(&template))?;
        for h in &found {
            self.with_session("C_DestroyObject", |s| s.destroy_object(*h))?;
        }
        self.forget_handles();
        Ok(found.len())
    }
}

fn find_slot(pkcs11: &Pkcs11, config: &HsmConfig) -> Result<(Slot, String), HsmError> {
    let slots = pkcs11.get_slots_with_token().map_err(|e| HsmError::Pkcs11 { op: "C_GetSlotList", rv: describe(&e) })?;
    let mut present = Vec::new();
    for slot in slots {
        let Ok(info) = pkcs11.get_token_info(slot) else { continue };
        if !info.token_initialized() {
            continue;
        }
        let label = info.label().trim_end().to_string();
        let serial = info.serial_number().trim_end().to_string();
        let hit = match &config.token {
            TokenSelector::Label(l) => *l == label,
            TokenSelector::Serial(s) => *s == serial,
        };
        if hit {
            return Ok((slot, label));
        }
        present.push(format!("`{label}` (serial {serial})"));
    }
    Err(HsmError::TokenNotFound {
        selector: match &config.token {
            TokenSelector::Label(l) => format!("labelled `{l}`"),
            TokenSelector::Serial(s) => format!("with serial `{s}`"),
        },
        module: config.module.clone(),
        present: if present.is_empty() { "none".into() } else { present.join(", ") },
    })
}

/// The seam other modules sign through: a key in the HSM, named by URI, that turns a message
/// into a signature in X.509 form (ECDSA as DER, RSA as the raw PKCS#1/PSS block).
#[derive(Clone)]
pub struct HsmSigningKey {
    hsm: Hsm,
    uri: String,
    algorithm: KeyAlgorithm,
    scheme: SignatureScheme,
    spki_der: Vec<u8>,
}

impl HsmSigningKey {
    pub fn uri(&self) -> &str {
        &self.uri
    }
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }
    pub fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
    /// The public key as DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
    /// The same key with another scheme (RSA keys: PKCS#1 v1.5 or PSS).
    pub fn with_scheme(mut self, scheme: SignatureScheme) -> Result<Self, HsmError> {
        let ok = match self.algorithm {
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 => matches!(scheme, SignatureScheme::EcdsaSha256 | SignatureScheme::EcdsaSha384),
            _ => matches!(scheme, SignatureScheme::RsaPkcs1Sha256 | SignatureScheme::RsaPssSha256),
        };
        if !ok {
            return Err(HsmError::Unsupported(format!("{:?} does not fit a {} key", scheme, self.algorithm.name())));
        }
        self.scheme = scheme;
        Ok(self)
    }
    /// Signs `message` (blocking: call from `spawn_blocking` on async runtimes).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.hsm.sign_with(&self.uri, self.scheme, message)
    }
    /// Async form of [`HsmSigningKey::sign`]: runs it on tokio's blocking pool.
    pub async fn sign_async(&self, message: Vec<u8>) -> Result<Vec<u8>, HsmError> {
        let key = self.clone();
        tokio::task::spawn_blocking(move || key.sign(&message))
            .await
            .map_err(|e| HsmError::Pkcs11 { op: "C_Sign", rv: format!("signing task failed: {e}") })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names_read_like_the_standard() {
        assert_eq!(ckr_name(RvError::SessionHandleInvalid), "CKR_SESSION_HANDLE_INVALID");
        assert_eq!(ckr_name(RvError::PinLocked), "CKR_PIN_LOCKED");
    }

    #[test]
    fn dead_session_codes_are_recognised() {
        for rv in [RvError::SessionHandleInvalid, RvError::SessionClosed, RvError::DeviceRemoved, RvError::DeviceError, RvError::TokenNotPresent, RvError::UserNotLoggedIn] {
            assert!(is_dead_session(rv), "{rv:?}");
        }
        assert!(!is_dead_session(RvError::PinIncorrect));
        assert!(!is_dead_session(RvError::KeyHandleInvalid));
    }

    #[test]
    fn error_messages_are_one_line() {
        let e = HsmError::PinFileMode { path: "/x/pin".into(), mode: 0o644 };
        assert_eq!(e.to_string(), "HSM PIN file /x/pin has mode 0644; it must be 0600 (chmod 600 /x/pin)");
        let e = HsmError::PinLocked { token: "t".into() };
        assert_eq!(e.to_string(), "HSM user PIN of token t is locked (CKR_PIN_LOCKED); the security officer must unblock it");
        assert!(HsmError::SessionLost { op: "C_Sign", rv: "CKR_DEVICE_REMOVED".into() }.is_retryable());
    }
}
