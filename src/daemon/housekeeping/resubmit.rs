//! Finishing what a batch left undone: the requests of a finished job that have no successful
//! result, written as a new file (and sidecar) into incoming/, where the daemon claims it as a
//! job linked to the first (`parent_job_id`, from the sidecar's `parent_job`).
//!
//! A request of the job is, by its results (`results/JOBID/output.jsonl` and `errors.jsonl`):
//! * done: an output line with a 2xx response;
//! * expired: an error line with `batch_expired` or `batch_cancelled`, or no line at all (the
//!   batch ended before it ran);
//! * failed: any other line (an error, or a response that is not 2xx); failed for a reason worth
//!   retrying ([`transient`]) when the service, not the request, was at fault: a 408, a 429, a
//!   5xx, or an error whose type or code says the same (`rate_limit_exceeded`, `server_error`,
//!   `overloaded_error`, `api_error`, `timeout`, ...). Never a 4xx the request or the model
//!   caused (`invalid_request_error`, a content policy refusal).
//!
//! `--only expired`, `--only failed`, `--only transient` (the failed ones worth retrying) or
//! `--only unfinished` (expired and failed) chooses which are written.
//!
//! # A request is paid for once per chain
//!
//! The jobs made this way from one original file are its chain. A request of the original is
//! covered when a job of the chain has a successful result for it, or may be about to: while a
//! job of the chain has not ended, or a resubmission of the chain waits in incoming/. So a
//! resubmission ([`resubmit`]) looks at the whole chain:
//! * while anything of the chain is in flight, it is refused, naming what is: its results
//!   decide what is still undone;
//! * while the results of a finished job of the chain are gone (`retention.results`), it is
//!   refused: what that job completed is unknown;
//! * otherwise it writes the selected requests that no job of the chain completed, and says
//!   how many it left out.
//!
//! `--force` writes the selected requests whatever the chain did or does, and says how many of
//! them will run, and be paid, again, and where they succeeded or are in flight.
//!
//! # A resubmission (a row of `resubmissions`)
//!
//! ```text
//!   file and sidecar written under temporary names in incoming/ (ignored by intake)
//!        │ row committed (the chain unchanged since it was read, the name free)
//!        ▼
//!     pending ──renamed into place; the daemon claims it (the transaction
//!        │                           that inserts the job)──────────────────▶ claimed
//!        └──its file left incoming/ unclaimed (removed by hand), seen by a
//!           later resubmission of the chain──▶ withdrawn
//! ```
//!
//! The new file is `STEM.resubmit-N.jsonl`, N counting the chain's resubmissions. Its row is
//! committed before the file appears under that name: a crash in between leaves the temporary
//! files, which the next look at the chain (and the daemon at its start) renames into place.
//!
//! Two resubmissions of one chain at once (two operators, or one and the daemon) cannot both
//! write: each reads the chain, writes its file under a temporary name, then, in one write
//! transaction (`BEGIN IMMEDIATE`: one writer at a time), reads the chain again and records its
//! row only if the chain is unchanged. The second to get there finds the first one's pending
//! row in the chain, starts over, and is refused.
//!
//! # In the daemon
//!
//! `batch.resubmit_expired = N`: a job that ends expired, fewer than N resubmissions down its
//! chain, is marked in the transaction that ends it (`jobs.resubmit_due = 'expired'`);
//! `batch.resubmit_failed = N`: so is a job that ends completed, or failed with every request
//! failed, with requests that failed for a reason worth retrying (`'transient'`). [`run`]
//! resubmits those undone requests ([`resubmit`], which clears the mark in the transaction that records the
//! new file) or, when there is nothing to write or the chain forbids it, clears the mark with
//! an event that says why.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::daemon::ctx::Ctx;
use crate::failpoint;
use crate::queue::{self, Queue};
use crate::store::chain::{Member, NewResubmission, Pending, View};
use crate::store::jobs::Job;
use crate::store::prelude::*;
use crate::store::{Lease, Store};

/// Which undone requests to send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// Requests the batch never ran (it expired or was cancelled first).
    Expired,
    /// Requests that ran and failed.
    Failed,
    /// Requests that ran and failed for a reason worth retrying ([`transient`]).
    Transient,
    /// Expired and failed.
    Unfinished,
}

