//! The daemon, `batchwatch run`: from a file in the queue to downloaded results, crash-safe.
//!
//! # The rule that makes it crash-safe
//!
//! Every remote side effect (upload, create, cancel) and every file move is preceded by a
//! committed database row that says it is about to happen, and every step can be repeated.
//! After a crash (kill -9 included) the daemon starts from the database and the queue tree alone:
//! nothing in memory matters.
//!
//! # A job
//!
//! ```text
//!             claim (rename into processing/, insert row)
//!                 │
//!            validating ──rule broken──▶ rejected ─┐
//!                 │ valid: one submission row per part                    file to failed/
//!                 ▼                                                       with NAME.reason.json
//!              queued ◀── token limit: new attempt after a back-off
//!                 │
//!            submitting          (a submission is uploading or creating)
//!                 │
//!              running ──deadline or `batchwatch cancel`──▶ cancelling
//!                 │                                              │
//!             collecting ◀───────────────────────────────────────┘
//!                 │ every submission finished: results merged, manifest written
//!     completed (done/)  |  failed, expired, cancelled (failed/, partial results kept)
//! ```
//!
//! A job's state is derived from its submissions' states in the same transaction that changes
//! them ([`progress::refresh_job`]), so the two never disagree.
//!
//! # A submission (a row of `batches`)
//!
//! ```text
//! queued ─▶ uploading ─▶ creating ─▶ active ─▶ collecting ─▶ finished
//!   │           │            │          │
//!   └───────────┴────────────┴──▶ abandoned (cancelled before any batch existed,
//!                                            or the API refused it for good)
//!                                       └──▶ lost (the batch vanished: 404)
//! ```
//!
//! * `uploading` and `creating` are committed before the request goes out. When a request's
//!   outcome is unknown (a timeout or reset after it left, a 5xx on create), or the daemon
//!   stopped while one was in flight, `outcome_unknown_at` is set and the next step reconciles
//!   first ([`reconcile`]): list the files (upload) or batches (create) and match them by file
//!   name or by the `batchwatch_job_id`, `batchwatch_part` and `batchwatch_attempt` metadata.
//!   Only when nothing matches is the request sent again. So a job never has two live batches.
//! * `active` is polled ([`poll`]) at an interval that adapts to the status; every change of
//!   status or counts is one `status_history` row; a terminal status stays terminal; a 404 makes
//!   the submission `lost`, never running.
//! * A batch that failed with `token_limit_exceeded` is back-pressure, not a bad file: its
//!   submission finishes, a new attempt is queued after a growing delay, and the model's other
//!   submissions wait too ([`gate`]).
//! * At the deadline, or when an operator asks, the job is marked for cancel ([`deadline`]):
//!   submissions not yet created are abandoned, live batches are cancelled and followed through
//!   `cancelling` to their end.
//! * `collecting` downloads the output and error files that exist ([`collect`]); when every
//!   submission of a job is finished, the results are merged, the manifest is written, and the
//!   file moves to done/ or failed/.
//!
//! # The loop
//!
//! [`Daemon::step`] does one round: claim what settled in incoming/, enforce deadlines and
//! cancels, and start the work that is due (validate, submit, poll, cancel, collect, finish) as
//! tasks, at most one per job or submission at a time. A thin loop around it waits for the next
//! tick, an inotify hint, a finished task or a signal. On SIGTERM it stops claiming, gives
//! in-flight tasks `daemon.shutdown_timeout` to finish, and drops the rest: what they were
//! doing is recorded as an intent, so the next start picks it up.
//!
//! Only one daemon runs on a queue tree and a database at a time ([`instance`]).

pub mod collect;
pub mod deadline;
pub mod gate;
pub mod instance;
pub mod intake;
pub mod notify;
pub mod poll;
pub mod progress;
pub mod reconcile;
pub mod submit;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinSet;

use crate::api::ApiError;
use crate::api::{ApiKey, Client};
use crate::clock::{self, Clock};
use crate::config::Settings;
use crate::queue::Queue;
use crate::queue::scan::Scanner;
use crate::store::{Access, Store, batches, jobs};

