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
//!     completed (done/)  |  failed, expired, cancelled (failed/, partial results if any)
//! ```
//!
//! A job's state is derived from its submissions' states in the same transaction that changes
//! them (by the rule of [`crate::store::progress::derive`]), so the two never disagree.
//!
//! # A submission (a row of `batches`)
//!
//! ```text
//! queued ─▶ uploading ─▶ creating ─▶ active ─▶ collecting ─▶ finished
//!   │  │        │  ▲         │   ▲       │   │                    ▲
//!   │  │        │  └─ adopt ─┘   │       │   └── refused for the ─┘ (a new attempt
//!   │  └────────┴── upload ──────┘       │       token limit          is queued)
//!   │               found on the service │
//!   └───────────┴────────────┴──▶ abandoned (cancelled before any batch existed,
//!                                            or the API refused it for good)
//!                                          lost ◀─┘ (the batch vanished: 404)
//! ```
//!
//! Every edge is one guarded write of the store (the SQLite store's `transitions`), which
//! refuses a move the diagram does not have.
//!
//! * `uploading` and `creating` are committed before the request goes out. When a request's
//!   outcome is unknown (a timeout or reset after it left, a 5xx on create), or the daemon
//!   stopped while one was in flight, `outcome_unknown_at` is set and the next step reconciles
//!   first ([`reconcile`]): list the files (upload) or batches (create) and match them by file
//!   name and size, or by the input file the create named (the batchwatch metadata is a claim,
//!   not a proof: a batch only claiming the submission is someone else's). Only when nothing
//!   matches is the request sent again. So a job never has two live batches.
//! * `active` is polled ([`poll`]) at an interval that adapts to the status; every change of
//!   status or counts is one `status_history` row; a terminal status stays terminal; a 404 makes
//!   the submission `lost`, never running.
//! * A batch that failed with `token_limit_exceeded` is back-pressure, not a bad file: its
//!   submission finishes, a new attempt is queued after a growing delay, and the model's other
//!   submissions wait too ([`gate`]).
//! * At the deadline, or when an operator asks, the job is marked for cancel ([`cancel`]):
//!   submissions not yet created are abandoned, live batches are cancelled and followed through
//!   `cancelling` to their end.
//! * `collecting` downloads the output and error files that exist ([`finish::collect`]):
//!   downloads the service keeps failing are given up after `collect.give_up_after`, while
//!   results that cannot be written here (a local fault: a full disk, a permission) wait however
//!   long it lasts. When every submission of a job is finished, the results are merged, the manifest
//!   is written, and the file moves to done/ or failed/ ([`finish`]).
//!
//! # The loop
//!
//! [`Daemon::step`] does one round: claim what settled in incoming/, enforce deadlines and
//! cancels, and start the work that is due (validate, check, submit, poll, cancel, collect,
//! finish) as tasks, at most one per job or submission at a time. Between rounds the loop
//! sleeps until the nearest timer (a scan, a poll, a back-off, a deadline, a retry; see
//! [`schedule`]) unless inotify, a finished task or a signal wakes it sooner: an idle daemon
//! wakes once per `queue.scan_interval`. A round in which no task ended, nothing was committed
//! to the database (by this process or another: `PRAGMA data_version`) and no timer but the
//! scan came due stops after its scan (`Daemon::quiet`): its queries would find what the
//! last full round found. A full round still comes at least once a minute. Every timer reads
//! the one clock in [`Ctx`], so a test can drive the rounds with a manual clock. On SIGTERM
//! (seen at once, in the middle of a round too: the round is cut short, which leaves what a
//! crash there would) it stops claiming, stops housekeeping at once (deletions of remote
//! files: each is an intent row that the next start carries out), gives the other tasks in
//! flight `daemon.shutdown_timeout` to finish, and drops the rest: what they were doing is
//! recorded as an intent, so the next start picks it up. A lost lease stops it the same way,
//! but drops every task at once. SIGHUP reloads the configuration ([`runtime::reload`]) after
//! the round under way.
//!
//! # Where each activity is
//!
//! One folder per activity; each imports only the shared modules below it and the activities
//! before it in this list, never one after it:
//!
//! * shared, each importing only those before it: [`shared`] (what the activities keep in
//!   memory, what a task works on and does), [`schedule`] (every timer), [`gate`] (what holds
//!   everyone back), [`notifiers`] (the `[[notify]]` entries, their secrets read), [`ctx`]
//!   (what the tasks share), [`file`](mod@file) (the job's file: its changes and its last
//!   move);
//! * [`housekeeping`]: remote files, retention, resubmissions and notifications, for the daemon
//!   and for the commands that do the same on demand;
//! * [`track`]: following a batch ([`track::poll`], [`track::sweep`]), recording what is seen
//!   ([`track::observe`]), and jobs that stopped moving ([`track::stuck`]);
//! * [`intake`]: claim and check, and the start-up recovery and sweep of processing/
//!   ([`intake::recover`]);
//! * [`submit`]: upload and create, and reconciling what the service has that the database may
//!   not know ([`submit::reconcile`]);
//! * [`cancel`]: deadlines and cancels;
//! * [`finish`]: downloads ([`finish::collect`]), a job's outcome, merged results and manifest;
//! * [`runtime`]: the API key's checks ([`runtime::key`]), reload (a new configuration applied
//!   to the running engine, the one activity that reaches it), the service manager's status,
//!   the instance lock ([`runtime::instance`]: one daemon per queue tree and SQLite database),
//!   and the lease and the leader's term on a shared PostgreSQL database ([`runtime::lease`]):
//!   each instance works on the jobs it holds, and the leader alone tracks the batches and
//!   keeps house.
//!
//! This module is the engine: the loop, its tasks and their failures, and its timers.

