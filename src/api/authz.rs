//! Who is calling, and may they call this RPC.
//!
//! A caller is identified by its TLS client certificate, which must chain to the client CA the
//! server is configured with (`tls.client_ca`: the operator CA made by `tessera ca
//! init-operators`), be known to the store as a good operator certificate (checked per call by
//! `client_revocation`), and carry the operator policy OID (`ca::policy_oid::OPERATOR_POLICY`)
//! that only the operator CA issues. The role is bound in the certificate as exactly one URI
//! subject alternative name `tessera:role:<role>`; the actor name recorded in the audit log is
//! the certificate's subject common name.
//! Request ids are keyed to the certificate itself (its SHA-256 fingerprint): another
//! certificate, even of the same name and role, cannot repeat them.

use crate::audit::Actor;
use crate::ca::policy_oid::OPERATOR_POLICY;
use crate::lifecycle::CertificateScope;
use tonic::{Request, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Hr,
    Helpdesk,
    Auditor,
    Admin,
    RelyingParty,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Hr,
        Role::Helpdesk,
        Role::Auditor,
        Role::Admin,
        Role::RelyingParty,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Hr => "hr",
            Role::Helpdesk => "helpdesk",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::RelyingParty => "relying-party",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The URI SAN that binds this role in a client certificate.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }
}

pub const ROLE_URI_PREFIX: &str = "tessera:role:";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the client certificate (DER), lower-case hex: the owner of the request ids
    /// this caller uses.
    pub certificate_sha256: String,
    /// The client certificate's serial, lower-case hex (as the store keys certificates): what
    /// tells two certificates with the same name apart (PUK release rate limit, dual control).
    pub certificate_serial: String,
}

impl Identity {
    /// The certificates this caller may revoke, hold and release: every one for `admin`, all
    /// but operator certificates for the others (only `helpdesk` reaches those RPCs).
    pub fn certificate_scope(&self) -> CertificateScope {
        if self.role == Role::Admin {
            CertificateScope::Every
        } else {
            CertificateScope::ExceptOperators
        }
    }

    pub fn actor(&self) -> Actor {
        Actor {
            name: self.name.clone(),
            role: self.role.as_str().to_string(),
        }
    }
}

/// Reads the identity from a client certificate (already verified against the client CA).
pub fn identity_from_certificate(der: &[u8]) -> Result<Identity, Status> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| {
        status::permission_denied(
            "CLIENT_CERTIFICATE_INVALID",
            "the client certificate cannot be parsed",
        )
    })?;
    let operator_policy = cert.extensions().iter().any(|e| {
        matches!(e.parsed_extension(), ParsedExtension::CertificatePolicies(policies)
            if policies.iter().any(|p| p.policy_id.to_id_string() == OPERATOR_POLICY))
    });
    if !operator_policy {
        return Err(status::permission_denied(
            "NOT_AN_OPERATOR_CERTIFICATE",
            &format!(
                "the client certificate does not carry the operator policy {OPERATOR_POLICY}, so it is not an API client certificate; use one from `tessera admin issue-client-cert`"
            ),
        ));
    }
    let mut roles = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(role) = uri.strip_prefix(ROLE_URI_PREFIX)
            {
                roles.push(role.to_string());
            }
        }
    }
    let role = match roles.as_slice() {
        [one] => Role::parse(one).ok_or_else(|| {
            status::permission_denied(
                "UNKNOWN_ROLE",
                &format!("the client certificate names unknown role {one:?}"),
            )
        })?,
        [] => {
            return Err(status::permission_denied(
                "NO_ROLE_IN_CERTIFICATE",
                "the client certificate has no tessera:role: URI; issue one with `tessera admin issue-client-cert --role`",
            ));
        }
        _ => {
            return Err(status::permission_denied(
                "SEVERAL_ROLES_IN_CERTIFICATE",
                "the client certificate names more than one role; issue one certificate per role",
            ));
        }
    };
    let certificate_serial = hex::encode(cert.raw_serial());
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("serial:{}", cert.raw_serial_as_string()));
    let certificate_sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(der))
    };
    Ok(Identity {
        name,
        role,
        certificate_sha256,
        certificate_serial,
    })
}

