//! The daemon from file to results: many files, split files, vanished, failed or expired
//! batches, results that cannot be downloaded, and what the database says about it all.

use std::time::Duration;

use batchwatch::model::JobState;
use batchwatch::store::prelude::*;

use crate::support::daemon::{
    Backend, Env, assert_gave_up_on_results, quick_sim, requests, sim_that_never_serves_results,
    slow_sim,
};
use crate::support::sim::spawn_sim;
use crate::support::{read_json, wait_until};

/// Whether `part` appears in `whole` in order (not necessarily next to each other).
fn is_subsequence(part: &[String], whole: &[String]) -> bool {
    let mut it = whole.iter();
    part.iter().all(|p| it.any(|w| w == p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_files_complete_with_one_batch_each_and_a_truthful_history() {
    fifty_files(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_files_complete_with_one_batch_each_and_a_truthful_history_on_postgres() {
    fifty_files(Backend::Postgres).await;
}

async fn fifty_files(backend: Backend) {
    let sim = spawn_sim(quick_sim()).await;
    let Some(env) = Env::on(backend, &sim.handle.base_url(), "").await else {
        return;
    };
    let mut daemon = env.spawn();
    let mut originals = Vec::new();
    for i in 0..50 {
        let name = format!("file-{i:02}.jsonl");
        let content = requests(&format!("f{i}"), 1 + i % 7, "gpt-4o-mini");
        env.drop_file(&name, content.as_bytes());
        originals.push((name, content));
    }
    let jobs = env
        .wait_finished(50, Duration::from_secs(120), &mut daemon)
        .await;
    env.stop(daemon);

    // Every file in done/, byte for byte; nothing anywhere else.
    assert!(
        jobs.iter().all(|j| j.state == JobState::Completed),
        "{:?}",
        jobs.iter()
            .map(|j| (&j.file_name, j.state, &j.reason))
            .collect::<Vec<_>>()
    );
    for (name, content) in &originals {
        assert_eq!(
            std::fs::read_to_string(env.dir("done").join(name)).unwrap(),
            *content,
            "{name}"
        );
    }
    assert!(
        env.names("incoming").is_empty()
            && env.names("processing").is_empty()
            && env.names("failed").is_empty()
    );

    // Results: every request answered once, and a manifest.
    for job in &jobs {
        let dir = env
            .sandbox
            .queue_dir()
            .join(job.results_dir.as_deref().expect("a results dir"));
        let mut ids = crate::support::daemon::custom_ids(&dir.join("output.jsonl"));
        ids.sort();
        let expected = job.request_count.unwrap() as usize;
        assert_eq!(ids.len(), expected, "{}", job.file_name);
        ids.dedup();
        assert_eq!(ids.len(), expected, "no request answered twice");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["state"], "completed");
        assert_eq!(manifest["output_file"], "output.jsonl");
        assert_eq!(manifest["request_counts"]["completed"], expected);
    }

    // Exactly one batch per job, and the database's history is what the simulator did.
    let stats = sim.handle.stats().await;
    assert_eq!(stats.batches_by_job.len(), 50);
    assert!(
        stats.batches_by_job.values().all(|n| *n == 1),
        "{:?}",
        stats.batches_by_job
    );
    let store = env.store().await;
    let mut saw_in_progress = 0;
    for job in &jobs {
        assert_eq!(job.attempts, 1);
        let subs = store.submissions_of(&job.id).await.unwrap();
        assert_eq!(subs.len(), 1);
        let remote = subs[0].remote_id.clone().unwrap();
        let sim_batch = stats
            .batches
            .iter()
            .find(|b| b.id == remote)
            .expect("the simulator knows the batch");
        assert_eq!(sim_batch.job_id.as_deref(), Some(job.id.as_str()));
        let sim_statuses: Vec<String> =
            sim_batch.history.iter().map(|t| t.status.clone()).collect();
        let rows = store.history(subs[0].id).await.unwrap();
        let mut db_statuses: Vec<String> = rows.iter().map(|h| h.status.to_string()).collect();
        db_statuses.dedup();
        assert!(
            is_subsequence(&db_statuses, &sim_statuses),
            "db {db_statuses:?} vs sim {sim_statuses:?}"
        );
        assert_eq!(db_statuses.last(), sim_statuses.last());
        assert!(
            rows.windows(2)
                .all(|w| w[0].observed_at <= w[1].observed_at)
        );
        saw_in_progress += usize::from(db_statuses.iter().any(|s| s == "in_progress"));
    }
    // How many intermediate states polling catches depends on the machine's load; that it
    // catches them at all shows the history is observed, not made up at the end.
    assert!(saw_in_progress > 0, "polling never saw a batch in progress");
    env.assert_key_nowhere_on_disk();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_file_is_split_into_batches_and_its_results_merged() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(
        &sim.handle.base_url(),
        "[batch]\nmax_requests = 10\nsplit_oversized = true\n",
    );
    let mut daemon = env.spawn();
    env.drop_file("big.jsonl", requests("big", 25, "gpt-4o-mini").as_bytes());
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    env.stop(daemon);
    let job = &jobs[0];
    assert_eq!(job.state, JobState::Completed, "{:?}", job.reason);
    assert_eq!(env.output_lines(job), 25);
    let dir = env
        .sandbox
        .queue_dir()
        .join(job.results_dir.as_deref().unwrap());
    let manifest = read_json(&dir.join("manifest.json"));
    assert_eq!(manifest["batches"].as_array().unwrap().len(), 3);
    assert_eq!(manifest["request_counts"]["total"], 25);
    // Only the merged files remain.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["manifest.json", "output.jsonl"]);
    let stats = sim.handle.stats().await;
    assert_eq!(stats.batches_by_job.get(&job.id), Some(&3));
    let store = env.store().await;
    let parts: Vec<i64> = store
        .submissions_of(&job.id)
        .await
        .unwrap()
        .iter()
        .map(|s| s.part_requests)
        .collect();
    assert_eq!(parts, [10, 10, 5]);
    // The finished file, named as it now lies in done/, leads to its job and its results.
    let shown = crate::support::process::stdout_ok(Some(&env.config), &["show", "done/big.jsonl"]);
    assert!(
        shown.starts_with("1 job of done/big.jsonl")
            && shown.contains(&format!("Job {} (big.jsonl)", job.id))
            && shown.contains(job.results_dir.as_deref().unwrap()),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vanished_batch_is_lost_never_running() {
    let sim = spawn_sim(slow_sim(30.0)).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file("gone.jsonl", requests("gone", 5, "gpt-4o-mini").as_bytes());
    let remote = wait_until("the batch created", Duration::from_secs(30), async || {
        let job = env.jobs().await.pop().map(|j| j.id).unwrap_or_default();
        let remote = env.submissions(&job).await.pop().and_then(|s| s.remote_id);
        (remote.is_some(), remote)
    })
    .await
    .unwrap();
    assert!(sim.handle.vanish(&remote).await);
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    env.stop(daemon);
    assert_eq!(jobs[0].state, JobState::Failed);
    assert_eq!(jobs[0].reason_code.as_deref(), Some("batch_lost"));
    let store = env.store().await;
    let sub = &store.submissions_of(&jobs[0].id).await.unwrap()[0];
    assert_eq!(sub.state, batchwatch::model::SubmissionState::Lost);
    assert_eq!(
        read_json(&env.dir("failed").join("gone.jsonl.reason.json"))["code"],
        "batch_lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_the_service_fails_or_expires_ends_its_job_with_the_reason() {
    // The service's limit is lower than batchwatch's, so it fails what batchwatch accepted; and
    // its completion window is shorter than the work, so the other batch expires.
    let mut config = slow_sim(30.0);
    config.limits.max_requests = 5;
    config.completion_window_secs = 600.0;
    let sim = spawn_sim(config).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file(
        "too-many.jsonl",
        requests("tm", 8, "gpt-4o-mini").as_bytes(),
    );
    env.drop_file("slow.jsonl", requests("slow", 3, "gpt-4o-mini").as_bytes());
    let jobs = env
        .wait_finished(2, Duration::from_secs(30), &mut daemon)
        .await;
    env.stop(daemon);
    let by_name = |n: &str| jobs.iter().find(|j| j.file_name == n).unwrap();
    let failed = by_name("too-many.jsonl");
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.reason_code.as_deref(), Some("too_many_requests"));
    let reason = failed.reason.as_deref().unwrap();
    assert!(reason.contains("failed"), "{reason}");
    // The service's limit is below batch.max_requests: the reason says what to set.
    for key in ["batch.max_requests", "batch.split_oversized = true"] {
        assert!(reason.contains(key), "{reason}");
    }
    let expired = by_name("slow.jsonl");
    assert_eq!(expired.state, JobState::Expired, "{:?}", expired.reason);
    assert_eq!(
        read_json(&env.dir("failed").join("slow.jsonl.reason.json"))["code"],
        "expired"
    );
}

/// A batch that completed but whose output file is gone from the service (expired, deleted)
/// when the daemon comes to download it: the job is not called completed. It fails with
/// `results_missing`, keeps the error file that could be downloaded, and says which is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completed_batch_whose_output_is_gone_fails_its_job_and_keeps_what_remains() {
    use batchwatch::sim::{ErrorStatus, FaultKind, Faults, ScriptedFault};
    let sim = spawn_sim(batchwatch::sim::SimConfig {
        faults: Faults {
            request_failure_rate: 0.5,
            ..Faults::default()
        },
        ..quick_sim()
    })
    .await;
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::Status {
                status: ErrorStatus::try_from(404).unwrap(),
            })
            .on("GET", "/v1/files/{file_id}/content"),
        )
        .await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file("gone.jsonl", requests("g", 8, "gpt-4o-mini").as_bytes());
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    env.stop(daemon);
    let job = &jobs[0];
    let store = env.store().await;
    let sub = &store.submissions_of(&job.id).await.unwrap()[0];
    let output_id = sub.output_id.clone().expect("the batch had an output file");
    assert!(sub.error_output_id.is_some(), "and an error file");
    assert_eq!(sub.status, Some(batchwatch::model::BatchStatus::Completed));

    assert_eq!(job.state, JobState::Failed, "{:?}", job.reason);
    assert_eq!(job.reason_code.as_deref(), Some("results_missing"));
    let reason = job.reason.as_deref().unwrap();
    assert!(
        reason.contains(&format!("the output file {output_id} no longer exists")),
        "{reason}"
    );
    assert_eq!(
        read_json(&env.dir("failed").join("gone.jsonl.reason.json"))["code"],
        "results_missing"
    );
    let results = env.dir("results").join(&job.id);
    let manifest = read_json(&results.join("manifest.json"));
    assert_eq!(manifest["state"], "failed");
    assert_eq!(manifest["output_file"], serde_json::Value::Null);
    assert_eq!(manifest["error_file"], "errors.jsonl");
    assert!(
        !std::fs::read(results.join("errors.jsonl"))
            .unwrap()
            .is_empty()
    );
}

/// Downloads that fail for good end after collect.give_up_after instead of leaving the job
/// collecting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn downloads_that_never_succeed_end_the_job_after_collect_give_up_after() {
    let sim = sim_that_never_serves_results().await;
    let env = Env::new(
        &sim.handle.base_url(),
        "[collect]\ngive_up_after = \"1s\"\n",
    );
    let mut daemon = env.spawn();
    env.drop_file("never.jsonl", requests("n", 4, "gpt-4o-mini").as_bytes());
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    env.stop(daemon);
    assert_gave_up_on_results(
        &env,
        &jobs[0],
        "never.jsonl",
        "collect.give_up_after (1s) passed",
    )
    .await;
}

/// The mode of a file, permission bits only.
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Results, the manifest and reason files are for the service's group to read: they are
/// created 0666 under the process's umask, like the queue's directories, not 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_and_reasons_follow_the_umask() {
    for umask in [0o022, 0o027] {
        let sim = spawn_sim(batchwatch::sim::SimConfig {
            faults: batchwatch::sim::Faults {
                request_failure_rate: 0.5,
                ..batchwatch::sim::Faults::default()
            },
            ..quick_sim()
        })
        .await;
        let env = Env::new(&sim.handle.base_url(), "");
        let mut daemon = env.spawn_with_umask(umask);
        env.drop_file("good.jsonl", requests("m", 8, "gpt-4o-mini").as_bytes());
        env.drop_file("bad.jsonl", b"not json\n");
        let jobs = env
            .wait_finished(2, Duration::from_secs(30), &mut daemon)
            .await;
        env.stop(daemon);
        let want = 0o666 & !umask;
        let good = jobs.iter().find(|j| j.file_name == "good.jsonl").unwrap();
        let results = env
            .sandbox
            .queue_dir()
            .join(good.results_dir.as_deref().unwrap());
        for name in ["output.jsonl", "errors.jsonl", "manifest.json"] {
            assert_eq!(
                mode_of(&results.join(name)),
                want,
                "{name} under umask {umask:04o}"
            );
        }
        assert_eq!(
            mode_of(&env.dir("failed").join("bad.jsonl.reason.json")),
            want,
            "the reason file under umask {umask:04o}"
        );
    }
}

/// A batch that completes with every request failed is not a completed job: it fails with
/// `all_requests_failed`, its file goes to failed/ with that reason, and its errors are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_whose_every_request_failed_fails_its_job_and_keeps_the_errors() {
    let sim = spawn_sim(batchwatch::sim::SimConfig {
        faults: batchwatch::sim::Faults {
            request_failure_rate: 1.0,
            ..batchwatch::sim::Faults::default()
        },
        ..quick_sim()
    })
    .await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file("doomed.jsonl", requests("d", 5, "gpt-4o-mini").as_bytes());
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    env.stop(daemon);
    let job = &jobs[0];
    assert_eq!(job.state, JobState::Failed, "{:?}", job.reason);
    assert_eq!(job.reason_code.as_deref(), Some("all_requests_failed"));
    assert_eq!(
        job.reason.as_deref(),
        Some("every request failed (5 of 5); their errors are kept (errors.jsonl)")
    );
    assert_eq!(
        env.names("failed"),
        ["doomed.jsonl", "doomed.jsonl.reason.json"]
    );
    assert_eq!(
        read_json(&env.dir("failed").join("doomed.jsonl.reason.json"))["code"],
        "all_requests_failed"
    );
    let results = env.dir("results").join(&job.id);
    let manifest = read_json(&results.join("manifest.json"));
    assert_eq!(manifest["state"], "failed");
    assert_eq!(manifest["request_counts"]["failed"], 5);
    let errors = std::fs::read_to_string(results.join("errors.jsonl")).unwrap();
    assert_eq!(errors.lines().count(), 5);
}
