//! Several daemons on one PostgreSQL database and one queue tree: they share the files, one of
//! them leads (tracks every batch, keeps house), and whatever happens to one of them (killed
//! hard, paused past its lease) every file is finished once, with one batch per job, by the
//! others. Real processes, a real PostgreSQL server, the simulator over loopback.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use batchwatch::store::Store;
use batchwatch::store::ops::lease::InstanceRow;
use batchwatch::store::prelude::*;

use crate::support::chaos::{assert_nothing_lost_nothing_paid_twice, leases_lost};
use crate::support::daemon::{
    Backend, Env, assert_duplicate_reported, assert_each_completed_once, assert_key_absent,
    assert_never_two_live_batches, quick_sim, requests, slow_sim, wait_duplicate_cancelled,
};
use crate::support::partition::Partition;
use crate::support::process::Running;
use crate::support::sim::spawn_sim;
use crate::support::wait_until;

/// A short lease, so a takeover comes within seconds: 4 s (renewed every 1.3 s; a leader's
/// term 1 s, stood for every 0.33 s), the least a request timeout of 2 s allows.
const SHARED: &str = "[api]\nrequest_timeout = \"2s\"\n[database]\nlease = \"4s\"\n";

/// `n` files of `requests` requests each, dropped into incoming/: their names and contents.
fn drop_files(env: &Env, tag: &str, n: usize, requests_each: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let name = format!("{tag}-{i:02}.jsonl");
            let content = requests(&format!("{tag}-{i}"), requests_each, "gpt-4o-mini");
            env.drop_file(&name, content.as_bytes());
            (name, content)
        })
        .collect()
}

/// The instances the database records.
async fn instances(store: &Store) -> Vec<InstanceRow> {
    store.instances().await.expect("instances")
}

/// The instance of `daemon`'s process.
fn of(rows: &[InstanceRow], daemon: &Running) -> Option<InstanceRow> {
    let pid = i64::from(daemon.child.id());
    rows.iter().find(|i| i.pid == pid).cloned()
}

/// How many distinct instances claimed the jobs (each job keeps its holder's epoch).
async fn holders(env: &Env) -> usize {
    let url = env.postgres.as_deref().expect("a PostgreSQL database");
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    let epochs: Vec<Option<i64>> = sqlx::query_scalar("SELECT DISTINCT owner_epoch FROM jobs")
        .fetch_all(&pool)
        .await
        .expect("owners");
    pool.close().await;
    epochs.into_iter().flatten().collect::<BTreeSet<_>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_daemons_on_one_database_and_one_queue_finish_every_file_once() {
    let sim = spawn_sim(quick_sim()).await;
    let Some(env) = Env::on(Backend::Postgres, &sim.handle.base_url(), SHARED).await else {
        return;
    };
    let mut daemons = [env.spawn(), env.spawn(), env.spawn()];
    let files = drop_files(&env, "three", 30, 2);
    let [a, b, c] = &mut daemons;
    let jobs = env
        .wait_finished_by(files.len(), Duration::from_secs(120), &mut [a, b, c])
        .await;

    let store = env.store().await;
    let rows = instances(&store).await;
    assert_eq!(rows.iter().filter(|i| i.live).count(), 3, "{rows:?}");
    assert_eq!(
        rows.iter().filter(|i| i.leader).count(),
        1,
        "one leader: {rows:?}"
    );
    let claimed_by = holders(&env).await;
    println!("30 files claimed by {claimed_by} of 3 instances");
    for daemon in daemons {
        let seen = env.stop(daemon);
        assert_key_absent(&seen);
    }
    assert!(
        instances(&store).await.is_empty(),
        "each clean stop ends its lease"
    );
    let stats = sim.handle.stats().await;
    assert_each_completed_once(&env, &jobs, &stats, &files, "three daemons");
    assert_never_two_live_batches(&sim).await;
    env.assert_key_nowhere_on_disk();
}

/// A daemon registers under the name its configuration gives it (`daemon.name`), which `status
/// --instances` shows; a second daemon given the same name while the first runs is refused,
/// naming the key and the first's host, and leaves no instance behind; once the first stopped,
/// the name is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_runs_under_its_configured_name_and_a_second_of_that_name_is_refused() {
    let sim = spawn_sim(quick_sim()).await;
    let extra = format!("{SHARED}[daemon]\nname = \"worker-a\"\n");
    let Some(env) = Env::on(Backend::Postgres, &sim.handle.base_url(), &extra).await else {
        return;
    };
    let mut first = env.spawn();
    first.wait_for_line("registered on the shared database", Duration::from_secs(30));
    let store = env.store().await;
    let rows = instances(&store).await;
    assert_eq!(
        of(&rows, &first).map(|i| i.name).as_deref(),
        Some("worker-a")
    );
    let listed = crate::support::process::stdout_ok(Some(&env.config), &["status", "--instances"]);
    assert!(listed.contains("worker-a"), "{listed}");

    let mut second = env.spawn_refused();
    let (status, _) = second.wait_exit(Duration::from_secs(30));
    let said = second.seen.join("\n");
    assert_eq!(status.code(), Some(1), "{said}");
    let host = &rows[0].host;
    assert!(
        said.contains(&format!(
            "daemon.name \"worker-a\" is taken by a running daemon on host {host}"
        )),
        "{said}"
    );
    assert_eq!(instances(&store).await.len(), 1, "the refused one resigned");

    env.stop(first);
    let mut again = env.spawn();
    again.wait_for_line("registered on the shared database", Duration::from_secs(30));
    let rows = instances(&store).await;
    assert_eq!(
        of(&rows, &again).map(|i| i.name).as_deref(),
        Some("worker-a")
    );
    env.stop(again);
}

