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
use super::pb::{self, self_service_server::SelfService};
use super::status;
use super::token_service::Tokens;
use crate::ca::OnlineCa;
use crate::lifecycle::{SelfServiceRefusal, TokenCaller, token_caller};
use crate::store::{CertificateRow, Store, Timestamp};
use std::sync::Arc;
use tonic::{Code, Request, Response, Status};

pub struct SelfServiceApi {
    pub store: Store,
    /// The CA, for the profiles' renewal windows; `None` without `[ca]`.
    pub ca: Option<Arc<OnlineCa>>,
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
        // Filled in from the profile's renewal_window_days with desk renewal.
        let _ = (&self.ca, row);
        None
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
}
