//! The API client against the simulator, over real sockets: every call (the contract), every
//! error class driven by fault injection, Retry-After, the secrecy of the key, and the memory
//! an upload takes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchwatch::api::{ApiError, ApiKey, Client, CreateBatchRequest, OutputExpiresAfter};
use batchwatch::config::{Dur, Flavor};
use batchwatch::model::BatchStatus;
use batchwatch::sim::{ErrorStatus, FaultKind, RetryAfter, ScriptedFault, SimConfig};
use futures_util::{StreamExt, TryStreamExt};
use secrecy::SecretString;

use crate::support::bigfile::write_jsonl;
use crate::support::client::{api_client, api_client_with, client_settings};
use crate::support::memory;
use crate::support::sim::{TestSim, chat_lines, fast_clock, spawn_sim, stopped_clock};
use crate::support::{KEY, wait_until};

/// Writes `content` to a new file in `dir`.
fn file_with(dir: &Path, name: &str, content: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// Uploads `content` whole as `input.jsonl`.
async fn upload(client: &Client, dir: &Path, content: &str) -> batchwatch::api::FileObject {
    let path = file_with(dir, "input.jsonl", content.as_bytes());
    client
        .upload_file(&path, 0..content.len() as u64, "input.jsonl")
        .await
        .expect("upload")
}

fn create_request(file_id: &str, job: &str) -> CreateBatchRequest {
    CreateBatchRequest {
        input_file_id: file_id.to_owned(),
        endpoint: "/v1/chat/completions".to_owned(),
        completion_window: "24h".to_owned(),
        metadata: Some(BTreeMap::from([(
            "batchwatch_job_id".to_owned(),
            job.to_owned(),
        )])),
        output_expires_after: None,
    }
}

/// Requests the simulator received on `route` ("GET /v1/batches/{batch_id}").
async fn requests(sim: &TestSim, route: &str) -> u64 {
    sim.handle
        .stats()
        .await
        .requests
        .get(route)
        .copied()
        .unwrap_or(0)
}

/// The entries of a directory.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---- the contract: every call ------------------------------------------------------------

#[tokio::test]
async fn file_calls_upload_retrieve_list_download_and_delete() {
    let sim = spawn_sim(stopped_clock()).await;
    let client = api_client(&sim.root);
    let dir = tempfile::tempdir().unwrap();
    let content = chat_lines(3, "gpt-4o-mini");

    let uploaded = upload(&client, dir.path(), &content).await;
    assert!(uploaded.id.starts_with("file-"), "{uploaded:?}");
    assert_eq!(uploaded.bytes, Some(content.len() as u64));
    assert_eq!(uploaded.filename, "input.jsonl");
    assert_eq!(uploaded.purpose, "batch");
    assert!(uploaded.created_at.is_some());

    let fetched = client.retrieve_file(&uploaded.id).await.unwrap();
    assert_eq!(fetched, uploaded);

    let batch_files: Vec<_> = client
        .list_files(Some("batch"))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        batch_files
            .iter()
            .map(|f| f.id.as_str())
            .collect::<Vec<_>>(),
        [uploaded.id.as_str()]
    );
    let other: Vec<_> = client
        .list_files(Some("fine-tune"))
        .try_collect()
        .await
        .unwrap();
    assert!(other.is_empty(), "{other:?}");

    let dest = dir.path().join("copy.jsonl");
    let n = client.download_file(&uploaded.id, &dest).await.unwrap();
    assert_eq!(n, content.len() as u64);
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), content);

    let deleted = client.delete_file(&uploaded.id).await.unwrap();
    assert!(deleted.deleted);
    assert_eq!(deleted.id, uploaded.id);
    let gone = client.retrieve_file(&uploaded.id).await.unwrap_err();
    assert!(matches!(gone, ApiError::NotFound { .. }), "{gone:?}");
}

