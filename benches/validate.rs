//! Throughput and peak memory of input-file validation, the pass every file gets before
//! anything is uploaded.
//!
//! ```text
//! cargo bench --bench validate                 # 200 MB, the OpenAI file-size limit
//! cargo bench --bench validate -- --mb 50      # any size
//! ```
//!
//! The file is validated as the daemon does with `batch.split_oversized = true` (one pass over
//! the whole file, cut into parts of at most 50,000 requests and 200 MB), and the bench prints
//! MB/s, the CPU time it took (the file is hashed on a second thread while its lines are
//! checked, so it exceeds the elapsed time) and this process's peak resident memory (`VmHWM`)
//! before and after. Memory grows with the number of distinct `custom_id`s (they must be
//! unique), not with the file's size.

use std::time::Instant;

use anyhow::Context;
use batchwatch::batchfile::{self, Expect, Limits};

#[path = "../tests/it/support/bigfile.rs"]
mod bigfile;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time of this process, all its threads, in seconds.
fn cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `now` is.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mb: u64 = match args.iter().position(|a| a == "--mb") {
        Some(i) => args
            .get(i + 1)
            .context("--mb needs a number")?
            .parse()
            .context("--mb needs a number")?,
        None => 200,
    };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("validate.jsonl");
    let size = bigfile::write_jsonl(&path, mb * 1_000_000)?;
    let before = peak_rss_kib();
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let limits = Limits {
        max_requests: 50_000,
        max_bytes: 200_000_000,
    };
    let summary = batchfile::validate(
        std::fs::File::open(&path)?,
        Expect {
            format: batchfile::Format::OpenAi,
            endpoint: None,
            limits,
            split: true,
        },
    )
    .map_err(|v| anyhow::anyhow!("the generated file is invalid: {v}"))?;
    let took = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "validated {:.1} MB ({} requests, {} parts) in {took:.3}s: {:.0} MB/s; CPU {cpu:.3}s ({:.0} MB per CPU-second)",
        size as f64 / 1e6,
        summary.requests,
        summary.parts.len(),
        size as f64 / 1e6 / took,
        size as f64 / 1e6 / cpu
    );
    println!(
        "peak RSS: {:.1} MiB before, {:.1} MiB after",
        before as f64 / 1024.0,
        peak_rss_kib() as f64 / 1024.0
    );
    Ok(())
}
