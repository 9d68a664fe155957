//! `tessera.v1.SelfService`: what a token does for itself, authenticated by its own
//! certificate (the TLS private-key operation done on the card). No role table: every call
//! first turns the presented certificate into a `lifecycle::TokenCaller`
//! (`lifecycle::token_caller`), or answers its refusal — UNAUTHENTICATED when the certificate
//! is not (or no longer) a credential, PERMISSION_DENIED when the token or person may not act —
//! and a call only ever concerns the caller's own token. Served on the `[self_service]`
//! listener, whose TLS handshake trusts the issuing CA of people's certificates only; on the
//! operator port (also served, for one role matrix) no token certificate gets past
//! `client_revocation`, and every operator certificate is refused here.
use super::certificate_service::certificate_pb;
use super::enrollment_service::{
    Enrollments, check_token_serial, key_to_pb, refusal_status as desk_status,
};
use super::pb::{self, self_service_server::SelfService};
use super::status;
use super::token_service::Tokens;
use crate::ca::OnlineCa;
use crate::enroll::{
    CompleteRequest, Completion, DeskFailure, EnrollmentDesk, EnrollmentRefusal, RENEWAL_SLOTS_MAX,
    RenewalRequest, SecretRepeat, SlotProof,
};
use crate::lifecycle::{self, RequestKey, SelfServiceRefusal, TokenCaller, token_caller};
use crate::store::EnrollmentKind;
use crate::store::{CertificateRow, Store, Timestamp};
use std::sync::Arc;
use tonic::{Code, Request, Response, Status};

pub struct SelfServiceApi {
    pub store: Store,
    /// The CA, for the profiles' renewal windows; `None` without `[ca]`.
    pub ca: Option<Arc<OnlineCa>>,
    /// The enrollment desk (renewal); `None` without `[ca]` and `[enrollment]`: the renewal
    /// RPCs then answer FAILED_PRECONDITION `ENROLLMENT_NOT_CONFIGURED`.
    pub desk: Option<EnrollmentDesk>,
}

/// A refusal as its gRPC status, with the state that decided in `ErrorInfo` metadata.
pub(super) fn refusal_status(refusal: &SelfServiceRefusal) -> Status {
    if let SelfServiceRefusal::Store(e) = refusal {
        return status::internal(e);
    }
    let code = if refusal.is_unauthenticated() {
        Code::Unauthenticated
    } else {
        Code::PermissionDenied
    };
    status::with_metadata(
        code,
        refusal.reason(),
        &refusal.to_string(),
        None,
        refusal.metadata(),
    )
}

impl SelfServiceApi {
    /// When the certificate's renewal window opens: `renewal_window_days` of its profile before
    /// its notAfter. `None` when the window is unknown (no CA, or a profile it no longer has).
    fn renewal_opens_at(&self, row: &CertificateRow) -> Option<Timestamp> {
        let days = self
            .ca
            .as_ref()?
            .profiles
            .get(&row.profile)
            .ok()?
            .renewal_window_days;
        row.not_after
            .checked_sub(std::time::Duration::from_secs(u64::from(days) * 86_400))
    }

    fn desk(&self) -> Result<&EnrollmentDesk, Status> {
        self.desk
            .as_ref()
            .ok_or_else(|| desk_status(EnrollmentRefusal::NotConfigured))
    }

    /// The answers' converters of the enrollment service.
    fn converter(&self) -> Enrollments {
        Enrollments {
            store: self.store.clone(),
            desk: None,
        }
    }

    /// A desk failure as status, the refusal recorded in the audit log first.
    async fn refused(
        &self,
        caller: &TokenCaller,
        operation: &str,
        request_id: &str,
        failure: DeskFailure,
    ) -> Status {
        match self.desk() {
            Ok(desk) => desk_status(
                desk.record_refusal(&caller.actor(), operation, request_id, failure)
                    .await,
            ),
            Err(s) => s,
        }
    }

    /// The renewal `enrollment_id` names, checked to be the caller's token's own (a missing one
    /// is left to the desk, which answers ENROLLMENT_NOT_FOUND), and expired first when due.
    async fn own_renewal(&self, caller: &TokenCaller, enrollment_id: &str) -> Result<(), Status> {
        if enrollment_id.is_empty() {
            return Err(status::invalid_argument(
                "enrollment_id",
                "FIELD_REQUIRED",
                "enrollment_id is required",
            ));
        }
        if let Some(row) = self.store.enrollment_by_public_id(enrollment_id).await?
            && (row.token_id != caller.token.id || row.kind != EnrollmentKind::Renewal)
        {
            return Err(refusal_status(&SelfServiceRefusal::NotOwnRenewal {
                own: caller.token.serial.clone(),
                enrollment: enrollment_id.to_string(),
            }));
        }
        self.desk()?
            .expire_due(Some(enrollment_id))
            .await
            .map_err(desk_status)?;
        Ok(())
    }