/// The roles allowed to call each RPC (full gRPC method name → roles).
pub fn allowed_roles(method: &str) -> &'static [Role] {
    use Role::*;
    const HR_WRITE: &[Role] = &[Hr, Admin];
    const DIRECTORY_READ: &[Role] = &[Hr, Helpdesk, Admin];
    const TOKEN_READ: &[Role] = &[Helpdesk, Hr, Admin];
    const TOKEN_WRITE: &[Role] = &[Helpdesk, Admin];
    const AUDIT: &[Role] = &[Auditor, Admin];
    match method {
        "/tessera.v1.DirectoryService/CreatePerson"
        | "/tessera.v1.DirectoryService/UpdatePerson"
        | "/tessera.v1.DirectoryService/SuspendPerson"
        | "/tessera.v1.DirectoryService/ReinstatePerson"
        | "/tessera.v1.DirectoryService/OffboardPerson"
        | "/tessera.v1.DirectoryService/SyncPeople" => HR_WRITE,
        "/tessera.v1.DirectoryService/GetPerson" | "/tessera.v1.DirectoryService/ListPeople" => {
            DIRECTORY_READ
        }
        "/tessera.v1.TokenService/GetToken" | "/tessera.v1.TokenService/ListTokens" => TOKEN_READ,
        "/tessera.v1.TokenService/MarkTokenLost"
        | "/tessera.v1.TokenService/MarkTokenDamaged"
        | "/tessera.v1.TokenService/RetireToken"
        | "/tessera.v1.TokenService/SuspendToken"
        | "/tessera.v1.TokenService/ReinstateToken"
        | "/tessera.v1.TokenService/MarkTokenForgotten" => TOKEN_WRITE,
        // Holds certificates fleet-wide on a policy the caller supplies.
        "/tessera.v1.TokenService/RecheckFleet" => &[Admin],
        "/tessera.v1.AuditService/ListAuditEvents"
        | "/tessera.v1.AuditService/StreamAuditEvents"
        | "/tessera.v1.AuditService/VerifyAuditChain" => AUDIT,
        "/tessera.v1.CertificateService/GetCertificate"
        | "/tessera.v1.CertificateService/ListCertificates"
        | "/tessera.v1.CertificateService/ListExpiringCertificates" => &[Helpdesk, Auditor, Admin],
        // Issuing hands out a credential, a decision of the same weight as revoking one.
        // Operator certificates (API clients, OCSP responder) only for admin: see
        // `lifecycle::CertificateScope`.
        "/tessera.v1.CertificateService/RevokeCertificate"
        | "/tessera.v1.CertificateService/ReleaseCertificateHold"
        | "/tessera.v1.CertificateService/IssueFromCsr" => &[Helpdesk, Admin],
        // The chain is public.
        "/tessera.v1.CertificateService/GetCaChain" => &Role::ALL,
        "/tessera.v1.CertificateService/LookupCertificate" => &[RelyingParty, Helpdesk, Admin],
        "/tessera.v1.EnrollmentService/BeginEnrollment"
        | "/tessera.v1.EnrollmentService/CompleteEnrollment"
        | "/tessera.v1.EnrollmentService/ConfirmEnrollment"
        | "/tessera.v1.EnrollmentService/AbortEnrollment"
        | "/tessera.v1.EnrollmentService/GetEnrollment"
        | "/tessera.v1.EnrollmentService/ReleasePuk"
        | "/tessera.v1.EnrollmentService/ApprovePukRelease"
        | "/tessera.v1.EnrollmentService/ConfirmPukRotation"
        | "/tessera.v1.EnrollmentService/BeginRenewal" => TOKEN_WRITE,
        // No role: a token acts for itself with its own certificate (`lifecycle::token_caller`,
        // `api::self_service`); every operator certificate is refused.
        "/tessera.v1.SelfService/GetMyToken"
        | "/tessera.v1.SelfService/BeginRenewal"
        | "/tessera.v1.SelfService/CompleteRenewal"
        | "/tessera.v1.SelfService/ConfirmRenewal"
        | "/tessera.v1.SelfService/AbortRenewal" => &[],
        _ => &[],
    }
}

/// Authenticates the caller and checks its role against `method`'s allowed roles.
pub fn authorize<T>(request: &Request<T>, method: &str) -> Result<Identity, Status> {
    let certs = request.peer_certs();
    let Some(leaf) = certs.as_ref().and_then(|c| c.first()) else {
        return Err(status::unauthenticated());
    };
    let identity = identity_from_certificate(leaf.as_ref())?;
    if !allowed_roles(method).contains(&identity.role) {
        return Err(status::permission_denied(
            "ROLE_NOT_ALLOWED",
            &format!("role {} may not call {method}", identity.role.as_str()),
        ));
    }
    Ok(identity)
}

use super::status;
