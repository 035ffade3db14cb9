//! The list sweep (`poll.mode`): a fleet observed a hundred batches per request, with other
//! tools' batches interleaved and in a list that does not run newest first; what the sweep
//! cannot see (a vanished batch, one beyond the page budget) still observed by retrieve; and
//! failing list pages that lose nothing and do not make the daemon spin.

use std::collections::BTreeMap;
use std::time::Duration;

use batchwatch::sim::{
    Counts, FaultKind, ListOrder, Observations, RetryAfter, ScriptedFault, SimConfig,
};
use batchwatch::store::Access;
use batchwatch::store::prelude::*;
use serde_json::{Value, json};

use crate::support::daemon::{Backend, Env, assert_each_completed_once, requests, slow_sim};
use crate::support::process::Running;
use crate::support::sim::{TestSim, spawn_sim};
use crate::support::wait_until;

const LIST: &str = "GET /v1/batches";
const RETRIEVE: &str = "GET /v1/batches/{batch_id}";

/// The simulator runs this many times faster than the real clock.
const SCALE: i64 = 300;

/// Batches stay in progress until the test steps them; finalizing then lasts `finalizing` real
/// seconds.
fn held_fleet(list_order: ListOrder, foreign_per_create: u64, finalizing: f64) -> SimConfig {
    SimConfig {
        finalizing_secs: finalizing * SCALE as f64,
        list_order,
        foreign_batches: 100_000,
        foreign_per_create,
        ..slow_sim(100_000.0)
    }
}

fn sweep_config(mode: &str, budget: u32) -> String {
    format!(
        "[poll]\nmode = \"{mode}\"\nlist_page_budget = {budget}\n\
         min_interval = \"300ms\"\nmax_interval = \"300ms\"\n"
    )
}

async fn counts(sim: &TestSim) -> Counts {
    serde_json::from_value(sim.admin_json("/counts", None).await).expect("counts")
}

/// The batch ids the daemon follows, by job (in either backend).
async fn remote_ids(env: &Env) -> BTreeMap<String, String> {
    let store = env.store().await;
    let recorded = store.recorded_submissions().await.unwrap();
    store.close().await;
    recorded
        .into_iter()
        .map(|(remote, job, _, _)| (job, remote))
        .collect()
}

/// The statuses recorded for a batch, in order (in either backend).
async fn history(env: &Env, remote_id: &str) -> Vec<String> {
    let store = env.store().await;
    let rows = match store.submission_by_remote_id(remote_id).await.unwrap() {
        Some(batch) => store.history(batch.id).await.unwrap(),
        None => Vec::new(),
    };
    store.close().await;
    rows.iter().map(|h| h.status.to_string()).collect()
}

/// Drops `n` one-batch files and waits until the daemon follows each one's batch.
async fn fleet_in_progress(env: &Env, sim: &TestSim, n: usize) -> BTreeMap<String, String> {
    for k in 0..n {
        env.drop_file(
            &format!("f{k:03}.jsonl"),
            requests(&format!("f{k}"), 2, "gpt-4o-mini").as_bytes(),
        );
    }
    let ids = wait_until(
        "every batch followed in progress",
        Duration::from_secs(120),
        async || {
            let ids = remote_ids(env).await;
            let c = counts(sim).await;
            let in_progress = c.batches.get("in_progress").copied().unwrap_or(0);
            (
                ids.len() == n && in_progress as usize >= n,
                (ids.len(), c.batches),
            )
        },
    )
    .await;
    let _ = ids;
    remote_ids(env).await
}

/// Steps `ids` to finalizing and waits until each has finalizing and completed in its history.
async fn step_and_check(env: &Env, sim: &TestSim, ids: &[String]) {
    sim.admin_json("/batches/step", Some(&json!({ "ids": ids })))
        .await;
    check_finalized(env, ids).await;
}

