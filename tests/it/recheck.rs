//! `tessera attest recheck`: a fleet whose attestation facts come from real Yubico samples
//! (firmware 5.4.3 and 5.7.4), re-checked with the EUCLEAK rule (YSA-2024-03) switched on, as a
//! dry run, with `--apply notify` and with `--apply hold`; on SQLite and on PostgreSQL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::harness;
use harness::config::ServerToml;
use harness::pki::TestPki;
use harness::server::TestServer;
use serde_json::Value;
use tessera::attest::{AttestationInput, TrustAnchors};
use tessera::audit::Actor;
use tessera::lifecycle::{self, PersonInput};
use tessera::protocol::pb;
use tessera::protocol::pb::token_service_client::TokenServiceClient;
use tessera::store::{CertificateStatus, NewCertificate, NewToken, Store, TokenState};
use tonic::{Code, Status};
use tonic_types::StatusExt;

on_both_databases!(
    eucleak_recheck_lists_holds_and_notifies_only_the_old_firmware,
    recheck_refuses_bad_policy_and_apply_values,
    recheck_fleet_rpc_reports_holds_and_refuses,
    certificates_from_before_migration_0013_are_reported_unknown,
);

const SAMPLES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/attestation/samples"
);

/// The verified facts of a sample, as enrollment stores them (JSON), and the token serial.
fn sample_facts(name: &str) -> (String, String, String) {
    let dir = Path::new(SAMPLES).join(name);
    let read = |stem: &str| {
        std::fs::read(dir.join(format!("{stem}.pem")))
            .or_else(|_| std::fs::read(dir.join(format!("{stem}.der"))))
            .unwrap()
    };
    let verified = tessera::attest::verify(
        &AttestationInput::new(read("slot"), read("device")),
        &TrustAnchors::yubico().unwrap(),
    )
    .unwrap();
    let facts = verified.facts();
    (
        verified.serial().to_string(),
        facts.slot.to_string(),
        serde_json::to_string(&facts).unwrap(),
    )
}

fn person(id: &str) -> PersonInput {
    PersonInput {
        external_id: id.into(),
        display_name: format!("Person {id}"),
        upn: format!("{id}@corp.test"),
        email: format!("{id}@corp.test"),
        windows_sid: String::new(),
        attributes: BTreeMap::new(),
    }
}

/// Four active tokens, one good certificate each: two on firmware 5.4.3 (ECDSA keys, hit by
/// EUCLEAK), one on 5.7.4, and one enrolled before facts were stored (firmware recorded as
/// 5.4.3, no facts: unknown, never guessed). Returns the certificate serial per token.
async fn fleet(store: &Store) -> BTreeMap<&'static str, String> {
    let hr = Actor {
        name: "hr-sync".into(),
        role: "hr".into(),
    };
    let mut tx = store.begin_write().await.unwrap();
    let mut certs = BTreeMap::new();
    let samples: [(&str, &str, Option<&str>); 4] = [
        ("E1", "fw543-9a", Some("fw5.4.3-p256-9a")),
        ("E2", "fw543-9c", Some("fw5.4.3-p384-9c-fips")),
        ("E3", "fw574-82", Some("fw5.7.4-p384-slot82-new-pki")),
        ("E4", "legacy", None),
    ];
    for (i, (person_id, label, sample)) in samples.into_iter().enumerate() {
        let owner =
            lifecycle::create_person(&mut tx, &hr, &format!("c-{person_id}"), person(person_id))
                .await
                .unwrap();
        let (token_serial, slot, facts, firmware) = match sample {
            Some(name) => {
                let (serial, slot, facts) = sample_facts(name);
                let firmware = name[2..7].to_string();
                (serial, slot, Some(facts), firmware)
            }
            None => ("9000004".into(), "9a".into(), None, "5.4.3".into()),
        };
        let token = tx
            .insert_token(&NewToken {
                serial: token_serial,
                model: "YubiKey 5".into(),
                firmware,
                form_factor: "usb_a_keychain".into(),
                state: TokenState::Active,
                person_id: Some(owner.id),
            })
            .await
            .unwrap();
        let serial = format!("0c{i:02x}");
        tx.reserve_certificate(&NewCertificate {
            serial: serial.clone(),
            person_id: Some(owner.id),
            token_id: Some(token.id),
            profile: "piv-login".into(),
            tbs: vec![1],
            not_before: "2026-01-01T00:00:00Z".parse().unwrap(),
            not_after: "2027-01-01T00:00:00Z".parse().unwrap(),
        })
        .await
        .unwrap();
        tx.record_issued_certificate(&serial, b"der", &format!("sha-{serial}"))
            .await
            .unwrap();
        if let Some(facts) = facts {
            tx.insert_certificate_attestation(&serial, &slot, &facts)
                .await
                .unwrap();
        }
        certs.insert(label, serial);
    }
    tx.commit().await.unwrap();
    certs
}

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    policy_off: PathBuf,
    policy_on: PathBuf,
    dir: PathBuf,
}

