//! The notifier: delivers the notification outbox (`store::NotificationRow`) to a webhook, and
//! runs the expiry scan that writes `certificate.expiring` notices
//! (`lifecycle::enqueue_expiry_notices`). At least once: a row is marked delivered only after
//! a 2xx answer; until then it is sent again with exponential backoff, with the same body and
//! the same idempotency key (the row id), also after a restart. The HMAC key is read once from
//! its file, kept in `Zeroizing` memory and never logged.
use crate::store::{NotificationRow, Store, Timestamp};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::path::PathBuf;
use std::time::Duration;
use zeroize::Zeroizing;

/// The HTTP header carrying the body's HMAC-SHA256 (`sha256=<hex>`).
pub const SIGNATURE_HEADER: &str = "x-tessera-signature";
/// The HTTP header carrying the idempotency key (the outbox row id, the same on every resend).
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The HTTP header naming the event (`token.suspended`, …), also in the body.
pub const EVENT_HEADER: &str = "x-tessera-event";
/// Rows sent per poll.
const BATCH: i64 = 100;
/// How long one delivery may take (connect, send, answer) before it counts as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// `[notifications]` of the server configuration (docs/operations.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    /// `http://host:port/path` of the receiver.
    pub webhook_url: String,
    /// A file holding the HMAC-SHA256 key (at least 32 bytes, used as they are).
    pub hmac_key_file: PathBuf,
    /// A `certificate.expiring` notice is written once per certificate and threshold when its
    /// notAfter comes within this many days. 1..=400 each, at most 8.
    #[serde(default = "default_thresholds")]
    pub expiry_thresholds_days: Vec<i64>,
    /// How often the expiry scan runs.
    #[serde(default = "default_scan")]
    pub scan_interval_seconds: u64,
    /// How often the outbox is read for due rows.
    #[serde(default = "default_poll")]
    pub poll_interval_seconds: u64,
    /// The wait after the first failed attempt; doubled after each further one.
    #[serde(default = "default_retry_initial")]
    pub retry_initial_seconds: u64,
    /// The longest wait between attempts.
    #[serde(default = "default_retry_max")]
    pub retry_max_seconds: u64,
}

fn default_thresholds() -> Vec<i64> {
    vec![30, 7]
}
fn default_scan() -> u64 {
    3600
}
fn default_poll() -> u64 {
    5
}
fn default_retry_initial() -> u64 {
    10
}
fn default_retry_max() -> u64 {
    3600
}

/// A checked `[notifications]`, with its key read.
pub struct Notifier {
    host: String,
    port: u16,
    authority: String,
    path: String,
    key: Zeroizing<Vec<u8>>,
    thresholds: Vec<i64>,
    scan_every: Duration,
    poll_every: Duration,
    retry_initial: u64,
    retry_max: u64,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Notifier {
    /// Checks the settings and reads the key; the error names the setting at fault.
    pub fn new(c: &NotificationsConfig) -> Result<Notifier, String> {
        let uri: hyper::Uri = c
            .webhook_url
            .parse()
            .map_err(|_| format!("webhook_url {:?} is not a URL", c.webhook_url))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(
                    "webhook_url: https is not supported; deliver to a receiver or TLS proxy on this host or a trusted network over http (docs/operations.md)"
                        .into(),
                );
            }
            _ => {
                return Err(format!(
                    "webhook_url {:?} must start with http://",
                    c.webhook_url
                ));
            }
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("webhook_url {:?} has no host", c.webhook_url))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| host.clone());
        let path = uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into());
        let key = Zeroizing::new(std::fs::read(&c.hmac_key_file).map_err(|e| {
            format!(
                "cannot read hmac_key_file {}: {e}",
                c.hmac_key_file.display()
            )
        })?);
        if key.len() < 32 {
            return Err(format!(
                "hmac_key_file {} holds fewer than 32 bytes",
                c.hmac_key_file.display()
            ));
        }
        if c.expiry_thresholds_days.len() > 8
            || c.expiry_thresholds_days
                .iter()
                .any(|d| !(1..=crate::lifecycle::MAX_EXPIRY_WINDOW_DAYS).contains(d))
        {
            return Err(format!(
                "expiry_thresholds_days must hold at most 8 numbers of days, each 1 to {}",
                crate::lifecycle::MAX_EXPIRY_WINDOW_DAYS
            ));
        }
        for (name, value) in [
            ("scan_interval_seconds", c.scan_interval_seconds),
            ("poll_interval_seconds", c.poll_interval_seconds),
            ("retry_initial_seconds", c.retry_initial_seconds),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if c.retry_max_seconds < c.retry_initial_seconds {
            return Err("retry_max_seconds must not be less than retry_initial_seconds".into());
        }
        Ok(Notifier {
            host,
            port,
            authority,
            path,
            key,
            thresholds: c.expiry_thresholds_days.clone(),
            scan_every: Duration::from_secs(c.scan_interval_seconds),
            poll_every: Duration::from_secs(c.poll_interval_seconds),
            retry_initial: c.retry_initial_seconds,
            retry_max: c.retry_max_seconds,
        })
    }

    /// The wait before attempt `attempts + 1` after `attempts` failed ones (≥ 1).
    fn backoff(&self, attempts: i64) -> u64 {
        let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 32)).unwrap_or(32);
        self.retry_initial
            .saturating_mul(1u64 << doublings)
            .min(self.retry_max)
    }

    /// Sends every due row once; returns how many were delivered.
    pub async fn deliver_due(&self, store: &Store) -> crate::store::Result<usize> {
        let mut delivered = 0;
        for row in store.due_notifications(store.now(), BATCH).await? {
            let body = body(&row);
            match self.post(&row, &body).await {
                Ok(()) => {
                    store.mark_notification_delivered(row.id).await?;
                    delivered += 1;
                }
                Err(error) => {
                    let wait = self.backoff(row.attempts + 1);
                    let next = store.now() + time::Duration::seconds(wait as i64);
                    tracing::warn!(id = row.id, event = %row.event, %error, retry_in_seconds = wait, "notification not delivered");
                    store.mark_notification_failed(row.id, next, &error).await?;
                }
            }
        }
        Ok(delivered)
    }

    async fn post(&self, row: &NotificationRow, body: &[u8]) -> Result<(), String> {
        use http_body_util::Full;
        use hyper_util::rt::TokioIo;
        let request = hyper::Request::post(self.path.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                SIGNATURE_HEADER,
                format!("sha256={}", signature(&self.key, body)),
            )
            .header(IDEMPOTENCY_HEADER, row.id.to_string())
            .header(EVENT_HEADER, row.event.as_str())
            .body(Full::new(bytes::Bytes::copy_from_slice(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("HTTP handshake with {} failed: {e}", self.authority))?;
            let driver = tokio::spawn(connection);
            let answer = sender.send_request(request).await;
            driver.abort();
            let answer = answer.map_err(|e| format!("{} did not answer: {e}", self.authority))?;
            if answer.status().is_success() {
                Ok(())
            } else {
                Err(format!("{} answered {}", self.authority, answer.status()))
            }
        };
        tokio::time::timeout(DELIVERY_TIMEOUT, attempt)
            .await
            .map_err(|_| format!("{} took longer than {DELIVERY_TIMEOUT:?}", self.authority))?
    }

    /// The notifier's two loops (expiry scan, delivery) until the task is aborted.
    pub fn spawn(self, store: Store) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut scan = tokio::time::interval(self.scan_every);
            let mut poll = tokio::time::interval(self.poll_every);
            scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = scan.tick() => {
                        if let Err(e) = crate::lifecycle::enqueue_expiry_notices(&store, &self.thresholds).await {
                            tracing::warn!(error = %e, "expiry scan failed");
                        }
                    }
                    _ = poll.tick() => {
                        if let Err(e) = self.deliver_due(&store).await {
                            tracing::warn!(error = %e, "notification delivery failed");
                        }
                    }
                }
            }
        })
    }
}

