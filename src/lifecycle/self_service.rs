//! Who may act for a token by itself (self-service): the rule that turns the TLS client
//! certificate a token presented into a [`TokenCaller`], or a [`SelfServiceRefusal`] with one
//! stable reason. No role is involved. The certificate must be
//! - recorded in the store as signed, byte for byte (`SELF_SERVICE_CERTIFICATE_UNKNOWN`);
//! - issued by an enrollment to a token, for one of its slots — never an operator's, an OCSP
//!   responder's or a certificate from a CSR (`SELF_SERVICE_NOT_A_TOKEN_CERTIFICATE`);
//! - of a person who is active (`SELF_SERVICE_PERSON_NOT_ACTIVE`), on a token that is active
//!   (`SELF_SERVICE_TOKEN_NOT_ACTIVE`) and still held by that person
//!   (`SELF_SERVICE_TOKEN_REASSIGNED`);
//! - good: not superseded by a renewal (`SELF_SERVICE_CERTIFICATE_SUPERSEDED`), not otherwise
//!   revoked or on hold (`SELF_SERVICE_CERTIFICATE_REVOKED`), and within its validity by the
//!   store's clock (`SELF_SERVICE_CERTIFICATE_EXPIRED`);
//! - from an enrollment that was confirmed (`SELF_SERVICE_ENROLLMENT_NOT_CONFIRMED`): a renewal
//!   whose new certificates are not yet confirmed on the card does not speak for the token.
//!
//! The person and token are checked before the certificate's status: suspending either puts
//! the certificate on hold, and the person or token is what the caller must be told about.

use crate::audit::Actor;
use crate::ca::RevocationReason;
use crate::store::{
    CertificateStatus, EnrollmentState, PersonRow, PersonState, Store, StoreError, TokenRow,
    TokenState,
};
use std::collections::HashMap;

/// The audit role of a token acting for itself.
pub const SELF_SERVICE_ROLE: &str = "self-service";

/// A token, authenticated by one of its own good certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCaller {
    pub token: TokenRow,
    pub person: PersonRow,
    /// The presented certificate's serial (lower-case hex).
    pub certificate_serial: String,
    /// SHA-256 of the presented certificate (lower-case hex): the owner of its request ids.
    pub certificate_sha256: String,
    /// The slot the presented certificate was issued for ("9a").
    pub slot: String,
}

impl TokenCaller {
    /// How the audit log names this caller: the person and the token.
    pub fn actor(&self) -> Actor {
        Actor {
            name: format!(
                "{} (token {}, certificate {})",
                self.person.external_id, self.token.serial, self.certificate_serial
            ),
            role: SELF_SERVICE_ROLE.to_string(),
        }
    }

    /// Refuses a request that names another token than the caller's (`serial` empty: the
    /// caller's own).
    pub fn check_own_token(&self, serial: &str) -> Result<(), SelfServiceRefusal> {
        if serial.is_empty() || serial == self.token.serial {
            Ok(())
        } else {
            Err(SelfServiceRefusal::OtherToken {
                own: self.token.serial.clone(),
                named: serial.to_string(),
            })
        }
    }
}

