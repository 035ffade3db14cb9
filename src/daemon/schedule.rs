//! Every timer the loop and its steps use, each from its own setting or a named constant,
//! derived once at start: no setting means more than its name and its comment in
//! `config/batchwatch.toml` say (`poll.*` is polling only).

use std::time::Duration;

use crate::clock::{self, Timestamp};
use crate::config::Settings;

/// When something is next due, or unarmed when nothing is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timer(Option<Timestamp>);

impl Timer {
    /// A timer armed for `at`.
    pub fn at(at: Timestamp) -> Timer {
        Timer(Some(at))
    }

    pub fn arm(&mut self, at: Timestamp) {
        self.0 = Some(at);
    }

    /// Arms it for `after` from `now`.
    pub fn arm_after(&mut self, now: Timestamp, after: Duration) {
        self.arm(clock::add(now, after));
    }

    pub fn due(&self, now: Timestamp) -> bool {
        self.0.is_some_and(|at| at <= now)
    }

    /// Whether it is due at `now`; if it is, it is unarmed, for its work to arm it again.
    pub fn take_due(&mut self, now: Timestamp) -> bool {
        let due = self.due(now);
        if due {
            self.0 = None;
        }
        due
    }

    /// Whether a periodic timer is due at `now`; if it is, it is armed again for `every` from
    /// `now`.
    pub fn fire(&mut self, now: Timestamp, every: Duration) -> bool {
        let due = self.due(now);
        if due {
            self.arm_after(now, every);
        }
        due
    }

    /// When it is due, if it is armed.
    pub fn when(&self) -> Option<Timestamp> {
        self.0
    }
}

/// The nearest of `timers`, if any is armed.
pub fn nearest(timers: impl IntoIterator<Item = Timer>) -> Option<Timestamp> {
    timers.into_iter().filter_map(|t| t.when()).min()
}

/// How long an entry of incoming/ that could not be claimed (a permission problem) is left
/// alone before it is tried again.
pub const CLAIM_RETRY: Duration = Duration::from_secs(60);

/// The longest the loop sleeps when no timer is nearer: a safety net, in case something due
/// was not foreseen.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The shortest the loop sleeps between rounds, so a burst of wake-ups (a file written in
/// many small pieces) costs few rounds.
pub const MIN_SLEEP: Duration = Duration::from_millis(5);

/// How often processing/ is gone through for files a failure left behind (a claim whose row
/// was not written, a finished job's file not moved on) when nothing failed meanwhile: after a
/// failure it is gone through at the next scan, and after a sweep that left a file, after the
/// failed-task back-off. Each pass reads every unfinished job's row, so
/// it is not done at every scan.
pub const PROCESSING_SWEEP: Duration = Duration::from_secs(300);

/// After a task ends, the loop waits this long for others to end before its next round, so a
/// burst of thousands of small tasks (intake) costs a round per burst, not per task.
pub const TASK_GATHER: Duration = Duration::from_millis(10);

/// How often the status line is refreshed at most.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);

/// The timers, from the settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// How often incoming/ is scanned when nothing wakes the loop sooner (`queue.scan_interval`).
    pub scan_every: Duration,
    /// How long a file must hold still before it is claimed (`queue.settle_time`).
    pub settle: Duration,
    /// A failed request without a server's delay is tried again after this
    /// (`backoff.failed_request`).
    pub failed_request: Duration,
    /// A task that failed (a database or disk error) is tried again after this, doubling with
    /// each failure in a row (`backoff.failed_task_initial`) ...
    pub failed_task_initial: Duration,
    /// ... up to this (`backoff.failed_task_max`).
    pub failed_task_max: Duration,
    /// After the API refused the key, it is tried again this often (`backoff.auth_retry`).
    pub auth_retry: Duration,
    /// The late duplicates of re-sent creates are looked for this often
    /// (`reconcile.duplicate_check_interval`) ...
    pub duplicate_check_every: Duration,
    /// ... for this long after the create was sent again (`reconcile.duplicate_watch`).
    pub duplicate_watch: Duration,
}