impl Only {
    pub fn as_str(self) -> &'static str {
        match self {
            Only::Expired => "expired",
            Only::Failed => "failed",
            Only::Transient => "transient",
            Only::Unfinished => "unfinished",
        }
    }

    pub fn parse(text: &str) -> Option<Only> {
        [
            Only::Expired,
            Only::Failed,
            Only::Transient,
            Only::Unfinished,
        ]
        .into_iter()
        .find(|o| o.as_str() == text)
    }

    /// Which requests it takes, in words.
    pub fn means(self) -> &'static str {
        match self {
            Only::Expired => "those never run",
            Only::Failed => "those that failed",
            Only::Transient => "those that failed for a reason worth retrying",
            Only::Unfinished => "those never run and those that failed",
        }
    }

    fn wants(self, class: Class) -> bool {
        match (self, class) {
            (_, Class::Done) => false,
            (Only::Unfinished, _) => true,
            (Only::Expired, c) => c == Class::Expired,
            (Only::Failed, c) => matches!(c, Class::Failed | Class::Transient),
            (Only::Transient, c) => c == Class::Transient,
        }
    }
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Done,
    /// Failed, for a reason the request or the model caused.
    Failed,
    /// Failed, for a reason worth retrying ([`transient`]).
    Transient,
    Expired,
}

/// The HTTP statuses of a failed request worth retrying: the service timed out, was rate
/// limited, or failed on its side.
pub const TRANSIENT_STATUSES: &[u64] = &[408, 429, 500, 502, 503, 504, 529];

/// The error types and codes of a failed request worth retrying (OpenAI's and Anthropic's
/// names for a rate limit, an overloaded or failing service, a timeout).
pub const TRANSIENT_ERRORS: &[&str] = &[
    "rate_limit_exceeded",
    "rate_limit_error",
    "server_error",
    "api_error",
    "overloaded_error",
    "service_unavailable",
    "timeout",
    "request_timeout",
];

/// Whether a failed request's result line says it failed for a reason worth retrying: the
/// service's fault, not the request's. A status decides when there is one (a 400 is the
/// request's fault, whatever its error says); a line without a response decides by its error's
/// code.
pub fn transient(line: &serde_json::Value) -> bool {
    let named = |v: &serde_json::Value| v.as_str().is_some_and(|s| TRANSIENT_ERRORS.contains(&s));
    match line["response"]["status_code"].as_u64() {
        Some(status) => TRANSIENT_STATUSES.contains(&status),
        None => named(&line["error"]["code"]) || named(&line["error"]["type"]),
    }
}

/// Who asks for a resubmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An operator: `batchwatch resubmit`.
    Cli,
    /// The daemon, for a job that expired: `batch.resubmit_expired`.
    Daemon,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Cli => "cli",
            Origin::Daemon => "daemon",
        }
    }

    /// Who asked, for a resubmission of `only`.
    fn named(self, only: Only) -> &'static str {
        match (self, only) {
            (Origin::Cli, _) => "batchwatch resubmit",
            (Origin::Daemon, Only::Transient) => "batch.resubmit_failed",
            (Origin::Daemon, _) => "batch.resubmit_expired",
        }
    }
}

/// A resubmission asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub only: Only,
    /// Write the selected requests whatever the chain completed or has in flight.
    pub force: bool,
    pub origin: Origin,
}

/// A job of the chain, or a resubmission of it not yet claimed: what holds requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `None` for a file in incoming/ that no job claimed yet.
    pub job_id: Option<String>,
    pub file: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.job_id {
            Some(job) => write!(f, "job {job} ({})", self.file),
            None => write!(f, "incoming/{}, not yet claimed", self.file),
        }
    }
}

impl Holder {
    fn job(m: &Member) -> Holder {
        Holder {
            job_id: Some(m.id.clone()),
            file: m.file_name.clone(),
        }
    }

    fn waiting(p: &Pending) -> Holder {
        Holder {
            job_id: None,
            file: p.file_name.clone(),
        }
    }
}

/// Why nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Something of the chain may still complete requests.
    InFlight(Vec<Holder>),
    /// What these finished jobs of the chain completed is unknown: their results are gone.
    ResultsGone(Vec<Holder>),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::InFlight(holders) => write!(
                f,
                "a resubmission of the same original file is in flight: {}; its results decide \
                 what is still undone. Resubmit once it has ended, or with --force to send the \
                 requests anyway (those it holds are then paid twice)",
                list(holders)
            ),
            Refusal::ResultsGone(holders) => write!(
                f,
                "the results of {} are no longer on disk (retention.results?), so what it \
                 completed is unknown; --force sends the requests anyway (some may be paid twice)",
                list(holders)
            ),
        }
    }
}

fn list(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(Holder::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The new file written into incoming/.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub file: String,
    pub requests: u64,
    pub only: Only,
    /// Selected requests left out: they succeeded in these jobs of the chain.
    pub left_out: Vec<(Holder, u64)>,
    /// With `--force`: requests written that succeeded in, or are in flight in, these.
    pub paid_again: Vec<(Holder, u64)>,
}

/// What a resubmission did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Written(Written),
    /// No selected request is left undone in the chain; `left_out` says where those that
    /// were selected succeeded.
    Nothing {
        left_out: Vec<(Holder, u64)>,
    },
    Refused(Refusal),
}

