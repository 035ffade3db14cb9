//! What the activities share in memory, held by [`Ctx`](crate::daemon::ctx::Ctx), and the
//! names of the daemon's work ([`Subject`], [`Task`]): below every activity and every other
//! shared module, so none imports another for it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::clock::{self, Timestamp};

/// Batches per list page: the most the API gives.
pub const PAGE: u32 = 100;

/// The late duplicates already reported, so each is reported once.
#[derive(Debug, Default)]
pub struct DuplicateWatch {
    reported: Mutex<BTreeSet<String>>,
}

impl DuplicateWatch {
    pub fn is_new(&self, batch_id: &str) -> bool {
        !self.reported.lock().expect("lock").contains(batch_id)
    }

    pub fn reported(&self, batch_id: &str) {
        self.reported
            .lock()
            .expect("lock")
            .insert(batch_id.to_owned());
    }
}

/// Jobs whose remote side the database may not fully know; see the module docs.
#[derive(Debug, Default)]
pub struct Unverified(Mutex<BTreeSet<String>>);

impl Unverified {
    pub fn add(&self, job_id: &str) {
        self.0.lock().expect("lock").insert(job_id.to_owned());
    }

    pub fn contains(&self, job_id: &str) -> bool {
        self.0.lock().expect("lock").contains(job_id)
    }

    /// The jobs not yet checked.
    pub fn ids(&self) -> Vec<String> {
        self.0
            .lock()
            .expect("unverified lock")
            .iter()
            .cloned()
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().expect("lock").is_empty()
    }

    pub fn remove(&self, job_id: &str) {
        self.0.lock().expect("lock").remove(job_id);
    }
}

/// What the last sweep learned about the cost of the next one.
#[derive(Debug, Default)]
pub struct Sweeps {
    /// Pages the last sweep read (0 before the first).
    pub(crate) last_pages: AtomicU32,
}

impl Sweeps {
    /// How many requests a sweep of `active` submissions is expected to cost.
    pub(crate) fn expected_pages(&self, active: i64) -> i64 {
        match self.last_pages.load(Ordering::Relaxed) {
            0 => (active + i64::from(PAGE) - 1) / i64::from(PAGE),
            n => i64::from(n),
        }
    }
}

/// What a task works on. At most one task per subject runs at a time, whatever it does, so
/// a poll and a cancel of one batch, say, never race each other.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Job(String),
    Submission(i64),
    Key,
    Duplicates,
    /// The check of unverified jobs against the service.
    Unverified,
    /// The list sweep over every active batch.
    Sweep,
    /// Deleting remote files ([`crate::daemon::housekeeping::remote`]).
    RemoteFiles,
    /// Removing what old finished jobs left ([`crate::daemon::housekeeping::retention`]).
    Retention,
    /// Writing the undone requests of expired jobs ([`crate::daemon::housekeeping::resubmit`]).
    Resubmissions,
    /// Delivering one `[[notify]]` entry's notifications
    /// ([`crate::daemon::housekeeping::notifications`]).
    Notifications(String),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Job(id) => write!(f, "job {id}"),
            Subject::Submission(id) => write!(f, "batch {id}"),
            Subject::Key => f.write_str("the API key"),
            Subject::Duplicates => f.write_str("late duplicates"),
            Subject::Unverified => f.write_str("unverified jobs"),
            Subject::Sweep => f.write_str("the batch list"),
            Subject::RemoteFiles => f.write_str("remote files"),
            Subject::Retention => f.write_str("retention"),
            Subject::Resubmissions => f.write_str("resubmissions"),
            Subject::Notifications(target) => write!(f, "notifications to {target}"),
        }
    }
}

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::Display)]
#[strum(serialize_all = "snake_case")]
pub enum Task {
    Validate,
    Submit,
    Poll,
    Cancel,
    Collect,
    Finish,
    ProbeKey,
    CancelDuplicates,
    Verify,
    Sweep,
    DeleteRemoteFiles,
    Prune,
    Resubmit,
    Notify,
}

