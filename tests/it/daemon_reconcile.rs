//! Reconciliation: an upload or create whose outcome is unknown (its answer lost, its recording
//! failed, the daemon killed in between) is looked up on the service before anything is sent
//! again, and a create that lands late after all is found and its duplicate cancelled. One
//! batch per job in the simulator's record, every time. A batch whose metadata claims a job
//! but whose input file is not the job's (forged with another key of the same organisation)
//! is neither adopted nor cancelled.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use batchwatch::api::{ApiKey, Client, CreateBatchRequest};
use batchwatch::clock::Clock;
use batchwatch::config::Settings;
use batchwatch::daemon::Daemon;
use batchwatch::model::JobState;
use batchwatch::sim::{FaultKind, Faults, ScriptedFault, SimConfig};
use batchwatch::store::prelude::*;
use batchwatch_store_sqlite::batches::Submission;
use batchwatch_store_sqlite::jobs::Job;
use batchwatch_store_sqlite::{Access, Store};
use serde_json::json;

use crate::support::daemon::{
    Env, assert_duplicate_reported, assert_never_two_live_batches, quick_sim, requests, slow_sim,
    wait_crash, wait_duplicate_cancelled,
};
use crate::support::in_process::InProcess;
use crate::support::sim::{TestSim, spawn_sim};
use crate::support::{KEY, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_whose_answer_is_lost_is_reconciled_and_never_repeated() {
    let sim = spawn_sim(quick_sim()).await;
    sim.handle
        .push_fault(ScriptedFault::new(FaultKind::DropAfter).on("POST", "/v1/batches"))
        .await;
    sim.handle
        .push_fault(ScriptedFault::new(FaultKind::DropAfter).on("POST", "/v1/files"))
        .await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file(
        "lost-answer.jsonl",
        requests("la", 4, "gpt-4o-mini").as_bytes(),
    );
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    env.stop(daemon);
    assert_eq!(jobs[0].state, JobState::Completed);
    let stats = sim.handle.stats().await;
    assert_eq!(
        stats.faults_injected.get("drop_after"),
        Some(&2),
        "{:?}",
        stats.faults_injected
    );
    assert_eq!(
        stats.batches_by_job.get(&jobs[0].id),
        Some(&1),
        "no second batch"
    );
    assert_eq!(
        stats.requests.get("POST /v1/batches"),
        Some(&1),
        "the create was not sent again: {:?}",
        stats.requests
    );
    assert_eq!(
        stats.requests.get("POST /v1/files"),
        Some(&1),
        "the upload was not sent again: {:?}",
        stats.requests
    );
    assert!(
        stats
            .requests
            .get("GET /v1/batches")
            .is_some_and(|n| *n >= 2),
        "it listed batches to reconcile (beyond the one page of the start-up check)"
    );
    let store = env.store().await;
    let events = store.job_events(&jobs[0].id).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("outcome unknown") && e.message.contains("reconciling")),
        "{events:?}"
    );
}

/// How late the held-up create below is carried out.
const LATE: Duration = Duration::from_millis(1000);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_carried_out_after_the_reconcile_listing_leaves_no_second_live_batch() {
    let sim = spawn_sim(quick_sim()).await;
    // The create gets no answer and is carried out a second later, as a request held up in
    // front of the API (or queued in a frozen server) would be: a listing at once finds
    // nothing.
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::CarriedOutLate {
                ms: LATE.as_millis() as u64,
            })
            .on("POST", "/v1/batches"),
        )
        .await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file("late.jsonl", requests("late", 3, "gpt-4o-mini").as_bytes());
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    // The held-up create was sent before the job finished, so it has landed by now; in a
    // correct run nothing else marks the moment.
    tokio::time::sleep(LATE).await;
    env.stop(daemon);
    assert_eq!(jobs[0].state, JobState::Completed);
    let by_job = assert_never_two_live_batches(&sim).await;
    assert_eq!(by_job.get(&jobs[0].id), Some(&1), "{by_job:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_that_lands_after_reconciliation_is_found_and_its_duplicate_cancelled() {
    // Batches run about four seconds, so the duplicate is still live when it is found.
    let sim = spawn_sim(batchwatch::sim::SimConfig {
        in_progress_secs: 1_200.0,
        request_secs: 0.0,
        ..quick_sim()
    })
    .await;
    // Carried out three seconds after the daemon gave up on it (after one second): too late for
    // the reconciliation, which can only show that no batch exists yet.
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::CarriedOutLate { ms: 3_000 }).on("POST", "/v1/batches"),
        )
        .await;
    let env = Env::new(&sim.handle.base_url(), "[api]\nrequest_timeout = \"1s\"\n");
    let mut daemon = env.spawn();
    env.drop_file(
        "very-late.jsonl",
        requests("vl", 3, "gpt-4o-mini").as_bytes(),
    );
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    assert_eq!(jobs[0].state, JobState::Completed);
    let job_id = jobs[0].id.clone();

    // The late batch appears, and is cancelled as the duplicate it is.
    let duplicate = wait_duplicate_cancelled(&sim, &job_id, Duration::from_secs(20)).await;
    let log = env.stop(daemon);
    // The job's own batch is the one that completed, and its results are whole.
    assert_duplicate_reported(&log, &env.store().await, &job_id, &duplicate.id).await;
}

