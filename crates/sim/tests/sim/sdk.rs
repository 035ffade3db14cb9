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

fn sdk_available() -> Result<(), String> {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .map_err(|e| format!("python3 cannot run: {e}"))?;
    if probe.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`python3 -c 'import openai'` failed: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ))
    }
}

#[tokio::test]
async fn the_official_python_sdk_works_against_the_simulator_unchanged() {
    if let Err(reason) = sdk_available() {
        if std::env::var("BATCHWATCH_REQUIRE_SDK").as_deref() == Ok("1") {
            panic!("BATCHWATCH_REQUIRE_SDK=1 but the Python SDK is unavailable: {reason}");
        }
        eprintln!(
            "skipping the Python SDK test: {reason} (install it: python3 -m pip install openai)"
        );
        return;
    }
    let sim = spawn_sim(stopped_clock_with_failures()).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sdk_check.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let output = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(sim.handle.base_url())
        .arg(sim.handle.azure_base_url())
        .arg(sim.handle.admin_url())
        .arg(KEY)
        .arg(dir.path().join("requests.jsonl"))
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the SDK script failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).expect("the script prints JSON");
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
