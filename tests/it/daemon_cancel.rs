//! Cancels: a job's deadline passing, or an operator's `batchwatch cancel`, is carried out by
//! the daemon, which follows the batch through cancelling to its end and keeps the partial
//! results.

use std::time::Duration;

use batchwatch::model::JobState;
use batchwatch::sim::{Faults, SimConfig};
use batchwatch::store::prelude::*;

use crate::support::daemon::{
    Env, assert_gave_up_on_results, quick_sim, requests, sim_that_never_serves_results, slow_sim,
};
use crate::support::in_process::InProcess;
use crate::support::notify::{notify_socket, wait_message};
use crate::support::sim::spawn_sim;
use crate::support::{read_json, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_past_its_deadline_is_cancelled_and_its_partial_results_kept() {
    let sim = spawn_sim(slow_sim(30.0)).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file("late.jsonl.toml", b"deadline = \"1500ms\"\n");
    let content = requests("late", 100, "gpt-4o-mini");
    env.drop_file("late.jsonl", content.as_bytes());
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    env.stop(daemon);

    let job = &jobs[0];
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.reason_code.as_deref(), Some("deadline"));
    assert_eq!(
        std::fs::read_to_string(env.dir("failed").join("late.jsonl")).unwrap(),
        content
    );
    assert!(
        env.dir("failed").join("late.jsonl.toml").exists(),
        "the sidecar travels with its file"
    );
    let reason = read_json(&env.dir("failed").join("late.jsonl.reason.json"));
    assert_eq!(reason["code"], "deadline");
    assert_eq!(reason["state"], "cancelled");
    assert!(
        reason["results_dir"]
            .as_str()
            .unwrap()
            .starts_with("results/")
    );
    // From failed/ to the results: the reason file names the manifest, and `show` finds the
    // job by where its file is now.
    let manifest_path = reason["manifest"].as_str().unwrap();
    assert_eq!(
        manifest_path,
        format!("{}/manifest.json", job.results_dir.as_deref().unwrap())
    );
    assert!(env.queue.join(manifest_path).is_file(), "{manifest_path}");
    let shown =
        crate::support::process::stdout_ok(Some(&env.config), &["show", "failed/late.jsonl"]);
    assert!(
        shown.contains(&format!("Job {} (late.jsonl)", job.id))
            && shown.contains(job.results_dir.as_deref().unwrap()),
        "{shown}"
    );
    let partial = env.output_lines(job);
    assert!(
        (1..100).contains(&partial),
        "partial results: {partial} of 100"
    );
    let manifest = read_json(
        &env.sandbox
            .queue_dir()
            .join(job.results_dir.as_deref().unwrap())
            .join("manifest.json"),
    );
    assert_eq!(manifest["state"], "cancelled");

    // Followed through cancelling to the end, as the simulator saw it and as the database says.
    let stats = sim.handle.stats().await;
    let sim_statuses: Vec<&str> = stats.batches[0]
        .history
        .iter()
        .map(|t| t.status.as_str())
        .collect();
    assert_eq!(
        &sim_statuses[sim_statuses.len() - 2..],
        ["cancelling", "cancelled"]
    );
    let store = env.store().await;
    let sub = &store.submissions_of(&job.id).await.unwrap()[0];
    assert_eq!(sub.status.as_ref().map(|s| s.as_str()), Some("cancelled"));
    assert!(sub.cancel_requested_at.is_some() && sub.cancel_sent_at.is_some());
    let events = store.job_events(&job.id).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("deadline") && e.message.contains("passed")),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e.state == JobState::Cancelling));
}

