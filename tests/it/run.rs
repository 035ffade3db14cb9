//! `batchwatch run` as a real process: it starts, and stops cleanly on a signal.

use std::time::Duration;

use crate::support::notify::{notify_socket, wait_message};
use crate::support::process::{Running, command, run_as_nobody};
use crate::support::{KEY, Sandbox};

fn started(sandbox: &Sandbox) -> Running {
    let config = sandbox.write_config("");
    let mut cmd = command(Some(&config));
    cmd.arg("run").env("OPENAI_API_KEY", KEY);
    let mut daemon = Running::spawn(cmd);
    daemon.wait_for_line("batchwatch started", Duration::from_secs(20));
    daemon
}

#[test]
fn run_starts_with_a_valid_configuration_and_exits_0_within_a_second_of_sigterm() {
    let sandbox = Sandbox::new();
    let mut daemon = started(&sandbox);
    assert!(
        sandbox.db_path().exists(),
        "the database is created at start"
    );
    daemon.signal(libc::SIGTERM);
    let (status, took) = daemon.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{}", daemon.seen.join("\n"));
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn run_exits_0_on_sigint_too() {
    let sandbox = Sandbox::new();
    let mut daemon = started(&sandbox);
    daemon.signal(libc::SIGINT);
    let (status, took) = daemon.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn logs_are_json_lines_when_asked_and_follow_rust_log() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config("[log]\nformat = \"json\"\n");
    let mut cmd = command(Some(&config));
    cmd.arg("run").env("OPENAI_API_KEY", KEY);
    let mut daemon = Running::spawn(cmd);
    let line = daemon.wait_for_line("batchwatch started", Duration::from_secs(20));
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON object per line");
    assert_eq!(event["level"], "INFO");
    assert_eq!(event["message"], "batchwatch started");
    assert_eq!(event["queue"], sandbox.queue_dir().display().to_string());
    daemon.signal(libc::SIGTERM);
    daemon.wait_exit(Duration::from_secs(5));
    for line in &daemon.seen {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }

    // Text logs to a pipe carry no colour codes, and RUST_LOG filters them.
    let config = sandbox.write_config("");
    let (socket, ready) = notify_socket(sandbox.path());
    let mut cmd = command(Some(&config));
    cmd.arg("run")
        .env("OPENAI_API_KEY", KEY)
        .env("RUST_LOG", "warn")
        .env("NOTIFY_SOCKET", &socket);
    let mut quiet = Running::spawn(cmd);
    // Ready comes after every line of the start-up, "batchwatch started" among them.
    wait_message(&ready, |m| m.contains("READY=1"), Duration::from_secs(20));
    quiet.signal(libc::SIGTERM);
    let (status, _) = quiet.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    assert!(
        quiet.seen.iter().all(|l| !l.contains("INFO")),
        "RUST_LOG=warn hides info: {:?}",
        quiet.seen
    );

    let mut cmd = command(Some(&config));
    cmd.arg("run").env("OPENAI_API_KEY", KEY);
    let mut plain = Running::spawn(cmd);
    let line = plain.wait_for_line("batchwatch started", Duration::from_secs(20));
    assert!(
        !line.contains('\u{1b}'),
        "no escape codes on a pipe: {line:?}"
    );
    assert!(line.contains(" INFO "), "{line}");
}

#[test]
fn run_needs_no_system_certificates_for_a_plain_http_api_and_names_them_for_https() {
    let sandbox = Sandbox::new();
    let no_certs = [
        ("SSL_CERT_FILE", "/nonexistent/certs.pem"),
        ("SSL_CERT_DIR", "/nonexistent/certs"),
    ];
    let config = sandbox.write_config("[api]\nbase_url = \"http://127.0.0.1:9/v1\"\n");
    let mut cmd = command(Some(&config));
    cmd.arg("run").env("OPENAI_API_KEY", KEY).envs(no_certs);
    let mut daemon = Running::spawn(cmd);
    daemon.wait_for_line("batchwatch started", Duration::from_secs(20));
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(5)).0.code(), Some(0));

    let config = sandbox.write_config("[api]\nbase_url = \"https://127.0.0.1:9/v1\"\n");
    let mut cmd = command(Some(&config));
    cmd.arg("run").env("OPENAI_API_KEY", KEY).envs(no_certs);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`api.base_url`") && stderr.contains("ca-certificates"),
        "{stderr}"
    );
}

/// Started by a user who may not write the queue tree (`nobody`, on a tree root made): its
/// lock file cannot be created. The daemon used to say "No such file or directory" (the error
/// of its read-only second try, not the refusal) and exit 1, and print it twice (a plain line
/// and a logged ERROR line). Now it names the refusal, the path, the key and the user, once,
/// and exits 78 as for any path of the configuration it cannot use.
#[test]
fn a_queue_tree_the_user_may_not_write_is_named_for_the_refusal_once_with_exit_78() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root, to make a tree as root and run the daemon as nobody");
        return;
    }
    let sandbox = Sandbox::new();
    let config = sandbox.write_config("");
    for sub in ["incoming", "processing", "done", "failed", "results"] {
        std::fs::create_dir_all(sandbox.queue_dir().join(sub)).unwrap();
    }
    // Readable by all (the configuration too), writable by root alone.
    std::fs::set_permissions(sandbox.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run_as_nobody(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let lock = sandbox.queue_dir().join(".batchwatch.lock");
    let said = format!(
        "batchwatch: invalid configuration: `queue.dir`: cannot open the lock file {}: Permission denied",
        lock.display()
    );
    assert!(stderr.contains(&said), "{stderr}");
    assert!(stderr.contains("uid 65534"), "names the user: {stderr}");
    assert!(!stderr.contains("No such file"), "{stderr}");
    assert_eq!(
        stderr.matches(&lock.display().to_string()).count(),
        1,
        "said once: {stderr}"
    );
}

/// The queue tree is the user's, but the database is root's and only readable by others: the
/// daemon used to start, then stop with SQLite's "attempt to write a readonly database" and
/// exit 1. Now it names the file, the refusal and `database.path`, with exit 78.
#[test]
fn a_database_the_user_may_not_write_is_named_with_exit_78() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root, to make a database as root and run the daemon as nobody");
        return;
    }
    let sandbox = Sandbox::new();
    let config = sandbox.write_config("");
    std::fs::create_dir_all(sandbox.queue_dir()).unwrap();
    std::os::unix::fs::chown(sandbox.path(), Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(sandbox.queue_dir(), Some(65534), Some(65534)).unwrap();
    std::fs::write(sandbox.db_path(), b"").unwrap();
    std::fs::set_permissions(sandbox.db_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_as_nobody(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let said = format!(
        "batchwatch: invalid configuration: `database.path`: cannot write {}: Permission denied",
        sandbox.db_path().display()
    );
    assert!(stderr.contains(&said), "{stderr}");
}