impl Task {
    /// Whether the task is dropped at once when the daemon stops, rather than given
    /// `daemon.shutdown_timeout` to finish. Deleting remote files and delivering notifications
    /// are housekeeping whose intents are rows: a deletion cut short is sent again at the next
    /// start (a repeat meets a 404), a notification too (its receiver drops a repeat by its
    /// id), and waiting for a service or receiver that does not answer would only hold the
    /// stop. The rest
    /// finish what they started (an upload or create whose outcome would otherwise have to be
    /// reconciled, a download, a file's move); retention and resubmission are local and short.
    pub fn stops_at_once(self) -> bool {
        matches!(self, Task::DeleteRemoteFiles | Task::Notify)
    }
}

/// What this instance knows of its lease and of its term as leader (`runtime::lease` keeps it
/// current), by the process's own monotonic clock: whether it leads now, and whether a request
/// to the service may start. Each runs from when the renewal that granted it was sent, so the
/// instance never believes it holds longer than the database does.
#[derive(Debug)]
pub struct Tenure {
    /// `None`: a store this daemon writes alone (`Lease::SOLE`): it always leads, and its
    /// lease never runs out.
    times: Option<Mutex<Times>>,
    /// True once the lease was found lost: the daemon stops (`Tenure::lost`).
    lost: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug, Clone, Copy)]
struct Times {
    lease_until: Instant,
    leads_until: Option<Instant>,
}

/// How long before its term ends by its own clock a leader stops leading, so that it has
/// stopped before the database lets another instance be elected (a quarter of a term shorter
/// than four seconds).
const STEP_DOWN_EARLY: Duration = Duration::from_secs(1);

