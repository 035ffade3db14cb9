//! The command line: parses arguments and calls into the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::api::ApiKey;
use crate::config::{ConfigError, KeySource, Settings};
use crate::daemon::cancel;
use crate::model::JobState;
use crate::printable::escape;
use crate::report;
use crate::store::{Access, Store, StoreError, batches, history, jobs};

#[derive(Debug, Parser)]
#[command(
    name = "batchwatch",
    version,
    about = "Runs OpenAI-style Batch API jobs from a queue directory"
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
    /// Everything about one job (by job id, remote batch id or local batch number).
    Show(ShowArgs),
    /// The status history of one batch (by remote batch id or local batch number).
    History(ShowArgs),
    /// Check the configuration and print the one in effect (the API key is never printed).
    CheckConfig,
    /// Print the example configuration, which is also the built-in defaults.
    PrintDefaultConfig,
    /// Ask the running daemon to cancel a job (by job id or batch id); it follows the batch to
    /// its end and keeps the partial results.
    Cancel(CancelArgs),
    /// Create the database or bring its schema up to date, then exit.
    Migrate,
    /// Run the built-in simulator of the OpenAI Batch and Files API.
    Sim(Box<crate::sim::SimArgs>),
}

/// Where the status commands find the database.
#[derive(Debug, Args)]
pub struct DatabaseArg {
    /// The database file (default: database.path from the configuration).
    #[arg(long, value_name = "PATH")]
    pub database: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only jobs in this state.
    #[arg(long, value_parser = parse_state)]
    pub state: Option<JobState>,
    /// At most this many jobs, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DatabaseArg,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A job id (job_…), a remote batch id (batch_…) or a local batch number.
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

fn parse_state(s: &str) -> Result<JobState, String> {
    s.parse()
}

/// Parses the command line, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if let Some(config_err) = err.downcast_ref::<ConfigError>() {
                eprintln!("batchwatch: {}", escape(&config_err.to_string()));
                tracing::error!(error = %config_err, "configuration error");
                return ExitCode::from(crate::EXIT_CONFIG);
            }
            let message = crate::telemetry::join_causes(err.chain().map(ToString::to_string));
            eprintln!("batchwatch: error: {}", escape(&message));
            tracing::error!(error = message, "stopped by an error");
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

