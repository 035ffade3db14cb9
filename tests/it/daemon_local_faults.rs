//! Local faults: a full disk under the database or under the queue, a results directory that
//! cannot be made. The daemon rides them out without spinning, however long they last, ends no
//! job for them, and carries on by itself once the cause is gone, with nothing lost and no
//! batch twice.

use std::time::{Duration, Instant};

use batchwatch::model::{JobState, SubmissionState};
use batchwatch::sim::{FaultKind, RetryAfter, ScriptedFault};

use crate::support::daemon::{
    CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, Env, assert_each_completed_once, quick_sim, requests,
    slow_sim,
};
use crate::support::process::{Running, stdout_ok};
use crate::support::sim::{TestSim, spawn_sim};
use crate::support::tmpfs::Tmpfs;
use crate::support::wait_until;

/// Waits `for_` while checking that the daemon keeps running.
fn stays_up(daemon: &mut Running, for_: Duration) {
    let until = Instant::now() + for_;
    while Instant::now() < until {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            daemon.drain();
            panic!(
                "the daemon exited ({status}) on a full disk:\n{}",
                daemon.seen.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A daemon's surroundings with the queue tree on a small tmpfs of its own, and `extra` TOML;
/// `None` when no tmpfs can be mounted (the test is then skipped).
fn queue_on_a_small_disk(sim: &TestSim, extra: &str) -> Option<(Tmpfs, Env)> {
    let fs = Tmpfs::mount(3 * 1024)?;
    let queue = fs.path().join("queue");
    let env = Env::placed(&sim.handle.base_url(), extra, Some(&queue), None);
    Some((fs, env))
}

/// Waits until `n` jobs run.
async fn wait_running(env: &Env, n: usize) {
    wait_until("the batches running", Duration::from_secs(30), async || {
        let states: Vec<JobState> = env.jobs().await.iter().map(|j| j.state).collect();
        let running = states.iter().filter(|s| **s == JobState::Running).count();
        (running >= n, states)
    })
    .await;
}

/// The disk under the database fills up before files arrive: claims cannot be recorded, and
/// nothing moves; once space is back, every file goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_database_disk_holds_the_daemon_until_space_returns_then_it_carries_on() {
    let Some(fs) = Tmpfs::mount(3 * 1024) else {
        return;
    };
    let sim = spawn_sim(slow_sim(1.0)).await;
    let db = fs.path().join("state.db");
    let env = Env::placed(&sim.handle.base_url(), "", None, Some(&db));
    let mut daemon = env.spawn();
    daemon.wait_for_line("ready", Duration::from_secs(30));
    let filler = fs.fill("filler");
    let mut files = Vec::new();
    for i in 0..3 {
        let content = requests(&format!("full-db-{i}"), 20, "gpt-4o-mini");
        env.drop_file(&format!("f{i}.jsonl"), content.as_bytes());
        files.push((format!("f{i}.jsonl"), content));
    }
    stays_up(&mut daemon, Duration::from_secs(6));
    daemon.drain();
    assert!(
        daemon.seen.iter().any(|l| l.contains("full")),
        "the full disk was noticed:\n{}",
        daemon.seen.join("\n")
    );
    std::fs::remove_file(&filler).unwrap();
    let jobs = env
        .wait_finished(3, Duration::from_secs(60), &mut daemon)
        .await;
    let log = env.stop(daemon);
    assert!(
        !log.iter().any(|l| l.contains("transaction depth")),
        "the writer was left inside a failed transaction"
    );
    let stats = sim.handle.stats().await;
    assert_each_completed_once(&env, &jobs, &stats, &files, "a full database disk");
}

/// results/ cannot be made (here it is a file; equally a permission mistake or a full disk):
/// the job waits, its collect step tried again after a back-off that grows with the wait, not
/// at every turn of the loop (a finished task wakes the loop, so a step that fails without a
/// back-off spins, one WARN line per turn), and `status` says why the job waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_that_cannot_be_written_wait_backing_off_and_status_says_why() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    std::fs::remove_dir_all(env.dir("results")).unwrap();
    std::fs::write(env.dir("results"), b"not a directory").unwrap();
    env.drop_file("spin.jsonl", requests("spin", 2, "gpt-4o-mini").as_bytes());
    let jobs = wait_until("the job collecting", Duration::from_secs(20), async || {
        let jobs = env.jobs().await;
        let collecting = jobs.iter().any(|j| j.state == JobState::Collecting);
        (collecting, jobs)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = stdout_ok(Some(&env.config), &["status"]);
    let line = status
        .lines()
        .find(|l| l.starts_with(&jobs[0].id))
        .unwrap_or_else(|| panic!("no line for the job:\n{status}"));
    assert!(
        line.contains("collecting") && line.contains("Not a directory"),
        "status says why the job waits: {line}"
    );
    // drain() reads until 50 ms pass without a line, which never happens during a flood.
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
    daemon.drain();
    let attempts = daemon
        .seen
        .iter()
        .filter(|l| l.contains("cannot be written here"))
        .count();
    assert!(
        (1..=30).contains(&attempts),
        "{attempts} collect attempts logged within about 3 s"
    );
}

/// The disk under the queue fills up while batches run, and stays full for longer than
/// `collect.give_up_after`: a full disk is the host's fault, not the service's, so it counts
/// towards no give-up. The jobs wait (their reason in `status`), the service keeps every result
/// file meanwhile, and once space is back every job completes with all its results.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_disk_full_for_longer_than_give_up_after_fails_no_job_and_deletes_nothing() {
    let sim = spawn_sim(slow_sim(2.0)).await;
    let Some((fs, env)) = queue_on_a_small_disk(&sim, "[collect]\ngive_up_after = \"2s\"\n") else {
        return;
    };
    let give_up_after = Duration::from_secs(2);
    let mut daemon = env.spawn();
    let mut files = Vec::new();
    for i in 0..3 {
        let content = requests(&format!("long-full-{i}"), 50, "gpt-4o-mini");
        env.drop_file(&format!("l{i}.jsonl"), content.as_bytes());
        files.push((format!("l{i}.jsonl"), content));
    }
    wait_running(&env, 3).await;
    let filler = fs.fill("filler");
    let waiting = wait_until(
        "every batch ended, its results failing to be written",
        Duration::from_secs(60),
        async || {
            let mut errors = Vec::new();
            for job in env.jobs().await {
                for sub in env.submissions(&job.id).await {
                    errors.push((sub.state, sub.last_error));
                }
            }
            let all = errors.len() == 3
                && errors.iter().all(|(state, error)| {
                    *state == SubmissionState::Collecting
                        && error
                            .as_deref()
                            .is_some_and(|e| e.contains("No space left"))
                });
            (all, errors)
        },
    )
    .await;
    assert_eq!(waiting.len(), 3);
    stays_up(&mut daemon, give_up_after * 3);
    let jobs = env.jobs().await;
    assert!(
        jobs.iter().all(|j| !j.state.is_terminal()),
        "no job ends for a full disk, however long it lasts: {:?}",
        jobs.iter()
            .map(|j| (j.state, &j.reason))
            .collect::<Vec<_>>()
    );
    let held: Vec<String> = sim.handle.files().await.into_iter().map(|f| f.id).collect();
    for job in &jobs {
        for sub in env.submissions(&job.id).await {
            assert_eq!(
                (sub.state, sub.results_unavailable.as_deref()),
                (SubmissionState::Collecting, None),
                "{}: its results are not given up",
                job.file_name
            );
            let output = sub.output_id.expect("an output file");
            assert!(
                held.contains(&output),
                "{output} of {} is still on the service while it is not on disk",
                job.file_name
            );
        }
    }
    let status = stdout_ok(Some(&env.config), &["status"]);
    for job in &jobs {
        let line = status
            .lines()
            .find(|l| l.starts_with(&job.id))
            .unwrap_or_else(|| panic!("no line for {}:\n{status}", job.id));
        assert!(line.contains("No space left"), "status says why: {line}");
    }
    std::fs::remove_file(&filler).unwrap();
    let jobs = env
        .wait_finished(3, Duration::from_secs(120), &mut daemon)
        .await;
    env.stop(daemon);
    let stats = sim.handle.stats().await;
    assert_each_completed_once(&env, &jobs, &stats, &files, "a long full queue disk");
}

/// A job cancelled at its deadline while its partial results cannot be written (the queue disk
/// is full) waits for room like any other: being cancelled does not make a local fault final.
/// Once space is back it ends cancelled, with its partial results.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_job_whose_partial_results_cannot_be_written_waits_for_room() {
    let sim = spawn_sim(slow_sim(30.0)).await;
    let Some((fs, env)) = queue_on_a_small_disk(&sim, "") else {
        return;
    };
    let mut daemon = env.spawn();
    env.drop_file("late.jsonl.toml", b"deadline = \"4s\"\n");
    let content = requests("late", 100, "gpt-4o-mini");
    env.drop_file("late.jsonl", content.as_bytes());
    wait_running(&env, 1).await;
    let filler = fs.fill("filler");
    wait_until(
        "the cancelled batch's results failing to be written",
        Duration::from_secs(60),
        async || {
            let jobs = env.jobs().await;
            let subs = env.submissions(&jobs[0].id).await;
            let waiting = jobs[0].cancel_requested_at.is_some()
                && subs[0].state == SubmissionState::Collecting
                && subs[0].local_fault_since.is_some();
            (waiting, (jobs[0].state, subs[0].last_error.clone()))
        },
    )
    .await;
    stays_up(&mut daemon, Duration::from_secs(3));
    let job = &env.jobs().await[0];
    assert!(
        !job.state.is_terminal(),
        "a cancelled job waits for room for its results: {:?} {:?}",
        job.state,
        job.reason
    );
    std::fs::remove_file(&filler).unwrap();
    let jobs = env
        .wait_finished(1, Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
    let job = &jobs[0];
    assert_eq!(
        (job.state, job.reason_code.as_deref()),
        (JobState::Cancelled, Some("deadline")),
        "{:?}",
        job.reason
    );
    assert!(
        job.reason
            .as_deref()
            .is_some_and(|r| r.ends_with("partial results kept")),
        "{:?}",
        job.reason
    );
    let partial = env.output_lines(job);
    assert!(
        (1..100).contains(&partial),
        "partial results: {partial} of 100"
    );
    assert_eq!(
        std::fs::read_to_string(env.dir("failed").join("late.jsonl")).unwrap(),
        content
    );
}

/// The job's file in processing/ cannot be read when its upload is due (its mode changed
/// under the daemon; equally an I/O error): the host's fault, not the file's. The submission
/// waits, however long, and the job completes once the file can be read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_that_cannot_be_read_for_its_upload_waits_for_the_host() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "skipped: needs root, to start the daemon without the capabilities that let it read any file"
        );
        return;
    }
    let sim = spawn_sim(quick_sim()).await;
    // Uploads are refused for now, so the job waits with its file claimed.
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::RateLimit {
                retry_after: RetryAfter::Millis(100),
            })
            .on("POST", "/v1/files")
            .times(1_000_000),
        )
        .await;
    let env = Env::new(
        &sim.handle.base_url(),
        "[backoff]\nfailed_request = \"200ms\"\nfailed_task_initial = \"200ms\"\nfailed_task_max = \"1s\"\n",
    );
    let mut daemon = env.spawn_without_caps(&[CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH]);
    env.drop_file(
        "locked.jsonl",
        requests("locked", 3, "gpt-4o-mini").as_bytes(),
    );
    let job = wait_until("the job submitting", Duration::from_secs(30), async || {
        let jobs = env.jobs().await;
        let submitting = jobs
            .first()
            .is_some_and(|j| j.state == JobState::Submitting);
        (submitting, jobs)
    })
    .await
    .remove(0);
    let path = env.queue.join(&job.path);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    sim.handle.clear_scripted_faults().await;
    daemon.wait_for_line(
        "the file cannot be read for its upload; waiting for the host",
        Duration::from_secs(30),
    );
    stays_up(&mut daemon, Duration::from_secs(2));
    let waiting = env.jobs().await.remove(0);
    assert!(
        !waiting.state.is_terminal(),
        "a file the host cannot read now ended its job: {waiting:?}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let jobs = env
        .wait_finished(1, Duration::from_secs(60), &mut daemon)
        .await;
    assert_eq!(jobs[0].state, JobState::Completed, "{:?}", jobs[0]);
    env.stop(daemon);
    assert_eq!(sim.handle.stats().await.batches.len(), 1, "one batch");
}
