//! The status commands against a database the test fills: text and JSON.

use crate::support::Sandbox;
use crate::support::fixtures::{fill, open};
use crate::support::process::{run, stdout_ok};
use batchwatch::store::prelude::*;

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
        "JOB", "FILE", "STATE", "PROVIDER", "REMOTE", "REQUESTS", "AGE", "DEADLINE", "REASON",
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
    assert!(
        running.contains(" openai "),
        "the provider it ran on: {running}"
    );
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
    assert!(out.contains("provider     openai"), "{out}");
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
    assert_eq!(json["job"]["provider"], "openai");
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
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no job, batch or file"));
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
    let error = "download output: HTTP 500\n\x1b[31mforged";
    fail_latest_batch(&sandbox, &f.running, error, "2026-11-22T11:00:00.000Z").await;
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
    assert_eq!(row["last_error"], error);

    // A long error is cut short like a long name, and --wide shows it whole.
    let long = format!("download output: {}", "the proxy said no; ".repeat(6));
    fail_latest_batch(&sandbox, &f.running, &long, "2026-11-22T11:00:10.000Z").await;
    let narrow = cli(&sandbox, &["status"]);
    let running = narrow
        .lines()
        .find(|l| l.starts_with(&f.running))
        .unwrap_or_else(|| panic!("{narrow}"));
    assert!(
        running.ends_with('…') && !running.contains(long.trim_end()),
        "{running}"
    );
    assert!(
        narrow.contains("--wide shows every value whole"),
        "{narrow}"
    );
    let wide = cli(&sandbox, &["status", "--wide"]);
    assert!(wide.contains(long.trim_end()), "{wide}");
}

/// Records `error` as the last error of `job`'s latest batch, at `at`, its next poll ten
/// seconds later.
async fn fail_latest_batch(sandbox: &Sandbox, job: &str, error: &str, at: &str) {
    let store = open(&sandbox.db_path()).await;
    let latest = store
        .submissions_of(job)
        .await
        .unwrap()
        .into_iter()
        .max_by_key(|b| (b.attempt, b.id))
        .unwrap();
    let next = batchwatch::clock::format(batchwatch::clock::add(
        batchwatch::clock::parse(at).unwrap(),
        std::time::Duration::from_secs(10),
    ));
    let mut tx = store.begin().await.unwrap();
    batchwatch_store_sqlite::transitions::defer_poll(&mut tx, latest.id, &next, error, at)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    store.close().await;
}

/// Inserts a job of `name` for `model`, claimed at `at`, with its file at `path`.
async fn job_at(
    store: &batchwatch_store_sqlite::Store,
    id: &str,
    name: &str,
    model: &str,
    at: &str,
    path: &str,
) {
    use batchwatch_store_sqlite::jobs::{self, NewJob};
    let mut tx = store.begin().await.unwrap();
    jobs::insert(
        &mut tx,
        &NewJob {
            id,
            file_name: name,
            path,
            size_bytes: 100,
            endpoint: None,
            completion_window: "24h",
            deadline_at: "2026-12-31T00:00:00.000Z",
            metadata: "{}",
            output_expires_after: None,
            provider: "openai",
        },
        at,
    )
    .await
    .unwrap();
    jobs::record_validation(
        &mut tx,
        id,
        &"cd".repeat(32),
        1,
        "/v1/chat/completions",
        model,
        at,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

fn ids(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with("job_"))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn status_narrows_by_file_glob_claim_time_model_and_state_together() {
    use crate::support::fixtures::job_id;
    use batchwatch::clock;
    let sandbox = Sandbox::new();
    let store = open(&sandbox.db_path()).await;
    let now = jiff::Timestamp::now();
    let ago = |hours: u64| {
        clock::format(clock::sub(
            now,
            std::time::Duration::from_secs(hours * 3600),
        ))
    };
    let (recent, other_model, old, other_name) = (job_id(1), job_id(2), job_id(3), job_id(4));
    job_at(
        &store,
        &recent,
        "eval-a.jsonl",
        "gpt-4o-mini",
        &ago(1),
        "processing/a",
    )
    .await;
    job_at(
        &store,
        &other_model,
        "eval-b.jsonl",
        "gpt-4o",
        &ago(1),
        "processing/b",
    )
    .await;
    job_at(
        &store,
        &old,
        "eval-old.jsonl",
        "gpt-4o-mini",
        &ago(5),
        "processing/c",
    )
    .await;
    job_at(
        &store,
        &other_name,
        "other.jsonl",
        "gpt-4o-mini",
        &ago(1),
        "processing/d",
    )
    .await;
    store.close().await;

    let all = [&other_name, &old, &other_model, &recent].map(|s| s.to_string());
    assert_eq!(ids(&cli(&sandbox, &["status"])), all);
    assert_eq!(
        ids(&cli(&sandbox, &["status", "--file", "eval-*.jsonl"])),
        [&old, &other_model, &recent].map(|s| s.to_string())
    );
    assert_eq!(
        ids(&cli(&sandbox, &["status", "--since", "2h"])),
        [&other_name, &other_model, &recent].map(|s| s.to_string())
    );
    assert_eq!(
        ids(&cli(&sandbox, &["status", "--model", "gpt-4o"])),
        [other_model.as_str()]
    );
    assert_eq!(
        ids(&cli(
            &sandbox,
            &[
                "status",
                "--file",
                "eval-*",
                "--since",
                "2h",
                "--model",
                "gpt-4o-mini",
                "--state",
                "validating"
            ]
        )),
        [recent.as_str()]
    );
    assert!(
        ids(&cli(
            &sandbox,
            &["status", "--file", "eval-*", "--state", "queued"]
        ))
        .is_empty()
    );
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&cli(&sandbox, &["status", "--json", "--file", "other*"])).unwrap();
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["id"], other_name.as_str());
}