impl Written {
    /// The job event that tells of it.
    fn event(&self, origin: Origin) -> String {
        let mut message = format!(
            "its {} {} requests (--only {}: {}) are resubmitted as {} ({})",
            self.requests,
            self.only.as_str(),
            self.only.as_str(),
            self.only.means(),
            self.file,
            origin.named(self.only)
        );
        if !self.left_out.is_empty() {
            message += &format!(
                "; left out, already done in its chain: {}",
                counts(&self.left_out)
            );
        }
        if !self.paid_again.is_empty() {
            message += &format!("; --force: paid again: {}", counts(&self.paid_again));
        }
        message
    }
}

/// `3 in job … (…); 2 in …`.
pub fn counts(per_holder: &[(Holder, u64)]) -> String {
    per_holder
        .iter()
        .map(|(h, n)| format!("{n} in {h}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What is known of the chain beyond the job resubmitted.
#[derive(Debug, Default)]
struct Known {
    /// The custom_ids each other finished job of the chain completed.
    succeeded: Vec<(Holder, HashSet<String>)>,
    /// Jobs not yet ended and files not yet claimed, with their custom_ids when they were read
    /// (only `--force` reads them, to say what it pays again).
    in_flight: Vec<(Holder, Option<HashSet<String>>)>,
    /// Finished jobs whose results are gone.
    results_gone: Vec<Holder>,
}

impl Known {
    /// Why nothing may be written, if something forbids it.
    fn refusal(&self, force: bool) -> Option<Refusal> {
        if force {
            return None;
        }
        if !self.in_flight.is_empty() {
            return Some(Refusal::InFlight(
                self.in_flight.iter().map(|(h, _)| h.clone()).collect(),
            ));
        }
        if !self.results_gone.is_empty() {
            return Some(Refusal::ResultsGone(self.results_gone.clone()));
        }
        None
    }
}

/// Chooses, line by line, the requests to write, and counts the selected ones the chain
/// holds elsewhere.
struct Selection<'a> {
    own: &'a HashMap<String, Class>,
    known: &'a Known,
    ask: Ask,
    elsewhere: Vec<(Holder, u64)>,
}

impl<'a> Selection<'a> {
    fn new(own: &'a HashMap<String, Class>, known: &'a Known, ask: Ask) -> Selection<'a> {
        Selection {
            own,
            known,
            ask,
            elsewhere: Vec::new(),
        }
    }

    /// Whether the request `id` of the job goes into the new file.
    fn choose(&mut self, id: &str) -> bool {
        // No result line at all: the batch ended before it ran.
        let class = self.own.get(id).copied().unwrap_or(Class::Expired);
        if !self.ask.only.wants(class) {
            return false;
        }
        let succeeded = self.known.succeeded.iter().map(|(h, ids)| (h, Some(ids)));
        let in_flight = self
            .known
            .in_flight
            .iter()
            .map(|(h, ids)| (h, ids.as_ref()));
        let held = succeeded
            .chain(in_flight)
            .find(|(_, ids)| ids.is_some_and(|ids| ids.contains(id)))
            .map(|(h, _)| h);
        if let Some(holder) = held {
            match self.elsewhere.iter_mut().find(|(h, _)| h == holder) {
                Some((_, n)) => *n += 1,
                None => self.elsewhere.push((holder.clone(), 1)),
            }
        }
        // Without --force nothing is in flight here, so held means succeeded.
        self.ask.force || held.is_none()
    }
}

/// What became of the request of one result line.
fn class(line: &serde_json::Value) -> Class {
    let status = line["response"]["status_code"].as_u64();
    let code = line["error"]["code"].as_str();
    if line["error"].is_null() && status.is_some_and(|s| (200..300).contains(&s)) {
        Class::Done
    } else if matches!(code, Some("batch_expired" | "batch_cancelled")) {
        Class::Expired
    } else if transient(line) {
        Class::Transient
    } else {
        Class::Failed
    }
}

/// Reads the result file `name` in `dir` (none when it is missing) line by line, giving
/// `each` every line that is JSON, until `each` says to stop (false).
fn read_results(
    dir: &Path,
    name: &str,
    mut each: impl FnMut(&serde_json::Value) -> bool,
) -> anyhow::Result<()> {
    let path = dir.join(name);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    for line in BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
            && !each(&value)
        {
            break;
        }
    }
    Ok(())
}

/// The class of each request that has a result line.
fn classes(dir: &Path) -> anyhow::Result<HashMap<String, Class>> {
    let mut seen = HashMap::new();
    for name in ["errors.jsonl", "output.jsonl"] {
        read_results(dir, name, |value| {
            if let Some(id) = value["custom_id"].as_str()
                // A success anywhere wins (output is read last).
                && seen.get(id) != Some(&Class::Done)
            {
                seen.insert(id.to_owned(), class(value));
            }
            true
        })?;
    }
    Ok(seen)
}

