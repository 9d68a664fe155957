//! `tessera station enroll`: the enrollment protocol of `proto/tessera/v1/enrollment.proto`,
//! one visible step at a time.
//!
//! Which secrets the station tries, and why (it never guesses one):
//! - the factory management key, PIN and PUK only when the token's own metadata says they are
//!   still the defaults, or right after this station reset the token;
//! - otherwise the management key the server sent for this token (with factory PIN and PUK,
//!   again only as the metadata says);
//! - otherwise the token is reset, and only after the operator confirmed.
//!
//! Any failure after `BeginEnrollment` aborts the enrollment on the server
//! (`AbortEnrollment`, which revokes whatever it issued), so a retry starts clean.
use super::slot_plan::{PlannedKey, slot_name};
use super::{Operator, ServerConnection, ServerError, StationError, request_id};
use crate::piv::{
    ManagementKey, PivError, PivToken, Secret, TokenInfo, default_management_algorithm,
};
use crate::protocol::{pb, proof_message};
use yubikey::MgmAlgorithmId;
use yubikey::piv::SlotId;

/// The factory values of a YubiKey's PIV application; tried only as the module doc says.
const FACTORY_PIN: &[u8] = b"123456";
const FACTORY_PUK: &[u8] = b"12345678";
const FACTORY_MANAGEMENT_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];

#[derive(Debug, Clone)]
pub struct EnrollRequest {
    pub person: String,
    pub profile: String,
}

/// What an enrollment left behind.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub enrollment_id: String,
    pub token_serial: String,
    pub certificates: Vec<pb::SlotCertificate>,
    pub token: Option<pb::Token>,
}

/// Enrolls the token in the reader for `request.person`.
pub async fn enroll(
    server: &mut ServerConnection,
    operator: &mut dyn Operator,
    reader: Option<&str>,
    request: &EnrollRequest,
) -> Result<Enrolled, StationError> {
    operator.step("read the token (serial, firmware, retry counters; no secret is tried)");
    let mut token = PivToken::open(reader).map_err(StationError::card("read the token"))?;
    let info = token.info().map_err(StationError::card("read the token"))?;
    describe_token(operator, &info);

    operator.step("the person's new PIN");
    let new_pin = operator.new_pin()?;

    operator.step(&format!(
        "begin enrollment of token {} for person {} with profile {} (BeginEnrollment)",
        info.serial, request.person, request.profile
    ));
    let begun = server
        .enrollment
        .begin_enrollment(pb::BeginEnrollmentRequest {
            request_id: request_id(),
            person_external_id: request.person.clone(),
            profile: request.profile.clone(),
            token_serial: info.serial.to_string(),
            firmware: info.firmware.clone(),
            model: String::new(),
        })
        .await
        .map_err(|s| ServerError::from_status("BeginEnrollment", &s))?
        .into_inner();
    operator.note(&format!(
        "enrollment {} for {} <{}>",
        begun.enrollment_id, begun.person_display_name, begun.person_upn
    ));
    operator.note(&format!("expires at {} unless confirmed", begun.expires_at));
    for slot in &begun.slots {
        operator.note(&format!(
            "plan: slot {} {} PIN {} touch {} -> certificate profile {}",
            slot.slot, slot.algorithm, slot.pin_policy, slot.touch_policy, slot.certificate_profile
        ));
    }

    let enrollment_id = begun.enrollment_id.clone();
    let expires_at = begun.expires_at.clone();
    match after_begin(server, operator, &mut token, &info, begun, &new_pin).await {
        Ok(enrolled) => Ok(enrolled),
        Err(failure) => {
            let failure = name_a_pulled_token(failure, &token);
            let aftermath = abort(server, operator, &enrollment_id, &expires_at, &failure).await;
            Err(StationError::EnrollmentFailed {
                failure: Box::new(failure),
                aftermath,
            })
        }
    }
}

