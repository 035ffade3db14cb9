//! The simulator's responses against the reference OpenAPI schemas, loaded from the YAML files.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::schema::Spec;
use crate::support::KEY;
use crate::support::sim::{
    TestSim, chat_lines, http_client, spawn_sim, stopped_clock, stopped_clock_with_failures,
};

/// Every property of the Batch schema is present (null when unset), as in real responses.
fn assert_every_batch_property(spec: &Spec, batch: &Value) {
    for name in spec.property_names("Batch") {
        assert!(
            batch.get(&name).is_some(),
            "batch lacks property {name:?}: {batch:#}"
        );
    }
}

fn assert_batch(spec: &Spec, batch: &Value, op: (&str, &str)) {
    spec.assert_response(op.0, op.1, batch);
    assert_every_batch_property(spec, batch);
}

#[tokio::test]
async fn every_endpoint_answers_in_the_shape_of_the_reference_schemas() {
    let spec = Spec::load();
    let sim = spawn_sim(stopped_clock_with_failures()).await;

    let file = sim.upload(&chat_lines(20, "gpt-4o-mini")).await;
    spec.assert_response("/files", "post", &file);
    let file_id = file["id"].as_str().unwrap();
    let (_, retrieved) = sim.get(&format!("/files/{file_id}")).await;
    spec.assert_response("/files/{file_id}", "get", &retrieved);

    let batch = sim.create(file_id, Some("job_contract")).await;
    assert_eq!(batch["status"], "validating");
    assert_batch(&spec, &batch, ("/batches", "post"));
    let id = batch["id"].as_str().unwrap();
    let retrieve = ("/batches/{batch_id}", "get");

    sim.advance(10.0).await;
    let running = sim.wait_status(id, "in_progress").await;
    assert_batch(&spec, &running, retrieve);
    sim.advance(60.0).await;
    let finalizing = sim.wait_status(id, "finalizing").await;
    assert_batch(&spec, &finalizing, retrieve);
    sim.advance(10.0).await;
    let done = sim.wait_status(id, "completed").await;
    assert_batch(&spec, &done, retrieve);

    let (_, list) = sim.get("/batches").await;
    spec.assert_response("/batches", "get", &list);
    for batch in list["data"].as_array().unwrap() {
        assert_every_batch_property(&spec, batch);
    }

    for key in ["output_file_id", "error_file_id"] {
        let out_id = done[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} is null: {done:#}"));
        let (_, meta) = sim.get(&format!("/files/{out_id}")).await;
        spec.assert_response("/files/{file_id}", "get", &meta);
        assert_eq!(meta["purpose"], "batch_output");
        let response = sim
            .request(Method::GET, &format!("/files/{out_id}/content"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.content_length(),
            meta["bytes"].as_u64(),
            "Content-Length must equal the file object's bytes"
        );
        let text = response.text().await.unwrap();
        spec.assert_response(
            "/files/{file_id}/content",
            "get",
            &Value::String(text.clone()),
        );
        for line in text.lines() {
            spec.assert_named("BatchRequestOutput", &serde_json::from_str(line).unwrap());
        }
    }

    let (_, files) = sim.get("/files").await;
    spec.assert_response("/files", "get", &files);

    let second = sim.create(file_id, None).await;
    let (status, cancelling) = sim
        .post(
            &format!("/batches/{}/cancel", second["id"].as_str().unwrap()),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelling["status"], "cancelling");
    assert_batch(&spec, &cancelling, ("/batches/{batch_id}/cancel", "post"));

    let bad = sim.submit("{not json\n").await;
    sim.advance(10.0).await;
    let failed = sim.wait_status(bad["id"].as_str().unwrap(), "failed").await;
    assert_batch(&spec, &failed, retrieve);
    spec.assert_named("BatchError", &failed["errors"]["data"][0]);

    let response = sim
        .request(Method::DELETE, &format!("/files/{file_id}"))
        .send()
        .await
        .unwrap();
    let deleted: Value = response.json().await.unwrap();
    spec.assert_response("/files/{file_id}", "delete", &deleted);
}

#[test]
fn the_schema_checker_catches_wrong_types_missing_fields_and_bad_enums() {
    let spec = Spec::load();
    let good = json!({
        "id": "batch_1", "object": "batch", "endpoint": "/v1/chat/completions",
        "input_file_id": "file-1", "completion_window": "24h", "status": "completed",
        "created_at": 1, "request_counts": {"total": 1, "completed": 1, "failed": 0},
        "metadata": {"a": "b"}, "errors": null,
    });
    assert!(spec.check(spec.schema("Batch"), &good).is_empty());
    let broken = [
        ("status", json!("Done")),
        ("created_at", json!("1711471533")),
        ("object", json!("list")),
        ("metadata", json!({"a": 1})),
        ("request_counts", json!({"total": 1, "completed": 1})),
        (
            "errors",
            json!({"object": "list", "data": [{"line": "two"}]}),
        ),
    ];
    for (field, value) in broken {
        let mut bad = good.clone();
        bad[field] = value;
        assert!(
            !spec.check(spec.schema("Batch"), &bad).is_empty(),
            "a wrong {field} went unnoticed"
        );
    }
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("input_file_id");
    assert!(!spec.check(spec.schema("Batch"), &missing).is_empty());
    let mut null_required = good.clone();
    null_required["id"] = Value::Null;
    assert!(!spec.check(spec.schema("Batch"), &null_required).is_empty());
    let line =
        json!({"id": "x", "custom_id": "c", "response": {"status_code": "200"}, "error": null});
    assert!(
        !spec
            .check(spec.schema("BatchRequestOutput"), &line)
            .is_empty()
    );
}

fn assert_error_shape(body: &Value, context: &str) {
    let error = &body["error"];
    assert!(error["message"].is_string(), "{context}: {body}");
    assert!(error["type"].is_string(), "{context}: {body}");
    for nullable in ["param", "code"] {
        assert!(
            error[nullable].is_string() || error[nullable].is_null(),
            "{context}: {nullable} in {body}"
        );
        assert!(
            error.get(nullable).is_some(),
            "{context}: no {nullable} in {body}"
        );
    }
}

#[tokio::test]
async fn errors_come_in_the_openai_error_shape() {
    let sim = spawn_sim(stopped_clock()).await;
    let done = sim.submit(&chat_lines(1, "m")).await;
    let id = done["id"].as_str().unwrap();
    sim.advance(100.0).await;
    sim.wait_status(id, "completed").await;

    let cases: Vec<(StatusCode, reqwest::Response)> = vec![
        (
            StatusCode::BAD_REQUEST,
            sim.request(Method::POST, "/batches")
                .json(&json!({"input_file_id": "f", "endpoint": "/v1/nope", "completion_window": "24h"}))
                .send()
                .await
                .unwrap(),
        ),
        (
            StatusCode::BAD_REQUEST,
            sim.request(Method::POST, "/batches")
                .body("not json")
                .send()
                .await
                .unwrap(),
        ),
        (
            StatusCode::UNAUTHORIZED,
            http_client().get(sim.url("/batches")).send().await.unwrap(),
        ),
        (
            StatusCode::NOT_FOUND,
            sim.request(Method::GET, "/batches/batch_nope").send().await.unwrap(),
        ),
        (
            StatusCode::NOT_FOUND,
            sim.request(Method::GET, "/files/file-nope/content").send().await.unwrap(),
        ),
        (
            StatusCode::NOT_FOUND,
            sim.request(Method::GET, "/no/such/route").send().await.unwrap(),
        ),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            sim.request(Method::PUT, "/batches").send().await.unwrap(),
        ),
        (
            StatusCode::CONFLICT,
            sim.request(Method::POST, &format!("/batches/{id}/cancel")).send().await.unwrap(),
        ),
        (
            StatusCode::BAD_REQUEST,
            sim.request(Method::GET, "/batches?limit=101").send().await.unwrap(),
        ),
        // Found by fuzzing (fuzz/fuzz_targets/sim_request.rs): an id that is not UTF-8 once
        // unescaped, and an upload that is not multipart, were refused in axum's plain text.
        (
            StatusCode::BAD_REQUEST,
            sim.request(Method::GET, "/files/%ff%fe").send().await.unwrap(),
        ),
        (
            StatusCode::BAD_REQUEST,
            sim.request(Method::POST, "/batches/%ff/cancel").send().await.unwrap(),
        ),
        (
            StatusCode::BAD_REQUEST,
            sim.request(Method::POST, "/files")
                .header("content-type", "text/plain")
                .body("not multipart")
                .send()
                .await
                .unwrap(),
        ),
    ];
    for (expected, response) in cases {
        let context = format!("{} {}", response.status(), response.url());
        assert_eq!(response.status(), expected, "{context}");
        let body: Value = response.json().await.expect("an error body is JSON");
        assert_error_shape(&body, &context);
    }
}

#[tokio::test]
async fn azure_style_paths_and_the_api_key_header_reach_the_same_service() {
    let spec = Spec::load();
    let mut sim: TestSim = spawn_sim(stopped_clock()).await;
    sim.root = sim.handle.azure_base_url();
    let batch = sim.submit(&chat_lines(2, "m")).await;
    let id = batch["id"].as_str().unwrap();
    let response = sim
        .http
        .get(sim.url(&format!("/batches/{id}")))
        .header("api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen: Value = response.json().await.unwrap();
    assert_batch(&spec, &seen, ("/batches/{batch_id}", "get"));
    // The same batch is visible under the OpenAI-style root.
    let plain = http_client()
        .get(format!("{}/batches/{id}", sim.handle.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::OK);
    let stats = sim.handle.stats().await;
    assert_eq!(
        stats.requests.get("GET /openai/v1/batches/{batch_id}"),
        Some(&1)
    );
    assert_eq!(stats.requests.get("GET /v1/batches/{batch_id}"), Some(&1));
}