/// Waits until each of `ids` has finalizing and completed in its history, one row per change.
async fn check_finalized(env: &Env, ids: &[String]) {
    for id in ids {
        let seen = wait_until(
            "finalizing and completed recorded",
            Duration::from_secs(30),
            async || {
                let h = history(env, id).await;
                let ok = h.iter().any(|s| s == "finalizing")
                    && h.last().is_some_and(|s| s == "completed");
                (ok, h)
            },
        )
        .await;
        // One row per change: no status twice in a row with the same counts.
        assert!(
            seen.windows(2).all(|w| w[0] != w[1]) || seen.len() < 2,
            "{id}: {seen:?}"
        );
    }
}

/// Waits until the database has `n` active batches, each recorded in progress (its first
/// answer after the create is a change).
async fn recorded_in_progress(store: &batchwatch_store_sqlite::Store, n: usize) {
    wait_until(
        "every batch recorded in progress",
        Duration::from_secs(30),
        async || {
            let seen: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM batches WHERE state = 'active' AND status = 'in_progress'",
            )
            .fetch_one(store.reader())
            .await
            .unwrap();
            (seen as usize == n, seen)
        },
    )
    .await;
}

/// Lets the daemon sweep for three seconds, and checks that it did, at least five times (the
/// tests' interval is 300 ms); returns how many list pages it read.
async fn sweeps_for_three_seconds(sim: &TestSim) -> u64 {
    let lists = requests_of(&counts(sim).await, LIST);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let swept = requests_of(&counts(sim).await, LIST) - lists;
    assert!(swept >= 5, "{swept} list pages in 3 s at a 300 ms interval");
    swept
}

fn requests_of(c: &Counts, route: &str) -> u64 {
    c.requests.get(route).copied().unwrap_or(0)
}

fn stop(env: &Env, daemon: Running) {
    let log = env.stop(daemon);
    crate::support::daemon::assert_key_absent(&log);
}

