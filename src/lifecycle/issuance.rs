//! Issuance as one unit with its record (Boulder's rule), read top to bottom in `issue`:
//! `ca` prepares the exact tbsCertificate; the serial is reserved and those bytes stored (and
//! audited) in one committed transaction *before* the HSM signs; the issuing key signs them on a
//! blocking thread; `ca` assembles the certificate; it is stored and audited in a second
//! transaction. A crash between the two leaves a `reserved` row whose tbsCertificate tells
//! exactly what may have been signed — never a signed certificate the store does not know.
//! Data only flows down: `ca` never calls back into the store.
use super::{CertificateEffect, LifecycleError, RequestKey, RevocationReason, revoke_certificate};
use crate::audit::{self, Actor, Change};
use crate::ca::{
    CaError, IssuanceRequest, KeyProvenance, OnlineCa, PreparedCertificate, SerialNumber,
    SubjectParams,
};
use crate::store::{
    CertificateRow, EnrollmentKind, EnrollmentState, NewCertificate, PersonState, Store, Timestamp,
    TokenState, WriteTx,
};
use sha2::Digest;
use std::sync::Arc;

/// What to certify and for whom.
#[derive(Clone, Debug)]
pub struct IssueParams {
    pub subject: SubjectParams,
    /// SubjectPublicKeyInfo, DER.
    pub public_key_der: Vec<u8>,
    /// A profile name known to the CA's profile set.
    pub profile: String,
    pub provenance: KeyProvenance,
    pub person_id: Option<i64>,
    pub token_id: Option<i64>,
    /// The enrollment (public id) this issuance completes, if any: the record step then also
    /// requires it still `completed` and the token still `enrolling` for `person_id`.
    pub enrollment: Option<String>,
}

/// Why an issuance failed: the CA refused or failed (bad key, profile, HSM), or recording it
/// failed.
#[derive(Debug, thiserror::Error)]
pub enum IssuanceError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
}

/// Idempotency for one issuing request. The request id is claimed in the reservation's
/// transaction, with a placeholder answer naming the reserved serial ([`pending_answer`]), and
/// the real answer replaces it in the transaction that records the signed certificate. So a
/// repeat either gets the first answer, or (first attempt still running or interrupted) finds
/// the placeholder; it never reaches the HSM.
pub struct IssueOnce {
    pub key: RequestKey,
    /// Encodes the answer repeats get, from the recorded certificate.
    pub answer: Box<AnswerEncoder>,
}

/// Turns the recorded certificate into the encoded answer a repeat gets.
pub type AnswerEncoder = dyn Fn(&CertificateRow) -> Vec<u8> + Send + Sync;

const PENDING_PREFIX: &[u8] = b"\0reserved:";

/// The placeholder answer of a request whose certificate is reserved and not yet recorded.
/// It starts with a 0 byte, which no encoded protobuf message does.
pub fn pending_answer(serial_hex: &str) -> Vec<u8> {
    [PENDING_PREFIX, serial_hex.as_bytes()].concat()
}

/// The reserved serial, when `answer` is a placeholder from [`pending_answer`].
pub fn pending_serial(answer: &[u8]) -> Option<&str> {
    answer
        .strip_prefix(PENDING_PREFIX)
        .and_then(|s| std::str::from_utf8(s).ok())
}

/// Reserves a serial, records the to-be-signed certificate with a `certificate.reserve` audit
/// event, has the HSM sign it, and stores it as `good` with a `certificate.issue` event.
/// The HSM call runs on a blocking thread.
pub async fn issue_certificate(
    store: &Store,
    ca: &Arc<OnlineCa>,
    params: IssueParams,
    actor: &Actor,
    request_id: &str,
) -> Result<CertificateRow, IssuanceError> {
    issue(store, ca, params, actor, request_id, None).await
}

/// [`issue_certificate`] once per request id (see [`IssueOnce`]). A request id already
/// claimed answers [`LifecycleError::RequestInProgress`]; the caller replays the stored answer
/// before calling this.
pub async fn issue_certificate_once(
    store: &Store,
    ca: &Arc<OnlineCa>,
    params: IssueParams,
    actor: &Actor,
    once: &IssueOnce,
) -> Result<CertificateRow, IssuanceError> {
    let request_id = once.key.request_id.clone();
    issue(store, ca, params, actor, &request_id, Some(once)).await
}

