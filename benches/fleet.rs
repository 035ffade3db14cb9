//! batchwatch and a poller on the official Python SDK, side by side, tracking the same fleet.
//!
//! ```text
//! cargo bench --bench fleet                          # 1,000 batches, 10 s interval, 30 s window
//! cargo bench --bench fleet -- --n 10000             # 10,000 batches, 100 s interval, 300 s window
//! cargo bench --bench fleet -- --n 10000 --rps 5     # batchwatch alone, default limits
//! cargo bench --bench fleet -- --idle 600            # batchwatch with nothing to do
//! cargo bench --bench fleet -- --n 10000 --restart   # a kill -9 and a start with every job unfinished
//! cargo bench --bench fleet -- --db postgres         # also batchwatch on PostgreSQL
//! cargo bench --bench fleet -- --db postgres --instances 3   # three daemons on one database
//! ```
//!
//! Two simulators (`batchwatch sim`, separate processes, time scale 1), each holding its
//! batches in progress (validating 1 s, then in progress and finalizing for 10^7 s). On one,
//! batchwatch (the `batchwatch run` cargo built for this bench) with a configuration the bench
//! writes: `poll.min_interval = poll.max_interval = --interval`, `limits.requests_per_second`
//! unbounded (10^6), `limits.concurrency = --concurrency` and no monitoring endpoint
//! (`metrics.listen = ""`: daemons side by side would want one port). It gets its N batches
//! through intake: N files of 10 requests are moved into `incoming/` at once; its intake rate
//! is N over the time from the first claim (`jobs.created_at`) to the last batch created in
//! the simulator. On the other, `benches/sdk_poller.py`: asyncio, `AsyncOpenAI`, creating its N
//! batches itself (upload and create, `--concurrency` at a time; that is its intake rate),
//! then retrieving every active batch once per interval and writing a SQLite row per change.
//! Without the `openai` package it is skipped, with the reason, and batchwatch runs alone.
//!
//! Once every side tracks its fleet and a first interval has passed, the window opens. Over it,
//! for each: CPU seconds (`utime + stime` of `/proc/PID/stat`) and API requests (the
//! simulator's count, every route) per tracked batch per cycle (window / interval), bytes
//! written to storage per tracked batch per cycle (`write_bytes - cancelled_write_bytes` of
//! `/proc/PID/io`: a SQLite database's file and WAL are written by the daemon, its log file
//! too; for PostgreSQL the server's processes are added, as for CPU), and peak RSS (`VmHWM`).
//! `--changes 0` leaves the window quiet: then the bytes are what a quiet cycle writes. During the window both simulators move `--changes` batches each from
//! `in_progress` to `finalizing`, spread over the window's first part, so that every change
//! can be seen before it closes; the lag of each is the time from the change (simulator
//! time, to the millisecond, which runs with the real clock) to its row in the database
//! (`status_history.observed_at`, or the poller's row), reported as median and max, with any
//! change not recorded an interval after the window named as such.
//!
//! `--db postgres`: a third simulator, and on it batchwatch again, its `database.url` a
//! scratch PostgreSQL server the bench starts (Debian's postgresql package, the highest version
//! under `/usr/lib/postgresql`; a cluster made by `initdb` in the run's directory, run as the
//! postgres user when the bench runs as root; fsync and synchronous commit as by default, since
//! their cost is part of what is measured), with the same N files through intake and the same
//! window. Its CPU counts the server too: the postmaster and every child of it (those that
//! ended through the postmaster's `cutime + cstime`), shown apart from the daemon's and summed,
//! and divided by SQLite's. The server's own counters (`pg_stat_database`, `pg_stat_wal`) give
//! the commits, rows written and WAL flushes per file of intake (read 11 s after it ends: an
//! idle backend publishes its counters within 10 s, so they hold a little tracking too) and
//! per batch per cycle of the window, and the daemons' and the server's CPU per file of
//! intake. `--instances K` (1 to 3): K daemons on that database and one queue directory, as
//! several hosts would run them; the intake rate is theirs together (first claim to last
//! batch created), the window's figures are the group's (every daemon's CPU and the
//! server's), and each daemon's CPU, peak RSS and the jobs it holds at the end are listed.
//!
//! `--rps R`: batchwatch alone; after intake (unbounded) it is restarted with the built-in
//! limits and poll bounds but `limits.requests_per_second = R`, given two `poll.max_interval`
//! to settle (its check of every job against the service at start shares the rate), then watched over the window (default 3 × max_interval): the simulator records
//! when each batch was sent to a client, and the bench reports how many active batches went
//! unseen for longer than `poll.max_interval`.
//!
//! `--restart`: batchwatch alone; after intake (unbounded), once the database has every batch
//! in progress (so that what the start records is what the bench changes), it is killed
//! (SIGKILL: what a crash leaves, every job unfinished and so unchecked against the service at
//! the next start; with `--stale`, as soon as every batch is active, before the daemon has
//! seen them leave `validating`: then the start records a change for nearly every batch), the
//! newest batch and `--changes` others move to `finalizing` while it is down, and it is started
//! again with the built-in limits and poll bounds (`--rps R` sets the rate). Watched every
//! 20 ms from the spawn: the first request the simulator sees and the first list page or
//! retrieve (which the start-up check and a poll both send), when the first and the last of the
//! changes are in the database (only a poll records one: the newest batch is on a sweep's first
//! page, so the first row is the first poll's), when the log says the start-up checks are done
//! (with the daemon's CPU, `utime + stime` of `/proc/PID/stat`, and the requests so far by
//! kind: list pages, retrieves, file lists, and the status changes recorded so far, rows of
//! `status_history`), and the CPU and requests when the last change is in. Then it is killed and started once more with sqlx's statement log on (`sqlx::query` at
//! debug), which counts the database queries until the checks are done; that run's times are
//! not reported (the log costs CPU).
//!
//! `--idle SECONDS`: batchwatch with an empty queue and nothing in flight; its CPU over the
//! period, as a share of one core.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use batchwatch::sim::{Counts, Observations, Stepped};
use serde_json::{Value, json};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

#[path = "support/postgres.rs"]
mod postgres;
#[path = "support/procs.rs"]
mod procs;

use postgres::Server;
use procs::{Simulator, cpu_secs, status_kib, write_bytes};

const BIN: &str = env!("CARGO_BIN_EXE_batchwatch");
const POLLER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/sdk_poller.py");
/// Any non-empty key works with the simulator.
const KEY: &str = "sk-bench-fleet";
/// Requests per file dropped into batchwatch's queue (and per batch the poller creates).
const REQUESTS_PER_FILE: usize = 10;

const USAGE: &str = "cargo bench --bench fleet -- [--n N] [--interval SECS] [--window SECS] \
                     [--concurrency C] [--changes K] [--foreign N] [--list-order ORDER] \
                     [--rps R] [--restart [--stale]] [--idle SECS] [--db sqlite|postgres] [--instances K] \
                     [--keep]";

/// The most daemons `--instances` runs on one PostgreSQL database.
const MAX_INSTANCES: usize = 3;

/// The database the bench makes on its PostgreSQL server for the daemons.
const PG_DATABASE: &str = "bench";

/// Which databases the daemons are measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// SQLite only, as the daemon is run by default.
    Sqlite,
    /// SQLite, and beside it PostgreSQL on its own simulator.
    Postgres,
}

#[derive(Debug)]
struct Opts {
    n: usize,
    interval: f64,
    window: Option<f64>,
    concurrency: u32,
    changes: Option<usize>,
    foreign: u64,
    list_order: Option<String>,
    rps: Option<f64>,
    /// Measure a start after a kill -9 instead of the comparison.
    restart: bool,
    /// With `restart`: kill before the daemon has seen the batches in progress.
    stale: bool,
    idle: Option<f64>,
    db: Backend,
    /// How many daemons share the PostgreSQL database.
    instances: usize,
    keep: bool,
}

