//! The daemon when the API misbehaves: back-pressure (the enqueued-token limit), server errors
//! and rate limits, refused keys. Nothing is lost, no job gets two live batches, and the key
//! never shows. (Answers lost or late are in `daemon_reconcile`.)

use std::time::Duration;

use batchwatch::model::{JobState, SubmissionState};
use batchwatch::sim::{AuthFault, FaultKind, Faults, RetryAfter, ScriptedFault};
use batchwatch::store::{batches, jobs};

use crate::support::daemon::{Env, assert_never_two_live_batches, quick_sim, requests};
use crate::support::in_process::InProcess;
use crate::support::sim::spawn_sim;

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
    let events = jobs::events(store.reader(), &retried.id).await.unwrap();
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
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file("a.jsonl", requests("a", 3, "gpt-4o-mini").as_bytes());
    env.drop_file("b.jsonl", requests("b", 3, "gpt-4o-mini").as_bytes());
    daemon.wait_for_line("THE API REFUSED THE KEY", Duration::from_secs(20));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = env.jobs().await;
    assert_eq!(waiting.len(), 2);
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
    let next = batches::for_job(t.daemon.ctx.store.reader(), &job.id)
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