async fn issue(
    store: &Store,
    ca: &Arc<OnlineCa>,
    params: IssueParams,
    actor: &Actor,
    request_id: &str,
    once: Option<&IssueOnce>,
) -> Result<CertificateRow, IssuanceError> {
    reserve_issuance(store, ca, params, actor, request_id, once)
        .await?
        .sign(ca)
        .await?
        .record(store, actor, once)
        .await
}

/// An issuance whose serial and tbsCertificate are recorded (`reserved`), not yet signed.
/// [`issue_certificate`] runs the phases in a row: [`reserve_issuance`] →
/// [`ReservedIssuance::sign`] → [`SignedIssuance::record`]; they are public so that a test can
/// change a person or token between them.
pub struct ReservedIssuance {
    params: IssueParams,
    prepared: PreparedCertificate,
    request_id: String,
}

/// A signed certificate not yet recorded.
pub struct SignedIssuance {
    params: IssueParams,
    serial_hex: String,
    der: Vec<u8>,
    request_id: String,
}

/// Phases 1 and 2: the CA checks the request against its profile and encodes the exact
/// tbsCertificate; the serial, those bytes and their audit event (and the request id's claim)
/// commit before the HSM is asked for anything.
pub async fn reserve_issuance(
    store: &Store,
    ca: &Arc<OnlineCa>,
    params: IssueParams,
    actor: &Actor,
    request_id: &str,
    once: Option<&IssueOnce>,
) -> Result<ReservedIssuance, IssuanceError> {
    // 1. Prepare: valid from the store's clock's now. Nothing is signed yet.
    let serial = SerialNumber::random()?;
    let request = IssuanceRequest {
        subject: &params.subject,
        public_key_der: &params.public_key_der,
        profile: ca.profiles.get(&params.profile)?,
        serial: &serial,
        provenance: params.provenance.clone(),
        now: store.now().datetime(),
    };
    let prepared = ca.issuing.prepare(&request)?;

    // 2. Reserve.
    let once_key = once.map(|o| &o.key);
    if let Err(e) = reserve(store, &params, &prepared, actor, request_id, once_key).await {
        // A claimed request id is the caller's to handle (it replays); any other failure to
        // record stays "not signed: recording it before signing failed".
        return Err(match e {
            typed @ LifecycleError::RequestInProgress(_) => IssuanceError::Lifecycle(typed),
            other => IssuanceError::Ca(CaError::RecordBeforeSigning(other.to_string())),
        });
    }
    Ok(ReservedIssuance {
        params,
        prepared,
        request_id: request_id.to_string(),
    })
}

impl ReservedIssuance {
    /// The reserved serial, lower-case hex.
    pub fn serial_hex(&self) -> String {
        hex::encode(self.prepared.serial().as_bytes())
    }

    /// Phase 3 and 4: the issuing key signs the recorded bytes (the HSM call blocks, so it
    /// runs on a blocking thread) and `ca` assembles the certificate from the same bytes.
    pub async fn sign(self, ca: &Arc<OnlineCa>) -> Result<SignedIssuance, IssuanceError> {
        let signer = Arc::clone(ca.issuing.signer());
        let to_be_signed = self.prepared.to_be_signed().to_vec();
        let signature = tokio::task::spawn_blocking(move || signer.sign(&to_be_signed))
            .await
            .map_err(|e| CaError::CertificateEncoding(format!("issuance task failed: {e}")))?
            .map_err(CaError::from)?;
        let serial_hex = self.serial_hex();
        let issued = self.prepared.assemble(&signature)?;
        Ok(SignedIssuance {
            params: self.params,
            serial_hex,
            der: issued.der,
            request_id: self.request_id,
        })
    }
}

impl SignedIssuance {
    /// Phase 5: records the certificate, good only if person, token and enrollment still
    /// allow it (see [`record`]).
    pub async fn record(
        self,
        store: &Store,
        actor: &Actor,
        once: Option<&IssueOnce>,
    ) -> Result<CertificateRow, IssuanceError> {
        record(
            store,
            &self.params,
            &self.serial_hex,
            &self.der,
            actor,
            &self.request_id,
            once,
        )
        .await
    }
}

