//! End to end, in containers built from the project's own static binary: the simulator in a
//! container, paused, stopped and restarted under a running daemon (at its old port, or at a
//! new one the daemon is restarted for); and the daemon itself in a container, killed hard.

use std::time::{Duration, Instant};

use batchwatch::model::{JobState, SubmissionState};
use batchwatch::sim::{FaultKind, ScriptedFault};
use batchwatch::store::prelude::*;

use crate::support::containers::{DaemonContainer, QUICK_SIM, Scenario, SimContainer};
use crate::support::daemon::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemon_takes_files_to_done_against_the_simulator_in_a_container_with_one_batch_each() {
    let started = Instant::now();
    let Some(mut t) = Scenario::start("").await else {
        return;
    };
    let mut daemon = t.env.spawn();
    t.drop_files("life", 8);
    let jobs = t
        .env
        .wait_finished(8, Duration::from_secs(60), &mut daemon)
        .await;
    t.env.stop(daemon);
    t.assert_each_completed_once(
        &jobs,
        &t.sim.stats().await,
        "against a simulator in a container",
    );
    t.env.assert_key_nowhere_on_disk();
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
                let subs = store.submissions_of(&job.id).await.unwrap();
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
    let Some(mut t) =
        Scenario::start("[api]\nrequest_timeout = \"1s\"\nretry_attempts = 1\n").await
    else {
        return;
    };
    // A poll gives up after a second, without retrying inside the client, so the daemon's
    // polling tasks fail while the simulator is paused and must be tried again later.
    let mut daemon = t.env.spawn();
    t.drop_files("before", 4);
    t.sim.wait_batches(4, Duration::from_secs(30)).await;
    // Simulated time stands still until the pause ends, so the batches are certainly still
    // running, and polled, while the simulator is paused.
    t.sim.set_time_scale(0.0).await;

    let paused = Instant::now();
    t.sim.pause().await;
    assert!(
        !t.sim.answers_within(Duration::from_millis(300)).await,
        "a paused simulator answered"
    );
    // New files are taken in and their uploads hang; the batches already made are polled, and
    // those polls hang until they time out.
    t.drop_files("during", 4);
    wait_submitting(&t.env, "during", 4).await;
    wait_polls_failed(&t.env, "before", 4).await;
    // Still answering its operators meanwhile.
    let status = crate::support::process::stdout_ok(Some(&t.env.config), &["status"]);
    assert!(status.contains("during-0.jsonl"), "{status}");
    t.sim.unpause().await;
    println!("paused for {:?}", paused.elapsed());
    t.sim.set_time_scale(300.0).await;

    let jobs = t
        .env
        .wait_finished(8, Duration::from_secs(60), &mut daemon)
        .await;
    t.env.stop(daemon);
    t.assert_each_completed_once(&jobs, &t.sim.stats().await, "through a paused simulator");
    t.env.assert_key_nowhere_on_disk();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_the_daemon_within_its_bound_while_the_simulator_is_paused() {
    let Some(mut t) = Scenario::start("[daemon]\nshutdown_timeout = \"1s\"\n").await else {
        return;
    };
    let mut daemon = t.env.spawn();
    t.drop_files("before", 3);
    t.sim.wait_batches(3, Duration::from_secs(30)).await;
    t.sim.pause().await;
    t.drop_files("during", 2);
    wait_submitting(&t.env, "during", 2).await;

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
    t.sim.unpause().await;
    let mut daemon = t.env.spawn();
    let jobs = t
        .env
        .wait_finished(5, Duration::from_secs(60), &mut daemon)
        .await;
    t.env.stop(daemon);
    t.assert_each_completed_once(&jobs, &t.sim.stats().await, "after a SIGTERM while paused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemon_rides_through_a_simulator_restart_that_keeps_its_batches() {
    let Some(mut t) = Scenario::start("").await else {
        return;
    };
    let mut daemon = t.env.spawn();
    t.drop_files("before", 4);
    t.sim.wait_batches(4, Duration::from_secs(30)).await;
    // Simulated time stands still until the restart (which runs at --time-scale again), so
    // the batches are certainly mid-run when the simulator goes down.
    t.sim.set_time_scale(0.0).await;
    let before = t.sim.stats().await;
    assert!(
        before
            .batches
            .iter()
            .all(|b| b.status == "validating" || b.status == "in_progress"),
        "{:?}",
        before.batches
    );

    t.sim.stop().await;
    assert!(
        t.data.path().join(batchwatch::sim::STATE_FILE).is_file(),
        "docker stop made the simulator save its state; its log:\n{}",
        t.sim.logs().await
    );
    let refused = std::net::TcpStream::connect(t.sim.host_addr());
    assert_eq!(
        refused.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "nothing listens while the simulator is stopped"
    );
    t.drop_files("during", 4);
    daemon.wait_for_line("Connection refused", Duration::from_secs(30));

    t.sim.start_again().await;
    let jobs = t
        .env
        .wait_finished(8, Duration::from_secs(60), &mut daemon)
        .await;
    t.env.stop(daemon);
    let stats = t.sim.stats().await;
    t.assert_each_completed_once(&jobs, &stats, "through a simulator restart");
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
    let Some(mut t) = Scenario::start("").await else {
        return;
    };
    let mut daemon = t.env.spawn();
    t.drop_files("before", 4);
    let before = t.sim.wait_batches(4, Duration::from_secs(30)).await;
    t.sim.set_time_scale(0.0).await;
    t.sim.stop().await;
    t.drop_files("during", 4);
    daemon.wait_for_line("Connection refused", Duration::from_secs(30));
    t.env.stop(daemon);

    let new = SimContainer::start(t.image.clone(), t.data.path(), QUICK_SIM).await;
    assert_ne!(new.host_addr(), t.sim.host_addr(), "a new port");
    assert_eq!(
        new.stats().await.batches.len(),
        before.batches.len(),
        "the simulator came back with its batches"
    );
    t.env.set_base_url(&new.base_url());
    let mut daemon = t.env.spawn();
    let jobs = t
        .env
        .wait_finished(8, Duration::from_secs(60), &mut daemon)
        .await;
    t.env.stop(daemon);
    t.assert_each_completed_once(&jobs, &new.stats().await, "after a move to a new port");
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
    let Some(mut t) = Scenario::for_daemon_containers("").await else {
        return;
    };
    // Every create is carried out at once and answered late, so each kill below lands while
    // batches exist that the daemon has not heard of: the next one must find them, not make
    // them again.
    t.sim
        .push_fault(
            &ScriptedFault::new(FaultKind::LateAnswer {
                ms: LATE_ANSWER.as_millis() as u64,
            })
            .times((KILLS * FILES_PER_KILL) as u32)
            .on("POST", "/v1/batches"),
        )
        .await;

    // Each daemon is killed once two more batches exist, well within their late answers;
    // meanwhile other files are being uploaded or created, and earlier jobs polled or
    // collected.
    for round in 0..KILLS {
        let daemon = DaemonContainer::start(t.image.clone(), &t.env).await;
        let made = t.sim.stats().await.batches.len();
        t.drop_files(&format!("r{round}"), FILES_PER_KILL);
        t.sim.wait_batches(made + 2, Duration::from_secs(30)).await;
        assert_key_not_in(&daemon.kill().await);
    }

    let daemon = DaemonContainer::start(t.image.clone(), &t.env).await;
    let jobs = daemon
        .wait_finished(&t.env, KILLS * FILES_PER_KILL, Duration::from_secs(60))
        .await;
    // As PID 1 the daemon gets only the signals it handles: SIGTERM must stop it cleanly,
    // well before Docker's 10 s grace runs out and it is killed.
    let (code, took) = daemon.stop().await;
    let log = daemon.logs().await;
    assert_eq!(code, 0, "exit code after docker stop; log:\n{log}");
    assert!(took < Duration::from_secs(5), "docker stop took {took:?}");
    assert_key_not_in(&log);

    t.assert_each_completed_once(&jobs, &t.sim.stats().await, "after hard kills");
    t.env.assert_key_nowhere_on_disk();
}
