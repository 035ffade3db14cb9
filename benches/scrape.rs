//! Whether scraping `/metrics`, or looking at the status pages, slows polling: 1,000 batches
//! tracked, scraped 100 times a second; or 10,000 tracked among 100,000 jobs, the jobs page
//! loaded every 2 s.
//!
//! ```text
//! cargo bench --bench scrape                               # 1,000 batches, 20 s per phase
//! cargo bench --bench scrape -- --batches 300 --seconds 10 --interval 5
//! cargo bench --bench scrape -- --load pages --batches 10000 --finished 90000 --interval 100 --seconds 120
//! cargo bench --bench scrape -- --load hanging-receiver
//! ```
//!
//! The bench starts the simulator in this process (batches stay `in_progress` for an hour) and
//! `batchwatch run` as a separate process (cargo passes its path as `CARGO_BIN_EXE_batchwatch`)
//! with its endpoint on a free port, every batch polled every 10 s (`--interval`). It drops one single-request
//! file per batch and waits until every batch is active. Then it measures two phases of the
//! same length, twice over: without scrapes, and with `GET /metrics` 100 times a second. Every 200 ms it
//! asks the simulator when each batch was last sent to the daemon (in a retrieve or a list
//! page): how many were last sent more than an interval ago, and by how much (the polling lag;
//! the daemon's poll schedule is in its memory, so the database cannot say). It prints, per phase, the polls per second the simulator received (retrieves and list pages), the
//! mean and 95th percentile of the lag, the daemon's CPU use (from /proc), and for the scraped
//! phase the scrapes done and their latency.
//!
//! `--load pages` loads the status pages instead, as a browser does every `--every-ms`
//! (default 2,000): `/` and what it links to (the stylesheet, the script, the icon; every answer
//! is `no-store`, so a browser fetches them again), and prints the server time of `/` (its
//! `Server-Timing`) beside the latency. `--finished N` first adds N finished jobs to the
//! database: the daemon completes one job on the simulator, and the bench copies it (row,
//! batch, history, usage, events) N times in one transaction, as older jobs. At the end it
//! times the pages themselves, 50 loads each: the jobs page unfiltered, by state, by a file
//! glob, by model, a page deep in the list, and a job's page.
//!
//! `--load hanging-receiver` gives the daemon a `[[notify]]` webhook (timeout 30 s) on a
//! receiver in this process, and completes one batch every `--every-ms` (default 500) through
//! every phase, so jobs end and notifications go out all along: in the quiet phases the
//! receiver answers at once (204), in the loaded ones it takes each request and never answers.
//! It prints, per phase, the notifications the receiver took and answered, and how many were
//! pending at the phase's end, beside the polling figures; a batch the database records as
//! ended (the daemon saw it end, and polls it no more) counts in no lag.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use batchwatch::sim::{self, SimConfig};
use batchwatch_store_sqlite::{Access, Store};

const KEY: &str = "sk-bench-scrape";

/// What loads the daemon's endpoint in the measured phases.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// `GET /metrics`.
    Metrics,
    /// `GET /` and its stylesheet, script and icon.
    Pages,
    /// Jobs ending all along, their webhook's receiver answering or hanging.
    HangingReceiver,
}

