//! Notifications (`[[notify]]`) from a real daemon process: a signed webhook to a receiver
//! that verifies it with Standard Webhooks' own library, down for a while, across a kill -9
//! between a job's end and its delivery; a command with the event on its standard input; a
//! stuck batch told once per episode. The events are checked against README's schema, and
//! README's Python receiver verifies real deliveries (with `jsonschema` and `standardwebhooks`
//! from PyPI: skipped without them, unless `BATCHWATCH_REQUIRE_SDK=1`).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use batchwatch::model::JobState;
use batchwatch::store::notifications::Notification;
use batchwatch::store::prelude::*;

use crate::support::daemon::{Backend, Env, quick_sim, requests, wait_crash};
use crate::support::process::stdout_ok;
use crate::support::sim::spawn_sim;
use crate::support::{poll_until, unused_port, wait_until};

/// One POST the receiver took.
#[derive(Debug, Clone)]
struct Delivery {
    headers: BTreeMap<String, String>,
    body: String,
    /// Whether Standard Webhooks' library accepted its signature.
    verified: bool,
    /// What the receiver answered.
    answered: u16,
}

/// A receiver on `port`: verifies each POST with the `standardwebhooks` crate, records it,
/// and answers 503 to the first `refuse` of them, 204 after.
async fn receiver(port: u16, secret: &str, refuse: usize) -> Arc<Mutex<Vec<Delivery>>> {
    let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let webhook = Arc::new(standardwebhooks::Webhook::new(secret).unwrap());
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (seen, webhook) = (record.clone(), webhook.clone());
            async move {
                let verified = webhook.verify(&body, &headers).is_ok();
                let mut seen = seen.lock().unwrap();
                let answered = if seen.len() < refuse {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::NO_CONTENT
                };
                seen.push(Delivery {
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                    verified,
                    answered: answered.as_u16(),
                });
                answered
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    seen
}

/// A fresh Standard Webhooks secret, and the file (mode 0600) that holds it.
fn secret_in(dir: &Path) -> (String, std::path::PathBuf) {
    let bytes: Vec<u8> = (0..32).map(|_| fastrand::u8(..)).collect();
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    );
    let path = dir.join("webhook-secret");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (secret, path)
}

async fn notifications(env: &Env, job_id: &str) -> Vec<Notification> {
    env.store().await.notifications_of(job_id).await.unwrap()
}

