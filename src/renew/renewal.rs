//! `tessera renew` step by step, each step printed before it happens: the token in the reader
//! authenticates to the `[self_service]` port with its own 9a certificate and key (the TLS
//! signature made on the card after the PIN), asks what it holds (GetMyToken), begins a renewal
//! of its own slots (BeginRenewal), generates the new keys in the same slots (with the token's
//! current management key, which is not changed), attests them and signs the renewal's nonce
//! with each (a touch prompt before the keys whose touch policy needs one), has them certified
//! (CompleteRenewal), writes the certificates, and confirms (ConfirmRenewal), which supersedes
//! the old certificates. The card steps are the help-desk station's (`station::renewal`:
//! `generate_and_prove`, `write_certificates`); only the RPCs differ. The whole renewal runs
//! over one connection: the old 9a key that
//! authenticated it is replaced on the card midway. Any failure after BeginRenewal calls
//! AbortRenewal, so the new certificates are revoked and the old ones stay good. PIN, PUK and
//! management key are never changed; no secret is printed.
use super::connection::{ConnectError, client_config, connect};
use crate::piv::{CardTlsKey, PivError, PivToken, Secret, TouchPrompt};
use crate::protocol::pb;
use crate::protocol::pb::self_service_client::SelfServiceClient;
use crate::station::renewal::{generate_and_prove, renewal_plan, write_certificates};
use crate::station::{Operator, ServerError, StationError};
use std::path::PathBuf;
use std::sync::Arc;
use tonic::transport::Channel;
use yubikey::piv::SlotId;

/// What `tessera renew` is told.
#[derive(Debug, Clone)]
pub struct RenewSettings {
    /// `https://HOST:PORT` of the server's `[self_service]` listener.
    pub server: String,
    /// PEM file of the CA that issued the server's TLS certificate.
    pub server_ca: PathBuf,
    /// The name the server's certificate carries, when it is not the URL's host.
    pub server_name: Option<String>,
    /// Part of the PC/SC reader's name, when several tokens are present.
    pub reader: Option<String>,
    /// Slots to renew; empty: every slot the server says holds a good certificate.
    pub slots: Vec<String>,
}

/// Everything that can stop a renewal; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// (The card's error is part of the message, not a source: the CLI prints the chain.)
    #[error("{step}: {error}")]
    Card { step: String, error: PivError },
    #[error(transparent)]
    Station(#[from] StationError),
    #[error("cannot read the server CA certificate {path}: {error}")]
    ServerCa {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{error}{}", card_error.as_deref().map(|e| format!(" (the token: {e})")).unwrap_or_default())]
    Connect {
        error: ConnectError,
        /// What the token said when it could not sign the handshake.
        card_error: Option<String>,
    },
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("the server's answer is not usable: {0}")]
    ServerAnswer(String),
    #[error("{failure}; {aftermath}")]
    RenewalFailed {
        failure: Box<RenewError>,
        aftermath: String,
    },
}

fn card(step: &str) -> impl FnOnce(PivError) -> RenewError + '_ {
    move |error| RenewError::Card {
        step: step.to_string(),
        error,
    }
}

/// What a renewal did.
#[derive(Debug, Clone)]
pub struct Renewed {
    pub token_serial: String,
    /// Each renewed slot, its new certificate's serial and notAfter.
    pub certificates: Vec<(String, String, String)>,
    /// The superseded certificates' serials.
    pub superseded: Vec<String>,
}

/// A fresh request id for one state-changing RPC.
fn request_id() -> String {
    use rand::TryRng as _;
    let mut bytes = [0u8; 16];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random source failed");
    format!("renew-{}", hex::encode(bytes))
}

