//! `batchwatch demo`: the whole lifecycle on a fresh machine, with no API key and no
//! configuration. It starts the simulator in-process with fast simulated time, writes sample
//! request files (one of them invalid, one that passes its deadline) into a fresh queue, runs
//! the daemon, shows the jobs moving to their end, then prints the final status and where the
//! results are.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::api::ApiKey;
use crate::clock::Clock;
use crate::config::{Dur, ModelPrice, Settings};
use crate::daemon::Daemon;
use crate::model::JobState;
use crate::process::emit;
use crate::report;
use crate::sim::{self, SimConfig};
use crate::store::jobs;
use crate::store::prelude::*;

/// `batchwatch demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where to put the queue and the database (default: a new directory under the system's
    /// temporary directory, kept afterwards so you can look at the results).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// A sample file: name, content, optional sidecar, and what the demo says about it.
struct Sample {
    name: &'static str,
    content: String,
    sidecar: Option<&'static str>,
    about: String,
}

fn chat(tag: &str, n: usize, prompt: &str) -> String {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "custom_id": format!("{tag}-{i}"),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("{prompt} #{i}")}]},
            })
            .to_string()
                + "\n"
        })
        .collect()
}

fn samples() -> Vec<Sample> {
    let embeddings: String = (0..10)
        .map(|i| {
            serde_json::json!({
                "custom_id": format!("doc-{i}"),
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "text-embedding-3-small", "input": format!("document number {i}")},
            })
            .to_string()
                + "\n"
        })
        .collect();
    let broken = chat("dup", 3, "hello") + &chat("dup", 1, "hello again");
    vec![
        Sample {
            name: "reviews.jsonl",
            content: chat("review", 20, "Classify the sentiment of review"),
            sidecar: None,
            about: "20 chat requests".into(),
        },
        Sample {
            name: "embeddings.jsonl",
            content: embeddings,
            sidecar: None,
            about: "10 embedding requests".into(),
        },
        Sample {
            name: "summaries.jsonl",
            content: chat("summary", 30, "Summarise article"),
            sidecar: Some("[metadata]\nproject = \"demo\"\n"),
            about: "30 chat requests, with metadata in a sidecar".into(),
        },
        Sample {
            name: "broken.jsonl",
            content: broken,
            sidecar: None,
            about: "invalid: a custom_id appears twice".into(),
        },
        Sample {
            name: "slow.jsonl",
            content: chat("slow", 400, "Translate paragraph"),
            sidecar: Some("deadline = \"5s\"\n"),
            about: "400 requests with a 5s deadline: it will not finish in time".into(),
        },
    ]
}

/// The simulator's pace: a batch of 20 requests takes about 2.5 seconds; one of 400, about 8.
fn sim_config() -> SimConfig {
    SimConfig {
        time_scale: 60.0,
        seed: Some(2026),
        validating_secs: 30.0,
        in_progress_secs: 60.0,
        request_secs: 1.0,
        finalizing_secs: 30.0,
        cancelling_secs: 30.0,
        faults: sim::Faults {
            request_failure_rate: 0.05,
            ..sim::Faults::default()
        },
        ..SimConfig::default()
    }
}

