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
//! replica published a newer one.
//!
//! OCSP responses are pre-signed (RFC 5019 §2.2.1 / RFC 6960 §4.2.2.3): the response of each
//! certificate is signed by a background task ([`Revocation::sign_due`]) when its status
//! changes and again before its nextUpdate, stored in the database (`ocsp_responses`) and in
//! each replica's memory, and served to requests without an HSM call. See [`Revocation::ocsp`]
//! for what is signed per request.

use crate::ca::OnlineCa;
use crate::ca::crl::{CrlBuilder, CrlHeader};
use crate::ca::ocsp::{CertIdHash, CertificateState, OcspQuery, OcspResponder, OcspResponseStatus};
use crate::metrics::RevocationCounters;
use crate::store::{
    CertificateStatus, CrlEntryRow, CrlStateRow, NewCrl, NewOcspResponse, Store, Timestamp,
};
use base64::Engine;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
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
    #[error("the status-change counter could not be read: {0}")]
    CounterRead(String),
    #[error("the budget of OCSP signatures for requests is spent (live_signatures_per_second)")]
    Busy,
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
    settings: OcspSettings,
    cache: ResponseCache,
    status_changes: Arc<CounterReads>,
    live_budget: SignatureBudget,
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
        settings: OcspSettings,
    ) -> Revocation {
        Revocation {
            store,
            ca,
            responder,
            policy,
            counters,
            cache: ResponseCache {
                capacity: settings.cache_entries,
                entries: RwLock::default(),
            },
            status_changes: Arc::default(),
            live_budget: SignatureBudget::new(settings.live_signatures_per_second),
            settings,
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

    /// The time by the store's clock (what OCSP caching headers are computed against).
    pub fn now(&self) -> Timestamp {
        self.store.now()
    }

    /// Answers a DER OCSPRequest with a DER OCSPResponse: for a request about one of our
    /// certificates, its pre-signed response (from this replica's memory or the database; no
    /// HSM call; a nonce in the request is not echoed, RFC 8954 §2.1), signed at once only when
    /// nothing current is stored; for a request about several certificates or one the store
    /// does not know, a response signed for the request (echoing its nonce); an unsigned
    /// malformedRequest / unauthorized / tryLater / internalError otherwise.
    pub async fn ocsp(&self, request: &[u8]) -> OcspAnswer {
        let Some(responder) = &self.responder else {
            return OcspAnswer::unsigned(OcspResponseStatus::Unauthorized);
        };
        let query = match OcspQuery::from_der(request) {
            Ok(q) => q,
            Err(refusal) => return self.refuse(&refusal.to_string(), refusal.status()),
        };
        if let Err(refusal) = responder.check_issuer(&query) {
            return self.refuse(&refusal.to_string(), refusal.status());
        }
        if let Some((serial, hash)) = query.single() {
            match self.presigned(responder, &serial, hash).await {
                Ok(Some(answer)) => return answer,
                // Not a certificate the store knows (or not signed yet): answered below.
                Ok(None) => {}
                Err(e) => return self.failed(&e),
            }
        }
        if !self.live_budget.take() {
            return self.failed(&RevocationError::Busy);
        }
        match self.sign_ocsp(responder, query).await {
            Ok(der) => {
                self.counters.ocsp_signed();
                self.counters.ocsp_signature_for_request();
                OcspAnswer {
                    der: Bytes::from(der),
                    cache: None,
                }
            }
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&self, e: &RevocationError) -> OcspAnswer {
        let status = match e {
            RevocationError::Busy => OcspResponseStatus::TryLater,
            _ => {
                tracing::error!(error = %e, "OCSP response could not be made");
                OcspResponseStatus::InternalError
            }
        };
        self.refuse(&e.to_string(), status)
    }

    fn refuse(&self, why: &str, status: OcspResponseStatus) -> OcspAnswer {
        tracing::info!(reason = why, ?status, "OCSP request refused");
        self.counters.ocsp_refused();
        OcspAnswer::unsigned(status)
    }

    /// The stored response about `serial` (CertID hashed with `hash`) if it tells the
    /// certificate's current status; otherwise one signed now (within the budget of signatures
    /// for requests) and stored for the next request. `None` for a serial the store does not
    /// know or has only reserved.
    ///
    /// Why a revoked certificate is never answered "good" after its revocation committed: the
    /// memory entry is used only while the status-change counter read *after this request
    /// arrived* is the one it was checked at; otherwise the database row is used only while
    /// the status version it was signed for is the certificate's current one (one statement).
    async fn presigned(
        &self,
        responder: &Arc<OcspResponder>,
        serial: &str,
        hash: CertIdHash,
    ) -> Result<Option<OcspAnswer>, RevocationError> {
        let changes = self.status_changes.read(&self.store).await?;
        let now = self.store.now();
        let key = (serial.to_string(), hash);
        if let Some(answer) = self.cache.hit(&key, changes, now) {
            self.counters.ocsp_stored();
            return Ok(Some(answer));
        }
        if let Some(row) = self.store.ocsp_response(serial, hash.as_str()).await?
            && let (Some(der), Some(signed), Some(this_update), Some(next_update)) = (
                row.current(),
                row.signed_version,
                row.this_update,
                row.next_update,
            )
            && now < next_update
        {
            let answer = self.cache.remember(
                key,
                Bytes::copy_from_slice(der),
                CacheStamp {
                    signed_version: signed,
                    checked_at: changes,
                    this_update,
                    next_update,
                    refresh_at: this_update + self.settings.refresh,
                },
                now,
            );
            self.counters.ocsp_stored();
            return Ok(Some(answer));
        }
        // Nothing current is stored (a status change the signer has not caught up with, or a
        // SHA-256 CertID asked for the first time): sign now, and store it.
        let Some(subject) = self.store.ocsp_subject(serial).await? else {
            return Ok(None);
        };
        let state = certificate_state(
            subject.status,
            subject.revocation_reason,
            subject.revoked_at,
            subject.updated_at,
        );
        if state == CertificateState::Unknown {
            return Ok(None);
        }
        if !self.live_budget.take() {
            return Err(RevocationError::Busy);
        }
        let cert_id = responder.cert_id(serial, hash)?;
        let responder = Arc::clone(responder);
        let validity = self.settings.validity;
        let der = tokio::task::spawn_blocking(move || {
            responder.sign_one(&cert_id, &state, now.datetime(), validity)
        })
        .await
        .map_err(|e| RevocationError::Task(e.to_string()))??;
        self.counters.ocsp_signed();
        self.counters.ocsp_signature_for_request();
        let stored = NewOcspResponse {
            serial: serial.to_string(),
            hash_algorithm: hash.as_str(),
            signed_version: subject.status_version,
            der: der.clone(),
            this_update: now,
            next_update: now + validity,
            due_at: self.settings.refresh_due(serial, now),
        };
        if let Err(e) = self.store.store_ocsp_responses(&[stored]).await {
            tracing::warn!(error = %e, serial, "OCSP response signed for a request could not be stored");
        }
        Ok(Some(self.cache.remember(
            key,
            Bytes::from(der),
            CacheStamp {
                signed_version: subject.status_version,
                checked_at: changes,
                this_update: now,
                next_update: now + validity,
                refresh_at: now + self.settings.refresh,
            },
            now,
        )))
    }

    /// One round of the background signer: claims the stored responses that are due (stale
    /// ones first, then those past their refresh time), at most `signatures_per_second` of
    /// them, signs them on a blocking thread and stores them. Returns how many it signed.
    pub async fn sign_due(&self) -> Result<usize, RevocationError> {
        let Some(responder) = &self.responder else {
            return Ok(0);
        };
        let now = self.store.now();
        let due = self
            .store
            .claim_due_ocsp_responses(
                now,
                i64::from(self.settings.signatures_per_second),
                now + SIGNER_LEASE,
            )
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut work = Vec::with_capacity(due.len());
        for row in due {
            let subject = row.subject;
            let state = certificate_state(
                subject.status,
                subject.revocation_reason,
                subject.revoked_at,
                subject.updated_at,
            );
            let Some(hash) = CertIdHash::from_name(&row.hash_algorithm) else {
                tracing::warn!(
                    serial = subject.serial,
                    hash = row.hash_algorithm,
                    "stored OCSP row of an unknown CertID hash"
                );
                continue;
            };
            if state == CertificateState::Unknown {
                continue;
            }
            match responder.cert_id(&subject.serial, hash) {
                Ok(id) => work.push((subject.serial, subject.status_version, hash, id, state)),
                Err(e) => {
                    tracing::warn!(serial = subject.serial, error = %e, "no CertID for a stored certificate")
                }
            }
        }
        let responder = Arc::clone(responder);
        let settings = self.settings.clone();
        let (signed, failed) = tokio::task::spawn_blocking(move || {
            let mut signed = Vec::with_capacity(work.len());
            let mut failed = None;
            for (serial, version, hash, id, state) in work {
                match responder.sign_one(&id, &state, now.datetime(), settings.validity) {
                    Ok(der) => signed.push(NewOcspResponse {
                        due_at: settings.refresh_due(&serial, now),
                        serial,
                        hash_algorithm: hash.as_str(),
                        signed_version: version,
                        der,
                        this_update: now,
                        next_update: now + settings.validity,
                    }),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            (signed, failed)
        })
        .await
        .map_err(|e| RevocationError::Task(e.to_string()))?;
        self.counters
            .ocsp_signatures_in_background(u64::try_from(signed.len()).unwrap_or(u64::MAX));
        let count = signed.len();
        self.store.store_ocsp_responses(&signed).await?;
        match failed {
            // The rows not signed stay claimed until the lease ends, then are due again.
            Some(e) => Err(e.into()),
            None => Ok(count),
        }
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
                Some(row) => certificate_state(
                    row.status,
                    row.revocation_reason,
                    row.revoked_at,
                    row.updated_at,
                ),
            };
            states.push(state);
        }
        let responder = Arc::clone(responder);
        let now = self.store.now().datetime();
        let validity = self.settings.validity;
        Ok(
            tokio::task::spawn_blocking(move || responder.respond(&query, &states, now, validity))
                .await
                .map_err(|e| RevocationError::Task(e.to_string()))??,
        )
    }
}

/// How long the background signer holds the rows it claimed before another signer (another
/// replica, or this one after a failure) may take them.
const SIGNER_LEASE: Duration = Duration::minutes(2);

/// What a certificate's stored status says in an OCSP response.
fn certificate_state(
    status: CertificateStatus,
    revocation_reason: Option<i64>,
    revoked_at: Option<Timestamp>,
    updated_at: Timestamp,
) -> CertificateState {
    match status {
        // Reserved: the HSM may not have signed it; never claim it is good.
        CertificateStatus::Reserved => CertificateState::Unknown,
        CertificateStatus::Good => CertificateState::Good,
        CertificateStatus::OnHold | CertificateStatus::Revoked => CertificateState::Revoked {
            at: revoked_at.unwrap_or(updated_at).datetime(),
            reason_code: revocation_reason.unwrap_or(0),
        },
    }
}

/// How OCSP responses are made, kept and served (`[ca] ocsp_*` in the configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcspSettings {
    /// nextUpdate − thisUpdate of every response (and the most an HTTP cache keeps it).
    pub validity: Duration,
    /// A stored response is signed again this long after its thisUpdate (plus a spread of up
    /// to half of `validity − refresh`, by serial, so refreshes do not come in bursts).
    pub refresh: Duration,
    /// At most this many signatures per second by the background signer.
    pub signatures_per_second: u32,
    /// At most this many signatures per second for requests that found nothing current stored
    /// (or ask about several certificates, or one the store does not know); beyond it
    /// requests get tryLater. 0: never sign for a request.
    pub live_signatures_per_second: u32,
    /// Responses kept in this replica's memory (0: none; each entry is about 1 KiB).
    pub cache_entries: usize,
}

impl Default for OcspSettings {
    fn default() -> Self {
        OcspSettings {
            validity: Duration::hours(24),
            refresh: Duration::hours(12),
            signatures_per_second: 100,
            live_signatures_per_second: 20,
            cache_entries: 100_000,
        }
    }
}

impl OcspSettings {
    /// When the signer should sign `serial`'s response of `this_update` again.
    pub fn refresh_due(&self, serial: &str, this_update: Timestamp) -> Timestamp {
        let spread = ((self.validity - self.refresh).whole_seconds() / 2).max(1);
        // FNV-1a: a fixed spread per serial, the same on every replica.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in serial.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let offset = i64::try_from(h % u64::try_from(spread).unwrap_or(1)).unwrap_or(0);
        this_update + self.refresh + Duration::seconds(offset)
    }
}

/// An OCSP answer, and for a stored (pre-signed) response what HTTP caches may know of it.
pub struct OcspAnswer {
    pub der: Bytes,
    pub cache: Option<Arc<CacheHeaders>>,
}

impl OcspAnswer {
    fn unsigned(status: OcspResponseStatus) -> OcspAnswer {
        OcspAnswer {
            der: Bytes::from(crate::ca::ocsp::error_response(status)),
            cache: None,
        }
    }
}

/// RFC 5019 §6.2 caching headers of a pre-signed response (made once per response).
#[derive(Debug)]
pub struct CacheHeaders {
    pub next_update: Timestamp,
    /// `"…"`: the first 16 bytes of the response's SHA-256, hex.
    pub etag: String,
    /// thisUpdate, as an HTTP date.
    pub last_modified: String,
    /// nextUpdate, as an HTTP date.
    pub expires: String,
}

impl CacheHeaders {
    fn new(der: &[u8], this_update: Timestamp, next_update: Timestamp) -> CacheHeaders {
        use sha2::{Digest, Sha256};
        CacheHeaders {
            next_update,
            etag: format!("\"{}\"", hex::encode(&Sha256::digest(der)[..16])),
            last_modified: http_date(this_update),
            expires: http_date(next_update),
        }
    }

    /// `Cache-Control` at `now`: max-age is what is left until nextUpdate.
    pub fn cache_control(&self, now: Timestamp) -> String {
        let left = (self.next_update - now).whole_seconds().max(0);
        format!("max-age={left}, public, no-transform, must-revalidate")
    }
}

/// IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: Timestamp) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.datetime().format(FORMAT).unwrap_or_default()
}