/// Runs the renewal; `operator` shows each step and gives the PIN (the terminal, or a 0600
/// file).
pub async fn renew(
    settings: &RenewSettings,
    operator: &mut dyn Operator,
) -> Result<Renewed, RenewError> {
    operator.step("read the token (serial; no secret is tried)");
    let token = PivToken::open(settings.reader.as_deref()).map_err(card("read the token"))?;
    let serial = token.serial().to_string();
    operator.note(&format!("token {serial} in {}", token.reader()));
    operator.step("your PIN (it unlocks the token's keys; never shown)");
    let pin = operator.pin()?;
    // The handshake's signature may come while no operator can be borrowed: print directly.
    let touch: TouchPrompt = Arc::new(|slot: &str| {
        use std::io::Write as _;
        println!("     touch your YubiKey now (slot {slot} signs the connection; it blinks)");
        let _ = std::io::stdout().flush();
    });
    operator.step("verify the PIN and read the certificate of slot 9a");
    let key = Arc::new(
        CardTlsKey::open(token, SlotId::Authentication, pin.clone(), touch)
            .map_err(card("read the 9a key and certificate"))?,
    );
    let server_ca = std::fs::read(&settings.server_ca).map_err(|error| RenewError::ServerCa {
        path: settings.server_ca.clone(),
        error,
    })?;
    operator.step(&format!(
        "connect to {} with the token's own certificate (the TLS signature is made on the token)",
        settings.server
    ));
    let config = client_config(&server_ca, key.clone(), Vec::new()).map_err(|error| {
        RenewError::Connect {
            error,
            card_error: None,
        }
    })?;
    let mut client = connect(&settings.server, settings.server_name.as_deref(), config)
        .await
        .map_err(|error| RenewError::Connect {
            error,
            card_error: key.last_error(),
        })?;
    let mine = client
        .get_my_token(pb::GetMyTokenRequest {
            token_serial: serial.clone(),
        })
        .await
        .map_err(|s| ServerError::from_status("SelfService.GetMyToken", &s))?
        .into_inner();
    for slot in &mine.slots {
        if let Some(c) = &slot.certificate {
            operator.note(&format!(
                "slot {}: certificate {} valid until {}; renewal {} {}",
                slot.slot,
                c.serial,
                c.not_after,
                if slot.renewal_open {
                    "open since"
                } else {
                    "opens"
                },
                slot.renewal_opens_at
            ));
        }
    }
    operator.step(&format!(
        "begin the renewal of token {serial} (BeginRenewal)"
    ));
    let begun = client
        .begin_renewal(pb::BeginMyRenewalRequest {
            request_id: request_id(),
            token_serial: serial.clone(),
            slots: settings.slots.clone(),
            reason: "self-service renewal (tessera renew)".into(),
        })
        .await
        .map_err(|s| ServerError::from_status("SelfService.BeginRenewal", &s))?
        .into_inner();
    operator.note(&format!(
        "renewal {} for {}; expires at {} unless confirmed",
        begun.enrollment_id, begun.person_display_name, begun.expires_at
    ));
    match after_begin(&mut client, operator, &key, &pin, &begun).await {
        Ok(certificates) => Ok(Renewed {
            token_serial: serial,
            certificates,
            superseded: begun
                .superseded
                .iter()
                .filter_map(|s| s.certificate.as_ref().map(|c| c.serial.clone()))
                .collect(),
        }),
        Err(failure) => {
            operator.step(&format!(
                "abort renewal {} (AbortRenewal)",
                begun.enrollment_id
            ));
            let aftermath = match client
                .abort_renewal(pb::AbortEnrollmentRequest {
                    request_id: request_id(),
                    enrollment_id: begun.enrollment_id.clone(),
                    reason: format!("tessera renew failed: {failure}"),
                })
                .await
            {
                Ok(_) => format!(
                    "renewal {} aborted: its new certificates are revoked, the old ones stay good (if a new key was already generated, the old key is gone from the token: run `tessera renew` again, or renew at the help desk)",
                    begun.enrollment_id
                ),
                Err(s) => format!(
                    "and aborting renewal {} failed too ({}); it expires at {} by itself",
                    begun.enrollment_id,
                    ServerError::from_status("SelfService.AbortRenewal", &s),
                    begun.expires_at
                ),
            };
            Err(RenewError::RenewalFailed {
                failure: Box::new(failure),
                aftermath,
            })
        }
    }
}

type SlotCertificates = Vec<(String, String, String)>;

/// Everything after BeginRenewal, over the connection the old 9a key opened; any error here
/// makes the caller abort the renewal.
async fn after_begin(
    client: &mut SelfServiceClient<Channel>,
    operator: &mut dyn Operator,
    key: &CardTlsKey,
    pin: &Secret,
    begun: &pb::BeginRenewalResponse,
) -> Result<SlotCertificates, RenewError> {
    let (plan, management_key) = renewal_plan(begun)?;
    let (intermediate, proofs) = key.with_token(|token| {
        generate_and_prove(
            operator,
            token,
            &plan,
            &management_key,
            &begun.enrollment_id,
            &begun.nonce,
            pin,
        )
    })?;
    operator.step("have the new keys certified (CompleteRenewal: attestations, policy, proofs)");
    let completed = client
        .complete_renewal(pb::CompleteEnrollmentRequest {
            request_id: request_id(),
            enrollment_id: begun.enrollment_id.clone(),
            attestation_intermediate: intermediate,
            proofs,
        })
        .await
        .map_err(|s| ServerError::from_status("SelfService.CompleteRenewal", &s))?
        .into_inner();
    key.with_token(|token| {
        write_certificates(operator, token, &management_key, &completed.certificates)
    })?;
    operator.step(
        "confirm the renewal (ConfirmRenewal): the old certificates are revoked as superseded",
    );
    client
        .confirm_renewal(pb::ConfirmEnrollmentRequest {
            request_id: request_id(),
            enrollment_id: begun.enrollment_id.clone(),
        })
        .await
        .map_err(|s| ServerError::from_status("SelfService.ConfirmRenewal", &s))?;
    Ok(completed
        .certificates
        .iter()
        .filter_map(|issued| {
            issued
                .certificate
                .as_ref()
                .map(|c| (issued.slot.clone(), c.serial.clone(), c.not_after.clone()))
        })
        .collect())
}
