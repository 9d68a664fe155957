//! Issue 12, item 11, "Clear errors at the edges": what a client written from the protos alone
//! meets at the limits — attribute and batch limits, page sizes (AIP-158), requests that do not
//! decode, and an unreachable database.
use crate::harness::database::TestDatabase;
use crate::harness::server::TestServer;
use prost::bytes::BufMut;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tessera::protocol::pb;
use tessera::protocol::pb::audit_service_client::AuditServiceClient;
use tessera::protocol::pb::certificate_service_client::CertificateServiceClient;
use tessera::protocol::pb::directory_service_client::DirectoryServiceClient;
use tessera::protocol::pb::token_service_client::TokenServiceClient;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};
use tonic_types::StatusExt;

on_both_databases!(
    attribute_and_batch_limits,
    negative_page_sizes_are_refused_and_large_ones_clamped,
    undecodable_requests_are_invalid_argument,
);

fn record(id: &str, attributes: usize) -> pb::PersonRecord {
    pb::PersonRecord {
        external_id: id.into(),
        display_name: format!("Person {id}"),
        upn: format!("{id}@corp.test"),
        email: format!("{id}@corp.test"),
        windows_sid: String::new(),
        attributes: (0..attributes)
            .map(|i| (format!("key{i}"), format!("value {i}")))
            .collect(),
    }
}

/// Code, ErrorInfo reason and BadRequest fields.
fn refusal(s: &Status) -> (Code, String, Vec<String>) {
    let d = s.get_error_details();
    let reason = d.error_info().map(|i| i.reason.clone()).unwrap_or_default();
    let fields = d
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    (s.code(), reason, fields)
}

fn too_many(field: &str) -> (Code, String, Vec<String>) {
    (
        Code::InvalidArgument,
        "TOO_MANY_ITEMS".into(),
        vec![field.to_string()],
    )
}

async fn attribute_and_batch_limits(url: &str) {
    let server = TestServer::builder(url).start().await;
    let mut d = DirectoryServiceClient::new(server.as_role("hr").await);
    // 64 attributes are fine, 65 are not (10,000 used to be accepted).
    d.create_person(pb::CreatePersonRequest {
        request_id: "c64".into(),
        person: Some(record("E1", 64)),
    })
    .await
    .expect("64 attributes are accepted");
    for n in [65, 10_000] {
        let s = d
            .create_person(pb::CreatePersonRequest {
                request_id: format!("c{n}"),
                person: Some(record("E2", n)),
            })
            .await
            .unwrap_err();
        assert_eq!(refusal(&s), too_many("person.attributes"), "{n}: {s:?}");
    }
    let s = d
        .update_person(pb::UpdatePersonRequest {
            request_id: "u65".into(),
            person: Some(record("E1", 65)),
        })
        .await
        .unwrap_err();
    assert_eq!(refusal(&s), too_many("person.attributes"));
    let s = d
        .sync_people(pb::SyncPeopleRequest {
            request_id: "s65".into(),
            generation: 1,
            people: vec![record("E1", 1), record("E3", 65)],
            offboard_missing: false,
        })
        .await
        .unwrap_err();
    assert_eq!(refusal(&s), too_many("people[1].person.attributes"));
    // Key and value sizes keep their limits.
    let mut long_value = record("E4", 0);
    long_value.attributes = BTreeMap::from([("k".to_string(), "v".repeat(4097))])
        .into_iter()
        .collect();
    let s = d
        .create_person(pb::CreatePersonRequest {
            request_id: "long-value".into(),
            person: Some(long_value),
        })
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&s),
        (
            Code::InvalidArgument,
            "FIELD_TOO_LONG".into(),
            vec!["person.attributes".to_string()]
        )
    );
    // More than 200,000 people in one SyncPeople.
    let many = (0..200_001)
        .map(|i| pb::PersonRecord {
            external_id: i.to_string(),
            ..Default::default()
        })
        .collect();
    let s = d
        .sync_people(pb::SyncPeopleRequest {
            request_id: "s-many".into(),
            generation: 1,
            people: many,
            offboard_missing: false,
        })
        .await
        .unwrap_err();
    assert_eq!(refusal(&s), too_many("people"));
    server.stop().await;
}

