//! `tessera.v1.EnrollmentService`: help-desk enrollment of a YubiKey (docs/api.md). The checks
//! live in `enroll`; this file loads rows, calls them, issues through
//! `lifecycle::issue_certificate`, and records every change and every refusal in the audit log.
//!
//! Idempotency: each state-changing RPC answers a repeated request id with its first answer.
//! Answers that carry secrets (BeginEnrollment, ReleasePuk) are stored without them and the
//! secrets are unwrapped again from the token's credentials on a repeat, so no plaintext
//! management key or PUK is ever written to the database.

use super::authz::{Identity, authorize};
use super::certificate_service::Certificates;
use super::pb::{self, enrollment_service_server::EnrollmentService};
use super::status;
use super::token_service::Tokens;
use crate::attest::{FirmwareVersion, Policy, TrustAnchors};
use crate::audit::{self, Actor, Change};
use crate::ca::{HardwareModule, KeyProvenance, OnlineCa, SubjectParams};
use crate::enroll::{
    self, EnrollError, EnrollmentProfiles, LoadedEnrollment, ManagementKeyAlgorithm,
    ManagementKeySecret, SlotProof, TokenCredentials, Verifier,
};
use crate::lifecycle::{
    self, IssueParams, LifecycleError, RequestKey, RevocationReason, issue_certificate,
};
use crate::store::{
    EnrollmentRow, EnrollmentState, NewEnrollment, NewToken, PersonState, Store,
    TokenCredentialsRow, TokenRow, TokenState, WrappedCredentials, WriteTx, now_rfc3339,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Code, Request, Response, Status};
use zeroize::Zeroizing;

/// The `[enrollment]` section of the server configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentConfig {
    /// PEM (or DER) files of attestation roots to trust, besides Yubico's.
    #[serde(default)]
    pub attestation_roots: Vec<PathBuf>,
    /// Trust Yubico's attestation roots and intermediates (shipped with Tessera).
    #[serde(default = "yes")]
    pub trust_yubico_roots: bool,
    /// The attestation policy file; the shipped config/attestation-policy.toml without it.
    #[serde(default)]
    pub attestation_policy: Option<PathBuf>,
    /// CKA_LABEL of the HSM AES key that wraps per-token management keys and PUKs
    /// (`tessera admin init-wrapping-key` makes it).
    #[serde(default = "default_wrapping_key_label")]
    pub wrapping_key_label: String,
    /// An enrollment not confirmed this long after BeginEnrollment expires and its
    /// certificates are revoked.
    #[serde(default = "default_expiry_seconds")]
    pub expiry_seconds: u64,
    /// How often the server looks for expired enrollments (each call also checks its own).
    #[serde(default = "default_expiry_sweep_seconds")]
    pub expiry_sweep_seconds: u64,
    /// Enrollment profiles directory; the built-in profiles without it.
    #[serde(default)]
    pub profiles_dir: Option<PathBuf>,
}

fn yes() -> bool {
    true
}
fn default_wrapping_key_label() -> String {
    "tessera-wrap".into()
}
fn default_expiry_seconds() -> u64 {
    900
}
fn default_expiry_sweep_seconds() -> u64 {
    30
}

/// The shipped attestation policy.
const DEFAULT_ATTESTATION_POLICY: &str = include_str!("../../config/attestation-policy.toml");

/// Everything the enrollment service needs, checked at start-up.
pub struct EnrollmentSettings {
    pub trust: TrustAnchors,
    pub policy: Policy,
    pub wrapping_key_label: String,
    pub expiry: Duration,
    pub sweep: Duration,
    pub profiles: EnrollmentProfiles,
}

impl EnrollmentSettings {
    /// Reads roots, policy and profiles, and checks the wrapping key works; every problem is
    /// one message naming the setting.
    pub fn load(config: &EnrollmentConfig, ca: &OnlineCa) -> Result<EnrollmentSettings, String> {
        let mut trust = TrustAnchors::builder();
        if config.trust_yubico_roots {
            trust = trust
                .with_yubico_roots()
                .and_then(|t| t.with_yubico_intermediates())
                .map_err(|e| format!("Yubico attestation roots: {e}"))?;
        }
        for path in &config.attestation_roots {
            let bytes = std::fs::read(path).map_err(|e| {
                format!(
                    "enrollment.attestation_roots: cannot read {}: {e}",
                    path.display()
                )
            })?;
            trust = trust
                .with_anchors(&bytes, &path.display().to_string())
                .map_err(|e| format!("enrollment.attestation_roots: {e}"))?;
        }
        let trust = trust.build().map_err(|e| {
            format!("enrollment: {e} (set attestation_roots or trust_yubico_roots = true)")
        })?;
        let policy_text = match &config.attestation_policy {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "enrollment.attestation_policy: cannot read {}: {e}",
                    path.display()
                )
            })?,
            None => DEFAULT_ATTESTATION_POLICY.to_string(),
        };
        let policy = Policy::from_toml(&policy_text).map_err(|e| e.to_string())?;
        let profiles = match &config.profiles_dir {
            Some(dir) => EnrollmentProfiles::load_dir(dir).map_err(|e| e.to_string())?,
            None => EnrollmentProfiles::built_in(),
        };
        profiles
            .check_certificate_profiles(&ca.profiles.names())
            .map_err(|e| e.to_string())?;
        if config.expiry_seconds == 0 || config.expiry_sweep_seconds == 0 {
            return Err(
                "enrollment.expiry_seconds and expiry_sweep_seconds must be at least 1".into(),
            );
        }
        ca.hsm
            .wrap_secret(&config.wrapping_key_label, b"tessera wrapping key check")
            .map_err(|e| {
                format!(
                    "enrollment.wrapping_key_label {:?}: {e}; make the key with `tessera admin init-wrapping-key`",
                    config.wrapping_key_label
                )
            })?;
        Ok(EnrollmentSettings {
            trust,
            policy,
            wrapping_key_label: config.wrapping_key_label.clone(),
            expiry: Duration::from_secs(config.expiry_seconds),
            sweep: Duration::from_secs(config.expiry_sweep_seconds),
            profiles,
        })
    }
}

