//! The status commands against a database the test fills: text and JSON.

use crate::support::Sandbox;
use crate::support::fixtures::{fill, open};
use crate::support::process::{run, stdout_ok};

async fn filled() -> (Sandbox, crate::support::fixtures::Filled) {
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    let f = fill(&store).await;
    store.close().await;
    (sandbox, f)
}

fn db_args<'a>(sandbox: &'a Sandbox, args: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.push("--database".into());
    v.push(sandbox.db_path().display().to_string());
    v
}

fn cli(sandbox: &Sandbox, args: &[&str]) -> String {
    let args = db_args(sandbox, args);
    stdout_ok(None, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[tokio::test]
async fn status_lists_every_job_with_state_progress_and_reason() {
    let (sandbox, f) = filled().await;
    let out = cli(&sandbox, &["status"]);
    assert!(
        out.starts_with("Jobs: 1 rejected, 1 queued, 1 running, 1 completed\n"),
        "{out}"
    );
    let header = out.lines().nth(2).unwrap();
    for column in [
        "JOB", "FILE", "STATE", "REMOTE", "REQUESTS", "AGE", "DEADLINE", "REASON",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let line = |id: &str| {
        out.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no line for {id}:\n{out}"))
            .to_owned()
    };
    let running = line(&f.running);
    assert!(
        running.contains("split.jsonl")
            && running.contains("running")
            && running.contains("in_progress"),
        "{running}"
    );
    assert!(running.contains("5/10, 1 failed"), "{running}");
    let completed = line(&f.completed);
    assert!(
        completed.contains("completed") && completed.contains("9/10, 1 failed"),
        "{completed}"
    );
    assert!(line(&f.rejected).contains("duplicate_custom_id"));
    assert_eq!(out.lines().filter(|l| l.starts_with("job_")).count(), 4);
}

#[tokio::test]
async fn status_filters_by_state_and_prints_json() {
    let (sandbox, f) = filled().await;
    let out = cli(&sandbox, &["status", "--state", "rejected"]);
    assert_eq!(out.lines().filter(|l| l.starts_with("job_")).count(), 1);
    assert!(out.contains(&f.rejected));

    let json: Vec<serde_json::Value> =
        serde_json::from_str(&cli(&sandbox, &["status", "--json"])).unwrap();
    assert_eq!(json.len(), 4);
    let running = json.iter().find(|r| r["id"] == f.running.as_str()).unwrap();
    assert_eq!(running["state"], "running");
    assert_eq!(running["requests_completed"], 5);
    assert_eq!(running["request_count"], 10);
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&cli(&sandbox, &["status", "--json", "--state", "queued"])).unwrap();
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["id"], f.queued.as_str());

    let bad = run(
        None,
        &db_args(&sandbox, &["status", "--state", "sleeping"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("expected one of: validating"),
        "the choices are named"
    );
}

#[tokio::test]
async fn show_prints_a_job_with_its_events_batches_and_history() {
    let (sandbox, f) = filled().await;
    let out = cli(&sandbox, &["show", &f.completed]);
    assert!(
        out.starts_with(&format!("Job {} (nightly.jsonl)", f.completed)),
        "{out}"
    );
    assert!(out.contains("state        completed"), "{out}");
    assert!(
        out.contains("Batch batch_completed1 (part 0, attempt 1)"),
        "{out}"
    );
    let history: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.contains("2026-11-22T10:0")
                && (l.contains("in_progress")
                    || l.contains("validating")
                    || l.contains(" completed "))
        })
        .collect();
    assert!(history.len() >= 4, "{out}");

    // The same job, found by a batch id.
    assert_eq!(cli(&sandbox, &["show", &f.completed_remote]), out);
    let json: serde_json::Value =
        serde_json::from_str(&cli(&sandbox, &["show", "--json", &f.running])).unwrap();
    assert_eq!(json["job"]["id"], f.running.as_str());
    assert_eq!(json["batches"].as_array().unwrap().len(), 3);
    assert_eq!(json["batches"][0]["remote_id"], "batch_refused");
    assert_eq!(json["batches"][0]["history"][0]["status"], "failed");
    assert!(json["events"].as_array().unwrap().len() >= 2);

    let missing = run(
        None,
        &db_args(&sandbox, &["show", "job_00000000000000000000000000"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no job or batch"));
}

#[tokio::test]
async fn history_prints_a_batch_history_in_order() {
    let (sandbox, f) = filled().await;
    let out = cli(&sandbox, &["history", &f.completed_remote]);
    let statuses: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["validating", "in_progress", "in_progress", "completed"],
        "{out}"
    );
    assert_eq!(
        cli(&sandbox, &["history", &f.completed_batch.to_string()]),
        out,
        "a local number works too"
    );
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&cli(&sandbox, &["history", "--json", &f.completed_remote])).unwrap();
    assert_eq!(json.len(), 4);
    assert_eq!(json[3]["status"], "completed");
    assert_eq!(json[3]["request_completed"], 9);
}

#[test]
fn status_commands_find_the_database_through_the_configuration() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config("");
    let out = run(Some(&config), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!(
        "database {} does not exist",
        sandbox.db_path().display()
    )));
    stdout_ok(Some(&config), &["migrate"]);
    assert_eq!(stdout_ok(Some(&config), &["status"]), "No jobs yet.\n");
}

/// A script that reads only the start of the output (`batchwatch status | head -1`) closes the
/// pipe early: the command ends quietly with 0, not a panic. A stdout that cannot be written
/// (a full disk) is an error that says so.
#[tokio::test]
async fn output_to_a_closed_pipe_ends_quietly_and_to_a_full_disk_is_an_error() {
    let (sandbox, _) = filled().await;
    for args in [
        db_args(&sandbox, &["status"]),
        db_args(&sandbox, &["status", "--json"]),
        vec!["print-default-config".to_owned()],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = crate::support::process::command(None)
            .args(&args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");

        let out = crate::support::process::command(None)
            .args(&args)
            .stdout(
                std::fs::File::options()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            )
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr
                .contains("batchwatch: error: writing to standard output: No space left on device"),
            "{args:?}: {stderr}"
        );
    }
}

/// A running job that does not move says why: the last error of its latest batches is its
/// REASON (escaped), until it has a reason of its own.
#[tokio::test]
async fn status_shows_the_last_error_of_a_running_job_as_its_reason() {
    let (sandbox, f) = filled().await;
    let store = crate::support::fixtures::open(&sandbox.db_path()).await;
    let latest = batchwatch::store::batches::for_job(store.reader(), &f.running)
        .await
        .unwrap()
        .into_iter()
        .max_by_key(|b| (b.attempt, b.id))
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    batchwatch::store::transitions::defer_poll(
        &mut tx,
        latest.id,
        "2026-11-22T11:00:10.000Z",
        "download output: HTTP 500\n\x1b[31mforged",
        "2026-11-22T11:00:00.000Z",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    store.close().await;

    let out = cli(&sandbox, &["status"]);
    let running = out
        .lines()
        .find(|l| l.starts_with(&f.running))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        running.ends_with(r"download output: HTTP 500\n\u{1b}[31mforged"),
        "{running}"
    );
    assert!(!out.contains('\x1b'), "{out:?}");
    assert_eq!(out.lines().filter(|l| l.starts_with("job_")).count(), 4);
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&cli(&sandbox, &["status", "--json"])).unwrap();
    let row = json.iter().find(|r| r["id"] == f.running.as_str()).unwrap();
    assert_eq!(
        row["last_error"],
        "download output: HTTP 500\n\x1b[31mforged"
    );
}
