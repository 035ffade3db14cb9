//! A simulator started in-process (as the tests and `batchwatch demo` start it) stops cleanly:
//! it stops answering and removes its temporary data directory. `batchwatch sim` as a process
//! is tested at the top (`tests/it/sim_process.rs`).

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::KEY;
use crate::support::sim::{http_client, stopped_clock};

#[tokio::test]
async fn an_in_process_simulator_shuts_down_and_stops_answering() {
    let sim = batchwatch_sim::start("127.0.0.1:0".parse().unwrap(), stopped_clock())
        .await
        .unwrap();
    let url = format!("{}/batches", sim.base_url());
    let data_dir = sim.data_dir().to_owned();
    let client = http_client();
    let response = client.get(&url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let started = Instant::now();
    sim.shutdown().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        http_client()
            .get(&url)
            .bearer_auth(KEY)
            .send()
            .await
            .is_err(),
        "nothing listens any more"
    );
    assert!(!data_dir.exists(), "the temporary data dir is removed");
}
