//! kill -9 at each point where the daemon has done one thing and not yet the next, then a
//! restart: no duplicate batch, no lost file, every job finishes.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use crate::support::daemon::{
    Env, assert_each_completed_once, assert_key_absent, quick_sim, requests, wait_crash,
};
use crate::support::sim::spawn_sim;

async fn crash_then_restart(point: &str) {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn_with(&[(batchwatch::failpoint::ENV, point)]);
    let mut contents = Vec::new();
    for i in 0..3 {
        let content = requests(&format!("{point}-{i}"), 3 + i, "gpt-4o-mini");
        env.drop_file(&format!("c{i}.jsonl"), content.as_bytes());
        contents.push(content);
    }
    let status = wait_crash(&mut daemon, Duration::from_secs(30));
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the daemon died at {point}"
    );
    assert!(
        daemon
            .seen
            .iter()
            .any(|l| l.contains(&format!("crash point {point} reached")))
    );
    assert_key_absent(&daemon.seen);
    drop(daemon);

    let mut daemon = env.spawn();
    let jobs = env
        .wait_finished(3, Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
    let files: Vec<(String, String)> = contents
        .into_iter()
        .enumerate()
        .map(|(i, content)| (format!("c{i}.jsonl"), content))
        .collect();
    let stats = sim.handle.stats().await;
    assert_each_completed_once(&env, &jobs, &stats, &files, point);
    env.assert_key_nowhere_on_disk();
}

macro_rules! crash_tests {
    ($($name:ident => $point:literal),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                crash_then_restart($point).await;
            }
        )+
    };
}

crash_tests! {
    killed_after_claiming_a_file_before_recording_it => "claim:after-rename",
    killed_after_recording_the_upload_intent => "submit:after-upload-intent",
    killed_after_the_upload_before_recording_it => "submit:after-upload",
    killed_after_recording_the_create_intent => "submit:after-create-intent",
    killed_after_the_create_before_recording_it => "submit:after-create",
    killed_after_downloading_results_before_recording_it => "collect:after-download",
    killed_after_finishing_a_job_before_moving_its_file => "finish:after-state",
    killed_just_before_moving_a_finished_file => "settle:before-move",
}