async fn negative_page_sizes_are_refused_and_large_ones_clamped(url: &str) {
    let server = TestServer::builder(url).start().await;
    let channel = server.as_role("admin").await;
    let mut d = DirectoryServiceClient::new(channel.clone());
    let mut t = TokenServiceClient::new(channel.clone());
    let mut c = CertificateServiceClient::new(channel.clone());
    let mut a = AuditServiceClient::new(channel);
    let bad = (
        Code::InvalidArgument,
        "INVALID_PAGE_SIZE".to_string(),
        vec!["page_size".to_string()],
    );
    for page_size in [-5, -1, i32::MIN] {
        let people = d
            .list_people(pb::ListPeopleRequest {
                page_size,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refusal(&people), bad, "ListPeople {page_size}");
        let tokens = t
            .list_tokens(pb::ListTokensRequest {
                page_size,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refusal(&tokens), bad, "ListTokens {page_size}");
        let certificates = c
            .list_certificates(pb::ListCertificatesRequest {
                page_size,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refusal(&certificates), bad, "ListCertificates {page_size}");
        let expiring = c
            .list_expiring_certificates(pb::ListExpiringCertificatesRequest {
                page_size,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            refusal(&expiring),
            bad,
            "ListExpiringCertificates {page_size}"
        );
        let events = a
            .list_audit_events(pb::ListAuditEventsRequest {
                page_size,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refusal(&events), bad, "ListAuditEvents {page_size}");
    }
    // A page size above the maximum (1000) is clamped, not refused.
    d.list_people(pb::ListPeopleRequest {
        page_size: i32::MAX,
        ..Default::default()
    })
    .await
    .expect("a large page size is clamped");
    a.list_audit_events(pb::ListAuditEventsRequest {
        page_size: 5000,
        ..Default::default()
    })
    .await
    .expect("a large page size is clamped");
    c.list_expiring_certificates(pb::ListExpiringCertificatesRequest {
        page_size: i32::MAX,
        ..Default::default()
    })
    .await
    .expect("a large page size is clamped");
    server.stop().await;
}

/// Sends its bytes as the message, as they are.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::GetPersonResponse;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder(tonic_prost::ProstDecoder::default())
    }
}

struct RawDecoder(tonic_prost::ProstDecoder<pb::GetPersonResponse>);

impl Decoder for RawDecoder {
    type Item = pb::GetPersonResponse;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.0.decode(buf)
    }
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

async fn undecodable_requests_are_invalid_argument(url: &str) {
    let server = TestServer::builder(url).start().await;
    let mut grpc = tonic::client::Grpc::new(server.as_role("hr").await);
    let cases: [(&str, Vec<u8>); 3] = [
        // Field 1 (external_id, a string), 2 bytes that are not UTF-8.
        ("invalid UTF-8", vec![0x0a, 0x02, 0xff, 0xfe]),
        (
            "random bytes",
            vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x07, 0x13],
        ),
        // Field 1, length 100, only 3 bytes follow.
        ("truncated", vec![0x0a, 0x64, b'a', b'b', b'c']),
    ];
    for (what, bytes) in cases {
        grpc.ready().await.expect("ready");
        let s = grpc
            .unary(
                tonic::Request::new(bytes),
                "/tessera.v1.DirectoryService/GetPerson".parse().unwrap(),
                RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(
            refusal(&s),
            (Code::InvalidArgument, "MESSAGE_UNDECODABLE".into(), vec![]),
            "{what}: {s:?}"
        );
    }
    // A well-formed request still works (field 1 = "nobody": not found).
    let mut ok = vec![0x0a, 6];
    ok.extend_from_slice(b"nobody");
    grpc.ready().await.expect("ready");
    let s = grpc
        .unary(
            tonic::Request::new(ok),
            "/tessera.v1.DirectoryService/GetPerson".parse().unwrap(),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    server.stop().await;
}

/// A TCP proxy to PostgreSQL that the test can cut (every connection closed, new ones
/// refused) and restore on the same port.
struct Proxy {
    port: u16,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(port: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let registry = tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                registry.lock().unwrap().push(task);
            }
        });
        tasks.lock().unwrap().push(accept);
        Proxy { port, tasks }
    }

    /// Closes the listener and every proxied connection.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// While PostgreSQL cannot be reached, calls answer UNAVAILABLE / DATABASE_UNAVAILABLE (a retry
/// may succeed), not INTERNAL; nothing acknowledged before is lost, nothing refused was written,
/// and the same request succeeds once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_answers_unavailable() {
    let db = TestDatabase::postgres().await;
    let proxy = Proxy::start(0).await;
    let url = db
        .url()
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    // Calls wait 2 s (not the default 30 s) for a connection before answering UNAVAILABLE.
    let server = TestServer::builder(&url)
        .configure(|c| c.database.acquire_timeout_seconds = Some(2))
        .start()
        .await;
    let mut d = DirectoryServiceClient::new(server.as_role("hr").await);
    d.create_person(pb::CreatePersonRequest {
        request_id: "before".into(),
        person: Some(record("E1", 1)),
    })
    .await
    .expect("created while the database is up");

    proxy.cut();
    let s = d
        .create_person(pb::CreatePersonRequest {
            request_id: "during".into(),
            person: Some(record("E2", 1)),
        })
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&s),
        (Code::Unavailable, "DATABASE_UNAVAILABLE".into(), vec![]),
        "{s:?}"
    );
    let s = d
        .get_person(pb::GetPersonRequest {
            external_id: "E1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&s),
        (Code::Unavailable, "DATABASE_UNAVAILABLE".into(), vec![]),
        "{s:?}"
    );

    let back = Proxy::start(proxy.port).await;
    d.get_person(pb::GetPersonRequest {
        external_id: "E1".into(),
    })
    .await
    .expect("the person acknowledged before the outage is still there");
    let s = d
        .get_person(pb::GetPersonRequest {
            external_id: "E2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound, "the refused create wrote nothing");
    d.create_person(pb::CreatePersonRequest {
        request_id: "during".into(),
        person: Some(record("E2", 1)),
    })
    .await
    .expect("the retry succeeds once the database is back");
    server.stop().await;
    back.cut();
}