/// A create whose answer cannot be recorded (here SQLITE_BUSY: another process holds the write
/// lock longer than database.busy_timeout; equally a full disk) keeps the unknown-outcome mark
/// set before the request went out, so the next attempt reconciles and finds the batch instead
/// of creating another. (When the mark came only with the answer, each tick used to create one
/// more live batch for as long as the writes failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_whose_recording_fails_is_reconciled_not_repeated() {
    let sim = spawn_sim(quick_sim()).await;
    sim.handle
        .push_fault(ScriptedFault::new(FaultKind::Latency { ms: 1500 }).on("POST", "/v1/batches"))
        .await;
    let env = Env::new(
        &sim.handle.base_url(),
        "[database]\nbusy_timeout = \"100ms\"\n",
    );
    let mut daemon = env.spawn();
    env.drop_file("busy.jsonl", requests("busy", 3, "gpt-4o-mini").as_bytes());

    // Wait for the create intent, i.e. the create request is in flight (1.5 s of latency).
    let reader = env.sqlite().await;
    wait_until("the create intent", Duration::from_secs(20), async || {
        let creating: i64 =
            sqlx::query_scalar("SELECT count(*) FROM batches WHERE state = 'creating'")
                .fetch_one(reader.reader())
                .await
                .unwrap();
        (creating > 0, creating)
    })
    .await;
    reader.close().await;

    // Another writer (an operator's sqlite3 session, a `batchwatch cancel` stuck on a slow
    // disk...) holds the write lock while the answer comes back.
    let other = Store::open(
        &env.sandbox.db_path(),
        Duration::from_secs(5),
        Access::Write,
    )
    .await
    .unwrap();
    let tx = other.begin().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    tx.rollback().await.unwrap();
    other.close().await;

    let jobs = env
        .wait_finished(1, Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
    let stats = sim.handle.stats().await;
    assert_eq!(
        stats.batches_by_job.get(&jobs[0].id),
        Some(&1),
        "batches created for one job while its create could not be recorded"
    );
}

/// A create of unknown outcome whose model is held by the enqueued-token limit is reconciled,
/// then waits for the hold to end: its batches are not listed again at every tick meanwhile.
/// (It used to be due again at every tick: a full batch listing every 500 ms by default, for
/// as long as the hold lasted, up to backoff.token_limit_max, 2 h by default.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_to_reconcile_while_its_model_is_held_does_not_list_batches_every_tick() {
    let mut config = quick_sim();
    config.faults.token_limit = Some(1); // every batch fails with token_limit_exceeded
    let sim = spawn_sim(config).await;
    let env = Env::new(
        &sim.handle.base_url(),
        "[poll]\nmin_interval = \"1s\"\nmax_interval = \"5s\"\n\
         [backoff]\ntoken_limit_initial = \"30s\"\ntoken_limit_max = \"30s\"\n",
    );
    let mut daemon = env.spawn();
    env.drop_file("held.jsonl", requests("held", 2, "gpt-4o-mini").as_bytes());
    wait_until("the first batch", Duration::from_secs(10), async || {
        let made = sim.handle.stats().await.batches.len();
        (made > 0, made)
    })
    .await;
    // The next create gets a 500: outcome unknown. By then the first batch has failed for the
    // token limit and the model is held for 30 s.
    sim.handle
        .push_fault(ScriptedFault::new(FaultKind::ServerError).on("POST", "/v1/batches"))
        .await;
    env.drop_file(
        "unknown.jsonl",
        requests("unk", 2, "gpt-4o-mini").as_bytes(),
    );
    daemon.wait_for_line("enqueued-token limit reached", Duration::from_secs(10));
    // The create of unknown outcome waits for the hold to end before it is reconciled.
    daemon.wait_for_line("outcome unknown", Duration::from_secs(10));
    let lists = |s: &batchwatch::sim::Stats| {
        s.requests
            .iter()
            .filter(|(k, _)| k.starts_with("GET") && k.ends_with("/batches"))
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    let before = lists(&sim.handle.stats().await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = lists(&sim.handle.stats().await);
    env.stop(daemon);
    assert!(
        after - before <= 10,
        "{} batch listings in 5 s while nothing could change",
        after - before
    );
}

/// Reconciling a create lists batches back to an hour before the create was armed
/// (`outcome_unknown_at`, set with the move to `creating`; recovery at start keeps it). After a
/// crash between the create and its recording, a restart two hours later still reaches the
/// batch the crashed create made, past a newer batch that is not this job's, and creates no
/// second one. (When recovery set the mark to the time of the restart, the listing used to stop
/// at that newer batch and a second batch was created.)
///
/// The daemon restarted "two hours later" runs in-process with a clock two hours ahead; the
/// simulator runs at real speed, so it saw the create two hours before that restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_long_after_a_crashed_create_finds_the_batch_it_made() {
    restart_after_a_crashed_create(jiff::SignedDuration::from_hours(2)).await;
}

