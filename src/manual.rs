//! The manual pages: batchwatch(1) and batchwatch-COMMAND(1) from the command-line definition
//! (so they say what `--help` says), with the sections an operator looks for (FILES,
//! ENVIRONMENT, SIGNALS, EXIT STATUS); and batchwatch.toml(5) from the example configuration,
//! which is also the built-in defaults ([`crate::config::DEFAULT_CONFIG`]), so the page, the
//! example and the defaults cannot drift apart.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use roff::{Roff, bold, roman};

use crate::cli::Cli;

const SOURCE: &str = concat!("batchwatch ", env!("CARGO_PKG_VERSION"));
const MANUAL: &str = "batchwatch manual";

/// Writes every page into `dir` (created when missing) and returns their paths, sorted.
pub fn write_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Gives each command its page's name, batchwatch-status.
    cmd.build();
    let mut written = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.push(write_command_page(sub.clone(), false, dir)?);
    }
    // The root's after-help (where things are, the exit codes) becomes sections of its own.
    written.push(write_command_page(
        cmd.after_long_help(None::<&str>),
        true,
        dir,
    )?);
    let path = dir.join("batchwatch.toml.5");
    std::fs::write(&path, config_page(crate::config::DEFAULT_CONFIG))
        .with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    written.sort();
    Ok(written)
}

fn write_command_page(cmd: clap::Command, root: bool, dir: &Path) -> anyhow::Result<PathBuf> {
    let daemon = root || cmd.get_name() == "run";
    let page = clap_mangen::Man::new(cmd).source(SOURCE).manual(MANUAL);
    let path = dir.join(page.get_filename());
    let mut text = Vec::new();
    page.render(&mut text)?;
    text.extend(common_sections(daemon, root).render().into_bytes());
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A section of `.TP` entries: each term in bold, then its description.
fn section(roff: &mut Roff, heading: &str, entries: &[(&str, &str)]) {
    roff.control("SH", [heading]);
    for (term, text) in entries {
        roff.control("TP", [])
            .text([bold(*term)])
            .text([roman(*text)]);
    }
}

const FILES: [(&str, &str); 6] = [
    (
        crate::config::SYSTEM_CONFIG_PATH,
        "The configuration, read when --config is not given and it exists; see batchwatch.toml(5).",
    ),
    (
        "/var/lib/batchwatch/queue/",
        "The queue tree (queue.dir): drop NAME.jsonl (and an optional sidecar NAME.jsonl.toml) into incoming/; a file is in processing/JOBID/ while it is worked on, then in done/, or in failed/ with NAME.jsonl.reason.json; results/JOBID/ holds output.jsonl, errors.jsonl and manifest.json.",
    ),
    (
        "/var/lib/batchwatch/state.db",
        "The SQLite database (database.path): jobs, batches and their status history; database.url may name a PostgreSQL database instead.",
    ),
    (
        "QUEUE/.batchwatch.lock, DATABASE.lock",
        "Held by the running daemon: one daemon per queue tree and per SQLite database; daemons on a PostgreSQL database share the queue tree and hold its lock file shared.",
    ),
    (
        "$CREDENTIALS_DIRECTORY/NAME",
        "The API key as a systemd credential (api.key_credential); the PostgreSQL password likewise (database.password_credential).",
    ),
    (
        "/usr/share/batchwatch/",
        "Prometheus alerting rules and a Grafana dashboard for the metrics endpoint.",
    ),
];

const ENVIRONMENT: [(&str, &str); 7] = [
    (
        "BATCHWATCH_SECTION__KEY",
        "Sets a configuration key over the file, two underscores between levels: BATCHWATCH_QUEUE__DIR=/srv/q sets queue.dir.",
    ),
    (
        "OPENAI_API_KEY",
        "The API key, unless api.key_env names another variable, or api.key_file or api.key_credential is set.",
    ),
    (
        "CREDENTIALS_DIRECTORY",
        "Set by systemd for the service: where api.key_credential and database.password_credential are read.",
    ),
    (
        "PGPASSWORD",
        "The PostgreSQL password when database.url names a PostgreSQL database and database.password_credential is not set (~/.pgpass is read too, as by any PostgreSQL client).",
    ),
    ("RUST_LOG", "The log filter; wins over log.level."),
    (
        "NO_COLOR",
        "When set and not empty, status and show print no colour (they colour only a terminal anyway).",
    ),
    (
        "NOTIFY_SOCKET",
        "Set by systemd (Type=notify): the daemon reports readiness, its status line and watchdog keep-alives there.",
    ),
];

const SIGNALS: [(&str, &str); 2] = [
    (
        "SIGTERM, SIGINT",
        "Stop: claiming ends, in-flight work gets daemon.shutdown_timeout, and the daemon exits 0; the next start picks up the rest.",
    ),
    (
        "SIGHUP",
        "Reload: the configuration and the API key are read again (systemctl reload batchwatch); an invalid file is refused whole and the daemon runs on.",
    ),
];

const EXIT_STATUS: [(&str, &str); 5] = [
    ("0", "Success; the daemon stopped on a signal."),
    (
        "1",
        "An error, named on standard error (another daemon holds the queue or the database, the database is missing, the API refused a request, a check of doctor failed, ...).",
    ),
    ("2", "The command line is not valid."),
    (
        "65",
        "The database was migrated by a newer batchwatch, or its schema is damaged (EX_DATAERR); systemd does not restart the service.",
    ),
    (
        "78",
        "The configuration is invalid, or a path it names cannot be used by the user running batchwatch (the queue tree, the database, their lock files); the message names the key (EX_CONFIG); systemd does not restart the service.",
    ),
];

/// FILES, ENVIRONMENT, SIGNALS (for the daemon's pages), EXIT STATUS and SEE ALSO.
fn common_sections(daemon: bool, root: bool) -> Roff {
    let mut roff = Roff::new();
    section(&mut roff, "FILES", &FILES);
    section(&mut roff, "ENVIRONMENT", &ENVIRONMENT);
    if daemon {
        section(&mut roff, "SIGNALS", &SIGNALS);
    }
    section(&mut roff, "EXIT STATUS", &EXIT_STATUS);
    roff.control("SH", ["SEE ALSO"]);
    let mut see = vec!["batchwatch.toml(5)", "systemctl(1)", "journalctl(1)"];
    if !root {
        see.insert(0, "batchwatch(1)");
    }
    roff.text([roman(see.join(", "))]);
    roff
}

/// batchwatch.toml(5), from the example configuration `example`: its opening comment is the
/// description, each `[table]` a subsection, each key an entry with its default and the
/// comment above it. Settings shown commented out (examples, keys unset by default) are kept
/// line for line, in a paragraph of their own with the comment that introduces them.
pub fn config_page(example: &str) -> String {
    let mut roff = Roff::new();
    roff.control("TH", ["BATCHWATCH.TOML", "5", "", SOURCE, MANUAL]);
    roff.control("SH", ["NAME"]);
    roff.text([roman("batchwatch.toml - configuration of batchwatch(1)")]);
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([bold(crate::config::SYSTEM_CONFIG_PATH)]);
    roff.control("SH", ["DESCRIPTION"]);
    let mut comment: Vec<&str> = Vec::new();
    let mut in_description = true;
    for line in example.lines() {
        let line = line.trim_end();
        if let Some(text) = line.strip_prefix('#') {
            comment.push(text.strip_prefix(' ').unwrap_or(text));
        } else if line.starts_with('[') {
            lines(&mut roff, comment.drain(..));
            if std::mem::take(&mut in_description) {
                roff.control("SH", ["SETTINGS"]);
                roff.text([roman(
                    "Every key with its built-in default, as batchwatch print-default-config prints them.",
                )]);
            }
            roff.control("SS", [line]);
        } else if let Some((key, value)) = line.split_once(" = ") {
            // What comes up to the last example is about the example, the rest about the key.
            let own = comment
                .iter()
                .rposition(|l| verbatim(l))
                .map_or(0, |last| last + 1);
            lines(&mut roff, comment.drain(..own));
            roff.control("TP", [])
                .text([bold(key.trim()), roman(format!(" = {}", value.trim()))]);
            body(&mut roff, comment.drain(..));
        } else {
            lines(&mut roff, comment.drain(..));
        }
    }
    lines(&mut roff, comment.drain(..));
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman("batchwatch(1), batchwatch-check-config(1)")]);
    roff.render()
}