impl Opts {
    fn parse() -> anyhow::Result<Opts> {
        fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> anyhow::Result<T> {
            let value = value.with_context(|| format!("{flag} needs a value ({USAGE})"))?;
            value
                .parse()
                .map_err(|_| anyhow::anyhow!("{flag} {value:?} is not a valid number"))
        }
        let mut opts = Opts {
            n: 1000,
            interval: 0.0,
            window: None,
            concurrency: 64,
            changes: None,
            foreign: 0,
            list_order: None,
            rps: None,
            restart: false,
            stale: false,
            idle: None,
            db: Backend::Sqlite,
            instances: 1,
            keep: false,
        };
        let mut instances = None;
        let mut interval = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--n" => opts.n = number(&arg, args.next())?,
                "--interval" => interval = Some(number::<f64>(&arg, args.next())?),
                "--window" => opts.window = Some(number(&arg, args.next())?),
                "--concurrency" => opts.concurrency = number(&arg, args.next())?,
                "--changes" => opts.changes = Some(number(&arg, args.next())?),
                "--foreign" => opts.foreign = number(&arg, args.next())?,
                "--list-order" => opts.list_order = args.next(),
                "--rps" => opts.rps = Some(number(&arg, args.next())?),
                "--restart" => opts.restart = true,
                "--stale" => opts.stale = true,
                "--idle" => opts.idle = Some(number(&arg, args.next())?),
                "--db" => {
                    opts.db = match args.next().as_deref() {
                        Some("sqlite") => Backend::Sqlite,
                        Some("postgres") => Backend::Postgres,
                        Some(other) => bail!("--db takes sqlite or postgres, not {other:?}"),
                        None => bail!("--db needs a value: sqlite or postgres"),
                    }
                }
                "--instances" => instances = Some(number(&arg, args.next())?),
                "--keep" => opts.keep = true,
                "--bench" => {}
                other => bail!("unknown argument {other:?}; usage: {USAGE}"),
            }
        }
        anyhow::ensure!(opts.n > 0, "--n must be at least 1");
        anyhow::ensure!(opts.concurrency > 0, "--concurrency must be at least 1");
        if let Some(k) = instances {
            anyhow::ensure!(
                opts.db == Backend::Postgres,
                "--instances needs --db postgres: only daemons on PostgreSQL share a database"
            );
            anyhow::ensure!(
                (1..=MAX_INSTANCES).contains(&k),
                "--instances must be 1 to {MAX_INSTANCES}"
            );
            opts.instances = k;
        }
        if opts.db == Backend::Postgres {
            anyhow::ensure!(
                opts.rps.is_none() && opts.idle.is_none() && !opts.restart,
                "--db postgres measures the comparison only, not --rps, --restart or --idle"
            );
        }
        anyhow::ensure!(!opts.stale || opts.restart, "--stale goes with --restart");
        anyhow::ensure!(
            !(opts.restart && opts.idle.is_some()),
            "--restart and --idle are separate measurements"
        );
        // 10 s per 1,000 batches keeps today's daemon and the SDK poller within their cycle.
        opts.interval = interval.unwrap_or((opts.n as f64 / 100.0).max(10.0));
        anyhow::ensure!(opts.interval >= 1.0, "--interval must be at least 1 second");
        if let Some(w) = opts.window {
            anyhow::ensure!(
                w >= opts.interval,
                "--window must be at least one --interval"
            );
        }
        Ok(opts)
    }

    fn changes(&self) -> usize {
        self.changes.unwrap_or((self.n / 100).max(10)).min(self.n)
    }
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::Builder::new().prefix("bench-fleet-").tempdir()?;
    let result = runtime.block_on(async {
        if let Some(secs) = opts.idle {
            idle(&opts, dir.path(), secs).await
        } else if opts.restart {
            restart(&opts, dir.path()).await
        } else {
            fleet(&opts, dir.path()).await
        }
    });
    if opts.keep {
        let kept = dir.keep();
        eprintln!("kept the run's files in {}", kept.display());
    }
    result
}

/// A progress line, on stderr so stdout holds only the results.
fn note(text: impl AsRef<str>) {
    eprintln!("· {}", text.as_ref());
}

/// One side of the comparison, as measured.
#[derive(Default)]
struct Side {
    intake_rate: Option<f64>,
    tracked: usize,
    /// The CPU of the side's own processes: its daemons, or the poller.
    cpu_secs: f64,
    /// The CPU of its database server, for PostgreSQL.
    server_cpu_secs: Option<f64>,
    /// Bytes its own processes wrote to storage (a SQLite database is written by the daemon).
    write_bytes: u64,
    /// Bytes its database server wrote to storage, for PostgreSQL.
    server_write_bytes: Option<u64>,
    requests: u64,
    peak_rss_kib: u64,
    lags_ms: Vec<i64>,
    unseen_changes: usize,
}

impl Side {
    /// Its CPU with its database server's.
    fn total_cpu_secs(&self) -> f64 {
        self.cpu_secs + self.server_cpu_secs.unwrap_or(0.0)
    }

    /// Bytes written to storage, its database server's included.
    fn total_write_bytes(&self) -> u64 {
        self.write_bytes + self.server_write_bytes.unwrap_or(0)
    }
}

/// A side's figures at the window's opening or close.
struct Reading {
    /// The requests its simulator received so far.
    requests: u64,
    /// CPU seconds so far, per process of the side.
    cpu_secs: Vec<f64>,
    /// CPU seconds of its database server so far, for PostgreSQL.
    server_cpu_secs: Option<f64>,
    /// Bytes written to storage so far, per process of the side.
    write_bytes: Vec<u64>,
    /// Bytes its database server wrote so far, for PostgreSQL.
    server_write_bytes: Option<u64>,
}

impl Reading {
    async fn take(sim: &SimApi, pids: &[u32], server: Option<&Server>) -> anyhow::Result<Reading> {
        Ok(Reading {
            requests: requests(&sim.counts().await?),
            cpu_secs: pids
                .iter()
                .map(|&pid| cpu_secs(pid))
                .collect::<Result<_, _>>()?,
            server_cpu_secs: server.map(Server::cpu_secs).transpose()?,
            write_bytes: pids
                .iter()
                .map(|&pid| write_bytes(pid))
                .collect::<Result<_, _>>()?,
            server_write_bytes: server.map(Server::write_bytes).transpose()?,
        })
    }

    /// The side over the window from `self` to `after`, its peak RSS the sum of its processes'.
    fn side(&self, after: &Reading, tracked: usize, pids: &[u32]) -> anyhow::Result<Side> {
        let mut peak_rss_kib = 0;
        for &pid in pids {
            peak_rss_kib += status_kib(Some(pid), "VmHWM")?;
        }
        Ok(Side {
            tracked,
            cpu_secs: after.cpu_secs.iter().sum::<f64>() - self.cpu_secs.iter().sum::<f64>(),
            server_cpu_secs: after
                .server_cpu_secs
                .zip(self.server_cpu_secs)
                .map(|(a, b)| a - b),
            write_bytes: after.write_bytes.iter().sum::<u64>()
                - self.write_bytes.iter().sum::<u64>(),
            server_write_bytes: after
                .server_write_bytes
                .zip(self.server_write_bytes)
                .map(|(a, b)| a - b),
            requests: after.requests - self.requests,
            peak_rss_kib,
            ..Side::default()
        })
    }
}