/// Steps 3–5 of the protocol; any error here makes the caller abort the enrollment.
async fn after_begin(
    server: &mut ServerConnection,
    operator: &mut dyn Operator,
    token: &mut PivToken,
    info: &TokenInfo,
    mut begun: pb::BeginEnrollmentResponse,
    new_pin: &Secret,
) -> Result<Enrolled, StationError> {
    let plan = begun
        .slots
        .iter()
        .map(PlannedKey::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(StationError::ServerAnswer)?;
    if plan.is_empty() {
        return Err(StationError::ServerAnswer("the slot plan is empty".into()));
    }
    let new_key = begun
        .new_management_key
        .as_mut()
        .map(management_key)
        .transpose()?
        .ok_or_else(|| StationError::ServerAnswer("no new management key".into()))?;
    let current_key = begun
        .current_management_key
        .as_mut()
        .map(management_key)
        .transpose()?;
    let new_puk = Secret::new(std::mem::take(&mut begun.new_puk).into_bytes());
    if !(6..=8).contains(&new_puk.expose().len()) {
        return Err(StationError::ServerAnswer(
            "the new PUK is not 6 to 8 characters".into(),
        ));
    }
    let enrollment_id = begun.enrollment_id.clone();
    let serial = info.serial;

    let working_pin = prepare_token(
        operator,
        token,
        info,
        current_key.as_ref(),
        &new_key,
        &new_puk,
        new_pin,
    )?;

    let mut attestations = Vec::new();
    for key in &plan {
        let slot = slot_name(key.slot);
        operator.step(&format!(
            "generate the key in slot {slot} ({:?}, PIN policy {:?}, touch policy {:?})",
            key.algorithm, key.pin_policy, key.touch_policy
        ));
        token
            .generate(key.slot, key.algorithm, key.pin_policy, key.touch_policy)
            .map_err(StationError::card(format!(
                "generate the key in slot {slot}"
            )))?;
        operator.step(&format!(
            "attest slot {slot} (the token signs a certificate for the new key)"
        ));
        let attestation = token
            .attest(key.slot)
            .map_err(StationError::card(format!("attest slot {slot}")))?;
        attestations.push(attestation);
    }
    operator.step("read the attestation intermediate (slot F9 certificate, object 5FFF01)");
    let intermediate = token
        .attestation_certificate()
        .map_err(StationError::card("read the attestation intermediate"))?;

    operator.step("verify the PIN");
    token
        .verify_pin(&working_pin)
        .map_err(StationError::card("verify the PIN"))?;

    let mut proofs = Vec::new();
    for (key, attestation) in plan.iter().zip(attestations) {
        let slot = slot_name(key.slot);
        operator.step(&format!("sign the proof of possession with slot {slot}"));
        if key.pin_policy == yubikey::PinPolicy::Always {
            token
                .verify_pin(&working_pin)
                .map_err(StationError::card("verify the PIN"))?;
        }
        let input = key.signature_input(&proof_message(&enrollment_id, &slot, &begun.nonce));
        let signature = if key.needs_touch() {
            operator.note("touch the YubiKey now (it blinks)");
            token.sign_with_touch(key.slot, key.algorithm, &input)
        } else {
            token.sign(key.slot, key.algorithm, &input)
        }
        .map_err(StationError::card(format!(
            "sign the proof with slot {slot}"
        )))?;
        proofs.push(pb::EnrollmentProof {
            slot,
            attestation_certificate: attestation,
            signature,
        });
    }

    operator.step("complete enrollment (CompleteEnrollment): the server checks attestations and proofs, then its HSM signs");
    let completed = server
        .enrollment
        .complete_enrollment(pb::CompleteEnrollmentRequest {
            request_id: request_id(),
            enrollment_id: enrollment_id.clone(),
            attestation_intermediate: intermediate,
            proofs,
        })
        .await
        .map_err(|s| ServerError::from_status("CompleteEnrollment", &s))?
        .into_inner();
    for issued in &completed.certificates {
        if let Some(c) = &issued.certificate {
            operator.note(&format!(
                "slot {}: certificate {} ({}), valid until {}",
                issued.slot, c.serial, c.profile, c.not_after
            ));
        }
    }

    operator.step("write the certificates to the token");
    token.authenticate(&new_key).map_err(StationError::card(
        "authenticate with the new management key",
    ))?;
    for issued in &completed.certificates {
        let slot =
            super::slot_plan::parse_slot(&issued.slot).map_err(StationError::ServerAnswer)?;
        let der = issued
            .certificate
            .as_ref()
            .map(|c| c.der.as_slice())
            .filter(|der| !der.is_empty())
            .ok_or_else(|| {
                StationError::ServerAnswer(format!("no certificate for slot {}", issued.slot))
            })?;
        token
            .write_certificate(slot, der)
            .map_err(StationError::card(format!(
                "write the certificate of slot {}",
                issued.slot
            )))?;
    }
    token
        .write_new_chuid()
        .map_err(StationError::card("write a new CHUID"))?;

    operator.step("set the person's PIN");
    if working_pin.matches(new_pin) {
        operator.note("the token already has the person's PIN");
    } else {
        token
            .change_pin(&working_pin, new_pin)
            .map_err(StationError::card("set the PIN"))?;
    }

    operator.step("confirm enrollment (ConfirmEnrollment)");
    let confirmed = server
        .enrollment
        .confirm_enrollment(pb::ConfirmEnrollmentRequest {
            request_id: request_id(),
            enrollment_id: enrollment_id.clone(),
        })
        .await
        .map_err(|s| ServerError::from_status("ConfirmEnrollment", &s))?
        .into_inner();
    if let Some(t) = &confirmed.token {
        operator.note(&format!(
            "token {} is {}",
            t.serial,
            pb::TokenState::try_from(t.state)
                .map(|s| s.as_str_name())
                .unwrap_or("in an unknown state")
        ));
    }
    Ok(Enrolled {
        enrollment_id,
        token_serial: serial.to_string(),
        certificates: completed.certificates,
        token: confirmed.token,
    })
}

/// How the station got in with a management key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// The factory key; PIN and PUK are the factory values too (metadata, or a reset).
    Factory,
    /// The key the server holds for this token; PIN and PUK are the factory values.
    ServerCurrent,
    /// The new key of this enrollment is already on the token: an earlier attempt with the
    /// same credentials (the server hands them out again) was interrupted after setting it.
    Resumed,
}