/// What a memory entry was checked against.
#[derive(Clone, Copy, Debug)]
struct CacheStamp {
    signed_version: i64,
    /// The status-change counter at which the entry was known current.
    checked_at: i64,
    this_update: Timestamp,
    next_update: Timestamp,
    /// From then on the database is asked again (a refreshed response may be there).
    refresh_at: Timestamp,
}

struct CacheEntry {
    der: Bytes,
    headers: Arc<CacheHeaders>,
    stamp: CacheStamp,
    /// Until when the entry may be served without asking the database.
    serve_until: Timestamp,
}

/// This replica's memory of pre-signed responses, by serial and CertID hash.
struct ResponseCache {
    capacity: usize,
    entries: RwLock<HashMap<(String, CertIdHash), CacheEntry>>,
}

/// How often a replica asks the database again about a response past its refresh time that
/// the signer has not replaced yet.
const RECHECK_AFTER_REFRESH: Duration = Duration::minutes(1);

impl ResponseCache {
    fn hit(&self, key: &(String, CertIdHash), changes: i64, now: Timestamp) -> Option<OcspAnswer> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(key)?;
        (entry.stamp.checked_at == changes && now < entry.serve_until).then(|| OcspAnswer {
            der: entry.der.clone(),
            cache: Some(Arc::clone(&entry.headers)),
        })
    }

    /// Keeps `der` (checked current at `stamp.checked_at`) and returns it as an answer.
    fn remember(
        &self,
        key: (String, CertIdHash),
        der: Bytes,
        stamp: CacheStamp,
        now: Timestamp,
    ) -> OcspAnswer {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let headers = match entries.get(&key) {
            Some(e)
                if e.stamp.signed_version == stamp.signed_version
                    && e.stamp.this_update == stamp.this_update
                    && e.der == der =>
            {
                Arc::clone(&e.headers)
            }
            _ => Arc::new(CacheHeaders::new(
                &der,
                stamp.this_update,
                stamp.next_update,
            )),
        };
        let serve_until = if now < stamp.refresh_at {
            stamp.refresh_at
        } else {
            now + RECHECK_AFTER_REFRESH
        }
        .min(stamp.next_update);
        let answer = OcspAnswer {
            der: der.clone(),
            cache: Some(Arc::clone(&headers)),
        };
        if self.capacity > 0 {
            if entries.len() >= self.capacity && !entries.contains_key(&key) {
                // Full: make room by dropping any one entry (it is read again from the
                // database when asked for).
                if let Some(victim) = entries.keys().next().cloned() {
                    entries.remove(&victim);
                }
            }
            entries.insert(
                key,
                CacheEntry {
                    der,
                    headers,
                    stamp,
                    serve_until,
                },
            );
        }
        answer
    }
}

