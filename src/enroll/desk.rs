//! The enrollment desk: every step of an enrollment on the server, over the store and the
//! online CA. `api::enrollment_service` authorizes, translates protobuf, keeps the stored
//! answers of repeated requests and maps [`EnrollmentRefusal`] to gRPC status; the rules, the
//! credential wrapping and the audit events (also of refusals) are here.
//!
//! Steps that change state work inside the caller's [`WriteTx`] and record their audit events
//! there; a refusal comes back as [`DeskFailure::Refused`] and is recorded with
//! [`EnrollmentDesk::record_refusal`] in a fresh transaction once the caller has dropped its own.
//! CompleteEnrollment opens its own transactions (the HSM signs between them).

use super::{
    EnrollError, EnrollmentSettings, LoadedEnrollment, ManagementKeyAlgorithm, ManagementKeySecret,
    SlotPlan, SlotProof, TokenCredentials, Verifier,
};
use crate::attest::FirmwareVersion;
use crate::audit::{self, Actor, Change};
use crate::ca::{HardwareModule, KeyProvenance, OnlineCa, SubjectParams};
use crate::lifecycle::{
    self, IssueParams, LifecycleError, RequestKey, RevocationReason, issue_certificate,
};
use crate::store::{
    CertificateRow, CertificateStatus, EnrollmentRow, EnrollmentState, NewEnrollment, NewToken,
    PersonRow, PersonState, Store, StoreError, TokenCredentialsRow, TokenRow, TokenState,
    WrappedCredentials, WriteTx,
};
use std::collections::HashMap;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Why an enrollment request was refused or failed. Each variant has one stable reason
/// ([`EnrollmentRefusal::reason`], docs/api.md), the request field at fault
/// ([`EnrollmentRefusal::field`]) and the `ErrorInfo` metadata
/// ([`EnrollmentRefusal::metadata`]).
#[derive(Debug, thiserror::Error)]
pub enum EnrollmentRefusal {
    #[error("enrollment is not configured on this server; add the [ca] and [enrollment] sections")]
    NotConfigured,
    #[error("no enrollment {0:?}")]
    EnrollmentNotFound(String),
    #[error("person {person} is {state}; only an active person can be enrolled")]
    PersonNotActive { person: String, state: &'static str },
    #[error("unknown enrollment profile {profile:?}; known profiles: {known}")]
    ProfileUnknown { profile: String, known: String },
    #[error("firmware {0:?} is not major.minor.patch")]
    FirmwareInvalid(String),
    #[error("the token serial is not a decimal number")]
    TokenSerialInvalid,
    #[error("token {serial} is {state}; a lost, damaged or retired token is never enrolled again")]
    TokenNeverEnrollable { serial: String, state: &'static str },
    /// The token left `enrolling` while its enrollment was open (marked lost, damaged or
    /// retired by the help desk); it gets nothing more from that enrollment.
    #[error("token {serial} is {state}; its enrollment cannot go on")]
    TokenNotEnrolling { serial: String, state: &'static str },
    #[error("token {serial} is {state} for another person; retire it first")]
    TokenHeldByAnotherPerson { serial: String, state: &'static str },
    #[error("token {serial} is {state}; the PUK is released only for an active token")]
    TokenNotActive { serial: String, state: &'static str },
    #[error("Tessera holds no PUK for token {0}; it was not enrolled by this server")]
    CredentialsNotHeld(String),
    /// A repeated ReleasePuk after the token's credentials were dropped.
    #[error("Tessera no longer holds a PUK for this token")]
    CredentialsGone,
    #[error("reason exceeds 1024 bytes")]
    ReasonTooLong,
    #[error(
        "issuing the certificate for slot {slot} failed: {error}; the enrollment was aborted, begin a new one"
    )]
    IssuanceFailed { slot: String, error: String },
    #[error(transparent)]
    Step(#[from] EnrollError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// HSM, entropy or task failures: logged, answered as an internal error.
    #[error(transparent)]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl EnrollmentRefusal {
    fn internal(e: impl std::error::Error + Send + Sync + 'static) -> EnrollmentRefusal {
        EnrollmentRefusal::Internal(Box::new(e))
    }

    /// The stable reason string a station can act on.
    pub fn reason(&self) -> &'static str {
        use EnrollmentRefusal as R;
        match self {
            R::NotConfigured => "ENROLLMENT_NOT_CONFIGURED",
            R::EnrollmentNotFound(_) => "ENROLLMENT_NOT_FOUND",
            R::PersonNotActive { .. } => "PERSON_NOT_ACTIVE",
            R::ProfileUnknown { .. } => "ENROLLMENT_PROFILE_UNKNOWN",
            R::FirmwareInvalid(_) => "FIRMWARE_INVALID",
            R::TokenSerialInvalid => "TOKEN_SERIAL_INVALID",
            R::TokenNeverEnrollable { .. } | R::TokenNotEnrolling { .. } => "TOKEN_NOT_ENROLLABLE",
            R::TokenHeldByAnotherPerson { .. } => "TOKEN_HELD_BY_ANOTHER_PERSON",
            R::TokenNotActive { .. } => "TOKEN_NOT_ACTIVE",
            R::CredentialsNotHeld(_) | R::CredentialsGone => "CREDENTIALS_NOT_HELD",
            R::ReasonTooLong => "FIELD_TOO_LONG",
            R::IssuanceFailed { .. } => "ISSUANCE_FAILED",
            R::Step(e) => e.reason(),
            R::Lifecycle(e) => e.reason(),
            R::Store(_) | R::Internal(_) => "INTERNAL",
        }
    }

    /// The request field at fault, when one is.
    pub fn field(&self) -> Option<&str> {
        use EnrollmentRefusal as R;
        match self {
            R::EnrollmentNotFound(_) => Some("enrollment_id"),
            R::ProfileUnknown { .. } => Some("profile"),
            R::FirmwareInvalid(_) => Some("firmware"),
            R::TokenSerialInvalid => Some("token_serial"),
            R::ReasonTooLong => Some("reason"),
            R::Step(e) => e.slot().map(|_| "proofs"),
            R::Lifecycle(e) => e.field(),
            _ => None,
        }
    }

    /// `ErrorInfo` metadata: the slot at fault, policy reason codes, the attestation code.
    pub fn metadata(&self) -> HashMap<String, String> {
        match self {
            EnrollmentRefusal::Step(e) => e.metadata(),
            _ => HashMap::new(),
        }
    }

    /// An internal error: the caller sees only that one happened (the log has the detail).
    pub fn is_internal(&self) -> bool {
        use EnrollmentRefusal as R;
        match self {
            R::Step(e) => e.is_internal(),
            R::Lifecycle(e) => e.reason() == "INTERNAL",
            R::Store(_) | R::Internal(_) => true,
            _ => false,
        }
    }

    /// The message a caller sees (internal errors are not described to the caller).
    pub fn public_message(&self) -> String {
        if self.is_internal() {
            "internal error; see the server log".to_string()
        } else {
            self.to_string()
        }
    }
}

/// How a desk step did not succeed: refused (the caller rolls back and records the refusal
/// with [`EnrollmentDesk::record_refusal`]) or failed (nothing to record).
#[derive(Debug)]
pub enum DeskFailure {
    Refused {
        /// The audit subject, e.g. `enrollment:<id>`, `token:<serial>`, `person:<id>`.
        subject: String,
        refusal: EnrollmentRefusal,
    },
    Error(EnrollmentRefusal),
}

impl<E: Into<EnrollmentRefusal>> From<E> for DeskFailure {
    fn from(e: E) -> DeskFailure {
        DeskFailure::Error(e.into())
    }
}

fn refused(subject: impl Into<String>, refusal: impl Into<EnrollmentRefusal>) -> DeskFailure {
    DeskFailure::Refused {
        subject: subject.into(),
        refusal: refusal.into(),
    }
}

/// What BeginEnrollment asks for (already checked for presence and shape by the API).
pub struct BeginRequest<'a> {
    pub person_external_id: &'a str,
    pub token_serial: &'a str,
    pub profile: &'a str,
    pub firmware: &'a str,
    pub model: &'a str,
    pub request_id: &'a str,
}

/// A begun enrollment and the token's credentials: `current` (the confirmed ones, to
/// authenticate to the token) and `new` (to set).
pub struct BegunEnrollment {
    pub enrollment: EnrollmentRow,
    pub person: PersonRow,
    pub slots: Vec<SlotPlan>,
    pub current: Option<TokenCredentials>,
    pub new: TokenCredentials,
}

/// What CompleteEnrollment asks for.
pub struct CompleteRequest<'a> {
    pub enrollment_id: &'a str,
    pub attestation_intermediate: &'a [u8],
    pub proofs: Vec<SlotProof>,
    pub request_id: &'a str,
}

/// CompleteEnrollment's outcome: the stored first answer of a repeat, or the certificates
/// issued per slot (the caller keeps its answer with [`lifecycle::remember`]).
pub enum Completion {
    Replayed(Vec<u8>),
    Issued(Vec<(String, CertificateRow)>),
}

/// An enrollment as the API shows it.
pub struct EnrollmentView {
    pub row: EnrollmentRow,
    pub person_external_id: String,
    pub token_serial: String,
    /// Slot and certificate.
    pub certificates: Vec<(String, CertificateRow)>,
}

/// The server side of enrollment: the store, the online CA and the checked settings.
pub struct EnrollmentDesk {
    pub store: Store,
    pub ca: Arc<OnlineCa>,
    pub settings: Arc<EnrollmentSettings>,
}

impl EnrollmentDesk {
    pub fn new(store: Store, ca: Arc<OnlineCa>, settings: Arc<EnrollmentSettings>) -> Self {
        EnrollmentDesk {
            store,
            ca,
            settings,
        }
    }

