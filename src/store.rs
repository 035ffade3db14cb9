//! The store the daemon, its housekeeping and the commands use: one backend behind the store
//! port's traits ([`batchwatch_store`]), chosen when the database is opened.
//!
//! Dispatch is an enum, [`Store`], rather than a trait object or a daemon generic over its
//! store: the set of backends is closed (SQLite and PostgreSQL), the port's `async fn`s
//! would have to box every future to be called through `dyn`, and a generic daemon would be
//! compiled once per backend. Each of the port's traits is implemented for the enum by passing
//! the call to the backend it holds (`delegate!`); what only a backend knows how to do
//! (open, close, watch for commits, give space back) is the enum's own.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use batchwatch_store::ops::cancel::Cancel;
pub use batchwatch_store::ops::finish::Finish;
pub use batchwatch_store::ops::housekeeping::Housekeeping;
pub use batchwatch_store::ops::intake::Intake;
pub use batchwatch_store::ops::lease::Leases;
pub use batchwatch_store::ops::submit::Submit;
pub use batchwatch_store::ops::track::Track;
pub use batchwatch_store::*;

use batchwatch_core::clock::Timestamp;
use batchwatch_core::config::StuckAfter;
use batchwatch_core::config::{
    DatabaseLocation, DatabaseSettings, credential_path, without_password,
};
use batchwatch_core::model::{BatchStatus, FileLook, JobState, SubmissionState};
use batchwatch_core::usage::Tokens;
use batchwatch_store::batches::{NewSubmission, StoredPoll, Submission, Tracked};
use batchwatch_store::chain::{Link, NewResubmission, Pending, View};
use batchwatch_store::deletions::{Deletion, KnownFile, Origin};
use batchwatch_store::figures::{Figures, StuckBatch};
use batchwatch_store::history::HistoryRow;
use batchwatch_store::jobs::{
    Filter, Job, JobEvent, JobLine, JobOverview, NewJob, RecordedFile, Why,
};
use batchwatch_store::notifications::{NewNotification, Notification, Tried};
use batchwatch_store::ops::finish::Ending;
use batchwatch_store::ops::housekeeping::Deleted;
use batchwatch_store::ops::intake::Validated;
use batchwatch_store::ops::lease::{Instance, InstanceRow};
use batchwatch_store::ops::submit::CreateIntent;
use batchwatch_store::ops::track::{Observed, Plan, Sighting};
use batchwatch_store::retention::Old;
use batchwatch_store::usage::{BatchUsage, JobCost, ModelCost};
use batchwatch_store_postgres as postgres;
use batchwatch_store_sqlite as sqlite;

/// An open database, in one of the backends.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(sqlite::Store),
    Postgres(postgres::Store),
}

/// Tells whether anything was committed since it last asked, by this process or another.
#[derive(Debug)]
pub enum Changes {
    Sqlite(sqlite::Changes),
    Postgres(postgres::Changes),
}

impl Store {
    /// Opens the SQLite database at `path` for `access`.
    pub async fn open(
        path: &Path,
        busy_timeout: Duration,
        access: Access,
    ) -> Result<Store, StoreError> {
        Ok(Store::Sqlite(
            sqlite::Store::open(path, busy_timeout, access).await?,
        ))
    }

    /// Opens the database `settings` name for `access`: SQLite's file, or a PostgreSQL
    /// database with its password from the systemd credential, `PGPASSWORD` or `~/.pgpass`.
    pub async fn open_configured(
        settings: &DatabaseSettings,
        access: Access,
    ) -> Result<Store, StoreError> {
        Store::open_at(
            &settings.location(),
            settings.password_credential.as_deref(),
            settings.busy_timeout.get(),
            access,
        )
        .await
    }

    /// Opens the database at `location` for `access`; `password_credential` names the systemd
    /// credential a PostgreSQL password is read from.
    pub async fn open_at(
        location: &DatabaseLocation,
        password_credential: Option<&str>,
        wait: Duration,
        access: Access,
    ) -> Result<Store, StoreError> {
        match location {
            DatabaseLocation::Sqlite(path) => Store::open(path, wait, access).await,
            DatabaseLocation::Postgres(url) => {
                let password = match password_credential {
                    Some(name) => Some(read_credential(name).map_err(|e| StoreError::Open {
                        path: PathBuf::from(without_password(url)),
                        source: e.to_string().into(),
                    })?),
                    None => None,
                };
                Ok(Store::Postgres(
                    postgres::Store::open(url, password.as_deref(), wait, access).await?,
                ))
            }
        }
    }