/// The first job whose batch runs, once there is one.
async fn running_job(env: &Env) -> batchwatch::store::jobs::Job {
    wait_until("the batch running", Duration::from_secs(30), async || {
        let running = env
            .jobs()
            .await
            .into_iter()
            .find(|j| j.state == JobState::Running);
        (running.is_some(), running)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_cancel_is_carried_out_by_the_running_daemon() {
    let sim = spawn_sim(slow_sim(30.0)).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file("ops.jsonl", requests("ops", 20, "gpt-4o-mini").as_bytes());
    let job = running_job(&env).await;
    let out = crate::support::process::stdout_ok(Some(&env.config), &["cancel", &job.id]);
    assert!(
        out.contains("cancel of") && out.contains("asked for"),
        "{out}"
    );
    // Asked again: nothing is sent twice. (The daemon may have carried the cancel out already.)
    let again = crate::support::process::run(Some(&env.config), &["cancel", &job.id]);
    let again = format!(
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        again.contains("already asked for (operator)") || again.contains("already cancelled"),
        "{again}"
    );
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    env.stop(daemon);
    assert_eq!(jobs[0].state, JobState::Cancelled);
    assert_eq!(jobs[0].reason_code.as_deref(), Some("operator"));
    let late = crate::support::process::stdout_ok(Some(&env.config), &["cancel", &job.id]);
    assert!(late.contains("is already cancelled"), "{late}");
    assert!(env.dir("failed").join("ops.jsonl.reason.json").exists());
}

/// With polls an hour apart and nothing else due, the loop's rounds only scan (nothing ended,
/// nothing came due); a cancel that another process commits meanwhile is still seen at the
/// next scan, not at the loop's next full look an hour or a minute later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_cancel_between_rare_polls_is_seen_at_the_next_scan() {
    let sim = spawn_sim(slow_sim(3600.0)).await;
    let env = Env::new(
        &sim.handle.base_url(),
        "[poll]\nmin_interval = \"1h\"\nmax_interval = \"1h\"\n\
         [reconcile]\nduplicate_check_interval = \"1h\"\n",
    );
    let (socket, status) = notify_socket(env.sandbox.path());
    let daemon = env.spawn_with(&[("NOTIFY_SOCKET", socket.to_str().unwrap())]);
    env.drop_file("rare.jsonl", requests("rare", 5, "gpt-4o-mini").as_bytes());
    let job = running_job(&env).await;
    // The loop settled into its quiet rounds: a status line, written after a round, counts
    // the job running and no task left in flight.
    wait_message(
        &status,
        |m| m.contains("STATUS=1 running") && m.contains("; 0 tasks"),
        Duration::from_secs(20),
    );
    crate::support::process::stdout_ok(Some(&env.config), &["cancel", &job.id]);
    // Well within the loop's safety net (a full look every minute). The batch is then
    // cancelling, next polled in an hour: the request sent is what shows the cancel seen.
    wait_until("the cancel sent", Duration::from_secs(20), async || {
        let stats = sim.handle.stats().await;
        let sent = stats
            .requests
            .get("POST /v1/batches/{batch_id}/cancel")
            .copied();
        (sent == Some(1), sent)
    })
    .await;
    env.stop(daemon);
}

/// A deadline that passes, or an operator's cancel, while downloads fail ends collecting at
/// once, whatever collect.give_up_after says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadline_or_an_operator_cancel_ends_downloads_that_keep_failing() {
    let sim = sim_that_never_serves_results().await;
    let env = Env::new(
        &sim.handle.base_url(),
        "[collect]\ngive_up_after = \"1h\"\n",
    );
    let mut daemon = env.spawn();
    env.drop_file("late.jsonl.toml", b"deadline = \"2s\"\n");
    env.drop_file("late.jsonl", requests("l", 4, "gpt-4o-mini").as_bytes());
    env.drop_file("asked.jsonl", requests("a", 4, "gpt-4o-mini").as_bytes());
    let asked = wait_until(
        "asked.jsonl collecting",
        Duration::from_secs(30),
        async || {
            let jobs = env.jobs().await;
            let job = jobs.iter().find(|j| j.file_name == "asked.jsonl").cloned();
            (
                job.as_ref()
                    .is_some_and(|j| j.state == JobState::Collecting),
                job,
            )
        },
    )
    .await
    .unwrap();
    crate::support::process::stdout_ok(Some(&env.config), &["cancel", &asked.id]);
    let jobs = env
        .wait_finished(2, Duration::from_secs(30), &mut daemon)
        .await;
    env.stop(daemon);
    let by_name = |n: &str| jobs.iter().find(|j| j.file_name == n).unwrap();
    assert_gave_up_on_results(
        &env,
        by_name("late.jsonl"),
        "late.jsonl",
        "the job was cancelled (deadline)",
    )
    .await;
    assert_gave_up_on_results(
        &env,
        by_name("asked.jsonl"),
        "asked.jsonl",
        "the job was cancelled (operator)",
    )
    .await;
}

/// A job's deadline passes on the daemon's clock: at that round, and not one before, its
/// batch is cancelled, followed through cancelling, and the job ends cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadline_passing_on_the_clock_cancels_the_batch_at_that_round() {
    let mut t = InProcess::start("", Faults::default()).await;
    t.env.drop_file("due.jsonl.toml", b"deadline = \"2h\"\n");
    t.env
        .drop_file("due.jsonl", requests("due", 3, "gpt-4o-mini").as_bytes());
    let job = t
        .until("the batch created", 20, |j| j.state == JobState::Running)
        .await;
    t.round(Duration::from_secs(2 * 3600 - 60)).await;
    let before = t.job().await.unwrap();
    assert_eq!(
        before.cancel_requested_at, None,
        "a minute before the deadline"
    );
    assert_eq!(before.state, JobState::Running);

    t.round(Duration::from_secs(61)).await;
    let after = t.job().await.unwrap();
    assert_eq!(after.cancel_reason.as_deref(), Some("deadline"));
    let remote = t.daemon.ctx.store.submissions_of(&job.id).await.unwrap()[0]
        .remote_id
        .clone()
        .unwrap();
    assert_eq!(
        t.sim.batch(&remote).await["status"],
        "cancelling",
        "the cancel was sent in that round"
    );
    t.sim.handle.advance(3600.0).await;
    let done = t
        .until("the job ended", 20, |j| j.state.is_terminal())
        .await;
    assert_eq!(done.state, JobState::Cancelled, "{:?}", done.reason);
    assert_eq!(done.reason_code.as_deref(), Some("deadline"));
}

