//! `Hsm`: the loaded module, the chosen token, and a pool of logged-in sessions.
//!
//! A `cryptoki::Session` is `Send` but not `Sync`, so each call borrows one session from the pool
//! (a `Mutex<Vec<Session>>` with a `Condvar`), uses it alone, and gives it back. All sessions of
//! one process share the token login (PKCS#11 login state is per application and token).
//! The user PIN is read from its source for each login and wiped right after it.
//!
//! Recovery: when a call fails with an error that means the session or device is gone
//! (CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED, CKR_DEVICE_REMOVED, CKR_DEVICE_ERROR,
//! CKR_TOKEN_NOT_PRESENT, CKR_USER_NOT_LOGGED_IN, …), the session and every idle one are dropped,
//! a fresh session is opened (logging in again when the login was lost) and the call is retried
//! once; if that fails too the caller gets the retryable `HsmError::SessionLost`. Waiting for a
//! free session is bounded, so nothing hangs.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::config::{HsmConfig, PinSource, TokenSelector};
use super::error::{HsmError, ck_code, is_session_fatal, is_stale_handle, rv_of};

/// A handle on one token of one PKCS#11 module. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Hsm {
    pub(super) inner: Arc<HsmInner>,
}

pub(super) struct HsmInner {
    ctx: Pkcs11,
    slot: Slot,
    pub(super) token_label: String,
    pin: PinSource,
    size: usize,
    wait: Duration,
    pool: Mutex<PoolState>,
    freed: Condvar,
    /// Bumped whenever sessions were found dead: cached object handles from an older epoch
    /// are looked up again.
    pub(super) epoch: AtomicU64,
    /// Operations that ended in an error (after any retry), for metrics.
    errors: AtomicU64,
    /// Mechanisms the token offers, read once at open (e.g. SoftHSM2 2.6 has CKM_ECDSA but not
    /// CKM_ECDSA_SHA256, so `keys` hashes in software and signs the digest with CKM_ECDSA there).
    pub(super) mechanisms: Vec<MechanismType>,
    /// Held shared during every PKCS#11 call on a session; held exclusively by
    /// `with_no_call_in_flight` (see there).
    calls: RwLock<()>,
}

struct PoolState {
    /// Idle sessions with the recovery epoch they were opened in.
    idle: Vec<(u64, Session)>,
    open: usize,
}

/// A failure inside a pooled operation: either a raw PKCS#11 error (which may trigger the
/// reconnect-and-retry) or an already classified `HsmError` (returned as is).
pub(super) enum OpFailure {
    Ck(CkError),
    Hsm(HsmError),
}

impl From<CkError> for OpFailure {
    fn from(e: CkError) -> Self {
        OpFailure::Ck(e)
    }
}

impl From<HsmError> for OpFailure {
    fn from(e: HsmError) -> Self {
        OpFailure::Hsm(e)
    }
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("token", &self.inner.token_label)
            .field("slot", &self.inner.slot.id())
            .field("pool_size", &self.inner.size)
            .finish_non_exhaustive()
    }
}

