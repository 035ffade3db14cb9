//! batchwatch and a poller on the official Python SDK, side by side, tracking the same fleet.
//!
//! ```text
//! cargo bench --bench fleet                          # 1,000 batches, 10 s interval, 30 s window
//! cargo bench --bench fleet -- --n 10000             # 10,000 batches, 100 s interval, 300 s window
//! cargo bench --bench fleet -- --n 10000 --rps 5     # batchwatch alone, default limits
//! cargo bench --bench fleet -- --idle 600            # batchwatch with nothing to do
//! ```
//!
//! Two simulators (`batchwatch sim`, separate processes, time scale 1), each holding its
//! batches in progress (validating 1 s, then in progress and finalizing for 10^7 s). On one,
//! batchwatch (the `batchwatch run` cargo built for this bench) with a configuration the bench
//! writes: `poll.min_interval = poll.max_interval = --interval`, `limits.requests_per_second`
//! unbounded (10^6) and `limits.concurrency = --concurrency`. It gets its N batches through
//! intake: N files of 10 requests are moved into `incoming/` at once; its intake rate is N over
//! the time from the first claim (`jobs.created_at`) to the last batch created in the
//! simulator. On the other, `benches/sdk_poller.py`: asyncio, `AsyncOpenAI`, creating its N
//! batches itself (upload and create, `--concurrency` at a time; that is its intake rate),
//! then retrieving every active batch once per interval and writing a SQLite row per change.
//! Without the `openai` package it is skipped, with the reason, and batchwatch runs alone.
//!
//! Once both track their fleet and a first interval has passed, the window opens. Over it,
//! for each: CPU seconds (`utime + stime` of `/proc/PID/stat`) and API requests (the
//! simulator's count, every route) per tracked batch per cycle (window / interval), and peak
//! RSS (`VmHWM`). During the window both simulators move `--changes` batches each from
//! `in_progress` to `finalizing`, spread over the window's first part, so that every change
//! can be seen before it closes; the lag of each is the time from the change (simulator
//! time, to the millisecond, which runs with the real clock) to its row in the database
//! (`status_history.observed_at`, or the poller's row), reported as median and max, with any
//! change not recorded an interval after the window named as such.
//!
//! `--rps R`: batchwatch alone; after intake (unbounded) it is restarted with the built-in
//! limits and poll bounds but `limits.requests_per_second = R`, given two `poll.max_interval`
//! to settle (its check of every job against the service at start shares the rate), then watched over the window (default 3 × max_interval): the simulator records
//! when each batch was sent to a client, and the bench reports how many active batches went
//! unseen for longer than `poll.max_interval`.
//!
//! `--idle SECONDS`: batchwatch with an empty queue and nothing in flight; its CPU over the
//! period, as a share of one core.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use batchwatch::sim::{Counts, Observations, Stepped};
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

#[path = "support/procs.rs"]
mod procs;

use procs::{Simulator, cpu_secs, status_kib};

const BIN: &str = env!("CARGO_BIN_EXE_batchwatch");
const POLLER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/sdk_poller.py");
/// Any non-empty key works with the simulator.
const KEY: &str = "sk-bench-fleet";
/// Requests per file dropped into batchwatch's queue (and per batch the poller creates).
const REQUESTS_PER_FILE: usize = 10;

const USAGE: &str = "cargo bench --bench fleet -- [--n N] [--interval SECS] [--window SECS] \
                     [--concurrency C] [--changes K] [--foreign N] [--list-order ORDER] \
                     [--rps R] [--idle SECS] [--keep]";

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
    idle: Option<f64>,
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
            idle: None,
            keep: false,
        };
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
                "--idle" => opts.idle = Some(number(&arg, args.next())?),
                "--keep" => opts.keep = true,
                "--bench" => {}
                other => bail!("unknown argument {other:?}; usage: {USAGE}"),
            }
        }
        anyhow::ensure!(opts.n > 0, "--n must be at least 1");
        anyhow::ensure!(opts.concurrency > 0, "--concurrency must be at least 1");
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
    cpu_secs: f64,
    requests: u64,
    peak_rss_kib: u64,
    lags_ms: Vec<i64>,
    unseen_changes: usize,
}

