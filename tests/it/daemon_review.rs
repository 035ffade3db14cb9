//! Defects an adversarial review found, each proven by a test that failed before its fix. The
//! names say what must hold; each doc comment says how the daemon used to break it.

use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use batchwatch::api::{ApiKey, Client, CreateBatchRequest};
use batchwatch::clock::Clock;
use batchwatch::config::Settings;
use batchwatch::daemon::Daemon;
use batchwatch::model::JobState;
use batchwatch::sim::{FaultKind, ScriptedFault, SimConfig};
use batchwatch::store::{Access, Store};

use crate::support::daemon::{Env, KEY, quick_sim, requests, wait_crash};
use crate::support::sim::spawn_sim;

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path and mode.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Waits until `pred` holds, up to `timeout`; returns whether it did.
async fn eventually(timeout: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if pred() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pred()
}

/// intake::register reads the sidecar with `std::fs::read` on the daemon's main loop, following
/// whatever it is. A FIFO named `NAME.jsonl.toml` blocks that read forever: the loop stops, so
/// no other file is ever claimed, polled or finished (and a restart blocks again in recover).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fifo_sidecar_is_rejected_and_does_not_stall_the_daemon() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    mkfifo(&env.dir("incoming").join("stall.jsonl.toml"));
    env.drop_file(
        "stall.jsonl",
        requests("stall", 2, "gpt-4o-mini").as_bytes(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.drop_file(
        "other.jsonl",
        requests("other", 2, "gpt-4o-mini").as_bytes(),
    );
    let jobs = env
        .wait_finished(2, Duration::from_secs(30), &mut daemon)
        .await;
    let other = jobs.iter().find(|j| j.file_name == "other.jsonl").unwrap();
    assert_eq!(other.state, JobState::Completed);
}

/// A name of 219..=223 bytes fits in incoming/ and, with the 32-byte `JOBID__` prefix, in
/// processing/, but its sidecar `JOBID__NAME.toml` does not (ENAMETOOLONG). Queue::claim moves
/// the file, then fails on the sidecar, so scan_and_claim treats the whole claim as failed: the
/// file sits in processing/ with no job row and the sidecar stays in incoming/. At the next
/// start, intake::recover retries the sidecar move, fails again, and `Daemon::start` returns the
/// error: the daemon cannot start at all until someone removes the file by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_name_with_a_sidecar_neither_strands_the_file_nor_stops_the_next_start() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let daemon = env.spawn();
    let name = format!("{}.jsonl", "n".repeat(214)); // 220 bytes
    std::fs::write(
        env.dir("incoming").join(format!("{name}.toml")),
        "deadline = \"1h\"\n",
    )
    .unwrap();
    env.drop_file(&name, requests("long", 2, "gpt-4o-mini").as_bytes());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stranded = env.names("processing");
    let rows = env.jobs().await.len();
    env.stop(daemon);

    let mut again = env.spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let exited = again.child.try_wait().unwrap();
    again.drain();
    assert!(
        exited.is_none(),
        "the restarted daemon exited ({exited:?}); before the restart processing/ held {stranded:?} \
         with {rows} job rows; log:\n{}",
        again.seen.join("\n")
    );
    let finished = eventually(Duration::from_secs(20), || {
        env.names("done").contains(&name) || env.names("failed").contains(&name)
    })
    .await;
    assert!(
        finished,
        "incoming/ {:?} processing/ {:?}",
        env.names("incoming"),
        env.names("processing")
    );
}

