//! The command line: parses arguments and calls into the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::{ConfigError, DatabaseLocation, Settings, StuckAfter};
use crate::daemon::cancel;
use crate::model::JobState;
use crate::preflight::{self, Checked};
use crate::printable::{escape, escape_lines};
use crate::process::{emit, runtime};
use crate::report;
use crate::store::prelude::*;
use crate::store::{Access, Lease, Store, StoreError, batches, jobs};
use crate::telemetry::Logging;

#[derive(Debug, Parser)]
#[command(
    name = "batchwatch",
    version,
    about = "Runs OpenAI-style Batch API jobs from a queue directory",
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP
)]
pub struct Cli {
    /// Configuration file (default: /etc/batchwatch/batchwatch.toml when it exists).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Run,
    /// Watch the whole lifecycle against the built-in simulator: no API key, no configuration.
    Demo(crate::demo::DemoArgs),
    /// List jobs: state, remote status, request counts, age, deadline.
    Status(StatusArgs),
    /// Everything about one job (by job id, remote batch id or local batch number), or about
    /// every job of a file (by its name or path, such as done/NAME.jsonl; newest first).
    Show(ShowArgs),
    /// The status history of one batch (by remote batch id or local batch number).
    History(HistoryArgs),
    /// Check the configuration and print the one in effect (the API key is never printed).
    CheckConfig,
    /// Check what the daemon will meet, one line each: the configuration, the key (its file's
    /// mode, and the service accepting it), the Batch and Files API at api.base_url, the
    /// clock against the service's, the queue tree and database writable by this user, free
    /// space, the metrics port. Exits 1 when any check fails; never prints the key.
    Doctor(DoctorArgs),
    /// Print the example configuration, which is also the built-in defaults.
    PrintDefaultConfig,
    /// Serve the status pages (jobs, a job, a batch) from the database, read-only, without
    /// running the daemon: on metrics.listen, or --listen; until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Ask the running daemon to cancel a job (by job id or batch id); it follows the batch to
    /// its end and keeps the partial results.
    Cancel(CancelArgs),
    /// Create the database or bring its schema up to date, then exit.
    Migrate,
    /// List the batch files on the service that batchwatch's finished (or unknown) jobs left
    /// behind; with --delete, delete them. Never a file of an unfinished job, one that any batch
    /// still running uses (another tool's too), or one batchwatch cannot tie to itself by name
    /// or batch metadata.
    GcRemote(GcRemoteArgs),
    /// Remove what finished jobs left longer ago than retention.* allows: their files in done/
    /// and failed/, their results, their database rows (the daemon does this daily).
    Prune(PruneArgs),
    /// Write the requests of a finished job that no job of its chain (the jobs resubmitted
    /// from one original file) has completed as a new file (and sidecar) into incoming/, as a
    /// job linked to this one. Refused, naming it, while a resubmission of the chain is in
    /// flight (a file in incoming/ or a job not yet ended): no request is paid for twice
    /// unless --force says so.
    Resubmit(ResubmitArgs),
    /// Run the built-in simulator of the OpenAI Batch and Files API.
    Sim(Box<crate::sim::SimArgs>),
    /// Print a shell completion script: `source <(batchwatch completions bash)`.
    Completions(CompletionsArgs),
    /// Write the manual pages (batchwatch.1, one per command, batchwatch.toml.5) into a
    /// directory.
    #[command(hide = true)]
    Man(ManArgs),
}

/// The start of `batchwatch --help` and batchwatch(1)'s description.
const LONG_ABOUT: &str = "\
Runs OpenAI-style Batch API jobs from a queue directory.

Drop a JSONL file of requests into the queue's incoming/ directory: batchwatch validates it,
uploads it, creates a batch, polls it until it ends, cancels it at its deadline, downloads the
results, and records every status change in SQLite. `batchwatch run` is the daemon (the
systemd service batchwatch.service); the other commands query and steer it.";

