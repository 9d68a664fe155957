//! `GET /crl`, `GET /ocsp/{base64}` and `POST /ocsp`: revocation status for relying parties.
//!
//! The CRL is kept in the store (`crl_state` and `crl_parts`), shared by every replica: a
//! request serves the stored CRL while it is fresh, and otherwise builds and publishes the next
//! one. Fresh means: built from the current status-change counter (bumped by every revoke, hold
//! and release, on any replica) and less than half its validity old.
//!
//! Building holds no write transaction: the counter and the current number are read first, the
//! entries (serial, reason, time only) are streamed from one read statement straight into the
//! DER encoder (`ca::crl::CrlBuilder`), the HSM signs on a blocking thread, and only then a short
//! write publishes it — if the stored number is still the one read (`Store::publish_crl`). A
//! replica that lost that race serves the winner's CRL, so CRL numbers grow by one per
//! published CRL and two replicas never publish one number with different contents. A status
//! change committed after the counter was read leaves the counter ahead of the new CRL's
//! `built_from`, so the next request builds again and lists it. One build at a time per
//! replica; the last CRL is kept in memory (`Bytes`) and read from the store only when another
//! replica published a newer one. OCSP responses are signed per request by the delegated
//! responder.

use crate::ca::OnlineCa;
use crate::ca::crl::{CrlBuilder, CrlHeader};
use crate::ca::ocsp::{CertificateState, OcspQuery, OcspResponder, OcspResponseStatus};
use crate::metrics::RevocationCounters;
use crate::store::{CertificateStatus, CrlEntryRow, CrlStateRow, NewCrl, Store, Timestamp};
use base64::Engine;
use bytes::Bytes;
use std::sync::Arc;
use time::Duration;

/// Why no CRL or OCSP answer could be made (logged; the client sees a generic error).
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    #[error("signing task failed: {0}")]
    Task(String),
    #[error("another replica kept publishing a newer CRL; try again")]
    Contended,
}

/// What the CRLs say and how long they live (`[ca]` configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlPolicy {
    /// nextUpdate − thisUpdate; a CRL is re-signed after half of it.
    pub validity: Duration,
    /// A revoked or held certificate stays on the CRL until this long after its notAfter
    /// (RFC 5280 §3.3); `None`: for ever.
    pub expired_grace: Option<Duration>,
}

impl CrlPolicy {
    /// The oldest notAfter still listed on a CRL made at `now`.
    pub fn expired_since(&self, now: Timestamp) -> Option<Timestamp> {
        self.expired_grace.map(|grace| now - grace)
    }
}

/// The CRL this replica last served or published.
struct ServedCrl {
    number: i64,
    der: Bytes,
}

/// What the CRL and OCSP routes need.
pub struct Revocation {
    store: Store,
    ca: Arc<OnlineCa>,
    responder: Option<Arc<OcspResponder>>,
    policy: CrlPolicy,
    counters: RevocationCounters,
    served: std::sync::Mutex<Option<ServedCrl>>,
    /// Held while this replica builds a CRL, so concurrent requests wait for one build.
    building: tokio::sync::Mutex<()>,
}

/// How many times a request builds again after another replica published first.
const PUBLISH_ATTEMPTS: usize = 3;

impl Revocation {
    pub fn new(
        store: Store,
        ca: Arc<OnlineCa>,
        responder: Option<Arc<OcspResponder>>,
        policy: CrlPolicy,
        counters: RevocationCounters,
    ) -> Revocation {
        Revocation {
            store,
            ca,
            responder,
            policy,
            counters,
            served: std::sync::Mutex::new(None),
            building: tokio::sync::Mutex::new(()),
        }
    }

    pub fn has_responder(&self) -> bool {
        self.responder.is_some()
    }

    /// The current CRL (DER), building and publishing a new one first when the stored one is
    /// stale.
    pub async fn current_crl(&self) -> Result<Bytes, RevocationError> {
        let now = self.store.now();
        let state = self.store.crl_state().await?;
        if is_fresh(&state, now, self.policy.validity)
            && let Some(der) = self.stored(state.number).await?
        {
            return Ok(der);
        }
        let _one_build = self.building.lock().await;
        for _ in 0..PUBLISH_ATTEMPTS {
            // Read again: this replica's other request, or another replica, may have published
            // while this one waited.
            let now = self.store.now();
            let state = self.store.crl_state().await?;
            if is_fresh(&state, now, self.policy.validity)
                && let Some(der) = self.stored(state.number).await?
            {
                return Ok(der);
            }
            if let Some(der) = self.build_and_publish(&state, now).await? {
                return Ok(der);
            }
        }
        Err(RevocationError::Contended)
    }