async fn fleet(opts: &Opts, dir: &Path) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
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

    let mut daemon = Daemon::new(dir, &ours.sim.base_url)?;
    daemon.configure(&unbounded_limits(opts))?;
    daemon.start().await?;
    let intake_rate = intake(opts, dir, &daemon, &ours).await?;

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
                "both are tracking; settling for one interval ({interval} s)"
            ));
            tokio::time::sleep(Duration::from_secs_f64(interval + 2.0)).await;
            (interval, window)
        }
    };

    // The window.
    let daemon_pid = daemon.pid()?;
    let ours_before = ours.counts().await?;
    ours.reset_observations().await?;
    let theirs_before = match &theirs {
        Some(p) => Some((p.sim.counts().await?, cpu_secs(p.pid())?)),
        None => None,
    };
    let cpu_before = cpu_secs(daemon_pid)?;
    let opened = Instant::now();
    note(format!(
        "window open for {window} s ({:.1} cycles of {interval} s); moving {} batches on in each simulator meanwhile",
        window / interval,
        opts.changes()
    ));
    let (ours_steps, theirs_steps) = change_during(
        opts,
        interval,
        window,
        &ours,
        theirs.as_ref().map(|p| &p.sim),
        opened,
    )
    .await?;
    tokio::time::sleep_until((opened + Duration::from_secs_f64(window)).into()).await;
    let cpu_after = cpu_secs(daemon_pid)?;
    let ours_after = ours.counts().await?;
    let theirs_after = match &theirs {
        Some(p) => Some((p.sim.counts().await?, cpu_secs(p.pid())?)),
        None => None,
    };
    let observations = ours.observations().await?;
    note(format!(
        "window closed; giving the last changes one more interval ({interval} s) to be recorded"
    ));
    tokio::time::sleep(Duration::from_secs_f64(interval + 2.0)).await;

    let mut batchwatch = Side {
        intake_rate: Some(intake_rate),
        tracked: opts.n,
        cpu_secs: cpu_after - cpu_before,
        requests: requests(&ours_after) - requests(&ours_before),
        peak_rss_kib: status_kib(Some(daemon_pid), "VmHWM")?,
        ..Side::default()
    };
    (batchwatch.lags_ms, batchwatch.unseen_changes) =
        lags(&daemon.db_path(), DAEMON_SEEN, &ours_steps).await?;
    let sdk = match (&theirs, theirs_before, theirs_after) {
        (Some(poller), Some((counts_before, cpu0)), Some((counts_after, cpu1))) => {
            let mut side = Side {
                intake_rate: Some(poller.created as f64 / poller.create_secs),
                tracked: opts.n,
                cpu_secs: cpu1 - cpu0,
                requests: requests(&counts_after) - requests(&counts_before),
                peak_rss_kib: status_kib(Some(poller.pid()), "VmHWM")?,
                ..Side::default()
            };
            (side.lags_ms, side.unseen_changes) =
                lags(&poller.db, POLLER_SEEN, &theirs_steps).await?;
            Some(side)
        }
        _ => None,
    };
    daemon.stop()?;

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
    print_table(&batchwatch, sdk.as_ref(), cycles, interval);
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
/// leaves every change an interval (plus 2 s) to be seen before the window closes.
async fn change_during(
    opts: &Opts,
    interval: f64,
    window: f64,
    ours: &SimApi,
    theirs: Option<&SimApi>,
    opened: Instant,
) -> anyhow::Result<(Vec<Stepped>, Vec<Stepped>)> {
    let total = opts.changes();
    let span = (window - interval - 2.0).max(window / 2.0);
    let rounds = total.min((span / 0.5) as usize).max(1);
    let (mut ours_steps, mut theirs_steps) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let at = opened + Duration::from_secs_f64(span * round as f64 / rounds as f64);
        tokio::time::sleep_until(at.into()).await;
        let count = total * (round + 1) / rounds - total * round / rounds;
        ours_steps.extend(ours.step(count).await?);
        if let Some(sim) = theirs {
            theirs_steps.extend(sim.step(count).await?);
        }
    }
    Ok((ours_steps, theirs_steps))
}

