//! The rules for people and tokens: validated input, allowed state transitions, directory
//! sync, and request-id idempotency. Each function works inside the caller's [`WriteTx`] and
//! records its audit event there, so a change and its event commit together or not at all.
//! Certificate issuance (`issuance.rs`) reserves and records before the HSM signs.

mod certificates;
mod csr_names;
mod expiry;
mod issuance;
mod people;
mod recheck;
mod self_service;
mod tokens;

pub use certificates::*;
pub use csr_names::*;
pub use expiry::*;
pub use issuance::*;
pub use people::*;
pub use recheck::*;
pub use self_service::*;
pub use tokens::*;

use crate::audit::AuditError;
use crate::store::{IdempotencyRow, StoreError, WriteTx};

/// Why a request was refused. Each variant has one stable reason string (see `docs/api.md`).
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("{field}: {message}")]
    InvalidField {
        field: String,
        reason: &'static str,
        message: String,
    },
    #[error("no person with external id {0:?}")]
    PersonNotFound(String),
    #[error("a person with external id {0:?} already exists")]
    PersonExists(String),
    #[error("no token with serial {0:?}")]
    TokenNotFound(String),
    #[error("no certificate with serial {0:?}")]
    CertificateNotFound(String),
    #[error(
        "certificate {serial} (profile {profile}) is an operator certificate; only the admin role may revoke, hold or release it"
    )]
    CertificateRequiresAdmin { serial: String, profile: String },
    #[error("certificate {serial} is not on hold (it is {status})")]
    CertificateNotOnHold {
        serial: String,
        status: &'static str,
    },
    #[error(
        "certificate {serial} is on hold because its {owner} is {state}; reinstate the {owner} instead"
    )]
    HoldFromOwner {
        serial: String,
        owner: &'static str,
        /// `suspended`, or `forgotten` for a token.
        state: &'static str,
    },
    #[error("cannot {action} a {kind} that is {from}")]
    InvalidTransition {
        kind: &'static str,
        from: &'static str,
        action: &'static str,
    },
    #[error("sync generation {given} is not greater than the last one, {last}")]
    StaleSyncGeneration { given: i64, last: i64 },
    #[error("request id {0:?} was already used for a different request; use a fresh request id")]
    RequestIdReused(String),
    /// The request id was first used from another client certificate: its answer is not
    /// given to this caller, and the request is not carried out under it.
    #[error(
        "request id {0:?} was already used by another client certificate; use a fresh request id"
    )]
    RequestIdOfAnotherCaller(String),
    #[error(
        "request id {0:?} is still being carried out, or was interrupted before its certificate was recorded; retry later, or use a fresh request id"
    )]
    RequestInProgress(String),
    /// The person, token or enrollment changed while the HSM was signing: the certificate
    /// was recorded and at once held or revoked, and is not handed out.
    #[error("{detail}; certificate {serial} was recorded {status} and is not handed out")]
    StateChangedWhileSigning {
        serial: String,
        status: &'static str,
        reason: &'static str,
        detail: String,
    },
    /// A CSR name is a directory person's, and the certificate is not for that person.
    #[error(
        "the CSR's {csr_field} {name:?} is the {person_field} of a person in the directory; a CSR naming a person is certified only for that person (person_external_id), with the directory's names"
    )]
    CsrNamesAPerson {
        csr_field: &'static str,
        name: String,
        person_field: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl LifecycleError {
    /// Every reason [`LifecycleError::reason`] returns, those of `InvalidField` included
    /// (docs/api.md lists the same; a test compares the two and scans the sources for reasons
    /// missing here).
    pub const REASONS: &'static [&'static str] = &[
        "FIELD_REQUIRED",
        "FIELD_TOO_LONG",
        "FIELD_INVALID",
        "TOO_MANY_ITEMS",
        "INVALID_UPN",
        "INVALID_EMAIL",
        "INVALID_WINDOWS_SID",
        "DUPLICATE_EXTERNAL_ID",
        "REQUEST_ID_MISSING",
        "REQUEST_ID_INVALID",
        "PERSON_NOT_FOUND",
        "PERSON_EXISTS",
        "TOKEN_NOT_FOUND",
        "CERTIFICATE_NOT_FOUND",
        "CERTIFICATE_REQUIRES_ADMIN",
        "CERTIFICATE_NOT_ON_HOLD",
        "HOLD_IS_FROM_PERSON_OR_TOKEN",
        "INVALID_STATE_TRANSITION",
        "STALE_SYNC_GENERATION",
        "REQUEST_ID_REUSED",
        "REQUEST_ID_OF_ANOTHER_CALLER",
        "REQUEST_IN_PROGRESS",
        "PERSON_NOT_ACTIVE",
        "TOKEN_NOT_USABLE",
        "TOKEN_NOT_ENROLLABLE",
        "ENROLLMENT_EXPIRED",
        "ENROLLMENT_ABORTED",
        "CSR_NAMES_A_PERSON",
        "INVALID_WINDOW",
        "INTERNAL",
    ];

    /// The stable reason string a client can act on.
    pub fn reason(&self) -> &'static str {
        match self {
            LifecycleError::InvalidField { reason, .. } => reason,
            LifecycleError::PersonNotFound(_) => "PERSON_NOT_FOUND",
            LifecycleError::PersonExists(_) => "PERSON_EXISTS",
            LifecycleError::TokenNotFound(_) => "TOKEN_NOT_FOUND",
            LifecycleError::CertificateNotFound(_) => "CERTIFICATE_NOT_FOUND",
            LifecycleError::CertificateRequiresAdmin { .. } => "CERTIFICATE_REQUIRES_ADMIN",
            LifecycleError::CertificateNotOnHold { .. } => "CERTIFICATE_NOT_ON_HOLD",
            LifecycleError::HoldFromOwner { .. } => "HOLD_IS_FROM_PERSON_OR_TOKEN",
            LifecycleError::InvalidTransition { .. } => "INVALID_STATE_TRANSITION",
            LifecycleError::StaleSyncGeneration { .. } => "STALE_SYNC_GENERATION",
            LifecycleError::RequestIdReused(_) => "REQUEST_ID_REUSED",
            LifecycleError::RequestIdOfAnotherCaller(_) => "REQUEST_ID_OF_ANOTHER_CALLER",
            LifecycleError::RequestInProgress(_) => "REQUEST_IN_PROGRESS",
            LifecycleError::StateChangedWhileSigning { reason, .. } => reason,
            LifecycleError::CsrNamesAPerson { .. } => "CSR_NAMES_A_PERSON",
            LifecycleError::Store(_) | LifecycleError::Audit(_) => "INTERNAL",
        }
    }

    /// The request field at fault, when one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            LifecycleError::InvalidField { field, .. } => Some(field),
            LifecycleError::StaleSyncGeneration { .. } => Some("generation"),
            LifecycleError::RequestIdReused(_)
            | LifecycleError::RequestIdOfAnotherCaller(_)
            | LifecycleError::RequestInProgress(_) => Some("request_id"),
            LifecycleError::CsrNamesAPerson { .. } => Some("csr"),
            LifecycleError::StateChangedWhileSigning { reason, .. } => match *reason {
                "PERSON_NOT_ACTIVE" => Some("person_external_id"),
                "TOKEN_NOT_USABLE" | "TOKEN_NOT_ENROLLABLE" => Some("token_serial"),
                _ => None,
            },
            _ => None,
        }
    }
}

