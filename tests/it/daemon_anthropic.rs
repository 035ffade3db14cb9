//! Jobs on Anthropic's Message Batches (`api.flavor = "anthropic"`) against the simulator:
//! created from their lines with no upload, one create outstanding at a time, a lost create
//! found again by the batches of its size the database does not know, tracked, cancelled at
//! the deadline with their partial results kept, and their results sorted into output and
//! errors.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use batchwatch::model::JobState;
use batchwatch::sim::{ErrorStatus, FaultKind, RetryAfter, ScriptedFault};
use batchwatch::store::prelude::*;

use crate::support::daemon::{Env, assert_key_absent, quick_sim, slow_sim, wait_crash};
use crate::support::read_json;
use crate::support::sim::spawn_sim;

/// The configuration of a daemon on Anthropic (the test key comes in OPENAI_API_KEY).
const ANTHROPIC: &str = "[api]\nflavor = \"anthropic\"\nkey_env = \"OPENAI_API_KEY\"\n";

/// A JSONL file of `n` Message Batch requests, ids prefixed with `tag`.
fn message_requests(tag: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"custom_id\":\"{tag}-{i}\",\"params\":{{\"model\":\"claude-haiku-4-5\",\"max_tokens\":64,\"messages\":[{{\"role\":\"user\",\"content\":\"question {i} of {tag}\"}}]}}}}\n"
            )
        })
        .collect()
}

/// The ids of the Message Batches the simulator holds.
async fn message_batches(sim: &crate::support::sim::TestSim) -> BTreeSet<String> {
    let stats = sim.handle.stats().await;
    stats
        .batches
        .iter()
        .map(|b| b.id.clone())
        .filter(|id| id.starts_with("msgbatch_"))
        .collect()
}

/// Panics if a start found more than one create under way: a create from lines is armed
/// before each send, one at a time, even when the one before it was refused (a 429).
fn assert_one_create_outstanding(lines: &[String]) {
    for line in lines
        .iter()
        .filter(|l| l.contains("were under way at the last stop"))
    {
        assert!(line.contains("submissions=1"), "{line}");
    }
}

/// The next Message Batch create is carried out and its answer lost (the connection closed).
async fn drop_next_create_answer(sim: &crate::support::sim::TestSim) {
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::DropAfter)
                .on("POST", "/v1/messages/batches")
                .times(1),
        )
        .await;
}

