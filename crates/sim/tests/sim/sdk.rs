//! The official OpenAI Python SDK against the simulator, unchanged.
//!
//! Needs `python3` with the `openai` package (`python3 -m pip install openai`). Without it the
//! test is skipped with a printed reason, unless `BATCHWATCH_REQUIRE_SDK=1` (as in CI), which
//! makes it fail instead.

use serde_json::Value;

use crate::support::KEY;
use crate::support::sim::{spawn_sim, stopped_clock_with_failures};

/// Uploads, creates, polls to completion (moving the stopped clock through the admin API),
/// downloads, lists with auto-pagination, cancels, and checks a 404 becomes NotFoundError.
const SCRIPT: &str = r#"
import json, os, sys, time, urllib.request
import openai
from openai import OpenAI

base, azure, admin, key, path = sys.argv[1:6]
client = OpenAI(base_url=base, api_key=key, max_retries=0)

def tick(secs):
    request = urllib.request.Request(
        admin + "/clock", data=json.dumps({"advance_secs": secs}).encode(),
        headers={"content-type": "application/json"}, method="POST")
    urllib.request.urlopen(request).read()

def wait(batch_id, ends):
    for _ in range(500):
        batch = client.batches.retrieve(batch_id)
        if batch.status in ends:
            return batch
        tick(5)
        time.sleep(0.002)
    raise SystemExit(f"batch {batch_id} stayed {batch.status}")

with open(path, "w") as f:
    for i in range(6):
        f.write(json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
                            "body": {"model": "gpt-4o-mini",
                                     "messages": [{"role": "user", "content": f"say {i}"}]}}) + "\n")

uploaded = client.files.create(file=open(path, "rb"), purpose="batch")
batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                              completion_window="24h", metadata={"batchwatch_job_id": "job_sdk"})
done = wait(batch.id, {"completed", "failed", "expired", "cancelled"})
output = client.files.content(done.output_file_id).text
errors = client.files.content(done.error_file_id).text if done.error_file_id else ""
replies = {}
for line in output.splitlines():
    row = json.loads(line)
    replies[row["custom_id"]] = row["response"]["body"]["choices"][0]["message"]["content"]
failed = [json.loads(line)["custom_id"] for line in errors.splitlines()]

second = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                               completion_window="24h")
cancelling = client.batches.cancel(second.id)
cancelled = wait(second.id, {"cancelled"})

try:
    client.batches.retrieve("batch_missing")
    missing = "no error"
except openai.NotFoundError as e:
    missing = type(e).__name__

azure_client = OpenAI(base_url=azure, api_key=key, max_retries=0)
print(json.dumps({
    "file_bytes": uploaded.bytes,
    "status": done.status,
    "counts": [done.request_counts.total, done.request_counts.completed, done.request_counts.failed],
    "output_bytes": client.files.retrieve(done.output_file_id).bytes,
    "replies": replies,
    "failed": failed,
    "listed": [b.id for b in client.batches.list(limit=1)],
    "files": [f.id for f in client.files.list(purpose="batch")],
    "cancelling": cancelling.status,
    "cancelled": cancelled.status,
    "missing": missing,
    "azure_listed": [b.id for b in azure_client.batches.list()],
    "sdk": openai.__version__,
}))
"#;

