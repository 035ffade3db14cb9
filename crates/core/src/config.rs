//! Configuration: built-in defaults, then a TOML file, then the environment.
//!
//! The built-in defaults are the shipped example, `config/batchwatch.toml`, so the example and
//! the defaults cannot drift apart. Every problem is a [`ConfigError`] that names the key; the
//! binary exits with [`crate::process::EXIT_CONFIG`] (78) on one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The example configuration, which is also the layer of built-in defaults.
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/batchwatch.toml");

/// The file read when no `--config` is given, if it exists.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/batchwatch/batchwatch.toml";

/// The prefix of environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "BATCHWATCH_";

/// Metadata keys batchwatch sets on every batch; user metadata may not use them.
pub const RESERVED_METADATA_KEYS: usize = 4;

/// A configuration problem: the key at fault (when one is), where it came from, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub key: Option<String>,
    pub origin: Option<String>,
    pub problem: String,
}

impl ConfigError {
    /// A problem with one key.
    pub fn key(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            key: Some(key.into()),
            origin: None,
            problem: problem.into(),
        }
    }

    fn general(problem: impl Into<String>) -> Self {
        ConfigError {
            key: None,
            origin: None,
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration: ")?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`")?;
            if let Some(origin) = &self.origin {
                write!(f, " (set in {origin})")?;
            }
            f.write_str(": ")?;
        } else if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        f.write_str(&self.problem)
    }
}

/// Everything batchwatch can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub queue: QueueSettings,
    pub database: DatabaseSettings,
    pub api: ApiSettings,
    pub batch: BatchSettings,
    pub poll: PollSettings,
    pub limits: LimitSettings,
    pub backoff: BackoffSettings,
    pub reconcile: ReconcileSettings,
    pub collect: CollectSettings,
    pub cleanup: CleanupSettings,
    pub retention: RetentionSettings,
    pub log: LogSettings,
    pub daemon: DaemonSettings,
    pub metrics: MetricsSettings,
    pub alerts: AlertSettings,
    /// Prices per model, by the model name the request lines use; empty: no cost estimates.
    #[serde(default)]
    pub pricing: BTreeMap<String, ModelPrice>,
    /// Who is told when a job ends or a batch is stuck (`[[notify]]`); empty: nobody.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<NotifyTarget>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub dir: PathBuf,
    pub scan_interval: Dur,
    pub settle_time: Dur,
    pub watch: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub path: PathBuf,
    /// `sqlite:PATH` or `postgres://USER@HOST/NAME`; when set, it is the database and `path`
    /// is not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The PostgreSQL password as a systemd credential, by name (else `PGPASSWORD` or
    /// `~/.pgpass`, as for any PostgreSQL client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_credential: Option<String>,
    pub busy_timeout: Dur,
    /// How long an instance's lease on the jobs it holds runs without a renewal (several
    /// daemons on one PostgreSQL database): how long a daemon that stopped answering keeps its
    /// jobs from the others.
    pub lease: Dur,
}

/// Where the database is, and in which backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by its URL (which holds no password).
    Postgres(String),
}

impl fmt::Display for DatabaseLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseLocation::Sqlite(path) => write!(f, "{}", path.display()),
            DatabaseLocation::Postgres(url) => f.write_str(url),
        }
    }
}

impl DatabaseLocation {
    /// Reads `text`, a `database.url` or a `--database` argument: `sqlite:PATH`, a
    /// `postgres://` or `postgresql://` URL without a password, or (for an argument) a plain
    /// path, which is a SQLite file. `key` names where it came from in the error.
    pub fn parse(text: &str, key: &str) -> Result<DatabaseLocation, ConfigError> {
        if let Some(path) = text.strip_prefix("sqlite:") {
            let path = PathBuf::from(path.strip_prefix("//").unwrap_or(path));
            absolute(key, &path)?;
            return Ok(DatabaseLocation::Sqlite(path));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            if has_password(text) {
                return Err(ConfigError::key(
                    key,
                    "a PostgreSQL URL must not hold the password: set PGPASSWORD, use ~/.pgpass, \
                     or name a systemd credential in database.password_credential (what follows \
                     a ':' up to the last '@' reads as a password: write an '@' elsewhere as \
                     %40)",
                ));
            }
            return Ok(DatabaseLocation::Postgres(text.to_owned()));
        }
        Err(ConfigError::key(
            key,
            format!(
                "{:?} is neither sqlite:PATH nor a postgres:// URL",
                text.chars().take(40).collect::<String>()
            ),
        ))
    }
}

/// Where a PostgreSQL URL holds a password: after the first `:` of its user part, which ends at
/// the last `@` (a password may hold an unencoded `/`, `?` or `@` that a URL parser would take
/// for the path, the query or the host, and then show it in its error), and the value of each
/// `password` parameter (an empty range for one without a value). Reading too much as a
/// password refuses a URL with a clear message; reading too little would show a password.
fn password_ranges(url: &str) -> Vec<std::ops::Range<usize>> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let mut ranges = Vec::new();
    if let Some(at) = rest.rfind('@')
        && let Some(colon) = rest[..at].find(':')
    {
        ranges.push(start + colon + 1..start + at);
    }
    for (i, _) in rest.match_indices(['?', '&']) {
        let param = &rest[i + 1..];
        let end = param.find('&').unwrap_or(param.len());
        let (key, value) = param[..end].split_once('=').unwrap_or((&param[..end], ""));
        if key.eq_ignore_ascii_case("password") {
            let value_at = start + i + 1 + end - value.len();
            ranges.push(value_at..start + i + 1 + end);
        }
    }
    ranges
}

/// Whether a PostgreSQL URL carries a password, in its user part or as a parameter.
fn has_password(url: &str) -> bool {
    !password_ranges(url).is_empty()
}

/// `url` with every password it holds (in its user part, or a `password` parameter) replaced
/// by `***`: how messages and `Debug` name a database.
pub fn without_password(url: &str) -> String {
    let mut shown = String::with_capacity(url.len());
    let mut from = 0;
    // An empty password hides nothing.
    for range in password_ranges(url).into_iter().filter(|r| !r.is_empty()) {
        shown.push_str(&url[from..range.start]);
        shown.push_str("***");
        from = range.end;
    }
    shown.push_str(&url[from..]);
    shown
}

impl DatabaseSettings {
    /// The database: `url` when set, else the SQLite file at `path`.
    pub fn location(&self) -> DatabaseLocation {
        match &self.url {
            Some(url) => DatabaseLocation::parse(url, "database.url")
                .expect("database.url was checked when the configuration was loaded"),
            None => DatabaseLocation::Sqlite(self.path.clone()),
        }
    }
}

/// How requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Flavor {
    /// `Authorization: Bearer KEY`.
    Openai,
    /// `api-key: KEY`, resource-level `/openai/v1` paths.
    Azure,
    /// Anthropic's Message Batches: `x-api-key: KEY` and `anthropic-version`; files in
    /// Anthropic's shape (`{"custom_id", "params"}`), each batch created from its lines.
    Anthropic,
}

impl Flavor {
    /// Its name in the configuration, and the provider a job records ([`Flavor::Openai`]:
    /// `openai`).
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Openai => "openai",
            Flavor::Azure => "azure",
            Flavor::Anthropic => "anthropic",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub base_url: String,
    pub flavor: Flavor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_credential: Option<String>,
    pub connect_timeout: Dur,
    pub request_timeout: Dur,
    pub upload_timeout: Dur,
    pub download_read_timeout: Dur,
    pub retry_attempts: u32,
    pub retry_initial_delay: Dur,
    pub retry_max_delay: Dur,
}