/// Records the signed certificate of the reserved `serial_hex`. Person, token and enrollment
/// are read again in this transaction (write transactions are serialised, so no transition
/// can slip between this check and the commit): when one of them changed while the HSM was
/// signing, the certificate is recorded and at once held or revoked as that transition would
/// have done had it come after the record (audited), and the caller gets
/// [`LifecycleError::StateChangedWhileSigning`] instead of the certificate.
async fn record(
    store: &Store,
    params: &IssueParams,
    serial_hex: &str,
    der: &[u8],
    actor: &Actor,
    request_id: &str,
    once: Option<&IssueOnce>,
) -> Result<CertificateRow, IssuanceError> {
    let sha256 = hex::encode(sha2::Sha256::digest(der));
    let mut tx = store.begin_write().await.map_err(LifecycleError::from)?;
    let mut row = tx
        .record_issued_certificate(serial_hex, der, &sha256)
        .await
        .map_err(LifecycleError::from)?;
    audit::record(
        &mut tx,
        actor,
        Change {
            action: "certificate.issue",
            subject: format!("certificate:{serial_hex}"),
            before: None,
            after: Some(serde_json::json!({
                "status": row.status.as_str(),
                "sha256": sha256,
                "profile": params.profile,
            })),
            request_id,
        },
    )
    .await
    .map_err(LifecycleError::from)?;
    if let Some(changed) = state_at_recording(&mut tx, params).await? {
        let reason = match changed.effect {
            CertificateEffect::Hold | CertificateEffect::Release => {
                RevocationReason::CertificateHold
            }
            CertificateEffect::Revoke(r) => r,
        };
        row = revoke_certificate(&mut tx, actor, request_id, serial_hex, reason).await?;
        // The request id keeps its placeholder answer: a repeat is refused
        // (REQUEST_IN_PROGRESS) and never gets the certificate.
        tx.commit().await.map_err(LifecycleError::from)?;
        return Err(LifecycleError::StateChangedWhileSigning {
            serial: row.serial,
            status: row.status.as_str(),
            reason: changed.reason,
            detail: changed.detail,
        }
        .into());
    }
    if let Some(once) = once {
        tx.complete_idempotency_record(request_id, &(once.answer)(&row))
            .await
            .map_err(LifecycleError::from)?;
    }
    tx.commit().await.map_err(LifecycleError::from)?;
    Ok(row)
}

/// Why a just-signed certificate may not be recorded good.
struct ChangedState {
    /// The effect the transition applies to certificates it finds good.
    effect: CertificateEffect,
    /// The stable refusal reason (docs/api.md).
    reason: &'static str,
    detail: String,
}

