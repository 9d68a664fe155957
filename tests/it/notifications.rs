//! The notification outbox and its notifier (issue 13, item 3) on SQLite and PostgreSQL, against
//! a real local HTTP receiver: notices written in the transaction of their change (token
//! suspended, token lost) or by the expiry scan (once per certificate and threshold), delivered
//! at least once across a receiver outage and a `kill -9` of `tessera serve`, each resend with
//! the same body, HMAC signature and idempotency key (the outbox row id).
use crate::harness;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use harness::config::ServerToml;
use harness::pki::TestPki;
use harness::server::{KillOnDrop, ServerTask, connect};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera::audit::Actor;
use tessera::lifecycle::{self, PersonInput};
use tessera::protocol::pb;
use tessera::protocol::pb::token_service_client::TokenServiceClient;
use tessera::store::{
    CertificateStatus, NewCertificate, NewToken, NotificationRow, Store, TokenState,
};

on_both_databases!(
    notices_survive_a_receiver_outage_with_a_stable_idempotency_key,
    expiry_scan_writes_one_notice_per_certificate_and_threshold,
    kill_9_between_write_and_delivery_delivers_after_restart,
);

const KEY: [u8; 32] = *b"0123456789abcdef0123456789abcdef";

#[derive(Debug, Clone)]
struct Receipt {
    idempotency_key: String,
    signature: String,
    event: String,
    body: Vec<u8>,
}

/// A webhook receiver on 127.0.0.1:`port`: records every request; answers 503 to the first
/// `fail_first` requests, 200 after.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Receipt>>>,
    fail_first: Arc<AtomicUsize>,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    r.got.lock().unwrap().push(Receipt {
        idempotency_key: header("idempotency-key"),
        signature: header("x-tessera-signature"),
        event: header("x-tessera-event"),
        body: body.to_vec(),
    });
    let failing = r
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

impl Receiver {
    async fn start(port: u16, fail_first: usize) -> (Receiver, tokio::task::JoinHandle<()>) {
        let r = Receiver::default();
        r.fail_first.store(fail_first, Ordering::SeqCst);
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (r, task)
    }

    fn receipts(&self) -> Vec<Receipt> {
        self.got.lock().unwrap().clone()
    }
}

/// A port nothing listens on (yet): the receiver is down.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server configuration with `[notifications]` to 127.0.0.1:`port`.
fn write_config(dir: &Path, pki: &TestPki, url: &str, port: u16, scan_seconds: u64) -> PathBuf {
    let config = ServerToml::new(url).write(dir, pki);
    std::fs::write(dir.join("webhook.key"), KEY).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[notifications]\nwebhook_url = \"http://127.0.0.1:{port}/hook\"\n\
         hmac_key_file = \"webhook.key\"\nexpiry_thresholds_days = [30, 7]\n\
         scan_interval_seconds = {scan_seconds}\npoll_interval_seconds = 1\n\
         retry_initial_seconds = 1\nretry_max_seconds = 2\n"
    ));
    std::fs::write(&config, text).unwrap();
    config
}