async fn job_named(env: &Env, name: &str) -> Option<batchwatch::store::jobs::Job> {
    env.jobs().await.into_iter().find(|j| j.file_name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_webhook_reaches_a_receiver_that_was_down_across_a_kill_9_at_least_once() {
    let sim = spawn_sim(quick_sim()).await;
    let port = unused_port();
    let sandbox = tempfile::tempdir().unwrap();
    let (secret, secret_file) = secret_in(sandbox.path());
    let env = Env::new(
        &sim.handle.base_url(),
        &format!(
            "[[notify]]\nname = \"hook\"\non = [\"completed\", \"rejected\"]\n\
             url = \"http://127.0.0.1:{port}/hook\"\nsecret_file = {:?}\ntimeout = \"2s\"\n\
             retry_for = \"1h\"\n",
            secret_file.display().to_string()
        ),
    );

    // 1. Killed (SIGKILL, by its crash point) right after the transaction that ends the
    //    first job: its notification is written, not yet tried.
    let mut daemon = env.spawn_with(&[(batchwatch::failpoint::ENV, "finish:after-state")]);
    env.drop_file("good.jsonl", requests("g", 3, "gpt-4o-mini").as_bytes());
    let status = wait_crash(&mut daemon, Duration::from_secs(60));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let good = job_named(&env, "good.jsonl").await.unwrap();
    assert_eq!(good.state, JobState::Completed);
    let rows = notifications(&env, &good.id).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!((rows[0].state.as_str(), rows[0].attempts), ("pending", 0));
    let webhook_id = rows[0].webhook_id.clone();
    assert!(webhook_id.starts_with("msg_"), "{webhook_id}");

    // 2. Started again with the receiver down: tries fail and are recorded; then kill -9.
    let mut daemon = env.spawn();
    env.drop_file("bad.jsonl", b"this is not JSON\n");
    let tried = wait_until(
        "a failed try recorded",
        Duration::from_secs(30),
        async || {
            let rows = notifications(&env, &good.id).await;
            (rows[0].attempts >= 1, rows)
        },
    )
    .await;
    assert_eq!(tried[0].state, "pending");
    assert!(
        tried[0]
            .last_outcome
            .as_deref()
            .is_some_and(|o| o.starts_with("cannot send")),
        "{tried:#?}"
    );
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit(Duration::from_secs(10));

    // 3. The receiver is up (its first answer a 503), the daemon starts again: each event
    //    arrives, signed, under the id it was written with.
    let seen = receiver(port, &secret, 1).await;
    let mut daemon = env.spawn();
    let jobs = env
        .wait_finished(2, Duration::from_secs(30), &mut daemon)
        .await;
    let bad = jobs.iter().find(|j| j.file_name == "bad.jsonl").unwrap();
    assert_eq!(bad.state, JobState::Rejected);
    let delivered = wait_until(
        "every notification delivered",
        Duration::from_secs(60),
        async || {
            let mut rows = notifications(&env, &good.id).await;
            rows.extend(notifications(&env, &bad.id).await);
            (
                rows.len() == 2 && rows.iter().all(|r| r.state == "delivered"),
                rows,
            )
        },
    )
    .await;
    let shown = stdout_ok(Some(&env.config), &["show", &good.id]);
    let log = env.stop(daemon);

    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().all(|d| d.verified), "{seen:#?}");
    for row in &delivered {
        let tries: Vec<&Delivery> = seen
            .iter()
            .filter(|d| d.headers["webhook-id"] == row.webhook_id)
            .collect();
        assert!(!tries.is_empty(), "{row:#?} never arrived: {seen:#?}");
        assert!(tries.iter().all(|d| d.body == row.payload), "{tries:#?}");
        assert_eq!(tries.last().unwrap().answered, 204);
        assert_eq!(row.last_outcome.as_deref(), Some("HTTP 204"));
        assert!(
            seen.iter()
                .all(|d| d.headers["webhook-id"] == row.webhook_id
                    || !d.body.contains(&row.job_id)),
            "another id carried {}'s event",
            row.job_id
        );
    }
    // The good job's: written before the kill, a failed try while the receiver was down,
    // then delivery under the same id.
    let good_row = delivered.iter().find(|r| r.job_id == good.id).unwrap();
    assert_eq!(good_row.webhook_id, webhook_id);
    assert!(good_row.attempts >= 2, "{good_row:#?}");
    // The one refused (503) was sent again, the same id and body, and taken.
    assert_eq!(seen[0].answered, 503);
    assert!(
        seen[1..]
            .iter()
            .any(|d| d.headers["webhook-id"] == seen[0].headers["webhook-id"]
                && d.body == seen[0].body
                && d.answered == 204),
        "{seen:#?}"
    );

    let event: serde_json::Value = serde_json::from_str(&good_row.payload).unwrap();
    assert_eq!(event["type"], "job.completed");
    assert_eq!(event["version"], 1);
    let data = &event["data"];
    assert_eq!(data["job_id"], good.id.as_str());
    assert_eq!(data["file_name"], "good.jsonl");
    assert_eq!(data["state"], "completed");
    assert_eq!(data["provider"], "openai");
    assert_eq!(data["model"], "gpt-4o-mini");
    assert_eq!(data["request_counts"]["total"], 3);
    assert_eq!(data["retry_follows"], false);
    let results = env.dir("results").join(&good.id);
    assert_eq!(data["results_dir"], results.display().to_string());
    assert!(Path::new(data["output_file"].as_str().unwrap()).is_file());
    assert!(Path::new(data["manifest_file"].as_str().unwrap()).is_file());
    // Where the results are, never what they say.
    assert!(
        !good_row.payload.contains("custom_id"),
        "{}",
        good_row.payload
    );
    let rejected: serde_json::Value = serde_json::from_str(
        &delivered
            .iter()
            .find(|r| r.job_id == bad.id)
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(rejected["type"], "job.rejected");
    assert_eq!(rejected["data"]["state"], "rejected");
    assert!(rejected["data"]["reason_code"].is_string(), "{rejected}");

    assert!(
        shown.contains("Notifications:")
            && shown.contains("delivered")
            && shown.contains(&webhook_id),
        "{shown}"
    );
    // The secret is nowhere but its file.
    assert!(!log.iter().any(|l| l.contains(&secret)));
    for path in crate::support::daemon::walk(env.sandbox.path()) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the webhook secret is in {}",
            path.display()
        );
    }

    check_with_python(&secret, &seen);
}

