//! The monitoring endpoint: what `/metrics` says after a lifecycle against the simulator (equal
//! to the database and to the simulator's own record), a real Prometheus scraping it with the
//! dashboard's and the alerting rules' expressions, usage and cost booked once, `/readyz`, stuck
//! batches, and the endpoint turned off or refused its port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use batchwatch::api::{ApiKey, Batch};
use batchwatch::clock::Clock;
use batchwatch::config::Settings;
use batchwatch::daemon::Daemon;
use batchwatch::daemon::track::observe;
use batchwatch::model::{BatchStatus, JobState};
use batchwatch::sim::{FaultKind, RetryAfter, ScriptedFault, SimConfig};
use batchwatch::store::prelude::*;
use sqlx::Connection;

use crate::support::daemon::{Env, quick_sim, requests};
use crate::support::notify::{notify_socket, wait_message};
use crate::support::process::{Running, command};
use crate::support::sim::{TestSim, http_client, spawn_sim};
use crate::support::{KEY, unused_port, wait_until};

const PRICING: &str = r#"
[pricing."gpt-4o-mini"]
input = 2.0
cached_input = 0.5
output = 8.0
batch_discount = 0.5
"#;

/// Starts the daemon with its endpoint on a free port; returns it and the endpoint's address.
pub fn spawn_observed(env: &Env) -> (Running, SocketAddr) {
    let mut daemon = env.spawn();
    let addr = endpoint_addr(&mut daemon);
    (daemon, addr)
}

/// Where the daemon says its endpoint listens.
pub fn endpoint_addr(daemon: &mut Running) -> SocketAddr {
    let line = daemon.wait_for_line("metrics endpoint listening", Duration::from_secs(10));
    line.split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

fn observed_env(sim: &TestSim, extra: &str) -> Env {
    Env::new(
        &sim.handle.base_url(),
        &format!("[metrics]\nlisten = \"127.0.0.1:0\"\n{extra}"),
    )
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = http_client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("the endpoint answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The samples of an exposition in the classic text format: series (name and labels) to value.
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of the samples of metric `name` whose labels include every one of `labels`.
fn sum(samples: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Waits until `/metrics` satisfies `done`, and returns its samples.
async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let scraped = wait_until(what, Duration::from_secs(30), async || {
        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200, "{text}");
        let s = samples(&text);
        (done(&s), (s, text))
    })
    .await;
    scraped.0
}

/// A simulator for the lifecycle: fast, a service-side request limit (so a file batchwatch
/// accepts fails there), the enqueued-token limit, and a few scripted 429s and one 401.
async fn lifecycle_sim() -> TestSim {
    let mut config: SimConfig = quick_sim();
    // Slow requests, so a file of a few hundred stays in progress for seconds.
    config.request_secs = 3.0;
    config.limits.max_requests = 500;
    config.faults.token_limit = Some(20_000);
    let sim = spawn_sim(config).await;
    let poll = || ScriptedFault::new(FaultKind::Unauthorized).on("GET", "/v1/batches/{batch_id}");
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::RateLimit {
                retry_after: RetryAfter::Millis(200),
            })
            .times(3)
            .on("GET", "/v1/batches/{batch_id}"),
        )
        .await;
    sim.handle.push_fault(poll()).await;
    sim
}

/// Runs the lifecycle: `ok` completes; `late` passes its deadline and is cancelled; `big` is
/// refused for the token limit while `late` runs, then completes; `too-many` fails on the
/// service. Returns the finished jobs.
async fn run_lifecycle(env: &Env, daemon: &mut Running) -> Vec<batchwatch::store::jobs::Job> {
    env.drop_file("ok.jsonl", requests("ok", 5, "gpt-4o-mini").as_bytes());
    env.drop_file("late.jsonl.toml", b"deadline = \"1500ms\"\n");
    env.drop_file(
        "late.jsonl",
        requests("late", 400, "gpt-4o-mini").as_bytes(),
    );
    env.drop_file(
        "too-many.jsonl",
        requests("tm", 600, "gpt-4o-mini").as_bytes(),
    );
    // `big` goes in once `late` is running, so the two together pass the token limit.
    wait_until("late running", Duration::from_secs(30), async || {
        let store = env.store().await;
        let counts = store.batch_status_counts().await.unwrap();
        store.close().await;
        let running = counts
            .iter()
            .any(|(s, n)| *s == BatchStatus::InProgress && *n > 0);
        (running, counts)
    })
    .await;
    env.drop_file("big.jsonl", requests("big", 160, "gpt-4o-mini").as_bytes());
    env.wait_finished(4, Duration::from_secs(90), daemon).await
}

