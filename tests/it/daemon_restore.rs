//! The database can lag the world: a backup restored the way README says, or a database lost
//! under a running daemon. Whatever the daemon finds in processing/ or in its database that the
//! database may not fully know, it checks with the service before it sends anything, so no job
//! is ever paid twice: one batch per job in the simulator's record, every time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use batchwatch::model::JobState;
use batchwatch::sim::{AuthFault, FaultKind, Faults, ScriptedFault};
use batchwatch_store_sqlite::{Access, Store};

use crate::support::daemon::{Env, assert_each_completed_once, requests, slow_sim, wait_crash};
use crate::support::process::Running;
use crate::support::sim::{TestSim, spawn_sim};
use crate::support::wait_until;

/// `sqlite3 state.db "VACUUM INTO 'backup.db'"`, as README's backup section says, while the
/// daemon runs.
pub(crate) async fn backup(env: &Env, name: &str) -> PathBuf {
    let to = env.sandbox.path().join(name);
    let store = Store::open(&env.db, Duration::from_secs(5), Access::ReadOnly)
        .await
        .unwrap();
    sqlx::query("VACUUM INTO ?")
        .bind(to.display().to_string())
        .execute(store.reader())
        .await
        .unwrap();
    store.close().await;
    to
}

/// Puts a backup in place of the database, as README's restore section says: the daemon is
/// stopped, the backup copied over, the -wal and -shm files removed.
pub(crate) fn restore(env: &Env, backup: &Path) {
    std::fs::copy(backup, &env.db).unwrap();
    for suffix in ["-wal", "-shm"] {
        let mut side = env.db.clone().into_os_string();
        side.push(suffix);
        let _ = std::fs::remove_file(side);
    }
}

/// How many submissions are in `state` now.
async fn submissions_in(env: &Env, state: &str) -> i64 {
    let store = env.sqlite().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM batches WHERE state = ?")
        .bind(state)
        .fetch_one(store.reader())
        .await
        .unwrap();
    store.close().await;
    n
}

/// Waits until `n` jobs are in `state`.
async fn jobs_in(env: &Env, state: JobState, n: usize) {
    wait_until(
        &format!("{n} jobs {state}"),
        Duration::from_secs(30),
        async || {
            let jobs = env.jobs().await;
            let states: Vec<JobState> = jobs.iter().map(|j| j.state).collect();
            (states.iter().filter(|s| **s == state).count() == n, states)
        },
    )
    .await;
}

/// Drops `names`, each a file of a few requests; returns (name, content) pairs.
fn drop_files(env: &Env, names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|name| {
            let content = requests(name, 5, "gpt-4o-mini");
            env.drop_file(name, content.as_bytes());
            (name.to_string(), content)
        })
        .collect()
}

/// Finishes every job after a restore and checks each completed once.
async fn finish_and_check(
    env: &Env,
    sim: &TestSim,
    mut daemon: Running,
    files: &[(String, String)],
    what: &str,
) {
    let jobs = env
        .wait_finished(files.len(), Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
    let stats = sim.handle.stats().await;
    assert_each_completed_once(env, &jobs, &stats, files, what);
}

/// The backup predates the claim: after the restore, the files in processing/ belong to jobs
/// the database never heard of, whose batches run on the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_from_before_the_claim_adopts_the_running_batches_instead_of_paying_again() {
    let sim = spawn_sim(slow_sim(3.0)).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let daemon = env.spawn();
    let before = backup(&env, "before-claim.db").await;
    let files = drop_files(&env, &["a.jsonl", "b.jsonl"]);
    jobs_in(&env, JobState::Running, 2).await;
    env.stop(daemon);
    restore(&env, &before);
    let daemon = env.spawn();
    finish_and_check(&env, &sim, daemon, &files, "before the claim").await;
}

