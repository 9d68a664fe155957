//! A refusal from the server as the operator needs it: which call, the gRPC code, the stable
//! reason from `google.rpc.ErrorInfo`, the server's message, and what to check.
use tonic::Code;
use tonic_types::StatusExt as _;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server refused {rpc}: {} {reason}: {message}{}", code_name(*.code), hint(.rpc, *.code, .reason, .message))]
pub struct ServerError {
    pub rpc: &'static str,
    pub code: Code,
    /// `ErrorInfo.reason` (e.g. `PERSON_NOT_ACTIVE`), or empty when the server sent none.
    pub reason: String,
    pub message: String,
}

impl ServerError {
    pub fn from_status(rpc: &'static str, status: &tonic::Status) -> ServerError {
        let reason = status
            .get_error_details()
            .error_info()
            .map(|info| info.reason.clone())
            .unwrap_or_default();
        ServerError {
            rpc,
            code: status.code(),
            reason: if reason.is_empty() {
                "(no reason given)".into()
            } else {
                reason
            },
            message: status.message().to_string(),
        }
    }
}

/// The canonical gRPC code name (`PERMISSION_DENIED`), as in the gRPC specification.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The connection broke after the TLS handshake, as it does when the server refuses the
/// client certificate (TLS 1.3 reports that only with the first request).
const CLIENT_CERT_HINT: &str = "; the server closed the connection: check that --client-cert was issued by the CA the server trusts for clients";

fn hint(rpc: &str, code: Code, reason: &str, message: &str) -> &'static str {
    if rpc.starts_with("SelfService.") {
        // `tessera renew`, on the person's own computer: no client certificate file, no role.
        return match (code, reason) {
            (Code::FailedPrecondition, "RENEWAL_TOO_EARLY") => {
                "; run `tessera renew` again once the renewal window is open (the date above)"
            }
            (Code::Unavailable, _) => {
                "; check --server and that the server's self-service port is reachable"
            }
            (Code::Internal, _) => "; ask the help desk (the server's log has the cause)",
            _ => "; see docs/self-service.md for this reason, or renew at the help desk",
        };
    }
    if matches!(code, Code::Cancelled | Code::Unknown)
        && (message.starts_with("transport error") || message.starts_with("operation was canceled"))
    {
        return CLIENT_CERT_HINT;
    }
    match (code, reason) {
        (Code::PermissionDenied, "APPROVER_IS_REQUESTER") => {
            "; a PUK release is approved by a second operator with their own certificate"
        }
        (Code::PermissionDenied, "RENEWAL_FORCE_REQUIRES_ADMIN")
        | (Code::FailedPrecondition, "RENEWAL_TOO_EARLY") => {
            "; renew within the renewal window, or ask an admin to renew with --force (an admin client certificate)"
        }
        (Code::PermissionDenied, "PUK_ROTATION_OF_ANOTHER_CALLER") => {
            "; another desk released this token's PUK since: run `tessera station unblock` again with the token in the reader"
        }
        (Code::PermissionDenied, _) => {
            "; check that the station's client certificate carries the helpdesk role (tessera admin issue-client-cert --role helpdesk)"
        }
        (Code::Unauthenticated, _) => {
            "; check --client-cert and --client-key: the server wants a client certificate from Tessera's CA"
        }
        (Code::Unavailable, _) => {
            "; check --server and that `tessera serve` is running and reachable"
        }
        (Code::Unimplemented, _) => "; the server is older than this station: upgrade the server",
        (Code::NotFound, _) => {
            "; check the person id or token serial (tessera station status shows what the server knows)"
        }
        (Code::Internal, _) => "; see the server's log",
        (Code::FailedPrecondition, "PUK_RELEASE_PENDING_APPROVAL") => {
            "; ask a second operator to run `tessera station approve-puk-release --release-id ID --token-serial SERIAL --reason …` with the release id above, then run `tessera station unblock` again"
        }
        (Code::ResourceExhausted, "PUK_RELEASE_RATE_LIMITED") => {
            "; this station's certificate reached its hourly PUK release limit: wait, or ask a colleague"
        }
        (Code::FailedPrecondition, _) | (Code::InvalidArgument, _) | (Code::AlreadyExists, _) => {
            "; see docs/help-desk.md for this reason"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic_types::ErrorDetails;

    #[test]
    fn names_code_reason_message_and_what_to_check() {
        let details = ErrorDetails::with_error_info(
            "ROLE_NOT_ALLOWED",
            "tessera",
            HashMap::<String, String>::new(),
        );
        let status = tonic::Status::with_error_details(
            Code::PermissionDenied,
            "role hr may not call BeginEnrollment",
            details,
        );
        let e = ServerError::from_status("BeginEnrollment", &status);
        assert_eq!(e.reason, "ROLE_NOT_ALLOWED");
        assert_eq!(
            e.to_string(),
            "the server refused BeginEnrollment: PERMISSION_DENIED ROLE_NOT_ALLOWED: role hr may not call BeginEnrollment; \
             check that the station's client certificate carries the helpdesk role (tessera admin issue-client-cert --role helpdesk)"
        );
    }

    #[test]
    fn a_status_without_details_still_names_its_code() {
        let e = ServerError::from_status(
            "GetToken",
            &tonic::Status::unavailable("connection refused"),
        );
        assert_eq!(
            e.to_string(),
            "the server refused GetToken: UNAVAILABLE (no reason given): connection refused; check --server and that `tessera serve` is running and reachable"
        );
    }
}