/// What the daemon's tasks share.
#[derive(Clone)]
pub struct Ctx {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub queue: Queue,
    pub client: Client,
    pub clock: Clock,
    pub gate: Arc<gate::Gate>,
    /// Jobs not yet checked against the service since the database may lag it.
    pub unverified: Arc<reconcile::Unverified>,
}

impl Ctx {
    /// The current time in the stored form.
    pub fn now(&self) -> String {
        clock::format(self.clock.now())
    }
}

/// Which time a deferred step waits on.
pub enum Next {
    /// `next_poll_at`: the poll of an active batch.
    Poll,
    /// `not_before`: an upload, create, cancel or download.
    Step,
}

/// Records a failed request on a submission and puts its next try off: by the server's delay
/// when it gave one, else by twice the minimum poll interval. A refused key closes the gate.
pub async fn defer(ctx: &Ctx, row: i64, err: &ApiError, next: Next) -> anyhow::Result<()> {
    let now_ts = ctx.clock.now();
    ctx.gate
        .note(err, now_ts, ctx.settings.backoff.auth_retry.get());
    let poll = &ctx.settings.poll;
    let fallback = poll
        .min_interval
        .get()
        .saturating_mul(2)
        .min(poll.max_interval.get());
    let delay = err
        .retry_after()
        .unwrap_or(fallback)
        .max(poll.min_interval.get());
    let at = clock::format(clock::add(now_ts, delay));
    let now = clock::format(now_ts);
    let mut tx = ctx.store.begin().await?;
    batches::set_last_error(&mut tx, row, Some(&err.to_string()), &now).await?;
    match next {
        Next::Poll => batches::set_next_poll(&mut tx, row, &at, &now).await?,
        Next::Step => batches::set_not_before(&mut tx, row, Some(&at), &now).await?,
    }
    tx.commit().await?;
    Ok(())
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
}

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
}

/// How often a task failed in a row, and when it may run again.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    retry_at: Instant,
}

/// The daemon: its context, the scanner and the tasks in flight.
pub struct Daemon {
    pub ctx: Ctx,
    scanner: Scanner,
    next_scan: Instant,
    next_duplicate_check: Instant,
    tasks: JoinSet<anyhow::Result<()>>,
    /// What each running task is, by its id: a task that panics is known by its id alone.
    running: HashMap<tokio::task::Id, (Subject, Task)>,
    in_flight: HashSet<Subject>,
    /// A task that failed waits, doubling each time, so a persistent error (a full disk, a
    /// database error) is retried calmly instead of at every tick.
    failures: HashMap<(Subject, Task), Failures>,
    claiming: bool,
    /// Whether unverified jobs may be ready for their check: at start, after one of them was
    /// validated, after a check failed.
    verify_due: bool,
    /// Held until the daemon is dropped, so no second one starts on the same queue or database.
    _instance: instance::InstanceLock,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    // Before anything else, so a signal that comes during start-up is not fatal.
    let mut signals = Signals::install()?;
    let key = ApiKey::load(&settings.api.key_source())?;
    let mut daemon = Daemon::start(settings, key, Clock::System).await?;
    notify::ready(&daemon.ctx).await;
    let signal = daemon.run_until(signals.recv()).await;
    tracing::info!(signal, "stopping");
    daemon.shutdown().await;
    Ok(())
}