/// Person E1 with active tokens T1 and T2, and E1's certificates: a1 good, 5 days left; a2
/// good, 20 days; a3 on hold, 5 days; a4 good, 60 days.
async fn seed(store: &Store) {
    let actor = Actor {
        name: "hr-sync".into(),
        role: "hr".into(),
    };
    let mut tx = store.begin_write().await.unwrap();
    lifecycle::create_person(
        &mut tx,
        &actor,
        "create-E1",
        PersonInput {
            external_id: "E1".into(),
            display_name: "Person E1".into(),
            upn: "E1@corp.test".into(),
            email: "E1@corp.test".into(),
            windows_sid: String::new(),
            attributes: BTreeMap::new(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let person = store.person_by_external_id("E1").await.unwrap().unwrap().id;
    let now = store.now();
    let mut tx = store.begin_write().await.unwrap();
    for serial in ["T1", "T2"] {
        tx.insert_token(&NewToken {
            serial: serial.into(),
            model: "YubiKey 5".into(),
            firmware: "5.7.4".into(),
            form_factor: "usb_a_keychain".into(),
            state: TokenState::Active,
            person_id: Some(person),
        })
        .await
        .unwrap();
    }
    for (serial, days, hold) in [
        ("a1", 5, false),
        ("a2", 20, false),
        ("a3", 5, true),
        ("a4", 60, false),
    ] {
        tx.reserve_certificate(&NewCertificate {
            serial: serial.into(),
            person_id: Some(person),
            token_id: None,
            profile: "piv-login".into(),
            tbs: vec![1],
            not_before: now + time::Duration::days(-300),
            not_after: now + time::Duration::days(days),
        })
        .await
        .unwrap();
        tx.record_issued_certificate(serial, b"der", &format!("sha-{serial}"))
            .await
            .unwrap();
        if hold {
            tx.update_certificate_status(serial, CertificateStatus::OnHold, Some(6), Some(now))
                .await
                .unwrap();
        }
    }
    tx.commit().await.unwrap();
}

async fn wait_for<T>(what: &str, seconds: u64, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn hmac_hex(body: &[u8]) -> String {
    tessera::notify::signature(&KEY, body)
}

/// Every receipt is signed over its body, names its row's id and event, and every resend of a
/// row carries the same key and the same bytes.
fn check_receipts(rows: &[NotificationRow], receipts: &[Receipt]) -> BTreeMap<i64, usize> {
    let mut per_row = BTreeMap::new();
    for r in receipts {
        assert_eq!(r.signature, format!("sha256={}", hmac_hex(&r.body)));
        let id: i64 = r.idempotency_key.parse().unwrap();
        let row = rows.iter().find(|row| row.id == id).expect("a row's id");
        assert_eq!(r.event, row.event);
        assert_eq!(
            r.body,
            tessera::notify::body(row),
            "the same body on every attempt"
        );
        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(json["id"], id);
        assert_eq!(json["event"], row.event.as_str());
        *per_row.entry(id).or_insert(0) += 1;
    }
    per_row
}

async fn suspend_and_lose(addr: std::net::SocketAddr, pki: &TestPki) {
    let ch = connect(addr, &pki.ca_pem, Some(&pki.client("helpdesk"))).await;
    let mut t = TokenServiceClient::new(ch);
    // Sent twice: the replay answers from the idempotency record and writes no second notice
    // (the callers count the token notices).
    for _ in 0..2 {
        t.suspend_token(pb::SuspendTokenRequest {
            request_id: "suspend-T1".into(),
            serial: "T1".into(),
            reason: "left on a train?".into(),
        })
        .await
        .unwrap();
    }
    t.mark_token_lost(pb::MarkTokenLostRequest {
        request_id: "lose-T2".into(),
        serial: "T2".into(),
        reason: String::new(),
    })
    .await
    .unwrap();
}

async fn notices_survive_a_receiver_outage_with_a_stable_idempotency_key(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let port = free_port();
    let config = write_config(dir.path(), &pki, url, port, 1);
    let store = Store::open(url).await.unwrap();
    seed(&store).await;
    let server = ServerTask::start(&config).await;
    suspend_and_lose(server.addr, &pki).await;
    // Receiver down: every row is tried, fails, and waits for its next attempt.
    let rows = wait_for("failed attempts for all five notices", 60, async || {
        let rows = store.notifications().await.unwrap();
        (rows.len() == 5 && rows.iter().all(|r| r.attempts >= 1)).then_some(rows)
    })
    .await;
    for r in &rows {
        assert!(r.delivered_at.is_none(), "{r:?}");
        assert!(
            r.last_error
                .as_deref()
                .unwrap_or_default()
                .contains("cannot connect"),
            "{r:?}"
        );
    }
    let mut events: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|r| (r.event.as_str(), r.dedup_key.as_deref()))
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            ("certificate.expiring", Some("certificate.expiring/a1/30")),
            ("certificate.expiring", Some("certificate.expiring/a1/7")),
            ("certificate.expiring", Some("certificate.expiring/a2/30")),
            ("token.lost", None),
            ("token.suspended", None),
        ]
    );
    // The receiver comes back, refusing the first two requests with 503.
    let (receiver, task) = Receiver::start(port, 2).await;
    let rows = wait_for("every notice delivered", 60, async || {
        let rows = store.notifications().await.unwrap();
        rows.iter()
            .all(|r| r.delivered_at.is_some())
            .then_some(rows)
    })
    .await;
    let receipts = receiver.receipts();
    let per_row = check_receipts(&rows, &receipts);
    assert_eq!(per_row.len(), 5, "nothing lost: {per_row:?}");
    assert!(
        per_row.values().filter(|n| **n >= 2).count() >= 1,
        "the refused ones were sent again: {per_row:?}"
    );
    let suspended = rows.iter().find(|r| r.event == "token.suspended").unwrap();
    let body: serde_json::Value =
        serde_json::from_slice(&tessera::notify::body(suspended)).unwrap();
    assert_eq!(body["data"]["token_serial"], "T1");
    assert_eq!(body["data"]["person_external_id"], "E1");
    assert_eq!(body["data"]["state"], "suspended");
    // Delivered rows are not sent again, and later scans add no second notice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.receipts().len(), receipts.len());
    assert_eq!(store.notifications().await.unwrap().len(), 5);
    server.stop().await;
    task.abort();
}

async fn expiry_scan_writes_one_notice_per_certificate_and_threshold(url: &str) {
    let store = Store::open(url).await.unwrap();
    seed(&store).await;
    assert_eq!(
        lifecycle::enqueue_expiry_notices(&store, &[30, 7])
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        lifecycle::enqueue_expiry_notices(&store, &[30, 7])
            .await
            .unwrap(),
        0
    );
    // A new threshold adds its own notices, once.
    assert_eq!(
        lifecycle::enqueue_expiry_notices(&store, &[90])
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        lifecycle::enqueue_expiry_notices(&store, &[90, 30, 7])
            .await
            .unwrap(),
        0
    );
    let rows = store.notifications().await.unwrap();
    assert_eq!(rows.len(), 6);
    let a1 = rows
        .iter()
        .find(|r| r.dedup_key.as_deref() == Some("certificate.expiring/a1/7"))
        .unwrap();
    let payload: serde_json::Value = serde_json::from_str(&a1.payload).unwrap();
    assert_eq!(payload["serial"], "a1");
    assert_eq!(payload["within_days"], 7);
    assert_eq!(payload["person_external_id"], "E1");
    assert!(
        rows.iter()
            .all(|r| !r.dedup_key.as_deref().unwrap().contains("/a3/"))
    );
}

/// `tessera serve` as a child process; returns it, its kill guard, its stdout and its address.
fn serve(
    config: &Path,
) -> (
    std::process::Child,
    KillOnDrop,
    impl std::io::BufRead,
    std::net::SocketAddr,
) {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child.id());
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("tessera: gRPC listening on ")
        .unwrap_or_else(|| panic!("start-up line: {line:?}"))
        .parse()
        .unwrap();
    (child, guard, out, addr)
}

