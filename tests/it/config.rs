//! Configuration: layering, and one clear message with exit code 78 for each class of error.

use std::time::Duration;

use batchwatch::config::{ByteSize, Dur, Flavor, KeySource, Settings};

use crate::support::Sandbox;
use crate::support::process::{run, stdout_ok};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_file_overrides_the_defaults_and_the_environment_overrides_the_file() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(
        "[poll]\nmin_interval = \"2s\"\nmax_interval = \"30s\"\n\n[limits]\nconcurrency = 9\n\n[api]\nflavor = \"azure\"\nbase_url = \"https://res.openai.azure.com/openai/v1\"\n",
    );
    let s = Settings::load_from(
        Some(&config),
        env(&[
            ("BATCHWATCH_POLL__MAX_INTERVAL", "45s"),
            ("BATCHWATCH_BATCH__MAX_BYTES", "100MiB"),
        ]),
    )
    .unwrap();
    // From the file.
    assert_eq!(s.queue.dir, sandbox.queue_dir());
    assert_eq!(s.poll.min_interval, Dur(Duration::from_secs(2)));
    assert_eq!(s.limits.concurrency, 9);
    assert_eq!(s.api.flavor, Flavor::Azure);
    // From the environment, over the file.
    assert_eq!(s.poll.max_interval, Dur(Duration::from_secs(45)));
    assert_eq!(s.batch.max_bytes, ByteSize(100 << 20));
    // Defaults where neither says anything.
    assert_eq!(s.batch.deadline, Dur(Duration::from_secs(20 * 3600)));
    assert_eq!(s.api.key_source(), KeySource::Env("OPENAI_API_KEY".into()));
}

#[test]
fn the_environment_alone_can_set_any_key() {
    let s = Settings::load_from(
        None,
        env(&[
            ("BATCHWATCH_QUEUE__DIR", "/srv/q"),
            ("BATCHWATCH_API__KEY_CREDENTIAL", "openai"),
            ("BATCHWATCH_LOG__FORMAT", "json"),
            ("BATCHWATCH_BATCH__SPLIT_OVERSIZED", "true"),
        ]),
    )
    .unwrap();
    assert_eq!(s.queue.dir, std::path::PathBuf::from("/srv/q"));
    assert_eq!(s.api.key_source(), KeySource::Credential("openai".into()));
    assert_eq!(s.log.format, batchwatch::config::LogFormat::Json);
    assert!(s.batch.split_oversized);
}

/// One class of error: file contents, environment, the key the message must name, words it must contain.
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
    &'static str,
);

const CASES: &[Case] = &[
    (
        "[queue]\ndirr = \"/x\"\n",
        &[],
        "`queue.dirr`",
        "unknown key",
    ),
    ("[bogus]\nx = 1\n", &[], "`bogus`", "unknown key"),
    (
        "",
        &[("BATCHWATCH_POLL__NOPE", "1s")],
        "`poll.nope`",
        "environment variable BATCHWATCH_POLL__NOPE",
    ),
    (
        "[limits]\nconcurrency = \"many\"\n",
        &[],
        "`limits.concurrency`",
        "expected an integer",
    ),
    (
        "[queue]\nwatch = [1]\n",
        &[],
        "`queue.watch`",
        "expected a boolean",
    ),
    (
        "[poll]\nmin_interval = \"5x\"\n",
        &[],
        "`poll.min_interval`",
        "is not a duration",
    ),
    (
        "[batch]\ndeadline = \"-3h\"\n",
        &[],
        "`batch.deadline`",
        "negative",
    ),
    (
        "[api]\nflavor = \"azure\"\n",
        &[],
        "`api.base_url`",
        "a value is required",
    ),
    (
        "",
        &[("BATCHWATCH_QUEUE__DIR", "")],
        "`queue.dir`",
        "a value is required",
    ),
    (
        "[database]\npath = \"state.db\"\n",
        &[],
        "`database.path`",
        "absolute path is required",
    ),
    (
        "",
        &[("BATCHWATCH_QUEUE__DIR", "relative/q")],
        "`queue.dir`",
        "absolute path is required",
    ),
    (
        "[api]\nkey_env = \"A\"\nkey_file = \"/k\"\n",
        &[],
        "`api.key_file`",
        "only one key source",
    ),
    (
        "[poll]\nmin_interval = \"2m\"\n",
        &[],
        "`poll.min_interval`",
        "must not be longer than poll.max_interval",
    ),
    (
        "[batch]\nmax_bytes = \"3 parsecs\"\n",
        &[],
        "`batch.max_bytes`",
        "unknown unit",
    ),
    (
        "[log]\nformat = \"xml\"\n",
        &[],
        "`log.format`",
        "is not one of \"text\", \"json\"",
    ),
    (
        "[batch]\noutput_expires_after = \"5m\"\n",
        &[],
        "`batch.output_expires_after`",
        "1h to 30 days",
    ),
    (
        "[limits]\nrequests_per_second = 0.0\n",
        &[],
        "`limits.requests_per_second`",
        "above zero",
    ),
    ("not toml [", &[], "batchwatch.toml", "not valid TOML"),
    (
        "[batch]\ndeadline = \"1 month\"\n",
        &[],
        "`batch.deadline`",
        "no fixed length",
    ),
];