/// A name of 224..=255 bytes cannot get the `JOBID__` prefix in processing/: the claim fails with
/// ENAMETOOLONG, scan_and_claim only warns and holds it for a minute, and it is tried again
/// every minute forever. The file never leaves incoming/ and no reason is ever written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_whose_name_is_too_long_to_claim_is_rejected_with_a_reason() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    let name = format!("{}.jsonl", "x".repeat(230));
    env.drop_file(&name, requests("toolong", 2, "gpt-4o-mini").as_bytes());
    let left = eventually(Duration::from_secs(10), || env.names("incoming").is_empty()).await;
    daemon.drain();
    assert!(
        left,
        "still in incoming/ after 10s, failed/ holds {:?}; log:\n{}",
        env.names("failed"),
        daemon
            .seen
            .iter()
            .filter(|l| l.contains("cannot move"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// submit::create sends the create, then records it in two separate transactions
/// (count_attempt, then poll::observe). If either fails (here: SQLITE_BUSY because another
/// process holds the write lock longer than database.busy_timeout; equally a full disk), the
/// task ends with an error and the row is left in `creating` with `outcome_unknown_at` NULL.
/// The next tick's submit::due picks it up as "never sent" and creates again, without
/// reconciling: one more live batch per tick for as long as the writes fail.
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
    let reader = env.store().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let creating: i64 =
            sqlx::query_scalar("SELECT count(*) FROM batches WHERE state = 'creating'")
                .fetch_one(reader.reader())
                .await
                .unwrap();
        if creating > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no create intent was recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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

/// reconcile::find_batch stops listing at the first batch created more than an hour before
/// `outcome_unknown_at`, and intake::recover sets `outcome_unknown_at` to the time of the
/// restart. After a crash between the create and its recording, a restart more than an hour
/// later stops the listing at the first (newest) batch that is not this job's, never reaches
/// the batch the crashed create made, and creates a second one.
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
    client
        .create_batch(&CreateBatchRequest {
            input_file_id: file.id,
            endpoint: "/v1/chat/completions".into(),
            completion_window: "24h".into(),
            metadata: None,
            output_expires_after: None,
        })
        .await
        .unwrap();

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

/// A rejected file goes to `failed/NAME`, or to `failed/JOBID__NAME` when NAME is taken there.
/// For a name of 212..=223 bytes, `failed/JOBID__NAME.reason.json` is longer than 255 bytes:
/// Queue::finish fails writing the reason file *after* the job was committed as rejected. Nothing
/// retries settle_file for a terminal job while the daemon runs (jobs::finishable only lists
/// unfinished jobs), so the file stays in processing/; and at the next start intake::recover
/// hits the same error and the daemon refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_rejected_file_of_a_long_name_reaches_failed_and_the_daemon_restarts() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let daemon = env.spawn();
    let name = format!("{}.jsonl", "r".repeat(209)); // 215 bytes
    env.drop_file(&name, b"not json\n");
    assert!(
        eventually(Duration::from_secs(10), || env
            .names("failed")
            .contains(&name))
        .await
    );
    env.drop_file(&name, b"still not json\n");
    let moved = eventually(Duration::from_secs(10), || {
        env.names("processing").is_empty() && env.names("incoming").is_empty()
    })
    .await;
    let jobs = env.jobs().await;
    env.stop(daemon);
    let mut again = env.spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let exited = again.child.try_wait().unwrap();
    again.drain();
    assert!(
        moved && exited.is_none(),
        "second file left processing/: {moved}; job states {:?}; processing/ {:?}; \
         restarted daemon exited: {exited:?}; log:\n{}",
        jobs.iter().map(|j| j.state).collect::<Vec<_>>(),
        env.names("processing"),
        again.seen.join("\n")
    );
}

/// submit::create: after an unknown-outcome create, the next step reconciles (lists batches);
/// when nothing matches but the model is held by the enqueued-token limit, it returns without
/// setting `not_before`. submit::due lets reconciling rows through the model filter, so the row
/// is due again at the next tick: a full batch listing every tick (20 ms here, 500 ms by
/// default) for as long as the hold lasts (up to backoff.token_limit_max, 2 h by default).
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
    let made = eventually(Duration::from_secs(10), || {
        futures_util::FutureExt::now_or_never(sim.handle.stats())
            .is_some_and(|s| !s.batches.is_empty())
    })
    .await;
    assert!(made, "the first batch was never created");
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

/// A task that fails on a local error without recording a back-off is due again at once, and a
/// finished task wakes the loop (`Daemon::run_until` selects on `join_next`): the loop respawns
/// it immediately. collect::collect's `create_dir_all` failing (here results/ is not a
/// directory; equally a full disk or a permission mistake) makes a tight loop that logs one
/// WARN line per turn, for as long as the cause lasts. finish (merge or manifest write failing)
/// and validate (a database error) spin the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_persistent_local_error_backs_off_instead_of_spinning() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    std::fs::remove_dir_all(env.dir("results")).unwrap();
    std::fs::write(env.dir("results"), b"not a directory").unwrap();
    env.drop_file("spin.jsonl", requests("spin", 2, "gpt-4o-mini").as_bytes());
    daemon.wait_for_line("a task failed", Duration::from_secs(20));
    tokio::time::sleep(Duration::from_secs(3)).await;
    // drain() reads until 50 ms pass without a line, which never happens during the flood.
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
    daemon.drain();
    let failures = daemon
        .seen
        .iter()
        .filter(|l| l.contains("a task failed") && l.contains("Collect"))
        .count();
    assert!(
        failures <= 30,
        "{failures} failed collect attempts logged within about 3 s"
    );
}