pub mod cancel;
pub mod ctx;
pub mod file;
pub mod finish;
pub mod gate;
pub mod housekeeping;
pub mod intake;
pub mod notifiers;
pub mod runtime;
pub mod schedule;
pub mod shared;
pub mod submit;
pub mod track;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use finish::collect;
use housekeeping::notifications;
use housekeeping::{remote, resubmit, retention};
use intake::recover;
use notifiers::Notifiers;
use runtime::{instance, notify};
use submit::reconcile;
use tokio::task::{AbortHandle, JoinSet};
use track::{poll, stuck, sweep};

use crate::api::{ApiKey, Client};
use crate::clock::{self, Clock, Timestamp};
use crate::config::{DatabaseLocation, Settings};
use crate::metrics::server::{self as endpoint, Health};
use crate::metrics::{Metrics, ModelLabels};
use crate::queue::Queue;
use crate::queue::scan::Scanner;
use crate::store::prelude::*;
use crate::store::{Access, Changes, Store};

pub use ctx::Ctx;
use schedule::{MAX_SLEEP, MIN_SLEEP, Schedule, Timer, nearest};
pub use shared::{Subject, Task};

/// How often a task failed in a row, and when it may run again.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    retry_at: Timestamp,
}

/// The engine's own timers; the work the database schedules (polls, retries, deadlines) has
/// its times in the store ([`Daemon::next_stored_timer`]).
#[derive(Debug)]
struct Timers {
    /// The next scan of incoming/; inotify wakes the loop for one sooner.
    scan: Timer,
    /// When processing/ is next gone through ([`recover::sweep`]), at a scan: after anything
    /// failed, and every [`schedule::PROCESSING_SWEEP`] as a safety net (the start's recovery
    /// goes through it first).
    processing_sweep: Timer,
    /// When the late duplicates of re-sent creates are looked for
    /// ([`reconcile::cancel_duplicates`]).
    duplicate_check: Timer,
    /// When retention runs next ([`retention`]): at start, then daily.
    prune: Timer,
    /// When to look for due remote deletions and resubmissions: at start, after a job
    /// finished or such a task ended, and at the next deletion's retry time. Never in every
    /// round, which stays free of their queries.
    housekeeping: Timer,
    /// When to take over the jobs of instances whose lease ran out (a shared store): every
    /// renewal period.
    takeover: Timer,
}

impl Timers {
    /// Every timer due at `now`, as at start.
    fn all_at(now: Timestamp) -> Timers {
        Timers {
            scan: Timer::at(now),
            processing_sweep: Timer::at(now),
            duplicate_check: Timer::at(now),
            prune: Timer::at(now),
            housekeeping: Timer::at(now),
            takeover: Timer::at(now),
        }
    }

    /// The timers of the work a full round starts here (the scan, and the sweep of processing/
    /// that rides on it, run in quiet rounds too): the leader's work only while this instance
    /// `leads`, takeovers only on a `shared` store. A timer of work that does not run here
    /// stays due, and would make every round a full one.
    fn for_rounds(&self, leads: bool, shared: bool) -> impl Iterator<Item = Timer> {
        let leader = [self.duplicate_check, self.prune, self.housekeeping];
        let leader = leader.into_iter().filter(move |_| leads);
        leader.chain(Some(self.takeover).filter(|_| shared))
    }
}