fn settings(dir: &Path, base_url: &str) -> anyhow::Result<Settings> {
    let mut s = Settings::load_from(None, [])?;
    s.queue.dir = dir.join("queue");
    s.queue.scan_interval = Dur(Duration::from_millis(200));
    s.queue.settle_time = Dur(Duration::from_millis(100));
    s.database.path = dir.join("state.db");
    s.api.base_url = base_url.to_owned();
    s.poll.min_interval = Dur(Duration::from_millis(200));
    s.poll.max_interval = Dur(Duration::from_secs(1));
    s.daemon.shutdown_timeout = Dur(Duration::from_secs(3));
    // The simulator is local: no need for the default's politeness towards a real service.
    s.limits.requests_per_second = 100.0;
    // Nothing scrapes a demo, and a service on this machine may hold the default port.
    s.metrics.listen = String::new();
    // List prices (US dollars per million tokens), batches at half: the COST column shows
    // what [pricing] is for.
    s.pricing.insert(
        "gpt-4o-mini".into(),
        ModelPrice {
            input: 0.15,
            cached_input: Some(0.075),
            output: 0.60,
            batch_discount: 0.5,
        },
    );
    s.pricing.insert(
        "text-embedding-3-small".into(),
        ModelPrice {
            input: 0.02,
            cached_input: None,
            output: 0.0,
            batch_discount: 0.5,
        },
    );
    s.validate()?;
    Ok(s)
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = match args.dir {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!(
            "batchwatch-demo-{}",
            jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S")
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let sim = sim::start(SocketAddr::from(([127, 0, 0, 1], 0)), sim_config())
        .await
        .context("starting the simulator")?;
    let settings = settings(&dir, &sim.base_url())?;
    emit(&format!(
        "batchwatch demo\n  simulated Batch API  {}\n  queue                {}\n  database             {}\n\n",
        sim.base_url(),
        settings.queue.dir.display(),
        settings.database.path.display()
    ))?;

    let key = ApiKey::new("sk-demo-simulator-key").map_err(anyhow::Error::msg)?;
    let mut daemon = Daemon::start(settings.clone(), key, Clock::System).await?;
    let incoming = settings.queue.dir.join("incoming");
    let samples = samples();
    for s in &samples {
        if let Some(sidecar) = s.sidecar {
            std::fs::write(incoming.join(format!("{}.toml", s.name)), sidecar)?;
        }
        let part = incoming.join(format!(".{}.part", s.name));
        std::fs::write(&part, &s.content)?;
        std::fs::rename(&part, incoming.join(s.name))?;
        emit(&format!("  dropped {:<18} {}\n", s.name, s.about))?;
    }
    emit("\n")?;

    let store = daemon.ctx.store.clone();
    let started = Instant::now();
    let watch = async {
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Ok(rows) = store.overview(&jobs::Filter::default(), 100).await else {
                continue;
            };
            for row in rows.iter().rev() {
                let shown = match (&row.remote_status, row.state.is_terminal()) {
                    (Some(remote), false) => format!("{} (batch {remote})", row.state),
                    _ => row.state.to_string(),
                };
                if last.get(&row.file_name) != Some(&shown) {
                    // A failed write shows again in the summary, which reports it.
                    let _ = emit(&format!(
                        "  {:>5.1}s  {:<18} {shown}\n",
                        started.elapsed().as_secs_f64(),
                        row.file_name
                    ));
                    last.insert(row.file_name.clone(), shown);
                }
            }
            if rows.len() == samples.len() && rows.iter().all(|r| r.state.is_terminal()) {
                return "done";
            }
        }
    };
    let interrupted = tokio::select! {
        _ = daemon.run_until(watch) => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    daemon.shutdown().await;
    sim.shutdown().await?;

    let reader = crate::store::Store::open(
        &settings.database.path,
        Duration::from_secs(5),
        crate::store::Access::ReadOnly,
    )
    .await?;
    let rows = reader.overview(&jobs::Filter::default(), 100).await?;
    let counts = reader.job_state_counts().await?;
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let costs = reader.job_costs(&ids).await?;
    reader.close().await;
    let mut summary = format!(
        "\n{}\n",
        report::status(
            &rows,
            &counts,
            &costs,
            &[],
            jiff::Timestamp::now(),
            &report::Look::for_stdout(false)
        )
    );
    for row in &rows {
        let place = match (&row.results_dir, row.state) {
            (Some(results), _) => {
                format!("results in {}", settings.queue.dir.join(results).display())
            }
            (None, JobState::Rejected) => format!("why: {}", row.reason.as_deref().unwrap_or("-")),
            _ => String::new(),
        };
        summary += &format!("  {:<18} {:<10} {}\n", row.file_name, row.state, place);
    }
    let queue = settings.queue.dir.display();
    let db = settings.database.path.display();
    summary += &format!(
        "\nInput files are in {queue}/done and {queue}/failed (each with a .reason.json).\n\
         Estimated costs come from [pricing] in the configuration (the demo sets list prices).\n\
         Look around with:  batchwatch status --database {db}\n\
         \x20                  batchwatch show reviews.jsonl --database {db}\n\
         Remove it all with: rm -r {}\n\
         Against your own service: batchwatch doctor checks the key, api.base_url, the clock\n\
         \x20                          and the directories before the first file.\n",
        dir.display()
    );
    emit(&summary)?;
    if interrupted {
        anyhow::bail!("interrupted");
    }
    Ok(())
}
