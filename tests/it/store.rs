//! The store, the audit chain and the lifecycle rules on SQLite and on PostgreSQL.

use std::collections::BTreeMap;
use tessera::audit::{self, Actor, BadEvent, EcdsaP256Verifier, Problem};
use tessera::hsm::{HsmError, SignatureScheme, Signer};
use tessera::lifecycle::{
    self, LifecycleError, PersonInput, PersonTransition, RequestKey, TokenTransition,
};
use tessera::store::{
    NewToken, PeopleQuery, PersonState, Store, StoreError, TokenState, TokensQuery,
};

on_both_databases!(
    migrations_run_twice_and_foreign_keys_hold,
    people_round_trip_and_paging,
    duplicate_person_is_refused,
    person_transitions_are_audited,
    invalid_transition_changes_nothing,
    sync_creates_updates_and_offboards_missing,
    stale_sync_generation_is_refused,
    token_transitions,
    idempotency_replays_and_refuses_reuse,
    intact_chain_verifies,
    edited_row_is_named,
    deleted_row_is_named,
    reordered_rows_are_named,
    deleted_tail_is_caught_by_checkpoint,
    checkpoint_signs_outside_any_write,
    forged_checkpoint_signature_is_named,
    concurrent_writers_keep_the_chain_intact,
    certificate_serial_is_reserved_once,
    transitions_hold_release_and_revoke_certificates,
    times_written_before_migration_0004_are_carried_over,
    bad_stored_values_are_named,
    stamps_come_from_the_stores_clock,
);

fn hr() -> Actor {
    Actor {
        name: "hr-sync".into(),
        role: "hr".into(),
    }
}

fn person(id: &str) -> PersonInput {
    PersonInput {
        external_id: id.into(),
        display_name: format!("Person {id}"),
        upn: format!("{id}@corp.test"),
        email: format!("{id}@corp.test"),
        windows_sid: String::new(),
        attributes: BTreeMap::from([("department".to_string(), "R&D".to_string())]),
    }
}