/// Checks `deliveries` against README's event schema and with README's receiver example,
/// both run by Python; skipped without `jsonschema` and `standardwebhooks`, unless
/// `BATCHWATCH_REQUIRE_SDK` is set.
fn check_with_python(secret: &str, deliveries: &[Delivery]) {
    let found = std::process::Command::new("python3")
        .args(["-c", "import jsonschema, standardwebhooks"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("BATCHWATCH_REQUIRE_SDK").is_none(),
            "BATCHWATCH_REQUIRE_SDK is set, but python3 with jsonschema and standardwebhooks is not available (python3 -m pip install jsonschema standardwebhooks)"
        );
        println!(
            "skipped: the event schema and README's receiver need python3 with jsonschema and standardwebhooks (python3 -m pip install jsonschema standardwebhooks)"
        );
        return;
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = |marker: &str, lang: &str| {
        let after = &readme[readme
            .find(marker)
            .unwrap_or_else(|| panic!("README has {marker}"))..];
        let start = after.find(&format!("```{lang}\n")).unwrap() + lang.len() + 4;
        after[start..start + after[start..].find("\n```").unwrap()].to_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("schema.json"),
        block("<!-- event-schema -->", "json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("receiver.py"),
        block("<!-- receiver-example -->", "python"),
    )
    .unwrap();
    let cases: Vec<serde_json::Value> = deliveries
        .iter()
        .map(|d| serde_json::json!({"headers": d.headers, "body": d.body}))
        .collect();
    std::fs::write(
        dir.path().join("cases.json"),
        serde_json::to_vec(&cases).unwrap(),
    )
    .unwrap();
    let check = r#"
import json, sys
import jsonschema
sys.path.insert(0, sys.argv[1])
from receiver import receive
schema = json.load(open(sys.argv[1] + "/schema.json"))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
for case in json.load(open(sys.argv[1] + "/cases.json")):
    event = receive(sys.argv[2], case["headers"], case["body"].encode())
    validator.validate(event)
    try:
        receive(sys.argv[2], case["headers"], case["body"].encode() + b" ")
    except Exception:
        pass
    else:
        sys.exit("a changed body was accepted")
print("checked", len(json.load(open(sys.argv[1] + "/cases.json"))))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", check, dir.path().to_str().unwrap(), secret])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("checked {}", deliveries.len())
    );
}

/// A shell script at `path` (its own program; the daemon runs no shell).
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_gets_the_event_on_stdin_and_its_environment_and_a_failing_one_is_given_up() {
    command_target(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_gets_the_event_on_stdin_and_its_environment_and_a_failing_one_is_given_up_on_postgres()
 {
    command_target(Backend::Postgres).await;
}

async fn command_target(backend: Backend) {
    let sim = spawn_sim(quick_sim()).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path();
    let hook = out.join("on-batch-done");
    script(
        &hook,
        &format!(
            "cat > {dir}/stdin.json\nenv | grep ^BATCHWATCH_ | sort > {dir}/env.txt\n\
             printf '%s\\n' \"$@\" > {dir}/args.txt\necho hello from the hook\n\
             printf 'line one\\nline two' >&2\nexit 0",
            dir = out.display()
        ),
    );
    let failing = out.join("fails");
    script(&failing, "cat >/dev/null\nexit 3");
    let Some(env) = Env::on(
        backend,
        &sim.handle.base_url(),
        &format!(
            "[[notify]]\nname = \"archive\"\non = [\"completed\"]\ncommand = [{:?}, \"--flag\", \"two words\"]\n\
             [[notify]]\nname = \"broken\"\non = [\"completed\"]\ncommand = [{:?}]\nretry_for = \"2s\"\n",
            hook.display().to_string(),
            failing.display().to_string()
        ),
    )
    .await
    else {
        return;
    };
    let mut daemon = env.spawn();
    env.drop_file("cmd.jsonl", requests("c", 2, "gpt-4o-mini").as_bytes());
    let job = env
        .wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await
        .remove(0);
    let rows = wait_until(
        "both notifications settled",
        Duration::from_secs(30),
        async || {
            let rows = notifications(&env, &job.id).await;
            (
                rows.len() == 2 && rows.iter().all(|r| r.state != "pending"),
                rows,
            )
        },
    )
    .await;
    let log = env.stop(daemon);

    let archive = rows.iter().find(|r| r.target == "archive").unwrap();
    assert_eq!(
        (
            archive.state.as_str(),
            archive.attempts,
            archive.last_outcome.as_deref()
        ),
        ("delivered", 1, Some("exit status 0"))
    );
    assert_eq!(
        std::fs::read_to_string(out.join("stdin.json")).unwrap(),
        archive.payload
    );
    let vars = std::fs::read_to_string(out.join("env.txt")).unwrap();
    let results = env.dir("results").join(&job.id);
    for expected in [
        "BATCHWATCH_EVENT=completed".to_owned(),
        format!("BATCHWATCH_JOB_ID={}", job.id),
        format!("BATCHWATCH_RESULTS_DIR={}", results.display()),
        "BATCHWATCH_STATE=completed".to_owned(),
        format!("BATCHWATCH_WEBHOOK_ID={}", archive.webhook_id),
    ] {
        assert!(
            vars.lines().any(|l| l == expected),
            "{expected} not in\n{vars}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join("args.txt")).unwrap(),
        "--flag\ntwo words\n"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("notify command output") && l.contains("hello from the hook")),
        "{log:#?}"
    );
    // Its standard error, escaped: one log line, not a forged second one.
    assert!(
        log.iter().any(|l| l.contains(r"line one\nline two")),
        "{log:#?}"
    );

    let broken = rows.iter().find(|r| r.target == "broken").unwrap();
    assert_eq!(broken.state, "abandoned");
    assert_eq!(broken.last_outcome.as_deref(), Some("exit status 3"));
    assert!(
        log.iter()
            .any(|l| l.contains("gave up a notification") && l.contains("broken")),
        "{log:#?}"
    );
    let events: Vec<String> = env
        .store()
        .await
        .job_events(&job.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(
        events
            .iter()
            .any(|m| m == "notified archive of completed (exit status 0)"),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|m| m.starts_with("gave up notifying broken of completed")),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_batch_is_told_once_per_episode_across_a_restart() {
    let mut config = quick_sim();
    config.faults.stuck_finalizing = 1.0;
    let sim = spawn_sim(config).await;
    let work = tempfile::tempdir().unwrap();
    let hook = work.path().join("on-stuck");
    let calls = work.path().join("calls");
    script(
        &hook,
        &format!("cat >> {}\necho >> {}", calls.display(), calls.display()),
    );
    let env = Env::new(
        &sim.handle.base_url(),
        &format!(
            "[alerts.stuck_after]\nfinalizing = \"1s\"\n\
             [[notify]]\nname = \"pager\"\non = [\"stuck\"]\ncommand = [{:?}]\n",
            hook.display().to_string()
        ),
    );
    let daemon = env.spawn();
    env.drop_file("stuck.jsonl", requests("s", 2, "gpt-4o-mini").as_bytes());
    let job = wait_until("a job", Duration::from_secs(20), async || {
        let jobs = env.jobs().await;
        (!jobs.is_empty(), jobs)
    })
    .await
    .remove(0);
    let told = wait_until(
        "the stuck batch told",
        Duration::from_secs(30),
        async || {
            let rows = notifications(&env, &job.id).await;
            (rows.iter().any(|r| r.state == "delivered"), rows)
        },
    )
    .await;
    env.stop(daemon);
    // A restart sees the same batch stuck in the same status since the same time: the same
    // episode, not told again.
    let daemon = env.spawn();
    let waited = poll_until(Duration::from_secs(5), async || {
        let rows = notifications(&env, &job.id).await;
        (rows.len() > 1, rows)
    })
    .await;
    env.stop(daemon);
    let rows = waited.unwrap_err();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].webhook_id, told[0].webhook_id);
    assert_eq!(rows[0].event, "stuck");
    let calls = std::fs::read_to_string(&calls).unwrap();
    let event: serde_json::Value = serde_json::from_str(calls.lines().next().unwrap()).unwrap();
    assert_eq!(event["type"], "job.stuck");
    assert_eq!(event["data"]["stuck"]["status"], "finalizing");
    assert_eq!(event["data"]["stuck"]["limit"], "1s");
    assert_eq!(calls.lines().count(), 1, "told once: {calls}");
}

/// Each `[[notify]]` entry is delivered by a task of its own: an entry whose receiver hangs
/// (a command that sleeps past its 60 s timeout) holds up none of another entry's deliveries,
/// the second job's included, which a single delivery task would keep waiting for the hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entry_whose_receiver_hangs_delays_no_other_entrys_deliveries() {
    let sim = spawn_sim(quick_sim()).await;
    let work = tempfile::tempdir().unwrap();
    let hang = work.path().join("hangs");
    script(&hang, "cat >/dev/null\nexec sleep 300");
    let log = work.path().join("log");
    let logger = work.path().join("logs");
    script(
        &logger,
        &format!(
            "cat >/dev/null\necho \"$BATCHWATCH_JOB_ID\" >> {}",
            log.display()
        ),
    );
    let env = Env::new(
        &sim.handle.base_url(),
        &format!(
            "[[notify]]\nname = \"hangs\"\non = [\"completed\"]\ncommand = [{:?}]\ntimeout = \"60s\"\n\
             [[notify]]\nname = \"logs\"\non = [\"completed\"]\ncommand = [{:?}]\n",
            hang.display().to_string(),
            logger.display().to_string()
        ),
    );
    let mut daemon = env.spawn();
    let started = std::time::Instant::now();
    for (n, name) in ["first.jsonl", "second.jsonl"].into_iter().enumerate() {
        env.drop_file(name, requests("h", 2, "gpt-4o-mini").as_bytes());
        let job = env
            .wait_finished(n + 1, Duration::from_secs(30), &mut daemon)
            .await
            .into_iter()
            .find(|j| j.file_name == name)
            .unwrap();
        let rows = wait_until(
            "the logging entry told of the job",
            Duration::from_secs(20),
            async || {
                let rows = notifications(&env, &job.id).await;
                let logged = rows
                    .iter()
                    .any(|r| r.target == "logs" && r.state == "delivered");
                (logged, rows)
            },
        )
        .await;
        let hung = rows.iter().find(|r| r.target == "hangs").unwrap();
        assert_eq!(
            (hung.state.as_str(), hung.attempts),
            ("pending", 0),
            "the hanging entry's first try is still under way"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "both jobs were told before the hang's timeout: {:?}",
        started.elapsed()
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged.lines().count(), 2, "{logged}");
    env.stop(daemon);
}
