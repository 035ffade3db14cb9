//! `batchwatch sim`: the command line of the simulator, and running it until a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use secrecy::SecretString;

use crate::model::{Faults, ListOrder, RetryAfter, SimConfig};
use crate::server::start;
use batchwatch_core::batchfile::Limits;
use batchwatch_core::config::LogFormat;

fn secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s))
}

fn log_format(s: &str) -> Result<LogFormat, String> {
    LogFormat::try_from(s.to_owned())
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a share between 0 and 1")),
    }
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f >= 0.0 && f.is_finite() => Ok(f),
        _ => Err(format!("{s:?} is not a non-negative number")),
    }
}

/// Run the simulated OpenAI Batch and Files API (durations are simulated seconds).
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    /// Accept only this API key (default: any non-empty key).
    #[arg(long, value_name = "KEY", value_parser = secret)]
    pub api_key: Option<SecretString>,
    /// Keep files here (default: a temporary directory removed at exit), and the state too.
    ///
    /// With a data dir, a clean stop (SIGTERM, SIGINT) saves the state (files, batches and
    /// their histories, ids, counters) to PATH/state.json, and the next start loads it. The
    /// simulated clock resumes at its saved reading: the time the simulator was down does not
    /// count. Faults, --time-scale and the durations come from the new command line, and
    /// --start-time is ignored when a state is loaded. After a crash it starts empty.
    #[arg(long, value_name = "PATH")]
    pub data_dir: Option<PathBuf>,
    /// Simulated seconds per real second (0 stops the clock; move it with the admin API).
    #[arg(long, value_name = "X", default_value_t = 1.0, value_parser = non_negative)]
    pub time_scale: f64,
    /// Seed of every random choice (default: random, printed at start).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Simulated clock at start, in unix seconds (default: now).
    #[arg(long, value_name = "UNIX")]
    pub start_time: Option<i64>,
    /// How long a batch is validating.
    #[arg(long, value_name = "S", default_value_t = SimConfig::default().validating_secs, value_parser = non_negative)]
    pub validating_secs: f64,
    /// How long a batch is in progress (plus --request-secs per request).
    #[arg(long, value_name = "S", default_value_t = SimConfig::default().in_progress_secs, value_parser = non_negative)]
    pub in_progress_secs: f64,
    /// Added in-progress time per request.
    #[arg(long, value_name = "S", default_value_t = SimConfig::default().request_secs, value_parser = non_negative)]
    pub request_secs: f64,
    /// How long a batch is finalizing.
    #[arg(long, value_name = "S", default_value_t = SimConfig::default().finalizing_secs, value_parser = non_negative)]
    pub finalizing_secs: f64,
    /// How long a batch is cancelling.
    #[arg(long, value_name = "S", default_value_t = SimConfig::default().cancelling_secs, value_parser = non_negative)]
    pub cancelling_secs: f64,
    /// A batch not done this long after creation expires.
    #[arg(long, value_name = "S", default_value_t = SimConfig::default().completion_window_secs, value_parser = non_negative)]
    pub completion_window_secs: f64,
    /// Most requests in one input file (Azure: 100000).
    #[arg(long, value_name = "N", default_value_t = SimConfig::default().limits.max_requests)]
    pub max_requests: u64,
    /// Most bytes in one input file.
    #[arg(long, value_name = "BYTES", default_value_t = SimConfig::default().limits.max_bytes)]
    pub max_bytes: u64,
    /// Share of requests inside a batch that fail (into the error file).
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = share)]
    pub request_failure_rate: f64,
    /// Share of API responses that are 429 rate_limit_exceeded.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = share)]
    pub rate_limit: f64,
    /// Delay header of those 429s: none, 2 or 2s (Retry-After), 1500ms (retry-after-ms), date+3.
    #[arg(long, value_name = "FORM", default_value = "1")]
    pub retry_after: RetryAfter,
    /// Share of API responses that are 429 insufficient_quota.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = share)]
    pub quota: f64,
    /// Share of API responses that are 500.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = share)]
    pub server_error: f64,
    /// Share of API responses that are 502 with an HTML body.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = share)]
    pub bad_gateway: f64,
    /// Real milliseconds added to every API response.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of creates (batches, files) carried out but answered by a dropped connection.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = share)]
    pub drop_after_create: f64,
    /// Share of file downloads cut off halfway.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = share)]
    pub broken_download: f64,
    /// Share of batches that stay in finalizing forever.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = share)]
    pub stuck_finalizing: f64,
    /// Share of batches that vanish (404) --vanish-after-secs after creation.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = share)]
    pub vanish: f64,
    /// When vanishing batches disappear.
    #[arg(long, value_name = "S", default_value_t = Faults::default().vanish_after_secs, value_parser = non_negative)]
    pub vanish_after_secs: f64,
    /// Fail batches with token_limit_exceeded while more than N tokens are enqueued per model.
    #[arg(long, value_name = "N")]
    pub token_limit: Option<u64>,
    /// The order of the batch list: newest-first (as the real service), or shuffled (a fixed
    /// random order that still paginates completely, each batch on exactly one page).
    #[arg(long, value_name = "ORDER", value_enum, default_value_t = ListOrder::NewestFirst)]
    pub list_order: ListOrder,
    /// Batches of another tool in the same account, created alongside clients' batches
    /// (--foreign-per-create after each one, until N exist), with no batchwatch metadata.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub foreign_batches: u64,
    /// How many foreign batches follow each batch a client creates.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub foreign_per_create: u64,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = log_format)]
    pub log_format: LogFormat,
}