/// The API requests the simulator received, its admin routes left out.
fn received(stats: &batchwatch::sim::Stats) -> u64 {
    stats
        .requests
        .iter()
        .filter(|(route, _)| !route.contains("/admin"))
        .map(|(_, n)| n)
        .sum()
}

/// Every batch the simulator made, as its API describes it.
async fn sim_batches(sim: &TestSim) -> Vec<Batch> {
    let (status, page) = sim.get("/batches?limit=100").await;
    assert!(status.is_success(), "{page}");
    serde_json::from_value::<Vec<serde_json::Value>>(page["data"].clone())
        .unwrap()
        .into_iter()
        .map(|b| serde_json::from_value(b).unwrap())
        .collect()
}

/// The estimated cost of `batches` at [`PRICING`], computed by hand.
fn hand_cost(batches: &[Batch]) -> f64 {
    batches
        .iter()
        .filter_map(|b| b.usage)
        .map(|u| {
            let cached = u.input_tokens_details.map_or(0, |d| d.cached_tokens) as f64;
            let uncached = u.input_tokens as f64 - cached;
            (uncached * 2.0 + cached * 0.5 + u.output_tokens as f64 * 8.0) / 1e6 * 0.5
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lifecycle_scrapes_as_the_database_and_the_simulators_record_say() {
    let sim = lifecycle_sim().await;
    let env = observed_env(&sim, PRICING);
    let (mut daemon, addr) = spawn_observed(&env);
    let jobs = run_lifecycle(&env, &mut daemon).await;
    let state = |name: &str| jobs.iter().find(|j| j.file_name == name).unwrap().state;
    assert_eq!(state("ok.jsonl"), JobState::Completed);
    assert_eq!(state("big.jsonl"), JobState::Completed);
    assert_eq!(state("late.jsonl"), JobState::Cancelled);
    assert_eq!(state("too-many.jsonl"), JobState::Failed);

    // The row figures are read at most once a second: wait for a scrape that shows the end.
    scrape_until(addr, "all four jobs finished", |s| {
        sum(s, "batchwatch_oldest_unfinished_job_age_seconds", &[]) == 0.0
            && sum(s, "batchwatch_jobs", &[("state", "completed")]) == 2.0
    })
    .await;
    // The simulator counts a request when it arrives, the daemon when it ends: while one is in
    // flight (the finished jobs' files being deleted) the two differ. Once both agree, the
    // scrape and the simulator's record are compared as a pair.
    let (s, stats) = wait_until(
        "the scraped requests to match the simulator's",
        Duration::from_secs(30),
        async || {
            let s = scrape_until(addr, "a scrape", |_| true).await;
            let stats = sim.handle.stats().await;
            let scraped = sum(&s, "batchwatch_api_requests_total", &[]);
            let agree = scraped == received(&stats) as f64;
            (agree, (s, stats))
        },
    )
    .await;
    let store = env.store().await;

    // Rows: jobs by state, batches by status, transitions, cancels, as the database has them.
    for (state, n) in store.job_state_counts().await.unwrap() {
        let s_ = state.as_str();
        assert_eq!(
            sum(&s, "batchwatch_jobs", &[("state", s_)]),
            n as f64,
            "{s_}"
        );
        // Every job ran on the one provider configured.
        let on_openai = [("provider", "openai"), ("state", s_)];
        assert_eq!(
            sum(&s, "batchwatch_jobs_by_provider", &on_openai),
            n as f64,
            "{s_}"
        );
    }
    for terminal in ["completed", "failed", "cancelled"] {
        let n = jobs.iter().filter(|j| j.state.as_str() == terminal).count();
        assert_eq!(
            sum(&s, "batchwatch_job_transitions_total", &[("to", terminal)]),
            n as f64,
            "jobs that became {terminal}"
        );
    }
    for (status, n) in store.batch_status_counts().await.unwrap() {
        assert_eq!(
            sum(&s, "batchwatch_batches", &[("status", status.as_str())]),
            n as f64,
            "{status}"
        );
    }
    assert_eq!(
        sum(
            &s,
            "batchwatch_job_cancels_total",
            &[("reason", "deadline")]
        ),
        1.0
    );

    // Requests: every one the simulator received was counted, and its faults as what they are.
    assert_eq!(
        sum(&s, "batchwatch_api_requests_total", &[]),
        received(&stats) as f64,
        "{:?}",
        stats.requests
    );
    assert_eq!(
        sum(&s, "batchwatch_api_rate_limits_total", &[]),
        stats.faults_injected["rate_limit"] as f64
    );
    assert_eq!(stats.faults_injected["rate_limit"], 3);
    let waited = sum(&s, "batchwatch_api_retry_after_seconds_total", &[]);
    assert!(
        (waited - 0.6).abs() < 1e-9,
        "three waits of 200ms, not {waited}"
    );
    assert_eq!(
        sum(&s, "batchwatch_api_key_refusals_total", &[]),
        stats.faults_injected["unauthorized"] as f64
    );

    // Token-limit refusals, as the simulator failed them.
    let made = sim_batches(&sim).await;
    let refused = made
        .iter()
        .filter(|b| {
            b.error_list()
                .iter()
                .any(|e| e.code.as_deref() == Some("token_limit_exceeded"))
        })
        .count();
    assert!(refused >= 1, "the token limit was never hit");
    assert_eq!(
        sum(
            &s,
            "batchwatch_token_limit_refusals_total",
            &[("model", "gpt-4o-mini")]
        ),
        refused as f64
    );

    // Tokens and cost: the simulator's usage, and a hand computation of its cost.
    let tokens = |f: fn(&batchwatch::api::BatchUsage) -> u64| -> f64 {
        made.iter()
            .filter_map(|b| b.usage.as_ref())
            .map(f)
            .sum::<u64>() as f64
    };
    let mini = [("model", "gpt-4o-mini")];
    assert_eq!(
        sum(&s, "batchwatch_tokens_total", &[mini[0], ("kind", "input")]),
        tokens(|u| u.input_tokens)
    );
    assert_eq!(
        sum(
            &s,
            "batchwatch_tokens_total",
            &[mini[0], ("kind", "output")]
        ),
        tokens(|u| u.output_tokens)
    );
    let expected = hand_cost(&made);
    assert!(expected > 0.0);
    let scraped = sum(&s, "batchwatch_cost_usd_total", &mini);
    assert!((scraped - expected).abs() < 1e-9, "{scraped} != {expected}");
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    let in_db: f64 = store
        .job_costs(&ids)
        .await
        .unwrap()
        .iter()
        .filter_map(|c| c.cost_usd)
        .sum();
    assert!((in_db - expected).abs() < 1e-9, "{in_db} != {expected}");
    // manifest.json carries the same, per job and per batch.
    let ok = jobs.iter().find(|j| j.file_name == "ok.jsonl").unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            env.sandbox
                .queue_dir()
                .join(ok.results_dir.as_deref().unwrap())
                .join("manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let ok_batch = made
        .iter()
        .find(|b| b.claim().map(|c| c.job_id) == Some(ok.id.as_str()))
        .unwrap();
    let ok_cost = hand_cost(std::slice::from_ref(ok_batch));
    let in_manifest = manifest["usage"]["cost_usd"].as_f64().unwrap();
    assert!((in_manifest - ok_cost).abs() < 1e-12, "{manifest:#}");
    assert_eq!(
        manifest["batches"][0]["usage"]["input_tokens"],
        ok_batch.usage.unwrap().input_tokens,
        "{manifest:#}"
    );

    // Requests of ended batches, bytes uploaded: as the database has them.
    let mut completed = 0;
    let mut uploaded = 0;
    for job in &jobs {
        for b in store.submissions_of(&job.id).await.unwrap() {
            if b.status.as_ref().is_some_and(BatchStatus::is_terminal) {
                completed += b.request_completed.unwrap_or(0);
            }
            if b.upload_id.is_some() {
                uploaded += b.part_end - b.part_start;
            }
        }
    }
    assert_eq!(
        sum(&s, "batchwatch_requests_total", &[("outcome", "completed")]),
        completed as f64
    );
    assert_eq!(
        sum(&s, "batchwatch_api_uploaded_bytes_total", &[]),
        uploaded as f64
    );
    assert_eq!(
        sum(&s, "batchwatch_job_duration_seconds_count", &[]),
        4.0,
        "every job's duration, once"
    );
    store.close().await;
    env.stop(daemon);
}

/// Before anything happens, every counter whose label set is known exists at zero, so the
/// first retry or 429 shows as an increase; a model without a price has its tokens counted but
/// no cost series (a dashboard shows no data for it, not $0); and README's table of metrics
/// names every family the endpoint serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_start_at_zero_an_unpriced_model_has_no_cost_and_readme_lists_every_family() {
    let sim = spawn_sim(quick_sim()).await;
    let env = observed_env(&sim, PRICING);
    let (mut daemon, addr) = spawn_observed(&env);
    let (_, text) = get(addr, "/metrics").await;
    let at_start = samples(&text);
    for operation in [
        "upload_file",
        "retrieve_file",
        "list_files",
        "delete_file",
        "download_file",
        "create_batch",
        "retrieve_batch",
        "list_batches",
        "cancel_batch",
        "delete_batch",
    ] {
        for family in [
            "api_retries_total",
            "api_rate_limits_total",
            "api_key_refusals_total",
            "api_retry_after_seconds_total",
        ] {
            let series = format!("batchwatch_{family}{{operation=\"{operation}\"}}");
            assert_eq!(at_start.get(&series), Some(&0.0), "{series}:\n{text}");
        }
    }
    for series in [
        "batchwatch_requests_total{outcome=\"completed\"}",
        "batchwatch_reconciliations_total{request=\"create\",outcome=\"not_found\"}",
        "batchwatch_pruned_total{kind=\"jobs\"}",
    ] {
        assert_eq!(at_start.get(series), Some(&0.0), "{series}:\n{text}");
    }

    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let table = readme
        .split_once("Metrics (all named `batchwatch_…`")
        .and_then(|(_, rest)| rest.split_once("\n\n| metric |"))
        .and_then(|(_, rest)| rest.split_once("\n\n"))
        .map(|(table, _)| table)
        .expect("README's metrics table");
    for family in text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE batchwatch_"))
        .filter_map(|l| l.split_whitespace().next())
    {
        assert!(
            table.contains(&format!("`{family}{{")) || table.contains(&format!("`{family}`")),
            "README's metrics table lacks {family}"
        );
    }

    env.drop_file("priced.jsonl", requests("p", 3, "gpt-4o-mini").as_bytes());
    env.drop_file("unpriced.jsonl", requests("u", 3, "gpt-4o").as_bytes());
    env.wait_finished(2, Duration::from_secs(60), &mut daemon)
        .await;
    let ended = scrape_until(addr, "the tokens of both models", |s| {
        ["gpt-4o", "gpt-4o-mini"]
            .iter()
            .all(|model| sum(s, "batchwatch_tokens_total", &[("model", model)]) > 0.0)
    })
    .await;
    assert!(
        sum(
            &ended,
            "batchwatch_cost_usd_total",
            &[("model", "gpt-4o-mini")]
        ) > 0.0
    );
    let unpriced: Vec<&String> = ended
        .keys()
        .filter(|k| k.starts_with("batchwatch_cost_usd_total{model=\"gpt-4o\"}"))
        .collect();
    assert!(unpriced.is_empty(), "{unpriced:?}");
    env.stop(daemon);
}

/// A real Prometheus, when the machine has one (Debian's `prometheus` package).
/// An idle daemon's rounds are quiet: it scans incoming/ and asks the database nothing, until
/// something changes or comes due (at the latest a minute on). A timer of work that never runs
/// would stay due and make every round a full one (as it once did on a follower); so would a
/// write in a quiet round. A file dropped makes rounds full again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_daemons_rounds_are_quiet_and_a_dropped_file_makes_them_full() {
    let sim = spawn_sim(quick_sim()).await;
    let env = observed_env(&sim, "[reconcile]\nduplicate_check_interval = \"1h\"\n");
    let (mut daemon, addr) = spawn_observed(&env);
    for i in 0..3 {
        let name = format!("idle-{i}.jsonl");
        env.drop_file(
            &name,
            requests(&format!("idle{i}"), 2, "gpt-4o-mini").as_bytes(),
        );
    }
    env.wait_finished(3, Duration::from_secs(60), &mut daemon)
        .await;
    let rounds = async || {
        let (_, text) = get(addr, "/metrics").await;
        let s = samples(&text);
        let kind = |k| sum(&s, "batchwatch_loop_rounds_total", &[("kind", k)]);
        (kind("quiet"), kind("full"))
    };
    // What finishing the jobs left due (a last full round after the last commit) passes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (quiet_before, full_before) = rounds().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (quiet, full) = rounds().await;
    let (quiet, full) = (quiet - quiet_before, full - full_before);
    println!("idle for 5 s, scanning every 50 ms: {quiet} quiet rounds, {full} full");
    assert!(
        quiet >= 20.0,
        "{quiet} quiet rounds in 5 s of scans every 50 ms"
    );
    assert!(full <= 1.0, "{full} full rounds in 5 s of idling");

    env.drop_file("busy.jsonl", requests("busy", 2, "gpt-4o-mini").as_bytes());
    env.wait_finished(4, Duration::from_secs(60), &mut daemon)
        .await;
    let (_, busy) = rounds().await;
    assert!(
        busy - (full_before + full) >= 3.0,
        "a file's life takes full rounds"
    );
    env.stop(daemon);
}

fn prometheus_missing() -> bool {
    let found = ["prometheus", "promtool"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !found {
        assert!(
            std::env::var_os("BATCHWATCH_REQUIRE_PROMETHEUS").is_none(),
            "BATCHWATCH_REQUIRE_PROMETHEUS is set, but prometheus or promtool is not installed"
        );
        eprintln!(
            "skipped: prometheus and promtool are not installed (Debian/Ubuntu: apt-get install prometheus)"
        );
    }
    !found
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Prometheus scraping `target` every second, with the repository's rules loaded.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {:?}\n\
                 scrape_configs:\n  - job_name: batchwatch\n    static_configs:\n      - targets: [\"{target}\"]\n",
                repo("config/prometheus/batchwatch-rules.yml").display().to_string()
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", unused_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Evaluates `expr` now; returns the result vector, or panics with Prometheus's error.
    async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let response = http_client()
            .get(format!("http://{}/api/v1/query", self.addr))
            .query(&[("query", expr)])
            .send()
            .await
            .expect("prometheus answers");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn wait_ready(&self) {
        wait_until("prometheus ready", Duration::from_secs(30), async || {
            let ready = http_client()
                .get(format!("http://{}/-/ready", self.addr))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            (ready, ())
        })
        .await;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every `expr` in the dashboard, with Grafana's `$__rate_interval` made concrete.
fn dashboard_exprs() -> Vec<String> {
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => collect(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(repo("config/grafana/batchwatch-dashboard.json")).unwrap();
    let mut out = Vec::new();
    collect(&serde_json::from_str(&text).unwrap(), &mut out);
    out.iter()
        .map(|e| e.replace("$__rate_interval", "30s"))
        .collect()
}

/// Every alert of the rules file: (name, expression).
fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("config/prometheus/batchwatch-rules.yml")).unwrap();
    let rules: serde_json::Value = serde_norway::from_str(&text).unwrap();
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_owned(),
                r["expr"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The metric names an expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("batchwatch_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        names.push(name);
    }
    names
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// What README tells an operator to run: `promtool check rules config/prometheus/*.yml` (every
/// file the glob matches is a rules file), and the rules' own tests, kept apart in `tests/`.
#[test]
fn promtool_checks_every_rules_file_the_glob_matches_and_the_rules_pass_their_tests() {
    if prometheus_missing() {
        return;
    }
    let dir = repo("config/prometheus");
    let mut globbed: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yml"))
        .map(|path| path.display().to_string())
        .collect();
    globbed.sort();
    assert!(!globbed.is_empty(), "no rules in {}", dir.display());
    let mut args = vec!["check", "rules"];
    args.extend(globbed.iter().map(String::as_str));
    let (ok, out) = promtool(&args, None);
    assert!(ok, "promtool check rules {globbed:?}:\n{out}");

    let tests = repo("config/prometheus/tests/batchwatch-rules.test.yml");
    let (ok, out) = promtool(&["test", "rules", tests.to_str().unwrap()], None);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_prometheus_scrapes_the_daemon_and_every_dashboard_and_alert_expression_evaluates() {
    if prometheus_missing() {
        return;
    }
    let sim = lifecycle_sim().await;
    let env = observed_env(&sim, PRICING);
    let (mut daemon, addr) = spawn_observed(&env);
    let prometheus = Prometheus::start(addr);
    prometheus.wait_ready().await;
    // Scraped before anything happens, so every counter is seen rising from where it started.
    wait_until(
        "prometheus to scrape the daemon",
        Duration::from_secs(30),
        async || {
            let up = prometheus.query("up{job=\"batchwatch\"} == 1").await;
            (!up.is_empty(), up)
        },
    )
    .await;
    let jobs = run_lifecycle(&env, &mut daemon).await;
    // Enough scrapes after the end for rates over 30s windows.
    scrape_until(addr, "the end shown", |s| {
        sum(s, "batchwatch_oldest_unfinished_job_age_seconds", &[]) == 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    // The exposition passes promtool, in the format promtool reads.
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics:\n{out}\n{text}");

    // Prometheus took the OpenMetrics it asked for, and holds what the database holds.
    let up = prometheus.query("up{job=\"batchwatch\"}").await;
    assert_eq!(up.len(), 1);
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
    let completed = jobs
        .iter()
        .filter(|j| j.state == JobState::Completed)
        .count();
    let seen = prometheus
        .query("batchwatch_jobs{state=\"completed\"}")
        .await;
    assert_eq!(seen[0]["value"][1], completed.to_string(), "{seen:?}");

    for expr in dashboard_exprs() {
        let result = prometheus.query(&expr).await;
        assert!(
            !result.is_empty(),
            "the dashboard's {expr} returned no data"
        );
    }

    for (alert, expr) in alert_exprs() {
        let firing = prometheus.query(&expr).await;
        for name in metric_names(&expr) {
            let series = prometheus.query(&format!("count({name})")).await;
            assert!(
                !series.is_empty(),
                "{alert} reads {name}, which has no data"
            );
        }
        // The lifecycle failed a job and had one key refusal: those two alerts hold now.
        if ["BatchwatchJobsFailing", "BatchwatchKeyRefused"].contains(&alert.as_str()) {
            let names = metric_names(&expr);
            let seen = prometheus.query(&format!("{}[1m]", names[0])).await;
            assert!(
                !firing.is_empty(),
                "{alert} does not hold after the lifecycle; Prometheus has {seen:?}"
            );
        }
    }
    drop(prometheus);
    env.stop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cost_is_booked_once_across_a_kill_a_restart_and_re_observations() {
    let sim = spawn_sim(quick_sim()).await;
    // Downloads hang: the batch stays between its end (when its cost is booked) and collection.
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::Latency { ms: 120_000 })
                .times(10)
                .on("GET", "/v1/files/{file_id}/content"),
        )
        .await;
    let env = Env::new(&sim.handle.base_url(), PRICING);
    let mut daemon = env.spawn();
    env.drop_file("priced.jsonl", requests("p", 40, "gpt-4o-mini").as_bytes());
    let booked = |env: &Env| {
        let path = env.sandbox.db_path();
        async move {
            let store = batchwatch::store::Store::open(
                &path,
                Duration::from_secs(5),
                batchwatch::store::Access::ReadOnly,
            )
            .await
            .unwrap();
            let job = store.jobs_in_states(JobState::ALL).await.unwrap();
            let rows = match job.first() {
                Some(job) => store.usage_of(&job.id).await.unwrap(),
                None => Vec::new(),
            };
            store.close().await;
            rows.into_iter().find(|r| r.booked_at.is_some())
        }
    };
    let first = wait_until(
        "the batch's cost booked",
        Duration::from_secs(30),
        async || {
            let row = booked(&env).await;
            (row.is_some(), row)
        },
    )
    .await
    .unwrap();
    // Killed while collecting.
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();

    let remote = sim_batches(&sim).await;
    assert_eq!(remote.len(), 1);
    let expected = hand_cost(&remote);
    assert!(expected > 0.0);
    let cost = first.cost_usd.expect("a priced batch has a cost");
    assert!((cost - expected).abs() < 1e-12, "{cost} != {expected}");
    assert_eq!(
        first.input_tokens,
        Some(remote[0].usage.unwrap().input_tokens as i64)
    );

    // Restarted in-process, twice: the ended batch is seen again, twice each time, the second
    // time with a usage the service would never report.
    let settings = Settings::load_from(Some(&env.config), []).unwrap();
    let mut grown = remote[0].clone();
    grown.usage.as_mut().unwrap().input_tokens *= 10;
    for batch in [&remote[0], &grown] {
        let daemon = Daemon::start(settings.clone(), ApiKey::new(KEY).unwrap(), Clock::System)
            .await
            .unwrap();
        let row = daemon
            .ctx
            .store
            .submission_by_remote_id(&remote[0].id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.state, batchwatch::model::SubmissionState::Collecting);
        observe::observe(&daemon.ctx, &row, batch).await.unwrap();
        observe::observe(&daemon.ctx, &row, batch).await.unwrap();
        daemon.shutdown().await;
    }
    let again = booked(&env).await.unwrap();
    assert_eq!(again, first, "booked once: neither tokens nor cost changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_is_503_with_the_reason_while_the_database_is_locked_and_200_once_released() {
    let sim = spawn_sim(quick_sim()).await;
    let env = observed_env(&sim, "");
    let (daemon, addr) = spawn_observed(&env);
    wait_until("ready", Duration::from_secs(10), async || {
        let (status, body) = get(addr, "/readyz").await;
        (status == 200, body)
    })
    .await;
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));

    // Another process holds the write lock (a long write, a backup tool): nothing can be written.
    let url = format!("sqlite://{}", env.sandbox.db_path().display());
    let mut holder = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("not ready: database ") && body.contains("is not writable: "),
        "{body}"
    );
    assert!(body.contains("locked"), "{body}");
    assert_eq!(
        get(addr, "/healthz").await.0,
        200,
        "the process still answers"
    );

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_owned()));

    // A queue directory taken away is named too.
    std::fs::remove_dir(env.dir("done")).unwrap();
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("queue directory") && body.contains("done"),
        "{body}"
    );
    std::fs::create_dir(env.dir("done")).unwrap();
    assert_eq!(get(addr, "/readyz").await.0, 200);
    env.stop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_stuck_in_finalizing_is_warned_once_counted_shown_and_named_to_systemd() {
    let mut config = quick_sim();
    config.faults.stuck_finalizing = 1.0;
    let sim = spawn_sim(config).await;
    let env = observed_env(&sim, "[alerts.stuck_after]\nfinalizing = \"1s\"\n");
    let (socket, rx) = notify_socket(env.sandbox.path());
    let mut daemon = env.spawn_with(&[("NOTIFY_SOCKET", socket.to_str().unwrap())]);
    let addr = endpoint_addr(&mut daemon);
    env.drop_file("stuck.jsonl", requests("s", 3, "gpt-4o-mini").as_bytes());

    let s = scrape_until(addr, "a stuck batch counted", |s| {
        sum(s, "batchwatch_stuck_batches", &[("status", "finalizing")]) == 1.0
    })
    .await;
    assert_eq!(
        sum(&s, "batchwatch_stuck_batches", &[("status", "validating")]),
        0.0
    );
    let warned = daemon.wait_for_line("a batch is stuck", Duration::from_secs(10));
    assert!(
        warned.contains("WARN") && warned.contains("finalizing"),
        "{warned}"
    );
    assert!(
        warned.contains("alerts.stuck_after.finalizing = 1s"),
        "{warned}"
    );
    let status = wait_message(
        &rx,
        |m| m.contains("STUCK: batch_"),
        Duration::from_secs(10),
    );
    assert!(status.contains("finalizing"), "{status}");

    let out = crate::support::process::stdout_ok(Some(&env.config), &["status"]);
    assert!(
        out.contains("STUCK: batch batch_") && out.contains("finalizing"),
        "{out}"
    );
    let job = env.jobs().await.remove(0);
    let shown = crate::support::process::stdout_ok(Some(&env.config), &["show", &job.id]);
    assert!(
        shown.contains("STUCK: finalizing since")
            && shown.contains("alerts.stuck_after.finalizing = 1s"),
        "{shown}"
    );

    // Still stuck several checks later: warned once all the same.
    tokio::time::sleep(Duration::from_secs(5)).await;
    daemon.drain();
    let warnings = daemon
        .seen
        .iter()
        .filter(|l| l.contains("a batch is stuck"))
        .count();
    assert_eq!(warnings, 1, "{:?}", daemon.seen);
    env.stop(daemon);
}

/// Batches whose results cannot be written here (results/ is a file; equally a full disk or a
/// permission) are counted while they wait, and no more once the host is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_waiting_on_a_local_fault_are_counted_until_they_can_be_written() {
    let sim = spawn_sim(quick_sim()).await;
    let env = observed_env(&sim, "");
    let (mut daemon, addr) = spawn_observed(&env);
    std::fs::remove_dir_all(env.dir("results")).unwrap();
    std::fs::write(env.dir("results"), b"not a directory").unwrap();
    for name in ["a.jsonl", "b.jsonl"] {
        env.drop_file(name, requests(name, 2, "gpt-4o-mini").as_bytes());
    }
    scrape_until(addr, "both batches counted as waiting", |s| {
        sum(s, "batchwatch_results_waiting_on_local_fault", &[]) == 2.0
    })
    .await;
    std::fs::remove_file(env.dir("results")).unwrap();
    std::fs::create_dir(env.dir("results")).unwrap();
    let jobs = env
        .wait_finished(2, Duration::from_secs(60), &mut daemon)
        .await;
    assert!(jobs.iter().all(|j| j.state == JobState::Completed));
    scrape_until(addr, "no batch waiting", |s| {
        sum(s, "batchwatch_results_waiting_on_local_fault", &[]) == 0.0
    })
    .await;
    env.stop(daemon);
}

/// The inodes of the TCP sockets of process `pid` whose row of /proc/net/tcp (split in fields)
/// `keep` keeps.
pub fn sockets_of(pid: u32, keep: impl Fn(&[&str]) -> bool) -> Vec<String> {
    let mut kept = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // The inode is the tenth field.
            if fields.len() > 9 && keep(&fields) {
                kept.push(fields[9].to_owned());
            }
        }
    }
    let mut own = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                && kept.iter().any(|k| k == inode)
            {
                own.push(inode.to_owned());
            }
        }
    }
    own
}

