//! The gRPC server over mTLS on SQLite and PostgreSQL: the role matrix, idempotency, errors,
//! audit tamper detection through the API and `tessera audit verify`, and the real binary.
use crate::harness;

use harness::binary::tessera;
use harness::config::{Audit, CLIENT_CA, ServerToml};
use harness::pki::{ClientCert, TestPki};
use harness::server::{KillOnDrop, ServerTask, TestServer, connect};
use harness::softhsm::SoftHsmToken;
use std::collections::BTreeMap;
use tessera::protocol::pb;
use tessera::protocol::pb::audit_service_client::AuditServiceClient;
use tessera::protocol::pb::certificate_service_client::CertificateServiceClient;
use tessera::protocol::pb::directory_service_client::DirectoryServiceClient;
use tessera::protocol::pb::enrollment_service_client::EnrollmentServiceClient;
use tessera::protocol::pb::token_service_client::TokenServiceClient;
use tessera::server::{BoundServer, ServerConfig};
use tessera::store::{NewToken, Store, TokenState};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Status};
use tonic_types::StatusExt;

on_both_databases!(
    role_matrix,
    certificates_without_a_usable_role_are_refused,
    idempotent_create_returns_the_first_answer,
    idempotent_transition_replays_and_refuses_reuse,
    directory_flow_and_errors,
    sync_reports_changes,
    token_transitions_over_grpc,
    audit_tamper_is_named_by_the_api_and_the_cli,
    audit_checkpoints_signed_in_softhsm,
    issued_client_certificate_carries_its_role,
    certificates_lookup_hold_and_revoke,
    http_side_health_chain_and_metrics,
    metrics_on_their_own_listener_only,
    audit_stream_follows_new_events,
    revoked_client_certificate_is_refused_on_open_connections,
    following_audit_stream_ends_when_its_callers_certificate_is_revoked,
    helpdesk_cannot_revoke_operator_certificates_and_releases_holds,
);

fn record(id: &str) -> pb::PersonRecord {
    pb::PersonRecord {
        external_id: id.into(),
        display_name: format!("Person {id}"),
        upn: format!("{id}@corp.test"),
        email: format!("{id}@corp.test"),
        windows_sid: String::new(),
        attributes: [("department".to_string(), "R&D".to_string())].into(),
    }
}

/// The reason from google.rpc.ErrorInfo and the fields from google.rpc.BadRequest.
fn reason_and_fields(s: &Status) -> (String, Vec<String>) {
    let d = s.get_error_details();
    let reason = d.error_info().map(|i| i.reason.clone()).unwrap_or_default();
    let fields = d
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    (reason, fields)
}

/// Calls every RPC of every Tessera service with a minimal request; returns each method's
/// result code (Ok → None).
async fn call_every_rpc(ch: Channel) -> BTreeMap<&'static str, Option<Code>> {
    let mut d = DirectoryServiceClient::new(ch.clone());
    let mut t = TokenServiceClient::new(ch.clone());
    let mut a = AuditServiceClient::new(ch.clone());
    let mut c = CertificateServiceClient::new(ch.clone());
    let mut e = EnrollmentServiceClient::new(ch.clone());
    let mut ss = tessera::protocol::pb::self_service_client::SelfServiceClient::new(ch);
    let mut out = BTreeMap::new();
    fn code<T>(r: Result<tonic::Response<T>, Status>) -> Option<Code> {
        r.err().map(|s| s.code())
    }
    out.insert(
        "CreatePerson",
        code(d.create_person(pb::CreatePersonRequest::default()).await),
    );
    out.insert(
        "UpdatePerson",
        code(d.update_person(pb::UpdatePersonRequest::default()).await),
    );
    out.insert(
        "GetPerson",
        code(d.get_person(pb::GetPersonRequest::default()).await),
    );
    out.insert(
        "ListPeople",
        code(d.list_people(pb::ListPeopleRequest::default()).await),
    );
    out.insert(
        "SuspendPerson",
        code(d.suspend_person(pb::SuspendPersonRequest::default()).await),
    );
    out.insert(
        "ReinstatePerson",
        code(
            d.reinstate_person(pb::ReinstatePersonRequest::default())
                .await,
        ),
    );
    out.insert(
        "OffboardPerson",
        code(
            d.offboard_person(pb::OffboardPersonRequest::default())
                .await,
        ),
    );
    out.insert(
        "SyncPeople",
        code(d.sync_people(pb::SyncPeopleRequest::default()).await),
    );
    out.insert(
        "GetToken",
        code(t.get_token(pb::GetTokenRequest::default()).await),
    );
    out.insert(
        "ListTokens",
        code(t.list_tokens(pb::ListTokensRequest::default()).await),
    );
    out.insert(
        "MarkTokenLost",
        code(t.mark_token_lost(pb::MarkTokenLostRequest::default()).await),
    );
    out.insert(
        "MarkTokenDamaged",
        code(
            t.mark_token_damaged(pb::MarkTokenDamagedRequest::default())
                .await,
        ),
    );
    out.insert(
        "RetireToken",
        code(t.retire_token(pb::RetireTokenRequest::default()).await),
    );
    out.insert(
        "SuspendToken",
        code(t.suspend_token(pb::SuspendTokenRequest::default()).await),
    );
    out.insert(
        "ReinstateToken",
        code(
            t.reinstate_token(pb::ReinstateTokenRequest::default())
                .await,
        ),
    );
    out.insert(
        "MarkTokenForgotten",
        code(
            t.mark_token_forgotten(pb::MarkTokenForgottenRequest::default())
                .await,
        ),
    );
    out.insert(
        "RecheckFleet",
        code(t.recheck_fleet(pb::RecheckFleetRequest::default()).await),
    );
    out.insert(
        "ListAuditEvents",
        code(
            a.list_audit_events(pb::ListAuditEventsRequest::default())
                .await,
        ),
    );
    out.insert(
        "StreamAuditEvents",
        code(
            a.stream_audit_events(pb::StreamAuditEventsRequest::default())
                .await,
        ),
    );
    out.insert(
        "GetCertificate",
        code(
            c.get_certificate(pb::GetCertificateRequest::default())
                .await,
        ),
    );
    out.insert(
        "ListCertificates",
        code(
            c.list_certificates(pb::ListCertificatesRequest::default())
                .await,
        ),
    );
    out.insert(
        "ListExpiringCertificates",
        code(
            c.list_expiring_certificates(pb::ListExpiringCertificatesRequest::default())
                .await,
        ),
    );
    out.insert(
        "RevokeCertificate",
        code(
            c.revoke_certificate(pb::RevokeCertificateRequest::default())
                .await,
        ),
    );
    out.insert(
        "ReleaseCertificateHold",
        code(
            c.release_certificate_hold(pb::ReleaseCertificateHoldRequest::default())
                .await,
        ),
    );
    out.insert(
        "LookupCertificate",
        code(
            c.lookup_certificate(pb::LookupCertificateRequest::default())
                .await,
        ),
    );
    out.insert(
        "IssueFromCsr",
        code(c.issue_from_csr(pb::IssueFromCsrRequest::default()).await),
    );
    out.insert(
        "GetCaChain",
        code(c.get_ca_chain(pb::GetCaChainRequest::default()).await),
    );
    out.insert(
        "BeginEnrollment",
        code(
            e.begin_enrollment(pb::BeginEnrollmentRequest::default())
                .await,
        ),
    );
    out.insert(
        "CompleteEnrollment",
        code(
            e.complete_enrollment(pb::CompleteEnrollmentRequest::default())
                .await,
        ),
    );
    out.insert(
        "ConfirmEnrollment",
        code(
            e.confirm_enrollment(pb::ConfirmEnrollmentRequest::default())
                .await,
        ),
    );
    out.insert(
        "AbortEnrollment",
        code(
            e.abort_enrollment(pb::AbortEnrollmentRequest::default())
                .await,
        ),
    );
    out.insert(
        "GetEnrollment",
        code(e.get_enrollment(pb::GetEnrollmentRequest::default()).await),
    );
    out.insert(
        "ReleasePuk",
        code(e.release_puk(pb::ReleasePukRequest::default()).await),
    );
    out.insert(
        "ConfirmPukRotation",
        code(
            e.confirm_puk_rotation(pb::ConfirmPukRotationRequest::default())
                .await,
        ),
    );
    out.insert(
        "ApprovePukRelease",
        code(
            e.approve_puk_release(pb::ApprovePukReleaseRequest::default())
                .await,
        ),
    );
    out.insert(
        "BeginRenewal",
        code(e.begin_renewal(pb::BeginRenewalRequest::default()).await),
    );
    out.insert(
        "GetMyToken",
        code(ss.get_my_token(pb::GetMyTokenRequest::default()).await),
    );
    out.insert(
        "SelfService/BeginRenewal",
        code(ss.begin_renewal(pb::BeginMyRenewalRequest::default()).await),
    );
    out.insert(
        "SelfService/CompleteRenewal",
        code(
            ss.complete_renewal(pb::CompleteEnrollmentRequest::default())
                .await,
        ),
    );
    out.insert(
        "SelfService/ConfirmRenewal",
        code(
            ss.confirm_renewal(pb::ConfirmEnrollmentRequest::default())
                .await,
        ),
    );
    out.insert(
        "SelfService/AbortRenewal",
        code(
            ss.abort_renewal(pb::AbortEnrollmentRequest::default())
                .await,
        ),
    );
    out.insert(
        "VerifyAuditChain",
        code(
            a.verify_audit_chain(pb::VerifyAuditChainRequest::default())
                .await,
        ),
    );
    out
}