/// Whether the test must be skipped because python3 cannot import `module`: it says why, and
/// under `BATCHWATCH_REQUIRE_SDK=1` (as in CI) it fails instead.
fn sdk_missing(module: &str) -> bool {
    let probe = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output();
    let reason = match probe {
        Ok(out) if out.status.success() => return false,
        Ok(out) => format!(
            "`python3 -c 'import {module}'` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("python3 cannot run: {e}"),
    };
    if std::env::var("BATCHWATCH_REQUIRE_SDK").as_deref() == Ok("1") {
        panic!("BATCHWATCH_REQUIRE_SDK=1 but the Python SDK is unavailable: {reason}");
    }
    eprintln!(
        "skipping the {module} SDK test: {reason} (install it: python3 -m pip install {module})"
    );
    true
}

/// Runs `script` with python3 and `args`, without the SDK's environment variables (`unset`),
/// and returns the JSON it prints; the script's failure fails the test with its output.
async fn run_script(script: &str, args: &[String], unset: [&str; 2]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sdk_check.py");
    std::fs::write(&path, script).unwrap();
    let output = tokio::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .env_remove(unset[0])
        .env_remove(unset[1])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the SDK script failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("the script prints JSON")
}

#[tokio::test]
async fn the_official_python_sdk_works_against_the_simulator_unchanged() {
    if sdk_missing("openai") {
        return;
    }
    let sim = spawn_sim(stopped_clock_with_failures()).await;
    let args = [
        sim.handle.base_url(),
        sim.handle.azure_base_url(),
        sim.handle.admin_url(),
        KEY.to_owned(),
        // In the script's own temporary directory.
        "requests.jsonl".to_owned(),
    ];
    let seen = run_script(SCRIPT, &args, ["OPENAI_BASE_URL", "OPENAI_API_KEY"]).await;
    eprintln!("openai {} against the simulator: {seen}", seen["sdk"]);

    assert_eq!(seen["status"], "completed");
    let counts: Vec<u64> = seen["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();
    assert_eq!(counts[0], 6);
    let replies = seen["replies"].as_object().unwrap();
    let failed = seen["failed"].as_array().unwrap();
    assert_eq!(replies.len() as u64, counts[1]);
    assert_eq!(failed.len() as u64, counts[2]);
    assert_eq!(
        replies.len() + failed.len(),
        6,
        "every request is answered once"
    );
    for (custom_id, reply) in replies {
        let n = custom_id.trim_start_matches('q');
        assert_eq!(reply, &format!("Simulated reply to {custom_id}: say {n}"));
    }
    assert!(seen["output_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        seen["listed"].as_array().unwrap().len(),
        2,
        "pagination walked both pages"
    );
    assert_eq!(seen["files"].as_array().unwrap().len(), 1);
    assert_eq!(seen["cancelling"], "cancelling");
    assert_eq!(seen["cancelled"], "cancelled");
    assert_eq!(seen["missing"], "NotFoundError");
    assert_eq!(seen["azure_listed"], seen["listed"]);
    assert_eq!(
        sim.handle.stats().await.batches_by_job.get("job_sdk"),
        Some(&1)
    );
}

/// Every Message Batches call of the official `anthropic` package, each answer parsed by the
/// SDK's own types: create, retrieve until ended (moving the stopped clock), results with every
/// result type (succeeded and errored; canceled after a cancel; expired after the window),
/// list walked page by page both ways, delete, and the errors as the SDK's exception classes
/// (400 for a bad `custom_id` and for deleting a batch in progress, 404, 429 with
/// `retry-after`, 529 overloaded).
const ANTHROPIC_SCRIPT: &str = r#"
import json, sys, time, urllib.request
import anthropic
from anthropic import Anthropic
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse, DeletedMessageBatch

base, admin, key = sys.argv[1:4]
client = Anthropic(base_url=base, api_key=key, max_retries=0)
batches = client.messages.batches

def post(path, body):
    request = urllib.request.Request(
        admin + path, data=json.dumps(body).encode(),
        headers={"content-type": "application/json"}, method="POST")
    urllib.request.urlopen(request).read()

def tick(secs):
    post("/clock", {"advance_secs": secs})

def wait(batch_id):
    """Retrieves the batch until it ends, ending its current stage through the admin API."""
    for _ in range(10):
        batch = batches.retrieve(batch_id)
        assert isinstance(batch, MessageBatch)
        if batch.processing_status == "ended":
            return batch
        post("/batches/step", {"ids": [batch_id]})
    raise SystemExit(f"batch {batch_id} stayed {batch.processing_status}")

def requests(prefix, n):
    return [{"custom_id": f"{prefix}{i}",
             "params": {"model": "claude-sonnet-4-5", "max_tokens": 64,
                        "messages": [{"role": "user", "content": f"say {i}"}]}} for i in range(n)]

def results_of(batch_id):
    out = {}
    for row in batches.results(batch_id):
        assert isinstance(row, MessageBatchIndividualResponse)
        result = row.result
        if result.type == "succeeded":
            out[row.custom_id] = ["succeeded", result.message.content[0].text,
                                  result.message.usage.input_tokens, result.message.usage.output_tokens]
        elif result.type == "errored":
            out[row.custom_id] = ["errored", result.error.error.type]
        else:
            out[row.custom_id] = [result.type]
    return out

def error_of(call):
    try:
        call()
        return "no error"
    except anthropic.APIStatusError as e:
        return [type(e).__name__, e.status_code, e.body["error"]["type"], e.response.headers.get("retry-after")]

first = batches.create(requests=requests("q", 6))
created = [first.processing_status, first.request_counts.processing, first.results_url, first.type]
done = wait(first.id)
counts = done.request_counts
first_results = results_of(first.id)

second = batches.create(requests=requests("c", 4))
canceling = batches.cancel(second.id)
canceled = wait(second.id)
canceled_results = results_of(second.id)

third = batches.create(requests=requests("e", 3))
tick(90000)
expired = wait(third.id)
expired_results = results_of(third.id)

walked = [b.id for b in batches.list(limit=1)]
newer = [b.id for b in batches.list(before_id=first.id, limit=1)]  # auto-paginates
older = [b.id for b in batches.list(after_id=third.id, limit=5)]

in_progress = batches.create(requests=requests("p", 1))
errors = {
    "bad_custom_id": error_of(lambda: batches.create(requests=[{"custom_id": "a b", "params": {}}])),
    "duplicate": error_of(lambda: batches.create(requests=requests("d", 1) + requests("d", 1))),
    "delete_in_progress": error_of(lambda: batches.delete(in_progress.id)),
    "cancel_ended": error_of(lambda: batches.cancel(first.id)),
}
post("/faults/script", [{"kind": "rate_limit", "retry_after": {"seconds": 7}, "times": 1,
                          "method": "GET", "path": "/v1/messages/batches/{batch_id}"},
                         {"kind": "status", "status": 529, "times": 1, "method": "GET",
                          "path": "/v1/messages/batches"}])
errors["rate_limited"] = error_of(lambda: batches.retrieve(first.id))
errors["overloaded"] = error_of(lambda: batches.list())

deleted = batches.delete(first.id)
assert isinstance(deleted, DeletedMessageBatch)
errors["deleted"] = error_of(lambda: batches.retrieve(first.id))
errors["results_deleted"] = error_of(lambda: client.get(f"/v1/messages/batches/{first.id}/results", cast_to=object))
after_delete = [b.id for b in batches.list(limit=100)]

print(json.dumps({
    "ids": [first.id, second.id, third.id, in_progress.id],
    "created": created,
    "ended": [done.processing_status, done.ended_at is not None, done.results_url],
    "counts": [counts.processing, counts.succeeded, counts.errored, counts.canceled, counts.expired],
    "first_results": first_results,
    "canceling": [canceling.processing_status, canceling.cancel_initiated_at is not None],
    "canceled_counts": [canceled.request_counts.succeeded, canceled.request_counts.errored, canceled.request_counts.canceled],
    "canceled_results": canceled_results,
    "expired_counts": [expired.request_counts.succeeded, expired.request_counts.errored, expired.request_counts.expired],
    "expired_results": expired_results,
    "walked": walked, "newer": newer, "older": older,
    "errors": errors,
    "deleted": [deleted.id, deleted.type],
    "after_delete": after_delete,
    "sdk": anthropic.__version__,
}))
"#;

#[tokio::test]
async fn the_official_anthropic_sdk_works_against_the_simulator_unchanged() {
    if sdk_missing("anthropic") {
        return;
    }
    // Longer than the 24-hour window, so that the third batch is still processing when its
    // time is up; the others are moved along through the admin API.
    let config = batchwatch_sim::SimConfig {
        in_progress_secs: 100_000.0,
        ..stopped_clock_with_failures()
    };
    let sim = spawn_sim(config).await;
    let args = [
        format!("http://{}", sim.handle.addr()),
        sim.handle.admin_url(),
        KEY.to_owned(),
    ];
    let seen = run_script(
        ANTHROPIC_SCRIPT,
        &args,
        ["ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"],
    )
    .await;
    eprintln!("anthropic {} against the simulator: {seen}", seen["sdk"]);
    let ids: Vec<&str> = seen["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(ids.iter().all(|id| id.starts_with("msgbatch_")), "{ids:?}");
    let [first, second, third, in_progress] = ids[..] else {
        panic!("four batches: {ids:?}")
    };
    let results_url = format!(
        "http://{}/v1/messages/batches/{first}/results",
        sim.handle.addr()
    );

    assert_eq!(
        seen["created"],
        serde_json::json!(["in_progress", 6, null, "message_batch"])
    );
    assert_eq!(
        seen["ended"],
        serde_json::json!(["ended", true, results_url])
    );
    let counts: Vec<u64> = seen["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();
    let (succeeded, errored) = (counts[1], counts[2]);
    assert_eq!(counts[0], 0, "nothing left processing");
    assert_eq!(succeeded + errored, 6);
    assert!(
        errored > 0 && succeeded > 0,
        "the failure rate shows: {counts:?}"
    );
    let results = seen["first_results"].as_object().unwrap();
    assert_eq!(results.len(), 6, "a line for every request: {results:?}");
    for (custom_id, result) in results {
        match result[0].as_str().unwrap() {
            "succeeded" => {
                let n = custom_id.trim_start_matches('q');
                assert_eq!(
                    result[1],
                    format!("Simulated reply to {custom_id}: say {n}")
                );
                assert!(result[2].as_u64().unwrap() > 0 && result[3].as_u64().unwrap() > 0);
            }
            "errored" => assert!(
                ["invalid_request_error", "api_error"].contains(&result[1].as_str().unwrap())
            ),
            other => panic!("{custom_id}: {other}"),
        }
    }
    let tally = |kind: &str| results.values().filter(|r| r[0] == kind).count() as u64;
    assert_eq!((tally("succeeded"), tally("errored")), (succeeded, errored));

    assert_eq!(seen["canceling"], serde_json::json!(["canceling", true]));
    assert_eq!(
        seen["canceled_counts"],
        serde_json::json!([0, 0, 4]),
        "cancelled before any request ran"
    );
    let canceled = seen["canceled_results"].as_object().unwrap();
    assert_eq!(canceled.len(), 4);
    assert!(
        canceled.values().all(|r| r[0] == "canceled"),
        "{canceled:?}"
    );
    let expired_counts: Vec<u64> = seen["expired_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();
    assert_eq!(expired_counts.iter().sum::<u64>(), 3, "{expired_counts:?}");
    assert!(expired_counts[2] > 0, "{expired_counts:?}");
    let expired = seen["expired_results"].as_object().unwrap();
    assert_eq!(expired.len(), 3);
    assert!(
        expired.values().any(|r| r[0] == "expired"),
        "the window ended before the requests: {expired:?}"
    );

    assert_eq!(
        seen["walked"],
        serde_json::json!([third, second, first]),
        "auto-pagination walks every page, newest first"
    );
    assert_eq!(
        seen["newer"],
        serde_json::json!([second, third]),
        "before_id pages towards the newest"
    );
    assert_eq!(seen["older"], serde_json::json!([second, first]));

    let error = |name: &str| seen["errors"][name].clone();
    assert_eq!(
        error("bad_custom_id"),
        serde_json::json!(["BadRequestError", 400, "invalid_request_error", null])
    );
    assert_eq!(error("duplicate")[0], "BadRequestError");
    assert_eq!(error("delete_in_progress")[0], "BadRequestError");
    assert_eq!(error("cancel_ended")[0], "BadRequestError");
    assert_eq!(
        error("rate_limited"),
        serde_json::json!(["RateLimitError", 429, "rate_limit_error", "7"])
    );
    assert_eq!(
        error("overloaded"),
        serde_json::json!(["OverloadedError", 529, "overloaded_error", null])
    );
    assert_eq!(
        error("deleted"),
        serde_json::json!(["NotFoundError", 404, "not_found_error", null])
    );
    assert_eq!(error("results_deleted")[1], 404);
    assert_eq!(
        seen["deleted"],
        serde_json::json!([first, "message_batch_deleted"])
    );
    assert_eq!(
        seen["after_delete"],
        serde_json::json!([in_progress, third, second]),
        "a deleted batch is listed no more"
    );
    // The OpenAI API does not see them.
    let (status, page) = sim.get("/batches").await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(page["data"], serde_json::json!([]));
}