impl From<&SimArgs> for SimConfig {
    fn from(args: &SimArgs) -> SimConfig {
        SimConfig {
            time_scale: args.time_scale,
            start_time: args.start_time,
            seed: args.seed,
            api_key: args.api_key.clone(),
            data_dir: args.data_dir.clone(),
            validating_secs: args.validating_secs,
            in_progress_secs: args.in_progress_secs,
            request_secs: args.request_secs,
            finalizing_secs: args.finalizing_secs,
            cancelling_secs: args.cancelling_secs,
            completion_window_secs: args.completion_window_secs,
            limits: Limits {
                max_requests: args.max_requests,
                max_bytes: args.max_bytes,
            },
            faults: Faults {
                rate_limit: args.rate_limit,
                retry_after: args.retry_after,
                quota: args.quota,
                server_error: args.server_error,
                bad_gateway: args.bad_gateway,
                latency_ms: args.latency_ms,
                drop_after_create: args.drop_after_create,
                broken_download: args.broken_download,
                stuck_finalizing: args.stuck_finalizing,
                vanish: args.vanish,
                vanish_after_secs: args.vanish_after_secs,
                request_failure_rate: args.request_failure_rate,
                token_limit: args.token_limit,
                ..Faults::default()
            },
            list_order: args.list_order,
            foreign_batches: args.foreign_batches,
            foreign_per_create: args.foreign_per_create,
        }
    }
}

/// Runs the simulator until SIGTERM or SIGINT, then stops cleanly.
pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    let runtime = batchwatch_core::process::runtime()?;
    runtime.block_on(async {
        // Caught from before the banner: a script that reads it and sends SIGTERM at once
        // must get a clean stop (the state saved), not the default action.
        let mut signals = batchwatch_core::process::Signals::install(false)?;
        let handle = start(args.listen, SimConfig::from(&args)).await?;
        // Tests and scripts read the address from the first line. Nobody has to read the rest,
        // or even keep stdout open: a write error must not stop a server, so it is ignored.
        let banner = format!(
            "listening on {}\nazure base url: {}\nadmin api: {}\nseed: {}\ndata dir: {}\n",
            handle.base_url(),
            handle.azure_base_url(),
            handle.admin_url(),
            handle.seed(),
            handle.data_dir().display()
        );
        let _ = batchwatch_core::process::emit(&banner);
        signals.recv().await;
        tracing::info!("signal received; shutting down");
        handle.shutdown().await
    })?;
    // Do not wait for a file still being written in the background: a temporary data dir is
    // going away, and a kept one was waited for before the state was saved.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(ExitCode::SUCCESS)
}