/// Whether the results in `dir` hold a request that failed for a reason worth retrying: its
/// errors file read up to the first such line (the output, however large, is not read).
pub fn any_transient(dir: &Path) -> anyhow::Result<bool> {
    let mut found = false;
    read_results(dir, "errors.jsonl", |value| {
        found = class(value) == Class::Transient;
        !found
    })?;
    Ok(found)
}

/// The classes of a finished job's requests; `None` when its results are gone. A job that
/// created no batch has no results and no request done.
fn results_of(
    queue: &Queue,
    results_dir: Option<&str>,
) -> anyhow::Result<Option<HashMap<String, Class>>> {
    let Some(dir) = results_dir.map(|d| queue.root().join(d)) else {
        return Ok(Some(HashMap::new()));
    };
    if !dir.is_dir() {
        return Ok(None);
    }
    classes(&dir).map(Some)
}

/// The custom_ids of a file of requests.
fn request_ids(path: &Path) -> std::io::Result<HashSet<String>> {
    let mut ids = HashSet::new();
    for line in BufReader::new(std::fs::File::open(path)?).split(b'\n') {
        if let Some(id) = serde_json::from_slice::<serde_json::Value>(&line?)
            .ok()
            .and_then(|v| v["custom_id"].as_str().map(str::to_owned))
        {
            ids.insert(id);
        }
    }
    Ok(ids)
}

/// The name of the `generation`th resubmission of a file named `name`.
pub fn file_name(name: &str, generation: usize) -> String {
    let stem = name.strip_suffix(".jsonl").unwrap_or(name);
    let stem = match stem.rsplit_once(".resubmit-") {
        Some((base, n)) if n.parse::<u64>().is_ok() => base,
        _ => stem,
    };
    format!("{stem}.resubmit-{generation}.jsonl")
}

/// The temporary names a resubmission is written under: the file, and its sidecar.
const STAGE_PREFIX: &str = ".batchwatch-resubmit-";

fn staged(queue: &Queue, stage: &str) -> (PathBuf, PathBuf) {
    (
        queue.incoming.join(format!("{STAGE_PREFIX}{stage}.part")),
        queue
            .incoming
            .join(format!("{STAGE_PREFIX}{stage}.toml.part")),
    )
}

/// Renames a recorded resubmission's temporary files into place, the sidecar first so the
/// daemon sees both or neither; what is in place already (or was claimed) is left alone.
fn publish(queue: &Queue, file_name: &str, stage: &str) -> std::io::Result<()> {
    let (file, sidecar) = staged(queue, stage);
    let target = queue.incoming.join(file_name);
    if let Some(to) = queue::sidecar_path(&target) {
        queue::move_if_present(&sidecar, &to)?;
    }
    queue::move_if_present(&file, &target)
}

/// Where a pending resubmission's file is now: waiting in incoming/ (moved into place first,
/// if a crash left it under its temporary name), or being claimed in processing/ (renamed,
/// its job not yet recorded). `None`: it left the queue without being claimed.
fn whereabouts(queue: &Queue, p: &Pending) -> std::io::Result<Option<PathBuf>> {
    publish(queue, &p.file_name, &p.stage)?;
    let waiting = queue.incoming.join(&p.file_name);
    if waiting.exists() {
        return Ok(Some(waiting));
    }
    for dir in std::fs::read_dir(&queue.processing)? {
        let claimed = dir?.path().join(&p.file_name);
        if claimed.exists() {
            return Ok(Some(claimed));
        }
    }
    Ok(None)
}

/// A resubmission written under temporary names, ready to be recorded.
struct Staged {
    name: String,
    stage: String,
    written: Written,
    /// Pending resubmissions of the chain whose files left the queue unclaimed.
    withdrawn: Vec<i64>,
}

impl Staged {
    fn discard(&self, queue: &Queue) {
        let (file, sidecar) = staged(queue, &self.stage);
        for path in [file, sidecar] {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "a temporary file of a resubmission could not be removed");
            }
        }
    }
}

enum Prepared {
    Staged(Staged),
    Done(Outcome),
}