struct Args {
    batches: usize,
    seconds: u64,
    interval: u64,
    load: Load,
    every: Duration,
    finished: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut out = Args {
        batches: 1_000,
        seconds: 20,
        interval: 10,
        load: Load::Metrics,
        every: Duration::ZERO,
        finished: 0,
    };
    let mut it = std::env::args().skip(1);
    let mut every_ms = None;
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--batches" => out.batches = it.next().context("--batches N")?.parse()?,
            "--seconds" => out.seconds = it.next().context("--seconds S")?.parse()?,
            "--interval" => out.interval = it.next().context("--interval S")?.parse()?,
            "--load" => {
                out.load = match it.next().as_deref() {
                    Some("metrics") => Load::Metrics,
                    Some("pages") => Load::Pages,
                    Some("hanging-receiver") => Load::HangingReceiver,
                    _ => bail!("--load metrics, pages or hanging-receiver"),
                }
            }
            "--every-ms" => every_ms = Some(it.next().context("--every-ms MS")?.parse()?),
            "--finished" => out.finished = it.next().context("--finished N")?.parse()?,
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            other => bail!(
                "unknown argument {other:?}; use --batches N --seconds S --interval S --load metrics|pages|hanging-receiver --every-ms MS --finished N"
            ),
        }
    }
    out.every = Duration::from_millis(every_ms.unwrap_or(match out.load {
        Load::Metrics => 10,
        Load::Pages => 2_000,
        Load::HangingReceiver => 500,
    }));
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
async fn lag(
    sim: &sim::SimHandle,
    interval: Duration,
    ended: Option<&Store>,
) -> anyhow::Result<(i64, f64, f64)> {
    let seen = sim.observations().await;
    // Batches the daemon saw end are polled no more, rightly: left out.
    let ended: std::collections::HashSet<String> = match ended {
        Some(store) => sqlx::query_scalar(
            "SELECT remote_id FROM batches
             WHERE status IN ('completed', 'failed', 'expired', 'cancelled')",
        )
        .fetch_all(store.reader())
        .await?
        .into_iter()
        .collect(),
        None => Default::default(),
    };
    let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
    let lags: Vec<f64> = seen
        .batches
        .iter()
        .filter(|b| !b.foreign && !b.vanished && !ended.contains(&b.id))
        .map(|b| seen.now_ms - b.last_ms - interval_ms)
        .filter(|&late| late > 0)
        .map(|late| late as f64 / 1000.0)
        .collect();
    let mean = lags.iter().sum::<f64>() / lags.len().max(1) as f64;
    let max = lags.iter().copied().fold(0.0, f64::max);
    Ok((lags.len() as i64, mean, max))
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

/// The polls the simulator has answered: retrieves and list pages.
async fn polls(sim: &sim::SimHandle) -> u64 {
    let requests = sim.counts().await.requests;
    ["GET /v1/batches/{batch_id}", "GET /v1/batches"]
        .iter()
        .filter_map(|route| requests.get(*route))
        .sum()
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
    /// The server time of each page load (`Server-Timing`), for `--load pages`.
    server_ms: Vec<f64>,
}

/// What one load of the endpoint asks: `/metrics`, or a page and what a browser fetches with it.
fn paths(load: Load) -> &'static [&'static str] {
    match load {
        Load::Metrics => &["/metrics"],
        Load::Pages => &["/", "/style.css", "/script.js", "/icon.svg"],
        Load::HangingReceiver => &[],
    }
}

/// `GET base+path`: whether it answered 2xx in full, and the server time it gave, if any.
async fn load_one(http: &reqwest::Client, url: &str) -> (bool, Option<f64>) {
    match http.get(url).send().await {
        Ok(r) => {
            let server = r
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split("dur=").nth(1))
                .and_then(|d| d.parse().ok());
            (r.status().is_success() && r.bytes().await.is_ok(), server)
        }
        Err(_) => (false, None),
    }
}

