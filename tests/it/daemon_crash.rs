//! kill -9 at each point where the daemon has done one thing and not yet the next, then a
//! restart: no duplicate batch, no lost file, every job finishes.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use batchwatch::model::JobState;

use crate::support::daemon::{
    Backend, Env, assert_each_completed_once, assert_key_absent, quick_sim, requests, wait_crash,
};
use crate::support::sim::spawn_sim;

async fn crash_then_restart(point: &str, backend: Backend) {
    let sim = spawn_sim(quick_sim()).await;
    let Some(env) = Env::on(backend, &sim.handle.base_url(), "").await else {
        return;
    };
    let mut daemon = env.spawn_with(&[(batchwatch::failpoint::ENV, point)]);
    let mut contents = Vec::new();
    for i in 0..3 {
        let content = requests(&format!("{point}-{i}"), 3 + i, "gpt-4o-mini");
        env.drop_file(&format!("c{i}.jsonl"), content.as_bytes());
        contents.push(content);
    }
    let status = wait_crash(&mut daemon, Duration::from_secs(30));
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the daemon died at {point}"
    );
    assert!(
        daemon
            .seen
            .iter()
            .any(|l| l.contains(&format!("crash point {point} reached")))
    );
    assert_key_absent(&daemon.seen);
    drop(daemon);

    let mut daemon = env.spawn();
    let jobs = env
        .wait_finished(3, Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
    let files: Vec<(String, String)> = contents
        .into_iter()
        .enumerate()
        .map(|(i, content)| (format!("c{i}.jsonl"), content))
        .collect();
    let stats = sim.handle.stats().await;
    assert_each_completed_once(&env, &jobs, &stats, &files, point);
    env.assert_key_nowhere_on_disk();
}

macro_rules! crash_tests {
    ($($name:ident => $point:literal),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                crash_then_restart($point, Backend::Sqlite).await;
            }
        )+

        /// The same crash points with the database in PostgreSQL.
        mod on_postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    crash_then_restart($point, Backend::Postgres).await;
                }
            )+
        }
    };
}

crash_tests! {
    killed_after_claiming_a_file_before_recording_it => "claim:after-rename",
    killed_after_recording_a_claim_before_checking_the_file => "claim:after-record",
    killed_after_recording_the_upload_intent => "submit:after-upload-intent",
    killed_after_the_upload_before_recording_it => "submit:after-upload",
    killed_after_recording_the_create_intent => "submit:after-create-intent",
    killed_after_the_create_before_recording_it => "submit:after-create",
    killed_after_downloading_results_before_recording_it => "collect:after-download",
    killed_after_finishing_a_job_before_moving_its_file => "finish:after-state",
    killed_just_before_moving_a_finished_file => "settle:before-move",
}

/// A download killed midway leaves its temporary file; the next start removes it (and only
/// such files, and only in a job's results directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_download_killed_midway_leaves_no_temporary_file_after_a_restart() {
    use batchwatch::sim::{FaultKind, ScriptedFault};
    let sim = spawn_sim(quick_sim()).await;
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::Latency { ms: 60_000 })
                .on("GET", "/v1/files/{file_id}/content")
                .times(1),
        )
        .await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    let content = requests("dl", 4, "gpt-4o-mini");
    env.drop_file("dl.jsonl", content.as_bytes());
    let results = env.dir("results");
    let temp_of = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name().is_some_and(|n| {
                            n.to_string_lossy().starts_with(".batchwatch-download-")
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let job_dir =
        crate::support::wait_until("a download started", Duration::from_secs(30), async || {
            let dirs: Vec<_> = std::fs::read_dir(&results)
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            let dir = dirs.into_iter().find(|d| !temp_of(d).is_empty());
            (dir.is_some(), dir)
        })
        .await
        .unwrap();
    daemon.signal(libc::SIGKILL);
    wait_crash(&mut daemon, Duration::from_secs(10));
    let leftover = temp_of(&job_dir);
    assert_eq!(leftover.len(), 1, "the killed download left its file");
    // Not batchwatch's to remove: another name in the job's directory, and a look-alike
    // outside any job's directory.
    std::fs::write(job_dir.join("notes.txt"), "mine").unwrap();
    std::fs::write(results.join(".batchwatch-download-not-in-a-job"), "").unwrap();

    let mut daemon = env.spawn();
    let jobs = env
        .wait_finished(1, Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
    assert_eq!(jobs[0].state, JobState::Completed, "{:?}", jobs[0].reason);
    assert!(!leftover[0].exists(), "the leftover is removed");
    assert!(temp_of(&job_dir).is_empty(), "{:?}", temp_of(&job_dir));
    assert!(job_dir.join("output.jsonl").exists());
    assert_eq!(
        std::fs::read_to_string(job_dir.join("notes.txt")).unwrap(),
        "mine"
    );
    assert!(results.join(".batchwatch-download-not-in-a-job").exists());
}