pub(crate) fn invalid(
    field: impl Into<String>,
    reason: &'static str,
    message: impl Into<String>,
) -> LifecycleError {
    LifecycleError::InvalidField {
        field: field.into(),
        reason,
        message: message.into(),
    }
}

/// A state-changing request as idempotency sees it: who asks (the SHA-256 fingerprint of the
/// caller's client certificate), its id, the operation, and a hash of the whole request (so the
/// same id with different content is told apart). A request id belongs to the certificate that
/// first used it: the same id from another certificate is refused.
#[derive(Debug, Clone)]
pub struct RequestKey {
    pub request_id: String,
    pub operation: &'static str,
    pub request_hash: Vec<u8>,
    pub caller: String,
}

impl RequestKey {
    pub fn new(
        request_id: &str,
        operation: &'static str,
        request_bytes: &[u8],
        caller: &str,
    ) -> Result<RequestKey, LifecycleError> {
        use sha2::Digest;
        if request_id.is_empty() {
            return Err(invalid(
                "request_id",
                "REQUEST_ID_MISSING",
                "is empty; send a fresh unique id per change",
            ));
        }
        if request_id.len() > 128 || request_id.chars().any(char::is_control) {
            return Err(invalid(
                "request_id",
                "REQUEST_ID_INVALID",
                "must be at most 128 printable characters",
            ));
        }
        let mut h = sha2::Sha256::new();
        h.update(operation.as_bytes());
        h.update([0]);
        h.update(request_bytes);
        Ok(RequestKey {
            request_id: request_id.to_string(),
            operation,
            request_hash: h.finalize().to_vec(),
            caller: caller.to_string(),
        })
    }
}

