//! The daemon in this process, on a manual clock, against a simulator whose clock is stopped:
//! each test moves both clocks itself and drives the rounds with `Daemon::step` (and
//! `Daemon::drain` for the tasks a round starts). Timers of minutes and hours pass at once,
//! and nothing waits for one.

use std::time::Duration;

use batchwatch::api::ApiKey;
use batchwatch::clock::{Clock, Timestamp};
use batchwatch::config::Settings;
use batchwatch::daemon::Daemon;
use batchwatch::model::{JobState, SubmissionState};
use batchwatch::sim::{FaultKind, Faults, ScriptedFault};
use batchwatch::store::jobs::Job;
use batchwatch::store::{batches, jobs};
use serde_json::json;

use crate::support::daemon::{Env, KEY, requests};
use crate::support::sim::{TestSim, spawn_sim, stopped_clock};

/// A daemon in this process and what it works against.
struct InProcess {
    env: Env,
    sim: TestSim,
    daemon: Daemon,
    clock: Clock,
}

impl InProcess {
    /// Starts a daemon with `extra` configuration over the fast test settings, its clock at
    /// 2026-01-01T00:00:00Z, against a simulator with `faults` and a stopped clock.
    async fn start(extra: &str, faults: Faults) -> InProcess {
        let sim = spawn_sim(batchwatch::sim::SimConfig {
            faults,
            ..stopped_clock()
        })
        .await;
        let env = Env::new(&sim.handle.base_url(), extra);
        let settings = Settings::load_from(Some(&env.config), []).unwrap();
        let clock = Clock::manual(Timestamp::from_second(crate::support::sim::START).unwrap());
        let daemon = Daemon::start(settings, ApiKey::new(KEY).unwrap(), clock.clone())
            .await
            .unwrap();
        InProcess {
            env,
            sim,
            daemon,
            clock,
        }
    }

    /// Moves the daemon's clock on by `by`, then does one round and waits for its tasks.
    async fn round(&mut self, by: Duration) {
        self.clock.advance(by);
        self.daemon.step().await;
        self.daemon.drain().await;
    }

    /// Rounds a second apart until `done` holds for the file's job, at most `rounds` of them.
    async fn until(&mut self, what: &str, rounds: usize, done: impl Fn(&Job) -> bool) -> Job {
        for _ in 0..rounds {
            if let Some(job) = self.job().await.filter(|j| done(j)) {
                return job;
            }
            self.round(Duration::from_secs(1)).await;
        }
        panic!(
            "{what}: not after {rounds} rounds; the job: {:#?}",
            self.job().await
        );
    }

    /// The one job of the test.
    async fn job(&self) -> Option<Job> {
        jobs::in_states(self.daemon.ctx.store.reader(), JobState::ALL)
            .await
            .unwrap()
            .into_iter()
            .next()
    }

    /// Batches the simulator created for the job.
    async fn batches_created(&self, job: &Job) -> u64 {
        let stats = self.sim.handle.stats().await;
        stats.batches_by_job.get(&job.id).copied().unwrap_or(0)
    }
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
    let remote = batches::for_job(t.daemon.ctx.store.reader(), &job.id)
        .await
        .unwrap()[0]
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

/// A create sent again after reconciliation found nothing is watched for a late duplicate:
/// the duplicate found on the service is cancelled at the next duplicate check
/// (reconcile.duplicate_check_interval on the daemon's clock), not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_duplicate_watch_cancels_a_late_duplicate_at_its_next_check() {
    let extra =
        "[api]\nrequest_timeout = \"30s\"\n[reconcile]\nduplicate_check_interval = \"10m\"\n";
    let mut t = InProcess::start(extra, Faults::default()).await;
    // The first create's connection drops before it is carried out: its outcome is unknown.
    t.sim
        .handle
        .push_fault(ScriptedFault::new(FaultKind::DropBefore).on("POST", "/v1/batches"))
        .await;
    t.env.drop_file(
        "twice.jsonl",
        requests("twice", 2, "gpt-4o-mini").as_bytes(),
    );
    t.until("the create's outcome unknown", 20, |j| {
        j.state == JobState::Submitting
    })
    .await;
    // After api.request_timeout the service is asked, shows nothing, and the create is re-sent.
    t.round(Duration::from_secs(31)).await;
    let job = t
        .until("the batch created again", 5, |j| {
            j.state == JobState::Running
        })
        .await;
    let ours = batches::for_job(t.daemon.ctx.store.reader(), &job.id)
        .await
        .unwrap()
        .remove(0);
    assert!(ours.resent_at.is_some(), "the create was sent again");
    // The first request lands late after all: a second batch for the same submission.
    let (status, late) = t
        .sim
        .post(
            "/batches",
            &json!({
                "input_file_id": ours.input_file_id.clone().unwrap(),
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {
                    "batchwatch_job_id": job.id,
                    "batchwatch_part": "0",
                    "batchwatch_attempt": "1",
                },
            }),
        )
        .await;
    assert!(status.is_success(), "{late}");
    let late_id = late["id"].as_str().unwrap().to_owned();

    t.round(Duration::from_secs(9 * 60)).await;
    assert_eq!(
        t.sim.batch(&late_id).await["status"],
        "validating",
        "left alone before the next duplicate check"
    );
    t.round(Duration::from_secs(61)).await;
    assert_eq!(
        t.sim.batch(&late_id).await["status"],
        "cancelling",
        "cancelled at the next duplicate check"
    );
    let events = jobs::events(t.daemon.ctx.store.reader(), &job.id)
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains(&late_id) && e.message.contains("cancelled it")),
        "{events:#?}"
    );
}
