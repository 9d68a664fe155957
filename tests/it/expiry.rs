//! Expiry (issue 13, item 3) on SQLite and PostgreSQL: `ListExpiringCertificates` (window,
//! order, paging, filters, refusals), the `tessera_certificates_expiring` gauge and
//! `tessera report expiring`, with the server's time from a `ManualClock`.
use crate::harness;

use harness::binary::tessera;
use harness::config::{CLIENT_CA, ServerToml};
use harness::pki::TestPki;
use harness::server::{ServerTask, connect};
use std::collections::BTreeMap;
use tessera::audit::Actor;
use tessera::lifecycle::{self, PersonInput};
use tessera::protocol::pb;
use tessera::protocol::pb::certificate_service_client::CertificateServiceClient;
use tessera::store::{CertificateStatus, ManualClock, NewCertificate, Store};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

on_both_databases!(
    expiring_certificates_by_window_filter_and_page,
    expiring_refusals_name_their_reason,
    expiring_gauge_counts_good_certificates_within_7_and_30_days,
    report_expiring_prints_table_json_and_csv,
);

fn refusal(s: &Status) -> (Code, String) {
    let reason = s
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default();
    (s.code(), reason)
}

async fn create_person(store: &Store, id: &str) -> i64 {
    let actor = Actor {
        name: "hr-sync".into(),
        role: "hr".into(),
    };
    let input = PersonInput {
        external_id: id.into(),
        display_name: format!("Person {id}"),
        upn: format!("{id}@corp.test"),
        email: format!("{id}@corp.test"),
        windows_sid: String::new(),
        attributes: BTreeMap::new(),
    };
    let mut tx = store.begin_write().await.unwrap();
    lifecycle::create_person(&mut tx, &actor, &format!("create-{id}"), input)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    store.person_by_external_id(id).await.unwrap().unwrap().id
}

/// The fixture: certificates around `now`, each `(serial, hours from now to notAfter, status,
/// profile, person)`. Listed within 7 days: a1 a5 a6 a7; within 30: also a8 a9; within 400:
/// also aa. Never listed: a0 (expired), a2 (on hold), a3 (revoked), a4 (reserved).
async fn fixture(store: &Store) {
    let e1 = create_person(store, "E1").await;
    let e2 = create_person(store, "E2").await;
    let now = store.now();
    let rows: [(&str, i64, CertificateStatus, &str, i64); 11] = {
        use CertificateStatus::*;
        [
            ("a0", -1, Good, "piv-login", e1),
            ("a1", 24, Good, "piv-login", e1),
            ("a2", 72, OnHold, "piv-login", e1),
            ("a3", 72, Revoked, "piv-login", e1),
            ("a4", 48, Reserved, "piv-login", e1),
            ("a5", 90, Good, "piv-signature", e1),
            ("a6", 120, Good, "piv-login", e2),
            ("a7", 120, Good, "piv-login", e1),
            ("a8", 20 * 24, Good, "piv-login", e1),
            ("a9", 29 * 24, Good, "piv-login", e1),
            ("aa", 31 * 24, Good, "piv-login", e1),
        ]
    };
    let mut tx = store.begin_write().await.unwrap();
    for (serial, hours, status, profile, person) in rows {
        tx.reserve_certificate(&NewCertificate {
            serial: serial.into(),
            person_id: Some(person),
            token_id: None,
            profile: profile.into(),
            tbs: vec![1],
            not_before: now + time::Duration::days(-300),
            not_after: now + time::Duration::hours(hours),
        })
        .await
        .unwrap();
        if status != CertificateStatus::Reserved {
            tx.record_issued_certificate(serial, b"der", &format!("sha-{serial}"))
                .await
                .unwrap();
        }
        let reason = match status {
            CertificateStatus::OnHold => Some(6),
            CertificateStatus::Revoked => Some(1),
            _ => None,
        };
        if reason.is_some() {
            tx.update_certificate_status(serial, status, reason, Some(now))
                .await
                .unwrap();
        }
    }
    tx.commit().await.unwrap();
}

struct Running {
    _dir: tempfile::TempDir,
    config_path: std::path::PathBuf,
    pki: TestPki,
    task: ServerTask,
    clock: ManualClock,
}

impl Running {
    async fn start(url: &str) -> Running {
        let clock = ManualClock::starting_now();
        let store = Store::open_with_clock(url, clock.clock()).await.unwrap();
        fixture(&store).await;
        store.close().await;
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let config_path = ServerToml::new(url)
            .with_http_chain(CLIENT_CA)
            .write(dir.path(), &pki);
        let task = ServerTask::start_with_clock(&config_path, clock.clock()).await;
        Running {
            _dir: dir,
            config_path,
            pki,
            task,
            clock,
        }
    }