    /// The stored CRL numbered `number`, from memory when this replica has it.
    async fn stored(&self, number: i64) -> Result<Option<Bytes>, RevocationError> {
        if let Some(served) = self.served.lock().expect("not poisoned").as_ref()
            && served.number == number
        {
            return Ok(Some(served.der.clone()));
        }
        let Some(der) = self.store.crl_der(number).await? else {
            return Ok(None);
        };
        let der = Bytes::from(der);
        self.keep(number, der.clone());
        Ok(Some(der))
    }

    fn keep(&self, number: i64, der: Bytes) {
        *self.served.lock().expect("not poisoned") = Some(ServedCrl { number, der });
    }

    /// Builds the CRL after `state` from the store's revoked and held certificates, signs it
    /// and publishes it; `None` when another replica published first.
    async fn build_and_publish(
        &self,
        state: &CrlStateRow,
        now: Timestamp,
    ) -> Result<Option<Bytes>, RevocationError> {
        let started = std::time::Instant::now();
        let number = state.number + 1;
        let next_update = now + self.policy.validity;
        let mut builder = CrlBuilder::new(
            &self.ca.issuing,
            &CrlHeader {
                number: u64::try_from(number).unwrap_or(0),
                this_update: now.datetime(),
                next_update: next_update.datetime(),
            },
        )?;
        let mut serial = Vec::with_capacity(32);
        self.store
            .each_crl_entry(self.policy.expired_since(now), |row: CrlEntryRow| {
                serial.clear();
                serial.resize(row.serial.len() / 2, 0);
                hex::decode_to_slice(&row.serial, &mut serial).map_err(|_| {
                    crate::store::StoreError::BadStoredValue {
                        column: "certificates.serial",
                        value: row.serial.clone(),
                    }
                })?;
                builder.push(
                    &serial,
                    row.revoked_at.datetime(),
                    row.revocation_reason.unwrap_or(0),
                )?;
                Ok::<_, RevocationError>(())
            })
            .await?;
        let entries = builder.len();
        let unsigned = builder.finish();
        let ca = Arc::clone(&self.ca);
        let der = tokio::task::spawn_blocking(move || unsigned.sign(ca.issuing.signer().as_ref()))
            .await
            .map_err(|e| RevocationError::Task(e.to_string()))??;
        let crl = NewCrl {
            number,
            // The counter as read before the entries: a change committed since is newer.
            built_from: state.status_changes,
            this_update: now,
            next_update,
        };
        if !self.store.publish_crl(&crl, state.number, &der).await? {
            tracing::info!(number, "another replica published this CRL number first");
            return Ok(None);
        }
        let der = Bytes::from(der);
        self.keep(number, der.clone());
        self.counters.crl_signed();
        tracing::info!(
            number,
            entries,
            bytes = der.len(),
            millis = started.elapsed().as_millis() as u64,
            "CRL signed"
        );
        Ok(Some(der))
    }

    /// Answers a DER OCSPRequest with a DER OCSPResponse: signed for a request about our
    /// certificates, an unsigned malformedRequest / unauthorized / internalError otherwise.
    pub async fn ocsp(&self, request: &[u8]) -> Vec<u8> {
        let Some(responder) = &self.responder else {
            return crate::ca::ocsp::error_response(OcspResponseStatus::Unauthorized);
        };
        let query = match OcspQuery::from_der(request) {
            Ok(q) => q,
            Err(refusal) => return self.refuse(&refusal.to_string(), refusal.status()),
        };
        if let Err(refusal) = responder.check_issuer(&query) {
            return self.refuse(&refusal.to_string(), refusal.status());
        }
        match self.sign_ocsp(responder, query).await {
            Ok(der) => {
                self.counters.ocsp_signed();
                der
            }
            Err(e) => {
                tracing::error!(error = %e, "OCSP response could not be made");
                self.refuse(&e.to_string(), OcspResponseStatus::InternalError)
            }
        }
    }

    fn refuse(&self, why: &str, status: OcspResponseStatus) -> Vec<u8> {
        tracing::info!(reason = why, ?status, "OCSP request refused");
        self.counters.ocsp_refused();
        crate::ca::ocsp::error_response(status)
    }

