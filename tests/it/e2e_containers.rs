//! End to end, in containers built from the project's own static binary: the simulator in a
//! container, paused, stopped and restarted under a running daemon (at its old port, or at a
//! new one the daemon is restarted for); and the daemon itself in a container, killed hard.

use std::time::{Duration, Instant};

use batchwatch::model::{JobState, SubmissionState};
use batchwatch::sim::{FaultKind, ScriptedFault, Stats};
use batchwatch::store::batches;
use batchwatch::store::jobs::Job;

use crate::support::containers::{self, DaemonContainer, SimContainer};
use crate::support::daemon::{Env, requests};

/// Simulator flags that take a batch through its life in about a second of real time.
const QUICK_SIM: &[&str] = &[
    "--time-scale",
    "300",
    "--seed",
    "7",
    "--validating-secs",
    "6",
    "--in-progress-secs",
    "90",
    "--request-secs",
    "0.5",
    "--finalizing-secs",
    "6",
];

/// The files a test drops, with their contents.
struct Dropped(Vec<(String, String)>);

impl Dropped {
    fn new() -> Dropped {
        Dropped(Vec::new())
    }

    /// Drops `count` files named `TAG-N.jsonl` of a few requests each.
    fn drop_files(&mut self, env: &Env, tag: &str, count: usize) {
        for i in 0..count {
            let name = format!("{tag}-{i}.jsonl");
            let content = requests(&format!("{tag}{i}"), 2 + i % 4, "gpt-4o-mini");
            env.drop_file(&name, content.as_bytes());
            self.0.push((name, content));
        }
    }
}