/// The leader, holding every job, is killed with SIGKILL while their batches run: the other
/// instance is elected, sweeps, takes the jobs over once the lease ran out, checks them
/// against the service, and finishes each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_hard_is_replaced_and_its_jobs_are_taken_over_and_finished_once() {
    let sim = spawn_sim(slow_sim(4.0)).await;
    let Some(env) = Env::on(Backend::Postgres, &sim.handle.base_url(), SHARED).await else {
        return;
    };
    let mut first = env.spawn();
    first.wait_for_line("this instance leads now", Duration::from_secs(10));
    let files = drop_files(&env, "failover", 8, 3);
    // Every batch created, all by the first instance, before the second starts.
    wait_until("every batch created", Duration::from_secs(60), async || {
        let jobs = env.jobs().await;
        (
            jobs.len() == files.len() && jobs.iter().all(|j| j.attempts == 1),
            (),
        )
    })
    .await;
    let mut second = env.spawn();
    let store = env.store().await;
    let rows = instances(&store).await;
    let leader = of(&rows, &first).expect("the first instance is registered");
    assert!(leader.leader, "{rows:?}");
    assert_eq!(leader.jobs, files.len() as i64, "{rows:?}");

    first.signal(libc::SIGKILL);
    let killed = Instant::now();
    second.wait_for_line("this instance leads now", Duration::from_secs(30));
    let elected = killed.elapsed();
    second.wait_for_line("list sweep", Duration::from_secs(30));
    let swept = killed.elapsed();
    second.wait_for_line("took over the jobs", Duration::from_secs(30));
    let taken = killed.elapsed();
    println!(
        "leader killed: another elected after {elected:?}, sweeping after {swept:?}, its jobs taken over after {taken:?} (lease 4 s, term 1 s)"
    );
    let jobs = env
        .wait_finished_by(files.len(), Duration::from_secs(120), &mut [&mut second])
        .await;
    for job in &jobs {
        let events = store.job_events(&job.id).await.unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.message.starts_with("taken over by")),
            "{}: {events:?}",
            job.file_name
        );
    }
    env.stop(second);
    let stats = sim.handle.stats().await;
    assert_each_completed_once(&env, &jobs, &stats, &files, "leader killed");
    assert_never_two_live_batches(&sim).await;
}

