//! Local faults: a full disk under the database or under the queue, a results directory that
//! cannot be made. The daemon rides them out without spinning, and carries on by itself once
//! the cause is gone, with nothing lost and no batch twice.

use std::time::{Duration, Instant};

use batchwatch::model::JobState;

use crate::support::daemon::{Env, assert_each_completed_once, quick_sim, requests, slow_sim};
use crate::support::process::Running;
use crate::support::sim::spawn_sim;
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

/// The disk under the queue fills up while batches run: their results cannot be written, and
/// the jobs wait; once space is back, the results are downloaded and every file moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_disk_holds_results_until_space_returns_then_every_job_finishes() {
    let Some(fs) = Tmpfs::mount(3 * 1024) else {
        return;
    };
    let sim = spawn_sim(slow_sim(3.0)).await;
    let queue = fs.path().join("queue");
    let env = Env::placed(&sim.handle.base_url(), "", Some(&queue), None);
    let mut daemon = env.spawn();
    let mut files = Vec::new();
    for i in 0..3 {
        let content = requests(&format!("full-queue-{i}"), 50, "gpt-4o-mini");
        env.drop_file(&format!("q{i}.jsonl"), content.as_bytes());
        files.push((format!("q{i}.jsonl"), content));
    }
    wait_until("the batches running", Duration::from_secs(30), async || {
        let states: Vec<JobState> = env.jobs().await.iter().map(|j| j.state).collect();
        let running = states.iter().filter(|s| **s == JobState::Running).count();
        (running >= 3, states)
    })
    .await;
    let filler = fs.fill("filler");
    stays_up(&mut daemon, Duration::from_secs(6));
    let jobs = env.jobs().await;
    assert!(
        jobs.iter().all(|j| !j.state.is_terminal()),
        "no job can finish without room for its results: {:?}",
        jobs.iter()
            .map(|j| (j.state, &j.reason))
            .collect::<Vec<_>>()
    );
    std::fs::remove_file(&filler).unwrap();
    let jobs = env
        .wait_finished(3, Duration::from_secs(120), &mut daemon)
        .await;
    env.stop(daemon);
    let stats = sim.handle.stats().await;
    assert_each_completed_once(&env, &jobs, &stats, &files, "a full queue disk");
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
