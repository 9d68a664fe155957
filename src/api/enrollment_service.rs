//! `tessera.v1.EnrollmentService`: help-desk enrollment of a YubiKey (docs/api.md). Each RPC
//! is authorized here, its request checked for presence and shape, translated to a call on
//! [`EnrollmentDesk`] (`enroll::desk`: the steps, credential wrapping, audit events and
//! refusals), and the answer translated back; [`refusal_status`] maps every
//! [`EnrollmentRefusal`] to a gRPC status.
//!
//! Idempotency: each state-changing RPC answers a repeated request id of the same client
//! certificate with its first answer ([`Enrollments::once`]); another certificate's repeat is
//! refused (and audited). Answers that carry secrets (BeginEnrollment, ReleasePuk) are stored
//! without them, so no plaintext management key or PUK is ever written to the database; their
//! repeats are releases of their own ([`Enrollments::repeat`], `enroll::desk` `repeat.rs`):
//! checked again as a first call, audited, and answered only for `secret_replay_minutes`. A
//! ReleasePuk that waits for its approval (dual control) commits its request but is not kept as
//! an answer (`Failure::Committed`): the same request id then collects the approved release.

use super::authz::{Identity, Role, authorize};
use super::certificate_service::Certificates;
use super::pb::{self, enrollment_service_server::EnrollmentService};
use super::status;
use super::token_service::Tokens;
use crate::enroll::{
    BeginRequest, BegunEnrollment, BegunRenewal, Caller, CompleteRequest, Completion, DeskFailure,
    EnrollError, EnrollmentDesk, EnrollmentRefusal, EnrollmentView, ManagementKeyAlgorithm,
    ManagementKeySecret, PukRelease, PukReleaseView, PukRotation, RENEWAL_SLOTS_MAX,
    RenewalRequest, SecretRepeat, SlotProof, TokenCredentials,
};
use crate::lifecycle::{self, LifecycleError, RequestKey};
use crate::store::{
    CertificateRow, EnrollmentKind, EnrollmentState, IdempotencyRow, PukReleaseState, Store,
    WriteTx,
};
use std::future::Future;
use tonic::{Code, Request, Response, Status};

pub struct Enrollments {
    pub store: Store,
    /// Present when the server has `[ca]` and `[enrollment]`.
    pub desk: Option<EnrollmentDesk>,
}

fn method(name: &str) -> String {
    format!("/tessera.v1.EnrollmentService/{name}")
}

/// An enrollment refusal or error as gRPC status: code, stable reason, field at fault and
/// `ErrorInfo` metadata; internal errors are logged and answered without detail.
pub(super) fn refusal_status(e: EnrollmentRefusal) -> Status {
    use EnrollmentRefusal as R;
    let e = match e {
        R::Lifecycle(l) => return l.into(),
        e => e,
    };
    let code = match &e {
        _ if e.is_internal() => return status::internal(&e),
        R::EnrollmentNotFound(_) | R::PukReleaseNotFound(_) => Code::NotFound,
        R::ApproverIsRequester(_)
        | R::PukRotationOfAnotherCaller(_)
        | R::RenewalForceRequiresAdmin => Code::PermissionDenied,
        R::PukReleaseRateLimited { .. } => Code::ResourceExhausted,
        R::IssuanceFailed { .. } => Code::Internal,
        // Not the caller's fault, and no retry helps: the stored row is corrupt.
        R::CredentialsTampered(_) => Code::DataLoss,
        R::NotConfigured
        | R::PersonNotActive { .. }
        | R::TokenNeverEnrollable { .. }
        | R::TokenNotEnrolling { .. }
        | R::TokenHeldByAnotherPerson { .. }
        | R::TokenForgotten { .. }
        | R::NoForgottenToken { .. }
        | R::TemporaryTokenInUse { .. }
        | R::TokenNotActive { .. }
        | R::TokenNotRenewable { .. }
        | R::TokenEnrollmentOpen { .. }
        | R::SlotNotRenewable { .. }
        | R::RenewalTooEarly(_)
        | R::CredentialsNotHeld(_)
        | R::PukRotationNotPending(_)
        | R::PukRotationStale { .. }
        | R::RepeatExpired { .. }
        | R::PukReleasePendingApproval { .. }
        | R::PukReleaseNotPending { .. }
        | R::PukReleaseExpired { .. }
        | R::Step(
            EnrollError::NonceAlreadyUsed(_)
            | EnrollError::NotCompleted(_)
            | EnrollError::Expired(_)
            | EnrollError::Aborted(_)
            | EnrollError::AlreadyConfirmed(_)
            | EnrollError::PolicyDenied { .. },
        ) => Code::FailedPrecondition,
        R::ProfileUnknown { .. }
        | R::FirmwareInvalid(_)
        | R::TokenSerialInvalid
        | R::SlotInvalid(_)
        | R::ReasonTooLong
        | R::ReleaseReasonRequired
        | R::PukReleaseTokenMismatch { .. }
        | R::Step(_) => Code::InvalidArgument,
        R::Lifecycle(_) | R::Store(_) | R::Internal(_) => return status::internal(&e),
    };
    status::with_metadata(code, e.reason(), &e.to_string(), e.field(), e.metadata())
}

