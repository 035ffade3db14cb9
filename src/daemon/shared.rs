//! What the activities share in memory, held by [`Ctx`](crate::daemon::ctx::Ctx), and the
//! names of the daemon's work ([`Subject`], [`Task`]): below every activity and every other
//! shared module, so none imports another for it.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

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
}

impl Task {
    /// Whether the task is dropped at once when the daemon stops, rather than given
    /// `daemon.shutdown_timeout` to finish. Deleting remote files is housekeeping whose intents
    /// are rows: a deletion cut short is sent again at the next start (a repeat meets a 404),
    /// and waiting for a service that does not answer would only hold the stop. The rest
    /// finish what they started (an upload or create whose outcome would otherwise have to be
    /// reconciled, a download, a file's move); retention and resubmission are local and short.
    pub fn stops_at_once(self) -> bool {
        matches!(self, Task::DeleteRemoteFiles)
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