pub struct Enrollments {
    pub store: Store,
    /// Both present when the server has `[ca]` and `[enrollment]`.
    pub configured: Option<(Arc<OnlineCa>, Arc<EnrollmentSettings>)>,
}

fn method(name: &str) -> String {
    format!("/tessera.v1.EnrollmentService/{name}")
}

/// A refusal (audited in its own transaction, the request's changes rolled back) or an error.
enum Failure {
    Refused {
        status: Status,
        subject: String,
        reason: String,
    },
    Error(Status),
}

impl<E: Into<Status>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Error(e.into())
    }
}

fn refused(subject: impl Into<String>, status: Status) -> Failure {
    let reason = status_reason(&status);
    Failure::Refused {
        status,
        subject: subject.into(),
        reason,
    }
}

fn status_reason(s: &Status) -> String {
    use tonic_types::StatusExt;
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

fn enroll_status(e: &EnrollError) -> Status {
    let code = match e {
        EnrollError::ProfileInvalid { .. } | EnrollError::StoredPlanInvalid(_) => {
            return status::internal(e);
        }
        EnrollError::NonceAlreadyUsed(_)
        | EnrollError::NotCompleted(_)
        | EnrollError::Expired(_)
        | EnrollError::Aborted(_)
        | EnrollError::AlreadyConfirmed(_)
        | EnrollError::PolicyDenied { .. } => Code::FailedPrecondition,
        _ => Code::InvalidArgument,
    };
    let mut metadata = HashMap::new();
    if let Some(slot) = e.slot() {
        metadata.insert("slot".to_string(), slot.to_string());
    }
    match e {
        EnrollError::PolicyDenied { codes, .. } => {
            metadata.insert("policy_reasons".to_string(), codes.clone());
        }
        EnrollError::AttestationInvalid { code, .. } => {
            metadata.insert("attestation_code".to_string(), code.to_string());
        }
        _ => {}
    }
    let field = e.slot().map(|_| "proofs");
    status::with_metadata(code, e.reason(), &e.to_string(), field, metadata)
}

fn precondition(reason: &str, message: &str) -> Status {
    status::with_metadata(
        Code::FailedPrecondition,
        reason,
        message,
        None,
        HashMap::new(),
    )
}

fn not_configured() -> Status {
    precondition(
        "ENROLLMENT_NOT_CONFIGURED",
        "enrollment is not configured on this server; add the [ca] and [enrollment] sections",
    )
}

fn required(field: &str, value: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        Err(status::invalid_argument(
            field,
            "FIELD_REQUIRED",
            &format!("{field} is empty"),
        ))
    } else {
        Ok(())
    }
}

fn algorithm_to_pb(a: ManagementKeyAlgorithm) -> pb::ManagementKeyAlgorithm {
    match a {
        ManagementKeyAlgorithm::TripleDes => pb::ManagementKeyAlgorithm::TripleDes,
        ManagementKeyAlgorithm::Aes128 => pb::ManagementKeyAlgorithm::Aes128,
        ManagementKeyAlgorithm::Aes192 => pb::ManagementKeyAlgorithm::Aes192,
        ManagementKeyAlgorithm::Aes256 => pb::ManagementKeyAlgorithm::Aes256,
    }
}

fn key_to_pb(k: &ManagementKeySecret) -> pb::ManagementKey {
    pb::ManagementKey {
        algorithm: algorithm_to_pb(k.algorithm) as i32,
        key: k.key.to_vec(),
    }
}

fn state_to_pb(s: EnrollmentState) -> pb::EnrollmentState {
    match s {
        EnrollmentState::Begun => pb::EnrollmentState::Begun,
        EnrollmentState::Completed => pb::EnrollmentState::Completed,
        EnrollmentState::Confirmed => pb::EnrollmentState::Confirmed,
        EnrollmentState::Aborted => pb::EnrollmentState::Aborted,
        EnrollmentState::Expired => pb::EnrollmentState::Expired,
    }
}