/// The documented role matrix (docs/api.md), written out independently of the server's table.
fn allowed(method: &str) -> &'static [&'static str] {
    match method {
        "CreatePerson" | "UpdatePerson" | "SuspendPerson" | "ReinstatePerson"
        | "OffboardPerson" | "SyncPeople" => &["hr", "admin"],
        "GetPerson" | "ListPeople" => &["hr", "helpdesk", "admin"],
        "GetToken" | "ListTokens" => &["hr", "helpdesk", "admin"],
        "MarkTokenLost" | "MarkTokenDamaged" | "RetireToken" | "SuspendToken"
        | "ReinstateToken" | "MarkTokenForgotten" => &["helpdesk", "admin"],
        "RecheckFleet" => &["admin"],
        "ListAuditEvents" | "StreamAuditEvents" | "VerifyAuditChain" => &["auditor", "admin"],
        "GetCertificate" | "ListCertificates" | "ListExpiringCertificates" => {
            &["helpdesk", "auditor", "admin"]
        }
        "RevokeCertificate" | "ReleaseCertificateHold" | "IssueFromCsr" => &["helpdesk", "admin"],
        "GetCaChain" => &["hr", "helpdesk", "auditor", "admin", "relying-party"],
        "LookupCertificate" => &["relying-party", "helpdesk", "admin"],
        "BeginEnrollment" | "CompleteEnrollment" | "ConfirmEnrollment" | "AbortEnrollment"
        | "GetEnrollment" | "ReleasePuk" | "ApprovePukRelease" | "ConfirmPukRotation"
        | "BeginRenewal" => &["helpdesk", "admin"],
        // No role: only a token's own certificate (docs/api.md, "SelfService").
        "GetMyToken"
        | "SelfService/BeginRenewal"
        | "SelfService/CompleteRenewal"
        | "SelfService/ConfirmRenewal"
        | "SelfService/AbortRenewal" => &[],
        other => panic!("no expectation for {other}"),
    }
}

/// Without a client certificate while one is required (the default): refused in the TLS
/// handshake, on connect or on the first call, and never reaching a service.
async fn refused_in_tls(addr: std::net::SocketAddr, ca_pem: &str) {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    let ch = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    // TLS 1.3 client authentication fails after the client's side of the handshake, so the
    // refusal may show on connect or on the first call.
    if let Ok(ch) = ch {
        let results = call_every_rpc(ch).await;
        assert_eq!(results.len(), 42);
        for (method, code) in results {
            assert!(
                matches!(
                    code,
                    Some(Code::Unavailable | Code::Unknown | Code::Cancelled)
                ),
                "{method} without a certificate must fail in TLS, got {code:?}"
            );
        }
    }
}

async fn role_matrix(url: &str) {
    // Both settings of [tls] require_client_certificate; the roles behave the same in both.
    for require in [true, false] {
        let server = TestServer::builder(url)
            .require_client_certificate(require)
            .start()
            .await;
        if require {
            refused_in_tls(server.addr(), &server.pki.ca_pem).await;
        } else {
            let anonymous = call_every_rpc(server.channel(None).await).await;
            assert_eq!(anonymous.len(), 42);
            for (method, code) in &anonymous {
                assert_eq!(
                    *code,
                    Some(Code::Unauthenticated),
                    "{method} without a certificate"
                );
            }
        }
        role_matrix_for_roles(&server).await;
        server.stop().await;
    }
    // Nothing was changed by any refused or empty call.
    let store = Store::open(url).await.unwrap();
    assert!(store.audit_events(0, 10).await.unwrap().is_empty());
}

async fn role_matrix_for_roles(server: &TestServer) {
    for role in ["hr", "helpdesk", "auditor", "admin", "relying-party"] {
        let results = call_every_rpc(server.as_role(role).await).await;
        for (method, code) in results {
            if allowed(method).contains(&role) {
                assert!(
                    !matches!(code, Some(Code::PermissionDenied | Code::Unauthenticated)),
                    "{role} must be allowed {method}, got {code:?}"
                );
            } else {
                assert_eq!(
                    code,
                    Some(Code::PermissionDenied),
                    "{role} must be refused {method}"
                );
            }
        }
    }
}

async fn certificates_without_a_usable_role_are_refused(url: &str) {
    let server = TestServer::builder(url).start().await;
    let cases = [
        (
            server.pki.client_with_uris("no-role", &[]),
            "NO_ROLE_IN_CERTIFICATE",
        ),
        (
            server
                .pki
                .client_with_uris("odd-role", &["tessera:role:superuser"]),
            "UNKNOWN_ROLE",
        ),
        (
            server
                .pki
                .client_with_uris("two-roles", &["tessera:role:hr", "tessera:role:admin"]),
            "SEVERAL_ROLES_IN_CERTIFICATE",
        ),
    ];
    for (cert, reason) in cases {
        let mut d = DirectoryServiceClient::new(server.channel(Some(&cert)).await);
        let s = d
            .list_people(pb::ListPeopleRequest::default())
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(reason_and_fields(&s).0, reason);
    }
    let mut d = DirectoryServiceClient::new(server.as_role("auditor").await);
    let s = d
        .list_people(pb::ListPeopleRequest::default())
        .await
        .unwrap_err();
    assert_eq!(reason_and_fields(&s).0, "ROLE_NOT_ALLOWED");
    assert_eq!(
        s.message(),
        "role auditor may not call /tessera.v1.DirectoryService/ListPeople"
    );
    server.stop().await;
    // With client certificates optional, a caller without one gets the reason.
    let server = TestServer::builder(url)
        .require_client_certificate(false)
        .start()
        .await;
    let mut d = DirectoryServiceClient::new(server.channel(None).await);
    let s = d
        .list_people(pb::ListPeopleRequest::default())
        .await
        .unwrap_err();
    assert_eq!(reason_and_fields(&s).0, "CLIENT_CERTIFICATE_REQUIRED");
    server.stop().await;
}

async fn idempotent_create_returns_the_first_answer(url: &str) {
    let server = TestServer::builder(url).start().await;
    let mut d = DirectoryServiceClient::new(server.as_role("hr").await);
    let req = pb::CreatePersonRequest {
        request_id: "create-E1".into(),
        person: Some(record("E1")),
    };
    let first = d.create_person(req.clone()).await.unwrap().into_inner();
    let second = d.create_person(req.clone()).await.unwrap().into_inner();
    assert_eq!(first, second);
    let mut other = req.clone();
    other.person.as_mut().unwrap().display_name = "Someone else".into();
    let s = d.create_person(other).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(
        reason_and_fields(&s),
        ("REQUEST_ID_REUSED".into(), vec!["request_id".to_string()])
    );
    // A fresh request id for the same person is a new request, refused on its merits.
    let s = d
        .create_person(pb::CreatePersonRequest {
            request_id: "create-E1-again".into(),
            person: Some(record("E1")),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason_and_fields(&s).0.as_str()),
        (Code::AlreadyExists, "PERSON_EXISTS")
    );
    let store = Store::open(url).await.unwrap();
    assert_eq!(store.audit_events(0, 10).await.unwrap().len(), 1);
    server.stop().await;
}

