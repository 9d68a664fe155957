//! [`Clock`]: where every stored and compared time comes from. The composition root gives the
//! store one ([`super::Store::open_with_clock`]); everything above reads the time through the
//! store ([`super::Store::now`], [`super::WriteTx::now`]), so a test can move time on with a
//! [`ManualClock`] instead of sleeping.

use super::Timestamp;
use std::sync::{Arc, Mutex};

/// The system clock, or a [`ManualClock`]'s time. Cheap to clone.
#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<ManualClock>,
}

impl Clock {
    /// The operating system's clock (production).
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    pub fn now(&self) -> Timestamp {
        match &self.manual {
            None => Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
            Some(m) => m.now(),
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.manual {
            None => write!(f, "Clock::system"),
            Some(m) => write!(f, "Clock::manual({})", m.now()),
        }
    }
}

/// A clock that stands still until it is moved (tests). Clones share one time.
#[derive(Clone)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock(Arc::new(Mutex::new(start)))
    }

    /// Starting at the system clock's current second.
    pub fn starting_now() -> ManualClock {
        ManualClock::new(Clock::system().now())
    }

    /// The [`Clock`] to hand to the store (or the server) under test.
    pub fn clock(&self) -> Clock {
        Clock {
            manual: Some(self.clone()),
        }
    }

    pub fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the time on by `d` (whole seconds count; a fraction is dropped).
    pub fn advance(&self, d: std::time::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t = t
            .checked_add(d)
            .expect("a manual clock advanced past year 9999");
    }

    pub fn set(&self, to: Timestamp) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_stands_still_until_advanced() {
        let start = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
        let manual = ManualClock::new(start);
        let clock = manual.clock();
        assert_eq!(clock.now(), start);
        manual.advance(std::time::Duration::from_secs(90));
        assert_eq!(clock.clone().now().to_string(), "2026-01-01T00:01:30Z");
    }
}