/// A failed step of a state-changing RPC: from the desk (a refusal is recorded) or from the
/// translation to protobuf; or a step whose changes commit though its answer is a status
/// (a PUK release request waiting for approval), not kept for repeats.
enum Failure {
    Desk(DeskFailure),
    Status(Status),
    Committed(WriteTx, Status),
}

impl From<DeskFailure> for Failure {
    fn from(f: DeskFailure) -> Failure {
        Failure::Desk(f)
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Failure {
        Failure::Status(s)
    }
}

/// The outcome of [`Enrollments::once`]: the stored record of a repeat (its first answer and
/// when it was given), or a new answer.
enum Once<R> {
    Replayed(IdempotencyRow),
    Done(R),
}

impl<R: prost::Message + Default> Once<R> {
    /// The new answer, or the stored first answer as it was (for answers without secrets).
    fn answer(self) -> Result<Response<R>, Status> {
        match self {
            Once::Done(answer) => Ok(Response::new(answer)),
            Once::Replayed(record) => decode(&record.response).map(Response::new),
        }
    }
}

/// What a step keeps for repeats: the answer's bytes (without secrets), and for ReleasePuk the
/// generation of the credentials it released.
struct Kept {
    answer: Vec<u8>,
    released_generation: Option<i64>,
}

/// A request of this service as the steps every RPC begins with see it
/// ([`Enrollments::admit`]).
trait EnrollmentRequest: prost::Message {
    /// The RPC's name: its method and the operation of its idempotency key.
    const RPC: &'static str;

    /// The enrollment the request names: required, and expired first when it is due.
    fn enrollment_id(&self) -> Option<&str> {
        None
    }

    /// The checks of presence and shape of the other fields.
    fn check(&self) -> Result<(), Status> {
        Ok(())
    }
}

/// A state-changing request: its request id keys its answer.
trait ChangeRequest: EnrollmentRequest {
    fn request_id(&self) -> &str;
}

impl EnrollmentRequest for pb::BeginEnrollmentRequest {
    const RPC: &'static str = "BeginEnrollment";

    fn check(&self) -> Result<(), Status> {
        required("person_external_id", &self.person_external_id)?;
        required("profile", &self.profile)?;
        check_token_serial(&self.token_serial)
    }
}

/// The token serial as the station reads it: decimal, 32 bits.
pub(super) fn check_token_serial(serial: &str) -> Result<(), Status> {
    if serial.is_empty()
        || !serial.bytes().all(|b| b.is_ascii_digit())
        || serial.parse::<u32>().is_err()
    {
        return Err(status::invalid_argument(
            "token_serial",
            "TOKEN_SERIAL_INVALID",
            "token_serial must be the token's decimal serial number",
        ));
    }
    Ok(())
}

impl EnrollmentRequest for pb::BeginRenewalRequest {
    const RPC: &'static str = "BeginRenewal";

