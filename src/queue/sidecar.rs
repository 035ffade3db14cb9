//! Per-file options: an optional sidecar `NAME.toml` beside `NAME`, over the configuration's
//! `[batch]` defaults.
//!
//! ```toml
//! endpoint = "/v1/embeddings"          # else batch.endpoint, else the lines' url
//! completion_window = "24h"
//! deadline = "6h"                      # from the claim; or a time: "2026-11-23T06:00:00Z"
//! output_expires_after = "168h"
//! parent_job = "job_…"                 # written by `batchwatch resubmit`
//! [metadata]                           # merged over batch.metadata
//! project = "eval-7"
//! ```

use std::collections::BTreeMap;

use crate::clock::{self, Timestamp};
use crate::config::{self, BatchSettings, Dur};

/// The options one job runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOptions {
    /// `None`: taken from the first line's `url`.
    pub endpoint: Option<String>,
    pub completion_window: String,
    pub deadline_at: Timestamp,
    pub metadata: BTreeMap<String, String>,
    /// Seconds.
    pub output_expires_after: Option<u64>,
    /// The job whose undone requests this file holds (`batchwatch resubmit` writes it).
    pub parent_job: Option<String>,
}

/// A sidecar problem: the key at fault (if one is) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
pub struct SidecarError {
    pub key: Option<String>,
    pub message: String,
}

/// The keys a sidecar may set.
const KEYS: [&str; 6] = [
    "endpoint",
    "completion_window",
    "deadline",
    "output_expires_after",
    "metadata",
    "parent_job",
];

/// The most a sidecar may hold.
const MAX_SIDECAR_BYTES: u64 = 64 * 1024;

/// Reads the sidecar at `path`, if there is one. It must be a regular file of at most 64 KiB:
/// a symbolic link is not followed, and a FIFO or device is refused without blocking, so a
/// hostile sidecar can neither stall the daemon nor make it read something else.
pub fn read(path: &std::path::Path) -> Result<Option<String>, SidecarError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = |message: String| SidecarError { key: None, message };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(refuse(
                "is a symbolic link; a sidecar must be a regular file".into(),
            ));
        }
        Err(e) => return Err(refuse(format!("cannot be read: {e}"))),
    };
    let meta = file
        .metadata()
        .map_err(|e| refuse(format!("cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SIDECAR_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| refuse(format!("cannot be read: {e}")))?;
    if bytes.len() as u64 > MAX_SIDECAR_BYTES {
        return Err(refuse(format!("is larger than {MAX_SIDECAR_BYTES} bytes")));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| refuse("is not valid UTF-8".into()))
}

/// The configuration's defaults for a job claimed at `claimed_at`.
pub fn defaults(batch: &BatchSettings, claimed_at: Timestamp) -> JobOptions {
    JobOptions {
        endpoint: batch.endpoint.clone(),
        completion_window: batch.completion_window.clone(),
        deadline_at: clock::add(claimed_at, batch.deadline.get()),
        metadata: batch.metadata.clone(),
        output_expires_after: batch.output_expires_after.map(|d| d.get().as_secs()),
        parent_job: None,
    }
}

/// Parses a sidecar's text over the defaults. Every problem is reported, not only the first:
/// an unknown key, a value of the wrong type, or one out of its range, each naming its key.
pub fn parse(
    text: &str,
    batch: &BatchSettings,
    claimed_at: Timestamp,
) -> Result<JobOptions, Vec<SidecarError>> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        vec![SidecarError {
            key: None,
            // The first line: where, without toml's excerpt of the file.
            message: config::toml_problem(&e)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        }]
    })?;
    let mut problems = Vec::new();
    for key in table.keys().filter(|k| !KEYS.contains(&k.as_str())) {
        problems.push(err(
            &config::key_as_written(key),
            format!("unknown key; allowed: {}", KEYS.join(", ")),
        ));
    }
    let mut options = defaults(batch, claimed_at);
    let mut take = |result: Result<(), SidecarError>| {
        if let Err(e) = result {
            problems.push(e);
        }
    };
    if let Some(endpoint) = string(&table, "endpoint") {
        take(endpoint.and_then(|endpoint| {
            if !endpoint.starts_with('/') {
                return Err(err(
                    "endpoint",
                    format!("{endpoint:?} must be a path such as /v1/chat/completions"),
                ));
            }
            options.endpoint = Some(endpoint.to_owned());
            Ok(())
        }));
    }
    if let Some(window) = string(&table, "completion_window") {
        take(window.and_then(|window| {
            if window.trim().is_empty() {
                return Err(err("completion_window", "must not be empty".into()));
            }
            options.completion_window = window.to_owned();
            Ok(())
        }));
    }
    if let Some(deadline) = string(&table, "deadline") {
        take(deadline.and_then(|deadline| {
            options.deadline_at = deadline_at(deadline, claimed_at)?;
            Ok(())
        }));
    }
    if let Some(after) = string(&table, "output_expires_after") {
        take(after.and_then(|after| {
            let d: Dur = after.parse().map_err(|e| err("output_expires_after", e))?;
            config::output_expiry("output_expires_after", d)
                .map_err(|e| err("output_expires_after", e.problem))?;
            options.output_expires_after = Some(d.get().as_secs());
            Ok(())
        }));
    }
    if let Some(parent) = string(&table, "parent_job") {
        take(parent.and_then(|parent| {
            if crate::model::JobId::parse(parent).is_none() {
                return Err(err("parent_job", format!("{parent:?} is not a job id")));
            }
            options.parent_job = Some(parent.to_owned());
            Ok(())
        }));
    }
    match table.get("metadata") {
        None => {}
        Some(toml::Value::Table(metadata)) => {
            for (k, v) in metadata {
                match v {
                    toml::Value::String(v) => {
                        options.metadata.insert(k.clone(), v.clone());
                    }
                    other => take(Err(err(
                        &format!("metadata.{}", config::key_as_written(k)),
                        format!("expected a string, found {}", other.type_str()),
                    ))),
                }
            }
            for e in config::metadata_problems("metadata", &options.metadata) {
                take(Err(SidecarError {
                    key: e.key,
                    message: e.problem,
                }));
            }
        }
        Some(other) => take(Err(err(
            "metadata",
            format!("expected a table, found {}", other.type_str()),
        ))),
    }
    if problems.is_empty() {
        Ok(options)
    } else {
        Err(problems)
    }
}

