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
        "[database]\nurl = \"mysql://db/batchwatch\"\n",
        &[],
        "`database.url`",
        "is neither sqlite:PATH nor a postgres:// URL",
    ),
    (
        "[database]\nurl = \"sqlite:state.db\"\n",
        &[],
        "`database.url`",
        "an absolute path is required",
    ),
    (
        "[database]\nurl = \"postgres://bw:hunter2@db/batchwatch\"\n",
        &[],
        "`database.url`",
        "must not hold the password",
    ),
    (
        "[database]\nurl = \"postgres://db/batchwatch\"\npassword_credential = \"a/b\"\n",
        &[],
        "`database.password_credential`",
        "is not a valid name",
    ),
    (
        "[database]\nurl = \"postgres://db/batchwatch\"\nlease = \"60s\"\n",
        &[],
        "`database.lease`",
        "must be at least 91s (1.5 × api.request_timeout, and a second)",
    ),
    (
        "[daemon]\nname = \"  \"\n",
        &[],
        "`daemon.name`",
        "must not be empty or blank",
    ),
    (
        "[daemon]\nname = \"worker\\nb\"\n",
        &[],
        "`daemon.name`",
        "holds a control character",
    ),
    (
        "[daemon]\nname = \"wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww\"\n",
        &[],
        "`daemon.name`",
        "is 74 characters long; at most 64 are allowed",
    ),
    (
        "[queue]\ndirr = \"/x\"\n",
        &[],
        "`queue.dirr`",
        "unknown key",
    ),
    ("[bogus]\nx = 1\n", &[], "`bogus`", "unknown key"),
    (
        "[batch]\ndeadline = \"446565333h\"\n",
        &[],
        "`batch.deadline`",
        "longer than 100 years (36500d)",
    ),
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
        "[api]\nflavor = \"anthropic\"\n",
        &[],
        "`api.base_url`",
        "a value is required when api.flavor = \"anthropic\": https://api.anthropic.com/v1",
    ),
    (
        "[api]\nflavor = \"claude\"\n",
        &[],
        "`api.flavor`",
        "\"claude\" is not one of \"openai\", \"azure\", \"anthropic\"",
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
    (
        "[metrics]\nmax_models = 5000\n",
        &[],
        "`metrics.max_models`",
        "must be at most 1000",
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

/// A TOML syntax error is the parser's excerpt of the line at fault, over several lines as the
/// parser writes it (not one line with `\n` in it); what the file holds on that line is shown
/// escaped all the same.
#[test]
fn a_toml_syntax_error_is_printed_as_the_parsers_excerpt_over_several_lines() {
    let sandbox = Sandbox::new();
    let config = sandbox.path().join("batchwatch.toml");
    std::fs::write(
        &config,
        "[poll]\nmin_interval = \"5s \x1b[31m\nmax_interval = \"60s\"\n",
    )
    .unwrap();
    for command in ["check-config", "run"] {
        let out = run(Some(&config), &[command]);
        assert_eq!(out.status.code(), Some(78), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message: Vec<&str> = stderr
            .lines()
            .skip_while(|l| !l.starts_with("batchwatch: invalid configuration: "))
            .take_while(|l| !l.contains(" ERROR "))
            .collect();
        assert!(
            message.len() >= 4
                && message[0].contains("not valid TOML: TOML parse error at line 2, column "),
            "{command}: {stderr}"
        );
        assert!(
            message.contains(&"2 | min_interval = \"5s \\u{1b}[31m")
                && message.iter().any(|l| l.ends_with('^')),
            "{command}: the excerpt, escaped, and its caret, each on its line: {stderr}"
        );
        assert!(
            !message.iter().any(|l| l.contains("\\n")),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains('\x1b'), "{command}: {stderr:?}");
    }
}

/// check-config prints each duration as the file or the environment wrote it, and one no
/// layer set in the largest units that hold it (the defaults are written so too).
#[test]
fn check_config_prints_durations_as_written() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(
        "[batch]\ndeadline = \"36h\"\noutput_expires_after = \"720h\"\n[retention]\ndone = \"2w\"\n",
    );
    let out = crate::support::process::command(Some(&config))
        .arg("check-config")
        .env("OPENAI_API_KEY", crate::support::KEY)
        .env("BATCHWATCH_POLL__MAX_INTERVAL", "90s")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    for line in [
        "deadline = \"36h\"",
        "output_expires_after = \"720h\"",
        "done = \"2w\"",
        "max_interval = \"90s\"",
        "input_expires_after = \"30d\"",
        "duplicate_watch = \"24h\"",
        "retry_initial_delay = \"500ms\"",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line}:\n{printed}");
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

/// `batchwatch run` logs from its first moment, before it reads its configuration, in text: an
/// error in the configuration is one plain line on stderr (the journal, under systemd), naming
/// the key. It used to be printed twice, that line and a logged ERROR line repeating it.
#[test]
fn run_prints_a_configuration_error_once() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config("[poll]\nmin_interval = \"soon\"\n");
    let out = run(Some(&config), &["run"]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("batchwatch: invalid configuration: `poll.min_interval`"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("`poll.min_interval`").count(),
        1,
        "said once: {stderr}"
    );
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config("[limits]\nconcurrency = 7\n");
    let out = crate::support::process::command(Some(&config))
        .arg("check-config")
        .env("OPENAI_API_KEY", crate::support::KEY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = String::from_utf8(out.stdout).unwrap();
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
    // A commented table (the pricing example, a [[notify]] entry) is uncommented whole,
    // header and keys.
    let mut table: Option<Vec<(usize, String)>> = None;
    let mut out = Vec::new();
    for (i, line) in example.lines().enumerate() {
        let Some(rest) = line.strip_prefix('#').map(str::trim_start) else {
            out.extend(table.take().filter(|t| t.len() > 1));
            continue;
        };
        if rest.starts_with("[pricing.") || rest == "[[notify]]" {
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

/// Runs `batchwatch --config CONFIG ARGS` with `vars` set (and no API key or credentials
/// directory otherwise) and kills it if it has not ended within `limit`.
fn output_within(
    config: &std::path::Path,
    args: &[&str],
    vars: &[(&str, &std::path::Path)],
    limit: Duration,
) -> std::process::Output {
    use std::process::Stdio;
    let mut cmd = crate::support::process::command(Some(config));
    cmd.args(args)
        .env_remove("OPENAI_API_KEY")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
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

/// The one line `batchwatch` prints for a refused configuration.
fn refusal(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find(|l| l.starts_with("batchwatch: invalid configuration: "))
        .unwrap_or_else(|| panic!("no refusal in: {stderr}"))
        .to_owned()
}

/// A key file as a case needs it: its path in `dir`, made by `make`.
type KeyCase = (&'static str, fn(&std::path::Path), &'static str);

/// `check-config` runs the checks `run` makes before it opens anything: every key that `run`
/// refuses (a FIFO, a missing file, one others can read, an empty one, an unset variable)
/// makes both exit 78 with the same message, at once (a FIFO is never waited on), so a
/// deployment gate built on `check-config` catches what the daemon would refuse.
#[test]
fn check_config_refuses_every_key_that_run_refuses_with_the_same_message_and_exit_code() {
    use std::os::unix::fs::PermissionsExt;
    fn write(path: &std::path::Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    const CASES: &[KeyCase] = &[
        (
            "a FIFO",
            |path| {
                use std::os::unix::ffi::OsStrExt;
                let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
                // SAFETY: a valid path and mode.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            },
            "is a FIFO (named pipe); the key must be in a regular file",
        ),
        ("a missing file", |_| {}, "cannot open"),
        (
            "mode 0644",
            |path| write(path, "sk-gate-SECRET", 0o644),
            "can be read by group or others (mode 0644)",
        ),
        (
            "an empty file",
            |path| write(path, "\n", 0o600),
            "the key is empty",
        ),
    ];
    for (case, make, words) in CASES {
        let sandbox = Sandbox::new();
        let key = sandbox.path().join("api-key");
        make(&key);
        let config = sandbox.write_config(&format!(
            "[api]\nkey_file = {:?}\n",
            key.display().to_string()
        ));
        let checked = output_within(&config, &["check-config"], &[], Duration::from_secs(20));
        let ran = output_within(&config, &["run"], &[], Duration::from_secs(20));
        for (what, out) in [("check-config", &checked), ("run", &ran)] {
            assert_eq!(out.status.code(), Some(78), "{case}: {what}: {out:?}");
            let line = refusal(out);
            assert!(
                line.contains("`api.key_file`") && line.contains(words),
                "{case}: {what}: {line}"
            );
            assert!(!line.contains("SECRET"), "{case}: {what}: {line}");
        }
        assert_eq!(refusal(&checked), refusal(&ran), "{case}");
        assert!(
            checked.stdout.is_empty(),
            "{case}: nothing printed as valid"
        );
        assert!(!sandbox.db_path().exists(), "{case}: run created nothing");
    }

    // The default source, an environment variable, unset.
    let sandbox = Sandbox::new();
    let config = sandbox.write_config("");
    let checked = output_within(&config, &["check-config"], &[], Duration::from_secs(20));
    let ran = output_within(&config, &["run"], &[], Duration::from_secs(20));
    assert_eq!(checked.status.code(), Some(78), "{checked:?}");
    assert_eq!(ran.status.code(), Some(78), "{ran:?}");
    assert_eq!(refusal(&checked), refusal(&ran));
    assert!(
        refusal(&checked).contains("`api.key_env`: environment variable OPENAI_API_KEY is not set"),
        "{}",
        refusal(&checked)
    );
}

/// A `[[notify]]` URL's signing secret is read as the key is: a file others may read, or one
/// that holds no Standard Webhooks secret, is refused by `check-config` and `run` alike, exit 78,
/// naming the entry's key, never quoting the file.
#[test]
fn a_webhook_secret_is_checked_as_the_key_is_by_check_config_and_run_alike() {
    use std::os::unix::fs::PermissionsExt;
    for (mode, text, words) in [
        (
            0o644,
            "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            "mode 0644",
        ),
        (0o600, "SECRET-not-whsec", "must start with whsec_"),
        (0o600, "whsec_U0VDUkVU", "must be 24 to 64 bytes"),
    ] {
        let sandbox = Sandbox::new();
        let secret = sandbox.path().join("webhook-secret");
        std::fs::write(&secret, text).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).unwrap();
        let config = sandbox.write_config(&format!(
            "[[notify]]\nname = \"hook\"\non = [\"completed\"]\nurl = \"https://hooks.invalid/b\"\n\
             secret_file = {:?}\n",
            secret.display().to_string()
        ));
        let env = [("OPENAI_API_KEY", std::path::Path::new("sk-test"))];
        let checked = output_within(&config, &["check-config"], &env, Duration::from_secs(20));
        let ran = output_within(&config, &["run"], &env, Duration::from_secs(20));
        for (what, out) in [("check-config", &checked), ("run", &ran)] {
            assert_eq!(out.status.code(), Some(78), "{text}: {what}: {out:?}");
            let line = refusal(out);
            assert!(
                line.contains("`notify.hook.secret_file`") && line.contains(words),
                "{text}: {what}: {line}"
            );
            assert!(
                !line.contains("SECRET") && !line.contains("MDEy"),
                "{what}: {line}"
            );
        }
        assert_eq!(refusal(&checked), refusal(&ran));
        assert!(!sandbox.db_path().exists(), "run created nothing");
    }
}

/// A systemd credential exists only inside the service: outside it `check-config` says the key
/// was not checked (and exits 0: the configuration is sound; `run` there would refuse it),
/// inside it (`$CREDENTIALS_DIRECTORY` set, as `systemd-run -p LoadCredential=` does) it
/// checks the credential as `run` does.
#[test]
fn check_config_checks_a_systemd_credential_only_where_the_service_has_it() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config("[api]\nkey_credential = \"openai-api-key\"\n");
    let outside = output_within(&config, &["check-config"], &[], Duration::from_secs(20));
    assert!(outside.status.success(), "{outside:?}");
    let stdout = String::from_utf8_lossy(&outside.stdout);
    assert!(
        stdout.contains(
            "# API key: NOT checked here: `api.key_credential`: $CREDENTIALS_DIRECTORY is not set"
        ),
        "{stdout}"
    );
    let ran = output_within(&config, &["run"], &[], Duration::from_secs(20));
    assert_eq!(ran.status.code(), Some(78), "{ran:?}");

    let credentials = sandbox.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("openai-api-key"), "").unwrap();
    let vars = [("CREDENTIALS_DIRECTORY", credentials.as_path())];
    let checked = output_within(&config, &["check-config"], &vars, Duration::from_secs(20));
    let ran = output_within(&config, &["run"], &vars, Duration::from_secs(20));
    assert_eq!(checked.status.code(), Some(78), "{checked:?}");
    assert_eq!(ran.status.code(), Some(78), "{ran:?}");
    assert_eq!(refusal(&checked), refusal(&ran));
    assert!(refusal(&checked).contains("the key is empty"));

    std::fs::write(credentials.join("openai-api-key"), "sk-credential-SECRET\n").unwrap();
    let checked = output_within(&config, &["check-config"], &vars, Duration::from_secs(20));
    assert!(checked.status.success(), "{checked:?}");
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(
        stdout.contains("# API key: read from ")
            && stdout.contains("(20 characters; value not shown)"),
        "{stdout}"
    );
    assert!(!stdout.contains("SECRET"), "{stdout}");
}

/// A `RUST_LOG` with whitespace before a wide character (which tracing-subscriber's own parser
/// panicked on; fuzzing found it through `log.level`) is read like any other filter: a command
/// that logs (the simulator here; the daemon reads it the same way) starts and stops cleanly.
#[test]
fn a_rust_log_with_whitespace_before_a_wide_character_does_not_panic() {
    use std::io::BufRead;
    let mut child = crate::support::process::command(None)
        .args(["sim", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", " Ҙ[a],info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // SAFETY: kill(2) on our own child; no memory is involved.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(
        first.starts_with("listening on ") && out.status.success(),
        "{first:?} {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