    /// The SQLite file, when the database is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Store::Sqlite(s) => Some(s.path()),
            Store::Postgres(_) => None,
        }
    }

    /// The database, for messages: a path, or a URL without its password.
    pub fn place(&self) -> String {
        match self {
            Store::Sqlite(s) => s.path().display().to_string(),
            Store::Postgres(s) => s.url().to_owned(),
        }
    }

    /// The schema version the database has; `None` when it is not a batchwatch database.
    pub async fn schema_version(&self) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.schema_version().await,
            Store::Postgres(s) => s.schema_version().await,
        }
    }

    /// The schema version this build knows, in the backend the database is in.
    pub fn known_schema_version(&self) -> i64 {
        match self {
            Store::Sqlite(_) => sqlite::known_schema_version(),
            Store::Postgres(_) => postgres::known_schema_version(),
        }
    }

    /// Whether a write could start now, waiting up to `wait` (the readiness probe).
    pub async fn probe_write(&self, wait: Duration) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.probe_write(wait).await,
            Store::Postgres(s) => s.probe_write(wait).await,
        }
    }

    /// Gives the space of deleted rows back; the size before and after.
    pub async fn give_space_back(&self) -> Result<(u64, u64), StoreError> {
        match self {
            Store::Sqlite(s) => s.give_space_back().await,
            Store::Postgres(s) => s.give_space_back().await,
        }
    }

    /// A watch for commits, on a connection of its own.
    pub async fn changes(&self, busy_timeout: Duration) -> Result<Changes, StoreError> {
        match self {
            Store::Sqlite(s) => Ok(Changes::Sqlite(
                sqlite::Changes::open(s.path(), busy_timeout).await?,
            )),
            Store::Postgres(s) => Ok(Changes::Postgres(postgres::Changes::open(s).await?)),
        }
    }

    /// Closes the store for good at the daemon's stop, leaving it readable to the readers
    /// that may open it while the daemon is stopped.
    pub async fn close_for_readers(&self) {
        match self {
            Store::Sqlite(s) => s.close_for_readers().await,
            Store::Postgres(s) => s.close().await,
        }
    }

    /// Closes the store.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }
}