#[tokio::test]
async fn upload_of_a_byte_range_sends_exactly_those_bytes() {
    let sim = spawn_sim(stopped_clock()).await;
    let client = api_client(&sim.root);
    let dir = tempfile::tempdir().unwrap();
    let lines = chat_lines(2, "gpt-4o-mini");
    // The daemon uploads parts of a split file: only the middle part is a batch file here.
    let whole = format!("HEAD-NOT-SENT\n{lines}TAIL-NOT-SENT\n");
    let path = file_with(dir.path(), "split.jsonl", whole.as_bytes());
    let start = "HEAD-NOT-SENT\n".len() as u64;
    let range = start..start + lines.len() as u64;

    let file = client
        .upload_file(&path, range, "split.part1.jsonl")
        .await
        .unwrap();
    assert_eq!(file.bytes, Some(lines.len() as u64));
    assert_eq!(file.filename, "split.part1.jsonl");
    assert_eq!(sim.content(&file.id).await, lines);
}

#[tokio::test]
async fn batch_runs_from_create_to_completed_and_its_output_downloads() {
    let sim = spawn_sim(fast_clock()).await;
    let client = api_client(&sim.root);
    let dir = tempfile::tempdir().unwrap();
    let input = upload(&client, dir.path(), &chat_lines(3, "gpt-4o-mini")).await;

    let request = CreateBatchRequest {
        output_expires_after: Some(OutputExpiresAfter::after_creation(7 * 86_400)),
        ..create_request(&input.id, "job_contract")
    };
    let created = client.create_batch(&request).await.unwrap();
    assert_eq!(created.status, BatchStatus::Validating);
    assert_eq!(created.upload_id.as_deref(), Some(input.id.as_str()));
    assert_eq!(created.endpoint, "/v1/chat/completions");
    assert_eq!(created.completion_window, "24h");
    assert_eq!(
        created.raw["metadata"]["batchwatch_job_id"].as_str(),
        Some("job_contract")
    );
    assert_eq!(created.raw["id"], created.id.as_str());

    let done = wait_until("the batch finished", Duration::from_secs(10), async || {
        let batch = client.retrieve_batch(&created.id).await.unwrap();
        (batch.status.is_terminal(), batch)
    })
    .await;
    assert_eq!(done.status, BatchStatus::Completed);
    assert_eq!(
        done.request_counts.map(|c| (c.total, c.completed)),
        Some((3, 3))
    );
    assert!(done.completed_at.is_some() && done.in_progress_at.is_some());

    let output_id = done.output_id.as_deref().expect("an output file");
    let dest = dir.path().join("results.jsonl");
    client.download_file(output_id, &dest).await.unwrap();
    let text = std::fs::read_to_string(&dest).unwrap();
    let mut ids: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["custom_id"].to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["\"r0\"", "\"r1\"", "\"r2\""]);
}

#[tokio::test]
async fn list_batches_follows_every_page_newest_first_and_stops_when_dropped() {
    let sim = spawn_sim(stopped_clock()).await;
    let client = api_client(&sim.root);
    let dir = tempfile::tempdir().unwrap();
    let input = upload(&client, dir.path(), &chat_lines(1, "gpt-4o-mini")).await;
    let mut created = Vec::new();
    for i in 0..5 {
        let batch = client
            .create_batch(&create_request(&input.id, &format!("job_{i}")))
            .await
            .unwrap();
        created.push(batch.id);
    }
    created.reverse();

    let listed: Vec<String> = client
        .list_batches(2)
        .map_ok(|b| b.id)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed, created);
    assert_eq!(requests(&sim, "GET /v1/batches").await, 3);

    // Reconciliation reads only as far as it needs: 3 batches at 2 per page is 2 pages.
    let first_three: Vec<_> = client.list_batches(2).take(3).collect().await;
    assert_eq!(first_three.len(), 3);
    assert_eq!(requests(&sim, "GET /v1/batches").await, 3 + 2);
}

#[tokio::test]
async fn cancel_moves_a_batch_to_cancelling_then_cancelled() {
    let sim = spawn_sim(stopped_clock()).await;
    let client = api_client(&sim.root);
    let dir = tempfile::tempdir().unwrap();
    let input = upload(&client, dir.path(), &chat_lines(2, "gpt-4o-mini")).await;
    let batch = client
        .create_batch(&create_request(&input.id, "job_cancel"))
        .await
        .unwrap();

    let cancelling = client.cancel_batch(&batch.id).await.unwrap();
    assert_eq!(cancelling.status, BatchStatus::Cancelling);
    assert!(!cancelling.status.is_terminal());
    assert!(cancelling.cancelling_at.is_some());

    sim.advance(3_600.0).await;
    let cancelled = client.retrieve_batch(&batch.id).await.unwrap();
    assert_eq!(cancelled.status, BatchStatus::Cancelled);
    assert!(cancelled.cancelled_at.is_some());
}

