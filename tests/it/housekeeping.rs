//! Months unattended: files deleted from the service once a job is done with them (and
//! `gc-remote` for what is left), local retention, live reload and key rotation, and the
//! requests a batch left undone sent again.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use batchwatch::api::CreateBatchRequest;
use batchwatch::model::JobState;
use batchwatch::sim::{FaultKind, ScriptedFault, SimConfig};
use batchwatch::store::prelude::*;
use batchwatch_store_sqlite::deletions;
use batchwatch_store_sqlite::jobs::Job;

use crate::support::KEY;
use crate::support::daemon::{Env, custom_ids, quick_sim, requests, settled, slow_sim, wait_crash};
use crate::support::process::command;
use crate::support::sim::spawn_sim;
use crate::support::wait_until;

const DELETE_ROUTE: &str = "DELETE /v1/files/{file_id}";

/// Every deletion the database records.
async fn deletions_of(env: &Env) -> Vec<deletions::Deletion> {
    let store = env.store().await;
    let mut all = Vec::new();
    for job in env.jobs().await {
        all.extend(store.deletions_of(&job.id).await.unwrap());
    }
    store.close().await;
    all
}

async fn deletes_sent(sim: &crate::support::sim::TestSim) -> u64 {
    sim.handle
        .counts()
        .await
        .requests
        .get(DELETE_ROUTE)
        .copied()
        .unwrap_or(0)
}