#[test]
fn each_class_of_error_names_the_key_and_exits_78() {
    for (file, vars, key, words) in CASES {
        // check-config creates nothing, so the defaults' absolute paths are fine here.
        let sandbox = Sandbox::new();
        let config = sandbox.path().join("batchwatch.toml");
        std::fs::write(&config, file).unwrap();
        let mut cmd = crate::support::process::command(Some(&config));
        cmd.arg("check-config");
        for (k, v) in *vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(78),
            "case {file:?} {vars:?}: {stderr}"
        );
        assert!(
            stderr.contains(key),
            "case {file:?} {vars:?}: message does not name {key}: {stderr}"
        );
        assert!(
            stderr.contains(words),
            "case {file:?} {vars:?}: message lacks {words:?}: {stderr}"
        );
        assert!(
            stderr.starts_with("batchwatch: invalid configuration: "),
            "one message: {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "nothing on stdout for an invalid configuration"
        );
    }
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let out = run(
        Some(std::path::Path::new("/nonexistent/batchwatch.toml")),
        &["check-config"],
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/nonexistent/batchwatch.toml does not exist")
    );
}

#[test]
fn run_with_a_bad_config_exits_78_before_doing_anything() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config("[poll]\nmin_interval = \"soon\"\n");
    let out = run(Some(&config), &["run"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        !sandbox.db_path().exists(),
        "no database is created for an invalid configuration"
    );
}

/// `batchwatch run` logs from its first moment, before it reads its configuration: an error in
/// the configuration reaches the log (the journal, under systemd) as an ERROR line naming the
/// key, beside the plain message.
#[test]
fn run_logs_a_configuration_error_as_an_error_line() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config("[poll]\nmin_interval = \"soon\"\n");
    let out = run(Some(&config), &["run"]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logged = stderr
        .lines()
        .find(|l| l.contains(" ERROR "))
        .unwrap_or_else(|| panic!("no ERROR line: {stderr}"));
    assert!(
        logged.contains("configuration error") && logged.contains("`poll.min_interval`"),
        "{logged}"
    );
    assert!(
        stderr.contains("batchwatch: invalid configuration: `poll.min_interval`"),
        "{stderr}"
    );
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config("[limits]\nconcurrency = 7\n");
    let out = stdout_ok(Some(&config), &["check-config"]);
    assert!(out.contains("concurrency = 7"), "{out}");
    assert!(
        out.contains(&format!(
            "dir = {:?}",
            sandbox.queue_dir().display().to_string()
        )),
        "{out}"
    );
    // The printed configuration is itself a valid configuration file.
    let printed = sandbox.path().join("printed.toml");
    std::fs::write(&printed, &out).unwrap();
    let again = Settings::load_from(Some(&printed), []).unwrap();
    assert_eq!(again, Settings::load_from(Some(&config), []).unwrap());
}

#[test]
fn print_default_config_prints_the_example_that_is_also_the_defaults() {
    let out = stdout_ok(None, &["print-default-config"]);
    assert_eq!(
        out,
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/batchwatch.toml"
        ))
        .unwrap()
    );
    let sandbox = Sandbox::new();
    let path = sandbox.path().join("example.toml");
    std::fs::write(&path, &out).unwrap();
    assert_eq!(
        Settings::load_from(Some(&path), []).unwrap(),
        Settings::load_from(None, []).unwrap()
    );
}