#[tokio::test]
async fn azure_flavour_works_against_openai_v1_paths_with_the_api_key_header() {
    let key = "azure-key-0123456789";
    let sim = spawn_sim(SimConfig {
        api_key: Some(SecretString::from(key)),
        ..stopped_clock()
    })
    .await;
    let mut s = client_settings(&sim.handle.azure_base_url());
    s.api.flavor = Flavor::Azure;
    let client = Client::new(&s.api, &s.limits, ApiKey::new(key).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = upload(&client, dir.path(), &chat_lines(1, "gpt-4o-mini")).await;
    let batch = client
        .create_batch(&create_request(&input.id, "job_azure"))
        .await
        .unwrap();
    assert_eq!(client.retrieve_batch(&batch.id).await.unwrap().id, batch.id);
    assert_eq!(requests(&sim, "POST /openai/v1/batches").await, 1);
    assert_eq!(requests(&sim, "POST /v1/batches").await, 0);

    // The same client with another key is refused: the key really travels in the header.
    let wrong = Client::new(&s.api, &s.limits, ApiKey::new("azure-wrong-key").unwrap()).unwrap();
    let err = wrong.retrieve_batch(&batch.id).await.unwrap_err();
    assert!(matches!(err, ApiError::Unauthorized { .. }), "{err:?}");
}

// ---- error classes and Retry-After ----------------------------------------------------------

/// A simulator, a client for it, and a batch to poll.
async fn sim_with_batch() -> (TestSim, Client, String) {
    let sim = spawn_sim(stopped_clock()).await;
    let batch = sim.submit(&chat_lines(1, "gpt-4o-mini")).await;
    let client = api_client(&sim.root);
    let id = batch["id"].as_str().unwrap().to_owned();
    (sim, client, id)
}

const RETRIEVE: &str = "GET /v1/batches/{batch_id}";
const CREATE: &str = "POST /v1/batches";

/// The call an error-class case makes, its faults scripted on the call's route.
#[derive(Clone, Copy)]
enum Call {
    /// `retrieve_batch` of a batch that exists.
    Retrieve,
    /// `create_batch` on an uploaded file.
    Create,
}

/// What a case's call must come to.
enum Expect {
    /// It succeeds, no sooner than `after` (the server's delay, waited out).
    Succeeds { after: Duration },
    /// It fails with an error that this accepts.
    Fails(Box<dyn Fn(&ApiError) -> bool>),
}

/// One error class: the faults the service answers with, what the client makes of them, and
/// how many requests it sent for it (retried, or not).
struct Case {
    name: String,
    call: Call,
    faults: Vec<ScriptedFault>,
    expect: Expect,
    requests: u64,
}

fn case(
    name: impl Into<String>,
    call: Call,
    faults: Vec<ScriptedFault>,
    expect: Expect,
    requests: u64,
) -> Case {
    Case {
        name: name.into(),
        call,
        faults,
        expect,
        requests,
    }
}

fn succeeds(after: Duration) -> Expect {
    Expect::Succeeds { after }
}

fn fails(accepts: impl Fn(&ApiError) -> bool + 'static) -> Expect {
    Expect::Fails(Box::new(accepts))
}

/// A transient error, for an answer with status `code`.
fn transient(code: u16) -> impl Fn(&ApiError) -> bool {
    move |e| matches!(e, ApiError::Transient { status: Some(s), .. } if *s == code)
}

/// An unknown outcome, for an answer with status `code`.
fn unknown_outcome(code: u16) -> impl Fn(&ApiError) -> bool {
    move |e| matches!(e, ApiError::UnknownOutcome { status: Some(s), .. } if *s == code)
}

fn rate_limited(retry_after: RetryAfter) -> ScriptedFault {
    ScriptedFault::new(FaultKind::RateLimit { retry_after })
}

fn status_fault(code: u16) -> ScriptedFault {
    ScriptedFault::new(FaultKind::Status {
        status: ErrorStatus::try_from(code).unwrap(),
    })
}

/// The transient statuses no other fault kind covers, each answered by the simulator.
const OVERLOAD: [u16; 4] = [408, 409, 503, 504];

/// Every error class a read and a create can meet, with Retry-After in each of its forms.
fn error_classes() -> Vec<Case> {
    use Call::{Create, Retrieve};
    let mut cases = vec![
        // The client's own back-off is at most 1 ms here; only the server's delay explains
        // a second.
        case(
            "429 with Retry-After in seconds is waited out, then succeeds",
            Retrieve,
            vec![rate_limited(RetryAfter::Seconds(1))],
            succeeds(Duration::from_secs(1)),
            2,
        ),
        case(
            "429 with retry-after-ms is honoured",
            Retrieve,
            vec![rate_limited(RetryAfter::Millis(400))],
            succeeds(Duration::from_millis(400)),
            2,
        ),
        // The simulator sends a date 2 s ahead, rounded down to the second: over 1 s from now.
        case(
            "429 with Retry-After as an HTTP date is honoured",
            Retrieve,
            vec![rate_limited(RetryAfter::HttpDate(1))],
            succeeds(Duration::from_secs(1)),
            2,
        ),
        case(
            "429 longer than retry_max_delay goes back to the caller with the delay",
            Retrieve,
            vec![rate_limited(RetryAfter::Seconds(30))],
            fails(|e| {
                matches!(e, ApiError::RateLimited { .. })
                    && e.is_transient()
                    && e.retry_after() == Some(Duration::from_secs(30))
            }),
            1,
        ),
        case(
            "500 and an HTML 502 are retried until success",
            Retrieve,
            vec![
                ScriptedFault::new(FaultKind::ServerError),
                ScriptedFault::new(FaultKind::BadGateway),
            ],
            succeeds(Duration::ZERO),
            3,
        ),
        case(
            "a persistent 502 gives up after retry_attempts (3) as transient, without the HTML",
            Retrieve,
            vec![ScriptedFault::new(FaultKind::BadGateway).times(10)],
            fails(|e| {
                let text = e.to_string();
                transient(502)(e)
                    && text.starts_with("retrieve batch: temporary failure: 502 Bad Gateway")
                    && !text.contains("<html>")
            }),
            3,
        ),
        case(
            "401 is Unauthorized, an auth error with the server's message, never retried",
            Retrieve,
            vec![ScriptedFault::new(FaultKind::Unauthorized)],
            fails(|e| {
                matches!(e, ApiError::Unauthorized { .. })
                    && e.is_auth()
                    && !e.is_transient()
                    && e.to_string().contains("Incorrect API key provided")
            }),
            1,
        ),
        case(
            "403 is Forbidden, an auth error distinct from 401, never retried",
            Retrieve,
            vec![ScriptedFault::new(FaultKind::Forbidden)],
            fails(|e| matches!(e, ApiError::Forbidden { .. }) && e.is_auth()),
            1,
        ),
        case(
            "429 insufficient_quota is permanent, never retried",
            Retrieve,
            vec![ScriptedFault::new(FaultKind::Quota)],
            fails(|e| matches!(e, ApiError::QuotaExceeded { .. }) && !e.is_transient()),
            1,
        ),
        case(
            "a persistent 503 on a read gives up after retry_attempts (3) as transient",
            Retrieve,
            vec![status_fault(503).times(10)],
            fails(transient(503)),
            3,
        ),
        case(
            "500 on create is an unknown outcome, never retried",
            Create,
            vec![ScriptedFault::new(FaultKind::ServerError)],
            fails(unknown_outcome(500)),
            1,
        ),
    ];
    for code in OVERLOAD {
        cases.push(case(
            format!("{code} on a read is retried once"),
            Retrieve,
            vec![status_fault(code)],
            succeeds(Duration::ZERO),
            2,
        ));
        cases.push(case(
            format!("{code} on create is an unknown outcome, never retried"),
            Create,
            vec![status_fault(code)],
            fails(unknown_outcome(code)),
            1,
        ));
    }
    cases
}

/// Runs one case against a simulator of its own; what went wrong, if anything.
async fn run_case(case: &Case) -> Result<(), String> {
    let sim = spawn_sim(stopped_clock()).await;
    let client = api_client(&sim.root);
    let (route, method, path) = match case.call {
        Call::Retrieve => (RETRIEVE, "GET", "/v1/batches/{batch_id}"),
        Call::Create => (CREATE, "POST", "/v1/batches"),
    };
    let dir = tempfile::tempdir().unwrap();
    // What the call needs exists before any fault is scripted.
    let target = match case.call {
        Call::Retrieve => {
            let batch = sim.submit(&chat_lines(1, "gpt-4o-mini")).await;
            batch["id"].as_str().unwrap().to_owned()
        }
        Call::Create => {
            upload(&client, dir.path(), &chat_lines(1, "gpt-4o-mini"))
                .await
                .id
        }
    };
    for fault in &case.faults {
        sim.handle.push_fault(fault.clone().on(method, path)).await;
    }
    let started = Instant::now();
    let result = match case.call {
        Call::Retrieve => client
            .retrieve_batch(&target)
            .await
            .map(|b| assert_eq!(b.id, target, "{}", case.name)),
        Call::Create => client
            .create_batch(&create_request(&target, "job_error_class"))
            .await
            .map(drop),
    };
    let elapsed = started.elapsed();
    let mut wrong = Vec::new();
    match (&case.expect, result) {
        (Expect::Succeeds { after }, Ok(())) if elapsed >= *after => {}
        (Expect::Succeeds { after }, Ok(())) => wrong.push(format!(
            "succeeded after {elapsed:?}, sooner than {after:?}"
        )),
        (Expect::Succeeds { .. }, Err(e)) => wrong.push(format!("failed: {e}\n{e:?}")),
        (Expect::Fails(accepts), Err(e)) if accepts(&e) => {}
        (Expect::Fails(_), Err(e)) => wrong.push(format!("failed otherwise: {e}\n{e:?}")),
        (Expect::Fails(_), Ok(())) => wrong.push("succeeded".to_owned()),
    }
    let sent = requests(&sim, route).await;
    if sent != case.requests {
        wrong.push(format!("{sent} requests on {route}, not {}", case.requests));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {}", case.name, wrong.join("; ")))
    }
}

/// Each error class the service answers with, on a read and on a create, with what the client
/// must make of it: waited out and retried, handed back transient, permanent, an auth error,
/// or an unknown outcome that is never retried. Every case runs, each against its own
/// simulator; a failure names every case that went wrong.
#[tokio::test]
async fn every_error_class_is_retried_or_handed_back_as_the_table_says() {
    let cases = error_classes();
    let outcomes = futures_util::future::join_all(cases.iter().map(run_case)).await;
    let wrong: Vec<String> = outcomes.into_iter().filter_map(Result::err).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} cases went wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[tokio::test]
async fn unknown_and_vanished_batches_are_not_found() {
    let (sim, client, id) = sim_with_batch().await;
    let err = client
        .retrieve_batch("batch_does_not_exist")
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::NotFound { .. }), "{err:?}");
    assert!(sim.handle.vanish(&id).await);
    let err = client.retrieve_batch(&id).await.unwrap_err();
    assert!(matches!(err, ApiError::NotFound { .. }), "{err:?}");
    assert_eq!(requests(&sim, RETRIEVE).await, 2, "404 is not retried");
}

