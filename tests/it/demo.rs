//! `batchwatch demo`, README's first command: the whole lifecycle with no key and no configuration.

use std::time::Duration;

use batchwatch::model::JobState;
use batchwatch::store::prelude::*;
use batchwatch::store::{Access, Store};

use crate::support::Sandbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_every_kind_of_job_to_its_end_without_a_key_or_a_configuration() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path().join("demo");
    let mut cmd = crate::support::process::command(None);
    cmd.args(["demo", "--dir"])
        .arg(&dir)
        .env_remove("OPENAI_API_KEY");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Jobs: 1 rejected, 3 completed, 1 cancelled"),
        "{stdout}"
    );
    assert!(stdout.contains("results in"), "{stdout}");
    // The demo prices its models: each completed job has an estimated cost in its row.
    for name in ["reviews.jsonl", "embeddings.jsonl", "summaries.jsonl"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with("job_") && l.contains(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"));
        assert!(row.contains(" $0.0"), "{name} has no cost: {row}");
    }
    assert!(stdout.contains("Tokens of the jobs listed: "), "{stdout}");
    assert!(
        stdout.contains("batchwatch doctor checks"),
        "points at doctor: {stdout}"
    );
    // Where to look next works as printed: a job shown by its file's name.
    let show = stdout
        .lines()
        .find(|l| l.contains("batchwatch show reviews.jsonl --database"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let database = show.rsplit_once("--database ").unwrap().1;
    let shown = crate::support::process::stdout_ok(
        None,
        &["show", "reviews.jsonl", "--database", database],
    );
    assert!(
        shown.contains("state        completed") && shown.contains("cost "),
        "{shown}"
    );

    let store = Store::open(
        &dir.join("state.db"),
        Duration::from_secs(5),
        Access::ReadOnly,
    )
    .await
    .unwrap();
    let all = store.jobs_in_states(JobState::ALL).await.unwrap();
    let state = |name: &str| {
        all.iter()
            .find(|j| j.file_name == name)
            .map(|j| (j.state, j.reason_code.clone()))
            .unwrap()
    };
    assert_eq!(
        state("broken.jsonl"),
        (JobState::Rejected, Some("duplicate_custom_id".into()))
    );
    assert_eq!(
        state("slow.jsonl"),
        (JobState::Cancelled, Some("deadline".into()))
    );
    for name in ["reviews.jsonl", "embeddings.jsonl", "summaries.jsonl"] {
        assert_eq!(state(name).0, JobState::Completed, "{name}");
        assert!(dir.join("queue/done").join(name).exists());
    }
    assert!(dir.join("queue/failed/slow.jsonl.reason.json").exists());
    assert!(dir.join("queue/failed/broken.jsonl.reason.json").exists());
}
