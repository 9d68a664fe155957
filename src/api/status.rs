//! Errors as gRPC status: a code, a one-line message, and `google.rpc.ErrorInfo` (domain
//! `tessera`, a stable reason) plus `google.rpc.BadRequest` naming the field at fault.
use crate::lifecycle::LifecycleError;
use crate::store::StoreError;
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub const DOMAIN: &str = crate::protocol::ERROR_DOMAIN;

/// Every reason the gRPC edge gives itself (authorization, request checks, CA errors mapped to
/// reasons); the lifecycle and enrollment reasons are in `LifecycleError::REASONS`,
/// `EnrollError::REASONS` and `EnrollmentRefusal::REASONS`. docs/api.md lists them all; a test
/// compares the two and scans the sources for reasons missing from these lists.
pub const REASONS: &[&str] = &[
    "CSR_ATTESTATION_MALFORMED",
    "ATTESTATION_KEY_MISMATCH",
    "CLIENT_CERTIFICATE_REQUIRED",
    "CLIENT_CERTIFICATE_REVOKED",
    "CLIENT_CERTIFICATE_UNKNOWN",
    "NOT_AN_OPERATOR_CERTIFICATE",
    "CLIENT_CERTIFICATE_INVALID",
    "NO_ROLE_IN_CERTIFICATE",
    "UNKNOWN_ROLE",
    "SEVERAL_ROLES_IN_CERTIFICATE",
    "ROLE_NOT_ALLOWED",
    "FIELD_REQUIRED",
    "INVALID_PAGE_TOKEN",
    "INVALID_PAGE_SIZE",
    "MESSAGE_UNDECODABLE",
    "DATABASE_UNAVAILABLE",
    "INVALID_ENUM_VALUE",
    "INVALID_SERIAL",
    "INVALID_FINGERPRINT",
    "TOKEN_SERIAL_INVALID",
    "CA_NOT_CONFIGURED",
    "PROFILE_REQUIRES_ATTESTATION",
    "PROFILE_NEEDS_OPERATOR_CA",
    "UNKNOWN_PROFILE",
    "CSR_UNREADABLE",
    "CSR_SIGNATURE_INVALID",
    "CSR_WITHOUT_COMMON_NAME",
    "UNSUPPORTED_KEY_ALGORITHM",
    "PUBLIC_KEY_UNREADABLE",
    "SUBJECT_INVALID",
    "PROFILE_REQUIRES_EMAIL",
    "PROFILE_REQUIRES_PERSON",
    "NAME_NOT_ALLOWED",
    "PERSON_NOT_ACTIVE",
    "TOKEN_NOT_USABLE",
    "TOKEN_OF_ANOTHER_PERSON",
    "ATTESTATION_POLICY_INVALID",
    "INTERNAL",
];

fn with_reason(code: Code, reason: &str, message: &str, field: Option<&str>) -> Status {
    let mut details =
        ErrorDetails::with_error_info(reason, DOMAIN, HashMap::<String, String>::new());
    if let Some(field) = field {
        details.add_bad_request_violation(field, message);
    }
    Status::with_error_details(code, message, details)
}

/// A status with a reason, an optional field at fault, and `ErrorInfo` metadata (e.g. the
/// enrollment slot and policy reason codes).
pub fn with_metadata(
    code: Code,
    reason: &str,
    message: &str,
    field: Option<&str>,
    metadata: HashMap<String, String>,
) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, DOMAIN, metadata);
    if let Some(field) = field {
        details.add_bad_request_violation(field, message);
    }
    Status::with_error_details(code, message, details)
}

pub fn invalid_argument(field: &str, reason: &str, message: &str) -> Status {
    with_reason(Code::InvalidArgument, reason, message, Some(field))
}

pub fn failed_precondition(reason: &str, message: &str, field: Option<&str>) -> Status {
    with_reason(Code::FailedPrecondition, reason, message, field)
}

pub fn permission_denied(reason: &str, message: &str) -> Status {
    with_reason(Code::PermissionDenied, reason, message, None)
}

pub fn unauthenticated() -> Status {
    with_reason(
        Code::Unauthenticated,
        "CLIENT_CERTIFICATE_REQUIRED",
        "a client certificate issued by Tessera's operator CA is required",
        None,
    )
}

/// An error of the server, not of the request: `UNAVAILABLE` with reason `DATABASE_UNAVAILABLE`
/// when its cause is an unreachable database (a retry may succeed; the failed call changed
/// nothing), else `INTERNAL`. The details go to the log, never to the caller.
pub fn internal(error: &(dyn std::error::Error + 'static)) -> Status {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if store_cause(e).is_some_and(StoreError::is_unavailable) {
            tracing::warn!(%error, "database unavailable");
            return with_reason(
                Code::Unavailable,
                "DATABASE_UNAVAILABLE",
                "the database is unavailable; retry later",
                None,
            );
        }
        cause = e.source();
    }
    tracing::error!(%error, "internal error");
    with_reason(
        Code::Internal,
        "INTERNAL",
        "internal error; see the server log",
        None,
    )
}

/// The store error `e` is or wraps transparently (`#[error(transparent)]` hides it from
/// `source()`).
fn store_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a StoreError> {
    use crate::audit::AuditError;
    use crate::enroll::EnrollmentRefusal;
    fn of_lifecycle(e: &LifecycleError) -> Option<&StoreError> {
        match e {
            LifecycleError::Store(s) | LifecycleError::Audit(AuditError::Store(s)) => Some(s),
            _ => None,
        }
    }
    if let Some(s) = e.downcast_ref::<StoreError>() {
        Some(s)
    } else if let Some(AuditError::Store(s)) = e.downcast_ref::<AuditError>() {
        Some(s)
    } else if let Some(l) = e.downcast_ref::<LifecycleError>() {
        of_lifecycle(l)
    } else {
        match e.downcast_ref::<EnrollmentRefusal>()? {
            EnrollmentRefusal::Store(s) => Some(s),
            EnrollmentRefusal::Lifecycle(l) => of_lifecycle(l),
            _ => None,
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        internal(&e)
    }
}

impl From<LifecycleError> for Status {
    fn from(e: LifecycleError) -> Status {
        let code = match &e {
            LifecycleError::InvalidField { .. }
            | LifecycleError::RequestIdReused(_)
            | LifecycleError::RequestIdOfAnotherCaller(_) => Code::InvalidArgument,
            LifecycleError::PersonNotFound(_)
            | LifecycleError::TokenNotFound(_)
            | LifecycleError::CertificateNotFound(_) => Code::NotFound,
            LifecycleError::PersonExists(_) => Code::AlreadyExists,
            LifecycleError::CertificateRequiresAdmin { .. } => Code::PermissionDenied,
            LifecycleError::CertificateNotOnHold { .. }
            | LifecycleError::HoldFromOwner { .. }
            | LifecycleError::InvalidTransition { .. }
            | LifecycleError::StaleSyncGeneration { .. }
            | LifecycleError::StateChangedWhileSigning { .. }
            | LifecycleError::CsrNamesAPerson { .. } => Code::FailedPrecondition,
            LifecycleError::RequestInProgress(_) => Code::Aborted,
            LifecycleError::Store(_) | LifecycleError::Audit(_) => return internal(&e),
        };
        with_reason(code, e.reason(), &e.to_string(), e.field())
    }
}
