//! Output and error files in the real line format, with a deterministic fake response per
//! request.
//!
//! Every choice comes from the batch's seed and a request's *processing position*: the input
//! lines are processed in a seeded shuffled order, the first `processed` positions are done,
//! and whether position `p` fails is a pure function of the seed and `p`. So request counts can
//! be computed at any instant without touching the file, and the same seed always gives the
//! same ids, failures and line order. Files are written with one line in memory at a time.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::lifecycle::Ending;
use crate::model::{Api, FileReady, StoredFile};

/// Output tokens every fake response reports.
pub(crate) const COMPLETION_TOKENS: u64 = 12;

// Salts that keep the values derived from one seed independent of each other.
const SALT_FAIL: u64 = 0x6661_696c;
const SALT_ORDER: u64 = 0x6f72_6465;
const SALT_ID: u64 = 0x6964_6964;
const SALT_REQ: u64 = 0x7265_7169;
const SALT_BODY: u64 = 0x626f_6479;

/// A well-mixed 64-bit value from a seed and an index (the splitmix64 finaliser).
pub(crate) fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed
        .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A value in `[0, 1)` from 53 bits of `x`.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A repeatable value in `[0, 1)` for one named choice about the thing `seed` belongs to.
pub(crate) fn chance(seed: u64, salt: u64) -> f64 {
    unit(mix(seed, salt))
}

fn hex_id(seed: u64, salt: u64, n: u64) -> String {
    format!(
        "{:016x}{:016x}",
        mix(seed ^ salt, n),
        mix(seed ^ salt.rotate_left(17), n)
    )
}

/// The processing positions that fail, ascending.
pub(crate) fn failed_positions(seed: u64, total: u64, rate: f64) -> Vec<u32> {
    if rate <= 0.0 {
        return Vec::new();
    }
    (0..total)
        .filter(|&p| unit(mix(seed ^ SALT_FAIL, p)) < rate)
        .map(|p| p as u32)
        .collect()
}

/// The processing positions of input `lines` (0-based), in no particular order.
pub(crate) fn positions_of(seed: u64, total: u64, lines: &[u32]) -> Vec<u32> {
    let mut position = vec![0u32; total as usize];
    for (p, &line) in processing_order(seed, total).iter().enumerate() {
        position[line as usize] = p as u32;
    }
    lines
        .iter()
        .filter_map(|&line| position.get(line as usize).copied())
        .collect()
}

/// Why Anthropic refuses a request's `params` when it runs it, if it does: `model` a string,
/// `max_tokens` a positive integer, `messages` a non-empty array. Its create checks only that
/// `params` is an object; the rest ends the request `errored`.
pub(crate) fn params_refusal(params: &Value) -> Option<&'static str> {
    if !params.get("model").is_some_and(Value::is_string) {
        Some("params.model: Field required")
    } else if params
        .get("max_tokens")
        .and_then(Value::as_u64)
        .is_none_or(|n| n < 1)
    {
        Some("params.max_tokens: Input should be an integer greater than or equal to 1")
    } else if params
        .get("messages")
        .and_then(Value::as_array)
        .is_none_or(|m| m.is_empty())
    {
        Some("params.messages: List should have at least 1 item")
    } else {
        None
    }
}

/// `order[p]` is the input line (0-based) processed at position `p`.
fn processing_order(seed: u64, total: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..total as u32).collect();
    fastrand::Rng::with_seed(seed ^ SALT_ORDER).shuffle(&mut order);
    order
}

/// Where one generated file goes, and how its readiness is announced.
pub(crate) struct Sink {
    pub(crate) file: Arc<StoredFile>,
    pub(crate) ready: watch::Sender<FileReady>,
}

/// Everything needed to write a finished batch's output and error files (OpenAI), or its
/// results file (Anthropic: `output`, a line for every request).
pub(crate) struct OutputJob {
    pub(crate) api: Api,
    /// Unprocessed requests of an expired OpenAI batch go to the error file as
    /// `batch_expired`; an Anthropic batch's are `expired` or `canceled` results.
    pub(crate) ending: Ending,
    pub(crate) input: Arc<StoredFile>,
    pub(crate) endpoint: String,
    pub(crate) model: String,
    pub(crate) seed: u64,
    pub(crate) total: u64,
    pub(crate) processed: u64,
    pub(crate) failed_positions: Vec<u32>,
    /// Unix seconds for the `created` fields of the fake responses.
    pub(crate) created: i64,
    pub(crate) output: Option<Sink>,
    pub(crate) error: Option<Sink>,
}

