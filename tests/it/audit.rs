//! Audit checkpoints outside the database and the replay of the log against the state tables
//! (issue 12, finding 7), on SQLite and PostgreSQL: checkpoints signed by default with the key
//! `tessera ca init` makes, each appended to the checkpoint file and served at
//! `GET /audit/checkpoints`; `tessera audit verify --checkpoints FILE` (the real binary) catching
//! a chain rewritten after a checkpoint whose later checkpoints were deleted from the database;
//! `audit verify` naming every row of people, tokens and certificates the log does not explain;
//! `VerifyAuditChain` checking checkpoint signatures.
use crate::harness;

use harness::binary::tessera;
use harness::ca::TestCa;
use harness::config::{Audit, ServerToml};
use harness::pki::TestPki;
use harness::server::TestServer;
use std::path::{Path, PathBuf};
use tessera::audit::{self, Actor};
use tessera::protocol::pb;
use tessera::protocol::pb::audit_service_client::AuditServiceClient;
use tessera::protocol::pb::directory_service_client::DirectoryServiceClient;
use tessera::store::{AuditRow, Backend, Store};

on_both_databases!(
    checkpoint_file_catches_a_rewritten_chain,
    replay_names_rows_the_log_does_not_explain,
    server_signs_checkpoints_by_default_and_serves_them,
);

const CHECKPOINT_KEY: &str = "pkcs11:object=tessera-audit-checkpoint;type=private";

/// A CA (`tessera ca init`, which also makes the checkpoint key) and a server configuration
/// with `[ca]` and no `[audit]` section, in a temp dir; the database at `url`.
struct Setup {
    dir: tempfile::TempDir,
    ca: TestCa,
    config: PathBuf,
    store: Store,
}

impl Setup {
    async fn new(url: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::init(&dir.path().join("ca"));
        let config = ServerToml::new(url)
            .with_ca(ca.hsm_config(), &ca.data_dir)
            .write(dir.path(), &TestPki::new());
        let store = Store::open(url).await.unwrap();
        Setup {
            dir,
            ca,
            config,
            store,
        }
    }

    fn config(&self) -> &str {
        self.config.to_str().unwrap()
    }

    /// The checkpoint file by default: next to the configuration.
    fn checkpoint_file(&self) -> PathBuf {
        self.dir.path().join("audit-checkpoints.jsonl")
    }

