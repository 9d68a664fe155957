//! [`Timestamp`]: the one type of every stored time, and its text form in the database.
//!
//! A time is kept in whole seconds, UTC, and written as fixed-width RFC 3339
//! (`YYYY-MM-DDTHH:MM:SSZ`, always 20 characters), so comparing the stored text compares the
//! times (SQL compares them as text: `expires_at <= $1`). Whole seconds because every time
//! that leaves the server in a signed object is whole seconds (certificate validity, CRL
//! thisUpdate/nextUpdate and revocationDate, OCSP producedAt) and so were the times already
//! stored for them; a finer stored time would only be truncated again on the way out.

use serde::Serialize;
use sqlx::any::AnyValueRef;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Any, Database, Decode, Encode, Type};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// A point in time, whole seconds, UTC. Its `Display` is the stored form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

/// Stored text that is not an RFC 3339 time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored time {0:?} is not RFC 3339")]
pub struct BadTimestamp(pub String);

impl Timestamp {
    /// The moment `t`, in UTC, with its fraction of a second dropped.
    pub fn from_datetime(t: OffsetDateTime) -> Timestamp {
        Timestamp(
            t.to_offset(UtcOffset::UTC)
                .replace_nanosecond(0)
                .expect("0 is a valid nanosecond"),
        )
    }

    /// Any RFC 3339 time (any offset, any fraction), truncated to whole seconds in UTC.
    pub fn parse(text: &str) -> Result<Timestamp, BadTimestamp> {
        OffsetDateTime::parse(text, &Rfc3339)
            .map(Timestamp::from_datetime)
            .map_err(|_| BadTimestamp(text.to_string()))
    }

    pub fn datetime(self) -> OffsetDateTime {
        self.0
    }

    pub fn unix_seconds(self) -> i64 {
        self.0.unix_timestamp()
    }

    /// `self + d`, or `None` past the representable range.
    pub fn checked_add(self, d: std::time::Duration) -> Option<Timestamp> {
        let d = time::Duration::try_from(d).ok()?;
        self.0.checked_add(d).map(Timestamp::from_datetime)
    }

    /// `self - d`, or `None` before the representable range.
    pub fn checked_sub(self, d: std::time::Duration) -> Option<Timestamp> {
        let d = time::Duration::try_from(d).ok()?;
        self.0.checked_sub(d).map(Timestamp::from_datetime)
    }
}

impl std::ops::Add<time::Duration> for Timestamp {
    type Output = Timestamp;
    /// Panics past the representable range, as `OffsetDateTime + Duration` does.
    fn add(self, d: time::Duration) -> Timestamp {
        Timestamp::from_datetime(self.0 + d)
    }
}

impl std::ops::Sub<time::Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, d: time::Duration) -> Timestamp {
        Timestamp::from_datetime(self.0 - d)
    }
}

impl std::ops::Sub for Timestamp {
    type Output = time::Duration;
    fn sub(self, other: Timestamp) -> time::Duration {
        self.0 - other.0
    }
}

impl From<OffsetDateTime> for Timestamp {
    fn from(t: OffsetDateTime) -> Timestamp {
        Timestamp::from_datetime(t)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }
}

impl std::fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::str::FromStr for Timestamp {
    type Err = BadTimestamp;
    fn from_str(text: &str) -> Result<Timestamp, BadTimestamp> {
        Timestamp::parse(text)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Type<Any> for Timestamp {
    fn type_info() -> <Any as Database>::TypeInfo {
        <String as Type<Any>>::type_info()
    }
    fn compatible(ty: &<Any as Database>::TypeInfo) -> bool {
        <String as Type<Any>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Any> for Timestamp {
    fn encode_by_ref(
        &self,
        buf: &mut <Any as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        <String as Encode<'q, Any>>::encode(self.to_string(), buf)
    }
}

impl<'r> Decode<'r, Any> for Timestamp {
    fn decode(value: AnyValueRef<'r>) -> Result<Timestamp, BoxDynError> {
        let text = <&str as Decode<'r, Any>>::decode(value)?;
        Ok(Timestamp::parse(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_is_fixed_width_utc_seconds() {
        for (given, stored) in [
            ("2026-01-02T03:04:05Z", "2026-01-02T03:04:05Z"),
            ("2026-01-02T03:04:05.999999999Z", "2026-01-02T03:04:05Z"),
            ("2026-01-02T03:04:05.1Z", "2026-01-02T03:04:05Z"),
            ("2026-01-02T05:04:05+02:00", "2026-01-02T03:04:05Z"),
            ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
            ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"),
        ] {
            let t = Timestamp::parse(given).unwrap();
            assert_eq!(t.to_string(), stored, "{given}");
            assert_eq!(t.to_string().len(), 20);
            assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
        }
    }

    #[test]
    fn text_order_is_time_order() {
        let times = [
            "1999-12-31T23:59:59Z",
            "2026-01-01T00:00:00.5Z",
            "2026-01-01T00:00:01Z",
            "2026-01-01T00:00:01.25Z",
            "2026-01-01T00:00:02Z",
            "2026-01-01T00:00:02+01:00",
        ];
        for a in times {
            for b in times {
                let (ta, tb) = (Timestamp::parse(a).unwrap(), Timestamp::parse(b).unwrap());
                assert_eq!(ta.cmp(&tb), ta.to_string().cmp(&tb.to_string()), "{a} {b}");
            }
        }
    }

    #[test]
    fn bad_stored_time_is_named() {
        assert_eq!(
            Timestamp::parse("yesterday").unwrap_err().to_string(),
            "stored time \"yesterday\" is not RFC 3339"
        );
    }

    #[test]
    fn adding_past_the_range_is_none() {
        let t = Timestamp::parse("9999-12-31T23:59:00Z").unwrap();
        assert_eq!(
            t.checked_add(std::time::Duration::from_secs(59))
                .map(|t| t.to_string()),
            Some("9999-12-31T23:59:59Z".into())
        );
        assert_eq!(t.checked_add(std::time::Duration::from_secs(60)), None);
        assert_eq!(t.checked_add(std::time::Duration::MAX), None);
    }
}
