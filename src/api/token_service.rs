//! `tessera.v1.TokenService`.
use super::TransitionRequest;
use super::authz::authorize;
use super::pb::{self, token_service_server::TokenService};
use super::{named_token, next_page_token, page_size, parse_page_token, person_filter, status};
use crate::lifecycle::{self, TokenTransition};
use crate::store::{Store, TokenRow, TokenState, TokensQuery};
use tonic::{Request, Response, Status};

pub struct Tokens {
    pub store: Store,
}

fn method(name: &str) -> String {
    format!("/tessera.v1.TokenService/{name}")
}

fn state_to_pb(s: TokenState) -> pb::TokenState {
    match s {
        TokenState::Enrolling => pb::TokenState::Enrolling,
        TokenState::Active => pb::TokenState::Active,
        TokenState::Suspended => pb::TokenState::Suspended,
        TokenState::Lost => pb::TokenState::Lost,
        TokenState::Damaged => pb::TokenState::Damaged,
        TokenState::Retired => pb::TokenState::Retired,
        TokenState::Forgotten => pb::TokenState::Forgotten,
    }
}

fn form_factor_to_pb(s: &str) -> pb::FormFactor {
    pb::FormFactor::from_str_name(&format!("FORM_FACTOR_{}", s.to_ascii_uppercase()))
        .unwrap_or(pb::FormFactor::Unspecified)
}

impl Tokens {
    pub(super) async fn token_to_pb(&self, t: TokenRow) -> Result<pb::Token, Status> {
        let certificate_serials = self.store.certificate_serials_for_token(t.id).await?;
        let temporary_for = self
            .store
            .temporary_token_for(t.id)
            .await?
            .unwrap_or_default();
        Ok(pb::Token {
            form_factor: form_factor_to_pb(&t.form_factor) as i32,
            state: state_to_pb(t.state) as i32,
            serial: t.serial,
            model: t.model,
            firmware: t.firmware,
            person_external_id: t.person_external_id.unwrap_or_default(),
            certificate_serials,
            created_at: t.created_at.to_string(),
            updated_at: t.updated_at.to_string(),
            temporary_for,
        })
    }

    /// One token transition RPC: authorize, then (once per request id) apply `transition` to the
    /// token named by the request and answer with the token as it now is.
    async fn transition_rpc<Req: TransitionRequest, Resp: prost::Message + Default>(
        &self,
        request: Request<Req>,
        rpc: &'static str,
        transition: TokenTransition,
        respond: fn(pb::Token) -> Resp,
    ) -> Result<Response<Resp>, Status> {
        let identity = authorize(&request, &method(rpc))?;
        let req = request.into_inner();
        let (request_id, serial, reason) = req.fields();
        idempotent!(self.store, identity, rpc, req, request_id: request_id, |tx| {
            let row = lifecycle::transition_token(
                tx,
                &identity.actor(),
                request_id,
                serial,
                transition,
                reason,
            )
            .await?;
            // Certificate serials are read outside the transaction: the transition does not change them.
            respond(self.token_to_pb(row).await?)
        })
    }
}

/// Largest `policy_toml` RecheckFleet accepts.
const MAX_POLICY_BYTES: usize = 65_536;
/// Most entries per list in a RecheckFleet answer (the totals count them all).
const MAX_RECHECK_ENTRIES: usize = 10_000;

fn recheck_entry_to_pb(e: &lifecycle::RecheckEntry) -> pb::RecheckEntry {
    pb::RecheckEntry {
        token_serial: e.token_serial.clone(),
        person_external_id: e.person.clone().unwrap_or_default(),
        person_display_name: e.person_name.clone().unwrap_or_default(),
        firmware: e.firmware.clone(),
        slot: e.slot.clone().unwrap_or_default(),
        key_algorithm: e.key_algorithm.unwrap_or_default().to_string(),
        certificate_serial: e.certificate_serial.clone(),
        profile: e.profile.clone(),
        reasons: e.reasons.iter().map(|r| r.to_string()).collect(),
        messages: e.messages.clone(),
    }
}