    fn check(&self) -> Result<(), Status> {
        check_token_serial(&self.token_serial)?;
        if self.slots.len() > RENEWAL_SLOTS_MAX {
            return Err(status::invalid_argument(
                "slots",
                "TOO_MANY_ITEMS",
                &format!(
                    "slots holds {} entries; a token has at most {RENEWAL_SLOTS_MAX} key slots",
                    self.slots.len()
                ),
            ));
        }
        Ok(())
    }
}

impl EnrollmentRequest for pb::ReleasePukRequest {
    const RPC: &'static str = "ReleasePuk";

    fn check(&self) -> Result<(), Status> {
        required("token_serial", &self.token_serial)
    }
}

impl EnrollmentRequest for pb::ConfirmPukRotationRequest {
    const RPC: &'static str = "ConfirmPukRotation";

    fn check(&self) -> Result<(), Status> {
        required("token_serial", &self.token_serial)?;
        if self.generation <= 0 {
            return Err(status::invalid_argument(
                "generation",
                "FIELD_REQUIRED",
                "generation is not set; send the new_puk_generation ReleasePuk answered",
            ));
        }
        Ok(())
    }
}

impl EnrollmentRequest for pb::ApprovePukReleaseRequest {
    const RPC: &'static str = "ApprovePukRelease";