impl Tenure {
    /// The tenure of the one daemon that writes its store.
    pub fn sole() -> Tenure {
        Tenure {
            times: None,
            lost: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The tenure of an instance registered at `registered` (when the registration was sent)
    /// for `ttl`, not leading yet.
    pub fn shared(registered: Instant, ttl: Duration) -> Tenure {
        Tenure {
            times: Some(Mutex::new(Times {
                lease_until: registered + ttl,
                leads_until: None,
            })),
            ..Tenure::sole()
        }
    }

    /// Whether this instance leads now.
    pub fn leads(&self) -> bool {
        self.times.as_ref().is_none_or(|times| {
            let times = times.lock().expect("lock");
            times
                .leads_until
                .is_some_and(|until| Instant::now() < until)
        })
    }

    /// The lease was renewed by a request sent at `sent`, for `ttl`.
    pub fn renewed(&self, sent: Instant, ttl: Duration) {
        if let Some(times) = &self.times {
            times.lock().expect("lock").lease_until = sent + ttl;
        }
    }

    /// An election sent at `sent` made this instance leader for `term` (`Some`), or another
    /// instance leads (`None`).
    pub fn elected(&self, sent: Instant, term: Option<Duration>) {
        if let Some(times) = &self.times {
            times.lock().expect("lock").leads_until =
                term.map(|term| sent + term.saturating_sub(STEP_DOWN_EARLY.min(term / 4)));
        }
    }

    /// Whether a request that may take up to `timeout` may start: only while the lease has
    /// at least that long left, so no request goes out under a lease that ends before it
    /// does. The error says how much is left.
    pub fn may_send(&self, timeout: Duration) -> anyhow::Result<()> {
        let Some(left) = self.left() else {
            return Ok(());
        };
        if *self.lost.borrow() || left < timeout {
            anyhow::bail!(
                "the lease has {} left, less than the request's timeout ({}); the request waits for its renewal",
                crate::clock::humanize(left),
                crate::clock::humanize(timeout)
            );
        }
        Ok(())
    }

    /// How long the lease has left by this process's own clock (`None`: it never runs out).
    /// At zero, no renewal was confirmed for its time to live: the database may have let
    /// another instance take its jobs.
    pub fn left(&self) -> Option<Duration> {
        let times = self.times.as_ref()?;
        let until = times.lock().expect("lock").lease_until;
        Some(until.saturating_duration_since(Instant::now()))
    }

    /// The lease was found lost: nothing more may be sent, and the daemon stops.
    pub fn lose(&self) {
        self.lost.send_replace(true);
    }

    /// Resolves once the lease was found lost (at once, if it was already).
    pub async fn lost(&self) {
        // The sender lives as long as `self`: the wait ends only when the lease is lost.
        let _ = self.lost.subscribe().wait_for(|lost| *lost).await;
    }
}

/// How far before a schedule's last read a write of another step or instance may date its
/// `next_poll_at` and still be learned ([`Polls::learn`]): a write's plan is never earlier than
/// its own `now`, and its `now` may precede its commit, or run behind this host's clock, by
/// less than this.
pub const LEARN_MARGIN: Duration = Duration::from_secs(10);

/// How far ahead of `now` a read of the stored plans looks ([`Polls::window`]): plans later
/// than that are read when they come this near, or wake the loop when they come due.
pub const LEARN_AHEAD: Duration = Duration::from_secs(10);

/// The leader's poll schedule: when each active submission is polled next. It lives in memory
/// and is rebuilt, not restored (see `track::poll`).
#[derive(Debug, Default)]
pub struct Polls(Mutex<Plans>);

#[derive(Debug, Default)]
struct Plans {
    by_id: HashMap<i64, Planned>,
    /// Every active submission whose stored `next_poll_at` is at or before this time (or
    /// empty) is in `by_id` with that value taken into account. `None`: not built yet.
    learned_to: Option<Timestamp>,
    /// The latest stored plan the last read looked at: later ones wake the loop.
    read_until: Option<Timestamp>,
    /// When every active submission was last read.
    whole_at: Option<Timestamp>,
}

/// One submission's next poll.
#[derive(Debug, Clone, Copy)]
struct Planned {
    at: Timestamp,
    /// The stored `next_poll_at` this plan took into account: a different one stored since
    /// was written after it (an observation that changed something, a failed poll, a cancel),
    /// and replaces it.
    stored: Option<Timestamp>,
}

/// How many polls are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollLoad {
    /// Active submissions due for a poll now.
    pub due_now: i64,
    /// ... and by `soon`.
    pub due_soon: i64,
    pub active: i64,
}

/// What a read of the stored plans should cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Every active submission: the schedule is built (or checked against the store) now.
    Whole,
    /// The submissions whose stored plan is after the first time and at or before the second.
    Between(Timestamp, Timestamp),
}

impl Polls {
    /// What the next read of the stored plans covers at `now`: everything when the schedule
    /// is not built or was last checked whole more than `whole_every` ago, else the plans
    /// stored since the last read.
    pub fn window(&self, now: Timestamp, whole_every: Duration) -> Window {
        let plans = self.0.lock().expect("lock");
        match (plans.learned_to, plans.whole_at) {
            (Some(from), Some(whole)) if clock::add(whole, whole_every) > now => {
                Window::Between(from, clock::add(now, LEARN_AHEAD))
            }
            _ => Window::Whole,
        }
    }