    /// The stored first answer of `key`, if this request id was used before by this caller.
    async fn replayed(
        &self,
        key: &RequestKey,
    ) -> Result<Option<crate::store::IdempotencyRow>, Status> {
        let mut tx = self.store.begin_write().await?;
        Ok(lifecycle::replay_record(&mut tx, key).await?)
    }

    /// The token the presented certificate speaks for, or the refusal.
    async fn caller<T>(&self, request: &Request<T>) -> Result<TokenCaller, Status> {
        let certs = request.peer_certs();
        let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        token_caller(&self.store, leaf)
            .await
            .map_err(|r| refusal_status(&r))
    }
}

/// The idempotency key of a self-service request: its request id, the RPC, the request's bytes
/// and the presenting certificate (a request id is the caller's own).
fn request_key<M: prost::Message>(
    caller: &TokenCaller,
    rpc: &'static str,
    request_id: &str,
    request: &M,
) -> Result<RequestKey, Status> {
    Ok(RequestKey::new(
        request_id,
        rpc,
        &request.encode_to_vec(),
        &caller.certificate_sha256,
    )?)
}

/// A stored first answer, repeated.
fn stored_answer<M: prost::Message + Default>(bytes: &[u8]) -> Result<Response<M>, Status> {
    M::decode(bytes)
        .map(Response::new)
        .map_err(|e| status::internal(&e))
}

#[tonic::async_trait]
impl SelfService for SelfServiceApi {
    async fn get_my_token(
        &self,
        request: Request<pb::GetMyTokenRequest>,
    ) -> Result<Response<pb::GetMyTokenResponse>, Status> {
        let caller = self.caller(&request).await?;
        caller
            .check_own_token(&request.get_ref().token_serial)
            .map_err(|r| refusal_status(&r))?;
        let now = self.store.now();
        let mut slots = Vec::new();
        for current in self
            .store
            .current_slot_certificates(caller.token.id)
            .await?
        {
            let Some(row) = self.store.certificate_by_serial(&current.serial).await? else {
                continue;
            };
            let window = self.renewal_opens_at(&row);
            slots.push(pb::MySlot {
                slot: current.slot,
                renewal_opens_at: window.map(|t| t.to_string()).unwrap_or_default(),
                renewal_open: window.is_some_and(|t| now >= t),
                certificate: Some(certificate_pb(
                    row,
                    caller.person.external_id.clone(),
                    caller.token.serial.clone(),
                )),
            });
        }
        let token = Tokens {
            store: self.store.clone(),
        }
        .token_to_pb(caller.token.clone())
        .await?;
        Ok(Response::new(pb::GetMyTokenResponse {
            token: Some(token),
            person_external_id: caller.person.external_id.clone(),
            person_display_name: caller.person.display_name.clone(),
            caller_certificate_serial: caller.certificate_serial.clone(),
            caller_slot: caller.slot.clone(),
            slots,
        }))
    }

    async fn begin_renewal(
        &self,
        request: Request<pb::BeginMyRenewalRequest>,
    ) -> Result<Response<pb::BeginRenewalResponse>, Status> {
        const RPC: &str = "SelfService.BeginRenewal";
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        caller
            .check_own_token(&req.token_serial)
            .map_err(|r| refusal_status(&r))?;
        let key = request_key(&caller, RPC, &req.request_id, &req)?;
        let desk = self.desk()?;
        check_token_serial(&caller.token.serial)?;
        if req.slots.len() > RENEWAL_SLOTS_MAX {
            return Err(status::invalid_argument(
                "slots",
                "TOO_MANY_ITEMS",
                &format!(
                    "slots holds {} entries; a token has at most {RENEWAL_SLOTS_MAX} key slots",
                    req.slots.len()
                ),
            ));
        }
        let actor = caller.actor();
        if let Some(record) = self.replayed(&key).await? {
            // The stored answer has no key: a repeat unwraps it again after the checks of a
            // first call, while the renewal is open (as EnrollmentService.BeginRenewal).
            let mut response: pb::BeginRenewalResponse =
                prost::Message::decode(record.response.as_slice())
                    .map_err(|e| status::internal(&e))?;
            desk.expire_due(Some(&response.enrollment_id))
                .await
                .map_err(desk_status)?;
            let repeat = SecretRepeat::from_record(&record);
            let mut tx = self.store.begin_write().await?;
            match desk
                .begin_renewal_repeat(
                    &mut tx,
                    &actor,
                    &caller.token.serial,
                    &response.enrollment_id,
                    &repeat,
                )
                .await
            {
                Ok(current) => {
                    tx.commit().await?;
                    response.current_management_key = Some(key_to_pb(&current.management_key));
                    return Ok(Response::new(response));
                }
                Err(f) => {
                    drop(tx);
                    return Err(self.refused(&caller, RPC, &req.request_id, f).await);
                }
            }
        }
        let renewal = RenewalRequest {
            token_serial: &caller.token.serial,
            slots: &req.slots,
            // Never before the window: only an admin at the desk may force a renewal.
            force: false,
            reason: &req.reason,
            request_id: &req.request_id,
        };
        let mut tx = self.store.begin_write().await?;
        match desk.begin_renewal(&mut tx, &actor, &renewal).await {
            Ok(begun) => {
                let redacted = self.converter().renewal_to_pb(&begun).await?;
                let mut full = redacted.clone();
                full.current_management_key = Some(key_to_pb(&begun.current.management_key));
                lifecycle::remember(&mut tx, &key, prost::Message::encode_to_vec(&redacted))
                    .await?;
                tx.commit().await?;
                Ok(Response::new(full))
            }
            Err(f) => {
                drop(tx);
                Err(self.refused(&caller, RPC, &req.request_id, f).await)
            }
        }
    }

