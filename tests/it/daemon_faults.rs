//! The daemon when the API misbehaves: back-pressure, lost answers, server errors, refused
//! keys, broken downloads. Nothing is lost, no job gets two live batches, and the key never
//! shows.

use std::collections::BTreeMap;
use std::time::Duration;

use batchwatch::model::JobState;
use batchwatch::sim::{AuthFault, FaultKind, Faults, RetryAfter, ScriptedFault};
use batchwatch::store::jobs;

use crate::support::daemon::{Env, quick_sim, requests};
use crate::support::sim::spawn_sim;

const TERMINAL: [&str; 4] = ["completed", "failed", "expired", "cancelled"];

/// Checks from the simulator's own record that no job ever had two batches alive at once.
async fn assert_never_two_live_batches(
    sim: &crate::support::sim::TestSim,
) -> BTreeMap<String, u64> {
    let stats = sim.handle.stats().await;
    let mut by_job: BTreeMap<String, Vec<&batchwatch::sim::BatchStats>> = BTreeMap::new();
    for b in &stats.batches {
        by_job
            .entry(b.job_id.clone().expect("every batch carries its job id"))
            .or_default()
            .push(b);
    }
    for (job, mut list) in by_job {
        list.sort_by_key(|b| b.history.first().map(|t| t.real_at_ms));
        for pair in list.windows(2) {
            let (earlier, later) = (pair[0], pair[1]);
            let end = earlier.history.last().unwrap();
            assert!(
                TERMINAL.contains(&end.status.as_str()),
                "job {job}: {} still {} when {} was made",
                earlier.id,
                end.status,
                later.id
            );
            assert!(
                end.real_at_ms <= later.history[0].real_at_ms,
                "job {job}: {} and {} overlapped",
                earlier.id,
                later.id
            );
        }
    }
    stats.batches_by_job
}

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
async fn a_create_whose_answer_is_lost_is_reconciled_and_never_repeated() {
    let sim = spawn_sim(quick_sim()).await;
    sim.handle
        .push_fault(ScriptedFault::new(FaultKind::DropAfter).on("POST", "/v1/batches"))
        .await;
    sim.handle
        .push_fault(ScriptedFault::new(FaultKind::DropAfter).on("POST", "/v1/files"))
        .await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file(
        "lost-answer.jsonl",
        requests("la", 4, "gpt-4o-mini").as_bytes(),
    );
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    env.stop(daemon);
    assert_eq!(jobs[0].state, JobState::Completed);
    let stats = sim.handle.stats().await;
    assert_eq!(
        stats.faults_injected.get("drop_after"),
        Some(&2),
        "{:?}",
        stats.faults_injected
    );
    assert_eq!(
        stats.batches_by_job.get(&jobs[0].id),
        Some(&1),
        "no second batch"
    );
    assert_eq!(
        stats.requests.get("POST /v1/batches"),
        Some(&1),
        "the create was not sent again: {:?}",
        stats.requests
    );
    assert_eq!(
        stats.requests.get("POST /v1/files"),
        Some(&1),
        "the upload was not sent again: {:?}",
        stats.requests
    );
    assert!(
        stats
            .requests
            .get("GET /v1/batches")
            .is_some_and(|n| *n >= 1),
        "it listed batches to reconcile"
    );
    let store = env.store().await;
    let events = jobs::events(store.reader(), &jobs[0].id).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("outcome unknown") && e.message.contains("reconciling")),
        "{events:?}"
    );
}

/// How late the held-up create below is carried out.
const LATE: Duration = Duration::from_millis(1000);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_carried_out_after_the_reconcile_listing_leaves_no_second_live_batch() {
    let sim = spawn_sim(quick_sim()).await;
    // The create gets no answer and is carried out a second later, as a request held up in
    // front of the API (or queued in a frozen server) would be: a listing at once finds
    // nothing.
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::CarriedOutLate {
                ms: LATE.as_millis() as u64,
            })
            .on("POST", "/v1/batches"),
        )
        .await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file("late.jsonl", requests("late", 3, "gpt-4o-mini").as_bytes());
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    // The held-up create was sent before the job finished, so it has landed by now; in a
    // correct run nothing else marks the moment.
    tokio::time::sleep(LATE).await;
    env.stop(daemon);
    assert_eq!(jobs[0].state, JobState::Completed);
    let by_job = assert_never_two_live_batches(&sim).await;
    assert_eq!(by_job.get(&jobs[0].id), Some(&1), "{by_job:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_that_lands_after_reconciliation_is_found_and_its_duplicate_cancelled() {
    // Batches run about four seconds, so the duplicate is still live when it is found.
    let sim = spawn_sim(batchwatch::sim::SimConfig {
        in_progress_secs: 1_200.0,
        request_secs: 0.0,
        ..quick_sim()
    })
    .await;
    // Carried out three seconds after the daemon gave up on it (after one second): too late for
    // the reconciliation, which can only show that no batch exists yet.
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::CarriedOutLate { ms: 3_000 }).on("POST", "/v1/batches"),
        )
        .await;
    let env = Env::new(&sim.handle.base_url(), "[api]\nrequest_timeout = \"1s\"\n");
    let mut daemon = env.spawn();
    env.drop_file(
        "very-late.jsonl",
        requests("vl", 3, "gpt-4o-mini").as_bytes(),
    );
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    assert_eq!(jobs[0].state, JobState::Completed);
    let job_id = jobs[0].id.clone();

    // The late batch appears, and is cancelled as the duplicate it is.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let duplicate = loop {
        let stats = sim.handle.stats().await;
        let mine: Vec<_> = stats
            .batches
            .iter()
            .filter(|b| b.job_id.as_deref() == Some(job_id.as_str()))
            .cloned()
            .collect();
        if mine.len() == 2 && mine.iter().any(|b| b.status == "cancelled") {
            break mine.into_iter().find(|b| b.status == "cancelled").unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no cancelled duplicate: {mine:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = env.stop(daemon);
    assert!(
        log.iter().any(|l| l.contains("duplicated batch")),
        "the duplicate is reported"
    );
    let store = env.store().await;
    let events = jobs::events(store.reader(), &job_id).await.unwrap();
    assert!(
        events.iter().any(|e| e
            .message
            .contains(&format!("batch {} duplicated", duplicate.id))),
        "{events:?}"
    );
    // The job's own batch is the one that completed, and its results are whole.
    let subs = batchwatch::store::batches::for_job(store.reader(), &job_id)
        .await
        .unwrap();
    assert_eq!(subs.len(), 1);
    assert_ne!(subs[0].remote_id.as_deref(), Some(duplicate.id.as_str()));
    assert!(subs[0].resent_at.is_some());
}
