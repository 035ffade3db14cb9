//! `batchwatch doctor`: what the daemon will meet, checked before the first file arrives.
//!
//! The offline part is [`crate::preflight`], as `run` and `check-config` make it (the
//! configuration, then the key from its source with its mode rules); the online part asks the
//! service what `run` will ask it (the key accepted, the Batch and Files API routes at
//! `api.base_url`, its clock), and the host what the daemon will need of it (the queue tree and
//! the database's directory writable by this user, free space, the metrics port). Each check is
//! one line; the key is never printed, only where it was read.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::api::{ApiError, Client, Collection};
use crate::config::Settings;
use crate::daemon::runtime::instance::{database_dir, database_writable, dir_writable};
use crate::preflight;
use crate::queue::Queue;

/// A clock further than this from the service's makes deadlines and ages wrong.
pub const MAX_SKEW: Duration = Duration::from_secs(60);

/// A filesystem with less than this share free fails (the alert `BatchwatchDiskAlmostFull`
/// fires at the same share).
const MIN_FREE_SHARE: f64 = 0.05;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::Display)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "UPPERCASE")]
pub enum Outcome {
    Pass,
    Fail,
    /// Not checked here, and why (a systemd credential outside its service, a check that
    /// needs one that failed).
    Skip,
}

/// One check: what was checked, and what was found.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub outcome: Outcome,
    pub detail: String,
}

impl Check {
    fn new(check: &'static str, outcome: Outcome, detail: impl Into<String>) -> Check {
        Check {
            check,
            outcome,
            detail: detail.into(),
        }
    }
}

/// Runs every check on the configuration `file` (as `run` reads it).
pub async fn run(file: Option<&Path>) -> Vec<Check> {
    let settings = match Settings::load_as_written(file) {
        Ok((settings, _)) => settings,
        Err(e) => return vec![Check::new("configuration", Outcome::Fail, e.to_string())],
    };
    let system = Path::new(crate::config::SYSTEM_CONFIG_PATH);
    let read = match file {
        Some(path) => path.display().to_string(),
        None if system.is_file() => system.display().to_string(),
        None => "the built-in defaults (no file)".to_owned(),
    };
    let mut checks = vec![Check::new(
        "configuration",
        Outcome::Pass,
        format!("{read} and the environment: valid, as `run` reads them"),
    )];
    let source = settings.api.key_source();
    let key = match preflight::read_key(&settings) {
        Ok(Ok(key)) => {
            checks.push(Check::new(
                "key-file",
                Outcome::Pass,
                format!("read from {source}"),
            ));
            Some(key)
        }
        Ok(Err(e)) => {
            checks.push(Check::new(
                "key-file",
                Outcome::Skip,
                format!("{source}: not checked here: {e}"),
            ));
            None
        }
        Err(e) => {
            checks.push(Check::new("key-file", Outcome::Fail, e.to_string()));
            None
        }
    };
    match key.map(|key| Client::new(&settings.api, &settings.limits, key)) {
        Some(Ok(client)) => checks.extend(online(&settings.api.base_url, &client).await.0),
        Some(Err(e)) => checks.push(Check::new("key-accepted", Outcome::Fail, e.to_string())),
        None => {
            for check in ["key-accepted", "batch-api", "files-api", "clock"] {
                checks.push(Check::new(check, Outcome::Skip, "no key to ask with"));
            }
        }
    }
    checks.extend(host(&settings));
    checks
}

/// What the service at `base` says to `client`: the key, the routes, the clock. `run` makes
/// these checks at start too; with them comes the first error a route gave, for its gate.
pub async fn online(base: &str, client: &Client) -> (Vec<Check>, Option<ApiError>) {
    let mut results = Vec::new();
    for collection in client.collections() {
        results.push((collection, client.check_route(collection).await));
    }
    let errors = || results.iter().filter_map(|(_, r)| r.as_ref().err());
    let refused = errors().find(|e| e.is_auth());
    let unreachable = errors().find(|e| e.status().is_none());
    let answered = results.iter().any(|(_, r)| r.is_ok());
    let mut checks = vec![match (refused, unreachable) {
        (Some(e), _) => Check::new("key-accepted", Outcome::Fail, e.to_string()),
        (None, Some(e)) => Check::new(
            "key-accepted",
            Outcome::Skip,
            format!("the service did not answer: {e}"),
        ),
        (None, None) if answered => Check::new(
            "key-accepted",
            Outcome::Pass,
            "the service answered an authenticated list",
        ),
        (None, None) => Check::new(
            "key-accepted",
            Outcome::Skip,
            "no route answered to say (see below)",
        ),
    }];
    let fix = match errors().any(|e| matches!(e, ApiError::RouteMissing { .. })) {
        true => match client.answers_with_version_path().await {
            Some(fixed) => format!("; the API answers at {fixed}: set api.base_url = \"{fixed}\""),
            None => "; set api.base_url to the API root, version path included \
                     (https://api.openai.com/v1)"
                .to_owned(),
        },
        false => String::new(),
    };
    for (collection, result) in &results {
        let check = match collection {
            Collection::Batches => "batch-api",
            Collection::Files => "files-api",
        };
        let route = client.route_of(*collection);
        checks.push(match result {
            Ok(_) => Check::new(check, Outcome::Pass, format!("{base}: {route} answers")),
            Err(e) => Check::new(check, Outcome::Fail, format!("{base}: {route}: {e}{fix}")),
        });
    }
    let date = results
        .iter()
        .find_map(|(_, r)| r.as_ref().ok().copied().flatten());
    checks.push(match date {
        Some(theirs) => clock_check(jiff::Timestamp::now(), theirs),
        None => Check::new(
            "clock",
            Outcome::Skip,
            "the service sent no Date to compare with",
        ),
    });
    let first_error = results.into_iter().find_map(|(_, r)| r.err());
    (checks, first_error)
}