    fn check(&self) -> Result<(), Status> {
        required("release_id", &self.release_id)?;
        required("token_serial", &self.token_serial)
    }
}

/// Implements `EnrollmentRequest` for requests that name an enrollment by `enrollment_id`.
macro_rules! enrollment_requests {
    ($($request:ty: $rpc:literal),+ $(,)?) => {$(
        impl EnrollmentRequest for $request {
            const RPC: &'static str = $rpc;

            fn enrollment_id(&self) -> Option<&str> {
                Some(&self.enrollment_id)
            }
        }
    )+};
}

enrollment_requests!(
    pb::CompleteEnrollmentRequest: "CompleteEnrollment",
    pb::ConfirmEnrollmentRequest: "ConfirmEnrollment",
    pb::AbortEnrollmentRequest: "AbortEnrollment",
    pb::GetEnrollmentRequest: "GetEnrollment",
);

/// Implements `ChangeRequest` for requests with a `request_id` field.
macro_rules! change_requests {
    ($($request:ty),+ $(,)?) => {$(
        impl ChangeRequest for $request {
            fn request_id(&self) -> &str {
                &self.request_id
            }
        }
    )+};
}

change_requests!(
    pb::BeginEnrollmentRequest,
    pb::BeginRenewalRequest,
    pb::CompleteEnrollmentRequest,
    pb::ConfirmEnrollmentRequest,
    pb::AbortEnrollmentRequest,
    pb::ReleasePukRequest,
    pb::ApprovePukReleaseRequest,
    pb::ConfirmPukRotationRequest,
);

/// A state-changing request past the steps every such RPC begins with.
struct Admitted<'a, T> {
    identity: Identity,
    req: T,
    key: RequestKey,
    desk: &'a EnrollmentDesk,
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

pub(super) fn key_to_pb(k: &ManagementKeySecret) -> pb::ManagementKey {
    pb::ManagementKey {
        algorithm: algorithm_to_pb(k.algorithm) as i32,
        key: k.key.to_vec(),
    }
}

/// The algorithm of a management key without the key (for stored answers).
fn redacted_key_to_pb(k: &ManagementKeySecret) -> pb::ManagementKey {
    pb::ManagementKey {
        algorithm: algorithm_to_pb(k.algorithm) as i32,
        key: Vec::new(),
    }
}

/// The caller as the desk's PUK release rules see it.
fn caller(identity: &Identity) -> Caller {
    Caller {
        actor: identity.actor(),
        certificate_serial: identity.certificate_serial.clone(),
    }
}

fn puk_release_to_pb(v: PukReleaseView) -> pb::PukRelease {
    let state = match v.row.state {
        PukReleaseState::Pending => pb::PukReleaseState::Pending,
        PukReleaseState::Approved => pb::PukReleaseState::Approved,
        PukReleaseState::Released => pb::PukReleaseState::Released,
    };
    pb::PukRelease {
        release_id: v.row.public_id,
        token_serial: v.token_serial,
        state: state as i32,
        reason: v.row.reason,
        requested_by: v.row.requester_name,
        requested_at: v.row.requested_at.to_string(),
        approved_by: v.row.approver_name.unwrap_or_default(),
        approval_reason: v.row.approval_reason.unwrap_or_default(),
        expires_at: v.row.expires_at.to_string(),
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

fn kind_to_pb(k: EnrollmentKind) -> pb::EnrollmentKind {
    match k {
        EnrollmentKind::Enrollment => pb::EnrollmentKind::Enrollment,
        EnrollmentKind::Renewal => pb::EnrollmentKind::Renewal,
    }
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

/// BeginEnrollment's answer without its secrets (the stored answer).
fn begun_to_pb(b: &BegunEnrollment) -> pb::BeginEnrollmentResponse {
    pb::BeginEnrollmentResponse {
        enrollment_id: b.enrollment.public_id.clone(),
        nonce: b.enrollment.nonce.clone(),
        slots: b.slots.iter().map(pb::SlotPlan::from).collect(),
        current_management_key: b
            .current
            .as_ref()
            .map(|c| redacted_key_to_pb(&c.management_key)),
        new_management_key: Some(redacted_key_to_pb(&b.new.management_key)),
        new_puk: String::new(),
        expires_at: b.enrollment.expires_at.to_string(),
        person_display_name: b.person.display_name.clone(),
        person_upn: b.person.upn.clone(),
    }
}

/// A step's answer, kept for repeats as it is (it carries no secret).
fn kept_as_is<R: prost::Message>(tx: WriteTx, answer: R) -> (WriteTx, R, Kept) {
    let kept = Kept {
        answer: prost::Message::encode_to_vec(&answer),
        released_generation: None,
    };
    (tx, answer, kept)
}

fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, Status> {
    M::decode(bytes).map_err(|e| status::internal(&e))
}

impl Enrollments {
    fn desk(&self) -> Result<&EnrollmentDesk, Status> {
        self.desk
            .as_ref()
            .ok_or_else(|| refusal_status(EnrollmentRefusal::NotConfigured))
    }

    /// The steps every state-changing RPC begins with, in this order: the caller is
    /// authorized, the request id keys the request, the server has enrollment configured, the
    /// request's fields are checked and the enrollment it names is expired if due.
    async fn admit<T: ChangeRequest>(
        &self,
        request: Request<T>,
    ) -> Result<Admitted<'_, T>, Status> {
        let identity = authorize(&request, &method(T::RPC))?;
        let req = request.into_inner();
        let key = RequestKey::new(
            req.request_id(),
            T::RPC,
            &prost::Message::encode_to_vec(&req),
            &identity.certificate_sha256,
        )?;
        let desk = self.checked_desk(&req).await?;
        Ok(Admitted {
            identity,
            req,
            key,
            desk,
        })
    }

    /// The desk, once `req`'s fields are checked and the enrollment it names is expired if
    /// due.
    async fn checked_desk<T: EnrollmentRequest>(&self, req: &T) -> Result<&EnrollmentDesk, Status> {
        let desk = self.desk()?;
        if let Some(id) = req.enrollment_id() {
            required("enrollment_id", id)?;
        }
        req.check()?;
        if let Some(id) = req.enrollment_id() {
            self.expire_due(Some(id)).await?;
        }
        Ok(desk)
    }

    fn converter(&self) -> Certificates {
        Certificates {
            store: self.store.clone(),
            ca: None,
        }
    }

    pub(super) async fn slot_certificates_to_pb(
        &self,
        certificates: Vec<(String, CertificateRow)>,
    ) -> Result<Vec<pb::SlotCertificate>, Status> {
        let converter = self.converter();
        let mut out = Vec::new();
        for (slot, cert) in certificates {
            out.push(pb::SlotCertificate {
                slot,
                certificate: Some(converter.to_pb(cert).await?),
            });
        }
        Ok(out)
    }

    /// BeginRenewal's answer without its secret (the stored answer).
    pub(super) async fn renewal_to_pb(
        &self,
        b: &BegunRenewal,
    ) -> Result<pb::BeginRenewalResponse, Status> {
        Ok(pb::BeginRenewalResponse {
            enrollment_id: b.enrollment.public_id.clone(),
            nonce: b.enrollment.nonce.clone(),
            slots: b.slots.iter().map(pb::SlotPlan::from).collect(),
            current_management_key: Some(redacted_key_to_pb(&b.current.management_key)),
            expires_at: b.enrollment.expires_at.to_string(),
            person_external_id: b.person.external_id.clone(),
            person_display_name: b.person.display_name.clone(),
            superseded: self.slot_certificates_to_pb(b.superseded.clone()).await?,
            forced_slots: b.forced_slots.clone(),
        })
    }

    pub(super) async fn enrollment_to_pb(
        &self,
        v: EnrollmentView,
    ) -> Result<pb::Enrollment, Status> {
        Ok(pb::Enrollment {
            certificates: self.slot_certificates_to_pb(v.certificates).await?,
            enrollment_id: v.row.public_id,
            state: state_to_pb(v.row.state) as i32,
            person_external_id: v.person_external_id,
            token_serial: v.token_serial,
            profile: v.row.profile,
            expires_at: v.row.expires_at.to_string(),
            kind: kind_to_pb(v.row.kind) as i32,
        })
    }

    /// Expires due enrollments (all of them, or only `only`); see
    /// [`EnrollmentDesk::expire_due`]. Nothing to do without enrollment configured.
    pub async fn expire_due(&self, only: Option<&str>) -> Result<Vec<String>, Status> {
        match &self.desk {
            Some(desk) => desk.expire_due(only).await.map_err(refusal_status),
            None => Ok(Vec::new()),
        }
    }

    /// Runs a state-changing step once per request id: a repeat gets `Once::Replayed` with the
    /// stored record of the first answer; otherwise `step` runs in a write transaction and
    /// returns the transaction, its answer and what to keep for repeats, which commit together.
    /// A refusal is recorded in the audit log after the transaction is rolled back; so is a
    /// request id of another caller's.
    async fn once<T, R, F, Fut>(&self, call: &Admitted<'_, T>, step: F) -> Result<Once<R>, Status>
    where
        F: FnOnce(WriteTx) -> Fut,
        Fut: Future<Output = Result<(WriteTx, R, Kept), Failure>>,
    {
        let key = &call.key;
        let mut tx = self.store.begin_write().await?;
        match lifecycle::replay_record(&mut tx, key).await {
            Ok(Some(record)) => return Ok(Once::Replayed(record)),
            Ok(None) => {}
            Err(e @ LifecycleError::RequestIdOfAnotherCaller(_)) => {
                drop(tx);
                let refusal = DeskFailure::Refused {
                    subject: format!("request:{}", key.request_id),
                    refusal: e.into(),
                };
                return Err(self.refusal(call, refusal).await);
            }
            Err(e) => return Err(e.into()),
        }
        match step(tx).await {
            Ok((mut tx, answer, kept)) => {
                lifecycle::remember_release(&mut tx, key, kept.answer, kept.released_generation)
                    .await?;
                tx.commit().await?;
                Ok(Once::Done(answer))
            }
            Err(Failure::Status(s)) => Err(s),
            Err(Failure::Committed(tx, s)) => {
                tx.commit().await?;
                Err(s)
            }
            Err(Failure::Desk(f)) => Err(self.refusal(call, f).await),
        }
    }

    /// Runs the repeat of a request whose answer carried secrets: `step` checks it again and
    /// records its audit event in a write transaction that commits (the stored first answer
    /// stays as it is). A refusal is recorded as in [`Enrollments::once`].
    async fn repeat<T, R, F, Fut>(&self, call: &Admitted<'_, T>, step: F) -> Result<R, Status>
    where
        F: FnOnce(WriteTx) -> Fut,
        Fut: Future<Output = Result<(WriteTx, R), DeskFailure>>,
    {
        let tx = self.store.begin_write().await?;
        match step(tx).await {
            Ok((tx, answer)) => {
                tx.commit().await?;
                Ok(answer)
            }
            Err(f) => Err(self.refusal(call, f).await),
        }
    }

    /// A desk failure of `call` as status, a refusal recorded first.
    async fn refusal<T>(&self, call: &Admitted<'_, T>, failure: DeskFailure) -> Status {
        let (desk, key) = (call.desk, &call.key);
        refusal_status(
            desk.record_refusal(
                &call.identity.actor(),
                key.operation,
                &key.request_id,
                failure,
            )
            .await,
        )
    }
}

#[tonic::async_trait]
impl EnrollmentService for Enrollments {
    async fn begin_enrollment(
        &self,
        request: Request<pb::BeginEnrollmentRequest>,
    ) -> Result<Response<pb::BeginEnrollmentResponse>, Status> {
        let call = self.admit(request).await?;
        let (desk, req) = (call.desk, &call.req);
        let begin = BeginRequest {
            person_external_id: &req.person_external_id,
            token_serial: &req.token_serial,
            profile: &req.profile,
            firmware: &req.firmware,
            model: &req.model,
            request_id: &req.request_id,
        };
        let actor = call.identity.actor();
        let (actor, begin) = (&actor, &begin);
        let once = self
            .once(&call, |mut tx| async move {
                let begun = desk.begin(&mut tx, actor, begin).await?;
                let redacted = begun_to_pb(&begun);
                let mut full = redacted.clone();
                fill_secrets(&mut full, begun.current.as_ref(), &begun.new);
                let kept = Kept {
                    answer: prost::Message::encode_to_vec(&redacted),
                    released_generation: None,
                };
                Ok((tx, full, kept))
            })
            .await?;
        match once {
            Once::Done(full) => Ok(Response::new(full)),
            Once::Replayed(record) => {
                // The stored answer with its secrets unwrapped again: a release of its own,
                // checked and audited, while the enrollment is open and the repeat not too late.
                let mut response: pb::BeginEnrollmentResponse = decode(&record.response)?;
                self.expire_due(Some(&response.enrollment_id)).await?;
                let repeat = SecretRepeat::from_record(&record);
                let (enrollment_id, with_current) = (
                    response.enrollment_id.as_str(),
                    response.current_management_key.is_some(),
                );
                let (current, new) = self
                    .repeat(&call, |mut tx| async move {
                        let secrets = desk
                            .begin_repeat(
                                &mut tx,
                                actor,
                                begin,
                                enrollment_id,
                                with_current,
                                &repeat,
                            )
                            .await?;
                        Ok((tx, secrets))
                    })
                    .await?;
                fill_secrets(&mut response, current.as_ref(), &new);
                Ok(Response::new(response))
            }
        }
    }

    async fn begin_renewal(
        &self,
        request: Request<pb::BeginRenewalRequest>,
    ) -> Result<Response<pb::BeginRenewalResponse>, Status> {
        let call = self.admit(request).await?;
        let (desk, req) = (call.desk, &call.req);
        let renewal = RenewalRequest {
            token_serial: &req.token_serial,
            slots: &req.slots,
            force: req.force,
            reason: &req.reason,
            request_id: &req.request_id,
        };
        let actor = call.identity.actor();
        let (actor, renewal) = (&actor, &renewal);
        // Who may renew before the window is decided here: admin only.
        let may_force = call.identity.role == Role::Admin;
        let once = self
            .once(&call, |mut tx| async move {
                if renewal.force && !may_force {
                    return Err(Failure::Desk(DeskFailure::Refused {
                        subject: format!("token:{}", renewal.token_serial),
                        refusal: EnrollmentRefusal::RenewalForceRequiresAdmin,
                    }));
                }
                let begun = desk.begin_renewal(&mut tx, actor, renewal).await?;
                let redacted = self.renewal_to_pb(&begun).await?;
                let mut full = redacted.clone();
                full.current_management_key = Some(key_to_pb(&begun.current.management_key));
                let kept = Kept {
                    answer: prost::Message::encode_to_vec(&redacted),
                    released_generation: None,
                };
                Ok((tx, full, kept))
            })
            .await?;
        match once {
            Once::Done(full) => Ok(Response::new(full)),
            Once::Replayed(record) => {
                // As BeginEnrollment: the stored answer has no key; a repeat unwraps it again
                // after the checks of a first call, while the renewal is open.
                let mut response: pb::BeginRenewalResponse = decode(&record.response)?;
                self.expire_due(Some(&response.enrollment_id)).await?;
                let repeat = SecretRepeat::from_record(&record);
                let enrollment_id = response.enrollment_id.as_str();
                let token_serial = req.token_serial.as_str();
                let current = self
                    .repeat(&call, |mut tx| async move {
                        let current = desk
                            .begin_renewal_repeat(
                                &mut tx,
                                actor,
                                token_serial,
                                enrollment_id,
                                &repeat,
                            )
                            .await?;
                        Ok((tx, current))
                    })
                    .await?;
                response.current_management_key = Some(key_to_pb(&current.management_key));
                Ok(Response::new(response))
            }
        }
    }

    async fn complete_enrollment(
        &self,
        request: Request<pb::CompleteEnrollmentRequest>,
    ) -> Result<Response<pb::CompleteEnrollmentResponse>, Status> {
        let call = self.admit(request).await?;
        let (desk, req) = (call.desk, &call.req);
        let complete = CompleteRequest {
            enrollment_id: &req.enrollment_id,
            attestation_intermediate: &req.attestation_intermediate,
            proofs: req
                .proofs
                .iter()
                .map(|p| SlotProof {
                    slot: p.slot.clone(),
                    attestation_certificate: p.attestation_certificate.clone(),
                    signature: p.signature.clone(),
                })
                .collect(),
            request_id: &req.request_id,
        };
        let actor = call.identity.actor();
        let certificates = match desk.complete(&actor, &complete, &call.key).await {
            Ok(Completion::Replayed(bytes)) => return decode(&bytes).map(Response::new),
            Ok(Completion::Issued(certificates)) => certificates,
            Err(f) => {
                return Err(refusal_status(
                    desk.record_refusal(&actor, "CompleteEnrollment", &req.request_id, f)
                        .await,
                ));
            }
        };
        let response = pb::CompleteEnrollmentResponse {
            certificates: self.slot_certificates_to_pb(certificates).await?,
        };
        let mut tx = self.store.begin_write().await?;
        lifecycle::remember(&mut tx, &call.key, prost::Message::encode_to_vec(&response)).await?;
        tx.commit().await?;
        Ok(Response::new(response))
    }

    async fn confirm_enrollment(
        &self,
        request: Request<pb::ConfirmEnrollmentRequest>,
    ) -> Result<Response<pb::ConfirmEnrollmentResponse>, Status> {
        let call = self.admit(request).await?;
        let (desk, req, actor) = (call.desk, &call.req, call.identity.actor());
        self.once(&call, |mut tx| async move {
            let token = desk
                .confirm(&mut tx, &actor, &req.enrollment_id, &req.request_id)
                .await?;
            let tokens = Tokens {
                store: self.store.clone(),
            };
            let response = pb::ConfirmEnrollmentResponse {
                token: Some(tokens.token_to_pb(token).await?),
            };
            Ok(kept_as_is(tx, response))
        })
        .await?
        .answer()
    }

    async fn abort_enrollment(
        &self,
        request: Request<pb::AbortEnrollmentRequest>,
    ) -> Result<Response<pb::AbortEnrollmentResponse>, Status> {
        let call = self.admit(request).await?;
        let (desk, req, actor) = (call.desk, &call.req, call.identity.actor());
        self.once(&call, |mut tx| async move {
            let view = desk
                .abort(
                    &mut tx,
                    &actor,
                    &req.enrollment_id,
                    &req.reason,
                    &req.request_id,
                )
                .await?;
            let response = pb::AbortEnrollmentResponse {
                enrollment: Some(self.enrollment_to_pb(view).await?),
            };
            Ok(kept_as_is(tx, response))
        })
        .await?
        .answer()
    }

    async fn get_enrollment(
        &self,
        request: Request<pb::GetEnrollmentRequest>,
    ) -> Result<Response<pb::GetEnrollmentResponse>, Status> {
        authorize(&request, &method(pb::GetEnrollmentRequest::RPC))?;
        let req = request.into_inner();
        let desk = self.checked_desk(&req).await?;
        let view = desk.get(&req.enrollment_id).await.map_err(refusal_status)?;
        Ok(Response::new(pb::GetEnrollmentResponse {
            enrollment: Some(self.enrollment_to_pb(view).await?),
        }))
    }

    async fn release_puk(
        &self,
        request: Request<pb::ReleasePukRequest>,
    ) -> Result<Response<pb::ReleasePukResponse>, Status> {
        let call = self.admit(request).await?;
        let caller = caller(&call.identity);
        let (desk, req, caller) = (call.desk, &call.req, &caller);
        let full = |c: &TokenCredentials, r: &PukRotation| pb::ReleasePukResponse {
            puk: c.puk.to_string(),
            management_key: Some(key_to_pb(&c.management_key)),
            new_puk: r.puk.to_string(),
            new_puk_generation: r.generation,
            new_puk_resumed: r.resumed,
        };
        let once = self
            .once(&call, |mut tx| async move {
                let released = desk
                    .release_puk(
                        &mut tx,
                        caller,
                        &req.token_serial,
                        &req.reason,
                        &req.request_id,
                    )
                    .await?;
                let (c, generation, rotation) = match released {
                    PukRelease::Released {
                        credentials,
                        generation,
                        rotation,
                    } => (credentials, generation, rotation),
                    PukRelease::Pending(pending) => {
                        // The request is kept (not as an answer for repeats); the caller
                        // learns its id from the status.
                        let status = refusal_status(EnrollmentRefusal::PukReleasePendingApproval {
                            release_id: pending.release_id,
                            token_serial: pending.token_serial,
                            expires_at: pending.expires_at,
                        });
                        return Err(Failure::Committed(tx, status));
                    }
                };
                let redacted = pb::ReleasePukResponse {
                    puk: String::new(),
                    management_key: Some(redacted_key_to_pb(&c.management_key)),
                    new_puk: String::new(),
                    new_puk_generation: rotation.generation,
                    new_puk_resumed: rotation.resumed,
                };
                let kept = Kept {
                    answer: prost::Message::encode_to_vec(&redacted),
                    released_generation: Some(generation),
                };
                Ok((tx, full(&c, &rotation), kept))
            })
            .await?;
        match once {
            Once::Done(full) => Ok(Response::new(full)),
            Once::Replayed(record) => {
                // The stored answer has no secrets: a release of its own, checked and audited,
                // of the credentials the first answer released, while the repeat is not too late.
                let repeat = SecretRepeat::from_record(&record);
                let (c, rotation) = self
                    .repeat(&call, |mut tx| async move {
                        let c = desk
                            .release_puk_repeat(
                                &mut tx,
                                caller,
                                &req.token_serial,
                                &req.reason,
                                &repeat,
                            )
                            .await?;
                        Ok((tx, c))
                    })
                    .await?;
                // The first answer's flag: a repeat is the same answer, not a second one.
                let first: pb::ReleasePukResponse = decode(&record.response)?;
                let mut answer = full(&c, &rotation);
                answer.new_puk_resumed = first.new_puk_resumed;
                Ok(Response::new(answer))
            }
        }
    }

    async fn approve_puk_release(
        &self,
        request: Request<pb::ApprovePukReleaseRequest>,
    ) -> Result<Response<pb::ApprovePukReleaseResponse>, Status> {
        let call = self.admit(request).await?;
        let (desk, req, caller) = (call.desk, &call.req, caller(&call.identity));
        self.once(&call, |mut tx| async move {
            let view = desk
                .approve_puk_release(
                    &mut tx,
                    &caller,
                    &req.release_id,
                    &req.token_serial,
                    &req.reason,
                    &req.request_id,
                )
                .await?;
            let response = pb::ApprovePukReleaseResponse {
                release: Some(puk_release_to_pb(view)),
            };
            Ok(kept_as_is(tx, response))
        })
        .await?
        .answer()
    }

    async fn confirm_puk_rotation(
        &self,
        request: Request<pb::ConfirmPukRotationRequest>,
    ) -> Result<Response<pb::ConfirmPukRotationResponse>, Status> {
        let call = self.admit(request).await?;
        let caller = caller(&call.identity);
        let (desk, req, caller) = (call.desk, &call.req, &caller);
        self.once(&call, |mut tx| async move {
            let generation = desk
                .confirm_puk_rotation(
                    &mut tx,
                    caller,
                    &req.token_serial,
                    req.generation,
                    &req.request_id,
                )
                .await?;
            Ok(kept_as_is(
                tx,
                pb::ConfirmPukRotationResponse { generation },
            ))
        })
        .await?
        .answer()
    }
}
