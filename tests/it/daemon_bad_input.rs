//! Bad input: every kind of bad file (malformed, special, unreadable, a FIFO for a sidecar, a
//! name too long for the queue's prefixes) ends in failed/ with a reason that names the rule
//! (and the line), its original bytes unchanged, and the daemon keeps running and restarts.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use batchwatch::model::JobState;

use crate::support::daemon::{Env, quick_sim, requests};
use crate::support::process::{Running, bin};
use crate::support::sim::spawn_sim;
use crate::support::{KEY, poll_until, wait_until};

fn line(id: &str, model: &str, url: &str) -> String {
    format!(
        r#"{{"custom_id":"{id}","method":"POST","url":"{url}","body":{{"model":"{model}","messages":[]}}}}"#
    ) + "\n"
}

fn ok(id: &str) -> String {
    line(id, "gpt-4o-mini", "/v1/chat/completions")
}

/// A bad file: its name, what to write (or `None` when the test makes it specially), an
/// optional sidecar, the rule's code, and the line at fault.
struct Case {
    name: &'static str,
    content: Option<Vec<u8>>,
    sidecar: Option<&'static str>,
    code: &'static str,
    line: Option<u64>,
}

fn case(
    name: &'static str,
    content: impl Into<Vec<u8>>,
    code: &'static str,
    line: Option<u64>,
) -> Case {
    Case {
        name,
        content: Some(content.into()),
        sidecar: None,
        code,
        line,
    }
}

