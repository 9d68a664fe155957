//! Renewal in place on the server side (issue 13, item 1): BeginRenewal → the station's steps on
//! a real virtual card (pcscd + vpcd + tessera-vpiv) driven with the `piv` module →
//! CompleteEnrollment → ConfirmEnrollment, on SQLite and PostgreSQL. The station as a process
//! (`tessera station renew`, the card pulled at each step) is in `station.rs`.
//! Run under `scripts/with-pcscd.sh -- cargo nextest run --test it -E 'test(/renewal/)'`.
use crate::enrollment::{
    NEW_PIN, Server, assert_refused, begin_request, enroll_and_confirm, metadata, mgm_key, reason,
    secret, slot_id, station_prepares, token_state, yk_algorithm, yk_pin_policy, yk_touch_policy,
};
use crate::harness;

use harness::config::{CONFIG_FILE, Enrollment};
use harness::server::ServerTask;
use harness::vpcd::{CardOptions, VirtualCard};
use sha2::Digest as _;
use std::time::Duration;
use tessera::piv::PivToken;
use tessera::protocol::pb;
use tessera::protocol::pb::directory_service_client::DirectoryServiceClient;
use tessera::protocol::pb::enrollment_service_client::EnrollmentServiceClient;
use tessera::protocol::pb::token_service_client::TokenServiceClient;
use tessera::store::{CertificateStatus, ManualClock, Store};
use tonic::Code;
use tonic::transport::Channel;

on_both_databases!(
    desk_renewal_keeps_pin_puk_and_the_9c_certificate,
    renewal_refusals_name_their_reason,
    abort_and_expiry_keep_the_old_certificates_good,
    attestation_policy_is_applied_again_at_renewal,
    repeated_begin_renewal_is_checked_audited_and_expires,
    refusals_after_begin_renewal_name_their_reason,
    credentials_not_held_or_tampered_are_refused,
);

const DAY: Duration = Duration::from_secs(86_400);

fn renewal_request(request_id: &str, serial: u32, slots: &[&str]) -> pb::BeginRenewalRequest {
    pb::BeginRenewalRequest {
        request_id: request_id.into(),
        token_serial: serial.to_string(),
        slots: slots.iter().map(|s| s.to_string()).collect(),
        force: false,
        reason: "ticket 4711".into(),
    }
}

/// What the station does for a renewal between BeginRenewal and CompleteEnrollment: the
/// token's current management key, a new key generated and attested in each planned slot, the
/// person's PIN, the proofs over the renewal's nonce.
fn station_renews(
    card: &VirtualCard,
    begun: &pb::BeginRenewalResponse,
) -> pb::CompleteEnrollmentRequest {
    let mut token = PivToken::open(Some(card.reader_name())).unwrap();
    token
        .authenticate(&mgm_key(begun.current_management_key.as_ref().unwrap()))
        .unwrap();
    let mut attestations = Vec::new();
    for plan in &begun.slots {
        token
            .generate(
                slot_id(&plan.slot),
                yk_algorithm(&plan.algorithm),
                yk_pin_policy(&plan.pin_policy),
                yk_touch_policy(&plan.touch_policy),
            )
            .unwrap();
        attestations.push(token.attest(slot_id(&plan.slot)).unwrap());
    }
    let intermediate = token.attestation_certificate().unwrap();
    let mut proofs = Vec::new();
    for (plan, attestation) in begun.slots.iter().zip(attestations) {
        token.verify_pin(&secret(NEW_PIN)).unwrap();
        let message =
            tessera::protocol::proof_message(&begun.enrollment_id, &plan.slot, &begun.nonce);
        let signature = token
            .sign(
                slot_id(&plan.slot),
                yk_algorithm(&plan.algorithm),
                &sha2::Sha256::digest(&message),
            )
            .unwrap();
        proofs.push(pb::EnrollmentProof {
            slot: plan.slot.clone(),
            attestation_certificate: attestation,
            signature,
        });
    }
    pb::CompleteEnrollmentRequest {
        request_id: format!("complete-{}", begun.enrollment_id),
        enrollment_id: begun.enrollment_id.clone(),
        attestation_intermediate: intermediate,
        proofs,
    }
}