/// Six files of the same size under a 429, a 529 and a dropped create, and three kill -9s
/// during submission (after a create intent, after a create before it was recorded, after a
/// create's answer was lost): every file ends once, one batch per job on the service (the lost
/// ones adopted, never sent twice), each request answered once, histories complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anthropic_jobs_end_once_under_faults_and_three_kill_9s_during_submission() {
    let sim = spawn_sim(quick_sim()).await;
    let pricing =
        "[pricing.\"claude-haiku-4-5\"]\ninput = 1.0\noutput = 5.0\nbatch_discount = 0.5\n";
    let env = Env::new(&sim.handle.base_url(), &format!("{ANTHROPIC}{pricing}"));
    let files: Vec<(String, String)> = (0..6)
        .map(|i| (format!("m{i}.jsonl"), message_requests(&format!("m{i}"), 4)))
        .collect();
    for (name, content) in &files {
        env.drop_file(name, content.as_bytes());
    }
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::RateLimit {
                retry_after: RetryAfter::Seconds(1),
            })
            .on("POST", "/v1/messages/batches")
            .times(1),
        )
        .await;
    for (i, point) in [
        "submit:after-create-intent",
        "submit:after-create",
        "submit:after-unknown-outcome",
    ]
    .into_iter()
    .enumerate()
    {
        if point == "submit:after-unknown-outcome" {
            drop_next_create_answer(&sim).await;
        }
        let mut daemon = env.spawn_with(&[(batchwatch::failpoint::ENV, point)]);
        let status = wait_crash(&mut daemon, Duration::from_secs(60));
        assert_eq!(status.signal(), Some(libc::SIGKILL), "kill {i} at {point}");
        assert_key_absent(&daemon.seen);
        assert_one_create_outstanding(&daemon.seen);
    }
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::Status {
                status: ErrorStatus::try_from(529).unwrap(),
            })
            .on("GET", "/v1/messages/batches")
            .times(2),
        )
        .await;
    let mut daemon = env.spawn();
    let jobs = env
        .wait_finished(files.len(), Duration::from_secs(120), &mut daemon)
        .await;
    let seen = env.stop(daemon);
    assert_key_absent(&seen);
    assert_one_create_outstanding(&seen);
    assert!(
        seen.iter()
            .any(|l| l.contains("an interrupted create had made a batch; following it")),
        "a lost create was found again"
    );

    let store = env.store().await;
    let status = crate::support::process::stdout_ok(Some(&env.config), &["status"]);
    for job in &jobs {
        let line = status.lines().find(|l| l.starts_with(&job.id)).unwrap();
        assert!(
            line.contains(" anthropic "),
            "the provider it ran on: {line}"
        );
    }
    let mut recorded = BTreeSet::new();
    for job in &jobs {
        let name = &job.file_name;
        assert_eq!(job.state, JobState::Completed, "{name}: {:?}", job.reason);
        assert_eq!(job.attempts, 1, "{name}: one attempt");
        assert_eq!(job.endpoint.as_deref(), Some("/v1/messages"), "{name}");
        assert_eq!(job.provider.as_deref(), Some("anthropic"), "{name}");
        let subs = store.submissions_of(&job.id).await.unwrap();
        assert_eq!(subs.len(), 1, "{name}: one submission");
        let sub = &subs[0];
        assert_eq!(sub.upload_id, None, "{name}: nothing uploaded");
        let remote = sub.remote_id.clone().expect("a batch");
        assert!(
            recorded.insert(remote.clone()),
            "{name}: a batch of its own"
        );
        let history = store.history(sub.id).await.unwrap();
        let statuses: Vec<&str> = history.iter().map(|h| h.status.as_str()).collect();
        // A batch found again after its create's answer was lost may have ended meanwhile.
        assert!(
            statuses.len() == 1 || statuses[0] == "in_progress",
            "{name}: {statuses:?}"
        );
        assert_eq!(statuses.last(), Some(&"completed"), "{name}: {statuses:?}");
        let last: serde_json::Value = serde_json::from_str(&history.last().unwrap().raw).unwrap();
        assert_eq!(last["processing_status"], "ended", "in Anthropic's terms");
        assert_eq!(last["request_counts"]["processing"], 0);
        // Every request answered once, across output and errors, each line as the service
        // wrote it.
        let dir = env.queue.join(job.results_dir.as_deref().unwrap());
        let mut answered = BTreeSet::new();
        for kind in ["output", "errors"] {
            let text =
                std::fs::read_to_string(dir.join(format!("{kind}.jsonl"))).unwrap_or_default();
            for line in text.lines() {
                let line: serde_json::Value = serde_json::from_str(line).unwrap();
                let kind_seen = line["result"]["type"].as_str().unwrap();
                assert_eq!(kind_seen == "succeeded", kind == "output", "{name}: {line}");
                assert!(answered.insert(line["custom_id"].as_str().unwrap().to_owned()));
            }
        }
        assert_eq!(answered.len(), 4, "{name}: each request answered once");
        let manifest = read_json(&dir.join("manifest.json"));
        assert_eq!(manifest["batches"][0]["batch_id"], remote.as_str());
        // Usage counted from the succeeded messages, priced by [pricing].
        let usage = store.usage_of(&job.id).await.unwrap();
        let booked = &usage[0];
        let (input, output) = (booked.input_tokens.unwrap(), booked.output_tokens.unwrap());
        assert!(input > 0 && output > 0, "{name}: {booked:?}");
        let expected = (input as f64 * 1.0 + output as f64 * 5.0) * 0.5 / 1e6;
        let cost = booked.cost_usd.unwrap();
        assert!(
            (cost - expected).abs() < 1e-12,
            "{name}: {cost} against {expected}"
        );
        assert_eq!(manifest["usage"]["input_tokens"], input, "{name}");
        assert!(env.dir("done").join(name).is_file(), "{name} is in done/");
    }
    assert_eq!(
        message_batches(&sim).await,
        recorded,
        "one batch per job on the service, and no other"
    );
    let stats = sim.handle.stats().await;
    for fault in ["rate_limit", "drop_after"] {
        assert!(
            stats.faults_injected.get(fault).is_some_and(|&n| n >= 1),
            "{fault}: {:?}",
            stats.faults_injected
        );
    }
    assert_eq!(
        stats.requests.get("POST /v1/files").copied().unwrap_or(0),
        0,
        "nothing uploaded"
    );
    env.assert_key_nowhere_on_disk();
}