#[tokio::test]
async fn bad_request_keeps_the_servers_message_param_and_code() {
    let sim = spawn_sim(stopped_clock()).await;
    let client = api_client(&sim.root);
    let dir = tempfile::tempdir().unwrap();
    let input = upload(&client, dir.path(), &chat_lines(1, "gpt-4o-mini")).await;
    let request = CreateBatchRequest {
        completion_window: "48h".to_owned(),
        ..create_request(&input.id, "job_bad")
    };
    let err = client.create_batch(&request).await.unwrap_err();
    match &err {
        ApiError::BadRequest {
            status,
            param,
            code,
            message,
            ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(param.as_deref(), Some("completion_window"));
            assert_eq!(code.as_deref(), Some("invalid_value"));
            assert!(message.contains("48h"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().starts_with("create batch: refused (400): "));
}

#[tokio::test]
async fn dropped_connection_after_create_is_an_unknown_outcome_and_the_batch_exists() {
    let sim = spawn_sim(stopped_clock()).await;
    let client = api_client(&sim.root);
    let dir = tempfile::tempdir().unwrap();
    let input = upload(&client, dir.path(), &chat_lines(1, "gpt-4o-mini")).await;
    sim.handle
        .push_fault(ScriptedFault::new(FaultKind::DropAfter).on("POST", "/v1/batches"))
        .await;

    let err = client
        .create_batch(&create_request(&input.id, "job_dropped"))
        .await
        .unwrap_err();
    assert!(err.is_unknown_outcome(), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(requests(&sim, "POST /v1/batches").await, 1, "never retried");
    // It was carried out: reconciliation finds it by the job id in its metadata.
    let stats = sim.handle.stats().await;
    assert_eq!(stats.batches_by_job.get("job_dropped"), Some(&1));
    let found = client
        .list_batches(100)
        .try_filter(|b| {
            std::future::ready(
                b.raw["metadata"]["batchwatch_job_id"].as_str() == Some("job_dropped"),
            )
        })
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
}

#[tokio::test]
async fn dropped_connection_after_upload_is_an_unknown_outcome() {
    let sim = spawn_sim(stopped_clock()).await;
    let client = api_client(&sim.root);
    let dir = tempfile::tempdir().unwrap();
    sim.handle
        .push_fault(ScriptedFault::new(FaultKind::DropAfter).on("POST", "/v1/files"))
        .await;
    let content = chat_lines(1, "gpt-4o-mini");
    let path = file_with(dir.path(), "input.jsonl", content.as_bytes());
    let err = client
        .upload_file(&path, 0..content.len() as u64, "input.jsonl")
        .await
        .unwrap_err();
    assert!(err.is_unknown_outcome(), "{err:?}");
    assert_eq!(requests(&sim, "POST /v1/files").await, 1);
    let files: Vec<_> = client.list_files(None).try_collect().await.unwrap();
    assert_eq!(files.len(), 1, "the upload was carried out");
}

#[tokio::test]
async fn create_timing_out_after_it_was_sent_is_an_unknown_outcome() {
    let sim = spawn_sim(stopped_clock()).await;
    let client = api_client_with(&sim.root, |s| {
        s.api.request_timeout = Dur(Duration::from_millis(300));
    });
    let dir = tempfile::tempdir().unwrap();
    let input = upload(&client, dir.path(), &chat_lines(1, "gpt-4o-mini")).await;
    sim.handle
        .push_fault(ScriptedFault::new(FaultKind::Latency { ms: 1_500 }).on("POST", "/v1/batches"))
        .await;
    let err = client
        .create_batch(&create_request(&input.id, "job_slow"))
        .await
        .unwrap_err();
    assert!(err.is_unknown_outcome(), "{err:?}");
}

#[tokio::test]
async fn connection_refused_on_create_and_upload_is_transient_not_unknown() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = api_client(&format!("http://{addr}/v1"));
    let dir = tempfile::tempdir().unwrap();

    let err = client
        .create_batch(&create_request("file-1", "job_refused"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Transient { status: None, .. }),
        "{err:?}"
    );
    let path = file_with(dir.path(), "input.jsonl", b"{}\n");
    let err = client
        .upload_file(&path, 0..3, "input.jsonl")
        .await
        .unwrap_err();
    assert!(err.is_transient() && !err.is_unknown_outcome(), "{err:?}");
    let err = client.retrieve_batch("batch_1").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn broken_download_is_retried_and_completes() {
    let sim = spawn_sim(stopped_clock()).await;
    let client = api_client(&sim.root);
    let dir = tempfile::tempdir().unwrap();
    let content = chat_lines(400, "gpt-4o-mini");
    let file = upload(&client, dir.path(), &content).await;
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::BrokenDownload).on("GET", "/v1/files/{file_id}/content"),
        )
        .await;
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("results.jsonl");
    let n = client.download_file(&file.id, &dest).await.unwrap();
    assert_eq!(n, content.len() as u64);
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), content);
    assert_eq!(requests(&sim, "GET /v1/files/{file_id}/content").await, 2);
    assert_eq!(
        entries(out.path()),
        ["results.jsonl"],
        "no temporary file left"
    );
}

