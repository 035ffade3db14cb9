//! Latency of the simulator's batch list and retrieve with a large fleet.
//!
//! ```text
//! cargo bench --bench sim_pages                          # 20,000 batches, both list orders
//! cargo bench --bench sim_pages -- --batches 2000        # any fleet size
//! cargo bench --bench sim_pages -- --sim-bin PATH        # another build of batchwatch
//! ```
//!
//! For each list order the bench starts `batchwatch sim` as a separate process with its clock
//! stopped, uploads one small input file and creates the batches on it (32 creates in flight),
//! then walks the whole list with `limit=100`, timing every page, and retrieves 2,000 batches
//! picked at random, timing each. One client, one request at a time, over loopback. A page
//! should cost the same at the head of the list as at its end: the figures printed for the
//! first and the last ten pages of the walk show whether it does. A build without
//! `--list-order` (given with `--sim-bin`) is measured in creation order only.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

#[path = "support/procs.rs"]
mod procs;

use procs::Simulator;

/// The key the bench sends; the simulator accepts any non-empty key by default.
const KEY: &str = "sk-bench-sim-pages";
const PAGE: usize = 100;
const RETRIEVES: usize = 2000;
const IN_FLIGHT: usize = 32;

struct Args {
    batches: usize,
    sim_bin: String,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        batches: 20_000,
        sim_bin: env!("CARGO_BIN_EXE_batchwatch").to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--batches" => {
                let value = it.next().context("--batches needs a number")?;
                args.batches = value
                    .parse()
                    .with_context(|| format!("--batches {value:?} is not a whole number"))?;
            }
            "--sim-bin" => args.sim_bin = it.next().context("--sim-bin needs a path")?,
            // cargo bench passes --bench; anything else is a mistake worth naming.
            "--bench" => {}
            other => bail!("unknown argument {other:?} (known: --batches N, --sim-bin PATH)"),
        }
    }
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let shuffled_known = Command::new(&args.sim_bin)
        .args(["sim", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--list-order"))
        .unwrap_or(false);
    let mut orders = vec!["newest-first"];
    if shuffled_known {
        orders.push("shuffled");
    }
    println!(
        "batch list and retrieve with {} batches ({}), one request at a time",
        args.batches, args.sim_bin
    );
    for order in orders {
        runtime.block_on(measure(&args, order, shuffled_known))?;
    }
    Ok(())
}

async fn measure(args: &Args, order: &str, pass_order: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut command = Simulator::command(&args.sim_bin);
    command.args(["--time-scale", "0", "--seed", "1"]);
    if pass_order {
        command.args(["--list-order", order]);
    }
    let sim = Simulator::start(command.arg("--data-dir").arg(dir.path().join("sim")))?;
    let http = reqwest::Client::new();

    let lines: String = (0..10)
        .map(|i| {
            json!({"custom_id": format!("r{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}})
            .to_string()
                + "\n"
        })
        .collect();
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(lines.into_bytes()).file_name("in.jsonl"),
        );
    let file: Value = http
        .post(format!("{}/files", sim.base_url))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let file_id = file["id"]
        .as_str()
        .context("the upload has no id")?
        .to_owned();

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..IN_FLIGHT {
        let (http, url, file_id) = (
            http.clone(),
            format!("{}/batches", sim.base_url),
            file_id.clone(),
        );
        let count = args.batches / IN_FLIGHT + usize::from(worker < args.batches % IN_FLIGHT);
        tasks.spawn(async move {
            let mut ids = Vec::with_capacity(count);
            for k in 0..count {
                let body = json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                    "completion_window": "24h", "metadata": {"batchwatch_job_id": format!("job_{worker}_{k}")}});
                let batch: Value = http
                    .post(&url)
                    .bearer_auth(KEY)
                    .json(&body)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                ids.push(batch["id"].as_str().unwrap_or_default().to_owned());
            }
            anyhow::Ok(ids)
        });
    }
    let mut ids = Vec::with_capacity(args.batches);
    while let Some(done) = tasks.join_next().await {
        ids.extend(done??);
    }
    let create_secs = started.elapsed().as_secs_f64();

    let mut page_times = Vec::new();
    let mut listed = 0;
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{}/batches?limit={PAGE}", sim.base_url);
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let t = Instant::now();
        let page = get(&http, &url).await?;
        page_times.push(t.elapsed());
        listed += page["data"].as_array().map_or(0, Vec::len);
        after = page["last_id"].as_str().map(str::to_owned);
        if page["has_more"] != true {
            break;
        }
    }
    if listed != args.batches {
        bail!(
            "the walk listed {listed} batches, not the {} created",
            args.batches
        );
    }

    let mut retrieve_times = Vec::with_capacity(RETRIEVES);
    let mut rng = fastrand::Rng::with_seed(1);
    for _ in 0..RETRIEVES {
        let id = &ids[rng.usize(..ids.len())];
        let t = Instant::now();
        get(&http, &format!("{}/batches/{id}", sim.base_url)).await?;
        retrieve_times.push(t.elapsed());
    }

    let ends = 10.min(page_times.len());
    println!(
        "{order:>12}: created {} batches in {create_secs:.1}s ({:.0}/s); {} pages of {PAGE}: \
         median {}, p99 {}, max {}; first {ends} pages {} each, last {ends} {} each; \
         retrieve: median {}, p99 {}",
        args.batches,
        args.batches as f64 / create_secs,
        page_times.len(),
        ms(quantile(&page_times, 0.5)),
        ms(quantile(&page_times, 0.99)),
        ms(quantile(&page_times, 1.0)),
        ms(mean(&page_times[..ends])),
        ms(mean(&page_times[page_times.len() - ends..])),
        ms(quantile(&retrieve_times, 0.5)),
        ms(quantile(&retrieve_times, 0.99)),
    );
    Ok(())
}

/// A GET with the key; the JSON answer, which must be a success.
async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    Ok(http
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

fn quantile(times: &[Duration], q: f64) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn mean(times: &[Duration]) -> Duration {
    times.iter().sum::<Duration>() / times.len().max(1) as u32
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