/// A passed deadline cancels the Message Batch; the job ends cancelled and keeps what had
/// finished, with the requests the cancel stopped in errors.jsonl as `canceled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_passed_deadline_cancels_an_anthropic_batch_and_keeps_its_partial_results() {
    let sim = spawn_sim(slow_sim(30.0)).await;
    let env = Env::new(&sim.handle.base_url(), ANTHROPIC);
    let mut daemon = env.spawn();
    env.drop_file("late.jsonl.toml", b"deadline = \"1500ms\"\n");
    env.drop_file("late.jsonl", message_requests("late", 100).as_bytes());
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    let job = &jobs[0];
    // Its results on disk, the ended batch is deleted from the service (cleanup.remote_files).
    let store = env.store().await;
    let deleted =
        crate::support::wait_until("the batch deleted", Duration::from_secs(30), async || {
            let rows = store.deletions_of(&job.id).await.unwrap();
            (rows.iter().any(|d| d.done_at.is_some()), rows)
        })
        .await;
    env.stop(daemon);
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0].state, "deleted", "{deleted:?}");
    assert_eq!(job.state, JobState::Cancelled, "{:?}", job.reason);
    assert_eq!(job.reason_code.as_deref(), Some("deadline"));
    let dir = env.queue.join(job.results_dir.as_deref().unwrap());
    let lines = |kind: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join(format!("{kind}.jsonl")))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (output, errors) = (lines("output"), lines("errors"));
    assert!(
        (1..100).contains(&output.len()),
        "partial results: {} of 100",
        output.len()
    );
    assert_eq!(
        output.len() + errors.len(),
        100,
        "every request accounted for"
    );
    assert!(
        errors.iter().any(|l| l["result"]["type"] == "canceled"),
        "the requests the cancel stopped"
    );
    let sub = &store.submissions_of(&job.id).await.unwrap()[0];
    assert_eq!(sub.status.as_ref().map(|s| s.as_str()), Some("cancelled"));
    assert!(sub.cancel_sent_at.is_some());
    assert_eq!(
        deleted[0].file_id,
        sub.remote_id.clone().unwrap(),
        "the batch itself"
    );
    let stats = sim.handle.stats().await;
    assert_eq!(
        stats
            .requests
            .get("POST /v1/messages/batches/{batch_id}/cancel")
            .copied(),
        Some(1),
        "{:?}",
        stats.requests
    );
    assert_eq!(
        stats
            .requests
            .get("DELETE /v1/messages/batches/{batch_id}")
            .copied(),
        Some(1),
        "{:?}",
        stats.requests
    );
}