/// Every problem of a sidecar in one line, for a reason.
pub fn describe(problems: &[SidecarError]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn err(key: &str, message: String) -> SidecarError {
    SidecarError {
        key: Some(key.to_owned()),
        message,
    }
}

/// The string at `key`, when the sidecar sets it; a problem when it is not a string.
fn string<'t>(table: &'t toml::Table, key: &str) -> Option<Result<&'t str, SidecarError>> {
    Some(match table.get(key)? {
        toml::Value::String(s) => Ok(s),
        other => Err(err(
            key,
            format!("expected a string, found {}", other.type_str()),
        )),
    })
}

/// A sidecar's `deadline`: a duration from the claim, or a time after it.
fn deadline_at(deadline: &str, claimed_at: Timestamp) -> Result<Timestamp, SidecarError> {
    match deadline.parse::<Dur>() {
        Ok(d) if d.get().is_zero() => Err(err("deadline", "must be longer than zero".into())),
        Ok(d) => Ok(clock::add(claimed_at, d.get())),
        Err(_) => match deadline.parse::<Timestamp>() {
            Ok(at) if at <= claimed_at => Err(err(
                "deadline",
                format!("{deadline} is already in the past"),
            )),
            Ok(at) => Ok(at),
            Err(_) => Err(err(
                "deadline",
                format!(
                    "{deadline:?} is neither a duration such as \"6h\" nor a time such as \"2026-11-23T06:00:00Z\""
                ),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn batch() -> BatchSettings {
        Settings::load_from(None, []).unwrap().batch
    }

    fn t0() -> Timestamp {
        "2026-11-22T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn only_a_small_regular_file_is_read_as_a_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "deadline = \"1h\"").unwrap();
        assert_eq!(read(&good).unwrap().as_deref(), Some("deadline = \"1h\""));
        assert_eq!(read(&dir.path().join("none.toml")).unwrap(), None);
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(read(&link).unwrap_err().message.contains("symbolic link"));
        let fifo = dir.path().join("fifo.toml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid path and mode.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(
            read(&fifo)
                .unwrap_err()
                .message
                .contains("not a regular file"),
            "and it did not block"
        );
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; 70 * 1024]).unwrap();
        assert!(read(&big).unwrap_err().message.contains("larger than"));
    }

    #[test]
    fn without_a_sidecar_the_defaults_apply() {
        let o = defaults(&batch(), t0());
        assert_eq!(o.deadline_at, "2026-11-23T06:00:00Z".parse().unwrap());
        assert_eq!(o.endpoint, None);
        assert_eq!(o.completion_window, "24h");
    }

    #[test]
    fn a_sidecar_sets_each_option() {
        let text = r#"
            endpoint = "/v1/embeddings"
            deadline = "2h"
            output_expires_after = "48h"
            [metadata]
            project = "eval"
        "#;
        let o = parse(text, &batch(), t0()).unwrap();
        assert_eq!(o.endpoint.as_deref(), Some("/v1/embeddings"));
        assert_eq!(o.deadline_at, "2026-11-22T12:00:00Z".parse().unwrap());
        assert_eq!(o.output_expires_after, Some(48 * 3600));
        assert_eq!(o.metadata.get("project").map(String::as_str), Some("eval"));
        let absolute = parse("deadline = \"2026-11-22T18:30:00Z\"", &batch(), t0()).unwrap();
        assert_eq!(
            absolute.deadline_at,
            "2026-11-22T18:30:00Z".parse().unwrap()
        );
    }

    #[test]
    fn bad_sidecars_name_the_key_and_the_rule() {
        let cases = [
            ("deadlin = \"2h\"", Some("deadlin"), "unknown key"),
            (
                "deadline = \"soon\"",
                Some("deadline"),
                "neither a duration",
            ),
            (
                "deadline = \"2020-01-01T00:00:00Z\"",
                Some("deadline"),
                "in the past",
            ),
            ("deadline = \"0s\"", Some("deadline"), "longer than zero"),
            ("endpoint = \"v1/x\"", Some("endpoint"), "must be a path"),
            (
                "output_expires_after = \"5m\"",
                Some("output_expires_after"),
                "1h to 30 days",
            ),
            (
                "[metadata]\nbatchwatch_job = \"x\"",
                Some("metadata.batchwatch_job"),
                "reserved",
            ),
            ("deadline = 5", Some("deadline"), "expected a string"),
            (
                "[metadata]\nrun = 7",
                Some("metadata.run"),
                "expected a string",
            ),
            ("this is not toml", None, "not valid TOML"),
            // Found by fuzzing (fuzz/fuzz_targets/sidecar.rs): an empty key was named as ``.
            ("[\"\"]", Some("\"\""), "`\"\"`: unknown key"),
            ("\"a b\" = 1", Some("\"a b\""), "`\"a b\"`: unknown key"),
        ];
        // Found by fuzzing too: past toml's recursion limit, the reason was "recursion limit".
        let deep = format!("{}x = 1", "a.".repeat(200));
        let e = parse(&deep, &batch(), t0()).unwrap_err();
        assert_eq!(e[0].key, None);
        assert!(e[0].message.contains("nested too deeply"), "{e:?}");
        for (text, key, words) in cases {
            let e = parse(text, &batch(), t0()).unwrap_err();
            assert_eq!(e.len(), 1, "{text}: {e:?}");
            assert_eq!(e[0].key.as_deref(), key, "{text}: {e:?}");
            assert!(e[0].to_string().contains(words), "{text}: {e:?}");
        }
    }

    #[test]
    fn every_problem_of_a_sidecar_is_reported_in_one_line() {
        let text = "deadlin = \"2h\"\nendpoint = \"v1/x\"\noutput_expires_after = \"5m\"\n\
                    deadline = \"soon\"\n[metadata]\nbatchwatch_x = \"y\"\n";
        let problems = parse(text, &batch(), t0()).unwrap_err();
        let keys: Vec<Option<&str>> = problems.iter().map(|p| p.key.as_deref()).collect();
        assert_eq!(
            keys,
            [
                Some("deadlin"),
                Some("endpoint"),
                Some("deadline"),
                Some("output_expires_after"),
                Some("metadata.batchwatch_x")
            ]
        );
        let line = describe(&problems);
        assert!(
            line.starts_with("`deadlin`: unknown key; allowed: endpoint, ")
                && line.contains("; `endpoint`: \"v1/x\" must be a path")
                && line.ends_with(
                    "`metadata.batchwatch_x`: keys starting with batchwatch_ are reserved"
                ),
            "{line}"
        );
    }
}
