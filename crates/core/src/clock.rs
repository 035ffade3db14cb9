//! Time: one clock for the daemon (tests can set it), and the one text form of a timestamp that
//! the database and the reports use.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

pub use jiff::Timestamp;

/// Where the daemon's parts read the time from.
#[derive(Clone, Debug)]
pub enum Clock {
    /// The system's clock.
    System,
    /// A clock that moves only when told, in milliseconds since the epoch.
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock set to `start`.
    pub fn manual(start: Timestamp) -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(start.as_millisecond())))
    }

    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => Timestamp::now(),
            Clock::Manual(ms) => Timestamp::from_millisecond(ms.load(Ordering::SeqCst))
                .expect("manual clock in range"),
        }
    }

    /// Moves a manual clock forward; does nothing to the system clock.
    pub fn advance(&self, by: std::time::Duration) {
        if let Clock::Manual(ms) = self {
            ms.fetch_add(
                i64::try_from(by.as_millis()).unwrap_or(i64::MAX),
                Ordering::SeqCst,
            );
        }
    }
}

/// The stored form: UTC, RFC 3339, milliseconds, `Z` (2026-11-22T10:15:00.000Z). Fixed width, so
/// text order is time order.
pub fn format(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Parses a stored timestamp (or any RFC 3339 form).
pub fn parse(text: &str) -> Option<Timestamp> {
    text.parse().ok()
}

/// `ts` plus a duration, saturating at the largest timestamp.
pub fn add(ts: Timestamp, d: std::time::Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| ts.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// `ts` minus a duration, saturating at the smallest timestamp.
pub fn sub(ts: Timestamp, d: std::time::Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| ts.checked_sub(d).ok())
        .unwrap_or(Timestamp::MIN)
}

/// A short human form of a duration: `45s`, `12m`, `3h 20m`, `2d 4h`.
pub fn humanize(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => match (s % 3_600) / 60 {
            0 => format!("{}h", s / 3_600),
            m => format!("{}h {m}m", s / 3_600),
        },
        _ => match (s % 86_400) / 3_600 {
            0 => format!("{}d", s / 86_400),
            h => format!("{}d {h}h", s / 86_400),
        },
    }
}

/// The time from `from` to `to`, or zero when `to` is earlier.
pub fn between(from: Timestamp, to: Timestamp) -> std::time::Duration {
    std::time::Duration::try_from(to.duration_since(from)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_form_has_fixed_width_and_parses_back() {
        let ts = Timestamp::from_millisecond(1_763_806_500_007).unwrap();
        let text = format(ts);
        assert_eq!(text, "2025-11-22T10:15:00.007Z");
        assert_eq!(parse(&text), Some(ts));
        assert_eq!(
            format(Timestamp::from_second(1_763_806_500).unwrap()).len(),
            text.len()
        );
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = Clock::manual(Timestamp::from_second(1_000).unwrap());
        assert_eq!(clock.now().as_second(), 1_000);
        clock.advance(std::time::Duration::from_secs(90));
        assert_eq!(clock.now().as_second(), 1_090);
    }

    #[test]
    fn durations_read_like_a_person_would_write_them() {
        use std::time::Duration;
        assert_eq!(humanize(Duration::from_secs(45)), "45s");
        assert_eq!(humanize(Duration::from_secs(12 * 60 + 5)), "12m");
        assert_eq!(humanize(Duration::from_secs(3 * 3600 + 20 * 60)), "3h 20m");
        assert_eq!(
            humanize(Duration::from_secs(2 * 86_400 + 4 * 3600)),
            "2d 4h"
        );
        assert_eq!(humanize(Duration::from_secs(86_400)), "1d");
    }
}