/// Why a token's certificate may not act for the token. `reason()` is the stable `ErrorInfo`
/// reason (docs/api.md, "SelfService").
#[derive(Debug, thiserror::Error)]
pub enum SelfServiceRefusal {
    #[error("a client certificate issued to one of your token's slots is required")]
    NoCertificate,
    #[error("the client certificate cannot be parsed")]
    Unparseable,
    #[error(
        "the client certificate (serial {0}) is not a certificate Tessera recorded; use the certificate on your token"
    )]
    Unknown(String),
    #[error(
        "the client certificate (serial {serial}, profile {profile}) was not issued to a token by an enrollment; self-service takes a token's own certificate only"
    )]
    NotATokenCertificate { serial: String, profile: String },
    #[error("the person {external_id} is {state}; self-service needs an active person")]
    PersonNotActive {
        external_id: String,
        state: &'static str,
    },
    #[error("token {serial} is {state}; self-service needs an active token")]
    TokenNotActive { serial: String, state: &'static str },
    #[error(
        "token {serial} is no longer held by the person the certificate was issued to; use a certificate issued for the token's current holder"
    )]
    TokenReassigned { serial: String },
    #[error(
        "the client certificate (serial {0}) was superseded by a renewal; use the token's current certificate"
    )]
    CertificateSuperseded(String),
    #[error("the client certificate (serial {serial}) is {status}")]
    CertificateRevoked {
        serial: String,
        status: &'static str,
        reason: Option<RevocationReason>,
    },
    #[error(
        "the client certificate (serial {serial}) is outside its validity ({not_before} to {not_after}); renew at the help desk"
    )]
    CertificateExpired {
        serial: String,
        not_before: String,
        not_after: String,
    },
    #[error(
        "the client certificate (serial {0}) is from an enrollment that was not confirmed; use the token's confirmed certificate"
    )]
    EnrollmentNotConfirmed(String),
    #[error(
        "this call concerns token {named}, but the certificate presented is token {own}'s; a token may only act for itself"
    )]
    OtherToken { own: String, named: String },
    #[error(
        "enrollment {enrollment} is not a renewal of token {own}; a token may only complete, confirm or abort its own renewal"
    )]
    NotOwnRenewal { own: String, enrollment: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SelfServiceRefusal {
    /// Every reason [`SelfServiceRefusal::reason`] gives (docs/api.md lists them).
    pub const REASONS: &'static [&'static str] = &[
        "SELF_SERVICE_CERTIFICATE_UNKNOWN",
        "SELF_SERVICE_NOT_A_TOKEN_CERTIFICATE",
        "SELF_SERVICE_PERSON_NOT_ACTIVE",
        "SELF_SERVICE_TOKEN_NOT_ACTIVE",
        "SELF_SERVICE_TOKEN_REASSIGNED",
        "SELF_SERVICE_CERTIFICATE_SUPERSEDED",
        "SELF_SERVICE_CERTIFICATE_REVOKED",
        "SELF_SERVICE_CERTIFICATE_EXPIRED",
        "SELF_SERVICE_ENROLLMENT_NOT_CONFIRMED",
        "SELF_SERVICE_OTHER_TOKEN",
        "SELF_SERVICE_NOT_OWN_RENEWAL",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            // The gRPC edge's own reasons for these two.
            SelfServiceRefusal::NoCertificate => "CLIENT_CERTIFICATE_REQUIRED",
            SelfServiceRefusal::Unparseable => "CLIENT_CERTIFICATE_INVALID",
            SelfServiceRefusal::Unknown(_) => "SELF_SERVICE_CERTIFICATE_UNKNOWN",
            SelfServiceRefusal::NotATokenCertificate { .. } => {
                "SELF_SERVICE_NOT_A_TOKEN_CERTIFICATE"
            }
            SelfServiceRefusal::PersonNotActive { .. } => "SELF_SERVICE_PERSON_NOT_ACTIVE",
            SelfServiceRefusal::TokenNotActive { .. } => "SELF_SERVICE_TOKEN_NOT_ACTIVE",
            SelfServiceRefusal::TokenReassigned { .. } => "SELF_SERVICE_TOKEN_REASSIGNED",
            SelfServiceRefusal::CertificateSuperseded(_) => "SELF_SERVICE_CERTIFICATE_SUPERSEDED",
            SelfServiceRefusal::CertificateRevoked { .. } => "SELF_SERVICE_CERTIFICATE_REVOKED",
            SelfServiceRefusal::CertificateExpired { .. } => "SELF_SERVICE_CERTIFICATE_EXPIRED",
            SelfServiceRefusal::EnrollmentNotConfirmed(_) => {
                "SELF_SERVICE_ENROLLMENT_NOT_CONFIRMED"
            }
            SelfServiceRefusal::OtherToken { .. } => "SELF_SERVICE_OTHER_TOKEN",
            SelfServiceRefusal::NotOwnRenewal { .. } => "SELF_SERVICE_NOT_OWN_RENEWAL",
            SelfServiceRefusal::Store(_) => "INTERNAL",
        }
    }

    /// Whether the certificate itself is not (or no longer) a credential, as opposed to a good
    /// credential whose token or person may not act now: UNAUTHENTICATED against
    /// PERMISSION_DENIED.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            SelfServiceRefusal::NoCertificate
                | SelfServiceRefusal::Unknown(_)
                | SelfServiceRefusal::CertificateSuperseded(_)
                | SelfServiceRefusal::CertificateRevoked { .. }
                | SelfServiceRefusal::CertificateExpired { .. }
        )
    }

    /// `ErrorInfo` metadata: the state or status that decided.
    pub fn metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        match self {
            SelfServiceRefusal::PersonNotActive { state, .. } => {
                m.insert("person_state".into(), (*state).into());
            }
            SelfServiceRefusal::TokenNotActive { state, .. } => {
                m.insert("token_state".into(), (*state).into());
            }
            SelfServiceRefusal::CertificateRevoked { status, reason, .. } => {
                m.insert("certificate_status".into(), (*status).into());
                if let Some(r) = reason {
                    m.insert("revocation_reason".into(), r.code().to_string());
                }
            }
            SelfServiceRefusal::CertificateExpired { not_after, .. } => {
                m.insert("not_after".into(), not_after.clone());
            }
            _ => {}
        }
        m
    }
}