/// Drops the N files into the queue and waits until batchwatch tracks every batch; returns
/// the intake rate, files per second from the first claim to the last batch created.
async fn intake(opts: &Opts, dir: &Path, daemon: &Daemon, sim: &SimApi) -> anyhow::Result<f64> {
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
    let incoming = daemon.queue.join("incoming");
    for k in 0..opts.n {
        let name = format!("f{k:06}.jsonl");
        std::fs::rename(staging.join(&name), incoming.join(&name))?;
    }
    note(format!("dropped {} files into incoming/", opts.n));

    let db = daemon.db().await?;
    let started = Instant::now();
    let limit = Duration::from_secs(120 + opts.n as u64 / 5);
    let mut reported = Instant::now();
    loop {
        let active: i64 = sqlx::query_scalar("SELECT count(*) FROM batches WHERE state = 'active'")
            .fetch_one(&db)
            .await?;
        if active as usize >= opts.n {
            break;
        }
        if started.elapsed() > limit {
            bail!(
                "after {limit:?} batchwatch tracks {active} of {} batches; see {}",
                opts.n,
                daemon.log.display()
            );
        }
        if reported.elapsed() > Duration::from_secs(15) {
            note(format!("batchwatch tracks {active} of {} batches", opts.n));
            reported = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let first_claim: String = sqlx::query_scalar("SELECT min(created_at) FROM jobs")
        .fetch_one(&db)
        .await?;
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
        "batchwatch took in {} files in {secs:.1} s (first claim to last batch created)",
        opts.n
    ));
    Ok(opts.n as f64 / secs)
}

/// The first `finalizing` row of a batch in batchwatch's history, unix ms.
const DAEMON_SEEN: &str = "SELECT CAST(round(unixepoch(min(h.observed_at), 'subsec') * 1000) AS INTEGER) \
     FROM status_history h JOIN batches b ON b.id = h.batch_id \
     WHERE b.remote_id = ? AND h.status = 'finalizing'";

/// The same in the SDK poller's rows.
const POLLER_SEEN: &str =
    "SELECT min(observed_ms) FROM changes WHERE batch_id = ? AND status = 'finalizing'";

/// The lag of each stepped batch's first `finalizing` row (found by `seen`, in the database at
/// `db`) after its change, in ms; and how many have no such row.
async fn lags(
    db: &Path,
    seen: &'static str,
    steps: &[Stepped],
) -> anyhow::Result<(Vec<i64>, usize)> {
    let pool = read_only(db).await?;
    let mut lags = Vec::new();
    let mut unseen = 0;
    for step in steps.iter().filter(|s| s.moved) {
        let at: Option<i64> = sqlx::query_scalar(seen)
            .bind(&step.id)
            .fetch_one(&pool)
            .await?;
        match at {
            Some(at) => lags.push(at - step.at_ms),
            None => unseen += 1,
        }
    }
    Ok((lags, unseen))
}

async fn read_only(path: &Path) -> anyhow::Result<SqlitePool> {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(path).read_only(true))
        .await
        .with_context(|| format!("opening {}", path.display()))
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