/// The control for the test above: the same steps with a restart ten minutes later pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_a_restart_soon_after_a_crashed_create_finds_the_batch_it_made() {
    restart_after_a_crashed_create(jiff::SignedDuration::from_mins(10)).await;
}

async fn restart_after_a_crashed_create(downtime: jiff::SignedDuration) {
    let config = SimConfig {
        time_scale: 1.0,
        seed: Some(7),
        validating_secs: 600.0,
        ..SimConfig::default()
    };
    let sim = spawn_sim(config).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn_with(&[(batchwatch::failpoint::ENV, "submit:after-create")]);
    env.drop_file("late.jsonl", requests("late", 3, "gpt-4o-mini").as_bytes());
    wait_crash(&mut daemon, Duration::from_secs(30));
    drop(daemon);

    // Meanwhile, some other batch of the same project is created (another job, another tool).
    let settings = Settings::load_from(Some(&env.config), []).unwrap();
    let client = Client::new(&settings.api, &settings.limits, ApiKey::new(KEY).unwrap()).unwrap();
    let other = env.sandbox.path().join("other.jsonl");
    let content = requests("other", 1, "gpt-4o-mini");
    std::fs::write(&other, &content).unwrap();
    let file = client
        .upload_file(&other, 0..content.len() as u64, "other.jsonl")
        .await
        .unwrap();
    crate::support::client::create_foreign_batch(&client, &file.id).await;

    let later = jiff::Timestamp::now().checked_add(downtime).unwrap();
    let mut restarted = Daemon::start(settings, ApiKey::new(KEY).unwrap(), Clock::manual(later))
        .await
        .unwrap();
    restarted
        .run_until(tokio::time::sleep(Duration::from_secs(3)))
        .await;
    restarted.shutdown().await;

    let stats = sim.handle.stats().await;
    let mine: Vec<u64> = stats.batches_by_job.values().copied().collect();
    assert_eq!(
        mine,
        vec![1],
        "batches per batchwatch job (the other batch has no job id): {:?}",
        stats.batches_by_job
    );
}

/// A daemon in this process (`api.request_timeout` 30 s, a duplicate check every 10 minutes)
/// whose first create's connection drops before it is carried out: a job of `requests` in
/// `submitting`, its create of unknown outcome.
async fn a_create_of_unknown_outcome(name: &str, requests: &str) -> (InProcess, Job) {
    let extra =
        "[api]\nrequest_timeout = \"30s\"\n[reconcile]\nduplicate_check_interval = \"10m\"\n";
    let mut t = InProcess::start(extra, Faults::default()).await;
    t.sim
        .handle
        .push_fault(ScriptedFault::new(FaultKind::DropBefore).on("POST", "/v1/batches"))
        .await;
    t.env.drop_file(name, requests.as_bytes());
    let job = t
        .until("the create's outcome unknown", 20, |j| {
            j.state == JobState::Submitting
        })
        .await;
    (t, job)
}

/// After api.request_timeout the service is asked, shows no batch of the job, and the create
/// is sent again: returns the job's submission.
async fn resend(t: &mut InProcess, job: &Job) -> Submission {
    t.round(Duration::from_secs(31)).await;
    t.until("the batch created again", 5, |j| {
        j.state == JobState::Running
    })
    .await;
    let ours = t
        .daemon
        .ctx
        .store
        .submissions_of(&job.id)
        .await
        .unwrap()
        .remove(0);
    assert!(
        ours.resent_at.is_some(),
        "the create was sent again: {ours:#?}"
    );
    ours
}