    async fn complete_renewal(
        &self,
        request: Request<pb::CompleteEnrollmentRequest>,
    ) -> Result<Response<pb::CompleteEnrollmentResponse>, Status> {
        const RPC: &str = "SelfService.CompleteRenewal";
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let key = request_key(&caller, RPC, &req.request_id, &req)?;
        self.own_renewal(&caller, &req.enrollment_id).await?;
        let desk = self.desk()?;
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
        // The desk expects the attestations to prove the renewal's token: the caller's.
        let certificates = match desk.complete(&caller.actor(), &complete, &key).await {
            Ok(Completion::Replayed(bytes)) => return stored_answer(&bytes),
            Ok(Completion::Issued(certificates)) => certificates,
            Err(f) => return Err(self.refused(&caller, RPC, &req.request_id, f).await),
        };
        let response = pb::CompleteEnrollmentResponse {
            certificates: self
                .converter()
                .slot_certificates_to_pb(certificates)
                .await?,
        };
        let mut tx = self.store.begin_write().await?;
        lifecycle::remember(&mut tx, &key, prost::Message::encode_to_vec(&response)).await?;
        tx.commit().await?;
        Ok(Response::new(response))
    }

    async fn confirm_renewal(
        &self,
        request: Request<pb::ConfirmEnrollmentRequest>,
    ) -> Result<Response<pb::ConfirmEnrollmentResponse>, Status> {
        const RPC: &str = "SelfService.ConfirmRenewal";
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let key = request_key(&caller, RPC, &req.request_id, &req)?;
        self.own_renewal(&caller, &req.enrollment_id).await?;
        let desk = self.desk()?;
        let mut tx = self.store.begin_write().await?;
        if let Some(record) = lifecycle::replay_record(&mut tx, &key).await? {
            return stored_answer(&record.response);
        }
        match desk
            .confirm(
                &mut tx,
                &caller.actor(),
                &req.enrollment_id,
                &req.request_id,
            )
            .await
        {
            Ok(token) => {
                let token = Tokens {
                    store: self.store.clone(),
                }
                .token_to_pb(token)
                .await?;
                let response = pb::ConfirmEnrollmentResponse { token: Some(token) };
                lifecycle::remember(&mut tx, &key, prost::Message::encode_to_vec(&response))
                    .await?;
                tx.commit().await?;
                Ok(Response::new(response))
            }
            Err(f) => {
                drop(tx);
                Err(self.refused(&caller, RPC, &req.request_id, f).await)
            }
        }
    }

    async fn abort_renewal(
        &self,
        request: Request<pb::AbortEnrollmentRequest>,
    ) -> Result<Response<pb::AbortEnrollmentResponse>, Status> {
        const RPC: &str = "SelfService.AbortRenewal";
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let key = request_key(&caller, RPC, &req.request_id, &req)?;
        self.own_renewal(&caller, &req.enrollment_id).await?;
        let desk = self.desk()?;
        let mut tx = self.store.begin_write().await?;
        if let Some(record) = lifecycle::replay_record(&mut tx, &key).await? {
            return stored_answer(&record.response);
        }
        match desk
            .abort(
                &mut tx,
                &caller.actor(),
                &req.enrollment_id,
                &req.reason,
                &req.request_id,
            )
            .await
        {
            Ok(view) => {
                let response = pb::AbortEnrollmentResponse {
                    enrollment: Some(self.converter().enrollment_to_pb(view).await?),
                };
                lifecycle::remember(&mut tx, &key, prost::Message::encode_to_vec(&response))
                    .await?;
                tx.commit().await?;
                Ok(Response::new(response))
            }
            Err(f) => {
                drop(tx);
                Err(self.refused(&caller, RPC, &req.request_id, f).await)
            }
        }
    }
}