/// Lines that break Anthropic's rules are refused with their own code and line before
/// anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_anthropic_lines_are_rejected_with_their_code_and_line_before_anything_is_sent() {
    let sim = spawn_sim(quick_sim()).await;
    // Files over the request limit are rejected, not split.
    let limit = "[batch]\nmax_requests = 3\nsplit_oversized = false\n";
    let env = Env::new(&sim.handle.base_url(), &format!("{ANTHROPIC}{limit}"));
    let mut daemon = env.spawn();
    let good = message_requests("ok", 2);
    let cases = [
        (
            "bad_id.jsonl",
            format!("{good}{}", message_requests("bad id", 1)),
            "invalid_custom_id",
            3,
        ),
        (
            "no_params.jsonl",
            format!("{good}{{\"custom_id\":\"x\"}}\n"),
            "missing_params",
            3,
        ),
        (
            "dup.jsonl",
            format!("{good}{}", message_requests("ok", 1)),
            "duplicate_custom_id",
            3,
        ),
        (
            "many.jsonl",
            message_requests("many", 4),
            "too_many_requests",
            4,
        ),
        (
            "openai.jsonl",
            crate::support::daemon::requests("o", 1, "gpt-4o-mini"),
            "unknown_field",
            1,
        ),
    ];
    for (name, content, _, _) in &cases {
        env.drop_file(name, content.as_bytes());
    }
    let jobs = env
        .wait_finished(cases.len(), Duration::from_secs(30), &mut daemon)
        .await;
    env.stop(daemon);
    for (name, _, code, line) in cases {
        let job = jobs.iter().find(|j| j.file_name == name).unwrap();
        assert_eq!(job.state, JobState::Rejected, "{name}");
        assert_eq!(
            job.reason_code.as_deref(),
            Some(code),
            "{name}: {:?}",
            job.reason
        );
        let reason = read_json(&env.dir("failed").join(format!("{name}.reason.json")));
        assert_eq!(reason["line"], line, "{name}: {reason}");
    }
    let stats = sim.handle.stats().await;
    assert!(
        !stats.requests.keys().any(|r| r.starts_with("POST")),
        "nothing sent: {:?}",
        stats.requests
    );
}