#[derive(Serialize)]
struct OutputLine<'a> {
    id: String,
    custom_id: &'a str,
    response: Option<LineResponse>,
    error: Option<LineError>,
}

#[derive(Serialize)]
struct LineResponse {
    status_code: u16,
    request_id: String,
    body: Value,
}

#[derive(Serialize)]
struct LineError {
    code: &'static str,
    message: &'static str,
}

impl OutputJob {
    /// Writes the files on a blocking thread and announces them when done.
    pub(crate) fn spawn(self) {
        tokio::task::spawn_blocking(move || {
            let outcome = self.write();
            if let Err(e) = &outcome {
                tracing::error!(error = %e, "writing a batch's output files failed");
            }
            for sink in [&self.output, &self.error].into_iter().flatten() {
                let ready = match &outcome {
                    Ok(()) => std::fs::metadata(sink.file.path())
                        .map(|m| FileReady::Ready { bytes: m.len() })
                        .unwrap_or_else(|e| FileReady::Failed(e.to_string())),
                    Err(e) => FileReady::Failed(e.to_string()),
                };
                sink.ready.send_replace(ready);
            }
        });
    }

    fn write(&self) -> io::Result<()> {
        let input = File::open(self.input.path())?;
        // Where each line starts, then the end of the file: line `i` is `starts[i]..starts[i + 1]`.
        let mut starts = Vec::with_capacity(self.total as usize + 1);
        let mut reader = BufReader::with_capacity(256 * 1024, &input);
        let mut buf = Vec::new();
        let mut at = 0u64;
        loop {
            starts.push(at);
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            at += n as u64;
        }
        if starts.len() as u64 != self.total + 1 {
            return Err(io::Error::other("the input file changed after validation"));
        }
        let open = |sink: &Option<Sink>| -> io::Result<Option<BufWriter<File>>> {
            sink.as_ref()
                .map(|s| {
                    File::create(s.file.path()).map(|f| BufWriter::with_capacity(256 * 1024, f))
                })
                .transpose()
        };
        let mut output = open(&self.output)?;
        let mut errors = open(&self.error)?;

        let every_request = self.ending == Ending::Expired || self.api == Api::Anthropic;
        for (position, &line) in processing_order(self.seed, self.total).iter().enumerate() {
            let position = position as u64;
            if position >= self.processed && !every_request {
                break;
            }
            let (start, end) = (starts[line as usize], starts[line as usize + 1]);
            buf.resize((end - start) as usize, 0);
            input.read_exact_at(&mut buf, start)?;
            let (text, failed) = match serde_json::from_slice::<Value>(&buf) {
                Ok(request) if self.api == Api::Anthropic => (
                    self.anthropic_line(position, &request, buf.len() as u64)?,
                    false,
                ),
                Ok(request) => self.line(position, &request, buf.len() as u64)?,
                // One request the service cannot read fails alone, as a 400 in the error file
                // (or the output file, when the batch has no error file), never the whole file.
                Err(e) => (self.unreadable_line(position, &buf, &e)?, true),
            };
            let sink = match (failed, errors.is_some()) {
                (true, true) => &mut errors,
                _ => &mut output,
            };
            if let Some(out) = sink {
                out.write_all(text.as_bytes())?;
                out.write_all(b"\n")?;
            }
        }
        for out in [output, errors].into_iter().flatten() {
            out.into_inner().map_err(|e| e.into_error())?;
        }
        Ok(())
    }