/// A batch that vanishes from the service (404) while it is cancelling left no results: its job
/// ends cancelled, and its reason says the batch vanished and that there are no results,
/// never that partial results were kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_that_vanished_while_cancelling_ends_its_job_without_claiming_results() {
    let sim = spawn_sim(SimConfig {
        cancelling_secs: 30.0 * 300.0,
        ..slow_sim(30.0)
    })
    .await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file("gone.jsonl.toml", b"deadline = \"1s\"\n");
    env.drop_file("gone.jsonl", requests("gone", 20, "gpt-4o-mini").as_bytes());
    let remote = wait_until(
        "the batch cancelling",
        Duration::from_secs(30),
        async || {
            let job = env.jobs().await.pop().map(|j| j.id).unwrap_or_default();
            let sub = env.submissions(&job).await.pop();
            let cancelling = sub.filter(|s| {
                s.status
                    .as_ref()
                    .is_some_and(|st| st.as_str() == "cancelling")
            });
            (cancelling.is_some(), cancelling.and_then(|s| s.remote_id))
        },
    )
    .await
    .unwrap();
    assert!(sim.handle.vanish(&remote).await);
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    env.stop(daemon);
    let job = &jobs[0];
    assert_eq!(
        (job.state, job.reason_code.as_deref()),
        (JobState::Cancelled, Some("deadline"))
    );
    let reason = job.reason.as_deref().unwrap();
    assert!(
        reason.contains(&format!("batch {remote} vanished"))
            && reason.ends_with("no results to keep"),
        "{reason}"
    );
    let file = read_json(&env.dir("failed").join("gone.jsonl.reason.json"));
    assert_eq!(file["message"], reason);
    assert!(
        !env.queue
            .join(job.results_dir.as_deref().unwrap_or("results/none"))
            .join("output.jsonl")
            .exists(),
        "there are no results"
    );
}

/// A cancel asked for while the job's file waits to be checked (the daemon killed right after
/// recording the claim, the cancel asked for while it is down): once the file is found valid
/// the job goes straight to cancelling and ends cancelled, nothing uploaded. It was shown as
/// `queued` until the cancel step came round (found by the model-based store test).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_asked_for_before_the_file_is_checked_never_shows_the_job_queued() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn_with(&[(batchwatch::failpoint::ENV, "claim:after-record")]);
    env.drop_file(
        "early.jsonl",
        requests("early", 3, "gpt-4o-mini").as_bytes(),
    );
    let status = crate::support::daemon::wait_crash(&mut daemon, Duration::from_secs(30));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    drop(daemon);
    let job = env.jobs().await.remove(0);
    assert_eq!(job.state, JobState::Validating);
    crate::support::process::stdout_ok(Some(&env.config), &["cancel", &job.id]);

    let mut daemon = env.spawn();
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    env.stop(daemon);
    assert_eq!(jobs[0].state, JobState::Cancelled);
    let store = env.store().await;
    let events = store.job_events(&job.id).await.unwrap();
    assert!(
        events.iter().all(|e| e.state != JobState::Queued),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e.state == JobState::Cancelling),
        "{events:#?}"
    );
    let stats = sim.handle.stats().await;
    assert!(stats.batches.is_empty(), "{:?}", stats.batches);
    assert_eq!(
        stats.requests.get("POST /v1/files"),
        None,
        "{:?}",
        stats.requests
    );
}
