//! The simulator's request parsing on arbitrary requests (the JSON body of a batch create, the
//! multipart body of an upload, the query of a list, any method and path), against a fresh
//! simulator each time: it never panics, never answers 5xx, and every refusal is a 4xx in the
//! API's error shape, `{"error": {"message", "type", "param", "code"}}` (Anthropic's routes:
//! `{"type": "error", "error": {"type", "message"}}`), as the official SDKs and batchwatch's
//! client expect.
//!
//! Input: one byte that picks the request (and `/v1` or `/openai/v1`), then its material:
//! 0 create batch: the JSON body, where `FILE_ID` stands for an uploaded valid input file;
//! 1 upload: the multipart body (boundary `fuzzboundary`); 2 list batches: the query string;
//! 3 list files: the query string; 4 anything: a method byte, the path and query up to a
//! newline, then the body; 5 create a Message Batch: the JSON body; 6 list Message Batches:
//! the query string. 5 and 6 always go to `/v1`, with Anthropic's headers.

#![no_main]

use std::sync::LazyLock;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use batchwatch_sim::SimConfig;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::ServiceExt;

const BOUNDARY: &str = "fuzzboundary";
const INPUT: &str = concat!(
    r#"{"custom_id":"r1","method":"POST","url":"/v1/chat/completions","#,
    r#""body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}}"#,
    "\n"
);
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::DELETE,
    Method::PUT,
    Method::PATCH,
];

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
});

fn multipart(file: &str) -> Vec<u8> {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n{file}\r\n--{BOUNDARY}--\r\n"
    )
    .into_bytes()
}

fn request(
    method: Method,
    uri: &str,
    content_type: Option<String>,
    body: Vec<u8>,
) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, "Bearer sk-fuzz")
        .header("anthropic-version", "2023-06-01");
    if let Some(ct) = content_type {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    builder.body(Body::from(body)).unwrap()
}

/// Sends `request`; returns its status and body, checked against the shape of an answer.
async fn send(app: &axum::Router, request: Request<Body>, what: &str) -> (StatusCode, Vec<u8>) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    let text = String::from_utf8_lossy(&body);
    assert!(
        status.is_success() || status.is_client_error(),
        "{status} for {what}: {text}"
    );
    if status.is_client_error() {
        let value: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{status} for {what} is not JSON ({e}): {text}"));
        let error = &value["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()) && error["type"].is_string(),
            "{status} for {what} is not the API's error shape: {text}"
        );
        if value["type"] == "error" {
            assert_eq!(
                value.as_object().map(|o| o.len()),
                Some(2),
                "{status} for {what}: Anthropic's shape has `type` and `error` only: {text}"
            );
        } else {
            for field in ["param", "code"] {
                assert!(
                    error[field].is_null() || error[field].is_string(),
                    "{status} for {what}: {field} in {text}"
                );
            }
        }
    }
    (status, body)
}

fuzz_target!(|data: &[u8]| {
    let [pick, rest @ ..] = data else {
        return;
    };
    let root = if pick & 0x80 != 0 {
        "/openai/v1"
    } else {
        "/v1"
    };
    let mut config = SimConfig::default();
    config.seed = Some(7);
    config.time_scale = 0.0;
    let app = batchwatch_sim::fuzzing::app(&config).unwrap();
    let what = format!("{pick} {:?}", String::from_utf8_lossy(rest));
    RUNTIME.block_on(async {
        match pick & 0x7f {
            0 => {
                let upload = request(
                    Method::POST,
                    &format!("{root}/files"),
                    Some(format!("multipart/form-data; boundary={BOUNDARY}")),
                    multipart(INPUT),
                );
                let (_, file) = send(&app, upload, "the upload of a valid file").await;
                let file: Value = serde_json::from_slice(&file).unwrap();
                let id = file["id"].as_str().unwrap();
                let body = String::from_utf8_lossy(rest).replace("FILE_ID", id);
                let create = request(
                    Method::POST,
                    &format!("{root}/batches"),
                    Some("application/json".into()),
                    body.into_bytes(),
                );
                send(&app, create, &what).await;
            }
            1 => {
                let upload = request(
                    Method::POST,
                    &format!("{root}/files"),
                    Some(format!("multipart/form-data; boundary={BOUNDARY}")),
                    rest.to_vec(),
                );
                send(&app, upload, &what).await;
            }
            2 | 3 => {
                let collection = if pick & 0x7f == 2 { "batches" } else { "files" };
                let Ok(query) = std::str::from_utf8(rest) else {
                    return;
                };
                let uri = format!("{root}/{collection}?{query}");
                // A query the HTTP layer cannot carry never reaches the simulator.
                if uri.parse::<axum::http::Uri>().is_err() {
                    return;
                }
                send(&app, request(Method::GET, &uri, None, Vec::new()), &what).await;
            }
            4 => {
                let [method, rest @ ..] = rest else {
                    return;
                };
                let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
                let Ok(path) = std::str::from_utf8(&rest[..end]) else {
                    return;
                };
                let uri = format!("{root}/{path}");
                if uri.parse::<axum::http::Uri>().is_err() {
                    return;
                }
                let method = METHODS[usize::from(*method) % METHODS.len()].clone();
                let body = rest.get(end + 1..).unwrap_or_default().to_vec();
                let request = request(method, &uri, Some("application/json".into()), body);
                send(&app, request, &what).await;
            }
            5 => {
                let create = request(
                    Method::POST,
                    "/v1/messages/batches",
                    Some("application/json".into()),
                    rest.to_vec(),
                );
                send(&app, create, &what).await;
            }
            6 => {
                let Ok(query) = std::str::from_utf8(rest) else {
                    return;
                };
                let uri = format!("/v1/messages/batches?{query}");
                if uri.parse::<axum::http::Uri>().is_err() {
                    return;
                }
                send(&app, request(Method::GET, &uri, None, Vec::new()), &what).await;
            }
            _ => {}
        }
    });
});
