//! Unit tests of `state`: every check of CompleteEnrollment with forged attestations, and
//! the typed states.

use super::*;
use crate::enroll::EnrollmentProfiles;
use p256::ecdsa::signature::hazmat::PrehashSigner as _;
use p256::pkcs8::EncodePublicKey as _;
use sha2::Digest as _;

// The forge is also loaded by attest's tests; each test module keeps its own copy.
#[allow(clippy::duplicate_mod)]
#[path = "../../tests/support/attestation_forge.rs"]
mod forge;
use forge::{ForgedPki, SlotSpec, der_integer};

const SERIAL: u32 = 12_345_678;
const NONCE: [u8; 32] = [9; 32];

fn row(state: EnrollmentState) -> EnrollmentRow {
    let profiles = EnrollmentProfiles::built_in();
    let plan = &profiles.get("piv-login").unwrap().slots;
    EnrollmentRow {
        id: 1,
        public_id: "enr_test".into(),
        person_id: 1,
        token_id: 1,
        profile: "piv-login".into(),
        state,
        nonce: NONCE.to_vec(),
        plan_json: crate::enroll::plan::plan_to_json(plan),
        firmware: "5.7.4".into(),
        expires_at: at("2030-01-01T00:00:00Z"),
        created_by: "helpdesk".into(),
        created_at: at("2029-12-31T23:00:00Z"),
        updated_at: at("2029-12-31T23:00:00Z"),
        token_prior: None,
        kind: crate::store::EnrollmentKind::Enrollment,
    }
}

fn at(text: &str) -> crate::store::Timestamp {
    crate::store::Timestamp::parse(text).unwrap()
}

fn key(seed: u8) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap()
}

/// A slot as the planned piv-login slot would be attested: (slot, PIN, touch) bytes.
fn spec(slot: &str, key: &p256::ecdsa::SigningKey, policy: [u8; 2]) -> SlotSpec {
    SlotSpec {
        common_name: format!("YubiKey PIV Attestation {slot}"),
        firmware: Some(vec![5, 7, 4]),
        serial: Some(der_integer(SERIAL)),
        policy: Some(policy.to_vec()),
        form_factor: Some(vec![0x01]),
        extra_extensions: Vec::new(),
        subject_spki_der: Some(
            key.verifying_key()
                .to_public_key_der()
                .unwrap()
                .as_bytes()
                .to_vec(),
        ),
    }
}

fn proof(
    pki: &ForgedPki,
    slot: &str,
    spec: &SlotSpec,
    signer: &p256::ecdsa::SigningKey,
) -> SlotProof {
    let message = crate::enroll::proof_message("enr_test", slot, &NONCE);
    let sig: p256::ecdsa::Signature = signer
        .sign_prehash(&sha2::Sha256::digest(&message))
        .unwrap();
    SlotProof {
        slot: slot.into(),
        attestation_certificate: pki.slot(spec),
        signature: sig.to_der().as_bytes().to_vec(),
    }
}

/// 9a: PIN once (2), touch never (1); 9c: PIN always (3), touch cached (3).
fn good_proofs(pki: &ForgedPki) -> Vec<SlotProof> {
    vec![
        proof(pki, "9a", &spec("9a", &key(1), [2, 1]), &key(1)),
        proof(pki, "9c", &spec("9c", &key(2), [3, 3]), &key(2)),
    ]
}

fn check(pki: &ForgedPki, proofs: &[SlotProof]) -> Result<Vec<VerifiedSlot>, EnrollError> {
    check_with(pki, proofs, &Policy::default(), &pki.device_der)
}

fn check_with(
    pki: &ForgedPki,
    proofs: &[SlotProof],
    policy: &Policy,
    intermediate: &[u8],
) -> Result<Vec<VerifiedSlot>, EnrollError> {
    let trust = TrustAnchors::builder()
        .with_anchors(pki.root_pem.as_bytes(), "forged root")
        .unwrap()
        .build()
        .unwrap();
    let begun = LoadedEnrollment::load(row(EnrollmentState::Begun))
        .unwrap()
        .into_begun()
        .unwrap();
    begun.verify(
        SERIAL,
        intermediate,
        proofs,
        &Verifier {
            trust: &trust,
            policy,
        },
    )
}

fn reason(r: Result<Vec<VerifiedSlot>, EnrollError>) -> (String, String) {
    let e = r.unwrap_err();
    (e.reason().to_string(), e.to_string())
}

#[test]
fn good_proofs_verify_every_planned_slot() {
    let pki = ForgedPki::new();
    let verified = check(&pki, &good_proofs(&pki)).unwrap();
    assert_eq!(
        verified
            .iter()
            .map(|v| v.plan.slot.to_string())
            .collect::<Vec<_>>(),
        ["9a", "9c"]
    );
    assert_eq!(
        verified[0].public_key_der,
        key(1)
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
    );
}