/// Person, token and enrollment of `params` as they are now, checked as before reserving:
/// `None` when the certificate may be recorded good.
async fn state_at_recording(
    tx: &mut WriteTx,
    params: &IssueParams,
) -> Result<Option<ChangedState>, LifecycleError> {
    if let Some(person_id) = params.person_id {
        let person = tx.person_by_id(person_id).await?;
        let state = person.as_ref().map(|p| p.state);
        let effect = match state {
            Some(PersonState::Active) => None,
            Some(PersonState::Suspended) => Some(CertificateEffect::Hold),
            Some(PersonState::Offboarded) | None => Some(CertificateEffect::Revoke(
                RevocationReason::AffiliationChanged,
            )),
        };
        if let Some(effect) = effect {
            return Ok(Some(ChangedState {
                effect,
                reason: "PERSON_NOT_ACTIVE",
                detail: format!(
                    "person {:?} became {} while the certificate was being signed",
                    person.map(|p| p.external_id).unwrap_or_default(),
                    state.map_or("deleted", |s| s.as_str())
                ),
            }));
        }
    }
    let Some(token_id) = params.token_id else {
        return Ok(None);
    };
    let Some(token) = tx.token_by_id(token_id).await? else {
        return Err(LifecycleError::TokenNotFound(token_id.to_string()));
    };
    let effect = match token.state {
        TokenState::Lost => Some(CertificateEffect::Revoke(RevocationReason::KeyCompromise)),
        TokenState::Damaged => Some(CertificateEffect::Revoke(RevocationReason::Superseded)),
        TokenState::Retired => Some(CertificateEffect::Revoke(
            RevocationReason::CessationOfOperation,
        )),
        TokenState::Suspended | TokenState::Forgotten => Some(CertificateEffect::Hold),
        TokenState::Enrolling | TokenState::Active => None,
    };
    if let Some(effect) = effect {
        return Ok(Some(ChangedState {
            effect,
            // An enrollment refuses a lost, damaged or retired token as TOKEN_NOT_ENROLLABLE.
            reason: if params.enrollment.is_some() {
                "TOKEN_NOT_ENROLLABLE"
            } else {
                "TOKEN_NOT_USABLE"
            },
            detail: format!(
                "token {:?} became {} while the certificate was being signed",
                token.serial,
                token.state.as_str()
            ),
        }));
    }
    let Some(public_id) = &params.enrollment else {
        return Ok(None);
    };
    // An enrollment's certificates: the enrollment must still be completed (not aborted or
    // expired meanwhile) and the token still enrolling for its person.
    let closed = |reason: &'static str, detail: String| {
        Some(ChangedState {
            effect: CertificateEffect::Revoke(RevocationReason::CessationOfOperation),
            reason,
            detail,
        })
    };
    let enrollment = tx.enrollment_by_public_id(public_id).await?;
    match enrollment.as_ref().map(|e| e.state) {
        Some(EnrollmentState::Completed) => {}
        Some(EnrollmentState::Expired) => {
            return Ok(closed(
                "ENROLLMENT_EXPIRED",
                format!("enrollment {public_id} expired while the certificate was being signed"),
            ));
        }
        other => {
            return Ok(closed(
                "ENROLLMENT_ABORTED",
                format!(
                    "enrollment {public_id} became {} while the certificate was being signed",
                    other.map_or("deleted", |s| s.as_str())
                ),
            ));
        }
    }
    // An enrollment keys the token while it is `enrolling`; a renewal (migration 0015) while it
    // stays `active`.
    let (expected, reason, doing) = match enrollment.map(|e| e.kind) {
        Some(EnrollmentKind::Renewal) => (TokenState::Active, "TOKEN_NOT_ACTIVE", "active"),
        _ => (TokenState::Enrolling, "TOKEN_NOT_ENROLLABLE", "enrolling"),
    };
    if token.state != expected || token.person_id != params.person_id {
        return Ok(closed(
            reason,
            format!(
                "token {:?} is no longer {doing} for this person",
                token.serial
            ),
        ));
    }
    Ok(None)
}

/// Stores the prepared certificate as `reserved` (serial, tbsCertificate, validity) with a
/// `certificate.reserve` audit event, and claims the request id, in one committed transaction.
async fn reserve(
    store: &Store,
    params: &IssueParams,
    prepared: &PreparedCertificate,
    actor: &Actor,
    request_id: &str,
    once: Option<&RequestKey>,
) -> Result<(), LifecycleError> {
    let serial_hex = hex::encode(prepared.serial().as_bytes());
    let tbs = prepared.to_be_signed();
    let not_before = Timestamp::from_datetime(prepared.not_before());
    let not_after = Timestamp::from_datetime(prepared.not_after());
    let mut tx = store.begin_write().await?;
    if let Some(key) = once {
        // Claimed by a concurrent repeat since the caller's replay check: do not sign twice.
        if super::replay(&mut tx, key).await?.is_some() {
            return Err(LifecycleError::RequestInProgress(key.request_id.clone()));
        }
        super::remember(&mut tx, key, pending_answer(&serial_hex)).await?;
    }
    tx.reserve_certificate(&NewCertificate {
        serial: serial_hex.clone(),
        person_id: params.person_id,
        token_id: params.token_id,
        profile: params.profile.clone(),
        tbs: tbs.to_vec(),
        not_before,
        not_after,
    })
    .await?;
    audit::record(
        &mut tx,
        actor,
        Change {
            action: "certificate.reserve",
            subject: format!("certificate:{serial_hex}"),
            before: None,
            after: Some(serde_json::json!({
                "subject_cn": params.subject.common_name,
                "emails": params.subject.emails,
                "uris": params.subject.uris,
                "profile": params.profile,
                "attested": params.provenance == KeyProvenance::HardwareAttested,
                "tbs_sha256": hex::encode(sha2::Sha256::digest(tbs)),
            })),
            request_id,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