#[tokio::test]
async fn show_finds_every_job_of_a_file_by_its_name_or_its_path_newest_first() {
    use crate::support::fixtures::{T0, job_id};
    let (sandbox, _) = filled().await;
    let store = open(&sandbox.db_path()).await;
    let (first, again) = (job_id(20), job_id(21));
    job_at(
        &store,
        &first,
        "repeat.jsonl",
        "gpt-4o-mini",
        T0,
        "failed/repeat.jsonl",
    )
    .await;
    job_at(
        &store,
        &again,
        "repeat.jsonl",
        "gpt-4o-mini",
        T0,
        "done/repeat.jsonl",
    )
    .await;
    store.close().await;

    let out = cli(&sandbox, &["show", "repeat.jsonl"]);
    assert!(
        out.starts_with("2 jobs of repeat.jsonl, newest first\n"),
        "{out}"
    );
    let shown: Vec<&str> = out.lines().filter(|l| l.starts_with("Job ")).collect();
    assert_eq!(
        shown,
        [
            format!("Job {again} (repeat.jsonl)"),
            format!("Job {first} (repeat.jsonl)")
        ]
    );
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&cli(&sandbox, &["show", "--json", "repeat.jsonl"])).unwrap();
    let json_ids: Vec<&str> = json
        .iter()
        .map(|r| r["job"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(json_ids, [again.as_str(), first.as_str()]);

    // By where the file is: relative to the queue, or anywhere under a queue directory.
    for path in [
        "done/repeat.jsonl",
        "/var/lib/batchwatch/queue/done/repeat.jsonl",
    ] {
        let out = cli(&sandbox, &["show", path]);
        assert!(
            out.starts_with(&format!("1 job of {path}, newest first\n\nJob {again} ")),
            "{out}"
        );
    }
    let missing = run(
        None,
        &db_args(&sandbox, &["show", "nothing.jsonl"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("no job, batch or file \"nothing.jsonl\""),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

/// JSON output gives what the database holds as JSON (a batch object, metadata) as JSON, not
/// as a string to parse again.
#[tokio::test]
async fn json_output_gives_raw_batch_objects_and_metadata_as_objects() {
    let (sandbox, f) = filled().await;
    let history: Vec<serde_json::Value> =
        serde_json::from_str(&cli(&sandbox, &["history", "--json", &f.completed_remote])).unwrap();
    assert_eq!(
        history[0]["raw"]["id"],
        f.completed_remote.as_str(),
        "{}",
        history[0]
    );
    let show: serde_json::Value =
        serde_json::from_str(&cli(&sandbox, &["show", "--json", &f.completed])).unwrap();
    assert_eq!(
        show["job"]["metadata"]["team"], "research",
        "{}",
        show["job"]
    );
    assert_eq!(show["batches"][0]["raw"]["id"], f.completed_remote.as_str());
    assert_eq!(
        show["batches"][0]["history"][0]["raw"]["id"],
        f.completed_remote.as_str()
    );
}

/// `show` says where a deadline stands, even for a job that ended.
#[tokio::test]
async fn show_says_how_far_a_deadline_is_in_words() {
    let (sandbox, f) = filled().await;
    for id in [&f.completed, &f.queued] {
        let out = cli(&sandbox, &["show", id]);
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with("deadline"))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(
            line.ends_with(" ago)") && line.contains("(passed "),
            "the fixture's deadline is past: {line}"
        );
    }
}

/// Runs `batchwatch ARGS` with its standard output on a pseudo-terminal, as at a terminal;
/// returns what it printed there.
fn on_a_terminal(args: &[String], vars: &[(&str, &str)]) -> String {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let (mut leader, mut follower) = (0, 0);
    // SAFETY: openpty writes two descriptors into the integers given; no name, settings or size.
    let opened = unsafe {
        libc::openpty(
            &mut leader,
            &mut follower,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned here alone.
    let (mut leader, follower) = unsafe {
        (
            std::fs::File::from_raw_fd(leader),
            std::fs::File::from_raw_fd(follower),
        )
    };
    let mut command = crate::support::process::command(None);
    command.args(args).env("TERM", "xterm").stdout(follower);
    for (k, v) in vars {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    // The follower's last copy goes with the command: reading then ends when the child does.
    drop(command);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        // EIO once no process holds the follower any more: the end of the output.
        let _ = leader.read_to_end(&mut out);
        out
    });
    assert!(child.wait().unwrap().success());
    String::from_utf8(reader.join().unwrap())
        .unwrap()
        .replace("\r\n", "\n")
}

/// `text` without its SGR escape sequences (`ESC [ ... m`).
fn uncoloured(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("\x1b[") {
        out.push_str(&rest[..at]);
        let code = &rest[at..];
        rest = &code[code.find('m').map_or(code.len(), |m| m + 1)..];
    }
    out + rest
}

#[tokio::test]
async fn status_and_show_are_coloured_on_a_terminal_and_not_with_no_color_or_in_a_pipe() {
    let (sandbox, f) = filled().await;
    for args in [vec!["status"], vec!["show", f.completed.as_str()]] {
        let args = db_args(&sandbox, &args);
        let coloured = on_a_terminal(&args, &[]);
        assert!(
            coloured.contains("\x1b[32mcompleted\x1b[0m"),
            "{coloured:?}"
        );
        let plain = on_a_terminal(&args, &[("NO_COLOR", "1")]);
        assert!(!plain.contains('\x1b'), "{plain:?}");
        // The same text, colour aside: the columns stay aligned, as colour takes no room.
        assert_eq!(uncoloured(&coloured), plain);
        let piped = stdout_ok(None, &args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(piped, plain);
    }
}

#[tokio::test]
async fn status_cuts_long_names_short_and_says_so_and_wide_shows_them_whole() {
    use crate::support::fixtures::{T0, job_id};
    let (sandbox, _) = filled().await;
    let store = open(&sandbox.db_path()).await;
    let name = format!("{}.jsonl", "a-very-long-evaluation-file-name".repeat(2));
    job_at(
        &store,
        &job_id(30),
        &name,
        "gpt-4o-mini",
        T0,
        "processing/long",
    )
    .await;
    store.close().await;
    let narrow = cli(&sandbox, &["status"]);
    assert!(!narrow.contains(&name), "{narrow}");
    assert!(
        narrow.contains("a-very-long-evaluation-file-nam…"),
        "{narrow}"
    );
    assert!(
        narrow.contains("--wide shows every value whole"),
        "{narrow}"
    );
    let wide = cli(&sandbox, &["status", "--wide"]);
    assert!(wide.contains(&name), "{wide}");
    assert!(!wide.contains('…') && !wide.contains("--wide"), "{wide}");
}

#[tokio::test]
async fn status_instances_says_a_sqlite_database_has_one_daemon_and_no_record_of_it() {
    let (sandbox, _) = filled().await;
    assert_eq!(
        cli(&sandbox, &["status", "--instances"]),
        "One daemon writes a SQLite database, behind its lock file; no instances are recorded.\n"
    );
    assert_eq!(cli(&sandbox, &["status", "--instances", "--json"]), "[]\n");
}