/// Reads the chain's files and, unless something forbids it, writes the resubmission under
/// temporary names. `taken`: the names of every pending resubmission.
fn prepare(
    queue: &Queue,
    job: &Job,
    view: &View,
    taken: &HashSet<String>,
    ask: Ask,
) -> anyhow::Result<Prepared> {
    anyhow::ensure!(
        job.state.is_terminal(),
        "job {} is {}; only a finished job can be resubmitted",
        job.id,
        job.state
    );
    let input = queue.root().join(&job.path);
    anyhow::ensure!(
        input.is_file(),
        "the file of job {} is no longer at {} (removed by retention?); it cannot be resubmitted",
        job.id,
        job.path
    );
    let (known, own, withdrawn) = survey(queue, job, view, ask.force)?;
    if let Some(refusal) = known.refusal(ask.force) {
        return Ok(Prepared::Done(Outcome::Refused(refusal)));
    }
    let unclaimed = view.pending.len() - withdrawn.len();
    let name = free_name(queue, &job.file_name, view.members.len() + unclaimed, taken)?;
    let mut selection = Selection::new(&own, &known, ask);
    let staged = write_staged(queue, &input, job, &mut selection)?;
    let elsewhere = selection.elsewhere;
    let Some((stage, requests)) = staged else {
        return Ok(Prepared::Done(Outcome::Nothing {
            left_out: elsewhere,
        }));
    };
    let (left_out, paid_again) = if ask.force {
        (Vec::new(), elsewhere)
    } else {
        (elsewhere, Vec::new())
    };
    Ok(Prepared::Staged(Staged {
        written: Written {
            file: queue.relative(&queue.incoming.join(&name)),
            requests,
            only: ask.only,
            left_out,
            paid_again,
        },
        name,
        stage,
        withdrawn,
    }))
}

/// What the chain of `job` completed and has in flight, the classes of `job`'s own requests,
/// and the pending resubmissions whose files left the queue unclaimed. Files in flight are
/// read only when `force` (to say what is paid again).
fn survey(
    queue: &Queue,
    job: &Job,
    view: &View,
    force: bool,
) -> anyhow::Result<(Known, HashMap<String, Class>, Vec<i64>)> {
    let read_ids = |path: &Path| force.then(|| request_ids(path).ok()).flatten();
    let mut known = Known::default();
    for m in view.members.iter().filter(|m| m.id != job.id) {
        if !m.state.is_terminal() {
            let ids = read_ids(&queue.root().join(&m.path));
            known.in_flight.push((Holder::job(m), ids));
            continue;
        }
        match results_of(queue, m.results_dir.as_deref())? {
            Some(classes) => {
                let done = classes
                    .into_iter()
                    .filter(|(_, c)| *c == Class::Done)
                    .map(|(id, _)| id)
                    .collect();
                known.succeeded.push((Holder::job(m), done));
            }
            None => known.results_gone.push(Holder::job(m)),
        }
    }
    let mut withdrawn = Vec::new();
    for p in &view.pending {
        match whereabouts(queue, p)? {
            Some(path) => known.in_flight.push((Holder::waiting(p), read_ids(&path))),
            None => withdrawn.push(p.id),
        }
    }
    let own = match results_of(queue, job.results_dir.as_deref())? {
        Some(classes) => classes,
        None => {
            known.results_gone.push(Holder {
                job_id: Some(job.id.clone()),
                file: job.file_name.clone(),
            });
            HashMap::new()
        }
    };
    Ok((known, own, withdrawn))
}

/// The first resubmission name from number `first` on that is free: not pending, and neither
/// it nor its sidecar in incoming/.
fn free_name(
    queue: &Queue,
    original: &str,
    first: usize,
    taken: &HashSet<String>,
) -> anyhow::Result<String> {
    let name = (first..)
        .map(|n| file_name(original, n))
        .find(|name| {
            let target = queue.incoming.join(name);
            let sidecar = queue::sidecar_path(&target);
            !taken.contains(name) && !target.exists() && !sidecar.is_some_and(|s| s.exists())
        })
        .expect("some number is free");
    anyhow::ensure!(
        queue::sidecar_path(&queue.incoming.join(&name)).is_some(),
        "the resubmitted file's name leaves no room for its sidecar"
    );
    Ok(name)
}

/// Writes the lines of `input` that `selection` chooses, byte for byte, and the sidecar, under
/// temporary names that intake ignores; returns their stage and how many lines, or `None`
/// (and nothing left behind) when no line is chosen.
fn write_staged(
    queue: &Queue,
    input: &Path,
    job: &Job,
    selection: &mut Selection,
) -> anyhow::Result<Option<(String, u64)>> {
    let mut out = queue::shared_temp_file(&queue.incoming, STAGE_PREFIX, ".part")
        .context("creating a file in incoming/")?;
    let stage = out
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(stage_of)
        .context("a temporary file has the name asked for")?
        .to_owned();
    let mut requests = 0u64;
    let mut writer = std::io::BufWriter::new(out.as_file_mut());
    let reader = BufReader::new(
        std::fs::File::open(input).with_context(|| format!("reading {}", input.display()))?,
    );
    for line in reader.split(b'\n') {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let id = serde_json::from_slice::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["custom_id"].as_str().map(str::to_owned));
        let Some(id) = id else { continue };
        if selection.choose(&id) {
            writer.write_all(&line)?;
            writer.write_all(b"\n")?;
            requests += 1;
        }
    }
    writer.flush()?;
    drop(writer);
    if requests == 0 {
        return Ok(None);
    }
    out.as_file().sync_all()?;
    let (_, sidecar) = staged(queue, &stage);
    let text = sidecar_text(job)?;
    let written = std::fs::File::create_new(&sidecar).and_then(|mut side| {
        side.write_all(text.as_bytes())?;
        side.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&sidecar);
        return Err(e).with_context(|| format!("writing {}", sidecar.display()));
    }
    out.keep()?;
    Ok(Some((stage, requests)))
}

