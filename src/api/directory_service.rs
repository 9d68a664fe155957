//! `tessera.v1.DirectoryService`.
use super::TransitionRequest;
use super::authz::authorize;
use super::pb::{self, directory_service_server::DirectoryService};
use super::{named_person, next_page_token, page_size, parse_page_token, status};
use crate::lifecycle::{self, LifecycleError, PersonInput, PersonTransition};
use crate::store::{PeopleQuery, PersonRow, PersonState, Store};
use tonic::{Request, Response, Status};

pub struct Directory {
    pub store: Store,
}

const SERVICE: &str = "/tessera.v1.DirectoryService/";

fn method(name: &str) -> String {
    format!("{SERVICE}{name}")
}

pub(crate) fn person_state_to_pb(s: PersonState) -> pb::PersonState {
    match s {
        PersonState::Active => pb::PersonState::Active,
        PersonState::Suspended => pb::PersonState::Suspended,
        PersonState::Offboarded => pb::PersonState::Offboarded,
    }
}

fn person_to_pb(p: PersonRow) -> pb::Person {
    let attributes = serde_json::from_str(&p.attributes_json).unwrap_or_default();
    pb::Person {
        record: Some(pb::PersonRecord {
            external_id: p.external_id,
            display_name: p.display_name,
            upn: p.upn,
            email: p.email,
            windows_sid: p.windows_sid.unwrap_or_default(),
            attributes,
        }),
        state: person_state_to_pb(p.state) as i32,
        sync_generation: p.sync_generation,
        created_at: p.created_at.to_string(),
        updated_at: p.updated_at.to_string(),
    }
}

fn input(record: Option<pb::PersonRecord>, field: &str) -> Result<PersonInput, LifecycleError> {
    let r = record.ok_or_else(|| lifecycle::LifecycleError::InvalidField {
        field: field.to_string(),
        reason: "FIELD_REQUIRED",
        message: "is missing".into(),
    })?;
    Ok(PersonInput {
        external_id: r.external_id,
        display_name: r.display_name,
        upn: r.upn,
        email: r.email,
        windows_sid: r.windows_sid,
        attributes: r.attributes.into_iter().collect(),
    })
}

impl Directory {
    /// One person transition RPC: authorize, then (once per request id) apply `transition` to
    /// the person named by the request and answer with the person as they now are.
    async fn transition_rpc<Req: TransitionRequest, Resp: prost::Message + Default>(
        &self,
        request: Request<Req>,
        rpc: &'static str,
        transition: PersonTransition,
        respond: fn(pb::Person) -> Resp,
    ) -> Result<Response<Resp>, Status> {
        let identity = authorize(&request, &method(rpc))?;
        let req = request.into_inner();
        let (request_id, external_id, reason) = req.fields();
        idempotent!(self.store, identity, rpc, req, request_id: request_id, |tx| {
            let row = lifecycle::transition_person(
                tx,
                &identity.actor(),
                request_id,
                external_id,
                transition,
                reason,
            )
            .await?;
            respond(person_to_pb(row))
        })
    }
}

transition_requests!(
    external_id:
    pb::SuspendPersonRequest,
    pb::ReinstatePersonRequest,
    pb::OffboardPersonRequest
);

#[tonic::async_trait]
impl DirectoryService for Directory {
    async fn create_person(
        &self,
        request: Request<pb::CreatePersonRequest>,
    ) -> Result<Response<pb::CreatePersonResponse>, Status> {
        let identity = authorize(&request, &method("CreatePerson"))?;
        let req = request.into_inner();
        idempotent!(self.store, identity, "CreatePerson", req, |tx| {
            let row = lifecycle::create_person(
                tx,
                &identity.actor(),
                &req.request_id,
                input(req.person.clone(), "person")?,
            )
            .await?;
            pb::CreatePersonResponse {
                person: Some(person_to_pb(row)),
            }
        })
    }

