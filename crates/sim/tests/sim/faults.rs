//! Fault injection: each fault type, from flags (config), the admin API and the scripted queue.

use std::time::{Duration, Instant};

use batchwatch_sim::{AuthFault, FaultKind, Faults, RetryAfter, ScriptedFault, SimConfig};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::support::KEY;
use crate::support::sim::{TestSim, chat_lines, http_client, json_of, spawn_sim, stopped_clock};

fn with_faults(faults: Faults) -> SimConfig {
    SimConfig {
        faults,
        ..stopped_clock()
    }
}

fn id(value: &Value) -> &str {
    value["id"].as_str().expect("an id")
}

async fn push(sim: &TestSim, fault: ScriptedFault) {
    sim.handle.push_fault(fault).await;
}

#[tokio::test]
async fn scripted_rate_limits_carry_retry_after_in_seconds_milliseconds_or_an_http_date() {
    let sim = spawn_sim(stopped_clock()).await;
    for retry_after in [
        RetryAfter::Seconds(3),
        RetryAfter::Millis(1500),
        RetryAfter::HttpDate(5),
        RetryAfter::None,
    ] {
        push(
            &sim,
            ScriptedFault::new(FaultKind::RateLimit { retry_after }),
        )
        .await;
    }
    let mut responses = Vec::new();
    for _ in 0..4 {
        responses.push(sim.request(Method::GET, "/batches").send().await.unwrap());
    }
    for r in &responses {
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(header(&responses[0], "retry-after").as_deref(), Some("3"));
    assert_eq!(header(&responses[0], "retry-after-ms"), None);
    assert_eq!(
        header(&responses[1], "retry-after-ms").as_deref(),
        Some("1500")
    );
    assert_eq!(header(&responses[1], "retry-after"), None);
    let date = header(&responses[2], "retry-after").expect("an HTTP date");
    let at = jiff::civil::DateTime::strptime("%a, %d %b %Y %H:%M:%S GMT", &date)
        .unwrap_or_else(|e| panic!("{date:?} is not an HTTP date: {e}"))
        .to_zoned(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp();
    let ahead = at.as_second() - jiff::Timestamp::now().as_second();
    assert!((4..=7).contains(&ahead), "the date is {ahead} s ahead");
    assert_eq!(header(&responses[3], "retry-after"), None);
    assert_eq!(header(&responses[3], "retry-after-ms"), None);
    let (_, body) = json_of(responses.pop().unwrap()).await;
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    let (status, _) = sim.get("/batches").await;
    assert_eq!(status, StatusCode::OK, "the script ran out");
    assert_eq!(sim.handle.stats().await.faults_injected["rate_limit"], 4);
}

#[tokio::test]
async fn scripted_faults_apply_only_to_matching_requests_and_run_out() {
    let sim = spawn_sim(stopped_clock()).await;
    push(
        &sim,
        ScriptedFault::new(FaultKind::ServerError)
            .times(2)
            .on("POST", "/v1/batches"),
    )
    .await;
    let file = sim.upload(&chat_lines(1, "m")).await;
    assert_eq!(sim.get("/batches").await.0, StatusCode::OK);
    let body = json!({"input_file_id": id(&file), "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    for _ in 0..2 {
        let (status, error) = sim.post("/batches", &body).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error["error"]["type"], "server_error");
    }
    assert!(
        sim.handle.stats().await.batches.is_empty(),
        "a 500 fault does not create"
    );
    assert!(sim.handle.scripted_faults().await.is_empty());
    assert_eq!(sim.post("/batches", &body).await.0, StatusCode::OK);
}

#[tokio::test]
async fn server_errors_are_json_and_bad_gateways_are_html() {
    let sim = spawn_sim(with_faults(Faults {
        server_error: 1.0,
        ..Faults::default()
    }))
    .await;
    let (status, body) = sim.get("/batches").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"]["type"], "server_error");

    sim.handle
        .set_faults(Faults {
            bad_gateway: 1.0,
            ..Faults::default()
        })
        .await
        .unwrap();
    let response = sim.request(Method::GET, "/batches").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["content-type"], "text/html");
    assert!(response.text().await.unwrap().starts_with("<html>"));
}

#[tokio::test]
async fn quota_errors_are_429_with_insufficient_quota_and_no_retry_after() {
    let sim = spawn_sim(stopped_clock()).await;
    push(&sim, ScriptedFault::new(FaultKind::Quota)).await;
    let response = sim.request(Method::GET, "/files").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().get("retry-after").is_none());
    let (_, body) = json_of(response).await;
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert_eq!(body["error"]["type"], "insufficient_quota");
}

