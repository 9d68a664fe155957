//! Errors of the `hsm` module: one line each, naming the problem and what to do.

use std::path::PathBuf;

use cryptoki::error::{Error as CkError, RvError};

/// Everything that can go wrong talking to the HSM. Messages never contain a PIN.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error(
        "cannot read HSM config {path}: {reason}; check the path given to --hsm-config or TESSERA_HSM_CONFIG"
    )]
    ConfigRead { path: PathBuf, reason: String },
    #[error("HSM config {path} is invalid: {reason}; see hsm-config/softhsm2.toml for the format")]
    ConfigInvalid { path: PathBuf, reason: String },
    #[error("HSM config has no key named `{name}`; add it under [keys] as a pkcs11: URI")]
    KeyNameUnknown { name: String },
    #[error(
        "HSM PIN environment variable {name} is not set; export it or use pin_file in the HSM config"
    )]
    PinEnvUnset { name: String },
    #[error(
        "HSM PIN file {path} cannot be read: {reason}; create it with the user PIN and chmod 600 {path}"
    )]
    PinFileRead { path: PathBuf, reason: String },
    #[error("HSM PIN file {path} has mode {mode:04o}; it must be 0600 (chmod 600 {path})")]
    PinFileMode { path: PathBuf, mode: u32 },
    #[error("HSM PIN from {source_name} is empty; put the token's user PIN there")]
    PinEmpty { source_name: String },
    #[error(
        "cannot load PKCS#11 module {path}: {reason}; check `module` in the HSM config (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so, installed by scripts/install-deps.sh)"
    )]
    ModuleLoad { path: PathBuf, reason: String },
    #[error(
        "PKCS#11 module {path} failed to initialise ({code}); check that it is the right module for this HSM and its own configuration (SOFTHSM2_CONF for SoftHSM2)"
    )]
    ModuleInit { path: PathBuf, code: String },
    #[error(
        "no token {token} in PKCS#11 module {path} (tokens present: {present}); check token_label/token_serial in the HSM config (SoftHSM2: SOFTHSM2_CONF)"
    )]
    TokenNotFound {
        token: String,
        path: PathBuf,
        present: String,
    },
    #[error(
        "HSM login to token {token} failed: wrong user PIN (CKR_PIN_INCORRECT); fix the PIN source in the HSM config before the token locks"
    )]
    PinIncorrect { token: String },
    #[error(
        "HSM user PIN of token {token} is locked (CKR_PIN_LOCKED); the security officer must unlock it (softhsm2-util/pkcs11-tool --init-pin)"
    )]
    PinLocked { token: String },
    #[error(
        "invalid pkcs11: URI `{uri}`: {reason}; write it as pkcs11:token=LABEL;object=KEY;type=private (RFC 7512)"
    )]
    UriInvalid { uri: String, reason: String },
    #[error(
        "key URI {uri} names token `{uri_token}` but the HSM config opens token `{token}`; fix the URI or the config"
    )]
    UriWrongToken {
        uri: String,
        uri_token: String,
        token: String,
    },
    #[error(
        "no private key matches {uri}; check the URI (list keys with pkcs11-tool -O) or run `tessera ca init`"
    )]
    KeyNotFound { uri: String },
    #[error("{count} private keys match {uri}; add id= to the URI so that it names exactly one")]
    KeyAmbiguous { uri: String, count: usize },
    #[error(
        "private key {uri} has no matching public key object (same CKA_ID); re-create the key pair"
    )]
    PublicKeyMissing { uri: String },
    #[error(
        "key {uri} is not a supported key ({reason}); Tessera uses EC P-256/P-384 and RSA 2048/3072/4096"
    )]
    UnsupportedKey { uri: String, reason: String },
    #[error(
        "a key labelled `{label}` already exists on token {token}; choose another label or destroy the old key first"
    )]
    LabelExists { label: String, token: String },
    #[error("unknown key spec `{given}`; use one of p256, p384, rsa2048, rsa3072, rsa4096")]
    KeySpecUnknown { given: String },
    #[error(
        "signature scheme {scheme:?} cannot be used with a {spec:?} key; use an ECDSA scheme for EC keys and an RSA scheme for RSA keys"
    )]
    SchemeMismatch {
        scheme: crate::hsm::SignatureScheme,
        spec: crate::hsm::KeySpec,
    },
    #[error(
        "no AES wrapping key labelled `{label}` on token {token}; create it with generate_wrapping_key"
    )]
    WrappingKeyNotFound { label: String, token: String },
    #[error(
        "{count} AES wrapping keys labelled `{label}` on token {token}; labels of wrapping keys must be unique"
    )]
    WrappingKeyAmbiguous {
        label: String,
        count: usize,
        token: String,
    },
    #[error(
        "wrapped secret refused by key `{label}` ({reason}); the blob is damaged, was tampered with, or was wrapped by another key"
    )]
    WrappedSecretRejected { label: String, reason: String },
    #[error(
        "HSM session lost during {operation} ({code}) and the retry failed too; the HSM or its connection is unavailable — retry later"
    )]
    SessionLost {
        operation: &'static str,
        code: String,
    },
    #[error(
        "no HSM session became free within {seconds} s for {operation}; raise pool_size in the HSM config or retry later"
    )]
    PoolTimeout {
        operation: &'static str,
        seconds: u64,
    },
    #[error("PKCS#11 {operation} failed ({code}); check the HSM and its configuration")]
    Pkcs11 {
        operation: &'static str,
        code: String,
    },
    #[error("HSM returned malformed data for {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
}