/// The PostgreSQL password from the systemd credential `name`, its line end dropped.
fn read_credential(name: &str) -> Result<String, anyhow::Error> {
    let path = credential_path("database.password_credential", name, |v| {
        std::env::var_os(v)
    })?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("the credential {} cannot be read: {e}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

impl Changes {
    /// Whether a commit happened since the last call; true at the first call, and when the
    /// question cannot be answered.
    pub async fn any(&mut self) -> bool {
        match self {
            Changes::Sqlite(c) => c.any().await,
            Changes::Postgres(c) => c.any().await,
        }
    }

    pub async fn close(self) {
        match self {
            Changes::Sqlite(c) => c.close().await,
            Changes::Postgres(c) => c.close().await,
        }
    }
}

/// Implements each of the port's traits for [`Store`] by passing each call, as it came, to the
/// backend the store holds. A method is written as its arguments after `&self` and the `Ok` of
/// its result.
macro_rules! delegate {
    ($($trait:ident { $($name:ident($($arg:ident: $ty:ty),*) -> $ok:ty;)* })*) => {
        $(impl $trait for Store {
            $(async fn $name(&self, $($arg: $ty),*) -> Result<$ok, StoreError> {
                match self {
                    Store::Sqlite(s) => s.$name($($arg),*).await,
                    Store::Postgres(s) => s.$name($($arg),*).await,
                }
            })*
        })*
    };
}

delegate! {
Reads {
    job(id: &str) -> Option<Job>;
    jobs_among(ids: &[String]) -> Vec<Job>;
    jobs_in_states(states: &[JobState]) -> Vec<Job>;
    recorded_file(id: &str) -> Option<RecordedFile>;
    job_events(id: &str) -> Vec<JobEvent>;
    overview(filter: &Filter, limit: i64) -> Vec<JobOverview>;
    jobs_page(filter: &Filter, after: Option<&str>, limit: i64) -> Vec<JobLine>;
    jobs_of_file(name: &str, paths: &[String]) -> Vec<String>;
    job_state_counts() -> Vec<(JobState, i64)>;
    past_deadline(held_by: &Lease, now: &str) -> Vec<String>;
    unfinished_jobs(held_by: &Lease) -> Vec<String>;
    cancel_pending(held_by: &Lease) -> Vec<String>;
    validating_jobs(held_by: &Lease, limit: usize) -> Vec<String>;
    finishable_jobs(held_by: &Lease) -> Vec<String>;
    submission(id: i64) -> Option<Submission>;
    submission_by_remote_id(remote_id: &str) -> Option<Submission>;
    submission_by_attempt(job_id: &str, part: i64, attempt: i64) -> Option<Submission>;
    submissions_of(job_id: &str) -> Vec<Submission>;
    submissions_of_jobs(job_ids: &[String]) -> Vec<Submission>;
    recorded_submissions() -> Vec<(String, String, i64, i64)>;
    watched_for_duplicates(since: &str) -> Vec<Submission>;
    batch_status_counts() -> Vec<(BatchStatus, i64)>;
    due_in_state(held_by: &Lease, state: SubmissionState, now: &str) -> Vec<i64>;
    due_for_submit(held_by: &Lease, now: &str, held_models: &[String], unverified_jobs: &[String], limit: i64) -> Vec<i64>;
    tracked() -> Vec<Tracked>;
    stored_polls(between: Option<(&str, &str)>) -> Vec<StoredPoll>;
    next_due(held_by: &Lease, busy_submissions: &[i64], busy_jobs: &[&str], polls_after: Option<&str>) -> Option<String>;
    history(batch_id: i64) -> Vec<HistoryRow>;
    parent_of(id: &str) -> Option<String>;
    chain_depth(id: &str) -> i64;
    chain(id: &str) -> Vec<Link>;
    resubmission_view(id: &str) -> View;
    pending_resubmissions() -> Vec<Pending>;
    resubmit_due() -> Vec<(String, String)>;
    deletions_due(now: &str, limit: i64) -> Vec<Deletion>;
    next_deletion_due() -> Option<String>;
    deletions_of(job_id: &str) -> Vec<Deletion>;
    pending_deletions() -> i64;
    notifications_due(target: &str, now: &str, limit: i64) -> Vec<Notification>;
    notification_targets_due(now: &str) -> Vec<String>;
    next_notification_due() -> Option<String>;
    notifications_of(job_id: &str) -> Vec<Notification>;
    known_files() -> Vec<KnownFile>;
    jobs_ended() -> Vec<(String, bool)>;
    figures(stuck_after: &StuckAfter, now: Timestamp) -> Figures;
    stuck(after: &StuckAfter, now: Timestamp) -> Vec<StuckBatch>;
    old_with_files(states: &[JobState], before: &str) -> Vec<Old>;
    old_with_results(before: &str) -> Vec<Old>;
    prunable_jobs(before: &str, limit: i64) -> Vec<String>;
    usage_of(job_id: &str) -> Vec<BatchUsage>;
    job_costs(job_ids: &[&str]) -> Vec<JobCost>;
    model_costs() -> Vec<ModelCost>;
}
Intake {
    claim(lease: &Lease, job: &NewJob<'_>, look: Option<&FileLook>, parent: Option<&str>, now: &str) -> ();
    record_valid(lease: &Lease, job_id: &str, valid: &Validated<'_>, now: &str) -> JobState;
    reject(lease: &Lease, job_id: &str, why: &Why, notify: &[NewNotification<'_>], now: &str) -> Option<String>;
    validate_again(lease: &Lease, job_id: &str, look: &FileLook, sending: Option<i64>, validate_after: &str, message: &str, now: &str) -> bool;
}
Submit {
    start_upload(lease: &Lease, row: &Submission, now: &str) -> ();
    start_create(lease: &Lease, row: &Submission, upload_id: &str, unsent: &str, now: &str) -> CreateIntent;
    start_create_from_lines(lease: &Lease, row: &Submission, unsent: &str, now: &str) -> CreateIntent;
    hold(lease: &Lease, row: &Submission, until: &str, why: &str, now: &str) -> ();
    adopt_upload(lease: &Lease, row: &Submission, upload_id: &str, message: &str, now: &str) -> ();
    note_resent(lease: &Lease, id: i64, now: &str) -> ();
    postpone(lease: &Lease, id: i64, until: &str, error: Option<&str>, now: &str) -> ();
    abandon(lease: &Lease, row: &Submission, why: &str, message: &str, now: &str) -> ();
    await_reconcile(lease: &Lease, row: &Submission, error: &str, retry_at: &str, message: &str, now: &str) -> ();
    not_sent(lease: &Lease, id: i64, now: &str) -> ();
    add_submission(lease: &Lease, submission: &NewSubmission<'_>, now: &str) -> ();
    note(lease: &Lease, job_id: &str, message: &str, now: &str) -> ();
}
Track {
    observe(lease: &Lease, sighting: &Sighting<'_>, decide: impl FnOnce(&Job, &Submission, &BatchStatus) -> Plan, now: &str) -> Observed;
    observe_page(lease: &Lease, answered: &[i64], changed: &[Sighting<'_>], decide: impl FnMut(&Job, &Submission, &BatchStatus) -> Plan, seen_at: Timestamp) -> Vec<Observed>;
    seen_unchanged(lease: &Lease, answered: &[i64], now: &str) -> ();
    defer_poll(lease: &Lease, id: i64, at: &str, error: &str, now: &str) -> ();
    defer_polls(lease: &Lease, ids: &[i64], at: &str, error: &str, now: &str) -> ();
    lose(lease: &Lease, row: &Submission, why: &str, now: &str) -> ();
    mark_in_flight_unknown(lease: &Lease, now: &str) -> u64;
    poll_by(lease: &Lease, latest: &str) -> u64;
}
Cancel {
    request_cancel(job_id: &str, reason: &str, message: impl FnOnce(&Job) -> String, now: &str) -> (bool, Option<Job>);
    cancel_unsent(lease: &Lease, job_id: &str, unsent: &[i64], why: &str, message: &str, now: &str) -> ();
    arm_cancel(lease: &Lease, id: i64, now: &str) -> ();
    cancel_sent(lease: &Lease, id: i64, now: &str) -> ();
}
Finish {
    finish_job(lease: &Lease, ending: &Ending<'_>, now: &str) -> ();
    set_path(lease: &Lease, job_id: &str, path: &str, now: &str) -> ();
    collected(lease: &Lease, row: &Submission, missing: Option<&str>, usage: Option<(&Tokens, Option<f64>)>, message: &str, now: &str) -> ();
    wait_on_local_fault(lease: &Lease, row: &Submission, error: &str, retry_at: &str, message: Option<&str>, now: &str) -> String;
    note_collect_failure(lease: &Lease, id: i64, now: &str) -> String;
    give_up_results(lease: &Lease, row: &Submission, why: &str, message: &str, now: &str) -> ();
}
Leases {
    register(who: &Instance, ttl: Duration, now: &str) -> Lease;
    renew(lease: &Lease, ttl: Duration, now: &str) -> ();
    take_over(lease: &Lease, limit: i64, now: &str) -> Vec<String>;
    elect(lease: &Lease, term: Duration) -> bool;
    resign(lease: &Lease) -> ();
    instances() -> Vec<InstanceRow>;
}
Housekeeping {
    mark_pruned(lease: &Lease, job_id: &str, results: bool, message: &str, now: &str) -> ();
    delete_jobs(lease: &Lease, ids: &[String]) -> u64;
    plan_deletion(lease: &Lease, file_id: &str, job_id: Option<&str>, kind: &str, origin: Origin, now: &str) -> Deletion;
    record_deletion(lease: &Lease, row: &Deletion, outcome: &Deleted, message: Option<&str>, now: &str) -> bool;
    record_resubmission(lease: &Lease, job_id: &str, view: &View, withdrawn: &[i64], new: &NewResubmission<'_>, message: &str, clear_due: bool, now: &str) -> bool;
    plan_notifications(lease: &Lease, job_id: &str, notify: &[NewNotification<'_>], now: &str) -> u64;
    record_notification(lease: &Lease, row: &Notification, tried: &Tried, message: Option<&str>, now: &str) -> bool;
    resubmit_done(lease: &Lease, job_id: &str, message: &str, now: &str) -> ();
}}
