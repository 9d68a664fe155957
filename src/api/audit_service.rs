//! `tessera.v1.AuditService`.
use super::authz::authorize;
use super::page_size;
use super::pb::{self, audit_service_server::AuditService};
use crate::audit::{self, CheckpointVerifier};
use crate::store::{AuditRow, Store};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct AuditLog {
    pub store: Store,
    /// The checkpoint key's public half; without it signatures are not checked.
    pub verifier: Option<Arc<dyn CheckpointVerifier>>,
    /// The append-only checkpoint file, checked against too when present.
    pub checkpoint_file: Option<std::path::PathBuf>,
    /// Becomes true when the server shuts down: following streams then end, so that graceful
    /// shutdown does not wait for clients that would follow forever.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// How often a following stream looks for new events. Polling the store (not an in-process
/// channel) sees events committed by every replica sharing the database.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(250);

fn method(name: &str) -> String {
    format!("/tessera.v1.AuditService/{name}")
}

fn event_to_pb(e: AuditRow) -> pb::AuditEvent {
    pb::AuditEvent {
        sequence: e.sequence,
        time: e.at,
        actor: e.actor,
        role: e.role,
        action: e.action,
        subject: e.subject,
        before_json: e.before_json,
        after_json: e.after_json,
        request_id: e.request_id,
        prev_hash: e.prev_hash,
        hash: e.hash,
    }
}

const STREAM_PAGE: i64 = 500;

#[tonic::async_trait]
impl AuditService for AuditLog {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        authorize(&request, &method("ListAuditEvents"))?;
        let req = request.into_inner();
        let limit = page_size(req.page_size)?;
        let rows = self
            .store
            .audit_events(req.after_sequence.max(0), limit)
            .await?;
        let next_after_sequence = if rows.len() as i64 == limit {
            rows.last().map(|r| r.sequence).unwrap_or(0)
        } else {
            0
        };
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: rows.into_iter().map(event_to_pb).collect(),
            next_after_sequence,
        }))
    }

    type StreamAuditEventsStream =
        Pin<Box<dyn Stream<Item = Result<pb::StreamAuditEventsResponse, Status>> + Send>>;

    async fn stream_audit_events(
        &self,
        request: Request<pb::StreamAuditEventsRequest>,
    ) -> Result<Response<Self::StreamAuditEventsStream>, Status> {
        authorize(&request, &method("StreamAuditEvents"))?;
        // The caller's certificate, looked up again on each poll of a following stream: once it
        // is revoked or put on hold the stream ends with the refusal a new call would get.
        let leaf: Option<Vec<u8>> = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()));
        let req = request.into_inner();
        let mut after = req.after_sequence.max(0);
        let follow = req.follow;
        let mut stopping = self.stopping.clone();
        let store = self.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let page = match store.audit_events(after, STREAM_PAGE).await {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                let last_page = (page.len() as i64) < STREAM_PAGE;
                for e in page {
                    after = e.sequence;
                    if tx
                        .send(Ok(pb::StreamAuditEventsResponse {
                            event: Some(event_to_pb(e)),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if last_page {
                    if !follow {
                        return;
                    }
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = stopping.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(FOLLOW_POLL) => {}
                    }
                    if let Some(leaf) = &leaf
                        && let Some(status) = super::client_revocation::refusal(&store, leaf).await
                    {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn verify_audit_chain(
        &self,
        request: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<pb::VerifyAuditChainResponse>, Status> {
        authorize(&request, &method("VerifyAuditChain"))?;
        let file_checkpoints = match &self.checkpoint_file {
            Some(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || audit::read_checkpoint_file(&path))
                    .await
                    .map_err(|e| super::status::internal(&e))?
                    .map_err(|e| super::status::internal(&e))?
            }
            None => Vec::new(),
        };
        let report =
            audit::verify_with_file(&self.store, self.verifier.as_deref(), &file_checkpoints)
                .await
                .map_err(|e| super::status::internal(&e))?;
        let (first_bad_sequence, problem) = match &report.first_bad {
            Some(b) => (b.sequence, b.problem.to_string()),
            None => (0, String::new()),
        };
        Ok(Response::new(pb::VerifyAuditChainResponse {
            intact: report.first_bad.is_none(),
            events: report.events,
            checkpoints: report.checkpoints,
            first_bad_sequence,
            problem,
            signatures_checked: self.verifier.is_some(),
            file_checkpoints: report.file_checkpoints,
        }))
    }
}