/// Writes `text` to standard output. A reader that went away (`batchwatch status | head -1`)
/// is not an error: the rest is dropped quietly. Any other write error is one.
pub(crate) fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing to standard output"))
        }
        _ => Ok(()),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::PrintDefaultConfig => {
            emit(crate::config::DEFAULT_CONFIG)?;
        }
        Command::Sim(args) => return crate::sim::run(*args),
        Command::CheckConfig => {
            let settings = Settings::load(config)?;
            emit(&format!(
                "# The configuration is valid. In effect:\n{}{}\n",
                settings.to_toml(),
                key_status(&settings.api.key_source())
            ))?;
        }
        Command::Run => {
            let settings = Settings::load(config)?;
            crate::telemetry::init(settings.log.format);
            runtime()?.block_on(crate::daemon::run(settings))?;
        }
        Command::Demo(args) => {
            let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
            // SAFETY: nothing else runs yet; the demo keeps the daemon's logs to warnings.
            unsafe { std::env::set_var("RUST_LOG", filter) };
            crate::telemetry::init(crate::config::LogFormat::Text);
            runtime()?.block_on(crate::demo::run(args))?;
        }
        Command::Migrate => {
            let settings = Settings::load(config)?;
            let path = settings.database.path;
            runtime()?.block_on(async {
                let store =
                    Store::open(&path, settings.database.busy_timeout.get(), Access::Migrate)
                        .await?;
                emit(&format!(
                    "database {} is at schema version {}\n",
                    path.display(),
                    store.schema_version().await?.unwrap_or(0)
                ))?;
                store.close().await;
                anyhow::Ok(())
            })?;
        }
        Command::Cancel(args) => {
            let out = runtime()?.block_on(async {
                let (path, busy) = database_path(config, &args.db)?;
                let store = Store::open(&path, busy, Access::Write).await?;
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
        Command::Status(args) => {
            let out = runtime()?.block_on(async {
                let store = open_for_reading(config, &args.db).await?;
                let now = crate::clock::Timestamp::now();
                let rows = jobs::overview(store.reader(), args.state, args.limit).await?;
                let out = if args.json {
                    report::json(&rows)
                } else {
                    report::status(&rows, &jobs::state_counts(store.reader()).await?, now)
                };
                store.close().await;
                anyhow::Ok(out)
            })?;
            emit(&out)?;
        }
        Command::Show(args) => {
            let out = runtime()?.block_on(async {
                let store = open_for_reading(config, &args.db).await?;
                let job_id = resolve_job(&store, &args.id).await?;
                let report = job_report(&store, &job_id).await?;
                store.close().await;
                let now = crate::clock::Timestamp::now();
                anyhow::Ok(if args.json {
                    report::json(&report)
                } else {
                    report::show(&report, now)
                })
            })?;
            emit(&out)?;
        }
        Command::History(args) => {
            let out = runtime()?.block_on(async {
                let store = open_for_reading(config, &args.db).await?;
                let submission = resolve_batch(&store, &args.id).await?.with_context(|| {
                    format!("no batch {:?} in {}", args.id, store.path().display())
                })?;
                let rows = history::for_batch(store.reader(), submission.id).await?;
                store.close().await;
                anyhow::Ok(if args.json {
                    report::json(&rows)
                } else {
                    report::history(&rows)
                })
            })?;
            emit(&out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `check-config` line about the API key: whether it can be read here, and from where.
/// An unreadable key is reported, not an error: the check may run outside the service, where
/// a systemd credential does not exist.
fn key_status(source: &KeySource) -> String {
    match ApiKey::load(source) {
        Ok(key) => format!(
            "# API key: read from {source} ({} characters; value not shown)",
            key.char_count()
        ),
        Err(err) => match err.key {
            Some(key) => format!("# API key: NOT readable here: `{key}`: {}", err.problem),
            None => format!("# API key: NOT readable here: {}", err.problem),
        },
    }
}

/// Builds the multi-threaded runtime the async commands run on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Opens the database read-only for a status command: `--database`, else database.path from
/// the configuration.
async fn open_for_reading(config: Option<&Path>, arg: &DatabaseArg) -> anyhow::Result<Store> {
    let (path, busy) = database_path(config, arg)?;
    Ok(Store::open(&path, busy, Access::ReadOnly).await?)
}

/// `--database`, else database.path from the configuration, with its busy timeout.
fn database_path(config: Option<&Path>, arg: &DatabaseArg) -> anyhow::Result<(PathBuf, Duration)> {
    Ok(match &arg.database {
        Some(path) => (path.clone(), Duration::from_secs(5)),
        None => {
            let settings = Settings::load(config)?;
            (settings.database.path, settings.database.busy_timeout.get())
        }
    })
}

/// Finds the submission an id names: a remote batch id or a local batch number.
async fn resolve_batch(store: &Store, id: &str) -> Result<Option<batches::Submission>, StoreError> {
    match id.parse::<i64>() {
        Ok(n) => batches::get(store.reader(), n).await,
        Err(_) => batches::by_remote_id(store.reader(), id).await,
    }
}

/// Finds the job an id names: a job id, or any id of one of its batches.
async fn resolve_job(store: &Store, id: &str) -> anyhow::Result<String> {
    if id.starts_with(crate::model::JobId::PREFIX) {
        if jobs::get(store.reader(), id).await?.is_some() {
            return Ok(id.to_owned());
        }
    } else if let Some(submission) = resolve_batch(store, id).await? {
        return Ok(submission.job_id);
    }
    anyhow::bail!("no job or batch {id:?} in {}", store.path().display())
}

/// Collects everything about one job.
pub async fn job_report(store: &Store, job_id: &str) -> anyhow::Result<report::JobReport> {
    let job = jobs::get(store.reader(), job_id)
        .await?
        .with_context(|| format!("no job {job_id}"))?;
    let events = jobs::events(store.reader(), job_id).await?;
    let mut batch_reports = Vec::new();
    for submission in batches::for_job(store.reader(), job_id).await? {
        let history = history::for_batch(store.reader(), submission.id).await?;
        batch_reports.push(report::BatchReport {
            submission,
            history,
        });
    }
    Ok(report::JobReport {
        job,
        events,
        batches: batch_reports,
    })
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
        let line = key_status(&KeySource::File(path.clone()));
        assert_eq!(
            line,
            format!(
                "# API key: read from file {} (api.key_file) (22 characters; value not shown)",
                path.display()
            )
        );
    }

    #[test]
    fn check_config_reports_an_unreadable_key_with_its_config_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-check-config-SECRET").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let line = key_status(&KeySource::File(path));
        assert!(
            line.starts_with("# API key: NOT readable here: `api.key_file`: the key file "),
            "{line}"
        );
        assert!(line.contains("chmod 600"), "{line}");
        assert!(!line.contains("SECRET"), "{line}");
    }
}