#[tokio::test]
async fn a_create_dropped_after_it_was_carried_out_leaves_a_batch_behind() {
    let sim = spawn_sim(with_faults(Faults {
        drop_after_create: 1.0,
        ..Faults::default()
    }))
    .await;
    let file = {
        // Uploads are creates too: the file exists although the client heard nothing.
        let part =
            reqwest::multipart::Part::bytes(chat_lines(1, "m").into_bytes()).file_name("in.jsonl");
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part("file", part);
        let sent = sim
            .request(Method::POST, "/files")
            .multipart(form)
            .send()
            .await;
        assert!(sent.is_err(), "the client must not get a response");
        sim.handle.set_faults(Faults::default()).await.unwrap();
        let (_, files) = sim.get("/files").await;
        files["data"][0].clone()
    };
    sim.handle
        .set_faults(Faults {
            drop_after_create: 1.0,
            ..Faults::default()
        })
        .await
        .unwrap();
    let sent = sim
        .request(Method::POST, "/batches")
        .json(&json!({"input_file_id": id(&file), "endpoint": "/v1/chat/completions",
                      "completion_window": "24h", "metadata": {"batchwatch_job_id": "job_dropped"}}))
        .send()
        .await;
    let err = sent.expect_err("the connection closes without a response");
    assert!(!err.is_status(), "{err}");

    let stats = sim.handle.stats().await;
    assert_eq!(stats.batches_by_job.get("job_dropped"), Some(&1));
    let (_, list) = sim.get("/batches").await;
    assert_eq!(
        list["data"][0]["metadata"]["batchwatch_job_id"],
        "job_dropped"
    );
    assert_eq!(stats.faults_injected["drop_after"], 2);
}