/// A daemon in a pid namespace of its own on this host (as in a container that has the host's
/// name) starts beside a running one: it cannot see the other's process, and must not take
/// that for gone. The running one's lease is left alone, and it runs on past several leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_in_another_pid_namespace_of_this_host_leaves_a_running_ones_lease_alone() {
    let sim = spawn_sim(quick_sim()).await;
    let Some(env) = Env::on(Backend::Postgres, &sim.handle.base_url(), SHARED).await else {
        return;
    };
    let mut first = env.spawn();
    let Some(mut second) = env.spawn_in_own_pid_namespace() else {
        env.stop(first);
        return;
    };
    let store = env.store().await;
    let rows = instances(&store).await;
    assert!(
        of(&rows, &first).is_some_and(|row| row.live)
            && rows.iter().filter(|r| r.live).count() == 2,
        "{rows:?}"
    );
    // Two leases: a lease ended under it would have been found lost at its next renewal.
    tokio::time::sleep(Duration::from_secs(8)).await;
    first.drain();
    assert!(
        first.child.try_wait().expect("try_wait").is_none()
            && !first.seen.iter().any(|l| l.contains("the lease is lost")),
        "{}",
        first.seen.join("\n")
    );
    second.drain();
    assert!(
        !second
            .seen
            .iter()
            .any(|l| l.contains("ended the lease of an earlier run")),
        "{}",
        second.seen.join("\n")
    );
    second.signal(libc::SIGKILL);
    second.wait_exit(Duration::from_secs(10));
    env.stop(first);
}

/// An instance paused (SIGSTOP) for longer than its lease, while it holds jobs being
/// submitted: the other takes them over; when the paused one resumes, its lease is lost: it
/// stops (exit 1, saying why) rather than send anything, and every file is finished once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_paused_past_its_lease_stops_when_it_resumes_and_nothing_is_paid_twice() {
    let sim = spawn_sim(slow_sim(3.0)).await;
    let Some(env) = Env::on(Backend::Postgres, &sim.handle.base_url(), SHARED).await else {
        return;
    };
    let mut paused = env.spawn();
    paused.wait_for_line("this instance leads now", Duration::from_secs(10));
    let files = drop_files(&env, "paused", 10, 2);
    wait_until(
        "some batches created",
        Duration::from_secs(60),
        async || {
            let jobs = env.jobs().await;
            (
                jobs.len() == files.len() && jobs.iter().any(|j| j.attempts == 1),
                (),
            )
        },
    )
    .await;
    let mut other = env.spawn();
    paused.signal(libc::SIGSTOP);
    other.wait_for_line("took over the jobs", Duration::from_secs(30));
    paused.signal(libc::SIGCONT);
    let (status, _) = paused.wait_exit(Duration::from_secs(30));
    paused.drain();
    assert_eq!(status.code(), Some(1), "{}", paused.seen.join("\n"));
    assert!(
        paused.seen.iter().any(|l| l.contains("the lease is lost")),
        "{}",
        paused.seen.join("\n")
    );
    let jobs = env
        .wait_finished_by(files.len(), Duration::from_secs(120), &mut [&mut other])
        .await;
    env.stop(other);
    let stats = sim.handle.stats().await;
    assert_each_completed_once(&env, &jobs, &stats, &files, "an instance paused");
    assert_never_two_live_batches(&sim).await;
}

/// An instance paused (SIGSTOP) past its lease in the middle of a transaction holds its
/// expired lease's row until the server ends its session, and no instance can take its jobs
/// over meanwhile. One that starts then starts all the same (a takeover that fails at the
/// start is tried again later, as one in the loop is), and takes the jobs over, and finishes
/// them once, when they can be taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_that_cannot_take_jobs_over_at_its_start_starts_and_takes_them_over_later() {
    use sqlx::Connection;
    let sim = spawn_sim(slow_sim(3.0)).await;
    let Some(env) = Env::on(Backend::Postgres, &sim.handle.base_url(), SHARED).await else {
        return;
    };
    let paused = env.spawn();
    let files = drop_files(&env, "held", 4, 2);
    wait_until("every batch created", Duration::from_secs(30), async || {
        let jobs = env.jobs().await;
        (
            jobs.len() == files.len() && jobs.iter().all(|j| j.attempts == 1),
            (),
        )
    })
    .await;
    let store = env.store().await;
    let epoch = of(&instances(&store).await, &paused)
        .expect("registered")
        .epoch;
    paused.signal(libc::SIGSTOP);
    // Its lease runs out; the transaction it was in holds its row (here, one of the test's
    // own, so that it is held for certain, and for as long as the test needs).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let url = env.postgres.as_deref().expect("a PostgreSQL database");
    let mut holder = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT epoch FROM instances WHERE epoch = $1 FOR SHARE")
        .bind(epoch)
        .fetch_one(&mut holder)
        .await
        .expect("the expired lease's row");

    let mut next = env.spawn();
    next.wait_for_line("cannot take over the jobs", Duration::from_secs(10));
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    next.wait_for_line("took over the jobs", Duration::from_secs(30));
    let jobs = env
        .wait_finished_by(files.len(), Duration::from_secs(60), &mut [&mut next])
        .await;
    env.stop(next);
    assert_each_completed_once(&env, &jobs, &sim.handle.stats().await, &files, "held");
}