#[tokio::test]
async fn download_that_keeps_breaking_fails_and_leaves_nothing_behind() {
    let sim = spawn_sim(stopped_clock()).await;
    let client = api_client(&sim.root);
    let dir = tempfile::tempdir().unwrap();
    let file = upload(&client, dir.path(), &chat_lines(400, "gpt-4o-mini")).await;
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::BrokenDownload)
                .times(10)
                .on("GET", "/v1/files/{file_id}/content"),
        )
        .await;
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("results.jsonl");
    let err = client.download_file(&file.id, &dest).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(requests(&sim, "GET /v1/files/{file_id}/content").await, 3);
    assert!(!dest.exists());
    assert!(entries(out.path()).is_empty(), "{:?}", entries(out.path()));
}

#[tokio::test]
async fn download_stalled_beyond_the_read_timeout_is_retried() {
    let sim = spawn_sim(stopped_clock()).await;
    let client = api_client_with(&sim.root, |s| {
        s.api.download_read_timeout = Dur(Duration::from_millis(200));
    });
    let dir = tempfile::tempdir().unwrap();
    let content = chat_lines(5, "gpt-4o-mini");
    let file = upload(&client, dir.path(), &content).await;
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::Latency { ms: 1_000 })
                .on("GET", "/v1/files/{file_id}/content"),
        )
        .await;
    let dest = dir.path().join("results.jsonl");
    client.download_file(&file.id, &dest).await.unwrap();
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), content);
    assert_eq!(requests(&sim, "GET /v1/files/{file_id}/content").await, 2);
}

