//! The help desk's other jobs on an enrolled token: unblock a forgotten PIN with the escrowed
//! PUK, replace a lost token, retire (revoke and wipe), and show what Tessera knows.
use super::enrollment::{EnrollRequest, Enrolled, certificate_on_token, describe_token, enroll};
use super::{Operator, ServerConnection, ServerError, StationError, request_id};
use crate::piv::{PivToken, Secret};
use crate::protocol::pb;
use yubikey::piv::SlotId;

/// `unblock`: ReleasePuk (with the operator's reason) → unblock the PIN with the PUK (never
/// shown) → the person's new PIN. Under dual control the server answers
/// PUK_RELEASE_PENDING_APPROVAL with the release id until a second operator approved it
/// ([`approve_puk_release`]); the operator then runs `unblock` again.
pub async fn unblock(
    server: &mut ServerConnection,
    operator: &mut dyn Operator,
    reader: Option<&str>,
    reason: &str,
) -> Result<(), StationError> {
    operator.step("read the token (serial, retry counters; no secret is tried)");
    let mut token = PivToken::open(reader).map_err(StationError::card("read the token"))?;
    let info = token.info().map_err(StationError::card("read the token"))?;
    describe_token(operator, &info);
    if info.puk_tries_left == Some(0) {
        return Err(StationError::PukBlocked);
    }

    operator.step("the person's new PIN");
    let new_pin = operator.new_pin()?;

    operator.step(&format!(
        "fetch the escrowed PUK of token {} (ReleasePuk; audited, not shown)",
        info.serial
    ));
    let mut released = server
        .enrollment
        .release_puk(pb::ReleasePukRequest {
            request_id: request_id(),
            token_serial: info.serial.to_string(),
            reason: reason.to_string(),
        })
        .await
        .map_err(|s| ServerError::from_status("ReleasePuk", &s))?
        .into_inner();
    let puk = Secret::new(std::mem::take(&mut released.puk).into_bytes());
    if let Some(key) = released.management_key.as_mut() {
        key.key.iter_mut().for_each(|b| *b = 0);
    }

    operator.step("unblock the PIN with the PUK and set the new PIN");
    token
        .unblock_pin(&puk, &new_pin)
        .map_err(StationError::card("unblock the PIN"))?;
    let after = token
        .info()
        .map_err(StationError::card("read the retry counters"))?;
    operator.note(&format!("PIN set; {} tries left", after.pin_tries_left));
    Ok(())
}

/// `approve-puk-release`: the second operator approves another operator's pending PUK release
/// (ApprovePukRelease); no token is needed in the reader.
pub async fn approve_puk_release(
    server: &mut ServerConnection,
    operator: &mut dyn Operator,
    release_id: &str,
    token_serial: &str,
    reason: &str,
) -> Result<pb::PukRelease, StationError> {
    operator.step(&format!(
        "approve PUK release {release_id} of token {token_serial} (ApprovePukRelease; audited)"
    ));
    let approved = server
        .enrollment
        .approve_puk_release(pb::ApprovePukReleaseRequest {
            request_id: request_id(),
            release_id: release_id.trim().to_string(),
            token_serial: token_serial.trim().to_string(),
            reason: reason.to_string(),
        })
        .await
        .map_err(|s| ServerError::from_status("ApprovePukRelease", &s))?
        .into_inner();
    approved.release.ok_or_else(|| {
        StationError::Server(ServerError {
            rpc: "ApprovePukRelease",
            code: tonic::Code::Internal,
            reason: "(no release in the answer)".into(),
            message: "the server answered without the release".into(),
        })
    })
}

/// `replace`: the old token is marked lost (its certificates revoked), then the token in the
/// reader is enrolled.
pub async fn replace(
    server: &mut ServerConnection,
    operator: &mut dyn Operator,
    reader: Option<&str>,
    old_serial: &str,
    request: &EnrollRequest,
) -> Result<Enrolled, StationError> {
    operator.step("read the new token");
    let serial = PivToken::open(reader)
        .map_err(StationError::card("read the token"))?
        .serial();
    if serial.to_string() == old_serial.trim() {
        return Err(StationError::ReplacementIsOldToken(serial.to_string()));
    }
    operator.note(&format!("new token {serial}"));
    operator.step(&format!(
        "mark the old token {old_serial} lost (MarkTokenLost; its certificates are revoked)"
    ));
    let lost = server
        .tokens
        .mark_token_lost(pb::MarkTokenLostRequest {
            request_id: request_id(),
            serial: old_serial.trim().into(),
            reason: format!("replaced by token {serial} at the help desk"),
        })
        .await
        .map_err(|s| ServerError::from_status("MarkTokenLost", &s))?
        .into_inner();
    if let Some(t) = lost.token {
        operator.note(&format!("token {} is {}", t.serial, state_name(t.state)));
    }
    enroll(server, operator, reader, request).await
}