/// Where the API key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable, by name.
    Env(String),
    /// A file only its owner may read.
    File(PathBuf),
    /// A systemd credential, by name, under `$CREDENTIALS_DIRECTORY`.
    Credential(String),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env(name) => write!(f, "environment variable {name} (api.key_env)"),
            KeySource::File(path) => write!(f, "file {} (api.key_file)", path.display()),
            KeySource::Credential(name) => {
                write!(f, "systemd credential {name} (api.key_credential)")
            }
        }
    }
}

impl ApiSettings {
    /// The one configured key source; OPENAI_API_KEY (ANTHROPIC_API_KEY for Anthropic) when
    /// none is set.
    pub fn key_source(&self) -> KeySource {
        match (&self.key_env, &self.key_file, &self.key_credential) {
            (_, Some(path), _) => KeySource::File(path.clone()),
            (_, _, Some(name)) => KeySource::Credential(name.clone()),
            (Some(name), _, _) => KeySource::Env(name.clone()),
            (None, None, None) if self.flavor == Flavor::Anthropic => {
                KeySource::Env("ANTHROPIC_API_KEY".to_owned())
            }
            (None, None, None) => KeySource::Env("OPENAI_API_KEY".to_owned()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub completion_window: String,
    pub deadline: Dur,
    /// When the batches' output and error files expire; "" (or unset): never.
    #[serde(
        default,
        deserialize_with = "optional_dur",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_expires_after: Option<Dur>,
    /// When uploaded input files expire; "" (or unset): never.
    #[serde(
        default,
        deserialize_with = "optional_dur",
        skip_serializing_if = "Option::is_none"
    )]
    pub input_expires_after: Option<Dur>,
    /// How many times an expired job's undone requests are queued again, per original file.
    #[serde(default)]
    pub resubmit_expired: u32,
    /// How many times the requests of a finished job that failed for a reason worth retrying
    /// (a 429, a 5xx, a timeout) are queued again, per original file.
    #[serde(default)]
    pub resubmit_failed: u32,
    pub max_requests: u64,
    pub max_bytes: ByteSize,
    pub split_oversized: bool,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollSettings {
    pub min_interval: Dur,
    pub max_interval: Dur,
    /// How active batches are observed: one list sweep for many, or one retrieve each.
    pub mode: PollMode,
    /// The most list pages one sweep reads; active batches it did not reach are retrieved.
    pub list_page_budget: u32,
}

/// How active batches are observed (`poll.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum PollMode {
    /// A list sweep when it costs fewer requests than retrieving the batches due.
    Auto,
    /// A list sweep whenever a poll is due.
    List,
    /// One retrieve per batch, never a list.
    Retrieve,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub requests_per_second: f64,
    pub concurrency: u32,
}

impl LimitSettings {
    /// The daemon's tasks in flight at most, every kind of work together: a burst of files or
    /// of due polls is worked through at the pace of the API instead of all at once.
    pub fn tasks(&self) -> usize {
        self.concurrency as usize * 4
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffSettings {
    pub token_limit_initial: Dur,
    pub token_limit_max: Dur,
    pub auth_retry: Dur,
    pub failed_request: Dur,
    pub failed_task_initial: Dur,
    pub failed_task_max: Dur,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSettings {
    pub duplicate_watch: Dur,
    pub duplicate_check_interval: Dur,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectSettings {
    pub give_up_after: Dur,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupSettings {
    /// Delete a job's files from the service once it ended and its results are recorded.
    pub remote_files: bool,
}

/// How long the files and rows of finished jobs are kept; unset: for ever.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Input files of completed jobs in done/.
    #[serde(
        default,
        deserialize_with = "optional_dur",
        skip_serializing_if = "Option::is_none"
    )]
    pub done: Option<Dur>,
    /// Input files and reason files of jobs that did not complete, in failed/.
    #[serde(
        default,
        deserialize_with = "optional_dur",
        skip_serializing_if = "Option::is_none"
    )]
    pub failed: Option<Dur>,
    /// results/JOB/ of finished jobs.
    #[serde(
        default,
        deserialize_with = "optional_dur",
        skip_serializing_if = "Option::is_none"
    )]
    pub results: Option<Dur>,
    /// The database rows of finished jobs (job, batches, history, events, usage).
    #[serde(
        default,
        deserialize_with = "optional_dur",
        skip_serializing_if = "Option::is_none"
    )]
    pub history: Option<Dur>,
}

impl RetentionSettings {
    /// Whether anything is ever pruned.
    pub fn any(&self) -> bool {
        self.done.is_some()
            || self.failed.is_some()
            || self.results.is_some()
            || self.history.is_some()
    }
}

/// A duration that may be turned off with an empty string.
fn optional_dur<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Dur>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses one of a fixed set of lower-case names, naming the choices when `s` is none of them.
fn one_of<T: Copy>(s: &str, choices: &[(&str, T)]) -> Result<T, String> {
    choices
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
            format!("{s:?} is not one of {}", names.join(", "))
        })
}

impl TryFrom<String> for Flavor {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        one_of(
            &s,
            &[
                ("openai", Flavor::Openai),
                ("azure", Flavor::Azure),
                ("anthropic", Flavor::Anthropic),
            ],
        )
    }
}

impl TryFrom<String> for PollMode {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        one_of(
            &s,
            &[
                ("auto", PollMode::Auto),
                ("list", PollMode::List),
                ("retrieve", PollMode::Retrieve),
            ],
        )
    }
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        one_of(&s, &[("text", LogFormat::Text), ("json", LogFormat::Json)])
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// The level filter, in `RUST_LOG`'s syntax; `RUST_LOG`, when set, wins.
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSettings {
    pub shutdown_timeout: Dur,
    /// This daemon's name among the instances on a shared PostgreSQL database (`status
    /// --instances`, its logs); none: HOST-PID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// `IP:PORT` of the HTTP endpoint (/metrics, /healthz, /readyz); empty: no endpoint.
    pub listen: String,
    /// How many models get series of their own; the others are counted as `model="other"`.
    pub max_models: usize,
    /// Whether the status pages (`/`, `/jobs/ID`, `/batches/ID`) are served beside the metrics
    /// ([`MetricsSettings::serves_pages`]): unset, wherever they are guarded (loopback, or a
    /// token); `true`, always (a start beyond loopback without a token is refused); `false`,
    /// never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<bool>,
    /// A file holding the token every page request must bear (`Authorization: Bearer TOKEN`);
    /// required when the pages are served on an address other than loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages_token_file: Option<PathBuf>,
}

/// The most `metrics.max_models` may be: a bound on the series per scrape is only one when it
/// is small.
pub const MAX_MODEL_SERIES: usize = 1_000;

