//! A file's way in: a writer that pauses longer than `queue.settle_time` is waited for (by its
//! read lease, or by inotify's record of writes where no lease can be taken); a file that
//! changes after its claim is validated again; one that changes after it was sent is named at
//! its job's end.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use batchwatch::model::JobState;
use batchwatch::store::jobs::Job;
use batchwatch::store::prelude::*;

use crate::support::daemon::{Env, quick_sim, requests, slow_sim};
use crate::support::sim::spawn_sim;
use crate::support::{read_json, wait_until};

/// Writes `content` to `path` through one descriptor kept open throughout, three lines at a
/// time with a pause of `pause` after each three, then closes it: a writer slower than
/// `queue.settle_time`. `created` runs on the path once the file exists, before any line.
fn slow_writer(
    path: PathBuf,
    content: String,
    pause: Duration,
    created: impl FnOnce(&Path) + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(&path).unwrap();
        created(&path);
        let lines: Vec<&str> = content.split_inclusive('\n').collect();
        for three in lines.chunks(3) {
            file.write_all(three.concat().as_bytes()).unwrap();
            std::thread::sleep(pause);
        }
    })
}

/// The job of the file `name`.
fn job_of<'a>(jobs: &'a [Job], name: &str) -> &'a Job {
    jobs.iter()
        .find(|j| j.file_name == name)
        .unwrap_or_else(|| panic!("no job for {name}: {jobs:?}"))
}

/// Checks a job that ran its whole file once: completed, every request in one batch, the
/// file in done/ as written, an answer for each request, and no second validation.
async fn assert_whole_file_ran_once(env: &Env, job: &Job, content: &str) {
    let requests = content.lines().count();
    assert_eq!(job.state, JobState::Completed, "{:?}", job.reason);
    assert_eq!(job.request_count, Some(requests as i64));
    assert_eq!(
        std::fs::read_to_string(env.dir("done").join(&job.file_name)).unwrap(),
        content
    );
    assert_eq!(env.output_lines(job), requests);
    let store = env.store().await;
    let subs = store.submissions_of(&job.id).await.unwrap();
    assert_eq!(subs.len(), 1, "one submission, of the whole file");
    assert_eq!(subs[0].request_total, Some(requests as i64));
    let events = store.job_events(&job.id).await.unwrap();
    assert!(
        !events
            .iter()
            .any(|e| e.message.contains("the file changed")),
        "claimed only once it was whole: {events:?}"
    );
}

/// The writer: `incoming/slow.jsonl` held open, 12 lines, a pause of 1.2 s after every
/// third, with `queue.settle_time = "300ms"`. The file holds still four times long enough,
/// but its writer still has it open: it is claimed only once closed, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_that_pauses_longer_than_settle_time_has_its_file_claimed_whole_once_closed() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "[queue]\nsettle_time = \"300ms\"\n");
    let mut daemon = env.spawn();
    let content = requests("slow", 12, "gpt-4o-mini");
    let writer = slow_writer(
        env.dir("incoming").join("slow.jsonl"),
        content.clone(),
        Duration::from_millis(1200),
        |_| {},
    );
    let jobs = env
        .wait_finished(1, Duration::from_secs(60), &mut daemon)
        .await;
    writer.join().unwrap();
    let log = env.stop(daemon);
    assert_whole_file_ran_once(&env, &jobs[0], &content).await;
    assert!(
        log.iter()
            .any(|l| l.contains("slow.jsonl") && l.contains("it is claimed once closed")),
        "the wait is logged"
    );
}

/// Where the daemon can take no lease (the file is another user's and the daemon lacks
/// CAP_LEASE, as under the unit's `PrivateUsers=yes`), inotify's record of writes decides: the
/// paused writer is waited for all the same. A file that was there before the daemon started
/// has no record: it is claimed once it held still, and the log says why it was not checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_lease_inotify_s_record_of_writes_decides_and_an_unrecorded_file_is_claimed_saying_so()
 {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "skipped: needs root, to give files another owner and to start the daemon without CAP_LEASE"
        );
        return;
    }
    let nobody = |path: &Path| std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "[queue]\nsettle_time = \"300ms\"\n");
    std::fs::create_dir_all(env.dir("incoming")).unwrap();
    let early = requests("early", 2, "gpt-4o-mini");
    std::fs::write(env.dir("incoming").join("early.jsonl"), &early).unwrap();
    nobody(&env.dir("incoming").join("early.jsonl"));
    let mut daemon = env.spawn_without_cap_lease();
    let content = requests("slow", 12, "gpt-4o-mini");
    let writer = slow_writer(
        env.dir("incoming").join("slow.jsonl"),
        content.clone(),
        Duration::from_millis(1200),
        nobody,
    );
    let jobs = env
        .wait_finished(2, Duration::from_secs(60), &mut daemon)
        .await;
    writer.join().unwrap();
    let log = env.stop(daemon);
    assert_whole_file_ran_once(&env, job_of(&jobs, "slow.jsonl"), &content).await;
    assert_whole_file_ran_once(&env, job_of(&jobs, "early.jsonl"), &early).await;
    let unchecked: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("claimed without knowing whether a process still writes to it"))
        .collect();
    assert_eq!(unchecked.len(), 1, "{unchecked:?}");
    assert!(
        unchecked[0].contains("early.jsonl")
            && unchecked[0].contains("no read lease")
            && unchecked[0].contains("inotify has no record of it"),
        "{}",
        unchecked[0]
    );
}

