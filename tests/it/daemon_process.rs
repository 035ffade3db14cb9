//! The daemon as a service: what it tells systemd, and how it stops while the API hangs.

use std::time::{Duration, Instant};

use batchwatch::model::JobState;
use batchwatch::sim::{FaultKind, ScriptedFault};

use crate::support::daemon::{Env, assert_key_absent, quick_sim, requests};
use crate::support::notify::{notify_socket, wait_message};
use crate::support::process::{Running, command};
use crate::support::sim::spawn_sim;
use crate::support::{KEY, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn systemd_hears_ready_status_watchdog_and_stopping() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let (socket, rx) = notify_socket(env.sandbox.path());
    let mut daemon = env.spawn_with(&[
        ("NOTIFY_SOCKET", socket.to_str().unwrap()),
        ("WATCHDOG_USEC", "400000"),
    ]);

    let ready = wait_message(&rx, |m| m.contains("READY=1"), Duration::from_secs(10));
    assert!(ready.contains("STATUS="), "{ready}");
    let started = Instant::now();
    let mut pets = 0;
    while started.elapsed() < Duration::from_millis(1200) {
        if let Ok(m) = rx.recv_timeout(Duration::from_millis(50))
            && m.contains("WATCHDOG=1")
        {
            pets += 1;
        }
    }
    assert!(
        pets >= 4,
        "the watchdog was petted {pets} times in 1.2s with a 400ms timeout"
    );

    env.drop_file("n.jsonl", requests("n", 2, "gpt-4o-mini").as_bytes());
    env.wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    let status = wait_message(
        &rx,
        |m| m.contains("STATUS=") && m.contains("1 completed"),
        Duration::from_secs(10),
    );
    assert!(status.contains("0 running"), "{status}");

    env.stop(daemon);
    wait_message(&rx, |m| m.contains("STOPPING=1"), Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_the_daemon_within_its_bound_while_the_api_hangs_and_a_restart_finishes_the_work()
 {
    let sim = spawn_sim(quick_sim()).await;
    // The create hangs far longer than the shutdown allows.
    sim.handle
        .push_fault(ScriptedFault::new(FaultKind::Latency { ms: 30_000 }).on("POST", "/v1/batches"))
        .await;
    let env = Env::new(
        &sim.handle.base_url(),
        "[daemon]\nshutdown_timeout = \"1s\"\n",
    );
    let mut daemon = env.spawn();
    env.drop_file("hang.jsonl", requests("h", 3, "gpt-4o-mini").as_bytes());
    wait_until(
        "the create hanging at the service",
        Duration::from_secs(20),
        async || {
            let creates = sim
                .handle
                .counts()
                .await
                .requests
                .get("POST /v1/batches")
                .copied();
            (creates == Some(1), creates)
        },
    )
    .await;

    daemon.signal(libc::SIGTERM);
    let (status, took) = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(3),
        "stopped in {took:?} with a 1s shutdown_timeout"
    );
    assert!(
        daemon
            .seen
            .iter()
            .any(|l| l.contains("did not finish within daemon.shutdown_timeout")),
        "{:?}",
        daemon.seen
    );

    // Whether the hanging create was carried out is unknown: the restart reconciles before it
    // creates, so there is one batch either way.
    let mut daemon = env.spawn();
    let jobs = env
        .wait_finished(1, Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
    assert_eq!(jobs[0].state, JobState::Completed);
    assert_eq!(
        sim.handle.stats().await.batches_by_job.get(&jobs[0].id),
        Some(&1)
    );
}

/// A second `batchwatch run` on the same queue or the same database refuses to start, naming
/// the lock and the first daemon's pid; the first goes on undisturbed; once it has stopped, a
/// new one starts (and a daemon killed with SIGKILL leaves no stale lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_daemon_on_the_same_queue_or_database_refuses_to_start() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let first = env.spawn();
    let pid = first.child.id();

    let other_queue = env.sandbox.path().join("other-queue");
    let same_db = env.sandbox.path().join("same-db.toml");
    let config = std::fs::read_to_string(&env.config).unwrap().replace(
        &env.sandbox.queue_dir().display().to_string(),
        &other_queue.display().to_string(),
    );
    assert_ne!(config, std::fs::read_to_string(&env.config).unwrap());
    std::fs::write(&same_db, config).unwrap();
    for (config, lock) in [
        (&env.config, env.dir(".batchwatch.lock")),
        (
            &same_db,
            batchwatch::daemon::runtime::instance::database_lock(
                &env.sandbox.db_path().canonicalize().unwrap(),
            ),
        ),
    ] {
        // Waited for with a bound: without the lock, it would run on.
        let mut cmd = command(Some(config));
        cmd.arg("run").env("OPENAI_API_KEY", KEY);
        let mut second = Running::spawn(cmd);
        let (status, _) = second.wait_exit(Duration::from_secs(10));
        let stderr = second.seen.join("\n");
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "another batchwatch daemon (pid {pid}) holds {}",
                lock.display()
            )),
            "{stderr}"
        );
        assert_key_absent(&second.seen);
    }

    // The first one still does its work.
    let mut first = first;
    env.drop_file("still.jsonl", requests("s", 2, "gpt-4o-mini").as_bytes());
    let jobs = env
        .wait_finished(1, Duration::from_secs(60), &mut first)
        .await;
    assert_eq!(jobs[0].state, JobState::Completed);

    // Killed hard, it leaves no lock behind.
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(10));
    let again = env.spawn();
    env.stop(again);
}