fn recheck_to_pb(
    report: &lifecycle::RecheckReport,
    action: pb::RecheckAction,
    policy_sha256: &str,
) -> pb::RecheckFleetResponse {
    let list = |entries: &[lifecycle::RecheckEntry]| {
        entries
            .iter()
            .take(MAX_RECHECK_ENTRIES)
            .map(recheck_entry_to_pb)
            .collect()
    };
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    pb::RecheckFleetResponse {
        action: action as i32,
        tokens_checked: count(report.tokens_checked),
        certificates_checked: count(report.certificates_checked),
        denied: list(&report.denied),
        unknown: list(&report.unknown),
        denied_total: count(report.denied.len()),
        unknown_total: count(report.unknown.len()),
        policy_sha256: policy_sha256.to_string(),
    }
}

transition_requests!(
    serial:
    pb::MarkTokenLostRequest,
    pb::MarkTokenDamagedRequest,
    pb::RetireTokenRequest,
    pb::SuspendTokenRequest,
    pb::ReinstateTokenRequest,
    pb::MarkTokenForgottenRequest
);

#[tonic::async_trait]
impl TokenService for Tokens {
    async fn recheck_fleet(
        &self,
        request: Request<pb::RecheckFleetRequest>,
    ) -> Result<Response<pb::RecheckFleetResponse>, Status> {
        use sha2::Digest;
        let identity = authorize(&request, &method("RecheckFleet"))?;
        let req = request.into_inner();
        let action = pb::RecheckAction::try_from(req.action).map_err(|_| {
            status::invalid_argument(
                "action",
                "INVALID_ENUM_VALUE",
                "action is not a RecheckAction",
            )
        })?;
        if req.policy_toml.is_empty() {
            return Err(status::invalid_argument(
                "policy_toml",
                "FIELD_REQUIRED",
                "policy_toml is empty; send the text of an attestation policy file",
            ));
        }
        if req.policy_toml.len() > MAX_POLICY_BYTES {
            return Err(status::invalid_argument(
                "policy_toml",
                "FIELD_TOO_LONG",
                &format!("policy_toml exceeds {MAX_POLICY_BYTES} bytes"),
            ));
        }
        let policy = crate::attest::Policy::from_toml(&req.policy_toml).map_err(|e| {
            status::invalid_argument("policy_toml", "ATTESTATION_POLICY_INVALID", &e.to_string())
        })?;
        let policy_sha256 = hex::encode(sha2::Sha256::digest(req.policy_toml.as_bytes()));
        let apply = match action {
            pb::RecheckAction::Unspecified => {
                let report = lifecycle::recheck_fleet_dry_run(&self.store, &policy).await?;
                return Ok(Response::new(recheck_to_pb(
                    &report,
                    action,
                    &policy_sha256,
                )));
            }
            pb::RecheckAction::Hold => lifecycle::RecheckApply::Hold,
            pb::RecheckAction::Notify => lifecycle::RecheckApply::Notify,
        };
        let source = format!("RecheckFleet sha256:{policy_sha256}");
        idempotent!(self.store, identity, "RecheckFleet", req, |tx| {
            let report = lifecycle::recheck_fleet_apply(
                tx,
                &identity.actor(),
                &req.request_id,
                &policy,
                &source,
                apply,
            )
            .await?;
            recheck_to_pb(&report, action, &policy_sha256)
        })
    }