/// The end of `batchwatch --help` and of batchwatch(1): where things are, and the exit codes.
/// Each line is a sentence: the manual page fills them into one paragraph.
const AFTER_LONG_HELP: &str = "\
Configuration: /etc/batchwatch/batchwatch.toml (`batchwatch print-default-config` shows every key).
State: the queue in /var/lib/batchwatch/queue/ and the database /var/lib/batchwatch/state.db.
Exit codes: 0 success, 1 error (or a failed check of doctor), 65 database migrated by a newer batchwatch, 78 invalid configuration (or a path it names that this user cannot use).";

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Where to write the pages (created when missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Where the status commands find the database.
#[derive(Debug, Args)]
pub struct DatabaseArg {
    /// The database: a SQLite file, sqlite:PATH or a postgres:// URL (default: database.url or
    /// database.path from the configuration).
    #[arg(long, value_name = "PATH|URL")]
    pub database: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only jobs in this state.
    #[arg(long, value_parser = StateParser)]
    pub state: Option<JobState>,
    /// Only jobs whose file name matches this glob ("eval-*.jsonl"; quote it for the shell).
    #[arg(long, value_name = "GLOB")]
    pub file: Option<String>,
    /// Only jobs claimed this long ago or less ("2h", "7d").
    #[arg(long, value_name = "DURATION")]
    pub since: Option<crate::config::Dur>,
    /// Only jobs of this model.
    #[arg(long)]
    pub model: Option<String>,
    /// At most this many jobs, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Show file names and reasons whole instead of cutting them short.
    #[arg(long)]
    pub wide: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// List the daemons a PostgreSQL database records (their leases and the jobs each holds)
    /// instead of the jobs.
    #[arg(long)]
    pub instances: bool,
    #[command(flatten)]
    pub db: DatabaseArg,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen, as IP:PORT (default: metrics.listen). Beyond loopback, the pages need
    /// metrics.pages_token_file.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<String>,
    #[command(flatten)]
    pub db: DatabaseArg,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A job id (job_…), a remote batch id (batch_…), a local batch number, or a file's name
    /// or path (NAME.jsonl, done/NAME.jsonl): every job of that file, newest first.
    pub id: String,
    /// Print JSON instead of text (for a file: an array of its jobs).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DatabaseArg,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// A remote batch id (batch_…) or a local batch number.
    pub id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DatabaseArg,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// A job id (job_…), a remote batch id (batch_…) or a local batch number.
    pub id: String,
    #[command(flatten)]
    pub db: DatabaseArg,
}

#[derive(Debug, Args)]
pub struct GcRemoteArgs {
    /// Only list what would be deleted (the default).
    #[arg(long, conflicts_with = "delete")]
    pub dry_run: bool,
    /// Delete the files listed as deletable.
    #[arg(long)]
    pub delete: bool,
    /// Only files older than this ("2d", "12h").
    #[arg(long, value_name = "DURATION", default_value = "2d")]
    pub older_than: crate::config::Dur,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ResubmitArgs {
    /// A job id (job_…), a remote batch id (batch_…) or a local batch number.
    pub id: String,
    /// Which undone requests: those never run (expired), those that failed, those that failed
    /// for a reason worth retrying (transient: a 408, 429 or 5xx), or those never run and
    /// those that failed (unfinished).
    #[arg(long, value_enum, default_value = "unfinished")]
    pub only: crate::daemon::housekeeping::resubmit::Only,
    /// Write them even when a job of the chain completed them since, or while a resubmission
    /// of the chain is in flight; says how many will run, and be paid, again.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON instead of lines: {"ok": bool, "checks": [{"check", "outcome", "detail"}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Only count what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Parses a job state, and lists the states for `--help`, the manual and completions.
#[derive(Debug, Clone, Copy)]
struct StateParser;

impl clap::builder::TypedValueParser for StateParser {
    type Value = JobState;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<JobState, clap::Error> {
        let parse = |s: &str| {
            s.parse::<JobState>().map_err(|_| {
                let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown job state {s:?}; expected one of: {}",
                    names.join(", ")
                )
            })
        };
        clap::builder::TypedValueParser::parse_ref(&parse, cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(JobState::ALL.iter().map(|state| {
            clap::builder::PossibleValue::new(state.as_str())
        })))
    }
}

/// Parses the command line, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if let Some(config_err) = err.downcast_ref::<ConfigError>() {
                if crate::telemetry::Logging::json() {
                    tracing::error!(error = %config_err, "configuration error");
                } else {
                    // A TOML parser's message is an excerpt of the file over several lines.
                    eprintln!("batchwatch: {}", escape_lines(&config_err.to_string()));
                }
                return ExitCode::from(crate::EXIT_CONFIG);
            }
            let message = crate::telemetry::join_causes(err.chain().map(ToString::to_string));
            if crate::telemetry::Logging::json() {
                tracing::error!(error = message, "stopped by an error");
            } else {
                eprintln!("batchwatch: error: {}", escape(&message));
            }
            if matches!(
                err.downcast_ref::<StoreError>(),
                Some(StoreError::NewerSchema { .. } | StoreError::Damaged { .. })
            ) {
                return ExitCode::from(crate::EXIT_NEWER_DATABASE);
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::PrintDefaultConfig => {
            emit(crate::config::DEFAULT_CONFIG)?;
        }
        Command::Sim(args) => {
            Logging::start().set_format(args.log_format);
            return crate::sim::run(*args);
        }
        Command::Completions(args) => emit(&completions(args.shell))?,
        Command::Man(args) => {
            let written = crate::manual::write_pages(&args.dir)?;
            let names: Vec<String> = written
                .iter()
                .map(|p| format!("{}\n", p.display()))
                .collect();
            emit(&names.concat())?;
        }
        Command::CheckConfig => {
            let checked = preflight::check(config)?;
            emit(&format!(
                "# The configuration is valid. In effect:
{}{}
",
                checked.as_written,
                key_line(&checked)
            ))?;
        }
        Command::Doctor(args) => {
            let checks = runtime()?.block_on(crate::doctor::run(config));
            let failed = crate::doctor::failed(&checks);
            if args.json {
                let report = serde_json::json!({"ok": !failed, "checks": checks});
                emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
            } else {
                emit(&crate::doctor::lines(&checks))?;
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Run => {
            // Up before the configuration is read, in text: an error in it is then the one
            // plain line `main` prints, and what follows is logged as `log.format` says.
            let logging = Logging::start();
            let Checked { settings, key, .. } = preflight::check(config)?;
            let key = key?;
            logging.set_format(settings.log.format);
            logging
                .set_level(&settings.log.level)
                .map_err(|e| crate::config::ConfigError::key("log.level", e))?;
            runtime()?.block_on(crate::daemon::run(
                settings,
                key,
                config.map(Path::to_path_buf),
                logging,
            ))?;
        }
        Command::Demo(args) => {
            // The demo tells its own story on stdout: the daemon's logs only warn.
            Logging::start().set_default_filter("warn");
            runtime()?.block_on(crate::demo::run(args))?;
        }
        Command::Migrate => {
            let settings = Settings::load(config)?;
            runtime()?.block_on(async {
                let store = Store::open_configured(&settings.database, Access::Migrate).await?;
                emit(&format!(
                    "database {} is at schema version {}\n",
                    store.place(),
                    store.schema_version().await?.unwrap_or(0)
                ))?;
                store.close().await;
                anyhow::Ok(())
            })?;
        }
        Command::Cancel(args) => {
            let out = runtime()?.block_on(async {
                let store = open_database(config, &args.db, Access::Write).await?;
                let job_id = resolve_job(&store, &args.id).await?;
                let now = crate::clock::format(crate::clock::Timestamp::now());
                let done = cancel::request(&store, &job_id, cancel::Reason::Operator, &now).await?;
                store.close().await;
                let job = done.job;
                anyhow::Ok(match (done.asked, job.state.is_terminal()) {
                    (true, _) => format!("cancel of {job_id} asked for; the daemon carries it out (batchwatch show {job_id})\n"),
                    (false, true) => format!("{job_id} is already {}; nothing to cancel\n", job.state),
                    (false, false) => format!("a cancel of {job_id} was already asked for ({})\n", job.cancel_reason.unwrap_or_default()),
                })
            })?;
            emit(&out)?;
        }
        Command::GcRemote(args) => {
            let Checked { settings, key, .. } = preflight::check(config)?;
            let out = runtime()?.block_on(gc_remote(&settings, key?, &args))?;
            emit(&out)?;
        }
        Command::Resubmit(args) => {
            use crate::daemon::housekeeping::resubmit::{self, Ask, Origin, Outcome, counts};
            let settings = Settings::load(config)?;
            let out = runtime()?.block_on(async {
                let store = Store::open_configured(&settings.database, Access::Write).await?;
                let job_id = resolve_job(&store, &args.id).await?;
                let queue = crate::queue::Queue::open(&settings.queue.dir)
                    .with_context(|| format!("opening {}", settings.queue.dir.display()))?;
                let ask = Ask {
                    only: args.only,
                    force: args.force,
                    origin: Origin::Cli,
                };
                let now = crate::clock::format(crate::clock::Timestamp::now());
                let outcome = resubmit::resubmit(&store, &Lease::SOLE, &queue, &job_id, ask, &now).await;
                store.close().await;
                let only = args.only.as_str();
                anyhow::Ok(match outcome? {
                    Outcome::Written(w) => {
                        let mut text = format!(
                            "{} ({} {only} requests of {job_id}) written; the daemon claims it as a job linked to {job_id}\n",
                            w.file, w.requests
                        );
                        if !w.left_out.is_empty() {
                            text += &format!("left out, already done in its chain: {}\n", counts(&w.left_out));
                        }
                        if !w.paid_again.is_empty() {
                            let n: u64 = w.paid_again.iter().map(|(_, n)| n).sum();
                            text += &format!("--force: {n} of them will run, and be paid, again: {}\n", counts(&w.paid_again));
                        }
                        text
                    }
                    Outcome::Nothing { left_out } if left_out.is_empty() => {
                        format!("{job_id} has no {only} requests; nothing written\n")
                    }
                    Outcome::Nothing { left_out } => format!(
                        "{job_id} has no {only} requests left undone in its chain (already done: {}); nothing written\n",
                        counts(&left_out)
                    ),
                    Outcome::Refused(refusal) => anyhow::bail!("{job_id} not resubmitted: {refusal}"),
                })
            })?;
            emit(&out)?;
        }
        Command::Prune(args) => {
            let settings = Settings::load(config)?;
            let out = runtime()?.block_on(async {
                let access = if args.dry_run {
                    Access::ReadOnly
                } else {
                    Access::Write
                };
                let store = Store::open_configured(&settings.database, access).await?;
                let queue = crate::queue::Queue::open(&settings.queue.dir)
                    .with_context(|| format!("opening {}", settings.queue.dir.display()))?;
                let pruned = crate::daemon::housekeeping::retention::prune(
                    &store,
                    &Lease::SOLE,
                    &queue,
                    &settings.retention,
                    crate::clock::Timestamp::now(),
                    args.dry_run,
                )
                .await?;
                store.close().await;
                anyhow::Ok(report::pruned(&pruned, &settings.retention, args.json))
            })?;
            emit(&out)?;
        }
        Command::Serve(args) => {
            let logging = Logging::start();
            let settings = Settings::load(config)?;
            logging.set_format(settings.log.format);
            runtime()?.block_on(serve(config, settings, &args))?;
        }
        Command::Status(args) => {
            let out = runtime()?.block_on(async {
                let store = open_for_reading(config, &args.db).await?;
                if args.instances {
                    let instances = store.instances().await?;
                    store.close().await;
                    return anyhow::Ok(match args.json {
                        true => report::json(&instances),
                        false => report::instances(&instances, store.file().is_some()),
                    });
                }
                let now = crate::clock::Timestamp::now();
                let filter = jobs::Filter {
                    state: args.state,
                    file: args.file.clone(),
                    since: args
                        .since
                        .map(|d| crate::clock::format(crate::clock::sub(now, d.get()))),
                    model: args.model.clone(),
                };
                let rows = store.overview(&filter, args.limit).await?;
                let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
                let costs = store.job_costs(&ids).await?;
                let stuck = store.stuck(&stuck_after(config), now).await?;
                let out = if args.json {
                    let rows: Vec<report::StatusRow> = rows
                        .iter()
                        .map(|job| report::StatusRow {
                            job,
                            usage: costs.iter().find(|c| c.job_id == job.id),
                            stuck: stuck.iter().filter(|s| s.job_id == job.id).collect(),
                        })
                        .collect();
                    report::json(&rows)
                } else {
                    let counts = store.job_state_counts().await?;
                    report::status(
                        &rows,
                        &counts,
                        &costs,
                        &stuck,
                        now,
                        &report::Look::for_stdout(args.wide),
                    )
                };
                store.close().await;
                anyhow::Ok(out)
            })?;
            emit(&out)?;
        }
        Command::Show(args) => {
            let out = runtime()?.block_on(async {
                let store = open_for_reading(config, &args.db).await?;
                let found = resolve_jobs(&store, &args.id).await?;
                let mut reports = Vec::new();
                for job_id in found.jobs() {
                    reports.push(report::job_report(&store, job_id, &stuck_after(config)).await?);
                }
                store.close().await;
                let now = crate::clock::Timestamp::now();
                let look = report::Look::for_stdout(false);
                anyhow::Ok(match (&found, args.json) {
                    (Found::Job(_), true) => report::json(&reports[0]),
                    (Found::File(_), true) => report::json(&reports),
                    (Found::Job(_), false) => report::show(&reports[0], now, &look),
                    (Found::File(ids), false) => {
                        let shown: Vec<String> = reports
                            .iter()
                            .map(|r| report::show(r, now, &look))
                            .collect();
                        format!(
                            "{} job{} of {}, newest first\n\n{}",
                            ids.len(),
                            if ids.len() == 1 { "" } else { "s" },
                            escape(&args.id),
                            shown.join("\n")
                        )
                    }
                })
            })?;
            emit(&out)?;
        }
        Command::History(args) => {
            let out = runtime()?.block_on(async {
                let store = open_for_reading(config, &args.db).await?;
                let submission = resolve_batch(&store, &args.id)
                    .await?
                    .with_context(|| format!("no batch {:?} in {}", args.id, store.place()))?;
                let rows = store.history(submission.id).await?;
                store.close().await;
                anyhow::Ok(if args.json {
                    report::json(&rows)
                } else {
                    report::history(&rows, &report::Look::for_stdout(false))
                })
            })?;
            emit(&out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `batchwatch gc-remote`: the survey, and with `--delete` the deletions, each recorded as an
/// intent first as the daemon's are.
async fn gc_remote(
    settings: &Settings,
    key: crate::api::ApiKey,
    args: &GcRemoteArgs,
) -> anyhow::Result<String> {
    use crate::daemon::housekeeping::remote;
    use crate::store::deletions;
    let client = crate::api::Client::new(&settings.api, &settings.limits, key)?;
    if client.is_anthropic() {
        anyhow::bail!(
            "gc-remote surveys the Files API, which Anthropic's Message Batches do not use: the \
             daemon deletes each ended batch once its results are on disk (cleanup.remote_files)"
        );
    }
    let access = if args.delete {
        Access::Write
    } else {
        Access::ReadOnly
    };
    let store = Store::open_configured(&settings.database, access).await?;
    let now = crate::clock::Timestamp::now();
    let mut found = remote::survey(&client, &store, args.older_than.get(), now).await?;
    let mut outcomes = Vec::new();
    if args.delete {
        for f in found.iter_mut().filter(|f| f.delete) {
            let stamp = crate::clock::format(crate::clock::Timestamp::now());
            let job = match &f.job_id {
                Some(id) => store.job(id).await?.map(|j| j.id),
                None => None,
            };
            let row = store
                .plan_deletion(
                    &Lease::SOLE,
                    &f.file_id,
                    job.as_deref(),
                    f.kind.unwrap_or("input"),
                    deletions::Origin::Gc,
                    &stamp,
                )
                .await?;
            let outcome = if row.state == "pending" {
                let done = remote::delete(
                    &client,
                    &store,
                    &Lease::SOLE,
                    &row,
                    crate::clock::Timestamp::now,
                    settings.backoff.failed_request.get(),
                )
                .await?;
                match done {
                    remote::Outcome::Done(d) => d.as_str().to_owned(),
                    remote::Outcome::Failed { error, .. } => format!("failed: {error}"),
                    remote::Outcome::Settled => "deleted by the daemon".to_owned(),
                }
            } else {
                // Recorded as done before, yet listed: send it again, as a repeat is harmless.
                match client.delete_file(&f.file_id).await {
                    Ok(_) => "deleted".to_owned(),
                    Err(crate::api::ApiError::NotFound { .. }) => "gone".to_owned(),
                    Err(e) => format!("failed: {e}"),
                }
            };
            outcomes.push((f.file_id.clone(), outcome));
        }
    }
    store.close().await;
    Ok(report::gc_remote(&found, &outcomes, args.delete, args.json))
}

/// `batchwatch serve`: the status pages from the database opened read-only, until a signal.
async fn serve(config: Option<&Path>, settings: Settings, args: &ServeArgs) -> anyhow::Result<()> {
    let mut metrics = settings.metrics.clone();
    // The pages are what this command serves, whatever metrics.pages says of the daemon's.
    metrics.pages = Some(true);
    let (key, addr) = match &args.listen {
        Some(text) => {
            let addr = text.parse().map_err(|_| {
                ConfigError::key(
                    "--listen",
                    format!("{text:?} is not an address and port such as \"127.0.0.1:9465\""),
                )
            })?;
            ("--listen", addr)
        }
        None => match metrics.address()? {
            Some(addr) => ("metrics.listen", addr),
            None => {
                return Err(ConfigError::key(
                    "metrics.listen",
                    "is empty: give the address to serve the pages on with --listen",
                )
                .into());
            }
        },
    };
    metrics.check_pages_guarded(key, addr)?;
    let token = crate::pages::PagesToken::configured(&metrics)?;
    let mut signals = crate::process::Signals::install(false)?;
    let store = open_for_reading(config, &args.db).await?;
    let pages = crate::pages::Pages {
        store: store.clone(),
        token,
        stuck_after: settings.alerts.stuck_after,
        gate: None,
    };
    let server = crate::metrics::server::serve(
        addr,
        key,
        crate::metrics::server::pages_routes(pages),
        &settings.limits,
        "status pages listening (read-only)",
    )?;
    let signal = signals.recv().await;
    tracing::info!(signal, "stopping");
    drop(server);
    store.close().await;
    Ok(())
}

/// The completion script for `shell`, generated from the command-line definition.
pub fn completions(shell: clap_complete::Shell) -> String {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "batchwatch", &mut script);
    String::from_utf8(script).expect("clap_complete writes UTF-8")
}

/// The `check-config` line about the API key: read, and from where; or, for a systemd
/// credential outside the service, that it could not be checked here.
fn key_line(checked: &Checked) -> String {
    let source = checked.settings.api.key_source();
    match &checked.key {
        Ok(key) => format!(
            "# API key: read from {source} ({} characters; value not shown)",
            key.char_count()
        ),
        Err(err) => format!(
            "# API key: NOT checked here: `{}`: {}",
            err.key.as_deref().unwrap_or("api"),
            err.problem
        ),
    }
}

/// Opens the database read-only for a status command: `--database`, else the configuration's.
async fn open_for_reading(config: Option<&Path>, arg: &DatabaseArg) -> anyhow::Result<Store> {
    open_database(config, arg, Access::ReadOnly).await
}

/// Opens `--database` for `access`, else the database of the configuration. A plain path is a
/// SQLite file; a PostgreSQL URL given this way takes its password from `PGPASSWORD` or
/// `~/.pgpass`.
async fn open_database(
    config: Option<&Path>,
    arg: &DatabaseArg,
    access: Access,
) -> anyhow::Result<Store> {
    Ok(match &arg.database {
        Some(text) => {
            let location = if text.starts_with("sqlite:") || text.contains("://") {
                DatabaseLocation::parse(text, "--database")?
            } else {
                DatabaseLocation::Sqlite(PathBuf::from(text))
            };
            Store::open_at(&location, None, Duration::from_secs(5), access).await?
        }
        None => Store::open_configured(&Settings::load(config)?.database, access).await?,
    })
}

/// Finds the submission an id names: a remote batch id or a local batch number.
async fn resolve_batch(store: &Store, id: &str) -> Result<Option<batches::Submission>, StoreError> {
    match id.parse::<i64>() {
        Ok(n) => store.submission(n).await,
        Err(_) => store.submission_by_remote_id(id).await,
    }
}

/// Finds the job an id names: a job id, or any id of one of its batches.
async fn resolve_job(store: &Store, id: &str) -> anyhow::Result<String> {
    match job_of_id(store, id).await? {
        Some(job) => Ok(job),
        None => anyhow::bail!("no job or batch {id:?} in {}", store.place()),
    }
}

/// The job an id names, if it names one: a job id, or any id of one of its batches.
async fn job_of_id(store: &Store, id: &str) -> Result<Option<String>, StoreError> {
    if id.starts_with(crate::model::JobId::PREFIX) {
        Ok(store.job(id).await?.map(|j| j.id))
    } else {
        Ok(resolve_batch(store, id).await?.map(|s| s.job_id))
    }
}

/// What `show` was asked about: one job, or the jobs of a file (newest first).
enum Found {
    Job(String),
    File(Vec<String>),
}

impl Found {
    fn jobs(&self) -> &[String] {
        match self {
            Found::Job(id) => std::slice::from_ref(id),
            Found::File(ids) => ids,
        }
    }
}

/// Finds what `show` names: a job or batch id first; else a file, by its name or its path. A
/// path is matched against where the database says each job's file is (relative to
/// queue.dir), so `done/NAME.jsonl`, `/var/lib/batchwatch/queue/done/NAME.jsonl` and
/// `./NAME.jsonl` in that directory all find the job whose file is there.
async fn resolve_jobs(store: &Store, id: &str) -> anyhow::Result<Found> {
    if let Some(job) = job_of_id(store, id).await? {
        return Ok(Found::Job(job));
    }
    let given = Path::new(id);
    let whole = std::path::absolute(given).unwrap_or_else(|_| given.to_path_buf());
    // Every tail of the path: one of them is the path relative to queue.dir.
    let components: Vec<String> = whole
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let paths: Vec<String> = (0..components.len())
        .map(|from| components[from..].join("/"))
        .collect();
    // A file name holds no `/`: a path given matches by its tails only.
    let found = store.jobs_of_file(id, &paths).await?;
    if found.is_empty() {
        anyhow::bail!(
            "no job, batch or file {id:?} in {} (a file is found by its name, or by its path: done/NAME.jsonl)",
            store.place()
        );
    }
    Ok(Found::File(found))
}

/// The stuck-batch limits of the configuration; the built-in ones when it cannot be read
/// (a status command given `--database` may run without one).
fn stuck_after(config: Option<&Path>) -> StuckAfter {
    Settings::load(config).map_or_else(|_| StuckAfter::default(), |s| s.alerts.stuck_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn check_config_says_where_the_key_was_read_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-check-config-SECRET\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = dir.path().join("c.toml");
        std::fs::write(
            &config,
            format!("[api]\nkey_file = {:?}\n", path.display().to_string()),
        )
        .unwrap();
        let line = key_line(&preflight::check(Some(&config)).unwrap());
        assert_eq!(
            line,
            format!(
                "# API key: read from file {} (api.key_file) (22 characters; value not shown)",
                path.display()
            )
        );
    }
}
