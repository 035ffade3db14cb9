//! The API client's Anthropic Message Batches calls against the simulator, over real sockets:
//! every call (create from a part of a file, retrieve, list, cancel, results sorted into two
//! files, delete), the error classes driven by fault injection, and the memory a 256 MB create
//! takes.

use std::collections::BTreeSet;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use batchwatch::api::{ApiError, ApiKey, Client};
use batchwatch::config::Flavor;
use batchwatch::model::BatchStatus;
use batchwatch::sim::{ErrorStatus, FaultKind, RetryAfter, ScriptedFault, SimConfig};
use serde_json::{Value, json};

use crate::support::KEY;
use crate::support::client::client_settings;
use crate::support::memory;
use crate::support::sim::{TestSim, spawn_sim, stopped_clock};

/// An Anthropic client for the simulator at `sim` (base URL `http://ADDR/v1`).
fn anthropic_client(sim: &TestSim) -> Client {
    let mut s = client_settings(&sim.root);
    s.api.flavor = Flavor::Anthropic;
    Client::new(&s.api, &s.limits, ApiKey::new(KEY).unwrap()).expect("building the client")
}

fn request_line(custom_id: &str) -> String {
    json!({"custom_id": custom_id,
           "params": {"model": "claude-haiku-4-5", "max_tokens": 16,
                      "messages": [{"role": "user", "content": format!("say {custom_id}")}]}})
    .to_string()
        + "\n"
}

/// Ends the batch's current stage through the admin API.
async fn step(sim: &TestSim, id: &str) {
    sim.admin_json("/batches/step", Some(&json!({ "ids": [id] })))
        .await;
}

/// The results as the simulator serves them, line by line.
async fn served_results(sim: &TestSim, id: &str) -> Vec<String> {
    sim.http
        .get(format!("{}/messages/batches/{id}/results", sim.root))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_message_batches_call_against_the_simulator() {
    let sim = spawn_sim(SimConfig {
        faults: batchwatch::sim::Faults {
            request_failure_rate: 0.3,
            ..Default::default()
        },
        ..stopped_clock()
    })
    .await;
    let client = anthropic_client(&sim);
    let dir = tempfile::tempdir().unwrap();
    // Three parts of one file: the create sends the middle one only.
    let before = request_line("before");
    let part: String = (0..8).map(|i| request_line(&format!("r{i}"))).collect();
    let after = request_line("after");
    let path = dir.path().join("requests.jsonl");
    std::fs::write(&path, format!("{before}{part}{after}")).unwrap();
    let start = before.len() as u64;
    let range = start..start + part.len() as u64;

    let batch = client.create_message_batch(&path, range).await.unwrap();
    assert!(batch.id.starts_with("msgbatch_"), "{}", batch.id);
    assert_eq!(batch.kind, "message_batch");
    assert_eq!(batch.status(), BatchStatus::InProgress);
    assert_eq!(batch.request_counts.processing, 8);
    assert!(batch.created_at.is_some() && batch.expires_at.is_some());
    assert_eq!(
        client.retrieve_message_batch(&batch.id).await.unwrap().id,
        batch.id
    );

    // A second batch, cancelled at once: the list holds both, newest first.
    let second = client.create_message_batch(&path, 0..start).await.unwrap();
    let cancelling = client.cancel_message_batch(&second.id).await.unwrap();
    assert_eq!(cancelling.status(), BatchStatus::Cancelling);
    let first_page = client.list_message_batches_page(1, None).await.unwrap();
    assert_eq!(first_page.data[0].id, second.id);
    assert_eq!(first_page.has_more, Some(true));
    let next = client
        .list_message_batches_page(1, first_page.last_id.as_deref())
        .await
        .unwrap();
    assert_eq!(next.data[0].id, batch.id);
    assert_eq!(next.has_more, Some(false));
    let walked: Vec<String> = {
        use futures_util::TryStreamExt;
        client
            .list_message_batch_pages()
            .map_ok(|page| page.data.into_iter().map(|b| b.id).collect::<Vec<_>>())
            .try_concat()
            .await
            .unwrap()
    };
    assert_eq!(walked, [second.id.clone(), batch.id.clone()]);

    step(&sim, &batch.id).await;
    step(&sim, &batch.id).await;
    step(&sim, &second.id).await;
    let ended = client.retrieve_message_batch(&batch.id).await.unwrap();
    assert_eq!(ended.status(), BatchStatus::Completed);
    let cancelled = client.retrieve_message_batch(&second.id).await.unwrap();
    assert_eq!(cancelled.status(), BatchStatus::Cancelled);
    assert_eq!(cancelled.request_counts.canceled, 1);

    let (output, errors) = (
        dir.path().join("output.jsonl"),
        dir.path().join("errors.jsonl"),
    );
    let sorted = client
        .download_message_batch_results(&batch.id, &output, &errors)
        .await
        .unwrap();
    let counts = ended.request_counts;
    assert_eq!(sorted.counts.succeeded, counts.succeeded);
    assert_eq!(sorted.counts.errored, counts.errored);
    assert!(counts.succeeded > 0 && counts.errored > 0, "{counts:?}");
    let (out, err) = (lines_of(&output), lines_of(&errors));
    assert_eq!(out.len() as u64, counts.succeeded);
    assert_eq!(err.len() as u64, counts.errored);
    for line in &out {
        let value: Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["result"]["type"], "succeeded");
    }
    for line in &err {
        let value: Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["result"]["type"], "errored");
    }
    // Every line unchanged, each in one file; only the part's requests.
    let served: BTreeSet<String> = served_results(&sim, &batch.id).await.into_iter().collect();
    let written: BTreeSet<String> = out.iter().chain(&err).cloned().collect();
    assert_eq!(written, served);
    let ids: BTreeSet<String> = written
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids, (0..8).map(|i| format!("r{i}")).collect());
    assert!(
        !std::fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".batchwatch-download-")),
        "no temporary file is left"
    );

    // A cancelled batch's results: every line an error (canceled), no output file.
    let (output2, errors2) = (dir.path().join("o2.jsonl"), dir.path().join("e2.jsonl"));
    let sorted = client
        .download_message_batch_results(&second.id, &output2, &errors2)
        .await
        .unwrap();
    assert_eq!(sorted.counts.canceled, 1);
    assert!(!output2.exists(), "no succeeded line, no output file");
    assert_eq!(lines_of(&errors2).len(), 1);

    let deleted = client.delete_message_batch(&batch.id).await.unwrap();
    assert_eq!(
        (deleted.id.as_str(), deleted.kind.as_str()),
        (batch.id.as_str(), "message_batch_deleted")
    );
    let gone = client.retrieve_message_batch(&batch.id).await.unwrap_err();
    assert!(matches!(gone, ApiError::NotFound { .. }), "{gone:?}");
}