async fn idempotent_transition_replays_and_refuses_reuse(url: &str) {
    let server = TestServer::builder(url).start().await;
    let mut d = DirectoryServiceClient::new(server.as_role("hr").await);
    d.create_person(pb::CreatePersonRequest {
        request_id: "c".into(),
        person: Some(record("E1")),
    })
    .await
    .unwrap();
    let suspend = pb::SuspendPersonRequest {
        request_id: "s1".into(),
        external_id: "E1".into(),
        reason: "leave".into(),
    };
    let first = d
        .suspend_person(suspend.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.person.as_ref().unwrap().state,
        pb::PersonState::Suspended as i32
    );
    let again = d
        .suspend_person(suspend.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    let s = d
        .suspend_person(pb::SuspendPersonRequest {
            request_id: "s2".into(),
            external_id: "E1".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert_eq!(s.message(), "cannot suspend a person that is suspended");
    assert_eq!(reason_and_fields(&s).0, "INVALID_STATE_TRANSITION");
    // The same request id on another RPC is a reuse.
    let s = d
        .offboard_person(pb::OffboardPersonRequest {
            request_id: "s1".into(),
            external_id: "E1".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason_and_fields(&s).0, "REQUEST_ID_REUSED");
    let s = d
        .offboard_person(pb::OffboardPersonRequest {
            request_id: String::new(),
            external_id: "E1".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        reason_and_fields(&s),
        ("REQUEST_ID_MISSING".into(), vec!["request_id".to_string()])
    );
    let store = Store::open(url).await.unwrap();
    let actions: Vec<_> = store
        .audit_events(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["person.create", "person.suspend"]);
    server.stop().await;
}

async fn directory_flow_and_errors(url: &str) {
    let server = TestServer::builder(url).start().await;
    let mut d = DirectoryServiceClient::new(server.as_role("hr").await);
    for i in 0..5 {
        d.create_person(pb::CreatePersonRequest {
            request_id: format!("c{i}"),
            person: Some(record(&format!("E{i}"))),
        })
        .await
        .unwrap();
    }
    let mut updated = record("E2");
    updated.windows_sid = "S-1-5-21-1-2-3-1001".into();
    let p = d
        .update_person(pb::UpdatePersonRequest {
            request_id: "u".into(),
            person: Some(updated.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .person
        .unwrap();
    assert_eq!(p.record.as_ref().unwrap(), &updated);
    let got = d
        .get_person(pb::GetPersonRequest {
            external_id: "E2".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .person
        .unwrap();
    assert_eq!(got, p);

    let mut ids = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = d
            .list_people(pb::ListPeopleRequest {
                page_size: 2,
                page_token: token,
                state: 0,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        ids.extend(
            page.people
                .into_iter()
                .map(|p| p.record.unwrap().external_id),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ids, ["E0", "E1", "E2", "E3", "E4"]);
    assert_eq!(pages, 3);

    for (i, step) in ["suspend", "reinstate", "offboard"].into_iter().enumerate() {
        let (rid, id) = (format!("t{i}"), "E1".to_string());
        let person = match step {
            "suspend" => {
                d.suspend_person(pb::SuspendPersonRequest {
                    request_id: rid,
                    external_id: id,
                    reason: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .person
            }
            "reinstate" => {
                d.reinstate_person(pb::ReinstatePersonRequest {
                    request_id: rid,
                    external_id: id,
                    reason: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .person
            }
            _ => {
                d.offboard_person(pb::OffboardPersonRequest {
                    request_id: rid,
                    external_id: id,
                    reason: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .person
            }
        };
        let want = [
            pb::PersonState::Suspended,
            pb::PersonState::Active,
            pb::PersonState::Offboarded,
        ][i];
        assert_eq!(person.unwrap().state, want as i32);
    }
    let offboarded = d
        .list_people(pb::ListPeopleRequest {
            page_size: 0,
            page_token: String::new(),
            state: pb::PersonState::Offboarded as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(offboarded.people.len(), 1);

    let s = d
        .get_person(pb::GetPersonRequest {
            external_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), s.message()),
        (Code::NotFound, "no person with external id \"nobody\"")
    );
    assert_eq!(reason_and_fields(&s).0, "PERSON_NOT_FOUND");
    let mut bad = record("E9");
    bad.email = "not-an-address".into();
    let s = d
        .create_person(pb::CreatePersonRequest {
            request_id: "bad".into(),
            person: Some(bad),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(s.message(), "person.email: must look like name@domain");
    assert_eq!(
        reason_and_fields(&s),
        ("INVALID_EMAIL".into(), vec!["person.email".to_string()])
    );
    let s = d
        .create_person(pb::CreatePersonRequest {
            request_id: "none".into(),
            person: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        reason_and_fields(&s),
        ("FIELD_REQUIRED".into(), vec!["person".to_string()])
    );
    let s = d
        .list_people(pb::ListPeopleRequest {
            page_size: 1,
            page_token: "garbage".into(),
            state: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        reason_and_fields(&s),
        ("INVALID_PAGE_TOKEN".into(), vec!["page_token".to_string()])
    );
    let s = d
        .update_person(pb::UpdatePersonRequest {
            request_id: "u-off".into(),
            person: Some(record("E1")),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::FailedPrecondition,
            "cannot update a person that is offboarded"
        )
    );
    server.stop().await;
}

async fn sync_reports_changes(url: &str) {
    let server = TestServer::builder(url).start().await;
    let mut d = DirectoryServiceClient::new(server.as_role("hr").await);
    let sync = |rid: &str,
                generation: i64,
                people: Vec<pb::PersonRecord>,
                offboard_missing: bool| pb::SyncPeopleRequest {
        request_id: rid.into(),
        generation,
        people,
        offboard_missing,
    };
    let out = d
        .sync_people(sync(
            "s1",
            1,
            vec![record("A"), record("B"), record("C")],
            false,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.created, ["A", "B", "C"]);
    let mut b = record("B");
    b.display_name = "Bee".into();
    let out = d
        .sync_people(sync("s2", 2, vec![record("A"), b], true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (out.unchanged, out.updated, out.offboarded),
        (
            vec!["A".to_string()],
            vec!["B".to_string()],
            vec!["C".to_string()]
        )
    );
    let s = d
        .sync_people(sync("s3", 2, vec![], false))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert_eq!(
        reason_and_fields(&s),
        (
            "STALE_SYNC_GENERATION".into(),
            vec!["generation".to_string()]
        )
    );
    let mut bad = record("D");
    bad.upn = String::new();
    let s = d
        .sync_people(sync("s4", 3, vec![record("A"), bad], false))
        .await
        .unwrap_err();
    assert_eq!(
        reason_and_fields(&s),
        (
            "FIELD_REQUIRED".into(),
            vec!["people[1].person.upn".to_string()]
        )
    );
    assert!(
        Store::open(url)
            .await
            .unwrap()
            .person_by_external_id("D")
            .await
            .unwrap()
            .is_none()
    );
    server.stop().await;
}

async fn token_transitions_over_grpc(url: &str) {
    let server = TestServer::builder(url).start().await;
    let mut d = DirectoryServiceClient::new(server.as_role("hr").await);
    d.create_person(pb::CreatePersonRequest {
        request_id: "c".into(),
        person: Some(record("E1")),
    })
    .await
    .unwrap();
    // Tokens are created by enrollment (next issue); the test puts one in the store directly.
    let store = Store::open(url).await.unwrap();
    let owner = store.person_by_external_id("E1").await.unwrap().unwrap();
    let mut tx = store.begin_write().await.unwrap();
    for serial in ["1001", "1002"] {
        tx.insert_token(&NewToken {
            serial: serial.into(),
            model: "YubiKey 5C NFC".into(),
            firmware: "5.7.1".into(),
            form_factor: "usb_c_keychain".into(),
            state: TokenState::Active,
            person_id: Some(owner.id),
        })
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let mut t = TokenServiceClient::new(server.as_role("helpdesk").await);
    let tok = t
        .get_token(pb::GetTokenRequest {
            serial: "1001".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(tok.person_external_id, "E1");
    assert_eq!(tok.form_factor, pb::FormFactor::UsbCKeychain as i32);
    assert_eq!(tok.state, pb::TokenState::Active as i32);
    let listed = t
        .list_tokens(pb::ListTokensRequest {
            person_external_id: "E1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 2);
    let lost = t
        .mark_token_lost(pb::MarkTokenLostRequest {
            request_id: "l".into(),
            serial: "1001".into(),
            reason: "train".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lost.token.unwrap().state, pb::TokenState::Lost as i32);
    let suspended = t
        .suspend_token(pb::SuspendTokenRequest {
            request_id: "s".into(),
            serial: "1002".into(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        suspended.token.unwrap().state,
        pb::TokenState::Suspended as i32
    );
    let active = t
        .list_tokens(pb::ListTokensRequest {
            state: pb::TokenState::Active as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(active.tokens.is_empty());
    let s = t
        .reinstate_token(pb::ReinstateTokenRequest {
            request_id: "r".into(),
            serial: "1001".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::FailedPrecondition,
            "cannot reinstate a token that is lost"
        )
    );
    let s = t
        .retire_token(pb::RetireTokenRequest {
            request_id: "x".into(),
            serial: "404".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason_and_fields(&s).0.as_str()),
        (Code::NotFound, "TOKEN_NOT_FOUND")
    );
    let events = store.audit_events(0, 10).await.unwrap();
    assert_eq!(events.last().unwrap().action, "token.suspend");
    assert_eq!(
        (events[1].actor.as_str(), events[1].role.as_str()),
        ("helpdesk-client", "helpdesk")
    );
    server.stop().await;
}

async fn audit_tamper_is_named_by_the_api_and_the_cli(url: &str) {
    let server = TestServer::builder(url).start().await;
    let mut d = DirectoryServiceClient::new(server.as_role("hr").await);
    for i in 0..4 {
        d.create_person(pb::CreatePersonRequest {
            request_id: format!("c{i}"),
            person: Some(record(&format!("E{i}"))),
        })
        .await
        .unwrap();
    }
    let mut a = AuditServiceClient::new(server.as_role("auditor").await);
    let v = a
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(v.intact);
    assert_eq!(v.events, 4);
    let page = a
        .list_audit_events(pb::ListAuditEventsRequest {
            page_size: 3,
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 3);
    assert_eq!(page.next_after_sequence, 3);
    let mut stream = a
        .stream_audit_events(pb::StreamAuditEventsRequest {
            after_sequence: 1,
            follow: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        streamed.push(m.event.unwrap().sequence);
    }
    assert_eq!(streamed, [2, 3, 4]);

    let tessera = assert_cmd::cargo::cargo_bin("tessera");
    let out = std::process::Command::new(&tessera)
        .args(["audit", "verify", "--config"])
        .arg(&server.config_path)
        .output()
        .unwrap();
    // The chain verifies; the replay then names the harness's own client certificates, which
    // the harness wrote into the table without the events `tessera admin issue-client-cert`
    // would have logged — exactly what it must say of rows written behind the log's back.
    let store = Store::open(&server.config.database.url).await.unwrap();
    let mut harness_rows: Vec<String> = store
        .list_certificates(&tessera::store::CertificatesQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.profile == "operator-client")
        .map(|c| c.serial)
        .collect();
    harness_rows.sort();
    assert_eq!(harness_rows.len(), 2, "the hr and auditor clients");
    let expected: String = std::iter::once(
        "audit chain intact: 4 events, 0 checkpoints (signatures not checked)\n".to_string(),
    )
    .chain(harness_rows.iter().map(|serial| {
        format!(
            "row not explained by the audit log: certificates serial={serial}: no audit event records this row\n"
        )
    }))
    .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    assert_eq!(out.status.code(), Some(2));

    store
        .execute_raw("UPDATE audit_events SET after_json = '{}' WHERE sequence = 2")
        .await
        .unwrap();
    let v = a
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!v.intact);
    assert_eq!(v.first_bad_sequence, 2);
    assert_eq!(
        v.problem,
        "event content does not match its hash (row edited or moved)"
    );
    let out = std::process::Command::new(&tessera)
        .args(["audit", "verify", "--config"])
        .arg(&server.config_path)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "audit chain broken at event 2: event content does not match its hash (row edited or moved)\n"
    );
    assert_eq!(out.status.code(), Some(2));
    server.stop().await;
}

/// The real binary: start-up line, health, TLS 1.3 only, foreign client CA refused.
#[test]
fn serve_binary_health_tls13_only_and_foreign_ca() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let config = pki.write_server_config(dir.path(), "sqlite:tessera.db");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child.id());
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("tessera: gRPC listening on ")
        .unwrap_or_else(|| panic!("start-up line: {line:?}"))
        .parse()
        .unwrap();
    assert!(addr.ip().is_loopback());
    assert!(
        dir.path().join("tessera.db").exists(),
        "relative sqlite path is taken from the config's directory"
    );
    rt.block_on(async {
        // The default configuration requires a client certificate, also for health checks.
        refused_in_tls(addr, &pki.ca_pem).await;
        let ch = connect(addr, &pki.ca_pem, Some(&pki.client("relying-party"))).await;
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
        for service in [
            "",
            "tessera.v1.DirectoryService",
            "tessera.v1.TokenService",
            "tessera.v1.AuditService",
        ] {
            let r = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                r.status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                "{service:?}"
            );
        }
        // TLS 1.2 is refused.
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject;
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls12 = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let err = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls12))
            .connect(name.clone(), tcp)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "received fatal alert: ProtocolVersion");
        // A client certificate from another CA is refused in the handshake.
        let foreign = TestPki::foreign_client("admin");
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca_pem))
            .domain_name("localhost");
        tls = tls.identity(Identity::from_pem(&foreign.cert_pem, &foreign.key_pem));
        let ch = Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await;
        // TLS 1.3 client authentication fails after the client's side of the handshake, so
        // the refusal may show on connect or on the first call, as a transport error either way.
        if let Ok(ch) = ch {
            let s = DirectoryServiceClient::new(ch)
                .list_people(pb::ListPeopleRequest::default())
                .await
                .unwrap_err();
            assert!(
                !matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated),
                "a certificate from a foreign CA must fail in TLS, not reach the service: {s:?}"
            );
        }
    });
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "tessera serve exits cleanly on SIGTERM: {status:?}"
    );
}

/// A throwaway SoftHSM2 token (tests/harness/softhsm.rs, made by softhsm/new-token.sh) and the
/// environment for `tessera` child processes that use it.
fn softhsm_token() -> (SoftHsmToken, Vec<(String, String)>) {
    let token = SoftHsmToken::create("tessera");
    let env = vec![
        (
            "SOFTHSM2_CONF".to_string(),
            token.softhsm2_conf.to_str().unwrap().to_string(),
        ),
        (
            "TESSERA_HSM_CONFIG".to_string(),
            token.config_path.to_str().unwrap().to_string(),
        ),
    ];
    (token, env)
}

async fn audit_checkpoints_signed_in_softhsm(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (token, env) = softhsm_token();
    let hsm_config = token.config_path.to_str().unwrap().to_string();
    let config = TestPki::new().write_server_config(dir.path(), url);
    let config = config.to_str().unwrap();
    let store = Store::open(url).await.unwrap();
    let hr = tessera::audit::Actor {
        name: "hr-sync".into(),
        role: "hr".into(),
    };
    for i in 0..3 {
        let mut tx = store.begin_write().await.unwrap();
        let mut p = tessera::lifecycle::PersonInput {
            external_id: format!("E{i}"),
            display_name: "P".into(),
            upn: format!("e{i}@corp.test"),
            email: format!("e{i}@corp.test"),
            windows_sid: String::new(),
            attributes: Default::default(),
        };
        p.display_name.push_str(&i.to_string());
        tessera::lifecycle::create_person(&mut tx, &hr, &format!("c{i}"), p)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let public_key = dir.path().join("checkpoint.pem");
    let (code, uri, err) = tessera(
        &[
            "audit",
            "init-key",
            "--hsm-config",
            &hsm_config,
            "--public-key-out",
            public_key.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let uri = uri.trim().to_string();
    assert!(
        uri.starts_with("pkcs11:") && uri.contains("object=tessera-audit-checkpoint"),
        "{uri}"
    );
    let (code, out, err) = tessera(
        &[
            "audit",
            "checkpoint",
            "--config",
            config,
            "--hsm-config",
            &hsm_config,
            "--key",
            &uri,
        ],
        &env,
    );
    assert_eq!(
        (code, out),
        (0, format!("checkpoint at event 3 signed by {uri}\n")),
        "{err}"
    );
    let (code, out, _) = tessera(
        &[
            "audit",
            "checkpoint",
            "--config",
            config,
            "--hsm-config",
            &hsm_config,
            "--key",
            &uri,
        ],
        &env,
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "no new events since the last checkpoint\n")
    );

    // Checkpoints are verified as P-256 signatures: a key of another kind is refused.
    token.pkcs11_tool(&[
        "--keypairgen",
        "--key-type",
        "EC:secp384r1",
        "--label",
        "audit-p384",
        "--id",
        "0a0b",
    ]);
    let (code, out, err) = tessera(
        &[
            "audit",
            "checkpoint",
            "--config",
            config,
            "--hsm-config",
            &hsm_config,
            "--key",
            "pkcs11:object=audit-p384;type=private",
        ],
        &env,
    );
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (
            1,
            "",
            "error: checkpoint key pkcs11:token=tessera;object=audit-p384;id=%0A%0B;type=private \
             is p384, not EC P-256; make one with `tessera audit init-key`\n"
        )
    );

    let verify = |key: &std::path::Path| {
        tessera(
            &[
                "audit",
                "verify",
                "--config",
                config,
                "--checkpoint-public-key",
                key.to_str().unwrap(),
                "--checkpoint-key-id",
                &uri,
            ],
            &[],
        )
    };
    let (code, out, err) = verify(&public_key);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "audit chain intact: 3 events, 1 checkpoints (signatures checked)\n\
             state tables explained by the audit log: 3 people, 0 tokens, 0 certificates\n"
        ),
        "{err}"
    );

    // Another key's public half does not verify the HSM's signature.
    let other = dir.path().join("other.pem");
    {
        use p256::pkcs8::EncodePublicKey;
        let k = p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).unwrap();
        std::fs::write(
            &other,
            k.verifying_key()
                .to_public_key_pem(p256::pkcs8::LineEnding::LF)
                .unwrap(),
        )
        .unwrap();
    }
    let (code, out, _) = verify(&other);
    assert_eq!(
        (code, out.as_str()),
        (
            2,
            "audit chain broken at event 3: checkpoint signature does not verify\n"
        )
    );

    store
        .execute_raw("DELETE FROM audit_events WHERE sequence = 3")
        .await
        .unwrap();
    let (code, out, _) = verify(&public_key);
    assert_eq!(
        (code, out.as_str()),
        (
            2,
            "audit chain broken at event 3: a signed checkpoint covers this event but it is missing (rows deleted at the end)\n"
        )
    );
    let (code, _, err) = tessera(
        &[
            "audit",
            "verify",
            "--config",
            config,
            "--checkpoint-key-id",
            &uri,
        ],
        &[],
    );
    assert_eq!(code, 2, "clap usage error");
    assert!(err.contains("--checkpoint-public-key"), "{err}");
}

/// `tessera serve` with an `[audit]` section signs a checkpoint in the HSM at shutdown.
#[test]
fn serve_signs_a_checkpoint_at_shutdown() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (token, env) = softhsm_token();
    let hsm_config = token.config_path.to_str().unwrap().to_string();
    let public_key = dir.path().join("checkpoint.pem");
    let (code, uri, err) = tessera(
        &[
            "audit",
            "init-key",
            "--hsm-config",
            &hsm_config,
            "--public-key-out",
            public_key.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let uri = uri.trim().to_string();
    let pki = TestPki::new();
    let with_audit = |checkpoint_interval_seconds| {
        ServerToml::new("sqlite:tessera.db")
            .with_audit(Audit {
                hsm_config: Some(hsm_config.clone().into()),
                checkpoint_key: Some(uri.clone()),
                checkpoint_interval_seconds: Some(checkpoint_interval_seconds),
                ..Default::default()
            })
            .write(dir.path(), &pki)
    };
    let config = with_audit(0);
    let (code, _, err) = tessera(&["serve", "--config", config.to_str().unwrap()], &env);
    assert_eq!(
        (code, err.as_str()),
        (
            1,
            "error: audit.checkpoint_interval_seconds must be at least 1\n"
        )
    );

    let config = with_audit(3600);
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .args(["serve", "--config"])
        .arg(&config)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child.id());
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("tessera: gRPC listening on ")
        .unwrap()
        .parse()
        .unwrap();
    rt.block_on(async {
        let mut d =
            DirectoryServiceClient::new(connect(addr, &pki.ca_pem, Some(&pki.client("hr"))).await);
        d.create_person(pb::CreatePersonRequest {
            request_id: "c".into(),
            person: Some(record("E1")),
        })
        .await
        .unwrap();
    });
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    // The harness wrote its client certificate into the table without the events
    // `tessera admin issue-client-cert` logs; take it out so the replay sees only this test's
    // rows (the replay naming such rows is tested in audit_tamper_is_named_by_the_api_and_the_cli).
    rt.block_on(async {
        let store = Store::open(&format!(
            "sqlite:{}",
            dir.path().join("tessera.db").display()
        ))
        .await
        .unwrap();
        store
            .execute_raw("DELETE FROM certificates WHERE profile = 'operator-client'")
            .await
            .unwrap();
        store.close().await;
    });
    let (code, out, err) = tessera(
        &[
            "audit",
            "verify",
            "--config",
            config.to_str().unwrap(),
            "--checkpoint-public-key",
            public_key.to_str().unwrap(),
            "--checkpoint-key-id",
            &uri,
        ],
        &[],
    );
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "audit chain intact: 1 events, 1 checkpoints (signatures checked)\n\
             state tables explained by the audit log: 1 people, 0 tokens, 0 certificates\n"
        ),
        "{err}"
    );
}

/// `tessera admin issue-client-cert` with Tessera's CA in SoftHSM2: the certificate is recorded
/// (reserved, then good) and its role works against the server.
async fn issued_client_certificate_carries_its_role(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (token, env) = softhsm_token();
    let hsm_config = token.config_path.to_str().unwrap().to_string();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    token.init_ca(&data);
    let pki = TestPki::new();
    let config = pki.write_server_config(dir.path(), url);
    let config_s = config.to_str().unwrap();
    let (cert, key) = (dir.path().join("hr.pem"), dir.path().join("hr.key"));
    let issue = |role: &str| {
        tessera(
            &[
                "admin",
                "issue-client-cert",
                "--role",
                role,
                "--name",
                "HR system",
                "--config",
                config_s,
                "--hsm-config",
                &hsm_config,
                "--data-dir",
                data_s,
                "--out-cert",
                cert.to_str().unwrap(),
                "--out-key",
                key.to_str().unwrap(),
            ],
            &env,
        )
    };
    // Issue 12, finding 4: API client certificates come only from the operator CA.
    let (code, out, err) = issue("hr");
    assert_eq!(
        (code, out.as_str(), err),
        (
            1,
            "",
            format!(
                "error: no operator CA in {} (operator-ca.toml not found); run `tessera ca init-operators` first\n",
                data.display()
            )
        )
    );
    let (code, out, err) = tessera(
        &[
            "ca",
            "init-operators",
            "--hsm-config",
            &hsm_config,
            "--data-dir",
            data_s,
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!(
            "operator CA created in {}: CN=Tessera Operator CA (serial ",
            data.display()
        )),
        "{out}"
    );
    let (code, _, err) = tessera(
        &[
            "ca",
            "init-operators",
            "--hsm-config",
            &hsm_config,
            "--data-dir",
            data_s,
        ],
        &env,
    );
    assert_eq!(
        (code, err),
        (
            1,
            format!(
                "error: an operator CA already exists ({}/operator-ca.toml is present); refusing to overwrite it\n",
                data.display()
            )
        )
    );
    // The server trusts the operator CA for API clients, not the root over people's CA.
    std::fs::copy(
        data.join("operator-ca.pem"),
        dir.path().join("client-ca.pem"),
    )
    .unwrap();
    let (code, _, err) = issue("superuser");
    assert_eq!(
        (code, err.as_str()),
        (
            1,
            "error: unknown role \"superuser\": use one of hr, helpdesk, auditor, admin, relying-party\n"
        )
    );
    let (code, out, err) = issue("hr");
    assert_eq!(code, 0, "{err}");
    let serial = out
        .strip_prefix("issued serial ")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        out,
        format!("issued serial {serial} for role hr to {}\n", cert.display())
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (code, _, err) = issue("hr");
    assert_eq!(
        (code, err),
        (
            1,
            format!(
                "error: {} already exists; choose another path or remove it first\n",
                cert.display()
            )
        )
    );

    let store = Store::open(url).await.unwrap();
    let row = store.certificate_by_serial(&serial).await.unwrap().unwrap();
    assert_eq!(row.status, tessera::store::CertificateStatus::Good);
    assert_eq!(row.profile, "operator-client");
    // The reserved record holds the exact tbsCertificate the HSM then signed.
    let issued_der = x509_parser::pem::parse_x509_pem(&std::fs::read(&cert).unwrap())
        .unwrap()
        .1
        .contents;
    assert_eq!(row.der.as_deref(), Some(issued_der.as_slice()));
    {
        use x509_parser::prelude::FromDer;
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&issued_der).unwrap();
        assert_eq!(row.tbs, parsed.tbs_certificate.as_ref());
        assert_eq!(
            parsed
                .tbs_certificate
                .raw_serial_as_string()
                .replace(':', ""),
            serial
        );
        let san = parsed.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            [x509_parser::extensions::GeneralName::URI("tessera:role:hr")]
        );
        assert_eq!(
            (row.not_before.to_string(), row.not_after.to_string()),
            (
                parsed
                    .validity()
                    .not_before
                    .to_datetime()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap(),
                parsed
                    .validity()
                    .not_after
                    .to_datetime()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap(),
            )
        );
    }
    let leaf = dir.path().join("hr-leaf.pem");
    std::fs::write(&leaf, tessera::ca::issue::certificate_pem(&issued_der)).unwrap();
    let lint = std::process::Command::new("lint_pkix_cert")
        .args(["lint", "-s", "ERROR"])
        .arg(&leaf)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run lint_pkix_cert (PyPI pkilint; scripts/install-deps.sh): {e}")
        });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    // The one finding: pkilint checks URI SANs with a web-URL validator (scheme://host), and
    // the role URI `tessera:role:hr` is a valid RFC 3986 URI without an authority
    // (RFC 5280 4.2.1.6 asks only for a scheme and a scheme-specific part). Anything else fails.
    assert_eq!(
        report.trim(),
        "GeneralNameUriSyntaxValidator @ certificate.tbsCertificate.extensions.1.extnValue.subjectAltName.0.uniformResourceIdentifier\n    \
         pkix.invalid_uri_syntax (ERROR): Invalid URI syntax: \"tessera:role:hr\"",
        "pkilint findings for the operator client certificate"
    );
    let sha = row.sha256.clone().unwrap();
    assert_eq!(
        store
            .certificate_by_sha256(&sha)
            .await
            .unwrap()
            .unwrap()
            .serial,
        serial
    );
    let actions: Vec<_> = store
        .audit_events(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["certificate.reserve", "certificate.issue"]);

    // When the reservation cannot be recorded, the HSM does not sign and nothing is written.
    store
        .execute_raw("ALTER TABLE certificates RENAME TO certificates_elsewhere")
        .await
        .unwrap();
    let (cert2, key2) = (dir.path().join("hr2.pem"), dir.path().join("hr2.key"));
    let (code, out, err) = tessera(
        &[
            "admin",
            "issue-client-cert",
            "--role",
            "hr",
            "--name",
            "HR system",
            "--config",
            config_s,
            "--hsm-config",
            &hsm_config,
            "--data-dir",
            data_s,
            "--out-cert",
            cert2.to_str().unwrap(),
            "--out-key",
            key2.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.starts_with(
            "error: the certificate was not signed: recording it before signing failed: "
        ) && err.ends_with('\n')
            && err.lines().count() == 1,
        "{err}"
    );
    assert!(!cert2.exists() && !key2.exists());
    store
        .execute_raw("ALTER TABLE certificates_elsewhere RENAME TO certificates")
        .await
        .unwrap();
    assert_eq!(store.audit_events(0, 10).await.unwrap().len(), 2);

    let server = ServerTask::start(&config).await;
    let addr = server.addr;
    let client = ClientCert {
        cert_pem: std::fs::read_to_string(&cert).unwrap(),
        key_pem: std::fs::read_to_string(&key).unwrap(),
    };
    let ch = connect(addr, &pki.ca_pem, Some(&client)).await;
    DirectoryServiceClient::new(ch.clone())
        .create_person(pb::CreatePersonRequest {
            request_id: "c".into(),
            person: Some(record("E1")),
        })
        .await
        .unwrap();
    let s = AuditServiceClient::new(ch)
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    let last = store.audit_events(2, 10).await.unwrap();
    assert_eq!(
        (last[0].actor.as_str(), last[0].role.as_str()),
        ("HR system", "hr")
    );
    server.stop().await;
}

async fn certificates_lookup_hold_and_revoke(url: &str) {
    use tessera::store::NewCertificate;
    let server = TestServer::builder(url).start().await;
    let mut d = DirectoryServiceClient::new(server.as_role("hr").await);
    d.create_person(pb::CreatePersonRequest {
        request_id: "c".into(),
        person: Some(record("E1")),
    })
    .await
    .unwrap();
    // Certificates come from enrollment (next issue); the test records them directly.
    let store = Store::open(url).await.unwrap();
    let owner = store.person_by_external_id("E1").await.unwrap().unwrap();
    let mut tx = store.begin_write().await.unwrap();
    for serial in ["0a01", "0a02", "0a03"] {
        tx.reserve_certificate(&NewCertificate {
            serial: serial.into(),
            person_id: Some(owner.id),
            token_id: None,
            profile: "tls-client".into(),
            tbs: b"tbs".to_vec(),
            not_before: "2026-01-01T00:00:00Z".parse().unwrap(),
            not_after: "2027-01-01T00:00:00Z".parse().unwrap(),
        })
        .await
        .unwrap();
    }
    let sha = "ab".repeat(32);
    tx.record_issued_certificate("0a01", b"DER1", &sha)
        .await
        .unwrap();
    tx.record_issued_certificate("0a02", b"DER2", &"cd".repeat(32))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut rp = CertificateServiceClient::new(server.as_role("relying-party").await);
    let lookup =
        |k: pb::lookup_certificate_request::Key| pb::LookupCertificateRequest { key: Some(k) };
    use pb::lookup_certificate_request::Key;
    let colons: String = sha
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    let c = rp
        .lookup_certificate(lookup(Key::Sha256Fingerprint(colons)))
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    assert_eq!(
        (c.serial.as_str(), c.person_external_id.as_str()),
        ("0a01", "E1")
    );
    assert_eq!(c.status, pb::CertificateStatus::Good as i32);
    assert_eq!(c.der, b"DER1");
    let s = rp
        .lookup_certificate(lookup(Key::Sha256Fingerprint("abc".into())))
        .await
        .unwrap_err();
    assert_eq!(
        reason_and_fields(&s),
        (
            "INVALID_FINGERPRINT".into(),
            vec!["sha256_fingerprint".to_string()]
        )
    );
    let s = rp
        .lookup_certificate(lookup(Key::Serial("0B99".into())))
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), s.message()),
        (Code::NotFound, "no certificate with serial \"0b99\"")
    );
    let s = rp
        .lookup_certificate(pb::LookupCertificateRequest { key: None })
        .await
        .unwrap_err();
    assert_eq!(
        reason_and_fields(&s),
        ("FIELD_REQUIRED".into(), vec!["key".to_string()])
    );

    let mut desk = CertificateServiceClient::new(server.as_role("helpdesk").await);
    let listed = desk
        .list_certificates(pb::ListCertificatesRequest {
            page_size: 2,
            person_external_id: "E1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .certificates
            .iter()
            .map(|c| c.serial.as_str())
            .collect::<Vec<_>>(),
        ["0a01", "0a02"]
    );
    let rest = desk
        .list_certificates(pb::ListCertificatesRequest {
            page_size: 2,
            page_token: listed.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.certificates.len(), 1);
    assert_eq!(
        rest.certificates[0].status,
        pb::CertificateStatus::Reserved as i32
    );

    let revoke =
        |rid: &str, serial: &str, reason: pb::RevocationReason| pb::RevokeCertificateRequest {
            request_id: rid.into(),
            serial: serial.into(),
            reason: reason as i32,
        };
    let held = desk
        .revoke_certificate(revoke("h", "0a01", pb::RevocationReason::CertificateHold))
        .await
        .unwrap()
        .into_inner();
    let held = held.certificate.unwrap();
    assert_eq!(held.status, pb::CertificateStatus::OnHold as i32);
    assert_eq!(
        held.revocation_reason,
        pb::RevocationReason::CertificateHold as i32
    );
    let again = desk
        .revoke_certificate(revoke("h", "0a01", pb::RevocationReason::CertificateHold))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.certificate.unwrap(), held);
    let revoked = desk
        .revoke_certificate(revoke("r", "0a01", pb::RevocationReason::KeyCompromise))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        revoked.certificate.unwrap().status,
        pb::CertificateStatus::Revoked as i32
    );
    let s = desk
        .revoke_certificate(revoke("r2", "0a01", pb::RevocationReason::Superseded))
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::FailedPrecondition,
            "cannot revoke a certificate that is revoked"
        )
    );
    let s = desk
        .revoke_certificate(revoke("r3", "0a03", pb::RevocationReason::Superseded))
        .await
        .unwrap_err();
    assert_eq!(s.message(), "cannot revoke a certificate that is reserved");
    let s = desk
        .revoke_certificate(revoke("r4", "0a02", pb::RevocationReason::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(
        reason_and_fields(&s),
        ("FIELD_REQUIRED".into(), vec!["reason".to_string()])
    );
    let s = desk
        .revoke_certificate(revoke("r5", "zz", pb::RevocationReason::Superseded))
        .await
        .unwrap_err();
    assert_eq!(
        reason_and_fields(&s),
        ("INVALID_SERIAL".into(), vec!["serial".to_string()])
    );
    let actions: Vec<_> = store
        .audit_events(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        ["person.create", "certificate.hold", "certificate.revoke"]
    );
    server.stop().await;
}

/// A bare HTTP/1.1 GET; returns (status line, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

async fn http_side_health_chain_and_metrics(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let config = ServerToml::new(url)
        .with_http_chain(CLIENT_CA)
        .write(dir.path(), &pki);
    let server = ServerTask::start(&config).await;
    let (grpc, http) = (server.addr, server.http.unwrap());
    assert!(http.ip().is_loopback());

    assert_eq!(
        http_get(http, "/healthz").await,
        ("HTTP/1.1 200 OK".to_string(), "ok\n".to_string())
    );
    let (status, body) = http_get(http, "/ca.pem").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", pki.ca_pem.as_str())
    );
    let mut d =
        DirectoryServiceClient::new(connect(grpc, &pki.ca_pem, Some(&pki.client("hr"))).await);
    for i in 0..2 {
        d.create_person(pb::CreatePersonRequest {
            request_id: format!("c{i}"),
            person: Some(record(&format!("E{i}"))),
        })
        .await
        .unwrap();
    }
    d.suspend_person(pb::SuspendPersonRequest {
        request_id: "s".into(),
        external_id: "E1".into(),
        reason: String::new(),
    })
    .await
    .unwrap();
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    for line in [
        "tessera_people{state=\"active\"} 1",
        "tessera_people{state=\"suspended\"} 1",
        "tessera_audit_head_sequence 3",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "{line:?} missing from:\n{body}"
        );
    }
    assert!(
        body.contains("tessera_db_pool_connections{state=\"open\"} "),
        "{body}"
    );
    assert_eq!(http_get(http, "/nothing").await.0, "HTTP/1.1 404 Not Found");
    server.stop().await;
}

/// `[http] metrics_listen`: `/metrics` is served on that address only; the main HTTP port
/// answers 404 for it and still serves everything else.
async fn metrics_on_their_own_listener_only(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let config = ServerToml::new(url)
        .with_http_chain(CLIENT_CA)
        .with_separate_metrics()
        .write(dir.path(), &pki);
    let server = ServerTask::start(&config).await;
    let (http, metrics) = (server.http.unwrap(), server.metrics.unwrap());
    assert_ne!(http, metrics);
    assert_eq!(http_get(http, "/metrics").await.0, "HTTP/1.1 404 Not Found");
    assert_eq!(
        http_get(http, "/healthz").await,
        ("HTTP/1.1 200 OK".to_string(), "ok\n".to_string())
    );
    assert_eq!(http_get(http, "/ca.pem").await.0, "HTTP/1.1 200 OK");
    let (status, body) = http_get(metrics, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.lines()
            .any(|l| l.starts_with("tessera_audit_head_sequence ")),
        "{body}"
    );
    for path in ["/healthz", "/ca.pem", "/crl"] {
        assert_eq!(
            http_get(metrics, path).await.0,
            "HTTP/1.1 404 Not Found",
            "{path} on the metrics listener"
        );
    }
    server.stop().await;
}

#[test]
fn configuration_paths_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    let base = "[grpc]\nlisten = \"127.0.0.1:0\"\n[tls]\ncertificate = \"s.pem\"\nprivate_key = \"/abs/s.key\"\nclient_ca = \"ca.pem\"\n[database]\nurl = \"sqlite:db/t.db\"\n";
    std::fs::write(&path, format!("{base}[http]\nlisten = \"127.0.0.1:0\"\nca_chain = \"chain.pem\"\n[audit]\nhsm_config = \"hsm.toml\"\ncheckpoint_key = \"pkcs11:object=k\"\n")).unwrap();
    let c = ServerConfig::load(&path).unwrap();
    assert_eq!(c.tls.certificate, dir.path().join("s.pem"));
    assert_eq!(c.tls.private_key, std::path::PathBuf::from("/abs/s.key"));
    assert_eq!(
        c.database.url,
        format!("sqlite:{}", dir.path().join("db/t.db").display())
    );
    assert_eq!(
        c.http.unwrap().ca_chain.unwrap(),
        dir.path().join("chain.pem")
    );
    let audit = c.audit.unwrap();
    assert_eq!(
        (
            audit.hsm_config,
            audit.checkpoint_interval_seconds,
            audit.checkpoint_file,
            audit.checkpoints
        ),
        (
            Some(dir.path().join("hsm.toml")),
            300,
            Some(dir.path().join("audit-checkpoints.jsonl")),
            true
        )
    );

    std::fs::write(&path, format!("{base}[extra]\nx = 1\n")).unwrap();
    let err = ServerConfig::load(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "configuration file {} is not valid: unknown field `extra`",
            path.display()
        )),
        "{err}"
    );
    let err = ServerConfig::load(&dir.path().join("missing.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cannot read configuration file "), "{err}");

    assert_eq!(c.database.acquire_timeout_seconds, 30, "the default");
    for (value, accepted) in [("0", false), ("1", true), ("600", true), ("601", false)] {
        std::fs::write(
            &path,
            base.replace(
                "[database]\n",
                &format!("[database]\nacquire_timeout_seconds = {value}\n"),
            ),
        )
        .unwrap();
        match ServerConfig::load(&path) {
            Ok(c) => {
                assert!(accepted, "{value} accepted");
                assert_eq!(c.database.acquire_timeout_seconds.to_string(), value);
            }
            Err(e) => {
                assert!(!accepted, "{value} refused: {e}");
                assert_eq!(
                    e.to_string(),
                    format!(
                        "database.acquire_timeout_seconds must be between 1 and 600, not {value}"
                    )
                );
            }
        }
    }
}

#[tokio::test]
async fn tls_and_listen_errors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let path = pki.write_server_config(dir.path(), "sqlite:t.db");
    let bind = || async {
        BoundServer::bind(&ServerConfig::load(&path).unwrap())
            .await
            .err()
            .unwrap()
            .to_string()
    };

    std::fs::write(dir.path().join("client-ca.pem"), "").unwrap();
    assert_eq!(
        bind().await,
        format!(
            "{} holds no client CA certificate",
            dir.path().join("client-ca.pem").display()
        )
    );
    std::fs::write(dir.path().join("client-ca.pem"), &pki.ca_pem).unwrap();

    std::fs::remove_file(dir.path().join("server.pem")).unwrap();
    let err = bind().await;
    assert!(
        err.starts_with(&format!(
            "cannot read server certificate from {}: ",
            dir.path().join("server.pem").display()
        )),
        "{err}"
    );
    std::fs::write(dir.path().join("server.pem"), &pki.server_cert_pem).unwrap();

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut taken_port = ServerToml::new("sqlite:t.db");
    taken_port.grpc.listen = format!("127.0.0.1:{port}");
    assert_eq!(taken_port.write(dir.path(), &pki), path);
    let err = bind().await;
    assert!(
        err.starts_with(&format!("cannot listen on 127.0.0.1:{port}: ")),
        "{err}"
    );
}

/// A Python grpcio client generated from our proto drives a person through its life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_drives_a_person() {
    let db = harness::database::TestDatabase::sqlite();
    let server = TestServer::builder(db.url()).start().await;
    let dir = tempfile::tempdir().unwrap();
    let hr = server.pki.client("hr");
    for (name, text) in [
        ("ca.pem", &server.pki.ca_pem),
        ("hr.pem", &hr.cert_pem),
        ("hr.key", &hr.key_pem),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new("python3")
        .arg(root.join("tests/python/directory_client.py"))
        .arg(server.addr().to_string())
        .args(["ca.pem", "hr.pem", "hr.key"].map(|f| dir.path().join(f)))
        .arg(root.join("proto"))
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed (grpcio and grpcio-tools come from scripts/install-deps.sh): {stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "create PERSON_STATE_ACTIVE\nsuspend PERSON_STATE_SUSPENDED\nreinstate PERSON_STATE_ACTIVE\n\
         offboard PERSON_STATE_OFFBOARDED\nrefused FAILED_PRECONDITION cannot reinstate a person that is offboarded\n"
    );
    server.stop().await;
}

/// Two servers on one PostgreSQL database, written to at the same time: every change lands
/// once and the audit chain stays intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_postgres_database() {
    let db = harness::database::TestDatabase::postgres().await;
    let a = TestServer::builder(db.url()).start().await;
    let b = TestServer::builder(db.url()).start().await;
    let mut tasks = Vec::new();
    for (n, server) in [&a, &b].into_iter().enumerate() {
        let ch = server.as_role("hr").await;
        tasks.push(tokio::spawn(async move {
            let mut d = DirectoryServiceClient::new(ch);
            for i in 0..15 {
                let id = format!("R{n}-{i}");
                d.create_person(pb::CreatePersonRequest {
                    request_id: id.clone(),
                    person: Some(record(&id)),
                })
                .await
                .unwrap();
                // A retry of the same request is answered from the stored first answer, not repeated.
                d.create_person(pb::CreatePersonRequest {
                    request_id: id.clone(),
                    person: Some(record(&id)),
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut auditor = AuditServiceClient::new(b.as_role("auditor").await);
    let v = auditor
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(v.intact, "{v:?}");
    assert_eq!(v.events, 30);
    a.stop().await;
    b.stop().await;
}

/// The next event of a following stream: (sequence, action, subject).
async fn next_event(
    stream: &mut tonic::Streaming<pb::StreamAuditEventsResponse>,
) -> (i64, String, String) {
    let m = tokio::time::timeout(std::time::Duration::from_secs(20), stream.message())
        .await
        .expect("a followed event arrives")
        .unwrap()
        .expect("the stream stays open");
    let e = m.event.unwrap();
    (e.sequence, e.action, e.subject)
}

/// StreamAuditEvents with `follow`: the stream sends what exists, stays open, sends each new
/// event as it commits (also one written by another process on the same database), and ends
/// when the server shuts down.
async fn audit_stream_follows_new_events(url: &str) {
    let server = TestServer::builder(url).start().await;
    let mut d = DirectoryServiceClient::new(server.as_role("hr").await);
    let create = |id: &str| pb::CreatePersonRequest {
        request_id: format!("create-{id}"),
        person: Some(record(id)),
    };
    d.create_person(create("F1")).await.unwrap();
    let mut a = AuditServiceClient::new(server.as_role("auditor").await);
    let mut stream = a
        .stream_audit_events(pb::StreamAuditEventsRequest {
            after_sequence: 0,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_event(&mut stream).await,
        (1, "person.create".into(), "person:F1".into())
    );
    d.create_person(create("F2")).await.unwrap();
    assert_eq!(
        next_event(&mut stream).await,
        (2, "person.create".into(), "person:F2".into())
    );
    // Written straight into the database, as another replica would: seen by polling.
    let store = Store::open(url).await.unwrap();
    let hr = tessera::audit::Actor {
        name: "other replica".into(),
        role: "hr".into(),
    };
    let mut tx = store.begin_write().await.unwrap();
    tessera::lifecycle::create_person(
        &mut tx,
        &hr,
        "create-F3",
        tessera::lifecycle::PersonInput {
            external_id: "F3".into(),
            display_name: "Person F3".into(),
            upn: "F3@corp.test".into(),
            email: "F3@corp.test".into(),
            windows_sid: String::new(),
            attributes: Default::default(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        next_event(&mut stream).await,
        (3, "person.create".into(), "person:F3".into())
    );
    d.suspend_person(pb::SuspendPersonRequest {
        request_id: "suspend-F1".into(),
        external_id: "F1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        next_event(&mut stream).await,
        (4, "person.suspend".into(), "person:F1".into())
    );
    // Shutdown ends a following stream instead of waiting for it forever.
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(30), server.stop()).await;
    assert!(
        stopped.is_ok(),
        "server shutdown waited for a following stream"
    );
    let end = stream.message().await;
    assert!(
        matches!(end, Ok(None)) || end.is_err(),
        "the stream ends at shutdown: {end:?}"
    );
}

/// A client certificate that Tessera recorded and then put on hold or revoked is refused on
/// every call — also on a connection opened before the revocation — and works again when
/// released from hold.
async fn revoked_client_certificate_is_refused_on_open_connections(url: &str) {
    use x509_parser::prelude::FromDer;
    let server = TestServer::builder(url).start().await;
    // Recorded as `tessera admin issue-client-cert` records it (the harness does).
    let door = server.pki.client("relying-party");
    let (_, der) = x509_parser::pem::parse_x509_pem(door.cert_pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der.contents).unwrap();
    let serial = hex::encode(cert.raw_serial());
    let store = Store::open(url).await.unwrap();

    let mut rp = CertificateServiceClient::new(server.channel(Some(&door)).await);
    let chain = || pb::LookupCertificateRequest {
        key: Some(pb::lookup_certificate_request::Key::Serial("0b99".into())),
    };
    assert_eq!(
        rp.lookup_certificate(chain()).await.unwrap_err().code(),
        Code::NotFound
    );
    let mut admin = CertificateServiceClient::new(server.as_role("admin").await);
    let revoke = |id: &str, reason: pb::RevocationReason| pb::RevokeCertificateRequest {
        request_id: id.into(),
        serial: serial.clone(),
        reason: reason as i32,
    };
    admin
        .revoke_certificate(revoke("hold", pb::RevocationReason::CertificateHold))
        .await
        .unwrap();
    // Same connection as before the hold.
    let s = rp.lookup_certificate(chain()).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    assert_eq!(reason_and_fields(&s).0, "CLIENT_CERTIFICATE_REVOKED");
    assert!(s.message().contains("is on hold"), "{}", s.message());

    let mut tx = store.begin_write().await.unwrap();
    tx.update_certificate_status(&serial, tessera::store::CertificateStatus::Good, None, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        rp.lookup_certificate(chain()).await.unwrap_err().code(),
        Code::NotFound
    );

    admin
        .revoke_certificate(revoke("revoke", pb::RevocationReason::KeyCompromise))
        .await
        .unwrap();
    let mut fresh = CertificateServiceClient::new(server.channel(Some(&door)).await);
    let s = fresh.lookup_certificate(chain()).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    assert_eq!(reason_and_fields(&s).0, "CLIENT_CERTIFICATE_REVOKED");
    assert!(s.message().contains("is revoked"), "{}", s.message());
    // A good certificate of another caller still reaches the role check.
    let mut other = CertificateServiceClient::new(server.as_role("helpdesk").await);
    assert_eq!(
        other.lookup_certificate(chain()).await.unwrap_err().code(),
        Code::NotFound
    );
    store.close().await;
    server.stop().await;
}

/// Issue 12, finding 10: a following StreamAuditEvents looks its caller's certificate up again
/// on each poll; once the certificate is revoked the stream ends with the answer a new call
/// would get, instead of following the log forever.
async fn following_audit_stream_ends_when_its_callers_certificate_is_revoked(url: &str) {
    use x509_parser::prelude::FromDer;
    let server = TestServer::builder(url).start().await;
    let store = Store::open(url).await.unwrap();
    let auditor = server.pki.client("auditor");
    let (_, der) = x509_parser::pem::parse_x509_pem(auditor.cert_pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der.contents).unwrap();
    let serial = hex::encode(cert.raw_serial());
    let mut d = DirectoryServiceClient::new(server.as_role("hr").await);
    d.create_person(pb::CreatePersonRequest {
        request_id: "create-F1".into(),
        person: Some(record("F1")),
    })
    .await
    .unwrap();
    let mut a = AuditServiceClient::new(server.channel(Some(&auditor)).await);
    let mut stream = a
        .stream_audit_events(pb::StreamAuditEventsRequest {
            after_sequence: 0,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_event(&mut stream).await,
        (1, "person.create".into(), "person:F1".into())
    );
    CertificateServiceClient::new(server.as_role("admin").await)
        .revoke_certificate(pb::RevokeCertificateRequest {
            request_id: "revoke-auditor".into(),
            serial: serial.clone(),
            reason: pb::RevocationReason::KeyCompromise as i32,
        })
        .await
        .unwrap();
    // The revocation's own event may still arrive (it commits with the new status); then the
    // stream ends with the refusal.
    let mut seen = Vec::new();
    let status = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(20), stream.message())
            .await
            .expect("the stream ends after the revocation")
        {
            Ok(Some(m)) => seen.push(m.event.unwrap().action),
            Ok(None) => panic!("the stream ended without a status after {seen:?}"),
            Err(s) => break s,
        }
    };
    assert!(
        seen.iter().all(|a| a == "certificate.revoke"),
        "only the revocation's own event comes first: {seen:?}"
    );
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason_and_fields(&status).0, "CLIENT_CERTIFICATE_REVOKED");
    assert_eq!(
        status.message(),
        format!("the client certificate (serial {serial}) is revoked; use a current one")
    );
    store.close().await;
    server.stop().await;
}

/// Records a signed certificate row directly (the tests' stand-in for issuance).
async fn record_certificate(
    store: &Store,
    serial: &str,
    person_id: Option<i64>,
    profile: &str,
    der: &[u8],
) {
    use tessera::store::NewCertificate;
    let mut tx = store.begin_write().await.unwrap();
    tx.reserve_certificate(&NewCertificate {
        serial: serial.into(),
        person_id,
        token_id: None,
        profile: profile.into(),
        tbs: b"tbs".to_vec(),
        not_before: "2026-01-01T00:00:00Z".parse().unwrap(),
        not_after: "2027-01-01T00:00:00Z".parse().unwrap(),
    })
    .await
    .unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(serial.as_bytes()));
    tx.record_issued_certificate(serial, der, &sha)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Issue 12, finding 3: the help desk may revoke, hold and release people's certificates but
/// not operator certificates (API clients, the OCSP responder); `ReleaseCertificateHold` takes
/// one certificate off hold, idempotently, but never one held by its person's suspension.
async fn helpdesk_cannot_revoke_operator_certificates_and_releases_holds(url: &str) {
    use x509_parser::prelude::FromDer;
    let server = TestServer::builder(url).start().await;
    let store = Store::open(url).await.unwrap();
    // HR's API client certificate, recorded as `tessera admin issue-client-cert` records it
    // (the harness does).
    let hr = server.pki.client("hr");
    let (_, der) = x509_parser::pem::parse_x509_pem(hr.cert_pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der.contents).unwrap();
    let hr_serial = hex::encode(cert.raw_serial());
    record_certificate(&store, "0c01", None, "ocsp-responder", b"OCSP").await;

    let mut directory = DirectoryServiceClient::new(server.channel(Some(&hr)).await);
    for id in ["E1", "E2"] {
        directory
            .create_person(pb::CreatePersonRequest {
                request_id: format!("create-{id}"),
                person: Some(record(id)),
            })
            .await
            .unwrap();
    }
    let e1 = store.person_by_external_id("E1").await.unwrap().unwrap();
    let e2 = store.person_by_external_id("E2").await.unwrap().unwrap();
    record_certificate(&store, "0a01", Some(e1.id), "tls-client", b"DER1").await;
    record_certificate(&store, "0a02", Some(e1.id), "tls-client", b"DER2").await;
    record_certificate(&store, "0a03", Some(e2.id), "tls-client", b"DER3").await;
    let events_before = store.audit_events(0, 100).await.unwrap().len();

    let revoke =
        |rid: &str, serial: &str, reason: pb::RevocationReason| pb::RevokeCertificateRequest {
            request_id: rid.into(),
            serial: serial.into(),
            reason: reason as i32,
        };
    let release = |rid: &str, serial: &str| pb::ReleaseCertificateHoldRequest {
        request_id: rid.into(),
        serial: serial.into(),
        reason: "called the owner back".into(),
    };
    let status_of = |c: Option<pb::Certificate>| c.unwrap().status;
    let mut desk = CertificateServiceClient::new(server.as_role("helpdesk").await);
    let mut admin = CertificateServiceClient::new(server.as_role("admin").await);

    // The help desk can neither hold nor revoke HR's client certificate or the responder's.
    for (rid, serial, reason) in [
        (
            "d1",
            hr_serial.as_str(),
            pb::RevocationReason::CertificateHold,
        ),
        (
            "d2",
            hr_serial.as_str(),
            pb::RevocationReason::KeyCompromise,
        ),
        ("d3", "0c01", pb::RevocationReason::CertificateHold),
        ("d4", "0c01", pb::RevocationReason::KeyCompromise),
    ] {
        let s = desk
            .revoke_certificate(revoke(rid, serial, reason))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "{serial} {reason:?}");
        assert_eq!(
            reason_and_fields(&s),
            ("CERTIFICATE_REQUIRES_ADMIN".into(), vec![])
        );
        let profile = if serial == "0c01" {
            "ocsp-responder"
        } else {
            "operator-client"
        };
        assert_eq!(
            s.message(),
            format!(
                "certificate {serial} (profile {profile}) is an operator certificate; only the admin role may revoke, hold or release it"
            )
        );
    }
    // Nothing changed: both rows good, no event, HR still works.
    for serial in [hr_serial.as_str(), "0c01"] {
        let row = store.certificate_by_serial(serial).await.unwrap().unwrap();
        assert_eq!(row.status, tessera::store::CertificateStatus::Good);
    }
    assert_eq!(
        store.audit_events(0, 100).await.unwrap().len(),
        events_before
    );
    directory
        .get_person(pb::GetPersonRequest {
            external_id: "E1".into(),
        })
        .await
        .unwrap();

    // The admin can hold it; then only the admin can release it.
    let held = admin
        .revoke_certificate(revoke(
            "a1",
            &hr_serial,
            pb::RevocationReason::CertificateHold,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status_of(held.certificate),
        pb::CertificateStatus::OnHold as i32
    );
    let s = directory
        .get_person(pb::GetPersonRequest {
            external_id: "E1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason_and_fields(&s).0, "CLIENT_CERTIFICATE_REVOKED");
    let s = desk
        .release_certificate_hold(release("d5", &hr_serial))
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason_and_fields(&s).0.as_str()),
        (Code::PermissionDenied, "CERTIFICATE_REQUIRES_ADMIN")
    );
    let released = admin
        .release_certificate_hold(release("a2", &hr_serial))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status_of(released.certificate),
        pb::CertificateStatus::Good as i32
    );
    directory
        .get_person(pb::GetPersonRequest {
            external_id: "E1".into(),
        })
        .await
        .unwrap();
    // The admin can revoke an operator certificate for good.
    let revoked = admin
        .revoke_certificate(revoke("a3", "0c01", pb::RevocationReason::Superseded))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status_of(revoked.certificate),
        pb::CertificateStatus::Revoked as i32
    );

    // The help desk holds and releases a person's certificate; a repeat answers the same.
    let crl_changes = || async { store.crl_state().await.unwrap().status_changes };
    desk.revoke_certificate(revoke("d6", "0a01", pb::RevocationReason::CertificateHold))
        .await
        .unwrap();
    let changes_on_hold = crl_changes().await;
    let first = desk
        .release_certificate_hold(release("d7", "0a01"))
        .await
        .unwrap()
        .into_inner();
    let certificate = first.certificate.clone().unwrap();
    assert_eq!(certificate.status, pb::CertificateStatus::Good as i32);
    assert_eq!(
        (
            certificate.revocation_reason,
            certificate.revoked_at.as_str()
        ),
        (pb::RevocationReason::Unspecified as i32, "")
    );
    assert_eq!(certificate.person_external_id, "E1");
    assert_eq!(crl_changes().await, changes_on_hold + 1);
    let again = desk
        .release_certificate_hold(release("d7", "0a01"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(crl_changes().await, changes_on_hold + 1);

    // Not on hold: good, revoked for good, reserved-free but unknown, malformed.
    let s = desk
        .release_certificate_hold(release("d8", "0a01"))
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason_and_fields(&s).0.as_str(), s.message()),
        (
            Code::FailedPrecondition,
            "CERTIFICATE_NOT_ON_HOLD",
            "certificate 0a01 is not on hold (it is good)"
        )
    );
    desk.revoke_certificate(revoke("d9", "0a02", pb::RevocationReason::CertificateHold))
        .await
        .unwrap();
    desk.revoke_certificate(revoke("d10", "0a02", pb::RevocationReason::KeyCompromise))
        .await
        .unwrap();
    let s = desk
        .release_certificate_hold(release("d11", "0a02"))
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason_and_fields(&s).0.as_str(), s.message()),
        (
            Code::FailedPrecondition,
            "CERTIFICATE_NOT_ON_HOLD",
            "certificate 0a02 is not on hold (it is revoked)"
        )
    );
    let s = desk
        .release_certificate_hold(release("d12", "0b99"))
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason_and_fields(&s).0.as_str()),
        (Code::NotFound, "CERTIFICATE_NOT_FOUND")
    );
    let s = desk
        .release_certificate_hold(release("d13", "zz"))
        .await
        .unwrap_err();
    assert_eq!(
        reason_and_fields(&s),
        ("INVALID_SERIAL".into(), vec!["serial".to_string()])
    );
    let s = desk
        .release_certificate_hold(pb::ReleaseCertificateHoldRequest {
            request_id: "d14".into(),
            serial: "0a01".into(),
            reason: "x".repeat(1025),
        })
        .await
        .unwrap_err();
    assert_eq!(
        reason_and_fields(&s),
        ("FIELD_TOO_LONG".into(), vec!["reason".to_string()])
    );

    // A hold that comes from the person's suspension is not released certificate by
    // certificate, not even by the admin; reinstating the person releases it.
    directory
        .suspend_person(pb::SuspendPersonRequest {
            request_id: "suspend-E2".into(),
            external_id: "E2".into(),
            reason: "leave".into(),
        })
        .await
        .unwrap();
    for (client, rid) in [(&mut desk, "d15"), (&mut admin, "a4")] {
        let s = client
            .release_certificate_hold(release(rid, "0a03"))
            .await
            .unwrap_err();
        assert_eq!(
            (s.code(), reason_and_fields(&s).0.as_str(), s.message()),
            (
                Code::FailedPrecondition,
                "HOLD_IS_FROM_PERSON_OR_TOKEN",
                "certificate 0a03 is on hold because its person is suspended; reinstate the person instead"
            )
        );
    }
    let row = store.certificate_by_serial("0a03").await.unwrap().unwrap();
    assert_eq!(row.status, tessera::store::CertificateStatus::OnHold);

    // Likewise a hold from the token's suspension.
    let mut tx = store.begin_write().await.unwrap();
    let token = tx
        .insert_token(&NewToken {
            serial: "31000001".into(),
            model: "YubiKey 5C NFC".into(),
            firmware: "5.7.1".into(),
            form_factor: "usb_c_keychain".into(),
            state: TokenState::Active,
            person_id: Some(e1.id),
        })
        .await
        .unwrap();
    tx.reserve_certificate(&tessera::store::NewCertificate {
        serial: "0a04".into(),
        person_id: Some(e1.id),
        token_id: Some(token.id),
        profile: "piv-authentication".into(),
        tbs: b"tbs".to_vec(),
        not_before: "2026-01-01T00:00:00Z".parse().unwrap(),
        not_after: "2027-01-01T00:00:00Z".parse().unwrap(),
    })
    .await
    .unwrap();
    tx.record_issued_certificate("0a04", b"DER4", &"04".repeat(32))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    TokenServiceClient::new(server.as_role("helpdesk").await)
        .suspend_token(pb::SuspendTokenRequest {
            request_id: "suspend-token".into(),
            serial: "31000001".into(),
            reason: "left at home".into(),
        })
        .await
        .unwrap();
    let s = desk
        .release_certificate_hold(release("d16", "0a04"))
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason_and_fields(&s).0.as_str(), s.message()),
        (
            Code::FailedPrecondition,
            "HOLD_IS_FROM_PERSON_OR_TOKEN",
            "certificate 0a04 is on hold because its token is suspended; reinstate the token instead"
        )
    );

    // Every change audited once, none of the refusals; the release carries its reason.
    let events = store.audit_events(0, 100).await.unwrap();
    let actions: Vec<_> = events[events_before..]
        .iter()
        .map(|e| (e.action.as_str(), e.role.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("certificate.hold", "admin"),
            ("certificate.release", "admin"),
            ("certificate.revoke", "admin"),
            ("certificate.hold", "helpdesk"),
            ("certificate.release", "helpdesk"),
            ("certificate.hold", "helpdesk"),
            ("certificate.revoke", "helpdesk"),
            ("person.suspend", "hr"),
            ("certificate.hold", "hr"),
            ("token.suspend", "helpdesk"),
            ("certificate.hold", "helpdesk"),
        ]
    );
    let release_event = &events[events_before + 4];
    assert_eq!(release_event.subject, "certificate:0a01");
    assert!(
        release_event.after_json.contains("called the owner back"),
        "{release_event:?}"
    );
    store.close().await;
    server.stop().await;
}