    async fn get_token(
        &self,
        request: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::GetTokenResponse>, Status> {
        authorize(&request, &method("GetToken"))?;
        let req = request.into_inner();
        if req.serial.is_empty() {
            return Err(status::invalid_argument(
                "serial",
                "FIELD_REQUIRED",
                "serial is empty",
            ));
        }
        let row = named_token(&self.store, &req.serial).await?;
        Ok(Response::new(pb::GetTokenResponse {
            token: Some(self.token_to_pb(row).await?),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        authorize(&request, &method("ListTokens"))?;
        let req = request.into_inner();
        let limit = page_size(req.page_size)?;
        let person_id = person_filter(&self.store, &req.person_external_id).await?;
        let state = match pb::TokenState::try_from(req.state) {
            Ok(pb::TokenState::Unspecified) => None,
            Ok(pb::TokenState::Enrolling) => Some(TokenState::Enrolling),
            Ok(pb::TokenState::Active) => Some(TokenState::Active),
            Ok(pb::TokenState::Suspended) => Some(TokenState::Suspended),
            Ok(pb::TokenState::Lost) => Some(TokenState::Lost),
            Ok(pb::TokenState::Damaged) => Some(TokenState::Damaged),
            Ok(pb::TokenState::Retired) => Some(TokenState::Retired),
            Ok(pb::TokenState::Forgotten) => Some(TokenState::Forgotten),
            Err(_) => {
                return Err(status::invalid_argument(
                    "state",
                    "INVALID_ENUM_VALUE",
                    "state is not a TokenState",
                ));
            }
        };
        let rows = self
            .store
            .list_tokens(&TokensQuery {
                after_id: parse_page_token(&req.page_token)?,
                limit,
                person_id,
                state,
            })
            .await?;
        let next_page_token = next_page_token(&rows, limit, |r| r.id.to_string());
        let mut tokens = Vec::with_capacity(rows.len());
        for r in rows {
            tokens.push(self.token_to_pb(r).await?);
        }
        Ok(Response::new(pb::ListTokensResponse {
            tokens,
            next_page_token,
        }))
    }

    async fn mark_token_lost(
        &self,
        request: Request<pb::MarkTokenLostRequest>,
    ) -> Result<Response<pb::MarkTokenLostResponse>, Status> {
        self.transition_rpc(
            request,
            "MarkTokenLost",
            TokenTransition::MarkLost,
            |token| pb::MarkTokenLostResponse { token: Some(token) },
        )
        .await
    }

    async fn mark_token_damaged(
        &self,
        request: Request<pb::MarkTokenDamagedRequest>,
    ) -> Result<Response<pb::MarkTokenDamagedResponse>, Status> {
        self.transition_rpc(
            request,
            "MarkTokenDamaged",
            TokenTransition::MarkDamaged,
            |token| pb::MarkTokenDamagedResponse { token: Some(token) },
        )
        .await
    }

    async fn retire_token(
        &self,
        request: Request<pb::RetireTokenRequest>,
    ) -> Result<Response<pb::RetireTokenResponse>, Status> {
        self.transition_rpc(request, "RetireToken", TokenTransition::Retire, |token| {
            pb::RetireTokenResponse { token: Some(token) }
        })
        .await
    }

    async fn suspend_token(
        &self,
        request: Request<pb::SuspendTokenRequest>,
    ) -> Result<Response<pb::SuspendTokenResponse>, Status> {
        self.transition_rpc(request, "SuspendToken", TokenTransition::Suspend, |token| {
            pb::SuspendTokenResponse { token: Some(token) }
        })
        .await
    }

    async fn reinstate_token(
        &self,
        request: Request<pb::ReinstateTokenRequest>,
    ) -> Result<Response<pb::ReinstateTokenResponse>, Status> {
        self.transition_rpc(
            request,
            "ReinstateToken",
            TokenTransition::Reinstate,
            |token| pb::ReinstateTokenResponse { token: Some(token) },
        )
        .await
    }

    async fn mark_token_forgotten(
        &self,
        request: Request<pb::MarkTokenForgottenRequest>,
    ) -> Result<Response<pb::MarkTokenForgottenResponse>, Status> {
        self.transition_rpc(
            request,
            "MarkTokenForgotten",
            TokenTransition::MarkForgotten,
            |token| pb::MarkTokenForgottenResponse { token: Some(token) },
        )
        .await
    }
}
