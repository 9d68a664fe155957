//! `CertificateService.IssueFromCsr` and `GetCaChain`. Issuing goes through the one issuance
//! path, `lifecycle::issue_certificate_once` (reserve serial and exact tbsCertificate → HSM
//! signs → record), idempotent by request id across its two transactions.
use super::certificate_service::{Certificates, certificate_pb};
use super::pb;
use super::status;
use crate::api::Identity;
use crate::ca::{CaError, KeyProvenance, OnlineCa, SubjectParams, parse_and_verify_csr};
use crate::lifecycle::{
    self, IssuanceError, IssueOnce, IssueParams, LifecycleError, RequestKey, check_csr_names,
    issue_certificate_once,
};
use crate::store::{PersonState, TokenState};
use prost::Message;
use std::sync::Arc;
use tonic::{Response, Status};

const OPERATION: &str = "IssueFromCsr";

fn ca_not_configured() -> Status {
    status::failed_precondition(
        "CA_NOT_CONFIGURED",
        "this server has no [ca] section, so it neither issues nor serves the CA chain; configure the CA (docs/operations.md)",
        None,
    )
}

/// The stable reason of a CA refusal about the request (the CSR, its subject or the profile).
fn ca_reason(e: &CaError) -> Option<&'static str> {
    Some(match e {
        CaError::CsrUnreadable(_) => "CSR_UNREADABLE",
        CaError::CsrSignatureInvalid => "CSR_SIGNATURE_INVALID",
        CaError::CsrWithoutCommonName => "CSR_WITHOUT_COMMON_NAME",
        CaError::CsrNameTooLong(_) => "FIELD_TOO_LONG",
        CaError::CsrTooManyNames(_) => "TOO_MANY_ITEMS",
        CaError::UnsupportedKeyAlgorithm(_) => "UNSUPPORTED_KEY_ALGORITHM",
        CaError::PublicKeyUnreadable(_) => "PUBLIC_KEY_UNREADABLE",
        CaError::SubjectInvalid(_) => "SUBJECT_INVALID",
        CaError::ProfileRequiresEmail { .. } => "PROFILE_REQUIRES_EMAIL",
        CaError::UnknownProfile { .. } => "UNKNOWN_PROFILE",
        CaError::ProfileRequiresAttestation { .. } => "PROFILE_REQUIRES_ATTESTATION",
        CaError::ProfileRequiresPerson { .. } => "PROFILE_REQUIRES_PERSON",
        CaError::NameNotAllowed { .. } => "NAME_NOT_ALLOWED",
        CaError::ProfileNeedsOperatorCa { .. } => "PROFILE_NEEDS_OPERATOR_CA",
        _ => return None,
    })
}

/// A CA error as status: refusals of the request name `field`; anything else is internal.
fn ca_status(e: &CaError, field: &str) -> Status {
    match (e, ca_reason(e)) {
        (
            CaError::ProfileRequiresAttestation { .. } | CaError::ProfileNeedsOperatorCa { .. },
            Some(reason),
        ) => status::failed_precondition(reason, &e.to_string(), Some("profile")),
        (CaError::ProfileRequiresPerson { .. }, Some(reason)) => {
            status::failed_precondition(reason, &e.to_string(), Some("person_external_id"))
        }
        (CaError::UnknownProfile { .. }, Some(reason)) => {
            status::invalid_argument("profile", reason, &e.to_string())
        }
        (_, Some(reason)) => status::invalid_argument(field, reason, &e.to_string()),
        (_, None) => status::internal(e),
    }
}

impl Certificates {
    fn online_ca(&self) -> Result<&Arc<OnlineCa>, Status> {
        self.ca.as_ref().ok_or_else(ca_not_configured)
    }

    /// The first answer to this request id, if it has one. A request id claimed by an
    /// issuance that has not recorded its certificate (running, or interrupted) is refused
    /// with ABORTED / REQUEST_IN_PROGRESS: a repeat never signs a second certificate.
    async fn replayed(
        &self,
        key: &RequestKey,
    ) -> Result<Option<Response<pb::IssueFromCsrResponse>>, Status> {
        let Some(bytes) = lifecycle::replay_read(&self.store, key).await? else {
            return Ok(None);
        };
        if let Some(serial) = lifecycle::pending_serial(&bytes) {
            tracing::info!(request_id = %key.request_id, %serial, "repeat of an issuance not recorded yet");
            return Err(LifecycleError::RequestInProgress(key.request_id.clone()).into());
        }
        pb::IssueFromCsrResponse::decode(bytes.as_slice())
            .map(|r| Some(Response::new(r)))
            .map_err(|e| status::internal(&e))
    }

