//! `tessera.v1.TokenService`.
use super::authz::authorize;
use super::pb::{self, token_service_server::TokenService};
use super::{next_page_token, page_size, parse_page_token, status};
use crate::lifecycle::{self, LifecycleError, TokenTransition};
use crate::store::{Store, TokenRow, TokenState, TokensQuery, WriteTx};
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
    }
}

fn form_factor_to_pb(s: &str) -> pb::FormFactor {
    pb::FormFactor::from_str_name(&format!("FORM_FACTOR_{}", s.to_ascii_uppercase()))
        .unwrap_or(pb::FormFactor::Unspecified)
}

impl Tokens {
    pub(super) async fn token_to_pb(&self, t: TokenRow) -> Result<pb::Token, Status> {
        let certificate_serials = self.store.certificate_serials_for_token(t.id).await?;
        Ok(pb::Token {
            form_factor: form_factor_to_pb(&t.form_factor) as i32,
            state: state_to_pb(t.state) as i32,
            serial: t.serial,
            model: t.model,
            firmware: t.firmware,
            person_external_id: t.person_external_id.unwrap_or_default(),
            certificate_serials,
            created_at: t.created_at,
            updated_at: t.updated_at,
        })
    }

    async fn transition(
        &self,
        tx: &mut WriteTx,
        identity: &crate::api::Identity,
        request_id: &str,
        serial: &str,
        reason: &str,
        transition: TokenTransition,
    ) -> Result<pb::Token, Status> {
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
        self.token_to_pb(row).await
    }
}

#[tonic::async_trait]
impl TokenService for Tokens {
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
        let row = self
            .store
            .token_by_serial(&req.serial)
            .await?
            .ok_or_else(|| Status::from(LifecycleError::TokenNotFound(req.serial.clone())))?;
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
        let limit = page_size(req.page_size);
        let person_id = if req.person_external_id.is_empty() {
            None
        } else {
            let p = self
                .store
                .person_by_external_id(&req.person_external_id)
                .await?
                .ok_or_else(|| {
                    Status::from(LifecycleError::PersonNotFound(
                        req.person_external_id.clone(),
                    ))
                })?;
            Some(p.id)
        };
        let state = match pb::TokenState::try_from(req.state) {
            Ok(pb::TokenState::Unspecified) => None,
            Ok(pb::TokenState::Enrolling) => Some(TokenState::Enrolling),
            Ok(pb::TokenState::Active) => Some(TokenState::Active),
            Ok(pb::TokenState::Suspended) => Some(TokenState::Suspended),
            Ok(pb::TokenState::Lost) => Some(TokenState::Lost),
            Ok(pb::TokenState::Damaged) => Some(TokenState::Damaged),
            Ok(pb::TokenState::Retired) => Some(TokenState::Retired),
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
        let identity = authorize(&request, &method("MarkTokenLost"))?;
        let req = request.into_inner();
        idempotent!(self.store, "MarkTokenLost", req, |tx| {
            let token = self
                .transition(
                    tx,
                    &identity,
                    &req.request_id,
                    &req.serial,
                    &req.reason,
                    TokenTransition::MarkLost,
                )
                .await?;
            pb::MarkTokenLostResponse { token: Some(token) }
        })
    }

    async fn mark_token_damaged(
        &self,
        request: Request<pb::MarkTokenDamagedRequest>,
    ) -> Result<Response<pb::MarkTokenDamagedResponse>, Status> {
        let identity = authorize(&request, &method("MarkTokenDamaged"))?;
        let req = request.into_inner();
        idempotent!(self.store, "MarkTokenDamaged", req, |tx| {
            let token = self
                .transition(
                    tx,
                    &identity,
                    &req.request_id,
                    &req.serial,
                    &req.reason,
                    TokenTransition::MarkDamaged,
                )
                .await?;
            pb::MarkTokenDamagedResponse { token: Some(token) }
        })
    }

    async fn retire_token(
        &self,
        request: Request<pb::RetireTokenRequest>,
    ) -> Result<Response<pb::RetireTokenResponse>, Status> {
        let identity = authorize(&request, &method("RetireToken"))?;
        let req = request.into_inner();
        idempotent!(self.store, "RetireToken", req, |tx| {
            let token = self
                .transition(
                    tx,
                    &identity,
                    &req.request_id,
                    &req.serial,
                    &req.reason,
                    TokenTransition::Retire,
                )
                .await?;
            pb::RetireTokenResponse { token: Some(token) }
        })
    }

    async fn suspend_token(
        &self,
        request: Request<pb::SuspendTokenRequest>,
    ) -> Result<Response<pb::SuspendTokenResponse>, Status> {
        let identity = authorize(&request, &method("SuspendToken"))?;
        let req = request.into_inner();
        idempotent!(self.store, "SuspendToken", req, |tx| {
            let token = self
                .transition(
                    tx,
                    &identity,
                    &req.request_id,
                    &req.serial,
                    &req.reason,
                    TokenTransition::Suspend,
                )
                .await?;
            pb::SuspendTokenResponse { token: Some(token) }
        })
    }

    async fn reinstate_token(
        &self,
        request: Request<pb::ReinstateTokenRequest>,
    ) -> Result<Response<pb::ReinstateTokenResponse>, Status> {
        let identity = authorize(&request, &method("ReinstateToken"))?;
        let req = request.into_inner();
        idempotent!(self.store, "ReinstateToken", req, |tx| {
            let token = self
                .transition(
                    tx,
                    &identity,
                    &req.request_id,
                    &req.serial,
                    &req.reason,
                    TokenTransition::Reinstate,
                )
                .await?;
            pb::ReinstateTokenResponse { token: Some(token) }
        })
    }
}