async fn create(store: &Store, id: &str) {
    let mut tx = store.begin_write().await.unwrap();
    lifecycle::create_person(&mut tx, &hr(), &format!("create-{id}"), person(id))
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn migrations_run_twice_and_foreign_keys_hold(url: &str) {
    let store = Store::open(url).await.unwrap();
    store.close().await;
    let store = Store::open(url).await.unwrap();
    if store.backend() == tessera::store::Backend::Sqlite {
        use sqlx::{Connection, Row};
        let mut conn = sqlx::sqlite::SqliteConnection::connect(url).await.unwrap();
        let mode: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(mode, "wal");
    }
    let mut tx = store.begin_write().await.unwrap();
    let err = tx
        .insert_token(&NewToken {
            serial: "1".into(),
            model: "YubiKey 5".into(),
            firmware: "5.7.1".into(),
            form_factor: "usb_c_keychain".into(),
            state: TokenState::Active,
            person_id: Some(4242),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
}

async fn people_round_trip_and_paging(url: &str) {
    let store = Store::open(url).await.unwrap();
    for i in 0..5 {
        create(&store, &format!("E{i}")).await;
    }
    let p = store.person_by_external_id("E3").await.unwrap().unwrap();
    assert_eq!(p.upn, "E3@corp.test");
    assert_eq!(p.state, PersonState::Active);
    assert_eq!(p.attributes_json, r#"{"department":"R&D"}"#);
    assert!(
        store
            .person_by_external_id("nobody")
            .await
            .unwrap()
            .is_none()
    );
    let page1 = store
        .list_people(&PeopleQuery {
            after_id: 0,
            limit: 2,
            state: None,
        })
        .await
        .unwrap();
    let page2 = store
        .list_people(&PeopleQuery {
            after_id: page1[1].id,
            limit: 2,
            state: None,
        })
        .await
        .unwrap();
    let page3 = store
        .list_people(&PeopleQuery {
            after_id: page2[1].id,
            limit: 2,
            state: None,
        })
        .await
        .unwrap();
    let ids: Vec<_> = page1
        .iter()
        .chain(&page2)
        .chain(&page3)
        .map(|p| p.external_id.clone())
        .collect();
    assert_eq!(ids, ["E0", "E1", "E2", "E3", "E4"]);
    let suspended = store
        .list_people(&PeopleQuery {
            after_id: 0,
            limit: 10,
            state: Some(PersonState::Suspended),
        })
        .await
        .unwrap();
    assert!(suspended.is_empty());
}

async fn duplicate_person_is_refused(url: &str) {
    let store = Store::open(url).await.unwrap();
    create(&store, "E1").await;
    let mut tx = store.begin_write().await.unwrap();
    let err = lifecycle::create_person(&mut tx, &hr(), "again", person("E1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LifecycleError::PersonExists(id) if id == "E1"),
        "{err:?}"
    );
    assert_eq!(err.reason(), "PERSON_EXISTS");
}

async fn person_transitions_are_audited(url: &str) {
    let store = Store::open(url).await.unwrap();
    create(&store, "E1").await;
    for (i, t) in [
        PersonTransition::Suspend,
        PersonTransition::Reinstate,
        PersonTransition::Offboard,
    ]
    .into_iter()
    .enumerate()
    {
        let mut tx = store.begin_write().await.unwrap();
        lifecycle::transition_person(&mut tx, &hr(), &format!("t{i}"), "E1", t, "HR ticket 7")
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let p = store.person_by_external_id("E1").await.unwrap().unwrap();
    assert_eq!(p.state, PersonState::Offboarded);
    let events = store.audit_events(0, 100).await.unwrap();
    let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "person.create",
            "person.suspend",
            "person.reinstate",
            "person.offboard"
        ]
    );
    assert_eq!(events[1].actor, "hr-sync");
    assert_eq!(events[1].role, "hr");
    assert_eq!(events[1].request_id, "t0");
    assert!(
        events[1].before_json.contains(r#""state":"active""#),
        "{}",
        events[1].before_json
    );
    assert!(
        events[1].after_json.contains(r#""state":"suspended""#),
        "{}",
        events[1].after_json
    );
    assert!(events[1].after_json.contains("HR ticket 7"));
    let report = audit::verify(&store, None).await.unwrap();
    assert_eq!((report.events, report.first_bad), (4, None));
}

async fn invalid_transition_changes_nothing(url: &str) {
    let store = Store::open(url).await.unwrap();
    create(&store, "E1").await;
    let mut tx = store.begin_write().await.unwrap();
    let err =
        lifecycle::transition_person(&mut tx, &hr(), "r", "E1", PersonTransition::Reinstate, "")
            .await
            .unwrap_err();
    assert_eq!(err.to_string(), "cannot reinstate a person that is active");
    assert_eq!(err.reason(), "INVALID_STATE_TRANSITION");
    drop(tx);
    let mut tx = store.begin_write().await.unwrap();
    let err =
        lifecycle::transition_person(&mut tx, &hr(), "r", "E9", PersonTransition::Suspend, "")
            .await
            .unwrap_err();
    assert_eq!(err.reason(), "PERSON_NOT_FOUND");
    drop(tx);
    assert_eq!(store.audit_events(0, 100).await.unwrap().len(), 1);
}

async fn sync_creates_updates_and_offboards_missing(url: &str) {
    let store = Store::open(url).await.unwrap();
    create(&store, "E1").await;
    create(&store, "E2").await;
    create(&store, "E3").await;
    let mut changed = person("E2");
    changed.display_name = "Renamed".into();
    let mut tx = store.begin_write().await.unwrap();
    let out = lifecycle::sync_people(
        &mut tx,
        &hr(),
        "s1",
        10,
        vec![person("E1"), changed, person("E4")],
        false,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(out.created, ["E4"]);
    assert_eq!(out.updated, ["E2"]);
    assert_eq!(out.unchanged, ["E1"]);
    assert!(out.offboarded.is_empty());
    assert_eq!(
        store
            .person_by_external_id("E3")
            .await
            .unwrap()
            .unwrap()
            .state,
        PersonState::Active
    );

    let mut tx = store.begin_write().await.unwrap();
    let out = lifecycle::sync_people(&mut tx, &hr(), "s2", 11, vec![person("E1")], true)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(out.offboarded, ["E2", "E3", "E4"]);
    assert_eq!(
        store
            .person_by_external_id("E3")
            .await
            .unwrap()
            .unwrap()
            .state,
        PersonState::Offboarded
    );
    assert_eq!(
        store
            .person_by_external_id("E1")
            .await
            .unwrap()
            .unwrap()
            .sync_generation,
        11
    );
    let report = audit::verify(&store, None).await.unwrap();
    assert_eq!(report.first_bad, None);
}

async fn stale_sync_generation_is_refused(url: &str) {
    let store = Store::open(url).await.unwrap();
    let mut tx = store.begin_write().await.unwrap();
    lifecycle::sync_people(&mut tx, &hr(), "s1", 5, vec![person("E1")], false)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin_write().await.unwrap();
    let err = lifecycle::sync_people(&mut tx, &hr(), "s2", 5, vec![], true)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "sync generation 5 is not greater than the last one, 5"
    );
    assert_eq!(
        (err.reason(), err.field()),
        ("STALE_SYNC_GENERATION", Some("generation"))
    );
    let err = lifecycle::sync_people(
        &mut tx,
        &hr(),
        "s3",
        6,
        vec![person("E2"), person("E2")],
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(
        (err.reason(), err.field()),
        (
            "DUPLICATE_EXTERNAL_ID",
            Some("people[1].person.external_id")
        )
    );
}

async fn token_transitions(url: &str) {
    let store = Store::open(url).await.unwrap();
    create(&store, "E1").await;
    let owner = store.person_by_external_id("E1").await.unwrap().unwrap();
    let mut tx = store.begin_write().await.unwrap();
    tx.insert_token(&NewToken {
        serial: "31415926".into(),
        model: "YubiKey 5C".into(),
        firmware: "5.7.1".into(),
        form_factor: "usb_c_keychain".into(),
        state: TokenState::Active,
        person_id: Some(owner.id),
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let t = store.token_by_serial("31415926").await.unwrap().unwrap();
    assert_eq!(t.person_external_id.as_deref(), Some("E1"));
    let listed = store
        .list_tokens(&TokensQuery {
            after_id: 0,
            limit: 10,
            person_id: Some(owner.id),
            state: None,
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    let none = store
        .list_tokens(&TokensQuery {
            after_id: 0,
            limit: 10,
            person_id: None,
            state: Some(TokenState::Lost),
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let helpdesk = Actor {
        name: "desk-1".into(),
        role: "helpdesk".into(),
    };
    let mut tx = store.begin_write().await.unwrap();
    let t = lifecycle::transition_token(
        &mut tx,
        &helpdesk,
        "k1",
        "31415926",
        TokenTransition::MarkLost,
        "left on train",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(t.state, TokenState::Lost);
    let mut tx = store.begin_write().await.unwrap();
    let err = lifecycle::transition_token(
        &mut tx,
        &helpdesk,
        "k2",
        "31415926",
        TokenTransition::Reinstate,
        "",
    )
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), "cannot reinstate a token that is lost");
    let err =
        lifecycle::transition_token(&mut tx, &helpdesk, "k3", "999", TokenTransition::Retire, "")
            .await
            .unwrap_err();
    assert_eq!(err.reason(), "TOKEN_NOT_FOUND");
}

async fn idempotency_replays_and_refuses_reuse(url: &str) {
    let store = Store::open(url).await.unwrap();
    let key = RequestKey::new("req-1", "SuspendPerson", b"request bytes", "caller-a").unwrap();
    let mut tx = store.begin_write().await.unwrap();
    assert_eq!(lifecycle::replay(&mut tx, &key).await.unwrap(), None);
    lifecycle::remember(&mut tx, &key, b"first answer".to_vec())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin_write().await.unwrap();
    assert_eq!(
        lifecycle::replay(&mut tx, &key).await.unwrap().as_deref(),
        Some(&b"first answer"[..])
    );
    let other = RequestKey::new("req-1", "SuspendPerson", b"other bytes", "caller-a").unwrap();
    let err = lifecycle::replay(&mut tx, &other).await.unwrap_err();
    assert_eq!(
        (err.reason(), err.field()),
        ("REQUEST_ID_REUSED", Some("request_id"))
    );
    let other_op =
        RequestKey::new("req-1", "OffboardPerson", b"request bytes", "caller-a").unwrap();
    assert_eq!(
        lifecycle::replay(&mut tx, &other_op)
            .await
            .unwrap_err()
            .reason(),
        "REQUEST_ID_REUSED"
    );
    // The same request from another client certificate: refused, whatever its content.
    for bytes in [&b"request bytes"[..], b"other bytes"] {
        let from_b = RequestKey::new("req-1", "SuspendPerson", bytes, "caller-b").unwrap();
        let err = lifecycle::replay(&mut tx, &from_b).await.unwrap_err();
        assert_eq!(
            (err.reason(), err.field()),
            ("REQUEST_ID_OF_ANOTHER_CALLER", Some("request_id"))
        );
        assert_eq!(
            err.to_string(),
            "request id \"req-1\" was already used by another client certificate; use a fresh request id"
        );
    }
    let row = tx.idempotency_record("req-1").await.unwrap().unwrap();
    assert_eq!(
        (row.caller.as_deref(), row.released_generation),
        (Some("caller-a"), None)
    );
    let err = RequestKey::new("", "SuspendPerson", b"", "caller-a").unwrap_err();
    assert_eq!(
        (err.reason(), err.field()),
        ("REQUEST_ID_MISSING", Some("request_id"))
    );
}

/// Five events: person E0..E4 created.
async fn five_events(url: &str) -> Store {
    let store = Store::open(url).await.unwrap();
    for i in 0..5 {
        create(&store, &format!("E{i}")).await;
    }
    store
}

async fn intact_chain_verifies(url: &str) {
    let store = five_events(url).await;
    let report = audit::verify(&store, None).await.unwrap();
    assert_eq!(
        (report.events, report.checkpoints, report.first_bad),
        (5, 0, None)
    );
    let events = store.audit_events(0, 10).await.unwrap();
    assert_eq!(events[0].prev_hash, audit::GENESIS_HASH.to_vec());
    for w in events.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
}

async fn edited_row_is_named(url: &str) {
    let store = five_events(url).await;
    store
        .execute_raw("UPDATE audit_events SET actor = 'mallory' WHERE sequence = 3")
        .await
        .unwrap();
    let report = audit::verify(&store, None).await.unwrap();
    assert_eq!(
        report.first_bad,
        Some(BadEvent {
            sequence: 3,
            problem: Problem::HashMismatch
        })
    );
}

async fn deleted_row_is_named(url: &str) {
    let store = five_events(url).await;
    store
        .execute_raw("DELETE FROM audit_events WHERE sequence = 2")
        .await
        .unwrap();
    let report = audit::verify(&store, None).await.unwrap();
    assert_eq!(
        report.first_bad,
        Some(BadEvent {
            sequence: 2,
            problem: Problem::Missing { expected: 2 }
        })
    );
}

async fn reordered_rows_are_named(url: &str) {
    let store = five_events(url).await;
    // Swap events 2 and 4 by renumbering them.
    store
        .execute_raw("UPDATE audit_events SET sequence = 100 WHERE sequence = 2")
        .await
        .unwrap();
    store
        .execute_raw("UPDATE audit_events SET sequence = 2 WHERE sequence = 4")
        .await
        .unwrap();
    store
        .execute_raw("UPDATE audit_events SET sequence = 4 WHERE sequence = 100")
        .await
        .unwrap();
    let report = audit::verify(&store, None).await.unwrap();
    assert_eq!(
        report.first_bad,
        Some(BadEvent {
            sequence: 2,
            problem: Problem::HashMismatch
        })
    );
}

/// A software P-256 key behind the same signing seam as the HSM's keys.
struct SoftwareSigner {
    key: p256::ecdsa::SigningKey,
    public_key_der: Vec<u8>,
}

impl Signer for SoftwareSigner {
    fn key_id(&self) -> String {
        "test-checkpoint-key".into()
    }
    fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }
    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::EcdsaSha256
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let sig: p256::ecdsa::Signature = signature::Signer::sign(&self.key, message);
        Ok(sig.to_bytes().to_vec())
    }
}

fn software_signer() -> (SoftwareSigner, EcdsaP256Verifier) {
    let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let verifier = EcdsaP256Verifier {
        key_id: Some("test-checkpoint-key".into()),
        key: *key.verifying_key(),
    };
    let public_key_der = {
        use p256::pkcs8::EncodePublicKey;
        key.verifying_key().to_public_key_der().unwrap().into_vec()
    };
    (
        SoftwareSigner {
            key,
            public_key_der,
        },
        verifier,
    )
}

async fn deleted_tail_is_caught_by_checkpoint(url: &str) {
    let store = five_events(url).await;
    let (signer, verifier) = software_signer();
    let c = audit::checkpoint(&store, &signer).await.unwrap().unwrap();
    assert_eq!(c.sequence, 5);
    assert!(
        audit::checkpoint(&store, &signer).await.unwrap().is_none(),
        "head already covered"
    );
    let report = audit::verify(&store, Some(&verifier)).await.unwrap();
    assert_eq!(
        (report.events, report.checkpoints, report.first_bad),
        (5, 1, None)
    );
    store
        .execute_raw("DELETE FROM audit_events WHERE sequence >= 4")
        .await
        .unwrap();
    let report = audit::verify(&store, Some(&verifier)).await.unwrap();
    assert_eq!(
        report.first_bad,
        Some(BadEvent {
            sequence: 4,
            problem: Problem::MissingAfterCheckpoint
        })
    );
}

/// The checkpoint key signs while no write is open: a signer that writes to the store while it
/// signs (as another request would while a slow HSM works) does not wait for the checkpoint. The
/// checkpoint then signs the head it read before, which stays covered; the next one covers the
/// event written meanwhile.
async fn checkpoint_signs_outside_any_write(url: &str) {
    struct WritingSigner {
        inner: SoftwareSigner,
        store: Store,
    }
    impl Signer for WritingSigner {
        fn key_id(&self) -> String {
            self.inner.key_id()
        }
        fn public_key_der(&self) -> &[u8] {
            self.inner.public_key_der()
        }
        fn scheme(&self) -> SignatureScheme {
            self.inner.scheme()
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
            let store = self.store.clone();
            let wrote = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async {
                        tokio::time::timeout(
                            std::time::Duration::from_secs(20),
                            create(&store, "written-while-signing"),
                        )
                        .await
                        .is_ok()
                    })
            })
            .join()
            .unwrap();
            assert!(wrote, "a write waited for the checkpoint's HSM call");
            self.inner.sign(message)
        }
    }
    let store = five_events(url).await;
    let (inner, verifier) = software_signer();
    let signer = WritingSigner {
        inner,
        store: store.clone(),
    };
    let c = audit::checkpoint(&store, &signer).await.unwrap().unwrap();
    assert_eq!(c.sequence, 5);
    assert_eq!(store.audit_head_sequence().await.unwrap(), 6);
    let (plain, _) = software_signer();
    let next = audit::checkpoint(&store, &plain).await.unwrap().unwrap();
    assert_eq!(next.sequence, 6);
    let report = audit::verify(&store, Some(&verifier)).await.unwrap();
    assert_eq!(
        (report.events, report.checkpoints, report.first_bad),
        (6, 2, None)
    );
}

async fn forged_checkpoint_signature_is_named(url: &str) {
    let store = five_events(url).await;
    let (signer, verifier) = software_signer();
    audit::checkpoint(&store, &signer).await.unwrap().unwrap();
    let other = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
    let forged = {
        use signature::Signer;
        let sig: p256::ecdsa::Signature = other.sign(&audit::checkpoint_message(5, &[0; 32]));
        hex::encode(sig.to_bytes())
    };
    let blob = match store.backend() {
        tessera::store::Backend::Sqlite => format!("X'{forged}'"),
        tessera::store::Backend::Postgres => format!("'\\x{forged}'::bytea"),
    };
    store
        .execute_raw(&format!(
            "UPDATE audit_checkpoints SET signature = {blob} WHERE sequence = 5"
        ))
        .await
        .unwrap();
    let report = audit::verify(&store, Some(&verifier)).await.unwrap();
    assert_eq!(
        report.first_bad,
        Some(BadEvent {
            sequence: 5,
            problem: Problem::BadCheckpointSignature
        })
    );
}

async fn concurrent_writers_keep_the_chain_intact(url: &str) {
    let store = Store::open(url).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                create(&store, &format!("W{w}-{i}")).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = audit::verify(&store, None).await.unwrap();
    assert_eq!((report.events, report.first_bad), (40, None));
}

#[tokio::test]
async fn unsupported_database_url_is_named() {
    let err = Store::open("mysql://127.0.0.1/tessera")
        .await
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "database URL \"mysql://127.0.0.1/tessera\" is not supported: use sqlite:PATH or postgres://…"
    );
    let err = Store::open("postgres://tessera:hunter2@127.0.0.1:1/none")
        .await
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.starts_with("cannot open database postgres://tessera:[redacted]@127.0.0.1:1/none: "),
        "{text}"
    );
    assert!(!text.contains("hunter2"));
}

/// A new SQLite database, and the `-wal` and `-shm` files SQLite makes next to it, are readable
/// and writable by their owner only, whatever the umask (0022 would give 0644).
#[tokio::test]
async fn new_sqlite_database_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    let store = Store::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    create(&store, "E1").await;
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file} has mode {mode:o}");
    }
    store.close().await;
}

async fn certificate_serial_is_reserved_once(url: &str) {
    use tessera::store::{CertificateStatus, NewCertificate};
    let store = Store::open(url).await.unwrap();
    let new = NewCertificate {
        serial: "7f01".into(),
        person_id: None,
        token_id: None,
        profile: "tls-client".into(),
        tbs: b"to be signed".to_vec(),
        not_before: "2026-01-01T00:00:00Z".parse().unwrap(),
        not_after: "2027-01-01T00:00:00Z".parse().unwrap(),
    };
    let mut tx = store.begin_write().await.unwrap();
    let row = tx.reserve_certificate(&new).await.unwrap();
    assert_eq!(
        (row.status, row.der.clone(), row.sha256.clone()),
        (CertificateStatus::Reserved, None, None)
    );
    tx.commit().await.unwrap();
    let mut tx = store.begin_write().await.unwrap();
    let err = tx.reserve_certificate(&new).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "a certificate serial with key \"7f01\" already exists"
    );
    drop(tx);
    let mut tx = store.begin_write().await.unwrap();
    let row = tx
        .record_issued_certificate("7f01", b"DER", "ab12")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        (row.status, row.der.as_deref()),
        (CertificateStatus::Good, Some(&b"DER"[..]))
    );
    assert_eq!(
        store
            .certificate_by_sha256("ab12")
            .await
            .unwrap()
            .unwrap()
            .tbs,
        b"to be signed"
    );
    assert!(store.certificate_by_serial("7f02").await.unwrap().is_none());
}