#[tokio::test]
async fn message_batches_errors_fall_into_the_clients_classes() {
    let sim = spawn_sim(stopped_clock()).await;
    let client = anthropic_client(&sim);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.jsonl");
    let content = format!("{}{}", request_line("a"), request_line("b"));
    std::fs::write(&path, &content).unwrap();
    let whole = 0..content.len() as u64;

    // A broken rule: refused, naming the request and field.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, request_line("a b")).unwrap();
    let refused = client
        .create_message_batch(&bad, 0..std::fs::metadata(&bad).unwrap().len())
        .await
        .unwrap_err();
    match &refused {
        ApiError::BadRequest {
            status,
            message,
            error_type,
            ..
        } => {
            assert_eq!(*status, 400);
            assert!(message.contains("requests.0.custom_id"), "{message}");
            assert_eq!(error_type.as_deref(), Some("invalid_request_error"));
        }
        other => panic!("{other:?}"),
    }

    // 529 overloaded on a create: the outcome is unknown (the request may have been taken).
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::Status {
                status: ErrorStatus::try_from(529).unwrap(),
            })
            .on("POST", "/v1/messages/batches"),
        )
        .await;
    let overloaded = client
        .create_message_batch(&path, whole.clone())
        .await
        .unwrap_err();
    assert!(overloaded.is_unknown_outcome(), "{overloaded:?}");

    // A create carried out whose answer was lost: unknown outcome, and the batch exists.
    sim.handle
        .push_fault(ScriptedFault::new(FaultKind::DropAfter).on("POST", "/v1/messages/batches"))
        .await;
    let lost = client
        .create_message_batch(&path, whole.clone())
        .await
        .unwrap_err();
    assert!(lost.is_unknown_outcome(), "{lost:?}");
    let listed = client.list_message_batches_page(10, None).await.unwrap();
    assert_eq!(listed.data.len(), 1, "the lost create made its batch");
    let made = listed.data[0].id.clone();
    assert_eq!(listed.data[0].request_counts.total(), 2);

    // 429 with retry-after on a read: retried after the delay asked for, then answered.
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::RateLimit {
                retry_after: RetryAfter::Millis(300),
            })
            .on("GET", "/v1/messages/batches/{batch_id}"),
        )
        .await;
    let started = std::time::Instant::now();
    assert_eq!(client.retrieve_message_batch(&made).await.unwrap().id, made);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // ... and when it lasts, the error carries the delay.
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::RateLimit {
                retry_after: RetryAfter::Seconds(7),
            })
            .on("GET", "/v1/messages/batches")
            .times(1),
        )
        .await;
    let limited = client.list_message_batches_page(1, None).await.unwrap_err();
    assert!(
        matches!(limited, ApiError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(7)),
        "{limited:?}"
    );

    // A results download cut short is retried whole.
    step(&sim, &made).await;
    step(&sim, &made).await;
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::BrokenDownload)
                .on("GET", "/v1/messages/batches/{batch_id}/results"),
        )
        .await;
    let (output, errors) = (dir.path().join("out.jsonl"), dir.path().join("err.jsonl"));
    let sorted = client
        .download_message_batch_results(&made, &output, &errors)
        .await
        .unwrap();
    assert_eq!(sorted.counts.succeeded, 2);
    assert_eq!(lines_of(&output).len(), 2);

    // Deleting a batch still running is refused; the key appears in no error.
    let running = client.create_message_batch(&path, whole).await.unwrap();
    let refused = client.delete_message_batch(&running.id).await.unwrap_err();
    assert!(
        matches!(refused, ApiError::BadRequest { status: 400, .. }),
        "{refused:?}"
    );
    for err in [&refused, &limited, &lost, &overloaded] {
        assert!(!format!("{err} {err:?}").contains(KEY), "{err:?}");
    }
}