/// After CompleteEnrollment of a renewal: the new certificates written with the token's
/// (unchanged) management key.
fn station_writes(
    card: &VirtualCard,
    begun: &pb::BeginRenewalResponse,
    done: &pb::CompleteEnrollmentResponse,
) {
    let mut token = PivToken::open(Some(card.reader_name())).unwrap();
    token
        .authenticate(&mgm_key(begun.current_management_key.as_ref().unwrap()))
        .unwrap();
    for c in &done.certificates {
        token
            .write_certificate(slot_id(&c.slot), &c.certificate.as_ref().unwrap().der)
            .unwrap();
    }
}

/// The serial of the certificate in `slot` of the card (lower-case hex, as the server writes it).
fn serial_on_card(card: &VirtualCard, slot: &str) -> Option<String> {
    let mut token = PivToken::open(Some(card.reader_name())).unwrap();
    tessera::station::enrollment::certificate_on_token(&mut token, slot_id(slot))
        .unwrap()
        .map(|(serial, _)| serial)
}

fn same_serial(a: &str, b: &str) -> bool {
    a.trim_start_matches('0') == b.trim_start_matches('0')
}

fn serial_of(done: &pb::CompleteEnrollmentResponse, slot: &str) -> String {
    done.certificates
        .iter()
        .find(|c| c.slot == slot)
        .and_then(|c| c.certificate.as_ref())
        .map(|c| c.serial.clone())
        .unwrap_or_else(|| panic!("no certificate for slot {slot}"))
}

/// (status, RFC 5280 reason) of a certificate in the store.
async fn status_of(url: &str, serial: &str) -> (CertificateStatus, Option<i64>) {
    let store = Store::open(url).await.unwrap();
    let c = store.certificate_by_serial(serial).await.unwrap().unwrap();
    store.close().await;
    (c.status, c.revocation_reason)
}

