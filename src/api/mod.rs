//! The gRPC edge: services over TLS 1.3 with mutual authentication. This module turns
//! requests into calls on `lifecycle`, `enroll`, `store` and `audit`, checks the caller's role,
//! and maps errors to gRPC status; the rules themselves live in those modules. The composition
//! root (`server`) hands it its parts and the accepted connections ([`GrpcEdge`]).

/// Runs a state-changing RPC once per request id of the caller `$identity`: a repeat by the
/// same client certificate gets the stored first answer and changes nothing (another
/// certificate is refused); the change, its audit events and the stored answer commit together.
macro_rules! idempotent {
    ($store:expr, $identity:expr, $method:expr, $request:ident, |$tx:ident| $body:expr) => {
        idempotent!($store, $identity, $method, $request, request_id: &$request.request_id, |$tx| $body)
    };
    ($store:expr, $identity:expr, $method:expr, $request:ident, request_id: $request_id:expr, |$tx:ident| $body:expr) => {{
        let key = crate::lifecycle::RequestKey::new(
            $request_id,
            $method,
            &prost::Message::encode_to_vec(&$request),
            &$identity.certificate_sha256,
        )?;
        let mut tx = $store.begin_write().await?;
        if let Some(bytes) = crate::lifecycle::replay(&mut tx, &key).await? {
            return prost::Message::decode(bytes.as_slice())
                .map(tonic::Response::new)
                .map_err(|e| crate::api::status::internal(&e));
        }
        let response = {
            let $tx = &mut tx;
            $body
        };
        crate::lifecycle::remember(&mut tx, &key, prost::Message::encode_to_vec(&response)).await?;
        tx.commit().await?;
        Ok(tonic::Response::new(response))
    }};
}

/// The requests of the state transition RPCs (of tokens and of people): each names what it
/// changes and says why.
trait TransitionRequest: prost::Message + Send + 'static {
    /// `(request_id, name of what changes, reason)`.
    fn fields(&self) -> (&str, &str, &str);
}

/// Implements `TransitionRequest` for requests whose field `$name` names what they change.
macro_rules! transition_requests {
    ($name:ident: $($request:ty),+ $(,)?) => {$(
        impl crate::api::TransitionRequest for $request {
            fn fields(&self) -> (&str, &str, &str) {
                (&self.request_id, &self.$name, &self.reason)
            }
        }
    )+};
}

mod audit_service;
pub mod authz;
mod certificate_issuance;
mod certificate_service;
pub mod client_revocation;
mod directory_service;
pub mod enrollment_service;
pub mod rpc_metrics;
pub mod self_service;
mod serve;
pub mod status;
mod token_service;

pub use authz::{Identity, Role};
pub use serve::{GrpcEdge, SelfServiceEdge, TlsConnections};

use crate::protocol::pb;

/// The page size of a List RPC when the request gives 0 (AIP-158).
pub const DEFAULT_PAGE_SIZE: i32 = 100;
/// The largest page a List RPC returns; a larger `page_size` is clamped to it (AIP-158).
pub const MAX_PAGE_SIZE: i32 = 1000;
/// The largest encoded `DirectoryService` request (a `SyncPeople` of a whole directory); every
/// other service keeps tonic's 4 MiB.
pub const DIRECTORY_MESSAGE_BYTES: usize = 64 << 20;

/// Page sizes: 0 means the default, a negative one is refused, larger than the maximum is
/// clamped.
pub(crate) fn page_size(requested: i32) -> Result<i64, tonic::Status> {
    match requested {
        n if n < 0 => Err(status::invalid_argument(
            "page_size",
            "INVALID_PAGE_SIZE",
            "page_size must not be negative",
        )),
        0 => Ok(i64::from(DEFAULT_PAGE_SIZE)),
        n => Ok(i64::from(n.min(MAX_PAGE_SIZE))),
    }
}

/// The token for the next page: the key of the last row when the page came back full, else
/// empty (no more rows).
pub(crate) fn next_page_token<T>(rows: &[T], limit: i64, key: impl Fn(&T) -> String) -> String {
    if rows.len() as i64 == limit {
        rows.last().map(key).unwrap_or_default()
    } else {
        String::new()
    }
}

/// Page tokens are the decimal id of the last row on the previous page.
pub(crate) fn parse_page_token(token: &str) -> Result<i64, tonic::Status> {
    if token.is_empty() {
        return Ok(0);
    }
    token.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        status::invalid_argument(
            "page_token",
            "INVALID_PAGE_TOKEN",
            "page_token is not one this server returned",
        )
    })
}

/// The person a request names by external id, or `PersonNotFound`.
pub(crate) async fn named_person(
    store: &crate::store::Store,
    external_id: &str,
) -> Result<crate::store::PersonRow, tonic::Status> {
    store
        .person_by_external_id(external_id)
        .await?
        .ok_or_else(|| {
            crate::lifecycle::LifecycleError::PersonNotFound(external_id.to_string()).into()
        })
}

/// The token a request names by serial, or `TokenNotFound`.
pub(crate) async fn named_token(
    store: &crate::store::Store,
    serial: &str,
) -> Result<crate::store::TokenRow, tonic::Status> {
    store
        .token_by_serial(serial)
        .await?
        .ok_or_else(|| crate::lifecycle::LifecycleError::TokenNotFound(serial.to_string()).into())
}

/// A list filter by person: none when `external_id` is empty, else the id of that person (who
/// must exist).
pub(crate) async fn person_filter(
    store: &crate::store::Store,
    external_id: &str,
) -> Result<Option<i64>, tonic::Status> {
    if external_id.is_empty() {
        return Ok(None);
    }
    Ok(Some(named_person(store, external_id).await?.id))
}

/// A list filter by token: none when `serial` is empty, else the id of that token (which must
/// exist).
pub(crate) async fn token_filter(
    store: &crate::store::Store,
    serial: &str,
) -> Result<Option<i64>, tonic::Status> {
    if serial.is_empty() {
        return Ok(None);
    }
    Ok(Some(named_token(store, serial).await?.id))
}