/// The inodes of the listening TCP sockets of process `pid`.
fn listening_sockets(pid: u32) -> Vec<String> {
    // st 0A is LISTEN.
    sockets_of(pid, |fields| fields[3] == "0A")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_empty_metrics_listen_leaves_the_daemon_with_no_listening_socket() {
    let sim = spawn_sim(quick_sim()).await;
    // The control: with an address, the same look finds the listener.
    let on = observed_env(&sim, "");
    let (daemon, _) = spawn_observed(&on);
    assert_eq!(listening_sockets(daemon.child.id()).len(), 1);
    on.stop(daemon);

    let off = Env::new(&sim.handle.base_url(), "[metrics]\nlisten = \"\"\n");
    let mut daemon = off.spawn();
    off.drop_file("n.jsonl", requests("n", 2, "gpt-4o-mini").as_bytes());
    off.wait_finished(1, Duration::from_secs(30), &mut daemon)
        .await;
    assert_eq!(listening_sockets(daemon.child.id()), Vec::<String>::new());
    let log = off.stop(daemon);
    assert!(!log.iter().any(|l| l.contains("metrics endpoint listening")));
}

#[test]
fn a_metrics_port_in_use_stops_the_start_with_exit_78_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let sandbox = crate::support::Sandbox::new();
    let config = sandbox.write_config(&format!("[metrics]\nlisten = \"{addr}\"\n"));
    let out = command(Some(&config))
        .arg("run")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "batchwatch: invalid configuration: `metrics.listen`: cannot listen on {addr}: the port is in use"
        )),
        "{stderr}"
    );
}