/// Step 3 up to the keys: authenticates (or resets after confirmation), sets the new management
/// key and PUK; returns the PIN that now opens the token (factory, or the person's new PIN when
/// an interrupted attempt had already changed it).
#[allow(clippy::too_many_arguments)]
fn prepare_token(
    operator: &mut dyn Operator,
    token: &mut PivToken,
    info: &TokenInfo,
    current_key: Option<&ManagementKey>,
    new_key: &ManagementKey,
    new_puk: &Secret,
    new_pin: &Secret,
) -> Result<Secret, StationError> {
    operator.step("authenticate to the token with its management key");
    let mut info = info.clone();
    let access = match choose_access(operator, token, &info, current_key, new_key)? {
        Ok(access) => access,
        Err(why_reset) => {
            reset_after_confirmation(operator, token, &info, &why_reset)?;
            info = token
                .info()
                .map_err(StationError::card("read the token after the reset"))?;
            // A reset restores the factory PIN, PUK and management key, whether or not the
            // firmware can say so (GET METADATA needs 5.3).
            info.pin_is_default = Some(true);
            info.puk_is_default = Some(true);
            info.management_key_is_default = Some(true);
            let factory_key = factory_management_key(token);
            token
                .authenticate(&factory_key)
                .map_err(StationError::card(
                    "authenticate with the factory management key",
                ))?;
            Access::Factory
        }
    };

    if access == Access::Resumed {
        operator.note("the token already has this enrollment's management key (an interrupted attempt set it)");
    } else {
        operator.step(&format!(
            "set the new management key ({}, from the server, which keeps it wrapped by its HSM; not shown)",
            algorithm_name(new_key.algorithm)
        ));
        token
            .set_management_key(new_key)
            .map_err(StationError::card("set the management key"))?;
        token.authenticate(new_key).map_err(StationError::card(
            "authenticate with the new management key",
        ))?;
    }

    operator.step("set the new PUK (escrowed by the server; not shown)");
    if info.puk_is_default == Some(true) {
        token
            .change_puk(&Secret::new(FACTORY_PUK.to_vec()), new_puk)
            .map_err(StationError::card("set the PUK"))?;
    } else {
        // Only reached when resuming: the interrupted attempt set this same PUK. A wrong one
        // costs a try, which the error reports.
        operator.note(&format!(
            "the PUK was already changed by the interrupted attempt; checking it is this enrollment's PUK ({} tries left)",
            info.puk_tries_left.map_or("unknown".to_string(), |n| n.to_string())
        ));
        token
            .change_puk(new_puk, new_puk)
            .map_err(StationError::card("check the PUK"))?;
    }

    if info.pin_is_default == Some(true) {
        Ok(Secret::new(FACTORY_PIN.to_vec()))
    } else {
        operator.note("the PIN was already changed by the interrupted attempt; setting the person's PIN with the PUK");
        token
            .unblock_pin(new_puk, new_pin)
            .map_err(StationError::card("set the PIN with the PUK"))?;
        Ok(new_pin.clone())
    }
}