/// The first create landing late after all: a second batch for the submission, on its own
/// input file. Returns its id.
async fn late_duplicate(t: &InProcess, ours: &Submission) -> String {
    let (status, late) = t
        .sim
        .post(
            "/batches",
            &json!({
                "input_file_id": ours.upload_id.clone().unwrap(),
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {
                    "batchwatch_job_id": ours.job_id,
                    "batchwatch_part": "0",
                    "batchwatch_attempt": "1",
                },
            }),
        )
        .await;
    assert!(status.is_success(), "{late}");
    late["id"].as_str().unwrap().to_owned()
}

/// A create sent again after reconciliation found nothing is watched for a late duplicate:
/// the duplicate found on the service is cancelled at the next duplicate check
/// (reconcile.duplicate_check_interval on the daemon's clock), not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_duplicate_watch_cancels_a_late_duplicate_at_its_next_check() {
    let (mut t, job) =
        a_create_of_unknown_outcome("twice.jsonl", &requests("twice", 2, "gpt-4o-mini")).await;
    let ours = resend(&mut t, &job).await;
    let late_id = late_duplicate(&t, &ours).await;

    t.round(Duration::from_secs(9 * 60)).await;
    assert_eq!(
        t.sim.batch(&late_id).await["status"],
        "validating",
        "left alone before the next duplicate check"
    );
    t.round(Duration::from_secs(61)).await;
    assert_eq!(
        t.sim.batch(&late_id).await["status"],
        "cancelling",
        "cancelled at the next duplicate check"
    );
    let events = t.daemon.ctx.store.job_events(&job.id).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains(&late_id) && e.message.contains("cancelled it")),
        "{events:#?}"
    );
}

/// Another key of the organisation the daemon works for (a colleague's script, say): it sees
/// and changes the same files and batches.
const OTHER_KEY: &str = "sk-a-colleagues-key-of-the-same-organisation";

/// Makes the simulator one organisation's: the daemon's key and [`OTHER_KEY`], no other.
async fn one_organisation(sim: &TestSim) {
    sim.handle.set_api_key(Some(KEY)).await;
    sim.handle.add_api_key(OTHER_KEY).await;
}

/// With [`OTHER_KEY`]: uploads a one-line file of someone else's (`custom_id` `evil`) and
/// creates a batch on it that claims to be the job's part 0, `attempt`, with the rest of the
/// metadata of the job's own batch when one is listed (its digest included: anyone who lists
/// the batches can read it). Returns the forged batch's id.
async fn forge(env: &Env, job_id: &str, attempt: &str) -> String {
    let settings = Settings::load_from(Some(&env.config), []).unwrap();
    let client = Client::new(
        &settings.api,
        &settings.limits,
        ApiKey::new(OTHER_KEY).unwrap(),
    )
    .unwrap();
    let listed = futures_util::TryStreamExt::try_collect::<Vec<_>>(client.list_batches(100))
        .await
        .unwrap();
    let mut metadata: BTreeMap<String, String> = listed
        .iter()
        .find(|b| b.claim().map(|c| c.job_id) == Some(job_id))
        .and_then(|b| serde_json::from_value(b.raw["metadata"].clone()).ok())
        .unwrap_or_default();
    metadata.insert("batchwatch_job_id".into(), job_id.into());
    metadata.insert("batchwatch_part".into(), "0".into());
    metadata.insert("batchwatch_attempt".into(), attempt.into());
    let content = requests("evil", 1, "gpt-4o-mini").replace("evil-0", "evil");
    let path = env.sandbox.path().join("evil.jsonl");
    std::fs::write(&path, &content).unwrap();
    let file = client
        .upload_file(&path, 0..content.len() as u64, "evil.jsonl")
        .await
        .unwrap();
    let forged = client
        .create_batch(&CreateBatchRequest {
            input_file_id: file.id,
            endpoint: "/v1/chat/completions".into(),
            completion_window: "24h".into(),
            metadata: Some(metadata),
            output_expires_after: None,
        })
        .await
        .unwrap();
    forged.id
}

/// Whether the simulator ever saw `batch_id` cancelled or cancelling.
async fn was_cancelled(sim: &TestSim, batch_id: &str) -> bool {
    let stats = sim.handle.stats().await;
    let batch = stats
        .batches
        .iter()
        .find(|b| b.id == batch_id)
        .expect("the batch");
    batch
        .history
        .iter()
        .any(|t| t.status == "cancelling" || t.status == "cancelled")
}