async fn wait_no_files(sim: &crate::support::sim::TestSim, what: &str) {
    wait_until(what, Duration::from_secs(60), async || {
        let files = sim.handle.files().await;
        (files.is_empty(), files)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_fifty_jobs_the_service_holds_none_of_their_files() {
    let sim = spawn_sim(SimConfig {
        faults: batchwatch::sim::Faults {
            request_failure_rate: 0.2,
            ..Default::default()
        },
        ..quick_sim()
    })
    .await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    for i in 0..50 {
        env.drop_file(
            &format!("f{i:02}.jsonl"),
            requests(&format!("f{i}"), 4, "gpt-4o-mini").as_bytes(),
        );
    }
    let jobs = env
        .wait_finished(50, Duration::from_secs(120), &mut daemon)
        .await;
    assert!(jobs.iter().all(|j| j.state == JobState::Completed));
    wait_no_files(&sim, "every file deleted from the service").await;
    let rows = deletions_of(&env).await;
    // An input and an output file per job, and an error file for those with failed requests.
    assert!(rows.len() >= 100, "{} deletions", rows.len());
    assert!(rows.iter().any(|r| r.kind == "errors"), "error files too");
    assert!(
        rows.iter().all(|r| r.state == "deleted"),
        "{:?}",
        rows.iter().find(|r| r.state != "deleted")
    );
    assert_eq!(
        deletes_sent(&sim).await,
        rows.len() as u64,
        "one DELETE per file"
    );
    let shown =
        crate::support::process::stdout_ok(Some(&env.config), &["show", &jobs[0].id, "--json"]);
    assert!(shown.contains("deleted its input file"), "{shown}");
    env.stop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_between_a_deletion_intent_and_its_request_loses_nothing_and_deletes_nothing_twice()
{
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn_with(&[(batchwatch::failpoint::ENV, "cleanup:before-delete")]);
    for i in 0..3 {
        env.drop_file(
            &format!("k{i}.jsonl"),
            requests(&format!("k{i}"), 3, "gpt-4o-mini").as_bytes(),
        );
    }
    let status = wait_crash(&mut daemon, Duration::from_secs(60));
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    drop(daemon);
    assert_eq!(
        deletes_sent(&sim).await,
        0,
        "killed before the first DELETE"
    );
    assert!(
        !deletions_of(&env).await.is_empty(),
        "the intents were recorded before the kill"
    );
    let mut daemon = env.spawn();
    env.wait_finished(3, Duration::from_secs(60), &mut daemon)
        .await;
    wait_no_files(&sim, "every file deleted after the restart").await;
    let rows = deletions_of(&env).await;
    assert_eq!(rows.len(), 6, "an input and an output file for each job");
    assert!(rows.iter().all(|r| r.state == "deleted"), "{rows:#?}");
    assert_eq!(deletes_sent(&sim).await, 6, "each file deleted once");
    env.stop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_or_already_gone_deletion_never_fails_its_job() {
    let sim = spawn_sim(quick_sim()).await;
    // Each DELETE is tried three times by the client (api.retry_attempts): the first two
    // deletions fail for good, twice, before the service answers again; then one 404.
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::Status {
                status: 500.try_into().unwrap(),
            })
            .on("DELETE", "/v1/files/{file_id}")
            .times(12),
        )
        .await;
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::Status {
                status: 404.try_into().unwrap(),
            })
            .on("DELETE", "/v1/files/{file_id}")
            .times(1),
        )
        .await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file("d.jsonl", requests("d", 3, "gpt-4o-mini").as_bytes());
    let jobs = env
        .wait_finished(1, Duration::from_secs(60), &mut daemon)
        .await;
    assert_eq!(jobs[0].state, JobState::Completed);
    let rows = wait_until(
        "both deletions settled",
        Duration::from_secs(60),
        async || {
            let rows = deletions_of(&env).await;
            (rows.iter().all(|r| r.state != "pending"), rows)
        },
    )
    .await;
    assert!(rows.iter().any(|r| r.failures > 0), "{rows:#?}");
    assert!(rows.iter().any(|r| r.state == "gone"), "{rows:#?}");
    let job = env.jobs().await.remove(0);
    assert_eq!(job.state, JobState::Completed, "still completed");
    let shown = crate::support::process::stdout_ok(Some(&env.config), &["show", &job.id, "--json"]);
    assert!(shown.contains("could not delete its"), "{shown}");
    assert!(
        shown.contains("was already gone from the service"),
        "{shown}"
    );
    env.stop(daemon);
}

/// `gc-remote` as an operator runs it, with the daemon's key.
fn gc_remote(env: &Env, args: &[&str]) -> String {
    let out = command(Some(&env.config))
        .arg("gc-remote")
        .args(args)
        .env("OPENAI_API_KEY", KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gc-remote {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_remote_deletes_what_finished_jobs_left_and_never_a_live_or_foreign_file() {
    // The simulated clock a day behind, so every file is older than --older-than 1h.
    let start = jiff::Timestamp::now().as_second() - 86_400;
    let sim = spawn_sim(SimConfig {
        start_time: Some(start),
        foreign_batches: 2,
        ..slow_sim(600.0)
    })
    .await;
    let env = Env::new(&sim.handle.base_url(), "[cleanup]\nremote_files = false\n");
    let daemon = env.spawn();
    env.drop_file("live.jsonl", requests("live", 2, "gpt-4o-mini").as_bytes());
    wait_until(
        "the live batch exists",
        Duration::from_secs(30),
        async || {
            let jobs = env.jobs().await;
            (jobs.iter().any(|j| j.state == JobState::Running), jobs)
        },
    )
    .await;
    // Two finished jobs: their batches are stepped to the end by hand.
    env.drop_file("a.jsonl", requests("a", 2, "gpt-4o-mini").as_bytes());
    env.drop_file("b.jsonl", requests("b", 2, "gpt-4o-mini").as_bytes());
    let live_job = env
        .jobs()
        .await
        .into_iter()
        .find(|j| j.file_name == "live.jsonl")
        .unwrap();
    end_batches_by_hand(&sim, &live_job.id, 2).await;
    wait_until("two jobs finished", Duration::from_secs(60), async || {
        let jobs = env.jobs().await;
        let n = jobs.iter().filter(|j| j.state.is_terminal()).count();
        (n == 2, jobs)
    })
    .await;
    // Another tool's upload that is not a batch's at all.
    let other = env.sandbox.path().join("other.jsonl");
    std::fs::write(&other, requests("other", 1, "gpt-4o-mini")).unwrap();
    crate::support::client::api_client(&sim.handle.base_url())
        .upload_file(
            &other,
            0..std::fs::metadata(&other).unwrap().len(),
            "other.jsonl",
        )
        .await
        .unwrap();
    // A batch of someone else's that claims a finished job in its metadata: its files are
    // not batchwatch's, whatever the metadata says.
    let finished = env
        .jobs()
        .await
        .into_iter()
        .find(|j| j.state.is_terminal())
        .unwrap();
    let client = crate::support::client::api_client(&sim.handle.base_url());
    let evil = env.sandbox.path().join("evil.jsonl");
    std::fs::write(&evil, requests("evil", 1, "gpt-4o-mini")).unwrap();
    let evil_input = client
        .upload_file(
            &evil,
            0..std::fs::metadata(&evil).unwrap().len(),
            "evil.jsonl",
        )
        .await
        .unwrap();
    let forged = client
        .create_batch(&CreateBatchRequest {
            input_file_id: evil_input.id.clone(),
            endpoint: "/v1/chat/completions".into(),
            completion_window: "24h".into(),
            metadata: Some(BTreeMap::from([(
                "batchwatch_job_id".to_owned(),
                finished.id.clone(),
            )])),
            output_expires_after: None,
        })
        .await
        .unwrap();
    wait_until(
        "the forged batch runs",
        Duration::from_secs(30),
        async || {
            let b = client.retrieve_batch(&forged.id).await.unwrap();
            (b.status.as_str() == "in_progress", b.status)
        },
    )
    .await;
    for _ in 0..2 {
        sim.handle
            .step(batchwatch::sim::Step::Ids {
                ids: vec![forged.id.clone()],
            })
            .await
            .unwrap();
    }
    let forged = client.retrieve_batch(&forged.id).await.unwrap();
    assert_eq!(forged.status.as_str(), "completed");
    let forged_output = forged.output_id.clone().expect("an output file");
    let before = sim.handle.files().await;

    let listed = gc_remote(&env, &["--older-than", "1h"]);
    assert!(listed.contains("would delete"), "{listed}");
    assert_eq!(
        sim.handle.files().await,
        before,
        "a dry run deletes nothing"
    );
    assert_eq!(deletes_sent(&sim).await, 0);

    let out = gc_remote(&env, &["--older-than", "1h", "--delete"]);
    let after = sim.handle.files().await;
    let gone: Vec<_> = before.iter().filter(|f| !after.contains(f)).collect();
    // The two finished jobs' inputs and outputs.
    assert_eq!(gone.len(), 4, "{out}\n{gone:#?}");
    let store = env.store().await;
    let known = store.known_files().await.unwrap();
    store.close().await;
    for f in &gone {
        let k = known
            .iter()
            .find(|k| k.file_id == f.id)
            .expect("a file of ours");
        assert!(k.job_terminal, "{f:?}");
    }
    // Kept: the live job's input, the other tool's input, outputs and upload.
    let live_input = known
        .iter()
        .find(|k| k.job_id == live_job.id && k.kind == "input")
        .unwrap();
    assert!(after.iter().any(|f| f.id == live_input.file_id), "{out}");
    assert!(after.iter().any(|f| f.filename == "other.jsonl"), "{out}");
    for id in [&evil_input.id, &forged_output] {
        assert!(
            after.iter().any(|f| &f.id == id),
            "the forged batch's file {id} was deleted: {out}"
        );
    }
    assert!(
        after
            .iter()
            .filter(|f| !known.iter().any(|k| k.file_id == f.id))
            .count()
            >= 2,
        "the other tool's files are all kept: {after:#?}"
    );
    let again = gc_remote(&env, &["--older-than", "1h"]);
    assert!(!again.contains("would delete"), "{again}");
    env.stop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_remote_keeps_a_finished_jobs_input_while_another_batch_runs_on_it() {
    // The simulated clock a day behind, so every file is older than --older-than 1h.
    let start = jiff::Timestamp::now().as_second() - 86_400;
    let sim = spawn_sim(SimConfig {
        start_time: Some(start),
        ..slow_sim(600.0)
    })
    .await;
    let env = Env::new(&sim.handle.base_url(), "[cleanup]\nremote_files = false\n");
    let daemon = env.spawn();
    env.drop_file("a.jsonl", requests("a", 2, "gpt-4o-mini").as_bytes());
    end_batches_by_hand(&sim, "", 1).await;
    let job = wait_until("the job finished", Duration::from_secs(60), async || {
        let jobs = env.jobs().await;
        let done = jobs.into_iter().find(|j| j.state.is_terminal());
        (done.is_some(), done)
    })
    .await
    .unwrap();
    let store = env.store().await;
    let known = store.known_files().await.unwrap();
    store.close().await;
    let input = known
        .iter()
        .find(|k| k.job_id == job.id && k.kind == "input")
        .expect("the job's input file")
        .file_id
        .clone();
    // A manual re-run: another client creates a batch on the same upload; it is listed
    // before the finished one (newest first).
    let client = crate::support::client::api_client(&sim.handle.base_url());
    let rerun = crate::support::client::create_foreign_batch(&client, &input).await;
    assert!(!rerun.status.is_terminal());

    let out = gc_remote(&env, &["--older-than", "1h", "--delete", "--json"]);
    let files = sim.handle.files().await;
    assert!(
        files.iter().any(|f| f.id == input),
        "the input of a running batch was deleted: {out}"
    );
    let found: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let kept = found
        .iter()
        .find(|f| f["file_id"] == input.as_str())
        .unwrap();
    assert_eq!(kept["delete"], false, "{kept}");
    assert!(
        kept["why"].as_str().unwrap().contains(&rerun.id),
        "the reason names the running batch: {kept}"
    );
    // The finished batch's output, used by nothing running, went.
    let output = known
        .iter()
        .find(|k| k.job_id == job.id && k.kind == "output")
        .expect("the job's output file");
    assert!(!files.iter().any(|f| f.id == output.file_id), "{out}");
    env.stop(daemon);
}

/// A service whose clock runs three hours ahead of this host's: its files are "created" in
/// the future. gc-remote keeps such a file and says so, and by how much, rather than calling
/// it "younger than 0s".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_remote_against_a_service_clock_ahead_says_the_file_is_from_the_future_and_by_how_much()
{
    // Three hours and two minutes ahead: about 3h 2m when gc-remote looks, whatever it took.
    let ahead = jiff::Timestamp::now().as_second() + 3 * 3600 + 120;
    let sim = spawn_sim(SimConfig {
        time_scale: 0.0,
        start_time: Some(ahead),
        ..SimConfig::default()
    })
    .await;
    let env = Env::new(&sim.handle.base_url(), "");
    let migrated = command(Some(&env.config)).arg("migrate").output().unwrap();
    assert!(migrated.status.success(), "{migrated:?}");
    // An upload under batchwatch's name, of a job this database does not hold (a restored
    // backup): deletable once old enough.
    let job = batchwatch::model::JobId::generate(1_800_000_000_000).to_string();
    let name = batchwatch::api::testing::upload_file_name(&job, 0, 1, "x.jsonl");
    let path = env.sandbox.path().join("x.jsonl");
    std::fs::write(&path, requests("x", 1, "gpt-4o-mini")).unwrap();
    let file = crate::support::client::api_client(&sim.handle.base_url())
        .upload_file(&path, 0..std::fs::metadata(&path).unwrap().len(), &name)
        .await
        .unwrap();

    let out = gc_remote(&env, &["--older-than", "0s", "--json"]);
    let found: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let row = found
        .iter()
        .find(|f| f["file_id"] == file.id.as_str())
        .unwrap();
    assert_eq!(row["delete"], false, "{row}");
    let why = row["why"].as_str().unwrap();
    assert!(
        why.contains("the file's creation time is 3h ")
            && why.contains("m in the future")
            && why.contains("the service's clock runs ahead"),
        "{why}"
    );
    assert!(!why.contains("younger than 0s"), "{why}");
}

/// Sets `extra` TOML over the daemon's configuration file, as an operator edits it.
fn edit_config(env: &Env, extra: &str) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    let mut table: toml::Table = text.parse().unwrap();
    for (section, values) in extra.parse::<toml::Table>().unwrap() {
        let toml::Value::Table(values) = values else {
            panic!("sections only")
        };
        let entry = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(Default::default()));
        entry.as_table_mut().unwrap().extend(values);
    }
    std::fs::write(&env.config, toml::to_string(&table).unwrap()).unwrap();
}

/// A key file only its owner may read.
fn write_key(path: &std::path::Path, key: &str) {
    use std::os::unix::fs::PermissionsExt;
    let temp = path.with_extension("new");
    std::fs::write(&temp, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

const KEY_A: &str = "sk-rotation-first-0a1b2c3d";
const KEY_B: &str = "sk-rotation-second-4e5f6a7b";

async fn retrieves(sim: &crate::support::sim::TestSim) -> u64 {
    sim.handle
        .counts()
        .await
        .requests
        .get("GET /v1/batches/{batch_id}")
        .copied()
        .unwrap_or(0)
}

/// A daemon reading its key from a file the simulator accepts, batches that stay in progress.
async fn rotation_setup(extra: &str) -> (crate::support::sim::TestSim, Env, std::path::PathBuf) {
    let sim = spawn_sim(slow_sim(600.0)).await;
    sim.handle.set_api_key(Some(KEY_A)).await;
    let env = Env::new(&sim.handle.base_url(), extra);
    let key_file = env.sandbox.path().join("api-key");
    write_key(&key_file, KEY_A);
    edit_config(
        &env,
        &format!("[api]\nkey_file = {:?}\n", key_file.display().to_string()),
    );
    (sim, env, key_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_applies_a_new_poll_interval_and_a_rotated_key_without_a_restart() {
    let (sim, env, key_file) = rotation_setup(
        "[poll]\nmin_interval = \"30s\"\nmax_interval = \"30s\"\n[backoff]\nauth_retry = \"1h\"\n",
    )
    .await;
    let mut daemon = env.spawn();
    env.drop_file("one.jsonl", requests("one", 2, "gpt-4o-mini").as_bytes());
    wait_until(
        "the batch polled once",
        Duration::from_secs(30),
        async || {
            let jobs = env.jobs().await;
            (jobs.iter().any(|j| j.state == JobState::Running), jobs)
        },
    )
    .await;
    let before = retrieves(&sim).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        retrieves(&sim).await <= before + 1,
        "polled every 30 s before the reload"
    );

    // The operator rotates the key (the service takes only the new one from now on) and
    // shortens the poll interval, then reloads.
    sim.handle.set_api_key(Some(KEY_B)).await;
    write_key(&key_file, KEY_B);
    edit_config(
        &env,
        "[poll]\nmin_interval = \"100ms\"\nmax_interval = \"100ms\"\n",
    );
    let pid = daemon.child.id();
    daemon.signal(libc::SIGHUP);
    let line = daemon.wait_for_line("configuration reloaded", Duration::from_secs(10));
    assert!(line.contains("poll.max_interval"), "{line}");
    let at = retrieves(&sim).await;
    wait_until("polls every 100 ms", Duration::from_secs(10), async || {
        let n = retrieves(&sim).await;
        (n >= at + 10, n)
    })
    .await;
    // The new key works: a new file goes all the way to a batch.
    env.drop_file("two.jsonl", requests("two", 2, "gpt-4o-mini").as_bytes());
    wait_until(
        "the second batch runs",
        Duration::from_secs(30),
        async || {
            let jobs = env.jobs().await;
            let n = jobs.iter().filter(|j| j.state == JobState::Running).count();
            (n == 2, jobs)
        },
    )
    .await;
    assert_eq!(daemon.child.id(), pid, "no restart");
    assert!(daemon.child.try_wait().unwrap().is_none(), "still running");
    daemon.drain();
    assert!(
        !daemon
            .seen
            .iter()
            .any(|l| l.contains("THE API REFUSED THE KEY")),
        "the new key was in use from the reload on"
    );
    for key in [KEY_A, KEY_B] {
        assert!(
            !daemon.seen.iter().any(|l| l.contains(key)),
            "a key was logged"
        );
    }
    env.stop(daemon);
}

/// A reload after which only the key differs (rotated in its file, the configuration
/// untouched) names the key as what changed, never its value; a reload that changed nothing
/// says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_that_changed_only_the_key_names_it_without_showing_it() {
    let (sim, env, key_file) = rotation_setup("").await;
    let mut daemon = env.spawn();
    daemon.signal(libc::SIGHUP);
    let unchanged = daemon.wait_for_line("configuration reloaded", Duration::from_secs(10));
    assert!(unchanged.contains("changed=\"nothing\""), "{unchanged}");

    sim.handle.set_api_key(Some(KEY_B)).await;
    write_key(&key_file, KEY_B);
    // Set aside, so that the next wait finds the next reload's line.
    let earlier = std::mem::take(&mut daemon.seen);
    daemon.signal(libc::SIGHUP);
    let line = daemon.wait_for_line("configuration reloaded", Duration::from_secs(10));
    assert!(line.contains("changed=\"the API key\""), "{line}");
    daemon.drain();
    for key in [KEY_A, KEY_B] {
        assert!(
            !earlier.iter().chain(&daemon.seen).any(|l| l.contains(key)),
            "a key was logged"
        );
    }
    env.stop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_key_is_read_again_from_its_file_before_the_daemon_waits() {
    let (sim, env, key_file) = rotation_setup("[backoff]\nauth_retry = \"1h\"\n").await;
    let mut daemon = env.spawn();
    // Rotated without a reload: the next request is refused, the file is read again at once.
    sim.handle.set_api_key(Some(KEY_B)).await;
    write_key(&key_file, KEY_B);
    env.drop_file("r.jsonl", requests("r", 2, "gpt-4o-mini").as_bytes());
    wait_until(
        "the job runs with the new key, well before backoff.auth_retry (1h)",
        Duration::from_secs(30),
        async || {
            let jobs = env.jobs().await;
            (jobs.iter().any(|j| j.state == JobState::Running), jobs)
        },
    )
    .await;
    daemon.wait_for_line("the API key changed at its source", Duration::from_secs(5));
    env.stop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalid_configuration_is_refused_whole_and_restart_only_keys_keep_their_values() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    let good = std::fs::read_to_string(&env.config).unwrap();

    std::fs::write(&env.config, "[poll]\nmax_interval = \"soon\"\n").unwrap();
    daemon.signal(libc::SIGHUP);
    let line = daemon.wait_for_line("was not reloaded", Duration::from_secs(10));
    assert!(line.contains("poll.max_interval"), "{line}");
    env.drop_file("a.jsonl", requests("a", 2, "gpt-4o-mini").as_bytes());
    env.wait_finished(1, Duration::from_secs(60), &mut daemon)
        .await;

    std::fs::write(&env.config, good).unwrap();
    let elsewhere = env.sandbox.path().join("elsewhere");
    edit_config(
        &env,
        &format!(
            "[queue]\ndir = {:?}\n[poll]\nmax_interval = \"150ms\"\n",
            elsewhere.display().to_string()
        ),
    );
    daemon.signal(libc::SIGHUP);
    let kept = daemon.wait_for_line("take effect only at a restart", Duration::from_secs(10));
    assert!(kept.contains("queue.dir"), "{kept}");
    let applied = daemon.wait_for_line("configuration reloaded", Duration::from_secs(10));
    assert!(applied.contains("poll.max_interval"), "{applied}");
    assert!(!applied.contains("queue.dir"), "{applied}");
    // Still on the old queue.
    env.drop_file("b.jsonl", requests("b", 2, "gpt-4o-mini").as_bytes());
    let jobs = env
        .wait_finished(2, Duration::from_secs(60), &mut daemon)
        .await;
    assert!(jobs.iter().all(|j| j.state == JobState::Completed));
    assert!(!elsewhere.exists());
    env.stop(daemon);
}

/// Waits until `n` batches of jobs other than `except` are in progress, then ends them.
async fn end_batches_by_hand(sim: &crate::support::sim::TestSim, except: &str, n: usize) {
    let ids = wait_until("batches in progress", Duration::from_secs(60), async || {
        let stats = sim.handle.stats().await;
        let ours: Vec<String> = stats
            .batches
            .iter()
            .filter(|b| {
                b.job_id.is_some()
                    && b.job_id.as_deref() != Some(except)
                    && b.status == "in_progress"
            })
            .map(|b| b.id.clone())
            .collect();
        (ours.len() == n, ours)
    })
    .await;
    for _ in 0..2 {
        sim.handle
            .step(batchwatch::sim::Step::Ids { ids: ids.clone() })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_removes_old_finished_jobs_files_and_rows_and_the_database_shrinks() {
    let sim = spawn_sim(slow_sim(600.0)).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let daemon = env.spawn();
    env.drop_file("live.jsonl", requests("live", 2, "gpt-4o-mini").as_bytes());
    let live = wait_until("the live job runs", Duration::from_secs(30), async || {
        let jobs = env.jobs().await;
        let live = jobs.iter().find(|j| j.state == JobState::Running).cloned();
        (live.is_some(), live)
    })
    .await
    .unwrap();
    for i in 0..30 {
        env.drop_file(
            &format!("old{i:02}.jsonl"),
            requests(&format!("old{i}"), 5, "gpt-4o-mini").as_bytes(),
        );
    }
    env.drop_file("bad.jsonl", b"{not json\n");
    end_batches_by_hand(&sim, &live.id, 30).await;
    wait_until("31 jobs finished", Duration::from_secs(60), async || {
        let jobs = env.jobs().await;
        let n = jobs
            .iter()
            .filter(|j| j.state.is_terminal() && !j.path.starts_with("processing/"))
            .count();
        (n == 31, jobs.len())
    })
    .await;
    // Rows wait for their remote deletions (none pending here once they are done).
    wait_until(
        "remote deletions done",
        Duration::from_secs(30),
        async || {
            let store = env.store().await;
            let n = store.pending_deletions().await.unwrap();
            store.close().await;
            (n == 0, n)
        },
    )
    .await;
    env.stop(daemon);
    assert_eq!(env.names("done").len(), 30);
    assert!(env.names("failed").contains(&"bad.jsonl".to_owned()));
    let db_before = std::fs::metadata(&env.db).unwrap().len();

    edit_config(
        &env,
        "[retention]\ndone = \"1s\"\nfailed = \"1s\"\nresults = \"1s\"\nhistory = \"1s\"\n",
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let dry =
        crate::support::process::stdout_ok(Some(&env.config), &["prune", "--dry-run", "--json"]);
    let dry: serde_json::Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(
        (
            &dry["done_files"],
            &dry["failed_files"],
            &dry["results_dirs"],
            &dry["jobs"]
        ),
        (&30.into(), &1.into(), &30.into(), &31.into()),
        "{dry}"
    );
    assert_eq!(env.names("done").len(), 30, "a dry run removes nothing");
    assert_eq!(env.jobs().await.len(), 32);

    // The daemon applies retention at its start (and daily).
    let mut daemon = env.spawn();
    daemon.wait_for_line("retention applied", Duration::from_secs(30));
    let jobs = env.jobs().await;
    assert_eq!(jobs.len(), 1, "only the unfinished job's rows are left");
    assert_eq!(jobs[0].id, live.id);
    assert_eq!(jobs[0].state, JobState::Running);
    assert!(
        env.queue.join(&jobs[0].path).is_file(),
        "its file is untouched"
    );
    assert!(env.names("done").is_empty(), "{:?}", env.names("done"));
    assert!(env.names("failed").is_empty(), "{:?}", env.names("failed"));
    assert!(
        env.names("results").iter().all(|d| d == &live.id),
        "{:?}",
        env.names("results")
    );
    let store = env.sqlite().await;
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM status_history")
        .fetch_one(store.reader())
        .await
        .unwrap();
    let own: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM status_history h JOIN batches b ON b.id = h.batch_id WHERE b.job_id = ?",
    )
    .bind(&live.id)
    .fetch_one(store.reader())
    .await
    .unwrap();
    store.close().await;
    assert_eq!(history, own, "only the live job's history is left");
    assert!(own > 0);
    env.stop(daemon);
    let db_after = std::fs::metadata(&env.db).unwrap().len();
    assert!(
        db_after < db_before,
        "the database gave the space back: {db_before} -> {db_after} bytes"
    );
}

/// The custom_ids with a 2xx response in a job's merged output.
fn succeeded(env: &Env, job: &Job) -> Vec<String> {
    let dir = env.queue.join(job.results_dir.as_deref().expect("results"));
    std::fs::read_to_string(dir.join("output.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["response"]["status_code"] == 200)
        .map(|v| v["custom_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Moves the stopped simulated clock until `batch` reaches `status`.
async fn advance_until(sim: &crate::support::sim::TestSim, batch: &str, status: &str, secs: f64) {
    wait_until(status, Duration::from_secs(30), async || {
        sim.handle.advance(secs).await;
        let stats = sim.handle.stats().await;
        let now = stats
            .batches
            .iter()
            .find(|b| b.id == batch)
            .map(|b| b.status.clone());
        (now.as_deref() == Some(status), now)
    })
    .await;
}

/// A simulator whose clock stands still until a test moves it. A request takes 90 s and a
/// batch's window is 500 s: 10 requests take 900 s, past the window, so about five are done
/// when it expires; five or fewer complete.
fn stopped_clock_sim() -> SimConfig {
    SimConfig {
        time_scale: 0.0,
        start_time: Some(jiff::Timestamp::now().as_second()),
        seed: Some(11),
        validating_secs: 5.0,
        in_progress_secs: 0.0,
        request_secs: 90.0,
        finalizing_secs: 5.0,
        completion_window_secs: 500.0,
        ..SimConfig::default()
    }
}

/// Moves the stopped clock until `batch` ends; returns its status then.
async fn run_to_end(sim: &crate::support::sim::TestSim, batch: &str) -> String {
    advance_until(sim, batch, "in_progress", 5.0).await;
    wait_until("the batch ended", Duration::from_secs(30), async || {
        sim.handle.advance(50.0).await;
        let stats = sim.handle.stats().await;
        let status = stats
            .batches
            .iter()
            .find(|b| b.id == batch)
            .map(|b| b.status.clone())
            .unwrap_or_default();
        let ended = ["completed", "expired", "failed", "cancelled"].contains(&status.as_str());
        (ended, status)
    })
    .await
}

/// How many successful results each custom_id has across `jobs`.
fn successes(env: &Env, jobs: &[Job]) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for job in jobs.iter().filter(|j| j.results_dir.is_some()) {
        for id in succeeded(env, job) {
            *count.entry(id).or_default() += 1;
        }
    }
    count
}

/// `batchwatch resubmit ARGS` as an operator runs it, expected to be refused: its stderr.
fn resubmit_refused(env: &Env, args: &[&str]) -> String {
    let out = crate::support::process::run(Some(&env.config), &[&["resubmit"], args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "resubmit {args:?} was not refused: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// A simulator and a stopped daemon's surroundings, after a job of 10 requests (`TAG-0`…)
/// expired with about five done; with the job and how many it left undone.
async fn after_an_expired_job(tag: &str) -> (crate::support::sim::TestSim, Env, Job, usize) {
    let sim = spawn_sim(stopped_clock_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn();
    env.drop_file(
        &format!("{tag}.jsonl"),
        requests(tag, 10, "gpt-4o-mini").as_bytes(),
    );
    let batch = nth_batch(&sim, 0).await;
    assert_eq!(run_to_end(&sim, &batch).await, "expired");
    let job = env
        .wait_finished(1, Duration::from_secs(60), &mut daemon)
        .await
        .remove(0);
    assert_eq!(job.state, JobState::Expired);
    env.stop(daemon);
    let undone = 10 - succeeded(&env, &job).len();
    (sim, env, job, undone)
}

async fn nth_batch(sim: &crate::support::sim::TestSim, n: usize) -> String {
    wait_until("a batch is created", Duration::from_secs(30), async || {
        let stats = sim.handle.stats().await;
        let id = stats.batches.get(n).map(|b| b.id.clone());
        (id.is_some(), id)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_batch_is_resubmitted_with_exactly_its_missing_requests() {
    let sim = spawn_sim(stopped_clock_sim()).await;
    let env = Env::new(
        &sim.handle.base_url(),
        "[batch]\nresubmit_expired = 1\n[batch.metadata]\nproject = \"p7\"\n",
    );
    let mut daemon = env.spawn();
    let content = requests("exp", 10, "gpt-4o-mini");
    env.drop_file("exp.jsonl", content.as_bytes());
    let first = nth_batch(&sim, 0).await;
    advance_until(&sim, &first, "in_progress", 5.0).await;
    // Past the completion window halfway through: about half the requests ran.
    advance_until(&sim, &first, "expired", 500.0).await;
    let second = nth_batch(&sim, 1).await;
    advance_until(&sim, &second, "in_progress", 5.0).await;
    advance_until(&sim, &second, "completed", 100.0).await;
    let jobs = env
        .wait_finished(2, Duration::from_secs(60), &mut daemon)
        .await;
    let (original, again) = (&jobs[0], &jobs[1]);
    assert_eq!(original.state, JobState::Expired, "{:?}", original.reason);
    assert_eq!(again.state, JobState::Completed, "{:?}", again.reason);
    assert_eq!(again.file_name, "exp.resubmit-1.jsonl");

    let done_first = succeeded(&env, original);
    let done_again = succeeded(&env, again);
    assert!(
        !done_first.is_empty() && done_first.len() < 10,
        "partial results: {done_first:?}"
    );
    assert_eq!(again.request_count, Some(10 - done_first.len() as i64));
    let mut all: Vec<String> = done_first.iter().chain(&done_again).cloned().collect();
    all.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("exp-{i}")).collect();
    want.sort();
    assert_eq!(all, want, "every request once across the chain");

    let store = env.store().await;
    let parent = store.parent_of(&again.id).await.unwrap();
    assert_eq!(parent.as_deref(), Some(original.id.as_str()));
    // Both jobs' events say what was chosen: which requests, and how many.
    let events = |id: &str| {
        let store = &store;
        let id = id.to_owned();
        async move {
            store
                .job_events(&id)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.message)
                .collect::<Vec<_>>()
        }
    };
    let resent = 10 - done_first.len();
    let told =
        format!("{resent} expired requests (--only expired: those never run) are resubmitted as");
    let parent_events = events(&original.id).await;
    assert!(
        parent_events.iter().any(|m| m.contains(&told)),
        "{parent_events:#?}"
    );
    let child_events = events(&again.id).await;
    let claimed = format!(
        "resubmits the {resent} expired requests (--only expired) of {}",
        original.id
    );
    assert!(child_events.contains(&claimed), "{child_events:#?}");
    store.close().await;
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            env.queue
                .join(again.results_dir.as_deref().unwrap())
                .join("manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["parent_job_id"], original.id.as_str());
    let shown = crate::support::process::stdout_ok(Some(&env.config), &["show", &again.id]);
    assert!(
        shown.contains(&format!("the undone requests of {}", original.id)),
        "{shown}"
    );
    assert!(shown.contains("chain"), "{shown}");
    // Only once (batch.resubmit_expired = 1), and the metadata carried over.
    assert_eq!(sim.handle.stats().await.batches.len(), 2);

    // By hand: nothing failed, so nothing to send for --only failed.
    let out = crate::support::process::stdout_ok(
        Some(&env.config),
        &["resubmit", &original.id, "--only", "failed"],
    );
    assert!(out.contains("nothing written"), "{out}");
    // The expired requests of the original all completed in its resubmission: none is sent
    // again.
    let out = crate::support::process::stdout_ok(
        Some(&env.config),
        &["resubmit", &original.id, "--only", "expired"],
    );
    assert!(
        out.contains("nothing written") && out.contains(&again.id),
        "{out}"
    );
    assert!(env.names("incoming").is_empty());
    let sidecar =
        std::fs::read_to_string(env.dir("done").join("exp.resubmit-1.jsonl.toml")).unwrap();
    assert!(
        sidecar.contains(&original.id) && sidecar.contains("p7"),
        "{sidecar}"
    );
    // The log says what it saw in words, never in Rust's debug notation.
    let log = env.stop(daemon);
    let seen: Vec<&String> = log.iter().filter(|l| l.contains("batch status")).collect();
    assert!(
        seen.iter()
            .any(|l| l.contains("status=expired") && l.contains(" total=10")),
        "{seen:#?}"
    );
    for line in &log {
        assert!(
            !["Some(", "RequestCounts", "Job(\"", "Submission("]
                .iter()
                .any(|debug| line.contains(debug)),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resubmitting_the_original_after_its_chain_ran_sends_only_what_no_job_of_it_completed() {
    let sim = spawn_sim(stopped_clock_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "[batch]\nresubmit_expired = 3\n");
    let mut daemon = env.spawn();
    let all: Vec<String> = (0..25).map(|i| format!("big-{i}")).collect();
    env.drop_file("big.jsonl", requests("big", 25, "gpt-4o-mini").as_bytes());
    // The original and its three automatic resubmissions each expire with part done.
    for n in 0..4 {
        let batch = nth_batch(&sim, n).await;
        assert_eq!(run_to_end(&sim, &batch).await, "expired", "batch {n}");
    }
    let jobs = env
        .wait_finished(4, Duration::from_secs(60), &mut daemon)
        .await;
    assert_eq!(jobs[3].file_name, "big.resubmit-3.jsonl");
    let done = successes(&env, &jobs);
    let rest: Vec<String> = all
        .iter()
        .filter(|id| !done.contains_key(*id))
        .cloned()
        .collect();
    assert!(
        !rest.is_empty() && rest.len() < 10,
        "the chain left a few undone: {done:?}"
    );

    // By hand, from the original: only what no job of the chain completed.
    let original = &jobs[0];
    let out = crate::support::process::stdout_ok(Some(&env.config), &["resubmit", &original.id]);
    assert!(out.contains("incoming/big.resubmit-4.jsonl"), "{out}");
    assert!(out.contains("left out, already done in its chain"), "{out}");
    assert_eq!(
        custom_ids(&env.dir("incoming").join("big.resubmit-4.jsonl")),
        rest,
        "{out}"
    );
    // Again, and from a job down the chain, while it is in flight: refused, naming it.
    for job in [&jobs[0], &jobs[2]] {
        let refused = resubmit_refused(&env, &[&job.id]);
        assert!(refused.contains("big.resubmit-4.jsonl"), "{refused}");
    }
    let batch = nth_batch(&sim, 4).await;
    run_to_end(&sim, &batch).await;
    let jobs = env
        .wait_finished(5, Duration::from_secs(60), &mut daemon)
        .await;
    let done = successes(&env, &jobs);
    assert!(
        done.values().all(|&n| n == 1),
        "a request succeeded twice: {done:?}"
    );
    assert_eq!(done.len(), 25, "every request done once: {done:?}");
    for job in &jobs {
        let out = crate::support::process::stdout_ok(Some(&env.config), &["resubmit", &job.id]);
        assert!(out.contains("nothing written"), "{out}");
    }
    assert!(env.names("incoming").is_empty());
    assert_eq!(sim.handle.stats().await.batches.len(), 5);
    env.stop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_resubmit_while_one_is_in_flight_is_refused_naming_it_and_force_says_what_it_pays_again()
 {
    let (sim, env, job, undone) = after_an_expired_job("j").await;

    // Four operators at once: one writes, the others are refused, naming its file.
    let running: Vec<_> = (0..4)
        .map(|_| {
            command(Some(&env.config))
                .args(["resubmit", &job.id])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = running
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let written: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(written.len(), 1, "{outs:#?}");
    for refused in outs.iter().filter(|o| !o.status.success()) {
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("incoming/j.resubmit-1.jsonl, not yet claimed"),
            "{stderr}"
        );
    }
    let file = env.dir("incoming").join("j.resubmit-1.jsonl");
    assert_eq!(custom_ids(&file).len(), undone);

    // Claimed and running: the job is named.
    let mut daemon = env.spawn();
    let child = wait_until(
        "the resubmission runs",
        Duration::from_secs(30),
        async || {
            let child = env.jobs().await.into_iter().find(|j| j.id != job.id);
            (
                child.as_ref().is_some_and(|c| c.state == JobState::Running),
                child,
            )
        },
    )
    .await
    .unwrap();
    let refused = resubmit_refused(&env, &[&job.id]);
    assert!(
        refused.contains(&format!("job {} (j.resubmit-1.jsonl)", child.id)),
        "{refused}"
    );

    let batch = nth_batch(&sim, 1).await;
    assert_eq!(run_to_end(&sim, &batch).await, "completed");
    let jobs = env
        .wait_finished(2, Duration::from_secs(60), &mut daemon)
        .await;
    // Nothing left undone: nothing written, however often it is asked.
    for _ in 0..2 {
        let out = crate::support::process::stdout_ok(Some(&env.config), &["resubmit", &job.id]);
        assert!(
            out.contains("nothing written") && out.contains(&child.id),
            "{out}"
        );
    }
    let done = successes(&env, &jobs);
    assert_eq!(done.len(), 10, "{done:?}");
    assert!(done.values().all(|&n| n == 1), "{done:?}");
    env.stop(daemon);

    // --force writes them anyway, and says what that pays again.
    let out =
        crate::support::process::stdout_ok(Some(&env.config), &["resubmit", &job.id, "--force"]);
    assert!(
        out.contains(&format!(
            "--force: {undone} of them will run, and be paid, again: {undone} in job {} (j.resubmit-1.jsonl)",
            child.id
        )),
        "{out}"
    );
    assert_eq!(
        custom_ids(&env.dir("incoming").join("j.resubmit-2.jsonl")),
        custom_ids(&env.dir("done").join("j.resubmit-1.jsonl"))
    );
}

/// A resubmit killed after it wrote its files and before it recorded them leaves two hidden
/// files in incoming/ that nothing refers to. The daemon's start leaves them while they are
/// young (a resubmit running beside the daemon records its files within seconds), and removes
/// them once they are an hour old; a recorded resubmission's files are moved in, never removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_a_resubmit_killed_before_recording_left_is_removed_at_a_start_once_an_hour_old() {
    let (_sim, env, job, _undone) = after_an_expired_job("u").await;
    let out = command(Some(&env.config))
        .args(["resubmit", job.id.as_str()])
        .env(batchwatch::failpoint::ENV, "resubmit:before-record")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:?}");
    let left = env.names("incoming");
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter().all(|n| n.starts_with(".batchwatch-resubmit-")),
        "{left:?}"
    );

    let mut daemon = env.spawn();
    // Ready once the start's recovery and first scan are done.
    daemon.wait_for_line("ready", Duration::from_secs(30));
    env.stop(daemon);
    assert_eq!(env.names("incoming"), left, "young: kept");

    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    for name in &left {
        std::fs::File::options()
            .append(true)
            .open(env.dir("incoming").join(name))
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
    }
    let mut daemon = env.spawn();
    let line = daemon.wait_for_line(
        "removed the files of resubmissions killed before they were recorded",
        Duration::from_secs(30),
    );
    assert!(line.contains("files=2"), "{line}");
    env.stop(daemon);
    assert!(
        env.names("incoming").is_empty(),
        "{:?}",
        env.names("incoming")
    );
    let resubmissions: Vec<_> = env
        .jobs()
        .await
        .into_iter()
        .filter(|j| j.id != job.id)
        .collect();
    assert!(
        resubmissions.is_empty(),
        "nothing was recorded, nothing runs: {resubmissions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resubmission_killed_before_its_file_was_moved_in_arrives_once() {
    let (sim, env, job, undone) = after_an_expired_job("k").await;
    let killed = |args: &[&str]| {
        let out = command(Some(&env.config))
            .args([&["resubmit", job.id.as_str()], args].concat())
            .env(batchwatch::failpoint::ENV, "resubmit:before-publish")
            .output()
            .unwrap();
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:?}");
        let staged = env.names("incoming");
        assert_eq!(staged.len(), 2, "{staged:?}");
        assert!(
            staged
                .iter()
                .all(|n| n.starts_with(".batchwatch-resubmit-")),
            "recorded, still under its temporary names: {staged:?}"
        );
    };

    // The next look at the chain moves it into place, and sees it in flight.
    killed(&[]);
    let refused = resubmit_refused(&env, &[&job.id]);
    assert!(
        refused.contains("incoming/k.resubmit-1.jsonl, not yet claimed"),
        "{refused}"
    );
    assert_eq!(
        env.names("incoming"),
        ["k.resubmit-1.jsonl", "k.resubmit-1.jsonl.toml"]
    );
    let daemon = env.spawn();
    wait_until(
        "the resubmission claimed",
        Duration::from_secs(30),
        async || {
            let jobs = env.jobs().await;
            (jobs.len() == 2, jobs)
        },
    )
    .await;
    env.stop(daemon);

    // Forced beside it, killed again: the daemon moves it into place at its start.
    killed(&["--force"]);
    let daemon = env.spawn();
    let jobs = wait_until("both claimed", Duration::from_secs(30), async || {
        let jobs = env.jobs().await;
        (jobs.len() == 3, jobs)
    })
    .await;
    assert!(
        env.names("incoming").is_empty(),
        "{:?}",
        env.names("incoming")
    );
    let names: Vec<&str> = jobs.iter().map(|j| j.file_name.as_str()).collect();
    assert_eq!(
        names,
        ["k.jsonl", "k.resubmit-1.jsonl", "k.resubmit-2.jsonl"]
    );
    for child in &jobs[1..] {
        let path = env.queue.join(&child.path);
        assert_eq!(custom_ids(&path).len(), undone, "{}", child.file_name);
    }
    nth_batch(&sim, 2).await;
    env.stop(daemon);
    assert_eq!(
        sim.handle.stats().await.batches.len(),
        3,
        "one batch per file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daemon_resubmits_nothing_of_an_expired_job_while_its_chain_has_another_resubmission_in_flight()
 {
    let sim = spawn_sim(stopped_clock_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "[batch]\nresubmit_expired = 2\n");
    let daemon = env.spawn();
    env.drop_file("d.jsonl", requests("d", 25, "gpt-4o-mini").as_bytes());
    let first = nth_batch(&sim, 0).await;
    assert_eq!(run_to_end(&sim, &first).await, "expired");
    // batch.resubmit_expired writes d.resubmit-1.jsonl; its batch runs for a while.
    let second = nth_batch(&sim, 1).await;
    advance_until(&sim, &second, "in_progress", 5.0).await;
    sim.handle.advance(300.0).await;
    let jobs = env.jobs().await;
    let (original, auto) = (&jobs[0], &jobs[1]);
    assert_eq!(auto.file_name, "d.resubmit-1.jsonl");
    // An operator forces another beside it.
    let out = crate::support::process::stdout_ok(
        Some(&env.config),
        &["resubmit", &original.id, "--force"],
    );
    assert!(
        out.contains("incoming/d.resubmit-2.jsonl") && out.contains(&format!("in job {}", auto.id)),
        "{out}"
    );
    let forced = nth_batch(&sim, 2).await;
    // The automatic one expires (300 s before the forced one would): nothing more is written.
    assert_eq!(run_to_end(&sim, &second).await, "expired");
    let shown = wait_until(
        "the daemon looked at the expired job",
        Duration::from_secs(30),
        async || {
            let shown = crate::support::process::stdout_ok(Some(&env.config), &["show", &auto.id]);
            (
                shown.contains("not resubmitted (batch.resubmit_expired)"),
                shown,
            )
        },
    )
    .await;
    assert!(
        shown.contains("d.resubmit-2.jsonl"),
        "names what is in flight: {shown}"
    );
    assert_ne!(
        sim.handle.stats().await.batches[2].status,
        "expired",
        "{forced} still runs"
    );
    assert!(env.names("incoming").is_empty());
    assert_eq!(sim.handle.stats().await.batches.len(), 3);
    env.stop(daemon);
}

/// On SIGTERM, deletions of remote files stop at once, whatever `daemon.shutdown_timeout`
/// allows: each is a row, and the next start sends it again. A service that does not answer
/// them (each DELETE held a minute) would otherwise hold the stop for the whole grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stop_does_not_wait_for_deletions_the_service_does_not_answer() {
    let sim = spawn_sim(quick_sim()).await;
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::Latency { ms: 60_000 })
                .on("DELETE", "/v1/files/{file_id}")
                .times(1_000_000),
        )
        .await;
    let env = Env::new(
        &sim.handle.base_url(),
        "[daemon]\nshutdown_timeout = \"30s\"\n",
    );
    let mut daemon = env.spawn();
    env.drop_file("hang.jsonl", requests("hang", 3, "gpt-4o-mini").as_bytes());
    env.wait_finished(1, Duration::from_secs(60), &mut daemon)
        .await;
    wait_until("a DELETE in flight", Duration::from_secs(30), async || {
        let sent = deletes_sent(&sim).await;
        (sent >= 1, sent)
    })
    .await;
    daemon.signal(libc::SIGTERM);
    let (status, took) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", daemon.seen.join("\n"));
    assert!(
        took < Duration::from_secs(3),
        "the stop took {took:?}, held by a deletion:\n{}",
        daemon.seen.join("\n")
    );
    let said = daemon
        .seen
        .iter()
        .find(|l| l.contains("housekeeping stopped at once"))
        .unwrap_or_else(|| {
            panic!(
                "the stop names what it dropped:\n{}",
                daemon.seen.join("\n")
            )
        });
    assert!(
        said.contains("delete_remote_files") && !said.contains("DeleteRemoteFiles"),
        "tasks named as in the other lines, not as Rust's Debug: {said}"
    );
    let pending = deletions_of(&env).await;
    assert!(
        !pending.is_empty() && pending.iter().all(|r| r.state == "pending"),
        "the deletions are still to do: {pending:?}"
    );
    sim.handle.clear_scripted_faults().await;
    let daemon = env.spawn();
    wait_no_files(&sim, "every file deleted after the restart").await;
    env.stop(daemon);
}

/// The failed requests of a job's results, split by status: (500s, the simulator's failures
/// worth retrying; 400s, the request's own).
fn failures(env: &Env, job: &Job) -> (Vec<String>, Vec<String>) {
    let dir = env.queue.join(job.results_dir.as_deref().expect("results"));
    let (mut transient, mut permanent) = (Vec::new(), Vec::new());
    for line in std::fs::read_to_string(dir.join("errors.jsonl"))
        .unwrap_or_default()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["custom_id"].as_str().unwrap().to_owned();
        match v["response"]["status_code"].as_u64() {
            Some(500) => transient.push(id),
            Some(400) => permanent.push(id),
            other => panic!("an error line the simulator does not write: {other:?} {line}"),
        }
    }
    transient.sort();
    permanent.sort();
    (transient, permanent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_that_failed_for_a_reason_worth_retrying_are_resubmitted_up_to_n_times_and_never_the_request_s_own_failures()
 {
    // Half the requests of each batch fail: each a 500 (the service's fault) or a 400 (the
    // request's).
    let sim = spawn_sim(SimConfig {
        faults: batchwatch::sim::Faults {
            request_failure_rate: 0.5,
            ..batchwatch::sim::Faults::default()
        },
        ..quick_sim()
    })
    .await;
    // Each job of the chain notifies its end, saying whether a retry follows.
    let env = Env::new(
        &sim.handle.base_url(),
        "[batch]\nresubmit_failed = 2\n[[notify]]\nname = \"pipeline\"\n\
         on = [\"completed\", \"failed\"]\ncommand = [\"/bin/true\"]\n",
    );
    let daemon = env.spawn();
    env.drop_file(
        "flaky.jsonl",
        requests("flaky", 40, "gpt-4o-mini").as_bytes(),
    );
    // The chain is done once its jobs are all finished and no resubmission is left to write.
    let store = env.store().await;
    let chain = wait_until("the chain to end", Duration::from_secs(90), async || {
        let jobs = env.jobs().await;
        let due = store.resubmit_due().await.unwrap();
        // The last job ended, and with nothing more to retry, or as the second retry.
        let last_was_last = jobs.last().is_some_and(|last| {
            last.results_dir.is_some() && (failures(&env, last).0.is_empty() || jobs.len() == 3)
        });
        let ended = jobs.iter().all(settled)
            && due.is_empty()
            && env.names("incoming").is_empty()
            && last_was_last;
        (ended, jobs)
    })
    .await;
    let told = wait_until("each job's end told", Duration::from_secs(30), async || {
        let mut told = Vec::new();
        for job in &chain {
            told.extend(store.notifications_of(&job.id).await.unwrap());
        }
        (
            told.len() == chain.len() && told.iter().all(|n| n.state == "delivered"),
            told,
        )
    })
    .await;
    env.stop(daemon);
    for (i, (job, note)) in chain.iter().zip(&told).enumerate() {
        let event: serde_json::Value = serde_json::from_str(&note.payload).unwrap();
        let data = &event["data"];
        assert_eq!(data["job_id"], job.id.as_str());
        assert_eq!(
            data["retry_follows"],
            i + 1 < chain.len(),
            "{}: a retry follows all but the last",
            job.file_name
        );
        let parent = i.checked_sub(1).map(|p| chain[p].id.as_str());
        assert_eq!(data["parent_job_id"].as_str(), parent, "{}", job.file_name);
    }

    let names: Vec<&str> = chain.iter().map(|j| j.file_name.as_str()).collect();
    assert_eq!(
        names,
        [
            "flaky.jsonl",
            "flaky.resubmit-1.jsonl",
            "flaky.resubmit-2.jsonl"
        ][..chain.len()],
        "one original and at most two resubmissions"
    );
    assert!(chain.len() >= 2, "the original's 500s were resubmitted");
    for pair in chain.windows(2) {
        let (parent, child) = (&pair[0], &pair[1]);
        let (transient, _) = failures(&env, parent);
        let mut sent = custom_ids(&env.queue.join(&child.path));
        sent.sort();
        assert_eq!(
            sent, transient,
            "{}: its 500s, and only those",
            child.file_name
        );
        let events: Vec<String> = store
            .job_events(&parent.id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect();
        let told = format!(
            "its {} transient requests (--only transient: those that failed for a reason worth retrying) are resubmitted as incoming/{} (batch.resubmit_failed)",
            transient.len(),
            child.file_name
        );
        assert!(events.iter().any(|e| e.contains(&told)), "{events:#?}");
    }
    // A request's own failure is never sent again.
    let mut never: Vec<String> = Vec::new();
    for job in &chain {
        let sent = custom_ids(&env.queue.join(&job.path));
        assert!(
            sent.iter().all(|id| !never.contains(id)),
            "{}: {sent:?} holds a 400 of an earlier job: {never:?}",
            job.file_name
        );
        never.extend(failures(&env, job).1);
    }
    // Two resubmissions at most: the last job keeps its 500s (the simulator's seed makes the
    // chain that long).
    assert_eq!(chain.len(), 3, "{names:?}");
    let left = failures(&env, &chain[2]).0;
    assert!(!left.is_empty(), "the second retry had 500s of its own");
    assert_eq!(sim.handle.stats().await.batches.len(), 3);
    store.close().await;
}