async fn transitions_hold_release_and_revoke_certificates(url: &str) {
    use tessera::store::{CertificateStatus as S, NewCertificate};
    let store = Store::open(url).await.unwrap();
    create(&store, "E1").await;
    let owner = store.person_by_external_id("E1").await.unwrap().unwrap();
    let mut tx = store.begin_write().await.unwrap();
    let mut token_ids = Vec::new();
    for serial in ["T1", "T2"] {
        let t = tx
            .insert_token(&NewToken {
                serial: serial.into(),
                model: "YubiKey 5".into(),
                firmware: "5.7.1".into(),
                form_factor: "usb_a_keychain".into(),
                state: TokenState::Active,
                person_id: Some(owner.id),
            })
            .await
            .unwrap();
        token_ids.push(t.id);
    }
    for (serial, token, signed) in [
        ("c1", Some(token_ids[0]), true),
        ("c2", Some(token_ids[1]), true),
        ("c3", None, false),
    ] {
        tx.reserve_certificate(&NewCertificate {
            serial: serial.into(),
            person_id: Some(owner.id),
            token_id: token,
            profile: "tls-client".into(),
            tbs: vec![1],
            not_before: "2026-01-01T00:00:00Z".parse().unwrap(),
            not_after: "2027-01-01T00:00:00Z".parse().unwrap(),
        })
        .await
        .unwrap();
        if signed {
            tx.record_issued_certificate(serial, b"der", &format!("sha-{serial}"))
                .await
                .unwrap();
        }
    }
    tx.commit().await.unwrap();
    let status = |serial: &'static str| {
        let store = store.clone();
        async move {
            let c = store.certificate_by_serial(serial).await.unwrap().unwrap();
            (c.status, c.revocation_reason)
        }
    };
    let person = |t: PersonTransition, rid: &'static str| {
        let store = store.clone();
        async move {
            let mut tx = store.begin_write().await.unwrap();
            lifecycle::transition_person(&mut tx, &hr(), rid, "E1", t, "")
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    };
    let token = |serial: &'static str, t: TokenTransition, rid: &'static str| {
        let store = store.clone();
        async move {
            let desk = Actor {
                name: "desk".into(),
                role: "helpdesk".into(),
            };
            let mut tx = store.begin_write().await.unwrap();
            lifecycle::transition_token(&mut tx, &desk, rid, serial, t, "")
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    };

    person(PersonTransition::Suspend, "p1").await;
    assert_eq!(status("c1").await, (S::OnHold, Some(6)));
    assert_eq!(status("c2").await, (S::OnHold, Some(6)));
    assert_eq!(status("c3").await, (S::Reserved, None));
    person(PersonTransition::Reinstate, "p2").await;
    assert_eq!(status("c1").await, (S::Good, None));
    token("T1", TokenTransition::MarkLost, "t1").await;
    assert_eq!(status("c1").await, (S::Revoked, Some(1)));
    assert_eq!(status("c2").await, (S::Good, None));
    token("T2", TokenTransition::Suspend, "t2").await;
    assert_eq!(status("c2").await, (S::OnHold, Some(6)));
    token("T2", TokenTransition::Reinstate, "t3").await;
    assert_eq!(status("c2").await, (S::Good, None));
    token("T2", TokenTransition::MarkDamaged, "t4").await;
    assert_eq!(status("c2").await, (S::Revoked, Some(4)));

    // A fresh certificate, then offboarding: revoked (affiliationChanged), tokens released.
    let mut tx = store.begin_write().await.unwrap();
    tx.reserve_certificate(&NewCertificate {
        serial: "c4".into(),
        person_id: Some(owner.id),
        token_id: None,
        profile: "tls-client".into(),
        tbs: vec![1],
        not_before: "2026-01-01T00:00:00Z".parse().unwrap(),
        not_after: "2027-01-01T00:00:00Z".parse().unwrap(),
    })
    .await
    .unwrap();
    tx.record_issued_certificate("c4", b"der", "sha-c4")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    person(PersonTransition::Offboard, "p3").await;
    assert_eq!(status("c4").await, (S::Revoked, Some(3)));
    assert_eq!(
        status("c1").await,
        (S::Revoked, Some(1)),
        "revoked stays revoked with its first reason"
    );
    assert_eq!(
        store
            .token_by_serial("T1")
            .await
            .unwrap()
            .unwrap()
            .person_id,
        None
    );

    let events = store.audit_events(0, 100).await.unwrap();
    let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "person.create",
            "person.suspend",
            "certificate.hold",
            "certificate.hold",
            "person.reinstate",
            "certificate.release",
            "certificate.release",
            "token.mark_lost",
            "certificate.revoke",
            "token.suspend",
            "certificate.hold",
            "token.reinstate",
            "certificate.release",
            "token.mark_damaged",
            "certificate.revoke",
            "person.offboard",
            "certificate.revoke",
            "token.unassign",
            "token.unassign",
        ]
    );
    // Offboarding released both tokens, each with its own event naming the former holder.
    let unassigned: Vec<_> = events[events.len() - 2..]
        .iter()
        .map(|e| {
            let before: serde_json::Value = serde_json::from_str(&e.before_json).unwrap();
            let after: serde_json::Value = serde_json::from_str(&e.after_json).unwrap();
            (
                e.subject.as_str(),
                e.actor.as_str(),
                e.request_id.as_str(),
                before["person_external_id"].clone(),
                after["person_external_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        unassigned,
        [
            (
                "token:T1",
                "hr-sync",
                "p3",
                "E1".into(),
                serde_json::Value::Null
            ),
            (
                "token:T2",
                "hr-sync",
                "p3",
                "E1".into(),
                serde_json::Value::Null
            ),
        ]
    );
    assert_eq!(audit::verify(&store, None).await.unwrap().first_bad, None);
}

/// A database as migrations 0001–0003 left it, with times in the format written before
/// 0004 (a variable-length fraction of a second), and an audit chain hashed over such times:
/// opening it migrates every time but the hashed ones to whole seconds, and the chain still
/// verifies.
async fn times_written_before_migration_0004_are_carried_over(url: &str) {
    use sqlx::Executor;
    use tessera::store::{AuditRow, Timestamp};
    let pool = crate::harness::database::migrated_before(url, "0004").await;
    pool.execute(
        "INSERT INTO people (external_id, display_name, upn, email, attributes_json, state, created_at, updated_at) \
         VALUES ('E1', 'P', 'p@corp.test', 'p@corp.test', '{}', 'active', '2026-01-02T03:04:05.123456789Z', '2026-01-02T03:04:06.5Z')",
    )
    .await
    .unwrap();
    pool.execute(
        "INSERT INTO tokens (serial, model, firmware, form_factor, state, created_at, updated_at) \
         VALUES ('100', 'YubiKey 5', '5.7.1', 'usb_a_keychain', 'active', '2026-01-02T03:04:05.9Z', '2026-01-02T03:04:05Z')",
    )
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO certificates (serial, profile, status, tbs, not_before, not_after, revocation_reason, revoked_at, created_at, updated_at) \
         VALUES ('0a', 'tls-client', 'revoked', $1, '2026-01-01T00:00:00Z', '2027-01-01T00:00:00Z', 1, '2026-01-02T03:04:07.000001Z', '2026-01-02T03:04:05.1Z', '2026-01-02T03:04:07.000001Z')",
    )
    .bind(b"tbs".to_vec())
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO idempotency (request_id, operation, request_hash, response, created_at) \
         VALUES ('r1', 'op', $1, $2, '2026-01-02T03:04:05.25Z')",
    )
    .bind(vec![1u8])
    .bind(vec![2u8])
    .execute(&pool)
    .await
    .unwrap();
    pool.execute(
        "UPDATE crl_state SET this_update = '2026-01-02T03:00:00Z', next_update = '2026-01-03T03:00:00Z' WHERE id = 1",
    )
    .await
    .unwrap();
    let mut events = Vec::new();
    let mut prev_hash = audit::GENESIS_HASH.to_vec();
    for (sequence, at) in [
        (1, "2026-01-02T03:04:05.123456789Z"),
        (2, "2026-01-02T03:04:07.000001Z"),
    ] {
        let mut e = AuditRow {
            sequence,
            at: at.into(),
            actor: "hr-sync".into(),
            role: "hr".into(),
            action: "certificate.revoke".into(),
            subject: "certificate:0a".into(),
            before_json: String::new(),
            after_json: format!("{{\"revoked_at\":\"{at}\"}}"),
            request_id: format!("r{sequence}"),
            prev_hash: prev_hash.clone(),
            hash: Vec::new(),
        };
        e.hash = audit::event_hash(&e).to_vec();
        prev_hash = e.hash.clone();
        sqlx::query(
            "INSERT INTO audit_events (sequence, at, actor, role, action, subject, before_json, after_json, request_id, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(e.sequence)
        .bind(e.at.clone())
        .bind(e.actor.clone())
        .bind(e.role.clone())
        .bind(e.action.clone())
        .bind(e.subject.clone())
        .bind(e.before_json.clone())
        .bind(e.after_json.clone())
        .bind(e.request_id.clone())
        .bind(e.prev_hash.clone())
        .bind(e.hash.clone())
        .execute(&pool)
        .await
        .unwrap();
        events.push(e);
    }
    sqlx::query(
        "INSERT INTO audit_checkpoints (sequence, head_hash, key_id, signature, at) VALUES (2, $1, 'k', $2, '2026-01-02T03:05:00.75Z')",
    )
    .bind(prev_hash.clone())
    .bind(vec![0u8; 64])
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = Store::open(url).await.unwrap();
    let at = |text: &str| text.parse::<Timestamp>().unwrap();
    let person = store.person_by_external_id("E1").await.unwrap().unwrap();
    assert_eq!(
        (person.created_at, person.updated_at),
        (at("2026-01-02T03:04:05Z"), at("2026-01-02T03:04:06Z"))
    );
    let token = store.token_by_serial("100").await.unwrap().unwrap();
    assert_eq!(token.created_at, at("2026-01-02T03:04:05Z"));
    let cert = store.certificate_by_serial("0a").await.unwrap().unwrap();
    assert_eq!(
        (
            cert.not_before,
            cert.not_after,
            cert.revoked_at,
            cert.created_at
        ),
        (
            at("2026-01-01T00:00:00Z"),
            at("2027-01-01T00:00:00Z"),
            Some(at("2026-01-02T03:04:07Z")),
            at("2026-01-02T03:04:05Z")
        )
    );
    let crl = store.crl_state().await.unwrap();
    assert_eq!(crl.this_update, Some(at("2026-01-02T03:00:00Z")));
    // The idempotency row survives migration 0007 too, as one that names no caller.
    let row = store.idempotency_record("r1").await.unwrap().unwrap();
    assert_eq!(
        (
            row.created_at,
            row.operation.as_str(),
            row.request_hash,
            row.response,
            row.caller,
            row.released_generation
        ),
        (
            at("2026-01-02T03:04:05Z"),
            "op",
            vec![1u8],
            vec![2u8],
            None,
            None
        )
    );
    assert_eq!(
        store.audit_checkpoints().await.unwrap()[0].at,
        at("2026-01-02T03:05:00Z")
    );
    // The text itself was rewritten (SQL compares it), not only read leniently.
    for (table, column) in [
        ("people", "created_at"),
        ("people", "updated_at"),
        ("tokens", "created_at"),
        ("certificates", "revoked_at"),
        ("certificates", "created_at"),
        ("certificates", "updated_at"),
        ("idempotency", "created_at"),
        ("audit_checkpoints", "at"),
    ] {
        let moved = store
            .execute_raw(&format!(
                "UPDATE {table} SET {column} = {column} WHERE length({column}) = 20 AND {column} LIKE '%Z'"
            ))
            .await
            .unwrap();
        assert_eq!(moved, 1, "{table}.{column} is not in the one format");
    }
    // The audit events keep the text they were hashed with, and the chain verifies.
    assert_eq!(store.audit_events(0, 10).await.unwrap(), events);
    let report = audit::verify(&store, None).await.unwrap();
    assert_eq!(
        (report.events, report.checkpoints, report.first_bad),
        (2, 1, None)
    );
    // New events chain on after the old ones.
    create(&store, "E2").await;
    let report = audit::verify(&store, None).await.unwrap();
    assert_eq!((report.events, report.first_bad), (3, None));
    store.close().await;
}

async fn bad_stored_values_are_named(url: &str) {
    let store = Store::open(url).await.unwrap();
    create(&store, "E1").await;
    store
        .execute_raw("UPDATE crl_state SET this_update = 'yesterday' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        store.crl_state().await.unwrap_err().to_string(),
        "stored time \"yesterday\" is not RFC 3339"
    );
    store
        .execute_raw("UPDATE people SET state = 'gone' WHERE external_id = 'E1'")
        .await
        .unwrap();
    assert_eq!(
        store
            .person_by_external_id("E1")
            .await
            .unwrap_err()
            .to_string(),
        "stored people.state value \"gone\" is not valid"
    );
    store.close().await;
}

async fn stamps_come_from_the_stores_clock(url: &str) {
    use tessera::store::{ManualClock, Timestamp};
    let start: Timestamp = "2030-05-06T07:08:09Z".parse().unwrap();
    let clock = ManualClock::new(start);
    let store = Store::open_with_clock(url, clock.clock()).await.unwrap();
    create(&store, "E1").await;
    clock.advance(std::time::Duration::from_secs(3600));
    let mut tx = store.begin_write().await.unwrap();
    lifecycle::transition_person(
        &mut tx,
        &hr(),
        "suspend-E1",
        "E1",
        PersonTransition::Suspend,
        "",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let person = store.person_by_external_id("E1").await.unwrap().unwrap();
    assert_eq!(
        (person.created_at.to_string(), person.updated_at.to_string()),
        ("2030-05-06T07:08:09Z".into(), "2030-05-06T08:08:09Z".into())
    );
    let events = store.audit_events(0, 10).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.at.as_str()).collect::<Vec<_>>(),
        ["2030-05-06T07:08:09Z", "2030-05-06T08:08:09Z"]
    );
    store.close().await;
}