    /// The line for a request whose JSON the service cannot read (nesting too deep for it, a
    /// number it cannot hold, a lone surrogate): a 400 that names the problem, with the
    /// request's `custom_id` when that much can be read.
    fn unreadable_line(
        &self,
        position: u64,
        request: &[u8],
        err: &serde_json::Error,
    ) -> io::Result<String> {
        #[derive(serde::Deserialize)]
        struct Probe<'a> {
            #[serde(borrow)]
            custom_id: Option<&'a serde_json::value::RawValue>,
        }
        let custom_id = serde_json::from_slice::<Probe<'_>>(request)
            .ok()
            .and_then(|p| p.custom_id)
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
            .unwrap_or_default();
        let line = OutputLine {
            id: format!("batch_req_{}", hex_id(self.seed, SALT_ID, position)),
            custom_id: &custom_id,
            response: Some(LineResponse {
                status_code: 400,
                request_id: format!("req_{}", hex_id(self.seed, SALT_REQ, position)),
                body: json!({"error": {
                    "message": format!("The request could not be parsed as JSON: {err}."),
                    "type": "invalid_request_error", "param": null, "code": "invalid_json"}}),
            }),
            error: None,
        };
        serde_json::to_string(&line).map_err(io::Error::other)
    }

    /// The results line of the Anthropic request at `position`: `succeeded` with a message,
    /// `errored` (the failure rate), or, past what was processed, `canceled` or `expired`.
    fn anthropic_line(&self, position: u64, request: &Value, bytes: u64) -> io::Result<String> {
        let custom_id = request
            .get("custom_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let result = if position >= self.processed {
            match self.ending {
                Ending::Expired => json!({"type": "expired"}),
                Ending::Cancelled | Ending::Completed => json!({"type": "canceled"}),
            }
        } else if self
            .failed_positions
            .binary_search(&(position as u32))
            .is_ok()
        {
            let refusal = params_refusal(request.get("params").unwrap_or(&Value::Null));
            let (kind, message) = if let Some(refusal) = refusal {
                ("invalid_request_error", refusal)
            } else if mix(self.seed ^ SALT_BODY, position) & 1 == 0 {
                ("api_error", "Internal server error (simulated).")
            } else {
                (
                    "invalid_request_error",
                    "This request failed at the simulator's request failure rate.",
                )
            };
            json!({"type": "errored", "error": {
                "type": "error", "error": {"type": kind, "message": message},
                "request_id": format!("req_{}", hex_id(self.seed, SALT_REQ, position))}})
        } else {
            let params = request.get("params").unwrap_or(&Value::Null);
            let model = params
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or(&self.model);
            let input_tokens = (bytes / 4).max(1);
            json!({"type": "succeeded", "message": {
                "id": format!("msg_01{}", hex_id(self.seed, SALT_ID, position)),
                "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text",
                             "text": format!("Simulated reply to {custom_id}: {}", prompt(params))}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": COMPLETION_TOKENS,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}})
        };
        serde_json::to_string(&json!({"custom_id": custom_id, "result": result}))
            .map_err(io::Error::other)
    }

    /// One output line for the request at `position`; `true` when it belongs in the error file.
    fn line(&self, position: u64, request: &Value, bytes: u64) -> io::Result<(String, bool)> {
        let custom_id = request
            .get("custom_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let id = format!("batch_req_{}", hex_id(self.seed, SALT_ID, position));
        let request_id = format!("req_{}", hex_id(self.seed, SALT_REQ, position));
        let (response, error, failed) = if position >= self.processed {
            let error = LineError {
                code: "batch_expired",
                message: "This request could not be executed before the completion window expired.",
            };
            (None, Some(error), true)
        } else if self
            .failed_positions
            .binary_search(&(position as u32))
            .is_ok()
        {
            let status_code = if mix(self.seed ^ SALT_BODY, position) & 1 == 0 {
                500
            } else {
                400
            };
            let response = LineResponse {
                status_code,
                request_id,
                body: failure_body(status_code),
            };
            (Some(response), None, true)
        } else {
            let body = request.get("body").unwrap_or(&Value::Null);
            let key = mix(self.seed ^ SALT_BODY, position);
            let response = LineResponse {
                status_code: 200,
                request_id,
                body: fake_body(&Reply {
                    endpoint: &self.endpoint,
                    model: &self.model,
                    custom_id,
                    body,
                    prompt_tokens: (bytes / 4).max(1),
                    key,
                    created: self.created,
                }),
            };
            (Some(response), None, false)
        };
        let line = OutputLine {
            id,
            custom_id,
            response,
            error,
        };
        Ok((
            serde_json::to_string(&line).map_err(io::Error::other)?,
            failed,
        ))
    }
}

fn failure_body(status: u16) -> Value {
    if status == 500 {
        json!({"error": {
            "message": "The server had an error processing your request (simulated).",
            "type": "server_error", "param": null, "code": null}})
    } else {
        json!({"error": {
            "message": "This request failed at the simulator's request failure rate.",
            "type": "invalid_request_error", "param": null, "code": "simulated_failure"}})
    }
}

/// Text found in a prompt-like value: a string, or the texts of an array of parts or messages.
fn text_of(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(s);
        }
        Value::Array(items) => items.iter().for_each(|v| text_of(v, out)),
        Value::Object(map) => {
            for key in ["text", "content", "input"] {
                if let Some(v) = map.get(key) {
                    text_of(v, out);
                }
            }
        }
        _ => {}
    }
}