async fn measure(
    daemon: u32,
    sim: &sim::SimHandle,
    ended: Option<&Store>,
    interval: Duration,
    seconds: u64,
    load: Option<(String, Load, Duration)>,
) -> anyhow::Result<Phase> {
    let stop = Instant::now() + Duration::from_secs(seconds);
    let loader = load.map(|(base, load, period)| {
        tokio::spawn(async move {
            // reqwest is built without a TLS provider of its own.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let http = reqwest::Client::new();
            let mut every = tokio::time::interval(period);
            let (mut took, mut server) = (Vec::new(), Vec::new());
            while Instant::now() < stop {
                every.tick().await;
                let started = Instant::now();
                let mut ok = true;
                for (i, path) in paths(load).iter().enumerate() {
                    let (fine, timing) = load_one(&http, &format!("{base}{path}")).await;
                    ok &= fine;
                    if i == 0
                        && let Some(ms) = timing
                    {
                        server.push(ms);
                    }
                }
                if ok {
                    took.push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
            (took, server)
        })
    });
    let polls_before = polls(sim).await;
    let cpu_before = cpu_seconds(daemon)?;
    let started = Instant::now();
    let (mut means, mut maxes, mut overdue) = (Vec::new(), Vec::new(), Vec::new());
    while Instant::now() < stop {
        let (late, mean, max) = lag(sim, interval, ended).await?;
        means.push(mean);
        maxes.push(max);
        overdue.push(late as f64);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let polled = polls(sim).await - polls_before;
    let cpu = cpu_seconds(daemon)? - cpu_before;
    let (mut took, server_ms) = match loader {
        Some(task) => task.await?,
        None => (Vec::new(), Vec::new()),
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
        server_ms,
    })
}

/// Waits until the job of file `name` is completed, after stepping its batch on.
async fn complete_one(store: &Store, sim: &sim::SimHandle, name: &str) -> anyhow::Result<String> {
    let (job, remote): (String, String) = sqlx::query_as(
        "SELECT j.id, b.remote_id FROM jobs j JOIN batches b ON b.job_id = j.id
         WHERE j.file_name = ?1 AND b.remote_id IS NOT NULL",
    )
    .bind(name)
    .fetch_one(store.reader())
    .await?;
    sim.step(sim::Step::Ids { ids: vec![remote] }).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (state,): (String,) = sqlx::query_as("SELECT state FROM jobs WHERE id = ?1")
            .bind(&job)
            .fetch_one(store.reader())
            .await?;
        if state == "completed" {
            return Ok(job);
        }
        if Instant::now() > deadline {
            bail!("the template job {job} is {state} after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The columns of `table`, as `INSERT ... SELECT` lists them: each column's own value but
/// those `set` gives an expression for.
async fn columns(
    conn: &mut sqlx::SqliteConnection,
    table: &str,
    set: &[(&str, &str)],
) -> anyhow::Result<(String, String)> {
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?1)")
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
    let values: Vec<String> = names
        .iter()
        .map(|name| match set.iter().find(|(n, _)| n == name) {
            Some((_, expr)) => expr.to_string(),
            None => format!("t.{name}"),
        })
        .collect();
    Ok((names.join(", "), values.join(", ")))
}

/// One table's rows to copy: the expressions of the columns set anew, and which rows are the
/// template's.
struct Copied<'a> {
    table: &'a str,
    set: Vec<(&'a str, &'a str)>,
    of_template: String,
}

/// Copies the finished job `template` (its row, its batch, the batch's history and usage, the
/// job's events) `n` times in one transaction, as jobs older than any other
/// (`job_00…` ids sort before the daemon's).
async fn seed_finished(db: &Path, template: &str, n: usize) -> anyhow::Result<()> {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(Duration::from_secs(60));
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
    // A write transaction from the start: one that read first could not write after the
    // daemon's next commit.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let (batch,): (i64,) = sqlx::query_as("SELECT id FROM batches WHERE job_id = ?1")
        .bind(template)
        .fetch_one(&mut *tx)
        .await?;
    let (base,): (i64,) = sqlx::query_as("SELECT max(id) FROM batches")
        .fetch_one(&mut *tx)
        .await?;
    let numbers =
        format!("WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < {n})");
    let job = "printf('job_00%024d', k.n)";
    let batch_id = format!("{base} + k.n");
    let copies = [
        Copied {
            table: "jobs",
            set: vec![
                ("id", job),
                ("file_name", "printf('seed-%06d.jsonl', k.n)"),
                ("path", "printf('done/seed-%06d.jsonl', k.n)"),
                ("results_dir", "printf('results/job_00%024d', k.n)"),
            ],
            of_template: format!("id = '{template}'"),
        },
        Copied {
            table: "batches",
            set: vec![
                ("id", batch_id.as_str()),
                ("job_id", job),
                ("remote_id", "printf('batch_seed%06d', k.n)"),
            ],
            of_template: format!("id = {batch}"),
        },
        Copied {
            table: "status_history",
            set: vec![("id", "NULL"), ("batch_id", batch_id.as_str())],
            of_template: format!("batch_id = {batch}"),
        },
        Copied {
            table: "batch_usage",
            set: vec![("batch_id", batch_id.as_str())],
            of_template: format!("batch_id = {batch}"),
        },
        Copied {
            table: "job_events",
            set: vec![("id", "NULL"), ("job_id", job)],
            of_template: format!("job_id = '{template}'"),
        },
    ];
    for Copied {
        table,
        set,
        of_template,
    } in copies
    {
        let (names, values) = columns(&mut tx, table, &set).await?;
        let sql = format!(
            "{numbers} INSERT INTO {table} ({names}) SELECT {values} FROM {table} t, k WHERE t.{of_template}"
        );
        // Every name and expression in it is this bench's own, or the schema's column names.
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("copying {table}"))?;
    }
    tx.commit().await?;
    conn.close().await?;
    Ok(())
}

/// Times `path` on the pages `times` times: the server time (`Server-Timing`) p50 and p99.
async fn time_page(base: &str, path: &str, times: usize) -> anyhow::Result<(f64, f64)> {
    let http = reqwest::Client::new();
    let mut server = Vec::with_capacity(times);
    for _ in 0..times {
        let (ok, timing) = load_one(&http, &format!("{base}{path}")).await;
        if !ok {
            bail!("{path} did not answer 200");
        }
        server.push(timing.context("a Server-Timing header")?);
    }
    Ok((
        percentile(&mut server.clone(), 0.5),
        percentile(&mut server, 0.99),
    ))
}

/// The webhook receiver of `--load hanging-receiver`: takes every POST; answers 204 at once,
/// or, while `hang` is set, never.
struct Receiver {
    hang: std::sync::atomic::AtomicBool,
    took: std::sync::atomic::AtomicU64,
    answered: std::sync::atomic::AtomicU64,
}

impl Receiver {
    async fn start(port: u16) -> anyhow::Result<std::sync::Arc<Receiver>> {
        use std::sync::atomic::Ordering::SeqCst;
        let receiver = std::sync::Arc::new(Receiver {
            hang: false.into(),
            took: 0.into(),
            answered: 0.into(),
        });
        let shared = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let r = shared.clone();
                async move {
                    r.took.fetch_add(1, SeqCst);
                    if r.hang.load(SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    r.answered.fetch_add(1, SeqCst);
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(receiver)
    }

    /// (taken, answered) so far.
    fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::SeqCst;
        (self.took.load(SeqCst), self.answered.load(SeqCst))
    }
}

/// The `[[notify]]` entry of `--load hanging-receiver`, its secret in `dir`.
fn notify_config(dir: &Path, port: u16) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let secret = dir.join("webhook-secret");
    // 32 bytes, base64: a Standard Webhooks secret.
    std::fs::write(
        &secret,
        "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
    )?;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    Ok(format!(
        "\n[[notify]]\nname = \"hook\"\non = [\"completed\"]\nurl = \"http://127.0.0.1:{port}/hook\"\n\
         secret_file = \"{}\"\ntimeout = \"30s\"\n",
        secret.display()
    ))
}

/// Completes one batch of a job not yet asked to complete every `every`, until `stop`.
async fn complete_along(
    store: Store,
    sim: std::sync::Arc<sim::SimHandle>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let remotes: Vec<String> =
        sqlx::query_scalar("SELECT remote_id FROM batches WHERE remote_id IS NOT NULL ORDER BY id")
            .fetch_all(store.reader())
            .await?;
    let mut tick = tokio::time::interval(every);
    for remote in remotes {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                sim.step(sim::Step::Ids { ids: vec![remote] }).await?;
            }
        }
    }
    Ok(())
}