impl MetricsSettings {
    /// The address to listen on, or `None` when the endpoint is turned off.
    pub fn address(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let text = self.listen.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            ConfigError::key(
                "metrics.listen",
                format!(
                    "{text:?} is not an address and port such as \"127.0.0.1:9464\" or \"[::1]:9464\" \
                     (empty turns the endpoint off)"
                ),
            )
        })
    }

    /// Whether the pages are served at `addr`. Unset, they are where they are guarded (so a
    /// configuration that listens beyond loopback for a remote Prometheus, written before the
    /// pages existed, starts as it did, without them); asked for, they must be guarded.
    pub fn serves_pages(&self, key: &str, addr: std::net::SocketAddr) -> Result<bool, ConfigError> {
        match self.pages {
            Some(false) => Ok(false),
            Some(true) => self.check_pages_guarded(key, addr).map(|()| true),
            None => Ok(self.check_pages_guarded(key, addr).is_ok()),
        }
    }

    /// Checks that pages served at `addr` beyond loopback are guarded by a token: anyone who
    /// reaches the port would otherwise read every job. `key` names the setting `addr` came
    /// from (`metrics.listen`, or `serve --listen`).
    pub fn check_pages_guarded(
        &self,
        key: &str,
        addr: std::net::SocketAddr,
    ) -> Result<(), ConfigError> {
        if addr.ip().is_loopback() || self.pages_token_file.is_some() {
            return Ok(());
        }
        Err(ConfigError::key(
            key,
            format!(
                "{addr} is not a loopback address, and the status pages would be served there to \
                 anyone who reaches the port: set metrics.pages_token_file (a file holding the \
                 token a reverse proxy sends as `Authorization: Bearer TOKEN`), or \
                 metrics.pages = false to serve /metrics, /healthz and /readyz alone"
            ),
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    pub stuck_after: StuckAfter,
}

/// How long a batch may stay in each of the statuses that should end soon before it is called
/// stuck.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StuckAfter {
    pub validating: Dur,
    pub finalizing: Dur,
    pub cancelling: Dur,
}

impl Default for StuckAfter {
    /// The built-in defaults (config/batchwatch.toml), for readers without a configuration.
    fn default() -> StuckAfter {
        toml::from_str::<toml::Table>(DEFAULT_CONFIG)
            .ok()
            .and_then(|t| t.get("alerts")?.get("stuck_after")?.clone().try_into().ok())
            .expect("the built-in defaults have alerts.stuck_after")
    }
}

/// What a notification tells of: a job's end in one of its final states, or one of its batches
/// stuck (once per episode: a batch in one status past `alerts.stuck_after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    Completed,
    Failed,
    Expired,
    Cancelled,
    Rejected,
    Stuck,
}

impl NotifyOn {
    pub const ALL: [NotifyOn; 6] = [
        NotifyOn::Completed,
        NotifyOn::Failed,
        NotifyOn::Expired,
        NotifyOn::Cancelled,
        NotifyOn::Rejected,
        NotifyOn::Stuck,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyOn::Completed => "completed",
            NotifyOn::Failed => "failed",
            NotifyOn::Expired => "expired",
            NotifyOn::Cancelled => "cancelled",
            NotifyOn::Rejected => "rejected",
            NotifyOn::Stuck => "stuck",
        }
    }
}