    async fn certificates(&self, role: &str) -> CertificateServiceClient<Channel> {
        let client = self.pki.client(role);
        CertificateServiceClient::new(
            connect(self.task.addr, &self.pki.ca_pem, Some(&client)).await,
        )
    }
}

fn serials(r: &pb::ListExpiringCertificatesResponse) -> Vec<&str> {
    r.certificates.iter().map(|c| c.serial.as_str()).collect()
}

async fn expiring_certificates_by_window_filter_and_page(url: &str) {
    let server = Running::start(url).await;
    let now = server.clock.now();
    for role in ["helpdesk", "auditor", "admin"] {
        let mut c = server.certificates(role).await;
        let week = c
            .list_expiring_certificates(pb::ListExpiringCertificatesRequest {
                within_days: 7,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(serials(&week), ["a1", "a5", "a6", "a7"], "{role}");
        assert_eq!(week.next_page_token, "");
        assert_eq!(week.window_end, (now + time::Duration::days(7)).to_string());
        let first = &week.certificates[0];
        assert_eq!(first.status, pb::CertificateStatus::Good as i32);
        assert_eq!(first.person_external_id, "E1");
        assert_eq!(
            first.not_after,
            (now + time::Duration::hours(24)).to_string()
        );
    }
    let mut c = server.certificates("helpdesk").await;
    let ask = |within_days, page_size, page_token: &str, profile: &str, person: &str| {
        pb::ListExpiringCertificatesRequest {
            within_days,
            page_size,
            page_token: page_token.into(),
            profile: profile.into(),
            person_external_id: person.into(),
        }
    };
    // 0 is the default window, 30 days; 400 reaches the certificate 31 days out.
    let month = c
        .list_expiring_certificates(ask(0, 0, "", "", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serials(&month), ["a1", "a5", "a6", "a7", "a8", "a9"]);
    assert_eq!(
        month.window_end,
        (now + time::Duration::days(30)).to_string()
    );
    let all = c
        .list_expiring_certificates(ask(400, 0, "", "", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serials(&all), ["a1", "a5", "a6", "a7", "a8", "a9", "aa"]);
    // Pages of two, through the notAfter tie of a6 and a7, until an empty token.
    let mut paged = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_expiring_certificates(ask(30, 2, &token, "", ""))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        paged.extend(serials(&page).into_iter().map(String::from));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, ["a1", "a5", "a6", "a7", "a8", "a9"]);
    assert_eq!(pages, 4, "three full pages, then an empty one");
    // Filters: by profile, by person, both.
    let by_profile = c
        .list_expiring_certificates(ask(30, 0, "", "piv-signature", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serials(&by_profile), ["a5"]);
    let by_person = c
        .list_expiring_certificates(ask(30, 0, "", "", "E2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serials(&by_person), ["a6"]);
    let both = c
        .list_expiring_certificates(ask(30, 0, "", "piv-signature", "E2"))
        .await
        .unwrap()
        .into_inner();
    assert!(both.certificates.is_empty());
    // Two days on, a1 has expired and is no longer listed.
    server
        .clock
        .advance(std::time::Duration::from_secs(2 * 86_400));
    let later = c
        .list_expiring_certificates(ask(7, 0, "", "", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serials(&later), ["a5", "a6", "a7"]);
    // Roles without it are refused.
    for role in ["hr", "relying-party"] {
        let s = server
            .certificates(role)
            .await
            .list_expiring_certificates(ask(7, 0, "", "", ""))
            .await
            .unwrap_err();
        assert_eq!(
            refusal(&s),
            (Code::PermissionDenied, "ROLE_NOT_ALLOWED".into()),
            "{role}"
        );
    }
    server.task.stop().await;
}

async fn expiring_refusals_name_their_reason(url: &str) {
    let server = Running::start(url).await;
    let mut c = server.certificates("helpdesk").await;
    let cases: Vec<(pb::ListExpiringCertificatesRequest, (Code, &str))> = vec![
        (
            pb::ListExpiringCertificatesRequest {
                within_days: -1,
                ..Default::default()
            },
            (Code::InvalidArgument, "INVALID_WINDOW"),
        ),
        (
            pb::ListExpiringCertificatesRequest {
                within_days: 401,
                ..Default::default()
            },
            (Code::InvalidArgument, "INVALID_WINDOW"),
        ),
        (
            pb::ListExpiringCertificatesRequest {
                page_size: -1,
                ..Default::default()
            },
            (Code::InvalidArgument, "INVALID_PAGE_SIZE"),
        ),
        (
            pb::ListExpiringCertificatesRequest {
                page_token: "a1".into(),
                ..Default::default()
            },
            (Code::InvalidArgument, "INVALID_PAGE_TOKEN"),
        ),
        (
            pb::ListExpiringCertificatesRequest {
                page_token: "yesterday/a1".into(),
                ..Default::default()
            },
            (Code::InvalidArgument, "INVALID_PAGE_TOKEN"),
        ),
        (
            pb::ListExpiringCertificatesRequest {
                page_token: "2030-01-01T00:00:00Z/not-hex".into(),
                ..Default::default()
            },
            (Code::InvalidArgument, "INVALID_PAGE_TOKEN"),
        ),
        (
            pb::ListExpiringCertificatesRequest {
                person_external_id: "nobody".into(),
                ..Default::default()
            },
            (Code::NotFound, "PERSON_NOT_FOUND"),
        ),
    ];
    for (request, (code, reason)) in cases {
        let s = c
            .list_expiring_certificates(request.clone())
            .await
            .unwrap_err();
        assert_eq!(refusal(&s), (code, reason.to_string()), "{request:?}");
    }
    let s = c
        .list_expiring_certificates(pb::ListExpiringCertificatesRequest {
            within_days: 401,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        s.message().contains("1 to 400 days"),
        "the message names the range: {}",
        s.message()
    );
    server.task.stop().await;
}

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

async fn expiring_gauge_counts_good_certificates_within_7_and_30_days(url: &str) {
    let server = Running::start(url).await;
    let http = server.task.http.unwrap();
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let lines: Vec<&str> = body.lines().collect();
    for line in [
        "# TYPE tessera_certificates_expiring gauge",
        "tessera_certificates_expiring{within_days=\"7\"} 4",
        "tessera_certificates_expiring{within_days=\"30\"} 6",
    ] {
        assert!(lines.contains(&line), "{line:?} missing from:\n{body}");
    }
    // Computed at each scrape: two days on, a1 has expired.
    server
        .clock
        .advance(std::time::Duration::from_secs(2 * 86_400));
    let (_, body) = http_get(http, "/metrics").await;
    assert!(
        body.lines()
            .any(|l| l == "tessera_certificates_expiring{within_days=\"7\"} 3"),
        "{body}"
    );
    server.task.stop().await;
}

async fn report_expiring_prints_table_json_and_csv(url: &str) {
    // The command reads the database with the system clock; the fixture's times are close
    // enough to it that no certificate sits on a window's edge.
    let server = Running::start(url).await;
    let config = server.config_path.to_str().unwrap();
    let (code, out, err) = tessera(
        &[
            "report", "expiring", "--config", config, "--within", "7d", "--csv",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "serial,not_after,days_left,profile,person_external_id,token_serial"
    );
    let listed: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(listed, ["a1", "a5", "a6", "a7"]);
    assert!(lines[2].starts_with("a5,"), "{out}");
    assert!(lines[2].ends_with(",3,piv-signature,E1,"), "{out}");

    let (code, out, err) = tessera(
        &[
            "report", "expiring", "--config", config, "--within", "30d", "--json", "--person", "E1",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["within_days"], 30);
    let listed: Vec<&str> = report["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["serial"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["a1", "a5", "a7", "a8", "a9"]);
    assert_eq!(report["certificates"][0]["person_external_id"], "E1");
    assert_eq!(report["certificates"][0]["profile"], "piv-login");

    let (code, out, err) = tessera(
        &[
            "report",
            "expiring",
            "--config",
            config,
            "--profile",
            "piv-signature",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("1 good certificate(s) expire between "),
        "{out}"
    );
    assert!(
        out.contains(" a5  piv-signature  person=E1  token=-"),
        "{out}"
    );

    for (within, why) in [
        ("12h", "\"12h\" is not a number of days"),
        ("30", "\"30\" is not a number of days"),
        ("0d", "\"0d\" is out of range"),
        ("401d", "\"401d\" is out of range"),
    ] {
        let (code, out, err) = tessera(
            &["report", "expiring", "--config", config, "--within", within],
            &[],
        );
        assert_eq!((code, out.as_str()), (1, ""), "{within}: {err}");
        assert!(
            err.contains(why) && err.contains("give whole days like 30d"),
            "{within}: {err}"
        );
    }
    let (code, _, err) = tessera(
        &[
            "report", "expiring", "--config", config, "--person", "nobody",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("no person with external id \"nobody\""),
        "{err}"
    );
    server.task.stop().await;
}