/// The JSON body of a row: `{"id", "event", "created_at", "data"}`; the same bytes on every
/// attempt.
pub fn body(row: &NotificationRow) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        id: i64,
        event: &'a str,
        created_at: Timestamp,
        data: serde_json::Value,
    }
    let data = serde_json::from_str(&row.payload).unwrap_or(serde_json::Value::Null);
    serde_json::to_vec(&Body {
        id: row.id,
        event: &row.event,
        created_at: row.created_at,
        data,
    })
    .unwrap_or_default()
}

/// Lower-case hex HMAC-SHA256 of `body` under `key`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn config(url: &str, key_file: PathBuf) -> NotificationsConfig {
        NotificationsConfig {
            webhook_url: url.into(),
            hmac_key_file: key_file,
            expiry_thresholds_days: vec![30, 7],
            scan_interval_seconds: 1,
            poll_interval_seconds: 1,
            retry_initial_seconds: 2,
            retry_max_seconds: 10,
        }
    }

    #[test]
    fn settings_are_checked_and_backoff_doubles_up_to_the_maximum() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, [7u8; 32]).unwrap();
        let n = Notifier::new(&config("http://127.0.0.1:9/hook", key.clone())).unwrap();
        assert_eq!(
            (n.host.as_str(), n.port, n.path.as_str()),
            ("127.0.0.1", 9, "/hook")
        );
        assert_eq!([1, 2, 3, 4, 40].map(|a| n.backoff(a)), [2, 4, 8, 10, 10]);
        assert!(!format!("{n:?}").contains("7, 7"));
        for (url, why) in [
            ("https://h/x", "https is not supported"),
            ("ftp://h/x", "must start with http://"),
            ("not a url", "is not a URL"),
        ] {
            let e = Notifier::new(&config(url, key.clone())).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
        std::fs::write(&key, b"short").unwrap();
        let e = Notifier::new(&config("http://h/x", key.clone())).unwrap_err();
        assert!(
            e.contains("fewer than 32 bytes") && !e.contains("short\""),
            "{e}"
        );
        let e = Notifier::new(&config("http://h/x", dir.path().join("missing"))).unwrap_err();
        assert!(e.contains("cannot read hmac_key_file"), "{e}");
        std::fs::write(&key, [7u8; 32]).unwrap();
        let mut c = config("http://h/x", key);
        c.expiry_thresholds_days = vec![0];
        assert!(
            Notifier::new(&c)
                .unwrap_err()
                .contains("expiry_thresholds_days")
        );
        c.expiry_thresholds_days = vec![7];
        c.retry_max_seconds = 1;
        assert!(Notifier::new(&c).unwrap_err().contains("retry_max_seconds"));
    }
}