impl Hsm {
    /// Loads and initialises the module, finds the token, logs in and fills the first session
    /// of the pool. Errors name the module, the token, or the PIN problem.
    pub fn open(config: &HsmConfig) -> Result<Hsm, HsmError> {
        let module = &config.module;
        let ctx = load_module(module)?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {}
            Err(e) if rv_of(&e) == Some(RvError::CryptokiAlreadyInitialized) => {}
            Err(e) => {
                return Err(HsmError::ModuleInit {
                    path: module.clone(),
                    code: ck_code(&e),
                });
            }
        }
        let (slot, token_label) = find_token(&ctx, module, &config.token)?;
        let mechanisms = ctx
            .get_mechanism_list(slot)
            .map_err(|e| HsmError::pkcs11("C_GetMechanismList", e))?;
        let inner = Arc::new(HsmInner {
            ctx,
            slot,
            token_label,
            pin: config.pin.clone(),
            size: config.pool_size,
            wait: config.pool_wait,
            pool: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            epoch: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            mechanisms,
            calls: RwLock::new(()),
        });
        let hsm = Hsm { inner };
        // Open and log in one session now, so that a wrong PIN or token fails here.
        let first = hsm.borrow("open", 0)?;
        drop(first);
        Ok(hsm)
    }

    /// How many times a dead session or stale handle was detected and the pool rebuilt
    /// (for metrics and tests).
    pub fn recoveries(&self) -> u64 {
        self.inner.epoch.load(Ordering::SeqCst)
    }

    /// Runs `f` while no PKCS#11 call of this `Hsm` is in flight (calls wait until it returns).
    /// For tests that kill sessions from outside, e.g. with C_CloseAllSessions through a second
    /// handle: SoftHSM2 2.6 frees a session's memory in C_CloseAllSessions even while another
    /// thread is inside C_Sign on it (and then crashes), which real device loss does not do.
    #[doc(hidden)]
    pub fn with_no_call_in_flight<T>(&self, f: impl FnOnce() -> T) -> T {
        let _exclusive = self.inner.calls.write().unwrap_or_else(|p| p.into_inner());
        f()
    }

    /// Pooled operations that failed (after the one retry), since open; for metrics.
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// The most sessions the pool opens (`pool_size` of the HSM config).
    pub fn pool_size(&self) -> usize {
        self.inner.size
    }

    /// Sessions the pool has open right now (idle or borrowed); never more than `pool_size`.
    pub fn open_sessions(&self) -> usize {
        self.inner.lock().open
    }

    /// The label of the token this handle works on.
    pub fn token_label(&self) -> &str {
        &self.inner.token_label
    }

    /// Runs `op` on a pooled session, replacing dead sessions and retrying once (see module doc);
    /// a failure is counted in [`Hsm::errors`].
    pub(super) fn run<T>(
        &self,
        operation: &'static str,
        op: impl FnMut(&Session) -> Result<T, OpFailure>,
    ) -> Result<T, HsmError> {
        let result = self.run_with_retry(operation, op);
        if result.is_err() {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn run_with_retry<T>(
        &self,
        operation: &'static str,
        mut op: impl FnMut(&Session) -> Result<T, OpFailure>,
    ) -> Result<T, HsmError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The retry only takes sessions opened after the failure was seen: sessions other
            // callers give back later were opened before it and are most likely dead too.
            let min_epoch = if attempt == 1 {
                0
            } else {
                self.inner.epoch.load(Ordering::SeqCst)
            };
            let guard = self.borrow(operation, min_epoch)?;
            let Some(session) = guard.session.as_ref() else {
                return Err(HsmError::SessionLost {
                    operation,
                    code: "no session".into(),
                });
            };
            let result = {
                let _call = inner_read(&self.inner.calls);
                op(session)
            };
            match result {
                Ok(v) => return Ok(v),
                Err(OpFailure::Hsm(e)) => return Err(e),
                Err(OpFailure::Ck(e)) if is_session_fatal(&e) || is_stale_handle(&e) => {
                    self.inner.epoch.fetch_add(1, Ordering::SeqCst);
                    if is_session_fatal(&e) {
                        guard.discard();
                        self.inner.drop_idle();
                    }
                    if attempt >= 2 {
                        return Err(HsmError::SessionLost {
                            operation,
                            code: ck_code(&e),
                        });
                    }
                    tracing::warn!(operation, code = %ck_code(&e), "HSM session lost; reopening and retrying once");
                }
                Err(OpFailure::Ck(e)) => return Err(HsmError::pkcs11(operation, e)),
            }
        }
    }

    fn borrow(
        &self,
        operation: &'static str,
        min_epoch: u64,
    ) -> Result<PooledSession<'_>, HsmError> {
        let inner = &*self.inner;
        let deadline = Instant::now() + inner.wait;
        let mut state = inner.lock();
        loop {
            while let Some((epoch, s)) = state.idle.pop() {
                if epoch >= min_epoch {
                    return Ok(PooledSession {
                        inner,
                        epoch,
                        session: Some(s),
                    });
                }
                state.open -= 1;
                let _call = inner_read(&inner.calls);
                drop(s);
            }
            if state.open < inner.size {
                state.open += 1;
                drop(state);
                let epoch = inner.epoch.load(Ordering::SeqCst);
                return match inner.open_session(operation) {
                    Ok(s) => Ok(PooledSession {
                        inner,
                        epoch,
                        session: Some(s),
                    }),
                    Err(e) => {
                        inner.lock().open -= 1;
                        inner.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HsmError::PoolTimeout {
                    operation,
                    seconds: inner.wait.as_secs(),
                });
            }
            state = inner
                .freed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl HsmInner {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops every idle session (after one was found dead, the others usually are too).
    fn drop_idle(&self) {
        let dead: Vec<Session> = {
            let mut state = self.lock();
            let dead: Vec<Session> = std::mem::take(&mut state.idle)
                .into_iter()
                .map(|(_, s)| s)
                .collect();
            state.open -= dead.len();
            dead
        };
        // Closing a dead handle fails harmlessly; done outside the pool lock.
        let _call = inner_read(&self.calls);
        drop(dead);
        self.freed.notify_all();
    }

    fn open_session(&self, operation: &'static str) -> Result<Session, HsmError> {
        let _call = inner_read(&self.calls);
        let lost = |e: CkError| {
            if is_session_fatal(&e) {
                HsmError::SessionLost {
                    operation,
                    code: ck_code(&e),
                }
            } else {
                HsmError::pkcs11("C_OpenSession", e)
            }
        };
        let session = self.ctx.open_rw_session(self.slot).map_err(lost)?;
        let state = session.get_session_info().map_err(lost)?.session_state();
        if state != SessionState::RwUser {
            self.login(&session).map_err(|e| match e {
                OpFailure::Hsm(e) => e,
                OpFailure::Ck(e) => lost(e),
            })?;
        }
        Ok(session)
    }

    fn login(&self, session: &Session) -> Result<(), OpFailure> {
        let pin = self.pin.read()?;
        let auth = AuthPin::from(pin.as_str());
        drop(pin);
        match session.login(UserType::User, Some(&auth)) {
            Ok(()) => Ok(()),
            Err(e) => login_failure(e, &self.token_label),
        }
    }
}

/// Classifies a failed C_Login: an already-present login is success; a wrong or locked PIN
/// becomes its own error; anything else stays a PKCS#11 error (maybe a dead session).
fn login_failure(e: CkError, token: &str) -> Result<(), OpFailure> {
    match rv_of(&e) {
        Some(RvError::UserAlreadyLoggedIn) => Ok(()),
        Some(RvError::PinIncorrect) => Err(HsmError::PinIncorrect {
            token: token.to_string(),
        }
        .into()),
        Some(RvError::PinLocked) => Err(HsmError::PinLocked {
            token: token.to_string(),
        }
        .into()),
        _ => Err(OpFailure::Ck(e)),
    }
}

/// A session borrowed from the pool; given back on drop.
struct PooledSession<'a> {
    inner: &'a HsmInner,
    epoch: u64,
    session: Option<Session>,
}

impl PooledSession<'_> {
    /// Drops a dead session instead of giving it back.
    fn discard(mut self) {
        let dead = self.session.take();
        let call = inner_read(&self.inner.calls);
        drop(dead);
        drop(call);
        self.inner.lock().open -= 1;
        self.inner.freed.notify_one();
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.inner.lock().idle.push((self.epoch, s));
            self.inner.freed.notify_one();
        }
    }
}

