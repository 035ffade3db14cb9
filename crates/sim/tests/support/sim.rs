//! A simulator on `127.0.0.1:0` per test, and a plain HTTP client to talk to it.

use std::time::Duration;

use batchwatch_sim::{Faults, SimConfig, SimHandle};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{KEY, wait_until};

/// The simulated clock's start in the tests that stop it: 2026-01-01T00:00:00Z.
pub const START: i64 = 1_767_225_600;

/// A reqwest client; reqwest is built without a default TLS provider, so install one.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("building the HTTP client")
}

/// A stopped clock at [`START`] and a fixed seed: every test moves time itself with
/// [`TestSim::advance`], so nothing depends on how fast the machine is.
pub fn stopped_clock() -> SimConfig {
    SimConfig {
        time_scale: 0.0,
        start_time: Some(START),
        seed: Some(7),
        ..SimConfig::default()
    }
}

/// A clock fast enough that a default lifecycle takes a few milliseconds.
/// A stopped clock with 30% of requests failing, so both output and error files are written.
pub fn stopped_clock_with_failures() -> SimConfig {
    SimConfig {
        faults: Faults {
            request_failure_rate: 0.3,
            ..Faults::default()
        },
        ..stopped_clock()
    }
}

pub fn fast_clock() -> SimConfig {
    SimConfig {
        time_scale: 100_000.0,
        seed: Some(7),
        ..SimConfig::default()
    }
}

/// A running simulator and a client for it.
pub struct TestSim {
    pub handle: SimHandle,
    pub http: reqwest::Client,
    /// The API root requests go to: `/v1`, or `/openai/v1` for Azure-style tests.
    pub root: String,
}

/// Starts a simulator on a free port.
pub async fn spawn_sim(config: SimConfig) -> TestSim {
    let handle = batchwatch_sim::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("starting the simulator");
    let root = handle.base_url();
    TestSim {
        handle,
        http: http_client(),
        root,
    }
}

/// `n` chat requests `r0..r{n-1}` for `model`.
pub fn chat_lines(n: usize, model: &str) -> String {
    (0..n)
        .map(|i| {
            json!({
                "custom_id": format!("r{i}"),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": format!("question {i}")}]},
            })
            .to_string()
                + "\n"
        })
        .collect()
}

/// The body of a response as JSON (`Null` when it is not JSON).
pub async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("reading the body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl TestSim {
    /// `root` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.root)
    }

    /// `http://ADDR/admin` + `path`.
    pub fn admin(&self, path: &str) -> String {
        format!("{}{path}", self.handle.admin_url())
    }

    /// A JSON request to the admin API (a body makes it a POST); its answer, which must be 200.
    pub async fn admin_json(&self, path: &str, body: Option<&Value>) -> Value {
        let request = match body {
            Some(body) => self.http.post(self.admin(path)).json(body),
            None => self.http.get(self.admin(path)),
        };
        let (status, answer) = json_of(request.send().await.expect("admin request")).await;
        assert_eq!(status, StatusCode::OK, "admin {path}: {answer}");
        answer
    }

    /// A request to the API with the test key.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(KEY)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        json_of(self.request(Method::GET, path).send().await.expect("GET")).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        json_of(
            self.request(Method::POST, path)
                .json(body)
                .send()
                .await
                .expect("POST"),
        )
        .await
    }

    /// Uploads `content` as `name` with `purpose`; returns the status and body.
    pub async fn try_upload(
        &self,
        name: &str,
        content: &[u8],
        purpose: &str,
    ) -> (StatusCode, Value) {
        let part = reqwest::multipart::Part::bytes(content.to_vec()).file_name(name.to_owned());
        let form = reqwest::multipart::Form::new()
            .text("purpose", purpose.to_owned())
            .part("file", part);
        json_of(
            self.request(Method::POST, "/files")
                .multipart(form)
                .send()
                .await
                .expect("upload"),
        )
        .await
    }

    /// Uploads a batch input file; returns its file object.
    pub async fn upload(&self, content: &str) -> Value {
        let (status, file) = self
            .try_upload("input.jsonl", content.as_bytes(), "batch")
            .await;
        assert_eq!(status, StatusCode::OK, "upload failed: {file}");
        file
    }

    /// Creates a chat-completions batch on an uploaded file; returns the batch.
    pub async fn create(&self, file_id: &str, job: Option<&str>) -> Value {
        let mut body = json!({
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        });
        if let Some(job) = job {
            body["metadata"] = json!({"batchwatch_job_id": job});
        }
        let (status, batch) = self.post("/batches", &body).await;
        assert_eq!(status, StatusCode::OK, "create failed: {batch}");
        batch
    }

    /// Uploads `content` and creates a batch on it.
    pub async fn submit(&self, content: &str) -> Value {
        let file = self.upload(content).await;
        self.create(file["id"].as_str().unwrap(), None).await
    }

    pub async fn batch(&self, id: &str) -> Value {
        let (status, batch) = self.get(&format!("/batches/{id}")).await;
        assert_eq!(status, StatusCode::OK, "retrieve failed: {batch}");
        batch
    }

    /// Polls a batch until `done` holds for it (5 s at most).
    pub async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        wait_until(
            &format!("batch {id} to become {what}"),
            Duration::from_secs(5),
            async || {
                let batch = self.batch(id).await;
                (done(&batch), batch)
            },
        )
        .await
    }

    /// Polls a batch until it has `status`.
    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        self.wait_for(id, status, |b| b["status"] == status).await
    }

    /// Jumps the simulated clock ahead.
    pub async fn advance(&self, secs: f64) {
        self.handle.advance(secs).await;
    }

    /// A file's content (it must download whole).
    pub async fn content(&self, file_id: &str) -> String {
        let response = self
            .request(Method::GET, &format!("/files/{file_id}/content"))
            .send()
            .await
            .expect("download");
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.expect("reading the content")
    }

    /// The JSON lines of a file.
    pub async fn lines(&self, file_id: &str) -> Vec<Value> {
        self.content(file_id)
            .await
            .lines()
            .map(|l| serde_json::from_str(l).expect("an output line is JSON"))
            .collect()
    }
}