async fn kill_9_between_write_and_delivery_delivers_after_restart(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let port = free_port();
    let config = write_config(dir.path(), &pki, url, port, 3600);
    let store = Store::open(url).await.unwrap();
    seed(&store).await;
    let (mut child, guard, _out, addr) = serve(&config);
    suspend_and_lose(addr, &pki).await;
    // Written with the change, not delivered (the receiver is down); then kill -9.
    let token_rows = |rows: Vec<NotificationRow>| -> Vec<NotificationRow> {
        rows.into_iter()
            .filter(|r| r.event.starts_with("token."))
            .collect()
    };
    let before = token_rows(store.notifications().await.unwrap());
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(before.iter().all(|r| r.delivered_at.is_none()));
    let status = std::process::Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.wait();
    drop(guard);
    let (receiver, task) = Receiver::start(port, 0).await;
    let (_child, _guard, _out, _addr) = serve(&config);
    let rows = wait_for(
        "the notices written before the kill delivered",
        60,
        async || {
            let rows = token_rows(store.notifications().await.unwrap());
            rows.iter()
                .all(|r| r.delivered_at.is_some())
                .then_some(rows)
        },
    )
    .await;
    assert_eq!(
        rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        before.iter().map(|r| r.id).collect::<Vec<_>>()
    );
    let all = store.notifications().await.unwrap();
    let per_row = check_receipts(&all, &receiver.receipts());
    for r in &rows {
        assert!(
            per_row.get(&r.id).copied().unwrap_or(0) >= 1,
            "{r:?} not received"
        );
    }
    task.abort();
}