    pub(super) async fn issue_csr(
        &self,
        identity: &Identity,
        req: pb::IssueFromCsrRequest,
    ) -> Result<Response<pb::IssueFromCsrResponse>, Status> {
        let key = RequestKey::new(
            &req.request_id,
            OPERATION,
            &req.encode_to_vec(),
            &identity.certificate_sha256,
        )?;
        if let Some(answer) = self.replayed(&key).await? {
            return Ok(answer);
        }
        let ca = self.online_ca()?;
        let profile = ca
            .profiles
            .get(&req.profile)
            .map_err(|e| ca_status(&e, "profile"))?;
        // Operator certificates come only from the operator CA (`tessera admin
        // issue-client-cert`), never from the issuing CA of people's certificates.
        ca.issuing
            .check_profile(profile)
            .map_err(|e| ca_status(&e, "profile"))?;
        if !profile.allow_unattested_keys {
            let e = CaError::ProfileRequiresAttestation {
                profile: profile.name.clone(),
            };
            return Err(ca_status(&e, "profile"));
        }
        let csr = parse_and_verify_csr(&req.csr).map_err(|e| ca_status(&e, "csr"))?;

        let person = if req.person_external_id.is_empty() {
            None
        } else {
            let p = super::named_person(&self.store, &req.person_external_id).await?;
            if p.state != PersonState::Active {
                return Err(status::failed_precondition(
                    "PERSON_NOT_ACTIVE",
                    &format!(
                        "person {:?} is {}; only active people get certificates",
                        p.external_id,
                        p.state.as_str()
                    ),
                    Some("person_external_id"),
                ));
            }
            Some(p)
        };
        let token = if req.token_serial.is_empty() {
            None
        } else {
            let t = super::named_token(&self.store, &req.token_serial).await?;
            if matches!(
                t.state,
                TokenState::Lost
                    | TokenState::Damaged
                    | TokenState::Retired
                    | TokenState::Forgotten
            ) {
                return Err(status::failed_precondition(
                    "TOKEN_NOT_USABLE",
                    &format!(
                        "token {:?} is {}; certify keys only on tokens in use",
                        t.serial,
                        t.state.as_str()
                    ),
                    Some("token_serial"),
                ));
            }
            if let (Some(owner), Some(p)) = (t.person_id, &person)
                && owner != p.id
            {
                return Err(status::failed_precondition(
                    "TOKEN_OF_ANOTHER_PERSON",
                    &format!(
                        "token {:?} belongs to another person than {:?}",
                        t.serial, p.external_id
                    ),
                    Some("token_serial"),
                ));
            }
            Some(t)
        };
        // Without a person only a subject_from_csr profile, within its allowed names; never a
        // CSR naming a directory person other than the one named (issue 12, finding 1).
        match check_csr_names(&self.store, profile, &csr.subject, person.as_ref()).await {
            Ok(()) => {}
            Err(IssuanceError::Ca(e)) => return Err(ca_status(&e, "csr")),
            Err(IssuanceError::Lifecycle(e)) => return Err(e.into()),
        }

        // The subject: from the directory when a person is named, else from the CSR.
        let (subject, subject_field) = match &person {
            Some(p) => {
                let mut s = SubjectParams::new(p.display_name.as_str());
                if !p.email.is_empty() {
                    s.emails.push(p.email.clone());
                }
                (s, "person_external_id")
            }
            None => (csr.subject.clone(), "csr"),
        };
        let (person_external_id, token_serial) = (
            person
                .as_ref()
                .map(|p| p.external_id.clone())
                .unwrap_or_default(),
            token.as_ref().map(|t| t.serial.clone()).unwrap_or_default(),
        );
        let once = IssueOnce {
            key: key.clone(),
            answer: {
                let (person_external_id, token_serial) =
                    (person_external_id.clone(), token_serial.clone());
                Box::new(move |row| {
                    pb::IssueFromCsrResponse {
                        certificate: Some(certificate_pb(
                            row.clone(),
                            person_external_id.clone(),
                            token_serial.clone(),
                        )),
                    }
                    .encode_to_vec()
                })
            },
        };
        let params = IssueParams {
            subject,
            public_key_der: csr.public_key_der,
            profile: profile.name.clone(),
            provenance: KeyProvenance::Unattested,
            person_id: person.as_ref().map(|p| p.id),
            token_id: token.as_ref().map(|t| t.id),
            enrollment: None,
        };
        match issue_certificate_once(&self.store, ca, params, &identity.actor(), &once).await {
            Ok(row) => Ok(Response::new(pb::IssueFromCsrResponse {
                certificate: Some(certificate_pb(row, person_external_id, token_serial)),
            })),
            // A concurrent repeat claimed the id first: answer as a repeat would.
            Err(IssuanceError::Lifecycle(LifecycleError::RequestInProgress(id))) => {
                match self.replayed(&key).await? {
                    Some(answer) => Ok(answer),
                    None => Err(LifecycleError::RequestInProgress(id).into()),
                }
            }
            Err(IssuanceError::Lifecycle(e)) => Err(e.into()),
            Err(IssuanceError::Ca(e)) => Err(ca_status(&e, subject_field)),
        }
    }

    pub(super) fn ca_chain(&self) -> Result<Response<pb::GetCaChainResponse>, Status> {
        let ca = self.online_ca()?;
        Ok(Response::new(pb::GetCaChainResponse {
            pem: ca.chain_pem(),
            der: vec![ca.stored.issuing_der.clone(), ca.stored.root_der.clone()],
        }))
    }
}
