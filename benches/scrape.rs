//! Whether scraping `/metrics` slows polling: 1,000 batches tracked, scraped 100 times a second.
//!
//! ```text
//! cargo bench --bench scrape                               # 1,000 batches, 20 s per phase
//! cargo bench --bench scrape -- --batches 300 --seconds 10 --interval 5
//! ```
//!
//! The bench starts the simulator in this process (batches stay `in_progress` for an hour) and
//! `batchwatch run` as a separate process (cargo passes its path as `CARGO_BIN_EXE_batchwatch`)
//! with its endpoint on a free port, every batch polled every 10 s (`--interval`). It drops one single-request
//! file per batch and waits until every batch is active. Then it measures two phases of the
//! same length, twice over: without scrapes, and with `GET /metrics` 100 times a second. Every 200 ms it
//! asks the simulator when each batch was last sent to the daemon (in a retrieve or a list
//! page): how many were last sent more than an interval ago, and by how much (the polling lag;
//! the daemon's poll schedule is in its memory, so the database cannot say). It prints, per phase, the polls per second the simulator received, the
//! mean and 95th percentile of the lag, the daemon's CPU use (from /proc), and for the scraped
//! phase the scrapes done and their latency.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use batchwatch::sim::{self, SimConfig};
use batchwatch_store_sqlite::{Access, Store};

const KEY: &str = "sk-bench-scrape";

struct Args {
    batches: usize,
    seconds: u64,
    interval: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut out = Args {
        batches: 1_000,
        seconds: 20,
        interval: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--batches" => out.batches = it.next().context("--batches N")?.parse()?,
            "--seconds" => out.seconds = it.next().context("--seconds S")?.parse()?,
            "--interval" => out.interval = it.next().context("--interval S")?.parse()?,
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            other => bail!("unknown argument {other:?}; use --batches N --seconds S --interval S"),
        }
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    batchwatch::process::runtime()?.block_on(run(args))
}

/// The daemon process; killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child with a valid signal.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How many batches the database has active.
async fn active(store: &Store) -> anyhow::Result<i64> {
    let (active,): (i64,) = sqlx::query_as("SELECT count(*) FROM batches WHERE state = 'active'")
        .fetch_one(store.reader())
        .await?;
    Ok(active)
}

/// One look at the simulator: (batches overdue, their mean and max lag in seconds): a batch
/// is overdue by how much longer than `interval` ago it was last sent to the daemon.
async fn lag(sim: &sim::SimHandle, interval: Duration) -> (i64, f64, f64) {
    let seen = sim.observations().await;
    let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
    let lags: Vec<f64> = seen
        .batches
        .iter()
        .filter(|b| !b.foreign && !b.vanished)
        .map(|b| seen.now_ms - b.last_ms - interval_ms)
        .filter(|&late| late > 0)
        .map(|late| late as f64 / 1000.0)
        .collect();
    let mean = lags.iter().sum::<f64>() / lags.len().max(1) as f64;
    let max = lags.iter().copied().fold(0.0, f64::max);
    (lags.len() as i64, mean, max)
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

async fn polls(sim: &sim::SimHandle) -> u64 {
    sim.stats()
        .await
        .requests
        .get("GET /v1/batches/{batch_id}")
        .copied()
        .unwrap_or(0)
}

/// CPU seconds (user and system) process `pid` has used so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command name in parentheses: fields 14 and 15 of stat(5) are utime and stime.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("a stat line")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no memory effects.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / per_second)
}

struct Phase {
    /// The daemon's CPU use, in percent of one core.
    daemon_cpu: f64,
    polls_per_second: f64,
    mean_lag: f64,
    p95_lag: f64,
    overdue: f64,
    scrapes: usize,
    scrape_p50_ms: f64,
    scrape_p99_ms: f64,
}