/// Which management key to use, without guessing: `Err(why)` when the token must be reset.
fn choose_access(
    operator: &mut dyn Operator,
    token: &mut PivToken,
    info: &TokenInfo,
    current_key: Option<&ManagementKey>,
    new_key: &ManagementKey,
) -> Result<Result<Access, String>, StationError> {
    if info.is_factory_fresh() {
        operator.note("factory management key: the token's metadata says PIN, PUK and management key are the factory defaults");
        token
            .authenticate(&factory_management_key(token))
            .map_err(StationError::card(
                "authenticate with the factory management key",
            ))?;
        return Ok(Ok(Access::Factory));
    }
    if info.management_key_is_default.is_none() {
        return Ok(Err(format!(
            "firmware {} cannot say whether its PIN, PUK and management key are the factory defaults \
             (no GET METADATA before 5.3), and the station never tries a secret nobody gave",
            info.firmware
        )));
    }
    let pin_and_puk_default =
        info.pin_is_default == Some(true) && info.puk_is_default == Some(true);
    if info.management_key_is_default == Some(true) {
        return Ok(Err(format!(
            "the token is not factory-fresh (PIN {}, PUK {}) and Tessera does not know its PIN and PUK",
            changed(info.pin_is_default),
            changed(info.puk_is_default)
        )));
    }
    if let Some(key) = current_key {
        match token.authenticate(key) {
            Ok(()) if pin_and_puk_default => {
                operator.note("the management key the server holds for this token (PIN and PUK are the factory defaults)");
                return Ok(Ok(Access::ServerCurrent));
            }
            Ok(()) => {
                return Ok(Err(format!(
                    "the token is enrolled (PIN {}, PUK {}); re-enrolling it starts from a reset",
                    changed(info.pin_is_default),
                    changed(info.puk_is_default)
                )));
            }
            Err(PivError::ManagementKeyRefused) => {
                operator.note("the token refused the management key the server holds for it");
            }
            Err(other) => {
                return Err(StationError::Card {
                    step: "authenticate with the server's management key".into(),
                    source: other,
                });
            }
        }
    }
    match token.authenticate(new_key) {
        Ok(()) => Ok(Ok(Access::Resumed)),
        Err(PivError::ManagementKeyRefused) => Ok(Err(
            "its management key is neither the factory key nor one the server sent for it"
                .to_string(),
        )),
        Err(other) => Err(StationError::Card {
            step: "authenticate with this enrollment's management key".into(),
            source: other,
        }),
    }
}

fn changed(default: Option<bool>) -> &'static str {
    if default == Some(true) {
        "default"
    } else {
        "changed"
    }
}

fn factory_management_key(token: &PivToken) -> ManagementKey {
    ManagementKey {
        algorithm: default_management_algorithm(token.firmware()),
        key: Secret::new(FACTORY_MANAGEMENT_KEY.to_vec()),
    }
}

/// Resets the token once the operator agreed; reopens it and checks it is the same token.
fn reset_after_confirmation(
    operator: &mut dyn Operator,
    token: &mut PivToken,
    info: &TokenInfo,
    why: &str,
) -> Result<(), StationError> {
    operator.note(&format!("the token must be reset: {why}"));
    if !operator.confirm(&format!(
        "Reset token {}? This erases every key and certificate on it (a reset first blocks its PIN and PUK, as the card requires).",
        info.serial
    ))? {
        return Err(StationError::ResetNotConfirmed);
    }
    operator.step("reset the token's PIV application");
    token
        .reset()
        .map_err(StationError::card("reset the token"))?;
    token
        .reconnect()
        .map_err(StationError::card("reconnect to the token after the reset"))?;
    operator.note("the token is back to its factory state");
    Ok(())
}

/// A card error while no token answers in the reader any more is named as the token leaving
/// the reader: a command cut short answers no status word, and the driver then reports a
/// generic error or (during authentication) a refused key, which would mislead the operator.
pub(super) fn name_a_pulled_token(failure: StationError, token: &PivToken) -> StationError {
    match failure {
        StationError::Card {
            step,
            source: PivError::Card { .. } | PivError::ManagementKeyRefused,
        } if !token.still_present() => StationError::CardGone { step },
        other => other,
    }
}