/// What must hold when every dropped file went through: each is completed, in done/ byte for
/// byte, with every request answered once in its results; nothing is left anywhere else; the
/// simulator made exactly one batch per job and none for anything else.
fn assert_all_done_once(env: &Env, jobs: &[Job], dropped: &Dropped, stats: &Stats) {
    let summary: Vec<_> = jobs
        .iter()
        .map(|j| (&j.file_name, j.state, &j.reason))
        .collect();
    assert_eq!(jobs.len(), dropped.0.len(), "{summary:?}");
    assert!(
        jobs.iter().all(|j| j.state == JobState::Completed),
        "{summary:?}"
    );
    for (name, content) in &dropped.0 {
        let done = std::fs::read_to_string(env.dir("done").join(name))
            .unwrap_or_else(|e| panic!("{name} in done/: {e}"));
        assert_eq!(&done, content, "{name} unchanged");
    }
    for sub in ["incoming", "processing", "failed"] {
        assert!(env.names(sub).is_empty(), "{sub}/: {:?}", env.names(sub));
    }
    for job in jobs {
        let dir = env
            .sandbox
            .queue_dir()
            .join(job.results_dir.as_deref().expect("a results dir"));
        let output = std::fs::read_to_string(dir.join("output.jsonl")).unwrap();
        let mut ids: Vec<String> = output
            .lines()
            .map(|l| {
                let line: serde_json::Value = serde_json::from_str(l).unwrap();
                line["custom_id"].as_str().unwrap().to_owned()
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids.len() as i64,
            job.request_count.unwrap(),
            "{}: every request answered once",
            job.file_name
        );
    }
    for job in jobs {
        assert_eq!(
            stats.batches_by_job.get(&job.id),
            Some(&1),
            "{}: one batch",
            job.file_name
        );
    }
    assert_eq!(
        stats.batches_by_job.len(),
        jobs.len(),
        "no batch without a job: {:?}",
        stats.batches_by_job
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemon_takes_files_to_done_against_the_simulator_in_a_container_with_one_batch_each() {
    let Some(image) = containers::image().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let sim = SimContainer::start(image, data.path(), QUICK_SIM).await;
    println!("simulator container up in {:?}", started.elapsed());
    let env = Env::new(&sim.base_url(), "");
    let mut daemon = env.spawn();
    let mut dropped = Dropped::new();
    dropped.drop_files(&env, "life", 8);
    let jobs = env
        .wait_finished(8, Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
    assert_all_done_once(&env, &jobs, &dropped, &sim.stats().await);
    env.assert_key_nowhere_on_disk();
    println!("whole test {:?}", started.elapsed());
}

/// Waits until every job whose file name starts with `prefix` (there are `n`) is submitting:
/// its upload went out and hangs.
async fn wait_submitting(env: &Env, prefix: &str, n: usize) {
    crate::support::wait_until(
        &format!("{n} {prefix} jobs to be submitting"),
        Duration::from_secs(30),
        async || {
            let jobs = env.jobs().await;
            let hanging = jobs
                .iter()
                .filter(|j| j.file_name.starts_with(prefix) && j.state == JobState::Submitting)
                .count();
            let states: Vec<_> = jobs.into_iter().map(|j| (j.file_name, j.state)).collect();
            (hanging == n, states)
        },
    )
    .await;
}

/// Waits until a poll of the batch of every job whose file name starts with `prefix` (there
/// are `n`) failed, and the daemon recorded why.
async fn wait_polls_failed(env: &Env, prefix: &str, n: usize) {
    crate::support::wait_until(
        &format!("polls of {n} {prefix} batches to fail"),
        Duration::from_secs(30),
        async || {
            let store = env.store().await;
            let mut errors = Vec::new();
            for job in env.jobs().await {
                if !job.file_name.starts_with(prefix) {
                    continue;
                }
                let subs = batches::for_job(store.reader(), &job.id).await.unwrap();
                errors.extend(subs.into_iter().filter_map(|s| {
                    (s.state == SubmissionState::Active)
                        .then_some(s.last_error)
                        .flatten()
                }));
            }
            store.close().await;
            (errors.len() == n, errors)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemon_rides_through_a_paused_simulator_losing_nothing_and_creating_no_duplicate() {
    let Some(image) = containers::image().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let sim = SimContainer::start(image, data.path(), QUICK_SIM).await;
    // A poll gives up after a second, without retrying inside the client, so the daemon's
    // polling tasks fail while the simulator is paused and must be tried again later.
    let env = Env::new(
        &sim.base_url(),
        "[api]\nrequest_timeout = \"1s\"\nretry_attempts = 1\n",
    );
    let mut daemon = env.spawn();
    let mut dropped = Dropped::new();
    dropped.drop_files(&env, "before", 4);
    sim.wait_batches(4, Duration::from_secs(30)).await;
    // Simulated time stands still until the pause ends, so the batches are certainly still
    // running, and polled, while the simulator is paused.
    sim.set_time_scale(0.0).await;

    let paused = Instant::now();
    sim.pause().await;
    assert!(
        !sim.answers_within(Duration::from_millis(300)).await,
        "a paused simulator answered"
    );
    // New files are taken in and their uploads hang; the batches already made are polled, and
    // those polls hang until they time out.
    dropped.drop_files(&env, "during", 4);
    wait_submitting(&env, "during", 4).await;
    wait_polls_failed(&env, "before", 4).await;
    // Still answering its operators meanwhile.
    let status = crate::support::process::stdout_ok(Some(&env.config), &["status"]);
    assert!(status.contains("during-0.jsonl"), "{status}");
    sim.unpause().await;
    println!("paused for {:?}", paused.elapsed());
    sim.set_time_scale(300.0).await;

    let jobs = env
        .wait_finished(8, Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
    assert_all_done_once(&env, &jobs, &dropped, &sim.stats().await);
    env.assert_key_nowhere_on_disk();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_the_daemon_within_its_bound_while_the_simulator_is_paused() {
    let Some(image) = containers::image().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let sim = SimContainer::start(image, data.path(), QUICK_SIM).await;
    let env = Env::new(&sim.base_url(), "[daemon]\nshutdown_timeout = \"1s\"\n");
    let mut daemon = env.spawn();
    let mut dropped = Dropped::new();
    dropped.drop_files(&env, "before", 3);
    sim.wait_batches(3, Duration::from_secs(30)).await;
    sim.pause().await;
    dropped.drop_files(&env, "during", 2);
    wait_submitting(&env, "during", 2).await;

    daemon.signal(libc::SIGTERM);
    let (status, took) = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", daemon.seen.join("\n"));
    assert!(
        took < Duration::from_secs(3),
        "stopped in {took:?} with a 1s shutdown_timeout"
    );
    assert!(
        daemon
            .seen
            .iter()
            .any(|l| l.contains("did not finish within daemon.shutdown_timeout")),
        "the hanging work was cut off, not finished: {}",
        daemon.seen.join("\n")
    );
    drop(daemon);

    // The restart reconciles the uploads cut off, and finishes everything.
    sim.unpause().await;
    let mut daemon = env.spawn();
    let jobs = env
        .wait_finished(5, Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
    assert_all_done_once(&env, &jobs, &dropped, &sim.stats().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemon_rides_through_a_simulator_restart_that_keeps_its_batches() {
    let Some(image) = containers::image().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let sim = SimContainer::start(image, data.path(), QUICK_SIM).await;
    let env = Env::new(&sim.base_url(), "");
    let mut daemon = env.spawn();
    let mut dropped = Dropped::new();
    dropped.drop_files(&env, "before", 4);
    sim.wait_batches(4, Duration::from_secs(30)).await;
    // Simulated time stands still until the restart (which runs at --time-scale again), so
    // the batches are certainly mid-run when the simulator goes down.
    sim.set_time_scale(0.0).await;
    let before = sim.stats().await;
    assert!(
        before
            .batches
            .iter()
            .all(|b| b.status == "validating" || b.status == "in_progress"),
        "{:?}",
        before.batches
    );

    sim.stop().await;
    assert!(
        data.path().join(batchwatch::sim::STATE_FILE).is_file(),
        "docker stop made the simulator save its state; its log:\n{}",
        sim.logs().await
    );
    let refused = std::net::TcpStream::connect(sim.host_addr());
    assert_eq!(
        refused.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "nothing listens while the simulator is stopped"
    );
    dropped.drop_files(&env, "during", 4);
    daemon.wait_for_line("Connection refused", Duration::from_secs(30));

    sim.start_again().await;
    let jobs = env
        .wait_finished(8, Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
    let stats = sim.stats().await;
    assert_all_done_once(&env, &jobs, &dropped, &stats);
    // The batches made before the restart went on from where they were.
    for old in &before.batches {
        let now = stats
            .batches
            .iter()
            .find(|b| b.id == old.id)
            .expect("a batch from before the restart");
        assert!(
            now.history.starts_with(&old.history),
            "{}: {:?} then {:?}",
            old.id,
            old.history,
            now.history
        );
        let statuses: Vec<&str> = now.history.iter().map(|t| t.status.as_str()).collect();
        assert_eq!(
            statuses,
            ["validating", "in_progress", "finalizing", "completed"],
            "{}",
            old.id
        );
    }
}

/// The service comes back at another address: the operator stops the daemon (which must stop
/// in time while nothing answers), points its configuration there and starts it again. The
/// batches made before are found by id at the new address and nothing is made twice.
#[tokio::test]
async fn daemon_restarted_for_a_simulator_back_on_a_new_port_finishes_every_job_once() {
    let Some(image) = containers::image().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let old = SimContainer::start(image.clone(), data.path(), QUICK_SIM).await;
    let env = Env::new(&old.base_url(), "");
    let mut daemon = env.spawn();
    let mut dropped = Dropped::new();
    dropped.drop_files(&env, "before", 4);
    let before = old.wait_batches(4, Duration::from_secs(30)).await;
    old.set_time_scale(0.0).await;
    old.stop().await;
    dropped.drop_files(&env, "during", 4);
    daemon.wait_for_line("Connection refused", Duration::from_secs(30));
    env.stop(daemon);

    let new = SimContainer::start(image, data.path(), QUICK_SIM).await;
    assert_ne!(new.host_addr(), old.host_addr(), "a new port");
    assert_eq!(
        new.stats().await.batches.len(),
        before.batches.len(),
        "the simulator came back with its batches"
    );
    env.set_base_url(&new.base_url());
    let mut daemon = env.spawn();
    let jobs = env
        .wait_finished(8, Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
    assert_all_done_once(&env, &jobs, &dropped, &new.stats().await);
}

/// Panics if the key shows in a log.
fn assert_key_not_in(log: &str) {
    crate::support::daemon::assert_key_absent(&log.lines().map(str::to_owned).collect::<Vec<_>>());
}

/// How many times the daemon's container is killed, and the files dropped before each kill.
const KILLS: usize = 4;
const FILES_PER_KILL: usize = 6;

/// How long the simulator holds the answer to a create it carried out.
const LATE_ANSWER: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemon_container_killed_hard_while_creates_await_their_answers_finishes_every_job_once() {
    let Some(image) = containers::image().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let sim = SimContainer::start(image.clone(), data.path(), QUICK_SIM).await;
    // Every create is carried out at once and answered late, so each kill below lands while
    // batches exist that the daemon has not heard of: the next one must find them, not make
    // them again.
    sim.push_fault(
        &ScriptedFault::new(FaultKind::LateAnswer {
            ms: LATE_ANSWER.as_millis() as u64,
        })
        .times((KILLS * FILES_PER_KILL) as u32)
        .on("POST", "/v1/batches"),
    )
    .await;
    let env = Env::new(&sim.base_url_for_containers().await, "");
    let mut dropped = Dropped::new();

    // Each daemon is killed once two more batches exist, well within their late answers;
    // meanwhile other files are being uploaded or created, and earlier jobs polled or
    // collected.
    for round in 0..KILLS {
        let daemon = DaemonContainer::start(image.clone(), &env).await;
        let made = sim.stats().await.batches.len();
        dropped.drop_files(&env, &format!("r{round}"), FILES_PER_KILL);
        sim.wait_batches(made + 2, Duration::from_secs(30)).await;
        assert_key_not_in(&daemon.kill().await);
    }

    let daemon = DaemonContainer::start(image, &env).await;
    let jobs = daemon
        .wait_finished(&env, KILLS * FILES_PER_KILL, Duration::from_secs(60))
        .await;
    // As PID 1 the daemon gets only the signals it handles: SIGTERM must stop it cleanly,
    // well before Docker's 10 s grace runs out and it is killed.
    let (code, took) = daemon.stop().await;
    let log = daemon.logs().await;
    assert_eq!(code, 0, "exit code after docker stop; log:\n{log}");
    assert!(took < Duration::from_secs(5), "docker stop took {took:?}");
    assert_key_not_in(&log);

    assert_all_done_once(&env, &jobs, &dropped, &sim.stats().await);
    assert!(
        jobs.iter().all(|j| j.attempts == 1),
        "{:?}",
        jobs.iter()
            .map(|j| (&j.file_name, j.attempts))
            .collect::<Vec<_>>()
    );
    env.assert_key_nowhere_on_disk();
}