async fn sweep_follows_a_fleet(order: ListOrder) {
    const N: usize = 120;
    let sim = spawn_sim(held_fleet(order, 2, 2.0)).await;
    let env = Env::new(&sim.handle.base_url(), &sweep_config("list", 50));
    let daemon = env.spawn();
    let ids = fleet_in_progress(&env, &sim, N).await;

    // A window of steady tracking: the sweep reads lists, not one batch at a time.
    let before = counts(&sim).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = counts(&sim).await;
    let lists = requests_of(&after, LIST) - requests_of(&before, LIST);
    let retrieves = requests_of(&after, RETRIEVE) - requests_of(&before, RETRIEVE);
    let cycles = 3.0 / 0.3;
    let per_batch_cycle = (lists + retrieves) as f64 / (N as f64 * cycles);
    assert!(lists > 0, "no list page read: {after:?}");
    assert!(
        per_batch_cycle < 0.2,
        "{lists} list pages and {retrieves} retrieves for {N} batches over {cycles} cycles"
    );

    // Every change of a third of them is recorded, whichever page they are on.
    let stepped: Vec<String> = ids.values().step_by(3).cloned().collect();
    step_and_check(&env, &sim, &stepped).await;

    // Other tools' batches are never recorded, never cancelled.
    let c = counts(&sim).await;
    assert!(c.foreign > 0, "the list had no foreign batches");
    assert_eq!(requests_of(&c, "POST /v1/batches/{batch_id}/cancel"), 0);
    let store = env.sqlite().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM batches WHERE remote_id IS NOT NULL")
        .fetch_one(store.reader())
        .await
        .unwrap();
    assert_eq!(rows as usize, N, "only our batches are rows");
    stop(&env, daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sweep_records_every_change_of_a_fleet_among_other_tools_batches() {
    sweep_follows_a_fleet(ListOrder::NewestFirst).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sweep_records_every_change_when_the_list_is_not_newest_first() {
    sweep_follows_a_fleet(ListOrder::Shuffled).await;
}

/// One page of budget and many foreign batches: most of the fleet lies beyond what a sweep
/// reads, and one batch vanishes. Each is still observed within `poll.max_interval` (by
/// retrieve), the vanished one becomes lost, and the changes are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_beyond_the_page_budget_or_vanished_are_still_observed_by_retrieve() {
    const N: usize = 30;
    let sim = spawn_sim(held_fleet(ListOrder::NewestFirst, 10, 2.0)).await;
    let env = Env::new(&sim.handle.base_url(), &sweep_config("list", 1));
    let daemon = env.spawn();
    let ids = fleet_in_progress(&env, &sim, N).await;

    sim.admin_json("/observations/reset", Some(&json!({})))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen: Observations =
        serde_json::from_value(sim.admin_json("/observations", None).await).unwrap();
    let ours: Vec<_> = seen.batches.iter().filter(|b| !b.foreign).collect();
    assert_eq!(ours.len(), N);
    for b in &ours {
        // 300 ms interval; a retrieve may wait for a sweep page and the loop's next round.
        let real_ms = b.max_gap_ms / SCALE;
        assert!(real_ms <= 1500, "{} unseen for {real_ms} ms", b.id);
    }
    let c = counts(&sim).await;
    assert!(
        requests_of(&c, RETRIEVE) > 0,
        "nothing was retrieved: {c:?}"
    );

    let all: Vec<String> = ids.values().cloned().collect();
    let (gone, rest) = all.split_first().unwrap();
    sim.admin_json(&format!("/batches/{gone}/vanish"), Some(&json!({})))
        .await;
    step_and_check(&env, &sim, &rest[..10]).await;
    wait_until(
        "the vanished batch lost",
        Duration::from_secs(20),
        async || {
            let store = env.sqlite().await;
            let state: String = sqlx::query_scalar("SELECT state FROM batches WHERE remote_id = ?")
                .bind(gone)
                .fetch_one(store.reader())
                .await
                .unwrap();
            (state == "lost", state)
        },
    )
    .await;
    stop(&env, daemon);
}

/// Every kind of failed list page, several times over, while batches change (each status
/// lasting longer than the longest Retry-After): every change is still recorded, and neither lists nor retrieves run away (the daemon does not spin).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_list_pages_lose_no_observation_and_do_not_spin() {
    const N: usize = 40;
    let sim = spawn_sim(held_fleet(ListOrder::NewestFirst, 1, 8.0)).await;
    let env = Env::new(&sim.handle.base_url(), &sweep_config("list", 50));
    let daemon = env.spawn();
    let ids = fleet_in_progress(&env, &sim, N).await;

    let on_list = |fault: FaultKind, times: u32| {
        let mut f = ScriptedFault::new(fault).times(times);
        f.method = Some("GET".into());
        f.path = Some("/v1/batches".into());
        f
    };
    let script = vec![
        on_list(
            FaultKind::RateLimit {
                retry_after: RetryAfter::Millis(1000),
            },
            2,
        ),
        on_list(FaultKind::ServerError, 2),
        on_list(FaultKind::BadGateway, 2),
        on_list(FaultKind::DropBefore, 2),
    ];
    let before = counts(&sim).await;
    sim.admin_json(
        "/faults/script",
        Some(&serde_json::to_value(&script).unwrap()),
    )
    .await;
    let stepped: Vec<String> = ids.values().take(10).cloned().collect();
    step_and_check(&env, &sim, &stepped).await;
    let script_left: Value = sim.admin_json("/faults/script", None).await;
    assert_eq!(script_left, json!([]), "every scripted fault was met");

    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = counts(&sim).await;
    let elapsed = (after.now_ms - before.now_ms) as f64 / 1000.0 / SCALE as f64;
    let cycles = elapsed / 0.3 + 2.0;
    let lists = requests_of(&after, LIST) - requests_of(&before, LIST);
    let retrieves = requests_of(&after, RETRIEVE) - requests_of(&before, RETRIEVE);
    assert!(
        (lists as f64) <= cycles * 2.0 + 16.0,
        "{lists} list requests in {cycles:.0} cycles"
    );
    assert!(
        (retrieves as f64) <= N as f64 * 10.0,
        "{retrieves} retrieves: failed pages must not turn into a retrieve storm"
    );
    stop(&env, daemon);
}

/// Whether another connection committed to the database since `conn` last asked.
async fn data_version(conn: &mut sqlx::SqliteConnection) -> i64 {
    sqlx::query_scalar("PRAGMA data_version")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// What a quiet sweep could write of each row: its plans, its last observation, its error.
async fn dump(conn: &mut sqlx::SqliteConnection) -> String {
    sqlx::query_scalar(
        "SELECT group_concat(quote(id) || quote(next_poll_at) || quote(last_polled_at)
                || quote(updated_at) || quote(last_error) || quote(status), ';')
         FROM (SELECT * FROM batches ORDER BY id)",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

/// A quiet fleet (nothing changes on the service) is swept page after page, and the database
/// is not written at all: no commit, so no row's bytes change. The next polls are planned in
/// the daemon's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_sweep_writes_nothing_to_the_database() {
    const N: usize = 30;
    let sim = spawn_sim(held_fleet(ListOrder::NewestFirst, 1, 2.0)).await;
    let env = Env::new(&sim.handle.base_url(), &sweep_config("list", 50));
    let daemon = env.spawn();
    fleet_in_progress(&env, &sim, N).await;
    let store = env.sqlite().await;
    recorded_in_progress(&store, N).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut conn = store.reader().acquire().await.unwrap();
    let version = data_version(&mut conn).await;
    let rows = dump(&mut conn).await;
    let swept = sweeps_for_three_seconds(&sim).await;
    assert_eq!(dump(&mut conn).await, rows, "a row was written");
    assert_eq!(
        data_version(&mut conn).await,
        version,
        "something was committed during {swept} quiet sweeps"
    );
    drop(conn);

    // The plans in memory still see every change.
    let ids: Vec<String> = remote_ids(&env).await.into_values().step_by(5).collect();
    step_and_check(&env, &sim, &ids).await;
    stop(&env, daemon);
}

/// The same on PostgreSQL: a quiet fleet swept page after page updates no row of `batches`
/// (each row's `xmin`, the transaction that last wrote it, stays as it was), though the
/// daemon's lease renewals and elections commit meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_sweep_on_postgresql_updates_no_row() {
    const N: usize = 30;
    let sim = spawn_sim(held_fleet(ListOrder::NewestFirst, 1, 2.0)).await;
    let config = format!(
        "{}[api]\nrequest_timeout = \"2s\"\n[database]\nlease = \"4s\"\n",
        sweep_config("list", 50)
    );
    let Some(env) = Env::on(Backend::Postgres, &sim.handle.base_url(), &config).await else {
        return;
    };
    let daemon = env.spawn();
    fleet_in_progress(&env, &sim, N).await;
    let url = env.postgres.as_deref().expect("a PostgreSQL database");
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    wait_until(
        "every batch recorded in progress",
        Duration::from_secs(30),
        async || {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM batches WHERE state = 'active' AND status = 'in_progress'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (n as usize == N, n)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let versions = async || -> Vec<(i64, String)> {
        sqlx::query_as("SELECT id, xmin::text FROM batches ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    let before = versions().await;
    sweeps_for_three_seconds(&sim).await;
    assert_eq!(versions().await, before, "a row of batches was updated");
    pool.close().await;

    let ids: Vec<String> = remote_ids(&env).await.into_values().step_by(5).collect();
    step_and_check(&env, &sim, &ids).await;
    stop(&env, daemon);
}

/// After a restart every active batch is due at once, whatever plan its row holds: the poll
/// schedule is rebuilt, not read back. Here every stored plan lies a century ahead, and the
/// changes made after the restart are still recorded within moments.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_polls_every_active_batch_whatever_its_stored_plan() {
    const N: usize = 20;
    let sim = spawn_sim(held_fleet(ListOrder::NewestFirst, 1, 2.0)).await;
    let env = Env::new(&sim.handle.base_url(), &sweep_config("auto", 50));
    let daemon = env.spawn();
    let ids = fleet_in_progress(&env, &sim, N).await;
    stop(&env, daemon);
    let far = "2126-01-01T00:00:00.000Z";
    let store =
        batchwatch_store_sqlite::Store::open(&env.db, Duration::from_secs(5), Access::Write)
            .await
            .unwrap();
    sqlx::query("UPDATE batches SET next_poll_at = ? WHERE state = 'active'")
        .bind(far)
        .execute(store.writer().unwrap())
        .await
        .unwrap();
    store.close().await;

    let daemon = env.spawn();
    let stepped: Vec<String> = ids.values().step_by(4).cloned().collect();
    step_and_check(&env, &sim, &stepped).await;
    stop(&env, daemon);
}

/// kill -9 in the middle of a quiet sweep (a page of it held up by the service, the pages
/// before it read), then a restart: every job is unverified again, and the check's walk of
/// the batch list feeds the first sweep (`track::sweep`'s docs). The batches moved while the
/// daemon was down and after are recorded once each, and every job ends once, with one batch
/// on the service, its results downloaded and its file in done/ unchanged: nothing lost,
/// nothing duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_killed_during_a_quiet_sweep_finds_nothing_lost_or_duplicated_after_a_restart() {
    const N: usize = 30;
    // Ten other batches per create: a sweep reads four pages.
    let sim = spawn_sim(held_fleet(ListOrder::NewestFirst, 10, 8.0)).await;
    let env = Env::new(&sim.handle.base_url(), &sweep_config("list", 50));
    let mut daemon = env.spawn();
    let ids = fleet_in_progress(&env, &sim, N).await;
    let store = env.sqlite().await;
    recorded_in_progress(&store, N).await;
    store.close().await;

    // The next list page is held for ten seconds: once the script is used up, a quiet sweep
    // is under way (the only reader of the list now), waiting on that page.
    let mut held = ScriptedFault::new(FaultKind::Latency { ms: 10_000 }).times(1);
    held.method = Some("GET".into());
    held.path = Some("/v1/batches".into());
    sim.admin_json(
        "/faults/script",
        Some(&serde_json::to_value([held]).unwrap()),
    )
    .await;
    wait_until(
        "a sweep's page held up",
        Duration::from_secs(10),
        async || {
            let left: Value = sim.admin_json("/faults/script", None).await;
            (left == json!([]), left)
        },
    )
    .await;
    daemon.signal(libc::SIGKILL);
    let (status, _) = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    drop(daemon);

    // A third of the batches move on while the daemon is down (finalizing for eight seconds:
    // the restart sees it), the rest after its start.
    let all: Vec<String> = ids.values().cloned().collect();
    let (down, after): (Vec<String>, Vec<String>) = all.iter().cloned().partition({
        let mut k = 0;
        move |_| {
            k += 1;
            k % 3 == 0
        }
    });
    sim.admin_json("/batches/step", Some(&json!({ "ids": down })))
        .await;
    let mut daemon = env.spawn();
    daemon.wait_for_line("checked against the service", Duration::from_secs(30));
    step_and_check(&env, &sim, &after).await;
    check_finalized(&env, &down).await;

    let jobs = env
        .wait_finished(N, Duration::from_secs(60), &mut daemon)
        .await;
    stop(&env, daemon);
    let files: Vec<(String, String)> = (0..N)
        .map(|k| {
            let content = requests(&format!("f{k}"), 2, "gpt-4o-mini");
            (format!("f{k:03}.jsonl"), content)
        })
        .collect();
    let stats = sim.handle.stats().await;
    assert_each_completed_once(&env, &jobs, &stats, &files, "killed during a quiet sweep");
    let c = counts(&sim).await;
    assert_eq!(
        requests_of(&c, "POST /v1/batches/{batch_id}/cancel"),
        0,
        "nothing was cancelled"
    );
}
