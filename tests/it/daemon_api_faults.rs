//! The daemon when the API misbehaves: back-pressure (the enqueued-token limit), server errors
//! and rate limits, refused keys. Nothing is lost, no job gets two live batches, and the key
//! never shows. (Answers lost or late are in `daemon_reconcile`.)

use std::time::Duration;

use batchwatch::model::{JobState, SubmissionState};
use batchwatch::sim::{AuthFault, FaultKind, Faults, RetryAfter, ScriptedFault};
use batchwatch::store::jobs::Job;
use batchwatch::store::prelude::*;

use crate::metrics::{get, samples, spawn_observed};
use crate::support::daemon::{
    Env, assert_key_absent, assert_never_two_live_batches, quick_sim, requests,
};
use crate::support::in_process::InProcess;
use crate::support::sim::spawn_sim;
use crate::support::unused_port;
use crate::support::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_refused_for_the_token_limit_complete_once_it_clears_without_duplicates() {
    let mut config = quick_sim();
    // About one file's worth of tokens: the others are refused while one runs.
    config.faults.token_limit = Some(600);
    let sim = spawn_sim(config).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    for i in 0..5 {
        env.drop_file(
            &format!("t{i}.jsonl"),
            requests(&format!("t{i}"), 10, "gpt-4o-mini").as_bytes(),
        );
    }
    let finished = env
        .wait_finished(5, Duration::from_secs(60), &mut daemon)
        .await;
    let log = env.stop(daemon);
    assert!(
        finished.iter().all(|j| j.state == JobState::Completed),
        "{:?}",
        finished
            .iter()
            .map(|j| (j.state, &j.reason))
            .collect::<Vec<_>>()
    );

    let per_job = assert_never_two_live_batches(&sim).await;
    let total: u64 = per_job.values().sum();
    assert!(total > 5, "the token limit was never hit ({total} batches)");
    for job in &finished {
        assert_eq!(
            job.attempts as u64, per_job[&job.id],
            "the database counts every batch of {}",
            job.id
        );
    }
    let retried = finished.iter().find(|j| j.attempts > 1).unwrap();
    let store = env.store().await;
    let events = store.job_events(&retried.id).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.state == JobState::Queued && e.message.contains("token limit")),
        "{events:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("enqueued-token limit reached"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_errors_and_rate_limits_are_ridden_through() {
    let sim = spawn_sim(quick_sim()).await;
    // A 500 on create may or may not have created the batch: reconciled, then created once.
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::ServerError)
                .times(2)
                .on("POST", "/v1/batches"),
        )
        .await;
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::BadGateway)
                .times(2)
                .on("GET", "/v1/batches/{batch_id}"),
        )
        .await;
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::RateLimit {
                retry_after: RetryAfter::Millis(300),
            })
            .times(2)
            .on("GET", "/v1/batches/{batch_id}"),
        )
        .await;
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::BrokenDownload)
                .times(2)
                .on("GET", "/v1/files/{file_id}/content"),
        )
        .await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file("bumpy.jsonl", requests("b", 6, "gpt-4o-mini").as_bytes());
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    env.stop(daemon);
    assert_eq!(jobs[0].state, JobState::Completed, "{:?}", jobs[0].reason);
    let stats = sim.handle.stats().await;
    assert_eq!(stats.batches_by_job.get(&jobs[0].id), Some(&1));
    for kind in [
        "server_error",
        "bad_gateway",
        "rate_limit",
        "broken_download",
    ] {
        assert_eq!(
            stats.faults_injected.get(kind),
            Some(&2),
            "{kind}: {:?}",
            stats.faults_injected
        );
    }
    let out = std::fs::read_to_string(
        env.sandbox
            .queue_dir()
            .join(jobs[0].results_dir.as_deref().unwrap())
            .join("output.jsonl"),
    )
    .unwrap();
    assert_eq!(
        out.lines().count(),
        6,
        "the downloads were retried to completion"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_key_stops_all_work_loudly_and_the_daemon_resumes_when_it_works_again() {
    let sim = spawn_sim(quick_sim()).await;
    sim.handle
        .set_faults(Faults {
            auth: AuthFault::Unauthorized,
            ..Faults::default()
        })
        .await
        .unwrap();
    let env = Env::new(
        &sim.handle.base_url(),
        "[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let (mut daemon, addr) = spawn_observed(&env);
    env.drop_file("a.jsonl", requests("a", 3, "gpt-4o-mini").as_bytes());
    env.drop_file("b.jsonl", requests("b", 3, "gpt-4o-mini").as_bytes());
    daemon.wait_for_line("THE API REFUSED THE KEY", Duration::from_secs(20));
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "not ready while the key is refused: {body}");
    assert!(body.contains("key_refused"), "{body}");
    let waiting = wait_until("both files claimed", Duration::from_secs(20), async || {
        let jobs = env.jobs().await;
        (jobs.len() == 2, jobs)
    })
    .await;
    assert!(
        waiting.iter().all(|j| !j.state.is_terminal()),
        "queued work is kept: {:?}",
        waiting.iter().map(|j| j.state).collect::<Vec<_>>()
    );
    assert!(sim.handle.stats().await.batches_by_job.is_empty());

    sim.handle.set_faults(Faults::default()).await.unwrap();
    let jobs = env
        .wait_finished(2, Duration::from_secs(30), &mut daemon)
        .await;
    daemon.wait_for_line("accepts the key again", Duration::from_secs(5));
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let log = env.stop(daemon);
    assert!(jobs.iter().all(|j| j.state == JobState::Completed));
    let loud = log
        .iter()
        .filter(|l| l.contains("THE API REFUSED THE KEY"))
        .count();
    assert_eq!(loud, 1, "reported once, not once per request");
    assert!(
        log.iter()
            .any(|l| l.contains("ERROR") && l.contains("REFUSED"))
    );
}

/// A base URL without its version path (`http://host:port`, `/v1` left out): every route
/// answers 404 "Invalid URL". Before the fix, each of the 20 files failed for good
/// (`submission_refused`); now the gate closes, the log names `api.base_url` and the URL that
/// answers, `/readyz` says why it is not ready, every job stays queued, and once the operator
/// fixes the URL and reloads (SIGHUP, as `systemctl reload` sends), all 20 complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_base_url_without_v1_keeps_every_file_queued_until_a_reload_fixes_it() {
    let sim = spawn_sim(quick_sim()).await;
    let right = sim.handle.base_url();
    let wrong = right.strip_suffix("/v1").expect("the API root ends in /v1");
    // Probes an hour apart: only the reload can reopen the gate here.
    let env = Env::new(
        wrong,
        "[backoff]\nauth_retry = \"1h\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let (mut daemon, addr) = spawn_observed(&env);
    for i in 0..20 {
        env.drop_file(
            &format!("f{i:02}.jsonl"),
            requests(&format!("f{i}"), 2, "gpt-4o-mini").as_bytes(),
        );
    }
    let loud = daemon.wait_for_line("THE API HAS NO SUCH ROUTE", Duration::from_secs(20));
    assert!(
        loud.contains("ERROR") && loud.contains("api.base_url"),
        "{loud}"
    );
    let hint = format!("set api.base_url = \"{right}\"");
    let told = daemon.wait_for_line(&hint, Duration::from_secs(20));
    assert!(
        told.contains("ERROR"),
        "the log names the URL that answers: {told}"
    );
    let waiting = wait_until(
        "all 20 files claimed and validated",
        Duration::from_secs(30),
        async || {
            let jobs = env.jobs().await;
            let validated = jobs
                .iter()
                .filter(|j| matches!(j.state, JobState::Queued | JobState::Submitting))
                .count();
            (jobs.len() == 20 && validated == 20, jobs)
        },
    )
    .await;
    assert!(waiting.iter().all(|j| !j.state.is_terminal()));
    assert!(env.names("failed").is_empty(), "{:?}", env.names("failed"));
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("route_missing") && body.contains("api.base_url"),
        "{body}"
    );
    let (_, text) = get(addr, "/metrics").await;
    let scraped = samples(&text);
    assert_eq!(
        scraped.get("batchwatch_gate_closed{cause=\"route_missing\"}"),
        Some(&1.0),
        "{text}"
    );

    env.set_base_url(&right);
    daemon.signal(libc::SIGHUP);
    let jobs = env
        .wait_finished(20, Duration::from_secs(90), &mut daemon)
        .await;
    daemon.wait_for_line("routes answer again", Duration::from_secs(5));
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let log = env.stop(daemon);
    assert_completed_and_route_told_once(&jobs, &log);
    assert_key_absent(&log);
}

