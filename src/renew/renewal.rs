//! `tessera renew` step by step, each step printed before it happens: the token in the reader
//! authenticates to the `[self_service]` port with its own 9a certificate and key (the TLS
//! signature made on the card after the PIN), asks what it holds (GetMyToken), begins a renewal
//! of its own slots (BeginRenewal), generates the new keys in the same slots (with the token's
//! current management key, which is not changed), attests them and signs the renewal's nonce
//! with each (a touch prompt before the keys whose touch policy needs one), has them certified
//! (CompleteRenewal), writes the certificates, and confirms (ConfirmRenewal), which supersedes
//! the old certificates. The whole renewal runs over one connection: the old 9a key that
//! authenticated it is replaced on the card midway. Any failure after BeginRenewal calls
//! AbortRenewal, so the new certificates are revoked and the old ones stay good. PIN, PUK and
//! management key are never changed; no secret is printed.
use super::connection::{ConnectError, client_config, connect};
use crate::piv::{CardTlsKey, ManagementKey, PivError, PivToken, Secret, TouchPrompt};
use crate::protocol::pb;
use crate::protocol::pb::self_service_client::SelfServiceClient;
use crate::station::ServerError;
use crate::station::slot_plan::{PlannedKey, parse_slot, slot_name};
use std::path::PathBuf;
use std::sync::Arc;
use tonic::transport::Channel;
use yubikey::MgmAlgorithmId;
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
    /// A 0600 file holding the PIN (tests, scripts); otherwise asked on the terminal.
    pub pin_file: Option<PathBuf>,
}