impl Schedule {
    pub fn new(s: &Settings) -> Schedule {
        Schedule {
            scan_every: s.queue.scan_interval.get(),
            settle: s.queue.settle_time.get(),
            failed_request: s.backoff.failed_request.get(),
            failed_task_initial: s.backoff.failed_task_initial.get(),
            failed_task_max: s.backoff.failed_task_max.get(),
            auth_retry: s.backoff.auth_retry.get(),
            duplicate_check_every: s.reconcile.duplicate_check_interval.get(),
            duplicate_watch: s.reconcile.duplicate_watch.get(),
        }
    }

    /// How long a task waits after failing `failures` times in a row.
    pub fn task_retry(&self, failures: u32) -> Duration {
        doubling(
            self.failed_task_initial,
            i64::from(failures),
            self.failed_task_max,
        )
    }

    /// When processing/ is gone through again after a sweep, `left` sweeps in a row having
    /// left a file where it was: [`PROCESSING_SWEEP`] after one that handled every file, else
    /// the failed-task back-off.
    pub fn processing_sweep_after(&self, left: u32) -> Duration {
        match left {
            0 => PROCESSING_SWEEP,
            n => self.task_retry(n),
        }
    }
}

/// The wait after the `nth` failure (or refusal) in a row: `first` after the first, doubling
/// after each, at most `max`. Every back-off of the daemon is this one.
pub fn doubling(first: Duration, nth: i64, max: Duration) -> Duration {
    let doublings = u32::try_from(nth.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    first.saturating_mul(1 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_is_due_from_its_time_on_and_taking_it_unarms_it_until_armed_again() {
        let t0: Timestamp = "2026-12-06T10:00:00Z".parse().unwrap();
        let mut timer = Timer::default();
        assert!(!timer.due(t0) && !timer.take_due(t0), "unarmed");
        timer.arm_after(t0, Duration::from_secs(60));
        let later = clock::add(t0, Duration::from_secs(60));
        assert!(!timer.due(t0));
        assert!(timer.take_due(later));
        assert_eq!(timer, Timer::default(), "taken");
        assert!(!timer.take_due(later), "due once");
        let armed = [Timer::at(later), Timer::default(), Timer::at(t0)];
        assert_eq!(nearest(armed), Some(t0));
        assert_eq!(nearest([Timer::default()]), None);
    }

    #[test]
    fn a_periodic_timer_fires_from_its_time_on_and_is_armed_again_from_then() {
        let t0: Timestamp = "2026-12-06T10:00:00Z".parse().unwrap();
        let every = Duration::from_secs(60);
        let mut timer = Timer::default();
        assert!(!timer.fire(t0, every), "unarmed");
        timer.arm(t0);
        let late = clock::add(t0, Duration::from_secs(5));
        assert!(timer.fire(late, every), "due, fired late");
        assert_eq!(
            timer.when(),
            Some(clock::add(late, every)),
            "armed from when it fired"
        );
        assert!(!timer.fire(late, every), "once");
    }

    #[test]
    fn a_failed_task_waits_longer_each_time_up_to_its_maximum() {
        let mut s = Schedule::new(&Settings::load_from(None, []).unwrap());
        s.failed_task_initial = Duration::from_secs(5);
        s.failed_task_max = Duration::from_secs(60);
        let waits: Vec<u64> = (1..=6).map(|n| s.task_retry(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
    }

    #[test]
    fn a_sweep_of_processing_that_left_a_file_backs_off_like_a_failed_task() {
        let mut s = Schedule::new(&Settings::load_from(None, []).unwrap());
        s.failed_task_initial = Duration::from_secs(5);
        s.failed_task_max = Duration::from_secs(60);
        assert_eq!(s.processing_sweep_after(0), PROCESSING_SWEEP);
        let waits: Vec<u64> = (1..=6)
            .map(|n| s.processing_sweep_after(n).as_secs())
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
    }
}