    async fn sign_ocsp(
        &self,
        responder: &Arc<OcspResponder>,
        query: OcspQuery,
    ) -> Result<Vec<u8>, RevocationError> {
        let mut states = Vec::new();
        for serial in query.serials_hex() {
            let state = match self.store.certificate_by_serial(&serial).await? {
                None => CertificateState::Unknown,
                Some(row) => match row.status {
                    // Reserved: the HSM may not have signed it; never claim it is good.
                    CertificateStatus::Reserved => CertificateState::Unknown,
                    CertificateStatus::Good => CertificateState::Good,
                    CertificateStatus::OnHold | CertificateStatus::Revoked => {
                        CertificateState::Revoked {
                            at: row.revoked_at.unwrap_or(row.updated_at).datetime(),
                            reason_code: row.revocation_reason.unwrap_or(0),
                        }
                    }
                },
            };
            states.push(state);
        }
        let responder = Arc::clone(responder);
        let now = self.store.now().datetime();
        Ok(
            tokio::task::spawn_blocking(move || responder.respond(&query, &states, now))
                .await
                .map_err(|e| RevocationError::Task(e.to_string()))??,
        )
    }
}

/// Whether the stored CRL may still be served at `now`: built from the current status-change
/// counter and younger than half its validity (so a served CRL always has at least half its
/// validity left before nextUpdate).
pub fn is_fresh(state: &CrlStateRow, now: Timestamp, validity: Duration) -> bool {
    let Some(this_update) = state.this_update else {
        return false;
    };
    state.number > 0
        && state.built_from == state.status_changes
        && now >= this_update
        && now < this_update + validity / 2
}

/// The request in `GET /ocsp/{request}`: base64 (standard or URL-safe, padded or not) of the
/// DER OCSPRequest, already percent-decoded by the router.
pub fn decode_get_request(encoded: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let encoded = encoded.trim_start_matches('/');
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(encoded).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(built_from: i64, changes: i64, this_update: &str) -> CrlStateRow {
        CrlStateRow {
            status_changes: changes,
            number: 3,
            built_from,
            this_update: Some(at(this_update)),
            next_update: None,
        }
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    #[test]
    fn crl_is_fresh_until_half_its_validity() {
        let s = state(5, 5, "2026-01-01T00:00:00Z");
        let day = Duration::hours(24);
        assert!(is_fresh(&s, at("2026-01-01T11:59:59Z"), day));
        assert!(!is_fresh(&s, at("2026-01-01T12:00:00Z"), day));
    }

    #[test]
    fn crl_is_stale_after_a_status_change_or_when_missing() {
        let day = Duration::hours(24);
        let now = at("2026-01-01T01:00:00Z");
        assert!(!is_fresh(&state(5, 6, "2026-01-01T00:00:00Z"), now, day));
        let mut none_yet = state(0, 0, "2026-01-01T00:00:00Z");
        none_yet.number = 0;
        assert!(!is_fresh(&none_yet, now, day));
        // A CRL from the future (clock stepped back) is not served either.
        assert!(!is_fresh(&state(5, 5, "2026-01-01T02:00:00Z"), now, day));
    }

    #[test]
    fn expired_grace_sets_the_oldest_not_after_listed() {
        let policy = |grace| CrlPolicy {
            validity: Duration::hours(24),
            expired_grace: grace,
        };
        let now = at("2026-03-01T00:00:00Z");
        assert_eq!(policy(None).expired_since(now), None);
        assert_eq!(
            policy(Some(Duration::days(30))).expired_since(now),
            Some(at("2026-01-30T00:00:00Z"))
        );
    }

    #[test]
    fn bad_stored_time_is_an_error() {
        // The store refuses the text when it reads the row (tests/store.rs reads one back).
        let err = RevocationError::from(crate::store::StoreError::from(
            crate::store::BadTimestamp("yesterday".into()),
        ));
        assert_eq!(err.to_string(), "stored time \"yesterday\" is not RFC 3339");
    }

    #[test]
    fn get_request_in_any_base64_alphabet() {
        let der = vec![0x30, 0xfb, 0xff, 0x3e];
        for encoded in ["MPv/Pg==", "MPv_Pg==", "MPv/Pg", "MPv_Pg", "/MPv/Pg=="] {
            assert_eq!(decode_get_request(encoded), Some(der.clone()), "{encoded}");
        }
        assert_eq!(decode_get_request("not base64!"), None);
    }
}
