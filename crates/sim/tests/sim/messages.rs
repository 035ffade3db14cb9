//! Anthropic's Message Batches on the simulator, over plain HTTP: the checks a create gets and
//! the error shape, the two APIs kept apart, a create carried out though its answer was lost,
//! a results download cut short, a batch with its results across a clean restart, and the
//! `params` refused only when a request runs.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::KEY;
use crate::support::sim::{TestSim, chat_lines, json_of, spawn_sim, stopped_clock};

/// `http://ADDR/v1` + `path`, with the key and version Anthropic's SDK sends.
fn anthropic(sim: &TestSim, method: Method, path: &str) -> reqwest::RequestBuilder {
    sim.http
        .request(method, format!("http://{}/v1{path}", sim.handle.addr()))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
}

fn requests(prefix: &str, n: usize) -> Value {
    let requests: Vec<Value> = (0..n)
        .map(|i| {
            json!({"custom_id": format!("{prefix}{i}"),
                   "params": {"model": "claude-haiku-4-5", "max_tokens": 16,
                              "messages": [{"role": "user", "content": format!("say {i}")}]}})
        })
        .collect();
    json!({ "requests": requests })
}

async fn create(sim: &TestSim, body: &Value) -> (StatusCode, Value) {
    json_of(
        anthropic(sim, Method::POST, "/messages/batches")
            .json(body)
            .send()
            .await
            .expect("create"),
    )
    .await
}