/// Whether the process `daemon` is stopped (SIGSTOP): its state in /proc is `T`.
fn is_stopped(daemon: &Running) -> bool {
    let stat =
        std::fs::read_to_string(format!("/proc/{}/stat", daemon.child.id())).unwrap_or_default();
    // After "PID (COMM) ": the state letter.
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('T'))
}

/// The PostgreSQL server's address and the database's name in `env`'s URL
/// (`postgres://postgres@HOST:PORT/NAME`).
fn server_and_name(env: &Env) -> (std::net::SocketAddr, &str) {
    let url = env.postgres.as_deref().expect("a PostgreSQL database");
    url.strip_prefix("postgres://postgres@")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(server, name)| Some((server.parse().ok()?, name)))
        .expect("postgres://postgres@HOST:PORT/NAME")
}

/// The PostgreSQL server's address in `env`'s URL.
fn server(env: &Env) -> std::net::SocketAddr {
    server_and_name(env).0
}

/// The URL of `env`'s database reached through `partition`.
fn behind(env: &Env, partition: &Partition) -> String {
    let (_, name) = server_and_name(env);
    format!("postgres://postgres@{}/{name}", partition.addr)
}

/// Two instances cut off from the database while their jobs are under way (each reaches it
/// through a relay that then passes nothing, as a partition does: no answer, no reset), beside
/// a third that is not. The first learns by its own clock that its lease ran out: it stops
/// while still cut off (exit 1, saying why) within its lease and the time closing may wait
/// (`database.busy_timeout`, twice), rather than wait on connections that do not answer. The
/// second is stopped by SIGTERM in the middle of that wait, at once: within
/// `daemon.shutdown_timeout` and two `database.busy_timeout`s, not when the database answers
/// again. The third takes their jobs over and finishes each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_cut_off_from_the_database_stop_by_their_own_clock_or_at_sigterm_while_cut_off() {
    let sim = spawn_sim(slow_sim(3.0)).await;
    let Some(env) = Env::on(Backend::Postgres, &sim.handle.base_url(), SHARED).await else {
        return;
    };
    let relays = [
        Partition::to(server(&env)).await,
        Partition::to(server(&env)).await,
    ];
    let mut cut_off: Vec<Running> = relays
        .iter()
        .map(|relay| {
            let url = behind(&env, relay);
            env.spawn_with(&[("BATCHWATCH_DATABASE__URL", url.as_str())])
        })
        .collect();
    cut_off[0].wait_for_line("this instance leads now", Duration::from_secs(10));
    let files = drop_files(&env, "cut", 10, 2);
    wait_until("every batch created", Duration::from_secs(60), async || {
        let jobs = env.jobs().await;
        (
            jobs.len() == files.len() && jobs.iter().all(|j| j.attempts == 1),
            (),
        )
    })
    .await;
    let mut other = env.spawn();
    other.wait_for_line("registered on the shared database", Duration::from_secs(10));

    for relay in &relays {
        relay.cut();
    }
    let cut = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cut_off[1].signal(libc::SIGTERM);
    let (status, stopped_in) = cut_off[1].wait_exit(Duration::from_secs(30));
    let sigterm_bound = Duration::from_secs(3 + 2 * 5 + 2);
    assert!(
        status.success() && stopped_in < sigterm_bound,
        "SIGTERM while cut off: {status} after {stopped_in:?} (bound {sigterm_bound:?}):\n{}",
        cut_off[1].seen.join("\n")
    );
    let (status, _) = cut_off[0].wait_exit(Duration::from_secs(60));
    let stopped_after = cut.elapsed();
    assert_eq!(status.code(), Some(1), "{}", cut_off[0].seen.join("\n"));
    assert!(
        cut_off[0]
            .seen
            .iter()
            .any(|l| l.contains("the lease is lost") && l.contains("did not answer")),
        "{}",
        cut_off[0].seen.join("\n")
    );
    let lease_bound = Duration::from_secs(4 + 2 * 5 + 2);
    assert!(
        stopped_after < lease_bound,
        "the instance cut off stopped {stopped_after:?} after the cut (bound {lease_bound:?})"
    );
    println!(
        "cut off: stopped by its own clock {stopped_after:?} after the cut (lease 4 s), by SIGTERM {stopped_in:?} after the signal"
    );

    let jobs = env
        .wait_finished_by(files.len(), Duration::from_secs(120), &mut [&mut other])
        .await;
    let mut logs = env.stop(other);
    for daemon in &mut cut_off {
        logs.append(&mut daemon.seen);
    }
    assert_key_absent(&logs);
    let stats = sim.handle.stats().await;
    assert_each_completed_once(&env, &jobs, &stats, &files, "instances cut off");
    assert_never_two_live_batches(&sim).await;
}