/// The daemon: its context, the scanner and the tasks in flight.
pub struct Daemon {
    pub ctx: Ctx,
    scanner: Scanner,
    /// inotify on incoming/, from before the first scan: its record of writes knows only the
    /// files written while it watched.
    watcher: intake::Watcher,
    timers: Timers,
    /// Why the last sweep of processing/ left a file where it was, when it did (a full disk, a
    /// permission): until a sweep handles every file, no round counts as done for `/readyz`.
    sweep_left: Option<String>,
    /// Sweeps of processing/ in a row that left a file: the next waits longer each time
    /// ([`schedule::Schedule::processing_sweep_after`]), so a disk that stays full is not
    /// warned about at every scan.
    sweeps_left: u32,
    tasks: JoinSet<anyhow::Result<()>>,
    /// What each running task is, by its id (a task that panics is known by its id alone),
    /// and how to stop it.
    running: HashMap<tokio::task::Id, (Subject, Task, AbortHandle)>,
    in_flight: HashSet<Subject>,
    /// A task that failed waits, doubling each time, so a persistent error (a full disk, a
    /// database error) is retried calmly instead of at every round.
    failures: HashMap<(Subject, Task), Failures>,
    /// Rounds that failed in a row; the loop waits longer after each.
    round_failures: u32,
    claiming: bool,
    /// Whether unverified jobs may be ready for their check: at start, after one of them was
    /// validated, after a check failed.
    verify_due: bool,
    notifier: notify::Notifier,
    /// Whether anything was committed since the last round asked ([`Changes`]); taken at
    /// shutdown.
    changes: Option<Changes>,
    /// Until when a round may stop after its scan, when nothing ended and nothing was
    /// committed since the last full round ([`Daemon::quiet`]): the nearest timer other than
    /// the scan, as the last full round left them, and never more than [`MAX_SLEEP`] after
    /// it. `None` until the loop next sleeps after a full round.
    quiet_until: Option<Timestamp>,
    /// The nearest time the database holds for work ([`Daemon::next_stored_timer`]), read
    /// after a full round and kept through the quiet rounds that follow, which change nothing
    /// it depends on; `None` until read.
    stored_timer: Option<Timer>,
    /// A task ended since the last round.
    reaped: bool,
    /// What `/readyz` knows of the loop, and the endpoint's server (stopped when dropped).
    health: Arc<Health>,
    endpoint: Option<endpoint::Server>,
    stuck: stuck::Watch,
    /// Held until the daemon is dropped, so no second one starts on the same queue or SQLite
    /// database.
    _instance: instance::InstanceLock,
    /// The lengths of the lease and of a leader's term.
    terms: runtime::lease::Terms,
    /// Whether this instance led at the last round: a change makes the next round a full one.
    led: bool,
    /// Renews the daemon's lease and stands for leader ([`runtime::lease::keep`]) until the
    /// daemon stops.
    keeping: tokio::task::JoinHandle<()>,
}

/// Runs the daemon on `settings` and `key` (as [`crate::preflight::check`] passed them) until
/// SIGTERM or SIGINT; SIGHUP reloads the configuration from `file` (the `--config` given, else
/// the system file), as read at start ([`runtime::reload`]).
pub async fn run(
    settings: Settings,
    key: ApiKey,
    file: Option<std::path::PathBuf>,
    log: crate::telemetry::Logging,
) -> anyhow::Result<()> {
    // Before anything else, so a signal that comes during start-up is not fatal. The signals
    // are taken by a task of their own, so that a stop is seen at once, in the middle of a
    // round too (a round that waits on a database that stopped answering, say).
    let mut signals = crate::process::Signals::install(true)?;
    let (stops_sent, mut stops) = tokio::sync::mpsc::unbounded_channel();
    let (reloads_sent, mut reloads) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            // Sent to a loop that may have ended: nothing to do then.
            match signals.recv().await {
                "SIGHUP" => drop(reloads_sent.send(())),
                stop => drop(stops_sent.send(stop)),
            }
        }
    });
    match crate::process::raise_open_file_limit() {
        Ok(Some((from, to))) => tracing::info!(from, to, "raised the open-file limit"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit to its hard limit"),
    }
    let mut daemon = tokio::select! {
        started = Daemon::start(settings, key, Clock::System) => started?,
        Some(signal) = stops.recv() => {
            // What the start had done is what a crash at that point leaves: the next start
            // recovers it.
            tracing::info!(signal, "stopped during the start");
            return Ok(());
        }
    };
    daemon.notifier.ready(&daemon.ctx).await;
    let tenure = daemon.ctx.tenure.clone();
    let stopped = async {
        tokio::select! {
            Some(signal) = stops.recv() => signal,
            () = tenure.lost() => LEASE_LOST,
        }
    };
    tokio::pin!(stopped);
    // A stop cuts the round under way short: what it had not committed is what a crash at that
    // point leaves, which every step is made to survive. A reload waits for the round's end.
    let stop = loop {
        tokio::select! {
            biased;
            stop = &mut stopped => break stop,
            Some(()) = daemon.run_until(reloads.recv()) => daemon.reload(file.as_deref(), &log).await,
        }
    };
    tracing::info!(signal = stop, "stopping");
    if stop == LEASE_LOST {
        daemon.shutdown_lease_lost().await;
        anyhow::bail!(
            "the daemon's lease on the database was lost (it did not renew it within \
             database.lease): another instance may hold its jobs now, so it stopped; started \
             again, it registers anew"
        );
    }
    daemon.shutdown().await;
    Ok(())
}

/// Whether a task failed because the store refused its write: this instance's lease (or its
/// term as leader) had run out, or the job is held by another instance.
fn fenced(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|e| matches!(e.downcast_ref(), Some(crate::store::StoreError::NotHeld(_))))
}

/// What stops the loop when the lease was lost, beside the signals' names.
const LEASE_LOST: &str = "lease lost";