/// The backup was taken while the upload was on its way: the database says `uploading`, the
/// service got the file and, later, the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_from_during_the_upload_follows_the_batch_made_after_it() {
    let sim = spawn_sim(slow_sim(3.0)).await;
    sim.handle
        .push_fault(ScriptedFault::new(FaultKind::LateAnswer { ms: 1500 }).on("POST", "/v1/files"))
        .await;
    let env = Env::new(&sim.handle.base_url(), "");
    let daemon = env.spawn();
    let files = drop_files(&env, &["up.jsonl"]);
    wait_until(
        "the upload on its way",
        Duration::from_secs(30),
        async || {
            let n = submissions_in(&env, "uploading").await;
            (n == 1, n)
        },
    )
    .await;
    let during = backup(&env, "during-upload.db").await;
    jobs_in(&env, JobState::Running, 1).await;
    env.stop(daemon);
    restore(&env, &during);
    let daemon = env.spawn();
    finish_and_check(&env, &sim, daemon, &files, "during the upload").await;
}

/// The backup was taken while the batch ran, and restored after the job finished and its file
/// moved to done/: the job completes once more in the database, with no new batch, and the
/// database finds its file where it went.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_from_while_the_batch_ran_restored_after_it_finished_finds_the_file_in_done() {
    let sim = spawn_sim(slow_sim(1.0)).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    let files = drop_files(&env, &["ran.jsonl"]);
    jobs_in(&env, JobState::Running, 1).await;
    let running = backup(&env, "running.db").await;
    env.wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    wait_until("the file in done/", Duration::from_secs(30), async || {
        (env.names("done") == ["ran.jsonl"], env.names("done"))
    })
    .await;
    env.stop(daemon);
    restore(&env, &running);
    let daemon = env.spawn();
    finish_and_check(&env, &sim, daemon, &files, "while the batch ran").await;
}

/// README's case: one job done, backup, two more dropped and created, stop, restore, start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_from_after_a_completion_restored_under_newer_jobs_pays_for_none_twice() {
    let sim = spawn_sim(slow_sim(3.0)).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    let mut files = drop_files(&env, &["first.jsonl"]);
    env.wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    let after = backup(&env, "after-completion.db").await;
    files.extend(drop_files(&env, &["second.jsonl", "third.jsonl"]));
    jobs_in(&env, JobState::Running, 2).await;
    env.stop(daemon);
    restore(&env, &after);
    let daemon = env.spawn();
    finish_and_check(&env, &sim, daemon, &files, "after a completion").await;
}

/// Many jobs, the backup from before any of their uploads: after the restore every one is
/// unverified at the start, and the check, which reads them and their submissions once for
/// all, adopts each job's upload and batch once: no job is paid twice, none is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_from_before_many_uploads_adopts_each_lost_batch_exactly_once() {
    const JOBS: usize = 24;
    let sim = spawn_sim(slow_sim(5.0)).await;
    // A refused key holds every job queued: validated, nothing sent.
    let refused = Faults {
        auth: AuthFault::Unauthorized,
        ..Faults::default()
    };
    sim.handle.set_faults(refused).await.unwrap();
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    daemon.wait_for_line("THE API REFUSED THE KEY", Duration::from_secs(20));
    let names: Vec<String> = (0..JOBS).map(|i| format!("many-{i:02}.jsonl")).collect();
    let files = drop_files(&env, &names.iter().map(String::as_str).collect::<Vec<_>>());
    jobs_in(&env, JobState::Queued, JOBS).await;
    let queued = backup(&env, "before-uploads.db").await;
    sim.handle.set_faults(Faults::default()).await.unwrap();
    wait_until(
        "a batch for every job",
        Duration::from_secs(30),
        async || {
            let made = sim.handle.stats().await.batches_by_job.len();
            (made == JOBS, made)
        },
    )
    .await;
    env.stop(daemon);
    restore(&env, &queued);
    let daemon = env.spawn();
    finish_and_check(&env, &sim, daemon, &files, "before many uploads").await;
}

/// The database is deleted under the running daemon, which is then killed: the next start has
/// an empty database and a processing/ full of jobs with running batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_deleted_under_a_running_daemon_then_a_kill_pays_for_no_job_twice() {
    let sim = spawn_sim(slow_sim(3.0)).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    let files = drop_files(&env, &["x.jsonl", "y.jsonl", "z.jsonl"]);
    jobs_in(&env, JobState::Running, 3).await;
    for suffix in ["", "-wal", "-shm"] {
        let mut path = env.db.clone().into_os_string();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
    daemon.signal(libc::SIGKILL);
    wait_crash(&mut daemon, Duration::from_secs(10));
    drop(daemon);
    let daemon = env.spawn();
    finish_and_check(&env, &sim, daemon, &files, "a deleted database").await;
}
