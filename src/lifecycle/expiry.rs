//! Expiry: the window `ListExpiringCertificates`, `tessera report expiring` and the
//! `tessera_certificates_expiring` gauge ask about. Whole days only: a certificate's validity is
//! set in days by its profile, and an operator plans renewals in days.

use super::LifecycleError;
use crate::store::{ExpiringQuery, NewNotification, Store, Timestamp};

/// The longest window, in days: longer than any profile's validity (a year and a bit), so a
/// window of the maximum lists every good certificate that has not expired yet.
pub const MAX_EXPIRY_WINDOW_DAYS: i64 = 400;
/// The window when a request leaves it unset (0).
pub const DEFAULT_EXPIRY_WINDOW_DAYS: i64 = 30;
/// The windows the `tessera_certificates_expiring` gauge reports (label `within_days`).
pub const EXPIRY_GAUGE_WINDOWS_DAYS: [i64; 2] = [7, 30];

/// A number of whole days, 1..=[`MAX_EXPIRY_WINDOW_DAYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryWindow {
    days: i64,
}

fn out_of_range(field: &str, given: &str) -> LifecycleError {
    LifecycleError::InvalidField {
        field: field.to_string(),
        reason: "INVALID_WINDOW",
        message: format!("{given} is not a window of 1 to {MAX_EXPIRY_WINDOW_DAYS} days"),
    }
}

impl ExpiryWindow {
    /// A request's `within_days`: 0 is the default (30), 1..=400 is taken, anything else is
    /// refused with `INVALID_WINDOW`.
    pub fn from_request(field: &str, within_days: i64) -> Result<ExpiryWindow, LifecycleError> {
        match within_days {
            0 => Ok(ExpiryWindow {
                days: DEFAULT_EXPIRY_WINDOW_DAYS,
            }),
            1..=MAX_EXPIRY_WINDOW_DAYS => Ok(ExpiryWindow { days: within_days }),
            _ => Err(out_of_range(field, &format!("{within_days} days"))),
        }
    }

    /// The command line's `--within`: days with a `d` suffix (`30d`); other units (`12h`, `4w`)
    /// and a bare number are refused, naming the form that works.
    pub fn parse_days(text: &str) -> Result<ExpiryWindow, LifecycleError> {
        let bad = |why: &str| LifecycleError::InvalidField {
            field: "--within".to_string(),
            reason: "INVALID_WINDOW",
            message: format!(
                "{text:?} {why}; give whole days like 30d (1d to {MAX_EXPIRY_WINDOW_DAYS}d)"
            ),
        };
        let Some(number) = text.strip_suffix('d') else {
            return Err(bad("is not a number of days"));
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("is not a number of days"));
        }
        match number.parse::<i64>() {
            Ok(days @ 1..=MAX_EXPIRY_WINDOW_DAYS) => Ok(ExpiryWindow { days }),
            _ => Err(bad("is out of range")),
        }
    }

    pub fn days(self) -> i64 {
        self.days
    }

    /// `[now, now + days]`: the notAfter range this window asks about.
    pub fn range(self, now: Timestamp) -> (Timestamp, Timestamp) {
        (now, now + time::Duration::days(self.days))
    }
}

/// The expiry scan: one `certificate.expiring` notice per good certificate and threshold whose
/// notAfter is within that many days from now, written once — the dedup key
/// `certificate.expiring/<serial>/<days>` makes a later scan write nothing for it again.
/// Returns the notices written by this scan.
pub async fn enqueue_expiry_notices(
    store: &Store,
    thresholds_days: &[i64],
) -> Result<usize, LifecycleError> {
    const PAGE: i64 = 500;
    let now = store.now();
    let mut written = 0;
    for &days in thresholds_days {
        let mut query = ExpiringQuery {
            from: now,
            until: now + time::Duration::days(days),
            after: None,
            limit: PAGE,
            profile: None,
            person_id: None,
        };
        loop {
            let rows = store.expiring_certificates(&query).await?;
            let mut notices = Vec::with_capacity(rows.len());
            for r in &rows {
                let person = match r.person_id {
                    Some(id) => store.person_external_id(id).await?,
                    None => None,
                };
                let token = match r.token_id {
                    Some(id) => store.token_serial(id).await?,
                    None => None,
                };
                notices.push(NewNotification {
                    event: "certificate.expiring",
                    dedup_key: Some(format!("certificate.expiring/{}/{days}", r.serial)),
                    payload: serde_json::json!({
                        "serial": r.serial,
                        "not_after": r.not_after,
                        "profile": r.profile,
                        "person_external_id": person,
                        "token_serial": token,
                        "within_days": days,
                    }),
                });
            }
            let mut tx = store.begin_write().await?;
            for n in &notices {
                if tx.enqueue_notification(n).await? {
                    written += 1;
                }
            }
            tx.commit().await?;
            match rows.last() {
                Some(last) if rows.len() as i64 == PAGE => {
                    query.after = Some((last.not_after, last.serial.clone()));
                }
                _ => break,
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_windows() {
        assert_eq!(ExpiryWindow::from_request("w", 0).unwrap().days(), 30);
        assert_eq!(ExpiryWindow::from_request("w", 1).unwrap().days(), 1);
        assert_eq!(ExpiryWindow::from_request("w", 400).unwrap().days(), 400);
        for bad in [-1, 401, i64::MAX] {
            let e = ExpiryWindow::from_request("within_days", bad).unwrap_err();
            assert!(
                matches!(e, LifecycleError::InvalidField { reason: "INVALID_WINDOW", ref field, .. } if field == "within_days"),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn command_line_windows_are_days_only() {
        assert_eq!(ExpiryWindow::parse_days("30d").unwrap().days(), 30);
        assert_eq!(ExpiryWindow::parse_days("400d").unwrap().days(), 400);
        for bad in [
            "30",
            "12h",
            "4w",
            "d",
            "0d",
            "401d",
            "-3d",
            "+3d",
            " 3d",
            "3 d",
            "99999999999999999999d",
        ] {
            let e = ExpiryWindow::parse_days(bad).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("like 30d"), "{bad}: {text}");
        }
    }

    #[test]
    fn range_is_now_to_now_plus_days() {
        let now = Timestamp::parse("2027-01-01T00:00:00Z").unwrap();
        let (from, until) = ExpiryWindow::parse_days("7d").unwrap().range(now);
        assert_eq!(from, now);
        assert_eq!(until.to_string(), "2027-01-08T00:00:00Z");
    }
}