/// Every job completed, and the log said once that the route was missing: not once per
/// request or probe while the gate was closed.
fn assert_completed_and_route_told_once(jobs: &[Job], log: &[String]) {
    assert!(
        jobs.iter().all(|j| j.state == JobState::Completed),
        "{:?}",
        jobs.iter()
            .map(|j| (j.state, &j.reason))
            .collect::<Vec<_>>()
    );
    let told = log
        .iter()
        .filter(|l| l.contains("THE API HAS NO SUCH ROUTE"))
        .count();
    assert_eq!(told, 1, "said once while closed");
}

/// A service that starts answering 404 on its collection routes while files are being
/// submitted (a proxy in front of it moved, say): the upload's 404 closes the gate instead of
/// failing the job (`submission_refused`, before the fix), and the jobs run to the end once
/// the routes answer again, with no reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_that_turn_404_mid_submission_hold_the_jobs_until_they_answer_again() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    daemon.wait_for_line("start-up check passed", Duration::from_secs(20));
    for (method, path) in [
        ("POST", "/v1/files"),
        ("GET", "/v1/files"),
        ("GET", "/v1/batches"),
    ] {
        sim.handle
            .push_fault(
                ScriptedFault::new(FaultKind::Status {
                    status: 404.try_into().unwrap(),
                })
                .on(method, path)
                .times(100_000),
            )
            .await;
    }
    for i in 0..3 {
        env.drop_file(
            &format!("m{i}.jsonl"),
            requests(&format!("m{i}"), 2, "gpt-4o-mini").as_bytes(),
        );
    }
    let loud = daemon.wait_for_line("THE API HAS NO SUCH ROUTE", Duration::from_secs(20));
    assert!(loud.contains("upload file"), "closed by the upload: {loud}");
    wait_until(
        "all three files claimed",
        Duration::from_secs(20),
        async || {
            let jobs = env.jobs().await;
            (jobs.len() == 3, jobs)
        },
    )
    .await;
    let waiting = env.jobs().await;
    assert!(
        waiting.iter().all(|j| !j.state.is_terminal()),
        "{:?}",
        waiting
            .iter()
            .map(|j| (j.state, &j.reason))
            .collect::<Vec<_>>()
    );

    sim.handle.clear_scripted_faults().await;
    let jobs = env
        .wait_finished(3, Duration::from_secs(30), &mut daemon)
        .await;
    daemon.wait_for_line("routes answer again", Duration::from_secs(5));
    let log = env.stop(daemon);
    assert_completed_and_route_told_once(&jobs, &log);
}

