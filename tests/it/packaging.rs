//! What the package ships beside the program, generated from the command-line definition so
//! that it never drifts from `--help`: shell completions (`batchwatch completions SHELL`),
//! driven here through bash's own completion machinery, and manual pages (`batchwatch man
//! DIR`), rendered with man(1).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use batchwatch::cli::Cli;
use clap::CommandFactory;

fn batchwatch() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_batchwatch"));
    command.stdin(Stdio::null());
    command
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

/// The visible commands, from the definition itself (without clap's `help`).
fn visible_commands() -> Vec<clap::Command> {
    let mut cli = Cli::command();
    cli.build();
    cli.get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
        .cloned()
        .collect()
}

/// The visible long flags of `command`, the global ones included.
fn long_flags(command: &clap::Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .map(|l| format!("--{l}"))
        .collect()
}

/// What bash completes for the command line `words` (the last word is the one being
/// completed, and may be empty), as on TAB: the script `batchwatch completions bash` prints is
/// sourced, and the function `complete -p batchwatch` names is called with the COMP_*
/// variables bash sets.
fn bash_completes(words: &[&str]) -> BTreeSet<String> {
    const DRIVER: &str = r#"
source <("$BATCHWATCH" completions bash) || exit 1
spec="$(complete -p batchwatch)" || exit 1
function="$(sed -n 's/.* -F \([^ ]*\) .*/\1/p' <<<"$spec")"
[[ -n "$function" ]] || { echo "no completion function in: $spec" >&2; exit 1; }
COMP_WORDS=("$@")
COMP_CWORD=$(($# - 1))
COMP_LINE="$*"
COMP_POINT=${#COMP_LINE}
COMPREPLY=()
"$function" batchwatch "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", DRIVER, "bash"])
        .args(words)
        .env("BATCHWATCH", env!("CARGO_BIN_EXE_batchwatch"))
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    stdout(&out)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_every_visible_command() {
    let offered = bash_completes(&["batchwatch", ""]);
    for command in visible_commands() {
        assert!(
            offered.contains(command.get_name()),
            "`batchwatch <TAB>` lacks {}: {offered:?}",
            command.get_name()
        );
    }
}

#[test]
fn bash_completes_a_command_from_its_prefix() {
    assert_eq!(
        bash_completes(&["batchwatch", "st"]),
        BTreeSet::from(["status".to_owned()])
    );
    assert_eq!(
        bash_completes(&["batchwatch", "check"]),
        BTreeSet::from(["check-config".to_owned()])
    );
}

#[test]
fn bash_completes_each_commands_flags() {
    for command in visible_commands() {
        let offered = bash_completes(&["batchwatch", command.get_name(), "--"]);
        let flags = long_flags(&command);
        assert!(
            flags.contains("--config"),
            "{}: {flags:?}",
            command.get_name()
        );
        let missing: Vec<&String> = flags.difference(&offered).collect();
        assert!(
            missing.is_empty(),
            "`batchwatch {} --<TAB>` lacks {missing:?}; offered {offered:?}",
            command.get_name()
        );
    }
}

#[test]
fn bash_completes_the_values_of_an_option_and_of_an_argument() {
    let states = bash_completes(&["batchwatch", "status", "--state", ""]);
    let expected: BTreeSet<String> = batchwatch::model::JobState::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    assert_eq!(states, expected);
    let shells = bash_completes(&["batchwatch", "completions", ""]);
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.contains(shell), "{shells:?}");
    }
}

#[test]
fn completions_for_zsh_and_fish_name_every_visible_command() {
    for shell in ["zsh", "fish"] {
        let script = stdout(&batchwatch().args(["completions", shell]).output().unwrap());
        for command in visible_commands() {
            assert!(
                script.contains(command.get_name()),
                "the {shell} script lacks {}",
                command.get_name()
            );
        }
    }
    let bad = batchwatch().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("tcsh") && stderr.contains("possible values"),
        "{stderr}"
    );
}

/// Renders a manual page as a reader sees it, with man's warnings on; None (after printing
/// why) when man is not installed.
fn man_render(page: &Path) -> Option<Output> {
    let out = Command::new("man")
        // No hyphenation or justification, and lines long enough that no flag is split.
        .args(["--warnings", "--nh", "--nj", "-l"])
        .arg(page)
        .env("MANWIDTH", "250")
        .env("LC_ALL", "C.UTF-8")
        .env_remove("MANPAGER")
        .env_remove("PAGER")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) => Some(out),
        Err(e) => {
            eprintln!("skipped: man is not installed ({e}; Debian/Ubuntu: apt-get install man-db)");
            None
        }
    }
}

#[test]
fn man_pages_one_per_visible_command_render_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let listed = stdout(&batchwatch().arg("man").arg(dir.path()).output().unwrap());
    let mut expected: BTreeSet<String> = visible_commands()
        .iter()
        .map(|c| format!("batchwatch-{}.1", c.get_name()))
        .collect();
    expected.insert("batchwatch.1".to_owned());
    expected.insert("batchwatch.toml.5".to_owned());
    let written: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(written, expected);
    assert_eq!(listed.lines().count(), expected.len(), "{listed}");

    for name in &expected {
        let Some(out) = man_render(&dir.path().join(name)) else {
            return;
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "man -l {name}: exit {:?}, warnings:\n{stderr}",
            out.status.code()
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("NAME"),
            "{name} rendered empty"
        );
    }
}

