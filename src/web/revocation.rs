//! `GET /crl`, `GET /ocsp/{base64}` and `POST /ocsp`: revocation status for relying parties.
//!
//! The CRL is kept in the store (`crl_state`), shared by every replica: a request serves the
//! stored CRL while it is fresh, and otherwise one replica (under the store's write lock) signs
//! the next one with the next CRL number. Fresh means: built from the current status-change
//! counter (bumped by every revoke, hold and release, on any replica) and less than half its
//! validity old. OCSP responses are signed per request by the delegated responder.

use crate::ca::OnlineCa;
use crate::ca::crl::{CrlContents, RevokedEntry, sign_crl};
use crate::ca::ocsp::{CertificateState, OcspQuery, OcspResponder, OcspResponseStatus};
use crate::metrics::RevocationCounters;
use crate::store::{CertificateStatus, CrlStateRow, NewCrl, Store, Timestamp};
use base64::Engine;
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
}

/// What the CRL and OCSP routes need.
pub struct Revocation {
    store: Store,
    ca: Arc<OnlineCa>,
    responder: Option<Arc<OcspResponder>>,
    crl_validity: Duration,
    counters: RevocationCounters,
}

impl Revocation {
    pub fn new(
        store: Store,
        ca: Arc<OnlineCa>,
        responder: Option<Arc<OcspResponder>>,
        crl_validity: Duration,
        counters: RevocationCounters,
    ) -> Revocation {
        Revocation {
            store,
            ca,
            responder,
            crl_validity,
            counters,
        }
    }

    pub fn has_responder(&self) -> bool {
        self.responder.is_some()
    }

    /// The current CRL (DER), signing a new one first when the stored one is stale.
    pub async fn current_crl(&self) -> Result<Vec<u8>, RevocationError> {
        let now = self.store.now();
        let state = self.store.crl_state().await?;
        if let Some(der) = fresh_crl(&state, now, self.crl_validity) {
            return Ok(der);
        }
        let mut tx = self.store.begin_write().await?;
        // Another replica may have signed while this one waited for the write lock.
        let state = tx.crl_state().await?;
        if let Some(der) = fresh_crl(&state, now, self.crl_validity) {
            return Ok(der);
        }
        let entries = tx
            .revoked_certificates()
            .await?
            .into_iter()
            .map(|row| {
                Ok(RevokedEntry {
                    serial: hex::decode(&row.serial).map_err(|_| {
                        crate::store::StoreError::BadStoredValue {
                            column: "certificates.serial",
                            value: row.serial.clone(),
                        }
                    })?,
                    revoked_at: row.revoked_at.unwrap_or(row.updated_at).datetime(),
                    reason_code: row.revocation_reason.unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, RevocationError>>()?;
        let number = state.number + 1;
        let contents = CrlContents {
            number: u64::try_from(number).unwrap_or(0),
            this_update: now.datetime(),
            next_update: (now + self.crl_validity).datetime(),
            entries,
        };
        let ca = Arc::clone(&self.ca);
        let der = tokio::task::spawn_blocking(move || sign_crl(&ca.issuing, &contents))
            .await
            .map_err(|e| RevocationError::Task(e.to_string()))??;
        tx.record_crl(&NewCrl {
            number,
            built_from: state.status_changes,
            der: der.clone(),
            this_update: now,
            next_update: now + self.crl_validity,
        })
        .await?;
        tx.commit().await?;
        self.counters.crl_signed();
        tracing::info!(number, "CRL signed");
        Ok(der)
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

/// The stored CRL if it may still be served at `now`: built from the current status-change
/// counter and younger than half its validity (so a served CRL always has at least half its
/// validity left before nextUpdate).
pub fn fresh_crl(state: &CrlStateRow, now: Timestamp, validity: Duration) -> Option<Vec<u8>> {
    let (Some(der), Some(this_update)) = (&state.der, state.this_update) else {
        return None;
    };
    if state.built_from != state.status_changes {
        return None;
    }
    if now < this_update || now >= this_update + validity / 2 {
        return None;
    }
    Some(der.clone())
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
            der: Some(vec![1, 2, 3]),
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
        assert_eq!(
            fresh_crl(&s, at("2026-01-01T11:59:59Z"), day),
            Some(vec![1, 2, 3])
        );
        assert_eq!(fresh_crl(&s, at("2026-01-01T12:00:00Z"), day), None);
    }

    #[test]
    fn crl_is_stale_after_a_status_change_or_when_missing() {
        let day = Duration::hours(24);
        let now = at("2026-01-01T01:00:00Z");
        assert_eq!(
            fresh_crl(&state(5, 6, "2026-01-01T00:00:00Z"), now, day),
            None
        );
        let mut empty = state(0, 0, "2026-01-01T00:00:00Z");
        empty.der = None;
        assert_eq!(fresh_crl(&empty, now, day), None);
        // A CRL from the future (clock stepped back) is not served either.
        assert_eq!(
            fresh_crl(&state(5, 5, "2026-01-01T02:00:00Z"), now, day),
            None
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