impl fmt::Display for NotifyOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[notify]]` entry: what it is told of, and where: a program run with the event on its
/// standard input, or a URL the event is posted to, signed as Standard Webhooks specifies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyTarget {
    /// What the database calls it: its notifications outlive a reload or a restart, and are
    /// delivered to the entry of that name.
    pub name: String,
    pub on: Vec<NotifyOn>,
    /// The program and its arguments, run without a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The signing secret (`whsec_…`) in a file only its owner may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// The signing secret as a systemd credential, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_credential: Option<String>,
    /// How long one delivery may take: the request, or the program's run.
    #[serde(default = "NotifyTarget::default_timeout")]
    pub timeout: Dur,
    /// How long a notification is tried again before it is given up.
    #[serde(default = "NotifyTarget::default_retry_for")]
    pub retry_for: Dur,
}

/// Where a `[[notify]]` entry delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyVia<'a> {
    Command(&'a [String]),
    Url(&'a str),
}

impl NotifyTarget {
    fn default_timeout() -> Dur {
        Dur(Duration::from_secs(10))
    }

    fn default_retry_for() -> Dur {
        Dur(Duration::from_secs(72 * 3600))
    }

    /// Where it delivers (the settings are valid: exactly one of the two is set).
    pub fn via(&self) -> NotifyVia<'_> {
        match (&self.command, &self.url) {
            (Some(command), _) => NotifyVia::Command(command),
            (None, Some(url)) => NotifyVia::Url(url),
            (None, None) => NotifyVia::Command(&[]),
        }
    }

    /// Where its signing secret is read from: the setting's name and the source.
    pub fn secret_source(&self) -> Option<(String, KeySource)> {
        let key = |field: &str| format!("notify.{}.{field}", self.name);
        match (&self.secret_file, &self.secret_credential) {
            (Some(path), _) => Some((key("secret_file"), KeySource::File(path.clone()))),
            (None, Some(name)) => Some((
                key("secret_credential"),
                KeySource::Credential(name.clone()),
            )),
            (None, None) => None,
        }
    }

    /// Whether it is told of `on`.
    pub fn wants(&self, on: NotifyOn) -> bool {
        self.on.contains(&on)
    }

    fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let name = &self.name;
        let key = |field: &str| format!("notify[{index}].{field}");
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::key(
                key("name"),
                format!(
                    "{name:?} is not a name: 1 to 64 letters, digits, '-' or '_' (the database \
                     names the entry by it)"
                ),
            ));
        }
        let key = |field: &str| format!("notify.{name}.{field}");
        if self.on.is_empty() {
            return Err(ConfigError::key(
                key("on"),
                "name at least one of \"completed\", \"failed\", \"expired\", \"cancelled\", \
                 \"rejected\", \"stuck\"",
            ));
        }
        match (&self.command, &self.url) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(ConfigError::key(
                    key("command"),
                    "set exactly one of command (a program and its arguments) and url",
                ));
            }
            (Some(command), None) => {
                let Some(program) = command.first() else {
                    return Err(ConfigError::key(
                        key("command"),
                        "must name a program: [\"/usr/local/bin/on-batch-done\", ...]",
                    ));
                };
                absolute(&key("command"), Path::new(program))?;
                if self.secret_file.is_some() || self.secret_credential.is_some() {
                    return Err(ConfigError::key(
                        key("secret_file"),
                        "a secret signs what is posted to a url; a command is not signed",
                    ));
                }
            }
            (None, Some(url)) => {
                let rest = url
                    .strip_prefix("https://")
                    .or_else(|| url.strip_prefix("http://"));
                if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                    return Err(ConfigError::key(
                        key("url"),
                        format!("{url:?} is not a URL such as https://hooks.example.com/batches"),
                    ));
                }
                match (&self.secret_file, &self.secret_credential) {
                    (None, None) => {
                        return Err(ConfigError::key(
                            key("secret_file"),
                            "a url needs its signing secret (whsec_...): set secret_file or \
                             secret_credential",
                        ));
                    }
                    (Some(_), Some(_)) => {
                        return Err(ConfigError::key(
                            key("secret_credential"),
                            "set only one of secret_file and secret_credential",
                        ));
                    }
                    (Some(path), None) => absolute(&key("secret_file"), path)?,
                    (None, Some(credential)) => {
                        if credential.is_empty() || credential.contains(['/', '=', '\0']) {
                            return Err(ConfigError::key(
                                key("secret_credential"),
                                format!("{credential:?} is not a valid name"),
                            ));
                        }
                    }
                }
            }
        }
        positive(&key("timeout"), self.timeout)?;
        if self.timeout.get() > Duration::from_secs(600) {
            return Err(ConfigError::key(
                key("timeout"),
                "must be at most 10m: a delivery that takes longer holds one of the few at a time",
            ));
        }
        positive(&key("retry_for"), self.retry_for)?;
        Ok(())
    }
}

/// The price of one model, in US dollars per million tokens, and the discount batches get.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Input tokens that were not cached.
    pub input: f64,
    /// Cached input tokens; unset: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    /// Output tokens (reasoning tokens are output tokens).
    pub output: f64,
    /// The share taken off these prices for batches: 0.5 when they are the list prices
    /// (OpenAI bills batches at half), 0 when they already are batch prices.
    pub batch_discount: f64,
}

/// A non-negative duration written as "500ms", "20h", "1h 30m", "7d" or "2w". A day is 24
/// hours and a week 7 days: a duration here is an amount of time, not a calendar interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    /// The longest a duration may be: 100 years, which is "never" for anything a setting
    /// times. (Past about 20,000 years a duration could no longer be written in days.)
    pub const MAX: Duration = Duration::from_secs(36_500 * 86_400);

    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let not_a_duration = |e: &dyn fmt::Display| {
            format!("{s:?} is not a duration such as \"500ms\", \"90s\", \"20h\" or \"7d\" ({e})")
        };
        let span: jiff::Span = s.trim().parse().map_err(|e| not_a_duration(&e))?;
        if span.get_years() != 0 || span.get_months() != 0 {
            return Err(format!(
                "{s:?} uses months or years, which have no fixed length; write days (\"30d\") or weeks (\"2w\")"
            ));
        }
        let parsed = span
            .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
            .map_err(|e| not_a_duration(&e))?;
        let duration = Duration::try_from(parsed)
            .map_err(|_| format!("{s:?} is negative; a duration must be zero or more"))?;
        if duration > Dur::MAX {
            return Err(format!(
                "{s:?} is longer than 100 years ({}), the most a duration may be",
                Dur(Dur::MAX)
            ));
        }
        Ok(Dur(duration))
    }
}

/// In days, hours, minutes, seconds and milliseconds, the larger first (`30d`, `1h 30m`,
/// `500ms`), as such a duration is written; it parses back to the same value.
impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u128); 5] = [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ];
        if !self.0.subsec_nanos().is_multiple_of(1_000_000) {
            // Finer than a millisecond: only written so by hand, and jiff says it exactly.
            if let Ok(d) = jiff::SignedDuration::try_from(self.0) {
                return write!(f, "{d:#}");
            }
        }
        let mut rest = self.0.as_millis();
        if rest == 0 {
            return f.write_str("0s");
        }
        let mut first = true;
        for (unit, size) in UNITS {
            let n = rest / size;
            if n > 0 {
                write!(f, "{}{n}{unit}", if first { "" } else { " " })?;
                first = false;
                rest %= size;
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A size in bytes: a whole number, or a string such as "200MB" (10^6) or "190MiB" (2^20).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?} is not a size such as 200MB or 190MiB"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            other => {
                return Err(format!(
                    "{s:?} has unknown unit {other:?}; use B, KB, MB, GB, KiB, MiB or GiB"
                ));
            }
        };
        // TOML's integers are i64s, and a size is written back as one (`check-config`).
        n.checked_mul(mult)
            .filter(|&bytes| i64::try_from(bytes).is_ok())
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large (at most {} bytes)", i64::MAX))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a size such as 200MB or a whole number of bytes")
        })? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl Settings {
    /// Loads the configuration from the defaults, `file` (else the system file when it exists)
    /// and the process environment, then validates it.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, process_env())
    }

    /// As [`Settings::load`], with the environment given.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        Ok(Self::layered(file, env)?.0)
    }

    /// As [`Settings::load`], with the configuration in effect as TOML, every duration as it
    /// was written (`30d`, where the value alone would print as some other equal form), for
    /// `check-config`.
    pub fn load_as_written(file: Option<&Path>) -> Result<(Settings, String), ConfigError> {
        let (settings, merged) = Self::layered(file, process_env())?;
        let mut table = toml::Table::try_from(&settings).expect("settings always serialise");
        if let Ok(written) = merged.try_deserialize::<toml::Table>() {
            keep_written_durations(&mut table, &written);
        }
        let text = toml::to_string(&table).expect("a table always serialises");
        Ok((settings, text))
    }

    /// Loads the configuration from the defaults, `text` in place of a file (named `origin` in
    /// errors) and `env`, then validates it: what [`Settings::load_from`] does once it has read
    /// the file.
    pub fn load_text(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        Ok(Self::merge_layers(Some((text, origin)), env)?.0)
    }

    /// The layers merged and checked, and the merged layers as they were written.
    fn layered(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Settings, config::Config), ConfigError> {
        let file = match file {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError::general(format!(
                        "the configuration file {} does not exist or is not a file (--config)",
                        path.display()
                    )));
                }
                Some(path.to_path_buf())
            }
            None => Some(PathBuf::from(SYSTEM_CONFIG_PATH)).filter(|p| p.is_file()),
        };
        let text = match &file {
            // Read it ourselves, so an unreadable file is reported as such.
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| ConfigError {
                key: None,
                origin: Some(path.display().to_string()),
                problem: format!("the file cannot be read: {e}"),
            })?),
            None => None,
        };
        let origin = file.as_ref().map(|p| p.display().to_string());
        Self::merge_layers(text.as_deref().zip(origin.as_deref()), env)
    }

    /// The defaults, the file's `text` (named by its origin), then `env`, merged and checked.
    fn merge_layers(
        file: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Settings, config::Config), ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_CONFIG,
            config::FileFormat::Toml,
        ));
        if let Some((text, origin)) = file {
            // Read by toml first: the config crate loses the line and column of some errors (an
            // integer too large for an i64), toml's own reading keeps them.
            match text.parse::<toml::Table>() {
                Err(e) => {
                    return Err(ConfigError {
                        key: None,
                        origin: Some(origin.to_owned()),
                        problem: toml_problem(&e),
                    });
                }
                Ok(table) => {
                    if let Some(key) = key_with_a_path_in_it(&table, "") {
                        return Err(ConfigError {
                            key: Some(key),
                            origin: Some(origin.to_owned()),
                            problem: "a key with `.`, `[` or `]` in it is no setting".to_owned(),
                        });
                    }
                }
            }
            builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
        }
        let file = file.map(|(_, origin)| origin);
        let vars = settings_from_env(env);
        let env_origin: BTreeMap<String, String> = vars
            .keys()
            .map(|var| (env_var_key(var), var.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
                .prefix_separator("_")
                .separator("__")
                .source(Some(vars.into_iter().collect())),
        );
        let origin_of = |key: &Option<String>| -> Option<String> {
            let key = key.as_deref()?;
            // The environment wins over the file, so a key set there came from there.
            if let Some(var) = env_origin.iter().find(|(k, _)| {
                k.as_str() == key
                    || key.starts_with(&format!("{k}."))
                    || k.starts_with(&format!("{key}."))
            }) {
                return Some(format!("environment variable {}", var.1));
            }
            file.map(str::to_owned)
        };
        let merged = builder.build().map_err(|e| {
            let mut err = translate(e);
            err.origin = err.origin.or_else(|| file.map(str::to_owned));
            err
        })?;
        let settings: Settings = merged.clone().try_deserialize().map_err(|e| {
            let mut err = translate(e);
            err.origin = origin_of(&err.key);
            err
        })?;
        settings.validate().map_err(|mut err| {
            err.origin = origin_of(&err.key);
            err
        })?;
        Ok((settings, merged))
    }

    /// Checks what types alone cannot: ranges, absolute paths, and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        absolute("queue.dir", &self.queue.dir)?;
        absolute("database.path", &self.database.path)?;
        if let Some(url) = &self.database.url {
            DatabaseLocation::parse(url, "database.url")?;
        }
        if let Some(name) = &self.database.password_credential
            && (name.is_empty() || name.contains(['/', '=', '\0']))
        {
            return Err(ConfigError::key(
                "database.password_credential",
                format!("{name:?} is not a valid name"),
            ));
        }
        if let Some(path) = &self.api.key_file {
            absolute("api.key_file", path)?;
        }
        if let Some(name) = &self.daemon.name {
            instance_name(name)?;
        }
        positive("queue.scan_interval", self.queue.scan_interval)?;
        positive("database.busy_timeout", self.database.busy_timeout)?;
        if matches!(self.database.location(), DatabaseLocation::Postgres(_)) {
            // A renewal comes every third of the lease, so two thirds of it are left at worst,
            // and a request is started only while more than its timeout is left.
            let least = self.api.request_timeout.get() * 3 / 2 + Duration::from_secs(1);
            if self.database.lease.get() < least {
                return Err(ConfigError::key(
                    "database.lease",
                    format!(
                        "must be at least {}s (1.5 × api.request_timeout, and a second): a request \
                         is started only while the lease has more than api.request_timeout left, \
                         and it is renewed every third of its length",
                        least.as_secs()
                    ),
                ));
            }
        }

        let url = self.api.base_url.trim();
        if url.is_empty() {
            return Err(ConfigError::key("api.base_url", "a value is required"));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(ConfigError::key(
                "api.base_url",
                format!("{url:?} is not a URL such as https://api.openai.com/v1"),
            ));
        };
        if !matches!(scheme, "http" | "https") || rest.is_empty() {
            return Err(ConfigError::key(
                "api.base_url",
                format!("{url:?} must start with https:// or http://"),
            ));
        }
        if self.api.flavor == Flavor::Anthropic && url.contains("api.openai.com") {
            return Err(ConfigError::key(
                "api.base_url",
                "a value is required when api.flavor = \"anthropic\": https://api.anthropic.com/v1",
            ));
        }
        if self.api.flavor == Flavor::Azure && url.contains("api.openai.com") {
            return Err(ConfigError::key(
                "api.base_url",
                "a value is required when api.flavor = \"azure\": your resource's URL, such as https://RESOURCE.openai.azure.com/openai/v1",
            ));
        }
        let sources: Vec<&str> = [
            ("api.key_env", self.api.key_env.is_some()),
            ("api.key_file", self.api.key_file.is_some()),
            ("api.key_credential", self.api.key_credential.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if sources.len() > 1 {
            return Err(ConfigError::key(
                sources[1],
                format!("set only one key source; found {}", sources.join(" and ")),
            ));
        }
        for (key, value) in [
            ("api.key_env", &self.api.key_env),
            ("api.key_credential", &self.api.key_credential),
        ] {
            if let Some(v) = value
                && (v.is_empty() || v.contains(['/', '=', '\0']))
            {
                return Err(ConfigError::key(key, format!("{v:?} is not a valid name")));
            }
        }
        positive("api.connect_timeout", self.api.connect_timeout)?;
        positive("api.request_timeout", self.api.request_timeout)?;
        positive("api.upload_timeout", self.api.upload_timeout)?;
        positive("api.download_read_timeout", self.api.download_read_timeout)?;
        if self.api.retry_attempts == 0 {
            return Err(ConfigError::key("api.retry_attempts", "must be at least 1"));
        }
        if self.api.retry_initial_delay > self.api.retry_max_delay {
            return Err(ConfigError::key(
                "api.retry_initial_delay",
                "must not be longer than api.retry_max_delay",
            ));
        }

        if let Some(endpoint) = &self.batch.endpoint
            && !endpoint.starts_with('/')
        {
            return Err(ConfigError::key(
                "batch.endpoint",
                format!("{endpoint:?} must be a path such as /v1/chat/completions"),
            ));
        }
        if self.batch.completion_window.trim().is_empty() {
            return Err(ConfigError::key(
                "batch.completion_window",
                "a value is required, such as \"24h\"",
            ));
        }
        positive("batch.deadline", self.batch.deadline)?;
        if let Some(after) = self.batch.output_expires_after {
            output_expiry("batch.output_expires_after", after)?;
        }
        if let Some(after) = self.batch.input_expires_after {
            output_expiry("batch.input_expires_after", after)?;
        }
        if self.batch.max_requests == 0 {
            return Err(ConfigError::key("batch.max_requests", "must be at least 1"));
        }
        // TOML's integers are i64s: a larger number (from the environment) could not be
        // written back (`check-config`).
        if i64::try_from(self.batch.max_requests).is_err() {
            return Err(ConfigError::key(
                "batch.max_requests",
                format!("must be at most {}", i64::MAX),
            ));
        }
        if self.batch.max_bytes.0 == 0 {
            return Err(ConfigError::key(
                "batch.max_bytes",
                "must be at least 1 byte",
            ));
        }
        check_metadata("batch.metadata", &self.batch.metadata)?;

        positive("poll.min_interval", self.poll.min_interval)?;
        if self.poll.min_interval > self.poll.max_interval {
            return Err(ConfigError::key(
                "poll.min_interval",
                "must not be longer than poll.max_interval",
            ));
        }
        if self.poll.list_page_budget == 0 {
            return Err(ConfigError::key(
                "poll.list_page_budget",
                "must be at least 1 page",
            ));
        }
        if !(self.limits.requests_per_second.is_finite() && self.limits.requests_per_second > 0.0) {
            return Err(ConfigError::key(
                "limits.requests_per_second",
                "must be a number above zero",
            ));
        }
        if self.limits.concurrency == 0 {
            return Err(ConfigError::key("limits.concurrency", "must be at least 1"));
        }
        positive(
            "backoff.token_limit_initial",
            self.backoff.token_limit_initial,
        )?;
        if self.backoff.token_limit_initial > self.backoff.token_limit_max {
            return Err(ConfigError::key(
                "backoff.token_limit_initial",
                "must not be longer than backoff.token_limit_max",
            ));
        }
        positive("backoff.auth_retry", self.backoff.auth_retry)?;
        positive("backoff.failed_request", self.backoff.failed_request)?;
        positive(
            "backoff.failed_task_initial",
            self.backoff.failed_task_initial,
        )?;
        if self.backoff.failed_task_initial > self.backoff.failed_task_max {
            return Err(ConfigError::key(
                "backoff.failed_task_initial",
                "must not be longer than backoff.failed_task_max",
            ));
        }
        positive(
            "reconcile.duplicate_check_interval",
            self.reconcile.duplicate_check_interval,
        )?;
        positive("collect.give_up_after", self.collect.give_up_after)?;
        for (key, value) in [
            ("retention.done", self.retention.done),
            ("retention.failed", self.retention.failed),
            ("retention.results", self.retention.results),
            ("retention.history", self.retention.history),
        ] {
            if let Some(d) = value {
                positive(key, d)?;
            }
        }
        if let Err(e) = crate::telemetry::level_filter(&self.log.level) {
            return Err(ConfigError::key(
                "log.level",
                format!(
                    "{:?} is not a level filter such as \"info\" or \"info,batchwatch=debug\" ({e})",
                    self.log.level
                ),
            ));
        }
        if let Some(addr) = self.metrics.address()? {
            self.metrics.serves_pages("metrics.listen", addr)?;
        }
        if let Some(path) = &self.metrics.pages_token_file {
            absolute("metrics.pages_token_file", path)?;
        }
        if self.metrics.max_models > MAX_MODEL_SERIES {
            return Err(ConfigError::key(
                "metrics.max_models",
                format!(
                    "must be at most {MAX_MODEL_SERIES}: each model adds series to every scrape"
                ),
            ));
        }
        let stuck = &self.alerts.stuck_after;
        positive("alerts.stuck_after.validating", stuck.validating)?;
        positive("alerts.stuck_after.finalizing", stuck.finalizing)?;
        positive("alerts.stuck_after.cancelling", stuck.cancelling)?;
        for (model, price) in &self.pricing {
            let key = |field: &str| format!("pricing.{model:?}.{field}");
            for (field, value) in [
                ("input", Some(price.input)),
                ("cached_input", price.cached_input),
                ("output", Some(price.output)),
            ] {
                if let Some(v) = value
                    && !(v.is_finite() && v >= 0.0)
                {
                    return Err(ConfigError::key(
                        key(field),
                        format!("{v} is not a price: US dollars per million tokens, zero or more"),
                    ));
                }
            }
            if !(0.0..=1.0).contains(&price.batch_discount) {
                return Err(ConfigError::key(
                    key("batch_discount"),
                    format!(
                        "{} is not a share between 0 and 1 (0.5: batches cost half the prices given)",
                        price.batch_discount
                    ),
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, target) in self.notify.iter().enumerate() {
            target.validate(i)?;
            if !names.insert(target.name.as_str()) {
                return Err(ConfigError::key(
                    format!("notify[{i}].name"),
                    format!(
                        "{:?} names another [[notify]] entry too; each needs its own",
                        target.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("settings always serialise")
    }
}

/// Why toml could not read a file: its excerpt of the line at fault, or, for the one error it
/// gives no place (tables, arrays or dotted keys nested past its recursion limit), that.
pub fn toml_problem(e: &toml::de::Error) -> String {
    match e.span() {
        Some(_) => format!("not valid TOML: {e}"),
        None => format!(
            "not valid TOML: tables, arrays or dotted keys nested too deeply ({})",
            e.message()
        ),
    }
}

/// Puts back, into the serialised `table`, each duration as `written` has it, where it is
/// the same duration written another way.
fn keep_written_durations(table: &mut toml::Table, written: &toml::Table) {
    for (key, value) in table.iter_mut() {
        match (value, written.get(key)) {
            (toml::Value::Table(inner), Some(toml::Value::Table(as_written))) => {
                keep_written_durations(inner, as_written);
            }
            (toml::Value::String(text), Some(toml::Value::String(as_written))) => {
                let same = matches!(
                    (text.parse::<Dur>(), as_written.parse::<Dur>()),
                    (Ok(a), Ok(b)) if a == b
                );
                if same {
                    text.clone_from(as_written);
                }
            }
            _ => {}
        }
    }
}

/// Checks an `output_expires_after` duration against the API's bounds.
/// The environment variable systemd sets inside the service: the directory of its credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Where the systemd credential `name` that `key` names is, by `env` (the process's
/// environment, or a test's); an error naming `key` outside the service, where there is none.
pub fn credential_path(
    key: &str,
    name: &str,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<PathBuf, ConfigError> {
    let dir = env(CREDENTIALS_DIRECTORY).ok_or_else(|| {
        ConfigError::key(
            key,
            format!(
                "$CREDENTIALS_DIRECTORY is not set (it is set only inside the systemd service, \
                 for credentials given with LoadCredential= or SetCredentialEncrypted=); cannot \
                 read credential {name}"
            ),
        )
    })?;
    Ok(PathBuf::from(dir).join(name))
}

/// The longest `daemon.name`, in characters.
pub const INSTANCE_NAME_MAX: usize = 64;

/// `daemon.name`: one line of printable characters, not blank, at most
/// [`INSTANCE_NAME_MAX`] long (it is shown in a column of `status --instances`).
fn instance_name(name: &str) -> Result<(), ConfigError> {
    let problem = if name.trim().is_empty() {
        Some("must not be empty or blank".to_owned())
    } else if name.chars().count() > INSTANCE_NAME_MAX {
        Some(format!(
            "is {} characters long; at most {INSTANCE_NAME_MAX} are allowed",
            name.chars().count()
        ))
    } else if name.chars().any(char::is_control) {
        Some(format!("{name:?} holds a control character"))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ConfigError::key("daemon.name", problem)),
        None => Ok(()),
    }
}

pub fn output_expiry(key: &str, after: Dur) -> Result<(), ConfigError> {
    let secs = after.get().as_secs();
    if !(3_600..=2_592_000).contains(&secs) || after.get().subsec_nanos() != 0 {
        return Err(ConfigError::key(
            key,
            format!("{after} is outside the API's range of 1h to 30 days, in whole seconds"),
        ));
    }
    Ok(())
}

/// Checks user metadata against the API's limits, leaving room for batchwatch's own keys.
pub fn check_metadata(key: &str, metadata: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    metadata_problems(key, metadata)
        .into_iter()
        .next()
        .map_or(Ok(()), Err)
}

/// Every problem of a metadata table set at `key`, in order.
pub fn metadata_problems(key: &str, metadata: &BTreeMap<String, String>) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    let max_pairs = 16 - RESERVED_METADATA_KEYS;
    if metadata.len() > max_pairs {
        problems.push(ConfigError::key(
            key,
            format!(
                "has {} pairs; at most {max_pairs} are allowed",
                metadata.len()
            ),
        ));
    }
    for (k, v) in metadata {
        let at = || format!("{key}.{k}");
        if k.is_empty() || k.chars().count() > 64 {
            problems.push(ConfigError::key(at(), "a key must have 1 to 64 characters"));
        }
        if k.starts_with("batchwatch_") {
            problems.push(ConfigError::key(
                at(),
                "keys starting with batchwatch_ are reserved",
            ));
        }
        if v.chars().count() > 512 {
            problems.push(ConfigError::key(
                at(),
                "a value must have at most 512 characters",
            ));
        }
    }
    problems
}

fn absolute(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::key(key, "a value is required"));
    }
    if !path.is_absolute() {
        return Err(ConfigError::key(
            key,
            format!(
                "{} is a relative path; an absolute path is required",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn positive(key: &str, d: Dur) -> Result<(), ConfigError> {
    if d.get().is_zero() {
        return Err(ConfigError::key(key, "must be longer than zero"));
    }
    Ok(())
}

/// The process's environment variables that are UTF-8.
fn process_env() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
}

/// The `BATCHWATCH_*` variables that name a setting: those with `__` between section and key.
fn settings_from_env(env: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, String> {
    env.into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k[ENV_PREFIX.len()..].contains("__"))
        // Only a name that can be a setting's: the config crate reads `.` and `[N]` in one as
        // a path, and sized a list by N however large (`A[99999999999]` aborted the process).
        .filter(|(k, _)| k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect()
}

/// The first key under `table` (whose own path is `path`) that the config crate would read as
/// a path rather than a name: one with `.`, `[` or `]` in it (found by fuzzing: the crate
/// reads `"x[99999999999]"` as an index, sizes a list by it, and aborts the process).
fn key_with_a_path_in_it(table: &toml::Table, path: &str) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let here = match path {
            "" => key_as_written(key),
            _ => format!("{path}.{}", key_as_written(key)),
        };
        if key.contains(['.', '[', ']']) {
            return Some(here);
        }
        let tables: Vec<&toml::Table> = match value {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(items) => items.iter().filter_map(toml::Value::as_table).collect(),
            _ => Vec::new(),
        };
        tables
            .into_iter()
            .find_map(|t| key_with_a_path_in_it(t, &here))
    })
}

fn env_var_key(var: &str) -> String {
    var[ENV_PREFIX.len()..]
        .to_ascii_lowercase()
        .replace("__", ".")
}

/// Turns the config crate's error into one that names the key and says what is wrong.
fn translate(e: config::ConfigError) -> ConfigError {
    match e {
        config::ConfigError::At { error, origin, key } => {
            let mut inner = translate(*error);
            inner.key = match (key, inner.key.take()) {
                (Some(outer), Some(inner_key)) if !inner_key.starts_with(&outer) => {
                    Some(format!("{outer}.{inner_key}"))
                }
                (Some(outer), None) => Some(outer),
                (_, inner_key) => inner_key,
            };
            inner.origin = inner.origin.or(origin);
            unknown_field_key(inner)
        }
        config::ConfigError::Type {
            origin,
            unexpected,
            expected,
            key,
        } => ConfigError {
            key,
            origin,
            problem: format!("expected {expected}, found {unexpected}"),
        },
        config::ConfigError::NotFound(key) => ConfigError::key(key, "a value is required"),
        config::ConfigError::FileParse { uri, cause } => ConfigError {
            key: None,
            origin: uri,
            problem: format!("not valid TOML: {cause}"),
        },
        config::ConfigError::Message(m) => unknown_field_key(ConfigError::general(m)),
        other => ConfigError::general(other.to_string()),
    }
}

/// A key as TOML writes it: bare when it can be, else quoted, so that an empty key or one of
/// spaces is still named (`""`, `" "`).
pub fn key_as_written(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        toml::Value::String(key.to_owned()).to_string()
    }
}

/// serde reports an unknown field as a message about its parent; name the field itself.
fn unknown_field_key(mut err: ConfigError) -> ConfigError {
    if let Some(rest) = err.problem.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once('`')
    {
        let field = key_as_written(field);
        err.key = Some(match err.key.take() {
            Some(parent) if !parent.ends_with(&field) => format!("{parent}.{field}"),
            Some(parent) => parent,
            None => field,
        });
        err.problem = format!("unknown key;{}", expected.trim_start_matches(','));
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_names_sqlite_or_postgres_without_a_password() {
        let parse = |text| DatabaseLocation::parse(text, "database.url");
        assert_eq!(
            parse("sqlite:/var/lib/batchwatch/state.db").unwrap(),
            DatabaseLocation::Sqlite("/var/lib/batchwatch/state.db".into())
        );
        assert_eq!(
            parse("sqlite:///srv/state.db").unwrap(),
            DatabaseLocation::Sqlite("/srv/state.db".into())
        );
        for url in [
            "postgres://bw@db.internal/batchwatch",
            "postgresql://db:5433/batchwatch?sslmode=disable",
            "postgres://bw@[::1]/batchwatch",
        ] {
            assert_eq!(
                parse(url).unwrap(),
                DatabaseLocation::Postgres(url.to_owned())
            );
        }
        for (url, rule) in [
            (
                "postgres://bw:s3cret@db/batchwatch",
                "must not hold the password",
            ),
            (
                "postgres://db/batchwatch?PassWord=s3cret",
                "must not hold the password",
            ),
            ("sqlite:relative.db", "an absolute path is required"),
            ("mysql://db/x", "neither sqlite:PATH nor a postgres:// URL"),
        ] {
            let e = parse(url).unwrap_err();
            assert!(e.problem.contains(rule), "{url}: {e}");
            assert!(!e.problem.contains("s3cret"), "{url}: {e}");
        }
        for (url, shown) in [
            (
                "postgres://bw:s3cret@db.internal:5432/batchwatch?sslmode=require",
                "postgres://bw:***@db.internal:5432/batchwatch?sslmode=require",
            ),
            (
                "postgres://bw@db/batchwatch?password=s3cret&application_name=x",
                "postgres://bw@db/batchwatch?password=***&application_name=x",
            ),
            ("postgresql://db/batchwatch", "postgresql://db/batchwatch"),
            ("postgres://a:b:c@h/d", "postgres://a:***@h/d"),
            // Unencoded, a '/', '?' or '@' in the password would end the user part early.
            ("postgres://bw:s3/cret@db/x", "postgres://bw:***@db/x"),
            ("postgres://bw:s3?c@ret@db/x", "postgres://bw:***@db/x"),
            (
                "postgres://db/x?application_name=a&PASSWORD=s3cret",
                "postgres://db/x?application_name=a&PASSWORD=***",
            ),
        ] {
            assert_eq!(without_password(url), shown);
            assert_eq!(has_password(url), url != shown, "{url}");
        }
        assert!(
            has_password("postgres://db/x?password"),
            "a key without a value"
        );
        assert_eq!(
            without_password("postgres://db/x?password"),
            "postgres://db/x?password",
            "an empty password hides nothing"
        );
        let settings = Settings::load_text("", "f.toml", []).unwrap();
        assert_eq!(
            settings.database.location(),
            DatabaseLocation::Sqlite(settings.database.path.clone()),
            "no url: the SQLite file at database.path"
        );
    }

    // Found by fuzzing (fuzz/fuzz_targets/config.rs): the config crate reported this as "not
    // valid TOML: number too large to fit in target type", with neither line nor key.
    #[test]
    fn a_number_too_large_is_refused_with_its_line() {
        let text = "[queue]\nscan_interval = \"5s\"\n[nope]\nx = 66666666666666666666666\n";
        let e = Settings::load_text(text, "f.toml", []).unwrap_err();
        assert_eq!(e.origin.as_deref(), Some("f.toml"));
        assert!(
            e.problem
                .starts_with("not valid TOML: TOML parse error at line 4, column 5"),
            "{e}"
        );
    }

    // Found by fuzzing: an empty key was named as ``.
    #[test]
    fn an_unknown_key_that_is_not_bare_is_named_quoted() {
        for (text, key) in [
            ("\"\" = 1\n", "\"\""),
            ("[api]\n\"a b\" = 1\n", "api.\"a b\""),
        ] {
            let e = Settings::load_text(text, "f.toml", []).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
            assert!(e.problem.starts_with("unknown key"), "{e}");
        }
    }

    #[test]
    fn nesting_past_the_toml_readers_limit_is_refused_as_such() {
        let text = format!("{}x = 1\n", "a.".repeat(200));
        let e = Settings::load_text(&text, "f.toml", []).unwrap_err();
        assert!(e.problem.contains("nested too deeply"), "{e}");
    }

    #[test]
    fn a_notify_entry_names_its_target_and_each_broken_rule_is_named() {
        let ok = "[[notify]]\nname = \"pipe\"\non = [\"completed\", \"stuck\"]\n\
                  url = \"https://hooks.example.com/b\"\nsecret_file = \"/etc/s\"\n\
                  [[notify]]\nname = \"run\"\non = [\"failed\"]\ncommand = [\"/bin/true\", \"-x\"]\n";
        let s = Settings::load_text(ok, "f.toml", []).unwrap();
        assert_eq!(s.notify.len(), 2);
        assert!(s.notify[0].wants(NotifyOn::Stuck) && !s.notify[0].wants(NotifyOn::Failed));
        assert_eq!(
            s.notify[0].via(),
            NotifyVia::Url("https://hooks.example.com/b")
        );
        assert_eq!(s.notify[1].timeout, Dur(Duration::from_secs(10)));
        assert_eq!(s.notify[1].retry_for, Dur(Duration::from_secs(72 * 3600)));
        // The effective configuration prints them back, and reads back the same.
        let again = Settings::load_text(&s.to_toml(), "again.toml", []).unwrap();
        assert_eq!(again.notify, s.notify);

        let entry = |body: &str| format!("[[notify]]\nname = \"n\"\non = [\"completed\"]\n{body}");
        for (text, key, problem) in [
            (
                entry("url = \"https://h/x\"\ncommand = [\"/bin/true\"]\n"),
                "notify.n.command",
                "exactly one",
            ),
            (entry(""), "notify.n.command", "exactly one"),
            (
                entry("url = \"https://h/x\"\n"),
                "notify.n.secret_file",
                "signing secret",
            ),
            (
                entry("url = \"ftp://h/x\"\nsecret_file = \"/s\"\n"),
                "notify.n.url",
                "not a URL",
            ),
            (
                entry("command = [\"on-done\"]\n"),
                "notify.n.command",
                "relative path",
            ),
            (
                entry("command = []\n"),
                "notify.n.command",
                "must name a program",
            ),
            (
                entry("command = [\"/bin/true\"]\nsecret_file = \"/s\"\n"),
                "notify.n.secret_file",
                "not signed",
            ),
            (
                entry("command = [\"/bin/true\"]\ntimeout = \"11m\"\n"),
                "notify.n.timeout",
                "at most 10m",
            ),
            (
                "[[notify]]\nname = \"a b\"\non = [\"completed\"]\ncommand = [\"/bin/true\"]\n"
                    .to_owned(),
                "notify[0].name",
                "is not a name",
            ),
            (
                "[[notify]]\nname = \"n\"\non = []\ncommand = [\"/bin/true\"]\n".to_owned(),
                "notify.n.on",
                "at least one",
            ),
            (
                format!(
                    "{}{}",
                    entry("command = [\"/bin/true\"]\n"),
                    entry("command = [\"/bin/false\"]\n")
                ),
                "notify[1].name",
                "names another",
            ),
        ] {
            let e = Settings::load_text(&text, "f.toml", []).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
            assert!(e.problem.contains(problem), "{text}: {e}");
        }
        let unknown = "[[notify]]\nname = \"n\"\non = [\"done\"]\ncommand = [\"/bin/true\"]\n";
        let e = Settings::load_text(unknown, "f.toml", []).unwrap_err();
        assert!(e.to_string().contains("done"), "{e}");
    }

    #[test]
    fn the_example_file_is_a_valid_configuration() {
        let s = Settings::load_from(None, []).unwrap();
        assert_eq!(s.queue.dir, PathBuf::from("/var/lib/batchwatch/queue"));
        assert_eq!(s.poll.min_interval, Dur(Duration::from_secs(5)));
        assert_eq!(s.batch.max_bytes, ByteSize(200_000_000));
        assert_eq!(s.api.key_source(), KeySource::Env("OPENAI_API_KEY".into()));
    }

    #[test]
    fn durations_parse_friendly_forms_and_print_back() {
        for (text, secs) in [
            ("500ms", 0.5),
            ("90s", 90.0),
            ("20h", 72_000.0),
            ("1h 30m", 5_400.0),
            ("1h30m", 5_400.0),
            ("7d", 604_800.0),
            ("30d", 2_592_000.0),
            ("2w", 1_209_600.0),
            ("1d 12h", 129_600.0),
        ] {
            let d: Dur = text.parse().unwrap();
            assert_eq!(d.get().as_secs_f64(), secs, "{text}");
            assert_eq!(d.to_string().parse::<Dur>().unwrap(), d);
        }
        // Printed in the largest units that hold it, days included: as it is written.
        for (text, printed) in [
            ("30d", "30d"),
            ("720h", "30d"),
            ("2w", "14d"),
            ("1h 30m", "1h 30m"),
            ("90s", "1m 30s"),
            ("500ms", "500ms"),
            ("0s", "0s"),
            ("1d 12h", "1d 12h"),
        ] {
            assert_eq!(text.parse::<Dur>().unwrap().to_string(), printed, "{text}");
        }
        assert!("5x".parse::<Dur>().is_err());
        assert!("-5s".parse::<Dur>().unwrap_err().contains("negative"));
        assert!("10".parse::<Dur>().is_err());
        assert!(
            "1 month"
                .parse::<Dur>()
                .unwrap_err()
                .contains("no fixed length")
        );
        assert!("1y".parse::<Dur>().unwrap_err().contains("no fixed length"));
    }

    #[test]
    fn sizes_parse_decimal_and_binary_units() {
        assert_eq!("200MB".parse::<ByteSize>().unwrap(), ByteSize(200_000_000));
        assert_eq!("190 MiB".parse::<ByteSize>().unwrap(), ByteSize(190 << 20));
        assert_eq!("1024".parse::<ByteSize>().unwrap(), ByteSize(1024));
        assert!(
            "12 parsecs"
                .parse::<ByteSize>()
                .unwrap_err()
                .contains("unknown unit")
        );
        // Found by fuzzing: a size past i64::MAX, written as a string, was accepted and then
        // printed by `check-config` as an integer TOML cannot read.
        let huge = "16871825072507430816";
        assert!(huge.parse::<ByteSize>().unwrap_err().contains("too large"));
        assert!("8GiB".parse::<ByteSize>().is_ok());
        let e = Settings::load_text(
            &format!("[batch]\nmax_bytes = \"{huge}\"\n"),
            "batchwatch.toml",
            [],
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("batch.max_bytes"), "{e}");
        assert!(e.problem.contains("too large"), "{e}");
    }

    #[test]
    fn a_duration_longer_than_100_years_is_refused_and_every_accepted_one_prints_back() {
        // Found by fuzzing: 446565333 hours (51,000 years) was accepted and printed by
        // `check-config` as "18606888d 21h", which no longer parses (too many days).
        let e = Settings::load_text(
            "[batch]\ndeadline = \"446565333h\"\n",
            "batchwatch.toml",
            [],
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("batch.deadline"), "{e}");
        assert!(e.problem.contains("longer than 100 years (36500d)"), "{e}");
        for text in ["36500d", "876000h", "5214w 2d", "36499d 23h 59m 59s 999ms"] {
            let d: Dur = text.parse().unwrap();
            assert_eq!(d.to_string().parse::<Dur>().unwrap(), d, "{text}");
        }
        for text in ["36501d", "876000h 1ms", "5215w", "175307616h"] {
            assert!(
                text.parse::<Dur>().unwrap_err().contains("100 years"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_level_filter_with_whitespace_before_a_wide_character_is_read_without_a_panic() {
        // Found by fuzzing: tracing-subscriber slices the untrimmed directive at the trimmed
        // one's offsets, and panicked inside the 'Ҙ'.
        for level in [" Ҙ[a]", "info, \tҘҘ[x]=debug"] {
            let text = format!("[log]\nlevel = {level:?}\n");
            if let Err(e) = Settings::load_text(&text, "batchwatch.toml", []) {
                assert_eq!(e.key.as_deref(), Some("log.level"), "{e}");
            }
        }
    }

    #[test]
    fn a_field_value_in_a_level_filter_is_matched_as_written_not_compiled_as_a_regex() {
        // Found by fuzzing: `[{$e=p<<<<...}]` took over two minutes to compile as a regex. As
        // written, `(` is a value like any other (as a regex it does not compile).
        let text = "[log]\nlevel = \"info,[{field=(}]=debug\"\n";
        Settings::load_text(text, "batchwatch.toml", []).unwrap();
        assert!(crate::telemetry::level_filter("[{field=(}]=debug").is_ok());
    }

    #[test]
    fn a_key_the_config_crate_would_read_as_a_path_is_refused_naming_it() {
        // Found by fuzzing: `"l-[...320951842194325515]" = "'="` aborted the process (the
        // config crate sized a list by the index).
        for (text, key) in [
            (
                "\"l-[320951842194325515]\" = \"x\"\n",
                "\"l-[320951842194325515]\"",
            ),
            (
                "[batch.metadata]\n\"team.name\" = \"x\"\n",
                "batch.metadata.\"team.name\"",
            ),
        ] {
            let e = Settings::load_text(text, "batchwatch.toml", []).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
        }
        let env = [("BATCHWATCH_X[99999999999]__Y".to_owned(), "1".to_owned())];
        Settings::load_text("", "batchwatch.toml", env).unwrap();
    }

    #[test]
    fn a_number_from_the_environment_too_large_for_toml_is_refused_naming_its_key() {
        let huge = u64::MAX.to_string();
        let e = Settings::load_text(
            "",
            "batchwatch.toml",
            [("BATCHWATCH_BATCH__MAX_REQUESTS".to_owned(), huge)],
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("batch.max_requests"), "{e}");
        assert!(e.problem.contains("at most"), "{e}");
    }

    #[test]
    fn variables_without_a_section_separator_are_not_settings() {
        let s = Settings::load_from(
            None,
            [("BATCHWATCH_REQUIRE_DOCKER".to_owned(), "1".to_owned())],
        );
        assert!(s.is_ok(), "{s:?}");
    }
}
