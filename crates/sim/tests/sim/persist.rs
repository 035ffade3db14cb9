//! The simulator's state across a clean restart with a data directory of its own: files,
//! batches, histories and ids carry on, the clock resumes where it stopped, and a state is
//! loaded only once.

use std::path::Path;
use std::time::{Duration, Instant};

use batchwatch_sim::{STATE_FILE, SimConfig};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::sim::{START, TestSim, chat_lines, spawn_sim, stopped_clock};

fn with_dir(config: SimConfig, dir: &Path) -> SimConfig {
    SimConfig {
        data_dir: Some(dir.to_owned()),
        ..config
    }
}

async fn restart(sim: TestSim, config: SimConfig) -> TestSim {
    sim.handle.shutdown().await.expect("a clean shutdown");
    spawn_sim(config).await
}

fn id(value: &Value) -> &str {
    value["id"].as_str().expect("an id")
}

#[tokio::test]
async fn a_restarted_simulator_keeps_its_files_batches_histories_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let config = with_dir(stopped_clock(), dir.path());
    let sim = spawn_sim(config.clone()).await;
    // One batch finishes just before the stop, with enough requests that its output is still
    // being written when the shutdown begins; another is half-way through.
    let done = sim.submit(&chat_lines(3000, "gpt-4o-mini")).await;
    sim.advance(75.0).await;
    let running = sim.submit(&chat_lines(10, "gpt-4o-mini")).await;
    sim.advance(10.0).await;
    let running = sim.wait_status(id(&running), "in_progress").await;
    let done = sim.batch(id(&done)).await;
    assert_eq!(done["status"], "completed");
    let stats = sim.handle.stats().await;

    let sim = restart(sim, config).await;
    assert!(
        !dir.path().join(STATE_FILE).exists(),
        "the state file is removed once loaded"
    );
    assert_eq!(sim.batch(id(&done)).await, done, "the finished batch");
    assert_eq!(sim.batch(id(&running)).await, running, "the running batch");
    let output = sim.lines(done["output_file_id"].as_str().unwrap()).await;
    assert_eq!(output.len(), 3000, "the output file was written whole");
    let (status, input) = sim
        .get(&format!(
            "/files/{}",
            running["input_file_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{input}");
    let restarted = sim.handle.stats().await;
    assert_eq!(restarted.batches, stats.batches, "every history");
    assert!(
        restarted.requests["GET /v1/batches/{batch_id}"]
            > stats.requests["GET /v1/batches/{batch_id}"],
        "the counters carry on: {:?}",
        restarted.requests
    );

    // The running batch carries on from where it was, and new ids are new.
    sim.advance(70.0).await;
    let finished = sim.wait_status(id(&running), "completed").await;
    assert_eq!(finished["completed_at"], START + 155);
    let again = sim.submit(&chat_lines(2, "gpt-4o-mini")).await;
    assert!(
        stats.batches.iter().all(|b| b.id != id(&again)),
        "a batch id was given twice: {}",
        id(&again)
    );
    assert_ne!(again["input_file_id"], running["input_file_id"]);
    assert_ne!(again["input_file_id"], done["input_file_id"]);
}

#[tokio::test]
async fn the_clock_resumes_at_its_saved_reading_so_downtime_does_not_count() {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig {
        time_scale: 1000.0,
        ..with_dir(stopped_clock(), dir.path())
    };
    let sim = spawn_sim(config.clone()).await;
    let stopping = Instant::now();
    let before = sim.handle.stats().await.now;
    sim.handle.shutdown().await.unwrap();
    let stopped_after = stopping.elapsed();
    // The downtime, whose simulated equivalent (500 s at this speed) must not count.
    std::thread::sleep(Duration::from_millis(500));
    let starting = Instant::now();
    // Nor does a start time: simulated time never runs backwards or jumps at a restart.
    let sim = spawn_sim(SimConfig {
        start_time: Some(START + 10 * 86_400),
        ..config
    })
    .await;
    let after = sim.handle.stats().await.now;
    let running = stopped_after + starting.elapsed();
    let allowed = (running.as_secs_f64() * 1000.0).ceil() as i64 + 1;
    assert!(
        after >= before && after - before <= allowed,
        "the clock read {before} at the stop and {after} after the restart; only {allowed} s \
         of running time at 1000x lie between"
    );
}

#[tokio::test]
async fn a_state_is_loaded_once_so_a_crash_after_a_restart_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let config = with_dir(stopped_clock(), dir.path());
    let sim = spawn_sim(config.clone()).await;
    let batch = sim.submit(&chat_lines(2, "gpt-4o-mini")).await;
    let sim = restart(sim, config.clone()).await;
    assert_eq!(sim.batch(id(&batch)).await["status"], "validating");
    // A crash: the handle goes without a shutdown, so nothing is saved.
    drop(sim);

    let sim = spawn_sim(config).await;
    let (status, body) = sim.get(&format!("/batches/{}", id(&batch))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(sim.handle.stats().await.batches.is_empty());
}