fn setup(url: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerToml::new(url).write(dir.path(), &TestPki::new());
    let policy_off = dir.path().join("old-policy.toml");
    std::fs::write(&policy_off, "[advisories]\nysa-2024-03 = false\n").unwrap();
    let policy_on = dir.path().join("eucleak-policy.toml");
    std::fs::write(&policy_on, "[advisories]\nysa-2024-03 = true\n").unwrap();
    Setup {
        config,
        policy_off,
        policy_on,
        dir: dir.path().to_path_buf(),
        _dir: dir,
    }
}

fn recheck(s: &Setup, policy: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "attest",
        "recheck",
        "--config",
        s.config.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    harness::binary::tessera(&args, &[])
}

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn serials(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["certificate_serial"].as_str().unwrap().to_string())
        .collect()
}

async fn statuses(
    store: &Store,
    certs: &BTreeMap<&str, String>,
) -> BTreeMap<String, CertificateStatus> {
    let mut out = BTreeMap::new();
    for (label, serial) in certs {
        let row = store.certificate_by_serial(serial).await.unwrap().unwrap();
        out.insert(label.to_string(), row.status);
    }
    out
}

async fn eucleak_recheck_lists_holds_and_notifies_only_the_old_firmware(url: &str) {
    let store = Store::open(url).await.unwrap();
    let certs = fleet(&store).await;
    let s = setup(url);
    let all_good = statuses(&store, &certs).await;
    assert!(all_good.values().all(|s| *s == CertificateStatus::Good));

    // Today's policy (EUCLEAK rule off): nothing denied; the legacy certificate is unknown.
    let (code, out, err) = recheck(&s, &s.policy_off, &["--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report = json(&out);
    assert_eq!(report["applied"], Value::Null);
    assert_eq!(report["tokens_checked"], 4);
    assert_eq!(report["certificates_checked"], 4);
    assert_eq!(serials(&report["denied"]), Vec::<String>::new());
    assert_eq!(serials(&report["unknown"]), [certs["legacy"].clone()]);
    assert_eq!(report["unknown"][0]["firmware"], "5.4.3");
    assert_eq!(report["unknown"][0]["reasons"], serde_json::json!([]));

    // The EUCLEAK rule switched on: a dry run lists only the 5.4.3 tokens, changes nothing.
    let head = store.audit_head_sequence().await.unwrap();
    let (code, out, err) = recheck(&s, &s.policy_on, &["--json"]);
    assert_eq!(code, 1, "{out}{err}");
    let report = json(&out);
    assert_eq!(
        serials(&report["denied"]),
        [certs["fw543-9a"].clone(), certs["fw543-9c"].clone()]
    );
    let first = &report["denied"][0];
    assert_eq!(first["token_serial"], "15732500");
    assert_eq!(first["person"], "E1");
    assert_eq!(first["person_name"], "Person E1");
    assert_eq!(first["firmware"], "5.4.3");
    assert_eq!(first["slot"], "9a");
    assert_eq!(first["key_algorithm"], "p256");
    assert_eq!(
        first["reasons"],
        serde_json::json!(["advisory-ysa-2024-03"])
    );
    assert_eq!(
        first["messages"][0],
        "ECDSA key on firmware 5.4.3 (before 5.7.0) is exposed to YSA-2024-03 (EUCLEAK)"
    );
    assert_eq!(report["denied"][1]["token_serial"], "25515003");
    assert_eq!(serials(&report["unknown"]), [certs["legacy"].clone()]);
    assert_eq!(store.audit_head_sequence().await.unwrap(), head);
    assert_eq!(statuses(&store, &certs).await, all_good);

    // The text report names token, person, firmware and rule.
    let (code, out, _) = recheck(&s, &s.policy_on, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("dry run, nothing changed"), "{out}");
    assert!(
        out.contains(&format!(
            "15732500\tE1\t5.4.3\t9a\t{}\tadvisory-ysa-2024-03",
            certs["fw543-9a"]
        )),
        "{out}"
    );
    assert!(!out.contains("33162554"), "{out}");
    assert!(out.contains("9000004\tE4\t5.4.3\t-"), "{out}");

    // --apply notify: one audit event per affected token, certificates untouched.
    let (code, out, err) = recheck(&s, &s.policy_on, &["--json", "--apply", "notify"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(json(&out)["applied"], "notify");
    assert_eq!(statuses(&store, &certs).await, all_good);
    let events = store.audit_events(head, 100).await.unwrap();
    let notices: Vec<_> = events
        .iter()
        .filter(|e| e.action == "attestation.recheck_notice")
        .map(|e| e.subject.as_str())
        .collect();
    assert_eq!(notices, ["token:15732500", "token:25515003"]);
    let run = events.last().unwrap();
    assert_eq!(run.action, "attestation.recheck");
    assert_eq!(run.actor, "tessera attest recheck");
    let after: Value = serde_json::from_str(&run.after_json).unwrap();
    assert_eq!(after["applied"], "notify");
    assert!(
        after["policy"]
            .as_str()
            .unwrap()
            .contains("eucleak-policy.toml sha256:"),
        "{after}"
    );
    assert!(!events.iter().any(|e| e.action == "certificate.hold"));

    // --apply hold: only the 5.4.3 certificates go on hold, each audited naming the rule.
    let head = store.audit_head_sequence().await.unwrap();
    let (code, out, err) = recheck(&s, &s.policy_on, &["--apply", "hold"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("applied: hold"), "{out}");
    let after_hold = statuses(&store, &certs).await;
    assert_eq!(after_hold["fw543-9a"], CertificateStatus::OnHold);
    assert_eq!(after_hold["fw543-9c"], CertificateStatus::OnHold);
    assert_eq!(after_hold["fw574-82"], CertificateStatus::Good);
    assert_eq!(after_hold["legacy"], CertificateStatus::Good);
    let held = store
        .certificate_by_serial(&certs["fw543-9a"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held.revocation_reason, Some(6), "certificateHold");
    let events = store.audit_events(head, 100).await.unwrap();
    let holds: Vec<_> = events
        .iter()
        .filter(|e| e.action == "certificate.hold")
        .collect();
    assert_eq!(
        holds.iter().map(|e| e.subject.clone()).collect::<Vec<_>>(),
        [
            format!("certificate:{}", certs["fw543-9a"]),
            format!("certificate:{}", certs["fw543-9c"])
        ]
    );
    for e in &holds {
        assert_eq!(e.role, "admin");
        let after: Value = serde_json::from_str(&e.after_json).unwrap();
        let reason = after["reason"].as_str().unwrap();
        assert!(reason.starts_with("attestation recheck ("), "{reason}");
        assert!(reason.ends_with("): advisory-ysa-2024-03"), "{reason}");
        assert_eq!(after["status"], "on_hold");
    }
    assert_eq!(events.last().unwrap().action, "attestation.recheck");
    assert!(
        tessera::audit::verify(&store, None)
            .await
            .unwrap()
            .first_bad
            .is_none()
    );

    // Held certificates are no longer good: a second run finds nothing to deny.
    let (code, out, _) = recheck(&s, &s.policy_on, &["--json"]);
    assert_eq!(code, 0, "{out}");
    let report = json(&out);
    assert_eq!(report["certificates_checked"], 2);
    assert_eq!(serials(&report["denied"]), Vec::<String>::new());
}

async fn recheck_refuses_bad_policy_and_apply_values(url: &str) {
    let store = Store::open(url).await.unwrap();
    let certs = fleet(&store).await;
    let s = setup(url);
    let head = store.audit_head_sequence().await.unwrap();

    let missing = s.dir.join("no-such-policy.toml");
    let (code, out, err) = recheck(&s, &missing, &["--json"]);
    assert_eq!(code, 2, "{out}{err}");
    let refusal = json(&out);
    assert_eq!(refusal["error"], "policy-unreadable");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("cannot read policy {}: ", missing.display())),
        "{refusal}"
    );

    let invalid = s.dir.join("invalid.toml");
    std::fs::write(&invalid, "[advisories]\nysa-2099-01 = true\n").unwrap();
    let (code, out, err) = recheck(&s, &invalid, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with(&format!(
            "error: {}: attestation policy: line 2: unknown field `ysa-2099-01`",
            invalid.display()
        )),
        "{err}"
    );
    let (code, out, _) = recheck(&s, &invalid, &["--json", "--apply", "hold"]);
    assert_eq!(code, 2);
    assert_eq!(json(&out)["error"], "policy-invalid");

    let (code, out, err) = recheck(&s, &s.policy_on, &["--json", "--apply", "revoke"]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(
        json(&out),
        serde_json::json!({
            "error": "apply-unknown",
            "message": "unknown apply value \"revoke\": use hold or notify (or leave it out for a dry run)",
        })
    );

    // Nothing was changed by any refusal.
    assert_eq!(store.audit_head_sequence().await.unwrap(), head);
    for serial in certs.values() {
        let row = store.certificate_by_serial(serial).await.unwrap().unwrap();
        assert_eq!(row.status, CertificateStatus::Good);
    }
}

/// Code, reason (google.rpc.ErrorInfo) and fields (google.rpc.BadRequest) of a refusal.
fn refusal(s: &Status) -> (Code, String, Vec<String>) {
    let d = s.get_error_details();
    (
        s.code(),
        d.error_info().map(|i| i.reason.clone()).unwrap_or_default(),
        d.bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default(),
    )
}

const EUCLEAK_ON: &str = "[advisories]\nysa-2024-03 = true\n";

async fn recheck_fleet_rpc_reports_holds_and_refuses(url: &str) {
    let store = Store::open(url).await.unwrap();
    let certs = fleet(&store).await;
    let server = TestServer::builder(url).start().await;
    let mut admin = TokenServiceClient::new(server.as_role("admin").await);
    let head = store.audit_head_sequence().await.unwrap();

    // A report: only the 5.4.3 certificates, nothing changed.
    let report = admin
        .recheck_fleet(pb::RecheckFleetRequest {
            policy_toml: EUCLEAK_ON.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.action, pb::RecheckAction::Unspecified as i32);
    assert_eq!((report.tokens_checked, report.certificates_checked), (4, 4));
    let denied: Vec<_> = report
        .denied
        .iter()
        .map(|e| e.certificate_serial.clone())
        .collect();
    assert_eq!(
        denied,
        [certs["fw543-9a"].clone(), certs["fw543-9c"].clone()]
    );
    assert_eq!(report.denied_total, 2);
    assert_eq!(report.denied[0].token_serial, "15732500");
    assert_eq!(report.denied[0].person_external_id, "E1");
    assert_eq!(report.denied[0].firmware, "5.4.3");
    assert_eq!(report.denied[0].reasons, ["advisory-ysa-2024-03"]);
    assert_eq!(report.unknown_total, 1);
    assert_eq!(report.unknown[0].certificate_serial, certs["legacy"]);
    assert_eq!(report.policy_sha256.len(), 64);
    assert_eq!(store.audit_head_sequence().await.unwrap(), head);

    // Refusals, each with its code and reason; nothing changes.
    let call = |req: pb::RecheckFleetRequest| {
        let mut admin = admin.clone();
        async move { admin.recheck_fleet(req).await.unwrap_err() }
    };
    let s = call(pb::RecheckFleetRequest::default()).await;
    assert_eq!(
        refusal(&s),
        (
            Code::InvalidArgument,
            "FIELD_REQUIRED".into(),
            vec!["policy_toml".into()]
        )
    );
    let s = call(pb::RecheckFleetRequest {
        policy_toml: "[advisories]\nysa-2099-01 = true\n".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(
        refusal(&s),
        (
            Code::InvalidArgument,
            "ATTESTATION_POLICY_INVALID".into(),
            vec!["policy_toml".into()]
        )
    );
    assert!(
        s.message()
            .starts_with("attestation policy: line 2: unknown field `ysa-2099-01`"),
        "{}",
        s.message()
    );
    let s = call(pb::RecheckFleetRequest {
        policy_toml: "#".repeat(65_537),
        ..Default::default()
    })
    .await;
    assert_eq!(
        refusal(&s),
        (
            Code::InvalidArgument,
            "FIELD_TOO_LONG".into(),
            vec!["policy_toml".into()]
        )
    );
    let s = call(pb::RecheckFleetRequest {
        policy_toml: EUCLEAK_ON.into(),
        action: 7,
        ..Default::default()
    })
    .await;
    assert_eq!(
        refusal(&s),
        (
            Code::InvalidArgument,
            "INVALID_ENUM_VALUE".into(),
            vec!["action".into()]
        )
    );
    let s = call(pb::RecheckFleetRequest {
        policy_toml: EUCLEAK_ON.into(),
        action: pb::RecheckAction::Hold as i32,
        ..Default::default()
    })
    .await;
    assert_eq!(
        refusal(&s),
        (
            Code::InvalidArgument,
            "REQUEST_ID_MISSING".into(),
            vec!["request_id".into()]
        )
    );
    for role in ["helpdesk", "hr", "auditor", "relying-party"] {
        let mut other = TokenServiceClient::new(server.as_role(role).await);
        let s = other
            .recheck_fleet(pb::RecheckFleetRequest {
                request_id: "r-hold".into(),
                policy_toml: EUCLEAK_ON.into(),
                action: pb::RecheckAction::Hold as i32,
            })
            .await
            .unwrap_err();
        assert_eq!(refusal(&s).0, Code::PermissionDenied, "{role}");
        assert_eq!(refusal(&s).1, "ROLE_NOT_ALLOWED", "{role}");
        assert_eq!(
            s.message(),
            format!("role {role} may not call /tessera.v1.TokenService/RecheckFleet")
        );
    }
    assert_eq!(store.audit_head_sequence().await.unwrap(), head);
    assert!(
        statuses(&store, &certs)
            .await
            .values()
            .all(|s| *s == CertificateStatus::Good)
    );

    // HOLD: only the 5.4.3 certificates go on hold, audited under the admin's name; a repeat
    // of the request id gets the same answer and changes nothing more.
    let hold = pb::RecheckFleetRequest {
        request_id: "r-hold".into(),
        policy_toml: EUCLEAK_ON.into(),
        action: pb::RecheckAction::Hold as i32,
    };
    let first = admin
        .recheck_fleet(hold.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.action, pb::RecheckAction::Hold as i32);
    assert_eq!(first.denied_total, 2);
    let after = statuses(&store, &certs).await;
    assert_eq!(after["fw543-9a"], CertificateStatus::OnHold);
    assert_eq!(after["fw543-9c"], CertificateStatus::OnHold);
    assert_eq!(after["fw574-82"], CertificateStatus::Good);
    assert_eq!(after["legacy"], CertificateStatus::Good);
    let events = store.audit_events(head, 100).await.unwrap();
    let holds: Vec<_> = events
        .iter()
        .filter(|e| e.action == "certificate.hold")
        .collect();
    assert_eq!(holds.len(), 2);
    for e in &holds {
        assert_eq!(e.role, "admin");
        assert_eq!(e.request_id, "r-hold");
        let after: Value = serde_json::from_str(&e.after_json).unwrap();
        assert_eq!(
            after["reason"],
            format!(
                "attestation recheck (RecheckFleet sha256:{}): advisory-ysa-2024-03",
                report.policy_sha256
            )
        );
    }
    let head = store.audit_head_sequence().await.unwrap();
    let again = admin.recheck_fleet(hold).await.unwrap().into_inner();
    assert_eq!(again, first);
    assert_eq!(store.audit_head_sequence().await.unwrap(), head);
    server.stop().await;
}

/// A database made by the migrations before 0013, with an active token and its good
/// certificate, is migrated by `Store::open`: the rows survive, and the re-check reports the
/// certificate's facts as unknown (the token's recorded firmware shown, nothing judged).
async fn certificates_from_before_migration_0013_are_reported_unknown(url: &str) {
    use sqlx::Executor;
    let pool = crate::harness::database::migrated_before(url, "0013").await;
    pool.execute(
        "INSERT INTO people (external_id, display_name, upn, email, attributes_json, state, created_at, updated_at) \
         VALUES ('E9', 'Old Timer', 'e9@corp.test', 'e9@corp.test', '{}', 'active', '2026-01-02T03:04:05Z', '2026-01-02T03:04:05Z')",
    )
    .await
    .unwrap();
    pool.execute(
        "INSERT INTO tokens (serial, model, firmware, form_factor, state, person_id, created_at, updated_at) \
         SELECT '15732500', 'YubiKey 5', '5.4.3', 'usb_c_nano', 'active', id, '2026-01-02T03:04:05Z', '2026-01-02T03:04:05Z' FROM people WHERE external_id = 'E9'",
    )
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO certificates (serial, person_id, token_id, profile, status, tbs, der, sha256, not_before, not_after, created_at, updated_at) \
         SELECT '0abc', t.person_id, t.id, 'piv-login', 'good', $1, $2, 'sha-0abc', '2026-01-01T00:00:00Z', '2027-01-01T00:00:00Z', '2026-01-02T03:04:05Z', '2026-01-02T03:04:05Z' \
         FROM tokens t WHERE t.serial = '15732500'",
    )
    .bind(b"tbs".to_vec())
    .bind(b"der".to_vec())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = Store::open(url).await.unwrap();
    assert_eq!(
        store
            .certificate_by_serial("0abc")
            .await
            .unwrap()
            .unwrap()
            .status,
        CertificateStatus::Good
    );
    assert_eq!(store.certificate_attestation("0abc").await.unwrap(), None);
    let policy = tessera::attest::Policy::from_toml(EUCLEAK_ON).unwrap();
    let report = lifecycle::recheck_fleet_dry_run(&store, &policy)
        .await
        .unwrap();
    assert_eq!((report.tokens_checked, report.certificates_checked), (1, 1));
    assert!(
        report.denied.is_empty(),
        "facts are never guessed: {report:?}"
    );
    assert_eq!(report.unknown.len(), 1);
    let unknown = &report.unknown[0];
    assert_eq!(unknown.certificate_serial, "0abc");
    assert_eq!(unknown.token_serial, "15732500");
    assert_eq!(unknown.person.as_deref(), Some("E9"));
    assert_eq!(unknown.firmware, "5.4.3");
    assert_eq!(unknown.slot, None);
    assert!(unknown.reasons.is_empty());

    // `--apply hold` leaves it alone.
    let mut tx = store.begin_write().await.unwrap();
    let applied = lifecycle::recheck_fleet_apply(
        &mut tx,
        &Actor {
            name: "test".into(),
            role: "admin".into(),
        },
        "r-old",
        &policy,
        "test",
        lifecycle::RecheckApply::Hold,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(applied.unknown, report.unknown);
    assert_eq!(
        store
            .certificate_by_serial("0abc")
            .await
            .unwrap()
            .unwrap()
            .status,
        CertificateStatus::Good
    );
}