fn rfc3339_after(d: Duration) -> String {
    (time::OffsetDateTime::now_utc() + d)
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Enrollments {
    fn configured(&self) -> Result<(&Arc<OnlineCa>, &Arc<EnrollmentSettings>), Status> {
        self.configured
            .as_ref()
            .map(|(ca, s)| (ca, s))
            .ok_or_else(not_configured)
    }

    async fn wrap(&self, secret: &[u8]) -> Result<Vec<u8>, Status> {
        let (ca, settings) = self.configured()?;
        let (hsm, label) = (ca.hsm.clone(), settings.wrapping_key_label.clone());
        let secret = Zeroizing::new(secret.to_vec());
        tokio::task::spawn_blocking(move || hsm.wrap_secret(&label, &secret))
            .await
            .map_err(|e| status::internal(&e))?
            .map_err(|e| status::internal(&e))
    }

    async fn unwrap(&self, label: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, Status> {
        let (ca, _) = self.configured()?;
        let (hsm, label, blob) = (ca.hsm.clone(), label.to_string(), blob.to_vec());
        tokio::task::spawn_blocking(move || hsm.unwrap_secret(&label, &blob))
            .await
            .map_err(|e| status::internal(&e))?
            .map_err(|e| status::internal(&e))
    }

    async fn wrap_credentials(&self, c: &TokenCredentials) -> Result<WrappedCredentials, Status> {
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
    ) -> Result<TokenCredentials, Status> {
        let algorithm =
            ManagementKeyAlgorithm::parse(&w.management_key_algorithm).ok_or_else(|| {
                status::internal(&crate::store::StoreError::BadStoredValue {
                    column: "token_credentials.management_key_algorithm",
                    value: w.management_key_algorithm.clone(),
                })
            })?;
        let key = self.unwrap(label, &w.management_key_wrapped).await?;
        let puk = self.unwrap(label, &w.puk_wrapped).await?;
        let puk = Zeroizing::new(String::from_utf8_lossy(&puk).into_owned());
        Ok(TokenCredentials {
            management_key: ManagementKeySecret { algorithm, key },
            puk,
        })
    }

    /// Commits a refusal's audit event in a fresh transaction and returns its status.
    async fn record_refusal(
        &self,
        actor: &Actor,
        operation: &str,
        request_id: &str,
        failure: Failure,
    ) -> Status {
        match failure {
            Failure::Error(s) => s,
            Failure::Refused {
                status,
                subject,
                reason,
            } => {
                let result: Result<(), Status> = async {
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
                                "reason": reason,
                                "message": status.message(),
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
                    Ok(()) => status,
                    Err(e) => e,
                }
            }
        }
    }

    /// Expires open enrollments past their time (all of them, or only `only`): revokes their
    /// certificates and records `enrollment.expire` as the server.
    pub async fn expire_due(&self, only: Option<&str>) -> Result<Vec<String>, Status> {
        let now = now_rfc3339();
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
            None => self.store.enrollments_expired_at(&now).await?,
        };
        let mut expired = Vec::new();
        for id in due {
            let mut tx = self.store.begin_write().await?;
            let Some(row) = tx.enrollment_by_public_id(&id).await? else {
                continue;
            };
            let loaded = LoadedEnrollment::load(row).map_err(|e| status::internal(&e))?;
            if !loaded.is_due_to_expire(&now_rfc3339()) {
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

    async fn begin_in(
        &self,
        tx: &mut WriteTx,
        identity: &Identity,
        req: &pb::BeginEnrollmentRequest,
    ) -> Result<(pb::BeginEnrollmentResponse, pb::BeginEnrollmentResponse), Failure> {
        let (_, settings) = self.configured()?;
        let actor = identity.actor();
        let person = tx
            .person_by_external_id(&req.person_external_id)
            .await?
            .ok_or_else(|| LifecycleError::PersonNotFound(req.person_external_id.clone()))?;
        if person.state != PersonState::Active {
            return Err(refused(
                format!("person:{}", person.external_id),
                precondition(
                    "PERSON_NOT_ACTIVE",
                    &format!(
                        "person {} is {}; only an active person can be enrolled",
                        person.external_id,
                        person.state.as_str()
                    ),
                ),
            ));
        }
        let Some(profile) = settings.profiles.get(&req.profile) else {
            return Err(refused(
                format!("person:{}", person.external_id),
                status::invalid_argument(
                    "profile",
                    "ENROLLMENT_PROFILE_UNKNOWN",
                    &format!(
                        "unknown enrollment profile {:?}; known profiles: {}",
                        req.profile,
                        settings.profiles.names().join(", ")
                    ),
                ),
            ));
        };
        let firmware: FirmwareVersion = req.firmware.parse().map_err(|_| {
            status::invalid_argument(
                "firmware",
                "FIRMWARE_INVALID",
                &format!("firmware {:?} is not major.minor.patch", req.firmware),
            )
        })?;
        let token_subject = format!("token:{}", req.token_serial);
        let existing = tx.token_by_serial(&req.token_serial).await?;
        if let Some(t) = &existing {
            if matches!(
                t.state,
                TokenState::Lost | TokenState::Damaged | TokenState::Retired
            ) {
                return Err(refused(
                    token_subject,
                    precondition(
                        "TOKEN_NOT_ENROLLABLE",
                        &format!(
                            "token {} is {}; a lost, damaged or retired token is never enrolled again",
                            t.serial,
                            t.state.as_str()
                        ),
                    ),
                ));
            }
            if t.person_id.is_some_and(|p| p != person.id)
                && matches!(t.state, TokenState::Active | TokenState::Suspended)
            {
                return Err(refused(
                    token_subject,
                    precondition(
                        "TOKEN_HELD_BY_ANOTHER_PERSON",
                        &format!(
                            "token {} is {} for another person; retire it first",
                            t.serial,
                            t.state.as_str()
                        ),
                    ),
                ));
            }
        }
        // Checks done; changes follow.
        let token = match existing {
            None => {
                let row = tx
                    .insert_token(&NewToken {
                        serial: req.token_serial.clone(),
                        model: req.model.clone(),
                        firmware: req.firmware.clone(),
                        form_factor: String::new(),
                        state: TokenState::Enrolling,
                        person_id: Some(person.id),
                    })
                    .await?;
                record(
                    tx,
                    &actor,
                    "token.register",
                    &token_subject,
                    None,
                    Some(json(&row)),
                    &req.request_id,
                )
                .await?;
                row
            }
            Some(before) => {
                tx.update_token_hardware(before.id, &req.model, &req.firmware, &before.form_factor)
                    .await?;
                let mut after = before.clone();
                after.state = TokenState::Enrolling;
                after.person_id = Some(person.id);
                let row = tx.update_token(&after).await?;
                record(
                    tx,
                    &actor,
                    "token.enroll",
                    &token_subject,
                    Some(json(&before)),
                    Some(json(&row)),
                    &req.request_id,
                )
                .await?;
                row
            }
        };
        let now = now_rfc3339();
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
                    &actor,
                    &req.request_id,
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
                    .map_err(|e| status::internal(&e))?,
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
            enroll::credentials::new_enrollment_id().map_err(|e| status::internal(&e))?;
        let nonce = enroll::credentials::new_nonce().map_err(|e| status::internal(&e))?;
        let enrollment = tx
            .insert_enrollment(&NewEnrollment {
                public_id: public_id.clone(),
                person_id: person.id,
                token_id: token.id,
                profile: profile.name.clone(),
                nonce: nonce.to_vec(),
                plan_json: enroll::plan::plan_to_json(&profile.slots),
                firmware: req.firmware.clone(),
                expires_at: rfc3339_after(settings.expiry),
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
            &actor,
            "enrollment.begin",
            &format!("enrollment:{public_id}"),
            None,
            Some(after),
            &req.request_id,
        )
        .await?;

        let redacted = pb::BeginEnrollmentResponse {
            enrollment_id: public_id,
            nonce: nonce.to_vec(),
            slots: profile
                .slots
                .iter()
                .map(|s| {
                    let t = s.to_text();
                    pb::SlotPlan {
                        slot: t.slot,
                        algorithm: t.algorithm,
                        pin_policy: t.pin_policy,
                        touch_policy: t.touch_policy,
                        certificate_profile: t.certificate_profile,
                    }
                })
                .collect(),
            current_management_key: current.as_ref().map(|c| pb::ManagementKey {
                algorithm: algorithm_to_pb(c.management_key.algorithm) as i32,
                key: Vec::new(),
            }),
            new_management_key: Some(pb::ManagementKey {
                algorithm: algorithm_to_pb(new.management_key.algorithm) as i32,
                key: Vec::new(),
            }),
            new_puk: String::new(),
            expires_at: enrollment.expires_at.clone(),
            person_display_name: person.display_name.clone(),
            person_upn: person.upn.clone(),
        };
        let mut full = redacted.clone();
        fill_secrets(&mut full, current.as_ref(), &new);
        Ok((full, redacted))
    }

    /// A repeated BeginEnrollment: the stored answer with its secrets unwrapped again, while
    /// the enrollment is still open.
    async fn begin_replay(&self, bytes: &[u8]) -> Result<pb::BeginEnrollmentResponse, Status> {
        let mut response: pb::BeginEnrollmentResponse =
            prost::Message::decode(bytes).map_err(|e| status::internal(&e))?;
        let row = self
            .store
            .enrollment_by_public_id(&response.enrollment_id)
            .await?
            .ok_or_else(|| {
                status::internal(&EnrollError::StoredPlanInvalid(
                    "enrollment vanished".into(),
                ))
            })?;
        let loaded = LoadedEnrollment::load(row).map_err(|e| status::internal(&e))?;
        if let LoadedEnrollment::Closed(r) = &loaded {
            return Err(enroll_status(&EnrollError::closed(r)));
        }
        let mut tx = self.store.begin_write().await?;
        let credentials = tx.token_credentials(loaded.row().token_id).await?;
        drop(tx);
        let Some(c) = credentials else {
            return Err(not_configured());
        };
        let new = match &c.pending {
            Some(w) => self.unwrap_credentials(&c.wrapping_key_label, w).await?,
            None => return Err(enroll_status(&EnrollError::closed(loaded.row()))),
        };
        let current = match (&response.current_management_key, &c.confirmed) {
            (Some(_), Some(w)) => Some(self.unwrap_credentials(&c.wrapping_key_label, w).await?),
            _ => None,
        };
        fill_secrets(&mut response, current.as_ref(), &new);
        Ok(response)
    }

    async fn complete(
        &self,
        identity: &Identity,
        req: &pb::CompleteEnrollmentRequest,
        key: &RequestKey,
    ) -> Result<pb::CompleteEnrollmentResponse, Failure> {
        let (ca, settings) = self.configured()?;
        let actor = identity.actor();
        let subject = format!("enrollment:{}", req.enrollment_id);
        let mut tx = self.store.begin_write().await?;
        if let Some(bytes) = lifecycle::replay(&mut tx, key).await? {
            return prost::Message::decode(bytes.as_slice())
                .map_err(|e| Failure::Error(status::internal(&e)));
        }
        let row = enrollment_or_not_found(&mut tx, &req.enrollment_id).await?;
        let begun = LoadedEnrollment::load(row)
            .map_err(|e| status::internal(&e))?
            .into_begun()
            .map_err(|e| refused(subject.clone(), enroll_status(&e)))?;
        let person = person_of(&mut tx, begun.row().person_id).await?;
        if person.state != PersonState::Active {
            return Err(refused(
                subject,
                precondition(
                    "PERSON_NOT_ACTIVE",
                    &format!(
                        "person {} is {}; only an active person can be enrolled",
                        person.external_id,
                        person.state.as_str()
                    ),
                ),
            ));
        }
        let token = token_of(&mut tx, begun.row().token_id).await?;
        if token.state != TokenState::Enrolling {
            return Err(refused(subject, token_not_enrolling(&token)));
        }
        let serial: u32 = token.serial.parse().map_err(|_| {
            refused(
                subject.clone(),
                status::invalid_argument(
                    "token_serial",
                    "TOKEN_SERIAL_INVALID",
                    "the token serial is not a decimal number",
                ),
            )
        })?;
        let proofs: Vec<SlotProof> = req
            .proofs
            .iter()
            .map(|p| SlotProof {
                slot: p.slot.clone(),
                attestation_certificate: p.attestation_certificate.clone(),
                signature: p.signature.clone(),
            })
            .collect();
        let verified = begun
            .verify(
                serial,
                &req.attestation_intermediate,
                &proofs,
                &Verifier {
                    trust: &settings.trust,
                    policy: &settings.policy,
                },
            )
            .map_err(|e| refused(subject.clone(), enroll_status(&e)))?;
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
                enroll_status(&EnrollError::NonceAlreadyUsed(enrollment.public_id.clone())),
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
            &actor,
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
            &req.request_id,
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
                ca,
                IssueParams {
                    subject: subject_params,
                    public_key_der: slot.public_key_der.clone(),
                    profile: slot.plan.certificate_profile.clone(),
                    provenance: KeyProvenance::HardwareAttested,
                    person_id: Some(person.id),
                    token_id: Some(token.id),
                },
                &actor,
                &req.request_id,
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
                        &req.request_id,
                        &enrollment,
                        EnrollmentState::Aborted,
                        RevocationReason::CessationOfOperation,
                        "enrollment.abort",
                        Some("certificate issuance failed"),
                    )
                    .await?;
                    tx.commit().await?;
                    return Err(Failure::Error(status::with_metadata(
                        Code::Internal,
                        "ISSUANCE_FAILED",
                        &format!(
                            "issuing the certificate for slot {slot_name} failed: {e}; the enrollment was aborted, begin a new one"
                        ),
                        None,
                        HashMap::new(),
                    )));
                }
            }
        }
        let converter = Certificates {
            store: self.store.clone(),
            ca: None,
        };
        let mut response = pb::CompleteEnrollmentResponse::default();
        for (slot, row) in certificates {
            response.certificates.push(pb::SlotCertificate {
                slot,
                certificate: Some(converter.to_pb(row).await?),
            });
        }
        let mut tx = self.store.begin_write().await?;
        lifecycle::remember(&mut tx, key, prost::Message::encode_to_vec(&response)).await?;
        tx.commit().await?;
        Ok(response)
    }

    async fn confirm_in(
        &self,
        tx: &mut WriteTx,
        identity: &Identity,
        req: &pb::ConfirmEnrollmentRequest,
    ) -> Result<pb::ConfirmEnrollmentResponse, Failure> {
        let actor = identity.actor();
        let subject = format!("enrollment:{}", req.enrollment_id);
        let row = enrollment_or_not_found(tx, &req.enrollment_id).await?;
        let completed = LoadedEnrollment::load(row)
            .map_err(|e| status::internal(&e))?
            .into_completed()
            .map_err(|e| refused(subject.clone(), enroll_status(&e)))?;
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
            return Err(Failure::Error(status::internal(
                &EnrollError::StoredPlanInvalid(
                    "the enrollment changed state during confirmation".into(),
                ),
            )));
        }
        record(
            tx,
            &actor,
            "enrollment.confirm",
            &subject,
            None,
            None,
            &req.request_id,
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
                    crate::store::CertificateStatus::Good | crate::store::CertificateStatus::OnHold
                )
            {
                lifecycle::revoke_certificate(
                    tx,
                    &actor,
                    &req.request_id,
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
            &actor,
            "token.activate",
            &format!("token:{}", token.serial),
            Some(json(&before)),
            Some(json(&token)),
            &req.request_id,
        )
        .await?;
        if let Some(mut c) = tx.token_credentials(token.id).await?
            && let Some(pending) = c.pending.take()
        {
            c.confirmed = Some(pending);
            tx.put_token_credentials(&c).await?;
        }
        let tokens = Tokens {
            store: self.store.clone(),
        };
        Ok(pb::ConfirmEnrollmentResponse {
            token: Some(tokens.token_to_pb(token).await?),
        })
    }

    async fn abort_in(
        &self,
        tx: &mut WriteTx,
        identity: &Identity,
        req: &pb::AbortEnrollmentRequest,
    ) -> Result<pb::AbortEnrollmentResponse, Failure> {
        let subject = format!("enrollment:{}", req.enrollment_id);
        if req.reason.len() > 1024 {
            return Err(Failure::Error(status::invalid_argument(
                "reason",
                "FIELD_TOO_LONG",
                "reason exceeds 1024 bytes",
            )));
        }
        let row = enrollment_or_not_found(tx, &req.enrollment_id).await?;
        let loaded = LoadedEnrollment::load(row).map_err(|e| status::internal(&e))?;
        if let LoadedEnrollment::Closed(r) = &loaded {
            return Err(refused(subject, enroll_status(&EnrollError::closed(r))));
        }
        let row = loaded.row().clone();
        close_enrollment(
            tx,
            &identity.actor(),
            &req.request_id,
            &row,
            EnrollmentState::Aborted,
            RevocationReason::CessationOfOperation,
            "enrollment.abort",
            Some(req.reason.as_str()).filter(|r| !r.is_empty()),
        )
        .await?;
        let row = enrollment_or_not_found(tx, &req.enrollment_id).await?;
        Ok(pb::AbortEnrollmentResponse {
            enrollment: Some(self.enrollment_to_pb(tx, row).await?),
        })
    }

    async fn enrollment_to_pb(
        &self,
        tx: &mut WriteTx,
        row: EnrollmentRow,
    ) -> Result<pb::Enrollment, Status> {
        let person = person_of(tx, row.person_id).await?;
        let token = token_of(tx, row.token_id).await?;
        let converter = Certificates {
            store: self.store.clone(),
            ca: None,
        };
        let mut certificates = Vec::new();
        for c in tx.enrollment_certificates(row.id).await? {
            if let Some(cert) = tx.certificate_by_serial(&c.serial).await? {
                certificates.push(pb::SlotCertificate {
                    slot: c.slot,
                    certificate: Some(converter.to_pb(cert).await?),
                });
            }
        }
        Ok(pb::Enrollment {
            enrollment_id: row.public_id,
            state: state_to_pb(row.state) as i32,
            person_external_id: person.external_id,
            token_serial: token.serial,
            profile: row.profile,
            expires_at: row.expires_at,
            certificates,
        })
    }

    async fn release_puk_in(
        &self,
        tx: &mut WriteTx,
        identity: &Identity,
        req: &pb::ReleasePukRequest,
    ) -> Result<(pb::ReleasePukResponse, pb::ReleasePukResponse), Failure> {
        let subject = format!("token:{}", req.token_serial);
        if req.reason.len() > 1024 {
            return Err(Failure::Error(status::invalid_argument(
                "reason",
                "FIELD_TOO_LONG",
                "reason exceeds 1024 bytes",
            )));
        }
        let token = tx
            .token_by_serial(&req.token_serial)
            .await?
            .ok_or_else(|| LifecycleError::TokenNotFound(req.token_serial.clone()))?;
        if token.state != TokenState::Active {
            return Err(refused(
                subject,
                precondition(
                    "TOKEN_NOT_ACTIVE",
                    &format!(
                        "token {} is {}; the PUK is released only for an active token",
                        token.serial,
                        token.state.as_str()
                    ),
                ),
            ));
        }
        let credentials = tx.token_credentials(token.id).await?;
        let Some((label, wrapped)) =
            credentials.and_then(|c| c.confirmed.map(|w| (c.wrapping_key_label, w)))
        else {
            return Err(refused(
                subject,
                precondition(
                    "CREDENTIALS_NOT_HELD",
                    &format!(
                        "Tessera holds no PUK for token {}; it was not enrolled by this server",
                        token.serial
                    ),
                ),
            ));
        };
        let c = self.unwrap_credentials(&label, &wrapped).await?;
        let mut after = serde_json::json!({ "released": "puk" });
        if !req.reason.is_empty() {
            after["reason"] = req.reason.clone().into();
        }
        record(
            tx,
            &identity.actor(),
            "token.release_puk",
            &subject,
            None,
            Some(after),
            &req.request_id,
        )
        .await?;
        let redacted = pb::ReleasePukResponse {
            puk: String::new(),
            management_key: Some(pb::ManagementKey {
                algorithm: algorithm_to_pb(c.management_key.algorithm) as i32,
                key: Vec::new(),
            }),
        };
        let full = pb::ReleasePukResponse {
            puk: c.puk.to_string(),
            management_key: Some(key_to_pb(&c.management_key)),
        };
        Ok((full, redacted))
    }

    async fn release_puk_replay(
        &self,
        req: &pb::ReleasePukRequest,
    ) -> Result<pb::ReleasePukResponse, Status> {
        let mut tx = self.store.begin_write().await?;
        let token = tx
            .token_by_serial(&req.token_serial)
            .await?
            .ok_or_else(|| LifecycleError::TokenNotFound(req.token_serial.clone()))?;
        let credentials = tx.token_credentials(token.id).await?;
        drop(tx);
        let Some((label, wrapped)) =
            credentials.and_then(|c| c.confirmed.map(|w| (c.wrapping_key_label, w)))
        else {
            return Err(precondition(
                "CREDENTIALS_NOT_HELD",
                "Tessera no longer holds a PUK for this token",
            ));
        };
        let c = self.unwrap_credentials(&label, &wrapped).await?;
        Ok(pb::ReleasePukResponse {
            puk: c.puk.to_string(),
            management_key: Some(key_to_pb(&c.management_key)),
        })
    }
}

/// A token that left `enrolling` while its enrollment was open (marked lost, damaged or
/// retired by the help desk) gets nothing more from that enrollment.
fn token_not_enrolling(token: &TokenRow) -> Status {
    precondition(
        "TOKEN_NOT_ENROLLABLE",
        &format!(
            "token {} is {}; its enrollment cannot go on",
            token.serial,
            token.state.as_str()
        ),
    )
}

fn fill_secrets(
    response: &mut pb::BeginEnrollmentResponse,
    current: Option<&TokenCredentials>,
    new: &TokenCredentials,
) {
    response.current_management_key = current.map(|c| key_to_pb(&c.management_key));
    response.new_management_key = Some(key_to_pb(&new.management_key));
    response.new_puk = new.puk.to_string();
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

fn enrollment_not_found(public_id: &str) -> Status {
    status::with_metadata(
        Code::NotFound,
        "ENROLLMENT_NOT_FOUND",
        &format!("no enrollment {public_id:?}"),
        Some("enrollment_id"),
        HashMap::new(),
    )
}

async fn enrollment_or_not_found(
    tx: &mut WriteTx,
    public_id: &str,
) -> Result<EnrollmentRow, Status> {
    tx.enrollment_by_public_id(public_id)
        .await?
        .ok_or_else(|| enrollment_not_found(public_id))
}

async fn person_of(tx: &mut WriteTx, id: i64) -> Result<crate::store::PersonRow, Status> {
    tx.person_by_id(id).await?.ok_or_else(|| {
        status::internal(&crate::store::StoreError::Database(
            sqlx::Error::RowNotFound,
        ))
    })
}

async fn token_of(tx: &mut WriteTx, id: i64) -> Result<TokenRow, Status> {
    tx.token_by_id(id).await?.ok_or_else(|| {
        status::internal(&crate::store::StoreError::Database(
            sqlx::Error::RowNotFound,
        ))
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
) -> Result<(), Status> {
    if !tx.move_enrollment_state(row.id, row.state, to).await? {
        return Ok(());
    }
    let mut revoked = Vec::new();
    for c in tx.enrollment_certificates(row.id).await? {
        if let Some(cert) = tx.certificate_by_serial(&c.serial).await?
            && matches!(
                cert.status,
                crate::store::CertificateStatus::Good | crate::store::CertificateStatus::OnHold
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
    .await?;
    Ok(())
}

#[tonic::async_trait]
impl EnrollmentService for Enrollments {
    async fn begin_enrollment(
        &self,
        request: Request<pb::BeginEnrollmentRequest>,
    ) -> Result<Response<pb::BeginEnrollmentResponse>, Status> {
        let identity = authorize(&request, &method("BeginEnrollment"))?;
        let req = request.into_inner();
        let key = RequestKey::new(
            &req.request_id,
            "BeginEnrollment",
            &prost::Message::encode_to_vec(&req),
        )?;
        self.configured()?;
        required("person_external_id", &req.person_external_id)?;
        required("profile", &req.profile)?;
        if req.token_serial.is_empty()
            || !req.token_serial.bytes().all(|b| b.is_ascii_digit())
            || req.token_serial.parse::<u32>().is_err()
        {
            return Err(status::invalid_argument(
                "token_serial",
                "TOKEN_SERIAL_INVALID",
                "token_serial must be the token's decimal serial number",
            ));
        }
        let mut tx = self.store.begin_write().await?;
        if let Some(bytes) = lifecycle::replay(&mut tx, &key).await? {
            drop(tx);
            return self.begin_replay(&bytes).await.map(Response::new);
        }
        match self.begin_in(&mut tx, &identity, &req).await {
            Ok((full, redacted)) => {
                lifecycle::remember(&mut tx, &key, prost::Message::encode_to_vec(&redacted))
                    .await?;
                tx.commit().await?;
                Ok(Response::new(full))
            }
            Err(f) => {
                drop(tx);
                Err(self
                    .record_refusal(&identity.actor(), "BeginEnrollment", &req.request_id, f)
                    .await)
            }
        }
    }

    async fn complete_enrollment(
        &self,
        request: Request<pb::CompleteEnrollmentRequest>,
    ) -> Result<Response<pb::CompleteEnrollmentResponse>, Status> {
        let identity = authorize(&request, &method("CompleteEnrollment"))?;
        let req = request.into_inner();
        let key = RequestKey::new(
            &req.request_id,
            "CompleteEnrollment",
            &prost::Message::encode_to_vec(&req),
        )?;
        self.configured()?;
        required("enrollment_id", &req.enrollment_id)?;
        self.expire_due(Some(&req.enrollment_id)).await?;
        match self.complete(&identity, &req, &key).await {
            Ok(r) => Ok(Response::new(r)),
            Err(f) => Err(self
                .record_refusal(&identity.actor(), "CompleteEnrollment", &req.request_id, f)
                .await),
        }
    }

    async fn confirm_enrollment(
        &self,
        request: Request<pb::ConfirmEnrollmentRequest>,
    ) -> Result<Response<pb::ConfirmEnrollmentResponse>, Status> {
        let identity = authorize(&request, &method("ConfirmEnrollment"))?;
        let req = request.into_inner();
        let key = RequestKey::new(
            &req.request_id,
            "ConfirmEnrollment",
            &prost::Message::encode_to_vec(&req),
        )?;
        self.configured()?;
        required("enrollment_id", &req.enrollment_id)?;
        self.expire_due(Some(&req.enrollment_id)).await?;
        let mut tx = self.store.begin_write().await?;
        if let Some(bytes) = lifecycle::replay(&mut tx, &key).await? {
            return prost::Message::decode(bytes.as_slice())
                .map(Response::new)
                .map_err(|e| status::internal(&e));
        }
        match self.confirm_in(&mut tx, &identity, &req).await {
            Ok(r) => {
                lifecycle::remember(&mut tx, &key, prost::Message::encode_to_vec(&r)).await?;
                tx.commit().await?;
                Ok(Response::new(r))
            }
            Err(f) => {
                drop(tx);
                Err(self
                    .record_refusal(&identity.actor(), "ConfirmEnrollment", &req.request_id, f)
                    .await)
            }
        }
    }

    async fn abort_enrollment(
        &self,
        request: Request<pb::AbortEnrollmentRequest>,
    ) -> Result<Response<pb::AbortEnrollmentResponse>, Status> {
        let identity = authorize(&request, &method("AbortEnrollment"))?;
        let req = request.into_inner();
        let key = RequestKey::new(
            &req.request_id,
            "AbortEnrollment",
            &prost::Message::encode_to_vec(&req),
        )?;
        self.configured()?;
        required("enrollment_id", &req.enrollment_id)?;
        self.expire_due(Some(&req.enrollment_id)).await?;
        let mut tx = self.store.begin_write().await?;
        if let Some(bytes) = lifecycle::replay(&mut tx, &key).await? {
            return prost::Message::decode(bytes.as_slice())
                .map(Response::new)
                .map_err(|e| status::internal(&e));
        }
        match self.abort_in(&mut tx, &identity, &req).await {
            Ok(r) => {
                lifecycle::remember(&mut tx, &key, prost::Message::encode_to_vec(&r)).await?;
                tx.commit().await?;
                Ok(Response::new(r))
            }
            Err(f) => {
                drop(tx);
                Err(self
                    .record_refusal(&identity.actor(), "AbortEnrollment", &req.request_id, f)
                    .await)
            }
        }
    }

    async fn get_enrollment(
        &self,
        request: Request<pb::GetEnrollmentRequest>,
    ) -> Result<Response<pb::GetEnrollmentResponse>, Status> {
        authorize(&request, &method("GetEnrollment"))?;
        let req = request.into_inner();
        self.configured()?;
        required("enrollment_id", &req.enrollment_id)?;
        self.expire_due(Some(&req.enrollment_id)).await?;
        let row = self
            .store
            .enrollment_by_public_id(&req.enrollment_id)
            .await?
            .ok_or_else(|| enrollment_not_found(&req.enrollment_id))?;
        let converter = Certificates {
            store: self.store.clone(),
            ca: None,
        };
        let mut certificates = Vec::new();
        for c in self.store.enrollment_certificates(row.id).await? {
            if let Some(cert) = self.store.certificate_by_serial(&c.serial).await? {
                certificates.push(pb::SlotCertificate {
                    slot: c.slot,
                    certificate: Some(converter.to_pb(cert).await?),
                });
            }
        }
        Ok(Response::new(pb::GetEnrollmentResponse {
            enrollment: Some(pb::Enrollment {
                enrollment_id: row.public_id,
                state: state_to_pb(row.state) as i32,
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
                profile: row.profile,
                expires_at: row.expires_at,
                certificates,
            }),
        }))
    }

    async fn release_puk(
        &self,
        request: Request<pb::ReleasePukRequest>,
    ) -> Result<Response<pb::ReleasePukResponse>, Status> {
        let identity = authorize(&request, &method("ReleasePuk"))?;
        let req = request.into_inner();
        let key = RequestKey::new(
            &req.request_id,
            "ReleasePuk",
            &prost::Message::encode_to_vec(&req),
        )?;
        self.configured()?;
        required("token_serial", &req.token_serial)?;
        let mut tx = self.store.begin_write().await?;
        if let Some(_bytes) = lifecycle::replay(&mut tx, &key).await? {
            drop(tx);
            return self.release_puk_replay(&req).await.map(Response::new);
        }
        match self.release_puk_in(&mut tx, &identity, &req).await {
            Ok((full, redacted)) => {
                lifecycle::remember(&mut tx, &key, prost::Message::encode_to_vec(&redacted))
                    .await?;
                tx.commit().await?;
                Ok(Response::new(full))
            }
            Err(f) => {
                drop(tx);
                Err(self
                    .record_refusal(&identity.actor(), "ReleasePuk", &req.request_id, f)
                    .await)
            }
        }
    }
}