async fn fleet(opts: &Opts, dir: &Path) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    // PostgreSQL first, so that a run without it fails before anything else starts.
    let mut on_postgres = match opts.db {
        Backend::Postgres => Some(OnPostgres::start(opts, dir, &http).await?),
        Backend::Sqlite => None,
    };
    let ours = SimApi::start(opts, dir, "sim-batchwatch", &http)?;
    let (theirs, skipped) = if opts.rps.is_none() {
        let sim = SimApi::start(opts, dir, "sim-sdk", &http)?;
        match Poller::start(opts, dir, sim).await? {
            Ok(poller) => (Some(poller), None),
            Err(reason) => {
                note(format!("SDK poller skipped: {reason}"));
                (None, Some(reason))
            }
        }
    } else {
        (None, None)
    };

    let mut daemon = Daemon::on_sqlite(dir, &ours.sim.base_url)?;
    daemon.configure(&unbounded_limits(opts))?;
    daemon.start().await?;
    let intake_rate = intake(opts, dir, std::slice::from_ref(&daemon), &ours).await?;
    let postgres_intake = match &mut on_postgres {
        Some(pg) => Some(pg.intake(opts, dir).await?),
        None => None,
    };

    let (interval, window) = match opts.rps {
        Some(rps) => {
            let defaults = batchwatch::config::Settings::load_from(None, [])?;
            let max_interval = defaults.poll.max_interval.get().as_secs_f64();
            daemon.stop()?;
            daemon.configure(&format!("[limits]\nrequests_per_second = {rps:?}\n"))?;
            daemon.start().await?;
            // At start the daemon checks every unfinished job against the service (it lists
            // every batch and file: some 40 s of the 5 requests/s with 10,000 jobs), which
            // shares the rate with the polls: two intervals pass before the window opens, so
            // that no gap the restart opened is counted in it.
            note(format!(
                "restarted batchwatch with the default limits and poll bounds, but \
                 {rps} requests/s; settling for two poll.max_interval ({max_interval} s)"
            ));
            tokio::time::sleep(Duration::from_secs_f64(2.0 * max_interval)).await;
            (max_interval, opts.window.unwrap_or(3.0 * max_interval))
        }
        None => {
            let interval = opts.interval;
            let window = opts.window.unwrap_or(3.0 * interval);
            if let Some(poller) = &theirs {
                poller.go()?;
            }
            note(format!(
                "all are tracking; settling for one interval ({interval} s)"
            ));
            tokio::time::sleep(Duration::from_secs_f64(interval + 2.0)).await;
            (interval, window)
        }
    };

    // The window.
    let daemon_pids = [daemon.pid()?];
    let postgres_pids = match &on_postgres {
        Some(pg) => pg.pids()?,
        None => Vec::new(),
    };
    let ours_before = Reading::take(&ours, &daemon_pids, None).await?;
    ours.reset_observations().await?;
    let postgres_before = match &on_postgres {
        Some(pg) => Some((
            Reading::take(&pg.sim, &postgres_pids, Some(&pg.server)).await?,
            ServerCounts::read(&pg.pool).await?,
        )),
        None => None,
    };
    let theirs_before = match &theirs {
        Some(p) => Some(Reading::take(&p.sim, &[p.pid()], None).await?),
        None => None,
    };
    let opened = Instant::now();
    note(format!(
        "window open for {window} s ({:.1} cycles of {interval} s); moving {} batches on in each simulator meanwhile",
        window / interval,
        opts.changes()
    ));
    let sims: Vec<&SimApi> = [
        Some(&ours),
        on_postgres.as_ref().map(|pg| &pg.sim),
        theirs.as_ref().map(|p| &p.sim),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut steps = change_during(opts, interval, window, &sims, opened)
        .await?
        .into_iter();
    let ours_steps = steps.next().unwrap_or_default();
    let postgres_steps = on_postgres
        .as_ref()
        .and_then(|_| steps.next())
        .unwrap_or_default();
    let theirs_steps = steps.next().unwrap_or_default();
    tokio::time::sleep_until((opened + Duration::from_secs_f64(window)).into()).await;
    let ours_after = Reading::take(&ours, &daemon_pids, None).await?;
    let postgres_after = match &on_postgres {
        Some(pg) => Some((
            Reading::take(&pg.sim, &postgres_pids, Some(&pg.server)).await?,
            ServerCounts::read(&pg.pool).await?,
        )),
        None => None,
    };
    let theirs_after = match &theirs {
        Some(p) => Some(Reading::take(&p.sim, &[p.pid()], None).await?),
        None => None,
    };
    let observations = ours.observations().await?;
    note(format!(
        "window closed; giving the last changes one more interval ({interval} s) to be recorded"
    ));
    tokio::time::sleep(Duration::from_secs_f64(interval + 2.0)).await;

    let mut batchwatch = Side {
        intake_rate: Some(intake_rate),
        ..ours_before.side(&ours_after, opts.n, &daemon_pids)?
    };
    (batchwatch.lags_ms, batchwatch.unseen_changes) =
        lags(&ours_steps, &daemon.db().await?.first_finalizing().await?);
    let on_pg = match (&on_postgres, postgres_before, postgres_after) {
        (Some(pg), Some((before, counts_before)), Some((after, counts_after))) => {
            let mut side = Side {
                intake_rate: postgres_intake.as_ref().map(|i| i.rate),
                ..before.side(&after, opts.n, &postgres_pids)?
            };
            (side.lags_ms, side.unseen_changes) = lags(
                &postgres_steps,
                &Reader::Postgres(pg.pool.clone()).first_finalizing().await?,
            );
            let instances = postgres_pids
                .iter()
                .zip(before.cpu_secs.iter().zip(&after.cpu_secs))
                .map(|(&pid, (b, a))| {
                    Ok(Instance {
                        pid,
                        cpu_secs: a - b,
                        peak_rss_kib: status_kib(Some(pid), "VmHWM")?,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Some((
                side,
                counts_after.minus(&counts_before),
                instances,
                pg.holders().await?,
            ))
        }
        _ => None,
    };
    let sdk = match (&theirs, theirs_before, theirs_after) {
        (Some(poller), Some(before), Some(after)) => {
            let mut side = Side {
                intake_rate: Some(poller.created as f64 / poller.create_secs),
                ..before.side(&after, opts.n, &[poller.pid()])?
            };
            (side.lags_ms, side.unseen_changes) =
                lags(&theirs_steps, &poller_seen(&poller.db).await?);
            Some(side)
        }
        _ => None,
    };
    daemon.stop()?;
    if let Some(pg) = &mut on_postgres {
        for daemon in &mut pg.daemons {
            daemon.stop()?;
        }
    }

    let cycles = window / interval;
    println!();
    println!(
        "fleet: {} batches of {REQUESTS_PER_FILE} requests, held in progress; interval {interval} s, window {window} s ({cycles:.1} cycles); {} status changes during the window",
        opts.n,
        opts.changes()
    );
    match opts.rps {
        Some(rps) => println!(
            "batchwatch with the default limits and poll bounds but {rps} requests/s, restarted after an unbounded intake (peak RSS since the restart)"
        ),
        None => println!(
            "limits unbounded (10^6 requests/s), {} requests in flight at most, poll.min_interval = poll.max_interval = {interval} s",
            opts.concurrency
        ),
    }
    if opts.foreign > 0 || opts.list_order.is_some() {
        println!(
            "simulators: {} foreign batches, list order {}",
            opts.foreign,
            opts.list_order.as_deref().unwrap_or("newest-first")
        );
    }
    if let Some(pg) = &on_postgres {
        println!(
            "PostgreSQL {}: {} daemon(s) on one database and one queue directory; fsync on, synchronous_commit on",
            pg.server.version, opts.instances
        );
    }
    let mut columns = vec![("batchwatch SQLite".to_owned(), &batchwatch)];
    if let Some((side, ..)) = &on_pg {
        let heading = match opts.instances {
            1 => "batchwatch PG".to_owned(),
            k => format!("batchwatch PG ×{k}"),
        };
        columns.push((heading, side));
    }
    if let Some(side) = &sdk {
        columns.push(("SDK poller".to_owned(), side));
    }
    print_table(&columns, cycles, interval);
    if let Some(sdk) = &sdk {
        print_ratios("batchwatch (SQLite) / SDK poller", &batchwatch, sdk, cycles);
    }
    if let Some((side, window_counts, instances, holders)) = &on_pg {
        print_ratios("batchwatch, PostgreSQL / SQLite", side, &batchwatch, cycles);
        print_instances(instances, holders, cycles, opts.n);
        if let Some(intake) = &postgres_intake {
            println!();
            println!("PostgreSQL server counters (database {PG_DATABASE}; WAL cluster-wide):");
            intake.counts.print(
                &format!(
                    "intake, per file (over {:.1} s: from before the drop to {:.0} s after the last batch)",
                    intake.secs,
                    STATS_DELAY.as_secs_f64()
                ),
                opts.n as f64,
            );
            let (daemons, server) = intake.cpu_secs;
            println!(
                "  intake CPU per file over that span: daemon(s) {:.2} ms, server {:.2} ms",
                daemons * 1000.0 / opts.n as f64,
                server * 1000.0 / opts.n as f64
            );
        }
        window_counts.print(
            "window, per tracked batch per cycle",
            opts.n as f64 * cycles,
        );
    }
    if let Some(reason) = &skipped {
        println!("SDK poller skipped: {reason} (install it: python3 -m pip install openai)");
    }
    if opts.rps.is_some() {
        report_coverage(&observations, interval);
    }
    Ok(())
}

/// The configuration of the comparison: the interval fixed, the limits out of the way.
fn unbounded_limits(opts: &Opts) -> String {
    format!(
        "[poll]\nmin_interval = \"{i}ms\"\nmax_interval = \"{i}ms\"\n\n[limits]\n\
         requests_per_second = 1000000.0\nconcurrency = {c}\n",
        i = (opts.interval * 1000.0).round() as u64,
        c = opts.concurrency
    )
}

fn requests(counts: &Counts) -> u64 {
    counts.requests.values().sum()
}

/// Moves `changes` batches on in each simulator, spread over the part of the window that
/// leaves every change an interval (plus 2 s) to be seen before the window closes; the batches
/// moved in each, in the order of `sims`.
async fn change_during(
    opts: &Opts,
    interval: f64,
    window: f64,
    sims: &[&SimApi],
    opened: Instant,
) -> anyhow::Result<Vec<Vec<Stepped>>> {
    let total = opts.changes();
    let span = (window - interval - 2.0).max(window / 2.0);
    let rounds = total.min((span / 0.5) as usize).max(1);
    let mut steps = vec![Vec::new(); sims.len()];
    for round in 0..rounds {
        let at = opened + Duration::from_secs_f64(span * round as f64 / rounds as f64);
        tokio::time::sleep_until(at.into()).await;
        let count = total * (round + 1) / rounds - total * round / rounds;
        for (sim, stepped) in sims.iter().zip(&mut steps) {
            stepped.extend(sim.step(count).await?);
        }
    }
    Ok(steps)
}

/// Drops the N files into the queue the `daemons` share and waits until they track every
/// batch; returns the intake rate, files per second from the first claim to the last batch
/// created.
async fn intake(opts: &Opts, dir: &Path, daemons: &[Daemon], sim: &SimApi) -> anyhow::Result<f64> {
    let first = daemons.first().context("intake needs a daemon")?;
    let logs = daemons
        .iter()
        .map(|d| d.log.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let staging = dir.join("staging");
    std::fs::create_dir_all(&staging)?;
    for k in 0..opts.n {
        let lines: String = (0..REQUESTS_PER_FILE)
            .map(|i| {
                json!({"custom_id": format!("r{i}"), "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("file {k}, question {i}")}]}})
                .to_string()
                    + "\n"
            })
            .collect();
        std::fs::write(staging.join(format!("f{k:06}.jsonl")), lines)?;
    }
    let incoming = first.queue.join("incoming");
    for k in 0..opts.n {
        let name = format!("f{k:06}.jsonl");
        std::fs::rename(staging.join(&name), incoming.join(&name))?;
    }
    note(format!(
        "dropped {} files into {}",
        opts.n,
        incoming.display()
    ));

    let db = first.db().await?;
    let started = Instant::now();
    let limit = Duration::from_secs(120 + opts.n as u64 / 5);
    let mut reported = Instant::now();
    loop {
        let active = db.active_batches().await?;
        if active as usize >= opts.n {
            break;
        }
        if started.elapsed() > limit {
            bail!(
                "after {limit:?} batchwatch tracks {active} of {} batches; see {logs}",
                opts.n
            );
        }
        if reported.elapsed() > Duration::from_secs(15) {
            note(format!("batchwatch tracks {active} of {} batches", opts.n));
            reported = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let first_claim = db.first_claim().await?;
    let first_claim = batchwatch::clock::parse(&first_claim)
        .context("jobs.created_at is not a timestamp")?
        .as_millisecond();
    let last_created = sim
        .observations()
        .await?
        .batches
        .iter()
        .filter(|b| !b.foreign)
        .map(|b| b.created_ms)
        .max()
        .context("the simulator has no batches")?;
    let secs = (last_created - first_claim).max(1) as f64 / 1000.0;
    note(format!(
        "batchwatch ({} on {}) took in {} files in {secs:.1} s (first claim to last batch created)",
        match daemons.len() {
            1 => "one daemon".to_owned(),
            k => format!("{k} daemons"),
        },
        db.backend(),
        opts.n
    ));
    Ok(opts.n as f64 / secs)
}

/// Each batch's first `finalizing` row in batchwatch's history: its remote id, and when
/// (the stored timestamp, the same text in either database).
const FIRST_FINALIZING: &str = "SELECT b.remote_id, min(h.observed_at) \
     FROM status_history h JOIN batches b ON b.id = h.batch_id \
     WHERE h.status = 'finalizing' AND b.remote_id IS NOT NULL GROUP BY b.remote_id";

/// The same in the SDK poller's rows, unix ms.
const POLLER_SEEN: &str =
    "SELECT batch_id, min(observed_ms) FROM changes WHERE status = 'finalizing' GROUP BY batch_id";

/// When the poller in its database at `db` first saw each batch finalizing: id, unix ms.
async fn poller_seen(db: &Path) -> anyhow::Result<HashMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(POLLER_SEEN)
        .fetch_all(&read_only(db).await?)
        .await?;
    Ok(rows.into_iter().collect())
}

/// The lag of each stepped batch's first `finalizing` row (`seen`: remote id to unix ms) after
/// its change, in ms; and how many have no such row.
fn lags(steps: &[Stepped], seen: &HashMap<String, i64>) -> (Vec<i64>, usize) {
    let mut lags = Vec::new();
    let mut unseen = 0;
    for step in steps.iter().filter(|s| s.moved) {
        match seen.get(&step.id) {
            Some(at) => lags.push(at - step.at_ms),
            None => unseen += 1,
        }
    }
    (lags, unseen)
}

async fn read_only(path: &Path) -> anyhow::Result<SqlitePool> {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(path).read_only(true))
        .await
        .with_context(|| format!("opening {}", path.display()))
}

/// A daemon's database as the bench reads it, in either backend; the queries are the same
/// text in both.
enum Reader {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Reader {
    fn backend(&self) -> &'static str {
        match self {
            Reader::Sqlite(_) => "SQLite",
            Reader::Postgres(_) => "PostgreSQL",
        }
    }

    async fn active_batches(&self) -> anyhow::Result<i64> {
        const SQL: &str = "SELECT count(*) FROM batches WHERE state = 'active'";
        Ok(match self {
            Reader::Sqlite(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
            Reader::Postgres(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
        })
    }

    /// Active batches the database has in progress.
    async fn in_progress_batches(&self) -> anyhow::Result<i64> {
        const SQL: &str =
            "SELECT count(*) FROM batches WHERE state = 'active' AND status = 'in_progress'";
        Ok(match self {
            Reader::Sqlite(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
            Reader::Postgres(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
        })
    }

    /// Rows of `status_history`: every change recorded.
    async fn history_rows(&self) -> anyhow::Result<i64> {
        const SQL: &str = "SELECT count(*) FROM status_history";
        Ok(match self {
            Reader::Sqlite(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
            Reader::Postgres(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
        })
    }

    /// The first claim: the earliest `jobs.created_at`.
    async fn first_claim(&self) -> anyhow::Result<String> {
        const SQL: &str = "SELECT min(created_at) FROM jobs";
        Ok(match self {
            Reader::Sqlite(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
            Reader::Postgres(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
        })
    }

    /// When the daemon first recorded each batch as finalizing: remote id, unix ms.
    async fn first_finalizing(&self) -> anyhow::Result<HashMap<String, i64>> {
        let rows: Vec<(String, String)> = match self {
            Reader::Sqlite(pool) => sqlx::query_as(FIRST_FINALIZING).fetch_all(pool).await?,
            Reader::Postgres(pool) => sqlx::query_as(FIRST_FINALIZING).fetch_all(pool).await?,
        };
        rows.into_iter()
            .map(|(id, at)| {
                let at = batchwatch::clock::parse(&at)
                    .with_context(|| format!("status_history.observed_at {at:?}"))?;
                Ok((id, at.as_millisecond()))
            })
            .collect()
    }
}

/// How long PostgreSQL may take to publish a backend's counters: an idle backend flushes
/// them within 10 s (`PGSTAT_IDLE_INTERVAL`), so intake's are read this long after it ends.
const STATS_DELAY: Duration = Duration::from_secs(11);

/// The server's counters of the bench database (`pg_stat_database`) and of the cluster's WAL
/// (`pg_stat_wal`), or the difference of two readings.
struct ServerCounts {
    commits: i64,
    rollbacks: i64,
    inserted: i64,
    updated: i64,
    deleted: i64,
    wal_records: i64,
    wal_bytes: i64,
    wal_syncs: i64,
}

impl ServerCounts {
    async fn read(pool: &PgPool) -> anyhow::Result<ServerCounts> {
        let row: (i64, i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT d.xact_commit, d.xact_rollback, d.tup_inserted, d.tup_updated, \
             d.tup_deleted, w.wal_records, w.wal_bytes::bigint, w.wal_sync \
             FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = $1",
        )
        .bind(PG_DATABASE)
        .fetch_one(pool)
        .await
        .context("reading pg_stat_database and pg_stat_wal")?;
        let (commits, rollbacks, inserted, updated, deleted, wal_records, wal_bytes, wal_syncs) =
            row;
        Ok(ServerCounts {
            commits,
            rollbacks,
            inserted,
            updated,
            deleted,
            wal_records,
            wal_bytes,
            wal_syncs,
        })
    }

    fn minus(&self, before: &ServerCounts) -> ServerCounts {
        ServerCounts {
            commits: self.commits - before.commits,
            rollbacks: self.rollbacks - before.rollbacks,
            inserted: self.inserted - before.inserted,
            updated: self.updated - before.updated,
            deleted: self.deleted - before.deleted,
            wal_records: self.wal_records - before.wal_records,
            wal_bytes: self.wal_bytes - before.wal_bytes,
            wal_syncs: self.wal_syncs - before.wal_syncs,
        }
    }

    /// One line of the counters divided by `per` (files, or batches × cycles).
    fn print(&self, what: &str, per: f64) {
        let each = |x: i64| x as f64 / per;
        println!(
            "  {what}: {:.2} commits, {:.2} rollbacks, rows {:.2} inserted, {:.2} updated, \
             {:.2} deleted; WAL {:.1} records, {:.0} bytes, {:.2} flushes (fsync)",
            each(self.commits),
            each(self.rollbacks),
            each(self.inserted),
            each(self.updated),
            each(self.deleted),
            each(self.wal_records),
            each(self.wal_bytes),
            each(self.wal_syncs),
        );
    }
}

/// What intake on PostgreSQL measured.
struct PostgresIntake {
    rate: f64,
    /// The server's counters from just before the drop to [`STATS_DELAY`] after intake.
    counts: ServerCounts,
    /// The daemons' CPU seconds and the server's over the same span.
    cpu_secs: (f64, f64),
    /// How long that was.
    secs: f64,
}

/// batchwatch on PostgreSQL: a scratch server, a simulator of its own, and `--instances`
/// daemons on one database and one queue directory. (Fields drop in order: the daemons end
/// before the server.)
struct OnPostgres {
    daemons: Vec<Daemon>,
    sim: SimApi,
    /// The bench's own connection, for its reads.
    pool: PgPool,
    server: Server,
}

impl OnPostgres {
    /// Starts the server with an empty database, the simulator, and configures the daemons.
    async fn start(opts: &Opts, dir: &Path, http: &reqwest::Client) -> anyhow::Result<OnPostgres> {
        let server = Server::start(dir)?;
        server.create_database(PG_DATABASE).await?;
        note(format!(
            "PostgreSQL {} listens on 127.0.0.1:{} (log: {})",
            server.version,
            server.port,
            server.log.display()
        ));
        let url = server.url(PG_DATABASE);
        let sim = SimApi::start(opts, dir, "sim-postgres", http)?;
        let queue = dir.join("queue-postgres");
        let daemons = (1..=opts.instances)
            .map(|k| {
                let daemon = Daemon::new(
                    dir.join(format!("batchwatch-postgres-{k}")),
                    queue.clone(),
                    Database::Postgres(url.clone()),
                    &sim.sim.base_url,
                )?;
                daemon.configure(&unbounded_limits(opts))?;
                Ok(daemon)
            })
            .collect::<anyhow::Result<_>>()?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(OnPostgres {
            daemons,
            sim,
            pool,
            server,
        })
    }

    /// Starts the daemons, one after the other (the first makes the tables), and takes the N
    /// files in through them.
    async fn intake(&mut self, opts: &Opts, dir: &Path) -> anyhow::Result<PostgresIntake> {
        for daemon in &mut self.daemons {
            daemon.start().await?;
        }
        let daemons_cpu =
            |pids: &[u32]| -> anyhow::Result<f64> { pids.iter().map(|&pid| cpu_secs(pid)).sum() };
        let pids = self.pids()?;
        let before = ServerCounts::read(&self.pool).await?;
        let cpu_before = (daemons_cpu(&pids)?, self.server.cpu_secs()?);
        let started = Instant::now();
        let rate = intake(opts, dir, &self.daemons, &self.sim).await?;
        tokio::time::sleep(STATS_DELAY).await;
        let counts = ServerCounts::read(&self.pool).await?.minus(&before);
        Ok(PostgresIntake {
            rate,
            counts,
            cpu_secs: (
                daemons_cpu(&pids)? - cpu_before.0,
                self.server.cpu_secs()? - cpu_before.1,
            ),
            secs: started.elapsed().as_secs_f64(),
        })
    }

    fn pids(&self) -> anyhow::Result<Vec<u32>> {
        self.daemons.iter().map(Daemon::pid).collect()
    }

    /// How many jobs each instance holds: its pid (None: no live instance) and the count.
    async fn holders(&self) -> anyhow::Result<Vec<(Option<i64>, i64)>> {
        Ok(sqlx::query_as(
            "SELECT i.pid, count(*) FROM jobs j LEFT JOIN instances i ON i.epoch = j.owner_epoch \
             GROUP BY j.owner_epoch, i.pid ORDER BY j.owner_epoch",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

/// One daemon of several on PostgreSQL, over the window.
struct Instance {
    pid: u32,
    cpu_secs: f64,
    peak_rss_kib: u64,
}

/// Per daemon on PostgreSQL: its CPU and peak RSS over the window, and the jobs it holds.
fn print_instances(
    instances: &[Instance],
    holders: &[(Option<i64>, i64)],
    cycles: f64,
    tracked: usize,
) {
    println!();
    println!(
        "daemons on PostgreSQL (jobs held at the end: SELECT owner_epoch, count(*) FROM jobs GROUP BY 1):"
    );
    for (k, instance) in instances.iter().enumerate() {
        let held = holders
            .iter()
            .filter(|(pid, _)| *pid == Some(i64::from(instance.pid)))
            .map(|(_, count)| count)
            .sum::<i64>();
        println!(
            "  instance {} (pid {}): {held} jobs; CPU {:.2} s over the window ({:.3} ms per tracked batch per cycle); peak RSS {:.1} MiB",
            k + 1,
            instance.pid,
            instance.cpu_secs,
            instance.cpu_secs * 1000.0 / (tracked as f64 * cycles),
            instance.peak_rss_kib as f64 / 1024.0
        );
    }
    let unheld: i64 = holders
        .iter()
        .filter(|(pid, _)| pid.is_none())
        .map(|(_, count)| count)
        .sum();
    if unheld > 0 {
        println!("  held by no live instance: {unheld} jobs");
    }
}

/// With `--rps`: how many active batches went unseen for longer than `max_interval`.
fn report_coverage(observations: &Observations, max_interval: f64) {
    let active: Vec<_> = observations
        .batches
        .iter()
        .filter(|b| !b.foreign && !b.vanished)
        .filter(|b| {
            !matches!(
                b.status.as_str(),
                "completed" | "failed" | "expired" | "cancelled"
            )
        })
        .collect();
    let limit_ms = (max_interval * 1000.0) as i64;
    let late = active.iter().filter(|b| b.max_gap_ms > limit_ms).count();
    let worst = active.iter().map(|b| b.max_gap_ms).max().unwrap_or(0);
    let never = active.iter().filter(|b| b.count == 0).count();
    println!(
        "observed at least once per poll.max_interval ({max_interval} s): {} of {} active batches \
         ({late} went unseen for longer, {never} never seen in the window; longest gap {:.1} s): {}",
        active.len() - late,
        active.len(),
        worst as f64 / 1000.0,
        if late == 0 { "yes" } else { "no" }
    );
}

fn median_max(lags: &[i64]) -> Option<(f64, f64)> {
    if lags.is_empty() {
        return None;
    }
    let mut sorted = lags.to_vec();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2] as f64 / 1000.0;
    Some((median, *sorted.last().unwrap() as f64 / 1000.0))
}

/// Per tracked batch per cycle.
fn per_batch_cycle(side: &Side, x: f64, cycles: f64) -> f64 {
    x / (side.tracked as f64 * cycles)
}

/// The figures of each side, a column each under its heading.
fn print_table(columns: &[(String, &Side)], cycles: f64, interval: f64) {
    let cpu_ms = move |x: f64, s: &Side| format!("{:.3}", per_batch_cycle(s, x, cycles) * 1000.0);
    let lag = |s: &Side| {
        let text = match median_max(&s.lags_ms) {
            Some((median, max)) => format!("{median:.1} / {max:.1}"),
            None => "-".to_owned(),
        };
        if s.unseen_changes > 0 {
            format!("{text} ({} unseen)", s.unseen_changes)
        } else {
            text
        }
    };
    let intake = |s: &Side| s.intake_rate.map_or("-".to_owned(), |r| format!("{r:.0}"));
    let in_time = move |s: &Side| {
        let limit = ((interval + 1.0) * 1000.0) as i64;
        let changes = s.lags_ms.len() + s.unseen_changes;
        let within = s.lags_ms.iter().filter(|&&lag| lag <= limit).count();
        format!("{within} of {changes}")
    };
    let server =
        |text: &dyn Fn(f64) -> String, s: &Side| s.server_cpu_secs.map_or("-".to_owned(), text);
    type Row<'a> = (&'a str, Box<dyn Fn(&Side) -> String + 'a>);
    let rows: Vec<Row> = vec![
        (
            "tracked batches",
            Box::new(|s: &Side| s.tracked.to_string()),
        ),
        (
            "CPU per tracked batch per cycle (ms)",
            Box::new(move |s: &Side| cpu_ms(s.total_cpu_secs(), s)),
        ),
        (
            "  of which the daemon(s) or poller",
            Box::new(move |s: &Side| cpu_ms(s.cpu_secs, s)),
        ),
        (
            "  of which the database server",
            Box::new(move |s: &Side| server(&|x| cpu_ms(x, s), s)),
        ),
        (
            "CPU over the window (s)",
            Box::new(|s: &Side| format!("{:.2}", s.total_cpu_secs())),
        ),
        (
            "  of which the daemon(s) or poller",
            Box::new(|s: &Side| format!("{:.2}", s.cpu_secs)),
        ),
        (
            "  of which the database server",
            Box::new(move |s: &Side| server(&|x| format!("{x:.2}"), s)),
        ),
        (
            "bytes written per tracked batch per cycle",
            Box::new(move |s: &Side| {
                format!(
                    "{:.1}",
                    per_batch_cycle(s, s.total_write_bytes() as f64, cycles)
                )
            }),
        ),
        (
            "  of which the database server",
            Box::new(move |s: &Side| {
                s.server_write_bytes.map_or("-".to_owned(), |b| {
                    format!("{:.1}", per_batch_cycle(s, b as f64, cycles))
                })
            }),
        ),
        (
            "API requests per tracked batch per cycle",
            Box::new(move |s: &Side| {
                format!("{:.3}", per_batch_cycle(s, s.requests as f64, cycles))
            }),
        ),
        (
            "peak RSS (MiB; daemons summed, not the server)",
            Box::new(|s: &Side| format!("{:.1}", s.peak_rss_kib as f64 / 1024.0)),
        ),
        (
            "lag, change to database row (s): median / max",
            Box::new(lag),
        ),
        ("changes recorded within interval + 1 s", Box::new(in_time)),
        ("intake (files/s)", Box::new(intake)),
    ];
    println!();
    print!("{:<48}", "");
    for (heading, _) in columns {
        print!(" {heading:>18}");
    }
    println!();
    for (name, value) in &rows {
        print!("{name:<48}");
        for (_, side) in columns {
            print!(" {:>18}", value(side));
        }
        println!();
    }
}

/// The ratios of side `a` to side `b`, under `title`.
fn print_ratios(title: &str, a: &Side, b: &Side, cycles: f64) {
    let ratio = |x: f64, y: f64| {
        if y > 0.0 {
            format!("{:.3}", x / y)
        } else {
            "-".to_owned()
        }
    };
    let cpu = |s: &Side, x: f64| per_batch_cycle(s, x, cycles);
    let reqs = |s: &Side| per_batch_cycle(s, s.requests as f64, cycles);
    println!();
    println!("ratios, {title}:");
    println!(
        "  CPU per tracked batch per cycle   {}",
        ratio(cpu(a, a.total_cpu_secs()), cpu(b, b.total_cpu_secs()))
    );
    if a.server_cpu_secs.is_some() || b.server_cpu_secs.is_some() {
        println!(
            "    daemons alone, no server        {}",
            ratio(cpu(a, a.cpu_secs), cpu(b, b.cpu_secs))
        );
    }
    println!(
        "  API requests per batch per cycle  {}",
        ratio(reqs(a), reqs(b))
    );
    println!(
        "  peak RSS                          {}",
        ratio(a.peak_rss_kib as f64, b.peak_rss_kib as f64)
    );
    let lag_ratio = match (median_max(&a.lags_ms), median_max(&b.lags_ms)) {
        (Some((m1, x1)), Some((m2, x2))) => format!("{} / {}", ratio(m1, m2), ratio(x1, x2)),
        _ => "-".to_owned(),
    };
    println!("  lag, median / max                 {lag_ratio}");
    println!(
        "  intake rate                       {}",
        match (a.intake_rate, b.intake_rate) {
            (Some(x), Some(y)) => ratio(x, y),
            _ => "-".to_owned(),
        }
    );
}

/// `--idle`: batchwatch with nothing to do, its CPU over the period as a share of one core.
/// The log line the daemon writes when its start-up checks against the service are done: one
/// per job (`job=ID`), or one for all (`jobs=K`).
const CHECKED: &str = "checked against the service";

/// How many jobs a log line says were checked against the service (0 for any other line).
fn jobs_checked(line: &str) -> usize {
    if !line.contains(CHECKED) {
        return 0;
    }
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("jobs=")?.parse().ok())
        .unwrap_or(1)
}

/// API requests by kind, from the simulator's counts.
#[derive(Debug, Default, Clone, Copy)]
struct ByKind {
    list_pages: u64,
    retrieves: u64,
    file_lists: u64,
    other: u64,
}

impl ByKind {
    fn of(counts: &Counts) -> ByKind {
        let mut kinds = ByKind::default();
        for (route, &n) in &counts.requests {
            let slot = match route.split_once(' ') {
                Some(("GET", path)) if path.ends_with("/batches") => &mut kinds.list_pages,
                Some(("GET", path)) if path.ends_with("/batches/{batch_id}") => {
                    &mut kinds.retrieves
                }
                Some(("GET", path)) if path.ends_with("/files") => &mut kinds.file_lists,
                _ => &mut kinds.other,
            };
            *slot += n;
        }
        kinds
    }

    fn since(self, before: ByKind) -> ByKind {
        ByKind {
            list_pages: self.list_pages - before.list_pages,
            retrieves: self.retrieves - before.retrieves,
            file_lists: self.file_lists - before.file_lists,
            other: self.other - before.other,
        }
    }

    fn total(self) -> u64 {
        self.list_pages + self.retrieves + self.file_lists + self.other
    }

    /// List pages and retrieves: what a poll sends (and the start-up check's batch list).
    fn batch_reads(self) -> u64 {
        self.list_pages + self.retrieves
    }
}

impl std::fmt::Display for ByKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} list pages, {} retrieves, {} file lists, {} other)",
            self.total(),
            self.list_pages,
            self.retrieves,
            self.file_lists,
            self.other
        )
    }
}

/// A moment of the restart: seconds from the spawn, and the daemon's CPU seconds then.
#[derive(Debug, Clone, Copy)]
struct Moment {
    secs: f64,
    cpu_secs: f64,
}

/// What one watched start showed.
#[derive(Debug, Default)]
struct Start {
    first_request: Option<f64>,
    first_batch_read: Option<f64>,
    ready: Option<f64>,
    first_change: Option<Moment>,
    last_change: Option<(Moment, ByKind)>,
    checked: Option<(Moment, ByKind)>,
    /// `sqlx::query` log lines until the checks were done, when they were logged.
    queries: Option<u64>,
    /// Rows added to `status_history` until the checks were done.
    recorded: Option<i64>,
}

/// With `--restart`: intake, a kill -9, changes while the daemon is down, and a watched start
/// (then a second one that counts the queries).
async fn restart(opts: &Opts, dir: &Path) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let sim = SimApi::start(opts, dir, "sim-batchwatch", &http)?;
    let mut daemon = Daemon::on_sqlite(dir, &sim.sim.base_url)?;
    daemon.configure(&unbounded_limits(opts))?;
    daemon.start().await?;
    intake(opts, dir, std::slice::from_ref(&daemon), &sim).await?;
    let limits = match opts.rps {
        Some(rps) => format!("[limits]\nrequests_per_second = {rps:?}\n"),
        None => String::new(),
    };
    daemon.configure(&limits)?;
    if !opts.stale {
        let db = daemon.db().await?;
        let started = Instant::now();
        loop {
            let seen = db.in_progress_batches().await?;
            if seen as usize >= opts.n {
                break;
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!(
                    "after 600 s the database has {seen} of {} batches in progress",
                    opts.n
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        note(format!(
            "the database has every batch in progress ({:.0} s after intake)",
            started.elapsed().as_secs_f64()
        ));
    }

    daemon.kill()?;
    let changed = change_while_down(opts, &sim).await?;
    note(format!(
        "killed batchwatch (SIGKILL) with {} unfinished jobs; moved {} batches to finalizing meanwhile; starting it again",
        opts.n,
        changed.len()
    ));
    let measured = watch_start(opts, &mut daemon, &sim, &changed, None).await?;

    daemon.kill()?;
    note("killed it again; a start with sqlx's statement log on, to count the queries");
    let counted = watch_start(opts, &mut daemon, &sim, &[], Some("info,sqlx::query=debug")).await?;
    daemon.stop()?;

    let secs = |m: Option<f64>| m.map_or_else(|| "never".to_owned(), |s| format!("{s:.2} s"));
    let at = |m: Option<Moment>| {
        m.map_or_else(
            || "never".to_owned(),
            |m| format!("{:.2} s (daemon CPU {:.2} s)", m.secs, m.cpu_secs),
        )
    };
    println!();
    println!(
        "restart: {} unfinished jobs (one active batch each), killed with SIGKILL {}; {}; {} batches moved to finalizing while it was down (the newest among them)",
        opts.n,
        match opts.stale {
            true => "as soon as every batch was active (--stale: most recorded validating)",
            false => "once the database had every batch in progress",
        },
        match opts.rps {
            Some(rps) => format!("started again with the built-in limits but {rps} requests/s"),
            None => "started again with the built-in limits and poll bounds".to_owned(),
        },
        changed.len()
    );
    let row = |label: &str, value: String| println!("  {label:<40} {value}");
    println!("from the spawn:");
    row("first API request:", secs(measured.first_request));
    row(
        "first list page or retrieve:",
        secs(measured.first_batch_read),
    );
    row("ready (log):", secs(measured.ready));
    row(
        "first change in the database (a poll):",
        at(measured.first_change),
    );
    row(
        "start-up checks done (log):",
        at(measured.checked.map(|c| c.0)),
    );
    if let Some((_, requests)) = measured.checked {
        row("  API requests until then:", requests.to_string());
    }
    if let Some(n) = measured.recorded {
        row("  status changes recorded until then:", n.to_string());
    }
    row(
        "every change in the database:",
        at(measured.last_change.map(|c| c.0)),
    );
    if let Some((_, requests)) = measured.last_change {
        row("  API requests until then:", requests.to_string());
    }
    match counted.queries {
        Some(n) => println!(
            "database queries from the spawn to the checks' end (a second start, statements logged): {n}"
        ),
        None => println!("database queries: not counted (the second start's checks did not end)"),
    }
    Ok(())
}

/// Moves on, while the daemon is down, the newest batch (on a sweep's first page) and
/// `--changes` others; returns the ids that moved.
async fn change_while_down(opts: &Opts, sim: &SimApi) -> anyhow::Result<Vec<String>> {
    let newest = sim
        .observations()
        .await?
        .batches
        .into_iter()
        .filter(|b| !b.foreign)
        .max_by_key(|b| b.created_ms)
        .context("the simulator has no batches")?;
    let mut steps = sim.step_these(json!({"ids": [newest.id]})).await?;
    steps.extend(sim.step(opts.changes()).await?);
    Ok(steps
        .into_iter()
        .filter(|s| s.moved)
        .map(|s| s.id)
        .collect())
}

/// Starts the daemon (its log filtered by `rust_log`) and watches it every 20 ms until its
/// start-up checks are done and every batch of `changed` is recorded finalizing, or ten minutes
/// passed.
async fn watch_start(
    opts: &Opts,
    daemon: &mut Daemon,
    sim: &SimApi,
    changed: &[String],
    rust_log: Option<&str>,
) -> anyhow::Result<Start> {
    let before = ByKind::of(&sim.counts().await?);
    let db = daemon.db().await?;
    let history_before = db.history_rows().await?;
    let started = Instant::now();
    let mut read = daemon.spawn(rust_log)?;
    let pid = daemon.pid()?;
    let moment = || -> anyhow::Result<Moment> {
        Ok(Moment {
            secs: started.elapsed().as_secs_f64(),
            cpu_secs: cpu_secs(pid)?,
        })
    };
    let mut start = Start::default();
    let (mut checked, mut queries, mut partial) = (0, 0, String::new());
    let mut next_db_read = started;
    let give_up = started + Duration::from_secs(600);
    loop {
        let now = Instant::now();
        // The log, from where it was read to its last whole line.
        let mut file = std::fs::File::open(&daemon.log)?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(read))?;
        let mut text = String::new();
        read += std::io::Read::read_to_string(&mut file, &mut text)? as u64;
        partial.push_str(&text);
        let whole = partial.rfind('\n').map_or(0, |i| i + 1);
        for line in partial[..whole].lines() {
            if start.ready.is_none() && line.trim_end().ends_with("ready") {
                start.ready = Some(started.elapsed().as_secs_f64());
            }
            if start.checked.is_none() && line.contains("sqlx::query") {
                queries += 1;
            }
            checked += jobs_checked(line);
        }
        partial.drain(..whole);
        let requests = ByKind::of(&sim.counts().await?).since(before);
        if start.first_request.is_none() && requests.total() > 0 {
            start.first_request = Some(started.elapsed().as_secs_f64());
        }
        if start.first_batch_read.is_none() && requests.batch_reads() > 0 {
            start.first_batch_read = Some(started.elapsed().as_secs_f64());
        }
        if start.checked.is_none() && checked >= opts.n {
            start.checked = Some((moment()?, requests));
            start.recorded = Some(db.history_rows().await? - history_before);
            if rust_log.is_some() {
                start.queries = Some(queries);
            }
        }
        if start.last_change.is_none() && now >= next_db_read {
            let seen = db.first_finalizing().await?;
            let recorded = changed.iter().filter(|id| seen.contains_key(*id)).count();
            if start.first_change.is_none() && recorded > 0 {
                start.first_change = Some(moment()?);
            }
            if recorded == changed.len() {
                start.last_change = Some((moment()?, requests));
            }
            next_db_read = now + Duration::from_millis(100);
        }
        if start.checked.is_some() && start.last_change.is_some() {
            return Ok(start);
        }
        if let Some(status) = daemon
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            bail!(
                "batchwatch exited with {status} during its start; see {}",
                daemon.log.display()
            );
        }
        if now > give_up {
            note(format!(
                "after 600 s the start is not done (checked {checked} of {} jobs); see {}",
                opts.n,
                daemon.log.display()
            ));
            return Ok(start);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn idle(opts: &Opts, dir: &Path, secs: f64) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let sim = SimApi::start(opts, dir, "sim-idle", &http)?;
    let mut daemon = Daemon::on_sqlite(dir, &sim.sim.base_url)?;
    daemon.configure("")?;
    daemon.start().await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = daemon.pid()?;
    let before = (cpu_secs(pid)?, requests(&sim.counts().await?));
    note(format!(
        "batchwatch is idle; measuring its CPU for {secs} s"
    ));
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let after = (cpu_secs(pid)?, requests(&sim.counts().await?));
    daemon.stop()?;
    let cpu = after.0 - before.0;
    println!();
    println!(
        "idle (empty queue, nothing in flight, built-in defaults): {cpu:.2} CPU s over {secs} s = \
         {:.3} % of a core; {} API requests",
        cpu / secs * 100.0,
        after.1 - before.1
    );
    Ok(())
}

/// A simulator and the admin calls the bench makes.
struct SimApi {
    sim: Simulator,
    http: reqwest::Client,
}

impl SimApi {
    fn start(
        opts: &Opts,
        dir: &Path,
        name: &str,
        http: &reqwest::Client,
    ) -> anyhow::Result<SimApi> {
        let mut command = Simulator::command(BIN);
        command
            .args(["--seed", "1", "--validating-secs", "1"])
            .args([
                "--in-progress-secs",
                "10000000",
                "--finalizing-secs",
                "10000000",
            ])
            .arg("--data-dir")
            .arg(dir.join(name));
        if opts.foreign > 0 {
            let per_create = opts.foreign.div_ceil(opts.n as u64).max(1);
            command
                .args(["--foreign-batches", &opts.foreign.to_string()])
                .args(["--foreign-per-create", &per_create.to_string()]);
        }
        if let Some(order) = &opts.list_order {
            command.args(["--list-order", order]);
        }
        Ok(SimApi {
            sim: Simulator::start(&mut command)?,
            http: http.clone(),
        })
    }

    /// An admin call: a POST with `body`, or a GET without.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.sim.admin_url());
        let request = match &body {
            Some(body) => self.http.post(&url).json(body),
            None => self.http.get(&url),
        };
        Ok(request
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("{url} failed"))?
            .json()
            .await?)
    }

    async fn counts(&self) -> anyhow::Result<Counts> {
        self.call("/counts", None).await
    }

    async fn observations(&self) -> anyhow::Result<Observations> {
        self.call("/observations", None).await
    }

    async fn reset_observations(&self) -> anyhow::Result<()> {
        self.call::<Value>("/observations/reset", Some(json!({})))
            .await
            .map(drop)
    }

    async fn step(&self, count: usize) -> anyhow::Result<Vec<Stepped>> {
        self.step_these(json!({"count": count})).await
    }

    /// Moves on the batches `which` names (`{"ids": [...]}` or `{"count": K}`).
    async fn step_these(&self, which: Value) -> anyhow::Result<Vec<Stepped>> {
        let answer: Value = self.call("/batches/step", Some(which)).await?;
        Ok(serde_json::from_value(answer["stepped"].clone())?)
    }
}

/// Where a daemon keeps its state.
enum Database {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by URL.
    Postgres(String),
}

/// `batchwatch run` with its configuration and log in a directory of its own.
struct Daemon {
    dir: PathBuf,
    queue: PathBuf,
    database: Database,
    base_url: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// A daemon on `queue` and `database`, its configuration and log in `dir`.
    fn new(
        dir: PathBuf,
        queue: PathBuf,
        database: Database,
        base_url: &str,
    ) -> anyhow::Result<Daemon> {
        std::fs::create_dir_all(&dir)?;
        Ok(Daemon {
            queue,
            database,
            log: dir.join("daemon.log"),
            dir,
            base_url: base_url.to_owned(),
            child: None,
        })
    }

    /// The daemon on SQLite: `batchwatch/` in the bench's directory, queue and database inside.
    fn on_sqlite(dir: &Path, base_url: &str) -> anyhow::Result<Daemon> {
        let dir = dir.join("batchwatch");
        Daemon::new(
            dir.clone(),
            dir.join("queue"),
            Database::Sqlite(dir.join("state.db")),
            base_url,
        )
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("batchwatch.toml")
    }

    /// Writes the configuration: paths, the database and the simulator's URL, no monitoring
    /// endpoint (daemons side by side would want the same port), then `extra` TOML.
    fn configure(&self, extra: &str) -> anyhow::Result<()> {
        let database = match &self.database {
            Database::Sqlite(path) => format!("path = {:?}", path.display().to_string()),
            Database::Postgres(url) => format!("url = {url:?}"),
        };
        let text = format!(
            "[queue]\ndir = {:?}\n\n[database]\n{database}\n\n[api]\nbase_url = {:?}\n\n\
             [metrics]\nlisten = \"\"\n\n{extra}",
            self.queue.display().to_string(),
            self.base_url,
        );
        std::fs::write(self.config_path(), text)?;
        Ok(())
    }

    /// Starts the daemon and waits for its `ready` log line (recovery and first scan done).
    async fn start(&mut self) -> anyhow::Result<()> {
        self.spawn(None)?;
        self.wait_ready().await
    }

    /// Starts the daemon, its log filtered by `rust_log` (`None`: its own default), appending
    /// to its log file; returns where in the file its lines begin.
    fn spawn(&mut self, rust_log: Option<&str>) -> anyhow::Result<u64> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let offset = log.metadata()?.len();
        let mut command = Command::new(BIN);
        command
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .env("OPENAI_API_KEY", KEY)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        self.child = Some(command.spawn().context("starting `batchwatch run`")?);
        Ok(offset)
    }

    /// Waits for the `ready` log line of the daemon just spawned.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut read = 0;
        loop {
            let text = std::fs::read_to_string(&self.log)?;
            if text[read..]
                .lines()
                .any(|l| l.trim_end().ends_with("ready"))
            {
                return Ok(());
            }
            read = text.len() - text.lines().last().map_or(0, str::len);
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "batchwatch exited with {status} before it was ready; see {}",
                    self.log.display()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "batchwatch was not ready within 60 s; see {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .context("batchwatch is not running")
    }

    /// A pool on its database for the bench's reads (read-only on SQLite).
    async fn db(&self) -> anyhow::Result<Reader> {
        Ok(match &self.database {
            Database::Sqlite(path) => Reader::Sqlite(read_only(path).await?),
            Database::Postgres(url) => Reader::Postgres(
                PgPoolOptions::new()
                    .max_connections(1)
                    .connect(url)
                    .await
                    .with_context(|| format!("connecting to {url}"))?,
            ),
        })
    }

    /// SIGKILL, as a crash: what it had not committed is lost.
    fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for it to exit (killing it after 30 s).
    fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                anyhow::ensure!(
                    status.success(),
                    "batchwatch exited with {status}; see {}",
                    self.log.display()
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill()?;
        child.wait()?;
        bail!(
            "batchwatch did not stop within 30 s of SIGTERM; see {}",
            self.log.display()
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `benches/sdk_poller.py` on its own simulator.
struct Poller {
    sim: SimApi,
    child: Child,
    stdin: Option<ChildStdin>,
    db: PathBuf,
    created: usize,
    create_secs: f64,
}

impl Poller {
    /// Starts the poller, which creates its batches; the reason it gives when the SDK is not
    /// there.
    async fn start(opts: &Opts, dir: &Path, sim: SimApi) -> anyhow::Result<Result<Poller, String>> {
        let db = dir.join("sdk-poller.db");
        let mut child = Command::new("python3")
            .arg(POLLER)
            .arg(&sim.sim.base_url)
            .arg(&db)
            .arg(opts.n.to_string())
            .arg(opts.interval.to_string())
            .arg(opts.concurrency.to_string())
            .env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_API_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting python3 benches/sdk_poller.py")?;
        let stdout = child.stdout.take().context("the poller's stdout")?;
        let stdin = child.stdin.take();
        note(format!("the SDK poller creates its {} batches", opts.n));
        let first = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await??;
        let said: Value = serde_json::from_str(first.trim()).unwrap_or(Value::Null);
        if let Some(reason) = said["skip"].as_str() {
            let _ = child.wait();
            return Ok(Err(reason.to_owned()));
        }
        let (Some(created), Some(secs)) = (said["created"].as_u64(), said["seconds"].as_f64())
        else {
            let _ = child.kill();
            let status = child.wait()?;
            bail!("the SDK poller failed ({status}) instead of creating its batches: {first:?}");
        };
        note(format!(
            "the SDK poller created {created} batches in {secs:.1} s"
        ));
        Ok(Ok(Poller {
            sim,
            child,
            stdin,
            db,
            created: created as usize,
            create_secs: secs,
        }))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells it to start polling.
    fn go(&self) -> anyhow::Result<()> {
        let mut stdin = self.stdin.as_ref().context("the poller's stdin")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
