//! Issuance as one unit with its record (Boulder's rule), read top to bottom in `issue`:
//! `ca` prepares the exact tbsCertificate; the serial is reserved and those bytes stored (and
//! audited) in one committed transaction *before* the HSM signs; the issuing key signs them on a
//! blocking thread; `ca` assembles the certificate; it is stored and audited in a second
//! transaction. A crash between the two leaves a `reserved` row whose tbsCertificate tells
//! exactly what may have been signed — never a signed certificate the store does not know.
//! Data only flows down: `ca` never calls back into the store.
use super::{LifecycleError, RequestKey};
use crate::audit::{self, Actor, Change};
use crate::ca::{
    CaError, IssuanceRequest, KeyProvenance, OnlineCa, PreparedCertificate, SerialNumber,
    SubjectParams,
};
use crate::store::{CertificateRow, NewCertificate, Store, Timestamp};
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
    // 1. Prepare: the CA checks the request against its profile and encodes the exact
    //    tbsCertificate, valid from the store's clock's now. Nothing is signed yet.
    let serial = SerialNumber::random()?;
    let serial_hex = hex::encode(serial.as_bytes());
    let request = IssuanceRequest {
        subject: &params.subject,
        public_key_der: &params.public_key_der,
        profile: ca.profiles.get(&params.profile)?,
        serial: &serial,
        provenance: params.provenance.clone(),
        now: store.now().datetime(),
    };
    let prepared = ca.issuing.prepare(&request)?;

    // 2. Reserve: serial, tbsCertificate and its audit event (and the request id's claim)
    //    commit before the HSM is asked for anything.
    let once_key = once.map(|o| &o.key);
    if let Err(e) = reserve(store, &params, &prepared, actor, request_id, once_key).await {
        // A claimed request id is the caller's to handle (it replays); any other failure to
        // record stays "not signed: recording it before signing failed".
        return Err(match e {
            typed @ LifecycleError::RequestInProgress(_) => IssuanceError::Lifecycle(typed),
            other => IssuanceError::Ca(CaError::RecordBeforeSigning(other.to_string())),
        });
    }

    // 3. Sign the recorded bytes with the issuing key; the HSM call blocks, so it runs on a
    //    blocking thread.
    let signer = Arc::clone(ca.issuing.signer());
    let to_be_signed = prepared.to_be_signed().to_vec();
    let signature = tokio::task::spawn_blocking(move || signer.sign(&to_be_signed))
        .await
        .map_err(|e| CaError::CertificateEncoding(format!("issuance task failed: {e}")))?
        .map_err(CaError::from)?;

    // 4. Assemble the certificate from the same bytes, then record it.
    let issued = prepared.assemble(&signature)?;
    let sha256 = hex::encode(sha2::Sha256::digest(&issued.der));
    let mut tx = store.begin_write().await.map_err(LifecycleError::from)?;
    let row = tx
        .record_issued_certificate(&serial_hex, &issued.der, &sha256)
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
    if let Some(once) = once {
        tx.complete_idempotency_record(request_id, &(once.answer)(&row))
            .await
            .map_err(LifecycleError::from)?;
    }
    tx.commit().await.map_err(LifecycleError::from)?;
    Ok(row)
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