/// How many times a resubmission starts over when the chain changed while it was prepared.
const ATTEMPTS: usize = 5;

/// Resubmits the requests of job `job_id` that `ask` selects and its chain left undone (see
/// the module docs): a new file and its sidecar in incoming/, recorded first.
pub async fn resubmit(
    store: &Store,
    lease: &Lease,
    queue: &Queue,
    job_id: &str,
    ask: Ask,
    now: &str,
) -> anyhow::Result<Outcome> {
    for _ in 0..ATTEMPTS {
        let view = store.resubmission_view(job_id).await?;
        let taken: HashSet<String> = store
            .pending_resubmissions()
            .await?
            .into_iter()
            .map(|p| p.file_name)
            .collect();
        let job = store
            .job(job_id)
            .await?
            .with_context(|| format!("no job {job_id}"))?;
        let prepared = {
            let (queue, view) = (queue.clone(), view.clone());
            tokio::task::spawn_blocking(move || prepare(&queue, &job, &view, &taken, ask)).await??
        };
        let staged = match prepared {
            Prepared::Staged(staged) => staged,
            Prepared::Done(outcome) => return Ok(outcome),
        };
        failpoint::hit("resubmit:before-record");
        let row = NewResubmission {
            job_id,
            file_name: &staged.name,
            stage: &staged.stage,
            requests: i64::try_from(staged.written.requests)?,
            only: ask.only.as_str(),
            forced: ask.force,
            origin: ask.origin.as_str(),
        };
        let recorded = store
            .record_resubmission(
                lease,
                job_id,
                &view,
                &staged.withdrawn,
                &row,
                &staged.written.event(ask.origin),
                ask.origin == Origin::Daemon,
                now,
            )
            .await?;
        if !recorded {
            staged.discard(queue);
            continue;
        }
        failpoint::hit("resubmit:before-publish");
        publish(queue, &staged.name, &staged.stage).with_context(|| {
            format!(
                "{} is recorded but could not be moved into incoming/; the daemon does so at its \
                 next start, as does the next resubmit of this chain",
                staged.name
            )
        })?;
        return Ok(Outcome::Written(staged.written));
    }
    anyhow::bail!(
        "the chain of {job_id} kept changing while its resubmission was prepared; try again"
    )
}

/// How long a staged file that no resubmission records is kept. A resubmit records its files
/// within seconds of writing them, so one older than this was left by a resubmit killed in
/// between, and nothing refers to it.
const UNRECORDED_STAGE_KEPT: Duration = Duration::from_secs(3600);

/// What the daemon does at start with the staged files in incoming/: moves into place those of
/// recorded resubmissions that a crash left under their temporary names, and removes those no
/// resubmission records once they are older than [`UNRECORDED_STAGE_KEPT`]. Returns how many
/// it removed. A file it cannot move or remove is logged and left for the next start.
pub async fn pick_up_stages(store: &Store, queue: &Queue) -> anyhow::Result<usize> {
    let pending = store.pending_resubmissions().await?;
    for p in &pending {
        if let Err(e) = publish(queue, &p.file_name, &p.stage) {
            tracing::warn!(file = %p.file_name, error = %e, "a recorded resubmission could not be moved into incoming/; trying again at the next start");
        }
    }
    let recorded: HashSet<&str> = pending.iter().map(|p| p.stage.as_str()).collect();
    let mut removed = 0;
    for entry in std::fs::read_dir(&queue.incoming).context("listing incoming/")? {
        let entry = entry.context("listing incoming/")?;
        let name = entry.file_name();
        let Some(stage) = name.to_str().and_then(stage_of) else {
            continue;
        };
        if recorded.contains(stage) {
            continue;
        }
        let stale = entry.metadata().and_then(|m| {
            Ok(m.is_file() && m.modified()?.elapsed().unwrap_or_default() >= UNRECORDED_STAGE_KEPT)
        });
        let outcome = match stale {
            Ok(true) => std::fs::remove_file(entry.path()),
            Ok(false) => continue,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => removed += 1,
            // Another daemon on the same tree, starting too, removed it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove what a killed resubmit left in incoming/; trying again at the next start")
            }
        }
    }
    Ok(removed)
}

/// The stage a staged file's name carries (`.batchwatch-resubmit-STAGE.part`, or
/// `.toml.part` for its sidecar), if it is one.
fn stage_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(STAGE_PREFIX)?;
    rest.strip_suffix(".toml.part")
        .or_else(|| rest.strip_suffix(".part"))
}