/// Nothing answers at `api.base_url` (the service down, a port where nothing listens):
/// `/readyz` is not ready from the start-up check on, naming the unanswered requests, before
/// any file arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_is_not_ready_while_the_service_does_not_answer() {
    let silent = format!("http://127.0.0.1:{}/v1", unused_port());
    let env = Env::new(&silent, "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let (daemon, addr) = spawn_observed(&env);
    wait_until(
        "/readyz to say the API does not answer",
        Duration::from_secs(20),
        async || {
            let (status, body) = get(addr, "/readyz").await;
            (
                status == 503 && body.contains("the API has not answered"),
                body,
            )
        },
    )
    .await;
    env.stop(daemon);
}

/// A batch refused for the enqueued-token limit: the next attempt waits
/// backoff.token_limit_initial on the daemon's clock, and goes out in the first round after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_limit_back_off_holds_the_next_attempt_until_it_expires() {
    let extra = "[backoff]\ntoken_limit_initial = \"30m\"\ntoken_limit_max = \"2h\"\n";
    let mut t = InProcess::start(
        extra,
        Faults {
            token_limit: Some(1),
            ..Faults::default()
        },
    )
    .await;
    t.env.drop_file(
        "tight.jsonl",
        requests("tight", 3, "gpt-4o-mini").as_bytes(),
    );
    let job = t
        .until("the first batch created", 20, |j| {
            j.state == JobState::Running
        })
        .await;
    // The simulator validates the batch and refuses it for the token limit.
    t.sim.handle.advance(60.0).await;
    t.until("the refusal seen", 20, |j| {
        j.reason_code.as_deref() == Some("token_limit_exceeded")
    })
    .await;
    assert_eq!(t.batches_created(&job).await, 1);
    let next = t
        .daemon
        .ctx
        .store
        .submissions_of(&job.id)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.attempt == 2)
        .expect("a second attempt is queued");
    assert_eq!(next.state, SubmissionState::Queued);

    t.round(Duration::from_secs(29 * 60)).await;
    assert_eq!(
        t.batches_created(&job).await,
        1,
        "held while the back-off lasts"
    );
    t.round(Duration::from_secs(90)).await;
    assert_eq!(
        t.batches_created(&job).await,
        2,
        "the second attempt went out once the back-off expired"
    );
}