async fn measure(
    daemon: u32,
    sim: &sim::SimHandle,
    interval: Duration,
    seconds: u64,
    scrape: Option<String>,
) -> anyhow::Result<Phase> {
    let stop = Instant::now() + Duration::from_secs(seconds);
    let scraper = scrape.map(|url| {
        tokio::spawn(async move {
            // reqwest is built without a TLS provider of its own.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let http = reqwest::Client::new();
            let mut every = tokio::time::interval(Duration::from_millis(10));
            let mut took = Vec::new();
            while Instant::now() < stop {
                every.tick().await;
                let started = Instant::now();
                let ok = match http.get(&url).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    took.push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
            took
        })
    });
    let polls_before = polls(sim).await;
    let cpu_before = cpu_seconds(daemon)?;
    let started = Instant::now();
    let (mut means, mut maxes, mut overdue) = (Vec::new(), Vec::new(), Vec::new());
    while Instant::now() < stop {
        let (late, mean, max) = lag(sim, interval).await;
        means.push(mean);
        maxes.push(max);
        overdue.push(late as f64);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let polled = polls(sim).await - polls_before;
    let cpu = cpu_seconds(daemon)? - cpu_before;
    let mut took = match scraper {
        Some(task) => task.await?,
        None => Vec::new(),
    };
    Ok(Phase {
        daemon_cpu: cpu / started.elapsed().as_secs_f64() * 100.0,
        polls_per_second: polled as f64 / started.elapsed().as_secs_f64(),
        mean_lag: means.iter().sum::<f64>() / means.len().max(1) as f64,
        p95_lag: percentile(&mut maxes, 0.95),
        overdue: overdue.iter().sum::<f64>() / overdue.len().max(1) as f64,
        scrapes: took.len(),
        scrape_p50_ms: percentile(&mut took.clone(), 0.5),
        scrape_p99_ms: percentile(&mut took, 0.99),
    })
}

fn write_config(
    dir: &Path,
    base_url: &str,
    port: u16,
    interval: u64,
) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("batchwatch.toml");
    std::fs::write(
        &path,
        format!(
            r#"[queue]
dir = "{dir}/queue"
scan_interval = "100ms"
settle_time = "50ms"

[database]
path = "{dir}/state.db"

[api]
base_url = "{base_url}"

[poll]
min_interval = "{interval}s"
max_interval = "{interval}s"

[limits]
requests_per_second = 2000.0
concurrency = 16

[metrics]
listen = "127.0.0.1:{port}"
"#,
            dir = dir.display()
        ),
    )?;
    Ok(path)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sim = sim::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            time_scale: 1.0,
            seed: Some(7),
            validating_secs: 0.5,
            in_progress_secs: 3_600.0,
            ..SimConfig::default()
        },
    )
    .await?;
    let port = free_port()?;
    let config = write_config(dir.path(), &sim.base_url(), port, args.interval)?;
    let daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_batchwatch"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("OPENAI_API_KEY", KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting batchwatch run")?,
    );

    let incoming = dir.path().join("queue/incoming");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !incoming.is_dir() {
        if Instant::now() > deadline {
            bail!("the daemon never made {}", incoming.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    for i in 0..args.batches {
        let line = format!(
            "{{\"custom_id\":\"r\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"q{i}\"}}]}}}}\n"
        );
        let part = incoming.join(format!(".f{i}.part"));
        std::fs::write(&part, line)?;
        std::fs::rename(&part, incoming.join(format!("f{i}.jsonl")))?;
    }
    let store = loop {
        if let Ok(store) = Store::open(
            &dir.path().join("state.db"),
            Duration::from_secs(5),
            Access::ReadOnly,
        )
        .await
        {
            break store;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let active = active(&store).await?;
        if active as usize >= args.batches {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {active} of {} batches became active", args.batches);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{} batches active after {:.1}s; each polled every {}s; {}s per phase",
        args.batches,
        started.elapsed().as_secs_f64(),
        args.interval,
        args.seconds
    );
    // Let the first polls spread out before measuring.
    tokio::time::sleep(Duration::from_secs(args.interval + 1)).await;

    // Alternated, twice, so the machine's own noise shows beside the difference.
    let url = format!("http://127.0.0.1:{port}/metrics");
    let pid = daemon.0.id();
    for round in 1..=2 {
        let interval = Duration::from_secs(args.interval);
        let quiet = measure(pid, &sim, interval, args.seconds, None).await?;
        let scraped = measure(pid, &sim, interval, args.seconds, Some(url.clone())).await?;
        for (name, p) in [("no scrapes", &quiet), ("100 scrapes/s", &scraped)] {
            println!(
                "round {round} {name:>13}: {:.1} polls/s; polling lag mean {:.3}s, p95 of the worst {:.3}s; {:.1} batches overdue on average; daemon CPU {:.1}% of a core",
                p.polls_per_second, p.mean_lag, p.p95_lag, p.overdue, p.daemon_cpu
            );
        }
        println!(
            "round {round} {:>13}: {} ({:.1}/s), latency p50 {:.1} ms, p99 {:.1} ms",
            "scrapes",
            scraped.scrapes,
            scraped.scrapes as f64 / args.seconds as f64,
            scraped.scrape_p50_ms,
            scraped.scrape_p99_ms
        );
    }
    store.close().await;
    Ok(())
}
