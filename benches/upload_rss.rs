//! Peak memory of the API client while it uploads a large batch file.
//!
//! ```text
//! cargo bench --bench upload_rss                 # 150 MB
//! cargo bench --bench upload_rss -- --mb 400     # any size (the simulator takes up to 512 MB)
//! ```
//!
//! The bench writes a JSONL file of valid batch requests to a temporary directory, starts
//! `batchwatch sim` as a separate process (cargo builds the `batchwatch` binary for benches and
//! passes its path as `CARGO_BIN_EXE_batchwatch`, so no path is guessed and the simulator's own
//! memory is not counted here), uploads the file with [`batchwatch::api::Client`], and prints
//! this process's peak resident set (`VmHWM` in /proc/self/status) before and after, and the
//! throughput. The client streams the file from disk, so the peak should not move with `--mb`.

use std::time::Instant;

use anyhow::{Context, bail};
use batchwatch::api::{ApiKey, Client};
use batchwatch::config::Settings;

#[path = "../tests/it/support/bigfile.rs"]
mod bigfile;
#[path = "support/procs.rs"]
mod procs;

use procs::{Simulator, status_kib};

/// The key the bench sends; the simulator accepts any non-empty key by default.
const KEY: &str = "sk-bench-upload-rss";

fn main() -> anyhow::Result<()> {
    let megabytes = megabytes_from_args()?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let path = dir.path().join("upload-rss.jsonl");
    let started = Instant::now();
    let size = bigfile::write_jsonl(&path, megabytes * 1_000_000)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "generated {} ({:.1} MB) in {:.1}s",
        path.display(),
        mb(size),
        started.elapsed().as_secs_f64()
    );

    // Killing it at the end is enough: its files are under the temporary directory.
    let sim = Simulator::start(
        Simulator::command(env!("CARGO_BIN_EXE_batchwatch"))
            .arg("--data-dir")
            .arg(dir.path().join("sim")),
    )?;

    let mut settings = Settings::load_from(None, [])?;
    settings.api.base_url = sim.base_url.clone();
    let client = Client::new(
        &settings.api,
        &settings.limits,
        ApiKey::new(KEY).map_err(anyhow::Error::msg)?,
    )?;
    let runtime = batchwatch::process::runtime()?;

    let before = status_kib(None, "VmHWM")?;
    let started = Instant::now();
    let file = runtime.block_on(client.upload_file(&path, 0..size, "upload-rss.jsonl"))?;
    let elapsed = started.elapsed();
    let after = status_kib(None, "VmHWM")?;

    if file.bytes != Some(size) {
        bail!(
            "the simulator stored {:?} bytes, not the {size} sent",
            file.bytes
        );
    }
    println!(
        "uploaded {} as {} in {:.2}s: {:.1} MB/s",
        path.display(),
        file.id,
        elapsed.as_secs_f64(),
        mb(size) / elapsed.as_secs_f64()
    );
    println!(
        "peak RSS (VmHWM) before upload: {:.1} MiB",
        before as f64 / 1024.0
    );
    println!(
        "peak RSS (VmHWM) after upload:  {:.1} MiB",
        after as f64 / 1024.0
    );
    println!(
        "growth during a {:.0} MB upload: {:.1} MiB",
        mb(size),
        after.saturating_sub(before) as f64 / 1024.0
    );
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

/// `--mb N` from the command line (cargo bench also passes `--bench`, which is ignored).
fn megabytes_from_args() -> anyhow::Result<u64> {
    let mut args = std::env::args().skip(1);
    let mut megabytes = 150;
    while let Some(arg) = args.next() {
        if arg == "--mb" {
            let value = args.next().context("--mb needs a number")?;
            megabytes = value
                .parse()
                .with_context(|| format!("--mb {value:?} is not a whole number"))?;
        }
    }
    Ok(megabytes)
}
