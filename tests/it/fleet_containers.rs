//! The fleet's chaos test in containers: three daemons, each in a container of the static
//! image, share one PostgreSQL server (Debian's package, in a container of the image
//! `.ci/debian-image postgres` builds) and one queue tree (a host directory bind-mounted into
//! each), and work against the simulator in a container that answers 429s and 500s and drops
//! the answers of creates it carried out. PostgreSQL is on a network of its own that the
//! daemons join besides the simulator's, so that one daemon can be cut off from the database
//! alone. Real containers, real signals, a real partition.

use std::time::{Duration, Instant};

use batchwatch::sim::{FaultKind, ScriptedFault};
use batchwatch::store::jobs::Job;

use crate::support::chaos::{assert_nothing_lost_nothing_paid_twice, leases_lost};
use crate::support::cluster::{
    Network, NetworkedDaemon, PostgresContainer, Run, remove_leftovers, unique_name,
};
use crate::support::containers::{self, QUICK_SIM, SimContainer};
use crate::support::daemon::{Env, assert_key_absent, requests, settled};
use crate::support::docker;

/// The lease: 12 s (renewed every 4 s). Longer than the fleet tests' 4 s on purpose: an
/// instance frozen or cut off in the middle of a transaction holds its lease's row until the
/// server ends that session (the store sets idle_in_transaction_session_timeout to 10 s), and
/// nobody can take its jobs over before; with a lease longer than that, the lease is what
/// bounds a takeover (and so a deadline's enforcement), as with the default lease of 2 min.
const LEASE: Duration = Duration::from_secs(12);
/// The daemons' configuration over the tests' fast defaults (poll.max_interval 200 ms): the
/// lease, and files of more than four requests split into several batches.
const CONFIG: &str = "[api]\nrequest_timeout = \"2s\"\n[database]\nlease = \"12s\"\n\
    [batch]\nmax_requests = 4\nsplit_oversized = true\n";
/// poll.max_interval of the tests' fast defaults.
const POLL_MAX_INTERVAL: Duration = Duration::from_millis(200);

/// How many files, dropped over the chaos at an even pace.
const FILES: usize = 500;
/// How long the chaos lasts, in seconds (one step a second).
const CHAOS_SECS: u64 = 100;
/// Daemon 0 is killed (SIGKILL) and started again every this many seconds.
const KILL_EVERY: u64 = 20;
/// Daemon 1 is paused at these seconds, each time for longer than its lease.
const PAUSES: [u64; 2] = [10, 50];
const PAUSE_SECS: u64 = 20;
/// At this second the next creates are carried out late ([`late_creates`]).
const LATE_CREATES_AT: u64 = 30;
/// Daemon 2 is cut off from PostgreSQL at this second for a minute (five leases).
const CUT_AT: u64 = 15;
const CUT_SECS: u64 = 60;

/// The simulator's flags: QUICK_SIM's, with batches in progress for about four seconds of
/// real time, so that the chaos meets them under way; 3 % of answers 429 (Retry-After 1 s),
/// 3 % 500, and 5 % of creates carried out but answered by a dropped connection.
fn sim_args() -> Vec<&'static str> {
    let slower = [("--in-progress-secs", "1200"), ("--request-secs", "0")];
    let mut args: Vec<&str> = QUICK_SIM.to_vec();
    for (flag, value) in slower {
        let at = args
            .iter()
            .position(|a| *a == flag)
            .expect("a QUICK_SIM flag");
        args[at + 1] = value;
    }
    args.extend([
        "--rate-limit",
        "0.03",
        "--server-error",
        "0.03",
        "--drop-after-create",
        "0.05",
    ]);
    args
}

/// The next three creates are answered by a dropped connection at once and carried out six
/// seconds later: each sender finds no batch when it reconciles and creates one again, and the
/// late one is a duplicate, which the leader's duplicate watch must cancel.
fn late_creates() -> ScriptedFault {
    ScriptedFault::new(FaultKind::CarriedOutLate { ms: 6_000 })
        .on("POST", "/v1/batches")
        .times(3)
}

/// Drops the files due by second `second` of the chaos: `FILES` over `CHAOS_SECS`, of 2 to
/// 10 requests (up to three batches each); every sixth must end within three seconds of its
/// claim. Their names go to `files`.
fn drop_due(env: &Env, second: u64, files: &mut Vec<String>) {
    let due = (FILES as u64 * (second + 1) / CHAOS_SECS).min(FILES as u64) as usize;
    while files.len() < due {
        let i = files.len();
        let name = format!("chaos-{i:03}.jsonl");
        if i.is_multiple_of(6) {
            env.drop_file(&format!("{name}.toml"), b"deadline = \"3s\"\n");
        }
        let content = requests(&format!("chaos-{i}"), 2 + i % 9, "gpt-4o-mini");
        env.drop_file(&name, content.as_bytes());
        files.push(name);
    }
}