async fn retrieve(sim: &TestSim, id: &str) -> Value {
    let (status, batch) = json_of(
        anthropic(sim, Method::GET, &format!("/messages/batches/{id}"))
            .send()
            .await
            .expect("retrieve"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    batch
}

async fn step(sim: &TestSim, id: &str) {
    sim.admin_json("/batches/step", Some(&json!({ "ids": [id] })))
        .await;
}

async fn results(sim: &TestSim, id: &str) -> Result<Vec<Value>, reqwest::Error> {
    let text = anthropic(sim, Method::GET, &format!("/messages/batches/{id}/results"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect())
}

#[tokio::test]
async fn requests_are_checked_and_errors_come_in_anthropics_shape() {
    let sim = spawn_sim(stopped_clock()).await;
    let anthropic_error = |kind: &str| json!({"type": "error", "error": {"type": kind}});
    let shape = |answer: &Value| json!({"type": answer["type"], "error": {"type": answer["error"]["type"]}});
    let cases = [
        (json!({"requests": []}), "at least 1 item"),
        (
            json!({"requests": [{"custom_id": "x".repeat(65), "params": {}}]}),
            "requests.0.custom_id",
        ),
        (
            json!({"requests": [{"custom_id": "a", "params": {}}, {"custom_id": "a", "params": {}}]}),
            "requests.1.custom_id: Duplicate",
        ),
        (
            json!({"requests": [{"custom_id": "a", "params": {}, "extra": 1}]}),
            "requests.0.extra",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = create(&sim, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(shape(&answer), anthropic_error("invalid_request_error"));
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
    }
    let (status, answer) = json_of(
        sim.http
            .get(format!("http://{}/v1/messages/batches", sim.handle.addr()))
            .header("anthropic-version", "2023-06-01")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(shape(&answer), anthropic_error("authentication_error"));
    let (status, answer) = json_of(
        sim.http
            .get(format!("http://{}/v1/messages/batches", sim.handle.addr()))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("anthropic-version"),
        "{answer}"
    );
    assert_eq!(
        sim.handle.stats().await.batches.len(),
        0,
        "no refused create made a batch"
    );

    // Each API sees its own batches only, and the results file is no File object.
    let (status, message_batch) = create(&sim, &requests("r", 2)).await;
    assert_eq!(status, StatusCode::OK, "{message_batch}");
    let id = message_batch["id"].as_str().unwrap();
    let openai = sim.submit(&chat_lines(2, "gpt-4o-mini")).await;
    step(&sim, id).await;
    step(&sim, id).await;
    assert_eq!(retrieve(&sim, id).await["processing_status"], "ended");
    let (_, page) = sim.get("/batches").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["id"], openai["id"]);
    let (status, _) = sim.get(&format!("/batches/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, listed) = json_of(
        anthropic(&sim, Method::GET, "/messages/batches")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert_eq!(listed["data"][0]["id"], id);
    let (_, files) = sim.get("/files").await;
    assert_eq!(
        files["data"].as_array().unwrap().len(),
        1,
        "only the OpenAI input file: {files}"
    );
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_made_its_batch_and_a_cut_results_download_breaks() {
    let sim = spawn_sim(stopped_clock()).await;
    sim.admin_json(
        "/faults/script",
        Some(&json!({"kind": "drop_after", "times": 1, "method": "POST",
                     "path": "/v1/messages/batches"})),
    )
    .await;
    let lost = anthropic(&sim, Method::POST, "/messages/batches")
        .json(&requests("l", 3))
        .send()
        .await;
    assert!(lost.is_err(), "the connection closed without an answer");
    let (_, listed) = json_of(
        anthropic(&sim, Method::GET, "/messages/batches")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let made = listed["data"].as_array().unwrap();
    assert_eq!(made.len(), 1, "the create was carried out: {listed}");
    let id = made[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(made[0]["request_counts"]["processing"], 3);

    step(&sim, &id).await;
    step(&sim, &id).await;
    sim.admin_json(
        "/faults/script",
        Some(
            &json!({"kind": "broken_download", "times": 1, "method": "GET",
                     "path": "/v1/messages/batches/{batch_id}/results"}),
        ),
    )
    .await;
    assert!(
        results(&sim, &id).await.is_err(),
        "the first download is cut short"
    );
    let lines = results(&sim, &id)
        .await
        .expect("the second download is whole");
    assert_eq!(lines.len(), 3);
}

#[tokio::test]
async fn a_restarted_simulator_keeps_message_batches_and_their_results() {
    let dir = tempfile::tempdir().unwrap();
    let config = batchwatch_sim::SimConfig {
        data_dir: Some(dir.path().to_owned()),
        ..stopped_clock()
    };
    let sim = spawn_sim(config.clone()).await;
    let (_, ended) = create(&sim, &requests("e", 5)).await;
    let ended_id = ended["id"].as_str().unwrap().to_owned();
    step(&sim, &ended_id).await;
    step(&sim, &ended_id).await;
    let (_, running) = create(&sim, &requests("r", 4)).await;
    let running_id = running["id"].as_str().unwrap().to_owned();
    let before = (
        retrieve(&sim, &ended_id).await,
        retrieve(&sim, &running_id).await,
    );
    let lines = results(&sim, &ended_id).await.unwrap();
    assert_eq!(lines.len(), 5);

    sim.handle.shutdown().await.expect("a clean shutdown");
    let sim = spawn_sim(config).await;
    let mut after = (
        retrieve(&sim, &ended_id).await,
        retrieve(&sim, &running_id).await,
    );
    // The results URL names the new port.
    after.0["results_url"] = before.0["results_url"].clone();
    assert_eq!(after, before);
    assert_eq!(results(&sim, &ended_id).await.unwrap(), lines);
    step(&sim, &running_id).await;
    step(&sim, &running_id).await;
    let finished = retrieve(&sim, &running_id).await;
    assert_eq!(finished["processing_status"], "ended");
    assert_eq!(finished["request_counts"]["succeeded"], 4);
    let ids: Vec<String> = results(&sim, &running_id)
        .await
        .unwrap()
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
}

#[tokio::test]
async fn a_request_whose_params_the_service_refuses_when_it_runs_ends_errored() {
    let sim = spawn_sim(stopped_clock()).await;
    let mut body = requests("p", 3);
    body["requests"][1]["params"]
        .as_object_mut()
        .unwrap()
        .remove("max_tokens");
    body["requests"][2]["params"]["messages"] = json!([]);
    let (status, batch) = create(&sim, &body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the create checks only the shape: {batch}"
    );
    let id = batch["id"].as_str().unwrap().to_owned();
    step(&sim, &id).await;
    step(&sim, &id).await;
    let ended = retrieve(&sim, &id).await;
    assert_eq!(
        (
            &ended["request_counts"]["succeeded"],
            &ended["request_counts"]["errored"]
        ),
        (&json!(1), &json!(2))
    );
    let mut lines = results(&sim, &id).await.unwrap();
    lines.sort_by_key(|l| l["custom_id"].as_str().unwrap().to_owned());
    assert_eq!(lines[0]["result"]["type"], "succeeded");
    for (line, field) in [(&lines[1], "max_tokens"), (&lines[2], "messages")] {
        assert_eq!(line["result"]["type"], "errored", "{line}");
        let error = &line["result"]["error"]["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert!(error["message"].as_str().unwrap().contains(field), "{line}");
    }
}