/// The sidecar of the new file: the parent job, its endpoint and metadata.
fn sidecar_text(job: &Job) -> anyhow::Result<String> {
    let mut table = toml::Table::new();
    table.insert("parent_job".into(), job.id.clone().into());
    if let Some(endpoint) = &job.endpoint {
        table.insert("endpoint".into(), endpoint.clone().into());
    }
    table.insert(
        "completion_window".into(),
        job.completion_window.clone().into(),
    );
    let metadata: toml::Table =
        serde_json::from_str::<std::collections::BTreeMap<String, String>>(&job.metadata)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, toml::Value::from(v)))
            .collect();
    if !metadata.is_empty() {
        table.insert("metadata".into(), metadata.into());
    }
    Ok(toml::to_string(&table)?)
}

/// Whether a resubmission is due.
pub async fn due(ctx: &Ctx) -> anyhow::Result<bool> {
    Ok(!ctx.store.resubmit_due().await?.is_empty())
}

/// Carries out every due resubmission.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    for (id, only) in ctx.store.resubmit_due().await? {
        let ask = Ask {
            only: Only::parse(&only).unwrap_or(Only::Expired),
            force: false,
            origin: Origin::Daemon,
        };
        let setting = ask.origin.named(ask.only);
        let message = match resubmit(
            &ctx.store,
            &ctx.leader_lease(),
            &ctx.queue,
            &id,
            ask,
            &ctx.now(),
        )
        .await
        {
            Ok(Outcome::Written(w)) => {
                tracing::info!(job = %id, file = %w.file, requests = w.requests, "undone requests resubmitted");
                continue;
            }
            Ok(Outcome::Nothing { left_out }) if left_out.is_empty() => {
                "no request was left undone; nothing to resubmit".to_owned()
            }
            Ok(Outcome::Nothing { left_out }) => format!(
                "no request is left undone in its chain (already done: {}); nothing to resubmit",
                counts(&left_out)
            ),
            Ok(Outcome::Refused(refusal)) => {
                tracing::warn!(job = %id, reason = %refusal, "the undone requests were not resubmitted");
                format!("not resubmitted ({setting}): {refusal}")
            }
            Err(e) => {
                tracing::error!(job = %id, error = format!("{e:#}"), "the undone requests could not be resubmitted");
                format!("the undone requests could not be resubmitted: {e:#}")
            }
        };
        ctx.store
            .resubmit_done(&ctx.leader_lease(), &id, &message, &ctx.now())
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_file_and_its_sidecar_carry_the_same_stage() {
        let dir = tempfile::tempdir().unwrap();
        let (file, sidecar) = staged(&Queue::open(dir.path()).unwrap(), "Ab3x9");
        for path in [file, sidecar] {
            let name = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(stage_of(name), Some("Ab3x9"), "{name}");
        }
        assert_eq!(stage_of("a.jsonl"), None);
        assert_eq!(stage_of(".batchwatch-download-x"), None);
    }

    #[test]
    fn resubmissions_are_numbered_from_the_original_name() {
        assert_eq!(file_name("a.jsonl", 1), "a.resubmit-1.jsonl");
        assert_eq!(file_name("a.resubmit-1.jsonl", 2), "a.resubmit-2.jsonl");
        assert_eq!(
            file_name("a.resubmit-x.jsonl", 1),
            "a.resubmit-x.resubmit-1.jsonl"
        );
    }

    #[test]
    fn requests_are_classed_by_their_result_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("output.jsonl"),
            concat!(
                r#"{"custom_id":"ok","response":{"status_code":200,"body":{}},"error":null}"#,
                "\n",
                r#"{"custom_id":"bad","response":{"status_code":400,"body":{}},"error":null}"#,
                "\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("errors.jsonl"),
            concat!(
                r#"{"custom_id":"late","response":null,"error":{"code":"batch_expired","message":"x"}}"#,
                "\n",
                r#"{"custom_id":"boom","response":null,"error":{"code":"server_error","message":"x"}}"#,
                "\n"
            ),
        )
        .unwrap();
        let c = classes(dir.path()).unwrap();
        assert_eq!(c["ok"], Class::Done);
        assert_eq!(c["bad"], Class::Failed);
        assert_eq!(c["boom"], Class::Transient);
        assert_eq!(c["late"], Class::Expired);
        assert!(any_transient(dir.path()).unwrap(), "boom");
        let none = tempfile::tempdir().unwrap();
        assert!(!any_transient(none.path()).unwrap(), "no errors file");
        std::fs::write(
            none.path().join("errors.jsonl"),
            r#"{"custom_id":"bad","response":{"status_code":400,"body":{}},"error":null}"#,
        )
        .unwrap();
        assert!(!any_transient(none.path()).unwrap(), "a 400 only");
        assert!(Only::Unfinished.wants(Class::Failed) && Only::Unfinished.wants(Class::Expired));
        assert!(Only::Unfinished.wants(Class::Transient) && Only::Failed.wants(Class::Transient));
        assert!(!Only::Expired.wants(Class::Failed) && !Only::Failed.wants(Class::Expired));
        assert!(Only::Transient.wants(Class::Transient) && !Only::Transient.wants(Class::Failed));
        assert!(!Only::Unfinished.wants(Class::Done));
    }

    #[test]
    fn a_failure_is_worth_retrying_when_the_service_was_at_fault_never_when_the_request_was() {
        let line = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
        for retried in [
            r#"{"response":{"status_code":429,"body":{"error":{"code":"rate_limit_exceeded"}}}}"#,
            r#"{"response":{"status_code":500,"body":{"error":{"type":"server_error"}}}}"#,
            r#"{"response":{"status_code":503,"body":{}}}"#,
            r#"{"response":{"status_code":529,"body":{"error":{"type":"overloaded_error"}}}}"#,
            r#"{"response":null,"error":{"code":"server_error","message":"x"}}"#,
            r#"{"response":null,"error":{"code":"timeout","message":"x"}}"#,
        ] {
            assert!(transient(&line(retried)), "{retried}");
        }
        for kept in [
            r#"{"response":{"status_code":400,"body":{"error":{"type":"invalid_request_error"}}}}"#,
            r#"{"response":{"status_code":400,"body":{"error":{"code":"content_policy_violation"}}}}"#,
            r#"{"response":{"status_code":400,"body":{"error":{"type":"server_error"}}}}"#,
            r#"{"response":{"status_code":401,"body":{}}}"#,
            r#"{"response":{"status_code":404,"body":{}}}"#,
            r#"{"response":null,"error":{"code":"invalid_request","message":"x"}}"#,
            r#"{"response":null,"error":null}"#,
        ] {
            assert!(!transient(&line(kept)), "{kept}");
        }
    }

    fn holder(job: &str) -> Holder {
        Holder {
            job_id: Some(job.to_owned()),
            file: format!("{job}.jsonl"),
        }
    }

    fn ids(list: &[&str]) -> HashSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn ask(only: Only, force: bool) -> Ask {
        Ask {
            only,
            force,
            origin: Origin::Cli,
        }
    }

    #[test]
    fn a_request_another_job_of_the_chain_completed_is_left_out_and_counted() {
        // r1 done, r2 failed, r3 and r4 without a line (never ran).
        let own: HashMap<String, Class> = [
            ("r1".to_owned(), Class::Done),
            ("r2".to_owned(), Class::Failed),
        ]
        .into();
        let known = Known {
            succeeded: vec![
                (holder("child"), ids(&["r3", "r2"])),
                (holder("grandchild"), ids(&["r4"])),
            ],
            ..Known::default()
        };
        assert_eq!(known.refusal(false), None);
        let mut s = Selection::new(&own, &known, ask(Only::Unfinished, false));
        let chosen: Vec<&str> = ["r1", "r2", "r3", "r4", "r5"]
            .into_iter()
            .filter(|id| s.choose(id))
            .collect();
        assert_eq!(chosen, ["r5"], "only what no job of the chain completed");
        assert_eq!(
            s.elsewhere,
            [(holder("child"), 2), (holder("grandchild"), 1)]
        );
        // --only failed selects r2 alone, which the child completed.
        let mut s = Selection::new(&own, &known, ask(Only::Failed, false));
        assert!(!["r1", "r2", "r3"].iter().any(|id| s.choose(id)));
    }

    #[test]
    fn anything_in_flight_refuses_unless_forced_and_force_counts_what_it_pays_again() {
        let own = HashMap::new();
        let known = Known {
            succeeded: vec![(holder("done"), ids(&["a"]))],
            in_flight: vec![
                (holder("running"), Some(ids(&["b"]))),
                (
                    Holder {
                        job_id: None,
                        file: "x.resubmit-3.jsonl".into(),
                    },
                    None,
                ),
            ],
            results_gone: vec![holder("pruned")],
        };
        let Some(Refusal::InFlight(named)) = known.refusal(false) else {
            panic!("refused while in flight")
        };
        assert_eq!(named.len(), 2);
        let text = Refusal::InFlight(named).to_string();
        assert!(
            text.contains("job running (running.jsonl)")
                && text.contains("incoming/x.resubmit-3.jsonl, not yet claimed")
                && text.contains("--force"),
            "{text}"
        );
        let gone = Known {
            results_gone: vec![holder("pruned")],
            ..Known::default()
        };
        assert_eq!(
            gone.refusal(false),
            Some(Refusal::ResultsGone(vec![holder("pruned")]))
        );

        assert_eq!(known.refusal(true), None);
        let mut s = Selection::new(&own, &known, ask(Only::Expired, true));
        assert!(["a", "b", "c"].iter().all(|id| s.choose(id)), "all written");
        assert_eq!(s.elsewhere, [(holder("done"), 1), (holder("running"), 1)]);
    }
}