/// Whether a comment line is to be kept as it is: a setting or table shown commented out, or
/// an indented example.
fn verbatim(line: &str) -> bool {
    let setting = line.split_once(" = ").is_some_and(|(key, _)| {
        !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.\"-".contains(c))
    });
    setting || line.starts_with('[') || line.starts_with(' ')
}

/// Comment lines as a paragraph of their own.
fn lines<'a>(roff: &mut Roff, comment: impl Iterator<Item = &'a str>) {
    let mut comment = comment.peekable();
    if comment.peek().is_some() {
        roff.control("PP", []);
        body(roff, comment);
    }
}

/// Comment lines where the text goes on: prose is filled, a blank comment line starts a new
/// paragraph, and verbatim lines are kept line for line.
fn body<'a>(roff: &mut Roff, comment: impl Iterator<Item = &'a str>) {
    let mut kept = false;
    for line in comment {
        let keep = verbatim(line);
        if keep != kept {
            roff.control(if keep { "nf" } else { "fi" }, []);
            kept = keep;
        }
        if line.is_empty() {
            roff.control("PP", []);
        } else {
            roff.text([roman(line)]);
        }
    }
    if kept {
        roff.control("fi", []);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_page_has_every_table_and_key_of_the_example() {
        let page = config_page(crate::config::DEFAULT_CONFIG);
        for table in [
            "[queue]",
            "[api]",
            "[batch.metadata]",
            "[alerts.stuck_after]",
        ] {
            assert!(page.contains(&format!(".SS {table}")), "{table}");
        }
        assert!(page.contains("\\fBscan_interval\\fR = \"5s\""), "{page}");
        // A commented-out example stays one line of its own, apart from the next key.
        let example = page
            .find(".nf\nkey_env = \"OPENAI_API_KEY\"")
            .expect("the example");
        let next = page.find("\\fBconnect_timeout\\fR").expect("the next key");
        assert!(example < next, "{page}");
    }
}
