//! Simulated time: unix milliseconds that run `scale` times faster than the real clock.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A point in simulated time, in unix milliseconds.
pub(crate) type SimMs = i64;

/// Unix seconds of a simulated instant, as the API reports timestamps.
pub(crate) fn secs(t: SimMs) -> i64 {
    t.div_euclid(1000)
}

/// Simulated milliseconds in `secs` simulated seconds.
pub(crate) fn ms(secs: f64) -> i64 {
    (secs * 1000.0).round() as i64
}

/// The real wall clock, in unix milliseconds.
pub(crate) fn real_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Maps real time onto simulated time. Changing the scale or jumping ahead re-anchors the
/// mapping, so simulated time never runs backwards.
#[derive(Debug)]
pub(crate) struct Clock {
    base_sim: SimMs,
    base_real: Instant,
    scale: f64,
}

impl Clock {
    /// A clock that reads `start` now and runs `scale` simulated seconds per real second.
    pub(crate) fn new(start: SimMs, scale: f64) -> Clock {
        Clock {
            base_sim: start,
            base_real: Instant::now(),
            scale,
        }
    }

    pub(crate) fn now(&self) -> SimMs {
        let real = self.base_real.elapsed().as_secs_f64();
        self.base_sim + (real * self.scale * 1000.0) as i64
    }

    pub(crate) fn scale(&self) -> f64 {
        self.scale
    }

    pub(crate) fn set_scale(&mut self, scale: f64) {
        self.base_sim = self.now();
        self.base_real = Instant::now();
        self.scale = scale;
    }

    /// Jumps `by` simulated milliseconds ahead.
    pub(crate) fn advance(&mut self, by: i64) {
        self.base_sim = self.now() + by.max(0);
        self.base_real = Instant::now();
    }

    /// The real time until simulated instant `t`; `None` when the clock is stopped.
    pub(crate) fn real_until(&self, t: SimMs) -> Option<Duration> {
        if self.scale <= 0.0 {
            return None;
        }
        let sim_ms = (t - self.now()).max(0) as f64;
        Some(Duration::from_secs_f64(sim_ms / 1000.0 / self.scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_clock_moves_only_when_advanced() {
        let mut clock = Clock::new(1_000_000, 0.0);
        assert_eq!(clock.now(), 1_000_000);
        clock.advance(5_000);
        assert_eq!(clock.now(), 1_005_000);
        assert_eq!(clock.real_until(2_000_000), None);
    }

    #[test]
    fn a_fast_clock_runs_ahead_of_real_time() {
        let clock = Clock::new(0, 1_000_000.0);
        std::thread::sleep(Duration::from_millis(2));
        assert!(clock.now() >= 2_000_000, "{}", clock.now());
        assert_eq!(secs(-1), -1);
        assert_eq!(ms(1.5), 1500);
    }
}