/// The case the lease cannot prevent: an instance sent a create inside its lease, the request
/// is held up on its way (the service carries it out twelve seconds later: well after the
/// lease of 4 s, a takeover and a reconciliation, even on a loaded machine, as a create
/// carried out before the reconciliation is adopted, not duplicated; and while the job's own
/// batch runs, as a create carried out after the job ended and its input file was deleted
/// makes no batch), and the instance
/// is paused past its lease. The other instance takes the job over, finds no batch on the
/// service, and creates one; then the held-up create lands. The leader's duplicate watch finds
/// that second batch and cancels it, the job's events say so, and the job completes with its
/// own batch; the paused instance, resumed, stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_that_lands_after_its_sender_lost_the_lease_is_cancelled_by_the_duplicate_watch() {
    use batchwatch::sim::{FaultKind, ScriptedFault};
    // Batches run about twenty seconds: the job's own is still running when the late create
    // lands, and the duplicate is still live when it is found.
    let sim = spawn_sim(slow_sim(20.0)).await;
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::CarriedOutLate { ms: 12_000 })
                .on("POST", "/v1/batches")
                .times(1),
        )
        .await;
    let Some(env) = Env::on(Backend::Postgres, &sim.handle.base_url(), SHARED).await else {
        return;
    };
    let mut stale = env.spawn_with(&[(
        batchwatch::failpoint::STOP_ENV,
        "submit:after-unknown-outcome",
    )]);
    let files = drop_files(&env, "stale", 1, 3);
    wait_until(
        "the sender paused after its create",
        Duration::from_secs(30),
        async || (is_stopped(&stale), ()),
    )
    .await;
    let mut other = env.spawn();
    other.wait_for_line("took over the jobs", Duration::from_secs(30));
    let job_id = env.jobs().await[0].id.clone();
    let duplicate = wait_duplicate_cancelled(&sim, &job_id, Duration::from_secs(60)).await;

    stale.signal(libc::SIGCONT);
    let (status, _) = stale.wait_exit(Duration::from_secs(30));
    stale.drain();
    assert_eq!(status.code(), Some(1), "{}", stale.seen.join("\n"));
    let jobs = env
        .wait_finished_by(files.len(), Duration::from_secs(60), &mut [&mut other])
        .await;
    let log = env.stop(other);
    assert_eq!(jobs[0].state, batchwatch::model::JobState::Completed);
    assert_duplicate_reported(&log, &env.store().await, &job_id, &duplicate.id).await;
}