impl HsmError {
    /// True when the same call may succeed if simply tried again (a dead session or device that
    /// the pool has already replaced, or a busy pool).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            HsmError::SessionLost { .. } | HsmError::PoolTimeout { .. }
        )
    }

    pub(crate) fn pkcs11(operation: &'static str, err: CkError) -> HsmError {
        HsmError::Pkcs11 {
            operation,
            code: ck_code(&err),
        }
    }
}

/// The `CKR_…` name of a cryptoki error (or a short description for non-PKCS#11 failures).
pub(crate) fn ck_code(err: &CkError) -> String {
    match err {
        CkError::Pkcs11(rv, _) => rv_name(*rv),
        other => other.to_string(),
    }
}

pub(crate) fn rv_of(err: &CkError) -> Option<RvError> {
    match err {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// Errors after which the session (or the whole login) must be replaced before retrying.
pub(crate) fn is_session_fatal(err: &CkError) -> bool {
    matches!(
        rv_of(err),
        Some(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
        )
    )
}

/// Errors that mean a cached object handle went stale (e.g. after all sessions were closed).
pub(crate) fn is_stale_handle(err: &CkError) -> bool {
    matches!(
        rv_of(err),
        Some(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid)
    )
}

fn rv_name(rv: RvError) -> String {
    use RvError::*;
    let name = match rv {
        Cancel => "CKR_CANCEL",
        HostMemory => "CKR_HOST_MEMORY",
        SlotIdInvalid => "CKR_SLOT_ID_INVALID",
        GeneralError => "CKR_GENERAL_ERROR",
        FunctionFailed => "CKR_FUNCTION_FAILED",
        ArgumentsBad => "CKR_ARGUMENTS_BAD",
        AttributeReadOnly => "CKR_ATTRIBUTE_READ_ONLY",
        AttributeSensitive => "CKR_ATTRIBUTE_SENSITIVE",
        AttributeTypeInvalid => "CKR_ATTRIBUTE_TYPE_INVALID",
        AttributeValueInvalid => "CKR_ATTRIBUTE_VALUE_INVALID",
        DataInvalid => "CKR_DATA_INVALID",
        DataLenRange => "CKR_DATA_LEN_RANGE",
        DeviceError => "CKR_DEVICE_ERROR",
        DeviceMemory => "CKR_DEVICE_MEMORY",
        DeviceRemoved => "CKR_DEVICE_REMOVED",
        EncryptedDataInvalid => "CKR_ENCRYPTED_DATA_INVALID",
        EncryptedDataLenRange => "CKR_ENCRYPTED_DATA_LEN_RANGE",
        FunctionNotSupported => "CKR_FUNCTION_NOT_SUPPORTED",
        KeyHandleInvalid => "CKR_KEY_HANDLE_INVALID",
        KeyTypeInconsistent => "CKR_KEY_TYPE_INCONSISTENT",
        KeyFunctionNotPermitted => "CKR_KEY_FUNCTION_NOT_PERMITTED",
        MechanismInvalid => "CKR_MECHANISM_INVALID",
        MechanismParamInvalid => "CKR_MECHANISM_PARAM_INVALID",
        ObjectHandleInvalid => "CKR_OBJECT_HANDLE_INVALID",
        OperationActive => "CKR_OPERATION_ACTIVE",
        OperationNotInitialized => "CKR_OPERATION_NOT_INITIALIZED",
        PinIncorrect => "CKR_PIN_INCORRECT",
        PinInvalid => "CKR_PIN_INVALID",
        PinLenRange => "CKR_PIN_LEN_RANGE",
        PinLocked => "CKR_PIN_LOCKED",
        SessionClosed => "CKR_SESSION_CLOSED",
        SessionCount => "CKR_SESSION_COUNT",
        SessionHandleInvalid => "CKR_SESSION_HANDLE_INVALID",
        SessionReadOnly => "CKR_SESSION_READ_ONLY",
        SignatureInvalid => "CKR_SIGNATURE_INVALID",
        TemplateIncomplete => "CKR_TEMPLATE_INCOMPLETE",
        TemplateInconsistent => "CKR_TEMPLATE_INCONSISTENT",
        TokenNotPresent => "CKR_TOKEN_NOT_PRESENT",
        TokenNotRecognized => "CKR_TOKEN_NOT_RECOGNIZED",
        TokenWriteProtected => "CKR_TOKEN_WRITE_PROTECTED",
        UserAlreadyLoggedIn => "CKR_USER_ALREADY_LOGGED_IN",
        UserNotLoggedIn => "CKR_USER_NOT_LOGGED_IN",
        UserPinNotInitialized => "CKR_USER_PIN_NOT_INITIALIZED",
        CryptokiNotInitialized => "CKR_CRYPTOKI_NOT_INITIALIZED",
        CryptokiAlreadyInitialized => "CKR_CRYPTOKI_ALREADY_INITIALIZED",
        BufferTooSmall => "CKR_BUFFER_TOO_SMALL",
        other => return format!("CKR {other:?}"),
    };
    name.to_string()
}