/// Lower-case hex serial and SHA-256 of a DER certificate; `None` when it does not parse.
fn serial_and_sha256(der: &[u8]) -> Option<(String, String)> {
    use sha2::Digest as _;
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some((
        hex::encode(cert.raw_serial()),
        hex::encode(sha2::Sha256::digest(der)),
    ))
}

/// Decides whether the certificate `leaf_der` (verified by the TLS handshake against the
/// issuing CA) may act for its token now (module documentation); read-only.
pub async fn token_caller(
    store: &Store,
    leaf_der: Option<&[u8]>,
) -> Result<TokenCaller, SelfServiceRefusal> {
    let leaf_der = leaf_der.ok_or(SelfServiceRefusal::NoCertificate)?;
    let (serial, sha256) = serial_and_sha256(leaf_der).ok_or(SelfServiceRefusal::Unparseable)?;
    let Some(certificate) = store.certificate_by_serial(&serial).await? else {
        return Err(SelfServiceRefusal::Unknown(serial));
    };
    if certificate.status == CertificateStatus::Reserved
        || certificate.der.as_deref() != Some(leaf_der)
    {
        return Err(SelfServiceRefusal::Unknown(serial));
    }
    let not_a_token_certificate = || SelfServiceRefusal::NotATokenCertificate {
        serial: serial.clone(),
        profile: certificate.profile.clone(),
    };
    let Some(issued) = store.enrollment_of_certificate(&serial).await? else {
        return Err(not_a_token_certificate());
    };
    if certificate.token_id != Some(issued.token_id) {
        return Err(not_a_token_certificate());
    }
    let person_id = certificate.person_id.ok_or_else(not_a_token_certificate)?;
    let person = store
        .person_by_id(person_id)
        .await?
        .ok_or_else(not_a_token_certificate)?;
    let token = store
        .token_by_id(issued.token_id)
        .await?
        .ok_or_else(not_a_token_certificate)?;
    if person.state != PersonState::Active {
        return Err(SelfServiceRefusal::PersonNotActive {
            external_id: person.external_id,
            state: person.state.as_str(),
        });
    }
    if token.state != TokenState::Active {
        return Err(SelfServiceRefusal::TokenNotActive {
            serial: token.serial,
            state: token.state.as_str(),
        });
    }
    if token.person_id != Some(person.id) || issued.person_id != person.id {
        return Err(SelfServiceRefusal::TokenReassigned {
            serial: token.serial,
        });
    }
    let reason = certificate
        .revocation_reason
        .and_then(RevocationReason::from_code);
    match certificate.status {
        CertificateStatus::Good => {}
        CertificateStatus::Revoked if reason == Some(RevocationReason::Superseded) => {
            return Err(SelfServiceRefusal::CertificateSuperseded(serial));
        }
        status => {
            return Err(SelfServiceRefusal::CertificateRevoked {
                serial,
                status: if status == CertificateStatus::OnHold {
                    "on hold"
                } else {
                    "revoked"
                },
                reason,
            });
        }
    }
    let now = store.now();
    if now < certificate.not_before || now >= certificate.not_after {
        return Err(SelfServiceRefusal::CertificateExpired {
            serial,
            not_before: certificate.not_before.to_string(),
            not_after: certificate.not_after.to_string(),
        });
    }
    if issued.state != EnrollmentState::Confirmed {
        return Err(SelfServiceRefusal::EnrollmentNotConfirmed(serial));
    }
    Ok(TokenCaller {
        token,
        person,
        certificate_serial: serial,
        certificate_sha256: sha256,
        slot: issued.slot,
    })
}