/// Reads of the status-change counter shared by the requests waiting at the same time: a
/// request waits for a read that *started after it arrived* (so it sees every change committed
/// before), and one read serves every request that arrived while the previous one ran.
#[derive(Default)]
struct CounterReads {
    pending: Mutex<CounterBatch>,
}

#[derive(Default)]
struct CounterBatch {
    waiters: Vec<tokio::sync::oneshot::Sender<Result<i64, String>>>,
    reading: bool,
}

impl CounterReads {
    async fn read(self: &Arc<Self>, store: &Store) -> Result<i64, RevocationError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lead = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.waiters.push(tx);
            !std::mem::replace(&mut p.reading, true)
        };
        if lead {
            let reads = Arc::clone(self);
            let store = store.clone();
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut p = reads.pending.lock().unwrap_or_else(|e| e.into_inner());
                        if p.waiters.is_empty() {
                            p.reading = false;
                            return;
                        }
                        std::mem::take(&mut p.waiters)
                    };
                    let value = store.ocsp_status_changes().await.map_err(|e| e.to_string());
                    for waiter in batch {
                        let _ = waiter.send(value.clone());
                    }
                }
            });
        }
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RevocationError::CounterRead(e)),
            Err(_) => Err(RevocationError::Task("status-change read dropped".into())),
        }
    }
}