    async fn create_people(&self, ids: std::ops::Range<usize>) {
        let hr = Actor {
            name: "hr-sync".into(),
            role: "hr".into(),
        };
        for i in ids {
            let mut tx = self.store.begin_write().await.unwrap();
            tessera::lifecycle::create_person(
                &mut tx,
                &hr,
                &format!("c{i}"),
                tessera::lifecycle::PersonInput {
                    external_id: format!("E{i}"),
                    display_name: format!("Person {i}"),
                    upn: format!("e{i}@corp.test"),
                    email: format!("e{i}@corp.test"),
                    windows_sid: String::new(),
                    attributes: Default::default(),
                },
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
    }

    /// `tessera audit checkpoint` with the key `ca init` made; returns its stdout.
    fn checkpoint(&self) -> String {
        let (code, out, err) = tessera(
            &[
                "audit",
                "checkpoint",
                "--config",
                self.config(),
                "--hsm-config",
                self.ca.hsm_config_str(),
                "--key",
                CHECKPOINT_KEY,
            ],
            &self.ca.env,
        );
        assert_eq!(code, 0, "{err}");
        out
    }

    /// `tessera audit verify --config … [--checkpoints FILE]`: (exit code, stdout, stderr).
    fn verify(&self, checkpoints: Option<&Path>) -> (i32, String, String) {
        let mut args = vec!["audit", "verify", "--config", self.config()];
        if let Some(file) = checkpoints {
            args.extend(["--checkpoints", file.to_str().unwrap()]);
        }
        tessera(&args, &[])
    }
}

fn blob(store: &Store, bytes: &[u8]) -> String {
    match store.backend() {
        Backend::Sqlite => format!("X'{}'", hex::encode(bytes)),
        Backend::Postgres => format!("'\\x{}'::bytea", hex::encode(bytes)),
    }
}

/// What a database writer does to hide an edit: rewrites event `k` with `edit`, then
/// recomputes the hash chain from `k` to the end, so that the chain verifies again.
async fn rewrite_event(store: &Store, k: i64, edit: impl Fn(&mut AuditRow)) {
    let mut events = store.audit_events((k - 2).max(0), 1000).await.unwrap();
    let mut prev = if k == 1 {
        audit::GENESIS_HASH.to_vec()
    } else {
        events.remove(0).hash
    };
    for e in &mut events {
        if e.sequence == k {
            edit(e);
        }
        e.prev_hash = prev.clone();
        e.hash = audit::event_hash(e).to_vec();
        prev = e.hash.clone();
        store
            .execute_raw(&format!(
                "UPDATE audit_events SET after_json = '{}', prev_hash = {}, hash = {} WHERE sequence = {}",
                e.after_json.replace('\'', "''"),
                blob(store, &e.prev_hash),
                blob(store, &e.hash),
                e.sequence
            ))
            .await
            .unwrap();
    }
}

async fn checkpoint_file_catches_a_rewritten_chain(url: &str) {
    let s = Setup::new(url).await;
    let file = s.checkpoint_file();
    let file_s = file.to_str().unwrap();
    // `ca init` made the checkpoint key and wrote its public half beside the chain.
    assert!(s.ca.data_dir.join("audit-checkpoint.pem").exists());
    s.create_people(0..3).await;
    let first = s.checkpoint();
    assert!(
        first.starts_with("checkpoint at event 3 signed by pkcs11:")
            && first.contains("object=tessera-audit-checkpoint"),
        "{first}"
    );
    s.create_people(3..5).await;
    assert!(
        s.checkpoint()
            .starts_with("checkpoint at event 5 signed by")
    );
    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert!(
        lines.starts_with("{\"sequence\":3,\"event_hash\":\""),
        "{lines}"
    );

    let intact = (
        0,
        "audit chain intact: 5 events, 2 checkpoints, 2 in audit-checkpoints.jsonl (signatures checked)\n\
         state tables explained by the audit log: 5 people, 0 tokens, 0 certificates\n"
            .to_string(),
        String::new(),
    );
    assert_eq!(s.verify(Some(&file)), intact);

    // With a key of its own in `[audit]`, the PEM `ca init` wrote (the default key's) is not
    // taken for it.
    let own_key = tempfile::tempdir().unwrap();
    let own_key_config = ServerToml::new(url)
        .with_ca(s.ca.hsm_config(), &s.ca.data_dir)
        .with_audit(Audit {
            checkpoint_key: Some("pkcs11:object=another-key;type=private".into()),
            ..Default::default()
        })
        .write(own_key.path(), &TestPki::new());
    assert_eq!(
        tessera(
            &[
                "audit",
                "verify",
                "--config",
                own_key_config.to_str().unwrap()
            ],
            &[]
        ),
        (
            0,
            "audit chain intact: 5 events, 2 checkpoints (signatures not checked)\n\
             state tables explained by the audit log: 5 people, 0 tokens, 0 certificates\n"
                .to_string(),
            String::new()
        )
    );

    // Later checkpoints deleted from the database: the file still has them.
    let saved = s.store.audit_checkpoints().await.unwrap();
    s.store
        .execute_raw("DELETE FROM audit_checkpoints WHERE sequence = 5")
        .await
        .unwrap();
    let (code, out, _) = s.verify(Some(&file));
    assert_eq!(
        (code, out.as_str()),
        (
            2,
            "audit chain broken at event 5: the checkpoint file has a signed checkpoint at this event that the database does not (checkpoints deleted)\n"
        )
    );
    // The tail deleted with them: the file's checkpoint covers the missing event.
    let tail = s.store.audit_events(4, 10).await.unwrap();
    s.store
        .execute_raw("DELETE FROM audit_events WHERE sequence = 5")
        .await
        .unwrap();
    let (code, out, _) = s.verify(Some(&file));
    assert_eq!(
        (code, out.as_str()),
        (
            2,
            "audit chain broken at event 5: the checkpoint file's signed checkpoint covers this event but it is missing (rows deleted at the end)\n"
        )
    );
    let mut tx = s.store.begin_write().await.unwrap();
    tx.insert_audit_event(&tail[0]).await.unwrap();
    tx.insert_checkpoint(&saved[1]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.verify(Some(&file)), intact);

    // A line whose signature is not the key's.
    let forged = s.dir.path().join("forged.jsonl");
    let mut line: serde_json::Value = serde_json::from_str(lines.lines().nth(1).unwrap()).unwrap();
    line["signature"] = hex::encode([0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01]).into();
    std::fs::write(
        &forged,
        format!("{}\n{line}\n", lines.lines().next().unwrap()),
    )
    .unwrap();
    let (code, out, _) = s.verify(Some(&forged));
    assert_eq!(
        (code, out.as_str()),
        (
            2,
            "audit chain broken at event 5: the checkpoint file's checkpoint at this event has a signature that does not verify\n"
        )
    );
    // A file that is not a checkpoint file, and none at all.
    let garbled = s.dir.path().join("garbled.jsonl");
    std::fs::write(
        &garbled,
        format!("{}\nnot json\n", lines.lines().next().unwrap()),
    )
    .unwrap();
    let (code, out, err) = s.verify(Some(&garbled));
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.starts_with(&format!(
            "error: checkpoint file {}, line 2: not a checkpoint: ",
            garbled.display()
        )),
        "{err}"
    );
    let missing = s.dir.path().join("missing.jsonl");
    let (code, _, err) = s.verify(Some(&missing));
    assert_eq!(
        (code, err),
        (
            1,
            format!(
                "error: cannot read checkpoint file {}: No such file or directory (os error 2)\n",
                missing.display()
            )
        )
    );
    // Without [ca] (no audit-checkpoint.pem) and no --checkpoint-public-key: no key to check
    // the file's signatures with.
    let plain = tempfile::tempdir().unwrap();
    let plain_config = ServerToml::new(url).write(plain.path(), &TestPki::new());
    let (code, _, err) = tessera(
        &[
            "audit",
            "verify",
            "--config",
            plain_config.to_str().unwrap(),
            "--checkpoints",
            file_s,
        ],
        &[],
    );
    assert_eq!(
        (code, err),
        (
            1,
            format!(
                "error: cannot check the signatures of the checkpoints in {file_s}: no checkpoint public key \
                 (give --checkpoint-public-key; audit-checkpoint.pem in the [ca] data directory is used when [audit] names no hsm_config or checkpoint_key)\n"
            )
        )
    );
    // …but with the PEM `ca init` wrote, given explicitly, it verifies.
    let (code, out, err) = tessera(
        &[
            "audit",
            "verify",
            "--config",
            plain_config.to_str().unwrap(),
            "--checkpoints",
            file_s,
            "--checkpoint-public-key",
            s.ca.data_dir.join("audit-checkpoint.pem").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!((code, out, err), intact);

    // The insider's rewrite: event 4 (E3's creation) edited, the person row to match, the chain
    // recomputed from there, and the checkpoint that covered it deleted from the database.
    rewrite_event(&s.store, 4, |e| {
        e.after_json = e.after_json.replace("Person 3", "Mallory")
    })
    .await;
    s.store
        .execute_raw("UPDATE people SET display_name = 'Mallory' WHERE external_id = 'E3'")
        .await
        .unwrap();
    s.store
        .execute_raw("DELETE FROM audit_checkpoints WHERE sequence >= 4")
        .await
        .unwrap();
    // The database alone no longer shows it…
    assert_eq!(
        s.verify(None),
        (
            0,
            "audit chain intact: 5 events, 1 checkpoints (signatures checked)\n\
             state tables explained by the audit log: 5 people, 0 tokens, 0 certificates\n"
                .to_string(),
            String::new()
        )
    );
    // …the checkpoint file does.
    let (code, out, _) = s.verify(Some(&file));
    assert_eq!(
        (code, out.as_str()),
        (
            2,
            "audit chain broken at event 5: the checkpoint file's signed checkpoint names a different hash for this event (chain rewritten after it was signed)\n"
        )
    );
    s.store.close().await;
}

async fn replay_names_rows_the_log_does_not_explain(url: &str) {
    use tessera::ca::{KeyProvenance, OnlineCa, RevocationReason, SubjectParams};
    let s = Setup::new(url).await;
    s.create_people(0..4).await;
    let actor = Actor {
        name: "admin-client".into(),
        role: "admin".into(),
    };
    // A certificate through the recorded path (reserve, HSM signs, record), then revoked.
    let ca = std::sync::Arc::new(OnlineCa::open(s.ca.hsm_config(), &s.ca.data_dir, None).unwrap());
    let person = s.store.person_by_external_id("E0").await.unwrap().unwrap();
    let public_key_der = {
        use p256::pkcs8::EncodePublicKey;
        p256::ecdsa::SigningKey::from_slice(&[5u8; 32])
            .unwrap()
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .into_vec()
    };
    let mut subject = SubjectParams::new("Person 0");
    subject.emails.push("e0@corp.test".into());
    let issued = tessera::lifecycle::issue_certificate(
        &s.store,
        &ca,
        tessera::lifecycle::IssueParams {
            subject,
            public_key_der,
            profile: "tls-client".into(),
            provenance: KeyProvenance::Unattested,
            person_id: Some(person.id),
            token_id: None,
            enrollment: None,
        },
        &actor,
        "issue-1",
    )
    .await
    .unwrap();
    let serial = issued.serial.clone();
    let mut tx = s.store.begin_write().await.unwrap();
    tessera::lifecycle::revoke_certificate(
        &mut tx,
        &actor,
        "revoke-1",
        &serial,
        RevocationReason::KeyCompromise,
    )
    .await
    .unwrap();
    tessera::lifecycle::transition_person(
        &mut tx,
        &actor,
        "suspend-1",
        "E1",
        tessera::lifecycle::PersonTransition::Suspend,
        "",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (code, out, err) = s.verify(None);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "audit chain intact: 8 events, 0 checkpoints (signatures checked)\n\
             state tables explained by the audit log: 4 people, 0 tokens, 1 certificates\n"
        ),
        "{err}"
    );

    // The revoked certificate flipped back to good in the table: the chain still verifies,
    // the replay names the row.
    s.store
        .execute_raw(&format!(
            "UPDATE certificates SET status = 'good', revocation_reason = NULL, revoked_at = NULL WHERE serial = '{serial}'"
        ))
        .await
        .unwrap();
    let (code, out, _) = s.verify(None);
    assert_eq!(
        (code, out),
        (
            2,
            format!(
                "audit chain intact: 8 events, 0 checkpoints (signatures checked)\n\
                 row not explained by the audit log: certificates serial={serial}: status is \"good\", the audit log says \"revoked\"\n\
                 row not explained by the audit log: certificates serial={serial}: revocation_reason is null, the audit log says 1\n"
            )
        )
    );

    // A suspended person set active, a token no event records, a person row deleted.
    s.store
        .execute_raw("UPDATE people SET state = 'active' WHERE external_id = 'E1'")
        .await
        .unwrap();
    let mut tx = s.store.begin_write().await.unwrap();
    tx.insert_token(&tessera::store::NewToken {
        serial: "31337".into(),
        model: "YubiKey 5".into(),
        firmware: "5.7.1".into(),
        form_factor: String::new(),
        state: tessera::store::TokenState::Active,
        person_id: Some(person.id),
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    s.store
        .execute_raw("DELETE FROM people WHERE external_id = 'E3'")
        .await
        .unwrap();
    let (code, out, _) = s.verify(None);
    assert_eq!(
        (code, out),
        (
            2,
            format!(
                "audit chain intact: 8 events, 0 checkpoints (signatures checked)\n\
                 row not explained by the audit log: people external_id=E1: state is \"active\", the audit log says \"suspended\"\n\
                 row not explained by the audit log: people external_id=E3: the audit log records this row but the table does not have it (row deleted)\n\
                 row not explained by the audit log: tokens serial=31337: no audit event records this row\n\
                 row not explained by the audit log: certificates serial={serial}: status is \"good\", the audit log says \"revoked\"\n\
                 row not explained by the audit log: certificates serial={serial}: revocation_reason is null, the audit log says 1\n"
            )
        )
    );
    s.store.close().await;
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

async fn server_signs_checkpoints_by_default_and_serves_them(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::init(&dir.path().join("ca"));
    // `[ca]` and only the interval in `[audit]`: the key and file are the defaults.
    let server = TestServer::builder(url)
        .with_http()
        .with_ca(&ca)
        .configure(|c| {
            c.audit = Some(Audit {
                checkpoint_interval_seconds: Some(1),
                ..Default::default()
            })
        })
        .start()
        .await;
    let http = server.task.http.unwrap();
    let mut d = DirectoryServiceClient::new(server.as_role("hr").await);
    d.create_person(pb::CreatePersonRequest {
        request_id: "c1".into(),
        person: Some(pb::PersonRecord {
            external_id: "E1".into(),
            display_name: "Person 1".into(),
            upn: "e1@corp.test".into(),
            email: "e1@corp.test".into(),
            windows_sid: String::new(),
            attributes: Default::default(),
        }),
    })
    .await
    .unwrap();
    let mut body = String::new();
    for _ in 0..100 {
        let (status, b) = http_get(http, "/audit/checkpoints").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        if !b.is_empty() {
            body = b;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        body.starts_with("{\"sequence\":1,\"event_hash\":\""),
        "{body:?}"
    );
    assert_eq!(
        std::fs::read_to_string(server.dir.path().join("audit-checkpoints.jsonl")).unwrap(),
        body
    );

    let mut a = AuditServiceClient::new(server.as_role("auditor").await);
    let v = a
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            v.intact,
            v.events,
            v.checkpoints,
            v.signatures_checked,
            v.file_checkpoints
        ),
        (true, 1, 1, true, 1),
        "{v:?}"
    );
    // The RPC checks signatures: a checkpoint signed by another key is named.
    let store = Store::open(url).await.unwrap();
    let other = {
        use signature::Signer;
        let k = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let sig: p256::ecdsa::Signature = k.sign(b"not the checkpoint");
        sig.to_der().as_bytes().to_vec()
    };
    store
        .execute_raw(&format!(
            "UPDATE audit_checkpoints SET signature = {} WHERE sequence = 1",
            blob(&store, &other)
        ))
        .await
        .unwrap();
    let v = a
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.intact, v.first_bad_sequence, v.problem.as_str()),
        (false, 1, "checkpoint signature does not verify")
    );
    server.stop().await;
    store.close().await;

    // No HSM (no [ca]): nothing is signed and the endpoint says why; `checkpoints = false`
    // likewise, even with a CA.
    let bare = TestServer::builder(url).with_http().start().await;
    let (status, body) = http_get(bare.task.http.unwrap(), "/audit/checkpoints").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        (
            "HTTP/1.1 404 Not Found",
            "this server signs no audit checkpoints (no HSM configured, or [audit] checkpoints = false)\n"
        )
    );
    bare.stop().await;
    let off = TestServer::builder(url)
        .with_http()
        .with_ca(&ca)
        .configure(|c| {
            c.audit = Some(Audit {
                checkpoints: Some(false),
                ..Default::default()
            })
        })
        .start()
        .await;
    let (status, _) = http_get(off.task.http.unwrap(), "/audit/checkpoints").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let off_dir = off.dir.path().to_path_buf();
    off.stop().await;
    assert!(!off_dir.join("audit-checkpoints.jsonl").exists());
}

/// Start-up errors of the checkpoint configuration name what to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_configuration_errors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let bind_error = |config: ServerToml| {
        let path = config.write(dir.path(), &TestPki::new());
        async move {
            let config = tessera::server::ServerConfig::load(&path).unwrap();
            match tessera::server::BoundServer::bind(&config).await {
                Ok(_) => panic!("the server started"),
                Err(e) => e.to_string(),
            }
        }
    };
    let url = format!("sqlite:{}", dir.path().join("t.db").display());
    // A key named, but no HSM to find it in.
    assert_eq!(
        bind_error(ServerToml::new(&url).with_audit(Audit {
            checkpoint_key: Some(CHECKPOINT_KEY.into()),
            ..Default::default()
        }))
        .await,
        "audit.checkpoint_key needs an HSM: set audit.hsm_config, or add a [ca] section (its HSM is used)"
    );
    // A checkpoint file that cannot be opened for appending.
    let ca = TestCa::init(&dir.path().join("ca"));
    assert_eq!(
        bind_error(
            ServerToml::new(&url)
                .with_ca(ca.hsm_config(), &ca.data_dir)
                .with_audit(Audit {
                    checkpoint_file: Some("no-such-dir/checkpoints.jsonl".into()),
                    ..Default::default()
                })
        )
        .await,
        format!(
            "audit checkpoint file: cannot append to checkpoint file {}: No such file or directory (os error 2)",
            dir.path().join("no-such-dir/checkpoints.jsonl").display()
        )
    );
}