/// Everything that can stop a renewal; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("{step}: {source}")]
    Card {
        step: String,
        #[source]
        source: PivError,
    },
    #[error(transparent)]
    Pin(#[from] crate::station::StationError),
    #[error("cannot read the server CA certificate {path}: {source}")]
    ServerCa {
        path: PathBuf,
        source: std::io::Error,
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
    move |source| RenewError::Card {
        step: step.to_string(),
        source,
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

/// Runs the renewal; `say` prints each step (stdout in the CLI).
pub async fn renew(
    settings: &RenewSettings,
    say: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<Renewed, RenewError> {
    say("open the token");
    let token = PivToken::open(settings.reader.as_deref()).map_err(card("open the token"))?;
    let serial = token.serial().to_string();
    say(&format!("token {serial} in {}", token.reader()));
    let pin = crate::station::operator::current_pin(settings.pin_file.as_deref())?;
    let touch_say = say.clone();
    let touch: TouchPrompt = Arc::new(move |slot: &str| {
        touch_say(&format!(
            "touch your YubiKey now (slot {slot} needs a touch; it blinks)"
        ));
    });
    say("verify the PIN and read the 9a certificate");
    let key = Arc::new(
        CardTlsKey::open(token, SlotId::Authentication, pin.clone(), touch.clone())
            .map_err(card("read the 9a key and certificate"))?,
    );
    let server_ca = std::fs::read(&settings.server_ca).map_err(|source| RenewError::ServerCa {
        path: settings.server_ca.clone(),
        source,
    })?;
    say(&format!(
        "connect to {} with the token's own certificate (signed on the token)",
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
        .map_err(|s| ServerError::from_status("GetMyToken", &s))?
        .into_inner();
    for slot in &mine.slots {
        if let Some(c) = &slot.certificate {
            say(&format!(
                "slot {}: certificate {} expires {}; renewal {} {}",
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
    say("begin the renewal");
    let begin = client
        .begin_renewal(pb::BeginMyRenewalRequest {
            request_id: request_id(),
            token_serial: serial.clone(),
            slots: settings.slots.clone(),
            reason: "self-service renewal (tessera renew)".into(),
        })
        .await
        .map_err(|s| ServerError::from_status("BeginRenewal", &s))?
        .into_inner();
    match renew_begun(&mut client, &key, &pin, &touch, &begin, &say).await {
        Ok((certificates, superseded)) => Ok(Renewed {
            token_serial: serial,
            certificates,
            superseded,
        }),
        Err(failure) => {
            let aftermath = match client
                .abort_renewal(pb::AbortEnrollmentRequest {
                    request_id: request_id(),
                    enrollment_id: begin.enrollment_id.clone(),
                    reason: format!("tessera renew failed: {failure}"),
                })
                .await
            {
                Ok(_) => format!(
                    "renewal {} aborted: its new certificates are revoked, the old ones stay good until they expire (renew at the help desk if the old key is gone from the token)",
                    begin.enrollment_id
                ),
                Err(s) => format!(
                    "and aborting renewal {} failed too ({}); it expires by itself",
                    begin.enrollment_id,
                    ServerError::from_status("AbortRenewal", &s)
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

async fn renew_begun(
    client: &mut SelfServiceClient<Channel>,
    key: &CardTlsKey,
    pin: &Secret,
    touch: &TouchPrompt,
    begin: &pb::BeginRenewalResponse,
    say: &Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<(SlotCertificates, Vec<String>), RenewError> {
    let planned: Vec<PlannedKey> = begin
        .slots
        .iter()
        .map(PlannedKey::parse)
        .collect::<Result<_, _>>()
        .map_err(RenewError::ServerAnswer)?;
    let management_key = management_key(begin.current_management_key.as_ref())?;
    // Keys, attestations and the proofs on the card (one handle: the TLS key's).
    let (intermediate, proofs) = key.with_token(|token| {
        token
            .authenticate(&management_key)
            .map_err(card("authenticate with the token's management key"))?;
        let mut attestations = Vec::new();
        for plan in &planned {
            let name = slot_name(plan.slot);
            say(&format!(
                "generate a new {:?} key in slot {name} (the old certificate stays good until confirmed)",
                plan.algorithm
            ));
            token
                .generate(plan.slot, plan.algorithm, plan.pin_policy, plan.touch_policy)
                .map_err(card("generate the new key"))?;
            attestations.push(token.attest(plan.slot).map_err(card("attest the new key"))?);
        }
        let intermediate = token
            .attestation_certificate()
            .map_err(card("read the attestation certificate (5FFF01)"))?;
        let mut proofs = Vec::new();
        for (plan, attestation) in planned.iter().zip(attestations) {
            let name = slot_name(plan.slot);
            say(&format!("prove the new key in slot {name}"));
            token.verify_pin(pin).map_err(card("verify the PIN"))?;
            let message = crate::protocol::proof_message(&begin.enrollment_id, &name, &begin.nonce);
            let input = plan.signature_input(&message);
            let signature = if plan.needs_touch() {
                touch(&name);
                token.sign_with_touch(plan.slot, plan.algorithm, &input)
            } else {
                token.sign(plan.slot, plan.algorithm, &input)
            }
            .map_err(card("sign the proof"))?;
            proofs.push(pb::EnrollmentProof {
                slot: name,
                attestation_certificate: attestation,
                signature,
            });
        }
        Ok::<_, RenewError>((intermediate, proofs))
    })?;
    say("have the new keys certified");
    let completed = client
        .complete_renewal(pb::CompleteEnrollmentRequest {
            request_id: request_id(),
            enrollment_id: begin.enrollment_id.clone(),
            attestation_intermediate: intermediate,
            proofs,
        })
        .await
        .map_err(|s| ServerError::from_status("CompleteRenewal", &s))?
        .into_inner();
    let mut certificates = Vec::new();
    key.with_token(|token| {
        token
            .authenticate(&management_key)
            .map_err(card("authenticate with the token's management key"))?;
        for issued in &completed.certificates {
            let certificate = issued
                .certificate
                .as_ref()
                .ok_or_else(|| RenewError::ServerAnswer("a slot without its certificate".into()))?;
            let slot: SlotId = parse_slot(&issued.slot).map_err(RenewError::ServerAnswer)?;
            say(&format!(
                "write certificate {} to slot {}",
                certificate.serial, issued.slot
            ));
            token
                .write_certificate(slot, &certificate.der)
                .map_err(card("write the new certificate"))?;
            certificates.push((
                issued.slot.clone(),
                certificate.serial.clone(),
                certificate.not_after.clone(),
            ));
        }
        Ok::<_, RenewError>(())
    })?;
    say("confirm the renewal (the old certificates are revoked as superseded)");
    client
        .confirm_renewal(pb::ConfirmEnrollmentRequest {
            request_id: request_id(),
            enrollment_id: begin.enrollment_id.clone(),
        })
        .await
        .map_err(|s| ServerError::from_status("ConfirmRenewal", &s))?;
    let superseded = begin
        .superseded
        .iter()
        .filter_map(|s| s.certificate.as_ref().map(|c| c.serial.clone()))
        .collect();
    Ok((certificates, superseded))
}

fn management_key(k: Option<&pb::ManagementKey>) -> Result<ManagementKey, RenewError> {
    let k =
        k.ok_or_else(|| RenewError::ServerAnswer("BeginRenewal sent no management key".into()))?;
    let algorithm = match pb::ManagementKeyAlgorithm::try_from(k.algorithm) {
        Ok(pb::ManagementKeyAlgorithm::TripleDes) => MgmAlgorithmId::ThreeDes,
        Ok(pb::ManagementKeyAlgorithm::Aes128) => MgmAlgorithmId::Aes128,
        Ok(pb::ManagementKeyAlgorithm::Aes192) => MgmAlgorithmId::Aes192,
        Ok(pb::ManagementKeyAlgorithm::Aes256) => MgmAlgorithmId::Aes256,
        _ => {
            return Err(RenewError::ServerAnswer(
                "the management key's algorithm is not one the token knows".into(),
            ));
        }
    };
    Ok(ManagementKey {
        algorithm,
        key: Secret::new(k.key.clone()),
    })
}