fn inner_read(lock: &RwLock<()>) -> std::sync::RwLockReadGuard<'_, ()> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn load_module(module: &Path) -> Result<Pkcs11, HsmError> {
    if !module.exists() {
        return Err(HsmError::ModuleLoad {
            path: module.to_path_buf(),
            reason: "no such file".into(),
        });
    }
    Pkcs11::new(module).map_err(|e| {
        let reason = match e {
            CkError::MissingSymbol(sym) => {
                format!("it has no {sym}, so it is not a PKCS#11 module")
            }
            CkError::LibraryLoading(e) => e.to_string().replace('\n', " "),
            other => other.to_string(),
        };
        HsmError::ModuleLoad {
            path: module.to_path_buf(),
            reason,
        }
    })
}

fn find_token(
    ctx: &Pkcs11,
    module: &Path,
    want: &TokenSelector,
) -> Result<(Slot, String), HsmError> {
    let slots = ctx
        .get_slots_with_initialized_token()
        .map_err(|e| HsmError::pkcs11("C_GetSlotList", e))?;
    let mut present = Vec::new();
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        let label = info.label().trim_end().to_string();
        let serial = info.serial_number().trim_end().to_string();
        let hit = match want {
            TokenSelector::Label(l) => *l == label,
            TokenSelector::Serial(s) => *s == serial,
        };
        if hit {
            return Ok((slot, label));
        }
        present.push(format!("`{label}` serial {serial}"));
    }
    let token = match want {
        TokenSelector::Label(l) => format!("labelled `{l}`"),
        TokenSelector::Serial(s) => format!("with serial {s}"),
    };
    let present = if present.is_empty() {
        "none".to_string()
    } else {
        present.join(", ")
    };
    Err(HsmError::TokenNotFound {
        token,
        path: module.to_path_buf(),
        present,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    fn message(r: Result<(), OpFailure>) -> String {
        match r {
            Err(OpFailure::Hsm(e)) => e.to_string(),
            Err(OpFailure::Ck(e)) => format!("ck: {e}"),
            Ok(()) => "ok".into(),
        }
    }

    // SoftHSM2 never locks a user PIN (it only sets "user PIN count low"), so CKR_PIN_LOCKED is
    // checked here on the classification alone.
    #[test]
    fn login_failures_are_classified() {
        let err = |rv| CkError::Pkcs11(rv, Function::Login);
        assert_eq!(
            message(login_failure(err(RvError::PinLocked), "ca")),
            "HSM user PIN of token ca is locked (CKR_PIN_LOCKED); the security officer must unlock it (softhsm2-util/pkcs11-tool --init-pin)"
        );
        assert_eq!(
            message(login_failure(err(RvError::PinIncorrect), "ca")),
            "HSM login to token ca failed: wrong user PIN (CKR_PIN_INCORRECT); fix the PIN source in the HSM config before the token locks"
        );
        assert_eq!(
            message(login_failure(err(RvError::UserAlreadyLoggedIn), "ca")),
            "ok"
        );
        assert!(message(login_failure(err(RvError::DeviceRemoved), "ca")).starts_with("ck: "));
    }
}