fn cases() -> Vec<Case> {
    let two = ok("a") + &ok("b");
    vec![
        case(
            "invalid-json.jsonl",
            ok("a") + "{\"custom_id\": \"b\",\n",
            "invalid_json_line",
            Some(2),
        ),
        case(
            "duplicate-id.jsonl",
            ok("a") + &ok("a"),
            "duplicate_custom_id",
            Some(2),
        ),
        case(
            "mixed-models.jsonl",
            ok("a") + &line("b", "gpt-4o", "/v1/chat/completions"),
            "mismatched_model",
            Some(2),
        ),
        // Checked before the model is compared with the first line's: the reason does not
        // repeat the name.
        case(
            "long-model.jsonl",
            ok("a") + &line("b", &"m".repeat(300), "/v1/chat/completions"),
            "model_too_long",
            Some(2),
        ),
        case(
            "url-mismatch.jsonl",
            ok("a") + &line("b", "gpt-4o-mini", "/v1/embeddings"),
            "mismatched_url",
            Some(2),
        ),
        case(
            "bom.jsonl",
            [b"\xEF\xBB\xBF".as_slice(), two.as_bytes()].concat(),
            "byte_order_mark",
            Some(1),
        ),
        case("empty.jsonl", "", "empty_file", None),
        case(
            "too-many.jsonl",
            (0..6).map(|i| ok(&format!("r{i}"))).collect::<String>(),
            "too_many_requests",
            Some(6),
        ),
        case(
            "too-large.jsonl",
            requests("big", 40, "gpt-4o-mini"),
            "file_too_large",
            None,
        ),
        case(
            "invalid-utf8.jsonl",
            [ok("a").as_bytes(), b"{\"custom_id\":\"\xff\"}\n"].concat(),
            "invalid_utf8",
            Some(2),
        ),
        case(
            "array-line.jsonl",
            ok("a") + "[1, 2, 3]\n",
            "line_not_object",
            Some(2),
        ),
        case(
            "no-custom-id.jsonl",
            ok("a").replace("\"custom_id\":\"a\",", ""),
            "missing_custom_id",
            Some(1),
        ),
        case(
            "get-method.jsonl",
            ok("a").replace("POST", "GET"),
            "invalid_method",
            Some(1),
        ),
        case(
            "no-body.jsonl",
            ok("a") + r#"{"custom_id":"b","method":"POST","url":"/v1/chat/completions"}"# + "\n",
            "missing_body",
            Some(2),
        ),
        case(
            "no-model.jsonl",
            ok("a").replace("\"model\":\"gpt-4o-mini\",", ""),
            "missing_model",
            Some(1),
        ),
        case(
            "deep-nesting.jsonl",
            ok("a")
                + &ok("b").replace(
                    "\"messages\":[]",
                    &format!("\"messages\":{}{}", "[".repeat(200), "]".repeat(200)),
                ),
            "nesting_too_deep",
            Some(2),
        ),
        case(
            "huge-number.jsonl",
            ok("a") + &ok("b").replace("\"messages\":[]", "\"messages\":[],\"temperature\":1e400"),
            "number_out_of_range",
            Some(2),
        ),
        case(
            "lone-surrogate.jsonl",
            ok("a")
                + &ok("b").replace(
                    "\"messages\":[]",
                    r#""messages":[{"role":"user","content":"\ud800"}]"#,
                ),
            "lone_surrogate",
            Some(2),
        ),
        case(
            "blank-line.jsonl",
            ok("a") + "\n" + &ok("b"),
            "blank_line",
            Some(2),
        ),
        Case {
            sidecar: Some("deadlin = \"2h\"\n"),
            ..case(
                "sidecar-unknown-key.jsonl",
                two.clone(),
                "invalid_sidecar",
                None,
            )
        },
        Case {
            sidecar: Some("deadline = \"tomorrow\"\n"),
            ..case(
                "sidecar-bad-deadline.jsonl",
                two.clone(),
                "invalid_sidecar",
                None,
            )
        },
        Case {
            sidecar: Some("deadline = \n"),
            ..case(
                "sidecar-not-toml.jsonl",
                two.clone(),
                "invalid_sidecar",
                None,
            )
        },
        Case {
            sidecar: Some("deadline = \"2001-01-01T00:00:00Z\"\n"),
            ..case(
                "sidecar-past-deadline.jsonl",
                two.clone(),
                "invalid_sidecar",
                None,
            )
        },
        Case {
            sidecar: Some("endpoint = \"/v1/embeddings\"\n"),
            ..case(
                "sidecar-endpoint.jsonl",
                two.clone(),
                "mismatched_url",
                Some(1),
            )
        },
        Case {
            sidecar: Some("[metadata]\nbatchwatch_job_id = \"mine\"\n"),
            ..case(
                "sidecar-reserved-metadata.jsonl",
                two.clone(),
                "invalid_sidecar",
                None,
            )
        },
        Case {
            name: "symlink.jsonl",
            content: None,
            sidecar: None,
            code: "not_a_regular_file",
            line: None,
        },
        Case {
            name: "a-directory.jsonl",
            content: None,
            sidecar: None,
            code: "not_a_regular_file",
            line: None,
        },
        Case {
            name: "fifo.jsonl",
            content: None,
            sidecar: None,
            code: "not_a_regular_file",
            line: None,
        },
        Case {
            name: "unreadable.jsonl",
            content: None,
            sidecar: None,
            code: "unreadable_file",
            line: None,
        },
    ]
}

/// Runs the daemon as an unprivileged user when the tests run as root, so that a file without
/// read permission is really unreadable to it.
fn spawn_unprivileged(env: &Env) -> Running {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let status = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(env.sandbox.path())
            .status()
            .unwrap();
        assert!(status.success());
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin()]);
        c
    } else {
        Command::new(bin())
    };
    cmd.arg("--config")
        .arg(&env.config)
        .arg("run")
        .env("OPENAI_API_KEY", KEY)
        .env_remove("RUST_LOG");
    let mut daemon = Running::spawn(cmd);
    daemon.wait_for_line("batchwatch started", Duration::from_secs(30));
    daemon
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path and mode.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