/// How long the jobs may take to finish after the chaos.
const FINISH_WITHIN: Duration = Duration::from_secs(150);

/// What is unfinished after [`FINISH_WITHIN`], and the tail of each daemon's log and of the
/// server's.
async fn unfinished(
    jobs: &[Job],
    daemons: &[NetworkedDaemon],
    postgres: &PostgresContainer,
) -> String {
    let states: Vec<String> = jobs
        .iter()
        .filter(|j| !settled(j))
        .map(|j| format!("{} {} {:?} at {}", j.file_name, j.state, j.reason, j.path))
        .collect();
    let mut logs = Vec::new();
    for daemon in daemons {
        logs.push((daemon.name.clone(), daemon.logs().await));
    }
    logs.push(("PostgreSQL".to_owned(), postgres.logs().await));
    let mut tails = Vec::new();
    for (who, log) in logs {
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        tails.push(format!("--- {who}\n{tail}"));
    }
    format!(
        "after {FINISH_WITHIN:?}: {} jobs, unsettled:\n{}\n{}",
        jobs.len(),
        states.join("\n"),
        tails.join("\n")
    )
}

/// Checks that `daemon`, which exited `code` by itself, did so because its lease was lost.
async fn assert_lease_lost(daemon: &NetworkedDaemon, code: i64) {
    let log = daemon.logs_of_this_run().await;
    assert!(
        code == 1 && log.contains("the lease is lost"),
        "{} exited {code}, not for a lost lease; it logged:\n{log}",
        daemon.name
    );
}