impl Daemon {
    /// Opens everything, recovers what a previous run left, and does the first scan.
    pub async fn start(settings: Settings, key: ApiKey, clock: Clock) -> anyhow::Result<Daemon> {
        let queue = Queue::open(&settings.queue.dir).map_err(|e| {
            crate::config::ConfigError::key(
                "queue.dir",
                format!("cannot use {}: {e}", settings.queue.dir.display()),
            )
        })?;
        let instance =
            instance::InstanceLock::acquire(&settings.queue.dir, &settings.database.path)?;
        let store = Store::open(
            &settings.database.path,
            settings.database.busy_timeout.get(),
            Access::Migrate,
        )
        .await
        .context("opening the database")?;
        let client = Client::new(&settings.api, &settings.limits, key)?;
        let settings = Arc::new(settings);
        let ctx = Ctx {
            settings: settings.clone(),
            store,
            queue,
            client,
            clock,
            gate: Arc::new(gate::Gate::default()),
            unverified: Arc::new(reconcile::Unverified::default()),
        };
        tracing::info!(
            database = %settings.database.path.display(),
            queue = %settings.queue.dir.display(),
            api = %settings.api.base_url,
            schema_version = crate::store::known_schema_version(),
            "batchwatch started"
        );
        let mut daemon = Daemon {
            scanner: Scanner::new(settings.queue.settle_time.get()),
            next_scan: Instant::now(),
            next_duplicate_check: Instant::now(),
            tasks: JoinSet::new(),
            running: HashMap::new(),
            in_flight: HashSet::new(),
            failures: HashMap::new(),
            claiming: true,
            verify_due: true,
            _instance: instance,
            ctx,
        };
        intake::recover(&daemon.ctx)
            .await
            .context("recovering from the previous run")?;
        // The database may lag the service (a restored backup, lost writes): every job it
        // left unfinished is checked before anything is sent for it.
        for job in jobs::unfinished(daemon.ctx.store.reader()).await? {
            daemon.ctx.unverified.add(&job);
        }
        daemon.step().await;
        Ok(daemon)
    }