// ---- memory -------------------------------------------------------------------------------------

/// Set in the child process of the memory test: the simulator's base URL, then the file.
const RSS_CHILD_ENV: &str = "BATCHWATCH_TEST_ANTHROPIC_CREATE_RSS";

/// The upload's bound (`client::upload_of_150_mb_keeps_the_uploading_process_under_64_mib`)
/// and 2 MiB.
const RSS_BOUND_KIB: u64 = 66 * 1024;

/// Writes Anthropic request lines of about 2.7 KB until `path` holds `target` bytes, so that
/// 256 MB stays under 100,000 requests.
fn write_requests(path: &Path, target: u64) -> std::io::Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let filler = "lorem ipsum dolor sit amet ".repeat(100);
    let mut written = 0u64;
    let mut n = 0u64;
    while written < target {
        let line = json!({"custom_id": format!("req-{n}"),
                          "params": {"model": "claude-haiku-4-5", "max_tokens": 16,
                                     "messages": [{"role": "user", "content": format!("{n} {filler}")}]}})
        .to_string()
            + "\n";
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
        n += 1;
    }
    out.flush()?;
    Ok(written)
}

#[tokio::test]
async fn a_create_of_256_mb_keeps_the_sending_process_within_the_uploads_bound() {
    if let Ok(spec) = std::env::var(RSS_CHILD_ENV) {
        let (root, path) = spec.split_once(' ').expect("ROOT PATH");
        let path = Path::new(path);
        let mut s = client_settings(root);
        s.api.flavor = Flavor::Anthropic;
        let client = Client::new(&s.api, &s.limits, ApiKey::new(KEY).unwrap()).unwrap();
        let size = std::fs::metadata(path).unwrap().len();
        let batch = client.create_message_batch(path, 0..size).await.unwrap();
        memory::report(
            "create-rss",
            &[("requests", batch.request_counts.processing)],
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    let size = write_requests(&path, 255_000_000).unwrap();
    let requests = std::fs::read(&path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
        .unwrap();
    assert!(requests <= 100_000, "{requests} requests");
    let sim = spawn_sim(SimConfig {
        data_dir: Some(dir.path().join("sim")),
        ..stopped_clock()
    })
    .await;
    let report = memory::in_child(
        "client_anthropic::a_create_of_256_mb_keeps_the_sending_process_within_the_uploads_bound",
        RSS_CHILD_ENV,
        format!("{} {}", sim.root, path.display()),
        "create-rss",
    )
    .await;
    assert_eq!(
        report.field("requests"),
        requests,
        "the simulator took every request"
    );
    let peak = report.field("vmhwm_kib");
    eprintln!("a create of {size} bytes: peak RSS {peak} KiB");
    assert!(
        peak < RSS_BOUND_KIB,
        "creating from {size} bytes took the process to {peak} KiB"
    );
}
