//! What must hold after several daemons on one database and one queue tree were killed,
//! paused and cut off while the service failed now and then: the checks both fleet chaos tests
//! (daemons as processes, and in containers) make once every file went through.

use std::collections::BTreeSet;
use std::time::Duration;

use batchwatch::model::JobState;
use batchwatch::sim::Stats;
use batchwatch::store::jobs::Job;
use batchwatch::store::prelude::*;

use super::daemon::Env;

/// What the chaos left behind, as [`assert_nothing_lost_nothing_paid_twice`] counted it.
#[derive(Debug, Clone)]
pub struct Aftermath {
    pub jobs: usize,
    pub completed: usize,
    /// Jobs that changed hands (each takeover is one of the job's events).
    pub takeovers: usize,
    /// Batches a stale instance's create made after the job's new holder made its own:
    /// cancelled by the leader's duplicate watch.
    pub duplicates: usize,
    /// The longest a deadline that passed waited for its cancel to be asked.
    pub late: Duration,
    /// The job that waited that long: its file, deadline, and events, for a failure message.
    pub latest: String,
}

impl std::fmt::Display for Aftermath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} jobs ({} completed), {} takeovers, {} late duplicates cancelled, deadlines enforced at most {:?} after they passed",
            self.jobs, self.completed, self.takeovers, self.duplicates, self.late
        )
    }
}

/// Checks the world once every file in `files` (their names) went through, by the database
/// of `env`, its queue tree, the finished `jobs`, and `stats` from the simulator that ran them:
///
/// - every file is in exactly one of done/ and failed/, and nothing is left in incoming/ or
///   processing/; one job per file;
/// - on the service, each part of a job has one batch; any other batch of the job was made by
///   a create its sender's lease no longer covered, was cancelled, and the job's events name it;
///   every batch belongs to a job;
/// - every batch's history ends with its terminal status, the one the service shows.
///
/// Nothing here makes a second attempt of a part (no token limit, no expiry), so a second
/// batch of a part is a fault. Returns the counts (and how late deadlines were enforced, which
/// the caller bounds).
pub async fn assert_nothing_lost_nothing_paid_twice(
    env: &Env,
    jobs: &[Job],
    stats: &Stats,
    files: &[String],
) -> Aftermath {
    let files_in = |sub: &str| -> BTreeSet<String> {
        let names = env.names(sub).into_iter();
        names.filter(|n| n.ends_with(".jsonl")).collect()
    };
    let (done, failed) = (files_in("done"), files_in("failed"));
    assert!(done.is_disjoint(&failed), "{done:?} {failed:?}");
    let ended: BTreeSet<String> = done.union(&failed).cloned().collect();
    let dropped: BTreeSet<String> = files.iter().cloned().collect();
    assert_eq!(ended, dropped, "every file in done/ or failed/");
    for sub in ["incoming", "processing"] {
        assert!(
            env.names(sub).is_empty(),
            "{sub}/ holds {:?}",
            env.names(sub)
        );
    }
    assert_eq!(jobs.len(), files.len(), "one job per file");
    let ids: BTreeSet<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    for batch in &stats.batches {
        assert!(
            batch.job_id.as_deref().is_some_and(|id| ids.contains(id)),
            "a batch of no job: {batch:?}"
        );
    }

    let store = env.store().await;
    let (mut duplicates, mut takeovers, mut late) = (0, 0, Duration::ZERO);
    let mut latest = String::new();
    for job in jobs {
        let name = &job.file_name;
        let subs = store.submissions_of(&job.id).await.unwrap();
        let ours: BTreeSet<&str> = subs.iter().filter_map(|s| s.remote_id.as_deref()).collect();
        let events = store.job_events(&job.id).await.unwrap();
        takeovers += events
            .iter()
            .filter(|e| e.message.starts_with("taken over by"))
            .count();
        for batch in stats
            .batches
            .iter()
            .filter(|b| b.job_id.as_deref() == Some(&job.id))
        {
            if ours.contains(batch.id.as_str()) {
                continue;
            }
            duplicates += 1;
            assert_eq!(batch.status, "cancelled", "{name}: {batch:?}");
            assert!(
                events.iter().any(|e| e
                    .message
                    .contains(&format!("batch {} duplicated", batch.id))),
                "{name}: {events:?}"
            );
        }
        let mut parts = BTreeSet::new();
        for sub in subs.iter().filter(|s| s.remote_id.is_some()) {
            assert!(
                parts.insert(sub.part),
                "{name}: two batches of part {}",
                sub.part
            );
            let history = store.history(sub.id).await.unwrap();
            let last = history.last().expect("a history");
            assert!(last.status.is_terminal(), "{name}: {history:?}");
            assert_eq!(Some(&last.status), sub.status.as_ref(), "{name}");
            let remote = sub.remote_id.as_deref();
            let on_service = stats.batches.iter().find(|b| Some(b.id.as_str()) == remote);
            let on_service = on_service.unwrap_or_else(|| panic!("{name}: {remote:?} unknown"));
            assert_eq!(
                on_service.status,
                last.status.as_str(),
                "{name}: the service's last status is the one recorded"
            );
        }
        if let Some(asked) = &job.cancel_requested_at
            && job.cancel_reason.as_deref() == Some("deadline")
        {
            let (deadline, asked) = (
                batchwatch::clock::parse(&job.deadline_at).unwrap(),
                batchwatch::clock::parse(asked).unwrap(),
            );
            let waited = batchwatch::clock::between(deadline, asked);
            if waited > late {
                late = waited;
                let events: Vec<String> = events
                    .iter()
                    .map(|e| format!("{} {}: {}", e.at, e.state, e.message))
                    .collect();
                latest = format!(
                    "{name}, deadline {}, events:\n{}",
                    job.deadline_at,
                    events.join("\n")
                );
            }
        }
    }
    store.close().await;
    Aftermath {
        jobs: jobs.len(),
        completed: jobs
            .iter()
            .filter(|j| j.state == JobState::Completed)
            .count(),
        takeovers,
        duplicates,
        late,
        latest,
    }
}

/// How many of the daemons' log `lines` say that a lease was lost.
pub fn leases_lost(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|l| l.contains("the lease is lost"))
        .count()
}