impl Daemon {
    /// Opens everything, recovers what a previous run left, and does the first round.
    pub async fn start(settings: Settings, key: ApiKey, clock: Clock) -> anyhow::Result<Daemon> {
        let queue = Queue::open(&settings.queue.dir).map_err(|e| {
            crate::config::ConfigError::key(
                "queue.dir",
                format!("cannot use {}: {e}", settings.queue.dir.display()),
            )
        })?;
        let location = settings.database.location();
        let file = match &location {
            DatabaseLocation::Sqlite(path) => Some(path.as_path()),
            DatabaseLocation::Postgres(_) => None,
        };
        let instance = instance::InstanceLock::acquire(&settings.queue.dir, file)?;
        let store = Store::open_configured(&settings.database, Access::Migrate)
            .await
            .context("opening the database")?;
        let terms = runtime::lease::Terms::of(settings.database.lease.get());
        let (lease, tenure) =
            runtime::lease::begin(&store, &clock, terms, settings.daemon.name.as_deref())
                .await
                .context("taking the database's lease")?;
        let changes = store
            .changes(settings.database.busy_timeout.get())
            .await
            .context("opening the database")?;
        let usage = store
            .model_costs()
            .await
            .context("reading the models' usage")?;
        let metrics = Metrics::new(ModelLabels::busiest_first(
            settings.metrics.max_models,
            &usage,
        ));
        let client = Client::observed(
            &settings.api,
            &settings.limits,
            key,
            std::sync::Arc::new(metrics.clone()),
        )?;
        let health = Arc::new(Health::default());
        let gate = Arc::new(gate::Gate::observed(metrics.clone()));
        let endpoint = match settings.metrics.address()? {
            Some(addr) => {
                let pages = match settings.metrics.serves_pages("metrics.listen", addr)? {
                    true => Some(crate::pages::Pages {
                        store: store.clone(),
                        token: crate::pages::PagesToken::configured(&settings.metrics)?,
                        stuck_after: settings.alerts.stuck_after,
                        gate: Some(gate.clone()),
                    }),
                    false => {
                        if settings.metrics.pages.is_none() {
                            tracing::warn!(
                                %addr,
                                "the status pages are not served: the endpoint listens beyond loopback and metrics.pages_token_file is not set (set it to serve them behind a token, or metrics.pages = false to say they are not wanted)"
                            );
                        }
                        None
                    }
                };
                let what = match pages {
                    Some(_) => {
                        "metrics endpoint listening (/metrics, /healthz, /readyz, pages at /)"
                    }
                    None => "metrics endpoint listening (/metrics, /healthz, /readyz)",
                };
                let routes = endpoint::routes(
                    endpoint::Endpoint::new(
                        metrics.clone(),
                        store.clone(),
                        queue.clone(),
                        settings.alerts.stuck_after,
                        health.clone(),
                        gate.clone(),
                    ),
                    pages,
                );
                Some(endpoint::serve(
                    addr,
                    "metrics.listen",
                    routes,
                    &settings.limits,
                    what,
                )?)
            }
            None => None,
        };
        let notify = Arc::new(Notifiers::load(&settings)?);
        let schedule = Schedule::new(&settings);
        let settings = Arc::new(settings);
        let now = clock.now();
        let ctx = Ctx {
            notify,
            settings: settings.clone(),
            schedule: Arc::new(schedule.clone()),
            store,
            lease,
            tenure: Arc::new(tenure),
            queue,
            client,
            clock,
            gate,
            unverified: Arc::new(shared::Unverified::default()),
            duplicates: Arc::new(shared::DuplicateWatch::default()),
            metrics,
            sweeps: Arc::new(shared::Sweeps::default()),
            polls: Arc::new(shared::Polls::default()),
        };
        // Before anyone is told it started: files dropped from then on are in its record.
        let watcher = intake::Watcher::new(&ctx.queue, settings.queue.watch);
        tracing::info!(
            database = %ctx.store.place(),
            queue = %settings.queue.dir.display(),
            api = %settings.api.base_url,
            schema_version = ctx.store.known_schema_version(),
            "batchwatch started"
        );
        let mut daemon = Daemon {
            scanner: Scanner::new(schedule.settle),
            watcher,
            timers: Timers::all_at(now),
            sweep_left: None,
            sweeps_left: 0,
            tasks: JoinSet::new(),
            running: HashMap::new(),
            in_flight: HashSet::new(),
            failures: HashMap::new(),
            round_failures: 0,
            claiming: true,
            verify_due: true,
            notifier: notify::Notifier::new(),
            changes: Some(changes),
            quiet_until: None,
            stored_timer: None,
            reaped: false,
            health,
            endpoint,
            stuck: stuck::Watch::default(),
            _instance: instance,
            terms,
            led: false,
            keeping: tokio::spawn(runtime::lease::keep(
                ctx.store.clone(),
                ctx.lease,
                ctx.tenure.clone(),
                ctx.clock.clone(),
                terms,
            )),
            ctx,
        };
        let left = recover::recover(&daemon.ctx)
            .await
            .context("recovering from the previous run")?;
        // Nothing was claimed since that sweep of processing/ (the first scan comes in the
        // first round): the next one is timed from it, as if a round had done it.
        daemon.swept_processing(left, now);
        // The database may lag the service (a restored backup, lost writes), and a job taken
        // over may have had anything under way: every unfinished job this daemon holds is
        // checked before anything is sent for it.
        for job in daemon.ctx.store.unfinished_jobs(&daemon.ctx.lease).await? {
            daemon.ctx.unverified.add(&job);
        }
        daemon.health.recovered();
        daemon.spawn(
            Subject::Key,
            Task::ProbeKey,
            runtime::key::check_at_start(daemon.ctx.clone()),
        );
        daemon.step().await;
        Ok(daemon)
    }