/// Signatures allowed per second (a token bucket holding at most one second's worth).
struct SignatureBudget {
    per_second: f64,
    state: Mutex<(f64, std::time::Instant)>,
}

impl SignatureBudget {
    fn new(per_second: u32) -> SignatureBudget {
        SignatureBudget {
            per_second: f64::from(per_second),
            state: Mutex::new((f64::from(per_second), std::time::Instant::now())),
        }
    }

    fn take(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.per_second;
        s.0 = (s.0 + refill).min(self.per_second);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
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
    fn refreshes_are_spread_between_refresh_and_half_the_rest() {
        let settings = OcspSettings::default();
        let t = at("2026-01-01T00:00:00Z");
        let mut offsets = std::collections::HashSet::new();
        for i in 0..200 {
            let due = settings.refresh_due(&format!("{i:032x}"), t);
            assert!(due >= at("2026-01-01T12:00:00Z"), "{due}");
            assert!(due < at("2026-01-01T18:00:00Z"), "{due}");
            // The same serial falls due at the same time on every replica.
            assert_eq!(due, settings.refresh_due(&format!("{i:032x}"), t));
            offsets.insert(due);
        }
        assert!(offsets.len() > 150, "{}", offsets.len());
    }

    #[test]
    fn caching_headers_are_rfc_5019() {
        let h = CacheHeaders::new(
            b"response",
            at("1994-11-06T08:49:37Z"),
            at("1994-11-07T08:49:37Z"),
        );
        assert_eq!(h.last_modified, "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(h.expires, "Mon, 07 Nov 1994 08:49:37 GMT");
        assert_eq!(h.etag.len(), 34);
        assert!(h.etag.starts_with('"') && h.etag.ends_with('"'));
        assert_eq!(
            h.cache_control(at("1994-11-07T08:48:37Z")),
            "max-age=60, public, no-transform, must-revalidate"
        );
        // Past nextUpdate: nothing left to cache.
        assert_eq!(
            h.cache_control(at("1994-11-08T00:00:00Z")),
            "max-age=0, public, no-transform, must-revalidate"
        );
    }

    #[test]
    fn memory_entry_is_served_only_at_the_counter_it_was_checked_at() {
        let cache = ResponseCache {
            capacity: 1,
            entries: RwLock::default(),
        };
        let now = at("2026-01-01T00:00:00Z");
        let stamp = CacheStamp {
            signed_version: 3,
            checked_at: 7,
            this_update: now,
            next_update: now + Duration::hours(24),
            refresh_at: now + Duration::hours(12),
        };
        let key = ("0a".to_string(), CertIdHash::Sha1);
        cache.remember(key.clone(), Bytes::from_static(b"r"), stamp, now);
        assert!(cache.hit(&key, 7, now).is_some());
        // Any status change anywhere: ask the database again.
        assert!(cache.hit(&key, 8, now).is_none());
        // Past the refresh time: ask the database again (a refreshed response may be there).
        assert!(cache.hit(&key, 7, now + Duration::hours(12)).is_none());
        assert!(
            cache
                .hit(&("0a".into(), CertIdHash::Sha256), 7, now)
                .is_none()
        );
        // Full: the new entry replaces one.
        let other = ("0b".to_string(), CertIdHash::Sha1);
        cache.remember(other.clone(), Bytes::from_static(b"s"), stamp, now);
        assert!(cache.hit(&other, 7, now).is_some());
        assert!(cache.hit(&key, 7, now).is_none());
        // Remembered past its refresh time: served for a minute, then asked again.
        let late = now + Duration::hours(13);
        cache.remember(other.clone(), Bytes::from_static(b"s"), stamp, late);
        assert!(cache.hit(&other, 7, late + Duration::seconds(59)).is_some());
        assert!(cache.hit(&other, 7, late + Duration::seconds(60)).is_none());
    }

    #[test]
    fn budget_allows_its_rate_and_no_more() {
        let none = SignatureBudget::new(0);
        assert!(!none.take());
        let two = SignatureBudget::new(2);
        assert!(two.take());
        assert!(two.take());
        assert!(!two.take());
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