    async fn wrap(&self, secret: &[u8]) -> Result<Vec<u8>, EnrollmentRefusal> {
        let (hsm, label) = (
            self.ca.hsm.clone(),
            self.settings.wrapping_key_label.clone(),
        );
        let secret = Zeroizing::new(secret.to_vec());
        tokio::task::spawn_blocking(move || hsm.wrap_secret(&label, &secret))
            .await
            .map_err(EnrollmentRefusal::internal)?
            .map_err(EnrollmentRefusal::internal)
    }

    async fn unwrap(
        &self,
        label: &str,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, EnrollmentRefusal> {
        let (hsm, label, blob) = (self.ca.hsm.clone(), label.to_string(), blob.to_vec());
        tokio::task::spawn_blocking(move || hsm.unwrap_secret(&label, &blob))
            .await
            .map_err(EnrollmentRefusal::internal)?
            .map_err(EnrollmentRefusal::internal)
    }

    async fn wrap_credentials(
        &self,
        c: &TokenCredentials,
    ) -> Result<WrappedCredentials, EnrollmentRefusal> {
        Ok(WrappedCredentials {
            management_key_algorithm: c.management_key.algorithm.as_str().to_string(),
            management_key_wrapped: self.wrap(&c.management_key.key).await?,
            puk_wrapped: self.wrap(c.puk.as_bytes()).await?,
        })
    }

    async fn unwrap_credentials(
        &self,
        label: &str,
        w: &WrappedCredentials,
    ) -> Result<TokenCredentials, EnrollmentRefusal> {
        let algorithm =
            ManagementKeyAlgorithm::parse(&w.management_key_algorithm).ok_or_else(|| {
                StoreError::BadStoredValue {
                    column: "token_credentials.management_key_algorithm",
                    value: w.management_key_algorithm.clone(),
                }
            })?;
        let key = self.unwrap(label, &w.management_key_wrapped).await?;
        let puk = self.unwrap(label, &w.puk_wrapped).await?;
        let puk = Zeroizing::new(String::from_utf8_lossy(&puk).into_owned());
        Ok(TokenCredentials {
            management_key: ManagementKeySecret { algorithm, key },
            puk,
        })
    }

    /// Records a refusal's `enrollment.refuse` event in a fresh transaction (the request's own
    /// changes were rolled back) and returns the refusal, or the error that kept it from being
    /// recorded. A failure that is no refusal comes back as it is.
    pub async fn record_refusal(
        &self,
        actor: &Actor,
        operation: &str,
        request_id: &str,
        failure: DeskFailure,
    ) -> EnrollmentRefusal {
        let (subject, refusal) = match failure {
            DeskFailure::Error(e) => return e,
            DeskFailure::Refused { subject, refusal } => (subject, refusal),
        };
        let result: Result<(), EnrollmentRefusal> = async {
            let mut tx = self.store.begin_write().await?;
            audit::record(
                &mut tx,
                actor,
                Change {
                    action: "enrollment.refuse",
                    subject,
                    before: None,
                    after: Some(serde_json::json!({
                        "operation": operation,
                        "reason": refusal.reason(),
                        "message": refusal.public_message(),
                    })),
                    request_id,
                },
            )
            .await
            .map_err(LifecycleError::from)?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => refusal,
            Err(e) => e,
        }
    }

    /// Expires open enrollments past their time (all of them, or only `only`): revokes their
    /// certificates and records `enrollment.expire` as the server.
    pub async fn expire_due(&self, only: Option<&str>) -> Result<Vec<String>, EnrollmentRefusal> {
        let now = self.store.now();
        let due = match only {
            Some(id) => match self.store.enrollment_by_public_id(id).await? {
                Some(row)
                    if matches!(
                        row.state,
                        EnrollmentState::Begun | EnrollmentState::Completed
                    ) && row.expires_at <= now =>
                {
                    vec![row.public_id]
                }
                _ => Vec::new(),
            },
            None => self.store.enrollments_expired_at(now).await?,
        };
        let mut expired = Vec::new();
        for id in due {
            let mut tx = self.store.begin_write().await?;
            let Some(row) = tx.enrollment_by_public_id(&id).await? else {
                continue;
            };
            let loaded = LoadedEnrollment::load(row)?;
            if !loaded.is_due_to_expire(tx.now()) {
                continue;
            }
            let row = loaded.row().clone();
            let request_id = format!("expire:{id}");
            close_enrollment(
                &mut tx,
                &Actor::server(),
                &request_id,
                &row,
                EnrollmentState::Expired,
                RevocationReason::CessationOfOperation,
                "enrollment.expire",
                None,
            )
            .await?;
            tx.commit().await?;
            tracing::info!(enrollment = %id, "enrollment expired; its certificates were revoked");
            expired.push(id);
        }
        Ok(expired)
    }

    /// BeginEnrollment: registers or re-enrolls the token, closes its open enrollments, keeps
    /// (or resumes) its wrapped credentials and begins an enrollment with a fresh nonce.
    pub async fn begin(
        &self,
        tx: &mut WriteTx,
        actor: &Actor,
        req: &BeginRequest<'_>,
    ) -> Result<BegunEnrollment, DeskFailure> {
        let settings = &self.settings;
        let person = tx
            .person_by_external_id(req.person_external_id)
            .await?
            .ok_or_else(|| LifecycleError::PersonNotFound(req.person_external_id.to_string()))?;
        if person.state != PersonState::Active {
            return Err(refused(
                format!("person:{}", person.external_id),
                EnrollmentRefusal::PersonNotActive {
                    person: person.external_id.clone(),
                    state: person.state.as_str(),
                },
            ));
        }
        let Some(profile) = settings.profiles.get(req.profile) else {
            return Err(refused(
                format!("person:{}", person.external_id),
                EnrollmentRefusal::ProfileUnknown {
                    profile: req.profile.to_string(),
                    known: settings.profiles.names().join(", "),
                },
            ));
        };
        let firmware: FirmwareVersion = req
            .firmware
            .parse()
            .map_err(|_| EnrollmentRefusal::FirmwareInvalid(req.firmware.to_string()))?;
        let token_subject = format!("token:{}", req.token_serial);
        let existing = tx.token_by_serial(req.token_serial).await?;
        if let Some(t) = &existing {
            if matches!(
                t.state,
                TokenState::Lost | TokenState::Damaged | TokenState::Retired
            ) {
                return Err(refused(
                    token_subject,
                    EnrollmentRefusal::TokenNeverEnrollable {
                        serial: t.serial.clone(),
                        state: t.state.as_str(),
                    },
                ));
            }
            if t.person_id.is_some_and(|p| p != person.id)
                && matches!(t.state, TokenState::Active | TokenState::Suspended)
            {
                return Err(refused(
                    token_subject,
                    EnrollmentRefusal::TokenHeldByAnotherPerson {
                        serial: t.serial.clone(),
                        state: t.state.as_str(),
                    },
                ));
            }
        }
        // Checks done; changes follow.
        let token = match existing {
            None => {
                let row = tx
                    .insert_token(&NewToken {
                        serial: req.token_serial.to_string(),
                        model: req.model.to_string(),
                        firmware: req.firmware.to_string(),
                        form_factor: String::new(),
                        state: TokenState::Enrolling,
                        person_id: Some(person.id),
                    })
                    .await?;
                record(
                    tx,
                    actor,
                    "token.register",
                    &token_subject,
                    None,
                    Some(json(&row)),
                    req.request_id,
                )
                .await?;
                row
            }
            Some(before) => {
                tx.update_token_hardware(before.id, req.model, req.firmware, &before.form_factor)
                    .await?;
                let mut after = before.clone();
                after.state = TokenState::Enrolling;
                after.person_id = Some(person.id);
                let row = tx.update_token(&after).await?;
                record(
                    tx,
                    actor,
                    "token.enroll",
                    &token_subject,
                    Some(json(&before)),
                    Some(json(&row)),
                    req.request_id,
                )
                .await?;
                row
            }
        };
        let now = tx.now();
        for open in tx.open_enrollments_of_token(token.id).await? {
            if open.expires_at <= now {
                // Past its time already: it expires (as the sweep would have done).
                close_enrollment(
                    tx,
                    &Actor::server(),
                    &format!("expire:{}", open.public_id),
                    &open,
                    EnrollmentState::Expired,
                    RevocationReason::CessationOfOperation,
                    "enrollment.expire",
                    None,
                )
                .await?;
            } else {
                close_enrollment(
                    tx,
                    actor,
                    req.request_id,
                    &open,
                    EnrollmentState::Aborted,
                    RevocationReason::Superseded,
                    "enrollment.supersede",
                    Some("superseded by a new enrollment of the same token"),
                )
                .await?;
            }
        }
        let stored = tx.token_credentials(token.id).await?;
        let label = settings.wrapping_key_label.clone();
        let current = match stored
            .as_ref()
            .and_then(|c| c.confirmed.clone().map(|w| (c, w)))
        {
            Some((c, w)) => Some(self.unwrap_credentials(&c.wrapping_key_label, &w).await?),
            None => None,
        };
        let (new, resumed) = match stored
            .as_ref()
            .and_then(|c| c.pending.clone().map(|w| (c, w)))
        {
            Some((c, w)) => (
                self.unwrap_credentials(&c.wrapping_key_label, &w).await?,
                true,
            ),
            None => (
                TokenCredentials::generate(ManagementKeyAlgorithm::for_firmware(firmware))
                    .map_err(EnrollmentRefusal::internal)?,
                false,
            ),
        };
        // Everything re-wrapped under the configured key (a changed label takes effect here).
        let row = TokenCredentialsRow {
            token_id: token.id,
            wrapping_key_label: label,
            confirmed: match &current {
                Some(c) => Some(self.wrap_credentials(c).await?),
                None => None,
            },
            pending: Some(self.wrap_credentials(&new).await?),
        };
        tx.put_token_credentials(&row).await?;

        let public_id =
            super::credentials::new_enrollment_id().map_err(EnrollmentRefusal::internal)?;
        let nonce = super::credentials::new_nonce().map_err(EnrollmentRefusal::internal)?;
        let enrollment = tx
            .insert_enrollment(&NewEnrollment {
                public_id: public_id.clone(),
                person_id: person.id,
                token_id: token.id,
                profile: profile.name.clone(),
                nonce: nonce.to_vec(),
                plan_json: super::plan::plan_to_json(&profile.slots),
                firmware: req.firmware.to_string(),
                expires_at: now.checked_add(settings.expiry).unwrap_or(now),
                created_by: actor.name.clone(),
            })
            .await?;
        let mut after = json(&enrollment);
        after["person"] = person.external_id.clone().into();
        after["token"] = token.serial.clone().into();
        after["management_key_algorithm"] = new.management_key.algorithm.as_str().into();
        after["credentials"] = if resumed { "resumed" } else { "fresh" }.into();
        record(
            tx,
            actor,
            "enrollment.begin",
            &format!("enrollment:{public_id}"),
            None,
            Some(after),
            req.request_id,
        )
        .await?;
        Ok(BegunEnrollment {
            enrollment,
            person,
            slots: profile.slots.clone(),
            current,
            new,
        })
    }

    /// The credentials of a repeated BeginEnrollment, unwrapped again while the enrollment is
    /// still open: the current ones (when the first answer had them) and the new ones.
    pub async fn begin_credentials_again(
        &self,
        enrollment_id: &str,
        with_current: bool,
    ) -> Result<(Option<TokenCredentials>, TokenCredentials), EnrollmentRefusal> {
        let row = self
            .store
            .enrollment_by_public_id(enrollment_id)
            .await?
            .ok_or_else(|| EnrollError::StoredPlanInvalid("enrollment vanished".into()))?;
        let loaded = LoadedEnrollment::load(row)?;
        if let LoadedEnrollment::Closed(r) = &loaded {
            return Err(EnrollError::closed(r).into());
        }
        let mut tx = self.store.begin_write().await?;
        let credentials = tx.token_credentials(loaded.row().token_id).await?;
        drop(tx);
        let Some(c) = credentials else {
            return Err(EnrollmentRefusal::NotConfigured);
        };
        let new = match &c.pending {
            Some(w) => self.unwrap_credentials(&c.wrapping_key_label, w).await?,
            None => return Err(EnrollError::closed(loaded.row()).into()),
        };
        let current = match (with_current, &c.confirmed) {
            (true, Some(w)) => Some(self.unwrap_credentials(&c.wrapping_key_label, w).await?),
            _ => None,
        };
        Ok((current, new))
    }

    /// CompleteEnrollment: checks every proof, uses up the nonce, then issues one certificate
    /// per slot through [`issue_certificate`]; a failed issuance aborts the enrollment. A
    /// repeat of `key` gets its stored answer.
    pub async fn complete(
        &self,
        actor: &Actor,
        req: &CompleteRequest<'_>,
        key: &RequestKey,
    ) -> Result<Completion, DeskFailure> {
        let settings = &self.settings;
        let subject = format!("enrollment:{}", req.enrollment_id);
        let mut tx = self.store.begin_write().await?;
        if let Some(bytes) = lifecycle::replay(&mut tx, key).await? {
            return Ok(Completion::Replayed(bytes));
        }
        let row = enrollment_or_not_found(&mut tx, req.enrollment_id).await?;
        let begun = LoadedEnrollment::load(row)?
            .into_begun()
            .map_err(|e| refused(subject.clone(), e))?;
        let person = person_of(&mut tx, begun.row().person_id).await?;
        if person.state != PersonState::Active {
            return Err(refused(
                subject,
                EnrollmentRefusal::PersonNotActive {
                    person: person.external_id.clone(),
                    state: person.state.as_str(),
                },
            ));
        }
        let token = token_of(&mut tx, begun.row().token_id).await?;
        if token.state != TokenState::Enrolling {
            return Err(refused(subject, token_not_enrolling(&token)));
        }
        let serial: u32 = token
            .serial
            .parse()
            .map_err(|_| refused(subject.clone(), EnrollmentRefusal::TokenSerialInvalid))?;
        let verified = begun
            .verify(
                serial,
                req.attestation_intermediate,
                &req.proofs,
                &Verifier {
                    trust: &settings.trust,
                    policy: &settings.policy,
                },
            )
            .map_err(|e| refused(subject.clone(), e))?;
        // Every check passed: the nonce is used up now, before anything is signed.
        let mut enrollment = begun.row().clone();
        if !tx
            .move_enrollment_state(
                enrollment.id,
                EnrollmentState::Begun,
                EnrollmentState::Completed,
            )
            .await?
        {
            return Err(refused(
                subject,
                EnrollError::NonceAlreadyUsed(enrollment.public_id.clone()),
            ));
        }
        enrollment.state = EnrollmentState::Completed;
        if let Some(first) = verified.first() {
            // The attestation is authoritative for firmware and form factor.
            let ff = first.facts.form_factor.as_str().replace('-', "_");
            tx.update_token_hardware(
                token.id,
                &token.model,
                &first.facts.firmware.to_string(),
                &ff,
            )
            .await?;
        }
        record(
            &mut tx,
            actor,
            "enrollment.verify",
            &subject,
            None,
            Some(serde_json::json!({
                "slots": verified.iter().map(|v| serde_json::json!({
                    "slot": v.plan.slot.to_string(),
                    "certificate_profile": v.plan.certificate_profile,
                    "attestation": v.facts,
                })).collect::<Vec<_>>(),
            })),
            req.request_id,
        )
        .await?;
        tx.commit().await?;

        let mut certificates = Vec::new();
        for slot in &verified {
            let mut subject_params = SubjectParams::new(person.display_name.as_str());
            if !person.email.is_empty() {
                subject_params.emails.push(person.email.clone());
            }
            subject_params.upn = Some(person.upn.clone()).filter(|u| !u.is_empty());
            subject_params.windows_sid = person.windows_sid.clone().filter(|s| !s.is_empty());
            subject_params.hardware_module = Some(HardwareModule::yubikey(serial));
            let issued = issue_certificate(
                &self.store,
                &self.ca,
                IssueParams {
                    subject: subject_params,
                    public_key_der: slot.public_key_der.clone(),
                    profile: slot.plan.certificate_profile.clone(),
                    provenance: KeyProvenance::HardwareAttested,
                    person_id: Some(person.id),
                    token_id: Some(token.id),
                },
                actor,
                req.request_id,
            )
            .await;
            let slot_name = slot.plan.slot.to_string();
            match issued {
                Ok(row) => {
                    let mut tx = self.store.begin_write().await?;
                    tx.insert_enrollment_certificate(enrollment.id, &slot_name, &row.serial)
                        .await?;
                    tx.commit().await?;
                    certificates.push((slot_name, row));
                }
                Err(e) => {
                    tracing::error!(enrollment = %enrollment.public_id, slot = %slot_name, error = %e, "issuance failed; aborting the enrollment");
                    let mut tx = self.store.begin_write().await?;
                    close_enrollment(
                        &mut tx,
                        &Actor::server(),
                        req.request_id,
                        &enrollment,
                        EnrollmentState::Aborted,
                        RevocationReason::CessationOfOperation,
                        "enrollment.abort",
                        Some("certificate issuance failed"),
                    )
                    .await?;
                    tx.commit().await?;
                    return Err(DeskFailure::Error(EnrollmentRefusal::IssuanceFailed {
                        slot: slot_name,
                        error: e.to_string(),
                    }));
                }
            }
        }
        Ok(Completion::Issued(certificates))
    }

    /// ConfirmEnrollment: the token becomes active, certificates of earlier enrollments for the
    /// re-keyed slots are revoked as superseded, and the new credentials become the confirmed
    /// ones. Returns the token.
    pub async fn confirm(
        &self,
        tx: &mut WriteTx,
        actor: &Actor,
        enrollment_id: &str,
        request_id: &str,
    ) -> Result<TokenRow, DeskFailure> {
        let subject = format!("enrollment:{enrollment_id}");
        let row = enrollment_or_not_found(tx, enrollment_id).await?;
        let completed = LoadedEnrollment::load(row)?
            .into_completed()
            .map_err(|e| refused(subject.clone(), e))?;
        let enrollment = completed.row().clone();
        let token = token_of(tx, enrollment.token_id).await?;
        if token.state != TokenState::Enrolling {
            return Err(refused(subject, token_not_enrolling(&token)));
        }
        if !tx
            .move_enrollment_state(
                enrollment.id,
                EnrollmentState::Completed,
                EnrollmentState::Confirmed,
            )
            .await?
        {
            return Err(DeskFailure::Error(
                EnrollError::StoredPlanInvalid(
                    "the enrollment changed state during confirmation".into(),
                )
                .into(),
            ));
        }
        record(
            tx,
            actor,
            "enrollment.confirm",
            &subject,
            None,
            None,
            request_id,
        )
        .await?;
        // Certificates of earlier enrollments of this token for the slots just re-keyed are
        // superseded: those keys no longer exist on the token.
        let slots: Vec<String> = tx
            .enrollment_certificates(enrollment.id)
            .await?
            .into_iter()
            .map(|c| c.slot)
            .collect();
        for old in tx
            .earlier_enrollment_certificates(enrollment.token_id, enrollment.id)
            .await?
        {
            if !slots.contains(&old.slot) {
                continue;
            }
            if let Some(c) = tx.certificate_by_serial(&old.serial).await?
                && matches!(
                    c.status,
                    CertificateStatus::Good | CertificateStatus::OnHold
                )
            {
                lifecycle::revoke_certificate(
                    tx,
                    actor,
                    request_id,
                    &c.serial,
                    RevocationReason::Superseded,
                )
                .await?;
            }
        }
        let before = token_of(tx, enrollment.token_id).await?;
        let mut after = before.clone();
        after.state = TokenState::Active;
        let token = tx.update_token(&after).await?;
        record(
            tx,
            actor,
            "token.activate",
            &format!("token:{}", token.serial),
            Some(json(&before)),
            Some(json(&token)),
            request_id,
        )
        .await?;
        if let Some(mut c) = tx.token_credentials(token.id).await?
            && let Some(pending) = c.pending.take()
        {
            c.confirmed = Some(pending);
            tx.put_token_credentials(&c).await?;
        }
        Ok(token)
    }

    /// AbortEnrollment: an open enrollment ends and the certificates it issued are revoked.
    pub async fn abort(
        &self,
        tx: &mut WriteTx,
        actor: &Actor,
        enrollment_id: &str,
        reason: &str,
        request_id: &str,
    ) -> Result<EnrollmentView, DeskFailure> {
        let subject = format!("enrollment:{enrollment_id}");
        if reason.len() > 1024 {
            return Err(DeskFailure::Error(EnrollmentRefusal::ReasonTooLong));
        }
        let row = enrollment_or_not_found(tx, enrollment_id).await?;
        let loaded = LoadedEnrollment::load(row)?;
        if let LoadedEnrollment::Closed(r) = &loaded {
            return Err(refused(subject, EnrollError::closed(r)));
        }
        let row = loaded.row().clone();
        close_enrollment(
            tx,
            actor,
            request_id,
            &row,
            EnrollmentState::Aborted,
            RevocationReason::CessationOfOperation,
            "enrollment.abort",
            Some(reason).filter(|r| !r.is_empty()),
        )
        .await?;
        let row = enrollment_or_not_found(tx, enrollment_id).await?;
        Ok(view_in(tx, row).await?)
    }

    /// GetEnrollment (after the caller expired it if due).
    pub async fn get(&self, enrollment_id: &str) -> Result<EnrollmentView, EnrollmentRefusal> {
        let row = self
            .store
            .enrollment_by_public_id(enrollment_id)
            .await?
            .ok_or_else(|| EnrollmentRefusal::EnrollmentNotFound(enrollment_id.to_string()))?;
        let mut certificates = Vec::new();
        for c in self.store.enrollment_certificates(row.id).await? {
            if let Some(cert) = self.store.certificate_by_serial(&c.serial).await? {
                certificates.push((c.slot, cert));
            }
        }
        Ok(EnrollmentView {
            person_external_id: self
                .store
                .person_external_id(row.person_id)
                .await?
                .unwrap_or_default(),
            token_serial: self
                .store
                .token_serial(row.token_id)
                .await?
                .unwrap_or_default(),
            certificates,
            row,
        })
    }

    /// ReleasePuk: the PUK and management key of an active token, recorded as
    /// `token.release_puk`.
    pub async fn release_puk(
        &self,
        tx: &mut WriteTx,
        actor: &Actor,
        token_serial: &str,
        reason: &str,
        request_id: &str,
    ) -> Result<TokenCredentials, DeskFailure> {
        let subject = format!("token:{token_serial}");
        if reason.len() > 1024 {
            return Err(DeskFailure::Error(EnrollmentRefusal::ReasonTooLong));
        }
        let token = tx
            .token_by_serial(token_serial)
            .await?
            .ok_or_else(|| LifecycleError::TokenNotFound(token_serial.to_string()))?;
        if token.state != TokenState::Active {
            return Err(refused(
                subject,
                EnrollmentRefusal::TokenNotActive {
                    serial: token.serial.clone(),
                    state: token.state.as_str(),
                },
            ));
        }
        let credentials = tx.token_credentials(token.id).await?;
        let Some((label, wrapped)) =
            credentials.and_then(|c| c.confirmed.map(|w| (c.wrapping_key_label, w)))
        else {
            return Err(refused(
                subject,
                EnrollmentRefusal::CredentialsNotHeld(token.serial.clone()),
            ));
        };
        let c = self.unwrap_credentials(&label, &wrapped).await?;
        let mut after = serde_json::json!({ "released": "puk" });
        if !reason.is_empty() {
            after["reason"] = reason.into();
        }
        record(
            tx,
            actor,
            "token.release_puk",
            &subject,
            None,
            Some(after),
            request_id,
        )
        .await?;
        Ok(c)
    }

    /// The credentials of a repeated ReleasePuk, unwrapped again.
    pub async fn release_puk_again(
        &self,
        token_serial: &str,
    ) -> Result<TokenCredentials, EnrollmentRefusal> {
        let mut tx = self.store.begin_write().await?;
        let token = tx
            .token_by_serial(token_serial)
            .await?
            .ok_or_else(|| LifecycleError::TokenNotFound(token_serial.to_string()))?;
        let credentials = tx.token_credentials(token.id).await?;
        drop(tx);
        let Some((label, wrapped)) =
            credentials.and_then(|c| c.confirmed.map(|w| (c.wrapping_key_label, w)))
        else {
            return Err(EnrollmentRefusal::CredentialsGone);
        };
        self.unwrap_credentials(&label, &wrapped).await
    }
}

fn token_not_enrolling(token: &TokenRow) -> EnrollmentRefusal {
    EnrollmentRefusal::TokenNotEnrolling {
        serial: token.serial.clone(),
        state: token.state.as_str(),
    }
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

async fn record(
    tx: &mut WriteTx,
    actor: &Actor,
    action: &str,
    subject: &str,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
    request_id: &str,
) -> Result<(), LifecycleError> {
    audit::record(
        tx,
        actor,
        Change {
            action,
            subject: subject.to_string(),
            before,
            after,
            request_id,
        },
    )
    .await?;
    Ok(())
}

async fn enrollment_or_not_found(
    tx: &mut WriteTx,
    public_id: &str,
) -> Result<EnrollmentRow, EnrollmentRefusal> {
    tx.enrollment_by_public_id(public_id)
        .await?
        .ok_or_else(|| EnrollmentRefusal::EnrollmentNotFound(public_id.to_string()))
}

async fn person_of(tx: &mut WriteTx, id: i64) -> Result<PersonRow, StoreError> {
    tx.person_by_id(id)
        .await?
        .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
}

async fn token_of(tx: &mut WriteTx, id: i64) -> Result<TokenRow, StoreError> {
    tx.token_by_id(id)
        .await?
        .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
}

/// An enrollment with its person, token and certificates, read in `tx`.
async fn view_in(tx: &mut WriteTx, row: EnrollmentRow) -> Result<EnrollmentView, StoreError> {
    let person = person_of(tx, row.person_id).await?;
    let token = token_of(tx, row.token_id).await?;
    let mut certificates = Vec::new();
    for c in tx.enrollment_certificates(row.id).await? {
        if let Some(cert) = tx.certificate_by_serial(&c.serial).await? {
            certificates.push((c.slot, cert));
        }
    }
    Ok(EnrollmentView {
        row,
        person_external_id: person.external_id,
        token_serial: token.serial,
        certificates,
    })
}

/// Ends an open enrollment (aborted or expired): revokes the certificates it issued and records
/// `action`.
#[allow(clippy::too_many_arguments)]
async fn close_enrollment(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    row: &EnrollmentRow,
    to: EnrollmentState,
    revocation: RevocationReason,
    action: &str,
    reason: Option<&str>,
) -> Result<(), LifecycleError> {
    if !tx.move_enrollment_state(row.id, row.state, to).await? {
        return Ok(());
    }
    let mut revoked = Vec::new();
    for c in tx.enrollment_certificates(row.id).await? {
        if let Some(cert) = tx.certificate_by_serial(&c.serial).await?
            && matches!(
                cert.status,
                CertificateStatus::Good | CertificateStatus::OnHold
            )
        {
            lifecycle::revoke_certificate(tx, actor, request_id, &cert.serial, revocation).await?;
            revoked.push(cert.serial);
        }
    }
    let mut after = serde_json::json!({ "state": to.as_str(), "revoked": revoked });
    if let Some(r) = reason {
        after["reason"] = r.into();
    }
    record(
        tx,
        actor,
        action,
        &format!("enrollment:{}", row.public_id),
        Some(serde_json::json!({ "state": row.state.as_str() })),
        Some(after),
        request_id,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_reasons_fields_and_metadata() {
        let cases: Vec<(EnrollmentRefusal, &str, Option<&str>)> = vec![
            (
                EnrollmentRefusal::NotConfigured,
                "ENROLLMENT_NOT_CONFIGURED",
                None,
            ),
            (
                EnrollmentRefusal::EnrollmentNotFound("e1".into()),
                "ENROLLMENT_NOT_FOUND",
                Some("enrollment_id"),
            ),
            (
                EnrollmentRefusal::ProfileUnknown {
                    profile: "x".into(),
                    known: "piv-login".into(),
                },
                "ENROLLMENT_PROFILE_UNKNOWN",
                Some("profile"),
            ),
            (
                EnrollmentRefusal::FirmwareInvalid("5.x".into()),
                "FIRMWARE_INVALID",
                Some("firmware"),
            ),
            (
                EnrollmentRefusal::TokenSerialInvalid,
                "TOKEN_SERIAL_INVALID",
                Some("token_serial"),
            ),
            (
                EnrollmentRefusal::TokenNeverEnrollable {
                    serial: "1".into(),
                    state: "lost",
                },
                "TOKEN_NOT_ENROLLABLE",
                None,
            ),
            (
                EnrollmentRefusal::TokenNotEnrolling {
                    serial: "1".into(),
                    state: "retired",
                },
                "TOKEN_NOT_ENROLLABLE",
                None,
            ),
            (
                EnrollmentRefusal::CredentialsGone,
                "CREDENTIALS_NOT_HELD",
                None,
            ),
            (
                EnrollmentRefusal::ReasonTooLong,
                "FIELD_TOO_LONG",
                Some("reason"),
            ),
            (
                EnrollmentRefusal::IssuanceFailed {
                    slot: "9a".into(),
                    error: "x".into(),
                },
                "ISSUANCE_FAILED",
                None,
            ),
            (
                EnrollError::SlotMissing("9c".into()).into(),
                "SLOT_MISSING",
                Some("proofs"),
            ),
            (
                LifecycleError::TokenNotFound("7".into()).into(),
                "TOKEN_NOT_FOUND",
                None,
            ),
        ];
        for (refusal, reason, field) in cases {
            assert_eq!(refusal.reason(), reason, "{refusal}");
            assert_eq!(refusal.field(), field, "{refusal}");
            assert!(!refusal.is_internal(), "{refusal}");
            assert_eq!(refusal.public_message(), refusal.to_string());
        }
    }

    #[test]
    fn policy_refusal_carries_slot_and_reason_codes() {
        let r: EnrollmentRefusal = EnrollError::PolicyDenied {
            slot: "9a".into(),
            codes: "EUCLEAK".into(),
            reasons: "firmware".into(),
        }
        .into();
        let m = r.metadata();
        assert_eq!(m.get("slot").map(String::as_str), Some("9a"));
        assert_eq!(m.get("policy_reasons").map(String::as_str), Some("EUCLEAK"));
        assert_eq!(r.reason(), "ATTESTATION_POLICY_DENIED");
    }

    #[test]
    fn internal_errors_are_not_described_to_the_caller() {
        let r: EnrollmentRefusal = EnrollError::StoredPlanInvalid("bad".into()).into();
        assert!(r.is_internal());
        assert_eq!(r.reason(), "INTERNAL");
        assert_eq!(r.public_message(), "internal error; see the server log");
        let r = EnrollmentRefusal::Store(StoreError::Database(sqlx::Error::RowNotFound));
        assert!(r.is_internal());
        assert_eq!(r.reason(), "INTERNAL");
    }
}