/// Starts again each daemon that stopped by itself: it must have exited 1 because its lease
/// was lost (it was paused or cut off), as its service manager would; but the one `cut_off`
/// from the database, which is only noted (when it was first seen stopped, in
/// `cut_off_stopped`): a start cannot reach the database while it is. Counts those restarts
/// in `lost`.
async fn revive(
    daemons: &mut [NetworkedDaemon],
    lost: &mut [usize],
    cut_off: Option<usize>,
    cut_off_stopped: &mut Option<Instant>,
) {
    for (i, daemon) in daemons.iter_mut().enumerate() {
        if let Run::Exited(code) = daemon.run().await {
            if Some(i) == cut_off {
                if cut_off_stopped.is_none() {
                    assert_lease_lost(daemon, code).await;
                    *cut_off_stopped = Some(Instant::now());
                }
                continue;
            }
            assert_lease_lost(daemon, code).await;
            lost[i] += 1;
            daemon.start().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_daemon_containers_killed_paused_and_cut_off_lose_nothing_and_pay_nothing_twice() {
    let began = Instant::now();
    let Some(image) = containers::image().await else {
        return;
    };
    let postgres_image = match docker::debian_image("postgres").await {
        Ok(tag) => tag,
        Err(reason) => return docker::cannot_run(&reason),
    };
    let images_ready = began.elapsed();
    remove_leftovers().await;

    // Declared first, dropped last: every container on them is gone by then.
    let api = Network::create(&unique_name("chaos-api")).await;
    let db = Network::create(&unique_name("chaos-db")).await;
    let postgres = PostgresContainer::start(&postgres_image, &db).await;
    postgres.create_database("chaos").await;
    let data = tempfile::tempdir().expect("temp dir");
    let sim = SimContainer::start_on(image.clone(), data.path(), &sim_args(), &api.name).await;
    let mut env = Env::new(&sim.base_url_for_containers().await, CONFIG);
    env.configure(&format!(
        "[database]\nurl = {:?}\n",
        postgres.url_for_containers("chaos")
    ));
    env.postgres = Some(postgres.url_from_host("chaos"));
    let mut daemons = Vec::new();
    for i in 0..3 {
        let name = unique_name(&format!("chaos-daemon{i}"));
        let mut daemon = NetworkedDaemon::create(&image, &env, &name, &[&db, &api]).await;
        daemon.start().await;
        daemons.push(daemon);
    }
    let set_up = began.elapsed();

    // One step a second: the files due, then what happens to the daemons at that second.
    let mut files = Vec::new();
    let (mut lost, mut kills) = ([0; 3], 0);
    let mut cut_off: Option<String> = None;
    let (mut cut_at, mut reconnected, mut cut_off_stopped) = (None, None, None);
    let chaos = tokio::time::Instant::now();
    for second in 0..CHAOS_SECS {
        tokio::time::sleep_until(chaos + Duration::from_secs(second)).await;
        drop_due(&env, second, &mut files);
        if second > 0 && second % KILL_EVERY == 0 {
            // Unless it stopped by itself (a lease lost to a stall) in the last second.
            match daemons[0].kill().await {
                Run::Exited(137) => kills += 1,
                Run::Exited(code) => {
                    assert_lease_lost(&daemons[0], code).await;
                    lost[0] += 1;
                }
                run => unreachable!("{run:?} after docker kill"),
            }
            daemons[0].start().await;
        }
        if PAUSES.contains(&second) {
            daemons[1].pause().await;
        }
        if PAUSES.iter().any(|p| p + PAUSE_SECS == second) {
            daemons[1].unpause().await;
        }
        if second == LATE_CREATES_AT {
            sim.push_fault(&late_creates()).await;
        }
        if second == CUT_AT {
            cut_off = Some(daemons[2].disconnect(&db).await);
            cut_at = Some(Instant::now());
        }
        if second == CUT_AT + CUT_SECS {
            let ip = cut_off.take().expect("cut off");
            daemons[2].connect(&db, &ip).await;
            reconnected = Some(Instant::now());
        }
        let held = cut_off.is_some().then_some(2);
        revive(&mut daemons, &mut lost, held, &mut cut_off_stopped).await;
    }
    let chaos_took = chaos.elapsed();

    // Every file finished; daemons whose lease was lost meanwhile (the one cut off included)
    // are started again. Checked once a second: each check asks Docker about every daemon.
    let finishing = Instant::now();
    let jobs = loop {
        revive(&mut daemons, &mut lost, None, &mut cut_off_stopped).await;
        let jobs = env.jobs().await;
        if jobs.len() == FILES && jobs.iter().all(settled) {
            break jobs;
        }
        if finishing.elapsed() > FINISH_WITHIN {
            panic!("{}", unfinished(&jobs, &daemons, &postgres).await);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let finish_took = finishing.elapsed();
    let mut logs = Vec::new();
    for daemon in &daemons {
        let code = daemon.stop().await;
        let log = daemon.logs().await;
        assert_eq!(
            code, 0,
            "{} after docker stop; it logged:\n{log}",
            daemon.name
        );
        logs.push(log);
    }
    let lines: Vec<String> = logs
        .iter()
        .flat_map(|l| l.lines())
        .map(str::to_owned)
        .collect();
    // The daemon cut off stopped while it was, once its lease ran out by its own clock: within
    // the lease, the time closing may wait for the database (database.busy_timeout, 5 s,
    // twice), and a check of the test's (a second) and Docker's answer.
    let cut_off_stopped_after = cut_off_stopped
        .zip(cut_at)
        .map(|(stopped, cut)| stopped.saturating_duration_since(cut));
    let stop_bound = LEASE + Duration::from_secs(2 * 5 + 3);
    assert!(
        cut_off_stopped
            .zip(reconnected)
            .is_some_and(|(stopped, back)| stopped < back)
            && cut_off_stopped_after.is_some_and(|after| after < stop_bound),
        "the daemon cut off did not stop within {stop_bound:?} while it was: it stopped {cut_off_stopped_after:?} after the cut"
    );
    assert_key_absent(&lines);

    let stats = sim.stats().await;
    let after = assert_nothing_lost_nothing_paid_twice(&env, &jobs, &stats, &files).await;
    let lines_lost = leases_lost(&lines);
    println!(
        "chaos in containers: {after}, {kills} kills, {} leases lost (paused {}, cut off {}, killed {}; {lines_lost} said so; the one cut off stopped {cut_off_stopped_after:?} after it was cut off), faults {:?}; images {images_ready:?}, set-up {set_up:?}, chaos {chaos_took:?}, finish {finish_took:?}, whole test {:?}",
        lost.iter().sum::<usize>(),
        lost[1],
        lost[2],
        lost[0],
        stats.faults_injected,
        began.elapsed()
    );
    assert!(after.takeovers > 0, "no job changed hands");
    assert!(
        lost[1] >= PAUSES.len(),
        "the paused daemon stopped {} times for a lost lease",
        lost[1]
    );
    // A deadline that passes while its job's holder is away is enforced by the instance that
    // takes the job over: once the holder's lease ran out (LEASE), at that instance's next
    // takeover (every third of a lease), then at its next round (a poll interval).
    let bound = LEASE + LEASE / 3 + POLL_MAX_INTERVAL;
    assert!(
        after.late <= bound,
        "a deadline enforced {:?} after it passed (bound {bound:?}): {}",
        after.late,
        after.latest
    );
}