/// Three daemons on one database and one queue tree, a simulator with faults (429s, 500s,
/// creates carried out but never answered), files split into several batches and files whose
/// deadline passes while they run; meanwhile one daemon is killed (SIGKILL) and started again
/// every eight seconds, one is paused (SIGSTOP) for longer than its lease, and one is cut off
/// from the database (a relay that passes nothing) for three leases; each of those two stops
/// for its lost lease (the paused one once resumed, the one cut off while it is) and is
/// started again (the one cut off once it can reach the database), and the third is killed at
/// the end. Afterwards every file is in exactly one of
/// done/ or failed/, nothing is left in processing/, each job has one batch per part on the
/// service (any other was a late duplicate, cancelled, and the job's events say so), every
/// batch's history ends with its final status, and every deadline was enforced within a lease
/// and a takeover period of its passing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_daemons_under_kills_pauses_and_api_faults_lose_nothing_and_pay_nothing_twice() {
    use batchwatch::sim::{Faults, SimConfig};
    let sim = spawn_sim(SimConfig {
        faults: Faults {
            rate_limit: 0.03,
            server_error: 0.03,
            drop_after_create: 0.05,
            ..Faults::default()
        },
        ..slow_sim(4.0)
    })
    .await;
    let extra = format!("{SHARED}[batch]\nmax_requests = 4\nsplit_oversized = true\n");
    let Some(env) = Env::on(Backend::Postgres, &sim.handle.base_url(), &extra).await else {
        return;
    };
    // The third daemon reaches the database through a relay the test cuts.
    let partition = Partition::to(server(&env)).await;
    let behind = behind(&env, &partition);
    let start = |i: usize| match i {
        2 => env.spawn_with(&[("BATCHWATCH_DATABASE__URL", behind.as_str())]),
        _ => env.spawn(),
    };
    let mut daemons = [start(0), start(1), start(2)];
    let mut logs = Vec::new();
    // A daemon that stopped by itself did so because its lease was lost (paused, cut off):
    // its service manager would start it again; the one cut off, once it is no longer (a
    // start that cannot reach the database fails).
    let revive = |daemons: &mut [Running; 3], logs: &mut Vec<String>, cut: bool| {
        for (i, daemon) in daemons.iter_mut().enumerate() {
            if cut && i == 2 {
                continue;
            }
            if let Some(status) = daemon.child.try_wait().unwrap() {
                daemon.drain();
                assert_eq!(status.code(), Some(1), "{}", daemon.seen.join("\n"));
                assert!(
                    daemon.seen.iter().any(|l| l.contains("the lease is lost")),
                    "{}",
                    daemon.seen.join("\n")
                );
                logs.append(&mut daemon.seen);
                *daemon = start(i);
            }
        }
    };
    // 60 files of 2 to 10 requests (up to three batches each); every sixth must end within
    // three seconds of its claim.
    let mut files = Vec::new();
    for i in 0..60 {
        let name = format!("chaos-{i:02}.jsonl");
        if i % 6 == 0 {
            env.drop_file(&format!("{name}.toml"), b"deadline = \"3s\"\n");
        }
        let content = requests(&format!("chaos-{i}"), 2 + i % 9, "gpt-4o-mini");
        env.drop_file(&name, content.as_bytes());
        files.push(name);
    }

    // Every four seconds for 24 s: the first daemon killed hard and started again every other
    // round; the second paused (SIGSTOP) at 8 s for six seconds, past its lease; the third cut
    // off from the database at 4 s for twelve (three leases), then killed at the end.
    for round in 1..=6 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        match round {
            1 => partition.cut(),
            2 => daemons[1].signal(libc::SIGSTOP),
            4 => {
                daemons[1].signal(libc::SIGCONT);
                partition.mend();
            }
            _ => {}
        }
        let victim = match round {
            1 | 3 | 5 => Some(0),
            6 => Some(2),
            _ => None,
        };
        if let Some(i) = victim {
            daemons[i].signal(libc::SIGKILL);
            daemons[i].wait_exit(Duration::from_secs(10));
            daemons[i].drain();
            logs.append(&mut daemons[i].seen);
            daemons[i] = start(i);
        }
        revive(&mut daemons, &mut logs, (1..4).contains(&round));
    }
    // Those whose lease was lost stop within a renewal of their return.
    tokio::time::sleep(Duration::from_secs(3)).await;
    revive(&mut daemons, &mut logs, false);
    let [a, b, c] = &mut daemons;
    let jobs = env
        .wait_finished_by(files.len(), Duration::from_secs(180), &mut [a, b, c])
        .await;
    for daemon in daemons {
        logs.extend(env.stop(daemon));
    }
    assert_key_absent(&logs);

    let stats = sim.handle.stats().await;
    let after = assert_nothing_lost_nothing_paid_twice(&env, &jobs, &stats, &files).await;
    let lost = leases_lost(&logs);
    println!(
        "chaos: {after}, {lost} leases lost, faults {:?}",
        stats.faults_injected,
    );
    assert!(after.takeovers > 0, "no job changed hands");
    // The paused daemon and the one cut off each stopped once back, their lease lost.
    assert!(lost >= 2, "{lost} daemons stopped for a lost lease");
    // The lease (4 s), a takeover period (a third of it) and a round.
    assert!(
        after.late < Duration::from_secs(7),
        "a deadline enforced {:?} late: {}",
        after.late,
        after.latest
    );
}