    /// Takes in the stored plans (`(id, next_poll_at)`) read at `now` over `window`. A
    /// submission new to the schedule is polled at its stored plan, or at once when it has
    /// none; one whose stored plan changed since the schedule looked takes the new one; the
    /// others keep theirs. The first read builds the schedule: then every active submission is
    /// due at once. A whole read drops the submissions that are no longer active.
    pub fn learn<'a>(
        &self,
        rows: impl IntoIterator<Item = (i64, Option<&'a str>)>,
        window: Window,
        now: Timestamp,
    ) {
        let mut plans = self.0.lock().expect("lock");
        let building = plans.learned_to.is_none();
        let mut present = HashSet::new();
        for (id, stored) in rows {
            let stored = stored.and_then(clock::parse);
            present.insert(id);
            match plans.by_id.get(&id) {
                Some(p) if p.stored == stored && !building => {}
                _ => {
                    let at = match building {
                        true => now,
                        false => stored.unwrap_or(now),
                    };
                    plans.by_id.insert(id, Planned { at, stored });
                }
            }
        }
        let until = match window {
            Window::Whole => {
                plans.by_id.retain(|id, _| present.contains(id));
                plans.whole_at = Some(now);
                now
            }
            Window::Between(_, until) => until,
        };
        let learned_to = clock::sub(now, LEARN_MARGIN);
        plans.learned_to = Some(plans.learned_to.map_or(learned_to, |t| t.max(learned_to)));
        plans.read_until = Some(until);
        if building {
            tracing::info!(
                active = plans.by_id.len(),
                "poll schedule built: every active batch is due now"
            );
        }
    }

    /// Submission `id`'s batch was seen with nothing history tracks changed, while its row held
    /// `stored` as `next_poll_at`: it is polled next at `at`.
    pub fn seen(&self, id: i64, stored: Option<&str>, at: Timestamp) {
        let stored = stored.and_then(clock::parse);
        let mut plans = self.0.lock().expect("lock");
        plans.by_id.insert(id, Planned { at, stored });
    }

    /// This instance stored `at` as submission `id`'s `next_poll_at`.
    pub fn stored(&self, id: i64, at: &str) {
        let stored = clock::parse(at);
        let mut plans = self.0.lock().expect("lock");
        let at = stored.unwrap_or(Timestamp::MIN);
        plans.by_id.insert(id, Planned { at, stored });
    }

    /// Submission `id` is no longer active.
    pub fn remove(&self, id: i64) {
        self.0.lock().expect("lock").by_id.remove(&id);
    }

    /// Forgets the schedule: the next read builds it anew (this instance became leader, or
    /// stopped leading).
    pub fn forget(&self) {
        *self.0.lock().expect("lock") = Plans::default();
    }

    /// Whether the schedule was built.
    pub fn built(&self) -> bool {
        self.0.lock().expect("lock").learned_to.is_some()
    }

    /// Brings every poll planned after `latest` forward to it.
    pub fn bring_forward(&self, latest: Timestamp) {
        for p in self.0.lock().expect("lock").by_id.values_mut() {
            p.at = p.at.min(latest);
        }
    }

    /// Whether submission `id`'s poll is due at `now` (one the schedule does not know is).
    pub fn is_due(&self, id: i64, now: Timestamp) -> bool {
        let plans = self.0.lock().expect("lock");
        plans.by_id.get(&id).is_none_or(|p| p.at <= now)
    }

    /// The submissions whose poll is due at `now`, most overdue first, at most `limit`.
    pub fn due(&self, now: Timestamp, limit: usize) -> Vec<i64> {
        let plans = self.0.lock().expect("lock");
        let mut due: Vec<(Timestamp, i64)> = plans
            .by_id
            .iter()
            .filter(|(_, p)| p.at <= now)
            .map(|(id, p)| (p.at, *id))
            .collect();
        due.sort_unstable();
        due.into_iter().take(limit).map(|(_, id)| id).collect()
    }

    /// How many polls are due at `now` and by `soon`, of how many active submissions.
    pub fn load(&self, now: Timestamp, soon: Timestamp) -> PollLoad {
        let plans = self.0.lock().expect("lock");
        let (mut due_now, mut due_soon) = (0, 0);
        for p in plans.by_id.values() {
            due_now += i64::from(p.at <= now);
            due_soon += i64::from(p.at <= soon);
        }
        let active = i64::try_from(plans.by_id.len()).unwrap_or(i64::MAX);
        PollLoad {
            due_now,
            due_soon,
            active,
        }
    }

