//! The gRPC edge as one tonic server: standard health and reflection, the latency and
//! client-revocation layers, and every Tessera service, over connections that already passed
//! the TLS handshake (the composition root, `server`, accepts them).
use super::audit_service::AuditLog;
use super::certificate_service::Certificates;
use super::client_revocation::ClientRevocationLayer;
use super::directory_service::Directory;
use super::enrollment_service::Enrollments;
use super::pb;
use super::rpc_metrics::RpcLatencyLayer;
use super::self_service::SelfServiceApi;
use super::token_service::Tokens;
use crate::audit::CheckpointVerifier;
use crate::ca::OnlineCa;
use crate::enroll::EnrollmentDesk;
use crate::metrics::RpcLatency;
use crate::store::Store;
use std::sync::Arc;

/// Connections whose TLS handshake completed (client certificate verified), in the order the
/// handshakes finished.
pub type TlsConnections = tokio::sync::mpsc::Receiver<
    std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
>;

/// What the gRPC services need, handed down by the composition root.
pub struct GrpcEdge {
    pub store: Store,
    /// The CA; `None` without `[ca]` (issuing RPCs answer FAILED_PRECONDITION).
    pub ca: Option<Arc<OnlineCa>>,
    /// Present with `[ca]` and `[enrollment]`; otherwise the enrollment RPCs answer
    /// FAILED_PRECONDITION ENROLLMENT_NOT_CONFIGURED.
    pub enrollment: Option<EnrollmentDesk>,
    /// Where each call's latency is recorded.
    pub rpc_latency: RpcLatency,
    /// Checks checkpoint signatures in VerifyAuditChain (present when checkpoints are signed).
    pub audit_verifier: Option<Arc<dyn CheckpointVerifier>>,
    /// The checkpoint file VerifyAuditChain also checks the chain against.
    pub checkpoint_file: Option<std::path::PathBuf>,
}

impl GrpcEdge {
    /// Serves `connections` until `shutdown` completes; following audit streams end then.
    pub async fn serve(
        self,
        connections: TlsConnections,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<pb::directory_service_server::DirectoryServiceServer<Directory>>()
            .await;
        health_reporter
            .set_serving::<pb::token_service_server::TokenServiceServer<Tokens>>()
            .await;
        health_reporter
            .set_serving::<pb::audit_service_server::AuditServiceServer<AuditLog>>()
            .await;
        health_reporter
            .set_serving::<pb::certificate_service_server::CertificateServiceServer<Certificates>>()
            .await;
        health_reporter
            .set_serving::<pb::enrollment_service_server::EnrollmentServiceServer<Enrollments>>()
            .await;
        health_reporter
            .set_serving::<pb::self_service_server::SelfServiceServer<SelfServiceApi>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("descriptor sets built by build.rs are valid");

        let (stop_streams, streams_stopping) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            shutdown.await;
            let _ = stop_streams.send(true);
        };
        let store = self.store;
        tonic::transport::Server::builder()
            .layer(RpcLatencyLayer(self.rpc_latency))
            .layer(ClientRevocationLayer(store.clone()))
            .add_service(health)
            .add_service(reflection)
            .add_service(
                pb::directory_service_server::DirectoryServiceServer::new(Directory {
                    store: store.clone(),
                })
                // A whole directory in one SyncPeople (up to 200,000 people).
                .max_decoding_message_size(super::DIRECTORY_MESSAGE_BYTES),
            )
            .add_service(pb::token_service_server::TokenServiceServer::new(Tokens {
                store: store.clone(),
            }))
            .add_service(pb::audit_service_server::AuditServiceServer::new(
                AuditLog {
                    store: store.clone(),
                    verifier: self.audit_verifier,
                    checkpoint_file: self.checkpoint_file,
                    stopping: streams_stopping,
                },
            ))
            .add_service(
                pb::certificate_service_server::CertificateServiceServer::new(Certificates {
                    store: store.clone(),
                    ca: self.ca.clone(),
                    attestation: self.enrollment.as_ref().map(|d| d.settings.clone()),
                }),
            )
            // Served here too so every RPC has one place in the role matrix: operator
            // certificates are refused by its own authorization, token certificates by
            // `client_revocation` before it.
            .add_service(pb::self_service_server::SelfServiceServer::new(
                SelfServiceApi {
                    store: store.clone(),
                    ca: self.ca,
                    desk: None,
                },
            ))
            .add_service(pb::enrollment_service_server::EnrollmentServiceServer::new(
                Enrollments {
                    store,
                    desk: self.enrollment,
                },
            ))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(connections),
                shutdown,
            )
            .await
    }
}

/// The self-service edge: `SelfService` alone (and health), for connections of the
/// `[self_service]` listener, whose TLS handshake verified a token certificate against the issuing
/// CA. No `client_revocation` layer (it admits operator certificates only): each call is
/// authorized by `lifecycle::token_caller`.
pub struct SelfServiceEdge {
    pub store: Store,
    pub ca: Option<Arc<OnlineCa>>,
    /// Renewal; `None` without `[enrollment]`.
    pub enrollment: Option<EnrollmentDesk>,
    /// Where each call's latency is recorded (the same histogram as the operator port's).
    pub rpc_latency: RpcLatency,
}

impl SelfServiceEdge {
    /// Serves `connections` until `shutdown` completes.
    pub async fn serve(
        self,
        connections: TlsConnections,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<pb::self_service_server::SelfServiceServer<SelfServiceApi>>()
            .await;
        tonic::transport::Server::builder()
            .layer(RpcLatencyLayer(self.rpc_latency))
            .add_service(health)
            .add_service(pb::self_service_server::SelfServiceServer::new(
                SelfServiceApi {
                    store: self.store,
                    ca: self.ca,
                    desk: self.enrollment,
                },
            ))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(connections),
                shutdown,
            )
            .await
    }
}