#[tokio::test]
async fn unreadable_upload_and_unwritable_download_are_local_io_errors() {
    let sim = spawn_sim(stopped_clock()).await;
    let client = api_client(&sim.root);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let err = client
        .upload_file(&missing, 0..10, "missing.jsonl")
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::LocalIo { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.jsonl"), "{err}");

    let short = file_with(dir.path(), "short.jsonl", b"{}\n");
    let err = client
        .upload_file(&short, 0..100, "short.jsonl")
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::LocalIo { .. }), "{err:?}");
    assert_eq!(
        requests(&sim, "POST /v1/files").await,
        0,
        "nothing was sent"
    );

    let file = upload(&client, dir.path(), &chat_lines(1, "gpt-4o-mini")).await;
    let dest = dir.path().join("no-such-dir").join("out.jsonl");
    let err = client.download_file(&file.id, &dest).await.unwrap_err();
    assert!(matches!(err, ApiError::LocalIo { .. }), "{err:?}");
}

#[tokio::test]
async fn concurrency_limit_holds_requests_back_across_clones() {
    let (sim, _, id) = sim_with_batch().await;
    let mut faults = sim.handle.faults().await;
    faults.latency_ms = 150;
    sim.handle.set_faults(faults).await.unwrap();
    let client = api_client_with(&sim.root, |s| s.limits.concurrency = 1);
    let started = Instant::now();
    let calls = (0..3).map(|_| {
        let c = client.clone();
        let id = id.clone();
        async move { c.retrieve_batch(&id).await }
    });
    for result in futures_util::future::join_all(calls).await {
        result.unwrap();
    }
    // One at a time, 150 ms each; three in parallel would take 150 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
}