/// How many notifications are pending.
async fn pending_notifications(store: &Store) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE state = 'pending'")
            .fetch_one(store.reader())
            .await?,
    )
}

fn write_config(
    dir: &Path,
    base_url: &str,
    port: u16,
    interval: u64,
    extra: &str,
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
{extra}"#,
            dir = dir.display()
        ),
    )?;
    Ok(path)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sim = std::sync::Arc::new(
        sim::start(
            "127.0.0.1:0".parse()?,
            SimConfig {
                time_scale: 1.0,
                seed: Some(7),
                validating_secs: 0.5,
                in_progress_secs: 3_600.0,
                finalizing_secs: 0.5,
                ..SimConfig::default()
            },
        )
        .await?,
    );
    let port = free_port()?;
    let receiver = match args.load {
        Load::HangingReceiver => {
            let port = free_port()?;
            Some((
                Receiver::start(port).await?,
                notify_config(dir.path(), port)?,
            ))
        }
        _ => None,
    };
    let extra = receiver.as_ref().map_or("", |(_, extra)| extra.as_str());
    let config = write_config(dir.path(), &sim.base_url(), port, args.interval, extra)?;
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
    // With --finished, one more file: the job the seeded ones are copies of.
    let template = (args.finished > 0).then_some("template.jsonl");
    let files = args.batches + usize::from(template.is_some());
    for i in 0..files {
        let line = format!(
            "{{\"custom_id\":\"r\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"q{i}\"}}]}}}}\n"
        );
        let name = match (i, template) {
            (0, Some(template)) => template.to_owned(),
            _ => format!("f{i}.jsonl"),
        };
        let part = incoming.join(format!(".f{i}.part"));
        std::fs::write(&part, line)?;
        std::fs::rename(&part, incoming.join(name))?;
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
        if active as usize >= files {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {active} of {files} batches became active");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{} batches active after {:.1}s; each polled every {}s; {}s per phase",
        files,
        started.elapsed().as_secs_f64(),
        args.interval,
        args.seconds
    );
    if let Some(template) = template {
        let job = complete_one(&store, &sim, template).await?;
        let seeding = Instant::now();
        seed_finished(&dir.path().join("state.db"), &job, args.finished).await?;
        let (jobs,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs")
            .fetch_one(store.reader())
            .await?;
        println!(
            "{} finished jobs copied from {job} in {:.1}s: {jobs} jobs, {} batches active",
            args.finished,
            seeding.elapsed().as_secs_f64(),
            active(&store).await?
        );
    }
    // Let the first polls spread out before measuring.
    tokio::time::sleep(Duration::from_secs(args.interval + 1)).await;

    // Alternated, twice, so the machine's own noise shows beside the difference.
    let base = format!("http://127.0.0.1:{port}");
    let pid = daemon.0.id();
    let (quiet_name, loaded_name) = match args.load {
        Load::Metrics => (
            "no scrapes".to_owned(),
            format!("{:.0} scrapes/s", 1.0 / args.every.as_secs_f64()),
        ),
        Load::Pages => (
            "no page loads".to_owned(),
            format!("a page every {:.1} s", args.every.as_secs_f64()),
        ),
        Load::HangingReceiver => ("receiver answers".to_owned(), "receiver hangs".to_owned()),
    };
    let completing = tokio_util::sync::CancellationToken::new();
    let completer = receiver.as_ref().map(|_| {
        tokio::spawn(complete_along(
            store.clone(),
            sim.clone(),
            args.every,
            completing.clone(),
        ))
    });
    for round in 1..=2 {
        let interval = Duration::from_secs(args.interval);
        let hang = |on: bool| {
            if let Some((r, _)) = &receiver {
                r.hang.store(on, std::sync::atomic::Ordering::SeqCst);
            }
        };
        let before = receiver.as_ref().map(|(r, _)| r.counts());
        hang(false);
        let ended = receiver.as_ref().map(|_| &store);
        let quiet = measure(pid, &sim, ended, interval, args.seconds, None).await?;
        let middle = receiver.as_ref().map(|(r, _)| r.counts());
        let pending_quiet = match &receiver {
            Some(_) => pending_notifications(&store).await?,
            None => 0,
        };
        hang(true);
        let load = Some((base.clone(), args.load, args.every)).filter(|_| receiver.is_none());
        let loaded = measure(pid, &sim, ended, interval, args.seconds, load).await?;
        for (name, p) in [(&quiet_name, &quiet), (&loaded_name, &loaded)] {
            println!(
                "round {round} {name:>18}: {:.2} polls/s (retrieves and list pages); polling lag mean {:.3}s, p95 of the worst {:.3}s; {:.1} batches overdue on average; daemon CPU {:.1}% of a core",
                p.polls_per_second, p.mean_lag, p.p95_lag, p.overdue, p.daemon_cpu
            );
        }
        if let (Some((r, _)), Some(before), Some(middle)) = (&receiver, before, middle) {
            let after = r.counts();
            println!(
                "round {round} {:>18}: receiver answering: {} notifications taken, {} answered, {pending_quiet} pending at the end; hanging: {} taken, {} answered, {} pending at the end",
                "notifications",
                middle.0 - before.0,
                middle.1 - before.1,
                after.0 - middle.0,
                after.1 - middle.1,
                pending_notifications(&store).await?,
            );
            continue;
        }
        println!(
            "round {round} {:>18}: {} ({:.2}/s), latency p50 {:.1} ms, p99 {:.1} ms",
            "loads",
            loaded.scrapes,
            loaded.scrapes as f64 / args.seconds as f64,
            loaded.scrape_p50_ms,
            loaded.scrape_p99_ms
        );
        if args.load == Load::Pages {
            let mut server = loaded.server_ms.clone();
            println!(
                "round {round} {:>18}: server time of / p50 {:.1} ms, max {:.1} ms",
                "pages",
                percentile(&mut server.clone(), 0.5),
                percentile(&mut server, 1.0)
            );
        }
    }
    completing.cancel();
    if let Some(task) = completer {
        task.await??;
    }
    if args.load == Load::Pages {
        let (job,): (String,) = sqlx::query_as("SELECT id FROM jobs ORDER BY id DESC LIMIT 1")
            .fetch_one(store.reader())
            .await?;
        let (middle,): (String,) = sqlx::query_as(
            "SELECT id FROM jobs ORDER BY id LIMIT 1 OFFSET (SELECT count(*) / 2 FROM jobs)",
        )
        .fetch_one(store.reader())
        .await?;
        for path in [
            "/".to_owned(),
            "/?state=running".to_owned(),
            "/?state=completed".to_owned(),
            "/?file=f9*".to_owned(),
            "/?model=gpt-4o-mini".to_owned(),
            format!("/?after={middle}"),
            format!("/jobs/{job}"),
        ] {
            let (p50, p99) = time_page(&base, &path, 50).await?;
            println!("server time of {path}: p50 {p50:.1} ms, p99 {p99:.1} ms (50 loads)");
        }
    }
    store.close().await;
    Ok(())
}