/// The settings the example shows commented out, as `(line number, text without the `#`)`:
/// lines such as `# output_expires_after = "7d"`.
/// The settings the example shows commented out, each as the lines that uncomment it: the
/// line itself, and the commented table header it belongs to when there is one (the pricing
/// example).
fn commented_settings(example: &str) -> Vec<Vec<(usize, String)>> {
    // A commented table (the pricing example) is uncommented whole, header and keys.
    let mut table: Option<Vec<(usize, String)>> = None;
    let mut out = Vec::new();
    for (i, line) in example.lines().enumerate() {
        let Some(rest) = line.strip_prefix('#').map(str::trim_start) else {
            out.extend(table.take().filter(|t| t.len() > 1));
            continue;
        };
        if rest.starts_with("[pricing.") {
            // A header with no keys under it is prose.
            out.extend(table.take().filter(|t| t.len() > 1));
            table = Some(vec![(i, rest.to_owned())]);
            continue;
        }
        let Some((key, value)) = rest.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let is_key = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if is_key && !value.trim().is_empty() {
            match &mut table {
                Some(lines) => lines.push((i, rest.to_owned())),
                None => out.push(vec![(i, rest.to_owned())]),
            }
        }
    }
    out.extend(table.filter(|t| t.len() > 1));
    out
}

#[test]
fn every_setting_the_example_shows_commented_out_is_valid_once_uncommented() {
    let example = batchwatch::config::DEFAULT_CONFIG;
    let commented = commented_settings(example);
    assert!(
        commented
            .iter()
            .flatten()
            .any(|(_, l)| l.starts_with("history")),
        "the example shows retention.history: {commented:?}"
    );
    let sandbox = Sandbox::new();
    // One at a time: the three key sources exclude each other.
    for group in &commented {
        let text: String = example
            .lines()
            .enumerate()
            .map(|(i, l)| {
                group
                    .iter()
                    .find(|(at, _)| *at == i)
                    .map_or(l, |(_, uncommented)| uncommented.as_str())
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = sandbox.path().join("uncommented.toml");
        std::fs::write(&path, text).unwrap();
        if let Err(e) = Settings::load_from(Some(&path), []) {
            let (at, line) = group.last().expect("a line");
            panic!("line {} of the example, {line:?}: {e}", at + 1);
        }
    }
}

#[test]
fn every_duration_in_the_example_parses_commented_out_or_not() {
    let example = batchwatch::config::DEFAULT_CONFIG;
    // Every quoted value that starts with a digit and is not a size is a duration.
    let durations: Vec<&str> = example
        .lines()
        .filter_map(|l| l.trim_start_matches('#').split_once('='))
        .filter_map(|(_, v)| v.trim().strip_prefix('"')?.split('"').next())
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        .filter(|v| v.parse::<ByteSize>().is_err())
        // An address and port, metrics.listen.
        .filter(|v| !v.contains(':'))
        .collect();
    assert!(durations.contains(&"30d"), "{durations:?}");
    assert!(durations.len() >= 15, "{durations:?}");
    for text in durations {
        let d: Dur = text
            .parse()
            .unwrap_or_else(|e| panic!("{text:?} in the example: {e}"));
        assert_eq!(d.to_string().parse::<Dur>().unwrap(), d, "{text}");
    }
    let days: Dur = "7d".parse().unwrap();
    assert_eq!(days.get(), Duration::from_secs(7 * 24 * 3600));
    let weeks: Dur = "2w".parse().unwrap();
    assert_eq!(weeks.get(), Duration::from_secs(14 * 24 * 3600));
}

#[test]
fn a_sidecar_may_give_its_durations_in_days() {
    let batch = Settings::load_from(None, []).unwrap().batch;
    let claimed: batchwatch::clock::Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
    let options = batchwatch::queue::sidecar::parse(
        "deadline = \"2d\"\noutput_expires_after = \"30d\"\n",
        &batch,
        claimed,
    )
    .unwrap();
    assert_eq!(
        options.deadline_at,
        "2026-11-24T10:00:00Z"
            .parse::<batchwatch::clock::Timestamp>()
            .unwrap()
    );
    assert_eq!(options.output_expires_after, Some(30 * 24 * 3600));
}

/// Runs `batchwatch --config CONFIG ARGS` and kills it if it has not ended within `limit`.
fn output_within(config: &std::path::Path, args: &[&str], limit: Duration) -> std::process::Output {
    use std::process::Stdio;
    let mut child = crate::support::process::command(Some(config))
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("batchwatch {args:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_key_file_that_is_a_fifo_is_refused_at_once_by_check_config_and_run() {
    use std::os::unix::ffi::OsStrExt;
    let sandbox = Sandbox::new();
    let fifo = sandbox.path().join("api-key");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path and mode.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let config = sandbox.write_config(&format!(
        "[api]\nkey_file = {:?}\n",
        fifo.display().to_string()
    ));

    let out = output_within(&config, &["check-config"], Duration::from_secs(20));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("# API key: NOT readable here: `api.key_file`:")
            && stdout.contains("is a FIFO (named pipe); the key must be in a regular file"),
        "{stdout}"
    );

    let out = output_within(&config, &["run"], Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("`api.key_file`") && stderr.contains("a FIFO"),
        "{stderr}"
    );
}