// ---- secrecy ------------------------------------------------------------------------------------

/// Log output captured in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn api_key_appears_in_no_error_debug_output_or_log_line() {
    const WRONG: &str = "sk-wrong-DO-NOT-LOG-88d0b1";
    let logs = Captured::default();
    let writer = logs.clone();
    // A current-thread runtime: the client, the simulator and hyper's connection tasks all
    // log on this thread, to this subscriber.
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );

    let sim = spawn_sim(SimConfig {
        api_key: Some(SecretString::from(KEY)),
        ..stopped_clock()
    })
    .await;
    let s = client_settings(&sim.root);
    let client = Client::new(&s.api, &s.limits, ApiKey::new(KEY).unwrap()).unwrap();
    let wrong = Client::new(&s.api, &s.limits, ApiKey::new(WRONG).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = upload(&client, dir.path(), &chat_lines(2, "gpt-4o-mini")).await;
    let batch = client
        .create_batch(&create_request(&input.id, "job_secret"))
        .await
        .unwrap();

    let mut errors: Vec<ApiError> = Vec::new();
    for fault in [
        FaultKind::RateLimit {
            retry_after: RetryAfter::Seconds(60),
        },
        FaultKind::ServerError,
        FaultKind::BadGateway,
        FaultKind::Unauthorized,
        FaultKind::Forbidden,
        FaultKind::Quota,
    ] {
        sim.handle
            .push_fault(ScriptedFault::new(fault).times(3))
            .await;
        errors.push(client.retrieve_batch(&batch.id).await.unwrap_err());
        sim.handle.clear_scripted_faults().await;
    }
    sim.handle
        .push_fault(ScriptedFault::new(FaultKind::DropAfter).on("POST", "/v1/batches"))
        .await;
    errors.push(
        client
            .create_batch(&create_request(&input.id, "job_secret"))
            .await
            .unwrap_err(),
    );
    errors.push(wrong.retrieve_batch(&batch.id).await.unwrap_err());
    errors.push(client.retrieve_batch("batch_missing").await.unwrap_err());
    assert!(client.cancel_batch(&batch.id).await.is_ok());
    assert!(client.delete_file(&input.id).await.is_ok());

    let mut seen = String::new();
    for err in &errors {
        seen.push_str(&format!(
            "{err}\n{err:?}\n{}\n",
            batchwatch::telemetry::chain(err)
        ));
    }
    seen.push_str(&format!("{client:?}\n{wrong:?}\n"));
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("api request") && logged.contains("/batches/"),
        "the client's request logs were not captured:\n{logged}"
    );
    assert!(
        logged.contains("retrying after a transient error"),
        "{logged}"
    );
    for key in [KEY, WRONG] {
        assert!(!seen.contains(key), "the key leaked into an error:\n{seen}");
        assert!(
            !logged.contains(key),
            "the key leaked into the logs:\n{logged}"
        );
    }
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, ApiError::Unauthorized { .. }))
    );
}