/// A writer that closes its file after the first part and reopens it to append the rest
/// (`>>` from a shell, say): the first part is claimed and found valid. When the rest arrives
/// before anything was sent (here the first upload is refused for two seconds), the job goes
/// back to validation, says so in its events, and the whole file is submitted: never a
/// truncated copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_that_grows_after_its_claim_is_validated_again_and_submitted_whole() {
    use batchwatch::sim::{FaultKind, RetryAfter, ScriptedFault};
    let sim = spawn_sim(quick_sim()).await;
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::RateLimit {
                retry_after: RetryAfter::Seconds(2),
            })
            .on("POST", "/v1/files")
            .times(1),
        )
        .await;
    let env = Env::new(&sim.handle.base_url(), "[queue]\nsettle_time = \"300ms\"\n");
    let mut daemon = env.spawn();
    let content = requests("slow", 8, "gpt-4o-mini");
    let cut = content.match_indices('\n').nth(1).unwrap().0 + 1;
    let path = env.dir("incoming").join("slow.jsonl");
    std::fs::write(&path, &content.as_bytes()[..cut]).unwrap();
    // The first half is claimed and found valid (2 requests); its upload is refused for now.
    daemon.wait_for_line("valid; queued", Duration::from_secs(30));
    daemon.wait_for_line("rate limited (429)", Duration::from_secs(10));
    let store = env.store().await;
    let claimed = wait_until("the claimed file", Duration::from_secs(10), async || {
        let jobs = store.jobs_in_states(JobState::ALL).await.unwrap();
        (!jobs.is_empty(), jobs)
    })
    .await;
    let mut appender = std::fs::OpenOptions::new()
        .append(true)
        .open(env.queue.join(&claimed[0].path))
        .unwrap();
    appender.write_all(&content.as_bytes()[cut..]).unwrap();
    drop(appender);

    let jobs = env
        .wait_finished(1, Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
    let job = &jobs[0];
    assert_eq!(job.state, JobState::Completed, "{:?}", job.reason);
    assert_eq!(job.request_count, Some(8));
    assert_eq!(job.size_bytes, content.len() as i64);
    assert_eq!(
        job.sha256.as_deref(),
        Some(
            batchwatch::batchfile::hex(&<sha2::Sha256 as sha2::Digest>::digest(content.as_bytes()))
                .as_str()
        )
    );
    assert_eq!(
        std::fs::read_to_string(env.dir("done").join("slow.jsonl")).unwrap(),
        content
    );
    let subs = store.submissions_of(&job.id).await.unwrap();
    assert_eq!(subs.len(), 1, "one submission, of the whole file");
    assert_eq!(subs[0].request_total, Some(8));
    assert_eq!(subs[0].part_end, content.len() as i64);
    let events = store.job_events(&job.id).await.unwrap();
    assert!(
        events.iter().any(|e| e
            .message
            .starts_with("the file changed after it was claimed")),
        "{events:?}"
    );
    assert_eq!(env.output_lines(job), 8);
    let stats = sim.handle.stats().await;
    assert_eq!(stats.batches_by_job.get(&job.id), Some(&1));
}

/// Files changed in processing/ while their batches run (one grown, one rewritten in place to
/// the same size): each job's end compares the file with what was sent. Neither is called
/// completed: each fails with `file_changed`, naming the change in its reason, its events and
/// its reason file, and keeps the results of what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_changed_after_it_was_sent_fails_its_job_naming_the_change() {
    let sim = spawn_sim(slow_sim(5.0)).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    let grown = requests("grown", 3, "gpt-4o-mini");
    let rewritten = requests("rewritten", 3, "gpt-4o-mini");
    env.drop_file("grown.jsonl", grown.as_bytes());
    env.drop_file("rewritten.jsonl", rewritten.as_bytes());
    let running = wait_until("both batches run", Duration::from_secs(30), async || {
        let jobs = env.jobs().await;
        let n = jobs.iter().filter(|j| j.state == JobState::Running).count();
        (n == 2, jobs)
    })
    .await;

    // Someone writes to the files in processing/ all the same.
    let path = |name: &str| env.queue.join(&job_of(&running, name).path);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path("grown.jsonl"))
        .unwrap();
    file.write_all(requests("extra", 1, "gpt-4o-mini").as_bytes())
        .unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path("rewritten.jsonl"))
        .unwrap();
    let at = rewritten.find("question").unwrap() as u64;
    file.write_all_at(b"Q", at).unwrap();
    assert_eq!(file.metadata().unwrap().len(), rewritten.len() as u64);
    drop(file);

    let jobs = env
        .wait_finished(2, Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
    let store = env.store().await;
    for (name, change) in [
        (
            "grown.jsonl",
            format!(
                "{} bytes then, {} now",
                grown.len(),
                grown.len() + requests("extra", 1, "gpt-4o-mini").len()
            ),
        ),
        (
            "rewritten.jsonl",
            format!("{} bytes, but not the same bytes", rewritten.len()),
        ),
    ] {
        let job = job_of(&jobs, name);
        assert_eq!(job.state, JobState::Failed, "{name}: {:?}", job.reason);
        assert_eq!(job.reason_code.as_deref(), Some("file_changed"), "{name}");
        let reason = job.reason.as_deref().unwrap();
        assert!(
            reason.starts_with(&format!(
                "the file changed after it was submitted ({change})"
            )),
            "{name}: {reason}"
        );
        let events = store.job_events(&job.id).await.unwrap();
        assert!(
            events.iter().any(|e| e.message.contains(reason)),
            "{name}: {events:?}"
        );
        let written = read_json(&env.dir("failed").join(format!("{name}.reason.json")));
        assert_eq!(written["code"], "file_changed", "{name}");
        assert_eq!(written["message"], reason, "{name}");
        assert!(env.dir("failed").join(name).exists(), "{name}");
        assert_eq!(
            env.output_lines(job),
            3,
            "{name}: the results of what was sent"
        );
    }
}