/// The prompt a request carries, cut to 60 characters.
fn prompt(body: &Value) -> String {
    let mut text = String::new();
    if let Some(last) = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
    {
        text_of(last, &mut text);
    }
    for key in ["prompt", "input"] {
        if text.is_empty()
            && let Some(v) = body.get(key)
        {
            text_of(v, &mut text);
        }
    }
    text.chars().take(60).collect()
}

const PIXEL_PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

/// The request a fake response answers, and what the response carries besides.
struct Reply<'a> {
    endpoint: &'a str,
    model: &'a str,
    custom_id: &'a str,
    body: &'a Value,
    /// Input tokens, estimated at one per 4 bytes of the request line.
    prompt_tokens: u64,
    /// Seeds the response's ids and embedding values.
    key: u64,
    created: i64,
}

/// A response body of the endpoint's shape, derived from the request.
fn fake_body(r: &Reply<'_>) -> Value {
    let Reply {
        endpoint,
        model,
        custom_id,
        body,
        prompt_tokens,
        key,
        created,
    } = *r;
    let reply = format!("Simulated reply to {custom_id}: {}", prompt(body));
    let id = |prefix: &str| format!("{prefix}{:016x}", key);
    match endpoint {
        "/v1/chat/completions" => json!({
            "id": id("chatcmpl-"), "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply, "refusal": null},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": COMPLETION_TOKENS,
                      "total_tokens": prompt_tokens + COMPLETION_TOKENS},
            "system_fingerprint": null,
        }),
        "/v1/completions" => json!({
            "id": id("cmpl-"), "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": reply, "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": COMPLETION_TOKENS,
                      "total_tokens": prompt_tokens + COMPLETION_TOKENS},
        }),
        "/v1/embeddings" => embeddings(model, body, key, prompt_tokens),
        "/v1/responses" => json!({
            "id": id("resp_"), "object": "response", "created_at": created, "status": "completed",
            "model": model, "error": null, "incomplete_details": null,
            "output": [{"type": "message", "id": id("msg_"), "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": reply, "annotations": []}]}],
            "usage": {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": COMPLETION_TOKENS, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": prompt_tokens + COMPLETION_TOKENS},
        }),
        "/v1/moderations" => json!({
            "id": id("modr-"), "model": model,
            "results": [{"flagged": false,
                "categories": {"harassment": false, "hate": false, "self-harm": false, "sexual": false, "violence": false},
                "category_scores": {"harassment": 0.0001, "hate": 0.0001, "self-harm": 0.0001, "sexual": 0.0001, "violence": 0.0001}}],
        }),
        "/v1/videos" => json!({
            "id": id("video_"), "object": "video", "model": model, "status": "completed", "progress": 100,
            "created_at": created, "completed_at": created, "seconds": "4", "size": "720x1280",
        }),
        _ => {
            json!({"created": created, "data": [{"b64_json": PIXEL_PNG, "revised_prompt": reply}]})
        }
    }
}

