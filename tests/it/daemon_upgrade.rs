//! Upgrading: what an earlier batchwatch left on disk (its database, its queue tree, and the
//! service's side of its batches) is picked up and carried to the end by this one.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use batchwatch::model::JobState;
use batchwatch::sim::SimConfig;

use crate::support::daemon::{Env, assert_never_two_live_batches, quick_sim};
use crate::support::sim::spawn_sim;

/// A job as the fixture holds it.
struct Before {
    id: String,
    state: JobState,
    updated_at: String,
}

/// `tests/fixtures/before-store-port/`, made by its `make` script with the batchwatch of commit
/// b86437d (the last before the store's operations took over every transaction and job moves
/// were checked against the job state machine): a database with a job in every state, the
/// queue tree around it (the unfinished jobs' files in processing/, the finished ones' in done/
/// or failed/) and the simulator's saved state with every batch those
/// jobs made, some of them running, finalizing, cancelling, or completed with their downloads
/// broken. This binary opens and migrates the database and runs every job to its end: each
/// unfinished one completes (a cancelled one is cancelled), the finished ones stay as they were,
/// no job ever has two batches alive, and every file ends in done/ or failed/.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_left_in_every_state_by_the_version_before_the_store_operations_runs_to_the_end()
{
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/before-store-port");
    let dir = tempfile::tempdir().unwrap();
    let (queue, db) = (dir.path().join("queue"), dir.path().join("batchwatch.db"));
    copy_tree(&fixture.join("queue"), &queue);
    copy_tree(&fixture.join("sim"), &dir.path().join("sim"));
    std::fs::copy(fixture.join("batchwatch.db"), &db).unwrap();
    // The fixture was made on 2026-12-06 at 13:53 UTC, its deadlines and its batches' windows
    // counted from then: the unfinished jobs' deadlines are moved a day past now, and the
    // simulator's clock starts where the fixture's stopped, so that neither passes while the
    // test runs, whenever it runs.
    let tomorrow = batchwatch::clock::format(batchwatch::clock::add(
        jiff::Timestamp::now(),
        Duration::from_secs(86_400),
    ));
    let before: Vec<Before> = {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", db.display()))
            .await
            .unwrap();
        sqlx::query("UPDATE jobs SET deadline_at = ? WHERE finished_at IS NULL")
            .bind(&tomorrow)
            .execute(&mut conn)
            .await
            .unwrap();
        // Read as the version before left them: this build opens an older schema only to
        // migrate it, which the daemon's start is to do.
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT id, state, updated_at FROM jobs")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        conn.close().await.unwrap();
        rows.into_iter()
            .map(|(id, state, updated_at)| Before {
                id,
                state: *JobState::ALL.iter().find(|s| s.as_str() == state).unwrap(),
                updated_at,
            })
            .collect()
    };
    let made = jiff::Timestamp::from_second(1_796_565_600).unwrap(); // 2026-12-06T14:00:00Z
    let sim = spawn_sim(SimConfig {
        data_dir: Some(dir.path().join("sim")),
        start_time: Some(made.as_second()),
        ..quick_sim()
    })
    .await;
    let env = Env::placed(&sim.handle.base_url(), "", Some(&queue), Some(&db));

    let states: HashSet<JobState> = before.iter().map(|j| j.state).collect();
    assert_eq!(
        states,
        JobState::ALL.iter().copied().collect(),
        "the fixture holds a job in every state"
    );

    // The fixture's batches were made to last past their window and moved by hand; the ones
    // still in progress are moved on once, to finish as the simulator's durations say.
    let stepped: serde_json::Value = sim
        .http
        .post(format!("{}/batches/step", sim.handle.admin_url()))
        .json(&serde_json::json!({"count": 100}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !stepped["stepped"].as_array().unwrap().is_empty(),
        "{stepped}"
    );

    let mut daemon = env.spawn();
    let after = env
        .wait_finished(before.len(), Duration::from_secs(120), &mut daemon)
        .await;
    env.stop(daemon);
    for job in &after {
        let was = before.iter().find(|b| b.id == job.id).expect("no new job");
        let expected = match was.state {
            ended if ended.is_terminal() => ended,
            JobState::Cancelling => JobState::Cancelled,
            _ => JobState::Completed,
        };
        assert_eq!(
            job.state, expected,
            "{} was {}: {:?}",
            job.file_name, was.state, job.reason
        );
        if was.state.is_terminal() {
            assert_eq!(
                job.updated_at, was.updated_at,
                "{} was left alone",
                job.file_name
            );
        } else if expected == JobState::Completed {
            assert_eq!(
                env.output_lines(job),
                2,
                "{}: every result, once",
                job.file_name
            );
        }
        let home = if expected == JobState::Completed {
            "done"
        } else {
            "failed"
        };
        assert!(
            job.path.starts_with(&format!("{home}/")) && queue.join(&job.path).is_file(),
            "{} ({}) is at {}",
            job.file_name,
            job.state,
            job.path
        );
    }
    assert_never_two_live_batches(&sim).await;
    for sub in ["incoming", "processing"] {
        assert!(
            env.names(sub).is_empty(),
            "{sub}/ holds {:?}",
            env.names(sub)
        );
    }
}

/// Copies the tree at `from` to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