/// This host's clock `ours` against the service's `theirs` (its `Date` header, to the second).
fn clock_check(ours: jiff::Timestamp, theirs: jiff::Timestamp) -> Check {
    let skew = ours.duration_since(theirs);
    let ahead = if skew.is_negative() {
        "behind"
    } else {
        "ahead of"
    };
    let off = Duration::try_from(skew.abs()).unwrap_or(Duration::MAX);
    let detail = format!(
        "this host's clock is {} {ahead} the service's",
        crate::clock::humanize(off)
    );
    // The header has whole seconds, and the answer took its time: a second either way is none.
    if off <= MAX_SKEW {
        Check::new("clock", Outcome::Pass, detail)
    } else {
        Check::new(
            "clock",
            Outcome::Fail,
            format!(
                "{detail}, more than {}: deadlines and ages would be off; set the time (NTP)",
                crate::clock::humanize(MAX_SKEW)
            ),
        )
    }
}

/// What the host gives: the queue tree, the database's directory, free space, the port.
fn host(settings: &Settings) -> Vec<Check> {
    let mut checks = Vec::new();
    let queue = &settings.queue.dir;
    checks.push(match Queue::open(queue) {
        Ok(q) => {
            match q
                .dirs()
                .into_iter()
                .find_map(|d| dir_writable(d).err().map(|e| (d, e)))
            {
                None => Check::new(
                    "queue",
                    Outcome::Pass,
                    format!("{}: every directory writable", queue.display()),
                ),
                Some((dir, e)) => Check::new(
                    "queue",
                    Outcome::Fail,
                    format!("{}: {e} (queue.dir)", dir.display()),
                ),
            }
        }
        Err(e) => Check::new(
            "queue",
            Outcome::Fail,
            format!("{}: {e} (queue.dir)", queue.display()),
        ),
    });
    let database = &settings.database.path;
    let db_dir = database_dir(database);
    checks.push(match database_writable(database) {
        Ok(()) => Check::new(
            "database",
            Outcome::Pass,
            format!("{}: writable", database.display()),
        ),
        Err(e) => Check::new(
            "database",
            Outcome::Fail,
            format!("{}: {e} (database.path)", database.display()),
        ),
    });
    for (check, path) in [("queue-space", queue.as_path()), ("database-space", db_dir)] {
        checks.push(match crate::process::disk_space(path) {
            Ok(space) => {
                let share = space.available as f64 / (space.size.max(1) as f64);
                let detail = format!(
                    "{}: {} MiB free of {} MiB ({:.0}%)",
                    path.display(),
                    space.available >> 20,
                    space.size >> 20,
                    share * 100.0
                );
                if share < MIN_FREE_SHARE {
                    Check::new(check, Outcome::Fail, format!("{detail}, under 5%"))
                } else {
                    Check::new(check, Outcome::Pass, detail)
                }
            }
            Err(e) => Check::new(check, Outcome::Fail, format!("{}: {e}", path.display())),
        });
    }
    checks.push(match settings.metrics.address() {
        Ok(None) => Check::new("metrics-port", Outcome::Skip, "metrics.listen is off"),
        Ok(Some(addr)) => match std::net::TcpListener::bind(addr) {
            Ok(_) => Check::new("metrics-port", Outcome::Pass, format!("{addr} is free")),
            Err(e) => Check::new(
                "metrics-port",
                Outcome::Fail,
                format!("{addr}: {e} (metrics.listen; a running batchwatch holds it too)"),
            ),
        },
        Err(e) => Check::new("metrics-port", Outcome::Fail, e.to_string()),
    });
    checks
}

/// The checks as lines: `PASS what: detail`.
pub fn lines(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
    checks
        .iter()
        .map(|c| {
            format!(
                "{:<4} {:<width$}  {}\n",
                c.outcome.to_string(),
                c.check,
                crate::printable::escape(&c.detail)
            )
        })
        .collect()
}

/// Whether any check failed.
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.outcome == Outcome::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_a_second_off_passes_and_one_two_minutes_behind_fails_saying_so() {
        let theirs: jiff::Timestamp = "2026-12-06T10:00:00Z".parse().unwrap();
        let near = clock_check("2026-12-06T10:00:01Z".parse().unwrap(), theirs);
        assert_eq!(near.outcome, Outcome::Pass, "{}", near.detail);
        let behind = clock_check("2026-12-06T09:58:00Z".parse().unwrap(), theirs);
        assert_eq!(behind.outcome, Outcome::Fail);
        assert!(behind.detail.contains("2m behind"), "{}", behind.detail);
    }
}