#[test]
fn man_pages_say_what_help_says() {
    let dir = tempfile::tempdir().unwrap();
    stdout(&batchwatch().arg("man").arg(dir.path()).output().unwrap());
    let mut pages = vec![(Vec::<String>::new(), "batchwatch.1".to_owned())];
    for command in visible_commands() {
        let name = command.get_name().to_owned();
        pages.push((vec![name.clone()], format!("batchwatch-{name}.1")));
    }
    for (args, page) in pages {
        let help = stdout(&batchwatch().args(&args).arg("--help").output().unwrap());
        let Some(out) = man_render(&dir.path().join(&page)) else {
            return;
        };
        let rendered = stdout(&out);
        // Every flag --help names, and every command it lists, is in the page.
        let words: BTreeSet<&str> = help
            .split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']' | '(' | ')'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .collect();
        assert!(
            !words.is_empty(),
            "no flags in `batchwatch {args:?} --help`"
        );
        for word in words {
            assert!(
                rendered.contains(word),
                "{page} lacks {word}, which `--help` names:\n{rendered}"
            );
        }
        if args.is_empty() {
            for command in visible_commands() {
                assert!(
                    rendered.contains(&format!("batchwatch-{}(1)", command.get_name())),
                    "{page} does not list {}",
                    command.get_name()
                );
            }
        }
    }
}

/// The sections an operator looks for in a manual page, each a line of its own as man renders
/// the heading.
fn sections(rendered: &str) -> BTreeSet<&str> {
    rendered
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(' ') && l.to_uppercase() == *l)
        .collect()
}

#[test]
fn man_pages_say_where_files_are_what_the_environment_and_signals_do_and_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    stdout(&batchwatch().arg("man").arg(dir.path()).output().unwrap());
    let Some(root) = man_render(&dir.path().join("batchwatch.1")) else {
        return;
    };
    let root = stdout(&root);
    for section in ["FILES", "ENVIRONMENT", "SIGNALS", "EXIT STATUS", "SEE ALSO"] {
        assert!(
            sections(&root).contains(section),
            "batchwatch.1 lacks {section}:\n{root}"
        );
    }
    for said in [
        "/etc/batchwatch/batchwatch.toml",
        "/var/lib/batchwatch/state.db",
        "/usr/share/batchwatch/",
        "BATCHWATCH_SECTION__KEY",
        "OPENAI_API_KEY",
        "NO_COLOR",
        "SIGHUP",
        "SIGTERM",
        "78",
        "65",
        "batchwatch.toml(5)",
    ] {
        assert!(
            root.contains(said),
            "batchwatch.1 does not say {said}:\n{root}"
        );
    }
    assert!(!sections(&root).contains("EXTRA"), "{root}");
    let run = stdout(&man_render(&dir.path().join("batchwatch-run.1")).unwrap());
    assert!(sections(&run).contains("SIGNALS"), "{run}");
    let status = stdout(&man_render(&dir.path().join("batchwatch-status.1")).unwrap());
    let status_sections = sections(&status);
    assert!(
        status_sections.contains("EXIT STATUS")
            && status_sections.contains("FILES")
            && !status_sections.contains("SIGNALS"),
        "{status}"
    );
    assert!(status.contains("batchwatch(1)"), "{status}");
}

/// batchwatch.toml(5) is made from the example configuration, the built-in defaults: every
/// table and every key of it is there, with its default.
#[test]
fn the_configuration_page_has_every_table_and_key_of_the_example() {
    let dir = tempfile::tempdir().unwrap();
    stdout(&batchwatch().arg("man").arg(dir.path()).output().unwrap());
    let Some(page) = man_render(&dir.path().join("batchwatch.toml.5")) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&page.stderr).into_owned();
    assert!(
        page.status.success() && stderr.trim().is_empty(),
        "{stderr}"
    );
    let page = stdout(&page);
    let example = stdout(&batchwatch().arg("print-default-config").output().unwrap());
    fn keys(table: &toml::Table, prefix: &str, out: &mut Vec<(String, String, String)>) {
        for (key, value) in table {
            match value {
                toml::Value::Table(inner) => keys(inner, &format!("{prefix}{key}."), out),
                value => out.push((prefix.to_owned(), key.clone(), value.to_string())),
            }
        }
    }
    let mut all = Vec::new();
    keys(&example.parse().unwrap(), "", &mut all);
    assert!(all.len() > 40, "{all:?}");
    for (table, key, value) in all {
        let table = format!("[{}]", table.trim_end_matches('.'));
        assert!(page.contains(&table), "no {table}:\n{page}");
        let entry = format!("{key} = {value}");
        assert!(page.contains(&entry), "no {entry:?} in {table}:\n{page}");
    }
    for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "SETTINGS", "SEE ALSO"] {
        assert!(sections(&page).contains(section), "{section}:\n{page}");
    }
}