    /// The nearest poll of a submission not in `busy`, and the time after which a stored plan
    /// is not known yet (the loop wakes for the first of those).
    pub fn next(&self, busy: &HashSet<i64>) -> (Option<Timestamp>, Option<Timestamp>) {
        let plans = self.0.lock().expect("lock");
        let next = plans
            .by_id
            .iter()
            .filter(|(id, _)| !busy.contains(id))
            .map(|(_, p)| p.at)
            .min();
        (next, plans.read_until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        clock::parse(&format!("2026-11-22T10:{s}.000Z")).unwrap()
    }

    const EVERY: Duration = Duration::from_secs(60);

    #[test]
    fn the_first_read_builds_the_schedule_with_every_active_batch_due_at_once() {
        let polls = Polls::default();
        assert!(!polls.built());
        assert_eq!(polls.window(t("00:00"), EVERY), Window::Whole);
        let far = "2126-01-01T00:00:00.000Z";
        polls.learn(
            [
                (1, Some(far)),
                (2, None),
                (3, Some("2026-11-22T09:00:00.000Z")),
            ],
            Window::Whole,
            t("00:00"),
        );
        assert!(polls.built());
        assert_eq!(polls.due(t("00:00"), 10), vec![1, 2, 3]);
        // A leader that steps down forgets its schedule; the next read builds it anew.
        polls.seen(1, Some(far), t("05:00"));
        polls.forget();
        assert!(!polls.built());
        polls.learn([(1, Some(far))], Window::Whole, t("01:00"));
        assert_eq!(polls.due(t("01:00"), 10), vec![1]);
    }

    #[test]
    fn a_stored_plan_replaces_the_schedules_only_when_it_changed_since_the_schedule_looked() {
        let polls = Polls::default();
        let stored = "2026-11-22T10:00:30.000Z";
        polls.learn(
            [(1, Some(stored)), (2, Some(stored))],
            Window::Whole,
            t("00:00"),
        );
        // Both answered quietly: planned in memory, the row's plan as it was.
        polls.seen(1, Some(stored), t("02:00"));
        polls.seen(2, Some(stored), t("02:00"));
        let window = polls.window(t("00:50"), EVERY);
        let learned_to = clock::sub(t("00:00"), LEARN_MARGIN);
        assert_eq!(window, Window::Between(learned_to, t("01:00")));
        // Batch 2's row was written since (a follower's cancel: poll at once); 3 is new.
        let written = "2026-11-22T10:00:55.000Z";
        polls.learn(
            [
                (1, Some(stored)),
                (2, Some(written)),
                (3, Some("2026-11-22T10:01:05.000Z")),
            ],
            window,
            t("00:50"),
        );
        assert_eq!(
            polls.due(t("01:00"), 10),
            vec![2],
            "only the write's plan is due"
        );
        assert!(!polls.is_due(1, t("01:59")) && polls.is_due(1, t("02:00")));
        assert!(polls.is_due(3, t("01:05")) && !polls.is_due(3, t("01:04")));
        let busy = HashSet::from([2]);
        assert_eq!(polls.next(&busy), (Some(t("01:05")), Some(t("01:00"))));
        // A whole read drops what is no longer active.
        polls.learn([(1, Some(stored))], Window::Whole, t("01:30"));
        assert_eq!(polls.load(t("03:00"), t("03:00")).active, 1);
    }

    #[test]
    fn a_whole_read_comes_back_every_interval_and_a_reload_brings_plans_forward() {
        let polls = Polls::default();
        polls.learn([(1, None)], Window::Whole, t("00:00"));
        polls.seen(1, None, t("10:00"));
        assert!(matches!(
            polls.window(t("00:59"), EVERY),
            Window::Between(..)
        ));
        assert_eq!(polls.window(t("01:00"), EVERY), Window::Whole);
        polls.bring_forward(t("01:00"));
        assert!(polls.is_due(1, t("01:00")));
        polls.stored(1, "2026-11-22T10:03:00.000Z");
        assert!(!polls.is_due(1, t("02:59")));
        polls.remove(1);
        assert!(polls.due(t("59:00"), 10).is_empty());
    }
}