/// Aborts the enrollment after `failure`; returns what the operator should know.
async fn abort(
    server: &mut ServerConnection,
    operator: &mut dyn Operator,
    enrollment_id: &str,
    expires_at: &str,
    failure: &StationError,
) -> String {
    operator.step(&format!(
        "abort enrollment {enrollment_id} (AbortEnrollment)"
    ));
    let request = pb::AbortEnrollmentRequest {
        request_id: request_id(),
        enrollment_id: enrollment_id.into(),
        reason: format!("station: {failure}"),
    };
    match server.enrollment.abort_enrollment(request).await {
        Ok(response) => {
            let issued = response
                .into_inner()
                .enrollment
                .map(|e| e.certificates.len())
                .unwrap_or(0);
            format!(
                "enrollment {enrollment_id} was aborted on the server ({issued} certificate(s) issued for it are revoked); \
                 fix the cause and run the same command again (it asks before resetting a token that is no longer factory-fresh)"
            )
        }
        Err(status) => format!(
            "enrollment {enrollment_id} could not be aborted ({}); it expires at {expires_at} and its certificates are then revoked",
            ServerError::from_status("AbortEnrollment", &status)
        ),
    }
}

/// The serial, firmware and counters as the operator sees them.
pub fn describe_token(operator: &mut dyn Operator, info: &TokenInfo) {
    let default = |d: Option<bool>| match d {
        Some(true) => "factory default",
        Some(false) => "changed",
        None => "unknown (firmware without GET METADATA)",
    };
    operator.note(&format!("reader: {}", info.reader));
    operator.note(&format!(
        "serial {}, firmware {}",
        info.serial, info.firmware
    ));
    operator.note(&format!(
        "PIN: {} tries left ({})",
        info.pin_tries_left,
        default(info.pin_is_default)
    ));
    operator.note(&format!(
        "PUK: {} ({})",
        info.puk_tries_left
            .map_or("tries left unknown".to_string(), |n| format!(
                "{n} tries left"
            )),
        default(info.puk_is_default)
    ));
    operator.note(&format!(
        "management key: {}{}",
        default(info.management_key_is_default),
        info.management_key_algorithm
            .as_deref()
            .map(|a| format!(", {}", readable_algorithm(a)))
            .unwrap_or_default()
    ));
}

/// "Management(Aes192)" (the driver's name) as "AES-192".
fn readable_algorithm(driver_name: &str) -> &str {
    for (needle, name) in [
        ("Aes128", "AES-128"),
        ("Aes192", "AES-192"),
        ("Aes256", "AES-256"),
        ("ThreeDes", "3DES"),
    ] {
        if driver_name.contains(needle) {
            return name;
        }
    }
    driver_name
}

/// A management key from the server, moved into zeroizing memory.
pub(super) fn management_key(key: &mut pb::ManagementKey) -> Result<ManagementKey, StationError> {
    let algorithm = match pb::ManagementKeyAlgorithm::try_from(key.algorithm) {
        Ok(pb::ManagementKeyAlgorithm::TripleDes) => MgmAlgorithmId::ThreeDes,
        Ok(pb::ManagementKeyAlgorithm::Aes128) => MgmAlgorithmId::Aes128,
        Ok(pb::ManagementKeyAlgorithm::Aes192) => MgmAlgorithmId::Aes192,
        Ok(pb::ManagementKeyAlgorithm::Aes256) => MgmAlgorithmId::Aes256,
        _ => {
            return Err(StationError::ServerAnswer(format!(
                "unknown management key algorithm {}",
                key.algorithm
            )));
        }
    };
    Ok(ManagementKey {
        algorithm,
        key: Secret::new(std::mem::take(&mut key.key)),
    })
}

fn algorithm_name(algorithm: MgmAlgorithmId) -> &'static str {
    match algorithm {
        MgmAlgorithmId::ThreeDes => "3DES",
        MgmAlgorithmId::Aes128 => "AES-128",
        MgmAlgorithmId::Aes192 => "AES-192",
        MgmAlgorithmId::Aes256 => "AES-256",
    }
}

/// The certificate stored in a slot, if any, with its serial as the server writes it.
pub fn certificate_on_token(
    token: &mut PivToken,
    slot: SlotId,
) -> Result<Option<(String, String)>, PivError> {
    use x509_cert::der::Decode as _;
    Ok(token.read_certificate(slot)?.and_then(|der| {
        let cert = x509_cert::Certificate::from_der(&der).ok()?;
        let serial = hex::encode(cert.tbs_certificate().serial_number().as_bytes());
        let subject = cert.tbs_certificate().subject().to_string();
        Some((serial, subject))
    }))
}