#[test]
fn proofs_must_match_the_plan() {
    let pki = ForgedPki::new();
    let mut proofs = good_proofs(&pki);
    proofs.pop();
    assert_eq!(
        reason(check(&pki, &proofs)),
        (
            "SLOT_MISSING".into(),
            "slot 9c is planned but has no proof; generate its key and send its attestation and signature".into()
        )
    );
    let mut proofs = good_proofs(&pki);
    proofs.push(proof(&pki, "9d", &spec("9d", &key(3), [2, 1]), &key(3)));
    assert_eq!(reason(check(&pki, &proofs)).0, "SLOT_NOT_PLANNED");
    let mut proofs = good_proofs(&pki);
    proofs.push(proofs[0].clone());
    assert_eq!(
        reason(check(&pki, &proofs)),
        (
            "SLOT_DUPLICATE".into(),
            "slot 9a has more than one proof".into()
        )
    );
}

#[test]
fn attestation_refusals_name_the_slot_and_the_problem() {
    let pki = ForgedPki::new();
    // 9c's proof carries 9a's attestation.
    let mut proofs = good_proofs(&pki);
    proofs[1] = proof(&pki, "9c", &spec("9a", &key(2), [3, 3]), &key(2));
    assert_eq!(
        reason(check(&pki, &proofs)),
        (
            "ATTESTATION_SLOT_MISMATCH".into(),
            "slot 9c: the attestation is for slot 9a".into()
        )
    );
    // 9c generated with touch never instead of cached.
    let mut proofs = good_proofs(&pki);
    proofs[1] = proof(&pki, "9c", &spec("9c", &key(2), [3, 1]), &key(2));
    assert_eq!(
        reason(check(&pki, &proofs)),
        (
            "ATTESTATION_NOT_AS_PLANNED".into(),
            "slot 9c: the attested key is not as planned: touch policy never (planned cached); generate it again as planned".into()
        )
    );
    // Another token's serial.
    let mut proofs = good_proofs(&pki);
    let mut other = spec("9a", &key(1), [2, 1]);
    other.serial = Some(der_integer(SERIAL + 1));
    proofs[0] = proof(&pki, "9a", &other, &key(1));
    assert_eq!(
        reason(check(&pki, &proofs)).0,
        "ATTESTATION_FROM_ANOTHER_TOKEN"
    );
    // No intermediate: the chain cannot be built.
    let e = check_with(&pki, &good_proofs(&pki), &Policy::default(), &[]).unwrap_err();
    assert_eq!(e.reason(), "ATTESTATION_INVALID");
    assert!(
        matches!(
            e,
            EnrollError::AttestationInvalid {
                code: "input-empty",
                ..
            }
        ),
        "{e:?}"
    );
    // Another root: not trusted.
    let stranger = ForgedPki::new();
    let e = check(&pki, &good_proofs(&stranger)).unwrap_err();
    assert!(
        matches!(
            e,
            EnrollError::AttestationInvalid {
                code: "slot-signature-invalid",
                ..
            }
        ),
        "{e:?}"
    );
    // The proof signed by a key that is not the attested one.
    let mut proofs = good_proofs(&pki);
    proofs[0] = proof(&pki, "9a", &spec("9a", &key(1), [2, 1]), &key(5));
    assert_eq!(
        reason(check(&pki, &proofs)),
        (
            "PROOF_SIGNATURE_INVALID".into(),
            "slot 9a: the proof signature does not verify with the attested key over this enrollment's nonce; sign the proof message with the slot's new key".into()
        )
    );
}

#[test]
fn the_policy_decides_last_with_its_reason_codes() {
    let pki = ForgedPki::new();
    let policy = Policy::from_toml("minimum_touch_policy = \"always\"").unwrap();
    let e = check_with(&pki, &good_proofs(&pki), &policy, &pki.device_der).unwrap_err();
    assert_eq!(
        e,
        EnrollError::PolicyDenied {
            slot: "9a".into(),
            codes: "touch-policy-below-minimum".into(),
            reasons: "touch policy never is weaker than the required always".into(),
        }
    );
    assert_eq!(e.reason(), "ATTESTATION_POLICY_DENIED");
}

#[test]
fn states_allow_only_their_next_step() {
    let begun = LoadedEnrollment::load(row(EnrollmentState::Begun)).unwrap();
    assert_eq!(
        begun.into_completed().unwrap_err(),
        EnrollError::NotCompleted("enr_test".into())
    );
    let completed = LoadedEnrollment::load(row(EnrollmentState::Completed)).unwrap();
    assert_eq!(
        completed.into_begun().unwrap_err().reason(),
        "NONCE_ALREADY_USED"
    );
    for (state, reason) in [
        (EnrollmentState::Confirmed, "ENROLLMENT_ALREADY_CONFIRMED"),
        (EnrollmentState::Aborted, "ENROLLMENT_ABORTED"),
        (EnrollmentState::Expired, "ENROLLMENT_EXPIRED"),
    ] {
        let closed = LoadedEnrollment::load(row(state)).unwrap();
        assert!(!closed.is_due_to_expire(at("2031-01-01T00:00:00Z")));
        assert_eq!(closed.into_begun().unwrap_err().reason(), reason);
        assert_eq!(
            LoadedEnrollment::load(row(state))
                .unwrap()
                .into_completed()
                .unwrap_err()
                .reason(),
            reason
        );
    }
    let open = LoadedEnrollment::load(row(EnrollmentState::Begun)).unwrap();
    assert!(!open.is_due_to_expire(at("2029-12-31T23:59:59Z")));
    assert!(open.is_due_to_expire(at("2030-01-01T00:00:00Z")));
}