fn make_special(incoming: &Path, name: &str) {
    let path = incoming.join(name);
    match name {
        "symlink.jsonl" => std::os::unix::fs::symlink("/etc/hostname", &path).unwrap(),
        "a-directory.jsonl" => {
            std::fs::create_dir(&path).unwrap();
            std::fs::write(path.join("inside.jsonl"), ok("a")).unwrap();
            // Moving a directory to another parent needs write access to it: it belongs to
            // the daemon's user here (the unprivileged one when the tests run as root).
            if unsafe { libc::geteuid() } == 0 {
                std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
            }
        }
        "fifo.jsonl" => mkfifo(&path),
        "unreadable.jsonl" => {
            std::fs::write(&path, ok("a")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        }
        other => unreachable!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kind_of_bad_input_ends_in_failed_with_its_rule_and_the_daemon_keeps_running() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(
        &sim.handle.base_url(),
        "[batch]\nmax_requests = 5\nmax_bytes = \"4KB\"\n",
    );
    let mut daemon = spawn_unprivileged(&env);
    let incoming = env.dir("incoming");
    let cases = cases();
    for c in &cases {
        if let Some(sidecar) = c.sidecar {
            std::fs::write(incoming.join(format!("{}.toml", c.name)), sidecar).unwrap();
        }
        match &c.content {
            Some(bytes) => env.drop_file(c.name, bytes),
            None => make_special(&incoming, c.name),
        }
    }
    // A name that is not UTF-8.
    let odd_name = OsStr::from_bytes(b"latin1-\xe9t\xe9.jsonl");
    std::fs::write(incoming.join(odd_name), ok("a")).unwrap();
    let expected = cases.len() + 1;

    env.wait_finished(expected, Duration::from_secs(60), &mut daemon)
        .await;
    // Still running: a good file after all that completes.
    env.drop_file("good.jsonl", ok("g").as_bytes());
    let jobs = env
        .wait_finished(expected + 1, Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);

    let failed = env.dir("failed");
    for c in &cases {
        let job = jobs
            .iter()
            .find(|j| j.file_name == c.name)
            .unwrap_or_else(|| panic!("no job for {}", c.name));
        assert_eq!(
            job.state,
            JobState::Rejected,
            "{}: {:?}",
            c.name,
            job.reason
        );
        assert_eq!(
            job.reason_code.as_deref(),
            Some(c.code),
            "{}: {:?}",
            c.name,
            job.reason
        );
        let reason: serde_json::Value = serde_json::from_slice(
            &std::fs::read(failed.join(format!("{}.reason.json", c.name))).unwrap(),
        )
        .unwrap();
        assert_eq!(reason["code"], c.code, "{}", c.name);
        assert_eq!(reason["state"], "rejected");
        assert_eq!(reason["line"].as_u64(), c.line, "{}: {reason}", c.name);
        assert!(!reason["message"].as_str().unwrap().is_empty());
        let moved = failed.join(c.name);
        match &c.content {
            Some(bytes) => assert_eq!(
                &std::fs::read(&moved).unwrap(),
                bytes,
                "{}: bytes unchanged",
                c.name
            ),
            None => assert!(
                std::fs::symlink_metadata(&moved).is_ok(),
                "{} is in failed/",
                c.name
            ),
        }
        if c.sidecar.is_some() {
            assert!(
                failed.join(format!("{}.toml", c.name)).exists(),
                "{}: the sidecar travels with it",
                c.name
            );
        }
    }
    // A size limit's reason names the settings that move it, and splitting.
    for (name, limit) in [
        ("too-many.jsonl", "batch.max_requests"),
        ("too-large.jsonl", "batch.max_bytes"),
    ] {
        let reason = crate::support::read_json(&failed.join(format!("{name}.reason.json")));
        let message = reason["message"].as_str().unwrap();
        for key in [limit, "batch.split_oversized = true"] {
            assert!(message.contains(key), "{name}: {message}");
        }
    }
    // Special files keep what they are.
    assert!(
        std::fs::symlink_metadata(failed.join("symlink.jsonl"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_link(failed.join("symlink.jsonl")).unwrap(),
        Path::new("/etc/hostname")
    );
    assert!(failed.join("a-directory.jsonl/inside.jsonl").exists());
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(failed.join("fifo.jsonl"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // The odd name keeps its exact bytes.
    assert_eq!(
        std::fs::read(failed.join(odd_name)).unwrap(),
        ok("a").as_bytes()
    );
    let mut reason_name = odd_name.to_owned();
    reason_name.push(".reason.json");
    let reason: serde_json::Value =
        serde_json::from_slice(&std::fs::read(failed.join(reason_name)).unwrap()).unwrap();
    assert_eq!(reason["code"], "invalid_file_name");

    let good = jobs.iter().find(|j| j.file_name == "good.jsonl").unwrap();
    assert_eq!(good.state, JobState::Completed);
    assert!(
        env.names("incoming").is_empty(),
        "{:?}",
        env.names("incoming")
    );
    assert!(env.names("processing").is_empty());
    // Only the good file reached the API.
    assert_eq!(sim.handle.stats().await.batches_by_job.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_names_up_to_the_255_byte_limit_go_through_though_no_sidecar_can_exist() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    // 250 bytes can still have a sidecar (255); 251 and more cannot.
    let valid: Vec<String> = [244, 245, 249]
        .iter()
        .map(|n| format!("{}.jsonl", "v".repeat(*n)))
        .collect();
    let invalid = format!("{}.jsonl", "x".repeat(249));
    for name in &valid {
        assert!(name.len() >= 250 && name.len() <= 255);
        env.drop_file(name, ok("a").as_bytes());
    }
    env.drop_file(&invalid, (ok("a") + &ok("a")).as_bytes());
    let jobs = env
        .wait_finished(valid.len() + 1, Duration::from_secs(60), &mut daemon)
        .await;
    // Everything has moved on: nothing is left to retry.
    wait_until("processing/ empty", Duration::from_secs(10), async || {
        let left = env.names("processing");
        (left.is_empty(), left)
    })
    .await;
    let log = env.stop(daemon);
    assert!(
        !log.iter()
            .any(|l| l.contains("cannot move this job's file on yet")),
        "{}",
        log.join("\n")
    );
    assert!(
        env.names("processing").is_empty(),
        "{:?}",
        env.names("processing")
    );
    assert!(env.names("incoming").is_empty());
    for name in &valid {
        let job = jobs.iter().find(|j| &j.file_name == name).unwrap();
        assert_eq!(
            job.state,
            JobState::Completed,
            "{} bytes: {:?}",
            name.len(),
            job.reason
        );
        let at = env.sandbox.queue_dir().join(&job.path);
        assert_eq!(
            std::fs::read(&at).unwrap(),
            ok("a").as_bytes(),
            "{}",
            job.path
        );
    }
    let job = jobs.iter().find(|j| j.file_name == invalid).unwrap();
    assert_eq!(job.state, JobState::Rejected);
    assert_eq!(job.reason_code.as_deref(), Some("duplicate_custom_id"));
    // NAME.reason.json would be too long: the file and its reason share a directory of its own.
    let dir = env.dir("failed").join(&job.id);
    assert_eq!(
        std::fs::read(dir.join(&invalid)).unwrap(),
        (ok("a") + &ok("a")).as_bytes()
    );
    let reason: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reason.json")).unwrap()).unwrap();
    assert_eq!(reason["code"], "duplicate_custom_id");
    assert_eq!(reason["file"], invalid.as_str());
}

/// A completed file keeps its name in done/ whatever its length: no reason file is written
/// beside it there, so only its sidecar's name has to fit (up to 250 bytes, and a name of 251
/// or more has none). In failed/, `NAME.reason.json` must fit too (up to 243 bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completed_file_of_any_length_keeps_its_name_in_done() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    let names: Vec<String> = [243, 244, 249, 250, 251, 255]
        .iter()
        .map(|n| format!("{}.jsonl", "d".repeat(n - 6)))
        .collect();
    let with_sidecar = &names[3];
    env.drop_file(&format!("{with_sidecar}.toml"), b"deadline = \"1h\"\n");
    for name in &names {
        env.drop_file(name, ok("a").as_bytes());
    }
    let jobs = env
        .wait_finished(names.len(), Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
    for name in &names {
        let job = jobs.iter().find(|j| &j.file_name == name).unwrap();
        assert_eq!(job.state, JobState::Completed, "{:?}", job.reason);
        assert_eq!(
            job.path,
            format!("done/{name}"),
            "a name of {} bytes",
            name.len()
        );
        assert_eq!(
            std::fs::read(env.dir("done").join(name)).unwrap(),
            ok("a").as_bytes()
        );
    }
    assert!(
        env.dir("done")
            .join(format!("{with_sidecar}.toml"))
            .is_file(),
        "the sidecar of a 250-byte name travels beside it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_characters_in_a_file_name_forge_no_log_line_and_break_no_table() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    let name = "inj\n2026-01-01T00:00:00Z  INFO fake: log injection\x1b[31mred.jsonl";
    env.drop_file(name, ok("a").as_bytes());
    // And one that is rejected, so the name also travels through a reason.
    let bad = "bad\n2026-01-01T00:00:00Z  WARN fake: rejected\x1b[0m\x7f\u{9b}.jsonl";
    env.drop_file(bad, "not json\n".as_bytes());
    let jobs = env
        .wait_finished(2, Duration::from_secs(60), &mut daemon)
        .await;
    let log = env.stop(daemon);
    for line in &log {
        assert!(
            !line.starts_with("2026-01-01T00:00:00Z"),
            "a forged line: {line:?}"
        );
        assert!(
            !line.chars().any(|c| c.is_control()),
            "a raw control character in the log: {line:?}"
        );
    }
    assert!(
        log.iter().any(|l| l
            .contains(r"inj\n2026-01-01T00:00:00Z  INFO fake: log injection\u{1b}[31mred.jsonl")),
        "the name is shown, escaped: {}",
        log.join("\n")
    );

    let db = env.sandbox.db_path().display().to_string();
    let status = crate::support::process::stdout_ok(None, &["status", "--database", &db]);
    assert!(
        !status.chars().any(|c| c.is_control() && c != '\n'),
        "{status:?}"
    );
    let lines: Vec<&str> = status.lines().collect();
    // "Jobs: ...", "Tokens ...", a blank line, the header, one row per job, and the note that
    // the long names were cut short: nothing else.
    assert_eq!(lines.len(), 7, "{status}");
    assert!(lines[6].starts_with("(cut short …: --wide"), "{status}");
    assert!(lines[1].starts_with("Tokens "), "{status}");
    assert!(
        lines[4].starts_with("job_") && lines[5].starts_with("job_"),
        "{status}"
    );
    let header_columns = lines[3].split_whitespace().count();
    assert_eq!(header_columns, 10, "{status}");

    for job in &jobs {
        let show = crate::support::process::stdout_ok(None, &["show", &job.id, "--database", &db]);
        assert!(
            !show.chars().any(|c| c.is_control() && c != '\n'),
            "{show:?}"
        );
        assert!(show.starts_with(&format!("Job {} (", job.id)), "{show}");
        assert!(
            show.lines().all(|l| l.is_empty()
                || l.starts_with("Job ")
                || l.starts_with(' ')
                || l.starts_with("Events:")
                || l.starts_with("Batch ")),
            "a line of its own that is none of show's: {show}"
        );
        assert!(!show.lines().any(|l| l.starts_with("2026-01-01")), "{show}");
    }
    // JSON keeps the real name.
    let json: Vec<serde_json::Value> = serde_json::from_str(&crate::support::process::stdout_ok(
        None,
        &["status", "--json", "--database", &db],
    ))
    .unwrap();
    assert!(json.iter().any(|j| j["file_name"] == name));
    // The files themselves keep their names.
    assert!(env.dir("done").join(name).exists());
    assert!(env.dir("failed").join(bad).exists());
}

/// Starts the daemon again and watches it for three seconds; returns it, and how it exited if it
/// did (a start whose recovery fails ends the process).
async fn restart_and_watch(env: &Env) -> (Running, Option<std::process::ExitStatus>) {
    let mut again = env.spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let exited = again.child.try_wait().unwrap();
    again.drain();
    (again, exited)
}

/// A FIFO named `NAME.jsonl.toml` is refused as a sidecar without being read, so it never
/// blocks the daemon's loop (nor, at a restart, its start): a file dropped after it is claimed
/// and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fifo_sidecar_is_rejected_and_does_not_stall_the_daemon() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    mkfifo(&env.dir("incoming").join("stall.jsonl.toml"));
    env.drop_file(
        "stall.jsonl",
        requests("stall", 2, "gpt-4o-mini").as_bytes(),
    );
    let claimed = poll_until(Duration::from_secs(10), async || {
        (
            !env.names("incoming").contains(&"stall.jsonl".to_owned()),
            (),
        )
    })
    .await;
    assert!(claimed.is_ok(), "stall.jsonl was never claimed");
    env.drop_file(
        "other.jsonl",
        requests("other", 2, "gpt-4o-mini").as_bytes(),
    );
    let jobs = env
        .wait_finished(2, Duration::from_secs(30), &mut daemon)
        .await;
    let other = jobs.iter().find(|j| j.file_name == "other.jsonl").unwrap();
    assert_eq!(other.state, JobState::Completed);
}

/// A name of 219..=223 bytes with a sidecar: both are claimed into the job's directory in
/// processing/ under their own names (`JOBID__NAME` would make the sidecar's too long), so the
/// claim never fails half-way, the file is never stranded in processing/ without a job, the
/// daemon starts again after a stop, and the file ends in done/ or failed/.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_name_with_a_sidecar_neither_strands_the_file_nor_stops_the_next_start() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let daemon = env.spawn();
    let name = format!("{}.jsonl", "n".repeat(214)); // 220 bytes
    std::fs::write(
        env.dir("incoming").join(format!("{name}.toml")),
        "deadline = \"1h\"\n",
    )
    .unwrap();
    env.drop_file(&name, requests("long", 2, "gpt-4o-mini").as_bytes());
    let left_incoming = poll_until(Duration::from_secs(10), async || {
        (env.names("incoming").is_empty(), ())
    })
    .await;
    assert!(
        left_incoming.is_ok(),
        "incoming/ {:?}",
        env.names("incoming")
    );
    let stranded = env.names("processing");
    let rows = env.jobs().await.len();
    env.stop(daemon);

    let (again, exited) = restart_and_watch(&env).await;
    assert!(
        exited.is_none(),
        "the restarted daemon exited ({exited:?}); before the restart processing/ held {stranded:?} \
         with {rows} job rows; log:\n{}",
        again.seen.join("\n")
    );
    let finished = poll_until(Duration::from_secs(20), async || {
        (
            env.names("done").contains(&name) || env.names("failed").contains(&name),
            (),
        )
    })
    .await
    .is_ok();
    assert!(
        finished,
        "incoming/ {:?} processing/ {:?}",
        env.names("incoming"),
        env.names("processing")
    );
}

/// A name of 224..=255 bytes leaves incoming/: its job's directory in processing/ keeps it
/// whole (`JOBID__NAME` would be too long to claim, ENAMETOOLONG at every scan, the file left
/// in incoming/ with no reason ever written).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_whose_name_is_too_long_to_claim_is_rejected_with_a_reason() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    let name = format!("{}.jsonl", "x".repeat(230));
    env.drop_file(&name, requests("toolong", 2, "gpt-4o-mini").as_bytes());
    let left = poll_until(Duration::from_secs(10), async || {
        (env.names("incoming").is_empty(), ())
    })
    .await
    .is_ok();
    daemon.drain();
    assert!(
        left,
        "still in incoming/ after 10s, failed/ holds {:?}; log:\n{}",
        env.names("failed"),
        daemon
            .seen
            .iter()
            .filter(|l| l.contains("cannot move"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A rejected file goes to `failed/NAME`, or, when NAME is taken there, to `failed/JOBID/NAME`
/// with its reason beside it: a second rejected file of a 212..=223-byte name reaches failed/
/// too, and the daemon starts again after a stop. (As `failed/JOBID__NAME`, its reason file's
/// name used to be longer than 255 bytes: the reason could not be written after the job was
/// committed as rejected, the file stayed in processing/, and the next start failed on it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_rejected_file_of_a_long_name_reaches_failed_and_the_daemon_restarts() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let daemon = env.spawn();
    let name = format!("{}.jsonl", "r".repeat(209)); // 215 bytes
    env.drop_file(&name, b"not json\n");
    assert!(
        poll_until(Duration::from_secs(10), async || (
            env.names("failed").contains(&name),
            ()
        ))
        .await
        .is_ok()
    );
    env.drop_file(&name, b"still not json\n");
    let moved = poll_until(Duration::from_secs(10), async || {
        (
            env.names("processing").is_empty() && env.names("incoming").is_empty(),
            (),
        )
    })
    .await
    .is_ok();
    let jobs = env.jobs().await;
    env.stop(daemon);
    let (again, exited) = restart_and_watch(&env).await;
    assert!(
        moved && exited.is_none(),
        "second file left processing/: {moved}; job states {:?}; processing/ {:?}; \
         restarted daemon exited: {exited:?}; log:\n{}",
        jobs.iter().map(|j| j.state).collect::<Vec<_>>(),
        env.names("processing"),
        again.seen.join("\n")
    );
}

/// A sidecar with several mistakes: the reason names every one, each with its key, not only
/// the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_with_several_errors_names_every_one_in_the_reason() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file(
        "many.jsonl.toml",
        b"deadlin = \"2h\"\nendpoint = \"v1/chat\"\ndeadline = \"tomorrow\"\n\
          output_expires_after = 7\n[metadata]\nbatchwatch_run = \"x\"\n",
    );
    env.drop_file("many.jsonl", ok("a").as_bytes());
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    env.stop(daemon);
    assert_eq!(jobs[0].state, JobState::Rejected);
    let reason = crate::support::read_json(&env.dir("failed").join("many.jsonl.reason.json"));
    assert_eq!(reason["code"], "invalid_sidecar");
    let message = reason["message"].as_str().unwrap();
    for named in [
        "`deadlin`: unknown key",
        "`endpoint`: \"v1/chat\" must be a path",
        "`deadline`: \"tomorrow\" is neither a duration",
        "`output_expires_after`: expected a string, found integer",
        "`metadata.batchwatch_run`: keys starting with batchwatch_ are reserved",
    ] {
        assert!(message.contains(named), "lacks {named:?}: {message}");
    }
    assert!(message.starts_with("many.jsonl.toml: "), "{message}");
}

/// Only NAME.jsonl is claimed: other files dropped into incoming/ (notes, a README, a JSON
/// file, a directory) stay there untouched, each named once in the log; a sidecar whose file
/// never comes is warned about once, after a minute, and left too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_not_named_jsonl_are_left_in_incoming_and_told_once_and_so_is_a_lonely_sidecar() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    let strays = ["notes.txt", "README.md", "data.json", "settings.toml"];
    for name in strays {
        env.drop_file(name, format!("{name}\n").as_bytes());
    }
    std::fs::create_dir(env.dir("incoming").join("archive")).unwrap();
    env.drop_file("lonely.jsonl.toml", b"deadline = \"2h\"\n");
    env.drop_file("good.jsonl", ok("g").as_bytes());
    let jobs = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].file_name, "good.jsonl");
    assert_eq!(jobs[0].state, JobState::Completed);
    daemon.wait_for_line("lonely.jsonl.toml", Duration::from_secs(90));
    // Scans went on meanwhile: each entry was still told about once only.
    let log = env.stop(daemon);
    for name in strays.into_iter().chain(["archive", "lonely.jsonl.toml"]) {
        let told: Vec<&String> = log
            .iter()
            .filter(|l| l.contains(&format!("file={name}")))
            .collect();
        assert_eq!(told.len(), 1, "{name}: {told:#?}");
        assert!(told[0].contains(" WARN "), "{}", told[0]);
    }
    let lonely = log
        .iter()
        .find(|l| l.contains("lonely.jsonl.toml"))
        .unwrap();
    assert!(lonely.contains("a sidecar without its file"), "{lonely}");
    let mut left = env.names("incoming");
    left.sort();
    assert_eq!(
        left,
        [
            "README.md",
            "archive",
            "data.json",
            "lonely.jsonl.toml",
            "notes.txt",
            "settings.toml"
        ]
    );
    for name in strays {
        assert_eq!(
            std::fs::read_to_string(env.dir("incoming").join(name)).unwrap(),
            format!("{name}\n")
        );
    }
    assert!(env.names("failed").is_empty(), "{:?}", env.names("failed"));
}