/// A create whose answer is lost while another batch of the same size, not batchwatch's, was
/// made in the same hour: which one is the job's cannot be told, so none is taken, the create
/// is never sent again, `status` says why, and an operator's cancel ends the job without
/// touching either batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_create_beside_another_batch_of_its_size_holds_the_job_and_is_never_sent_again() {
    let sim = spawn_sim(slow_sim(600.0)).await;
    let env = Env::new(&sim.handle.base_url(), ANTHROPIC);
    // Another tool's batch of four requests in the same workspace.
    let theirs = env.sandbox.path().join("theirs.jsonl");
    let content = message_requests("theirs", 4);
    std::fs::write(&theirs, &content).unwrap();
    let other = crate::support::client::api_client_with(&sim.handle.base_url(), |s| {
        s.api.flavor = batchwatch::config::Flavor::Anthropic;
    });
    other
        .create_batch_from_lines(&theirs, 0..content.len() as u64)
        .await
        .unwrap();
    drop_next_create_answer(&sim).await;
    let daemon = env.spawn();
    env.drop_file("ours.jsonl", message_requests("ours", 4).as_bytes());
    let creates = async || {
        let stats = sim.handle.stats().await;
        stats
            .requests
            .get("POST /v1/messages/batches")
            .copied()
            .unwrap_or(0)
    };
    let job = crate::support::wait_until("the job held", Duration::from_secs(30), async || {
        let jobs = env.jobs().await;
        let held = jobs.into_iter().find(|j| j.state == JobState::Submitting);
        let Some(job) = held else {
            return (false, None);
        };
        let subs = env.submissions(&job.id).await;
        let is_held = subs[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("held:"));
        (is_held, Some(job))
    })
    .await
    .unwrap();
    let sub = &env.submissions(&job.id).await[0];
    let why = sub.last_error.clone().unwrap();
    assert!(why.contains("2 batches it could have made"), "{why}");
    assert_eq!(sub.remote_id, None, "none taken");
    let status = crate::support::process::stdout_ok(Some(&env.config), &["status"]);
    assert!(
        status.contains("held: a create may have been sent"),
        "{status}"
    );
    // Held, and nothing of it under way: another file's batch is created and runs meanwhile.
    env.drop_file("next.jsonl", message_requests("next", 3).as_bytes());
    crate::support::wait_until(
        "the next file's batch",
        Duration::from_secs(30),
        async || {
            let n = creates().await;
            (n == 3, n)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(creates().await, 3, "the held create never sent again");
    let events = env.store().await.job_events(&job.id).await.unwrap();
    assert!(
        events.iter().any(|e| e.message.starts_with("held:")),
        "{events:?}"
    );
    crate::support::process::stdout_ok(Some(&env.config), &["cancel", &job.id]);
    let jobs = crate::support::wait_until(
        "the held job cancelled",
        Duration::from_secs(30),
        async || {
            let jobs = env.jobs().await;
            let done = jobs
                .iter()
                .any(|j| j.id == job.id && j.state == JobState::Cancelled);
            (done, jobs)
        },
    )
    .await;
    env.stop(daemon);
    let next = jobs.iter().find(|j| j.file_name == "next.jsonl").unwrap();
    assert_eq!(next.state, JobState::Running, "{:?}", next.reason);
    assert_eq!(creates().await, 3, "the held create never sent again");
    let sub = &env.submissions(&job.id).await[0];
    assert!(
        sub.last_error
            .as_deref()
            .is_some_and(|e| e.contains("none provably its own")),
        "{:?}",
        sub.last_error
    );
    let stats = sim.handle.stats().await;
    assert!(
        !stats.requests.keys().any(|r| r.ends_with("/cancel")),
        "neither batch cancelled: {:?}",
        stats.requests
    );
    assert_eq!(message_batches(&sim).await.len(), 3);
}

/// A backup from before the claim, restored while the jobs' batches run: the database knows
/// none of them. The two parts of a size no other part has take up their batches (one batch
/// each, none sent again); the two of the same size cannot be told apart, so they are held,
/// never sent again, until an operator cancels them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_backup_adopts_the_batches_of_a_size_of_their_own_and_holds_the_rest() {
    use crate::daemon_restore::{backup, restore};
    let sim = spawn_sim(slow_sim(8.0)).await;
    let env = Env::new(&sim.handle.base_url(), ANTHROPIC);
    let daemon = env.spawn();
    let before = backup(&env, "before-claim.db").await;
    let sizes = [
        ("five.jsonl", 5),
        ("six.jsonl", 6),
        ("twin-a.jsonl", 7),
        ("twin-b.jsonl", 7),
    ];
    for (name, n) in sizes {
        env.drop_file(
            name,
            message_requests(name.trim_end_matches(".jsonl"), n).as_bytes(),
        );
    }
    crate::support::wait_until("four batches made", Duration::from_secs(30), async || {
        let n = message_batches(&sim).await.len();
        (n == 4, n)
    })
    .await;
    env.stop(daemon);
    restore(&env, &before);
    let mut daemon = env.spawn();
    let held = crate::support::wait_until("two held", Duration::from_secs(30), async || {
        let mut held = Vec::new();
        for job in env.jobs().await {
            let subs = env.submissions(&job.id).await;
            if subs.iter().any(|s| {
                s.last_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("held:"))
            }) {
                held.push(job);
            }
        }
        (held.len() == 2, held)
    })
    .await;
    let mut names: Vec<&str> = held.iter().map(|j| j.file_name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["twin-a.jsonl", "twin-b.jsonl"]);
    for job in &held {
        crate::support::process::stdout_ok(Some(&env.config), &["cancel", &job.id]);
    }
    let jobs = env
        .wait_finished(4, Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
    let state = |name: &str| jobs.iter().find(|j| j.file_name == name).unwrap().state;
    assert_eq!(state("five.jsonl"), JobState::Completed);
    assert_eq!(state("six.jsonl"), JobState::Completed);
    assert_eq!(state("twin-a.jsonl"), JobState::Cancelled);
    assert_eq!(state("twin-b.jsonl"), JobState::Cancelled);
    assert_eq!(message_batches(&sim).await.len(), 4, "nothing sent again");
    let store = env.store().await;
    for name in ["five.jsonl", "six.jsonl"] {
        let job = jobs.iter().find(|j| j.file_name == name).unwrap();
        let subs = store.submissions_of(&job.id).await.unwrap();
        assert_eq!(subs.len(), 1, "{name}");
        assert!(subs[0].remote_id.is_some(), "{name}: its batch taken up");
        assert_eq!(
            env.output_lines(job) + errors_lines(&env, job),
            job.request_count.unwrap() as usize,
            "{name}"
        );
    }
}

/// The lines of a finished job's errors.jsonl.
fn errors_lines(env: &Env, job: &batchwatch::store::jobs::Job) -> usize {
    let dir = env.queue.join(job.results_dir.as_deref().unwrap());
    std::fs::read_to_string(dir.join("errors.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}