/// A job runs, the daemon is killed with SIGKILL, another key of the organisation creates a
/// batch claiming to be the job's attempt `attempt`, and the daemon starts again: the forged
/// batch is logged as foreign and left alone (not followed, not cancelled), and the job
/// completes with its own batch's results.
async fn a_forged_batch_after_a_kill(attempt: &str) {
    let sim = spawn_sim(slow_sim(3.0)).await;
    one_organisation(&sim).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file("real.jsonl", requests("real", 2, "gpt-4o-mini").as_bytes());
    let (job_id, real) = wait_until("the job's batch", Duration::from_secs(30), async || {
        let store = env.store().await;
        let running = store.jobs_in_states(&[JobState::Running]).await.unwrap();
        let mut found = None;
        if let Some(job) = running.first() {
            let subs = store.submissions_of(&job.id).await.unwrap();
            found = subs[0].remote_id.clone().map(|r| (job.id.clone(), r));
        }
        store.close().await;
        (found.is_some(), found)
    })
    .await
    .unwrap();
    daemon.signal(libc::SIGKILL);
    wait_crash(&mut daemon, Duration::from_secs(10));
    drop(daemon);

    let forged = forge(&env, &job_id, attempt).await;
    let mut daemon = env.spawn();
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    let log = env.stop(daemon);

    let job = &jobs[0];
    assert_eq!(job.state, JobState::Completed, "{:?}", job.reason);
    let results = env.queue.join(job.results_dir.as_deref().unwrap());
    let output = std::fs::read_to_string(results.join("output.jsonl")).unwrap();
    let answered: BTreeSet<String> = output
        .lines()
        .map(|l| {
            let line: serde_json::Value = serde_json::from_str(l).unwrap();
            line["custom_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        answered,
        BTreeSet::from(["real-0".to_owned(), "real-1".to_owned()]),
        "the job's own results, and only those"
    );
    let store = env.store().await;
    let subs = store.submissions_of(&job_id).await.unwrap();
    let followed: Vec<_> = subs.iter().map(|s| s.remote_id.clone()).collect();
    assert_eq!(
        followed,
        [Some(real)],
        "only the job's own batch is followed"
    );
    assert!(
        !was_cancelled(&sim, &forged).await,
        "someone else's batch was cancelled"
    );
    let events = store.job_events(&job_id).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains(&forged) && e.message.contains("left alone")),
        "{events:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains(&forged) && l.contains("left alone")),
        "the forged batch is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_new_attempt_found_at_start_is_neither_adopted_nor_cancelled() {
    a_forged_batch_after_a_kill("2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_duplicate_of_a_running_attempt_found_at_start_is_neither_adopted_nor_cancelled() {
    a_forged_batch_after_a_kill("1").await;
}

/// A create's outcome is unknown and it is sent again; another key of the organisation creates
/// a batch claiming to be that submission's, before the reconciliation (`before_reconcile`) or
/// after it. The reconciliation does not take it for the job's batch, and the duplicate watch
/// does not cancel it; a real late duplicate (on the job's own input file), made at the same
/// time, is cancelled, so the watch did look.
async fn a_forged_batch_around_a_resent_create(before_reconcile: bool) {
    let (mut t, job) =
        a_create_of_unknown_outcome("resent.jsonl", &requests("real", 2, "gpt-4o-mini")).await;
    one_organisation(&t.sim).await;
    let early = if before_reconcile {
        Some(forge(&t.env, &job.id, "1").await)
    } else {
        None
    };
    let ours = resend(&mut t, &job).await;
    let forged = match early {
        Some(forged) => forged,
        None => forge(&t.env, &job.id, "1").await,
    };
    assert_ne!(ours.remote_id.as_deref(), Some(forged.as_str()));
    let late = late_duplicate(&t, &ours).await;

    t.round(Duration::from_secs(11 * 60)).await;
    assert_eq!(
        t.sim.batch(&late).await["status"],
        "cancelling",
        "the real late duplicate is cancelled"
    );
    assert!(
        !was_cancelled(&t.sim, &forged).await,
        "someone else's batch was cancelled"
    );
    let events = t.daemon.ctx.store.job_events(&job.id).await.unwrap();
    assert!(
        !events.iter().any(|e| e.message.contains(&forged)),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_batch_is_not_taken_for_a_create_of_unknown_outcome() {
    a_forged_batch_around_a_resent_create(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_batch_is_not_cancelled_as_a_late_duplicate() {
    a_forged_batch_around_a_resent_create(false).await;
}