    /// Runs the loop until `stop` resolves; returns its value.
    pub async fn run_until<T>(&mut self, stop: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(stop);
        loop {
            let sleep = self.until_next_timer().await;
            tokio::select! {
                value = &mut stop => return value,
                _ = tokio::time::sleep(sleep) => {}
                _ = self.watcher.changed() => self.timers.scan.arm(self.ctx.clock.now()),
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.reap(done);
                    // One round for a burst of finished tasks, not one round each.
                    tokio::time::sleep(schedule::TASK_GATHER).await;
                }
            }
            self.step().await;
        }
    }

    /// Has processing/ gone through at the next scan, after something failed that may have
    /// left a file half-moved; unless the last sweeps left files themselves: then the next one
    /// keeps its back-off (a full disk fails tasks and sweeps alike).
    fn sweep_processing_soon(&mut self) {
        if self.sweeps_left == 0 {
            self.timers.processing_sweep.arm(self.ctx.clock.now());
        }
    }

    /// A sweep of processing/ at `now` left a file where it was (`Some`: why) or handled every
    /// one: when the next comes.
    fn swept_processing(&mut self, left: Option<String>, now: Timestamp) {
        self.sweeps_left = match left {
            None => 0,
            Some(_) => self.sweeps_left + 1,
        };
        self.sweep_left = left;
        let after = self.ctx.schedule.processing_sweep_after(self.sweeps_left);
        self.timers.processing_sweep.arm_after(now, after);
    }

    /// One round: reap, claim, enforce deadlines and cancels, start due work.
    pub async fn step(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            self.reap(done);
        }
        match self.round().await {
            Ok(()) => {
                self.round_failures = 0;
                match &self.sweep_left {
                    None => self.health.round_succeeded(),
                    Some(why) => self.health.round_failed(why.clone()),
                }
            }
            Err(e) => {
                self.round_failures += 1;
                self.quiet_until = None;
                // A claim may have failed after its rename: processing/ is gone through again.
                self.sweep_processing_soon();
                let error = format!("{e:#}");
                tracing::error!(
                    error,
                    retry_in = %clock::humanize(self.ctx.schedule.task_retry(self.round_failures)),
                    "a daemon round failed; trying again"
                );
                self.health.round_failed(error);
            }
        }
        if self.ctx.tenure.leads() && self.stuck.check(&self.ctx).await {
            self.timers.housekeeping.arm(self.ctx.clock.now());
        }
        self.notifier.status(&self.ctx, self.in_flight.len()).await;
    }

    async fn round(&mut self) -> anyhow::Result<()> {
        use Task as T;
        let ctx = self.ctx.clone();
        let now = ctx.clock.now();
        if ctx.tenure.leads() != self.led {
            // Elected, or no longer leading: the leader's work starts or stops now.
            self.led = !self.led;
            ctx.metrics.leading(self.led);
            // A new leader builds its poll schedule anew; one that stopped keeps none.
            ctx.polls.forget();
            self.quiet_until = None;
            self.stored_timer = None;
        }
        let budget = ctx.settings.limits.tasks();
        if self.claiming && self.timers.scan.due(now) {
            let unsettled =
                intake::scan_and_claim(&ctx, &mut self.scanner, &mut self.watcher).await?;
            if self.timers.processing_sweep.due(now) {
                let in_flight = &self.in_flight;
                let left = recover::sweep(&ctx, |job| {
                    in_flight.contains(&Subject::Job(job.to_owned()))
                })
                .await?;
                self.swept_processing(left, now);
            }
            let schedule = &ctx.schedule;
            self.timers.scan.arm_after(
                now,
                if unsettled {
                    schedule.settle.min(schedule.scan_every)
                } else {
                    schedule.scan_every
                },
            );
        }
        let quiet = self.quiet(now).await;
        ctx.metrics.round(quiet);
        if quiet {
            return Ok(());
        }
        self.quiet_until = None;
        self.stored_timer = None;
        if self.claiming {
            let room = budget.saturating_sub(self.in_flight.len());
            for job in ctx
                .store
                .validating_jobs(&ctx.lease, room + self.in_flight.len())
                .await?
            {
                if self.in_flight.len() >= budget {
                    break;
                }
                self.spawn(
                    Subject::Job(job.clone()),
                    T::Validate,
                    intake::validate(ctx.clone(), job),
                );
            }
        }
        if !ctx.lease.is_sole() && self.timers.takeover.fire(now, self.terms.renew_every) {
            self.take_over().await;
        }
        cancel::enforce_deadlines(&ctx).await?;
        let cancels = cancel::pending(&ctx, &self.in_flight).await?;
        if ctx.gate.paused().is_some() {
            if ctx.gate.probe_due(now) {
                self.spawn(Subject::Key, T::ProbeKey, runtime::key::probe(ctx.clone()));
            }
            return Ok(());
        }
        for id in cancels {
            self.spawn(
                Subject::Submission(id),
                T::Cancel,
                cancel::send(ctx.clone(), id),
            );
        }
        if self.claiming {
            for row in submit::due(&ctx, budget + self.in_flight.len()).await? {
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
        // What must run once for the fleet runs on the leader alone.
        let leads = ctx.tenure.leads();
        if leads && !self.in_flight.contains(&Subject::Sweep) {
            poll::refresh(&ctx).await?;
        }
        let sweep_due = leads && !self.in_flight.contains(&Subject::Sweep) && sweep::due(&ctx);
        let verify = self.verify_due && !ctx.unverified.is_empty();
        // A check and a sweep started together (a start, a takeover) read the batch list once:
        // the check's pages feed the sweep (`track::sweep`'s docs). Either one refused leaves
        // the other to read alone.
        let (feeder, feed) = match verify && sweep_due {
            true => {
                let (feeder, feed) = sweep::feed();
                (Some(feeder), Some(feed))
            }
            false => (None, None),
        };
        if verify
            && self.spawn(
                Subject::Unverified,
                T::Verify,
                reconcile::verify(ctx.clone(), feeder),
            )
        {
            self.verify_due = false;
        }
        if sweep_due {
            let busy = self.in_flight.iter().filter_map(|s| match s {
                Subject::Submission(id) => Some(*id),
                _ => None,
            });
            let busy = busy.collect();
            self.spawn(
                Subject::Sweep,
                T::Sweep,
                sweep::sweep(ctx.clone(), busy, feed),
            );
        }
        // While a sweep runs, it does the polls (and retrieves what it did not see).
        if leads && !self.in_flight.contains(&Subject::Sweep) {
            for row in poll::due(&ctx) {
                if self.in_flight.len() >= budget {
                    break;
                }
                self.spawn(
                    Subject::Submission(row),
                    T::Poll,
                    poll::step(ctx.clone(), row),
                );
            }
        }
        for row in collect::due(&ctx).await? {
            self.spawn(
                Subject::Submission(row),
                T::Collect,
                collect::collect(ctx.clone(), row),
            );
        }
        if leads
            && self
                .timers
                .duplicate_check
                .fire(now, ctx.schedule.duplicate_check_every)
        {
            self.spawn(
                Subject::Duplicates,
                T::CancelDuplicates,
                reconcile::cancel_duplicates(ctx.clone()),
            );
        }
        if leads && self.timers.prune.fire(now, retention::EVERY) && ctx.settings.retention.any() {
            self.spawn(Subject::Retention, T::Prune, retention::run(ctx.clone()));
        }
        if leads && self.timers.housekeeping.take_due(now) {
            let mut busy = false;
            if resubmit::due(&ctx).await? {
                busy |= !self.spawn(
                    Subject::Resubmissions,
                    T::Resubmit,
                    resubmit::run(ctx.clone()),
                );
            }
            match remote::next_due(&ctx, now).await? {
                Some(at) if at <= now => {
                    busy |= !self.spawn(
                        Subject::RemoteFiles,
                        T::DeleteRemoteFiles,
                        remote::run(ctx.clone()),
                    );
                }
                Some(at) => self.timers.housekeeping.arm(at),
                None => {}
            }
            match notifications::next_due(&ctx, now).await? {
                Some(at) if at <= now => {
                    // A task for each entry: one whose receiver hangs holds up only its own.
                    for target in notifications::targets_due(&ctx).await? {
                        busy |= !self.spawn(
                            Subject::Notifications(target.clone()),
                            T::Notify,
                            notifications::run(ctx.clone(), target),
                        );
                    }
                }
                Some(at) => self.timers.housekeeping.arm(at),
                None => {}
            }
            if busy {
                // Running already, or waiting after a failure: look again a little later.
                let later = ctx.schedule.failed_task_initial;
                self.timers.housekeeping.arm_after(now, later);
            }
        }
        for job in ctx.store.finishable_jobs(&ctx.lease).await? {
            self.spawn(
                Subject::Job(job.clone()),
                T::Finish,
                finish::finish(ctx.clone(), job),
            );
        }
        Ok(())
    }

    /// Takes over the unfinished jobs of instances whose lease ran out: each is checked against
    /// the service before anything is sent for it, as after a restart. A takeover that fails
    /// (a lock held by a stopped instance's transaction, the database away) is tried again at
    /// the next period; the round goes on.
    async fn take_over(&mut self) {
        let ctx = &self.ctx;
        let taken = match ctx.store.take_over(&ctx.lease, i64::MAX, &ctx.now()).await {
            Ok(taken) => taken,
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::chain(&e), "cannot take over the jobs of instances whose lease ran out; trying again later");
                return;
            }
        };
        if !taken.is_empty() {
            tracing::warn!(
                jobs = taken.len(),
                "took over the jobs of an instance whose lease ran out; checking them against the service first"
            );
            ctx.metrics.jobs_taken_over(taken.len());
            for job in &taken {
                ctx.unverified.add(job);
            }
            self.verify_due = true;
        }
    }

    /// Whether this round may stop after its scan: no task ended, nothing was committed (by
    /// the scan's claims, a task, or another process such as `batchwatch cancel`) and no timer
    /// came due since the last full round, so each of its queries would find what it found
    /// then. An idle daemon scans every `queue.scan_interval` at the cost of one query, and
    /// goes through everything at least every [`MAX_SLEEP`].
    async fn quiet(&mut self, now: Timestamp) -> bool {
        let reaped = std::mem::take(&mut self.reaped);
        // Asked at every round, so each full round starts from what it has seen.
        let changed = match &mut self.changes {
            Some(changes) => changes.any().await,
            None => true,
        };
        !reaped && !changed && self.quiet_until.is_some_and(|until| now < until)
    }

    /// How long the loop may sleep: until the nearest timer, within [`MIN_SLEEP`] and
    /// [`MAX_SLEEP`]; after a failed round, the failed-task back-off.
    async fn until_next_timer(&mut self) -> Duration {
        let schedule = &self.ctx.schedule;
        if self.round_failures > 0 {
            return schedule.task_retry(self.round_failures);
        }
        let now = self.ctx.clock.now();
        let stored = match self.stored_timer {
            Some(at) => at,
            None => match self.next_stored_timer().await {
                Ok(at) => *self.stored_timer.insert(at),
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "cannot read when work is due next"
                    );
                    return schedule.failed_task_initial;
                }
            },
        };
        // A back-off that has run out is no timer: its task runs when its work is next due
        // (a failed poll's submission may since be swept, never polled alone again).
        let backoffs = self.failures.values().map(|f| f.retry_at);
        let (leads, shared) = (self.ctx.tenure.leads(), !self.ctx.lease.is_sole());
        let for_rounds = nearest(
            self.timers
                .for_rounds(leads, shared)
                .chain([stored])
                .chain(self.ctx.gate.next_change(now).map(Timer::at))
                .chain(backoffs.filter(|at| *at > now).map(Timer::at)),
        );
        if self.quiet_until.is_none() {
            let safety_net = clock::add(now, MAX_SLEEP);
            self.quiet_until = Some(for_rounds.map_or(safety_net, |at| at.min(safety_net)));
        }
        let scan = self.timers.scan.when().filter(|_| self.claiming);
        let next = [for_rounds, scan, self.notifier.next_due()];
        let nearest = next.into_iter().flatten().min().unwrap_or(now);
        // On a shared store, who leads may change between elections: the loop looks as often.
        let longest = match self.ctx.lease.is_sole() {
            true => MAX_SLEEP,
            false => self.terms.elect_every.clamp(MIN_SLEEP, MAX_SLEEP),
        };
        clock::between(now, nearest).clamp(MIN_SLEEP, longest)
    }

    /// The nearest time the database holds for work not under way and not waiting to retry.
    async fn next_stored_timer(&self) -> anyhow::Result<Timer> {
        let now = self.ctx.clock.now();
        let waiting = self
            .failures
            .iter()
            .filter(|(_, f)| f.retry_at > now)
            .map(|((s, _), _)| s);
        let (mut submissions, mut jobs) = (Vec::new(), Vec::new());
        for subject in self.in_flight.iter().chain(waiting) {
            match subject {
                Subject::Submission(id) => submissions.push(*id),
                Subject::Job(id) => jobs.push(id.as_str()),
                _ => {}
            }
        }
        // A sweep under way does the polls due; it wakes the loop when it ends. Another
        // instance that leads does them all. The schedule's polls are in memory; the store
        // has the plans it has not read yet.
        let polls = self.ctx.leader_polls();
        let polls = polls.filter(|_| !self.in_flight.contains(&Subject::Sweep));
        let (planned, read_until) = match polls {
            Some(polls) => polls.next(&submissions.iter().copied().collect()),
            None => (None, None),
        };
        let after = read_until.map(clock::format);
        let lease = &self.ctx.lease;
        let at = self
            .ctx
            .store
            .next_due(lease, &submissions, &jobs, after.as_deref())
            .await?;
        // Anything unreadable counts as now.
        let stored = at.map(|t| clock::parse(&t).unwrap_or(now));
        Ok(
            nearest([stored, planned].into_iter().flatten().map(Timer::at))
                .map_or_else(Timer::default, Timer::at),
        )
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
        let now = self.ctx.clock.now();
        if self.failures.get(&key).is_some_and(|f| f.retry_at > now) {
            return false;
        }
        self.in_flight.insert(subject.clone());
        let handle = self.tasks.spawn(fut);
        self.running.insert(handle.id(), (subject, task, handle));
        true
    }

    fn reap(
        &mut self,
        done: Result<(tokio::task::Id, anyhow::Result<()>), tokio::task::JoinError>,
    ) {
        let (id, outcome) = match done {
            Ok((id, result)) => {
                if result.as_ref().is_err_and(fenced) {
                    self.ctx.metrics.write_fenced();
                }
                (id, result.map_err(|e| format!("{e:#}")))
            }
            // Dropped at shutdown: it failed at nothing, and the next start takes it up.
            Err(e) if e.is_cancelled() => {
                if let Some((subject, ..)) = self.running.remove(&e.id()) {
                    self.in_flight.remove(&subject);
                }
                return;
            }
            Err(e) => (e.id(), Err(format!("the task panicked: {e}"))),
        };
        let Some((subject, task, _)) = self.running.remove(&id) else {
            return;
        };
        self.reaped = true;
        self.in_flight.remove(&subject);
        // What ends a job may have planned housekeeping: deletions, resubmissions and
        // notifications (a rejection's, when anyone is told of one).
        let rejects_told = task == Task::Validate && !self.ctx.settings.notify.is_empty();
        if rejects_told
            || matches!(
                task,
                Task::Finish | Task::DeleteRemoteFiles | Task::Resubmit | Task::Notify
            )
        {
            self.timers.housekeeping.arm(self.ctx.clock.now());
        }
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
            }
            Err(error) => {
                // A file may have been left half-moved: processing/ is gone through again.
                self.sweep_processing_soon();
                if task == Task::Verify {
                    self.verify_due = true;
                }
                let count = self.failures.get(&key).map_or(1, |f| f.count + 1);
                let now = self.ctx.clock.now();
                let delay = self.ctx.schedule.task_retry(count);
                let retry_at = clock::add(now, delay);
                // A closed gate holds the work back longer than the task's own wait: the log
                // says when it is really tried again, as the gate's own line does.
                let resumes = self
                    .ctx
                    .gate
                    .reopens_at(task, now)
                    .map_or(retry_at, |gate| gate.max(retry_at));
                tracing::warn!(
                    task = %task,
                    subject = %key.0,
                    error,
                    retry_in = %clock::humanize(clock::between(now, resumes)),
                    "a task failed; it will be tried again"
                );
                self.failures.insert(key, Failures { count, retry_at });
            }
        }
    }

    /// Waits for every task in flight and takes in its outcome (tests drive rounds with it).
    pub async fn drain(&mut self) {
        while let Some(done) = self.tasks.join_next_with_id().await {
            self.reap(done);
        }
    }

    /// Stops claiming, drops at once the work that may be ([`Task::stops_at_once`]), lets the
    /// rest finish within `daemon.shutdown_timeout`, then drops what is left (their intents
    /// are recorded), ends the lease and closes the store.
    pub async fn shutdown(self) {
        self.stop(false).await;
    }

    /// Stops after the lease was found lost ([`Daemon::stop`]).
    pub async fn shutdown_lease_lost(self) {
        self.stop(true).await;
    }

    /// Stops as [`Daemon::shutdown`] says; when the lease was `lost`, every
    /// task is dropped at once (all of it was under that lease: its writes would be refused
    /// and its requests may not start; the instance that takes the jobs over reconciles
    /// them), and the lease is not ended: it is no longer this daemon's. What waits on the
    /// database (ending the lease, closing) waits at most `database.busy_timeout`, so a
    /// database that stopped answering cannot hold the stop.
    async fn stop(mut self, lost: bool) {
        self.notifier.stopping();
        self.claiming = false;
        if lost {
            self.tasks.abort_all();
        } else {
            let mut dropped = Vec::new();
            for (_, task, handle) in self.running.values() {
                if task.stops_at_once() {
                    handle.abort();
                    dropped.push(task.to_string());
                }
            }
            if !dropped.is_empty() {
                tracing::info!(
                    tasks = %dropped.join(", "),
                    "housekeeping stopped at once; its intents are rows, carried out at the next start"
                );
            }
            let grace = self.ctx.settings.daemon.shutdown_timeout.get();
            if tokio::time::timeout(grace, self.drain()).await.is_err() {
                tracing::warn!(
                    left = self.tasks.len(),
                    "in-flight work did not finish within daemon.shutdown_timeout; it resumes at the next start"
                );
                self.tasks.abort_all();
            }
        }
        while self.tasks.join_next().await.is_some() {}
        self.keeping.abort();
        // Each of these waits at most database.busy_timeout for a database that does not
        // answer; side by side, a stop while cut off takes one such wait here, not two.
        let close_changes = async {
            if let Some(changes) = self.changes.take() {
                changes.close().await;
            }
        };
        let resign = async {
            if lost {
                return;
            }
            // A clean stop ends the lease at once: the next run need not wait for it to run out.
            let wait = self.ctx.settings.database.busy_timeout.get();
            let error =
                match tokio::time::timeout(wait, self.ctx.store.resign(&self.ctx.lease)).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(crate::telemetry::chain(&e).to_string()),
                    Err(_) => Some(format!(
                        "the database did not answer within database.busy_timeout ({})",
                        clock::humanize(wait)
                    )),
                };
            if let Some(error) = error {
                tracing::warn!(error, "the lease could not be ended; it runs out by itself");
            }
        };
        tokio::join!(close_changes, resign);
        self.ctx.store.close_for_readers().await;
        tracing::info!("stopped");
    }

    /// Where the monitoring endpoint listens, when it does.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.as_ref().map(|e| e.addr)
    }

    /// What tasks are working on now.
    pub fn in_flight(&self) -> &HashSet<Subject> {
        &self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::fenced;
    use crate::store::StoreError;
    use anyhow::Context;

    #[test]
    fn a_write_the_fence_refused_is_told_from_other_failures_through_any_context() {
        let refused: anyhow::Result<()> =
            Err(StoreError::NotHeld("the lease of epoch 3 ran out".into())).context("recording");
        assert!(fenced(&refused.unwrap_err()));
        let other: anyhow::Result<()> = Err(StoreError::LeaseLost { epoch: 3 }).context("renewing");
        assert!(!fenced(&other.unwrap_err()));
        assert!(!fenced(&anyhow::anyhow!("a full disk")));
    }
}