fn embeddings(model: &str, body: &Value, key: u64, prompt_tokens: u64) -> Value {
    let inputs = match body.get("input") {
        // A list of strings or of token lists is several inputs; a list of numbers is one.
        Some(Value::Array(items)) if items.iter().all(|i| !i.is_number()) => items.len().max(1),
        _ => 1,
    };
    let dims = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .map_or(8, |d| d.clamp(1, 4096));
    let data: Vec<Value> = (0..inputs as u64)
        .map(|i| {
            let vector: Vec<f64> = (0..dims)
                .map(|j| {
                    let x = unit(mix(key, i * dims + j)) * 2.0 - 1.0;
                    (x * 1e6).round() / 1e6
                })
                .collect();
            json!({"object": "embedding", "index": i, "embedding": vector})
        })
        .collect();
    json!({"object": "list", "data": data, "model": model,
           "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_follow_the_rate_and_the_seed() {
        let a = failed_positions(1, 10_000, 0.1);
        assert!((800..1200).contains(&a.len()), "{}", a.len());
        assert_eq!(a, failed_positions(1, 10_000, 0.1));
        assert_ne!(a, failed_positions(2, 10_000, 0.1));
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert!(failed_positions(1, 100, 0.0).is_empty());
        assert_eq!(failed_positions(1, 100, 1.0).len(), 100);
    }

    #[test]
    fn the_processing_order_is_a_seeded_permutation() {
        let order = processing_order(5, 1000);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<u32>>());
        assert_ne!(order, sorted, "the order should be shuffled");
        assert_eq!(order, processing_order(5, 1000));
    }

    fn sink(dir: &std::path::Path, name: &str) -> Sink {
        Sink {
            file: Arc::new(StoredFile::new(dir.join(name))),
            ready: watch::channel(FileReady::Pending).0,
        }
    }

    fn lines_of(sink: &Option<Sink>) -> Vec<Value> {
        std::fs::read_to_string(sink.as_ref().unwrap().file.path())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_request_the_service_cannot_read_fails_alone_with_an_error_line() {
        let dir = tempfile::tempdir().unwrap();
        let line = |id: &str, extra: &str| {
            format!(
                r#"{{"custom_id":"{id}","method":"POST","url":"/v1/chat/completions","body":{{"model":"m","messages":[]{extra}}}}}"#
            ) + "\n"
        };
        let deep = format!(",\"x\":{}{}", "[".repeat(200), "]".repeat(200));
        let input = line("ok-1", "")
            + &line("deep", &deep)
            + &line("huge", ",\"t\":1e400")
            + &line("lone", r#","c":"\ud800""#)
            + &line("ok-2", "");
        let input_path = dir.path().join("input.jsonl");
        std::fs::write(&input_path, input).unwrap();
        for with_error_file in [true, false] {
            let job = OutputJob {
                input: Arc::new(StoredFile::named(input_path.clone())),
                endpoint: "/v1/chat/completions".into(),
                model: "m".into(),
                seed: 3,
                total: 5,
                processed: 5,
                failed_positions: Vec::new(),
                api: Api::OpenAi,
                ending: Ending::Completed,
                created: 0,
                output: Some(sink(dir.path(), &format!("out-{with_error_file}"))),
                error: with_error_file.then(|| sink(dir.path(), "err")),
            };
            job.write().expect("the files are written");
            let output = lines_of(&job.output);
            let mut unreadable: Vec<&Value> = match &job.error {
                Some(_) => Vec::new(),
                None => output
                    .iter()
                    .filter(|l| l["response"]["status_code"] == 400)
                    .collect(),
            };
            let errors = job.error.as_ref().map(|_| lines_of(&job.error));
            if let Some(errors) = &errors {
                unreadable = errors.iter().collect();
                assert_eq!(output.len(), 2, "the readable requests are answered");
            }
            let mut ids: Vec<&str> = unreadable
                .iter()
                .map(|l| l["custom_id"].as_str().unwrap())
                .collect();
            ids.sort_unstable();
            assert_eq!(
                ids,
                ["deep", "huge", "lone"],
                "with error file: {with_error_file}"
            );
            for l in &unreadable {
                assert_eq!(l["response"]["body"]["error"]["code"], "invalid_json");
            }
        }
    }

    #[test]
    fn fake_bodies_echo_the_prompt_and_follow_the_endpoint() {
        let reply = |endpoint: &str, body: &Value, custom_id: &str| {
            fake_body(&Reply {
                endpoint,
                model: "m",
                custom_id,
                body,
                prompt_tokens: 10,
                key: 9,
                created: 100,
            })
        };
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "What is 2+2?"}]});
        let chat = reply("/v1/chat/completions", &body, "r1");
        assert_eq!(chat["object"], "chat.completion");
        let content = chat["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(content, "Simulated reply to r1: What is 2+2?");
        assert_eq!(chat["usage"]["total_tokens"], 10 + COMPLETION_TOKENS);
        let inputs = json!({"model": "m", "input": ["a", "b"], "dimensions": 3});
        let emb = reply("/v1/embeddings", &inputs, "r2");
        assert_eq!(emb["data"].as_array().unwrap().len(), 2);
        assert_eq!(emb["data"][1]["embedding"].as_array().unwrap().len(), 3);
        let parts = json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]});
        let resp = reply("/v1/responses", &parts, "r3");
        assert_eq!(
            resp["output"][0]["content"][0]["text"],
            "Simulated reply to r3: hi"
        );
    }
}
