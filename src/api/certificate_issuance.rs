//! `CertificateService.IssueFromCsr` and `GetCaChain`. Issuing goes through the one issuance
//! path, `lifecycle::issue_certificate_once` (reserve serial and exact tbsCertificate → HSM
//! signs → record), idempotent by request id across its two transactions.
use super::certificate_service::{Certificates, certificate_pb};
use super::pb;
use super::status;
use crate::api::Identity;
use crate::attest::{self as attest_lib, AttestError, AttestationFacts, AttestationInput};
use crate::ca::{
    CaError, CsrAttestation, HardwareModule, KeyProvenance, OnlineCa, SubjectParams,
    parse_and_verify_csr,
};
use crate::lifecycle::{
    self, IssuanceError, IssueOnce, IssueParams, LifecycleError, RequestKey, check_csr_names,
    issue_certificate_once,
};
use crate::store::{NewToken, PersonRow};
use crate::store::{PersonState, TokenState};
use prost::Message;
use std::sync::Arc;
use tonic::{Response, Status};

const OPERATION: &str = "IssueFromCsr";

/// A CSR attestation that verified and passed the policy.
struct AttestedCsr {
    serial: u32,
    facts: AttestationFacts,
}

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
        CaError::CsrAttestationMalformed(_) => "CSR_ATTESTATION_MALFORMED",
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
        let csr = parse_and_verify_csr(&req.csr).map_err(|e| ca_status(&e, "csr"))?;
        // An attestation in the CSR is verified or the request refused: never issued as
        // unattested. Without one, only a profile that allows unattested keys issues.
        let attested = match &csr.attestation {
            Some(carried) => Some(self.verify_csr_attestation(
                carried,
                &csr.public_key_der,
                &req.token_serial,
            )?),
            None => None,
        };
        if attested.is_none() && !profile.allow_unattested_keys {
            let e = CaError::ProfileRequiresAttestation {
                profile: profile.name.clone(),
            };
            return Err(ca_status(&e, "profile"));
        }

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
        // The attested serial names the token when the request does not (it matched when it
        // does); an attested token not yet in the directory is registered as the person's.
        let token_serial = match &attested {
            Some(a) if req.token_serial.is_empty() => a.serial.to_string(),
            _ => req.token_serial.clone(),
        };
        if let (Some(a), Some(p)) = (&attested, &person)
            && self.store.token_by_serial(&token_serial).await?.is_none()
        {
            self.register_attested_token(identity, a, p, &req.request_id)
                .await?;
        }
        let token = if token_serial.is_empty() {
            None
        } else {
            let t = super::named_token(&self.store, &token_serial).await?;
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
        let (mut subject, subject_field) = match &person {
            Some(p) => {
                let mut s = SubjectParams::new(p.display_name.as_str());
                if !p.email.is_empty() {
                    s.emails.push(p.email.clone());
                }
                (s, "person_external_id")
            }
            None => (csr.subject.clone(), "csr"),
        };
        if let Some(a) = &attested {
            subject.hardware_module = Some(HardwareModule::yubikey(a.serial));
        }
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
            provenance: if attested.is_some() {
                KeyProvenance::HardwareAttested
            } else {
                KeyProvenance::Unattested
            },
            person_id: person.as_ref().map(|p| p.id),
            token_id: token.as_ref().map(|t| t.id),
            enrollment: None,
        };
        match issue_certificate_once(&self.store, ca, params, &identity.actor(), &once).await {
            Ok(row) => {
                if let Some(a) = &attested {
                    // Kept for `tessera attest recheck`, as enrollment keeps it.
                    let mut tx = self.store.begin_write().await?;
                    tx.insert_certificate_attestation(
                        &row.serial,
                        &a.facts.slot.to_string(),
                        &serde_json::to_string(&a.facts).map_err(|e| status::internal(&e))?,
                    )
                    .await?;
                    tx.commit().await?;
                }
                Ok(Response::new(pb::IssueFromCsrResponse {
                    certificate: Some(certificate_pb(row, person_external_id, token_serial)),
                }))
            }
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

    /// Verifies the attestation a CSR carries: chain and facts (against the `[enrollment]` trust
    /// anchors), the attested key is the CSR's, the serial is `token_serial` when one is named,
    /// and the attestation policy allows it. Each refusal names the verifier's or policy's code.
    fn verify_csr_attestation(
        &self,
        carried: &CsrAttestation,
        csr_public_key_der: &[u8],
        token_serial: &str,
    ) -> Result<AttestedCsr, Status> {
        let Some(settings) = &self.attestation else {
            return Err(status::failed_precondition(
                "ENROLLMENT_NOT_CONFIGURED",
                &format!(
                    "the CSR carries a YubiKey attestation ({}), but this server has no [enrollment] section with attestation trust anchors and policy to verify it; configure [enrollment] (docs/operations.md)",
                    carried.form
                ),
                Some("csr"),
            ));
        };
        let mut input = AttestationInput::new(
            carried.slot_certificate.clone(),
            carried.device_certificate.clone(),
        );
        if !token_serial.is_empty() {
            let expected: u32 = token_serial.parse().map_err(|_| {
                status::invalid_argument(
                    "token_serial",
                    "ATTESTATION_FROM_ANOTHER_TOKEN",
                    &format!(
                        "token_serial {token_serial:?} is not a YubiKey serial, so it cannot be the attested token"
                    ),
                )
            })?;
            input = input.expecting_serial(expected);
        }
        let invalid = |e: AttestError, field: &str| {
            let reason = match e {
                AttestError::SerialMismatch { .. } => "ATTESTATION_FROM_ANOTHER_TOKEN",
                AttestError::PublicKeyMismatch { .. } => "ATTESTATION_KEY_MISMATCH",
                _ => "ATTESTATION_INVALID",
            };
            let metadata = std::collections::HashMap::from([(
                "attestation_code".to_string(),
                e.code().to_string(),
            )]);
            // As EnrollmentService answers the same reasons: the request's attestation is bad.
            status::with_metadata(
                tonic::Code::InvalidArgument,
                reason,
                &format!("the CSR's attestation is refused ({}): {e}", e.code()),
                Some(field),
                metadata,
            )
        };
        let verified = attest_lib::verify(&input, &settings.trust).map_err(|e| {
            let field = if matches!(e, AttestError::SerialMismatch { .. }) {
                "token_serial"
            } else {
                "csr"
            };
            invalid(e, field)
        })?;
        verified
            .require_public_key(csr_public_key_der)
            .map_err(|e| invalid(e, "csr"))?;
        let decision = settings.policy.evaluate(&verified);
        if !decision.allowed() {
            let codes = decision.reason_codes().join(",");
            let reasons = decision
                .reasons()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(status::with_metadata(
                tonic::Code::FailedPrecondition,
                "ATTESTATION_POLICY_DENIED",
                &format!(
                    "the CSR's attestation is refused by the attestation policy ({codes}): {reasons}"
                ),
                Some("csr"),
                std::collections::HashMap::from([("policy_reasons".to_string(), codes)]),
            ));
        }
        // The policy refuses an attestation without a serial (`serial-missing`).
        let serial = verified.serial().ok_or_else(|| {
            invalid(
                AttestError::MissingExtension {
                    extension: crate::attest::YubicoExtension::Serial,
                },
                "csr",
            )
        })?;
        Ok(AttestedCsr {
            serial,
            facts: verified.facts(),
        })
    }

    /// Registers the attested token in the directory as `person`'s, in use, recorded.
    async fn register_attested_token(
        &self,
        identity: &Identity,
        attested: &AttestedCsr,
        person: &PersonRow,
        request_id: &str,
    ) -> Result<(), Status> {
        let mut tx = self.store.begin_write().await?;
        let row = tx
            .insert_token(&NewToken {
                serial: attested.serial.to_string(),
                model: String::new(),
                firmware: attested.facts.firmware.to_string(),
                form_factor: attested.facts.form_factor.as_str().replace('-', "_"),
                state: TokenState::Active,
                person_id: Some(person.id),
            })
            .await?;
        crate::audit::record(
            &mut tx,
            &identity.actor(),
            crate::audit::Change {
                action: "token.register",
                subject: format!("token:{}", row.serial),
                before: None,
                after: Some(serde_json::json!({
                    "serial": row.serial,
                    "person": person.external_id,
                    "from": "attested CSR",
                })),
                request_id,
            },
        )
        .await
        .map_err(LifecycleError::from)?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) fn ca_chain(&self) -> Result<Response<pb::GetCaChainResponse>, Status> {
        let ca = self.online_ca()?;
        Ok(Response::new(pb::GetCaChainResponse {
            pem: ca.chain_pem(),
            der: vec![ca.stored.issuing_der.clone(), ca.stored.root_der.clone()],
        }))
    }
}
