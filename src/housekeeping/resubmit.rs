//! Finishing what a batch left undone: the requests of a finished job that have no successful
//! result, written as a new file (and sidecar) into incoming/, where the daemon claims it as a
//! job linked to the first (`parent_job_id`, from the sidecar's `parent_job`).
//!
//! A request of the job is, by its results (`results/JOBID/output.jsonl` and `errors.jsonl`):
//! * done: an output line with a 2xx response;
//! * expired: an error line with `batch_expired` or `batch_cancelled`, or no line at all (the
//!   batch ended before it ran);
//! * failed: any other line (an error, or a response that is not 2xx).
//!
//! `--only expired`, `--only failed` or `--only unfinished` (both) chooses which are written.
//! The new file is `STEM.resubmit-N.jsonl`, N the job's place in its chain; the sidecar is
//! written before it, each through a temporary name and a rename, so the daemon sees either
//! nothing or both, and writing again after a crash is harmless.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::model::JobId;
use crate::queue::{self, Queue};
use crate::store::jobs::Job;

/// Which undone requests to send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// Requests the batch never ran (it expired or was cancelled first).
    Expired,
    /// Requests that ran and failed.
    Failed,
    /// Both.
    Unfinished,
}

impl Only {
    pub fn as_str(self) -> &'static str {
        match self {
            Only::Expired => "expired",
            Only::Failed => "failed",
            Only::Unfinished => "unfinished",
        }
    }

    pub fn parse(text: &str) -> Option<Only> {
        [Only::Expired, Only::Failed, Only::Unfinished]
            .into_iter()
            .find(|o| o.as_str() == text)
    }

    fn wants(self, class: Class) -> bool {
        match (self, class) {
            (_, Class::Done) => false,
            (Only::Unfinished, _) => true,
            (Only::Expired, c) => c == Class::Expired,
            (Only::Failed, c) => c == Class::Failed,
        }
    }
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Done,
    Failed,
    Expired,
}

/// The new file written into incoming/.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Written {
    pub file: String,
    pub requests: u64,
    pub only: &'static str,
}

/// The class of each request that has a result line.
fn results(dir: Option<&Path>) -> anyhow::Result<HashMap<String, Class>> {
    let mut seen = HashMap::new();
    let Some(dir) = dir else {
        return Ok(seen);
    };
    for name in ["errors.jsonl", "output.jsonl"] {
        let path = dir.join(name);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        for line in BufReader::new(file).lines() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let Some(id) = value["custom_id"].as_str() else {
                continue;
            };
            let status = value["response"]["status_code"].as_u64();
            let code = value["error"]["code"].as_str();
            let class =
                if value["error"].is_null() && status.is_some_and(|s| (200..300).contains(&s)) {
                    Class::Done
                } else if matches!(code, Some("batch_expired" | "batch_cancelled")) {
                    Class::Expired
                } else {
                    Class::Failed
                };
            // A success anywhere wins (output is read last).
            if seen.get(id) != Some(&Class::Done) {
                seen.insert(id.to_owned(), class);
            }
        }
    }
    Ok(seen)
}

/// The name of the `generation`th resubmission of a file named `name`.
pub fn file_name(name: &str, generation: i64) -> String {
    let stem = name.strip_suffix(".jsonl").unwrap_or(name);
    let stem = match stem.rsplit_once(".resubmit-") {
        Some((base, n)) if n.parse::<u64>().is_ok() => base,
        _ => stem,
    };
    format!("{stem}.resubmit-{generation}.jsonl")
}

/// Writes the requests of `job` that `only` selects as a new file in incoming/ (with its
/// sidecar naming the job), as its resubmission number `generation`. Returns `None` when no
/// request is selected. With `replace` false, an existing file of that name in incoming/ is
/// an error; with true (the daemon repeating itself after a crash) it is taken as written.
pub fn write(
    queue: &Queue,
    job: &Job,
    only: Only,
    generation: i64,
    replace: bool,
) -> anyhow::Result<Option<Written>> {
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
    let classes = results(
        job.results_dir
            .as_deref()
            .map(|d| queue.root().join(d))
            .as_deref(),
    )?;
    let name = file_name(&job.file_name, generation);
    let incoming = queue.root().join("incoming");
    let target = incoming.join(&name);
    if target.exists() {
        anyhow::ensure!(replace, "{} exists already", queue.relative(&target));
        let requests = BufReader::new(std::fs::File::open(&target)?)
            .lines()
            .count() as u64;
        return Ok(Some(Written {
            file: queue.relative(&target),
            requests,
            only: only.as_str(),
        }));
    }

    // The selected lines, byte for byte, into a temporary name that intake ignores.
    let part = incoming.join(format!(".{name}.part"));
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?,
    );
    let mut requests = 0u64;
    let reader = BufReader::new(
        std::fs::File::open(&input).with_context(|| format!("reading {}", input.display()))?,
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
        let class = classes.get(&id).copied().unwrap_or(Class::Expired);
        if only.wants(class) {
            out.write_all(&line)?;
            out.write_all(b"\n")?;
            requests += 1;
        }
    }
    out.flush()?;
    out.get_ref().sync_all()?;
    drop(out);
    if requests == 0 {
        std::fs::remove_file(&part)?;
        return Ok(None);
    }
    write_sidecar(&target, job)?;
    std::fs::rename(&part, &target)?;
    Ok(Some(Written {
        file: queue.relative(&target),
        requests,
        only: only.as_str(),
    }))
}

/// The sidecar of the new file: the parent job, its endpoint and metadata.
fn write_sidecar(target: &Path, job: &Job) -> anyhow::Result<()> {
    let sidecar: PathBuf = queue::sidecar_path(target)
        .context("the resubmitted file's name leaves no room for its sidecar")?;
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
    let name = sidecar
        .file_name()
        .context("a sidecar has a name")?
        .to_string_lossy()
        .into_owned();
    let part = sidecar.with_file_name(format!(".{name}.part"));
    std::fs::write(&part, toml::to_string(&table)?)?;
    std::fs::rename(&part, &sidecar)?;
    Ok(())
}

/// Whether `text` names a job, for the sidecar's `parent_job`.
pub fn valid_parent(text: &str) -> bool {
    JobId::parse(text).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let c = results(Some(dir.path())).unwrap();
        assert_eq!(c["ok"], Class::Done);
        assert_eq!(c["bad"], Class::Failed);
        assert_eq!(c["boom"], Class::Failed);
        assert_eq!(c["late"], Class::Expired);
        assert!(Only::Unfinished.wants(Class::Failed) && Only::Unfinished.wants(Class::Expired));
        assert!(!Only::Expired.wants(Class::Failed) && !Only::Failed.wants(Class::Expired));
        assert!(!Only::Unfinished.wants(Class::Done));
    }
}