/// The stored first answer when this request was already carried out; an error when the id
/// was used for a different request or by another caller.
pub async fn replay(tx: &mut WriteTx, key: &RequestKey) -> Result<Option<Vec<u8>>, LifecycleError> {
    Ok(replay_record(tx, key).await?.map(|r| r.response))
}

/// [`replay`] with the whole stored record (when it was answered, what it released), for
/// answers whose repeats are checked again (those that carry secrets).
pub async fn replay_record(
    tx: &mut WriteTx,
    key: &RequestKey,
) -> Result<Option<IdempotencyRow>, LifecycleError> {
    let record = stored_answer(tx.idempotency_record(&key.request_id).await?, key)?;
    if record.is_some() {
        // The answer may come from a request still waiting for its group commit.
        tx.make_earlier_writes_durable().await?;
    }
    Ok(record)
}

/// [`replay`] outside a transaction (a read; for requests that open their own transactions).
pub async fn replay_read(
    store: &crate::store::Store,
    key: &RequestKey,
) -> Result<Option<Vec<u8>>, LifecycleError> {
    Ok(stored_answer(store.idempotency_record(&key.request_id).await?, key)?.map(|r| r.response))
}

/// The caller is compared first, so another certificate learns nothing about the request.
/// A record stored before migration 0007 names no caller and is answered to any.
fn stored_answer(
    record: Option<IdempotencyRow>,
    key: &RequestKey,
) -> Result<Option<IdempotencyRow>, LifecycleError> {
    match record {
        None => Ok(None),
        Some(r) if r.caller.as_deref().is_some_and(|c| c != key.caller) => Err(
            LifecycleError::RequestIdOfAnotherCaller(key.request_id.clone()),
        ),
        Some(r) if r.operation == key.operation && r.request_hash == key.request_hash => {
            Ok(Some(r))
        }
        Some(_) => Err(LifecycleError::RequestIdReused(key.request_id.clone())),
    }
}

/// Keeps `response` as the answer to every repeat of this request by its caller.
pub async fn remember(
    tx: &mut WriteTx,
    key: &RequestKey,
    response: Vec<u8>,
) -> Result<(), LifecycleError> {
    remember_release(tx, key, response, None).await
}

/// [`remember`], also keeping the generation of the token credentials the answer released
/// (ReleasePuk), which a repeat must still find.
pub async fn remember_release(
    tx: &mut WriteTx,
    key: &RequestKey,
    response: Vec<u8>,
    released_generation: Option<i64>,
) -> Result<(), LifecycleError> {
    tx.insert_idempotency_record(&IdempotencyRow {
        request_id: key.request_id.clone(),
        operation: key.operation.to_string(),
        request_hash: key.request_hash.clone(),
        response,
        created_at: tx.now(),
        caller: Some(key.caller.clone()),
        released_generation,
    })
    .await?;
    Ok(())
}