    /// Runs the loop until `stop` resolves; returns its value.
    pub async fn run_until<T>(&mut self, stop: impl std::future::Future<Output = T>) -> T {
        let mut watcher = intake::Watcher::new(&self.ctx.queue);
        let tick = tick_interval(&self.ctx.settings);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                value = &mut stop => return value,
                _ = tokio::time::sleep(tick) => {}
                _ = watcher.changed() => self.next_scan = Instant::now(),
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => self.reap(done),
            }
            self.step().await;
        }
    }

    /// One round: reap, claim, enforce deadlines and cancels, start due work.
    pub async fn step(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            self.reap(done);
        }
        if let Err(e) = self.round().await {
            tracing::error!(
                error = format!("{e:#}"),
                "a daemon step failed; trying again at the next tick"
            );
        }
        notify::status(&self.ctx, self.in_flight.len()).await;
    }

    async fn round(&mut self) -> anyhow::Result<()> {
        use Task as T;
        let ctx = self.ctx.clone();
        if self.claiming && Instant::now() >= self.next_scan {
            let (claimed, unsettled) = intake::scan_and_claim(&ctx, &mut self.scanner).await?;
            for job in claimed {
                self.spawn(
                    Subject::Job(job.clone()),
                    T::Validate,
                    intake::validate(ctx.clone(), job),
                );
            }
            intake::sweep(&ctx).await?;
            let settle = ctx.settings.queue.settle_time.get();
            let interval = ctx.settings.queue.scan_interval.get();
            self.next_scan = Instant::now()
                + if unsettled {
                    settle.min(interval)
                } else {
                    interval
                };
        }
        if self.claiming {
            for job in
                jobs::in_states(ctx.store.reader(), &[crate::model::JobState::Validating]).await?
            {
                self.spawn(
                    Subject::Job(job.id.clone()),
                    T::Validate,
                    intake::validate(ctx.clone(), job.id),
                );
            }
        }
        deadline::enforce(&ctx).await?;
        let cancels = deadline::pending_cancels(&ctx, &self.in_flight).await?;
        if ctx.gate.paused().is_some() {
            if ctx.gate.probe_due(ctx.clock.now()) {
                self.spawn(Subject::Key, T::ProbeKey, gate::probe(ctx.clone()));
            }
            return Ok(());
        }
        if self.verify_due
            && !ctx.unverified.is_empty()
            && self.spawn(
                Subject::Unverified,
                T::Verify,
                reconcile::verify(ctx.clone()),
            )
        {
            self.verify_due = false;
        }
        for id in cancels {
            self.spawn(
                Subject::Submission(id),
                T::Cancel,
                deadline::cancel(ctx.clone(), id),
            );
        }
        let budget = ctx.settings.limits.concurrency as usize * 4;
        if self.claiming {
            for row in submit::due(&ctx).await? {
                if self.in_flight.len() >= budget {
                    break;
                }
                self.spawn(
                    Subject::Submission(row),
                    T::Submit,
                    submit::step(ctx.clone(), row),
                );
            }
        }
        for row in poll::due(&ctx).await? {
            if self.in_flight.len() >= budget {
                break;
            }
            self.spawn(
                Subject::Submission(row),
                T::Poll,
                poll::step(ctx.clone(), row),
            );
        }
        for row in collect::due(&ctx).await? {
            self.spawn(
                Subject::Submission(row),
                T::Collect,
                collect::collect(ctx.clone(), row),
            );
        }
        if Instant::now() >= self.next_duplicate_check {
            let every = ctx.settings.poll.max_interval.get().saturating_mul(10);
            self.next_duplicate_check = Instant::now() + every;
            self.spawn(
                Subject::Duplicates,
                T::CancelDuplicates,
                reconcile::cancel_duplicates(ctx.clone()),
            );
        }
        for job in jobs::finishable(ctx.store.reader()).await? {
            self.spawn(
                Subject::Job(job.clone()),
                T::Finish,
                collect::finish(ctx.clone(), job),
            );
        }
        Ok(())
    }

    fn spawn(
        &mut self,
        subject: Subject,
        task: Task,
        fut: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> bool {
        if self.in_flight.contains(&subject) {
            return false;
        }
        let key = (subject.clone(), task);
        if self
            .failures
            .get(&key)
            .is_some_and(|f| f.retry_at > Instant::now())
        {
            return false;
        }
        self.in_flight.insert(subject.clone());
        let handle = self.tasks.spawn(fut);
        self.running.insert(handle.id(), (subject, task));
        true
    }

    fn reap(
        &mut self,
        done: Result<(tokio::task::Id, anyhow::Result<()>), tokio::task::JoinError>,
    ) {
        let (id, outcome) = match done {
            Ok((id, result)) => (id, result.map_err(|e| format!("{e:#}"))),
            Err(e) => (e.id(), Err(format!("the task panicked: {e}"))),
        };
        let Some((subject, task)) = self.running.remove(&id) else {
            return;
        };
        self.in_flight.remove(&subject);
        if let Subject::Job(job) = &subject
            && task == Task::Validate
            && self.ctx.unverified.contains(job)
        {
            self.verify_due = true;
        }
        let key = (subject, task);
        match outcome {
            Ok(()) => {
                self.failures.remove(&key);
                // A job that just ended may have a file to move: sweep soon.
                if matches!(task, Task::Validate | Task::Finish) {
                    self.next_scan = Instant::now();
                }
            }
            Err(error) => {
                if task == Task::Verify {
                    self.verify_due = true;
                }
                let poll = &self.ctx.settings.poll;
                let count = self.failures.get(&key).map_or(1, |f| f.count + 1);
                let delay = poll
                    .min_interval
                    .get()
                    .saturating_mul(1 << (count - 1).min(16))
                    .min(poll.max_interval.get().saturating_mul(5));
                tracing::warn!(?task, subject = ?key.0, error, retry_in = %clock::humanize(delay), "a task failed; it will be tried again");
                self.failures.insert(
                    key,
                    Failures {
                        count,
                        retry_at: Instant::now() + delay,
                    },
                );
            }
        }
    }

    /// Stops claiming, lets in-flight work finish within `daemon.shutdown_timeout`, then
    /// drops the rest (their intents are recorded) and closes the store.
    pub async fn shutdown(mut self) {
        notify::stopping();
        self.claiming = false;
        let grace = self.ctx.settings.daemon.shutdown_timeout.get();
        let waited = tokio::time::timeout(grace, async {
            while let Some(done) = self.tasks.join_next_with_id().await {
                self.reap(done);
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                left = self.tasks.len(),
                "in-flight work did not finish within daemon.shutdown_timeout; it resumes at the next start"
            );
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        self.ctx.store.close_for_readers().await;
        tracing::info!("stopped");
    }

    /// What tasks are working on now.
    pub fn in_flight(&self) -> &HashSet<Subject> {
        &self.in_flight
    }
}

/// How often the loop wakes by itself: often enough for the shortest poll interval and scan.
fn tick_interval(settings: &Settings) -> Duration {
    settings
        .poll
        .min_interval
        .get()
        .min(settings.queue.scan_interval.get())
        .min(
            settings
                .queue
                .settle_time
                .get()
                .max(Duration::from_millis(10)),
        )
        .clamp(Duration::from_millis(10), Duration::from_millis(500))
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Waits for the next signal and says which it was.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
