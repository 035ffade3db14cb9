//! `batchwatch doctor` as an operator runs it before the first file: every check passes against
//! the simulator, and each first mistake (a wrong key, a base URL without /v1, a port where
//! nothing listens, a key file others can read, a queue it cannot write) fails with its own
//! line and a non-zero exit, never showing the key.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use crate::support::KEY;
use crate::support::daemon::{Env, quick_sim};
use crate::support::process::{bin, command};
use crate::support::sim::spawn_sim;
use crate::support::unused_port;

/// `batchwatch doctor ARGS` on `env`'s configuration, with the key in the environment.
fn doctor(env: &Env, args: &[&str]) -> Output {
    command(Some(&env.config))
        .arg("doctor")
        .args(args)
        .env("OPENAI_API_KEY", KEY)
        .output()
        .unwrap()
}

/// The output's line for `check`, asserting the key shows nowhere.
fn line_of(out: &Output, check: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains(KEY) && !stderr.contains(KEY),
        "the key was printed:\n{stdout}{stderr}"
    );
    stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(check))
        .unwrap_or_else(|| panic!("no line for {check:?}:\n{stdout}{stderr}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn doctor_against_the_simulator_passes_every_check_in_lines_and_in_json() {
    let sim = spawn_sim(quick_sim()).await;
    let port = unused_port();
    let env = Env::new(
        &sim.handle.base_url(),
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let out = doctor(&env, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "configuration",
        "key-file",
        "key-accepted",
        "batch-api",
        "files-api",
        "clock",
        "queue",
        "database",
        "queue-space",
        "database-space",
        "metrics-port",
    ] {
        let line = line_of(&out, check);
        assert!(line.starts_with("PASS"), "{line}");
    }

    let out = doctor(&env, &["--json"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 11, "{report}");
    assert!(checks.iter().all(|c| c["outcome"] == "pass"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_first_mistake_fails_its_own_check_with_a_non_zero_exit_and_never_the_key() {
    let sim = spawn_sim(quick_sim()).await;
    let right = sim.handle.base_url();

    // A base URL without its version path: the routes are missing, and the fix is named.
    let env = Env::new(right.strip_suffix("/v1").unwrap(), "");
    let out = doctor(&env, &[]);
    assert_eq!(out.status.code(), Some(1));
    let line = line_of(&out, "batch-api");
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(
        line.contains(&format!("set api.base_url = \"{right}\"")),
        "{line}"
    );
    assert!(line_of(&out, "files-api").starts_with("FAIL"));
    assert!(
        line_of(&out, "queue").starts_with("PASS"),
        "only its own line fails"
    );

    // Nothing listens at the port.
    let env = Env::new(&format!("http://127.0.0.1:{}/v1", unused_port()), "");
    let out = doctor(&env, &[]);
    assert_eq!(out.status.code(), Some(1));
    let line = line_of(&out, "batch-api");
    assert!(
        line.starts_with("FAIL") && line.contains("127.0.0.1"),
        "{line}"
    );

    // A key file others can read: refused as `run` refuses it, naming the rule.
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let env = Env::new(
        &right,
        &format!("[api]\nkey_file = {:?}\n", key_file.display().to_string()),
    );
    let out = doctor(&env, &[]);
    assert_eq!(out.status.code(), Some(1));
    let line = line_of(&out, "key-file");
    assert!(
        line.starts_with("FAIL") && line.contains("api.key_file"),
        "{line}"
    );
    assert!(
        line_of(&out, "batch-api").starts_with("SKIP"),
        "no key to ask with"
    );

    // The service takes another key only.
    let env = Env::new(&right, "");
    sim.handle
        .set_api_key(Some("sk-another-key-entirely"))
        .await;
    let out = doctor(&env, &[]);
    sim.handle.set_api_key(None).await;
    assert_eq!(out.status.code(), Some(1));
    let line = line_of(&out, "key-accepted");
    assert!(line.starts_with("FAIL") && line.contains("401"), "{line}");

    // The metrics port is taken (by another batchwatch, say): its own line fails, naming it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let env = Env::new(&right, &format!("[metrics]\nlisten = \"{addr}\"\n"));
    let out = doctor(&env, &[]);
    assert_eq!(out.status.code(), Some(1));
    let line = line_of(&out, "metrics-port");
    assert!(
        line.starts_with("FAIL")
            && line.contains(&addr.to_string())
            && line.contains("metrics.listen"),
        "{line}"
    );
    assert!(line_of(&out, "batch-api").starts_with("PASS"));
    drop(taken);

    // A configuration that cannot be used: one line, naming the key, and nothing else is tried.
    let env = Env::new(&right, "[poll]\ninterval = \"soon\"\n");
    let out = doctor(&env, &[]);
    assert_eq!(out.status.code(), Some(1));
    let line = line_of(&out, "configuration");
    assert!(
        line.starts_with("FAIL") && line.contains("poll.interval"),
        "{line}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("FAIL") || l.starts_with("PASS"))
            .count(),
        1,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A queue tree the user cannot write: as root, the tree made by root and doctor run as
/// `nobody` (root writes anywhere); otherwise a tree without write permission.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_the_user_cannot_write_fails_the_queue_check() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    for sub in ["incoming", "processing", "done", "failed", "results"] {
        let dir = env.dir(sub);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    std::fs::set_permissions(env.sandbox.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin()]);
        c
    } else {
        std::process::Command::new(bin())
    };
    let out = cmd
        .arg("--config")
        .arg(&env.config)
        .arg("doctor")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let line = line_of(&out, "queue");
    assert!(
        line.starts_with("FAIL")
            && line.contains("Permission denied")
            && line.contains("queue.dir"),
        "{line}"
    );
    assert!(line_of(&out, "batch-api").starts_with("PASS"), "{line}");
}