/// `retire`: RetireToken (revokes its certificates), then the token is wiped (PIV reset),
/// both only after the operator confirmed.
pub async fn retire(
    server: &mut ServerConnection,
    operator: &mut dyn Operator,
    reader: Option<&str>,
) -> Result<(), StationError> {
    operator.step("read the token");
    let mut token = PivToken::open(reader).map_err(StationError::card("read the token"))?;
    let info = token.info().map_err(StationError::card("read the token"))?;
    describe_token(operator, &info);
    if !operator.confirm(&format!(
        "Retire token {}? Its certificates are revoked and the token is wiped (a reset first blocks its PIN and PUK, as the card requires).",
        info.serial
    ))? {
        return Err(StationError::ResetNotConfirmed);
    }
    operator.step(&format!(
        "retire token {} (RetireToken; its certificates are revoked)",
        info.serial
    ));
    let retired = server
        .tokens
        .retire_token(pb::RetireTokenRequest {
            request_id: request_id(),
            serial: info.serial.to_string(),
            reason: "retired at the help desk (tessera station retire)".into(),
        })
        .await
        .map_err(|s| ServerError::from_status("RetireToken", &s))?
        .into_inner();
    if let Some(t) = retired.token {
        operator.note(&format!("token {} is {}", t.serial, state_name(t.state)));
    }
    operator.step("wipe the token (PIV reset)");
    token
        .reset()
        .map_err(StationError::card("reset the token"))?;
    operator.note("the token is back to factory state; it can be enrolled again or handed out");
    Ok(())
}

/// `status`: the token as it is and as the server knows it.
pub async fn status(
    server: &mut ServerConnection,
    operator: &mut dyn Operator,
    reader: Option<&str>,
) -> Result<(), StationError> {
    operator.step("the token in the reader");
    let mut token = PivToken::open(reader).map_err(StationError::card("read the token"))?;
    let info = token.info().map_err(StationError::card("read the token"))?;
    describe_token(operator, &info);
    let mut on_token = Vec::new();
    for (slot, name) in [
        (SlotId::Authentication, "9a"),
        (SlotId::Signature, "9c"),
        (SlotId::KeyManagement, "9d"),
        (SlotId::CardAuthentication, "9e"),
    ] {
        if let Some((serial, subject)) = certificate_on_token(&mut token, slot).map_err(
            StationError::card(format!("read the certificate of slot {name}")),
        )? {
            operator.note(&format!(
                "slot {name}: certificate {serial}, subject {subject}"
            ));
            on_token.push(serial);
        }
    }
    if on_token.is_empty() {
        operator.note("no certificate in slots 9a, 9c, 9d, 9e");
    }

    let serial = info.serial.to_string();
    operator.step("what the server knows (GetToken, ListCertificates)");
    match server.token(&serial).await? {
        None => {
            operator.note(&format!("the server has no record of token {serial}"));
            return Ok(());
        }
        Some(t) => {
            operator.note(&format!(
                "token {} is {}{}, firmware {}, since {}",
                t.serial,
                state_name(t.state),
                if t.person_external_id.is_empty() {
                    String::new()
                } else {
                    format!(", held by person {}", t.person_external_id)
                },
                t.firmware,
                t.updated_at
            ));
        }
    }
    for c in server.certificates_of_token(&serial).await? {
        let here = if on_token.iter().any(|s| same_serial(s, &c.serial)) {
            ", on the token"
        } else {
            ""
        };
        operator.note(&format!(
            "certificate {} ({}): {}{}, valid until {}{here}",
            c.serial,
            c.profile,
            pb::CertificateStatus::try_from(c.status)
                .map(|s| s.as_str_name())
                .unwrap_or("UNKNOWN"),
            if c.revoked_at.is_empty() {
                String::new()
            } else {
                format!(" since {}", c.revoked_at)
            },
            c.not_after
        ));
    }
    Ok(())
}

fn state_name(state: i32) -> &'static str {
    pb::TokenState::try_from(state)
        .map(|s| s.as_str_name())
        .unwrap_or("in an unknown state")
}

/// Hex serials compared without leading zero bytes (DER adds one to keep an integer positive).
fn same_serial(a: &str, b: &str) -> bool {
    a.trim_start_matches('0')
        .eq_ignore_ascii_case(b.trim_start_matches('0'))
}