fn print_table(ours: &Side, theirs: Option<&Side>, cycles: f64, interval: f64) {
    let per_cycle = |side: &Side, x: f64| x / (side.tracked as f64 * cycles);
    let cpu_ms = |s: &Side| per_cycle(s, s.cpu_secs) * 1000.0;
    let reqs = |s: &Side| per_cycle(s, s.requests as f64);
    let rss = |s: &Side| s.peak_rss_kib as f64 / 1024.0;
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
    type Row<'a> = (&'a str, Box<dyn Fn(&Side) -> String + 'a>);
    let rows: Vec<Row> = vec![
        (
            "tracked batches",
            Box::new(|s: &Side| s.tracked.to_string()),
        ),
        (
            "CPU per tracked batch per cycle (ms)",
            Box::new(move |s: &Side| format!("{:.3}", cpu_ms(s))),
        ),
        (
            "  CPU over the window (s)",
            Box::new(|s: &Side| format!("{:.2}", s.cpu_secs)),
        ),
        (
            "API requests per tracked batch per cycle",
            Box::new(move |s: &Side| format!("{:.3}", reqs(s))),
        ),
        (
            "peak RSS (MiB)",
            Box::new(move |s: &Side| format!("{:.1}", rss(s))),
        ),
        (
            "lag, change to database row (s): median / max",
            Box::new(lag),
        ),
        ("changes recorded within interval + 1 s", Box::new(in_time)),
        ("intake (files/s)", Box::new(intake)),
    ];
    println!();
    println!(
        "{:<48} {:>16} {:>16}",
        "",
        "batchwatch",
        if theirs.is_some() { "SDK poller" } else { "" }
    );
    for (name, value) in &rows {
        println!(
            "{name:<48} {:>16} {:>16}",
            value(ours),
            theirs.map(value).unwrap_or_default()
        );
    }
    let Some(theirs) = theirs else {
        return;
    };
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.3}", a / b)
        } else {
            "-".to_owned()
        }
    };
    println!();
    println!("ratios, batchwatch / SDK poller:");
    println!(
        "  CPU per tracked batch per cycle   {}",
        ratio(cpu_ms(ours), cpu_ms(theirs))
    );
    println!(
        "  API requests per batch per cycle  {}",
        ratio(reqs(ours), reqs(theirs))
    );
    println!(
        "  peak RSS                          {}",
        ratio(rss(ours), rss(theirs))
    );
    let lag_ratio = match (median_max(&ours.lags_ms), median_max(&theirs.lags_ms)) {
        (Some((m1, x1)), Some((m2, x2))) => format!("{} / {}", ratio(m1, m2), ratio(x1, x2)),
        _ => "-".to_owned(),
    };
    println!("  lag, median / max                 {lag_ratio}");
    println!(
        "  intake rate                       {}",
        match (ours.intake_rate, theirs.intake_rate) {
            (Some(a), Some(b)) => ratio(a, b),
            _ => "-".to_owned(),
        }
    );
}

/// `--idle`: batchwatch with nothing to do, its CPU over the period as a share of one core.
async fn idle(opts: &Opts, dir: &Path, secs: f64) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let sim = SimApi::start(opts, dir, "sim-idle", &http)?;
    let mut daemon = Daemon::new(dir, &sim.sim.base_url)?;
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
        let answer: Value = self
            .call("/batches/step", Some(json!({"count": count})))
            .await?;
        Ok(serde_json::from_value(answer["stepped"].clone())?)
    }
}

/// `batchwatch run` in its own directory.
struct Daemon {
    dir: PathBuf,
    queue: PathBuf,
    base_url: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn new(dir: &Path, base_url: &str) -> anyhow::Result<Daemon> {
        let dir = dir.join("batchwatch");
        std::fs::create_dir_all(&dir)?;
        Ok(Daemon {
            queue: dir.join("queue"),
            log: dir.join("daemon.log"),
            dir,
            base_url: base_url.to_owned(),
            child: None,
        })
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("batchwatch.toml")
    }

    fn db_path(&self) -> PathBuf {
        self.dir.join("state.db")
    }

    /// Writes the configuration: paths and the simulator's URL, then `extra` TOML.
    fn configure(&self, extra: &str) -> anyhow::Result<()> {
        let text = format!(
            "[queue]\ndir = {:?}\n\n[database]\npath = {:?}\n\n[api]\nbase_url = {:?}\n\n{extra}",
            self.queue.display().to_string(),
            self.db_path().display().to_string(),
            self.base_url,
        );
        std::fs::write(self.config_path(), text)?;
        Ok(())
    }

    /// Starts the daemon and waits for its `ready` log line (recovery and first scan done).
    async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .env("OPENAI_API_KEY", KEY)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting `batchwatch run`")?;
        self.child = Some(child);
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

    /// A read-only pool on its database.
    async fn db(&self) -> anyhow::Result<SqlitePool> {
        read_only(&self.db_path()).await
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