async fn get_token(server: &Server, serial: u32) -> pb::Token {
    TokenServiceClient::new(server.channel("helpdesk").await)
        .get_token(pb::GetTokenRequest {
            serial: serial.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap()
}

async fn get_enrollment(server: &Server, id: &str) -> pb::Enrollment {
    server
        .enrollments()
        .await
        .get_enrollment(pb::GetEnrollmentRequest {
            enrollment_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap()
}

async fn confirm(enroll: &mut EnrollmentServiceClient<Channel>, id: &str) -> pb::Token {
    enroll
        .confirm_enrollment(pb::ConfirmEnrollmentRequest {
            request_id: format!("confirm-{id}"),
            enrollment_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap()
}

async fn abort(enroll: &mut EnrollmentServiceClient<Channel>, id: &str) -> pb::Enrollment {
    enroll
        .abort_enrollment(pb::AbortEnrollmentRequest {
            request_id: format!("abort-{id}"),
            enrollment_id: id.into(),
            reason: "card pulled".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap()
}

/// Issue 13's first "done when": the 9a certificate renewed in place at day 340 of its 365;
/// the PIN, the PUK, the management key and the 9c key and certificate are as they were; the
/// old 9a certificate is revoked as superseded at confirmation (not before), and a
/// `renewal.done` notice is in the outbox.
async fn desk_renewal_keeps_pin_puk_and_the_9c_certificate(url: &str) {
    let serial = 33_000_001;
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(serial));
    let clock = ManualClock::starting_now();
    let server = Server::start_with_clock(
        url,
        &[card.attestation_root()],
        Enrollment::default(),
        clock.clock(),
    )
    .await;
    server.create_person("R100", "").await;
    let (enrolled, done) = enroll_and_confirm(&server, &card, "R100").await;
    let (old_9a, old_9c) = (serial_of(&done, "9a"), serial_of(&done, "9c"));
    let token_before = get_token(&server, serial).await;
    clock.advance(340 * DAY);

    let mut enroll = server.enrollments().await;
    let begun = enroll
        .begin_renewal(renewal_request("renew-r100", serial, &["9a"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(begun.slots.len(), 1, "{:?}", begun.slots);
    let plan = &begun.slots[0];
    assert_eq!(
        (
            plan.slot.as_str(),
            plan.algorithm.as_str(),
            plan.pin_policy.as_str(),
            plan.touch_policy.as_str(),
            plan.certificate_profile.as_str()
        ),
        ("9a", "ECCP256", "ONCE", "NEVER", "piv-authentication"),
        "the plan of the enrollment that made the certificate"
    );
    assert_eq!(begun.nonce.len(), 32);
    assert_ne!(begun.nonce, enrolled.nonce);
    assert_eq!(
        begun.current_management_key.as_ref().unwrap().key,
        enrolled.new_management_key.as_ref().unwrap().key,
        "the token's management key, not a new one"
    );
    assert_eq!(begun.superseded.len(), 1);
    assert_eq!(
        begun.superseded[0].certificate.as_ref().unwrap().serial,
        old_9a
    );
    assert!(begun.forced_slots.is_empty());
    assert_eq!(
        token_state(&server, serial).await.0,
        pb::TokenState::Active,
        "the token stays active while it is renewed"
    );

    let complete = station_renews(&card, &begun);
    let renewed = enroll
        .complete_enrollment(complete)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renewed.certificates.len(), 1);
    let new_9a = serial_of(&renewed, "9a");
    assert_eq!(
        status_of(url, &old_9a).await,
        (CertificateStatus::Good, None),
        "the old certificate stays good until confirmation"
    );
    station_writes(&card, &begun, &renewed);
    let token = confirm(&mut enroll, &begun.enrollment_id).await;
    assert_eq!(token.state(), pb::TokenState::Active);
    let token_after = get_token(&server, serial).await;
    assert_eq!(token_after.certificate_serials.len(), 3);
    assert_eq!(
        pb::Token {
            certificate_serials: Vec::new(),
            ..token_after
        },
        pb::Token {
            certificate_serials: Vec::new(),
            ..token_before
        },
        "the token's row is as the enrollment left it (state, holder, firmware, updated_at)"
    );

    assert_eq!(
        status_of(url, &old_9a).await,
        (CertificateStatus::Revoked, Some(4)),
        "superseded"
    );
    assert_eq!(status_of(url, &new_9a).await.0, CertificateStatus::Good);
    assert_eq!(
        status_of(url, &old_9c).await,
        (CertificateStatus::Good, None),
        "9c was not in the plan"
    );
    assert!(same_serial(&serial_on_card(&card, "9a").unwrap(), &new_9a));
    assert!(same_serial(&serial_on_card(&card, "9c").unwrap(), &old_9c));
    let view = get_enrollment(&server, &begun.enrollment_id).await;
    assert_eq!(
        (view.kind(), view.state()),
        (pb::EnrollmentKind::Renewal, pb::EnrollmentState::Confirmed)
    );

    // The card: the person's PIN, the escrowed PUK and the management key still open it, and
    // the 9c key still signs (its certificate's key).
    let mut t = PivToken::open(Some(card.reader_name())).unwrap();
    let info = t.info().unwrap();
    assert_eq!(info.pin_tries_left, 3);
    t.verify_pin(&secret(NEW_PIN)).unwrap();
    t.change_puk(&secret(&enrolled.new_puk), &secret(&enrolled.new_puk))
        .unwrap();
    t.authenticate(&mgm_key(enrolled.new_management_key.as_ref().unwrap()))
        .unwrap();
    t.verify_pin(&secret(NEW_PIN)).unwrap();
    let digest = sha2::Sha256::digest(b"still the 9c key");
    let signature = t
        .sign(slot_id("9c"), yk_algorithm("ECCP256"), &digest)
        .unwrap();
    let der_9c = done
        .certificates
        .iter()
        .find(|c| c.slot == "9c")
        .unwrap()
        .certificate
        .as_ref()
        .unwrap()
        .der
        .clone();
    assert!(
        tessera::enroll::proof::signature_verifies(
            &spki_of(&der_9c),
            b"still the 9c key",
            &signature
        ),
        "the 9c key is the one its certificate names"
    );

    let store = Store::open(url).await.unwrap();
    let notices: Vec<_> = store
        .notifications()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.event == "renewal.done")
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let payload: serde_json::Value = serde_json::from_str(&notices[0].payload).unwrap();
    assert_eq!(payload["token_serial"], serial.to_string());
    assert_eq!(payload["person_external_id"], "R100");
    assert_eq!(payload["enrollment_id"], begun.enrollment_id);
    assert_eq!(payload["superseded"][0]["serial"], old_9a);
    assert_eq!(payload["renewed"][0]["serial"], new_9a);
    let events = store.audit_events(0, 10_000).await.unwrap();
    let begin_event = events.iter().find(|e| e.action == "renewal.begin").unwrap();
    let after: serde_json::Value = serde_json::from_str(&begin_event.after_json).unwrap();
    assert_eq!(after["reason"], "ticket 4711");
    assert_eq!(after["forced"], false);
    assert_eq!(after["supersedes"][0]["serial"], old_9a);
    assert!(
        !events
            .iter()
            .any(|e| e.action == "token.activate" && e.request_id.contains("renew")),
        "a renewal does not move the token"
    );
    store.close().await;
    server.stop().await;
}

/// The SubjectPublicKeyInfo (DER) of a certificate.
fn spki_of(der: &[u8]) -> Vec<u8> {
    use x509_cert::der::{Decode as _, Encode as _};
    x509_cert::Certificate::from_der(der)
        .unwrap()
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .unwrap()
}

/// Every refusal of BeginRenewal, each with its code and reason, audited, nothing issued.
async fn renewal_refusals_name_their_reason(url: &str) {
    let serial = 33_000_002;
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(serial));
    let server = Server::start(url, &[card.attestation_root()], Enrollment::default()).await;
    server.create_person("R200", "").await;
    let (_, done) = enroll_and_confirm(&server, &card, "R200").await;
    let issued = 2;
    let mut enroll = server.enrollments().await;

    // Just enrolled: 335 days before 9a's window opens.
    let s = assert_refused(
        url,
        enroll
            .begin_renewal(renewal_request("early", serial, &["9a"]))
            .await,
        Code::FailedPrecondition,
        "RENEWAL_TOO_EARLY",
        issued,
    )
    .await;
    let not_after = done.certificates[0]
        .certificate
        .as_ref()
        .unwrap()
        .not_after
        .clone();
    assert_eq!(metadata(&s, "slot"), "9a");
    assert_eq!(metadata(&s, "not_after"), not_after);
    assert_eq!(metadata(&s, "renewal_window_days"), "30");
    assert_eq!(metadata(&s, "certificate_serial"), serial_of(&done, "9a"));
    assert!(
        s.message().contains(&format!(
            "expires at {not_after}; it may be renewed from {}",
            metadata(&s, "renewable_from")
        )),
        "{}",
        s.message()
    );
    // The help desk may not force it.
    let mut forced = renewal_request("forced-by-helpdesk", serial, &[]);
    forced.force = true;
    assert_refused(
        url,
        enroll.begin_renewal(forced.clone()).await,
        Code::PermissionDenied,
        "RENEWAL_FORCE_REQUIRES_ADMIN",
        issued,
    )
    .await;
    // Slots that are not PIV key slots, or hold no good certificate.
    let s = assert_refused(
        url,
        enroll
            .begin_renewal(renewal_request("bad-slot", serial, &["9z"]))
            .await,
        Code::InvalidArgument,
        "SLOT_INVALID",
        issued,
    )
    .await;
    assert_eq!(metadata(&s, "slot"), "9z");
    let s = assert_refused(
        url,
        enroll
            .begin_renewal(renewal_request("empty-slot", serial, &["9d"]))
            .await,
        Code::FailedPrecondition,
        "SLOT_NOT_RENEWABLE",
        issued,
    )
    .await;
    assert_eq!(
        s.message(),
        format!(
            "slot 9d of token {serial} has no good certificate to renew; enroll the token to key it"
        )
    );
    // Unknown and malformed serials.
    let s = enroll
        .begin_renewal(renewal_request("unknown", 33_999_999, &[]))
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::NotFound, "TOKEN_NOT_FOUND")
    );
    let mut bad = renewal_request("bad-serial", serial, &[]);
    bad.token_serial = "12ab".into();
    let s = enroll.begin_renewal(bad).await.unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::InvalidArgument, "TOKEN_SERIAL_INVALID")
    );
    let mut many = renewal_request("many", serial, &[]);
    many.slots = vec!["9a".into(); 25];
    let s = enroll.begin_renewal(many).await.unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::InvalidArgument, "TOO_MANY_ITEMS")
    );

    // The token suspended, then the person suspended.
    let mut tokens = TokenServiceClient::new(server.channel("helpdesk").await);
    tokens
        .suspend_token(pb::SuspendTokenRequest {
            request_id: "suspend-token".into(),
            serial: serial.to_string(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    let s = assert_refused(
        url,
        enroll
            .begin_renewal(renewal_request("suspended-token", serial, &[]))
            .await,
        Code::FailedPrecondition,
        "TOKEN_NOT_ACTIVE",
        issued,
    )
    .await;
    assert_eq!(
        s.message(),
        format!(
            "token {serial} is suspended; only an active token held by an active person is renewed"
        )
    );
    tokens
        .reinstate_token(pb::ReinstateTokenRequest {
            request_id: "reinstate-token".into(),
            serial: serial.to_string(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    let mut people = DirectoryServiceClient::new(server.channel("hr").await);
    people
        .suspend_person(pb::SuspendPersonRequest {
            request_id: "suspend-person".into(),
            external_id: "R200".into(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    assert_refused(
        url,
        enroll
            .begin_renewal(renewal_request("suspended-person", serial, &[]))
            .await,
        Code::FailedPrecondition,
        "PERSON_NOT_ACTIVE",
        issued,
    )
    .await;
    people
        .reinstate_person(pb::ReinstatePersonRequest {
            request_id: "reinstate-person".into(),
            external_id: "R200".into(),
            reason: "test".into(),
        })
        .await
        .unwrap();

    // An admin may force it: audited, the slots named; abort leaves everything as it was.
    let mut admin = server.enrollments_as("security officer", "admin").await;
    forced.request_id = "forced-by-admin".into();
    let begun = admin.begin_renewal(forced).await.unwrap().into_inner();
    assert_eq!(begun.forced_slots, ["9a", "9c"]);
    assert_eq!(begun.slots.len(), 2);
    abort(&mut admin, &begun.enrollment_id).await;
    let store = Store::open(url).await.unwrap();
    let event = store
        .audit_events(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.action == "renewal.begin")
        .unwrap();
    store.close().await;
    assert_eq!(event.actor, "security officer");
    let after: serde_json::Value = serde_json::from_str(&event.after_json).unwrap();
    assert_eq!(after["forced"], true);
    assert_eq!(
        after["renewed_before_window"],
        serde_json::json!(["9a", "9c"])
    );
    for c in &done.certificates {
        let serial = &c.certificate.as_ref().unwrap().serial;
        assert_eq!(status_of(url, serial).await.0, CertificateStatus::Good);
    }

    // A token under an open enrollment is not renewed.
    let mut request = begin_request("R200", serial, "piv-login");
    request.request_id = "re-enroll".into();
    let open = enroll.begin_enrollment(request).await.unwrap().into_inner();
    let s = assert_refused(
        url,
        enroll
            .begin_renewal(renewal_request("under-enrollment", serial, &[]))
            .await,
        Code::FailedPrecondition,
        "TOKEN_ENROLLMENT_OPEN",
        issued,
    )
    .await;
    assert_eq!(metadata(&s, "enrollment_id"), open.enrollment_id);
    server.stop().await;
}

/// The card pulled (or the operator stopping) after Complete: abort revokes the new
/// certificate, the old one stays good; so does expiry. A new BeginRenewal replaces an open one.
async fn abort_and_expiry_keep_the_old_certificates_good(url: &str) {
    let serial = 33_000_003;
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(serial));
    let clock = ManualClock::starting_now();
    let server = Server::start_with_clock(
        url,
        &[card.attestation_root()],
        Enrollment::default(),
        clock.clock(),
    )
    .await;
    server.create_person("R300", "").await;
    let (_, done) = enroll_and_confirm(&server, &card, "R300").await;
    let old_9a = serial_of(&done, "9a");
    clock.advance(350 * DAY);
    let mut enroll = server.enrollments().await;

    // Abort after Complete.
    let begun = enroll
        .begin_renewal(renewal_request("renew-1", serial, &["9a"]))
        .await
        .unwrap()
        .into_inner();
    let renewed = enroll
        .complete_enrollment(station_renews(&card, &begun))
        .await
        .unwrap()
        .into_inner();
    let new_1 = serial_of(&renewed, "9a");
    let aborted = abort(&mut enroll, &begun.enrollment_id).await;
    assert_eq!(aborted.state(), pb::EnrollmentState::Aborted);
    assert_eq!(aborted.kind(), pb::EnrollmentKind::Renewal);
    assert_eq!(
        status_of(url, &new_1).await,
        (CertificateStatus::Revoked, Some(5))
    );
    assert_eq!(
        status_of(url, &old_9a).await,
        (CertificateStatus::Good, None)
    );
    assert_eq!(
        token_state(&server, serial).await,
        (pb::TokenState::Active, "R300".to_string())
    );

    // A second BeginRenewal replaces an open one.
    let first = enroll
        .begin_renewal(renewal_request("renew-2", serial, &["9a"]))
        .await
        .unwrap()
        .into_inner();
    let second = enroll
        .begin_renewal(renewal_request("renew-3", serial, &["9a"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        get_enrollment(&server, &first.enrollment_id).await.state(),
        pb::EnrollmentState::Aborted
    );

    // Expiry after Complete.
    let renewed = enroll
        .complete_enrollment(station_renews(&card, &second))
        .await
        .unwrap()
        .into_inner();
    let new_2 = serial_of(&renewed, "9a");
    clock.advance(DAY);
    let expired = get_enrollment(&server, &second.enrollment_id).await;
    assert_eq!(expired.state(), pb::EnrollmentState::Expired);
    assert_eq!(
        status_of(url, &new_2).await,
        (CertificateStatus::Revoked, Some(5))
    );
    assert_eq!(
        status_of(url, &old_9a).await,
        (CertificateStatus::Good, None)
    );
    let s = enroll
        .confirm_enrollment(pb::ConfirmEnrollmentRequest {
            request_id: "confirm-late".into(),
            enrollment_id: second.enrollment_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&s), "ENROLLMENT_EXPIRED");
    assert_eq!(
        token_state(&server, serial).await,
        (pb::TokenState::Active, "R300".to_string())
    );

    // The token suspended between Complete and Confirm: Confirm refuses, abort cleans up.
    let third = enroll
        .begin_renewal(renewal_request("renew-4", serial, &["9a"]))
        .await
        .unwrap()
        .into_inner();
    let renewed = enroll
        .complete_enrollment(station_renews(&card, &third))
        .await
        .unwrap()
        .into_inner();
    TokenServiceClient::new(server.channel("helpdesk").await)
        .suspend_token(pb::SuspendTokenRequest {
            request_id: "suspend".into(),
            serial: serial.to_string(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    assert_refused(
        url,
        enroll
            .confirm_enrollment(pb::ConfirmEnrollmentRequest {
                request_id: "confirm-suspended".into(),
                enrollment_id: third.enrollment_id.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "TOKEN_NOT_ACTIVE",
        2 + 3,
    )
    .await;
    abort(&mut enroll, &third.enrollment_id).await;
    assert_eq!(
        status_of(url, &serial_of(&renewed, "9a")).await.0,
        CertificateStatus::Revoked
    );
    assert_eq!(
        status_of(url, &old_9a).await,
        (CertificateStatus::OnHold, Some(6)),
        "held with the token, not superseded"
    );
    server.stop().await;
}

/// A token enrolled under a policy that did not apply EUCLEAK (firmware 5.4.3, ECDSA); the
/// advisory is then switched on: the renewal is refused at Complete, naming the rule, and the
/// old certificates stay good.
async fn attestation_policy_is_applied_again_at_renewal(url: &str) {
    let serial = 33_000_004;
    let card = VirtualCard::start(CardOptions::firmware("5.4.3").serial(serial));
    let default_policy = include_str!("../../config/attestation-policy.toml");
    let lenient = default_policy.replace("ysa-2024-03 = true", "ysa-2024-03 = false");
    assert_ne!(lenient, default_policy);
    let clock = ManualClock::starting_now();
    // The policy file is read at start-up: the server restarts on the same configuration after
    // it changed.
    let policy_dir = tempfile::tempdir().unwrap();
    let policy_path = policy_dir.path().join("attestation-policy.toml");
    std::fs::write(&policy_path, &lenient).unwrap();
    let mut server = Server::start_with_clock(
        url,
        &[card.attestation_root()],
        Enrollment {
            attestation_policy: Some(policy_path.clone()),
            ..Enrollment::default()
        },
        clock.clock(),
    )
    .await;
    let config = server.dir.path().join(CONFIG_FILE);
    server.create_person("R400", "").await;
    let mut request = begin_request("R400", serial, "piv-login");
    request.firmware = "5.4.3".into();
    let mut enroll = server.enrollments().await;
    let enrolled = enroll.begin_enrollment(request).await.unwrap().into_inner();
    let done = enroll
        .complete_enrollment(station_prepares(&card, &enrolled))
        .await
        .unwrap()
        .into_inner();
    crate::enrollment::station_finishes(&card, &enrolled, &done);
    confirm(&mut enroll, &enrolled.enrollment_id).await;

    std::fs::write(&policy_path, default_policy).unwrap();
    restart(&mut server, &config, &clock).await;
    clock.advance(340 * DAY);
    let mut enroll = server.enrollments().await;
    let begun = enroll
        .begin_renewal(renewal_request("renew-eucleak", serial, &["9a"]))
        .await
        .unwrap()
        .into_inner();
    let s = assert_refused(
        url,
        enroll
            .complete_enrollment(station_renews(&card, &begun))
            .await,
        Code::FailedPrecondition,
        "ATTESTATION_POLICY_DENIED",
        2,
    )
    .await;
    assert_eq!(metadata(&s, "policy_reasons"), "advisory-ysa-2024-03");
    assert_eq!(
        s.message(),
        "slot 9a: the attestation policy refuses the key: ECDSA key on firmware 5.4.3 (before 5.7.0) is exposed to YSA-2024-03 (EUCLEAK)"
    );
    for c in &done.certificates {
        let serial = &c.certificate.as_ref().unwrap().serial;
        assert_eq!(status_of(url, serial).await.0, CertificateStatus::Good);
    }
    server.stop().await;
}

async fn restart(server: &mut Server, config: &std::path::Path, clock: &ManualClock) {
    let running = std::mem::replace(
        &mut server.running,
        ServerTask::start_with_clock(config, clock.clock()).await,
    );
    running.stop().await;
}

/// A repeated BeginRenewal (same request id, same certificate) answers the management key
/// again, audited, while the renewal is open and within `secret_replay_minutes`; later it is
/// `REQUEST_ID_EXPIRED`. Another certificate's repeat is refused.
async fn repeated_begin_renewal_is_checked_audited_and_expires(url: &str) {
    let serial = 33_000_005;
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(serial));
    let clock = ManualClock::starting_now();
    let server = Server::start_with_clock(
        url,
        &[card.attestation_root()],
        Enrollment::default(),
        clock.clock(),
    )
    .await;
    server.create_person("R500", "").await;
    enroll_and_confirm(&server, &card, "R500").await;
    clock.advance(340 * DAY);
    let mut desk = server.enrollments_as("desk one", "helpdesk").await;
    let request = renewal_request("renew-repeat", serial, &["9a"]);
    let first = desk
        .begin_renewal(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = desk
        .begin_renewal(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.enrollment_id, first.enrollment_id);
    assert_eq!(again.nonce, first.nonce);
    assert_eq!(
        again.current_management_key.as_ref().unwrap().key,
        first.current_management_key.as_ref().unwrap().key
    );
    assert!(
        !again
            .current_management_key
            .as_ref()
            .unwrap()
            .key
            .is_empty()
    );
    let store = Store::open(url).await.unwrap();
    let repeats: Vec<_> = store
        .audit_events(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "renewal.begin" && e.after_json.contains("\"repeat\":true"))
        .collect();
    store.close().await;
    assert_eq!(repeats.len(), 1);

    let mut other = server.enrollments_as("desk two", "helpdesk").await;
    let s = other.begin_renewal(request.clone()).await.unwrap_err();
    assert_eq!(reason(&s), "REQUEST_ID_OF_ANOTHER_CALLER");

    clock.advance(Duration::from_secs(6 * 60));
    assert_refused(
        url,
        desk.begin_renewal(request).await,
        Code::FailedPrecondition,
        "REQUEST_ID_EXPIRED",
        2,
    )
    .await;
    server.stop().await;
}

/// What can go wrong after BeginRenewal: a reason too long; the token suspended before
/// Complete (TOKEN_NOT_ACTIVE, the renewal stays BEGUN and completes once it is reinstated); the
/// person suspended before Confirm (PERSON_NOT_ACTIVE); a token whose certificates are all
/// revoked has nothing to renew (SLOT_NOT_RENEWABLE).
async fn refusals_after_begin_renewal_name_their_reason(url: &str) {
    let serial = 33_000_006;
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(serial));
    let clock = ManualClock::starting_now();
    let server = Server::start_with_clock(
        url,
        &[card.attestation_root()],
        Enrollment::default(),
        clock.clock(),
    )
    .await;
    server.create_person("R600", "").await;
    let (_, done) = enroll_and_confirm(&server, &card, "R600").await;
    clock.advance(340 * DAY);
    let mut enroll = server.enrollments().await;

    let mut long = renewal_request("long-reason", serial, &["9a"]);
    long.reason = "x".repeat(1025);
    let s = enroll.begin_renewal(long).await.unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::InvalidArgument, "FIELD_TOO_LONG")
    );

    let begun = enroll
        .begin_renewal(renewal_request("renew-6", serial, &["9a"]))
        .await
        .unwrap()
        .into_inner();
    let complete = station_renews(&card, &begun);
    let mut tokens = TokenServiceClient::new(server.channel("helpdesk").await);
    tokens
        .suspend_token(pb::SuspendTokenRequest {
            request_id: "suspend".into(),
            serial: serial.to_string(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    let mut refused = complete.clone();
    refused.request_id = "complete-while-suspended".into();
    assert_refused(
        url,
        enroll.complete_enrollment(refused).await,
        Code::FailedPrecondition,
        "TOKEN_NOT_ACTIVE",
        2,
    )
    .await;
    tokens
        .reinstate_token(pb::ReinstateTokenRequest {
            request_id: "reinstate".into(),
            serial: serial.to_string(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    let renewed = enroll
        .complete_enrollment(complete)
        .await
        .unwrap()
        .into_inner();
    station_writes(&card, &begun, &renewed);
    let mut people = DirectoryServiceClient::new(server.channel("hr").await);
    people
        .suspend_person(pb::SuspendPersonRequest {
            request_id: "suspend-person".into(),
            external_id: "R600".into(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    assert_refused(
        url,
        enroll
            .confirm_enrollment(pb::ConfirmEnrollmentRequest {
                request_id: "confirm-while-suspended".into(),
                enrollment_id: begun.enrollment_id.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "PERSON_NOT_ACTIVE",
        3,
    )
    .await;
    people
        .reinstate_person(pb::ReinstatePersonRequest {
            request_id: "reinstate-person".into(),
            external_id: "R600".into(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    confirm(&mut enroll, &begun.enrollment_id).await;
    assert_eq!(
        status_of(url, &serial_of(&done, "9a")).await,
        (CertificateStatus::Revoked, Some(4))
    );

    // Every certificate of the token revoked: nothing to renew.
    let mut certificates = pb::certificate_service_client::CertificateServiceClient::new(
        server.channel("helpdesk").await,
    );
    for serial in [serial_of(&done, "9c"), serial_of(&renewed, "9a")] {
        certificates
            .revoke_certificate(pb::RevokeCertificateRequest {
                request_id: format!("revoke-{serial}"),
                serial,
                reason: pb::RevocationReason::CessationOfOperation as i32,
            })
            .await
            .unwrap();
    }
    let s = assert_refused(
        url,
        enroll
            .begin_renewal(renewal_request("nothing-left", serial, &[]))
            .await,
        Code::FailedPrecondition,
        "SLOT_NOT_RENEWABLE",
        3,
    )
    .await;
    assert_eq!(
        s.message(),
        format!("token {serial} has no good certificate to renew; enroll it instead")
    );
    server.stop().await;
}

/// The token's management key is what a renewal hands out: a stored key that does not unwrap
/// for this token (a database writer moved it to another generation) is CREDENTIALS_TAMPERED,
/// and a row without confirmed credentials is CREDENTIALS_NOT_HELD; neither answers a key.
async fn credentials_not_held_or_tampered_are_refused(url: &str) {
    use crate::enrollment::{database_writer, put_stored_credentials, stored_credentials};
    let serial = 33_000_007;
    let card = VirtualCard::start(CardOptions::firmware("5.7.4").serial(serial));
    let clock = ManualClock::starting_now();
    let server = Server::start_with_clock(
        url,
        &[card.attestation_root()],
        Enrollment::default(),
        clock.clock(),
    )
    .await;
    server.create_person("R700", "").await;
    enroll_and_confirm(&server, &card, "R700").await;
    clock.advance(340 * DAY);
    let mut enroll = server.enrollments().await;

    let stored = stored_credentials(url, serial).await;
    let (aad_version, generation, key, puk) = stored.clone();
    put_stored_credentials(url, serial, (aad_version, generation + 1, key, puk)).await;
    assert_refused(
        url,
        enroll
            .begin_renewal(renewal_request("tampered", serial, &["9a"]))
            .await,
        Code::DataLoss,
        "CREDENTIALS_TAMPERED",
        2,
    )
    .await;
    put_stored_credentials(url, serial, stored).await;

    let pool = database_writer(url).await;
    sqlx::query(
        "UPDATE token_credentials SET management_key_algorithm = NULL, management_key_wrapped = NULL, \
         puk_wrapped = NULL WHERE token_id = (SELECT id FROM tokens WHERE serial = $1)",
    )
    .bind(serial.to_string())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_refused(
        url,
        enroll
            .begin_renewal(renewal_request("not-held", serial, &["9a"]))
            .await,
        Code::FailedPrecondition,
        "CREDENTIALS_NOT_HELD",
        2,
    )
    .await;
    server.stop().await;
}