    async fn update_person(
        &self,
        request: Request<pb::UpdatePersonRequest>,
    ) -> Result<Response<pb::UpdatePersonResponse>, Status> {
        let identity = authorize(&request, &method("UpdatePerson"))?;
        let req = request.into_inner();
        idempotent!(self.store, identity, "UpdatePerson", req, |tx| {
            let row = lifecycle::update_person(
                tx,
                &identity.actor(),
                &req.request_id,
                input(req.person.clone(), "person")?,
            )
            .await?;
            pb::UpdatePersonResponse {
                person: Some(person_to_pb(row)),
            }
        })
    }

    async fn get_person(
        &self,
        request: Request<pb::GetPersonRequest>,
    ) -> Result<Response<pb::GetPersonResponse>, Status> {
        authorize(&request, &method("GetPerson"))?;
        let req = request.into_inner();
        if req.external_id.is_empty() {
            return Err(status::invalid_argument(
                "external_id",
                "FIELD_REQUIRED",
                "external_id is empty",
            ));
        }
        let row = named_person(&self.store, &req.external_id).await?;
        Ok(Response::new(pb::GetPersonResponse {
            person: Some(person_to_pb(row)),
        }))
    }

    async fn list_people(
        &self,
        request: Request<pb::ListPeopleRequest>,
    ) -> Result<Response<pb::ListPeopleResponse>, Status> {
        authorize(&request, &method("ListPeople"))?;
        let req = request.into_inner();
        let limit = page_size(req.page_size)?;
        let state = match pb::PersonState::try_from(req.state) {
            Ok(pb::PersonState::Unspecified) => None,
            Ok(pb::PersonState::Active) => Some(PersonState::Active),
            Ok(pb::PersonState::Suspended) => Some(PersonState::Suspended),
            Ok(pb::PersonState::Offboarded) => Some(PersonState::Offboarded),
            Err(_) => {
                return Err(status::invalid_argument(
                    "state",
                    "INVALID_ENUM_VALUE",
                    "state is not a PersonState",
                ));
            }
        };
        let rows = self
            .store
            .list_people(&PeopleQuery {
                after_id: parse_page_token(&req.page_token)?,
                limit,
                state,
            })
            .await?;
        let next_page_token = next_page_token(&rows, limit, |r| r.id.to_string());
        Ok(Response::new(pb::ListPeopleResponse {
            people: rows.into_iter().map(person_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn suspend_person(
        &self,
        request: Request<pb::SuspendPersonRequest>,
    ) -> Result<Response<pb::SuspendPersonResponse>, Status> {
        self.transition_rpc(
            request,
            "SuspendPerson",
            PersonTransition::Suspend,
            |person| pb::SuspendPersonResponse {
                person: Some(person),
            },
        )
        .await
    }

    async fn reinstate_person(
        &self,
        request: Request<pb::ReinstatePersonRequest>,
    ) -> Result<Response<pb::ReinstatePersonResponse>, Status> {
        self.transition_rpc(
            request,
            "ReinstatePerson",
            PersonTransition::Reinstate,
            |person| pb::ReinstatePersonResponse {
                person: Some(person),
            },
        )
        .await
    }

    async fn offboard_person(
        &self,
        request: Request<pb::OffboardPersonRequest>,
    ) -> Result<Response<pb::OffboardPersonResponse>, Status> {
        self.transition_rpc(
            request,
            "OffboardPerson",
            PersonTransition::Offboard,
            |person| pb::OffboardPersonResponse {
                person: Some(person),
            },
        )
        .await
    }

    async fn sync_people(
        &self,
        request: Request<pb::SyncPeopleRequest>,
    ) -> Result<Response<pb::SyncPeopleResponse>, Status> {
        let identity = authorize(&request, &method("SyncPeople"))?;
        let req = request.into_inner();
        idempotent!(self.store, identity, "SyncPeople", req, |tx| {
            let records = req
                .people
                .iter()
                .enumerate()
                .map(|(i, r)| input(Some(r.clone()), &format!("people[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let out = lifecycle::sync_people(
                tx,
                &identity.actor(),
                &req.request_id,
                req.generation,
                records,
                req.offboard_missing,
            )
            .await?;
            pb::SyncPeopleResponse {
                generation: req.generation,
                created: out.created,
                updated: out.updated,
                unchanged: out.unchanged,
                offboarded: out.offboarded,
            }
        })
    }
}