// ---- memory -------------------------------------------------------------------------------------

/// Set in the child process of the memory test: the simulator's base URL, then the file.
const RSS_CHILD_ENV: &str = "BATCHWATCH_TEST_UPLOAD_RSS";

/// The most the uploading process may reach, whatever the file's size.
const RSS_BOUND_KIB: u64 = 64 * 1024;

const UPLOAD_MB: u64 = 150;

/// The uploading side of the memory test, run in a fresh process so that nothing else (the
/// simulator, other tests, the file's generation) counts towards its peak.
async fn upload_in_child(spec: &str) {
    let (base_url, path) = spec.split_once(' ').expect("BASE_URL PATH");
    let path = Path::new(path);
    let size = std::fs::metadata(path).unwrap().len();
    let client = api_client(base_url);
    let file = client
        .upload_file(path, 0..size, "big.jsonl")
        .await
        .expect("the upload");
    memory::report("upload-rss", &[("bytes", file.bytes.unwrap_or(0))]);
}

#[tokio::test]
async fn upload_of_150_mb_keeps_the_uploading_process_under_64_mib() {
    if let Ok(spec) = std::env::var(RSS_CHILD_ENV) {
        return upload_in_child(&spec).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    let size = write_jsonl(&path, UPLOAD_MB * 1_000_000).unwrap();
    let sim = spawn_sim(SimConfig {
        data_dir: Some(dir.path().join("sim")),
        ..stopped_clock()
    })
    .await;
    let report = memory::in_child(
        "client::upload_of_150_mb_keeps_the_uploading_process_under_64_mib",
        RSS_CHILD_ENV,
        format!("{} {}", sim.root, path.display()),
        "upload-rss",
    )
    .await;
    assert_eq!(
        report.field("bytes"),
        size,
        "the simulator stored the whole file"
    );
    let peak = report.field("vmhwm_kib");
    assert!(
        peak < RSS_BOUND_KIB,
        "uploading {UPLOAD_MB} MB took the process to {peak} KiB"
    );
}