#[tokio::test]
async fn a_request_dropped_before_it_was_carried_out_leaves_nothing() {
    let sim = spawn_sim(stopped_clock()).await;
    let file = sim.upload(&chat_lines(1, "m")).await;
    push(
        &sim,
        ScriptedFault::new(FaultKind::DropBefore).on("POST", "/v1/batches"),
    )
    .await;
    let sent = sim
        .request(Method::POST, "/batches")
        .json(&json!({"input_file_id": id(&file), "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .send()
        .await;
    assert!(sent.is_err());
    assert!(sim.handle.stats().await.batches.is_empty());
}

#[tokio::test]
async fn a_create_carried_out_late_answers_nothing_and_lands_after_a_first_look() {
    let sim = spawn_sim(stopped_clock()).await;
    let file = sim.upload(&chat_lines(1, "m")).await;
    push(
        &sim,
        ScriptedFault::new(FaultKind::CarriedOutLate { ms: 300 }).on("POST", "/v1/batches"),
    )
    .await;
    let sent_at = Instant::now();
    let sent = sim
        .request(Method::POST, "/batches")
        .json(&json!({"input_file_id": id(&file), "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .send()
        .await;
    assert!(sent.is_err(), "no answer: {sent:?}");
    let (_, list) = sim.get("/batches").await;
    assert_eq!(list["data"], json!([]), "not carried out yet");
    crate::support::wait_until("the create to land", Duration::from_secs(5), async || {
        let (_, list) = sim.get("/batches").await;
        (list["data"].as_array().is_some_and(|d| d.len() == 1), list)
    })
    .await;
    assert!(sent_at.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        sim.handle.stats().await.faults_injected["carried_out_late"],
        1
    );
}

#[tokio::test]
async fn a_late_answer_comes_after_the_request_was_carried_out() {
    let sim = spawn_sim(stopped_clock()).await;
    let file = sim.upload(&chat_lines(1, "m")).await;
    push(
        &sim,
        ScriptedFault::new(FaultKind::LateAnswer { ms: 2000 }).on("POST", "/v1/batches"),
    )
    .await;
    let sent_at = Instant::now();
    let sent = sim
        .request(Method::POST, "/batches")
        .json(&json!({"input_file_id": id(&file), "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(sent.is_err(), "no answer within 500 ms: {sent:?}");
    assert!(sent_at.elapsed() < Duration::from_secs(2));
    assert_eq!(
        sim.handle.stats().await.batches.len(),
        1,
        "carried out before the answer"
    );
}

#[tokio::test]
async fn a_broken_download_stops_short_and_a_retry_gets_it_whole() {
    let sim = spawn_sim(stopped_clock()).await;
    let content = chat_lines(200, "m");
    let file = sim.upload(&content).await;
    let path = format!("/files/{}/content", id(&file));
    push(&sim, ScriptedFault::new(FaultKind::BrokenDownload)).await;

    let response = sim.request(Method::GET, &path).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.content_length(), Some(content.len() as u64));
    let mut received = 0usize;
    let mut response = response;
    let outcome = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received += chunk.len(),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(outcome.is_err(), "the body must end in an error");
    assert!(
        received > 0 && received < content.len(),
        "part of the body arrives: {received} of {}",
        content.len()
    );
    assert_eq!(sim.content(id(&file)).await, content);
}

#[tokio::test]
async fn key_refusals_switch_on_and_off_at_run_time() {
    let sim = spawn_sim(stopped_clock()).await;
    let patch = |auth: &str| {
        sim.http
            .patch(sim.admin("/faults"))
            .json(&json!({"auth": auth}))
            .send()
    };
    assert_eq!(
        patch("unauthorized").await.unwrap().status(),
        StatusCode::OK
    );
    let (status, body) = sim.get("/batches").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(patch("forbidden").await.unwrap().status(), StatusCode::OK);
    assert_eq!(sim.get("/batches").await.0, StatusCode::FORBIDDEN);
    assert_eq!(patch("none").await.unwrap().status(), StatusCode::OK);
    assert_eq!(sim.get("/batches").await.0, StatusCode::OK);
    assert_eq!(sim.handle.faults().await.auth, AuthFault::None);
}

#[tokio::test]
async fn a_configured_key_is_the_only_one_accepted_in_either_header() {
    let sim = spawn_sim(SimConfig {
        api_key: Some(SecretString::from("sk-right")),
        ..stopped_clock()
    })
    .await;
    let url = sim.url("/batches");
    let client = http_client();
    let none = client.get(&url).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = json_of(client.get(&url).bearer_auth(KEY).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert!(
        !body.to_string().contains("sk-right"),
        "the expected key is never echoed"
    );
    let bearer = client
        .get(&url)
        .bearer_auth("sk-right")
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
    let azure = client
        .get(&url)
        .header("api-key", "sk-right")
        .send()
        .await
        .unwrap();
    assert_eq!(azure.status(), StatusCode::OK);
    let empty = client.get(&url).bearer_auth("").send().await.unwrap();
    assert_eq!(empty.status(), StatusCode::UNAUTHORIZED);
}

/// Two keys of one organisation: what one creates, the other sees and may change; a key the
/// organisation does not have is refused.
#[tokio::test]
async fn another_key_of_the_organisation_shares_its_files_and_batches() {
    let sim = spawn_sim(stopped_clock()).await;
    sim.handle.set_api_key(Some(KEY)).await;
    let other = "sk-another-key-of-the-same-organisation";
    let added = sim.admin_json("/keys", Some(&json!({"key": other}))).await;
    assert_eq!(added, json!({"any_key": false}));
    let batch = sim.submit(&chat_lines(1, "gpt-4o-mini")).await;
    let as_other =
        |method: Method, path: &str| sim.http.request(method, sim.url(path)).bearer_auth(other);
    let (status, listed) = json_of(as_other(Method::GET, "/batches").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["data"][0]["id"], batch["id"], "{listed}");
    let (status, files) = json_of(as_other(Method::GET, "/files").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{files}");
    assert_eq!(files["data"][0]["id"], batch["input_file_id"], "{files}");
    let cancel = format!("/batches/{}/cancel", id(&batch));
    let (status, cancelled) = json_of(as_other(Method::POST, &cancel).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(sim.batch(id(&batch)).await["status"], "cancelling");
    let stranger = sim
        .http
        .get(sim.url("/batches"))
        .bearer_auth("sk-not-of-this-organisation")
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), StatusCode::UNAUTHORIZED);
    // Adding to "any key" changes nothing: every key is accepted already.
    sim.handle.set_api_key(None).await;
    let added = sim.admin_json("/keys", Some(&json!({"key": other}))).await;
    assert_eq!(added, json!({"any_key": true}));
}

#[tokio::test]
async fn random_fault_shares_hit_about_that_share_of_requests() {
    let sim = spawn_sim(with_faults(Faults {
        rate_limit: 0.5,
        retry_after: RetryAfter::Millis(10),
        ..Faults::default()
    }))
    .await;
    let mut limited = 0;
    for _ in 0..200 {
        let response = sim.request(Method::GET, "/batches").send().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(response.headers()["retry-after-ms"], "10");
            limited += 1;
        }
    }
    assert!(
        (70..=130).contains(&limited),
        "{limited} of 200 rate-limited at 50%"
    );
}

#[tokio::test]
async fn added_latency_delays_every_response() {
    let sim = spawn_sim(with_faults(Faults {
        latency_ms: 150,
        ..Faults::default()
    }))
    .await;
    let started = Instant::now();
    assert_eq!(sim.get("/batches").await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
    let admin = Instant::now();
    sim.http.get(sim.admin("/stats")).send().await.unwrap();
    assert!(
        admin.elapsed() < Duration::from_millis(150),
        "admin routes are never delayed"
    );
}

#[tokio::test]
async fn batches_can_stick_in_finalizing_forever() {
    let sim = spawn_sim(with_faults(Faults {
        stuck_finalizing: 1.0,
        ..Faults::default()
    }))
    .await;
    let batch = sim.submit(&chat_lines(2, "m")).await;
    sim.advance(100.0).await;
    sim.wait_status(id(&batch), "finalizing").await;
    sim.advance(1_000_000.0).await;
    let stuck = sim.batch(id(&batch)).await;
    assert_eq!(
        stuck["status"], "finalizing",
        "neither completed nor expired"
    );
    assert_eq!(stuck["output_file_id"], Value::Null);
}

#[tokio::test]
async fn vanishing_batches_answer_404_from_then_on() {
    let sim = spawn_sim(with_faults(Faults {
        vanish: 1.0,
        vanish_after_secs: 30.0,
        ..Faults::default()
    }))
    .await;
    let doomed = sim.submit(&chat_lines(2, "m")).await;
    // Validation runs on another thread and holds back every later event until it is done:
    // let it finish first, so that the vanishing below does not depend on the machine's load.
    sim.advance(10.0).await;
    sim.wait_status(id(&doomed), "in_progress").await;
    sim.advance(19.0).await;
    assert_eq!(
        sim.get(&format!("/batches/{}", id(&doomed))).await.0,
        StatusCode::OK
    );
    sim.advance(1.0).await;
    let (status, body) = sim.get(&format!("/batches/{}", id(&doomed))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = sim
        .post(&format!("/batches/{}/cancel", id(&doomed)), &json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    sim.handle.set_faults(Faults::default()).await.unwrap();
    let kept = sim.submit(&chat_lines(2, "m")).await;
    let by_admin = sim.submit(&chat_lines(2, "m")).await;
    let response = sim
        .http
        .post(sim.admin(&format!("/batches/{}/vanish", id(&by_admin))))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (_, list) = sim.get("/batches").await;
    let listed: Vec<&str> = list["data"].as_array().unwrap().iter().map(id).collect();
    assert_eq!(listed, [id(&kept)], "vanished batches leave the list too");
    let stats = sim.handle.stats().await;
    let vanished: Vec<bool> = stats.batches.iter().map(|b| b.vanished).collect();
    assert_eq!(vanished, [true, false, true]);
    assert_eq!(stats.batches[0].history.last().unwrap().status, "vanished");
}

#[tokio::test]
async fn faults_never_touch_the_admin_api() {
    let sim = spawn_sim(with_faults(Faults {
        server_error: 1.0,
        auth: AuthFault::Unauthorized,
        ..Faults::default()
    }))
    .await;
    assert_eq!(sim.get("/batches").await.0, StatusCode::UNAUTHORIZED);
    for path in ["/stats", "/faults", "/faults/script", "/clock"] {
        let response = sim.http.get(sim.admin(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn faults_and_the_clock_are_set_over_the_admin_api() {
    let sim = spawn_sim(stopped_clock()).await;
    let admin = |method: Method, path: &str| sim.http.request(method, sim.admin(path));

    let bad = admin(Method::PUT, "/faults")
        .json(&json!({"rate_limit": 1.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let unknown = admin(Method::PATCH, "/faults")
        .json(&json!({"rate_limits": 0.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        unknown.status(),
        StatusCode::BAD_REQUEST,
        "unknown fields are refused"
    );
    let (status, set) = json_of(
        admin(Method::PUT, "/faults")
            .json(&json!({"server_error": 0.25, "token_limit": 1000}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(set["server_error"], 0.25);
    let (_, patched) = json_of(
        admin(Method::PATCH, "/faults")
            .json(&json!({"latency_ms": 5}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        patched["server_error"], 0.25,
        "PATCH keeps the other fields"
    );
    assert_eq!(patched["latency_ms"], 5);
    assert_eq!(sim.handle.faults().await.token_limit, Some(1000));

    let (_, script) = json_of(
        admin(Method::POST, "/faults/script")
            .json(&json!([{"kind": "bad_gateway", "times": 2}, {"kind": "latency", "ms": 1}]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(script.as_array().unwrap().len(), 2);
    admin(Method::DELETE, "/faults/script")
        .send()
        .await
        .unwrap();
    assert!(sim.handle.scripted_faults().await.is_empty());

    let (_, clock) = json_of(
        admin(Method::POST, "/clock")
            .json(&json!({"advance_secs": 3600}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(clock["now"], crate::support::sim::START + 3600);
    assert_eq!(clock["time_scale"], 0.0);
}
